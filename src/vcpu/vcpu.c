/* vcpu.c — one thread per vCPU running KVM_RUN, and the exit dispatch.
 *
 * Pausing (see vm_pause): the main thread sets vs->pause_req, sets
 * run->immediate_exit and signals the thread with SIGUSR1. immediate_exit
 * closes the race where the signal lands just before KVM_RUN: the next
 * KVM_RUN returns -EINTR at once, after KVM completes any pending I/O exit
 * (so a parked vCPU never has half an instruction outstanding). The thread
 * then parks on vs->cond until the request is withdrawn. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/trace.h"
#include "vcpu/vcpu_priv.h"
#include "vcpu/vcpu.h"

static void vcpu_kick_handler(int sig)
{
	(void)sig;
}

/* The kick stays blocked on the task that runs the vCPU, except inside
 * KVM_RUN (KVM_SET_SIGNAL_MASK): a kick then ends KVM_RUN with -EINTR and
 * stays pending, and is taken off with sigtimedwait, never delivered to a
 * handler: a handler's frame, its FPU save and sigreturn would add tens of
 * microseconds to a live update's stop. */
static int vcpu_set_run_sigmask(struct vcpu *v)
{
	struct {
		struct kvm_signal_mask m;
		uint8_t set[8]; /* the kernel's sigset_t */
	} k = { .m.len = 8 };
	sigset_t cur;

	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	sigdelset(&cur, VCPU_KICK_SIGNAL);
	memcpy(k.set, &cur, sizeof(k.set));
	if (ioctl(v->fd, KVM_SET_SIGNAL_MASK, &k) < 0)
		return -errno;
	v->run_sigmask = true;
	return 0;
}

/* Takes a pending kick off (one that ended KVM_RUN, or came meanwhile). */
static void vcpu_eat_kick(void)
{
	static const struct timespec zero;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, VCPU_KICK_SIGNAL);
	while (sigtimedwait(&set, NULL, &zero) > 0)
		;
}

int vcpu_init(struct vcpu *v, struct vcpus *vs, int id)
{
	int mmap_size;

	v->vs = vs;
	v->id = id;
	v->lu.run_cpu = -1;
	v->lu.place_cpu = -1;
	v->lu.keeper_fd = -1;
	v->fd = ioctl(vs->vm_fd, KVM_CREATE_VCPU, id);
	if (v->fd < 0)
		return -errno;
	mmap_size = ioctl(vs->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		return -EINVAL;
	v->run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return -errno;
	}
	v->run_size = mmap_size;
	return 0;
}

void vcpu_describe(struct vcpu *v, char *buf, size_t len)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_SREGS, &s) < 0) {
		snprintf(buf, len, "vCPU %d: registers unavailable: %s", v->id, strerror(errno));
		return;
	}
	snprintf(buf, len,
		 "vCPU %d: rip=0x%llx rsp=0x%llx rflags=0x%llx rax=0x%llx rbx=0x%llx "
		 "rcx=0x%llx rdx=0x%llx cs=0x%x(cpl%d) cr0=0x%llx cr2=0x%llx cr3=0x%llx "
		 "cr4=0x%llx efer=0x%llx idt=0x%llx/0x%x",
		 v->id, r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, s.cs.selector,
		 s.cs.selector & 3, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit);
}

/* Returns false when the vCPU must stop running the guest. */
static bool vcpu_handle_exit(struct vcpu *v)
{
	struct kvm_run *run = v->run;
	char why[160];

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		v->vs->ops->pio(v->vs, run->io.port, run->io.direction == KVM_EXIT_IO_OUT,
		       (uint8_t *)run + run->io.data_offset, run->io.size, run->io.count);
		return true;
	case KVM_EXIT_MMIO:
		/* No MMIO devices yet: unbacked addresses read as all ones. */
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
		return true;
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_HLT:
		/* Only reached without an in-kernel LAPIC; treat as idle. */
		return true;
	case KVM_EXIT_SHUTDOWN:
		v->vs->ops->crashed(v->vs, v->id, "triple fault (KVM_EXIT_SHUTDOWN)");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
			v->vs->ops->shutdown(v->vs);
		} else {
			snprintf(why, sizeof(why), "system event %u (reset is not supported)",
				 run->system_event.type);
			v->vs->ops->crashed(v->vs, v->id, why);
		}
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(why, sizeof(why), "VM entry failed (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		v->vs->ops->crashed(v->vs, v->id, why);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(why, sizeof(why), "KVM internal error (suberror %u)",
			 run->internal.suberror);
		v->vs->ops->crashed(v->vs, v->id, why);
		return false;
	default:
		snprintf(why, sizeof(why), "unhandled KVM exit reason %u", run->exit_reason);
		v->vs->ops->crashed(v->vs, v->id, why);
		return false;
	}
}

