/* cpr.h — live update: replace the cprvm binary under a running guest,
 * every fd that carries state kept open.
 *
 * cpr-exec (same PID). A running guest keeps running through the exec: its
 * vCPUs go to runner processes that share the address space (vcpu.c), a
 * keeper task there waits for the new image, and the new image, once it has
 * built its VM, takes the guest over from the keeper with the cpr-transfer
 * protocol over a socketpair that crossed the exec (CPRVM_CPR_LIVE). A
 * paused guest is handed over stopped-first instead: the state stream in a
 * memfd (CPRVM_CPR_STATE), the old address space kept by a clone(CLONE_VM)
 * keeper so execve() does not pay for tearing it down, FD_CLOEXEC cleared on
 * exactly the fds named in the registry. Either way, if the new image cannot
 * take over, it exec()s the previous binary (an fd to it travels along),
 * which takes the guest the same way and reports the failure: the guest
 * never stops for good.
 *
 * cpr-transfer: a second process; cpr/proto.h has the protocol, and
 * cpr/cpr_priv.h lists the files that implement both modes. */
#ifndef CPRVM_CPR_H
#define CPRVM_CPR_H

#include <stdbool.h>
#include <stddef.h>

#include "vm/config.h"

#define CPR_ENV_STATE "CPRVM_CPR_STATE"
#define CPR_ENV_ROLLBACK "CPRVM_CPR_ROLLBACK"
#define CPR_ENV_LIVE "CPRVM_CPR_LIVE" /* "SOCK,EXEFD": live cpr-exec (exec_live.c) */
/* Set when the old image made the exec SCHED_BATCH (place.c). */
#define CPR_ENV_BATCH "CPRVM_CPR_BATCH"

struct vm;
struct loop;

/* The new side's QMP server is main's: the take-over hands it the
 * listening socket that came over, and says when the VM is there to serve
 * and when the take-over was refused. Each returns 0 or -errno with a
 * message in why. */
struct cpr_qmp_hooks {
	/* A server on fd, the handed-over listening socket (now the hook's).
	 * Called before the guest stops (cpr-transfer, live cpr-exec) or
	 * before the state is applied (stopped-first cpr-exec). */
	int (*adopt)(void *ctx, int fd, char *why, size_t whylen);
	/* The state is applied: commands and events over vm. */
	int (*attach)(void *ctx, struct vm *vm, char *why, size_t whylen);
	/* Refused after adopt: the server goes, its socket file stays (it is
	 * the old side's, which runs on). */
	void (*drop)(void *ctx);
	void *ctx;
};

/* main() calls this first: the argv and binary to re-exec by default. */
void cpr_init(int argc, char **argv);
/* The QMP listening socket to hand over (main registers it). */
void cpr_set_qmp_fd(int fd);
/* migrate-set-parameters cpr-exec-command; NULL: this binary, same args. */
int cpr_set_exec_command(char **argv, int argc);
const char *const *cpr_get_exec_command(int *argc);

/* Outgoing (main thread, from QMP migrate's after-reply hook). Returns only
 * on failure, with the guest running again. */
int cpr_exec(struct vm *vm, char *err, size_t errlen);

/* Incoming: true if this process was exec()ed by a live update. */
bool cpr_incoming_pending(void);
/* Builds the VM from the handed-over state and fds, QMP through qmp's
 * hooks, and starts the guest. On failure it rolls back (exec()s the
 * previous binary) and only returns if even that is impossible. */
int cpr_incoming(struct vm_config *cfg, struct loop *loop, const struct cpr_qmp_hooks *qmp,
		 struct vm **vm_out, char *err, size_t errlen);

/* cpr-transfer, old side: the new process listens on path (started with
 * --incoming unix:PATH). 0: the guest runs there now and this process must
 * exit without touching shared files; <0: the guest runs here again. */
int cpr_transfer(struct vm *vm, const char *path, char *err, size_t errlen);
/* New side: waits for the old process on path, then as cpr_incoming. */
int cpr_transfer_incoming(struct vm_config *cfg, struct loop *loop, const char *path,
			  const struct cpr_qmp_hooks *qmp, struct vm **vm_out, char *err,
			  size_t errlen);

#endif
