/* cpr.c — live update, see cpr.h. Also the preserved-fd registry: every fd
 * that crosses to the new image is named in the stream's "cpr" section, and
 * the new image claims fds by name (QEMU's cpr.c does the same), never by
 * position.
 *
 * Ordering rules on the way out, stopped-first cpr-exec (a paused guest):
 *   1. stop the vCPUs (vm_pause completes any pending I/O exit, vcpu.c);
 *   2. capture all state into memory, then into a memfd: nothing after this
 *      point may change guest-visible state;
 *   3. start the keeper (it copies the fd table: the old VM fd stays open in
 *      it, so execve() neither tears the VM down nor unmaps guest RAM);
 *   4. clear FD_CLOEXEC on exactly the registry's fds, then execve().
 * Any failure before execve() returns undoes 3 and 4 and resumes.
 * Live cpr-exec and cpr-transfer: see "cpr-transfer" and "live cpr-exec"
 * below. On the way in (new image), handed-over fds are dup()ed before use,
 * so a failed take-over can give the untouched originals back. */
#include <errno.h>
#include <link.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cpr/cpr.h"
#include "cpr/proto.h"
#include "cpr/snapshot.h"
#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/sock.h"
#include "lib/trace.h"
#include "lib/version.h"
#include "qmp/qmp.h"
#include "state/state.h"
#include "vm/vm_priv.h"
#include "x86/pagewalk.h"

#define CPR_ARGV_MAX 8192
#define KEEPER_STACK (64 * 1024)

struct cpr_fd {
	uint8_t name[24];
	uint32_t fd;
};

/* Section "cpr": the fd registry and what a rollback needs. */
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
 * "vcpu-early/N"; see "Early state"): the new side answers 'Q' for 'P'. */
#define CPR_CAP_EARLY_SECTIONS 0x1u

static const struct state_field cpr_fd_fields[] = {
	STATE_FIELD_BYTES(1, struct cpr_fd, name, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U32(2, struct cpr_fd, fd, .flags = STATE_F_REQUIRED),
};
static const struct state_desc cpr_fd_desc = STATE_DESC("cpr-fd", 1, 1, cpr_fd_fields);

static const struct state_field cpr_fields[] = {
	STATE_FIELD_ARRAY(1, struct cpr_state, fds, nr_fds, cpr_fd_desc, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U64(2, struct cpr_state, stop_ns),
	STATE_FIELD_U32(3, struct cpr_state, keeper_pid),
	STATE_FIELD_VBYTES(4, struct cpr_state, prev_argv, prev_argv_len),
	STATE_FIELD_U64(5, struct cpr_state, paused_ns),
	STATE_FIELD_U64(6, struct cpr_state, captured_ns),
	STATE_FIELD_U32(7, struct cpr_state, guest_paused),
	STATE_FIELD_VBYTES(8, struct cpr_state, vcpu_tid, vcpu_tid_len),
	STATE_FIELD_VBYTES(9, struct cpr_state, run_tid, run_tid_len),
	STATE_FIELD_U32(10, struct cpr_state, caps),
};
static const struct state_desc cpr_state_desc = STATE_DESC("cpr", 1, 1, cpr_fields);

static void cpr_place_vcpus(struct vm *vm, const struct cpr_state *cs);
static void cpr_place_vcpus_late(struct vm *vm);
static void cpr_unplace_vcpus(struct vm *vm);

static struct {
	int argc;
	char **argv;     /* this image's own */
	char exe[4096];  /* /proc/self/exe at start-up */
	char **exec_argv; /* cpr-exec-command, or NULL */
	int exec_argc;
	int qmp_fd;
} cpr = { .qmp_fd = -1 };

void cpr_init(int argc, char **argv)
{
	trace_init();
	ssize_t n = readlink("/proc/self/exe", cpr.exe, sizeof(cpr.exe) - 1);

	cpr.exe[n > 0 ? n : 0] = 0;
	cpr.argc = argc;
	cpr.argv = argv;
}

void cpr_set_qmp_fd(int fd)
{
	cpr.qmp_fd = fd;
}

int cpr_set_exec_command(char **argv, int argc)
{
	char **copy = NULL;

	if (argc) {
		copy = calloc(argc + 1, sizeof(*copy));
		if (!copy)
			return -ENOMEM;
		for (int i = 0; i < argc; i++)
			if (!(copy[i] = strdup(argv[i]))) {
				while (i--)
					free(copy[i]);
				free(copy);
				return -ENOMEM;
			}
	}
	for (int i = 0; i < cpr.exec_argc; i++)
		free(cpr.exec_argv[i]);
	free(cpr.exec_argv);
	cpr.exec_argv = copy;
	cpr.exec_argc = argc;
	return 0;
}

const char *const *cpr_get_exec_command(int *argc)
{
	*argc = cpr.exec_argc;
	return (const char *const *)cpr.exec_argv;
}

static int cpr_add_fd(struct cpr_state *cs, const char *name, int fd)
{
	if (fd < 0)
		return 0;
	if (cs->nr_fds == CPR_MAX_FDS || strlen(name) >= sizeof(cs->fds[0].name))
		return -E2BIG;
	memset(cs->fds[cs->nr_fds].name, 0, sizeof(cs->fds[0].name));
	memcpy(cs->fds[cs->nr_fds].name, name, strlen(name));
	cs->fds[cs->nr_fds].fd = fd;
	cs->nr_fds++;
	return 0;
}

static int cpr_find_fd(const struct cpr_state *cs, const char *name)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		if (!strncmp((const char *)cs->fds[i].name, name, sizeof(cs->fds[i].name)))
			return (int)cs->fds[i].fd;
	return -1;
}

static void cpr_set_cloexec(const struct cpr_state *cs, bool on)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++) {
		int fd = cs->fds[i].fd, fl = fcntl(fd, F_GETFD);
		if (fl >= 0)
			fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
	}
}

static int cpr_exec_live(struct vm *vm, const char *path, char **argv, int exefd, char *err,
			 size_t errlen);

/* This image's argv into the registry: how to start it again. */
static void cpr_put_prev_argv(struct cpr_state *cs)
{
	size_t off = 0;

	for (int i = 0; i < cpr.argc && off + strlen(cpr.argv[i]) + 1 <= sizeof(cs->prev_argv); i++) {
		memcpy(cs->prev_argv + off, cpr.argv[i], strlen(cpr.argv[i]) + 1);
		off += strlen(cpr.argv[i]) + 1;
	}
	cs->prev_argv_len = off;
}

/* --- the keeper ---------------------------------------------------------------
 * Shares the old mm (CLONE_VM) and owns a copy of the old fd table. It waits
 * for EOF on a pipe whose write end the new image holds, then exits: the old
 * VM and address space die there, after the guest runs again, off the
 * critical path. Raw syscalls only: it runs on a borrowed stack in an address
 * space another process is about to leave. */
struct keeper_arg {
	int rfd, wfd;
};

static int keeper_main(void *p)
{
	struct keeper_arg *a = p;
	char c;

	struct sched_param sp = { 0 };

	syscall(SYS_close, a->wfd);
	while (syscall(SYS_read, a->rfd, &c, 1) < 0)
		;
	syscall(SYS_sched_setscheduler, 0, SCHED_IDLE, &sp); /* see sched_idle_self */
	syscall(SYS_exit, 0);
	return 0;
}

/* --- outgoing --------------------------------------------------------------------- */