/* Waits on the CPU while cond holds, yielding now and then to whoever we
 * wait for, until end_us (mono_us); false on time-out. */
#define SPIN_WHILE(cond, end_us)                                   \
	({                                                         \
		bool ok_ = true;                                   \
		for (unsigned n_ = 1; (cond); n_++) {              \
			if (!(n_ % 64)) {                          \
				if (mono_us() >= (end_us)) {       \
					ok_ = false;               \
					break;                     \
				}                                  \
				sched_yield();                     \
			}                                          \
			__builtin_ia32_pause();                    \
		}                                                  \
		ok_;                                               \
	})

bool spin_until(const bool *flag, bool want, unsigned max_us)
{
	uint64_t end = mono_us() + max_us;

	return SPIN_WHILE(__atomic_load_n(flag, __ATOMIC_ACQUIRE) != want, end);
}

/* A parked vCPU whose resume is imminent: waits on the CPU until the pause
 * is lifted, the loop must end or there is a job, until end (mono_us). */
static void vcpu_spin_parked(struct vcpu *v, bool runner, uint64_t end)
{
	struct vcpus *vs = v->vs;

	for (unsigned n = 1; __atomic_load_n(&vs->pause_req, __ATOMIC_ACQUIRE) &&
			     !__atomic_load_n(&vs->stop_req, __ATOMIC_ACQUIRE) &&
			     !__atomic_load_n(&v->job_fn, __ATOMIC_ACQUIRE) &&
			     !(runner && __atomic_load_n(&v->lu.runner_exit, __ATOMIC_ACQUIRE));
	     n++) {
		if (!(n % 64)) {
			int waker = __atomic_load_n(&vs->waker_cpu, __ATOMIC_ACQUIRE);

			if (mono_us() >= end)
				return;
			if (waker < 0 || waker == sched_getcpu() ||
			    __atomic_load_n(&vs->spin_polite, __ATOMIC_ACQUIRE))
				sched_yield();
		}
		__builtin_ia32_pause();
	}
}

/* Runs the posted job, if any (on this vCPU's thread or runner, parked). */
static void vcpu_do_job(struct vcpu *v)
{
	int (*fn)(struct vcpu *, void *) = __atomic_load_n(&v->job_fn, __ATOMIC_ACQUIRE);

	if (!fn || __atomic_exchange_n(&v->job_claimed, true, __ATOMIC_ACQ_REL))
		return;
	trace_mark("job");
	v->job_ret = fn(v, v->job_arg);
	trace_mark("job-done");
	if (__atomic_exchange_n(&v->lu.unbatch_after_job, false, __ATOMIC_ACQ_REL)) {
		/* Placed late, SCHED_BATCH so as not to preempt the old side's
		 * runner (cpr/place.c): its policy back while it waits,
		 * not later from another thread (an IPI, and a detour through
		 * the scheduler on its way into the guest). */
		struct sched_param sp = { 0 };

		sched_setscheduler(0, SCHED_OTHER, &sp);
	}
	pthread_mutex_lock(&v->vs->lock);
	__atomic_store_n(&v->job_fn, NULL, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&v->vs->cond);
	pthread_mutex_unlock(&v->vs->lock);
}

static void job_set(struct vcpu *v, int (*fn)(struct vcpu *v, void *arg), void *arg)
{
	v->job_arg = arg;
	v->job_ret = 0;
	v->job_claimed = false;
	__atomic_store_n(&v->job_fn, fn, __ATOMIC_RELEASE);
}

void vcpu_jobs_post(struct vcpus *vs, int (*fn)(struct vcpu *v, void *arg), void *const *args)
{
	pthread_mutex_lock(&vs->lock);
	for (int i = 0; i < vs->nr_vcpus; i++)
		job_set(&vs->vcpus[i], fn, args[i]);
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
}

