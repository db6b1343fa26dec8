/* vcpu.h — the vCPUs of a VM: their threads, run loop and run control, and
 * what KVM says about vCPU state on this host. Knows no VM: what a vCPU's
 * exits need from the machine (port I/O, power-off, a crash, the rest of a
 * pause) it asks through struct vcpu_ops. struct vm embeds struct vcpus.
 *
 * Pausing: the pauser sets pause_req under the lock and kicks each vCPU
 * (vcpu_kick); each parks on cond until the request is withdrawn. A parked
 * vCPU runs jobs (vcpu_jobs_post) on its own thread. */
#ifndef CPRVM_VCPU_H
#define CPRVM_VCPU_H

#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vcpus;
struct vcpu_state;
struct vcpu_ahead;

/* What a vCPU's exits ask of the machine. Called on the vCPU's thread (or
 * runner). */
struct vcpu_ops {
	/* Port I/O: data holds count elements of size bytes. */
	void (*pio)(struct vcpus *vs, uint16_t port, bool write, uint8_t *data, unsigned size,
		    unsigned count);
	/* The guest asked for power-off / crashed. */
	void (*shutdown)(struct vcpus *vs);
	void (*crashed)(struct vcpus *vs, int vcpu_id, const char *why);
	/* A pause: kick every vCPU not out of the guest yet, and note the
	 * stop's moment if none was yet (the first vCPU out, kick_rest). */
	void (*kick_rest)(struct vcpus *vs);
};

/* What KVM_RUN carries in kvm_run both ways (KVM_CAP_SYNC_REGS). */
#define VCPU_SYNC_ALL (KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS)

/* What a live update keeps per vCPU, on either side. Written only by the
 * live-update code (cpr/, vcpu_runner.c, vcpu_parked.c); a vCPU of a VM
 * that never updates leaves it as vcpu_init made it. Embedded rather than
 * allocated per update: vCPU threads and runners read it without a lock,
 * and it must outlive every one of them. */
struct vcpu_update {
	/* Live cpr-exec (vcpu_runner.c): while the image execs, a process
	 * sharing this address space runs the vCPU in place of its thread. */
	int runner_tid;   /* kernel-written: set at clone, 0 once it is gone */
	bool runner_req;  /* thread: hand the vCPU over to a runner */
	bool runner_live; /* the runner runs the loop (guarded by vs->lock) */
	bool runner_failed;
	bool runner_exit; /* runner: give the vCPU back to its thread */
	int keeper_fd;    /* runner: a pidfd of the cpr keeper, -1 if none */
	/* Pinned for a live update's blackout (cpr/place.c). */
	bool placed, placed_batch;
	int place_cpu; /* cpr-exec, new side: where to place it late (-1) */
	bool unbatch_after_job; /* ... and back to SCHED_OTHER after its job */
	int run_cpu; /* old side: where it ran the guest before the stop (-1) */
	cpu_set_t cpus_before;
	/* New side: what was set ahead of the stream (vcpu_state_apply_early):
	 * a copy, and how many parts, in order (enum vcpu_early_part); broken:
	 * no more parts are taken. The registers go in on the vCPU's thread
	 * (regs_ok once they did). NULL: no early state. */
	struct vcpu_state *early;
	int early_parts;
	bool early_broken;
	bool early_regs_ok;
	/* ... and the messages those parts came in, back to back
	 * (VCPU_EARLY_ALL_MAX bytes; NULL: not kept): what the stream's
	 * "vcpu-early/N" is compared with. */
	uint8_t *early_msgs;
	size_t early_msgs_len;
	/* The MSRs and TSC offset set before the stop, from the old side's
	 * read at an exit (vcpu_state_apply_ahead; NULL: none); msrs_ahead:
	 * the stream's MSRs part found them standing, so none was set in the
	 * blackout but the late ones. */
	struct vcpu_ahead *ahead;
	bool msrs_ahead;
};

