/* vcpu_state.h — a vCPU's complete architectural state as KVM exposes it,
 * and the VM-wide in-kernel devices (PIC, IOAPIC, PIT, kvmclock).
 * Capture requires the vCPU to be parked (vm_pause): KVM's vCPU ioctls
 * serialize on the vCPU, and a parked vCPU has no I/O exit outstanding. */
#ifndef CPRVM_VCPU_STATE_H
#define CPRVM_VCPU_STATE_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stdint.h>

#define VCPU_MAX_MSRS 512
#define VCPU_XSAVE_MAX (64 * 1024)

struct vcpu_state {
	struct kvm_mp_state mp_state;
	struct kvm_regs regs;
	uint8_t have_sregs2; /* which of sregs/sregs2 is valid */
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	uint32_t xsave_len; /* bytes valid in xsave */
	uint8_t xsave[VCPU_XSAVE_MAX];
	struct kvm_xcrs xcrs;
	uint32_t nr_msrs;
	struct kvm_msr_entry msrs[VCPU_MAX_MSRS];
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_debugregs debugregs;
	/* Guest TSC = host TSC + offset (KVM_VCPU_TSC_OFFSET). Restored only
	 * on the same host (live update), where it keeps the guest's TSC on
	 * real time; a snapshot restores the TSC MSR instead (time frozen
	 * while saved). */
	uint8_t have_tsc_offset;
	uint64_t tsc_offset;
};

struct vm_kvm_state {
	struct kvm_irqchip pic_master, pic_slave, ioapic;
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

struct vcpu;
struct vm;
struct state_desc;

/* Stream tables: section "vcpu/N" and sections "irqchip", "pit", "clock". */
extern const struct state_desc vcpu_state_desc;
extern const struct state_desc irqchip_state_desc;
extern const struct state_desc pit_state_desc;
extern const struct state_desc clock_state_desc;

/* Indices of the MSRs that can be read on this host (KVM_GET_MSR_INDEX_LIST
 * filtered by a probe read), computed once per VM. */
int vcpu_msr_list_probe(struct vm *vm, int vcpu_fd, uint32_t **out, uint32_t *nr);
/* The same into vm->msr_indices, once (safe from every vCPU thread at once). */
int vcpu_msr_list_ensure(struct vcpu *v);

int vcpu_state_save(struct vcpu *v, struct vcpu_state *s);
int vcpu_state_load(struct vcpu *v, const struct vcpu_state *s, bool same_host);
/* The same, on the vCPU's own thread while it is parked (vcpu_jobs_post):
 * fewer ioctls (registers through kvm_run, KVM_CAP_SYNC_REGS; on restore,
 * what equals the fresh vCPU's base is not set again). */
int vcpu_state_capture_parked(struct vcpu *v, struct vcpu_state *s);
/* As vcpu_state_capture_parked, but XSAVE, the LAPIC, the MSRs and the TSC
 * offset are read first and handed to early(ctx, v, s) at once (a live
 * update sends them ahead, for the new side to set while the rest is read:
 * vcpu_state_apply_early); MP state comes before them. */
int vcpu_state_capture_parked_early(struct vcpu *v, struct vcpu_state *s,
				    void (*early)(void *ctx, struct vcpu *v,
						  const struct vcpu_state *s),
				    void *ctx);
/* Sets what the early callback was given (XSAVE, LAPIC, MSRs, TSC offset;
 * s holds those only) into v, from any thread of this process while v's
 * thread is parked, and keeps a copy in v->early. */
int vcpu_state_apply_early(struct vcpu *v, const struct vcpu_state *s);
/* The early part as one message and back. encode: bytes written into buf
 * (0 if it does not fit); decode: 0, or -EINVAL for anything malformed. */
#define VCPU_EARLY_HDR 32
#define VCPU_EARLY_MAX                                                        \
	(VCPU_EARLY_HDR + VCPU_XSAVE_MAX + sizeof(struct kvm_lapic_state) +    \
	 VCPU_MAX_MSRS * sizeof(struct kvm_msr_entry))
size_t vcpu_early_encode(const struct vcpu_state *s, uint32_t vcpu_id, void *buf, size_t len);
int vcpu_early_decode(const void *buf, size_t len, uint32_t *vcpu_id, struct vcpu_state *s);
int vcpu_state_apply_parked(struct vcpu *v, const struct vcpu_state *s, bool same_host);
/* Reads a fresh vCPU's base (before its restore, off the critical path). */
int vcpu_state_read_base(struct vcpu *v);
int vm_kvm_state_save(struct vm *vm, struct vm_kvm_state *s);
int vm_kvm_state_load(struct vm *vm, const struct vm_kvm_state *s, bool same_host);

#endif
