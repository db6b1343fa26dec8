/* boot.c — see boot.h. Only the boot vCPU is set: the others keep KVM's
 * reset state and wait for INIT/SIPI in the kernel. */
#include <errno.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include "x86/boot.h"

static void flat_seg(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	*s = (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = sel, .type = type,
		.present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
	};
}

int x86_setup_boot_vcpu(int vcpu_fd, const struct x86_boot_entry *e)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };

	if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	flat_seg(&sregs.cs, 0x10, 0xb); /* execute/read, accessed */
	flat_seg(&sregs.ds, 0x18, 0x3); /* read/write, accessed */
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.cr0 = 0x11; /* PE | ET */
	sregs.cr4 = 0;
	sregs.efer = 0;
	if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	regs.rip = e->rip;
	regs.rbx = e->rbx;
	regs.rsi = e->rsi;
	regs.rflags = 0x2;
	if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}
