/* cpr_priv.h — what the files of cpr/ share about live update; nothing
 * outside cpr/ includes it. The files, by what each owns:
 *   registry.c     the fd registry (section "cpr"), this image's argv and
 *                  exec command
 *   proto.c        the wire protocol between the two sides (proto.h)
 *   place.c        CPU placement and scheduling policy around the blackout
 *   prefault.c     page faults taken before the blackout instead of in it
 *   early.c        early vCPU state: sent part by part after the stop, set
 *                  while the stream is still on its way
 *   takeover.c     the new side's common end, either mode: adopt the
 *                  devices, apply the state, start the guest
 *   transfer_in.c  cpr-transfer, new side (also the new image of a live
 *                  cpr-exec)
 *   transfer_out.c cpr-transfer, old side (also a live cpr-exec's keeper),
 *                  and the live-update stream both modes send
 *   exec.c         cpr-exec of a paused guest, and the way back to the
 *                  previous binary
 *   exec_live.c    cpr-exec of a running guest: keeper, runners, hello */
#ifndef CPRVM_CPR_PRIV_H
#define CPRVM_CPR_PRIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpr/cpr.h"
#include "cpr/proto.h"
#include "cpr/snapshot.h"
#include "state/state.h"
#include "vm/vm_priv.h"

#define CPR_ARGV_MAX 8192

/* --- registry.c ------------------------------------------------------------ */

struct cpr_fd {
	uint8_t name[24];
	uint32_t fd;
};

/* Section "cpr": the fd registry, what the new side needs to place its
 * threads, and what a rollback needs. */
struct cpr_state {
	uint32_t nr_fds;
	struct cpr_fd fds[CPR_MAX_FDS];
	uint64_t stop_ns;  /* CLOCK_MONOTONIC (system-wide) when the stop began */
	uint64_t paused_ns, captured_ns; /* every vCPU out; state in memory */
	uint32_t keeper_pid;
	uint32_t guest_paused; /* stopped by the user: stays stopped after */
	uint32_t prev_argv_len; /* the old image's argv, NUL-separated */
	char prev_argv[CPR_ARGV_MAX];
	/* Phase 1: the thread that runs each vCPU on the old side, for the
	 * new side to place its own (cpr_place_vcpus; cpr-transfer only). */
	uint32_t vcpu_tid_len; /* bytes */
	uint32_t vcpu_tid[CPRVM_MAX_CPUS];
	/* Phase 1, both modes: the tasks that run the old vCPUs (threads or
	 * runners), for the new side to keep its main thread off their CPUs
	 * (cpr_place_main). */
	uint32_t run_tid_len; /* bytes */
	uint32_t run_tid[CPRVM_MAX_CPUS];
	/* Phase 1, old side: what it can send (CPR_CAP_*); a new side that
	 * takes one up says so in its answer. */
	uint32_t caps;
	uint64_t resumed_ns; /* not sent: this side let the vCPUs go */
};

/* The vCPUs' state in phase 2 as the early messages' own bytes (sections
 * "vcpu-early/N", early.c): the new side answers READY_EARLY, not READY. */
#define CPR_CAP_EARLY_SECTIONS 0x1u
extern const struct state_desc cpr_state_desc;

/* This image: how it was started, and what a cpr-exec runs next. */
struct cpr_image {
	int argc;
	char **argv;      /* this image's own */
	char exe[4096];   /* /proc/self/exe at start-up */
	char **exec_argv; /* cpr-exec-command, or NULL */
	int exec_argc;
	int qmp_fd;
};
extern struct cpr_image cpr_image;

/* The registry's names (registry.c says who registers each). */
#define CPR_FD_RAM "ram"
#define CPR_FD_QMP "qmp"
#define CPR_FD_SERIAL_LISTEN "serial0-listen"
#define CPR_FD_SERIAL_CONN "serial0-conn"
#define CPR_FD_KEEPER "keeper"
#define CPR_FD_PREV_EXE "prev-exe"
#define CPR_FD_VCPU_EARLY "vcpu-early"

/* The fds of the VM itself that every live update hands over, whatever
 * the mode: each send site names these, then its own. */
struct cpr_fd_source {
	const char *name;
	int fd; /* -1: none */
};
#define CPR_FD_SOURCES_MAX 8
int cpr_fd_sources(const struct vm *vm, const struct chardev_handover *ho,
		   struct cpr_fd_source src[CPR_FD_SOURCES_MAX]);

/* Names an fd in the registry: 0, or -E2BIG when full (fd < 0: skipped). */
int cpr_add_fd(struct cpr_state *cs, const char *name, int fd);
/* The fd registered under name, or -1. */
int cpr_find_fd(const struct cpr_state *cs, const char *name);
/* A close-on-exec dup of it (>= 3), or -1: the new side uses dups, so a
 * failed take-over can give the untouched originals back. */
int cpr_claim_fd(const struct cpr_state *cs, const char *name);
/* FD_CLOEXEC set or cleared on exactly the registry's fds. */
void cpr_set_cloexec(const struct cpr_state *cs, bool on);
/* This image's argv into the registry: how to start it again. */
void cpr_put_prev_argv(struct cpr_state *cs);
/* The registry of a stream; with recv_fds (cpr-transfer), its fd numbers
 * are indexes into the fds that came with the message. */
int cpr_load_registry(const uint8_t *buf, size_t len, struct cpr_state *cs,
		      const int *recv_fds, int nr_recv, char *why, size_t whylen);
/* --- place.c --------------------------------------------------------------- */

