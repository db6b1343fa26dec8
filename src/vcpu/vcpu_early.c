/* vcpu_early.c — a vCPU's early state, one message per part (live update,
 * see cpr/early.c): each part goes out as soon as the old side has
 * read it, and the new side sets it while the old side still reads the next.
 * Parts, in the order they are read and set: XSAVE, the LAPIC, the MSRs
 * (with the TSC offset), the registers (MP state, registers, special
 * registers, events, XCRs, debug registers). Before the stop, one more may
 * come, laid out as the MSRs part: the MSRs as they stood at an exit
 * (VCPU_EARLY_MSRS_AHEAD); a binary that does not know it drops it.
 * Layout: a fixed header, then the part's bytes. The decoder trusts
 * nothing: every length is bounded, fields a part does not use must be
 * zero, and the message must be exactly as long as its header says.
 * Version 1 (one message with XSAVE, LAPIC and MSRs) is no longer read: a
 * message that is not understood only costs time, the stream has it all. */
#include <errno.h>
#include <string.h>

#include "vcpu/vcpu_state.h"

#define EARLY_MAGIC 0x45525043u /* "CPRE" */
#define EARLY_VERSION 2

struct early_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t vcpu_id;
	uint32_t part;
	uint32_t len;   /* bytes after the header */
	uint32_t count; /* XSAVE: bytes; MSRS: entries; else 0 */
	uint32_t have_tsc_offset; /* MSRS only */
	uint64_t tsc_offset;      /* MSRS only */
};

_Static_assert(sizeof(struct early_hdr) == VCPU_EARLY_HDR, "early header size");

/* The registers part, as KVM's own structs (none has implicit padding,
 * nor has this one: every byte of the message is a field). */
struct early_regs {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_vcpu_events events;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs debugregs;
	struct kvm_mp_state mp_state;
	uint32_t zero;
};

_Static_assert(sizeof(struct early_regs) ==
		       sizeof(struct kvm_regs) + sizeof(struct kvm_sregs) +
			       sizeof(struct kvm_vcpu_events) + sizeof(struct kvm_xcrs) +
			       sizeof(struct kvm_debugregs) + sizeof(struct kvm_mp_state) + 4,
	       "early registers: no padding");

_Static_assert(sizeof(struct early_regs) <= VCPU_XSAVE_MAX &&
		       sizeof(struct kvm_lapic_state) <= VCPU_XSAVE_MAX &&
		       VCPU_MAX_MSRS * sizeof(struct kvm_msr_entry) <= VCPU_XSAVE_MAX,
	       "XSAVE is the largest part (VCPU_EARLY_MAX)");

size_t vcpu_early_encode(const struct vcpu_state *s, uint32_t vcpu_id, enum vcpu_early_part part,
			 void *buf, size_t len)
{
	struct early_hdr h = { .magic = EARLY_MAGIC, .version = EARLY_VERSION,
			       .vcpu_id = (uint16_t)vcpu_id, .part = part };
	struct early_regs r;
	const void *body;
	uint8_t *p = buf;

	if (vcpu_id > UINT16_MAX)
		return 0;
	switch (part) {
	case VCPU_EARLY_XSAVE:
		if (s->xsave_len > VCPU_XSAVE_MAX)
			return 0;
		h.len = h.count = s->xsave_len;
		body = s->xsave;
		break;
	case VCPU_EARLY_LAPIC:
		h.len = sizeof(s->lapic);
		body = &s->lapic;
		break;
	case VCPU_EARLY_MSRS:
	case VCPU_EARLY_MSRS_AHEAD:
		if (s->nr_msrs > VCPU_MAX_MSRS || s->have_tsc_offset > 1)
			return 0;
		h.count = s->nr_msrs;
		h.len = s->nr_msrs * (uint32_t)sizeof(s->msrs[0]);
		h.have_tsc_offset = s->have_tsc_offset;
		h.tsc_offset = s->have_tsc_offset ? s->tsc_offset : 0;
		body = s->msrs;
		break;
	case VCPU_EARLY_REGS:
		if (s->have_sregs2)
			return 0; /* PAE paging: the PDPTRs would be missing */
		memset(&r, 0, sizeof(r));
		r.regs = s->regs;
		r.sregs = s->sregs;
		r.events = s->events;
		r.xcrs = s->xcrs;
		r.debugregs = s->debugregs;
		r.mp_state = s->mp_state;
		h.len = sizeof(r);
		body = &r;
		break;
	default:
		return 0;
	}
	if (sizeof(h) + h.len > len)
		return 0;
	memcpy(p, &h, sizeof(h));
	memcpy(p + sizeof(h), body, h.len);
	return sizeof(h) + h.len;
}

