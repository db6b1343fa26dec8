/* qmp.h — the QMP server: a unix socket speaking QEMU's Machine Protocol.
 *
 * Owns: the listening socket (and the path it created), the clients, their
 * input framing and output buffers, the command table and event delivery.
 * Knows nothing about VMs: commands.c binds VM operations to command names, so
 * unit tests can drive the server with fake commands.
 * Threading: everything here runs on the main loop's thread, including the
 * command handlers; qmp_event() too (post it with loop_call() from elsewhere).
 * Invariants: a client is only ever freed when no handler or event delivery is
 * on the stack; a client sees events only after it negotiated capabilities. */
#ifndef CPRVM_QMP_H
#define CPRVM_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/loop.h"

/* QEMU's error classes that cprvm uses. */
#define QMP_ERR_GENERIC	  "GenericError"
#define QMP_ERR_NOT_FOUND "CommandNotFound"

/* Limits: a request larger than this without completing is refused; a client
 * whose unsent replies grow beyond QMP_MAX_OUTPUT is disconnected. */
#define QMP_MAX_INPUT	(1u << 20)
#define QMP_MAX_OUTPUT	(4u << 20)
#define QMP_MAX_CLIENTS 32

struct qmp_server;
struct qmp_req;

/* A command handler. args is the request's "arguments" object or NULL when
 * absent (borrowed). Returns a new reference to the "return" value; NULL means
 * {}. To fail, call qmp_req_error() (any returned value is then dropped). */
typedef json_t *(*qmp_cmd_fn)(struct qmp_req *req, json_t *args, void *opaque);
/* Runs after a request's reply has been queued (see qmp_req_after_reply). */
typedef void (*qmp_after_fn)(struct qmp_server *s, void *opaque);

/* Listens on a unix socket at path, mode 0600. A stale socket at path (nobody
 * listening) is replaced; a live one, or anything that is not a socket, is
 * refused. Returns 0 or -errno with a one-line message naming path in err. */
int qmp_server_new(struct qmp_server **out, const char *path, struct loop *loop, char *err,
		   size_t errlen);
/* Tries briefly to deliver pending output, closes every client, unlinks the
 * socket path if it is still the one this server created. NULL is a no-op. */
void qmp_server_free(struct qmp_server *s);
/* The same, over a listening socket inherited from a previous cprvm
 * (live update) when adopt_fd >= 0. */
int qmp_server_new_fd(struct qmp_server **out, const char *path, int adopt_fd, struct loop *loop,
		      char *err, size_t errlen);
/* The socket file now belongs to another process: do not unlink it. */
void qmp_server_release_path(struct qmp_server *s);
/* The listening socket, for live update to hand over. */
int qmp_server_listen_fd(struct qmp_server *s);
/* Blocks up to timeout_ms writing every client's pending output. Returns 0
 * when all was written, -ETIMEDOUT otherwise. Clients that fail are dropped. */
int qmp_server_flush(struct qmp_server *s, int timeout_ms);

/* name must stay valid while s lives (string literals). 0, -EEXIST, -ENOMEM. */
int qmp_register(struct qmp_server *s, const char *name, qmp_cmd_fn fn, void *opaque);

/* For handlers. The error class is one of QMP_ERR_*; desc is for a person. */
void qmp_req_error(struct qmp_req *req, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Calls fn(s, opaque) once the reply to req is queued: "quit" replies first,
 * then flushes and ends the process. */
void qmp_req_after_reply(struct qmp_req *req, qmp_after_fn fn, void *opaque);
/* Refuses (GenericError "Parameter 'x' is unexpected") any member of args not
 * named in allowed (a NULL-terminated list; NULL allows nothing). */
bool qmp_args_check(struct qmp_req *req, json_t *args, const char *const *allowed);

/* Sends {"event": name, "data": data, "timestamp": ...} to every negotiated
 * client; "data" is left out when data is NULL. data is borrowed. s may be
 * NULL (no --qmp): nothing happens. */
void qmp_event(struct qmp_server *s, const char *name, json_t *data);

/* {"qemu": {"micro": .., "minor": .., "major": ..}, "package": "cprvm"} */
json_t *qmp_version_json(void);

/* commands.c: binds the VM's commands and events to s. */
struct vm;
int qmp_commands_register(struct qmp_server *s, struct vm *vm);

#endif
