/* test_qmp.c — the generic QMP server over real unix sockets.
 *
 * Each test gets a loop, a server on a fresh temporary path and fake commands
 * (no VM). Clients are plain non-blocking sockets in the same thread; while a
 * client waits for data the test pumps the server's loop with loop_run_once(). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "lib/log.h"
#include "lib/loop.h"
#include "lib/sock.h"
#include "lib/version.h"
#include "qmp/qmp.h"

struct tenv {
	struct loop *loop;
	struct qmp_server *s;
	char dir[64];
	char path[128];
	int after_calls;
	bool after_saw_reply_sent;
};

struct tcli {
	int fd;
	char *buf;
	size_t len, cap;
};

/* ---- fake commands ---------------------------------------------------- */

static json_t *fake_echo(struct qmp_req *req, json_t *args, void *opaque)
{
	(void)req;
	(void)opaque;
	return args ? json_deep_copy(args) : NULL;
}

static json_t *fake_fail(struct qmp_req *req, json_t *args, void *opaque)
{
	(void)args;
	(void)opaque;
	qmp_req_error(req, QMP_ERR_GENERIC, "fake failure %d", 42);
	return json_object(); /* dropped by the server */
}

static json_t *fake_big(struct qmp_req *req, json_t *args, void *opaque)
{
	size_t n = (size_t)json_integer_value(json_object_get(args, "size"));
	char *p = malloc(n + 1);
	json_t *r;

	(void)req;
	(void)opaque;
	memset(p, 'x', n);
	p[n] = 0;
	r = json_pack("{s:s}", "blob", p);
	free(p);
	return r;
}

static json_t *fake_emit(struct qmp_req *req, json_t *args, void *opaque)
{
	struct tenv *e = opaque;

	(void)req;
	(void)args;
	qmp_event(e->s, "FAKE_IN_HANDLER", NULL);
	return NULL;
}

static void fake_after(struct qmp_server *s, void *opaque)
{
	struct tenv *e = opaque;

	e->after_calls++;
	e->after_saw_reply_sent = qmp_server_flush(s, 1000) == 0;
}

static json_t *fake_quit(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = {"why", NULL};

	if (!qmp_args_check(req, args, allowed))
		return NULL;
	qmp_req_after_reply(req, fake_after, opaque);
	return NULL;
}

/* ---- environment and client helpers ----------------------------------- */

static int env_setup(void **state)
{
	struct tenv *e = calloc(1, sizeof(*e));
	char err[256];

	assert_non_null(e);
	snprintf(e->dir, sizeof(e->dir), "/tmp/qmptest.XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(e->path, sizeof(e->path), "%s/q.sock", e->dir);
	assert_int_equal(loop_new(&e->loop), 0);
	assert_int_equal(qmp_server_new(&e->s, e->path, e->loop, err, sizeof(err)), 0);
	assert_int_equal(qmp_register(e->s, "echo", fake_echo, NULL), 0);
	assert_int_equal(qmp_register(e->s, "fail", fake_fail, NULL), 0);
	assert_int_equal(qmp_register(e->s, "big", fake_big, NULL), 0);
	assert_int_equal(qmp_register(e->s, "emit", fake_emit, e), 0);
	assert_int_equal(qmp_register(e->s, "fake-quit", fake_quit, e), 0);
	assert_int_equal(qmp_register(e->s, "echo", fake_echo, NULL), -EEXIST);
	*state = e;
	return 0;
}

static int env_teardown(void **state)
{
	struct tenv *e = *state;
	char cmd[128];

	qmp_server_free(e->s);
	loop_free(e->loop);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	if (system(cmd) != 0)
		return -1;
	free(e);
	return 0;
}

static void pump(struct tenv *e, int ms)
{
	assert_true(loop_run_once(e->loop, ms) >= 0);
}

static int unix_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -errno;
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	return fd;
}

static void cli_close(struct tcli *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
	c->fd = -1;
	c->buf = NULL;
	c->len = c->cap = 0;
}

static void cli_send(struct tenv *e, struct tcli *c, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
			pump(e, 10);
			continue;
		}
		p += n;
		len -= n;
	}
	pump(e, 0);
}

static void cli_sends(struct tenv *e, struct tcli *c, const char *text)
{
	cli_send(e, c, text, strlen(text));
}