void vcpu_job_post(struct vcpu *v, int (*fn)(struct vcpu *v, void *arg), void *arg)
{
	pthread_mutex_lock(&v->vs->lock);
	job_set(v, fn, arg);
	pthread_cond_broadcast(&v->vs->cond);
	pthread_mutex_unlock(&v->vs->lock);
}

void vcpu_post_at_exit(struct vcpu *v, int (*fn)(struct vcpu *v, void *arg), void *arg)
{
	pthread_mutex_lock(&v->vs->lock);
	v->exit_arg = arg;
	__atomic_store_n(&v->exit_fn, fn, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&v->vs->lock);
}

void vcpu_cancel_at_exit(struct vcpu *v)
{
	pthread_mutex_lock(&v->vs->lock);
	__atomic_store_n(&v->exit_fn, NULL, __ATOMIC_RELEASE);
	while (v->exit_busy)
		pthread_cond_wait(&v->vs->cond, &v->vs->lock);
	pthread_mutex_unlock(&v->vs->lock);
}

/* After an exit, on the vCPU's thread: the work vcpu_post_at_exit left,
 * unless a pause is asked for (the guest is stopping: not now). */
static void vcpu_do_at_exit(struct vcpu *v)
{
	struct vcpus *vs = v->vs;
	int (*fn)(struct vcpu *, void *);

	pthread_mutex_lock(&vs->lock);
	fn = v->exit_fn;
	if (!fn || vs->pause_req || vs->stop_req) {
		pthread_mutex_unlock(&vs->lock);
		return;
	}
	__atomic_store_n(&v->exit_fn, NULL, __ATOMIC_RELEASE);
	v->exit_busy = true;
	pthread_mutex_unlock(&vs->lock);
	fn(v, v->exit_arg);
	pthread_mutex_lock(&vs->lock);
	v->exit_busy = false;
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
}

static int jobs_wait(struct vcpus *vs, unsigned spin_us)
{
	int ret = 0;

	for (int i = 0; i < vs->nr_vcpus; i++) {
		struct vcpu *v = &vs->vcpus[i];

		/* Each job is a handful of ioctls: wait on the CPU first. */
		if (spin_us) {
			uint64_t end = mono_us() + spin_us;

			__atomic_store_n(&vs->waker_cpu, sched_getcpu(), __ATOMIC_RELEASE);
			SPIN_WHILE(__atomic_load_n(&v->job_fn, __ATOMIC_ACQUIRE) &&
					   v->thread_started &&
					   !__atomic_load_n(&v->exited, __ATOMIC_ACQUIRE),
				   end);
		}
		pthread_mutex_lock(&vs->lock);
		while (__atomic_load_n(&v->job_fn, __ATOMIC_ACQUIRE) && v->thread_started &&
		       !v->exited)
			pthread_cond_wait(&vs->cond, &vs->lock);
		pthread_mutex_unlock(&vs->lock);
		vcpu_do_job(v); /* no thread to run it (any more): here */
		if (v->job_ret < 0 && !ret)
			ret = v->job_ret;
	}
	return ret;
}

int vcpu_jobs_wait(struct vcpus *vs)
{
	return jobs_wait(vs, 5000);
}

int vcpu_jobs_wait_asleep(struct vcpus *vs)
{
	return jobs_wait(vs, 0);
}

bool vcpu_wait_all_out(struct vcpus *vs, unsigned max_us)
{
	uint64_t end = mono_us() + max_us;
	int want = 0;

	for (int i = 0; i < vs->nr_vcpus; i++)
		if (vs->vcpus[i].thread_started && !__atomic_load_n(&vs->vcpus[i].exited,
								    __ATOMIC_ACQUIRE))
			want++;
	/* One vCPU: itself, at once. */
	return SPIN_WHILE(__atomic_load_n(&vs->nr_out, __ATOMIC_ACQUIRE) < want, end);
}

/* A runner: whether the keeper is gone (its pidfd readable). */
static bool keeper_gone(struct vcpu *v)
{
	struct pollfd p = { .fd = v->lu.keeper_fd, .events = POLLIN };

	return v->lu.keeper_fd >= 0 && poll(&p, 1, 0) > 0;
}

