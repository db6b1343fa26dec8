/* vcpu_state.c — reading and writing a vCPU's KVM state, and the VM-wide
 * in-kernel devices. The order of the ioctls matters; each rule says where
 * it comes from. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lib/trace.h"
#include "state/state.h"
#include "vcpu/vcpu_state.h"
#include "vm/vm_priv.h"

/* --- stream tables ----------------------------------------------------------
 * Kernel structs go in as their bytes: they are KVM's stable ABI. Field ids
 * never change meaning; new fields get new ids. */

static const struct state_field msr_fields[] = {
	STATE_FIELD_U32(1, struct kvm_msr_entry, index),
	STATE_FIELD_U64(2, struct kvm_msr_entry, data),
};
static const struct state_desc msr_desc = STATE_DESC("msr", 1, 1, msr_fields);

static bool vcpu_uses_sregs(const void *obj)
{
	return !((const struct vcpu_state *)obj)->have_sregs2;
}

static bool vcpu_uses_sregs2(const void *obj)
{
	return ((const struct vcpu_state *)obj)->have_sregs2;
}

static const struct state_field vcpu_fields[] = {
	STATE_FIELD_BYTES(1, struct vcpu_state, mp_state, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(2, struct vcpu_state, regs, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(3, struct vcpu_state, have_sregs2, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(4, struct vcpu_state, sregs, .flags = STATE_F_REQUIRED,
			  .needed = vcpu_uses_sregs),
	STATE_FIELD_BYTES(5, struct vcpu_state, sregs2, .flags = STATE_F_REQUIRED,
			  .needed = vcpu_uses_sregs2),
	STATE_FIELD_VBYTES(6, struct vcpu_state, xsave, xsave_len, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(7, struct vcpu_state, xcrs, .flags = STATE_F_REQUIRED),
	STATE_FIELD_ARRAY(8, struct vcpu_state, msrs, nr_msrs, msr_desc,
			  .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(9, struct vcpu_state, lapic, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(10, struct vcpu_state, events, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(11, struct vcpu_state, debugregs, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U8(12, struct vcpu_state, have_tsc_offset),
	STATE_FIELD_U64(13, struct vcpu_state, tsc_offset),
};
const struct state_desc vcpu_state_desc = STATE_DESC("vcpu", 1, 1, vcpu_fields);

static const struct state_field irqchip_fields[] = {
	STATE_FIELD_BYTES(1, struct vm_kvm_state, pic_master, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(2, struct vm_kvm_state, pic_slave, .flags = STATE_F_REQUIRED),
	STATE_FIELD_BYTES(3, struct vm_kvm_state, ioapic, .flags = STATE_F_REQUIRED),
};
const struct state_desc irqchip_state_desc = STATE_DESC("irqchip", 1, 1, irqchip_fields);

static const struct state_field pit_fields[] = {
	STATE_FIELD_BYTES(1, struct vm_kvm_state, pit, .flags = STATE_F_REQUIRED),
};
const struct state_desc pit_state_desc = STATE_DESC("pit", 1, 1, pit_fields);

static const struct state_field clock_fields[] = {
	STATE_FIELD_BYTES(1, struct vm_kvm_state, clock, .flags = STATE_F_REQUIRED),
};
const struct state_desc clock_state_desc = STATE_DESC("clock", 1, 1, clock_fields);

/* struct kvm_msrs ends in a flexible array: allocate it with room. */
static struct kvm_msrs *msrs_alloc(uint32_t n)
{
	return calloc(1, sizeof(struct kvm_msrs) + (size_t)n * sizeof(struct kvm_msr_entry));
}

int vcpu_msr_list_probe(struct vm *vm, int vcpu_fd, uint32_t **out, uint32_t *nr)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	struct kvm_msrs *buf;
	uint32_t *ok, n = 0;
	int ret = 0;

	/* First call reports the count (E2BIG). */
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return -errno;
	if (probe.nmsrs > VCPU_MAX_MSRS)
		probe.nmsrs = VCPU_MAX_MSRS;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	buf = msrs_alloc(probe.nmsrs ? probe.nmsrs : 1);
	ok = calloc(probe.nmsrs ? probe.nmsrs : 1, sizeof(uint32_t));
	if (!list || !buf || !ok) {
		ret = -ENOMEM;
		goto out;
	}
	list->nmsrs = probe.nmsrs;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
		ret = -errno;
		goto out;
	}
	/* Some listed MSRs cannot be read on every host (this one rejects a
	 * few): keep those a single KVM_GET_MSRS can read. KVM_GET_MSRS stops
	 * at the first MSR it cannot read and returns how many it read, so
	 * one call per unreadable MSR does, rather than one per MSR. */
	for (uint32_t i = 0; i < list->nmsrs;) {
		int got;

		buf->nmsrs = list->nmsrs - i;
		for (uint32_t j = 0; j < buf->nmsrs; j++)
			buf->entries[j] = (struct kvm_msr_entry){ .index = list->indices[i + j] };
		got = ioctl(vcpu_fd, KVM_GET_MSRS, buf);
		if (got < 0) {
			ret = -errno;
			goto out;
		}
		for (int j = 0; j < got; j++)
			ok[n++] = list->indices[i + j];
		i += got + 1; /* past the one it could not read */
	}
	*out = ok;
	*nr = n;
	ok = NULL;
out:
	free(ok);
	free(buf);
	free(list);
	return ret;
}

int vcpu_msr_list_ensure(struct vcpu *v)
{
	struct vm *vm = v->vm;
	uint32_t *list = NULL, nr = 0;
	int ret;

	if (__atomic_load_n(&vm->msr_indices, __ATOMIC_ACQUIRE))
		return 0;
	/* Every vCPU thread may get here at once: one list wins. */
	ret = vcpu_msr_list_probe(vm, v->fd, &list, &nr);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&vm->lock);
	if (!vm->msr_indices) {
		vm->nr_msr_indices = nr; /* before the list shows */
		__atomic_store_n(&vm->msr_indices, list, __ATOMIC_RELEASE);
		list = NULL;
	}
	pthread_mutex_unlock(&vm->lock);
	free(list);
	return 0;
}

static int vcpu_save_rest(struct vcpu *v, struct vcpu_state *s);

/* How every save starts: the MSR list, a clean head, and MP state first: a
 * vCPU still waiting for SIPI has nothing else meaningful, and
 * KVM_GET_MP_STATE also flushes pending APIC events into the state read
 * after it (QEMU and Firecracker both read it first). */
static int vcpu_save_head(struct vcpu *v, struct vcpu_state *s)
{
	int ret = vcpu_msr_list_ensure(v);

	if (ret < 0)
		return ret;
	memset(s, 0, offsetof(struct vcpu_state, xsave));
	if (ioctl(v->fd, KVM_GET_MP_STATE, &s->mp_state) < 0)
		return -errno;
	return 0;
}

int vcpu_state_save(struct vcpu *v, struct vcpu_state *s)
{
	struct vm *vm = v->vm;
	int ret;

	ret = vcpu_save_head(v, s);
	if (ret < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_REGS, &s->regs) < 0)
		return -errno;
	s->have_sregs2 = vm->have_sregs2;
	if (s->have_sregs2) {
		if (ioctl(v->fd, KVM_GET_SREGS2, &s->sregs2) < 0)
			return -errno;
	} else if (ioctl(v->fd, KVM_GET_SREGS, &s->sregs) < 0) {
		return -errno;
	}
	ret = vcpu_save_rest(v, s);
	if (ret < 0)
		return ret;
	/* Events last: reading them after everything else catches an
	 * exception or interrupt that became pending meanwhile. */
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	return 0;
}

static int save_xsave(struct vcpu *v, struct vcpu_state *s)
{
	struct vm *vm = v->vm;

	if (vm->xsave_size > VCPU_XSAVE_MAX)
		return -E2BIG;
	if (ioctl(v->fd, vm->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE,
		  s->xsave) < 0)
		return -errno;
	s->xsave_len = vm->xsave_size;
	return 0;
}

static int save_msrs(struct vcpu *v, struct vcpu_state *s)
{
	struct vm *vm = v->vm;
	struct kvm_msrs *buf;
	int ret;

	if (vm->nr_msr_indices > VCPU_MAX_MSRS)
		return -E2BIG;
	buf = msrs_alloc(vm->nr_msr_indices);
	if (!buf)
		return -ENOMEM;
	buf->nmsrs = vm->nr_msr_indices;
	for (uint32_t i = 0; i < vm->nr_msr_indices; i++)
		buf->entries[i].index = vm->msr_indices[i];
	ret = ioctl(v->fd, KVM_GET_MSRS, buf);
	if (ret != (int)vm->nr_msr_indices) {
		ret = ret < 0 ? -errno : -EIO;
		free(buf);
		return ret;
	}
	s->nr_msrs = vm->nr_msr_indices;
	memcpy(s->msrs, buf->entries, s->nr_msrs * sizeof(buf->entries[0]));
	free(buf);
	return 0;
}

static void save_tsc_offset(struct vcpu *v, struct vcpu_state *s)
{
	struct kvm_device_attr attr = { .group = KVM_VCPU_TSC_CTRL,
					 .attr = KVM_VCPU_TSC_OFFSET,
					 .addr = (uintptr_t)&s->tsc_offset };

	s->have_tsc_offset = ioctl(v->fd, KVM_GET_DEVICE_ATTR, &attr) == 0;
}

/* Everything but MP state, registers and events. */
static int vcpu_save_rest(struct vcpu *v, struct vcpu_state *s)
{
	int ret;

	if ((ret = save_xsave(v, s)) < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0)
		return -errno;
	if ((ret = save_msrs(v, s)) < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0 ||
	    ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	save_tsc_offset(v, s);
	return 0;
}

static int vcpu_load_rest(struct vcpu *v, const struct vcpu_state *s, bool same_host,
			  bool skip_base, bool skip_early);

int vcpu_state_load(struct vcpu *v, const struct vcpu_state *s, bool same_host)
{
	struct vm *vm = v->vm;
	int ret;

	v->regs_fresh = false; /* kvm_run's copy is stale from here on */
	/* Order as Firecracker restores (src/vmm/src/arch/x86_64/vcpu.rs):
	 * MP state first (it resets parts of the vCPU, e.g. on INIT
	 * received), then registers; sregs before MSRs, because EFER and
	 * APIC_BASE in sregs gate which MSR writes KVM accepts; LAPIC after
	 * sregs (APIC base); vCPU events last, since setting sregs/LAPIC can
	 * clear pending exceptions/interrupts. */
	if (ioctl(v->fd, KVM_SET_MP_STATE, &s->mp_state) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_SET_REGS, &s->regs) < 0)
		return -errno;
	if (s->have_sregs2) {
		if (!vm->have_sregs2)
			return -EOPNOTSUPP;
		if (ioctl(v->fd, KVM_SET_SREGS2, &s->sregs2) < 0)
			return -errno;
	} else if (ioctl(v->fd, KVM_SET_SREGS, &s->sregs) < 0) {
		return -errno;
	}
	ret = vcpu_load_rest(v, s, same_host, false, false);
	if (ret < 0)
		return ret;
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	return 0;
}

static int load_xsave(struct vcpu *v, const struct vcpu_state *s)
{
	if (s->xsave_len > v->vm->xsave_size && s->xsave_len > sizeof(struct kvm_xsave))
		return -EOPNOTSUPP;
	return ioctl(v->fd, KVM_SET_XSAVE, s->xsave) < 0 ? -errno : 0;
}

/* The late MSRs, left to the blackout when the others are set ahead of the
 * stop (vcpu_state_apply_ahead): those that count while the guest runs, so
 * that a value read ahead is stale by the stop (the TSC, whose offset is set
 * instead, which makes it keep real time; Hyper-V's VP runtime and reference
 * time, which KVM lists where it offers Hyper-V enlightenments), the TSC
 * deadline (setting the LAPIC restarts the timer: the deadline goes after
 * it), the kvmclock wall clock (writing it writes the guest's RAM at once,
 * while the old side still runs the guest there). */
static bool msr_late(uint32_t index)
{
	switch (index) {
	case 0x10:       /* IA32_TSC */
	case 0x40000010: /* HV_X64_MSR_VP_RUNTIME */
	case 0x40000020: /* HV_X64_MSR_TIME_REF_COUNT */
	case 0x6e0:      /* IA32_TSC_DEADLINE */
	case 0x11:       /* MSR_KVM_WALL_CLOCK */
	case 0x4b564d00: /* MSR_KVM_WALL_CLOCK_NEW */
		return true;
	}
	return false;
}

/* Which of a state's MSRs load_msrs sets: all; all but the late ones (set
 * ahead of the stop); the late ones that are not zero, which a fresh vCPU
 * does not hold (the TSC aside: its offset is set). */
enum msrs_which { MSRS_ALL, MSRS_NOT_LATE, MSRS_LATE };

static int load_msrs(struct vcpu *v, const struct vcpu_state *s, enum msrs_which which)
{
	struct kvm_msrs *buf;
	uint32_t n = 0;
	int ret;

	if (s->nr_msrs > VCPU_MAX_MSRS)
		return -EINVAL;
	buf = msrs_alloc(s->nr_msrs ? s->nr_msrs : 1);
	if (!buf)
		return -ENOMEM;
	for (uint32_t i = 0; i < s->nr_msrs; i++) {
		const struct kvm_msr_entry *e = &s->msrs[i];
		bool late = msr_late(e->index);

		if (which == MSRS_ALL || (which == MSRS_NOT_LATE && !late) ||
		    (which == MSRS_LATE && late && e->index != 0x10 && e->data))
			buf->entries[n++] = *e;
	}
	ret = vcpu_set_msrs(v, buf, n);
	free(buf);
	return ret;
}

/* After the MSRs: writing IA32_TSC set an offset of its own. On the same
 * host the old offset makes the guest TSC continue on real time (no
 * freeze, no jump); see Documentation/virt/kvm/devices/vcpu.rst. */
static int load_tsc_offset(struct vcpu *v, const struct vcpu_state *s, bool same_host)
{
	struct kvm_device_attr attr = { .group = KVM_VCPU_TSC_CTRL,
					 .attr = KVM_VCPU_TSC_OFFSET,
					 .addr = (uintptr_t)&s->tsc_offset };

	if (!same_host || !s->have_tsc_offset)
		return 0;
	return ioctl(v->fd, KVM_SET_DEVICE_ATTR, &attr) < 0 ? -errno : 0;
}

/* XSAVE, XCRs, debug registers, LAPIC, MSRs, TSC offset, in that order.
 * skip_base: leave out what equals the fresh vCPU's base; skip_early:
 * XSAVE, LAPIC, MSRs and TSC offset, set already (vcpu_state_apply_early). */
static int vcpu_load_rest(struct vcpu *v, const struct vcpu_state *s, bool same_host,
			  bool skip_base, bool skip_early)
{
	int ret;

	if (!skip_early && (ret = load_xsave(v, s)) < 0)
		return ret;
	if (!(skip_base && !memcmp(&s->xcrs, &v->base.xcrs, sizeof(s->xcrs))) &&
	    ioctl(v->fd, KVM_SET_XCRS, &s->xcrs) < 0)
		return -errno;
	if (!(skip_base && !memcmp(&s->debugregs, &v->base.debugregs, sizeof(s->debugregs))) &&
	    ioctl(v->fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	if (skip_early)
		return 0;
	if (ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0)
		return -errno;
	if ((ret = load_msrs(v, s, MSRS_ALL)) < 0)
		return ret;
	return load_tsc_offset(v, s, same_host);
}

int vm_kvm_state_save(struct vm *vm, struct vm_kvm_state *s)
{
	memset(s, 0, sizeof(*s));
	s->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic_master) < 0 ||
	    ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->pic_slave) < 0 ||
	    ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0)
		return -errno;
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &s->pit) < 0)
		return -errno;
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &s->clock) < 0)
		return -errno;
	return 0;
}

