/* transfer_out.c — cpr-transfer, the old side: hands a running guest to a
 * new process (cpr_transfer, from QMP migrate), or, as a live cpr-exec's
 * keeper, to the new image (exec_live.c). The protocol is in proto.h.
 *
 * Phase 1, the guest running: the fds and the machine go out; the answer
 * READY means the new side has built its VM. Phase 2: the vCPUs stop at
 * their next exit, each vCPU thread reads its own state as it parks and
 * sends the early parts (early.c), the last one to finish sends the stream
 * (capture_finish), and the new side's RUNNING ends it: from then on only
 * the new side runs the guest. A failure or refusal before RUNNING resumes
 * the guest here, as it was. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/trace.h"
#include "lib/version.h"

/* The nap before looking for the answer to phase 2 (cpr_transfer_out). */
#define XFER_ANSWER_NAP_US 300

/* The stream goes out from the vCPU thread that finishes its capture last,
 * on the CPU the guest ran on, while this process's main thread only
 * waits: on a host with few CPUs, the new side works on the others
 * meanwhile (it sets the early state). */
struct capture_fin {
	struct vm *vm;
	struct cpr_state *cs;
	struct chardev_handover *ho;
	const struct vcpu_state *vstates;
	struct sbuf *b;
	int sock;
	int left;    /* captures not done yet */
	bool early_sections; /* the new side answered READY_EARLY (CPR_CAP_EARLY_SECTIONS) */
	bool failed; /* one of them failed: nothing is sent */
	bool sent;   /* the stream went out (ret says how) */
	int ret;
};

/* Per vCPU: its state and early channel, and the shared end. */
struct capture_arg {
	struct cpr_early_out early;
	struct capture_fin *fin;
};

static void capture_finish(struct capture_fin *f)
{
	struct vm *vm = f->vm;

	f->sent = true;
	trace_mark("captured");
	/* When the vCPUs stopped (noted before any was read). */
	if (__atomic_load_n(&vm->stopped_ns, __ATOMIC_SEQ_CST))
		f->cs->stop_ns = __atomic_load_n(&vm->stopped_ns, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&vm->guest_event_posted, __ATOMIC_SEQ_CST)) {
		cpr_proto_send_over(f->sock);
		f->ret = -ESHUTDOWN;
		return;
	}
	f->cs->paused_ns = f->cs->captured_ns = mono_ns();
	chardev_set_frozen(vm->serial_chr, true);
	chardev_export(vm->serial_chr, f->ho);
	f->ret = cpr_build_stream(vm, f->ho, f->cs, f->vstates, f->early_sections, f->b);
	trace_mark("built");
	if (f->ret == 0)
		f->ret = cpr_proto_send_msg(f->sock, f->b, NULL, 0);
	trace_mark("sent");
}

static int capture_job_fn(struct vcpu *v, void *arg)
{
	struct capture_arg *a = arg;
	int ret = -ETIMEDOUT;

	/* Not before every vCPU is out (see vcpu_wait_all_out); a vCPU
	 * that does not come out within a second fails the update. */
	if (vcpu_wait_all_out(v->vm, 1000 * 1000))
		ret = vcpu_state_capture_parked_early(v, a->early.s, cpr_early_send, &a->early);
	if (ret < 0)
		__atomic_store_n(&a->fin->failed, true, __ATOMIC_SEQ_CST);
	/* The last one sends, if all went well. */
	if (__atomic_sub_fetch(&a->fin->left, 1, __ATOMIC_ACQ_REL) == 0 &&
	    !__atomic_load_n(&a->fin->failed, __ATOMIC_SEQ_CST))
		capture_finish(a->fin);
	return ret;
}

