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

/* On each vCPU thread while parked, before the stop: the vCPU's first entry
 * (warmup.c), what the fresh vCPU then holds (a restore sets only what
 * differs), and the MSR list for this process's own next update. */
static int prepare_job_fn(struct vcpu *v, void *arg)
{
	(void)arg;
	/* Warm first: it changes the state that is read next. A warm-up
	 * that went wrong leaves no base, so the restore sets everything. */
	if (vm_of(v->vs)->warm_page && vcpu_warm_up(v) < 0)
		return -EIO;
	/* Tests: the restore without a base must undo the warm-up whole. */
	if (test_fault(TEST_FAULT_NO_BASE))
		return -EIO;
	vcpu_msr_list_ensure(v); /* else the first capture probes */
	return vcpu_state_read_base(v);
}

/* Phase 1, the guest still runs: the fds and the registry, and a machine
 * this process was started to run (the same --memory and --cpus). */
static int xin_receive_config(struct cpr_takeover *t, int *fds, int *nfds)
{
	struct vm_config *cfg = t->cfg;
	struct stream_index idx = { 0 };
	struct machine_state ms;
	uint8_t *buf = NULL;
	size_t len;
	int ret;

	ret = cpr_proto_recv_msg(t->sock, &buf, &len, fds, nfds);
	if (ret < 0)
		return set_err(t->why, t->whylen, ret, "bad message from the old process");
	ret = cpr_load_registry(buf, len, t->cs, fds, *nfds, t->why, t->whylen);
	if (ret == 0)
		ret = stream_parse(buf, len, &idx, t->why, t->whylen);
	if (ret == 0) {
		memset(&ms, 0, sizeof(ms));
		ret = stream_get_state(&idx, "machine", &machine_state_desc, &ms, t->why,
				       t->whylen);
		stream_index_free(&idx);
	}
	free(buf);
	if (ret < 0)
		return ret;
	if (ms.mem_size != cfg->mem_size || ms.nr_cpus != (uint32_t)cfg->nr_cpus)
		return set_err(t->why, t->whylen, -EINVAL,
			       "the VM has --memory %lluM --cpus %u, this process was started with "
			       "--memory %lluM --cpus %d",
			       (unsigned long long)ms.mem_size >> 20, ms.nr_cpus,
			       (unsigned long long)cfg->mem_size >> 20, cfg->nr_cpus);
	/* Tests: die or hang with the fds, or build slowly while the guest
	 * runs on the old side. */
	if (test_fault(TEST_FAULT_KILL))
		raise(SIGKILL);
	if (test_fault(TEST_FAULT_HANG))
		for (;;)
			pause();
	if (test_fault(TEST_FAULT_SLOW_BUILD))
		sleep(2);
	trace_mark("p1-received");
	return 0;
}

/* Phase 1: the whole VM, its vCPU threads parked before their first
 * instruction (cpr_takeover_finish only lets them go), and the devices over
 * their fds: nothing reads them before the loop runs. What phase 2 knows of
 * the serial port (a pty's reader, output not yet written) is added then. */
static int xin_build(struct cpr_takeover *t)
{
	struct chardev_handover *ho;
	void **args;
	int ret;

	t->warm_up = true;
	ret = cpr_takeover_build(t);
	if (ret < 0)
		return ret;
	trace_mark("vm-built");
	ret = vm_start_paused(t->vm);
	if (ret < 0)
		return set_err(t->why, t->whylen, ret, "cannot start vCPU threads: %s",
			       strerror(-ret));
	args = calloc(t->vm->cpus.nr_vcpus, sizeof(*args));
	if (args) {
		vcpu_jobs_post(&t->vm->cpus, prepare_job_fn, args);
		vcpu_jobs_wait(&t->vm->cpus); /* on failure, restores take the slow way */
		free(args);
	}
	trace_mark("warmed");
	/* The guest must never see the slot: no removal, no update. */
	ret = vm_warm_slot_remove(t->vm);
	if (ret < 0)
		return set_err(t->why, t->whylen, ret, "cannot remove the warm-up memslot: %s",
			       strerror(-ret));
	trace_mark("warm-slot-gone");
	ho = calloc(1, sizeof(*ho));
	if (!ho)
		return set_err(t->why, t->whylen, -ENOMEM, "out of memory");
	ret = cpr_takeover_adopt_serial(t, ho, true);
	free(ho);
	if (ret == 0)
		ret = cpr_takeover_adopt_qmp(t);
	return ret;
}

/* Phase 1's end: everything the blackout touches made ready (prefault.c),
 * the threads placed (place.c), then READY (or READY_EARLY). */
static int xin_get_ready(struct cpr_takeover *t, struct cpr_early_in *early)
{
	struct vm *vm = t->vm;
	bool early_sections;

	/* Room for the serial port's last state, 64 KiB: zeroed now, not in
	 * the blackout. */
	t->ho_room = calloc(1, sizeof(*t->ho_room));
	if (!t->ho_room)
		return set_err(t->why, t->whylen, -ENOMEM, "out of memory");
	cpr_touch_pages(t->ho_room, sizeof(*t->ho_room));
	cpr_early_in_init(early, vm, t->cs);
	cpr_warm_heap(t->cfg->nr_cpus); /* last: what phase 1 allocated is not in it */
	cpr_prefault();
	cpr_batch_end(vm);
	cpr_place_vcpus(vm, t->cs);
	cpr_place_main(t->cs);
	if (early->fd >= 0)
		cpr_take_early(early, vm, false);
	trace_mark("P");
	early_sections = cpr_early_sections_ok(vm, t->cs, early->fd);
	if (cpr_proto_send(t->sock, early_sections ? CPR_MSG_READY_EARLY : CPR_MSG_READY) < 0)
		return set_err(t->why, t->whylen, -EPIPE, "the old process is gone");
	return 0;
}

