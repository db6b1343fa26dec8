/* vcpu_early.c — a vCPU's early state as one message (live update, see
 * cpr.c "Early state"): XSAVE, LAPIC, MSRs and TSC offset, read first on the
 * old side and set by the new side while the rest is still being read.
 * Layout: a fixed header, then the XSAVE bytes, the LAPIC page, the MSR
 * entries. The decoder trusts nothing: every length is bounded and the
 * message must be exactly as long as its header says. */
#include <errno.h>
#include <string.h>

#include "vcpu/vcpu_state.h"

#define EARLY_MAGIC 0x45525043u /* "CPRE" */
#define EARLY_VERSION 1

struct early_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t vcpu_id;
	uint32_t xsave_len;
	uint32_t nr_msrs;
	uint32_t lapic_len;
	uint32_t have_tsc_offset;
	uint64_t tsc_offset;
};

_Static_assert(sizeof(struct early_hdr) == VCPU_EARLY_HDR, "early header size");

size_t vcpu_early_encode(const struct vcpu_state *s, uint32_t vcpu_id, void *buf, size_t len)
{
	struct early_hdr h = {
		.magic = EARLY_MAGIC, .version = EARLY_VERSION, .vcpu_id = (uint16_t)vcpu_id,
		.xsave_len = s->xsave_len, .nr_msrs = s->nr_msrs,
		.lapic_len = sizeof(s->lapic), .have_tsc_offset = s->have_tsc_offset,
		.tsc_offset = s->tsc_offset,
	};
	size_t msrs = (size_t)s->nr_msrs * sizeof(s->msrs[0]);
	size_t need = sizeof(h) + s->xsave_len + sizeof(s->lapic) + msrs;
	uint8_t *p = buf;

	if (vcpu_id > UINT16_MAX || s->xsave_len > VCPU_XSAVE_MAX ||
	    s->nr_msrs > VCPU_MAX_MSRS || need > len)
		return 0;
	memcpy(p, &h, sizeof(h));
	p += sizeof(h);
	memcpy(p, s->xsave, s->xsave_len);
	p += s->xsave_len;
	memcpy(p, &s->lapic, sizeof(s->lapic));
	p += sizeof(s->lapic);
	memcpy(p, s->msrs, msrs);
	return need;
}

int vcpu_early_decode(const void *buf, size_t len, uint32_t *vcpu_id, struct vcpu_state *s)
{
	const uint8_t *p = buf;
	struct early_hdr h;
	size_t msrs;

	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, p, sizeof(h));
	if (h.magic != EARLY_MAGIC || h.version != EARLY_VERSION ||
	    h.lapic_len != sizeof(s->lapic) || h.xsave_len > VCPU_XSAVE_MAX ||
	    h.nr_msrs > VCPU_MAX_MSRS || h.have_tsc_offset > 1)
		return -EINVAL;
	msrs = (size_t)h.nr_msrs * sizeof(s->msrs[0]);
	if (len != sizeof(h) + h.xsave_len + h.lapic_len + msrs)
		return -EINVAL;
	p += sizeof(h);
	s->xsave_len = h.xsave_len;
	memcpy(s->xsave, p, h.xsave_len);
	p += h.xsave_len;
	memcpy(&s->lapic, p, sizeof(s->lapic));
	p += sizeof(s->lapic);
	s->nr_msrs = h.nr_msrs;
	memcpy(s->msrs, p, msrs);
	s->have_tsc_offset = (uint8_t)h.have_tsc_offset;
	s->tsc_offset = h.tsc_offset;
	*vcpu_id = h.vcpu_id;
	return 0;
}

