/* takeover.c — the new side's common end, in either mode: a VM over the
 * handed-over RAM, then the devices adopted over their fds, the state
 * applied, and the guest started.
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
#include "qmp/qmp.h"

/* KVM VM, memslots over the handed-over RAM, vCPUs; the serial port waits
 * for its state (cpr_finish). */
int cpr_build_vm(struct vm_config *cfg, struct loop *loop, const struct cpr_state *cs,
		 struct vm **vm, char *why, size_t whylen)
{
	cfg->adopt_ram_fd = cpr_claim_fd(cs, "ram");
	if (cfg->adopt_ram_fd < 0)
		return set_err(why, whylen, -EBADF, "no guest RAM fd handed over");
	cfg->restoring = 1;
	cfg->serial_later = 1;
	return vm_create(vm, cfg, loop, why, whylen);
}

/* Everything after the VM exists: serial port and QMP over their fds, the
 * state into KVM and the devices, then (transfer) the handshake, and the
 * start. snap must come from a validated stream (snapshot_load_stream).
 * ho_room: where the serial port's hand-over goes (~64 KiB, zeroed: the
 * caller's, made before the stop), or NULL for a fresh one here. */
int cpr_finish(struct vm_config *cfg, struct loop *loop, struct vm *vm,
	       struct cpr_state *cs, struct snapshot *snap,
	       const struct stream_index *idx, int sock, bool threads_parked,
	       struct chardev_handover *ho_room, struct qmp_server **qmp, char *why,
	       size_t whylen)
{
	struct chardev_handover *ho = ho_room ? ho_room : calloc(1, sizeof(*ho));
	int ret;

	if (!ho)
		return set_err(why, whylen, -ENOMEM, "out of memory");
	ret = stream_get_state(idx, "chardev/serial0", &chardev_handover_desc, ho, why, whylen);
	if (ret < 0)
		goto out;
	if (snap->machine.ram_mode != RAM_IN_FD) {
		ret = set_err(why, whylen, -EINVAL, "state does not hand over RAM as an fd");
		goto out;
	}
	if (vm->serial_chr) {
		chardev_adopt_finish(vm->serial_chr, ho); /* adopted before the stop */
	} else {
		ho->listen_fd = cpr_claim_fd(cs, "serial0-listen");
		ho->conn_fd = cpr_claim_fd(cs, "serial0-conn");
		ret = vm_attach_serial(vm, ho, why, whylen);
		if (ret < 0)
			goto out;
	}
	if (cfg->qmp_path && !*qmp) {
		ret = qmp_server_new_fd(qmp, cfg->qmp_path, cpr_claim_fd(cs, "qmp"), loop, why,
					whylen);
		if (ret < 0)
			goto out;
	}
	trace_mark("devices-adopted");
	if (test_fault(TEST_FAULT_REFUSE_LATE)) {
		/* Rollback tests: a refusal after the sockets were adopted. */
		ret = set_err(why, whylen, -EINVAL, "refused for the test, with the sockets adopted");
		goto out;
	}
	ret = snapshot_apply(snap, vm, true, threads_parked, why, whylen);
	if (ret < 0)
		goto out;
	if (*qmp) {
		ret = qmp_commands_register(*qmp, vm);
		if (ret < 0) {
			set_err(why, whylen, ret, "cannot register QMP commands");
			goto out;
		}
		cpr_set_qmp_fd(qmp_server_listen_fd(*qmp));
	}
	/* The old vCPU threads are done: from here a waiting vCPU thread
	 * yields only to the one that will let it go. */
	__atomic_store_n(&vm->spin_polite, false, __ATOMIC_RELEASE);
	__atomic_store_n(&vm->waker_cpu, sched_getcpu(), __ATOMIC_RELEASE);
	if (sock >= 0 && cpr_proto_send(sock, CPR_MSG_RUNNING) < 0) {
		ret = set_err(why, whylen, -EPIPE, "the old process is gone");
		goto out;
	}
	trace_mark("sent-R");
	/* Committed: the old side never runs the guest after RUNNING. */
	if (threads_parked) {
		ret = cs->guest_paused ? 0 : vm_resume_quiet(vm);
		cs->resumed_ns = mono_ns();
		for (int i = 0; ret == 0 && !cs->guest_paused && i < vm->nr_vcpus; i++) {
			struct vcpu *v = &vm->vcpus[i];

			if (v->placed && (uint32_t)i < snap->nr_vcpus)
				cpr_guest_prefault(vm, v->early && v->early_regs_ok ? v->early
										 : &snap->vcpus[i]);
		}
		trace_mark("prefaulted");
		/* A vCPU thread waiting on this CPU goes first; the events
		 * after. */
		sched_yield();
		vm_emit_resume(vm);
	} else {
		ret = cs->guest_paused ? vm_start_paused(vm) : vm_start(vm);
		cs->resumed_ns = mono_ns();
	}
	if (ret < 0) {
		set_err(why, whylen, ret, "cannot start vCPUs: %s", strerror(-ret));
		goto out;
	}
	trace_mark("resumed");
	if (sock >= 0 && cpr_proto_send(sock, CPR_MSG_KEPT) < 0)
		pr_warn("cpr-transfer: could not confirm to the old process");
	cpr_unplace_vcpus(vm);
out:
	if (ho != ho_room)
		free(ho);
	return ret;
}

/* The guest runs: report, then let go of the old world's fds. */
void cpr_done(struct vm *vm, struct cpr_state *cs, uint64_t t_adopt, uint64_t t_built,
	      uint64_t t_applied, const char *rollback)
{
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
		cs->captured_ns ? (int64_t)(t_adopt - cs->captured_ns) / 1000 : 0,
		(int64_t)(t_built - t_adopt) / 1000,
		(int64_t)(t_applied - t_built) / 1000,
		(int64_t)(t_run - t_applied) / 1000,
	};

	vm_cpr_completed(vm, (int64_t)(t_run - cs->stop_ns) / 1000, rollback);
	if (trace_on) {
		usleep(3000); /* the vCPUs' first marks too */
		trace_dump("new", cs->stop_ns);
	}
	vm_cpr_phases(vm, ph);
	vm_cpr_blackout(vm, (int64_t)(cs->stop_ns / 1000), (int64_t)(t_run / 1000));
	chardev_keep_socket_files = false;
	signal(SIGCHLD, SIG_IGN); /* an exec keeper reaps itself */
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		close(cs->fds[i].fd);
}
