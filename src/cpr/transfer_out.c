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

int cpr_build_stream(struct vm *vm, const struct chardev_handover *ho,
		     const struct cpr_state *cs, const struct vcpu_state *captured,
		     bool early_sections, struct sbuf *b)
{
	struct machine_state ms;
	int ret;

	snapshot_machine(vm, &ms, RAM_IN_FD);
	if ((ret = stream_writer_begin(b, CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR,
				       CPRVM_VERSION_MICRO)) < 0 ||
	    (ret = stream_put_state(b, "machine", &machine_state_desc, &ms, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = snapshot_put_devices(vm, b, captured, early_sections)) < 0 ||
	    (trace_mark("devices-put"), 0) ||
	    (ret = stream_put_state(b, "chardev/serial0", &chardev_handover_desc, ho,
				    STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(b, "cpr", &cpr_state_desc, cs, STREAM_SEC_REQUIRED)) < 0)
		return ret;
	return stream_writer_end(b);
}

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
	if (__atomic_load_n(&vm->cpus.stopped_ns, __ATOMIC_SEQ_CST))
		f->cs->stop_ns = __atomic_load_n(&vm->cpus.stopped_ns, __ATOMIC_SEQ_CST);
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
	if (vcpu_wait_all_out(v->vs, 1000 * 1000))
		ret = vcpu_state_capture_parked_early(v, a->early.s, cpr_early_send, &a->early);
	if (ret < 0)
		__atomic_store_n(&a->fin->failed, true, __ATOMIC_SEQ_CST);
	/* The last one sends, if all went well. */
	if (__atomic_sub_fetch(&a->fin->left, 1, __ATOMIC_ACQ_REL) == 0 &&
	    !__atomic_load_n(&a->fin->failed, __ATOMIC_SEQ_CST))
		capture_finish(a->fin);
	return ret;
}

/* The old side's update, from the first message to the last. */
struct xout {
	struct vm *vm;
	int sock;
	bool live; /* a live cpr-exec's keeper: no time-outs */
	char *why;
	size_t whylen;
	struct cpr_state *cs;
	struct chardev_handover *ho;
	struct vcpu_state *vstates; /* filled by the vCPU threads as they park */
	struct capture_arg *cargs;
	void **vargs;
	struct sbuf b;
	int early[2]; /* the early channel: ours, the new side's */
	struct capture_fin fin;
	bool stopped; /* the guest is stopped here (resume it on failure) */
};

static int xout_timeout_ms(const struct xout *x)
{
	return x->live ? -1 : cpr_proto_timeout_ms();
}

/* Before phase 1: the early channel, and every buffer the blackout uses
 * touched now. */
static int xout_prepare(struct xout *x)
{
	struct vm *vm = x->vm;

	if (!x->cs || !x->ho || !x->vstates || !x->cargs || !x->vargs)
		return set_err(x->why, x->whylen, -ENOMEM, "out of memory");
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, x->early) < 0)
		x->early[0] = x->early[1] = -1;
	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		cpr_early_out_init(&x->cargs[i].early, &x->vstates[i], x->early[0]);
		x->cargs[i].fin = &x->fin;
		x->vargs[i] = &x->cargs[i];
	}
	cpr_warm_heap(vm->cpus.nr_vcpus);
	cpr_prefault();
	return 0;
}

/* Phase 1's registry: the fds (each entry's "fd" is its index in the
 * message's SCM_RIGHTS array), what this side can send, and the tasks that
 * run the vCPUs, for the new side's placement. */
static void xout_registry(struct xout *x, int *fds, int *nfds)
{
	struct cpr_fd_source src[CPR_FD_SOURCES_MAX];
	struct vm *vm = x->vm;
	struct cpr_state *cs = x->cs;
	int n = cpr_fd_sources(vm, x->ho, src);

	src[n++] = (struct cpr_fd_source){ CPR_FD_VCPU_EARLY, x->early[1] };
	*nfds = 0;
	for (int i = 0; i < n; i++) {
		if (src[i].fd < 0)
			continue;
		fds[*nfds] = src[i].fd;
		cpr_add_fd(cs, src[i].name, *nfds);
		(*nfds)++;
	}
	if (x->live)
		cpr_put_prev_argv(cs);
	/* Tests: "old-classic" plays an old side without the capability. */
	if (x->early[1] >= 0 && !test_fault(TEST_FAULT_OLD_CLASSIC))
		cs->caps |= CPR_CAP_EARLY_SECTIONS;
	for (int i = 0; !x->live && i < vm->cpus.nr_vcpus && i < CPRVM_MAX_CPUS; i++) {
		cs->vcpu_tid[i] = (uint32_t)vm->cpus.vcpus[i].tid;
		cs->vcpu_tid_len += sizeof(cs->vcpu_tid[0]);
	}
	for (int i = 0; i < vm->cpus.nr_vcpus && i < CPRVM_MAX_CPUS; i++) {
		cs->run_tid[i] = (uint32_t)vcpu_run_tid(&vm->cpus.vcpus[i]);
		cs->run_tid_len += sizeof(cs->run_tid[0]);
	}
}