/* Parks while a pause is requested. Returns false if the loop must end. */
static bool vcpu_park(struct vcpu *v, bool for_good, bool runner)
{
	struct vcpus *vs = v->vs;
	uint64_t spin_end = 0;
	bool stop;

	trace_mark(runner ? "runner-parks" : "vcpu-parks");
	__atomic_store_n(&v->out, true, __ATOMIC_SEQ_CST);
	/* A stop at an exit (vm_pause_quiet): the first vCPU out stops the
	 * others, at once. */
	if (__atomic_add_fetch(&vs->nr_out, 1, __ATOMIC_SEQ_CST) == 1 &&
	    __atomic_exchange_n(&vs->kick_rest, false, __ATOMIC_SEQ_CST))
		vs->ops->kick_rest(vs);
	/* A job posted with the pause (state capture) runs before this vCPU
	 * counts as parked: whoever paused finds it done. */
	vcpu_do_job(v);
	pthread_mutex_lock(&vs->lock);
	v->run->immediate_exit = 0;
	v->parked = true;
	vs->nr_parked++;
	pthread_cond_broadcast(&vs->cond);
	while ((vs->pause_req || for_good) && !vs->stop_req && !(runner && v->lu.runner_exit)) {
		if (v->job_fn) {
			pthread_mutex_unlock(&vs->lock);
			vcpu_do_job(v);
			pthread_mutex_lock(&vs->lock);
			continue;
		}
		if (!for_good && vs->resume_soon) {
			if (!spin_end)
				spin_end = mono_us() + 20000;
			if (mono_us() < spin_end) {
				pthread_mutex_unlock(&vs->lock);
				vcpu_spin_parked(v, runner, spin_end);
				pthread_mutex_lock(&vs->lock);
				continue;
			}
		}
		if (runner && v->lu.keeper_fd >= 0) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 100000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&vs->cond, &vs->lock, &ts);
			if (keeper_gone(v))
				v->lu.runner_exit = true;
			continue;
		}
		pthread_cond_wait(&vs->cond, &vs->lock);
	}
	stop = vs->stop_req || (runner && v->lu.runner_exit);
	if (v->run_sigmask)
		vcpu_eat_kick(); /* kicks that came while parked: none is owed */
	vs->nr_parked--;
	__atomic_sub_fetch(&vs->nr_out, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&v->out, false, __ATOMIC_SEQ_CST);
	v->parked = false;
	v->regs_fresh = false;
	pthread_mutex_unlock(&vs->lock);
	trace_mark("vcpu-unparked");
	return !stop;
}

void vcpu_loop(struct vcpu *v, bool runner)
{
	struct vcpus *vs = v->vs;
	/* Whether KVM may still owe the last exit's completion: not after a
	 * KVM_RUN that returned -EINTR (a kick), which completed it first. */
	bool owed = true;

	for (;;) {
		if (__atomic_load_n(&vs->stop_req, __ATOMIC_SEQ_CST))
			break;
		if (runner && __atomic_load_n(&v->lu.runner_exit, __ATOMIC_SEQ_CST))
			return;
		if (!runner && __atomic_load_n(&v->lu.runner_req, __ATOMIC_SEQ_CST)) {
			__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
			vcpu_hand_to_runner(v);
			owed = true;
			continue;
		}
		if (__atomic_load_n(&vs->pause_req, __ATOMIC_SEQ_CST)) {
			/* Complete the exit we just handled before parking:
			 * KVM finishes a pending I/O (writes the IN data,
			 * advances string I/O) on the next KVM_RUN, and with
			 * immediate_exit it returns -EINTR before running any
			 * guest instruction (api.rst, KVM_EXIT_IO). But
			 * completing one step of a string instruction (rep
			 * outsb, a rep insb that crosses a page) can need the
			 * next step from us: KVM_RUN then returns another I/O
			 * exit, which must be handled too, or its byte is lost.
			 * Only after -EINTR is the vCPU's state complete. After a
			 * kick it already is: that saves a vCPU ioctl in a live
			 * update's blackout. */
			bool alive = true;
			for (; owed;) {
				__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
				/* The registers come back with it: the state
				 * capture that usually follows the park needs no
				 * KVM_RUN of its own (vcpu_state.c). */
				if (vs->have_sync_regs)
					v->run->kvm_valid_regs = VCPU_SYNC_ALL;
				if (ioctl(v->fd, KVM_RUN, 0) < 0) {
					v->regs_fresh = vs->have_sync_regs && errno == EINTR;
					break;
				}
				if (!vcpu_handle_exit(v)) {
					alive = false;
					break;
				}
			}
			v->run->kvm_valid_regs = 0;
			owed = false;
			if (!alive) {
				vcpu_park(v, true, runner);
				break;
			}
			if (!vcpu_park(v, false, runner)) {
				if (runner && !vs->stop_req)
					return;
				break;
			}
			continue;
		}
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				/* A kick: re-arm KVM_RUN, then look at the flags
				 * again. The kicker stores the flag before
				 * immediate_exit, so clearing it here first
				 * cannot lose a request. */
				__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				if (v->run_sigmask)
					vcpu_eat_kick();
				owed = false;
				if (runner && keeper_gone(v)) {
					pr_err("vCPU %d: the cpr keeper is gone; the guest stops", v->id);
					__atomic_store_n(&v->lu.runner_exit, true, __ATOMIC_SEQ_CST);
				}
				continue;
			}
			char why[96];
			snprintf(why, sizeof(why), "KVM_RUN failed: %s", strerror(errno));
			vs->ops->crashed(vs, v->id, why);
			vcpu_park(v, true, runner);
			break;
		}
		owed = true;
		if (!vcpu_handle_exit(v)) {
			/* The guest is over (shutdown or crash): stay out of it
			 * until the VM is torn down. */
			vcpu_park(v, true, runner);
			break;
		}
		if (__builtin_expect(__atomic_load_n(&v->exit_fn, __ATOMIC_ACQUIRE) != NULL, 0))
			vcpu_do_at_exit(v);
	}
	if (runner && vs->handed_over)
		sched_idle_self();
	pthread_mutex_lock(&vs->lock);
	v->exited = true;
	pthread_cond_broadcast(&vs->cond);
	pthread_mutex_unlock(&vs->lock);
}

