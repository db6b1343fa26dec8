/* vm_priv.h — struct vm, shared by vm/, cpr/ and the device table. Not
 * for QMP or tools: they use vm.h. */
#ifndef CPRVM_VM_PRIV_H
#define CPRVM_VM_PRIV_H

#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>

#include "dev/chardev.h"
#include "dev/serial.h"
#include "lib/loop.h"
#include "mem/mem.h"
#include "vcpu/vcpu.h"
#include "vm/migration.h"
#include "vm/vm.h"
#include "x86/loader.h"

struct vm {
	/* The vCPUs, KVM's fds and the run control (vcpu/vcpu.h); a vCPU's
	 * back pointer to it leads to the VM (vm_of). */
	struct vcpus cpus;
	struct vm_config cfg;
	struct loop *loop;
	struct guest_mem mem;
	struct x86_boot_entry entry; /* a fresh boot's, from the loader */
	uint32_t tsc_khz;
	/* The warm-up slot (warmup.c), while it exists. */
	uint8_t *warm_page;
	uint64_t warm_gpa;

	struct chardev *serial_chr;
	struct serial *serial;

	struct migration migration;
	enum vm_run_state state;
	bool stop_event_owed; /* paused by vm_pause_quiet, STOP not sent yet */
	bool resume_event_owed; /* resumed by vm_resume_quiet, RESUME not sent yet */
	bool guest_event_posted; /* shutdown or crash already reported */
	vm_event_fn event_fn;
	void *event_opaque;
};

/* devices.c: a vCPU's port I/O; the serial port's interrupt line; the
 * guest's power-off and crash (posted to the main loop, first one wins). */
void vm_pio(struct vm *vm, uint16_t port, bool write, uint8_t *data, unsigned size,
	    unsigned count);
void vm_set_irq(void *opaque, int irq, int level);
void vm_guest_shutdown(struct vm *vm);
void vm_guest_crashed(struct vm *vm, int vcpu_id, const char *why);

/* Sends an event to the sink (vm_set_event_sink), if there is one. */
void vm_emit(struct vm *vm, const char *event, const char *data_json);
/* Guest RAM becomes a private mapping of size bytes of fd at off (a full
 * snapshot's RAM area). Only while no vCPU has run: the memslots change.
 * On failure the VM keeps the RAM it had. */
int vm_replace_ram(struct vm *vm, int fd, uint64_t off, uint64_t size, char *err,
		   size_t errlen);

/* warmup.c: a fresh vCPU's first KVM_RUN, paid before a live update's stop.
 * The slot goes in before the irqchip (vm_create, struct vm_build warm_up) and out
 * once every vCPU ran vcpu_warm_up (on its own thread); vcpu_warm_up leaves
 * the vCPU in a scratch state, so its whole state must be set after it. */
int vm_warm_slot_add(struct vm *vm);
int vm_warm_slot_remove(struct vm *vm);
int vcpu_warm_up(struct vcpu *v);
/* The VM a vCPU set belongs to. */
static inline struct vm *vm_of(struct vcpus *vs)
{
	return (struct vm *)((char *)vs - offsetof(struct vm, cpus));
}
#endif