/* Next message from the server, or NULL on EOF or after 3 s. */
static json_t *cli_recv(struct tenv *e, struct tcli *c)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
		ssize_t n;

		if (nl) {
			size_t l = nl - c->buf + 1;
			json_error_t jerr;
			json_t *m;

			assert_true(l >= 2 && c->buf[l - 2] == '\r');
			m = json_loadb(c->buf, l, 0, &jerr);
			if (!m)
				fail_msg("bad message from server: %s", jerr.text);
			memmove(c->buf, c->buf + l, c->len - l);
			c->len -= l;
			return m;
		}
		if (c->cap - c->len < 65536) {
			c->cap = c->cap ? c->cap * 2 : 65536;
			c->buf = realloc(c->buf, c->cap);
			assert_non_null(c->buf);
		}
		n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return NULL;
		if (n > 0) {
			c->len += n;
			continue;
		}
		assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec - t0.tv_sec > 3)
			return NULL;
		pump(e, 10);
	}
}

/* Next reply, skipping events. */
static json_t *cli_reply(struct tenv *e, struct tcli *c)
{
	for (;;) {
		json_t *m = cli_recv(e, c);
		if (!m || !json_object_get(m, "event"))
			return m;
		json_decref(m);
	}
}

static json_t *cli_cmd(struct tenv *e, struct tcli *c, const char *text)
{
	cli_sends(e, c, text);
	cli_sends(e, c, "\n");
	return cli_reply(e, c);
}

/* Connects and reads the greeting; negotiates when asked. */
static struct tcli cli_open(struct tenv *e, bool negotiate)
{
	struct tcli c = {.fd = unix_connect(e->path)};
	json_t *m;

	assert_true(c.fd >= 0);
	m = cli_recv(e, &c);
	assert_non_null(m);
	assert_non_null(json_object_get(m, "QMP"));
	json_decref(m);
	if (negotiate) {
		m = cli_cmd(e, &c, "{\"execute\": \"qmp_capabilities\"}");
		assert_non_null(m);
		assert_true(json_is_object(json_object_get(m, "return")));
		json_decref(m);
	}
	return c;
}

static void assert_error(json_t *m, const char *cls, const char *desc)
{
	json_t *err;

	assert_non_null(m);
	err = json_object_get(m, "error");
	if (!err)
		fail_msg("expected an error, got %s", json_dumps(m, 0));
	assert_string_equal(json_string_value(json_object_get(err, "class")), cls);
	if (desc)
		assert_string_equal(json_string_value(json_object_get(err, "desc")), desc);
	json_decref(m);
}

/* Asserts a {"return": ...} and gives the return value (owned by m). */
static json_t *assert_return(json_t *m)
{
	json_t *r;

	assert_non_null(m);
	r = json_object_get(m, "return");
	if (!r)
		fail_msg("expected a return, got %s", json_dumps(m, 0));
	return r;
}

static void assert_ok(struct tenv *e, struct tcli *c)
{
	json_t *m =
	    cli_cmd(e, c, "{\"execute\": \"echo\", \"arguments\": {\"ok\": 1}, \"id\": \"ok\"}");
	json_t *r = assert_return(m);

	assert_int_equal(json_integer_value(json_object_get(r, "ok")), 1);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "ok");
	json_decref(m);
}

/* ---- protocol --------------------------------------------------------- */

static void test_greeting(void **state)
{
	struct tenv *e = *state;
	struct tcli c = {.fd = unix_connect(e->path)};
	json_t *m, *want;
	char *text;

	assert_true(c.fd >= 0);
	m = cli_recv(e, &c);
	want = json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[]}}", "QMP", "version", "qemu", "micro",
			 CPRVM_VERSION_MICRO, "minor", CPRVM_VERSION_MINOR, "major",
			 CPRVM_VERSION_MAJOR, "package", "cprvm", "capabilities");
	assert_true(json_equal(m, want));
	/* Key order as QEMU prints it. */
	text = json_dumps(m, 0);
	assert_string_equal(text, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 1, "
				  "\"major\": 0}, \"package\": \"cprvm\"}, \"capabilities\": []}}");
	free(text);
	json_decref(m);
	json_decref(want);
	cli_close(&c);
}

