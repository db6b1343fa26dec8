/* vcpu_runner.c — runners for a live cpr-exec, and what the live update
 * asks of the vCPU tasks: where each ran, whether it sleeps, stepping aside
 * once the guest runs elsewhere.
 *
 * execve() kills every thread of the process but the caller; tasks of other
 * processes that share the address space survive it, and KVM lets any task
 * in the VM's mm run its vCPUs. So before the exec each vCPU thread starts a
 * runner, clone(CLONE_VM) without CLONE_THREAD, that continues the run loop
 * (device emulation included) from the old image's code and memory, and
 * blocks until the runner is gone. The runner inherits the thread's TLS
 * (glibc's thread pointer, errno, malloc's cache): it is the thread as far
 * as any library can tell, so the thread itself touches nothing but raw
 * system calls until the runner has exited. It shares the fd table too. The
 * exec then kills only the blocked threads and the guest keeps running,
 * while the new image starts and builds its VM; the cpr keeper (cpr/exec_live.c) stops
 * the runners and hands the state over at the end, and ends them if the
 * process dies. If the exec fails, the runners give the vCPUs back.
 *
 * A runner ends itself if the keeper dies (a bug): it checks on a 100 ms
 * timer, while it runs the guest or waits, rather than run a guest for no
 * one, its RAM held, forever.
 *
 * Runners exist only for an update: a process whose vCPUs run in other
 * processes would outlive a SIGKILL by as long as its address space takes
 * to tear down (its sockets with it). The price is a short stop of each
 * vCPU at the hand-over: an exit, a clone, and the runner's first turn on a
 * CPU (KVM_RUN from a new task is cheap; waiting for a CPU on a busy host
 * with few CPUs can take milliseconds). */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/trace.h"
#include "vcpu/vcpu_priv.h"
#include "vcpu/vcpu.h"

#define RUNNER_STACK (1024 * 1024)

static int vcpu_runner_main(void *arg)
{
	struct vcpu *v = arg;
	struct vcpus *vs = v->vs;
	timer_t keeper_timer;
	bool have_timer = false;
	sigset_t set;
	char name[16];

	snprintf(name, sizeof(name), "vcpu%d-live", v->id);
	prctl(PR_SET_NAME, name);
	stack_touch();
	/* Its mask came from the thread: the kick unblocked only inside
	 * KVM_RUN (vcpu_set_run_sigmask), or, if that failed there, always. */
	if (!v->run_sigmask) {
		sigemptyset(&set);
		sigaddset(&set, VCPU_KICK_SIGNAL);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
	}
	/* The keeper's pulse: a pidfd, looked at on a 100 ms timer (its
	 * signal is the kick's: KVM_RUN returns, the loop looks). */
	v->lu.keeper_fd = vs->keeper_pid > 0 ? (int)syscall(SYS_pidfd_open, vs->keeper_pid, 0) : -1;
	if (v->lu.keeper_fd >= 0) {
		struct sigevent ev = { .sigev_notify = SIGEV_THREAD_ID,
				       .sigev_signo = VCPU_KICK_SIGNAL };
		struct itimerspec its = { .it_value.tv_nsec = 100000000,
					  .it_interval.tv_nsec = 100000000 };

		ev._sigev_un._tid = (int)syscall(SYS_gettid);
		if (timer_create(CLOCK_MONOTONIC, &ev, &keeper_timer) == 0) {
			have_timer = true;
			timer_settime(keeper_timer, 0, &its, NULL);
		}
	}
	pthread_mutex_lock(&vs->lock);
	v->lu.runner_live = true;
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
	vcpu_loop(v, true);
	if (have_timer)
		timer_delete(keeper_timer);
	if (v->lu.keeper_fd >= 0)
		close(v->lu.keeper_fd);
	v->lu.keeper_fd = -1;
	pthread_mutex_lock(&vs->lock);
	v->lu.runner_live = false;
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
	return 0;
}

