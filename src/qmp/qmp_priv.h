/* qmp_priv.h — what the QMP server's own files share (src/qmp only; the
 * public interface is qmp.h): the server, client, command and request
 * structs, and the helpers one file calls in another.
 *
 * Invariants:
 *  - A client in s->clients is freed only by qmp_reap(), and only while
 *    s->busy is zero: whoever runs client callbacks, handlers or event
 *    delivery holds s->busy up, so no client vanishes under its caller.
 *  - A dead client is already unwatched; it stays in the list, ignored,
 *    until it is reaped.
 *  - c->in[0, in_len) holds unparsed input (bounded by QMP_MAX_INPUT plus
 *    one read); c->out[out_off, out_len) is unsent output (bounded by
 *    QMP_MAX_OUTPUT). */
#ifndef CPRVM_QMP_PRIV_H
#define CPRVM_QMP_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "qmp/qmp.h"

/* One entry of the command table. */
struct qmp_cmd {
	const char *name;
	qmp_cmd_fn fn;
	void *opaque;
};

/* One connection: its socket, its input being framed, its unsent output. */
struct qmp_client {
	struct qmp_server *s;
	struct qmp_client *next;
	int fd;
	uint32_t events; /* what the loop watches for us */
	bool negotiated;
	bool dead;
	bool eof; /* peer shut down its side: write what is pending, then close */

	/* Input: in[0, in_len); bytes before scan have been scanned; a partial
	 * value starts at start (0 between calls to qmp_client_scan). */
	char *in;
	size_t in_len, in_cap, scan, start;
	int depth;
	bool in_str, esc, skipping;

	/* Output: out[out_off, out_len) is unsent. */
	char *out;
	size_t out_off, out_len, out_cap;
};

/* The listening socket, the command table and the connected clients. */
struct qmp_server {
	struct loop *loop;
	int fd;
	char *path;
	dev_t dev;
	ino_t ino;
	struct qmp_cmd *cmds;
	int nr_cmds;
	struct qmp_client *clients;
	int nr_clients;
	int busy; /* callbacks, handlers or deliveries on the stack */
};

/* One request while its handler runs: the first error it reports and what
 * runs once the reply is queued. */
struct qmp_req {
	struct qmp_server *s;
	struct qmp_client *c;
	bool failed;
	char cls[32];
	char desc[512];
	qmp_after_fn after;
	void *after_opaque;
};

/* qmp.c: frees the dead clients, unless s->busy says some caller may still
 * hold one. Whoever lowers s->busy calls it. */
void qmp_reap(struct qmp_server *s);

/* client.c: the loop's callback for a client's socket. */
void qmp_client_io(int fd, uint32_t events, void *opaque);
/* client.c: closes the socket and frees the client (see qmp_reap). */
void qmp_client_free(struct qmp_client *c);
/* client.c: writes what the socket takes now, without blocking. */
void qmp_client_write(struct qmp_client *c);
/* client.c: queues text plus "\r\n" and tries to send it at once; a client
 * whose pending output would pass QMP_MAX_OUTPUT is dropped instead. */
void qmp_client_send_text(struct qmp_client *c, const char *text);
/* client.c: sends msg and drops the caller's reference to it; NULL, or a
 * message that cannot be serialized, drops the client. */
void qmp_client_send(struct qmp_client *c, json_t *msg);
/* client.c: queues {"error": {"class": cls, "desc": ...}, "id": id} for c;
 * id may be NULL (borrowed). */
void qmp_client_reply_error(struct qmp_client *c, json_t *id, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* framing.c: scans the input received since the last call, dispatches each
 * complete value and answers input that cannot become JSON. */
void qmp_client_scan(struct qmp_client *c);

/* dispatch.c: runs one complete top-level value as a request and replies. */
void qmp_client_dispatch(struct qmp_client *c, const char *buf, size_t len);
/* dispatch.c: registers qmp_capabilities and query-commands; 0 or -errno. */
int qmp_register_builtins(struct qmp_server *s);

#endif