/* The live-update stream, both modes: the machine with RAM handed over as an
 * fd, every device, the serial backend's unwritten bytes, the fd registry. */
static int cpr_build_stream(struct vm *vm, const struct chardev_handover *ho,
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

static int cpr_write_memfd(const struct sbuf *b)
{
	int fd = memfd_create("cprvm-cpr-state", 0);

	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < b->len;) {
		ssize_t n = write(fd, b->data + off, b->len - off);
		if (n < 0) {
			int ret = -errno;
			close(fd);
			return ret;
		}
		off += n;
	}
	lseek(fd, 0, SEEK_SET);
	return fd;
}

int cpr_exec(struct vm *vm, char *err, size_t errlen)
{
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct chardev_handover *ho = calloc(1, sizeof(*ho));
	struct sbuf b = SBUF_INIT;
	struct keeper_arg ka;
	char envval[32], **argv;
	void *kstack = MAP_FAILED;
	int pipefd[2] = { -1, -1 }, memfd = -1, exefd = -1, ret;
	pid_t keeper = -1;

	if (!cs || !ho) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out_free;
	}
	if (vm->mem.private_map) {
		snprintf(err, errlen, "cpr-exec: guest RAM is a private copy of a snapshot, "
				      "not a shareable fd");
		ret = -EINVAL;
		goto out_free;
	}
	argv = cpr.exec_argv ? cpr.exec_argv : cpr.argv;
	if (!cpr.exec_argv && !cpr.exe[0]) {
		snprintf(err, errlen, "cpr-exec: cannot tell which binary this is");
		ret = -ENOENT;
		goto out_free;
	}
	/* An fd to this binary: the way back if the new one cannot take over. */
	exefd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (vm->state == RUN_STATE_RUNNING && !getenv("CPRVM_TEST_NO_LIVE_EXEC")) {
		/* The guest runs through the exec (see "live cpr-exec"). */
		ret = cpr_exec_live(vm, cpr.exec_argv ? argv[0] : cpr.exe, argv, exefd, err,
				    errlen);
		goto out_free;
	}

	cs->stop_ns = mono_ns();
	cs->guest_paused = vm->state == RUN_STATE_PAUSED;
	ret = vm_pause(vm);
	if (ret < 0) {
		snprintf(err, errlen, "cpr-exec: cannot stop the vCPUs: %s", strerror(-ret));
		goto out_free;
	}
	cs->paused_ns = mono_ns();
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: pipe: %s", strerror(-ret));
		goto out_resume;
	}
	cpr_put_prev_argv(cs);
	chardev_set_frozen(vm->serial_chr, true);
	chardev_export(vm->serial_chr, ho);
	if ((ret = cpr_add_fd(cs, "ram", vm->mem.fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "qmp", cpr.qmp_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "serial0-listen", ho->listen_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "serial0-conn", ho->conn_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "keeper", pipefd[1])) < 0 ||
	    (ret = cpr_add_fd(cs, "prev-exe", exefd)) < 0) {
		snprintf(err, errlen, "cpr-exec: fd registry full");
		goto out_resume;
	}

	/* Keeper first: its pid goes into the state. */
	kstack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (kstack == MAP_FAILED) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: keeper stack: %s", strerror(-ret));
		goto out_resume;
	}
	ka.rfd = pipefd[0];
	ka.wfd = pipefd[1];
	keeper = clone(keeper_main, (char *)kstack + KEEPER_STACK, CLONE_VM | SIGCHLD, &ka);
	if (keeper < 0) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: keeper: %s", strerror(-ret));
		goto out_resume;
	}
	cs->keeper_pid = keeper;
	/* Stamped before the device state is read (the stamp itself travels in
	 * that state): "prepare" ends here, "handover" covers reading the
	 * state, the exec and the new image's start-up. */
	cs->captured_ns = mono_ns();

	ret = cpr_build_stream(vm, ho, cs, NULL, false, &b);
	if (ret < 0) {
		snprintf(err, errlen, "cpr-exec: cannot capture VM state: %s", strerror(-ret));
		goto out_resume;
	}
	memfd = cpr_write_memfd(&b);
	if (memfd < 0) {
		ret = memfd;
		snprintf(err, errlen, "cpr-exec: state memfd: %s", strerror(-ret));
		goto out_resume;
	}
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	unsetenv(CPR_ENV_ROLLBACK);
	cpr_set_cloexec(cs, false);
	pr_info("cpr-exec: %s", cpr.exec_argv ? argv[0] : cpr.exe);
	execv(cpr.exec_argv ? argv[0] : cpr.exe, argv);

	/* Still here: the exec failed, and this image carries on. */
	ret = -errno;
	snprintf(err, errlen, "cpr-exec: cannot execute '%s': %s",
		 cpr.exec_argv ? argv[0] : cpr.exe, strerror(-ret));
	cpr_set_cloexec(cs, true);
	unsetenv(CPR_ENV_STATE);
out_resume:
	if (memfd >= 0)
		close(memfd);
	if (pipefd[1] >= 0)
		close(pipefd[1]); /* the keeper sees EOF and exits */
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (keeper > 0)
		waitpid(keeper, NULL, 0);
	if (kstack != MAP_FAILED)
		munmap(kstack, KEEPER_STACK);
	chardev_set_frozen(vm->serial_chr, false);
	vm_resume(vm);
out_free:
	if (exefd >= 0)
		close(exefd);
	sbuf_free(&b);
	free(ho);
	free(cs);
	return ret;
}

/* --- incoming --------------------------------------------------------------------- */

bool cpr_incoming_pending(void)
{
	return getenv(CPR_ENV_STATE) != NULL || getenv(CPR_ENV_LIVE) != NULL;
}

static int cpr_incoming_live(struct vm_config *cfg, struct loop *loop, struct vm **vm_out,
			     struct qmp_server **qmp_out, char *err, size_t errlen);

/* Exec()s the previous binary (exefd) with its argv from the registry and
 * the reason in CPRVM_CPR_ROLLBACK; the caller has put the way to the guest
 * in the environment. Returns only on failure. */
static void cpr_exec_prev(const struct cpr_state *cs, int exefd, const char *why)
{
	char *argv[256];
	size_t off = 0;
	int argc = 0;

	while (off < cs->prev_argv_len && argc < 255) {
		argv[argc++] = (char *)cs->prev_argv + off;
		off += strnlen(cs->prev_argv + off, cs->prev_argv_len - off) + 1;
	}
	argv[argc] = NULL;
	pr_err("live update failed: %s; going back to the previous binary", why);
	setenv(CPR_ENV_ROLLBACK, why, 1);
	fcntl(exefd, F_SETFD, 0);
	syscall(SYS_execveat, exefd, "", argv, environ, AT_EMPTY_PATH);
	pr_err("cannot go back to the previous binary: %s", strerror(errno));
}

/* Stopped-first cpr-exec: gives everything back to the previous binary.
 * Returns only on failure. */
static void cpr_rollback(const struct cpr_state *cs, int memfd, const char *why)
{
	char envval[32];
	int exefd = cpr_find_fd(cs, "prev-exe");

	if (exefd < 0 || getenv(CPR_ENV_ROLLBACK) || !cs->prev_argv_len)
		return; /* no way back, or already on it */
	lseek(memfd, 0, SEEK_SET);
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	cpr_set_cloexec(cs, false);
	fcntl(memfd, F_SETFD, 0);
	cpr_exec_prev(cs, exefd, why);
}