int vm_kvm_state_load(struct vm *vm, const struct vm_kvm_state *s, bool same_host)
{
	struct kvm_clock_data clock = { .clock = s->clock.clock };

	/* On the same host, hand KVM the realtime the clock was read at: it
	 * adds the time elapsed since, so kvmclock keeps real time too. */
	if (same_host && (s->clock.flags & KVM_CLOCK_REALTIME)) {
		clock.flags = KVM_CLOCK_REALTIME;
		clock.realtime = s->clock.realtime;
	}

	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic_master) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic_slave) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->ioapic) < 0)
		return -errno;
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &s->pit) < 0)
		return -errno;
	/* Otherwise only the clock value: a snapshot's guest does not see the
	 * time it spent on disk. */
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return -errno;
	return 0;
}

/* --- on the vCPU's own thread ----------------------------------------------------
 * Each vCPU ioctl pays for loading and putting the vCPU, whatever it does,
 * and more from a CPU the vCPU did not last run on. KVM_RUN can carry
 * registers, special registers and events both ways in kvm_run
 * (KVM_CAP_SYNC_REGS): one ioctl in place of three. */

/* A KVM_RUN that enters no guest (immediate_exit): it only syncs. */
static int vcpu_sync_run(struct vcpu *v)
{
	int ret;

	v->regs_fresh = false;
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	ret = ioctl(v->fd, KVM_RUN, 0);
	__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	if (ret == 0)
		return -EIO; /* an exit: there was I/O outstanding after all */
	return errno == EINTR ? 0 : -errno;
}

