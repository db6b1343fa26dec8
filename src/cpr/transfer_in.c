/* transfer_in.c — cpr-transfer, the new side: a process started with
 * --incoming unix:PATH, or the new image of a live cpr-exec (exec_live.c),
 * takes a running guest over from the old side (proto.h).
 *
 * Phase 1, the guest still runs on the old side: the fds and the machine
 * come; this side builds the whole VM (KVM VM, memslots, vCPU threads
 * parked before their first instruction, serial port, QMP socket) and gets
 * everything the blackout will touch ready (prefault.c, place.c), then
 * answers READY. Phase 2 is the blackout: the state comes, is applied
 * (takeover.c), RUNNING goes back, and the parked vCPU threads are let go.
 * On any refusal the old side is told why and resumes the guest. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/sock.h"
#include "lib/trace.h"
#include "qmp/qmp.h"

/* On each vCPU thread while parked, before the stop: the vCPU's first entry
 * (warmup.c), what the fresh vCPU then holds (a restore sets only what
 * differs), and the MSR list for this process's own next update. */
static int prepare_job_fn(struct vcpu *v, void *arg)
{
	(void)arg;
	/* Warm first: it changes the state that is read next. A warm-up
	 * that went wrong leaves no base, so the restore sets everything. */
	if (v->vm->warm_page && vcpu_warm_up(v) < 0)
		return -EIO;
	/* Tests: the restore without a base must undo the warm-up whole. */
	if (test_fault(TEST_FAULT_NO_BASE))
		return -EIO;
	vcpu_msr_list_ensure(v); /* else the first capture probes */
	return vcpu_state_read_base(v);
}

int cpr_transfer_in(struct vm_config *cfg, struct loop *loop, int sock, struct cpr_state *cs,
		    struct vm **vm_out, struct qmp_server **qmp_out, char *why, size_t whylen)
{
	struct stream_index idx = { 0 };
	struct snapshot snap = { .fd = -1 };
	struct machine_state ms;
	struct qmp_server *qmp = NULL;
	struct vm *vm = NULL;
	int fds[CPR_MAX_FDS], nfds = 0, dummy[CPR_MAX_FDS], ndummy;
	uint8_t *buf = NULL;
	struct cpr_early_in early = { .fd = -1 };
	struct chardev_handover *ho_room = NULL;
	size_t len;
	bool have_idx = false;
	uint64_t t_adopt, t_built;
	int ret;