static void test_negotiation(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, false);
	json_t *m;

	m = cli_cmd(e, &c, "{\"execute\": \"echo\", \"id\": 7}");
	assert_int_equal(json_integer_value(json_object_get(m, "id")), 7);
	assert_error(m, "CommandNotFound",
		     "Expecting capabilities negotiation with 'qmp_capabilities'");
	assert_error(cli_cmd(e, &c, "{\"execute\": \"nosuch\"}"), "CommandNotFound",
		     "Expecting capabilities negotiation with 'qmp_capabilities'");
	assert_error(cli_cmd(e, &c,
			     "{\"execute\": \"qmp_capabilities\", \"arguments\": "
			     "{\"enable\": [\"oob\"]}}"),
		     "GenericError", "Capability 'oob' not available");
	assert_error(cli_cmd(e, &c,
			     "{\"execute\": \"qmp_capabilities\", \"arguments\": "
			     "{\"bogus\": 1}}"),
		     "GenericError", "Parameter 'bogus' is unexpected");
	m = cli_cmd(e, &c,
		    "{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": []}, "
		    "\"id\": \"neg\"}");
	assert_int_equal(json_object_size(assert_return(m)), 0);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "neg");
	json_decref(m);
	assert_error(cli_cmd(e, &c, "{\"execute\": \"qmp_capabilities\"}"), "CommandNotFound",
		     "Capabilities negotiation is already complete, command ignored");
	assert_ok(e, &c);
	cli_close(&c);
}

static void test_id_echoed(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	static const char *const ids[] = {"\"abc\"", "12", "{\"x\": [1, 2]}", "null", "-1.5"};
	char req[256];

	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		json_t *id = json_loads(ids[i], JSON_DECODE_ANY, NULL);
		json_t *m;

		snprintf(req, sizeof(req), "{\"id\": %s, \"execute\": \"echo\"}", ids[i]);
		m = cli_cmd(e, &c, req);
		assert_non_null(json_object_get(m, "return"));
		assert_true(json_equal(json_object_get(m, "id"), id));
		json_decref(m);
		snprintf(req, sizeof(req), "{\"execute\": \"fail\", \"id\": %s}", ids[i]);
		m = cli_cmd(e, &c, req);
		assert_true(json_equal(json_object_get(m, "id"), id));
		assert_error(m, "GenericError", "fake failure 42");
		json_decref(id);
	}
	/* No id, no id in the reply. */
	{
		json_t *m = cli_cmd(e, &c, "{\"execute\": \"echo\"}");
		assert_null(json_object_get(m, "id"));
		assert_int_equal(json_object_size(assert_return(m)), 0);
		json_decref(m);
	}
	cli_close(&c);
}

static void test_unknown_command(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	json_t *m = cli_cmd(e, &c, "{\"execute\": \"foo\", \"id\": 1}");

	assert_int_equal(json_integer_value(json_object_get(m, "id")), 1);
	assert_error(m, "CommandNotFound", "The command foo has not been found");
	assert_ok(e, &c);
	cli_close(&c);
}

static void test_query_commands(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	json_t *m = cli_cmd(e, &c, "{\"execute\": \"query-commands\"}");
	json_t *list = assert_return(m), *v;
	bool seen_cap = false, seen_echo = false;
	size_t i;

	assert_true(json_is_array(list));
	json_array_foreach(list, i, v)
	{
		const char *n = json_string_value(json_object_get(v, "name"));
		assert_non_null(n);
		seen_cap |= !strcmp(n, "qmp_capabilities");
		seen_echo |= !strcmp(n, "echo");
	}
	assert_true(seen_cap && seen_echo);
	json_decref(m);
	assert_error(cli_cmd(e, &c, "{\"execute\": \"query-commands\", \"arguments\": {\"x\": 1}}"),
		     "GenericError", "Parameter 'x' is unexpected");
	cli_close(&c);
}

static void test_malformed(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	/* text, and how many errors it earns */
	static const struct {
		const char *text;
		int errors;
	} bad[] = {
	    {"{\"execute\": }", 1},
	    {"{\"execute\": \"echo\" \"x\"}", 1},
	    {"{\"execute\": \"echo\", \"execute\": \"echo\"}", 1}, /* duplicate key */
	    {"nope", 1},
	    {"\"a string\"", 1},
	    {"42", 1},
	    {"{\"execute\": \"echo\", \"arguments\": {\"s\": \"\\q\"}}", 1},  /* bad escape */
	    {"{\"execute\": \"echo\", \"arguments\": {\"s\": \"a\nb\"}}", 2}, /* raw newline */
	    {"{\"execute\": \"echo\"]", 1},
	    {"{\"execute\": nul}", 1},
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_error(cli_cmd(e, &c, bad[i].text), "GenericError", NULL);
		/* A raw newline ends the string's line: the rest is a second error. */
		for (int k = 1; k < bad[i].errors; k++)
			assert_error(cli_reply(e, &c), "GenericError", NULL);
		assert_ok(e, &c);
	}
	assert_error(cli_cmd(e, &c, "[1, 2]"), "GenericError", "QMP input must be a JSON object");
	assert_error(cli_cmd(e, &c, "{\"foo\": 1}"), "GenericError",
		     "QMP input lacks member 'execute'");
	assert_error(cli_cmd(e, &c, "{\"execute\": 5}"), "GenericError",
		     "QMP input member 'execute' must be a string");
	assert_error(cli_cmd(e, &c, "{\"execute\": \"echo\", \"arguments\": [1]}"), "GenericError",
		     "QMP input member 'arguments' must be an object");
	/* Error replies to requests carry their id too. */
	{
		json_t *m =
		    cli_cmd(e, &c, "{\"execute\": \"echo\", \"arguments\": 3, \"id\": \"i\"}");
		assert_string_equal(json_string_value(json_object_get(m, "id")), "i");
		assert_error(m, "GenericError", NULL);
	}
	assert_ok(e, &c);
	cli_close(&c);
}

