/* vcpu_state.h — a vCPU's complete architectural state as KVM exposes it,
 * and the VM-wide in-kernel devices (PIC, IOAPIC, PIT, kvmclock).
 * Capture requires the vCPU to be parked (vm_pause): KVM's vCPU ioctls
 * serialize on the vCPU, and a parked vCPU has no I/O exit outstanding. */
#ifndef CPRVM_VCPU_STATE_H
#define CPRVM_VCPU_STATE_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
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
struct vcpus;
struct state_desc;

/* Stream tables: section "vcpu/N" and sections "irqchip", "pit", "clock". */
extern const struct state_desc vcpu_state_desc;
extern const struct state_desc irqchip_state_desc;
extern const struct state_desc pit_state_desc;
extern const struct state_desc clock_state_desc;

/* Indices of the MSRs that can be read on this host (KVM_GET_MSR_INDEX_LIST
 * filtered by a probe read), computed once per VM. */
int vcpu_msr_list_probe(struct vcpus *vs, int vcpu_fd, uint32_t **out, uint32_t *nr);
/* The same into vs->msr_indices, once (safe from every vCPU thread at once). */
int vcpu_msr_list_ensure(struct vcpu *v);

int vcpu_state_save(struct vcpu *v, struct vcpu_state *s);
int vcpu_state_load(struct vcpu *v, const struct vcpu_state *s, bool same_host);
/* After vcpu_state_load failed: sets the parts of s again one by one and
 * writes into buf which one KVM refuses and what in it this host lacks (an
 * XSAVE component, an MSR, a control-register bit). Returns the message's
 * length, 0 when every part is accepted alone (buf empty). */
int vcpu_state_refusal(struct vcpu *v, const struct vcpu_state *s, char *buf, size_t len);
/* KVM_SET_MSRS of buf's first n entries (buf is reused), skipping a refused
 * MSR the vCPU holds already (nothing is lost). 0, or -EIO when KVM refuses
 * one it does not hold, or -errno. */
int vcpu_set_msrs(struct vcpu *v, struct kvm_msrs *buf, uint32_t n);
/* The same, on the vCPU's own thread while it is parked (vcpu_jobs_post):
 * fewer ioctls (registers through kvm_run, KVM_CAP_SYNC_REGS; on restore,
 * what equals the fresh vCPU's base is not set again). */
int vcpu_state_capture_parked(struct vcpu *v, struct vcpu_state *s);
/* A live update's early state (vcpu_early.c, cpr/early.c): the
 * parts of a vCPU's state in the order they are read and set. */
enum vcpu_early_part {
	VCPU_EARLY_XSAVE = 1,
	VCPU_EARLY_LAPIC = 2,
	VCPU_EARLY_MSRS = 3, /* and the TSC offset */
	VCPU_EARLY_REGS = 4, /* MP state, registers, special registers, events, XCRs, DRs */
	/* Not one of the parts above: the MSRs and TSC offset as they stood
	 * at an exit before the stop (vcpu_state_read_ahead), for the new
	 * side to set before it (vcpu_state_apply_ahead). */
	VCPU_EARLY_MSRS_AHEAD = 5,
};
#define VCPU_EARLY_PARTS 4
/* As vcpu_state_capture_parked, but each part is handed to early(ctx, v,
 * s, part) as soon as it is read (a live update sends it ahead, for the
 * new side to set while the next is read: vcpu_state_apply_early). MP
 * state comes first; the registers part is not sent for PAE paging
 * outside long mode (its PDPTRs are not in it). */
int vcpu_state_capture_parked_early(struct vcpu *v, struct vcpu_state *s,
				    void (*early)(void *ctx, struct vcpu *v,
						  const struct vcpu_state *s,
						  enum vcpu_early_part part),
				    void *ctx);
