/* early.c — early vCPU state: the blackout's reads and writes overlapped.
 *
 * Reading a vCPU's state costs 8 ioctls and setting it 5 (XSAVE, LAPIC,
 * MSRs, TSC offset, then the registers through kvm_run), tens of
 * microseconds each, so the two overlap part by part: each old vCPU thread
 * sends every part on the "vcpu-early" channel (a SOCK_SEQPACKET pair whose
 * new end travels with phase 1's fds; vcpu_early.c encodes the messages) as
 * soon as it has read it, and the new side's main thread sets each as it
 * comes (cpr_take_early); the registers through the new vCPU thread, which
 * enters the guest with them once the old one is done with the CPU they
 * share. The stream is parsed meanwhile; the restore then only compares
 * each vCPU's early state with the stream's and sets nothing when all is
 * equal (snapshot.c, apply_on_vcpu_threads).
 *
 * Nothing depends on it: without the channel, or with a message lost, out
 * of order or refused, the restore sets everything the stream holds. With
 * CPR_CAP_EARLY_SECTIONS (offered by the old side in phase 1, taken with
 * READY_EARLY) a vCPU's stream section is the bytes of its early messages
 * ("vcpu-early/N"), which the new side compares with those it set.
 *
 * Ahead of the stop: at each vCPU's first exit after phase 1, while the
 * guest still runs, the old side reads the MSRs and TSC offset and sends
 * them (cpr_early_ahead), for the new side to set before it answers. It
 * costs that exit ~25 us; a guest that does not exit meanwhile goes
 * without. Set after the answer, they would come too late to help. */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/trace.h"

/* --- old side -------------------------------------------------------------- */

void cpr_early_out_init(struct cpr_early_out *o, struct vcpu_state *s, int fd)
{
	o->s = s;
	cpr_touch_pages(s, sizeof(*s)); /* now, not in the blackout */
	o->fd = fd;
	o->skip_lapic = test_fault(TEST_FAULT_EARLY_SKIP_LAPIC);
	o->wrong_regs = test_fault(TEST_FAULT_EARLY_WRONG_REGS);
	o->wrong_ahead_msr = test_fault(TEST_FAULT_AHEAD_WRONG_MSR);
	o->wrong_ahead_tsc = test_fault(TEST_FAULT_AHEAD_WRONG_TSC);
	o->buf = fd >= 0 ? malloc(VCPU_EARLY_MAX) : NULL;
	if (o->buf)
		cpr_touch_pages(o->buf, VCPU_EARLY_MAX);
}

void cpr_early_out_free(struct cpr_early_out *o)
{
	free(o->buf);
	o->buf = NULL;
}

void cpr_early_send(void *ctx, struct vcpu *v, const struct vcpu_state *s,
		    enum vcpu_early_part part)
{
	struct cpr_early_out *a = ctx;
	size_t n;

