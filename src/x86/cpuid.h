/* cpuid.h — the guest's CPUID: what KVM supports, with the topology fields
 * set per vCPU (APIC ID = vCPU id) and the hypervisor timing leaf
 * 0x40000010 (EAX = TSC kHz, EBX = APIC bus kHz), so that guests need not
 * calibrate the TSC against the PIT. */
#ifndef CPRVM_CPUID_H
#define CPRVM_CPUID_H

#include <stdint.h>

struct kvm_cpuid2;

/* KVM_GET_SUPPORTED_CPUID on the /dev/kvm fd, into a new array (free()). */
int cpuid_get_supported(int kvm_fd, struct kvm_cpuid2 **out);
/* KVM_SET_CPUID2 on a vCPU fd: supported, edited for vCPU vcpu_id of
 * nr_cpus; tsc_khz 0: no timing leaf is added where KVM has none. */
int cpuid_setup_vcpu(int vcpu_fd, int vcpu_id, const struct kvm_cpuid2 *supported, int nr_cpus,
		     uint32_t tsc_khz);

#endif
