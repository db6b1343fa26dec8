/* vcpu_parked.c — a vCPU's state read and set on its own thread while it
 * is parked (vcpu_jobs_post), and what a live update adds to that: parts
 * sent early as they are read, set early as they come, and the MSRs read
 * and set ahead of the stop. vcpu_state.c has the plain save and load
 * these build on.
 *
 * Each vCPU ioctl pays for loading and putting the vCPU, whatever it does,
 * and more from a CPU the vCPU did not last run on. KVM_RUN can carry
 * registers, special registers and events both ways in kvm_run
 * (KVM_CAP_SYNC_REGS): one ioctl in place of three. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "lib/trace.h"
#include "state/state.h"
#include "vcpu/vcpu_state.h"
#include "vcpu/vcpu_state_priv.h"
#include "vcpu/vcpu.h"

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
	struct vcpus *vs = v->vs;
	struct kvm_sync_regs *sr = &v->run->s.regs;
	int ret;

	if (!vs->have_sync_regs)
		return vcpu_state_save(v, s);
	ret = vcpu_save_head(v, s);
	if (ret < 0)
		return ret;
	/* In the order the new side sets them (vcpu_load_rest, then the
	 * registers); a parked vCPU's state does not change in between. */
	if ((ret = vcpu_save_xsave(v, s)) < 0)
		return ret;
	if (early)
		early(ctx, v, s, VCPU_EARLY_XSAVE);
	if (ioctl(v->fd, KVM_GET_LAPIC, &s->lapic) < 0)
		return -errno;
	if (early)
		early(ctx, v, s, VCPU_EARLY_LAPIC);
	if ((ret = vcpu_save_msrs(v, s)) < 0)
		return ret;
	vcpu_save_tsc_offset(v, s);
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
	if (!v->regs_fresh || vs->nr_vcpus > 1) {
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
	if (vs->have_sregs2 && sregs_paging_needs_pdptrs(s->sregs.cr0, s->sregs.cr4,
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

	if (ret < 0 || (ret = vcpu_save_msrs(v, s)) < 0)
		return ret;
	vcpu_save_tsc_offset(v, s);
	return s->have_tsc_offset ? 0 : -EOPNOTSUPP;
}

int vcpu_state_apply_ahead(struct vcpu *v, const struct vcpu_state *s)
{
	struct vcpu_ahead *a = v->lu.ahead;
	int ret;

	if (!s->have_tsc_offset || s->nr_msrs > VCPU_MAX_MSRS)
		return -EINVAL;
	if (!a && !(a = v->lu.ahead = malloc(sizeof(*a))))
		return -ENOMEM;
	a->nr_msrs = 0;
	/* A fresh vCPU's late MSRs are zero: where the guest's are not,
	 * the blackout sets them, after the LAPIC. */
	if ((ret = vcpu_load_msrs(v, s, MSRS_NOT_LATE)) < 0 || (ret = vcpu_load_tsc_offset(v, s, true)) < 0)
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
	const struct vcpu_ahead *a = v->lu.ahead;

	if (!a || !a->nr_msrs || a->nr_msrs != s->nr_msrs || !s->have_tsc_offset ||
	    a->tsc_offset != s->tsc_offset)
		return false;
	for (uint32_t i = 0; i < s->nr_msrs; i++)
		if (a->msrs[i].index != s->msrs[i].index ||
		    (!vcpu_msr_late(s->msrs[i].index) && a->msrs[i].data != s->msrs[i].data))
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
 * kvm_run. A job on the vCPU's thread, or (vs->early_regs_here) straight
 * from the thread that took the part: a KVM_RUN from a thread other than
 * the vCPU's costs a little more, and so does the vCPU's next KVM_RUN,
 * back on its own thread and CPU: less than waiting for the vCPU's thread
 * to get a CPU for a job. */
static int early_regs_job(struct vcpu *v, void *arg)
{
	struct vcpu_state *e = v->lu.early;
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
	__atomic_store_n(&v->lu.early_regs_ok, ret == 0, __ATOMIC_RELEASE);
	return 0; /* a failure only means the restore does it all */
}

int vcpu_state_apply_early(struct vcpu *v, enum vcpu_early_part part, const struct vcpu_state *s,
			   const void *msg, size_t msg_len)
{
	struct vcpu_state *e = v->lu.early;
	bool ahead;
	int ret = 0;

	if (!e)
		return -ENOMEM;
	if (v->lu.early_broken || (int)part != v->lu.early_parts + 1) {
		v->lu.early_broken = true;
		return -EPROTO;
	}
	switch (part) {
	case VCPU_EARLY_XSAVE:
		if ((ret = vcpu_load_xsave(v, s)) == 0) {
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
			ret = vcpu_load_msrs(v, s, MSRS_LATE);
		else if ((ret = vcpu_load_msrs(v, s, MSRS_ALL)) == 0)
			ret = vcpu_load_tsc_offset(v, s, true);
		v->lu.msrs_ahead = ahead && ret == 0;
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
		if (!v->base.valid || !v->vs->have_sync_regs ||
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
		v->lu.early_regs_ok = false;
		if (v->vs->early_regs_here)
			early_regs_job(v, NULL);
		else
			vcpu_job_post(v, early_regs_job, NULL);
		break;
	default:
		break;
	}
	if (ret < 0) {
		v->lu.early_broken = true;
		return ret;
	}
	v->lu.early_parts = part;
	if (part == VCPU_EARLY_XSAVE)
		v->lu.early_msgs_len = 0;
	if (v->lu.early_msgs && v->lu.early_msgs_len <= VCPU_EARLY_ALL_MAX &&
	    msg_len <= VCPU_EARLY_ALL_MAX - v->lu.early_msgs_len) {
		memcpy(v->lu.early_msgs + v->lu.early_msgs_len, msg, msg_len);
		v->lu.early_msgs_len += msg_len;
	} else {
		v->lu.early_msgs_len = SIZE_MAX; /* never the same */
	}
	return 0;
}

/* Every part was set early, the registers' job included. */
static bool early_all_set(struct vcpu *v)
{
	return v->lu.early && !v->lu.early_broken && v->lu.early_parts == VCPU_EARLY_PARTS &&
	       __atomic_load_n(&v->lu.early_regs_ok, __ATOMIC_ACQUIRE);
}

bool vcpu_state_early_complete(struct vcpu *v, const struct vcpu_state *s)
{
	return early_all_set(v) && early_matches(v->lu.early, s, VCPU_EARLY_PARTS);
}

bool vcpu_state_early_same(struct vcpu *v, const void *all, size_t len)
{
	return early_all_set(v) && v->lu.early_msgs && v->lu.early_msgs_len == len &&
	       !memcmp(v->lu.early_msgs, all, len);
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
	struct vcpus *vs = v->vs;
	struct kvm_sync_regs *sr = &v->run->s.regs;
	const bool base = v->base.valid;
	struct kvm_sregs sregs;
	bool sync, early;
	int ret;

	if (!vs->have_sync_regs || !base)
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
	early = v->lu.early && !v->lu.early_broken && v->lu.early_parts >= VCPU_EARLY_MSRS && sync &&
		same_host && !memcmp(&s->mp_state, &v->base.mp_state, sizeof(s->mp_state)) &&
		early_matches(v->lu.early, s, VCPU_EARLY_MSRS);
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