	chardev_keep_socket_files = true;
	/* Phase 1, the guest still runs: fds and configuration; build the VM. */
	ret = cpr_proto_recv_msg(sock, &buf, &len, fds, &nfds);
	if (ret < 0) {
		set_err(why, whylen, ret, "bad message from the old process");
		goto out_refuse;
	}
	ret = cpr_load_registry(buf, len, cs, fds, nfds, why, whylen);
	if (ret < 0)
		goto out_refuse;
	ret = stream_parse(buf, len, &idx, why, whylen);
	if (ret == 0) {
		memset(&ms, 0, sizeof(ms));
		ret = stream_get_state(&idx, "machine", &machine_state_desc, &ms, why, whylen);
		stream_index_free(&idx);
	}
	if (ret < 0)
		goto out_refuse;
	if (ms.mem_size != cfg->mem_size || ms.nr_cpus != (uint32_t)cfg->nr_cpus) {
		ret = set_err(why, whylen, -EINVAL,
			      "the VM has --memory %lluM --cpus %u, this process was started with "
			      "--memory %lluM --cpus %d",
			      (unsigned long long)ms.mem_size >> 20, ms.nr_cpus,
			      (unsigned long long)cfg->mem_size >> 20, cfg->nr_cpus);
		goto out_refuse;
	}
	free(buf);
	buf = NULL;
	/* Fault injection for the rollback tests: die or hang with the fds. */
	if (test_fault(TEST_FAULT_KILL))
		raise(SIGKILL);
	if (test_fault(TEST_FAULT_HANG))
		for (;;)
			pause();
	if (test_fault(TEST_FAULT_SLOW_BUILD))
		sleep(2); /* the guest runs on meanwhile, on the old side */
	trace_mark("p1-received");
	cfg->warm_up = 1;
	ret = cpr_build_vm(cfg, loop, cs, &vm, why, whylen);
	cfg->warm_up = 0;
	if (ret < 0)
		goto out_refuse;
	trace_mark("vm-built");
	/* The vCPU threads too: they park before their first instruction, and
	 * cpr_finish only lets them go. */
	ret = vm_start_paused(vm);
	if (ret < 0) {
		set_err(why, whylen, ret, "cannot start vCPU threads: %s", strerror(-ret));
		goto out_refuse;
	}
	/* On the vCPU threads, before the stop: each vCPU's first entry
	 * (warmup.c), what the fresh vCPUs then hold (a restore sets only what
	 * differs), and the MSR list for this process's own next update. */
	{
		void **args = calloc(vm->nr_vcpus, sizeof(*args));

		if (args) {
			vcpu_jobs_post(vm, prepare_job_fn, args);
			vcpu_jobs_wait(vm); /* on failure, restores take the slow way */
			free(args);
		}
		trace_mark("warmed");
		/* The guest must never see the slot: no removal, no update. */
		ret = vm_warm_slot_remove(vm);
		if (ret < 0) {
			set_err(why, whylen, ret, "cannot remove the warm-up memslot: %s",
				strerror(-ret));
			goto out_refuse;
		}
		trace_mark("warm-slot-gone");
	}
	/* The serial port and the QMP socket too: their fds came with phase
	 * 1, and nothing reads them before the loop runs. What phase 2 knows
	 * (a pty's reader, output not yet written) is added then. */
	{
		struct chardev_handover *ho = calloc(1, sizeof(*ho));

		if (!ho) {
			ret = set_err(why, whylen, -ENOMEM, "out of memory");
			goto out_refuse;
		}
		ho->listen_fd = cpr_claim_fd(cs, "serial0-listen");
		ho->conn_fd = cpr_claim_fd(cs, "serial0-conn");
		ho->connected = ho->conn_fd >= 0;
		ret = vm_attach_serial(vm, ho, why, whylen);
		free(ho);
		if (ret < 0)
			goto out_refuse;
	}
	if (cfg->qmp_path) {
		ret = qmp_server_new_fd(&qmp, cfg->qmp_path, cpr_claim_fd(cs, "qmp"), loop, why,
					whylen);
		if (ret < 0)
			goto out_refuse;
	}
	/* Room for the serial port's last state, 64 KiB: zeroed now, not in
	 * the blackout. */
	ho_room = calloc(1, sizeof(*ho_room));
	if (!ho_room) {
		ret = set_err(why, whylen, -ENOMEM, "out of memory");
		goto out_refuse;
	}
	cpr_touch_pages(ho_room, sizeof(*ho_room));
	/* Early state (early.c), if the old side sends it. */
	cpr_early_in_init(&early, vm, cs);
	cpr_warm_heap(cfg->nr_cpus); /* last: what phase 1 allocated is not in it */
	cpr_prefault();
	cpr_batch_end(vm);
	cpr_place_vcpus(vm, cs);
	cpr_place_main(cs);
	if (early.fd >= 0)
		cpr_take_early(&early, vm, false);
	trace_mark("P");
	if (cpr_proto_send(sock, cpr_early_sections_ok(vm, cs, early.fd) ? CPR_MSG_READY_EARLY
								      : CPR_MSG_READY) < 0) {
		ret = set_err(why, whylen, -EPIPE, "the old process is gone");
		goto out_refuse;
	}