void vcpu_hand_to_runner(struct vcpu *v)
{
	struct vcpus *vs = v->vs;
	sigset_t set, old;
	void *stack;
	int tid = -1;

	/* Kicks that reach this thread meanwhile wait until it has its vCPU
	 * back; the runner unblocks them for itself. */
	sigemptyset(&set);
	sigaddset(&set, VCPU_KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	stack = mmap(NULL, RUNNER_STACK, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack != MAP_FAILED) {
		mprotect(stack, 4096, PROT_NONE); /* guard page */
		__atomic_store_n(&v->lu.runner_req, false, __ATOMIC_SEQ_CST);
		tid = clone(vcpu_runner_main, (char *)stack + RUNNER_STACK,
			    CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_PARENT_SETTID |
				    CLONE_CHILD_CLEARTID | SIGCHLD,
			    v, &v->lu.runner_tid, NULL, &v->lu.runner_tid);
	}
	if (tid <= 0) {
		pthread_mutex_lock(&vs->lock);
		v->lu.runner_req = false;
		v->lu.runner_failed = true;
		pthread_cond_broadcast(&vs->cond);
		pthread_mutex_unlock(&vs->lock);
		if (stack != MAP_FAILED)
			munmap(stack, RUNNER_STACK);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return;
	}
	/* The runner owns this thread's identity now: raw system calls only.
	 * wait4 returns when it has exited (or, with SIGCHLD ignored, fails
	 * with ECHILD then); if the image exec()s first, this thread dies
	 * here. */
	while (syscall(SYS_wait4, tid, NULL, __WALL, NULL) < 0 &&
	       __atomic_load_n(&v->lu.runner_tid, __ATOMIC_SEQ_CST) == tid)
		;
	munmap(stack, RUNNER_STACK);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int vcpu_runners_start(struct vcpus *vs)
{
	bool failed = false;

	pthread_mutex_lock(&vs->lock);
	for (int i = 0; i < vs->nr_vcpus; i++) {
		struct vcpu *v = &vs->vcpus[i];
		v->lu.runner_failed = v->lu.runner_exit = false;
		__atomic_store_n(&v->lu.runner_req, true, __ATOMIC_SEQ_CST);
		vcpu_kick(v);
	}
	for (int i = 0; i < vs->nr_vcpus; i++) {
		struct vcpu *v = &vs->vcpus[i];
		while (!v->lu.runner_live && !v->lu.runner_failed && !v->exited && v->thread_started)
			pthread_cond_wait(&vs->cond, &vs->lock);
		failed |= !v->lu.runner_live;
	}
	pthread_mutex_unlock(&vs->lock);
	if (failed) {
		vcpu_runners_stop(vs);
		return -EAGAIN;
	}
	return 0;
}

void vcpu_runners_stop(struct vcpus *vs)
{
	pthread_mutex_lock(&vs->lock);
	for (int i = 0; i < vs->nr_vcpus; i++) {
		__atomic_store_n(&vs->vcpus[i].lu.runner_req, false, __ATOMIC_SEQ_CST);
		__atomic_store_n(&vs->vcpus[i].lu.runner_exit, true, __ATOMIC_SEQ_CST);
		vcpu_kick(&vs->vcpus[i]);
	}
	pthread_cond_broadcast(&vs->cond);
	for (int i = 0; i < vs->nr_vcpus; i++)
		while (vs->vcpus[i].lu.runner_live)
			pthread_cond_wait(&vs->cond, &vs->lock);
	pthread_mutex_unlock(&vs->lock);
	/* Each thread takes its vCPU back once its runner has exited. */
}

void sched_idle_self(void)
{
	struct sched_param sp = { 0 };

	sched_setscheduler(0, SCHED_IDLE, &sp);
}

/* Fields 3 (state) and 39 (processor) of /proc/TID/stat; false if unread. */
static bool task_stat(int tid, char *state, int *cpu)
{
	char path[64], buf[1024], *p;
	ssize_t n;
	int fd;

	if (tid <= 0)
		return false;
	snprintf(path, sizeof(path), "/proc/%d/stat", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	/* The name in field 2 may hold anything up to its last ')'. */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ' || !p[2])
		return false;
	*state = p[2];
	for (int field = 2; p && field < 39; field++)
		p = strchr(p + 1, ' ');
	if (!p || sscanf(p + 1, "%d", cpu) != 1)
		*cpu = -1;
	return true;
}

int task_last_cpu(int tid)
{
	char state;
	int cpu;

	return task_stat(tid, &state, &cpu) ? cpu : -1;
}

bool task_asleep(int tid)
{
	char state;
	int cpu;

	return task_stat(tid, &state, &cpu) && (state == 'S' || state == 'D');
}

int vcpu_run_tid(const struct vcpu *v)
{
	int tid = __atomic_load_n(&v->lu.runner_tid, __ATOMIC_ACQUIRE);

	return tid > 0 ? tid : __atomic_load_n(&v->tid, __ATOMIC_ACQUIRE);
}

void vcpu_all_step_aside(struct vcpus *vs)
{
	struct sched_param sp = { 0 };

	for (int i = 0; i < vs->nr_vcpus; i++) {
		bool runner = __atomic_load_n(&vs->vcpus[i].lu.runner_tid, __ATOMIC_ACQUIRE) > 0;
		int tid = vcpu_run_tid(&vs->vcpus[i]);
		int cpu = vs->vcpus[i].lu.run_cpu;
		cpu_set_t set;

		if (tid <= 0)
			continue;
		/* A runner's end tears down the old address space and holds a
		 * CPU for milliseconds (a thread's is short): SCHED_IDLE, which
		 * it goes to at its end anyway, so that any task woken meanwhile
		 * takes its CPU, not the guest's. */
		if (sched_getscheduler(tid) == SCHED_OTHER)
			sched_setscheduler(tid, runner ? SCHED_IDLE : SCHED_BATCH, &sp);
		/* Woken to end next to the new side's vCPU thread, placed on
		 * the CPU this task ran the guest on before the stop (cpr/place.c),
		 * it would take that CPU from the guest for as
		 * long as its end takes. */
		if (cpu >= 0 && cpu < CPU_SETSIZE &&
		    sched_getaffinity(tid, sizeof(set), &set) == 0 && CPU_ISSET(cpu, &set) &&
		    CPU_COUNT(&set) > 1) {
			CPU_CLR(cpu, &set);
			sched_setaffinity(tid, sizeof(set), &set);
		}
	}
}

void vcpu_runners_end(struct vcpus *vs)
{
	pthread_mutex_lock(&vs->lock);
	__atomic_store_n(&vs->stop_req, true, __ATOMIC_SEQ_CST);
	for (int i = 0; i < vs->nr_vcpus; i++)
		vcpu_kick(&vs->vcpus[i]);
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
}