static void test_two_objects_one_write(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	json_t *m;

	/* No newline between them, none at the end. */
	cli_sends(e, &c,
		  "{\"execute\": \"echo\", \"id\": 1}{\"execute\": \"fail\", \"id\": 2}"
		  "  \r\n\t{\"execute\": \"echo\", \"id\": 3}");
	m = cli_reply(e, &c);
	assert_int_equal(json_integer_value(json_object_get(m, "id")), 1);
	assert_return(m);
	json_decref(m);
	m = cli_reply(e, &c);
	assert_int_equal(json_integer_value(json_object_get(m, "id")), 2);
	assert_error(m, "GenericError", "fake failure 42");
	m = cli_reply(e, &c);
	assert_int_equal(json_integer_value(json_object_get(m, "id")), 3);
	json_decref(m);
	cli_close(&c);
}

static void test_split_object(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	const char *req = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"}{]\\\"[\\\\\",\"t\":"
			  "{\"u\":[\"}\"]}},\"id\":\"split\"}";
	json_t *m, *want;

	/* Byte by byte: no reply may come before the last byte. */
	for (size_t i = 0; req[i]; i++) {
		cli_send(e, &c, req + i, 1);
		pump(e, 0);
		if (req[i + 1]) {
			char b;
			assert_true(recv(c.fd, &b, 1, MSG_PEEK) < 0 && errno == EAGAIN);
		}
	}
	m = cli_reply(e, &c);
	want = json_pack("{s:s,s:{s:[s]}}", "s", "}{]\"[\\", "t", "u", "}");
	assert_true(json_equal(assert_return(m), want));
	assert_string_equal(json_string_value(json_object_get(m, "id")), "split");
	json_decref(m);
	json_decref(want);
	cli_close(&c);
}

static void test_oversized(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	size_t n = QMP_MAX_INPUT + QMP_MAX_INPUT / 2;
	char *big = malloc(n);
	const char *head = "{\"execute\": \"echo\", \"arguments\": {\"s\": \"";
	json_t *m;

	memset(big, 'a', n);
	memcpy(big, head, strlen(head));
	cli_send(e, &c, big, n);
	m = cli_reply(e, &c);
	assert_error(m, "GenericError", NULL);
	/* The rest of that line is discarded, then all is well again. */
	cli_sends(e, &c, "aaaa\"}, \"id\": \"lost\"}\n");
	assert_ok(e, &c);
	/* Just below the limit is fine. */
	n = QMP_MAX_INPUT - 100;
	memset(big, 'b', n);
	memcpy(big, head, strlen(head));
	memcpy(big + n - 4, "\"}}\n", 4);
	cli_send(e, &c, big, n);
	m = cli_reply(e, &c);
	assert_int_equal(strlen(json_string_value(json_object_get(assert_return(m), "s"))),
			 n - 4 - strlen(head));
	json_decref(m);
	assert_ok(e, &c);
	free(big);
	cli_close(&c);
}

/* ---- events ----------------------------------------------------------- */