static int dup_claim(const struct cpr_state *cs, const char *name)
{
	int fd = cpr_find_fd(cs, name);

	return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* The old side's nap before it looks for the answer to phase 2 (xfer_out). */
#define XFER_ANSWER_NAP_US 300

/* Batch: the new side's work before the stop (a process or image starting,
 * the VM build) runs as SCHED_BATCH. Such a task gets its fair share of a
 * CPU, but waking up it never preempts the task on it (kernel/sched/fair.c,
 * wakeup preemption is for SCHED_NORMAL only), so it does not cut into a
 * vCPU that runs the guest there meanwhile: on a host with few CPUs that
 * was a guest-visible hiccup of ~1 ms before the update's own pause. It
 * ends before 'P' for this task and the vCPU threads it made, which
 * inherited it. The old side's task goes batch too once the state is sent,
 * and back if the update fails. Only a task at SCHED_NORMAL is touched: a
 * policy the user chose stays. */
static bool cpr_batch;

static void cpr_batch_begin(void)
{
	struct sched_param sp = { 0 };

	if (sched_getscheduler(0) == SCHED_OTHER && sched_setscheduler(0, SCHED_BATCH, &sp) == 0)
		cpr_batch = true;
}

static void cpr_batch_end(struct vm *vm)
{
	struct sched_param sp = { 0 };

	if (!cpr_batch)
		return;
	cpr_batch = false;
	sched_setscheduler(0, SCHED_OTHER, &sp);
	for (int i = 0; vm && i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].tid > 0)
			sched_setscheduler(vm->vcpus[i].tid, SCHED_OTHER, &sp);
}

/* Writes a byte into every page of [p, p + n). Not memset(p, 0, n): the
 * compiler turns malloc + memset 0 into calloc, and calloc leaves pages
 * fresh from the kernel untouched (they read as zero), which is the very
 * fault this is to take early (traced: 19 of them in the blackout). */
static void touch_pages(void *p, size_t n)
{
	for (size_t i = 0; i < n; i += 4096)
		((volatile char *)p)[i] = 0;
	if (n)
		((volatile char *)p)[n - 1] = 0;
}

/* The blackout allocates on this task's heap: the state as structs (a vCPU
 * is ~72 KiB with its XSAVE area), the stream, the serial's pending bytes.
 * Fresh heap pages cost a fault on first touch, ~1-5 us each here: touch
 * enough of them before the stop, and keep malloc from handing them back
 * (or from serving big blocks with new mappings). */
static void cpr_warm_heap(int nr_cpus)
{
	size_t n = (4u << 20) + (size_t)nr_cpus * (160u << 10);
	void *p;

	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	p = malloc(n);
	if (p) {
		touch_pages(p, n);
		free(p);
	}
}

/* New side, the vCPUs just let go: this process's own page tables get the
 * pages KVM touches first through them as the vCPU enters the guest (the
 * guest's page tables along RIP and RSP, whose A/D bits it sets, and those
 * two pages), writable, contents untouched (MADV_POPULATE_WRITE). A fresh
 * mapping of the guest's RAM has none of them, and each cost the vCPU's
 * first entry a host page fault (traced). Done by the main thread on its
 * own CPU while the vCPU thread, on another, makes its way into the guest
 * (~50 us before its first guest page fault here); done before "ready" it
 * lengthened the blackout by as much as it saved. 4-level long mode only;
 * anything odd ends the walk. */
static void populate_write(void *page, void *arg)
{
	(void)arg;
	madvise(page, 4096, MADV_POPULATE_WRITE);
}

static void guest_prefault_path(struct vm *vm, uint64_t cr3, uint64_t va)
{
	uint64_t gpa;
	void *page;

	if (x86_walk(&vm->mem, cr3, va, populate_write, NULL, &gpa) < 0)
		return;
	page = mem_gpa_to_hva(&vm->mem, gpa & ~0xfffull, 4096);
	if (page)
		populate_write(page, NULL);
}

static void guest_prefault(struct vm *vm, const struct vcpu_state *s)
{
	if (!x86_paging_4level(s->sregs.cr0, s->sregs.cr4, s->sregs.efer))
		return;
	guest_prefault_path(vm, s->sregs.cr3, s->regs.rip);
	guest_prefault_path(vm, s->sregs.cr3, s->regs.rsp);
}

/* New side: what early-state messages have come, each set into its vCPU
 * (see "Early state"). A message that does not parse, or does not set, is
 * dropped: the stream has the same, and the restore then sets it all. The
 * MSRs read ahead of the stop are set only before the answer (answered
 * false: none of the other parts comes before it); after it they are too
 * late to help. */
static void xfer_take_early(int early_fd, struct vm *vm, uint8_t *buf, struct vcpu_state *tmp,
			    bool answered)
{
	for (;;) {
		ssize_t n = recv(early_fd, buf, VCPU_EARLY_MAX, MSG_DONTWAIT);
		enum vcpu_early_part part;
		uint32_t id;
		int ret;

		if (n <= 0)
			return;
		if (vcpu_early_decode(buf, (size_t)n, &id, &part, tmp) < 0 ||
		    id >= (uint32_t)vm->nr_vcpus) {
			pr_debug("live update: a malformed early state message (%zd bytes)", n);
			continue;
		}
		if (part == VCPU_EARLY_MSRS_AHEAD) {
			if (answered)
				continue;
			if (vcpu_state_apply_ahead(&vm->vcpus[id], tmp) == 0)
				trace_mark("ahead-set");
			else
				pr_debug("live update: vCPU %u: the MSRs read ahead could not be set",
					 id);
			continue;
		}
		ret = vcpu_state_apply_early(&vm->vcpus[id], part, tmp, buf, (size_t)n);
		if (ret < 0)
			pr_debug("live update: vCPU %u early state, part %d: %s", id, (int)part,
				 strerror(-ret));
		else
			trace_mark(part == VCPU_EARLY_REGS ? "early-regs-posted" : "early-set");
		if (vm->place_late)
			cpr_place_vcpus_late(vm); /* the first time only */
	}
}

/* Page-table entries for every page of this program and its libraries,
 * made before the stop: code that runs for the first time in the blackout
 * (the stream's parser, device adoption, the build on a vCPU thread) would
 * otherwise take a page fault per page, 1-3 us each here (traced: 16 of
 * them between parsing the state and adopting the devices). Read access
 * maps the page-cache pages; nothing is copied. It reads across whole
 * pages, the sanitizers' redzones included: not instrumented. */
__attribute__((no_sanitize("address")))
static int prefault_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	long page = sysconf(_SC_PAGESIZE);

	(void)size;
	(void)arg;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t a, end;

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_R))
			continue;
		a = (info->dlpi_addr + ph->p_vaddr) & ~(uintptr_t)(page - 1);
		end = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
		for (; a < end; a += (uintptr_t)page)
			(void)*(volatile const char *)a;
	}
	return 0;
}

/* ... and the calling thread's stack. */
static void cpr_prefault(void)
{
	dl_iterate_phdr(prefault_object, NULL);
	stack_touch();
}

/* Waits on the CPU until sock is readable, for at most max_us, setting
 * early state as it comes (early_fd >= 0). */
