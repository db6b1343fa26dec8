/* cpuid.c — see cpuid.h. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "x86/cpuid.h"

#define CPUID_MAX_ENTRIES 256

/* KVM emulates the LAPIC's TSC-deadline timer mode but leaves it out of
 * KVM_GET_SUPPORTED_CPUID (it depends on the in-kernel LAPIC, which is the
 * VMM's choice): the VMM sets CPUID.1:ECX[24] itself when the capability
 * says so. Linux then runs its LAPIC timer in that mode, with nothing to
 * calibrate. */
static void cpuid_add_emulated(int kvm_fd, struct kvm_cpuid2 *c)
{
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) <= 0)
		return;
	for (unsigned i = 0; i < c->nent; i++)
		if (c->entries[i].function == 1)
			c->entries[i].ecx |= 1u << 24;
}

int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **out)
{
	/* Room for every entry at the first call: a call that fails with
	 * E2BIG has done all the work first (~0.6 ms on the nested test host,
	 * which has 76 entries). KVM has at most 256. */
	int n = 256;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
		if (!c)
			return -ENOMEM;
		c->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			cpuid_add_emulated(kvm_fd, c);
			*out = c;
			return 0;
		}
		free(c);
		if (errno != E2BIG || n >= CPUID_MAX_ENTRIES)
			return -errno;
		n *= 2;
	}
}

int cpuid_setup_vcpu(int vcpu_fd, int vcpu_id, const struct kvm_cpuid2 *sup, int nr_cpus,
		     uint32_t tsc_khz)
{
	struct kvm_cpuid2 *c;
	bool have_timing = false;
	int ret = 0;

	c = calloc(1, sizeof(*c) + (sup->nent + 1) * sizeof(c->entries[0]));
	if (!c)
		return -ENOMEM;
	memcpy(c->entries, sup->entries, sup->nent * sizeof(c->entries[0]));
	c->nent = sup->nent;
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		switch (e->function) {
		case 1:
			/* Initial APIC ID, logical processor count, HTT. */
			e->ebx = (e->ebx & 0x0000ffff) | ((uint32_t)vcpu_id << 24) |
				 ((uint32_t)(nr_cpus > 255 ? 255 : nr_cpus) << 16);
			if (nr_cpus > 1)
				e->edx |= 1u << 28;
			e->ecx |= 1u << 31; /* running on a hypervisor */
			break;
		case 0xb:
		case 0x1f:
			e->edx = vcpu_id; /* x2APIC ID */
			break;
		case 0x40000000:
			if (e->eax < 0x40000010)
				e->eax = 0x40000010;
			break;
		case 0x40000010:
			have_timing = true;
			e->eax = tsc_khz;
			e->ebx = 1000000;
			break;
		}
	}
	if (!have_timing && tsc_khz) {
		struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
		memset(e, 0, sizeof(*e));
		e->function = 0x40000010;
		e->eax = tsc_khz;
		e->ebx = 1000000;
	}
	if (ioctl(vcpu_fd, KVM_SET_CPUID2, c) < 0)
		ret = -errno;
	free(c);
	return ret;
}