static void test_events(void **state)
{
	struct tenv *e = *state;
	struct tcli a = cli_open(e, true), b = cli_open(e, false), d = cli_open(e, true);
	json_t *data = json_pack("{s:b,s:s}", "guest", 0, "reason", "host-qmp-quit");
	json_t *m, *ts;

	qmp_event(e->s, "STOP", NULL);
	qmp_event(e->s, "SHUTDOWN", data);
	qmp_event(NULL, "IGNORED", NULL);
	json_decref(data);
	for (int i = 0; i < 2; i++) {
		struct tcli *c = i ? &d : &a;
		m = cli_recv(e, c);
		assert_string_equal(json_string_value(json_object_get(m, "event")), "STOP");
		assert_null(json_object_get(m, "data"));
		ts = json_object_get(m, "timestamp");
		assert_true(json_integer_value(json_object_get(ts, "seconds")) > 1600000000);
		assert_true(json_integer_value(json_object_get(ts, "microseconds")) < 1000000);
		assert_true(json_is_integer(json_object_get(ts, "microseconds")));
		json_decref(m);
		m = cli_recv(e, c);
		assert_string_equal(json_string_value(json_object_get(m, "event")), "SHUTDOWN");
		assert_string_equal(
		    json_string_value(json_object_get(json_object_get(m, "data"), "reason")),
		    "host-qmp-quit");
		json_decref(m);
	}
	/* The client that has not negotiated got nothing: its next message is
	 * the reply to its own request. */
	m = cli_cmd(e, &b, "{\"execute\": \"qmp_capabilities\", \"id\": \"b\"}");
	assert_string_equal(json_string_value(json_object_get(m, "id")), "b");
	json_decref(m);

	/* An event raised inside a handler arrives before the reply. */
	cli_sends(e, &a, "{\"execute\": \"emit\", \"id\": \"e\"}");
	m = cli_recv(e, &a);
	assert_string_equal(json_string_value(json_object_get(m, "event")), "FAKE_IN_HANDLER");
	json_decref(m);
	m = cli_recv(e, &a);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "e");
	json_decref(m);
	m = cli_recv(e, &b);
	assert_string_equal(json_string_value(json_object_get(m, "event")), "FAKE_IN_HANDLER");
	json_decref(m);
	cli_close(&a);
	cli_close(&b);
	cli_close(&d);
}

static void test_after_reply(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	json_t *m;

	assert_error(cli_cmd(e, &c, "{\"execute\": \"fake-quit\", \"arguments\": {\"no\": 1}}"),
		     "GenericError", "Parameter 'no' is unexpected");
	assert_int_equal(e->after_calls, 0);
	m = cli_cmd(e, &c, "{\"execute\": \"fake-quit\", \"arguments\": {\"why\": 1}, \"id\": 9}");
	assert_int_equal(json_integer_value(json_object_get(m, "id")), 9);
	json_decref(m);
	assert_int_equal(e->after_calls, 1);
	assert_true(e->after_saw_reply_sent);
	cli_close(&c);
}

/* ---- clients coming and going ----------------------------------------- */

static void test_disconnect_mid_request(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true), d;

	cli_sends(e, &c, "{\"execute\": \"echo\", \"argum");
	cli_close(&c);
	for (int i = 0; i < 5; i++)
		pump(e, 10);
	/* A request whose reply nobody reads: no SIGPIPE, no harm. */
	c = cli_open(e, true);
	cli_sends(e, &c, "{\"execute\": \"echo\"}\n{\"execute\": \"echo\"}\n");
	close(c.fd);
	c.fd = -1;
	for (int i = 0; i < 5; i++)
		pump(e, 10);
	cli_close(&c);
	d = cli_open(e, true);
	assert_ok(e, &d);
	cli_close(&d);
}

static void test_half_close(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	json_t *m;

	cli_sends(e, &c, "{\"execute\": \"echo\", \"id\": \"hc\"}\n");
	shutdown(c.fd, SHUT_WR);
	m = cli_reply(e, &c);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "hc");
	json_decref(m);
	assert_null(cli_recv(e, &c)); /* then the server closes */
	cli_close(&c);
}

static void test_sequential_and_concurrent(void **state)
{
	struct tenv *e = *state;
	struct tcli a, b, c;
	json_t *m;

	for (int i = 0; i < 3; i++) {
		a = cli_open(e, true);
		assert_ok(e, &a);
		cli_close(&a);
	}
	/* Interleaved: negotiation is per client. */
	a = cli_open(e, false);
	b = cli_open(e, true);
	assert_error(cli_cmd(e, &a, "{\"execute\": \"echo\"}"), "CommandNotFound", NULL);
	assert_ok(e, &b);
	cli_sends(e, &a, "{\"execute\": \"qmp_capa");
	cli_sends(e, &b, "{\"execute\": \"echo\", \"id\": \"b1\"}\n");
	c = cli_open(e, true);
	cli_sends(e, &a, "bilities\", \"id\": \"a1\"}\n");
	m = cli_reply(e, &b);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "b1");
	json_decref(m);
	m = cli_reply(e, &a);
	assert_string_equal(json_string_value(json_object_get(m, "id")), "a1");
	json_decref(m);
	assert_ok(e, &a);
	assert_ok(e, &c);
	cli_close(&b);
	assert_ok(e, &a);
	cli_close(&a);
	cli_close(&c);
}