static bool sregs_paging_needs_pdptrs(uint64_t cr0, uint64_t cr4, uint64_t efer)
{
	return (cr0 & (1ull << 31)) && (cr4 & (1ull << 5)) && !(efer & (1ull << 10));
}

int vcpu_state_capture_parked(struct vcpu *v, struct vcpu_state *s)
{
	return vcpu_state_capture_parked_early(v, s, NULL, NULL);
}

int vcpu_state_capture_parked_early(struct vcpu *v, struct vcpu_state *s,
				    void (*early)(void *ctx, struct vcpu *v,
						  const struct vcpu_state *s,
						  enum vcpu_early_part part),
				    void *ctx)
{
	struct vm *vm = v->vm;
	struct kvm_sync_regs *sr = &v->run->s.regs;
	int ret;

	if (!vm->have_sync_regs)
		return vcpu_state_save(v, s);
	ret = vcpu_save_head(v, s);
	if (ret < 0)
		return ret;
	/* In the order the new side sets them (vcpu_load_rest, then the
	 * registers); a parked vCPU's state does not change in between. */
	if ((ret = save_xsave(v, s)) < 0)
		return ret;
	if (early)
		early(ctx, v, s, VCPU_EARLY_XSAVE);
	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0)
		return -errno;
	if (early)
		early(ctx, v, s, VCPU_EARLY_LAPIC);
	if ((ret = save_msrs(v, s)) < 0)
		return ret;
	save_tsc_offset(v, s);
	if (early)
		early(ctx, v, s, VCPU_EARLY_MSRS);
	if (ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0 ||
	    ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	/* Then the registers, through kvm_run: there already if the vCPU
	 * parked after completing an exit (vcpu.c), else one KVM_RUN. Not
	 * with more vCPUs: another one, still in the guest when this one
	 * parked, may since have sent it an NMI (queued, taken into the
	 * events only when they are read) or an INIT (taken by
	 * KVM_GET_MP_STATE above, which resets the registers). */
	if (!v->regs_fresh || vm->nr_vcpus > 1) {
		v->run->kvm_valid_regs = VCPU_SYNC_ALL;
		ret = vcpu_sync_run(v);
		v->run->kvm_valid_regs = 0;
		if (ret < 0)
			return ret;
	} else {
		trace_mark("regs-fresh");
	}
	s->regs = sr->regs;
	s->sregs = sr->sregs;
	/* The events as KVM_RUN left them: with one vCPU nothing changes
	 * them meanwhile but a device's NMI (an IOAPIC pin or LVT0 set to NMI
	 * delivery) in the ~0.1 ms since the exit: not read again for that. */
	s->events = sr->events;
	s->have_sregs2 = 0;
	if (vm->have_sregs2 && sregs_paging_needs_pdptrs(s->sregs.cr0, s->sregs.cr4,
							  s->sregs.efer)) {
		/* PAE paging outside long mode: the PDPTRs matter (and the
		 * registers part cannot carry them). */
		if (ioctl(v->fd, KVM_GET_SREGS2, &s->sregs2) < 0)
			return -errno;
		s->have_sregs2 = 1;
	} else if (early) {
		early(ctx, v, s, VCPU_EARLY_REGS);
	}
	return 0;
}

