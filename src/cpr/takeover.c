/* takeover.c — the new side's common end, in either mode: a VM over the
 * handed-over RAM, then the devices adopted over their fds, the state
 * applied, and the guest started.
 *
 * A struct cpr_takeover holds the take-over from the first message to the
 * guest running; the callers (exec.c stopped-first, transfer_in.c) fill it
 * step by step and call the steps below in order: build, adopt (serial and
 * QMP), finish, done, or abandon on a refusal.
 *
 * Invariants. The new side uses dups of the handed-over fds (cpr_claim_fd),
 * so a failed take-over leaves the originals to give back. It may run the
 * guest only once it has sent RUNNING (cpr-transfer and live cpr-exec) or,
 * in a stopped-first cpr-exec, once the state applied: the old image is
 * gone by then. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/trace.h"

/* KVM VM, memslots over the handed-over RAM, vCPUs; the serial port waits
 * for its state (cpr_takeover_adopt_serial). */
int cpr_takeover_build(struct cpr_takeover *t)
{
	struct vm_build b = { .restoring = true, .ram_fd = cpr_claim_fd(t->cs, CPR_FD_RAM),
			      .ram_shared = true, .serial_later = true, .warm_up = t->warm_up };

	if (b.ram_fd < 0)
		return set_err(t->why, t->whylen, -EBADF, "no guest RAM fd handed over");
	return vm_create(&t->vm, t->cfg, &b, t->loop, t->why, t->whylen);
}

/* The serial port over its handed-over sockets. ho holds the rest of its
 * state from the stream; before the stream (phase 1) it is empty, and the
 * port is connected if a client's socket came. */
int cpr_takeover_adopt_serial(struct cpr_takeover *t, struct chardev_handover *ho,
			      bool before_stream)
{
	ho->listen_fd = cpr_claim_fd(t->cs, CPR_FD_SERIAL_LISTEN);
	ho->conn_fd = cpr_claim_fd(t->cs, CPR_FD_SERIAL_CONN);
	if (before_stream)
		ho->connected = ho->conn_fd >= 0;
	return vm_attach_serial(t->vm, ho, t->why, t->whylen);
}

/* The QMP server, main's, over the handed-over listening socket. */
int cpr_takeover_adopt_qmp(struct cpr_takeover *t)
{
	int ret;

	if (!t->cfg->qmp_path || t->qmp_adopted)
		return 0;
	ret = t->qmp->adopt(t->qmp->ctx, cpr_claim_fd(t->cs, CPR_FD_QMP), t->why, t->whylen);
	if (ret == 0)
		t->qmp_adopted = true;
	return ret;
}

/* The serial port's state from the stream, and anything not yet adopted. */
static int takeover_adopt_devices(struct cpr_takeover *t, struct chardev_handover *ho)
{
	int ret;

	ret = stream_get_state(&t->idx, "chardev/serial0", &chardev_handover_desc, ho, t->why,
			       t->whylen);
	if (ret < 0)
		return ret;
	if (t->snap.machine.ram_mode != RAM_IN_FD)
		return set_err(t->why, t->whylen, -EINVAL, "state does not hand over RAM as an fd");
	if (t->vm->serial_chr)
		chardev_adopt_finish(t->vm->serial_chr, ho); /* adopted before the stop */
	else if ((ret = cpr_takeover_adopt_serial(t, ho, false)) < 0)
		return ret;
	ret = cpr_takeover_adopt_qmp(t);
	if (ret < 0)
		return ret;
	trace_mark("devices-adopted");
	if (test_fault(TEST_FAULT_REFUSE_LATE)) /* a refusal with the sockets adopted */
		return set_err(t->why, t->whylen, -EINVAL,
			       "refused for the test, with the sockets adopted");
	return 0;
}

/* Committed (RUNNING sent, or no old side left): the guest runs here. */
static int takeover_start(struct cpr_takeover *t)
{
	struct cpr_state *cs = t->cs;
	struct vm *vm = t->vm;
	int ret;

	if (!t->threads_parked) {
		ret = cs->guest_paused ? vm_start_paused(vm) : vm_start(vm);
		cs->resumed_ns = mono_ns();
		return ret;
	}
	ret = cs->guest_paused ? 0 : vm_resume_quiet(vm);
	cs->resumed_ns = mono_ns();
	for (int i = 0; ret == 0 && !cs->guest_paused && i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];

		if (v->lu.placed && (uint32_t)i < t->snap.nr_vcpus)
			cpr_guest_prefault(vm, v->lu.early && v->lu.early_regs_ok ? v->lu.early
									 : &t->snap.vcpus[i]);
	}
	trace_mark("prefaulted");
	/* A vCPU thread waiting on this CPU goes first; the events after. */
	sched_yield();
	vm_emit_resume(vm);
	return ret;
}

