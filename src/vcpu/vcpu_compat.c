/* vcpu_compat.c — a vCPU state saved on another host's CPU: what can be
 * skipped without loss, and, when KVM refuses the rest, which part.
 *
 * KVM answers a state it cannot take with a bare EINVAL (or, for MSRs, a
 * short count): "Input/output error" tells a user nothing. After a failed
 * vcpu_state_load, the parts are set again one by one, in the load's order,
 * and the first one refused is named with what in it the host lacks: an
 * XSAVE component outside the host's XCR0, an MSR (index and value), a
 * control-register bit. Probing writes into a vCPU whose restore has failed
 * anyway; nothing else is touched. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vcpu/vcpu_state.h"
#include "vcpu/vcpu.h"

/* Whether the vCPU holds e already: reading the MSR gives e's value, or the
 * MSR does not exist here and e's value is 0. */
static bool msr_holds(struct vcpu *v, const struct kvm_msr_entry *e)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} one = { .hdr.nmsrs = 1, .e.index = e->index };

	if (ioctl(v->fd, KVM_GET_MSRS, &one) != 1)
		return e->data == 0; /* no such MSR here: only its reset value is lossless */
	return one.e.data == e->data;
}

/* KVM_SET_MSRS sets entries in order and stops at the first it refuses. A
 * refused MSR that the vCPU already holds at the saved value (one that is
 * read-only here, or absent here and saved at its reset value, 0) carries
 * nothing the guest could miss: it is skipped, as QEMU sends an MSR only
 * when it differs from its default. Any other refusal fails the load. The
 * common case is one ioctl. */
int vcpu_set_msrs(struct vcpu *v, struct kvm_msrs *buf, uint32_t n)
{
	uint32_t from = 0;

	while (from < n) {
		const struct kvm_msr_entry *e;
		int ret;

		if (from)
			memmove(buf->entries, buf->entries + from, (n - from) * sizeof(*e));
		n -= from;
		buf->nmsrs = n;
		ret = ioctl(v->fd, KVM_SET_MSRS, buf);
		if (ret < 0)
			return -errno;
		if ((uint32_t)ret == n)
			return 0;
		e = &buf->entries[ret];
		if (!msr_holds(v, e))
			return -EIO;
		from = (uint32_t)ret + 1;
	}
	return 0;
}

static const char *const xfeature_names[] = {
	"x87", "SSE", "AVX", "MPX bounds", "MPX CSR", "AVX-512 opmask", "AVX-512 ZMM_Hi256",
	"AVX-512 Hi16_ZMM", "PT", "PKRU", "PASID", "CET user", "CET supervisor", "HDC", "UINTR",
	"LBR", "HWP", "AMX TILECFG", "AMX TILEDATA",
};

/* The XCR0 bits KVM offers guests here (CPUID 0xD.0 EDX:EAX). */
static uint64_t supported_xcr0(const struct vcpus *vs)
{
	if (!vs->cpuid)
		return 0;
	for (uint32_t i = 0; i < vs->cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &vs->cpuid->entries[i];
		if (e->function == 0xd && e->index == 0)
			return e->eax | (uint64_t)e->edx << 32;
	}
	return 0;
}

static void name_xfeatures(uint64_t bits, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = 0;
	for (unsigned i = 0; i < 64 && n < len; i++) {
		if (!(bits & (1ULL << i)))
			continue;
		if (i < sizeof(xfeature_names) / sizeof(xfeature_names[0]))
			n += snprintf(buf + n, len - n, "%s%s", n ? ", " : "", xfeature_names[i]);
		else
			n += snprintf(buf + n, len - n, "%scomponent %u", n ? ", " : "", i);
	}
}