/* --- the MSRs ahead of the stop ---------------------------------------------------
 * Most MSRs do not change while a guest runs (the system-call entry points,
 * PAT, the kvmclock and steal-time areas): the old side reads them at an
 * exit before the stop, the new side sets them before it, and in the
 * blackout, where the stream's MSRs part says the same, only the late ones
 * remain. */

struct vcpu_ahead {
	uint32_t nr_msrs; /* 0: nothing stands */
	struct kvm_msr_entry msrs[VCPU_MAX_MSRS];
	uint64_t tsc_offset;
};

int vcpu_state_read_ahead(struct vcpu *v, struct vcpu_state *s)
{
	int ret = vcpu_msr_list_ensure(v);

	if (ret < 0 || (ret = save_msrs(v, s)) < 0)
		return ret;
	save_tsc_offset(v, s);
	return s->have_tsc_offset ? 0 : -EOPNOTSUPP;
}

int vcpu_state_apply_ahead(struct vcpu *v, const struct vcpu_state *s)
{
	struct vcpu_ahead *a = v->ahead;
	int ret;

	if (!s->have_tsc_offset || s->nr_msrs > VCPU_MAX_MSRS)
		return -EINVAL;
	if (!a && !(a = v->ahead = malloc(sizeof(*a))))
		return -ENOMEM;
	a->nr_msrs = 0;
	/* A fresh vCPU's late MSRs are zero: where the guest's are not,
	 * the blackout sets them, after the LAPIC. */
	if ((ret = load_msrs(v, s, MSRS_NOT_LATE)) < 0 || (ret = load_tsc_offset(v, s, true)) < 0)
		return ret;
	a->tsc_offset = s->tsc_offset;
	memcpy(a->msrs, s->msrs, s->nr_msrs * sizeof(s->msrs[0]));
	a->nr_msrs = s->nr_msrs;
	return 0;
}

