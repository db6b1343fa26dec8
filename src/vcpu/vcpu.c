/* vcpu.c — one thread per vCPU running KVM_RUN, and the exit dispatch.
 *
 * Pausing (see vm_pause): the main thread sets vm->pause_req, sets
 * run->immediate_exit and signals the thread with SIGUSR1. immediate_exit
 * closes the race where the signal lands just before KVM_RUN: the next
 * KVM_RUN returns -EINTR at once, after KVM completes any pending I/O exit
 * (so a parked vCPU never has half an instruction outstanding). The thread
 * then parks on vm->cond until the request is withdrawn. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lib/log.h"
#include "vm/vm_priv.h"

#define VCPU_KICK_SIGNAL SIGUSR1

static void vcpu_kick_handler(int sig)
{
	(void)sig;
}

int vcpu_init(struct vcpu *v, struct vm *vm, int id)
{
	int mmap_size;

	v->vm = vm;
	v->id = id;
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, id);
	if (v->fd < 0)
		return -errno;
	mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
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
		vm_pio(v->vm, run->io.port, run->io.direction == KVM_EXIT_IO_OUT,
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
		vm_guest_crashed(v->vm, v->id, "triple fault (KVM_EXIT_SHUTDOWN)");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
			vm_guest_shutdown(v->vm);
		} else {
			snprintf(why, sizeof(why), "system event %u (reset is not supported)",
				 run->system_event.type);
			vm_guest_crashed(v->vm, v->id, why);
		}
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(why, sizeof(why), "VM entry failed (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		vm_guest_crashed(v->vm, v->id, why);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(why, sizeof(why), "KVM internal error (suberror %u)",
			 run->internal.suberror);
		vm_guest_crashed(v->vm, v->id, why);
		return false;
	default:
		snprintf(why, sizeof(why), "unhandled KVM exit reason %u", run->exit_reason);
		vm_guest_crashed(v->vm, v->id, why);
		return false;
	}
}

/* Parks while a pause is requested. Returns false if the thread must end. */
static bool vcpu_park(struct vcpu *v, bool for_good)
{
	struct vm *vm = v->vm;
	bool stop;

	pthread_mutex_lock(&vm->lock);
	v->run->immediate_exit = 0;
	v->parked = true;
	vm->nr_parked++;
	pthread_cond_broadcast(&vm->cond);
	while ((vm->pause_req || for_good) && !vm->stop_req)
		pthread_cond_wait(&vm->cond, &vm->lock);
	stop = vm->stop_req;
	vm->nr_parked--;
	v->parked = false;
	pthread_mutex_unlock(&vm->lock);
	return !stop;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vm *vm = v->vm;
	sigset_t set;
	char name[16];

	snprintf(name, sizeof(name), "vcpu%d", v->id);
	pthread_setname_np(pthread_self(), name);
	sigemptyset(&set);
	sigaddset(&set, VCPU_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	for (;;) {
		if (__atomic_load_n(&vm->stop_req, __ATOMIC_SEQ_CST))
			break;
		if (__atomic_load_n(&vm->pause_req, __ATOMIC_SEQ_CST)) {
			/* Complete the exit we just handled before parking:
			 * KVM finishes a pending I/O (writes the IN data,
			 * advances string I/O) on the next KVM_RUN, and with
			 * immediate_exit it returns -EINTR before running any
			 * guest instruction (api.rst, KVM_EXIT_IO). But
			 * completing one step of a string instruction (rep
			 * outsb, a rep insb that crosses a page) can need the
			 * next step from us: KVM_RUN then returns another I/O
			 * exit, which must be handled too, or its byte is lost.
			 * Only after -EINTR is the vCPU's state complete. */
			bool alive = true;
			for (;;) {
				__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
				if (ioctl(v->fd, KVM_RUN, 0) < 0)
					break;
				if (!vcpu_handle_exit(v)) {
					alive = false;
					break;
				}
			}
			if (!alive) {
				vcpu_park(v, true);
				break;
			}
			if (!vcpu_park(v, false))
				break;
			continue;
		}
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				/* A kick: re-arm KVM_RUN, then look at the flags
				 * again. The kicker stores the flag before
				 * immediate_exit, so clearing it here first
				 * cannot lose a request. */
				__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				continue;
			}
			char why[96];
			snprintf(why, sizeof(why), "KVM_RUN failed: %s", strerror(errno));
			vm_guest_crashed(vm, v->id, why);
			vcpu_park(v, true);
			break;
		}
		if (!vcpu_handle_exit(v)) {
			/* The guest is over (shutdown or crash): stay out of it
			 * until the VM is torn down. */
			vcpu_park(v, true);
			break;
		}
	}
	pthread_mutex_lock(&vm->lock);
	v->exited = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
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
	if (!v->thread_started)
		return;
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
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
	if (v->fd >= 0)
		close(v->fd);
	v->fd = -1;
}
