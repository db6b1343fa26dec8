/* framing.c — cuts a client's input into JSON values.
 *
 * Clients send JSON objects, usually one per line, but a value may be split
 * across reads and several may share one read. A small scanner, aware of
 * strings and escapes, tracks the nesting depth of {} and [] and hands each
 * complete top-level value to qmp_client_dispatch(), where jansson does the
 * real parsing. The scanner also notices input that can never become valid
 * JSON (a byte that no JSON token contains, a raw control character or 0xff
 * inside a string) and answers it at once; it then discards input up to the
 * next newline, so a client can always recover by sending "\xff\n" (0xff
 * never occurs in UTF-8). Input that grows past QMP_MAX_INPUT without
 * completing is refused the same way.
 *
 * Invariants: when a scan returns on a live client, c->in holds only the
 * unfinished value (start is 0), c->scan says how much of it was scanned (no
 * byte is scanned twice) and c->in_len is at most QMP_MAX_INPUT. */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "qmp/qmp.h"
#include "qmp/qmp_priv.h"

static bool is_ws(unsigned char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Bytes that may appear in JSON outside strings (numbers, true/false/null). */
static bool is_token_char(unsigned char ch)
{
	return is_ws(ch) || (ch >= '0' && ch <= '9') || (ch && strchr(",:-+.eEtrufalsn", ch));
}

/* Answers input that cannot become JSON, forgets the partial value and, unless
 * the offending byte was the newline itself, discards up to the next one. */
static void client_framing_error(struct qmp_client *c, size_t i, const char *what)
{
	bool newline = c->in[i] == '\n';

	qmp_client_reply_error(c, NULL, QMP_ERR_GENERIC, "JSON parse error, %s", what);
	c->depth = 0;
	c->in_str = c->esc = false;
	c->skipping = !newline;
	c->start = i + 1;
}

void qmp_client_scan(struct qmp_client *c)
{
	size_t i;

	for (i = c->scan; i < c->in_len && !c->dead; i++) {
		unsigned char ch = c->in[i];

		if (c->skipping) {
			c->skipping = ch != '\n';
			c->start = i + 1;
		} else if (c->depth == 0) {
			if (ch == '{' || ch == '[') {
				c->depth = 1;
				c->start = i;
			} else if (is_ws(ch)) {
				c->start = i + 1;
			} else {
				client_framing_error(c, i, "expecting a JSON object");
			}
		} else if (c->in_str) {
			if (ch < 0x20 || ch == 0xff)
				client_framing_error(c, i, "invalid byte in a string");
			else if (c->esc)
				c->esc = false;
			else if (ch == '\\')
				c->esc = true;
			else if (ch == '"')
				c->in_str = false;
		} else if (ch == '"') {
			c->in_str = true;
		} else if (ch == '{' || ch == '[') {
			c->depth++;
		} else if (ch == '}' || ch == ']') {
			if (--c->depth == 0) {
				qmp_client_dispatch(c, c->in + c->start, i + 1 - c->start);
				c->start = i + 1;
			}
		} else if (!is_token_char(ch)) {
			client_framing_error(c, i, "invalid character");
		}
	}
	c->scan = i;
	if (c->dead)
		return;
	if (c->start) {
		memmove(c->in, c->in + c->start, c->in_len - c->start);
		c->in_len -= c->start;
		c->scan -= c->start;
		c->start = 0;
	}
	if (c->in_len > QMP_MAX_INPUT) {
		qmp_client_reply_error(
		    c, NULL, QMP_ERR_GENERIC,
		    "QMP input exceeds %u bytes without completing a JSON value; "
		    "discarding it up to the next newline",
		    QMP_MAX_INPUT);
		c->depth = 0;
		c->in_str = c->esc = false;
		c->skipping = true;
		c->in_len = c->scan = 0;
	}
}