/* What vcpu_state_apply_ahead set still stands for s: the same MSRs with
 * the same values (the late ones aside) and the same TSC offset. */
static bool ahead_stands(const struct vcpu *v, const struct vcpu_state *s)
{
	const struct vcpu_ahead *a = v->ahead;

	if (!a || !a->nr_msrs || a->nr_msrs != s->nr_msrs || !s->have_tsc_offset ||
	    a->tsc_offset != s->tsc_offset)
		return false;
	for (uint32_t i = 0; i < s->nr_msrs; i++)
		if (a->msrs[i].index != s->msrs[i].index ||
		    (!msr_late(s->msrs[i].index) && a->msrs[i].data != s->msrs[i].data))
			return false;
	return true;
}

/* Parts 1..n of the early state e equal the stream's s. */
static bool early_matches(const struct vcpu_state *e, const struct vcpu_state *s, int n)
{
	if (n >= VCPU_EARLY_XSAVE &&
	    (e->xsave_len != s->xsave_len || memcmp(e->xsave, s->xsave, s->xsave_len)))
		return false;
	if (n >= VCPU_EARLY_LAPIC && memcmp(&e->lapic, &s->lapic, sizeof(s->lapic)))
		return false;
	if (n >= VCPU_EARLY_MSRS &&
	    (e->nr_msrs != s->nr_msrs ||
	     memcmp(e->msrs, s->msrs, s->nr_msrs * sizeof(s->msrs[0])) ||
	     e->have_tsc_offset != s->have_tsc_offset ||
	     (s->have_tsc_offset && e->tsc_offset != s->tsc_offset)))
		return false;
	if (n >= VCPU_EARLY_REGS &&
	    (s->have_sregs2 || memcmp(&e->mp_state, &s->mp_state, sizeof(s->mp_state)) ||
	     memcmp(&e->regs, &s->regs, sizeof(s->regs)) ||
	     memcmp(&e->sregs, &s->sregs, sizeof(s->sregs)) ||
	     memcmp(&e->events, &s->events, sizeof(s->events)) ||
	     memcmp(&e->xcrs, &s->xcrs, sizeof(s->xcrs)) ||
	     memcmp(&e->debugregs, &s->debugregs, sizeof(s->debugregs))))
		return false;
	return true;
}