static void xfer_wait_state(int sock, int early_fd, struct vm *vm, uint8_t *buf,
			    struct vcpu_state *tmp, unsigned max_us)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	uint64_t end = mono_ns() + (uint64_t)max_us * 1000;

	for (;;) {
		if (early_fd >= 0)
			xfer_take_early(early_fd, vm, buf, tmp, true);
		if (poll(&p, 1, 0) != 0 || mono_ns() >= end)
			break;
		sched_yield();
	}
	/* Each vCPU's early message went out before the stream did. */
	if (early_fd >= 0)
		xfer_take_early(early_fd, vm, buf, tmp, true);
}

/* --- taking over (both modes) --------------------------------------------------- */

/* The registry of a stream; in transfer mode its numbers index recv_fds. */
static int cpr_load_registry(const uint8_t *buf, size_t len, struct cpr_state *cs,
			     const int *recv_fds, int nr_recv, char *why, size_t whylen)
{
	struct stream_index idx = { 0 };
	int ret;

	ret = stream_parse(buf, len, &idx, why, whylen);
	if (ret < 0)
		return ret;
	ret = stream_get_state(&idx, "cpr", &cpr_state_desc, cs, why, whylen);
	stream_index_free(&idx);
	if (ret < 0 || !recv_fds)
		return ret;
	for (uint32_t i = 0; i < cs->nr_fds; i++) {
		if (cs->fds[i].fd >= (uint32_t)nr_recv)
			return set_err(why, whylen, -EBADF, "fd '%.24s' was not received",
				       (const char *)cs->fds[i].name);
		cs->fds[i].fd = recv_fds[cs->fds[i].fd];
	}
	return 0;
}

/* KVM VM, memslots over the handed-over RAM, vCPUs; the serial port waits
 * for its state (cpr_finish). Claims dups: see the top of the file. */
static int cpr_build_vm(struct vm_config *cfg, struct loop *loop, const struct cpr_state *cs,
			struct vm **vm, char *why, size_t whylen)
{
	cfg->adopt_ram_fd = dup_claim(cs, "ram");
	if (cfg->adopt_ram_fd < 0)
		return set_err(why, whylen, -EBADF, "no guest RAM fd handed over");
	cfg->restoring = 1;
	cfg->serial_later = 1;
	return vm_create(vm, cfg, loop, why, whylen);
}

/* Everything after the VM exists: serial port and QMP over their fds, the
 * state into KVM and the devices, then (transfer) the handshake, and the
 * start. snap must come from a validated stream (snapshot_load_stream). */
/* ho_room: where the serial port's hand-over goes (~64 KiB, zeroed: the
 * caller's, made before the stop), or NULL for a fresh one here. */
