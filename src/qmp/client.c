/* client.c — one QMP client's connection: its socket, its input and output
 * buffers, and when it dies.
 *
 * Output: every message goes into the client's buffer and is written without
 * blocking; EPOLLOUT is watched only while something is pending. A client
 * whose buffer outgrows QMP_MAX_OUTPUT is dropped rather than let it stall the
 * main loop or eat memory.
 *
 * Input: each read appends to the client's input buffer, which framing.c
 * scans; the buffer grows by QMP_READ_CHUNK up to QMP_MAX_INPUT plus one
 * chunk, and a large buffer is given back once it has been consumed.
 *
 * Death: a client that fails is marked dead and unwatched at once, never
 * freed here while callers may hold it: qmp_reap() in qmp.c frees it when
 * no callback, handler or event delivery is on the stack. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/log.h"
#include "qmp/qmp.h"
#include "qmp/qmp_priv.h"

/* Each read is offered at least this much free room in the input buffer. */
#define QMP_READ_CHUNK (64u << 10)

static void client_kill(struct qmp_client *c)
{
	if (c->dead)
		return;
	c->dead = true;
	loop_del_fd(c->s->loop, c->fd);
}

void qmp_client_free(struct qmp_client *c)
{
	if (!c->dead)
		loop_del_fd(c->s->loop, c->fd);
	close(c->fd);
	free(c->in);
	free(c->out);
	free(c);
}

/* Watch for input unless the peer is gone, for output while some is pending. */
static void client_update_events(struct qmp_client *c)
{
	uint32_t ev = 0;

	if (c->dead)
		return;
	if (!c->eof)
		ev |= EPOLLIN;
	if (c->out_off < c->out_len)
		ev |= EPOLLOUT;
	if (!ev) {
		client_kill(c); /* eof and everything written */
		return;
	}
	if (ev != c->events) {
		if (loop_mod_fd(c->s->loop, c->fd, ev) < 0) {
			client_kill(c);
			return;
		}
		c->events = ev;
	}
}

void qmp_client_write(struct qmp_client *c)
{
	while (!c->dead && c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			client_kill(c); /* EPIPE, ECONNRESET: the client left */
			return;
		}
		c->out_off += n;
	}
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	client_update_events(c);
}

/* Queues text plus QEMU's "\r\n" and tries to send it right away. */
void qmp_client_send_text(struct qmp_client *c, const char *text)
{
	size_t n = strlen(text) + 2;
	size_t pending;

	if (c->dead)
		return;
	pending = c->out_len - c->out_off;
	if (pending + n > QMP_MAX_OUTPUT) {
		pr_warn("QMP client not reading its replies (%zu bytes pending), dropping it",
			pending);
		client_kill(c);
		return;
	}
	if (c->out_off && c->out_len + n > c->out_cap) {
		memmove(c->out, c->out + c->out_off, pending);
		c->out_off = 0;
		c->out_len = pending;
	}
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		char *p;
		while (cap < c->out_len + n)
			cap *= 2;
		p = realloc(c->out, cap);
		if (!p) {
			client_kill(c);
			return;
		}
		c->out = p;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, text, n - 2);
	memcpy(c->out + c->out_len + n - 2, "\r\n", 2);
	c->out_len += n;
	qmp_client_write(c);
}

/* Sends msg and drops the caller's reference to it. */
void qmp_client_send(struct qmp_client *c, json_t *msg)
{
	char *text = msg ? json_dumps(msg, 0) : NULL;

	json_decref(msg);
	if (!text) {
		client_kill(c);
		return;
	}
	qmp_client_send_text(c, text);
	free(text);
}

void qmp_client_reply_error(struct qmp_client *c, json_t *id, const char *cls, const char *fmt, ...)
{
	char desc[512];
	va_list ap;
	json_t *msg;

	va_start(ap, fmt);
	vsnprintf(desc, sizeof(desc), fmt, ap);
	va_end(ap);
	msg = json_pack("{s:{s:s,s:s}}", "error", "class", cls, "desc", desc);
	if (msg && id)
		json_object_set(msg, "id", id);
	qmp_client_send(c, msg);
}

static void client_read(struct qmp_client *c)
{
	ssize_t n;

	if (!c->in_len && c->in_cap > 4 * QMP_READ_CHUNK) {
		free(c->in); /* a large request is over: give its memory back */
		c->in = NULL;
		c->in_cap = 0;
	}
	if (c->in_cap - c->in_len < QMP_READ_CHUNK) {
		/* in_len <= QMP_MAX_INPUT here, so the buffer stays bounded. */
		size_t cap = c->in_cap * 2;
		char *p;

		if (cap < c->in_len + QMP_READ_CHUNK)
			cap = c->in_len + QMP_READ_CHUNK;
		if (cap > QMP_MAX_INPUT + QMP_READ_CHUNK)
			cap = QMP_MAX_INPUT + QMP_READ_CHUNK;
		p = realloc(c->in, cap);
		if (!p) {
			client_kill(c);
			return;
		}
		c->in = p;
		c->in_cap = cap;
	}
	n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			client_kill(c);
		return;
	}
	if (n == 0) {
		/* A partial request dies with the connection; replies already
		 * queued still go out if the peer only shut down its side. */
		c->eof = true;
		client_update_events(c);
		return;
	}
	c->in_len += n;
	qmp_client_scan(c);
}

void qmp_client_io(int fd, uint32_t events, void *opaque)
{
	struct qmp_client *c = opaque;
	struct qmp_server *s = c->s;

	(void)fd;
	s->busy++;
	if (events & EPOLLOUT)
		qmp_client_write(c);
	if (!c->dead && !c->eof && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		client_read(c);
	/* Gone both ways (or broken): nothing more can be read or written. */
	if (!c->dead && c->eof && (events & (EPOLLHUP | EPOLLERR)))
		client_kill(c);
	s->busy--;
	qmp_reap(s);
}