static void test_slow_reader_dropped(void **state)
{
	struct tenv *e = *state;
	struct tcli a = cli_open(e, true), b;
	json_t *m;
	size_t got = 0;
	bool eof = false;

	/* 20 x 512 KiB replies, never read: well past QMP_MAX_OUTPUT. */
	for (int i = 0; i < 20; i++) {
		static const char req[] =
		    "{\"execute\": \"big\", \"arguments\": {\"size\": 524288}}\n";
		/* Once dropped, sends fail (EPIPE): that is the point. */
		if (send(a.fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0)
			assert_true(errno == EPIPE || errno == ECONNRESET || errno == EAGAIN);
		pump(e, 1);
	}
	for (int i = 0; i < 10; i++)
		pump(e, 5);
	b = cli_open(e, true);
	assert_ok(e, &b);
	/* a gets what was in flight, then EOF: it was dropped. */
	while (!eof) {
		m = cli_recv(e, &a);
		if (!m)
			eof = true;
		else
			got++;
		json_decref(m);
	}
	assert_true(got < 20);
	assert_ok(e, &b);
	cli_close(&a);
	cli_close(&b);
}

static void test_flush(void **state)
{
	struct tenv *e = *state;
	struct tcli a = cli_open(e, true);
	json_t *m;

	qmp_event(e->s, "X", NULL);
	assert_int_equal(qmp_server_flush(e->s, 1000), 0);
	/* Everything is in the socket: readable without pumping the loop. */
	{
		char b;
		assert_int_equal(recv(a.fd, &b, 1, MSG_PEEK), 1);
	}
	m = cli_recv(e, &a);
	assert_string_equal(json_string_value(json_object_get(m, "event")), "X");
	json_decref(m);
	cli_close(&a);
}

/* ---- the socket path -------------------------------------------------- */

static void test_socket_mode(void **state)
{
	struct tenv *e = *state;
	struct stat st;

	assert_int_equal(lstat(e->path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
}

static void test_bad_paths(void **state)
{
	struct tenv *e = *state;
	struct qmp_server *s = NULL;
	char err[256], p[256], longp[300];
	struct stat st;
	int fd;

	assert_int_equal(qmp_server_new(&s, "/nonexistent/dir/q.sock", e->loop, err, sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/dir/q.sock"));
	assert_null(strchr(err, '\n'));

	/* A component that is a file. */
	snprintf(p, sizeof(p), "%s/file", e->dir);
	fd = open(p, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	snprintf(p, sizeof(p), "%s/file/q.sock", e->dir);
	assert_int_equal(qmp_server_new(&s, p, e->loop, err, sizeof(err)), -ENOTDIR);
	assert_non_null(strstr(err, p));

	/* A regular file at the path is left alone. */
	snprintf(p, sizeof(p), "%s/file", e->dir);
	assert_int_equal(qmp_server_new(&s, p, e->loop, err, sizeof(err)), -EEXIST);
	assert_non_null(strstr(err, "not a socket"));
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_size, 4);

	/* A live socket (this test's own server) is refused and kept. */
	assert_int_equal(qmp_server_new(&s, e->path, e->loop, err, sizeof(err)), -EADDRINUSE);
	assert_non_null(strstr(err, "in use"));
	for (int i = 0; i < 3; i++)
		pump(e, 5); /* the probe's connection comes and goes */
	{
		struct tcli c = cli_open(e, true);
		assert_ok(e, &c);
		cli_close(&c);
	}

	memset(longp, 'x', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = 0;
	assert_int_equal(qmp_server_new(&s, longp, e->loop, err, sizeof(err)), -ENAMETOOLONG);

	/* A directory we may not write (meaningless as root). */
	if (geteuid() != 0) {
		snprintf(p, sizeof(p), "%s/ro", e->dir);
		assert_int_equal(mkdir(p, 0500), 0);
		snprintf(p, sizeof(p), "%s/ro/q.sock", e->dir);
		assert_int_equal(qmp_server_new(&s, p, e->loop, err, sizeof(err)), -EACCES);
		assert_non_null(strstr(err, p));
	}
	assert_null(s);
}

static void test_stale_socket(void **state)
{
	struct tenv *e = *state;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct qmp_server *s;
	char err[256], p[100];
	struct tenv e2 = *e;
	struct tcli c;
	int fd;

	/* A socket file nobody listens on: what a crashed cprvm leaves. */
	snprintf(p, sizeof(p), "%s/stale.sock", e->dir);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(unix_connect(p), -ECONNREFUSED);

	assert_int_equal(qmp_server_new(&s, p, e->loop, err, sizeof(err)), 0);
	assert_int_equal(qmp_register(s, "echo", fake_echo, NULL), 0);
	snprintf(e2.path, sizeof(e2.path), "%s", p);
	e2.s = s;
	c = cli_open(&e2, true);
	assert_ok(&e2, &c);
	/* Freed with a client connected; the path goes away. */
	qmp_server_free(s);
	assert_null(cli_recv(e, &c));
	cli_close(&c);
	assert_int_equal(access(p, F_OK), -1);
}

static void test_free_spares_foreign_path(void **state)
{
	struct tenv *e = *state;
	struct qmp_server *s;
	char err[256], p[128];
	int fd;

	snprintf(p, sizeof(p), "%s/other.sock", e->dir);
	assert_int_equal(qmp_server_new(&s, p, e->loop, err, sizeof(err)), 0);
	/* Someone replaced our socket: not ours to remove any more. */
	assert_int_equal(unlink(p), 0);
	fd = open(p, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	qmp_server_free(s);
	assert_int_equal(access(p, F_OK), 0);
}

/* ---- lib/sock.h: listening as soon as the path exists ------------------- */

struct watcher {
	const char *path;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int round;    /* main thread: which round to watch for */
	int done;     /* watcher: the last round finished */
	int refused;  /* connections refused although the path existed */
	bool stop;
};

/* Spins until the path appears, then connects at once: what a client that
 * waits for the socket file does (the system tests' conftest), only faster. */
static void *watch(void *arg)
{
	struct watcher *w = arg;
	struct stat st;

	for (int r = 1;; r++) {
		pthread_mutex_lock(&w->lock);
		while (w->round < r && !w->stop)
			pthread_cond_wait(&w->cond, &w->lock);
		pthread_mutex_unlock(&w->lock);
		if (w->stop)
			return NULL;
		while (lstat(w->path, &st) < 0)
			;
		int fd = unix_connect(w->path);
		pthread_mutex_lock(&w->lock);
		if (fd == -ECONNREFUSED)
			w->refused++;
		w->done = r;
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
		if (fd >= 0)
			close(fd);
	}
}

/* fd is a socket listening at path: a client gets in. Closes fd. */
static void assert_listens_then_close(int fd, const char *path)
{
	int c;

	assert_true(fd >= 0);
	c = unix_connect(path);
	assert_true(c >= 0);
	close(c);
	close(fd);
}

static void test_unix_listen(void **state)
{
	struct tenv *e = *state;
	struct watcher w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	char p[128], tmp[160], longp[108];
	pthread_t t;
	struct stat st;
	int fd;

	snprintf(p, sizeof(p), "%s/l.sock", e->dir);
	w.path = p;
	assert_int_equal(pthread_create(&t, NULL, watch, &w), 0);
	/* Bound in place, about one client in a few hundred that saw the file
	 * was refused here (with both cores free): 2000 rounds catch it. */
	for (int r = 1; r <= 2000; r++) {
		unlink(p);
		pthread_mutex_lock(&w.lock);
		w.round = r;
		pthread_cond_signal(&w.cond);
		pthread_mutex_unlock(&w.lock);
		fd = unix_listen(p, 4, SOCK_CLOEXEC, 0);
		assert_true(fd >= 0);
		pthread_mutex_lock(&w.lock);
		while (w.done < r)
			pthread_cond_wait(&w.cond, &w.lock);
		pthread_mutex_unlock(&w.lock);
		close(fd);
	}
	pthread_mutex_lock(&w.lock);
	w.stop = true;
	pthread_cond_signal(&w.cond);
	pthread_mutex_unlock(&w.lock);
	pthread_join(t, NULL);
	assert_int_equal(w.refused, 0);

	/* The temporary name is gone; the umask applies to the file. */
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", p, (int)getpid());
	assert_int_equal(access(tmp, F_OK), -1);
	unlink(p);
	fd = unix_listen(p, 4, SOCK_CLOEXEC, 0177);
	assert_true(fd >= 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	/* Someone listens there: refused, their socket left alone. */
	assert_int_equal(unix_listen(p, 4, SOCK_CLOEXEC, 0), -EADDRINUSE);
	assert_listens_then_close(fd, p);

	/* Stale (nobody listens any more): replaced. */
	assert_int_equal(unix_connect(p), -ECONNREFUSED);
	assert_listens_then_close(unix_listen(p, 4, SOCK_CLOEXEC, 0), p);

	/* Not a socket: left intact. */
	unlink(p);
	fd = open(p, O_CREAT | O_WRONLY, 0600);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	assert_int_equal(unix_listen(p, 4, SOCK_CLOEXEC, 0), -EEXIST);
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 4);

	/* A path that leaves no room for the temporary name is bound in place;
	 * one that does not fit at all is refused. */
	memset(longp, 0, sizeof(longp));
	snprintf(longp, sizeof(longp), "%s/", e->dir);
	memset(longp + strlen(longp), 'y', sizeof(longp) - 1 - strlen(longp));
	assert_listens_then_close(unix_listen(longp, 4, SOCK_CLOEXEC, 0), longp);
	unlink(longp);
	{
		char toolong[200];
		memset(toolong, 'z', sizeof(toolong) - 1);
		toolong[0] = '/';
		toolong[sizeof(toolong) - 1] = 0;
		assert_int_equal(unix_listen(toolong, 4, SOCK_CLOEXEC, 0), -ENAMETOOLONG);
	}
}

/* ---- fuzz-ish --------------------------------------------------------- */

static void fuzz_fill(char *buf, size_t n, unsigned *seed)
{
	static const char alpha[] = "{}[]\":,\\ \n\t0123456789-+.eEtruefalsnull\"execute\"id";
	static const char tmpl[] = "{\"execute\": \"echo\", \"arguments\": {\"a\": [1, \"x\\\"\"]},"
				   " \"id\": \"m\"}";
	int kind = rand_r(seed) % 3;

	for (size_t i = 0; i < n; i++) {
		if (kind == 0)
			buf[i] = (char)(rand_r(seed) & 0xff);
		else if (kind == 1)
			buf[i] = alpha[rand_r(seed) % (sizeof(alpha) - 1)];
		else
			buf[i] = tmpl[i % (sizeof(tmpl) - 1)];
	}
	if (kind == 2) /* a few flipped bytes */
		for (int k = 0; k < 3; k++)
			buf[rand_r(seed) % n] = (char)(rand_r(seed) & 0xff);
}

static void test_fuzz(void **state)
{
	struct tenv *e = *state;
	struct tcli c = cli_open(e, true);
	unsigned seed = 12345;
	char buf[600], req[128], want[32];

	for (int it = 0; it < 400; it++) {
		size_t n = 1 + rand_r(&seed) % sizeof(buf);
		int msgs = 0;
		json_t *m;

		fuzz_fill(buf, n, &seed);
		cli_send(e, &c, buf, n);
		/* 0xff then newline: resets the framing whatever state it is in. */
		snprintf(want, sizeof(want), "fuzz-%d", it);
		snprintf(req, sizeof(req), "\xff\n{\"execute\": \"echo\", \"id\": \"%s\"}\n", want);
		cli_sends(e, &c, req);
		for (;;) {
			const char *id;
			m = cli_recv(e, &c);
			if (!m)
				fail_msg("iteration %d: connection lost or no reply", it);
			id = json_string_value(json_object_get(m, "id"));
			if (id && !strcmp(id, want)) {
				assert_non_null(json_object_get(m, "return"));
				json_decref(m);
				break;
			}
			json_decref(m);
			assert_true(++msgs < 2000);
		}
	}
	/* Garbage, then a hang-up mid-way, many times. */
	for (int it = 0; it < 50; it++) {
		struct tcli d = cli_open(e, it & 1);
		size_t n = 1 + rand_r(&seed) % sizeof(buf);
		fuzz_fill(buf, n, &seed);
		cli_send(e, &d, buf, n);
		cli_close(&d);
	}
	for (int i = 0; i < 10; i++)
		pump(e, 5);
	assert_ok(e, &c);
	cli_close(&c);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, env_setup, env_teardown)
	const struct CMUnitTest tests[] = {
	    T(test_greeting),
	    T(test_negotiation),
	    T(test_id_echoed),
	    T(test_unknown_command),
	    T(test_query_commands),
	    T(test_malformed),
	    T(test_two_objects_one_write),
	    T(test_split_object),
	    T(test_oversized),
	    T(test_events),
	    T(test_after_reply),
	    T(test_disconnect_mid_request),
	    T(test_half_close),
	    T(test_sequential_and_concurrent),
	    T(test_slow_reader_dropped),
	    T(test_flush),
	    T(test_socket_mode),
	    T(test_bad_paths),
	    T(test_stale_socket),
	    T(test_free_spares_foreign_path),
	    T(test_unix_listen),
	    T(test_fuzz),
	};
#undef T
	log_set_level(LOG_ERR); /* the slow reader's drop is expected */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