struct vcpu {
	struct vcpus *vs;
	int id;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	int tid; /* the thread's, once it runs */
	bool thread_started;
	bool parked; /* out of KVM_RUN and waiting (guarded by vs->lock) */
	bool out; /* out of KVM_RUN for the current pause (atomic; see nr_out) */
	bool exited; /* thread returned (guarded by vs->lock) */
	/* Work for the thread while it is parked (vcpu_jobs_post): KVM's vCPU
	 * ioctls cost ~11 us each here and more from another CPU, so state
	 * capture and restore run on the vCPU's own thread, all vCPUs at
	 * once. NULL once done. */
	int (*job_fn)(struct vcpu *v, void *arg);
	void *job_arg;
	int job_ret;
	bool job_claimed; /* whoever runs it (its thread, or the poster) */
	/* Work for the thread at the guest's next exit to cprvm while it runs
	 * (vcpu_post_at_exit), not at a pause; busy while it runs. Guarded by
	 * vs->lock; exit_fn also read without it. */
	int (*exit_fn)(struct vcpu *v, void *arg);
	void *exit_arg;
	bool exit_busy;
	bool run_sigmask; /* the kick is unblocked only inside KVM_RUN (vcpu.c) */
	struct vcpu_update lu;
	/* A fresh vCPU's state where a restore usually leaves it alone
	 * (vcpu_state_read_base): equal parts are not set again. */
	struct {
		bool valid;
		struct kvm_mp_state mp_state;
		struct kvm_xcrs xcrs;
		struct kvm_debugregs debugregs;
		uint64_t apic_base;
	} base;
	/* Parked after a KVM_RUN that completed an exit and stored the
	 * registers, special registers and events in kvm_run (vcpu.c): a
	 * capture of a 1-vCPU VM reads them there, without a KVM_RUN of its
	 * own (vcpu_state.c). Only the thread itself touches it (or, parked,
	 * the thread setting its registers ahead of a restore); false once
	 * anything may have changed them. */
	bool regs_fresh;
};

/* A VM's vCPUs, the KVM fds they use, and their run control. */
struct vcpus {
	const struct vcpu_ops *ops;
	int kvm_fd, vm_fd;
	struct kvm_cpuid2 *cpuid; /* what KVM supports, before per-vCPU edits */
	int nr_vcpus;
	struct vcpu *vcpus;
	/* What vCPU state looks like on this host (vcpu_state.c). */
	bool have_sregs2;
	bool have_sync_regs; /* KVM_CAP_SYNC_REGS with regs, sregs and events */
	uint32_t xsave_size;
	uint32_t *msr_indices;
	uint32_t nr_msr_indices;

	/* vCPU run control. pause_req/stop_req are read by vCPU threads
	 * without the lock between KVM_RUNs (atomics), changed under it. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req;
	bool stop_req;
	int nr_parked;
	/* vCPUs out of KVM_RUN for the current pause, counted before their
	 * job runs (nr_parked counts after it): see vcpu_wait_all_out. */
	int nr_out;
	/* When the current pause took effect (CLOCK_MONOTONIC ns; 0: not
	 * yet), and whether the first vCPU out kicks the rest (a stop at an
	 * exit, vm_pause_quiet). */
	uint64_t stopped_ns;
	bool kick_rest;
	/* A resume is imminent (live update, state arriving): parked vCPU
	 * threads wait on the CPU instead of sleeping, so that the resume
	 * does not wait for an idle CPU to wake (see vm_resume_soon). */
	bool resume_soon;
	/* The CPU the thread that will lift the pause last said it ran on
	 * (-1: not known). A waiting vCPU thread yields only there: elsewhere
	 * yielding would hand its CPU to any task that woke meanwhile, and
	 * the resume would wait for that task. */
	int waker_cpu;
	/* Waiting vCPU threads yield at every turn, waker_cpu or not: they
	 * were placed on a CPU where the old side still works (cpr/place.c). */
	bool spin_polite;
	/* Live update, new side (cpr-exec): the vCPU threads are placed at
	 * the first early message, and the registers part is set by the
	 * thread that takes it, not by a job on the vCPU's thread
	 * (cpr/place.c). */
	bool place_late, early_regs_here;

	/* The guest runs elsewhere now (live update): what is left of this VM
	 * is torn down at idle priority, not to steal the guest's CPU. */
	bool handed_over;
	/* Live cpr-exec: the keeper that will end the runners (cpr/exec_live.c); a
	 * runner that finds it gone ends itself (vcpu_runner.c). */
	int keeper_pid;
};