void __attribute__((noinline)) stack_touch(void)
{
	volatile char pad[64 << 10];

	for (size_t i = 0; i < sizeof(pad); i += 4096)
		pad[i] = 0;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	sigset_t set;
	char name[16];

	snprintf(name, sizeof(name), "vcpu%d", v->id);
	pthread_setname_np(pthread_self(), name);
	stack_touch(); /* a live update reads state and builds the stream here */
	__atomic_store_n(&v->tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
	if (vcpu_set_run_sigmask(v) < 0) {
		/* The old way: a handler. */
		sigemptyset(&set);
		sigaddset(&set, VCPU_KICK_SIGNAL);
		pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	}
	vcpu_loop(v, false);
	return NULL;
}

int vcpu_start(struct vcpu *v)
{
	static bool handler_installed;
	struct sigaction sa = { .sa_handler = vcpu_kick_handler };
	sigset_t all, old;
	int ret;

	if (!handler_installed) {
		/* No SA_RESTART: the kick must interrupt KVM_RUN. */
		sigemptyset(&sa.sa_mask);
		if (sigaction(VCPU_KICK_SIGNAL, &sa, NULL) < 0)
			return -errno;
		handler_installed = true;
	}
	/* The thread starts with every signal blocked and unblocks only the
	 * kick: SIGINT/SIGTERM belong to the main thread's signalfd. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	ret = -pthread_create(&v->thread, NULL, vcpu_thread, v);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret == 0)
		v->thread_started = true;
	return ret;
}

void vcpu_kick(struct vcpu *v)
{
	int tid;

	if (!v->thread_started)
		return;
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	/* A runner, if one has the vCPU. If it exits meanwhile, its thread
	 * sees the flag and immediate_exit before its next KVM_RUN anyway. */
	tid = __atomic_load_n(&v->lu.runner_tid, __ATOMIC_SEQ_CST);
	if (tid > 0 && syscall(SYS_tgkill, tid, tid, VCPU_KICK_SIGNAL) == 0)
		return;
	pthread_kill(v->thread, VCPU_KICK_SIGNAL);
}

void vcpu_destroy(struct vcpu *v)
{
	if (v->thread_started) {
		pthread_join(v->thread, NULL);
		v->thread_started = false;
	}
	if (v->run)
		munmap(v->run, v->run_size);
	v->run = NULL;
	free(v->lu.early);
	v->lu.early = NULL;
	free(v->lu.early_msgs);
	v->lu.early_msgs = NULL;
	free(v->lu.ahead);
	v->lu.ahead = NULL;
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
}