/* Sets one part (from vcpu_early_decode: s holds that part) into v, from
 * the process's main thread while v's thread is parked; the registers go
 * in through a job on v's thread (a KVM_RUN that enters no guest). Parts
 * must come in order, each set once: anything else, or a part KVM
 * refuses, ends the early state for that vCPU (-EPROTO and the like) and
 * the restore sets everything from the stream. A copy of what was set is
 * kept in v->lu.early, and the message it came in (msg, msg_len) appended to
 * v->lu.early_msgs when there is room (vcpu_state_early_same). */
int vcpu_state_apply_early(struct vcpu *v, enum vcpu_early_part part, const struct vcpu_state *s,
			   const void *msg, size_t msg_len);
/* Old side, on v's thread at an exit before the stop (the guest running):
 * the MSRs and the TSC offset into s (nr_msrs, msrs, tsc_offset). */
int vcpu_state_read_ahead(struct vcpu *v, struct vcpu_state *s);
/* New side, before the stop, from the main thread: sets what
 * vcpu_state_read_ahead read (s), but the late MSRs (the TSC, its deadline,
 * the kvmclock wall clock), and keeps a copy in v->lu.ahead. When the stream's
 * MSRs part then says the same, vcpu_state_apply_early sets only the late
 * MSRs that are not zero: usually no ioctl in place of two. A failure only
 * means the blackout sets them all, as without it. */
int vcpu_state_apply_ahead(struct vcpu *v, const struct vcpu_state *s);
/* Whether the early state set all of s (the stream's), exactly: then the
 * restore has nothing left to do for v. Call once v's jobs are done. */
bool vcpu_state_early_complete(struct vcpu *v, const struct vcpu_state *s);
/* The same, against the stream's copy of the early messages
 * (vcpu_early_encode_all): their bytes are compared, nothing decoded. */
bool vcpu_state_early_same(struct vcpu *v, const void *all, size_t len);
/* One part as a message and back. encode: bytes written into buf (0 if it
 * does not fit, or the part cannot be sent); decode: 0 and the part (its
 * fields of s set, nothing else), or -EINVAL for anything malformed. */
#define VCPU_EARLY_HDR 32
#define VCPU_EARLY_MAX (VCPU_EARLY_HDR + VCPU_XSAVE_MAX) /* XSAVE is the largest part */
size_t vcpu_early_encode(const struct vcpu_state *s, uint32_t vcpu_id, enum vcpu_early_part part,
			 void *buf, size_t len);
int vcpu_early_decode(const void *buf, size_t len, uint32_t *vcpu_id, enum vcpu_early_part *part,
		      struct vcpu_state *s);
/* All four parts, in order, back to back: what a live update's stream
 * carries for a vCPU whose early messages the new side has (section
 * "vcpu-early/N", docs/stream-format.md). encode: bytes written (0 if a
 * part cannot be sent, e.g. PAE paging, or buf is too small); decode: 0
 * when buf is exactly the four parts of vCPU vcpu_id in order (all of s's
 * fields set), else -EINVAL. */
#define VCPU_EARLY_REGS_MAX 2048
#define VCPU_EARLY_ALL_MAX                                                                  \
	(VCPU_EARLY_PARTS * VCPU_EARLY_HDR + VCPU_XSAVE_MAX + sizeof(struct kvm_lapic_state) + \
	 VCPU_MAX_MSRS * sizeof(struct kvm_msr_entry) + VCPU_EARLY_REGS_MAX)
size_t vcpu_early_encode_all(const struct vcpu_state *s, uint32_t vcpu_id, void *buf, size_t len);
int vcpu_early_decode_all(const void *buf, size_t len, uint32_t vcpu_id, struct vcpu_state *s);
int vcpu_state_apply_parked(struct vcpu *v, const struct vcpu_state *s, bool same_host);
/* Reads a fresh vCPU's base (before its restore, off the critical path). */
int vcpu_state_read_base(struct vcpu *v);
int vm_kvm_state_save(struct vcpus *vs, struct vm_kvm_state *s);
int vm_kvm_state_load(struct vcpus *vs, const struct vm_kvm_state *s, bool same_host);

#endif