/* Phase 1, the guest still running: the fds and the machine, for the new
 * side to build the VM. */
static int xout_send_config(struct xout *x)
{
	struct machine_state ms;
	int fds[CPR_MAX_FDS], nfds, ret;

	chardev_export(x->vm->serial_chr, x->ho);
	xout_registry(x, fds, &nfds);
	snapshot_machine(x->vm, &ms, RAM_IN_FD);
	if ((ret = stream_writer_begin(&x->b, CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR,
				       CPRVM_VERSION_MICRO)) < 0 ||
	    (ret = stream_put_state(&x->b, "machine", &machine_state_desc, &ms,
				    STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(&x->b, "cpr", &cpr_state_desc, x->cs, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_writer_end(&x->b)) < 0 ||
	    (ret = cpr_proto_send_msg(x->sock, &x->b, fds, nfds)) < 0)
		return set_err(x->why, x->whylen, ret, "cannot send the configuration: %s",
			       strerror(-ret));
	/* Phase 2's stream is built on a vCPU thread, whose malloc arena is
	 * cold: room for all of it now, touched (the whole VM is ~10 KiB per
	 * vCPU, plus up to 64 KiB of serial output not yet written). */
	x->b.len = 0;
	if (sbuf_reserve(&x->b, (128u << 10) + (size_t)x->vm->cpus.nr_vcpus * (96u << 10)) == 0)
		cpr_touch_pages(x->b.data, x->b.cap);
	if (x->early[1] >= 0) { /* the new side has its own copy */
		close(x->early[1]);
		x->early[1] = -1;
	}
	return 0;
}

/* The new side builds its VM meanwhile; the MSRs go ahead of the stop,
 * read at each vCPU's next exit, never after the answer. */
static int xout_wait_ready(struct xout *x)
{
	struct vm *vm = x->vm;
	int ret;
	char c;

	for (int i = 0; x->early[0] >= 0 && i < vm->cpus.nr_vcpus; i++)
		if (x->cargs[i].early.buf)
			vcpu_post_at_exit(&vm->cpus.vcpus[i], cpr_early_ahead, &x->cargs[i].early);
	ret = cpr_proto_wait(x->sock, xout_timeout_ms(x), &c, x->why, x->whylen);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		vcpu_cancel_at_exit(&vm->cpus.vcpus[i]);
	if (ret < 0)
		return ret;
	if (c == CPR_MSG_READY_EARLY && (x->cs->caps & CPR_CAP_EARLY_SECTIONS)) {
		x->fin.early_sections = true;
	} else if (c != CPR_MSG_READY) {
		cpr_proto_recv_reason(x->sock, x->why, x->whylen);
		return -ECANCELED;
	}
	return 0;
}

/* Phase 2: stop, capture, send. The stop comes at the guest's next exit,
 * if one comes within x-stop-wait-us: the blackout (and cs->stop_ns,
 * capture_finish) starts when the vCPUs stop. */
static int xout_stop_and_send(struct xout *x)
{
	struct vm *vm = x->vm;
	int ret;

	/* Where each vCPU runs now: the new side pins its own there
	 * (place.c), and the old tasks step aside from it after RUNNING. */
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		vm->cpus.vcpus[i].lu.run_cpu = task_last_cpu(vcpu_run_tid(&vm->cpus.vcpus[i]));
	x->cs->stop_ns = mono_ns();
	trace_mark("stop");
	x->cs->guest_paused = vm->state == RUN_STATE_PAUSED;
	/* Each vCPU thread reads its own state as it parks. */
	vcpu_jobs_post(&vm->cpus, capture_job_fn, x->vargs);
	/* STOP is sent once the guest runs again. */
	ret = vm_pause_quiet(vm, vm_migration(vm)->stop_wait_us);
	if (ret < 0) {
		vcpu_jobs_wait(&vm->cpus);
		return set_err(x->why, x->whylen, ret, "cannot stop the vCPUs: %s", strerror(-ret));
	}
	x->stopped = true;
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
	ret = vcpu_jobs_wait_asleep(&vm->cpus);
	if (ret < 0)
		return set_err(x->why, x->whylen, ret, "cannot read the vCPUs' state: %s",
			       strerror(-ret));
	ret = x->fin.sent ? x->fin.ret : -EIO;
	if (ret == -ESHUTDOWN)
		return set_err(x->why, x->whylen, ret,
			       "the guest powered off or crashed during the update");
	if (ret < 0)
		return set_err(x->why, x->whylen, ret, "cannot send the state: %s", strerror(-ret));
	return 0;
}

/* No answer in time: the new process may still take the guest, so it must
 * be gone before the guest can run here. */
static int xout_fence(struct xout *x)
{
	char late = 0;
	int f = cpr_proto_fence(x->sock, &late);

	if (f < 0 || (f == 1 && late == CPR_MSG_RUNNING)) {
		set_err(x->why, x->whylen, -ETIMEDOUT,
			"the new process did not answer within %d ms and %s; "
			"the guest stays stopped here (it may have run there)",
			cpr_proto_timeout_ms(),
			f < 0 ? "could not be killed" : "was killed after taking the guest");
		x->vm->state = RUN_STATE_PAUSED;
		x->stopped = false; /* never resume it */
		return -ETIMEDOUT;
	}
	if (f == 1 && late == CPR_MSG_REFUSED)
		cpr_proto_recv_reason(x->sock, x->why, x->whylen);
	else
		snprintf(x->why, x->whylen, "the new process did not answer within %d ms; "
			 "it was killed", cpr_proto_timeout_ms());
	return -ETIMEDOUT;
}

/* The answer to phase 2: RUNNING, or why not. */
static int xout_wait_running(struct xout *x)
{
	/* Not awake when the answer comes: woken by RUNNING on the CPU where
	 * the new side's main thread lets its vCPU threads go, this thread
	 * would be picked before them when the main thread yields. The answer
	 * comes ~0.1 ms after the stream; a refusal is taken up this much
	 * later. */
	const struct timespec nap = { .tv_nsec = XFER_ANSWER_NAP_US * 1000 };
	int ret;
	char c;

	nanosleep(&nap, NULL);
	ret = cpr_proto_wait(x->sock, xout_timeout_ms(x), &c, x->why, x->whylen);
	if (ret == -ETIMEDOUT)
		return xout_fence(x);
	if (ret < 0)
		return ret;
	if (c != CPR_MSG_RUNNING) {
		cpr_proto_recv_reason(x->sock, x->why, x->whylen);
		return -ECANCELED;
	}
	return 0;
}

/* RUNNING: from here on only the new side runs the guest. */
static void xout_commit(struct xout *x)
{
	struct vm *vm = x->vm;
	char c;

	trace_mark("got-R");
	vcpu_all_step_aside(&vm->cpus);
	cpr_proto_send(x->sock, CPR_MSG_GO);
	vm_emit_stop(vm);
	if (cpr_proto_wait(x->sock, xout_timeout_ms(x), &c, x->why, x->whylen) < 0 ||
	    c != CPR_MSG_KEPT)
		pr_warn("live update: no confirmation from the new process (%s)", x->why);
	vm->migration.status = "completed";
	vm->migration.downtime_us = (int64_t)(mono_ns() - x->cs->stop_ns) / 1000;
	vm->cpus.handed_over = true;
	trace_dump("old", x->cs->stop_ns);
}

int cpr_transfer_out(struct vm *vm, int sock, bool live, char *why, size_t whylen)
{
	struct xout x = { .vm = vm, .sock = sock, .live = live, .why = why, .whylen = whylen,
			  .cs = calloc(1, sizeof(*x.cs)), .ho = calloc(1, sizeof(*x.ho)),
			  .vstates = calloc(vm->cpus.nr_vcpus, sizeof(*x.vstates)),
			  .cargs = calloc(vm->cpus.nr_vcpus, sizeof(*x.cargs)),
			  .vargs = calloc(vm->cpus.nr_vcpus, sizeof(*x.vargs)), .b = SBUF_INIT,
			  .early = { -1, -1 } };
	int ret;

	x.fin = (struct capture_fin){ .vm = vm, .cs = x.cs, .ho = x.ho, .vstates = x.vstates,
				      .b = &x.b, .sock = sock, .left = vm->cpus.nr_vcpus };
	ret = xout_prepare(&x);
	if (ret < 0)
		goto out;
	if ((ret = xout_send_config(&x)) < 0 || (ret = xout_wait_ready(&x)) < 0 ||
	    (ret = xout_stop_and_send(&x)) < 0 || (ret = xout_wait_running(&x)) < 0)
		goto out_fail;
	xout_commit(&x);
	goto out;
out_fail:
	/* A failed outgoing update leaves the guest running here, as it was. */
	cpr_batch_end(NULL);
	if (x.stopped) {
		chardev_set_frozen(vm->serial_chr, false);
		vm_resume(vm);
	}
out:
	vm_emit_stop(vm); /* if still owed (a guest left stopped) */
	for (int i = 0; i < 2; i++)
		if (x.early[i] >= 0)
			close(x.early[i]);
	for (int i = 0; x.cargs && i < vm->cpus.nr_vcpus; i++)
		cpr_early_out_free(&x.cargs[i].early);
	free(x.cargs);
	sbuf_free(&x.b);
	free(x.vargs);
	free(x.vstates);
	free(x.ho);
	free(x.cs);
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
	chardev_keep_path(vm->serial_chr, true);
	return 0;
}