/* The registers part: XCRs and debug registers where they differ from a
 * fresh vCPU's, then registers, special registers and events through
 * kvm_run. A job on the vCPU's thread, or (vm->early_regs_here) straight
 * from the thread that took the part: a KVM_RUN from a thread other than
 * the vCPU's costs a little more, and so does the vCPU's next KVM_RUN,
 * back on its own thread and CPU: less than waiting for the vCPU's thread
 * to get a CPU for a job. */
static int early_regs_job(struct vcpu *v, void *arg)
{
	struct vcpu_state *e = v->early;
	struct kvm_sync_regs *sr = &v->run->s.regs;
	int ret = 0;

	(void)arg;
	if ((memcmp(&e->xcrs, &v->base.xcrs, sizeof(e->xcrs)) &&
	     ioctl(v->fd, KVM_SET_XCRS, &e->xcrs) < 0) ||
	    (memcmp(&e->debugregs, &v->base.debugregs, sizeof(e->debugregs)) &&
	     ioctl(v->fd, KVM_SET_DEBUGREGS, &e->debugregs) < 0))
		ret = -errno;
	if (ret == 0) {
		sr->regs = e->regs;
		sr->sregs = e->sregs;
		sr->events = e->events;
		v->run->kvm_dirty_regs = VCPU_SYNC_ALL;
		ret = vcpu_sync_run(v);
		v->run->kvm_dirty_regs = 0;
	}
	if (ret == 0)
		trace_mark("early-regs-set");
	__atomic_store_n(&v->early_regs_ok, ret == 0, __ATOMIC_RELEASE);
	return 0; /* a failure only means the restore does it all */
}

