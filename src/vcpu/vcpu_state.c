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
#include "vcpu/vcpu_state_priv.h"
#include "vcpu/vcpu.h"

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

int vcpu_msr_list_probe(struct vcpus *vs, int vcpu_fd, uint32_t **out, uint32_t *nr)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	struct kvm_msrs *buf;
	uint32_t *ok, n = 0;
	int ret = 0;

	/* First call reports the count (E2BIG). */
	if (ioctl(vs->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
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
	if (ioctl(vs->kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
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
	struct vcpus *vs = v->vs;
	uint32_t *list = NULL, nr = 0;
	int ret;

	if (__atomic_load_n(&vs->msr_indices, __ATOMIC_ACQUIRE))
		return 0;
	/* Every vCPU thread may get here at once: one list wins. */
	ret = vcpu_msr_list_probe(vs, v->fd, &list, &nr);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&vs->lock);
	if (!vs->msr_indices) {
		vs->nr_msr_indices = nr; /* before the list shows */
		__atomic_store_n(&vs->msr_indices, list, __ATOMIC_RELEASE);
		list = NULL;
	}
	pthread_mutex_unlock(&vs->lock);
	free(list);
	return 0;
}

/* How every save starts: the MSR list, a clean head, and MP state first: a
 * vCPU still waiting for SIPI has nothing else meaningful, and
 * KVM_GET_MP_STATE also flushes pending APIC events into the state read
 * after it (QEMU and Firecracker both read it first). */
int vcpu_save_head(struct vcpu *v, struct vcpu_state *s)
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
	struct vcpus *vs = v->vs;
	int ret;

	ret = vcpu_save_head(v, s);
	if (ret < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_REGS, &s->regs) < 0)
		return -errno;
	s->have_sregs2 = vs->have_sregs2;
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

int vcpu_save_xsave(struct vcpu *v, struct vcpu_state *s)
{
	struct vcpus *vs = v->vs;

	if (vs->xsave_size > VCPU_XSAVE_MAX)
		return -E2BIG;
	if (ioctl(v->fd, vs->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE,
		  s->xsave) < 0)
		return -errno;
	s->xsave_len = vs->xsave_size;
	return 0;
}

int vcpu_save_msrs(struct vcpu *v, struct vcpu_state *s)
{
	struct vcpus *vs = v->vs;
	struct kvm_msrs *buf;
	int ret;

	if (vs->nr_msr_indices > VCPU_MAX_MSRS)
		return -E2BIG;
	buf = msrs_alloc(vs->nr_msr_indices);
	if (!buf)
		return -ENOMEM;
	buf->nmsrs = vs->nr_msr_indices;
	for (uint32_t i = 0; i < vs->nr_msr_indices; i++)
		buf->entries[i].index = vs->msr_indices[i];
	ret = ioctl(v->fd, KVM_GET_MSRS, buf);
	if (ret != (int)vs->nr_msr_indices) {
		ret = ret < 0 ? -errno : -EIO;
		free(buf);
		return ret;
	}
	s->nr_msrs = vs->nr_msr_indices;
	memcpy(s->msrs, buf->entries, s->nr_msrs * sizeof(buf->entries[0]));
	free(buf);
	return 0;
}

void vcpu_save_tsc_offset(struct vcpu *v, struct vcpu_state *s)
{
	struct kvm_device_attr attr = { .group = KVM_VCPU_TSC_CTRL,
					 .attr = KVM_VCPU_TSC_OFFSET,
					 .addr = (uintptr_t)&s->tsc_offset };

	s->have_tsc_offset = ioctl(v->fd, KVM_GET_DEVICE_ATTR, &attr) == 0;
}

/* Everything but MP state, registers and events. */
int vcpu_save_rest(struct vcpu *v, struct vcpu_state *s)
{
	int ret;

	if ((ret = vcpu_save_xsave(v, s)) < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0)
		return -errno;
	if ((ret = vcpu_save_msrs(v, s)) < 0)
		return ret;
	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0 ||
	    ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	vcpu_save_tsc_offset(v, s);
	return 0;
}

int vcpu_state_load(struct vcpu *v, const struct vcpu_state *s, bool same_host)
{
	struct vcpus *vs = v->vs;
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
		if (!vs->have_sregs2)
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

int vcpu_load_xsave(struct vcpu *v, const struct vcpu_state *s)
{
	if (s->xsave_len > v->vs->xsave_size && s->xsave_len > sizeof(struct kvm_xsave))
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
bool vcpu_msr_late(uint32_t index)
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

int vcpu_load_msrs(struct vcpu *v, const struct vcpu_state *s, enum msrs_which which)
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
		bool late = vcpu_msr_late(e->index);

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
int vcpu_load_tsc_offset(struct vcpu *v, const struct vcpu_state *s, bool same_host)
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
int vcpu_load_rest(struct vcpu *v, const struct vcpu_state *s, bool same_host, bool skip_base,
		   bool skip_early)
{
	int ret;

	if (!skip_early && (ret = vcpu_load_xsave(v, s)) < 0)
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
	if ((ret = vcpu_load_msrs(v, s, MSRS_ALL)) < 0)
		return ret;
	return vcpu_load_tsc_offset(v, s, same_host);
}

int vm_kvm_state_save(struct vcpus *vs, struct vm_kvm_state *s)
{
	memset(s, 0, sizeof(*s));
	s->pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
	s->pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
	s->ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
	if (ioctl(vs->vm_fd, KVM_GET_IRQCHIP, &s->pic_master) < 0 ||
	    ioctl(vs->vm_fd, KVM_GET_IRQCHIP, &s->pic_slave) < 0 ||
	    ioctl(vs->vm_fd, KVM_GET_IRQCHIP, &s->ioapic) < 0)
		return -errno;
	if (ioctl(vs->vm_fd, KVM_GET_PIT2, &s->pit) < 0)
		return -errno;
	if (ioctl(vs->vm_fd, KVM_GET_CLOCK, &s->clock) < 0)
		return -errno;
	return 0;
}

int vm_kvm_state_load(struct vcpus *vs, const struct vm_kvm_state *s, bool same_host)
{
	struct kvm_clock_data clock = { .clock = s->clock.clock };

	/* On the same host, hand KVM the realtime the clock was read at: it
	 * adds the time elapsed since, so kvmclock keeps real time too. */
	if (same_host && (s->clock.flags & KVM_CLOCK_REALTIME)) {
		clock.flags = KVM_CLOCK_REALTIME;
		clock.realtime = s->clock.realtime;
	}

	if (ioctl(vs->vm_fd, KVM_SET_IRQCHIP, &s->pic_master) < 0 ||
	    ioctl(vs->vm_fd, KVM_SET_IRQCHIP, &s->pic_slave) < 0 ||
	    ioctl(vs->vm_fd, KVM_SET_IRQCHIP, &s->ioapic) < 0)
		return -errno;
	if (ioctl(vs->vm_fd, KVM_SET_PIT2, &s->pit) < 0)
		return -errno;
	/* Otherwise only the clock value: a snapshot's guest does not see the
	 * time it spent on disk. */
	if (ioctl(vs->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return -errno;
	return 0;
}

