/* exec.c — cpr-exec: the same process exec()s a new cprvm binary, every fd
 * that carries state kept open. A running guest goes through exec_live.c;
 * this file is the stopped-first way, for a paused guest (or when the
 * tests ask for it), and the way back to the previous binary that both use.
 *
 * Ordering rules on the way out, stopped-first:
 *   1. stop the vCPUs (vm_pause completes any pending I/O exit, vcpu.c);
 *   2. capture all state into memory, then into a memfd: nothing after
 *      this point may change guest-visible state;
 *   3. start the keeper (it copies the fd table: the old VM fd stays open
 *      in it, so execve() neither tears the VM down nor unmaps guest RAM);
 *   4. clear FD_CLOEXEC on exactly the registry's fds, then execve().
 * Any failure before execve() returns undoes 3 and 4 and resumes.
 * On the way in, the new image takes everything over (takeover.c); if it
 * cannot, it exec()s the previous binary with the same state, which takes
 * the guest back the same way and reports the failure. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"
#include "lib/log.h"

#define KEEPER_STACK (64 * 1024)

/* The keeper shares the old mm (CLONE_VM) and owns a copy of the old fd
 * table. It waits for EOF on a pipe whose write end the new image holds,
 * then exits: the old VM and address space die there, after the guest runs
 * again, off the critical path. Raw syscalls only: it runs on a borrowed
 * stack in an address space another process is about to leave. */
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

/* The keeper's pipe, stack, argument and pid. The keeper reads its
 * argument when it starts, at any time after clone(): it lives here, in the
 * frame that lasts until the exec or keeper_stop(). */
struct exec_keeper {
	int pipefd[2];
	void *stack;
	struct keeper_arg arg;
	pid_t pid;
};

static int keeper_start(struct exec_keeper *k, char *err, size_t errlen)
{
	k->stack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	if (k->stack == MAP_FAILED)
		return set_err(err, errlen, -errno, "cpr-exec: keeper stack: %s", strerror(errno));
	k->arg = (struct keeper_arg){ .rfd = k->pipefd[0], .wfd = k->pipefd[1] };
	k->pid = clone(keeper_main, (char *)k->stack + KEEPER_STACK, CLONE_VM | SIGCHLD, &k->arg);
	if (k->pid < 0)
		return set_err(err, errlen, -errno, "cpr-exec: keeper: %s", strerror(errno));
	return 0;
}

/* The exec failed: the keeper sees EOF on its pipe and exits. */
static void keeper_stop(struct exec_keeper *k)
{
	if (k->pipefd[1] >= 0)
		close(k->pipefd[1]);
	if (k->pipefd[0] >= 0)
		close(k->pipefd[0]);
	if (k->pid > 0)
		waitpid(k->pid, NULL, 0);
	if (k->stack != MAP_FAILED)
		munmap(k->stack, KEEPER_STACK);
}

/* The registry of a stopped-first cpr-exec: the VM's fds, the keeper's
 * pipe and the way back (this binary, and its argv). */
static int exec_registry(struct vm *vm, struct cpr_state *cs, struct chardev_handover *ho,
			 int keeper_wfd, int exefd)
{
	struct cpr_fd_source src[CPR_FD_SOURCES_MAX];
	int n, ret = 0;

	cpr_put_prev_argv(cs);
	chardev_set_frozen(vm->serial_chr, true);
	chardev_export(vm->serial_chr, ho);
	n = cpr_fd_sources(vm, ho, src);
	src[n++] = (struct cpr_fd_source){ CPR_FD_KEEPER, keeper_wfd };
	src[n++] = (struct cpr_fd_source){ CPR_FD_PREV_EXE, exefd };
	for (int i = 0; i < n && ret == 0; i++)
		ret = cpr_add_fd(cs, src[i].name, src[i].fd);
	return ret;
}

/* A paused guest (see the top of the file for the order of things).
 * Returns only on failure, the guest as it was. */
