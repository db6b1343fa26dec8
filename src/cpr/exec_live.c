/* exec_live.c — cpr-exec of a running guest. The guest keeps running
 * through the exec: vCPU runners (vcpu.c) run it in the old address space,
 * which a keeper task holds, while the new image starts and builds its VM.
 * Then the new image and the keeper run the cpr-transfer protocol over a
 * socketpair that crosses the exec: the blackout is phase 2 only, whatever
 * the exec and the VM build cost.
 *   keeper:    waits for one byte on its end: ABORT = the exec failed (the
 *              old image still runs: exit at once), HELLO = the new image
 *              is there, EOF = the process is gone (stop the runners).
 *   new image: HELLO, then cpr_transfer_in(). If it refuses, it exec()s the
 *              previous binary (same socket), which says HELLO again: the
 *              keeper serves every hello until one takes the guest.
 * The keeper is clone(CLONE_VM | CLONE_FILES) from the main thread and so
 * shares its TLS: until the main thread has left this address space (the
 * HELLO proves it) the keeper makes raw system calls only. Until then it
 * also watches the process through a pidfd: if it dies after the exec, the
 * runners must not go on running the guest for no one. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/log.h"

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
		if (cpr_transfer_out(vm, sock, true, why, sizeof(why)) == 0)
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
	vcpu_runners_end(&vm->cpus);
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
		vcpu_runners_end(&a.vm->cpus);
	sched_idle_self(); /* the old world may go down with this task */
	syscall(SYS_exit, 0);
	return 0;
}

int cpr_exec_live(struct vm *vm, const char *path, char **argv, int exefd, char *err,
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
	vm->cpus.keeper_pid = keeper;
	ret = vcpu_runners_start(&vm->cpus);
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
	/* The new image starts batch (place.c); it ends that itself. */
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
	vcpu_runners_stop(&vm->cpus);
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
int cpr_incoming_live(struct vm_config *cfg, struct loop *loop, const struct cpr_qmp_hooks *qmp,
		      struct vm **vm_out, char *err, size_t errlen)
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
	if (getenv(CPR_ENV_BATCH)) { /* started batch: cpr_transfer_in ends it */
		unsetenv(CPR_ENV_BATCH);
		cpr_batch = sched_getscheduler(0) == SCHED_BATCH;
	}
	signal(SIGCHLD, SIG_IGN); /* the keeper and the runners reap themselves */
	if (cpr_proto_send(sock, CPR_MSG_HELLO) < 0) {
		ret = set_err(err, errlen, -EPIPE, "live update: the old image is gone");
		goto out;
	}
	ret = cpr_transfer_in(cfg, loop, sock, cs, qmp, vm_out, why, sizeof(why));
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