	if (a->fd < 0 || !a->buf)
		return;
	if (part == VCPU_EARLY_LAPIC && a->skip_lapic)
		return;
	n = vcpu_early_encode(s, (uint32_t)v->id, part, a->buf, VCPU_EARLY_MAX);
	if (n && part == VCPU_EARLY_REGS && a->wrong_regs)
		a->buf[VCPU_EARLY_HDR + offsetof(struct kvm_regs, rip)] ^= 1;
	/* Never waits: without a reader the state goes in the stream only. */
	if (n && send(a->fd, a->buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
		trace_mark("early-sent");
}

int cpr_early_ahead(struct vcpu *v, void *arg)
{
	struct cpr_early_out *a = arg;
	size_t n;

	if (vcpu_state_read_ahead(v, a->s) < 0)
		return 0;
	for (uint32_t i = 0; a->wrong_ahead_msr && i < a->s->nr_msrs; i++)
		if (a->s->msrs[i].index == 0x175) /* SYSENTER_ESP */
			a->s->msrs[i].data += 0x1000;
	if (a->wrong_ahead_tsc)
		a->s->tsc_offset += 1ull << 32;
	n = vcpu_early_encode(a->s, (uint32_t)v->id, VCPU_EARLY_MSRS_AHEAD, a->buf, VCPU_EARLY_MAX);
	if (n && send(a->fd, a->buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
		trace_mark("ahead-sent");
	return 0;
}

/* --- new side -------------------------------------------------------------- */

/* The channel, if the old side sent one, and buffers touched now, not in
 * the blackout: the messages' room, and each vCPU's copy of what it set. */
void cpr_early_in_init(struct cpr_early_in *in, struct vm *vm, const struct cpr_state *cs)
{
	in->fd = cpr_claim_fd(cs, CPR_FD_VCPU_EARLY);
	in->buf = NULL;
	in->tmp = NULL;
	if (in->fd < 0)
		return;
	in->buf = malloc(VCPU_EARLY_MAX);
	in->tmp = malloc(sizeof(*in->tmp));
	for (int i = 0; in->buf && in->tmp && i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];

		if (!v->lu.early && (v->lu.early = calloc(1, sizeof(*v->lu.early))))
			cpr_touch_pages(v->lu.early, sizeof(*v->lu.early));
		if (!v->lu.early_msgs && (v->lu.early_msgs = malloc(VCPU_EARLY_ALL_MAX)))
			cpr_touch_pages(v->lu.early_msgs, VCPU_EARLY_ALL_MAX);
	}
	if (!in->buf || !in->tmp) {
		cpr_early_in_free(in);
	} else {
		cpr_touch_pages(in->buf, VCPU_EARLY_MAX);
		cpr_touch_pages(in->tmp, sizeof(*in->tmp));
	}
}

void cpr_early_in_free(struct cpr_early_in *in)
{
	if (in->fd >= 0)
		close(in->fd);
	in->fd = -1;
	free(in->buf);
	free(in->tmp);
	in->buf = NULL;
	in->tmp = NULL;
}

/* What early-state messages have come, each set into its vCPU. A message
 * that does not parse, or does not set, is dropped: the stream has the
 * same, and the restore then sets it all. The MSRs read ahead of the stop
 * are set only before the answer (answered false: none of the other parts
 * comes before it). */
void cpr_take_early(const struct cpr_early_in *in, struct vm *vm, bool answered)
{
	uint8_t *buf = in->buf;
	struct vcpu_state *tmp = in->tmp;

	for (;;) {
		ssize_t n = recv(in->fd, buf, VCPU_EARLY_MAX, MSG_DONTWAIT);
		enum vcpu_early_part part;
		uint32_t id;
		int ret;

		if (n <= 0)
			return;
		if (vcpu_early_decode(buf, (size_t)n, &id, &part, tmp) < 0 ||
		    id >= (uint32_t)vm->cpus.nr_vcpus) {
			pr_debug("live update: a malformed early state message (%zd bytes)", n);
			continue;
		}
		if (part == VCPU_EARLY_MSRS_AHEAD) {
			if (answered)
				continue;
			if (vcpu_state_apply_ahead(&vm->cpus.vcpus[id], tmp) == 0)
				trace_mark("ahead-set");
			else
				pr_debug("live update: vCPU %u: the MSRs read ahead could not be set",
					 id);
			continue;
		}
		ret = vcpu_state_apply_early(&vm->cpus.vcpus[id], part, tmp, buf, (size_t)n);
		if (ret < 0)
			pr_debug("live update: vCPU %u early state, part %d: %s", id, (int)part,
				 strerror(-ret));
		else
			trace_mark(part == VCPU_EARLY_REGS ? "early-regs-posted" : "early-set");
		if (vm->cpus.place_late)
			cpr_place_vcpus_late(vm); /* the first time only */
	}
}

/* Waits on the CPU until sock is readable, for at most max_us, setting
 * early state as it comes. */
void cpr_wait_state(int sock, const struct cpr_early_in *in, struct vm *vm, unsigned max_us)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	uint64_t end = mono_ns() + (uint64_t)max_us * 1000;

	for (;;) {
		if (in->fd >= 0)
			cpr_take_early(in, vm, true);
		if (poll(&p, 1, 0) != 0 || mono_ns() >= end)
			break;
		sched_yield();
	}
	/* Each vCPU's early message went out before the stream did. */
	if (in->fd >= 0)
		cpr_take_early(in, vm, true);
}

/* Whether to take the vCPUs' state in phase 2 as the early messages' bytes
 * (CPR_CAP_EARLY_SECTIONS): the old side offers it, and every vCPU keeps the
 * messages it sets, to compare. Tests: "new-classic" plays a new side
 * without the capability. */
bool cpr_early_sections_ok(struct vm *vm, const struct cpr_state *cs, int early_fd)
{
	if (!(cs->caps & CPR_CAP_EARLY_SECTIONS) || early_fd < 0 ||
	    test_fault(TEST_FAULT_NEW_CLASSIC))
		return false;
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		if (!vm->cpus.vcpus[i].lu.early || !vm->cpus.vcpus[i].lu.early_msgs)
			return false;
	return true;
}