static int exec_stopped_first(struct vm *vm, const char *path, char **argv, int exefd,
			      char *err, size_t errlen)
{
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct chardev_handover *ho = calloc(1, sizeof(*ho));
	struct exec_keeper k = { .pipefd = { -1, -1 }, .stack = MAP_FAILED, .pid = -1 };
	struct sbuf b = SBUF_INIT;
	char envval[32];
	int memfd = -1, ret;

	if (!cs || !ho) {
		ret = set_err(err, errlen, -ENOMEM, "out of memory");
		goto out_free;
	}
	cs->stop_ns = mono_ns();
	cs->guest_paused = vm->state == RUN_STATE_PAUSED;
	ret = vm_pause(vm);
	if (ret < 0) {
		set_err(err, errlen, ret, "cpr-exec: cannot stop the vCPUs: %s", strerror(-ret));
		goto out_free;
	}
	cs->paused_ns = mono_ns();
	if (pipe2(k.pipefd, O_CLOEXEC) < 0) {
		ret = set_err(err, errlen, -errno, "cpr-exec: pipe: %s", strerror(errno));
		goto out_resume;
	}
	ret = exec_registry(vm, cs, ho, k.pipefd[1], exefd);
	if (ret < 0) {
		snprintf(err, errlen, "cpr-exec: fd registry full");
		goto out_resume;
	}
	/* Keeper first: its pid goes into the state. */
	ret = keeper_start(&k, err, errlen);
	if (ret < 0)
		goto out_resume;
	cs->keeper_pid = k.pid;
	/* Stamped before the device state is read (the stamp itself travels in
	 * that state): "prepare" ends here, "handover" covers reading the
	 * state, the exec and the new image's start-up. */
	cs->captured_ns = mono_ns();
	ret = cpr_build_stream(vm, ho, cs, NULL, false, &b);
	if (ret < 0) {
		set_err(err, errlen, ret, "cpr-exec: cannot capture VM state: %s", strerror(-ret));
		goto out_resume;
	}
	memfd = cpr_write_memfd(&b);
	if (memfd < 0) {
		ret = set_err(err, errlen, memfd, "cpr-exec: state memfd: %s", strerror(-memfd));
		goto out_resume;
	}
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	unsetenv(CPR_ENV_ROLLBACK);
	cpr_set_cloexec(cs, false);
	pr_info("cpr-exec: %s", path);
	execv(path, argv);

	/* Still here: the exec failed, and this image carries on. */
	ret = set_err(err, errlen, -errno, "cpr-exec: cannot execute '%s': %s", path,
		      strerror(errno));
	cpr_set_cloexec(cs, true);
	unsetenv(CPR_ENV_STATE);
out_resume:
	if (memfd >= 0)
		close(memfd);
	keeper_stop(&k);
	chardev_set_frozen(vm->serial_chr, false);
	vm_resume(vm);
out_free:
	sbuf_free(&b);
	free(ho);
	free(cs);
	return ret;
}

int cpr_exec(struct vm *vm, char *err, size_t errlen)
{
	char **argv = cpr_image.exec_argv ? cpr_image.exec_argv : cpr_image.argv;
	const char *path = cpr_image.exec_argv ? argv[0] : cpr_image.exe;
	int exefd, ret;

	if (vm->mem.private_map)
		return set_err(err, errlen, -EINVAL,
			       "cpr-exec: guest RAM is a private copy of a snapshot, "
			       "not a shareable fd");
	if (!cpr_image.exec_argv && !cpr_image.exe[0])
		return set_err(err, errlen, -ENOENT, "cpr-exec: cannot tell which binary this is");
	/* An fd to this binary: the way back if the new one cannot take over. */
	exefd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (vm->state == RUN_STATE_RUNNING && !getenv("CPRVM_TEST_NO_LIVE_EXEC"))
		ret = cpr_exec_live(vm, path, argv, exefd, err, errlen); /* exec_live.c */
	else
		ret = exec_stopped_first(vm, path, argv, exefd, err, errlen);
	if (exefd >= 0)
		close(exefd);
	return ret;
}

