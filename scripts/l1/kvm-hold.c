/*
 * kvm-hold: opens one idle VM (an irqchip and one vCPU that never runs) and
 * keeps it until killed. Runs in the L1 of scripts/with-kvm for the L1's whole
 * life: with KVM's VM count never back at zero, the static keys that the first
 * VM's creation and the last one's destruction flip stay put, and QEMU's TCG
 * is spared the cross-CPU text patching it sometimes hangs in.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		perror("kvm-hold: /dev/kvm");
		return 1;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0 || ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0 || ioctl(vm, KVM_CREATE_VCPU, 0) < 0) {
		perror("kvm-hold: cannot create the idle VM");
		return 1;
	}
	for (;;)
		pause();
}