int vcpu_early_decode(const void *buf, size_t len, uint32_t *vcpu_id, enum vcpu_early_part *part,
		      struct vcpu_state *s)
{
	const uint8_t *p = buf;
	struct early_hdr h;
	struct early_regs r;

	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, p, sizeof(h));
	if (h.magic != EARLY_MAGIC || h.version != EARLY_VERSION || len != sizeof(h) + h.len)
		return -EINVAL;
	if (h.part != VCPU_EARLY_MSRS && h.part != VCPU_EARLY_MSRS_AHEAD &&
	    (h.have_tsc_offset || h.tsc_offset))
		return -EINVAL;
	p += sizeof(h);
	switch (h.part) {
	case VCPU_EARLY_XSAVE:
		if (h.count > VCPU_XSAVE_MAX || h.len != h.count)
			return -EINVAL;
		s->xsave_len = h.count;
		memcpy(s->xsave, p, h.count);
		break;
	case VCPU_EARLY_LAPIC:
		if (h.count || h.len != sizeof(s->lapic))
			return -EINVAL;
		memcpy(&s->lapic, p, sizeof(s->lapic));
		break;
	case VCPU_EARLY_MSRS:
	case VCPU_EARLY_MSRS_AHEAD:
		if (h.count > VCPU_MAX_MSRS || h.len != h.count * sizeof(s->msrs[0]) ||
		    h.have_tsc_offset > 1 || (!h.have_tsc_offset && h.tsc_offset))
			return -EINVAL;
		s->nr_msrs = h.count;
		memcpy(s->msrs, p, h.len);
		s->have_tsc_offset = (uint8_t)h.have_tsc_offset;
		s->tsc_offset = h.tsc_offset;
		break;
	case VCPU_EARLY_REGS:
		if (h.count || h.len != sizeof(r))
			return -EINVAL;
		memcpy(&r, p, sizeof(r));
		if (r.zero)
			return -EINVAL;
		s->mp_state = r.mp_state;
		s->regs = r.regs;
		s->have_sregs2 = 0;
		s->sregs = r.sregs;
		s->events = r.events;
		s->xcrs = r.xcrs;
		s->debugregs = r.debugregs;
		break;
	default:
		return -EINVAL;
	}
	*vcpu_id = h.vcpu_id;
	*part = (enum vcpu_early_part)h.part;
	return 0;
}

/* --- a whole vCPU: the four parts, one after the other --------------------
 * What a live update's stream carries when the new side has the early
 * messages already (cpr/early.c): their very bytes, so the new
 * side compares instead of decoding. */

_Static_assert(sizeof(struct early_regs) <= VCPU_EARLY_REGS_MAX, "VCPU_EARLY_REGS_MAX");

size_t vcpu_early_encode_all(const struct vcpu_state *s, uint32_t vcpu_id, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t off = 0;

	for (int part = VCPU_EARLY_XSAVE; part <= VCPU_EARLY_REGS; part++) {
		size_t n = vcpu_early_encode(s, vcpu_id, (enum vcpu_early_part)part, p + off,
					     len - off);
		if (!n)
			return 0;
		off += n;
	}
	return off;
}

int vcpu_early_decode_all(const void *buf, size_t len, uint32_t vcpu_id, struct vcpu_state *s)
{
	const uint8_t *p = buf;
	size_t off = 0;

	for (int want = VCPU_EARLY_XSAVE; want <= VCPU_EARLY_REGS; want++) {
		struct early_hdr h;
		enum vcpu_early_part part;
		uint32_t id;

		if (len - off < sizeof(h))
			return -EINVAL;
		memcpy(&h, p + off, sizeof(h));
		if (h.len > len - off - sizeof(h))
			return -EINVAL;
		if (vcpu_early_decode(p + off, sizeof(h) + h.len, &id, &part, s) < 0 ||
		    id != vcpu_id || (int)part != want)
			return -EINVAL;
		off += sizeof(h) + h.len;
	}
	return off == len ? 0 : -EINVAL;
}