int vcpu_state_apply_early(struct vcpu *v, enum vcpu_early_part part, const struct vcpu_state *s,
			   const void *msg, size_t msg_len)
{
	struct vcpu_state *e = v->early;
	bool ahead;
	int ret = 0;

	if (!e)
		return -ENOMEM;
	if (v->early_broken || (int)part != v->early_parts + 1) {
		v->early_broken = true;
		return -EPROTO;
	}
	switch (part) {
	case VCPU_EARLY_XSAVE:
		if ((ret = load_xsave(v, s)) == 0) {
			e->xsave_len = s->xsave_len;
			memcpy(e->xsave, s->xsave, s->xsave_len);
		}
		break;
	case VCPU_EARLY_LAPIC:
		if (ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0)
			ret = -errno;
		else
			e->lapic = s->lapic;
		break;
	case VCPU_EARLY_MSRS:
		/* Same host (a live update): the TSC offset keeps real time.
		 * Set before the stop already, but the late MSRs: those. */
		ahead = ahead_stands(v, s);
		if (ahead)
			ret = load_msrs(v, s, MSRS_LATE);
		else if ((ret = load_msrs(v, s, MSRS_ALL)) == 0)
			ret = load_tsc_offset(v, s, true);
		v->msrs_ahead = ahead && ret == 0;
		if (ret == 0) {
			e->nr_msrs = s->nr_msrs;
			memcpy(e->msrs, s->msrs, s->nr_msrs * sizeof(s->msrs[0]));
			e->have_tsc_offset = s->have_tsc_offset;
			e->tsc_offset = s->tsc_offset;
		}
		break;
	case VCPU_EARLY_REGS:
		/* Only where a fresh vCPU's MP state and APIC base stand (as in
		 * vcpu_state_apply_parked's quick way): setting either resets
		 * parts of the vCPU, which must come first. */
		if (!v->base.valid || !v->vm->have_sync_regs ||
		    memcmp(&s->mp_state, &v->base.mp_state, sizeof(s->mp_state)) ||
		    s->sregs.apic_base != v->base.apic_base) {
			ret = -EOPNOTSUPP;
			break;
		}
		e->mp_state = s->mp_state;
		e->regs = s->regs;
		e->sregs = s->sregs;
		e->events = s->events;
		e->xcrs = s->xcrs;
		e->debugregs = s->debugregs;
		/* What the job sets is no longer the fresh vCPU's. */
		v->base.valid = false;
		v->early_regs_ok = false;
		if (v->vm->early_regs_here)
			early_regs_job(v, NULL);
		else
			vcpu_job_post(v, early_regs_job, NULL);
		break;
	default:
		break;
	}
	if (ret < 0) {
		v->early_broken = true;
		return ret;
	}
	v->early_parts = part;
	if (part == VCPU_EARLY_XSAVE)
		v->early_msgs_len = 0;
	if (v->early_msgs && v->early_msgs_len <= VCPU_EARLY_ALL_MAX &&
	    msg_len <= VCPU_EARLY_ALL_MAX - v->early_msgs_len) {
		memcpy(v->early_msgs + v->early_msgs_len, msg, msg_len);
		v->early_msgs_len += msg_len;
	} else {
		v->early_msgs_len = SIZE_MAX; /* never the same */
	}
	return 0;
}

/* Every part was set early, the registers' job included. */
static bool early_all_set(struct vcpu *v)
{
	return v->early && !v->early_broken && v->early_parts == VCPU_EARLY_PARTS &&
	       __atomic_load_n(&v->early_regs_ok, __ATOMIC_ACQUIRE);
}

bool vcpu_state_early_complete(struct vcpu *v, const struct vcpu_state *s)
{
	return early_all_set(v) && early_matches(v->early, s, VCPU_EARLY_PARTS);
}