/* Everything after the VM exists: the devices adopted over their fds, the
 * state into KVM and the devices, then (with an old side) RUNNING, and the
 * start. t->snap and t->idx come from a validated stream
 * (snapshot_load_stream). The serial port's hand-over goes into t->ho_room
 * (~64 KiB, zeroed before the stop), or a fresh one here. */
int cpr_takeover_finish(struct cpr_takeover *t)
{
	struct chardev_handover *ho = t->ho_room ? t->ho_room : calloc(1, sizeof(*ho));
	struct vm *vm = t->vm;
	int ret;

	if (!ho)
		return set_err(t->why, t->whylen, -ENOMEM, "out of memory");
	ret = takeover_adopt_devices(t, ho);
	if (ret < 0)
		goto out;
	ret = snapshot_apply(&t->snap, vm, true, t->threads_parked, t->why, t->whylen);
	if (ret < 0)
		goto out;
	if (t->qmp_adopted && (ret = t->qmp->attach(t->qmp->ctx, vm, t->why, t->whylen)) < 0)
		goto out;
	/* The old vCPU threads are done: from here a waiting vCPU thread
	 * yields only to the one that will let it go. */
	__atomic_store_n(&vm->cpus.spin_polite, false, __ATOMIC_RELEASE);
	__atomic_store_n(&vm->cpus.waker_cpu, sched_getcpu(), __ATOMIC_RELEASE);
	if (t->sock >= 0 && cpr_proto_send(t->sock, CPR_MSG_RUNNING) < 0) {
		ret = set_err(t->why, t->whylen, -EPIPE, "the old process is gone");
		goto out;
	}
	trace_mark("sent-R");
	/* Committed: the old side never runs the guest after RUNNING. */
	ret = takeover_start(t);
	if (ret < 0) {
		set_err(t->why, t->whylen, ret, "cannot start vCPUs: %s", strerror(-ret));
		goto out;
	}
	trace_mark("resumed");
	if (t->sock >= 0 && cpr_proto_send(t->sock, CPR_MSG_KEPT) < 0)
		pr_warn("cpr-transfer: could not confirm to the old process");
	cpr_unplace_vcpus(vm);
out:
	if (ho != t->ho_room)
		free(ho);
	return ret;
}

/* The guest runs: report, then let go of the old world's fds. */
void cpr_takeover_done(struct cpr_takeover *t, uint64_t t_applied, const char *rollback)
{
	struct cpr_state *cs = t->cs;
	uint64_t t_run = cs->resumed_ns ? cs->resumed_ns : mono_ns();
	/* Blackout phases (us): stop (vCPUs out), prepare (keeper; stopped-first
	 * cpr-exec only), handover (state read, then written and exec'd, or
	 * sent), rebuild (stopped-first cpr-exec: KVM VM, memslots, vCPUs; the
	 * live modes built them before the stop, so there it is only checking
	 * the state), restore (state into KVM and devices; in the live modes
	 * also "ready" and letting the parked vCPUs go), resume (vCPU threads
	 * started, stopped-first cpr-exec). */
	if (t_applied > t_run)
		t_applied = t_run;
	int64_t ph[6] = {
		cs->paused_ns ? (int64_t)(cs->paused_ns - cs->stop_ns) / 1000 : 0,
		cs->captured_ns ? (int64_t)(cs->captured_ns - cs->paused_ns) / 1000 : 0,
		cs->captured_ns ? (int64_t)(t->t_adopt - cs->captured_ns) / 1000 : 0,
		(int64_t)(t->t_built - t->t_adopt) / 1000,
		(int64_t)(t_applied - t->t_built) / 1000,
		(int64_t)(t_run - t_applied) / 1000,
	};

	vm_cpr_completed(t->vm, (int64_t)(t_run - cs->stop_ns) / 1000, rollback);
	if (trace_on) {
		usleep(3000); /* the vCPUs' first marks too */
		trace_dump("new", cs->stop_ns);
	}
	vm_cpr_phases(t->vm, ph);
	vm_cpr_blackout(t->vm, (int64_t)(cs->stop_ns / 1000), (int64_t)(t_run / 1000));
	chardev_keep_path(t->vm->serial_chr, false); /* ours now */
	signal(SIGCHLD, SIG_IGN); /* an exec keeper reaps itself */
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		close(cs->fds[i].fd);
}

/* A refused take-over: the QMP server and the VM go, the handed-over fds
 * (the originals) stay for the way back. */
void cpr_takeover_abandon(struct cpr_takeover *t)
{
	if (t->qmp_adopted)
		t->qmp->drop(t->qmp->ctx); /* the socket file is the old side's */
	t->qmp_adopted = false;
	if (t->vm)
		vm_destroy(t->vm);
	t->vm = NULL;
}

/* What the take-over holds besides the VM. */
void cpr_takeover_free(struct cpr_takeover *t)
{
	if (t->have_idx)
		stream_index_free(&t->idx);
	t->have_idx = false;
	free(t->snap.vcpus);
	t->snap.vcpus = NULL;
	free(t->ho_room);
	t->ho_room = NULL;
}