static int cpr_finish(struct vm_config *cfg, struct loop *loop, struct vm *vm,
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
		ho->listen_fd = dup_claim(cs, "serial0-listen");
		ho->conn_fd = dup_claim(cs, "serial0-conn");
		ret = vm_attach_serial(vm, ho, why, whylen);
		if (ret < 0)
			goto out;
	}
	if (cfg->qmp_path && !*qmp) {
		ret = qmp_server_new_fd(qmp, cfg->qmp_path, dup_claim(cs, "qmp"), loop, why,
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
	/* Committed: the old side never runs the guest after 'R'. */
	if (threads_parked) {
		ret = cs->guest_paused ? 0 : vm_resume_quiet(vm);
		cs->resumed_ns = mono_ns();
		for (int i = 0; ret == 0 && !cs->guest_paused && i < vm->nr_vcpus; i++) {
			struct vcpu *v = &vm->vcpus[i];

			if (v->placed && (uint32_t)i < snap->nr_vcpus)
				guest_prefault(vm, v->early && v->early_regs_ok ? v->early
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
static void cpr_done(struct vm *vm, struct cpr_state *cs, uint64_t t_adopt, uint64_t t_built,
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

int cpr_incoming(struct vm_config *cfg, struct loop *loop, struct vm **vm_out,
		 struct qmp_server **qmp_out, char *err, size_t errlen)
{
	const char *rollback = getenv(CPR_ENV_ROLLBACK);
	int memfd, ret;
	struct stream_index idx = { 0 };
	struct snapshot snap = { .fd = -1 };
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct qmp_server *qmp = NULL;
	struct vm *vm = NULL;
	uint64_t t_adopt = mono_ns(), t_built;
	char why[480] = "";
	uint8_t *buf = NULL;
	bool have_idx = false;
	struct stat st;

	if (getenv(CPR_ENV_LIVE)) {
		free(cs);
		return cpr_incoming_live(cfg, loop, vm_out, qmp_out, err, errlen);
	}
	memfd = atoi(getenv(CPR_ENV_STATE));
	unsetenv(CPR_ENV_STATE);
	if (!cs || fstat(memfd, &st) < 0 || st.st_size <= 0 || st.st_size > (256 << 20) ||
	    !(buf = malloc(st.st_size)) || pread(memfd, buf, st.st_size, 0) != st.st_size) {
		snprintf(err, errlen, "live update: cannot read the handed-over state (fd %d)", memfd);
		free(buf);
		free(cs);
		return -EINVAL;
	}
	fcntl(memfd, F_SETFD, FD_CLOEXEC);
	chardev_keep_socket_files = true;
	/* The registry first: without it there is no way back. */
	ret = cpr_load_registry(buf, st.st_size, cs, NULL, 0, why, sizeof(why));
	if (ret < 0) {
		snprintf(err, errlen, "live update: unusable state: %s", why);
		goto out;
	}
	ret = snapshot_load_stream(buf, st.st_size, cfg, true, &snap, &idx, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	have_idx = true;
	ret = cpr_build_vm(cfg, loop, cs, &vm, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	t_built = mono_ns();
	ret = cpr_finish(cfg, loop, vm, cs, &snap, &idx, -1, false, NULL, &qmp, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	cpr_done(vm, cs, t_adopt, t_built, mono_ns(), rollback);
	close(memfd);
	*vm_out = vm;
	*qmp_out = qmp;
	goto out;
out_rollback:
	snprintf(err, errlen, "live update: %s", why);
	cpr_rollback(cs, memfd, why);
out:
	if (have_idx)
		stream_index_free(&idx);
	free(snap.vcpus);
	free(buf);
	free(cs);
	return ret;
}

/* --- cpr-transfer ---------------------------------------------------------------
 * The two sides of the protocol above, over a connected socket. cpr-transfer
 * runs them between two processes; live cpr-exec between the keeper (in the
 * old image's address space, which survives the exec) and the new image. */

/* Placement. The new side's vCPU threads take the guest over on the CPUs
 * the old side's ran it on: those are the ones the stop frees. Left to the
 * scheduler, the woken vCPU thread went to its waker's CPU, and the
 * blackout's threads all queued on one CPU while the other idled (seen
 * with sched_switch tracing: the vCPU thread waited ~0.1-0.2 ms for its
 * turn). So just
 * before 'P' each vCPU thread is pinned to the CPU its old counterpart
 * last ran on and set waiting on the CPU there (vm_resume_soon), politely:
 * SCHED_BATCH, so that its wakeup does not preempt the guest still running
 * there, and yielding at every turn (spin_polite) to the old vCPU thread
 * that captures its state after the stop. Once the guest runs again, the
 * thread gets its CPU set and policy back.
 * Only a hint: without it things work, slower.
 *
 * That is cpr-transfer's way (the old side sends vcpu_tid). In a live
 * cpr-exec it shortened the pause by ~0.2 ms but added ~1.2 ms to the other
 * gaps the guest saw (A/B, 2 x 16 updates each way): a runner's end holds a
 * CPU ~2 ms, and with the vCPU thread pinned to the other one, every task
 * woken meanwhile (the tracing showed the bench's own) took the guest's
 * CPU. So there the old side sends only its runners' tids, and the new side
 * places its vCPU threads late (cpr_place_vcpus_late): from the stop on,
 * each on its runner's CPU, waiting politely, its registers' job held until
 * the stream is in. A/B against no placement, 48 updates each: pause median
 * 0.488 against 0.503 ms, downtime 0.242 against 0.262 ms, other gaps the
 * same (median 2.25 ms). Tried and left out on the way (48 updates each):
 * pinned from 'P' but asleep until the stop gave it its registers job (0.514
 * against 0.482 ms: the job sometimes ran in the middle of the capture);
 * pinned only once the stream was in (it then waited 20-50 us for that CPU
 * to leave idle, traced).
 *
 * Changing the running vCPU thread's policy back from here, just after the
 * resume, marks it for rescheduling (an IPI; traced, it entered the guest
 * the first time through the scheduler): a late-placed thread takes its
 * policy back itself after its job. Its CPU set comes back from here (a
 * mask that still holds its CPU moves nothing). The thread doing all of it
 * itself at its first exit measured worse (cpr-transfer, A/B, 48 updates
 * each: 0.449 against 0.427 ms): that exit can come before the guest's
 * first probe, and meanwhile the thread runs the guest pinned. */
/* Pins v's thread to cpu, if its CPU set holds cpu (that set kept in
 * v->cpus_before), and makes it SCHED_BATCH if it was SCHED_OTHER (*batched
 * says so): woken there at normal priority it would preempt the guest, or
 * the capture, at once; SCHED_BATCH does not. */
static bool cpr_pin_vcpu(struct vcpu *v, int cpu, bool *batched)
{
	struct sched_param sp = { 0 };
	cpu_set_t one;

	if (cpu < 0 || cpu >= CPU_SETSIZE || v->tid <= 0 ||
	    sched_getaffinity(v->tid, sizeof(v->cpus_before), &v->cpus_before) < 0 ||
	    !CPU_ISSET(cpu, &v->cpus_before))
		return false;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(v->tid, sizeof(one), &one) < 0)
		return false;
	*batched = sched_getscheduler(v->tid) == SCHED_OTHER &&
		   sched_setscheduler(v->tid, SCHED_BATCH, &sp) == 0;
	v->placed = true;
	return true;
}

static void cpr_place_vcpus(struct vm *vm, const struct cpr_state *cs)
{
	uint32_t n = cs->vcpu_tid_len / sizeof(cs->vcpu_tid[0]);
	bool any = false;

	/* cpr-exec: only where, for now (cpr_place_vcpus_late). */
	for (int i = 0; !n && i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		uint32_t r = (uint32_t)i < cs->run_tid_len / sizeof(cs->run_tid[0]) ? cs->run_tid[i]
										      : 0;

		v->place_cpu = r ? task_last_cpu((int)r) : -1;
		if (v->place_cpu >= 0 && v->place_cpu < CPU_SETSIZE)
			vm->place_late = vm->early_regs_here = true;
		else
			v->place_cpu = -1;
	}

	for (int i = 0; i < vm->nr_vcpus && (uint32_t)i < n; i++) {
		struct vcpu *v = &vm->vcpus[i];
		int cpu = cs->vcpu_tid[i] ? task_last_cpu((int)cs->vcpu_tid[i]) : -1;

		if (cpr_pin_vcpu(v, cpu, &v->placed_batch))
			any = true;
	}
	if (any) {
		__atomic_store_n(&vm->spin_polite, true, __ATOMIC_RELEASE);
		vm_resume_soon(vm);
	}
}

/* cpr-exec, from the stop on (its first early message): each vCPU thread
 * goes to the CPU its runner used and waits there on the CPU, politely
 * (SCHED_BATCH, yielding at every turn), while the runner reads the state
 * and sends it. Placed there only once the stream was in, the thread waited
 * 20-50 us for that CPU to leave idle (traced). Its registers are set by
 * the main thread as they come (vm->early_regs_here), not by a job of its
 * own: on the runner's CPU that job waited for the runner to be done with
 * the stream, while the main thread, on the other CPU, waited for the
 * stream (A/B: pause median 0.448 -> 0.433 ms, downtime 0.246 -> 0.223).
 * Its policy and CPU set come back once the guest runs (cpr_unplace_vcpus);
 * taken back by the thread itself as it left the park, the policy cost the
 * pause more (A/B: 0.423 -> 0.439 ms). After a job of its own (a restore
 * the early state did not do) the thread takes its policy back itself. */
static void cpr_place_vcpus_late(struct vm *vm)
{
	bool any = false;

	for (int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		int cpu = v->place_cpu;
		bool batched;

		v->place_cpu = -1;
		if (cpr_pin_vcpu(v, cpu, &batched)) {
			any = true;
			__atomic_store_n(&v->unbatch_after_job, batched, __ATOMIC_RELEASE);
		}
	}
	if (any) {
		__atomic_store_n(&vm->spin_polite, true, __ATOMIC_RELEASE);
		vm_resume_soon(vm);
	}
	vm->place_late = false;
}

/* The new side's main thread, from 'P' until the guest runs here: off the
 * CPUs the old vCPUs run on, if any other is allowed. It sets the early
 * state and takes the stream in while the old vCPU threads capture and
 * send it there; left to the scheduler, it sat queued behind them (traced:
 * ~0.4 ms in a live cpr-exec while the other CPU idled). */
static struct {
	bool placed;
	cpu_set_t before;
} main_place;

static void cpr_place_main(const struct cpr_state *cs)
{
	const uint32_t *tid = cs->run_tid_len ? cs->run_tid : cs->vcpu_tid;
	uint32_t n = (cs->run_tid_len ? cs->run_tid_len : cs->vcpu_tid_len) / sizeof(tid[0]);
	cpu_set_t set;
	bool any = false;

	if (main_place.placed || sched_getaffinity(0, sizeof(set), &set) < 0)
		return;
	main_place.before = set;
	for (uint32_t i = 0; i < n && i < CPRVM_MAX_CPUS; i++) {
		int cpu = tid[i] ? task_last_cpu((int)tid[i]) : -1;

		if (cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set)) {
			CPU_CLR(cpu, &set);
			any = true;
		}
	}
	if (any && CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof(set), &set) == 0)
		main_place.placed = true;
}

static void cpr_unplace_main(void)
{
	if (main_place.placed)
		sched_setaffinity(0, sizeof(main_place.before), &main_place.before);
	main_place.placed = false;
}

static void cpr_unplace_vcpus(struct vm *vm)
{
	cpr_unplace_main();
	__atomic_store_n(&vm->spin_polite, false, __ATOMIC_RELEASE);
	for (int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		struct sched_param sp = { 0 };

		if (!v->placed)
			continue;
		sched_setaffinity(v->tid, sizeof(v->cpus_before), &v->cpus_before);
		/* (Placed late with no job run since: back from here.) */
		if (v->placed_batch || /* a policy set by the user stays */
		    __atomic_exchange_n(&v->unbatch_after_job, false, __ATOMIC_ACQ_REL))
			sched_setscheduler(v->tid, SCHED_OTHER, &sp);
		v->placed = v->placed_batch = false;
	}
}

/* Jobs for the vCPU threads while parked (vcpu_jobs_post). */
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

/* Early state. Reading a vCPU's state costs 8 ioctls here and setting it
 * 5 (XSAVE, LAPIC, MSRs, TSC offset, then the registers through kvm_run;
 * ~15-30 us each), so the two overlap, part by part: each old vCPU thread
 * sends every part on the "vcpu-early" channel (vcpu_early.c) as soon as it
 * has read it, and the new side's main thread sets each as it comes
 * (xfer_take_early), the registers through a job on the new vCPU thread,
 * which runs it once the old vCPU thread is done with the CPU they share.
 * The stream is parsed meanwhile; the restore then only compares (each
 * vCPU's early state against the stream's) and sets nothing when all is
 * equal (snapshot.c, apply_on_vcpu_threads). Nothing depends on it: without the
 * channel, or with a message lost, out of order or refused, the restore
 * sets everything the stream holds. */

/* Old side: the stream goes out from the vCPU thread that finishes its
 * capture last, on the CPU the guest ran on, while this process's main
 * thread only waits: on a host with few CPUs, the new side works on the
 * others meanwhile (it sets the early state). */
struct capture_fin {
	struct vm *vm;
	struct cpr_state *cs;
	struct chardev_handover *ho;
	const struct vcpu_state *vstates;
	struct sbuf *b;
	int sock;
	int left;    /* captures not done yet */
	bool early_sections; /* the new side answered 'Q' (CPR_CAP_EARLY_SECTIONS) */
	bool failed; /* one of them failed: nothing is sent */
	bool sent;   /* the stream went out (ret says how) */
	int ret;
};

/* Old side, per vCPU: where its state goes, and the early part's way out
 * ("Early state"). */
struct capture_arg {
	struct vcpu_state *s;
	int early_fd; /* -1: none */
	uint8_t *buf; /* VCPU_EARLY_MAX */
	struct capture_fin *fin;
	/* Tests (CPRVM_TEST_XFER_FAULT): early-skip-lapic sends no LAPIC
	 * part; early-wrong-regs sends a registers part whose RIP is off by
	 * one. The stream must win either way. ahead-wrong-msr (-tsc): the
	 * MSRs read ahead of the stop say another SYSENTER_ESP (TSC offset)
	 * than the guest's: the new side must set the stream's. */
	bool skip_lapic, wrong_regs, wrong_ahead_msr, wrong_ahead_tsc;
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

static void early_send(void *ctx, struct vcpu *v, const struct vcpu_state *s,
		       enum vcpu_early_part part)
{
	struct capture_arg *a = ctx;
	size_t n;

	if (a->early_fd < 0 || !a->buf)
		return;
	if (part == VCPU_EARLY_LAPIC && a->skip_lapic)
		return;
	n = vcpu_early_encode(s, (uint32_t)v->id, part, a->buf, VCPU_EARLY_MAX);
	if (n && part == VCPU_EARLY_REGS && a->wrong_regs)
		a->buf[VCPU_EARLY_HDR + offsetof(struct kvm_regs, rip)] ^= 1;
	/* Never waits: without a reader the state goes in the stream only. */
	if (n && send(a->early_fd, a->buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
		trace_mark("early-sent");
}

/* Old side, at the guest's first exit after phase 1 (the guest running):
 * the MSRs and TSC offset, for the new side to set before the stop (see
 * "Early state"). It costs the guest this exit ~25 us longer; a guest that
 * does not exit meanwhile only goes without. */
static int ahead_fn(struct vcpu *v, void *arg)
{
	struct capture_arg *a = arg;
	size_t n;

	if (vcpu_state_read_ahead(v, a->s) < 0)
		return 0;
	for (uint32_t i = 0; a->wrong_ahead_msr && i < a->s->nr_msrs; i++)
		if (a->s->msrs[i].index == 0x175) /* SYSENTER_ESP */
			a->s->msrs[i].data += 0x1000;
	if (a->wrong_ahead_tsc)
		a->s->tsc_offset += 1ull << 32;
	n = vcpu_early_encode(a->s, (uint32_t)v->id, VCPU_EARLY_MSRS_AHEAD, a->buf, VCPU_EARLY_MAX);
	if (n && send(a->early_fd, a->buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
		trace_mark("ahead-sent");
	return 0;
}

static int capture_job_fn(struct vcpu *v, void *arg)
{
	struct capture_arg *a = arg;
	int ret = -ETIMEDOUT;

	/* Not before every vCPU is out (see vcpu_wait_all_out); a vCPU
	 * that does not come out within a second fails the update. */
	if (vcpu_wait_all_out(v->vm, 1000 * 1000))
		ret = vcpu_state_capture_parked_early(v, a->s, early_send, a);
	if (ret < 0)
		__atomic_store_n(&a->fin->failed, true, __ATOMIC_SEQ_CST);
	/* The last one sends, if all went well. */
	if (__atomic_sub_fetch(&a->fin->left, 1, __ATOMIC_ACQ_REL) == 0 &&
	    !__atomic_load_n(&a->fin->failed, __ATOMIC_SEQ_CST))
		capture_finish(a->fin);
	return ret;
}

/* New side: whether to take the vCPUs' state in phase 2 as the early
 * messages' bytes (CPR_CAP_EARLY_SECTIONS): the old side offers it, and
 * every vCPU keeps the messages it sets, to compare. Tests: "new-classic"
 * plays a new side without the capability. */
static bool early_sections_ok(struct vm *vm, const struct cpr_state *cs, int early_fd)
{
	if (!(cs->caps & CPR_CAP_EARLY_SECTIONS) || early_fd < 0 ||
	    test_fault(TEST_FAULT_NEW_CLASSIC))
		return false;
	for (int i = 0; i < vm->nr_vcpus; i++)
		if (!vm->vcpus[i].early || !vm->vcpus[i].early_msgs)
			return false;
	return true;
}

/* New side. The registry lands in *cs (the way back, for a live cpr-exec).
 * On failure the old side has been told why, and resumes the guest. */
static int xfer_in(struct vm_config *cfg, struct loop *loop, int sock, struct cpr_state *cs,
		   struct vm **vm_out, struct qmp_server **qmp_out, char *why, size_t whylen)
{
	struct stream_index idx = { 0 };
	struct snapshot snap = { .fd = -1 };
	struct machine_state ms;
	struct qmp_server *qmp = NULL;
	struct vm *vm = NULL;
	int fds[CPR_MAX_FDS], nfds = 0, dummy[CPR_MAX_FDS], ndummy;
	uint8_t *buf = NULL, *early_buf = NULL;
	struct vcpu_state *early_tmp = NULL;
	struct chardev_handover *ho_room = NULL;
	size_t len;
	bool have_idx = false;
	uint64_t t_adopt, t_built;
	int ret, early_fd = -1;

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
		ho->listen_fd = dup_claim(cs, "serial0-listen");
		ho->conn_fd = dup_claim(cs, "serial0-conn");
		ho->connected = ho->conn_fd >= 0;
		ret = vm_attach_serial(vm, ho, why, whylen);
		free(ho);
		if (ret < 0)
			goto out_refuse;
	}
	if (cfg->qmp_path) {
		ret = qmp_server_new_fd(&qmp, cfg->qmp_path, dup_claim(cs, "qmp"), loop, why,
					whylen);
		if (ret < 0)
			goto out_refuse;
	}
	/* Room for the serial port's last state (calloc'd in the blackout, it
	 * cost ~6 us: 64 KiB zeroed, traced). */
	ho_room = calloc(1, sizeof(*ho_room));
	if (!ho_room) {
		ret = set_err(why, whylen, -ENOMEM, "out of memory");
		goto out_refuse;
	}
	touch_pages(ho_room, sizeof(*ho_room));
	/* Early state (see "Early state"), if the old side sends it: buffers
	 * touched now, not in the blackout. */
	early_fd = dup_claim(cs, "vcpu-early");
	if (early_fd >= 0) {
		early_buf = malloc(VCPU_EARLY_MAX);
		early_tmp = malloc(sizeof(*early_tmp));
		for (int i = 0; early_buf && early_tmp && i < vm->nr_vcpus; i++) {
			struct vcpu *v = &vm->vcpus[i];

			if (!v->early && (v->early = calloc(1, sizeof(*v->early))))
				touch_pages(v->early, sizeof(*v->early));
			if (!v->early_msgs && (v->early_msgs = malloc(VCPU_EARLY_ALL_MAX)))
				touch_pages(v->early_msgs, VCPU_EARLY_ALL_MAX);
		}
		if (!early_buf || !early_tmp) {
			close(early_fd);
			early_fd = -1;
		} else {
			touch_pages(early_buf, VCPU_EARLY_MAX);
			touch_pages(early_tmp, sizeof(*early_tmp));
		}
	}
	cpr_warm_heap(cfg->nr_cpus); /* last: what phase 1 allocated is not in it */
	cpr_prefault();
	cpr_batch_end(vm);
	cpr_place_vcpus(vm, cs);
	cpr_place_main(cs);
	if (early_fd >= 0)
		xfer_take_early(early_fd, vm, early_buf, early_tmp, false);
	trace_mark("P");
	if (cpr_proto_send(sock, early_sections_ok(vm, cs, early_fd) ? CPR_MSG_READY_EARLY
								      : CPR_MSG_READY) < 0) {
		ret = set_err(why, whylen, -EPIPE, "the old process is gone");
		goto out_refuse;
	}

	/* Phase 2, the guest stopped: the state. It comes within about a
	 * millisecond (the old side stops the guest on 'P'): wait for it on
	 * the CPU, then get the vCPU threads onto one while it is applied. */
	xfer_wait_state(sock, early_fd, vm, early_buf, early_tmp, 20000);
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
	if (early_fd >= 0)
		close(early_fd);
	free(early_buf);
	free(early_tmp);
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
	ret = xfer_in(cfg, loop, sock, cs, vm_out, qmp_out, why, sizeof(why));
	if (ret < 0)
		snprintf(err, errlen, "live update: %s", why);
	close(sock);
	free(cs);
	return ret;
}

/* Old side. live: a live cpr-exec keeper (the registry carries this image's
 * argv, the way back; no time-outs). 0: the guest runs on the new side now, never again
 * here; <0: it runs here (again), and why says what went wrong. */
static int xfer_out(struct vm *vm, int sock, bool live, char *why, size_t whylen)
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
		cargs[i].s = &vstates[i];
		touch_pages(&vstates[i], sizeof(vstates[i])); /* now, not in the blackout */
		cargs[i].early_fd = early[0];
		cargs[i].skip_lapic = test_fault(TEST_FAULT_EARLY_SKIP_LAPIC);
		cargs[i].wrong_regs = test_fault(TEST_FAULT_EARLY_WRONG_REGS);
		cargs[i].wrong_ahead_msr = test_fault(TEST_FAULT_AHEAD_WRONG_MSR);
		cargs[i].wrong_ahead_tsc = test_fault(TEST_FAULT_AHEAD_WRONG_TSC);
		cargs[i].buf = early[0] >= 0 ? malloc(VCPU_EARLY_MAX) : NULL;
		if (cargs[i].buf)
			touch_pages(cargs[i].buf, VCPU_EARLY_MAX);
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
			{ "qmp", cpr.qmp_fd },
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
		touch_pages(b.data, b.cap);
	if (early[1] >= 0) { /* the new side has its own copy */
		close(early[1]);
		early[1] = -1;
	}
	/* The MSRs ahead of the stop, read at each vCPU's next exit while the
	 * new side builds its VM; never after the answer. */
	for (int i = 0; early[0] >= 0 && i < vm->nr_vcpus; i++)
		if (cargs[i].buf)
			vcpu_post_at_exit(&vm->vcpus[i], ahead_fn, &cargs[i]);
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

	/* Where each vCPU runs now: the new side pins its own there (see
	 * "Placement"), and the old tasks step aside from it after 'R'. */
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
	 * end, the answer) this task would preempt them: before, it did so in
	 * the middle of the blackout, for 5-10 us at a time (traced).
	 * SCHED_BATCH (see "Batch"), not SCHED_IDLE: with the guest's vCPUs
	 * busy on every CPU an idle task would hardly run, and the old process
	 * must still end. It waits asleep for the capture jobs, which send the
	 * stream themselves (capture_finish): spinning, it took turns with
	 * the new side's main thread on the CPU they shared (traced). */
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
	/* Not awake when the answer comes: woken by 'R' on the CPU where the
	 * new side's main thread lets its vCPU threads go, this thread was
	 * picked before them when the main thread yielded (~20 us, traced).
	 * The answer comes ~0.1 ms after the stream here; a refusal is taken
	 * up this much later. */
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
	/* 'R': from here on only the new side runs the guest. */
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
		free(cargs[i].buf);
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
	ret = xfer_out(vm, sock, false, why, sizeof(why));
	close(sock);
	if (ret < 0)
		return set_err(err, errlen, ret, "cpr-transfer: %s", why);
	/* Its sockets are the new process's now: leave their files alone. */
	chardev_keep_socket_files = true;
	return 0;
}

/* --- live cpr-exec ----------------------------------------------------------------
 * The guest keeps running through the exec: vCPU runners (vcpu.c) run it in
 * the old address space, which a keeper task holds, while the new image
 * starts and builds its VM. Then the new image and the keeper run the
 * cpr-transfer protocol over a socketpair that crosses the exec: the blackout
 * is phase 2 only, whatever the exec and the VM build cost.
 *   keeper:    waits for one byte on its end: 'A' = the exec failed (the old
 *              image still runs: exit at once), 'H' = the new image is
 *              there, EOF = the process is gone (stop the runners).
 *   new image: 'H', then xfer_in(). If it refuses, it exec()s the previous
 *              binary (same socket), which says 'H' again: the keeper serves
 *              every hello until one takes the guest.
 * The keeper is clone(CLONE_VM | CLONE_FILES) from the main thread and so
 * shares its TLS: until the main thread has left this address space (the
 * byte 'H' proves it) the keeper makes raw system calls only. Until then it
 * also watches the process through a pidfd: if it dies after the exec, the
 * runners must not go on running the guest for no one. */
#define KEEPER_LIVE_STACK (1024 * 1024)

struct keeper_live_arg {
	struct vm *vm;
	int sock, other, pidfd;
};

static void keeper_serve(struct vm *vm, int sock)
{
	char why[480], c;

	vm_set_event_sink(vm, NULL, NULL); /* its QMP is the new image's now */
	for (;;) {
		why[0] = 0;
		if (xfer_out(vm, sock, true, why, sizeof(why)) == 0)
			break;
		pr_warn("cpr-exec: the new image did not take the guest over: %s", why);
		if (__atomic_load_n(&vm->guest_event_posted, __ATOMIC_SEQ_CST)) {
			/* The guest powered off or crashed meanwhile: the new
			 * image was told, and ends; so do we. */
			break;
		}
		if (read(sock, &c, 1) != 1 || c != CPR_MSG_HELLO) {
			pr_err("cpr-exec: the process is gone; the guest stops");
			break;
		}
	}
	vcpu_runners_end(vm);
}

static int keeper_live_main(void *p)
{
	struct keeper_live_arg a = *(struct keeper_live_arg *)p;
	struct pollfd pf[2] = { { .fd = a.sock, .events = POLLIN },
				{ .fd = a.pidfd, .events = POLLIN } };
	char c = 0;
	long n = 0;

	for (;;) {
		if (syscall(SYS_ppoll, pf, 2, NULL, NULL, 0) <= 0)
			continue;
		if (pf[0].revents) {
			n = syscall(SYS_read, a.sock, &c, 1);
			if (n >= 0)
				break;
		} else if (pf[1].revents) {
			n = 0; /* the process is gone (it died after the exec) */
			break;
		}
	}
	if (n == 1 && c == CPR_MSG_ABORT)
		syscall(SYS_exit, 0);
	/* The main thread is gone from this address space: all ours now. The
	 * new image has its own copy of its end: this one goes, or its death
	 * would never show as EOF. */
	close(a.other);
	close(a.pidfd);
	if (n == 1 && c == CPR_MSG_HELLO)
		keeper_serve(a.vm, a.sock);
	else
		vcpu_runners_end(a.vm);
	sched_idle_self(); /* the old world may go down with this task */
	syscall(SYS_exit, 0);
	return 0;
}

static int cpr_exec_live(struct vm *vm, const char *path, char **argv, int exefd, char *err,
			 size_t errlen)
{
	struct keeper_live_arg ka;
	void *kstack = MAP_FAILED;
	char envval[48];
	int sv[2] = { -1, -1 }, ret, pidfd;
	pid_t keeper = -1;

	/* The keeper first: from the moment runners exist, someone must end
	 * them if this process dies. */
	pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	if (pidfd < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		ret = set_err(err, errlen, -errno, "cpr-exec: keeper set-up: %s", strerror(errno));
		goto out;
	}
	kstack = mmap(NULL, KEEPER_LIVE_STACK, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	ka = (struct keeper_live_arg){ .vm = vm, .sock = sv[0], .other = sv[1], .pidfd = pidfd };
	/* It shares the fd table with the runners (and this image, until the
	 * exec gives it a copy): the old world's fds stay open there. */
	keeper = kstack == MAP_FAILED ? -1 :
		clone(keeper_live_main, (char *)kstack + KEEPER_LIVE_STACK,
		      CLONE_VM | CLONE_FILES | SIGCHLD, &ka);
	if (keeper < 0) {
		ret = set_err(err, errlen, -errno, "cpr-exec: keeper: %s", strerror(errno));
		goto out;
	}
	vm->keeper_pid = keeper;
	ret = vcpu_runners_start(vm);
	if (ret < 0) {
		set_err(err, errlen, ret, "cpr-exec: cannot start the vCPU runners");
		goto out_keeper;
	}
	snprintf(envval, sizeof(envval), "%d,%d", sv[1], exefd);
	setenv(CPR_ENV_LIVE, envval, 1);
	unsetenv(CPR_ENV_STATE);
	unsetenv(CPR_ENV_ROLLBACK);
	fcntl(sv[1], F_SETFD, 0);
	fcntl(exefd, F_SETFD, 0);
	pr_info("cpr-exec: %s", path);
	/* The new image starts batch (see "Batch"); it ends that itself. */
	cpr_batch_begin();
	if (cpr_batch)
		setenv(CPR_ENV_BATCH, "1", 1);
	execv(path, argv);

	/* Still here: the exec failed, and this image carries on. */
	ret = -errno;
	unsetenv(CPR_ENV_BATCH);
	cpr_batch_end(NULL);
	set_err(err, errlen, ret, "cpr-exec: cannot execute '%s': %s", path, strerror(-ret));
	fcntl(exefd, F_SETFD, FD_CLOEXEC);
	unsetenv(CPR_ENV_LIVE);
	vcpu_runners_stop(vm);
out_keeper:
	if (cpr_proto_send(sv[1], CPR_MSG_ABORT) < 0)
		pr_warn("cpr-exec: cannot release the keeper");
	waitpid(keeper, NULL, 0);
out:
	if (sv[0] >= 0) {
		close(sv[0]);
		close(sv[1]);
	}
	if (pidfd >= 0)
		close(pidfd);
	if (kstack != MAP_FAILED)
		munmap(kstack, KEEPER_LIVE_STACK);
	return ret;
}

/* New image, live cpr-exec: say hello to the keeper, then take over as in
 * cpr-transfer; if that fails, go back to the previous binary. */
static int cpr_incoming_live(struct vm_config *cfg, struct loop *loop, struct vm **vm_out,
			     struct qmp_server **qmp_out, char *err, size_t errlen)
{
	const char *env = getenv(CPR_ENV_LIVE);
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	int sock = -1, exefd = -1, ret;
	char why[480] = "", envval[48];

	if (!cs || sscanf(env, "%d,%d", &sock, &exefd) != 2 || sock < 0 ||
	    fcntl(sock, F_SETFD, FD_CLOEXEC) < 0) {
		free(cs);
		return set_err(err, errlen, -EINVAL, "live update: bad %s '%s'", CPR_ENV_LIVE,
			       env);
	}
	if (exefd >= 0)
		fcntl(exefd, F_SETFD, FD_CLOEXEC);
	unsetenv(CPR_ENV_LIVE);
	if (getenv(CPR_ENV_BATCH)) { /* started batch: xfer_in ends it */
		unsetenv(CPR_ENV_BATCH);
		cpr_batch = sched_getscheduler(0) == SCHED_BATCH;
	}
	signal(SIGCHLD, SIG_IGN); /* the keeper and the runners reap themselves */
	if (cpr_proto_send(sock, CPR_MSG_HELLO) < 0) {
		ret = set_err(err, errlen, -EPIPE, "live update: the old image is gone");
		goto out;
	}
	ret = xfer_in(cfg, loop, sock, cs, vm_out, qmp_out, why, sizeof(why));
	if (ret == 0) {
		unsetenv(CPR_ENV_ROLLBACK);
		if (exefd >= 0)
			close(exefd);
		goto out;
	}
	snprintf(err, errlen, "live update: %s", why);
	/* Back to the previous binary, which says hello on the same socket
	 * (unless the guest is over: then this process ends, see main). */
	if (ret != -ESHUTDOWN && exefd >= 0 && cs->prev_argv_len && !getenv(CPR_ENV_ROLLBACK)) {
		snprintf(envval, sizeof(envval), "%d,%d", sock, exefd);
		setenv(CPR_ENV_LIVE, envval, 1);
		fcntl(sock, F_SETFD, 0);
		cpr_exec_prev(cs, exefd, why);
	}
out:
	close(sock);
	free(cs);
	return ret;
}
