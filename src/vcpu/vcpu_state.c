/* vcpu_state.c — reading and writing a vCPU's KVM state, and the VM-wide
 * in-kernel devices. The order of the ioctls matters; each rule says where
 * it comes from. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vcpu/vcpu_state.h"
#include "vm/vm_priv.h"

struct msrs_buf {
	struct kvm_msrs hdr;
	struct kvm_msr_entry e[VCPU_MAX_MSRS];
};

int vcpu_msr_list_probe(struct vm *vm, int vcpu_fd, uint32_t **out, uint32_t *nr)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	struct msrs_buf *buf;
	uint32_t *ok, n = 0;
	int ret = 0;

	/* First call reports the count (E2BIG). */
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
		return -errno;
	if (probe.nmsrs > VCPU_MAX_MSRS)
		probe.nmsrs = VCPU_MAX_MSRS;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	buf = calloc(1, sizeof(*buf));
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
	 * few): keep those a single KVM_GET_MSRS can read. */
	for (uint32_t i = 0; i < list->nmsrs; i++) {
		buf->hdr.nmsrs = 1;
		buf->e[0] = (struct kvm_msr_entry){ .index = list->indices[i] };
		if (ioctl(vcpu_fd, KVM_GET_MSRS, buf) == 1)
			ok[n++] = list->indices[i];
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

int vcpu_state_save(struct vcpu *v, struct vcpu_state *s)
{
	struct vm *vm = v->vm;
	struct msrs_buf *buf;
	int ret;

	memset(s, 0, offsetof(struct vcpu_state, xsave));
	/* MP state first: a vCPU still waiting for SIPI has nothing else
	 * meaningful, and KVM_GET_MP_STATE also flushes pending APIC events
	 * into the state read below (QEMU and Firecracker both read it first). */
	if (ioctl(v->fd, KVM_GET_MP_STATE, &s->mp_state) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_GET_REGS, &s->regs) < 0)
		return -errno;
	s->have_sregs2 = vm->have_sregs2;
	if (s->have_sregs2) {
		if (ioctl(v->fd, KVM_GET_SREGS2, &s->sregs2) < 0)
			return -errno;
	} else if (ioctl(v->fd, KVM_GET_SREGS, &s->sregs) < 0) {
		return -errno;
	}
	if (vm->xsave_size > VCPU_XSAVE_MAX)
		return -E2BIG;
	if (ioctl(v->fd, vm->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE,
		  s->xsave) < 0)
		return -errno;
	s->xsave_len = vm->xsave_size;
	if (ioctl(v->fd, KVM_GET_XCRS, &s->xcrs) < 0)
		return -errno;
	buf = calloc(1, sizeof(*buf));
	if (!buf)
		return -ENOMEM;
	buf->hdr.nmsrs = vm->nr_msr_indices;
	for (uint32_t i = 0; i < vm->nr_msr_indices; i++)
		buf->e[i].index = vm->msr_indices[i];
	ret = ioctl(v->fd, KVM_GET_MSRS, buf);
	if (ret != (int)vm->nr_msr_indices) {
		ret = ret < 0 ? -errno : -EIO;
		free(buf);
		return ret;
	}
	s->nr_msrs = vm->nr_msr_indices;
	memcpy(s->msrs, buf->e, s->nr_msrs * sizeof(buf->e[0]));
	free(buf);
	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_GET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	/* Events last: reading them after everything else catches an
	 * exception or interrupt that became pending meanwhile. */
	if (ioctl(v->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	return 0;
}

int vcpu_state_load(struct vcpu *v, const struct vcpu_state *s)
{
	struct vm *vm = v->vm;
	struct msrs_buf *buf;
	int ret;

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
	if (s->xsave_len > vm->xsave_size && s->xsave_len > sizeof(struct kvm_xsave))
		return -EOPNOTSUPP;
	if (ioctl(v->fd, KVM_SET_XSAVE, s->xsave) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_SET_XCRS, &s->xcrs) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0)
		return -errno;
	if (ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0)
		return -errno;
	buf = calloc(1, sizeof(*buf));
	if (!buf)
		return -ENOMEM;
	if (s->nr_msrs > VCPU_MAX_MSRS) {
		free(buf);
		return -EINVAL;
	}
	buf->hdr.nmsrs = s->nr_msrs;
	memcpy(buf->e, s->msrs, s->nr_msrs * sizeof(buf->e[0]));
	ret = ioctl(v->fd, KVM_SET_MSRS, buf);
	free(buf);
	if (ret != (int)s->nr_msrs)
		return ret < 0 ? -errno : -EIO;
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	return 0;
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

int vm_kvm_state_load(struct vm *vm, const struct vm_kvm_state *s)
{
	struct kvm_clock_data clock = { .clock = s->clock.clock };

	if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic_master) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->pic_slave) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->ioapic) < 0)
		return -errno;
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &s->pit) < 0)
		return -errno;
	/* Only the clock value: the flags describe the saving host's
	 * realtime/TSC pairing, which KVM_SET_CLOCK would reinterpret. */
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &clock) < 0)
		return -errno;
	return 0;
}