bool vcpu_state_early_same(struct vcpu *v, const void *all, size_t len)
{
	return early_all_set(v) && v->early_msgs && v->early_msgs_len == len &&
	       !memcmp(v->early_msgs, all, len);
}

int vcpu_state_read_base(struct vcpu *v)
{
	struct kvm_sregs sregs;

	v->base.valid = false;
	if (ioctl(v->fd, KVM_GET_MP_STATE, &v->base.mp_state) < 0 ||
	    ioctl(v->fd, KVM_GET_XCRS, &v->base.xcrs) < 0 ||
	    ioctl(v->fd, KVM_GET_DEBUGREGS, &v->base.debugregs) < 0 ||
	    ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	v->base.apic_base = sregs.apic_base;
	v->base.valid = true;
	return 0;
}

int vcpu_state_apply_parked(struct vcpu *v, const struct vcpu_state *s, bool same_host)
{
	struct vm *vm = v->vm;
	struct kvm_sync_regs *sr = &v->run->s.regs;
	const bool base = v->base.valid;
	struct kvm_sregs sregs;
	bool sync, early;
	int ret;

	if (!vm->have_sync_regs || !base)
		return vcpu_state_load(v, s, same_host);
	if (s->have_sregs2) {
		if (sregs_paging_needs_pdptrs(s->sregs2.cr0, s->sregs2.cr4, s->sregs2.efer))
			return vcpu_state_load(v, s, same_host);
		memset(&sregs, 0, sizeof(sregs));
		sregs.cs = s->sregs2.cs;
		sregs.ds = s->sregs2.ds;
		sregs.es = s->sregs2.es;
		sregs.fs = s->sregs2.fs;
		sregs.gs = s->sregs2.gs;
		sregs.ss = s->sregs2.ss;
		sregs.tr = s->sregs2.tr;
		sregs.ldt = s->sregs2.ldt;
		sregs.gdt = s->sregs2.gdt;
		sregs.idt = s->sregs2.idt;
		sregs.cr0 = s->sregs2.cr0;
		sregs.cr2 = s->sregs2.cr2;
		sregs.cr3 = s->sregs2.cr3;
		sregs.cr4 = s->sregs2.cr4;
		sregs.cr8 = s->sregs2.cr8;
		sregs.efer = s->sregs2.efer;
		sregs.apic_base = s->sregs2.apic_base;
	} else {
		sregs = s->sregs;
	}
	/* The order of vcpu_state_load, but what a fresh vCPU already holds
	 * is not set again, and registers, special registers and events go
	 * in last, through kvm_run. That moves the special registers after
	 * the LAPIC and the MSRs: fine while the APIC base stays what it is
	 * (setting it is what resets the LAPIC), else the slow way. */
	sync = sregs.apic_base == v->base.apic_base;
	if (memcmp(&s->mp_state, &v->base.mp_state, sizeof(s->mp_state)) &&
	    ioctl(v->fd, KVM_SET_MP_STATE, &s->mp_state) < 0)
		return -errno;
	if (!sync) {
		if (ioctl(v->fd, KVM_SET_REGS, &s->regs) < 0 ||
		    ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
			return -errno;
	}
	/* What was set ahead (XSAVE, LAPIC, MSRs, TSC offset) stands if the
	 * stream says the same, and nothing was set in between that resets it
	 * (MP state, the APIC base). */
	early = v->early && !v->early_broken && v->early_parts >= VCPU_EARLY_MSRS && sync &&
		same_host && !memcmp(&s->mp_state, &v->base.mp_state, sizeof(s->mp_state)) &&
		early_matches(v->early, s, VCPU_EARLY_MSRS);
	ret = vcpu_load_rest(v, s, same_host, true, early);
	if (ret < 0)
		return ret;
	/* Whatever set them, the base values are gone now. */
	v->base.valid = false;
	if (!sync)
		return ioctl(v->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0 ? -errno : 0;
	sr->regs = s->regs;
	sr->sregs = sregs;
	sr->events = s->events;
	v->run->kvm_dirty_regs = VCPU_SYNC_ALL;
	/* Applied now, not at the first real entry: a state KVM refuses is
	 * refused before the update commits. */
	ret = vcpu_sync_run(v);
	v->run->kvm_dirty_regs = 0;
	return ret;
}