extern bool cpr_batch;
void cpr_batch_begin(void);
void cpr_batch_end(struct vm *vm);
void cpr_place_vcpus(struct vm *vm, const struct cpr_state *cs);
void cpr_place_vcpus_late(struct vm *vm);
void cpr_place_main(const struct cpr_state *cs);
void cpr_unplace_main(void);
void cpr_unplace_vcpus(struct vm *vm);

/* --- prefault.c ------------------------------------------------------------ */

void cpr_touch_pages(void *p, size_t n);
void cpr_warm_heap(int nr_cpus);
void cpr_prefault(void);
void cpr_guest_prefault(struct vm *vm, const struct vcpu_state *s);

/* --- early.c --------------------------------------------------------------- */

/* Old side, per vCPU: where its state is read to, and the early channel. */
struct cpr_early_out {
	struct vcpu_state *s;
	int fd;       /* the "vcpu-early" channel; -1: none */
	uint8_t *buf; /* VCPU_EARLY_MAX */
	/* Tests: early-skip-lapic sends no LAPIC part; early-wrong-regs sends
	 * a registers part whose RIP is off by one. The stream must win either
	 * way. ahead-wrong-msr (-tsc): the MSRs read ahead of the stop say
	 * another SYSENTER_ESP (TSC offset) than the guest's: the new side must
	 * set the stream's. */
	bool skip_lapic, wrong_regs, wrong_ahead_msr, wrong_ahead_tsc;
};
/* Buffers touched and test faults read, before the stop. */
void cpr_early_out_init(struct cpr_early_out *o, struct vcpu_state *s, int fd);
void cpr_early_out_free(struct cpr_early_out *o);
/* vcpu_state_capture_parked_early's callback (ctx: struct cpr_early_out). */
void cpr_early_send(void *ctx, struct vcpu *v, const struct vcpu_state *s,
		    enum vcpu_early_part part);
/* A vcpu_post_at_exit job (arg: struct cpr_early_out): the MSRs ahead. */
int cpr_early_ahead(struct vcpu *v, void *arg);

/* New side: the channel and its buffers. */
struct cpr_early_in {
	int fd; /* -1: none */
	uint8_t *buf;
	struct vcpu_state *tmp;
};
void cpr_early_in_init(struct cpr_early_in *in, struct vm *vm, const struct cpr_state *cs);
void cpr_early_in_free(struct cpr_early_in *in);
void cpr_take_early(const struct cpr_early_in *in, struct vm *vm, bool answered);
void cpr_wait_state(int sock, const struct cpr_early_in *in, struct vm *vm, unsigned max_us);
bool cpr_early_sections_ok(struct vm *vm, const struct cpr_state *cs, int early_fd);

/* --- takeover.c ------------------------------------------------------------ */

/* The new side of a live update, in either mode, from the first message to
 * the guest running (takeover.c). */
struct cpr_takeover {
	struct vm_config *cfg;
	struct loop *loop;
	const struct cpr_qmp_hooks *qmp; /* main's QMP server */
	struct cpr_state *cs; /* the registry: what to claim, and the way back */
	int sock;             /* to the old side; -1: stopped-first cpr-exec */
	bool threads_parked;  /* vCPU threads made before the stop, parked */
	bool warm_up;         /* build the VM with the warm-up slot (warmup.c) */
	struct vm *vm;
	bool qmp_adopted;
	struct snapshot snap; /* the state, validated */
	struct stream_index idx;
	bool have_idx;
	struct chardev_handover *ho_room; /* or NULL; see cpr_takeover_finish */
	uint64_t t_adopt, t_built;        /* the state read; the VM ready for it */
	char *why;
	size_t whylen;
};

int cpr_takeover_build(struct cpr_takeover *t);
int cpr_takeover_adopt_serial(struct cpr_takeover *t, struct chardev_handover *ho,
			      bool before_stream);
int cpr_takeover_adopt_qmp(struct cpr_takeover *t);
int cpr_takeover_finish(struct cpr_takeover *t);
void cpr_takeover_done(struct cpr_takeover *t, uint64_t t_applied, const char *rollback);
void cpr_takeover_abandon(struct cpr_takeover *t);
void cpr_takeover_free(struct cpr_takeover *t);

/* --- transfer_in.c, transfer_out.c ----------------------------------------- */

/* The live-update stream, both modes: the machine with RAM handed over as
 * an fd, every device, the serial backend's unwritten bytes, the registry. */
int cpr_build_stream(struct vm *vm, const struct chardev_handover *ho,
		     const struct cpr_state *cs, const struct vcpu_state *captured,
		     bool early_sections, struct sbuf *b);


/* New side. The registry lands in *cs (the way back, for a live cpr-exec).
 * On failure the old side has been told why, and resumes the guest. */
int cpr_transfer_in(struct vm_config *cfg, struct loop *loop, int sock, struct cpr_state *cs,
		    const struct cpr_qmp_hooks *qmp, struct vm **vm_out, char *why, size_t whylen);
/* Old side. live: a live cpr-exec keeper (the registry carries this
 * image's argv, the way back; no time-outs). 0: the guest runs on the new
 * side now, never again here; <0: it runs here (again), and why says what
 * went wrong. */
int cpr_transfer_out(struct vm *vm, int sock, bool live, char *why, size_t whylen);

/* --- exec.c, exec_live.c --------------------------------------------------- */

void cpr_exec_prev(const struct cpr_state *cs, int exefd, const char *why);
int cpr_exec_live(struct vm *vm, const char *path, char **argv, int exefd, char *err,
		  size_t errlen);
int cpr_incoming_live(struct vm_config *cfg, struct loop *loop, const struct cpr_qmp_hooks *qmp,
		      struct vm **vm_out, char *err, size_t errlen);

#endif