int cpr_transfer_out(struct vm *vm, int sock, bool live, char *why, size_t whylen)
{
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct chardev_handover *ho = calloc(1, sizeof(*ho));
	/* Filled by the vCPU threads as they park. */
	struct vcpu_state *vstates = calloc(vm->nr_vcpus, sizeof(*vstates));
	struct capture_arg *cargs = calloc(vm->nr_vcpus, sizeof(*cargs));
	void **vargs = calloc(vm->nr_vcpus, sizeof(*vargs));
	struct machine_state ms;
	struct sbuf b = SBUF_INIT;
	int ret, nfds = 0;
	int fds[CPR_MAX_FDS], early[2] = { -1, -1 };
	struct capture_fin fin = { .vm = vm, .cs = cs, .ho = ho, .vstates = vstates, .b = &b,
				   .sock = sock, .left = vm->nr_vcpus };
	bool stopped = false;
	char c;

	if (!cs || !ho || !vstates || !cargs || !vargs) {
		ret = set_err(why, whylen, -ENOMEM, "out of memory");
		goto out;
	}
	/* Early state: a channel of its own, one message per vCPU. */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, early) < 0)
		early[0] = early[1] = -1;
	for (int i = 0; i < vm->nr_vcpus; i++) {
		cpr_early_out_init(&cargs[i].early, &vstates[i], early[0]);
		cargs[i].fin = &fin;
		vargs[i] = &cargs[i];
	}
	cpr_warm_heap(vm->nr_vcpus);
	cpr_prefault();
	/* Phase 1, the guest still running: fds (the registry's "fd" is the
	 * index in the SCM_RIGHTS array) and the machine, to build the VM. */
	chardev_export(vm->serial_chr, ho);
	{
		const struct { const char *name; int fd; } out[] = {
			{ "ram", vm->mem.fd },
			{ "qmp", cpr_image.qmp_fd },
			{ "serial0-listen", ho->listen_fd },
			{ "serial0-conn", ho->conn_fd },
			{ "vcpu-early", early[1] },
		};
		for (size_t i = 0; i < ARRAY_SIZE(out); i++) {
			if (out[i].fd < 0)
				continue;
			fds[nfds] = out[i].fd;
			cpr_add_fd(cs, out[i].name, nfds);
			nfds++;
		}
	}
	if (live)
		cpr_put_prev_argv(cs);
	/* Tests: "old-classic" plays an old side without the capability. */
	if (early[1] >= 0 && !test_fault(TEST_FAULT_OLD_CLASSIC))
		cs->caps |= CPR_CAP_EARLY_SECTIONS;
	for (int i = 0; !live && i < vm->nr_vcpus && i < CPRVM_MAX_CPUS; i++) {
		cs->vcpu_tid[i] = (uint32_t)vm->vcpus[i].tid;
		cs->vcpu_tid_len += sizeof(cs->vcpu_tid[0]);
	}
	for (int i = 0; i < vm->nr_vcpus && i < CPRVM_MAX_CPUS; i++) {
		cs->run_tid[i] = (uint32_t)vcpu_run_tid(&vm->vcpus[i]);
		cs->run_tid_len += sizeof(cs->run_tid[0]);
	}
	snapshot_machine(vm, &ms, RAM_IN_FD);
	if ((ret = stream_writer_begin(&b, CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR,
				       CPRVM_VERSION_MICRO)) < 0 ||
	    (ret = stream_put_state(&b, "machine", &machine_state_desc, &ms, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(&b, "cpr", &cpr_state_desc, cs, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_writer_end(&b)) < 0 || (ret = cpr_proto_send_msg(sock, &b, fds, nfds)) < 0) {
		set_err(why, whylen, ret, "cannot send the configuration: %s", strerror(-ret));
		goto out_fail;
	}
	/* Phase 2's stream is built on a vCPU thread, whose malloc arena is
	 * cold: room for all of it now, touched (the whole VM is ~10 KiB per
	 * vCPU, plus up to 64 KiB of serial output not yet written). */
	b.len = 0;
	if (sbuf_reserve(&b, (128u << 10) + (size_t)vm->nr_vcpus * (96u << 10)) == 0)
		cpr_touch_pages(b.data, b.cap);
	if (early[1] >= 0) { /* the new side has its own copy */
		close(early[1]);
		early[1] = -1;
	}
	/* The MSRs ahead of the stop, read at each vCPU's next exit while the
	 * new side builds its VM; never after the answer. */
	for (int i = 0; early[0] >= 0 && i < vm->nr_vcpus; i++)
		if (cargs[i].early.buf)
			vcpu_post_at_exit(&vm->vcpus[i], cpr_early_ahead, &cargs[i].early);
	ret = cpr_proto_wait(sock, live ? -1 : cpr_proto_timeout_ms(), &c, why, whylen);
	for (int i = 0; i < vm->nr_vcpus; i++)
		vcpu_cancel_at_exit(&vm->vcpus[i]);
	if (ret < 0)
		goto out_fail;
	if (c == CPR_MSG_READY_EARLY && (cs->caps & CPR_CAP_EARLY_SECTIONS)) {
		fin.early_sections = true;
	} else if (c != CPR_MSG_READY) {
		cpr_proto_recv_reason(sock, why, whylen);
		ret = -ECANCELED;
		goto out_fail;
	}

	/* Where each vCPU runs now: the new side pins its own there
	 * (place.c), and the old tasks step aside from it after RUNNING. */
	for (int i = 0; i < vm->nr_vcpus; i++)
		vm->vcpus[i].run_cpu = task_last_cpu(vcpu_run_tid(&vm->vcpus[i]));
	/* Phase 2: stop, capture, send. The stop comes at the guest's next
	 * exit, if one comes within x-stop-wait-us: the blackout (and
	 * cs->stop_ns, capture_finish) starts when the vCPUs stop. */
	cs->stop_ns = mono_ns();
	trace_mark("stop");
	cs->guest_paused = vm->state == RUN_STATE_PAUSED;
	/* Each vCPU thread reads its own state as it parks. */
	vcpu_jobs_post(vm, capture_job_fn, vargs);
	/* STOP is sent once the guest runs again. */
	ret = vm_pause_quiet(vm, vm_migration(vm)->stop_wait_us);
	if (ret < 0) {
		vcpu_jobs_wait(vm);
		set_err(why, whylen, ret, "cannot stop the vCPUs: %s", strerror(-ret));
		goto out_fail;
	}
	stopped = true;
	/* From the stop on, and for good once the guest runs there, this task
	 * must not take a CPU from the new side: its main thread sets the
	 * early state and takes the stream in while the capture runs, and
	 * then its vCPUs run the guest. Woken at normal priority (the jobs'
	 * end, the answer) this task would preempt them in the middle of the
	 * blackout. SCHED_BATCH (place.c), not SCHED_IDLE: with the guest's
	 * vCPUs busy on every CPU an idle task would hardly run, and the old
	 * process must still end. It waits asleep for the capture jobs, which
	 * send the stream themselves (capture_finish): spinning, it would take
	 * turns with the new side's main thread on a CPU they share. */
	cpr_batch_begin();
	ret = vcpu_jobs_wait_asleep(vm);
	if (ret < 0) {
		set_err(why, whylen, ret, "cannot read the vCPUs' state: %s", strerror(-ret));
		goto out_fail;
	}
	ret = fin.sent ? fin.ret : -EIO;
	if (ret == -ESHUTDOWN) {
		set_err(why, whylen, ret, "the guest powered off or crashed during the update");
		goto out_fail;
	}
	if (ret < 0) {
		set_err(why, whylen, ret, "cannot send the state: %s", strerror(-ret));
		goto out_fail;
	}
	/* Not awake when the answer comes: woken by RUNNING on the CPU where
	 * the new side's main thread lets its vCPU threads go, this thread
	 * would be picked before them when the main thread yields. The answer
	 * comes ~0.1 ms after the stream; a refusal is taken up this much
	 * later. */
	{
		const struct timespec nap = { .tv_nsec = XFER_ANSWER_NAP_US * 1000 };

		nanosleep(&nap, NULL);
	}
	ret = cpr_proto_wait(sock, live ? -1 : cpr_proto_timeout_ms(), &c, why, whylen);
	if (ret == -ETIMEDOUT) {
		/* The new process may still take the guest: it must be gone
		 * before the guest can run here. */
		char late = 0;
		int f = cpr_proto_fence(sock, &late);
		if (f < 0 || (f == 1 && late == CPR_MSG_RUNNING)) {
			set_err(why, whylen, ret, "the new process did not answer within %d ms and %s; "
				"the guest stays stopped here (it may have run there)",
				cpr_proto_timeout_ms(), f < 0 ? "could not be killed" :
				"was killed after taking the guest");
			vm->state = RUN_STATE_PAUSED;
			stopped = false; /* never resume it */
			goto out_fail;
		}
		if (f == 1 && late == CPR_MSG_REFUSED)
			cpr_proto_recv_reason(sock, why, whylen);
		else
			snprintf(why, whylen, "the new process did not answer within %d ms; "
				 "it was killed", cpr_proto_timeout_ms());
		ret = -ETIMEDOUT;
		goto out_fail;
	}
	if (ret < 0)
		goto out_fail;
	if (c != CPR_MSG_RUNNING) {
		cpr_proto_recv_reason(sock, why, whylen);
		ret = -ECANCELED;
		goto out_fail;
	}
	/* RUNNING: from here on only the new side runs the guest. */
	trace_mark("got-R");
	vcpu_all_step_aside(vm);
	cpr_proto_send(sock, CPR_MSG_GO);
	vm_emit_stop(vm);
	if (cpr_proto_wait(sock, live ? -1 : cpr_proto_timeout_ms(), &c, why, whylen) < 0 ||
	    c != CPR_MSG_KEPT)
		pr_warn("live update: no confirmation from the new process (%s)", why);
	vm->migration.status = "completed";
	vm->migration.downtime_us = (int64_t)(mono_ns() - cs->stop_ns) / 1000;
	vm->handed_over = true;
	trace_dump("old", cs->stop_ns);
	ret = 0;
	goto out;

out_fail:
	/* A failed outgoing update leaves the guest running here, as it was. */
	cpr_batch_end(NULL);
	if (stopped) {
		chardev_set_frozen(vm->serial_chr, false);
		vm_resume(vm);
	}
out:
	vm_emit_stop(vm); /* if still owed (a guest left stopped) */
	for (int i = 0; i < 2; i++)
		if (early[i] >= 0)
			close(early[i]);
	for (int i = 0; cargs && i < vm->nr_vcpus; i++)
		cpr_early_out_free(&cargs[i].early);
	free(cargs);
	sbuf_free(&b);
	free(vargs);
	free(vstates);
	free(ho);
	free(cs);
	return ret;
}

int cpr_transfer(struct vm *vm, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char why[480] = "";
	int sock, ret;

	if (vm->mem.private_map)
		return set_err(err, errlen, -EINVAL,
			       "cpr-transfer: guest RAM is a private copy of a snapshot");
	if (strlen(path) >= sizeof(sa.sun_path))
		return set_err(err, errlen, -ENAMETOOLONG, "cpr-transfer: path too long");
	strcpy(sa.sun_path, path);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = -errno;
		if (sock >= 0)
			close(sock);
		return set_err(err, errlen, ret, "cpr-transfer: cannot reach '%s': %s", path,
			       strerror(-ret));
	}
	ret = cpr_transfer_out(vm, sock, false, why, sizeof(why));
	close(sock);
	if (ret < 0)
		return set_err(err, errlen, ret, "cpr-transfer: %s", why);
	/* Its sockets are the new process's now: leave their files alone. */
	chardev_keep_socket_files = true;
	return 0;
}
