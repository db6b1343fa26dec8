/* devices.c — the port-I/O device table, the interrupt line the serial
 * port raises, and the ends a guest can ask for: power-off, reset, crash.
 * Each end is reported once, on the main loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "dev/pm.h"
#include "lib/log.h"
#include "vm/vm_priv.h"

static void vm_guest_reset(struct vm *vm);

/* --- devices ------------------------------------------------------------- */

static void pio_serial(struct vm *vm, uint16_t off, bool write, uint8_t *data, unsigned size,
		       unsigned count)
{
	if (size != 1) { /* the UART has byte registers only */
		if (!write)
			memset(data, 0xff, (size_t)size * count);
		return;
	}
	if (write) {
		for (unsigned i = 0; i < count; i++)
			serial_write(vm->serial, off, data[i]);
	} else {
		serial_read_many(vm->serial, off, data, count);
	}
}

static void pio_pm(struct vm *vm, uint16_t off, bool write, uint8_t *data, unsigned size,
		   unsigned count)
{
	if (!write) {
		memset(data, 0, (size_t)size * count);
		return;
	}
	/* PM1a_CNT: SLP_EN requests the sleep state in SLP_TYP; the only one
	 * we offer is S5, power off. */
	if (off == 4 && size >= 2) {
		uint16_t v;
		memcpy(&v, data, 2);
		if (v & PM1_CNT_SLP_EN)
			vm_guest_shutdown(vm);
	}
}

/* The reset control register the FADT names (RESET_REG): bit 2 resets the
 * machine. A reset ends cprvm, as QEMU's -no-reboot does: the guest asked
 * for a fresh start, and whoever runs VMs decides whether to give one. */
static void pio_reset(struct vm *vm, uint16_t off, bool write, uint8_t *data, unsigned size,
		      unsigned count)
{
	(void)off;
	if (!write) {
		memset(data, 0, (size_t)size * count);
		return;
	}
	if (data[0] & CPRVM_RESET_CPU)
		vm_guest_reset(vm);
}

static void pio_ignore(struct vm *vm, uint16_t off, bool write, uint8_t *data, unsigned size,
		       unsigned count)
{
	(void)vm;
	(void)off;
	if (!write)
		memset(data, 0xff, (size_t)size * count);
}

/* Every device, in one place: port-I/O dispatch walks this table, and so
 * will save and load, in this order. */
static const struct pio_device {
	const char *name;
	uint16_t base, len;
	void (*io)(struct vm *vm, uint16_t off, bool write, uint8_t *data, unsigned size,
		   unsigned count);
} devices[] = {
	{ "serial/0", 0x3f8, 8, pio_serial },
	{ "pm", CPRVM_PM_BASE, CPRVM_PM_LEN, pio_pm },
	{ "post", 0x80, 1, pio_ignore },
	{ "reset", CPRVM_RESET_PORT, 1, pio_reset },
};

/* A port no device answers reads as all ones, as on a PC with nothing
 * there. -vv names each such port once: where a guest waits for hardware
 * that is not here, this is what it is waiting for. */
static void pio_unclaimed(struct vm *vm, uint16_t port, bool write, uint8_t *data,
			  unsigned size, unsigned count)
{
	static uint8_t seen[65536 / 8];

	if (!(__atomic_fetch_or(&seen[port / 8], 1 << (port % 8), __ATOMIC_RELAXED) &
	      (1 << (port % 8))))
		pr_debug("port 0x%x: no device (%s, %u bytes)", port, write ? "write" : "read",
			 size);
	pio_ignore(vm, 0, write, data, size, count);
}

void vm_pio(struct vm *vm, uint16_t port, bool write, uint8_t *data, unsigned size,
		   unsigned count)
{
	for (size_t i = 0; i < ARRAY_SIZE(devices); i++) {
		const struct pio_device *d = &devices[i];
		if (port >= d->base && port < d->base + d->len) {
			d->io(vm, port - d->base, write, data, size, count);
			return;
		}
	}
	pio_unclaimed(vm, port, write, data, size, count);
}

void vm_set_irq(void *opaque, int irq, int level)
{
	struct vm *vm = opaque;
	struct kvm_irq_level l = { .irq = irq, .level = level };

	if (ioctl(vm->cpus.vm_fd, KVM_IRQ_LINE, &l) < 0)
		pr_warn("KVM_IRQ_LINE %d: %s", irq, strerror(errno));
}

/* --- guest-initiated end ------------------------------------------------- */

static void vm_on_guest_shutdown(void *opaque)
{
	struct vm *vm = opaque;

	vm->state = RUN_STATE_SHUTDOWN;
	vm_emit(vm, "SHUTDOWN", "{\"guest\": true, \"reason\": \"guest-shutdown\"}");
	loop_quit(vm->loop, 0);
}

static void vm_on_guest_reset(void *opaque)
{
	struct vm *vm = opaque;

	pr_info("the guest reset the machine: exiting (a reset ends cprvm)");
	vm->state = RUN_STATE_SHUTDOWN;
	vm_emit(vm, "SHUTDOWN", "{\"guest\": true, \"reason\": \"guest-reset\"}");
	loop_quit(vm->loop, 0);
}

/* The first guest-initiated end wins; later ones (other vCPUs) are moot. */
static void vm_post_guest_end(struct vm *vm, void (*fn)(void *))
{
	pthread_mutex_lock(&vm->cpus.lock);
	if (!vm->guest_event_posted) {
		vm->guest_event_posted = true;
		loop_call(vm->loop, fn, vm);
	}
	pthread_mutex_unlock(&vm->cpus.lock);
}

void vm_guest_shutdown(struct vm *vm)
{
	vm_post_guest_end(vm, vm_on_guest_shutdown);
}

static void vm_guest_reset(struct vm *vm)
{
	vm_post_guest_end(vm, vm_on_guest_reset);
}

struct crash_report {
	struct vm *vm;
	char msg[640];
};

static void vm_on_guest_crash(void *opaque)
{
	struct crash_report *c = opaque;
	struct vm *vm = c->vm;

	pr_err("guest crashed: %s", c->msg);
	vm->state = RUN_STATE_INTERNAL_ERROR;
	vm_emit(vm, "SHUTDOWN", "{\"guest\": true, \"reason\": \"guest-panic\"}");
	free(c);
	loop_quit(vm->loop, 1);
}

void vm_guest_crashed(struct vm *vm, int vcpu_id, const char *why)
{
	struct crash_report *c = calloc(1, sizeof(*c));
	char regs[480];

	if (!c)
		return;
	vcpu_describe(&vm->cpus.vcpus[vcpu_id], regs, sizeof(regs));
	snprintf(c->msg, sizeof(c->msg), "%s; %s", why, regs);
	c->vm = vm;
	pthread_mutex_lock(&vm->cpus.lock);
	if (vm->guest_event_posted) {
		pthread_mutex_unlock(&vm->cpus.lock);
		free(c);
		return;
	}
	vm->guest_event_posted = true;
	pthread_mutex_unlock(&vm->cpus.lock);
	loop_call(vm->loop, vm_on_guest_crash, c);
}
