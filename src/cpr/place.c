/* place.c — where and how the live update's tasks run around the blackout.
 *
 * Batch. The new side's work before the stop (a process or image starting,
 * the VM build) runs as SCHED_BATCH. Such a task gets its fair share of a
 * CPU, but its wakeup never preempts the task on that CPU (wakeup preemption
 * is for SCHED_NORMAL only, kernel/sched/fair.c), so it does not cut into a
 * vCPU that runs the guest there meanwhile: on a host with few CPUs that is
 * a hiccup the guest sees before the update's own pause. It ends before
 * READY for this task and the vCPU threads it made, which inherited it. The
 * old side's task goes batch too once the stop begins, and back if the
 * update fails. Only a task at SCHED_NORMAL is touched: a policy the user
 * chose stays.
 *
 * Placement. The new side's vCPU threads take the guest over on the CPUs
 * the old side's ran it on: those are the CPUs the stop frees. Left to the
 * scheduler, a woken vCPU thread goes to its waker's CPU, and the blackout's
 * threads queue on one CPU while another idles.
 *  - cpr-transfer (the old side sends vcpu_tid): just before READY each new
 *    vCPU thread is pinned to the CPU its old counterpart last ran on, and
 *    waits there on the CPU (vm_resume_soon), politely: SCHED_BATCH, so that
 *    its wakeup does not preempt the guest still running there, and
 *    yielding at every turn (spin_polite) to the old vCPU thread that
 *    captures its state after the stop.
 *  - live cpr-exec (the old side sends only its runners' tids): a runner's
 *    end holds a CPU for milliseconds, and a vCPU thread pinned from READY
 *    on would leave every task woken meanwhile to take the guest's CPU. So
 *    the threads are placed late (cpr_place_vcpus_late): from the stop on
 *    (the first early message), each on its runner's CPU, waiting politely.
 *    Their registers are set by the main thread as they come
 *    (vm->cpus.early_regs_here), not by a job of their own, which would wait on
 *    that CPU for the runner to finish sending the stream.
 *  - The new side's main thread keeps off the CPUs the old vCPUs run on,
 *    if any other is allowed: it sets the early state and takes the stream
 *    in while they capture and send it.
 * Once the guest runs here, every placed thread gets its CPU set back, and
 * its policy: from here (cpr_unplace_vcpus), except a late-placed thread
 * that ran a job since, which takes its policy back itself after the job
 * (changing a running vCPU thread's policy from outside reschedules it).
 * Only a hint: without it everything works, slower. */
#include <sched.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"

bool cpr_batch;

void cpr_batch_begin(void)
{
	struct sched_param sp = { 0 };

	if (sched_getscheduler(0) == SCHED_OTHER && sched_setscheduler(0, SCHED_BATCH, &sp) == 0)
		cpr_batch = true;
}

void cpr_batch_end(struct vm *vm)
{
	struct sched_param sp = { 0 };

	if (!cpr_batch)
		return;
	cpr_batch = false;
	sched_setscheduler(0, SCHED_OTHER, &sp);
	for (int i = 0; vm && i < vm->cpus.nr_vcpus; i++)
		if (vm->cpus.vcpus[i].tid > 0)
			sched_setscheduler(vm->cpus.vcpus[i].tid, SCHED_OTHER, &sp);
}

/* Pins v's thread to cpu, if its CPU set holds cpu (that set kept in
 * v->lu.cpus_before), and makes it SCHED_BATCH if it was SCHED_OTHER (*batched
 * says so): woken there at normal priority it would preempt the guest, or
 * the capture, at once; SCHED_BATCH does not. */
static bool cpr_pin_vcpu(struct vcpu *v, int cpu, bool *batched)
{
	struct sched_param sp = { 0 };
	cpu_set_t one;

	if (cpu < 0 || cpu >= CPU_SETSIZE || v->tid <= 0 ||
	    sched_getaffinity(v->tid, sizeof(v->lu.cpus_before), &v->lu.cpus_before) < 0 ||
	    !CPU_ISSET(cpu, &v->lu.cpus_before))
		return false;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	if (sched_setaffinity(v->tid, sizeof(one), &one) < 0)
		return false;
	*batched = sched_getscheduler(v->tid) == SCHED_OTHER &&
		   sched_setscheduler(v->tid, SCHED_BATCH, &sp) == 0;
	v->lu.placed = true;
	return true;
}

void cpr_place_vcpus(struct vm *vm, const struct cpr_state *cs)
{
	uint32_t n = cs->vcpu_tid_len / sizeof(cs->vcpu_tid[0]);
	bool any = false;

	/* cpr-exec: only where, for now (cpr_place_vcpus_late). */
	for (int i = 0; !n && i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];
		uint32_t r = (uint32_t)i < cs->run_tid_len / sizeof(cs->run_tid[0]) ? cs->run_tid[i]
										      : 0;

		v->lu.place_cpu = r ? task_last_cpu((int)r) : -1;
		if (v->lu.place_cpu >= 0 && v->lu.place_cpu < CPU_SETSIZE)
			vm->cpus.place_late = vm->cpus.early_regs_here = true;
		else
			v->lu.place_cpu = -1;
	}

	for (int i = 0; i < vm->cpus.nr_vcpus && (uint32_t)i < n; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];
		int cpu = cs->vcpu_tid[i] ? task_last_cpu((int)cs->vcpu_tid[i]) : -1;

		if (cpr_pin_vcpu(v, cpu, &v->lu.placed_batch))
			any = true;
	}
	if (any) {
		__atomic_store_n(&vm->cpus.spin_polite, true, __ATOMIC_RELEASE);
		vm_resume_soon(vm);
	}
}

/* Live cpr-exec, from the stop on (its first early message). */
void cpr_place_vcpus_late(struct vm *vm)
{
	bool any = false;

	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];
		int cpu = v->lu.place_cpu;
		bool batched;

		v->lu.place_cpu = -1;
		if (cpr_pin_vcpu(v, cpu, &batched)) {
			any = true;
			__atomic_store_n(&v->lu.unbatch_after_job, batched, __ATOMIC_RELEASE);
		}
	}
	if (any) {
		__atomic_store_n(&vm->cpus.spin_polite, true, __ATOMIC_RELEASE);
		vm_resume_soon(vm);
	}
	vm->cpus.place_late = false;
}

/* The new side's main thread, from READY until the guest runs here. */
static struct {
	bool placed;
	cpu_set_t before;
} main_place;

void cpr_place_main(const struct cpr_state *cs)
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

void cpr_unplace_main(void)
{
	if (main_place.placed)
		sched_setaffinity(0, sizeof(main_place.before), &main_place.before);
	main_place.placed = false;
}

void cpr_unplace_vcpus(struct vm *vm)
{
	cpr_unplace_main();
	__atomic_store_n(&vm->cpus.spin_polite, false, __ATOMIC_RELEASE);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];
		struct sched_param sp = { 0 };

		if (!v->lu.placed)
			continue;
		sched_setaffinity(v->tid, sizeof(v->lu.cpus_before), &v->lu.cpus_before);
		/* (Placed late with no job run since: back from here.) */
		if (v->lu.placed_batch || /* a policy set by the user stays */
		    __atomic_exchange_n(&v->lu.unbatch_after_job, false, __ATOMIC_ACQ_REL))
			sched_setscheduler(v->tid, SCHED_OTHER, &sp);
		v->lu.placed = v->lu.placed_batch = false;
	}
}