bool cpr_incoming_pending(void)
{
	return getenv(CPR_ENV_STATE) != NULL || getenv(CPR_ENV_LIVE) != NULL;
}

/* Exec()s the previous binary (exefd) with its argv from the registry and
 * the reason in CPRVM_CPR_ROLLBACK; the caller has put the way to the guest
 * in the environment. Returns only on failure. */
void cpr_exec_prev(const struct cpr_state *cs, int exefd, const char *why)
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
	int exefd = cpr_find_fd(cs, CPR_FD_PREV_EXE);

	if (exefd < 0 || getenv(CPR_ENV_ROLLBACK) || !cs->prev_argv_len)
		return; /* no way back, or already on it */
	lseek(memfd, 0, SEEK_SET);
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	cpr_set_cloexec(cs, false);
	fcntl(memfd, F_SETFD, 0);
	cpr_exec_prev(cs, exefd, why);
}

/* The state a stopped-first cpr-exec left in the memfd CPRVM_CPR_STATE
 * names: *buf (malloc'd) and *len, or -EINVAL. */
static int exec_read_state(int memfd, uint8_t **buf, size_t *len)
{
	struct stat st;

	*buf = NULL;
	if (fstat(memfd, &st) < 0 || st.st_size <= 0 || st.st_size > (256 << 20) ||
	    !(*buf = malloc(st.st_size)) || pread(memfd, *buf, st.st_size, 0) != st.st_size) {
		free(*buf);
		*buf = NULL;
		return -EINVAL;
	}
	*len = st.st_size;
	return 0;
}

int cpr_incoming(struct vm_config *cfg, struct loop *loop, const struct cpr_qmp_hooks *qmp,
		 struct vm **vm_out, char *err, size_t errlen)
{
	const char *rollback = getenv(CPR_ENV_ROLLBACK);
	char why[480] = "";
	struct cpr_takeover t = { .cfg = cfg, .loop = loop, .qmp = qmp, .sock = -1,
				  .snap = { .fd = -1 }, .why = why, .whylen = sizeof(why),
				  .t_adopt = mono_ns() };
	uint8_t *buf = NULL;
	size_t len = 0;
	int memfd, ret;

	if (getenv(CPR_ENV_LIVE))
		return cpr_incoming_live(cfg, loop, qmp, vm_out, err, errlen);
	memfd = atoi(getenv(CPR_ENV_STATE));
	unsetenv(CPR_ENV_STATE);
	t.cs = calloc(1, sizeof(*t.cs));
	if (!t.cs || exec_read_state(memfd, &buf, &len) < 0) {
		snprintf(err, errlen, "live update: cannot read the handed-over state (fd %d)", memfd);
		free(t.cs);
		return -EINVAL;
	}
	fcntl(memfd, F_SETFD, FD_CLOEXEC);
	/* The registry first: without it there is no way back. */
	ret = cpr_load_registry(buf, len, t.cs, NULL, 0, why, sizeof(why));
	if (ret < 0) {
		snprintf(err, errlen, "live update: unusable state: %s", why);
		goto out;
	}
	ret = snapshot_load_stream(buf, len, cfg, true, &t.snap, &t.idx, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	t.have_idx = true;
	ret = cpr_takeover_build(&t);
	if (ret < 0)
		goto out_rollback;
	t.t_built = mono_ns();
	ret = cpr_takeover_finish(&t);
	if (ret < 0)
		goto out_rollback;
	cpr_takeover_done(&t, mono_ns(), rollback);
	close(memfd);
	*vm_out = t.vm;
	goto out;
out_rollback:
	snprintf(err, errlen, "live update: %s", why);
	cpr_rollback(t.cs, memfd, why);
out:
	cpr_takeover_free(&t);
	free(buf);
	free(t.cs);
	return ret;
}