static int explain_xstate(const struct vcpus *vs, uint64_t bv, const char *what, char *buf, size_t len)
{
	uint64_t extra = bv & ~supported_xcr0(vs);
	char names[256];

	if (!extra)
		return snprintf(buf, len, "KVM refused the %s (components 0x%llx)", what,
				(unsigned long long)bv);
	name_xfeatures(extra, names, sizeof(names));
	return snprintf(buf, len, "the %s holds XSAVE state this host's KVM does not offer: %s",
			what, names);
}

/* The first MSR KVM refuses on its own, in the state's order. */
static int explain_msrs(struct vcpu *v, const struct vcpu_state *s, char *buf, size_t len)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} one;

	for (uint32_t i = 0; i < s->nr_msrs && i < VCPU_MAX_MSRS; i++) {
		memset(&one, 0, sizeof(one));
		one.hdr.nmsrs = 1;
		one.e = s->msrs[i];
		if (ioctl(v->fd, KVM_SET_MSRS, &one) == 1 || msr_holds(v, &s->msrs[i]))
			continue;
		return snprintf(buf, len, "KVM refused MSR 0x%x (value 0x%llx)", s->msrs[i].index,
				(unsigned long long)s->msrs[i].data);
	}
	return 0;
}

static int explain_sregs(struct vcpu *v, const struct vcpu_state *s, char *buf, size_t len)
{
	uint64_t cr0 = s->sregs.cr0, cr4 = s->sregs.cr4, efer = s->sregs.efer;

	if (s->have_sregs2) {
		if (!v->vs->have_sregs2)
			return snprintf(buf, len, "the state has KVM_SET_SREGS2's form, which this "
					"host's KVM lacks");
		if (ioctl(v->fd, KVM_SET_SREGS2, &s->sregs2) == 0)
			return 0;
		cr0 = s->sregs2.cr0, cr4 = s->sregs2.cr4, efer = s->sregs2.efer;
	} else if (ioctl(v->fd, KVM_SET_SREGS, &s->sregs) == 0) {
		return 0;
	}
	return snprintf(buf, len, "KVM refused the special registers (CR0=0x%llx CR4=0x%llx "
			"EFER=0x%llx)", (unsigned long long)cr0, (unsigned long long)cr4,
			(unsigned long long)efer);
}

int vcpu_state_refusal(struct vcpu *v, const struct vcpu_state *s, char *buf, size_t len)
{
	uint64_t bv = 0;
	int n;

	buf[0] = 0;
	if (ioctl(v->fd, KVM_SET_MP_STATE, &s->mp_state) < 0)
		return snprintf(buf, len, "KVM refused the MP state (%u)", s->mp_state.mp_state);
	if ((n = explain_sregs(v, s, buf, len)) != 0)
		return n;
	if (s->xsave_len >= 520)
		memcpy(&bv, s->xsave + 512, sizeof(bv)); /* XSAVE header: XSTATE_BV */
	if (s->xsave_len > v->vs->xsave_size && s->xsave_len > sizeof(struct kvm_xsave))
		return snprintf(buf, len, "the XSAVE area (%u bytes) is larger than this host's (%u)",
				s->xsave_len, v->vs->xsave_size);
	if (ioctl(v->fd, KVM_SET_XSAVE, s->xsave) < 0)
		return explain_xstate(v->vs, bv, "XSAVE area", buf, len);
	if (ioctl(v->fd, KVM_SET_XCRS, &s->xcrs) < 0)
		return explain_xstate(v->vs, s->xcrs.nr_xcrs ? s->xcrs.xcrs[0].value : 0, "XCR0",
				      buf, len);
	if (ioctl(v->fd, KVM_SET_DEBUGREGS, &s->debugregs) < 0)
		return snprintf(buf, len, "KVM refused the debug registers");
	if (ioctl(v->fd, KVM_SET_LAPIC, &s->lapic) < 0)
		return snprintf(buf, len, "KVM refused the local APIC's state");
	if ((n = explain_msrs(v, s, buf, len)) != 0)
		return n;
	if (ioctl(v->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
		return snprintf(buf, len, "KVM refused the pending events");
	return 0;
}