/* Phase 2, the guest stopped: the state. It comes within about a
 * millisecond (the old side stops the guest on READY): wait for it on the
 * CPU, setting early state as it comes, then get the vCPU threads onto
 * their CPUs while it is applied. */
static int xin_receive_state(struct cpr_takeover *t, struct cpr_early_in *early, uint8_t **buf,
			     size_t *len)
{
	int fds[CPR_MAX_FDS], nfds = 0, ret;

	cpr_wait_state(t->sock, early, t->vm, 20000);
	if (t->vm->cpus.place_late)
		cpr_place_vcpus_late(t->vm); /* no early message came */
	ret = cpr_proto_recv_msg(t->sock, buf, len, fds, &nfds);
	if (ret == 0)
		vm_resume_soon(t->vm);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	if (ret == -ESHUTDOWN)
		return set_err(t->why, t->whylen, ret,
			       "the guest powered off or crashed during the update; "
			       "there is nothing to take over");
	if (ret < 0)
		return set_err(t->why, t->whylen, ret, "the state did not arrive whole");
	t->t_adopt = mono_ns();
	trace_mark("received");
	if (test_fault(TEST_FAULT_SLOW))
		usleep(500 * 1000); /* a long blackout the guest must see */
	if (test_fault(TEST_FAULT_HANG_WITH_STATE))
		for (;;)
			pause();
	return 0;
}

/* Phase 2: the stream validated whole, then applied (takeover.c). */
static int xin_apply(struct cpr_takeover *t, const uint8_t *buf, size_t len)
{
	struct cpr_state *cs2;
	int ret;

	ret = snapshot_load_stream(buf, len, t->cfg, true, &t->snap, &t->idx, t->why, t->whylen);
	if (ret < 0)
		return ret;
	t->have_idx = true;
	/* The stop/paused stamps travel in phase 2's registry (read from the
	 * index just made: the stream is parsed once). */
	cs2 = calloc(1, sizeof(*cs2));
	if (!cs2 || stream_get_state(&t->idx, "cpr", &cpr_state_desc, cs2, t->why, t->whylen) < 0) {
		free(cs2);
		return -EINVAL;
	}
	t->cs->stop_ns = cs2->stop_ns;
	t->cs->paused_ns = cs2->paused_ns;
	t->cs->captured_ns = cs2->captured_ns;
	t->cs->guest_paused = cs2->guest_paused;
	free(cs2);
	t->t_built = mono_ns(); /* built before the stop: no rebuild in the blackout */
	trace_mark("parsed");
	return cpr_takeover_finish(t);
}

/* How the vCPUs' state came, for query-migrate's x-vcpu-state. */
static void xin_report(struct cpr_takeover *t)
{
	uint32_t msgs = 0, ahead = 0;

	for (uint32_t i = 0; i < t->snap.nr_vcpus && i < CPRVM_MAX_CPUS; i++)
		msgs += t->snap.vcpu_early[i] != NULL;
	for (int i = 0; i < t->vm->cpus.nr_vcpus; i++)
		ahead += t->vm->cpus.vcpus[i].lu.msrs_ahead;
	vm_cpr_vcpu_state(t->vm, t->snap.nr_vcpus, t->snap.nr_set_early, msgs, ahead);
}

int cpr_transfer_in(struct vm_config *cfg, struct loop *loop, int sock, struct cpr_state *cs,
		    const struct cpr_qmp_hooks *qmp, struct vm **vm_out, char *why, size_t whylen)
{
	struct cpr_takeover t = { .cfg = cfg, .loop = loop, .qmp = qmp, .cs = cs, .sock = sock,
				  .threads_parked = true, .snap = { .fd = -1 }, .why = why,
				  .whylen = whylen };
	struct cpr_early_in early = { .fd = -1 };
	int fds[CPR_MAX_FDS], nfds = 0, ret;
	uint8_t *buf = NULL;
	size_t len = 0;

	if ((ret = xin_receive_config(&t, fds, &nfds)) < 0 || (ret = xin_build(&t)) < 0 ||
	    (ret = xin_get_ready(&t, &early)) < 0 ||
	    (ret = xin_receive_state(&t, &early, &buf, &len)) < 0 ||
	    (ret = xin_apply(&t, buf, len)) < 0)
		goto out_refuse;
	*vm_out = t.vm;
	cpr_takeover_done(&t, mono_ns(), getenv(CPR_ENV_ROLLBACK));
	xin_report(&t);
	goto out;
out_refuse:
	cpr_batch_end(t.vm);
	cpr_unplace_main();
	/* Tell the old side, which resumes the guest (or never stopped it). */
	cpr_proto_refuse(sock, why);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	cpr_takeover_abandon(&t);
	cs->nr_fds = 0;
out:
	cpr_early_in_free(&early);
	cpr_takeover_free(&t);
	free(buf);
	return ret;
}

int cpr_transfer_incoming(struct vm_config *cfg, struct loop *loop, const char *path,
			  const struct cpr_qmp_hooks *qmp, struct vm **vm_out, char *err,
			  size_t errlen)
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
	ret = cpr_transfer_in(cfg, loop, sock, cs, qmp, vm_out, why, sizeof(why));
	if (ret < 0)
		snprintf(err, errlen, "live update: %s", why);
	close(sock);
	free(cs);
	return ret;
}
