/* vm.h — struct vm: one guest, its lifecycle and run state.
 *
 * Owns: the KVM VM fd, guest memory, the vCPU threads and the device table.
 * Run states use QEMU's names so QMP clients see what they expect.
 * Threading: vm_* calls are made from the main thread (QMP, loop callbacks);
 * vCPU threads report to the main thread through loop_call(). */
#ifndef CPRVM_VM_H
#define CPRVM_VM_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/loop.h"
#include "vm/config.h"

enum vm_run_state {
	RUN_STATE_PRELAUNCH,
	RUN_STATE_RUNNING,
	RUN_STATE_PAUSED,
	RUN_STATE_SHUTDOWN,
	RUN_STATE_INTERNAL_ERROR,
	RUN_STATE_INMIGRATE,
	RUN_STATE_POSTMIGRATE,
};

struct vm;

/* Event sink (QMP). data_json is a JSON object text or NULL for no data. */
typedef void (*vm_event_fn)(void *opaque, const char *event, const char *data_json);

/* How vm_create builds a VM that does not boot fresh: a restore, or a live
 * update's new side. What the command line asks for stays in struct
 * vm_config; this is what the restore and live-update paths decide. */
struct vm_build {
	bool restoring; /* state is loaded after: no kernel, no boot registers */
	/* -1: RAM as the configuration says (a memfd, or --mem-path). Else,
	 * ram_shared: the guest's live RAM (a live update), mapped shared
	 * whole; or a snapshot's RAM area at ram_off, mapped private. */
	int ram_fd;
	bool ram_shared;
	uint64_t ram_off;
	bool serial_later; /* vm_attach_serial() comes later */
	bool warm_up;      /* the warm-up slot (warmup.c) */
};

/* Builds the VM (memory, irqchip, vCPUs, devices, boot image) without running
 * it; b NULL: a fresh boot. On failure returns -errno, writes a one-line
 * reason to err, and leaves nothing behind (a --mem-path file it created is
 * removed). */
int vm_create(struct vm **out, const struct vm_config *cfg, const struct vm_build *b,
	      struct loop *loop, char *err, size_t errlen);
/* --incoming defer: built, not started, waiting in state inmigrate for its
 * state (QMP migrate-incoming). */
void vm_set_inmigrate(struct vm *vm);
/* The serial port, created by vm_create unless b->serial_later: over a
 * live update's handed-over fds (h), or opened from the configuration. */
struct chardev_handover;
int vm_attach_serial(struct vm *vm, const struct chardev_handover *h, char *err, size_t errlen);
/* Starts the vCPU threads; the guest runs. */
int vm_start(struct vm *vm);
/* As vm_start, but the vCPUs park at once: state paused until vm_resume. */
int vm_start_paused(struct vm *vm);
/* vm_resume follows within about a millisecond (live update: the state is
 * here): the parked vCPU threads get onto a CPU now and wait there, so the
 * resume does not wait for them to be woken. */
void vm_resume_soon(struct vm *vm);
/* Stops every vCPU and waits until all are out of KVM_RUN. Emits STOP. */
int vm_pause(struct vm *vm);
/* The same, but the STOP event waits for vm_emit_stop: a live update stops
 * the guest for well under a millisecond, and writing an event to every
 * QMP client (and waking them) is not to happen inside that window.
 * wait_us > 0: the stop happens at an exit, the first vCPU to leave the
 * guest by itself within wait_us (an I/O exit), and only the others are
 * kicked; a kick costs 50-150 us on this host, on top of the guest's own
 * exit. The stop's moment (the first vCPU out, or the kick) is noted for
 * the blackout's figures (vcpu/vcpu.h, stopped_ns). */
int vm_pause_quiet(struct vm *vm, unsigned wait_us);
void vm_emit_stop(struct vm *vm);
/* Lets them run again. Emits RESUME. */
int vm_resume(struct vm *vm);
/* The same, but RESUME (and a STOP held back) waits for vm_emit_resume: the
 * new side of a live update lets its vCPUs go first, and writes events to
 * its QMP clients once they run (on a host with few CPUs the main thread
 * shares one with a vCPU thread then). */
int vm_resume_quiet(struct vm *vm);
void vm_emit_resume(struct vm *vm);
enum vm_run_state vm_get_run_state(struct vm *vm);
const char *vm_run_state_name(enum vm_run_state s);
/* Asks the main loop to end: the process exits with status after teardown.
 * reason is QEMU's SHUTDOWN reason ("host-qmp-quit", "guest-shutdown", ...). */
void vm_quit(struct vm *vm, int status, const char *reason, bool guest);
void vm_set_event_sink(struct vm *vm, vm_event_fn fn, void *opaque);
/* Stops vCPU threads, frees everything. Guest RAM in a --mem-path file stays. */
void vm_destroy(struct vm *vm);

#endif