	/* Phase 2, the guest stopped: the state. It comes within about a
	 * millisecond (the old side stops the guest on READY): wait for it on
	 * the CPU, then get the vCPU threads onto one while it is applied. */
	cpr_wait_state(sock, &early, vm, 20000);
	if (vm->place_late)
		cpr_place_vcpus_late(vm); /* no early message came */
	ret = cpr_proto_recv_msg(sock, &buf, &len, dummy, &ndummy);
	if (ret == 0)
		vm_resume_soon(vm);
	for (int i = 0; i < ndummy; i++)
		close(dummy[i]);
	if (ret == -ESHUTDOWN) {
		set_err(why, whylen, ret, "the guest powered off or crashed during the update; "
			"there is nothing to take over");
		goto out_refuse;
	}
	if (ret < 0) {
		set_err(why, whylen, ret, "the state did not arrive whole");
		goto out_refuse;
	}
	t_adopt = mono_ns();
	trace_mark("received");
	if (test_fault(TEST_FAULT_SLOW))
		usleep(500 * 1000); /* a long blackout the guest must see */
	if (test_fault(TEST_FAULT_HANG_WITH_STATE))
		for (;;)
			pause();
	ret = snapshot_load_stream(buf, len, cfg, true, &snap, &idx, why, whylen);
	if (ret < 0)
		goto out_refuse;
	have_idx = true;
	{
		/* The stop/paused stamps travel in phase 2's registry (read
		 * from the index just made: the stream is parsed once). */
		struct cpr_state *cs2 = calloc(1, sizeof(*cs2));
		if (!cs2 || stream_get_state(&idx, "cpr", &cpr_state_desc, cs2, why, whylen) < 0) {
			free(cs2);
			ret = -EINVAL;
			goto out_refuse;
		}
		cs->stop_ns = cs2->stop_ns;
		cs->paused_ns = cs2->paused_ns;
		cs->captured_ns = cs2->captured_ns;
		cs->guest_paused = cs2->guest_paused;
		free(cs2);
	}
	t_built = mono_ns(); /* built before the stop: no rebuild in the blackout */
	trace_mark("parsed");
	ret = cpr_finish(cfg, loop, vm, cs, &snap, &idx, sock, true, ho_room, &qmp, why, whylen);
	if (ret < 0)
		goto out_refuse;
	*vm_out = vm;
	*qmp_out = qmp;
	vm = NULL;
	qmp = NULL;
	cpr_done(*vm_out, cs, t_adopt, t_built, mono_ns(), getenv(CPR_ENV_ROLLBACK));
	{
		uint32_t msgs = 0, ahead = 0;

		for (uint32_t i = 0; i < snap.nr_vcpus && i < CPRVM_MAX_CPUS; i++)
			msgs += snap.vcpu_early[i] != NULL;
		for (int i = 0; i < (*vm_out)->nr_vcpus; i++)
			ahead += (*vm_out)->vcpus[i].msrs_ahead;
		vm_cpr_vcpu_state(*vm_out, snap.nr_vcpus, snap.nr_set_early, msgs, ahead);
	}
	goto out;
out_refuse:
	cpr_batch_end(vm);
	cpr_unplace_main();
	/* Tell the old side, which resumes the guest (or never stopped it). */
	cpr_proto_refuse(sock, why);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (qmp) {
		qmp_server_release_path(qmp); /* the file is the old side's */
		qmp_server_free(qmp);
	}
	if (vm)
		vm_destroy(vm);
	cs->nr_fds = 0;
out:
	cpr_early_in_free(&early);
	free(ho_room);
	if (have_idx)
		stream_index_free(&idx);
	free(snap.vcpus);
	free(buf);
	return ret;
}

int cpr_transfer_incoming(struct vm_config *cfg, struct loop *loop, const char *path,
			  struct vm **vm_out, struct qmp_server **qmp_out, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	int lfd = -1, sock = -1;
	char why[480] = "";
	int ret;

	if (!cs)
		return -ENOMEM;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "--incoming unix: path too long (at most %zu bytes)",
			 sizeof(sa.sun_path) - 1);
		free(cs);
		return -ENAMETOOLONG;
	}
	/* Whoever sees PATH can connect (lib/sock.h). */
	lfd = unix_listen(path, 1, SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		snprintf(err, errlen, "cannot listen on '%s' for incoming state: %s", path,
			 strerror(-lfd));
		free(cs);
		return lfd;
	}
	cpr_batch_begin();
	pr_info("cpr-transfer: waiting for the old process on %s", path);
	sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	close(lfd);
	unlink(path);
	if (sock < 0) {
		ret = -errno;
		snprintf(err, errlen, "accepting the old process: %s", strerror(-ret));
		free(cs);
		return ret;
	}
	ret = cpr_transfer_in(cfg, loop, sock, cs, vm_out, qmp_out, why, sizeof(why));
	if (ret < 0)
		snprintf(err, errlen, "live update: %s", why);
	close(sock);
	free(cs);
	return ret;
}
