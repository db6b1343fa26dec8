/* vcpu_state_priv.h — the parts of a vCPU's save and load (vcpu_state.c)
 * that the parked, early and ahead paths (vcpu_parked.c) reuse. Each
 * returns 0 or -errno; v must not be in KVM_RUN. */
#ifndef CPRVM_VCPU_STATE_PRIV_H
#define CPRVM_VCPU_STATE_PRIV_H

#include <stdbool.h>
#include <stdint.h>

struct vcpu;
struct vcpu_state;

/* Saving: the head (the MSR list, a cleared state, MP state first), then
 * after the registers the rest (XSAVE, XCRs, MSRs, LAPIC, debug registers,
 * TSC offset); events come last, from the caller. */
int vcpu_save_head(struct vcpu *v, struct vcpu_state *s);
int vcpu_save_rest(struct vcpu *v, struct vcpu_state *s);
int vcpu_save_xsave(struct vcpu *v, struct vcpu_state *s);
int vcpu_save_msrs(struct vcpu *v, struct vcpu_state *s);
void vcpu_save_tsc_offset(struct vcpu *v, struct vcpu_state *s);

/* Loading XSAVE, XCRs, debug registers, LAPIC, MSRs and TSC offset, in
 * that order; skip_base: leave alone what equals the fresh vCPU's base;
 * skip_early: what the early state set already. */
int vcpu_load_rest(struct vcpu *v, const struct vcpu_state *s, bool same_host, bool skip_base,
		   bool skip_early);
int vcpu_load_xsave(struct vcpu *v, const struct vcpu_state *s);
int vcpu_load_tsc_offset(struct vcpu *v, const struct vcpu_state *s, bool same_host);

/* The MSRs that count while the guest runs, or whose setting acts at once
 * (vcpu_state.c says which): left to the blackout when the others are set
 * ahead of the stop. */
bool vcpu_msr_late(uint32_t index);
/* Which of a state's MSRs vcpu_load_msrs sets: all; all but the late ones
 * (set ahead of the stop); the late ones that are not zero, which a fresh
 * vCPU does not hold (the TSC aside: its offset is set). */
enum msrs_which { MSRS_ALL, MSRS_NOT_LATE, MSRS_LATE };
int vcpu_load_msrs(struct vcpu *v, const struct vcpu_state *s, enum msrs_which which);

#endif