/* v, vCPU id of the VM vs (its KVM fd, run control and ops). */
int vcpu_init(struct vcpu *v, struct vcpus *vs, int id);
int vcpu_start(struct vcpu *v);
void vcpu_kick(struct vcpu *v);
/* The task that runs v's guest now: its runner (live cpr-exec), else its
 * thread; 0 if neither has started. */
int vcpu_run_tid(const struct vcpu *v);
/* Faults in 64 KiB of the calling thread's stack, so that a live update's
 * blackout, whose work runs on that stack, takes no fault there (~2 us each
 * here). */
void stack_touch(void);
/* Waits on the CPU (pause instruction, yielding to other runnable tasks)
 * until *flag == want or max_us have passed; true if it got there. For the
 * live-update blackout, where the other side answers within microseconds
 * and waking an idle CPU here costs ~0.1 ms. */
bool spin_until(const bool *flag, bool want, unsigned max_us);
/* Posts fn(v, args[i]) to every vCPU thread, run once it is parked (at
 * once if it already is), in parallel. vcpu_jobs_wait waits for all of
 * them and returns the first error. A vCPU without a live thread runs
 * its job on the caller. */
void vcpu_jobs_post(struct vcpus *vs, int (*fn)(struct vcpu *v, void *arg), void *const *args);
/* The same for one vCPU (its previous job done); vcpu_jobs_wait waits for it. */
void vcpu_job_post(struct vcpu *v, int (*fn)(struct vcpu *v, void *arg), void *arg);
/* fn(v, arg) runs once on v's thread (or runner) right after it handles
 * the guest's next exit to cprvm, while no pause is asked for; it must be
 * quick (the guest waits). vcpu_cancel_at_exit returns once it has run or
 * never will. A guest that does not exit never runs it. */
void vcpu_post_at_exit(struct vcpu *v, int (*fn)(struct vcpu *v, void *arg), void *arg);
void vcpu_cancel_at_exit(struct vcpu *v);
int vcpu_jobs_wait(struct vcpus *vs);
/* The same, asleep from the start: for a waiter that has nothing to do
 * at once when the jobs end (they pass their results on themselves). */
int vcpu_jobs_wait_asleep(struct vcpus *vs);
/* For a job posted with a pause: waits on the CPU until every vCPU with a
 * thread is out of the guest. A vCPU's state is read only then: a vCPU
 * still in the guest could send it an interrupt (an IPI, INIT, SIPI) after
 * the read, and that interrupt would be in no state the update carries.
 * False if max_us passed first. */
bool vcpu_wait_all_out(struct vcpus *vs, unsigned max_us);
void vcpu_destroy(struct vcpu *v);
/* Live cpr-exec: every vCPU thread hands its vCPU to a runner process
 * (clone(CLONE_VM)); returns once all of them run the guest, or fails with
 * the threads in charge again. The guest does not stop. */
int vcpu_runners_start(struct vcpus *vs);
/* The runners give the vCPUs back to their threads (the exec failed). */
void vcpu_runners_stop(struct vcpus *vs);
/* After the threads are gone (the image exec()ed): the runners end. */
void vcpu_runners_end(struct vcpus *vs);
/* The CPU a task last ran on (/proc/TID/stat), or -1. */
int task_last_cpu(int tid);
/* Whether a task sleeps (/proc/TID/stat state S or D): a vCPU task that
 * does is blocked in KVM_RUN with its guest CPU halted. */
bool task_asleep(int tid);
/* The guest runs elsewhere now: every vCPU thread of this VM (parked) goes
 * SCHED_BATCH and every runner SCHED_IDLE, so that waking them to end them
 * does not preempt the guest's new vCPUs, and off the CPU it ran the guest
 * on (run_cpu), where the new vCPU thread runs. */
void vcpu_all_step_aside(struct vcpus *vs);
/* Writes a one-line register dump for error reports. */
void vcpu_describe(struct vcpu *v, char *buf, size_t len);
/* Tearing down a big address space and VM takes a while (~0.7 s at
 * 16 GiB): after a live update, the old side's tasks do it at SCHED_IDLE,
 * not to steal the guest's CPU. */
void sched_idle_self(void);

#endif
