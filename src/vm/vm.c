/* vm.c — struct vm: building the VM, its run states, pausing and resuming
 * every vCPU. The devices and the guest's own ends are in devices.c.
 *
 * Build order (vm_create) follows what KVM makes cheap (MEASURED.md): memslots
 * before KVM_CREATE_IRQCHIP (a memslot added after it costs ~6.5 ms more), then
 * irqchip and PIT before the vCPUs (KVM_CREATE_VCPU wants the in-kernel LAPIC
 * to exist), then CPUID per vCPU. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/fault.h"
#include "lib/log.h"
#include "lib/trace.h"
#include "vcpu/vcpu_state.h"
#include "vm/vm_priv.h"
#include "x86/boot.h"
#include "x86/cpuid.h"
#include "x86/loader.h"

static const char *const run_state_names[] = {
	[RUN_STATE_PRELAUNCH] = "prelaunch",
	[RUN_STATE_RUNNING] = "running",
	[RUN_STATE_PAUSED] = "paused",
	[RUN_STATE_SHUTDOWN] = "shutdown",
	[RUN_STATE_INTERNAL_ERROR] = "internal-error",
	[RUN_STATE_INMIGRATE] = "inmigrate",
	[RUN_STATE_POSTMIGRATE] = "postmigrate",
};

const char *vm_run_state_name(enum vm_run_state s)
{
	if ((unsigned)s >= ARRAY_SIZE(run_state_names) || !run_state_names[s])
		return "unknown";
	return run_state_names[s];
}

enum vm_run_state vm_get_run_state(struct vm *vm)
{
	return vm->state;
}

void vm_set_event_sink(struct vm *vm, vm_event_fn fn, void *opaque)
{
	vm->event_fn = fn;
	vm->event_opaque = opaque;
}

void vm_emit(struct vm *vm, const char *event, const char *data_json)
{
	if (vm->event_fn)
		vm->event_fn(vm->event_opaque, event, data_json);
}

/* --- run control --------------------------------------------------------- */

/* Tests (TEST_FAULT_LATE_KICK): the vCPUs but the first are kicked 3 ms
 * late, so they run on while vCPU 0 is already out. */
static bool late_kick(void)
{
	return test_fault(TEST_FAULT_LATE_KICK);
}

/* The vCPUs stopped now, if no earlier moment was recorded for this pause. */
static void vm_note_stopped(struct vm *vm)
{
	uint64_t none = 0;

	__atomic_compare_exchange_n(&vm->cpus.stopped_ns, &none, mono_ns(), false, __ATOMIC_SEQ_CST,
				    __ATOMIC_SEQ_CST);
}

static void vm_kick_rest(struct vm *vm)
{
	vm_note_stopped(vm);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		if (i == 1 && late_kick())
			usleep(3000);
		if (!__atomic_load_n(&vm->cpus.vcpus[i].out, __ATOMIC_SEQ_CST))
			vcpu_kick(&vm->cpus.vcpus[i]);
	}
}

/* What the vCPUs ask of this VM (struct vcpu_ops). */
static void ops_pio(struct vcpus *vs, uint16_t port, bool write, uint8_t *data, unsigned size,
		    unsigned count)
{
	vm_pio(vm_of(vs), port, write, data, size, count);
}

static void ops_shutdown(struct vcpus *vs)
{
	vm_guest_shutdown(vm_of(vs));
}

static void ops_crashed(struct vcpus *vs, int vcpu_id, const char *why)
{
	vm_guest_crashed(vm_of(vs), vcpu_id, why);
}

static void ops_kick_rest(struct vcpus *vs)
{
	vm_kick_rest(vm_of(vs));
}

static const struct vcpu_ops vm_vcpu_ops = {
	.pio = ops_pio,
	.shutdown = ops_shutdown,
	.crashed = ops_crashed,
	.kick_rest = ops_kick_rest,
};

/* Stop at an exit (vm_pause_quiet): until the first vCPU leaves the guest
 * by itself or wait_us pass, whichever comes first. A vCPU whose task
 * sleeps (a halted guest CPU, blocked in KVM_RUN) has no exit coming: it
 * is kicked at once. Asleep meanwhile, not on the CPU: on a host with few
 * CPUs the other side of a live update works on the others. */
static void vm_wait_exit(struct vm *vm, unsigned wait_us)
{
	const struct timespec nap = { .tv_nsec = 30 * 1000 };
	uint64_t end = mono_ns() + (uint64_t)wait_us * 1000;

	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];

		if (v->thread_started && task_asleep(vcpu_run_tid(v)))
			vcpu_kick(v);
	}
	while (!__atomic_load_n(&vm->cpus.nr_out, __ATOMIC_ACQUIRE) && mono_ns() < end)
		nanosleep(&nap, NULL);
	trace_mark(__atomic_load_n(&vm->cpus.nr_out, __ATOMIC_ACQUIRE) ? "exited" : "no-exit");
}

static void vm_park_all(struct vm *vm, unsigned wait_us)
{
	pthread_mutex_lock(&vm->cpus.lock);
	__atomic_store_n(&vm->cpus.stopped_ns, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&vm->cpus.kick_rest, wait_us > 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&vm->cpus.pause_req, true, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&vm->cpus.lock);
	if (wait_us)
		vm_wait_exit(vm, wait_us);
	/* Whoever has not left the guest yet is kicked (a signal: it leaves
	 * within ~0.1 ms here). With a wait, the first vCPU out kicks the
	 * others itself (vcpu_park): this thread may not get its CPU back
	 * at once. */
	pthread_mutex_lock(&vm->cpus.lock);
	if (!wait_us || __atomic_exchange_n(&vm->cpus.kick_rest, false, __ATOMIC_SEQ_CST))
		vm_kick_rest(vm);
	pthread_mutex_unlock(&vm->cpus.lock);
	/* Then wait for that on the CPU, not asleep (being woken costs as
	 * much again here). */
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		if (vm->cpus.vcpus[i].thread_started && !vm->cpus.vcpus[i].exited)
			spin_until(&vm->cpus.vcpus[i].parked, true, 2000);
	pthread_mutex_lock(&vm->cpus.lock);
	for (;;) {
		int live = 0;
		for (int i = 0; i < vm->cpus.nr_vcpus; i++)
			if (vm->cpus.vcpus[i].thread_started && !vm->cpus.vcpus[i].exited &&
			    !vm->cpus.vcpus[i].parked)
				live++;
		if (!live)
			break;
		pthread_cond_wait(&vm->cpus.cond, &vm->cpus.lock);
	}
	pthread_mutex_unlock(&vm->cpus.lock);
}

int vm_pause_quiet(struct vm *vm, unsigned wait_us)
{
	if (vm->state == RUN_STATE_PAUSED || vm->state == RUN_STATE_POSTMIGRATE ||
	    vm->state == RUN_STATE_PRELAUNCH || vm->state == RUN_STATE_INMIGRATE)
		return 0;
	if (vm->state != RUN_STATE_RUNNING)
		return -EINVAL;
	vm_park_all(vm, wait_us);
	vm->state = RUN_STATE_PAUSED;
	vm->stop_event_owed = true;
	return 0;
}

void vm_emit_stop(struct vm *vm)
{
	if (vm->stop_event_owed)
		vm_emit(vm, "STOP", NULL);
	vm->stop_event_owed = false;
}

int vm_pause(struct vm *vm)
{
	int ret = vm_pause_quiet(vm, 0);

	vm_emit_stop(vm);
	return ret;
}

int vm_resume_quiet(struct vm *vm)
{
	if (vm->state == RUN_STATE_RUNNING)
		return 0;
	if (vm->state == RUN_STATE_SHUTDOWN || vm->state == RUN_STATE_INTERNAL_ERROR)
		return -EINVAL;
	pthread_mutex_lock(&vm->cpus.lock);
	__atomic_store_n(&vm->cpus.pause_req, false, __ATOMIC_RELEASE);
	vm->cpus.resume_soon = false;
	__atomic_store_n(&vm->cpus.waker_cpu, -1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vm->cpus.cond);
	pthread_mutex_unlock(&vm->cpus.lock);
	vm->state = RUN_STATE_RUNNING;
	vm->resume_event_owed = true;
	return 0;
}

void vm_emit_resume(struct vm *vm)
{
	if (!vm->resume_event_owed)
		return;
	vm->resume_event_owed = false;
	vm_emit_stop(vm); /* the one held back, if any: STOP comes before RESUME */
	vm_emit(vm, "RESUME", NULL);
}

int vm_resume(struct vm *vm)
{
	int ret = vm_resume_quiet(vm);

	vm_emit_resume(vm);
	return ret;
}

void vm_quit(struct vm *vm, int status, const char *reason, bool guest)
{
	char data[128];

	if (vm->state == RUN_STATE_RUNNING || vm->state == RUN_STATE_PAUSED)
		vm->state = RUN_STATE_SHUTDOWN;
	snprintf(data, sizeof(data), "{\"guest\": %s, \"reason\": \"%s\"}",
		 guest ? "true" : "false", reason);
	vm_emit(vm, "SHUTDOWN", data);
	loop_quit(vm->loop, status);
}

void vm_set_inmigrate(struct vm *vm)
{
	vm->state = RUN_STATE_INMIGRATE;
}

int vm_replace_ram(struct vm *vm, int fd, uint64_t off, uint64_t size, char *err,
		   size_t errlen)
{
	struct guest_mem mem;
	int ret;

	ret = mem_open_private(&mem, fd, off, size, err, errlen);
	if (ret < 0)
		return ret;
	mem_unregister(&vm->mem, vm->cpus.vm_fd);
	ret = mem_register(&mem, vm->cpus.vm_fd);
	if (ret < 0) {
		mem_unregister(&mem, vm->cpus.vm_fd);
		mem_close(&mem, false);
		mem_register(&vm->mem, vm->cpus.vm_fd);
		snprintf(err, errlen, "cannot register the snapshot's RAM: %s", strerror(-ret));
		return ret;
	}
	mem_close(&vm->mem, true);
	vm->mem = mem;
	return 0;
}

int vm_start(struct vm *vm)
{
	int ret;

	vm->state = RUN_STATE_RUNNING;
	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		ret = vcpu_start(&vm->cpus.vcpus[i]);
		if (ret < 0)
			return ret;
	}
	return 0;
}

void vm_resume_soon(struct vm *vm)
{
	pthread_mutex_lock(&vm->cpus.lock);
	__atomic_store_n(&vm->cpus.waker_cpu, sched_getcpu(), __ATOMIC_RELEASE);
	__atomic_store_n(&vm->cpus.resume_soon, true, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&vm->cpus.cond);
	pthread_mutex_unlock(&vm->cpus.lock);
}

int vm_start_paused(struct vm *vm)
{
	int ret;

	/* The threads park before their first guest instruction. */
	__atomic_store_n(&vm->cpus.pause_req, true, __ATOMIC_SEQ_CST);
	ret = vm_start(vm);
	vm->state = RUN_STATE_PAUSED;
	if (ret < 0)
		return ret;
	/* And have, when this returns: a thread still starting would compete
	 * for the CPUs later, in a live update's blackout. */
	pthread_mutex_lock(&vm->cpus.lock);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		while (vm->cpus.vcpus[i].thread_started && !vm->cpus.vcpus[i].parked &&
		       !vm->cpus.vcpus[i].exited)
			pthread_cond_wait(&vm->cpus.cond, &vm->cpus.lock);
	pthread_mutex_unlock(&vm->cpus.lock);
	return 0;
}

/* --- build and teardown -------------------------------------------------- */

static int vm_fail(char *err, size_t errlen, int ret, const char *what)
{
	snprintf(err, errlen, "%s: %s", what, strerror(-ret));
	return ret;
}

/* Without /dev/kvm nothing can run: say what is missing and the ways to get it. */
static void no_kvm(char *err, size_t errlen, int ret)
{
	if (ret == -ENOENT || ret == -ENODEV || ret == -ENXIO)
		snprintf(err, errlen, "/dev/kvm is missing (%s): load kvm_intel or kvm_amd; inside "
			 "a VM, enable nested virtualisation; or run cprvm under scripts/with-kvm, "
			 "which boots an emulated machine with KVM", strerror(-ret));
	else if (ret == -EACCES || ret == -EPERM)
		snprintf(err, errlen, "cannot open /dev/kvm (%s): run as root or join the group "
			 "that owns it (usually kvm)", strerror(-ret));
	else
		snprintf(err, errlen, "cannot open /dev/kvm: %s", strerror(-ret));
}

int vm_attach_serial(struct vm *vm, const struct chardev_handover *h, char *err, size_t errlen)
{
	int ret;

	if (h)
		ret = chardev_adopt(&vm->serial_chr, &vm->cfg.serial, h, vm->loop, err, errlen);
	else
		ret = chardev_open(&vm->serial_chr, &vm->cfg.serial, vm->loop, err, errlen);
	if (ret < 0)
		return ret;
	ret = serial_new(&vm->serial, vm->serial_chr, 4, vm_set_irq, vm);
	if (ret < 0)
		vm_fail(err, errlen, ret, "serial");
	return ret;
}

/* Work that runs beside vm_create's main path, on a thread of its own:
 * KVM_GET_SUPPORTED_CPUID (~1.2 ms on the nested test host: every leaf is a
 * trapped CPUID) while the VM, its memslots, irqchip and PIT are made; only
 * the vCPUs need the CPUID. (Registering the memslots on another thread
 * too made it slower: they and the irqchip take the same KVM locks.) */
struct bg_job {
	pthread_t thread;
	bool started, joined;
	int (*fn)(struct vm *vm);
	struct vm *vm;
	int ret;
};

static void *bg_job_run(void *p)
{
	struct bg_job *j = p;

	j->ret = j->fn(j->vm);
	return NULL;
}

static void bg_job_start(struct bg_job *j, int (*fn)(struct vm *), struct vm *vm)
{
	j->fn = fn;
	j->vm = vm;
	j->started = pthread_create(&j->thread, NULL, bg_job_run, j) == 0;
	if (!j->started) /* no thread: do it here */
		bg_job_run(j);
}

static int bg_job_finish(struct bg_job *j)
{
	if (j->started && !j->joined) {
		pthread_join(j->thread, NULL);
		j->joined = true;
	}
	return j->ret;
}

static int vm_get_cpuid(struct vm *vm)
{
	return cpuid_get_supported(vm->cpus.kvm_fd, &vm->cpus.cpuid);
}

/* /dev/kvm, and what cprvm cannot run without. */
static int vm_open_kvm(struct vm *vm, char *err, size_t errlen)
{
	vm->cpus.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->cpus.kvm_fd < 0) {
		int ret = -errno;

		no_kvm(err, errlen, ret);
		return ret;
	}
	if (ioctl(vm->cpus.kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		return set_err(err, errlen, -EINVAL, "unsupported KVM API version");
	if (ioctl(vm->cpus.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP) <= 0 ||
	    ioctl(vm->cpus.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_PIT2) <= 0 ||
	    ioctl(vm->cpus.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0)
		return set_err(err, errlen, -ENOTSUP,
			       "KVM lacks the in-kernel irqchip, PIT or immediate_exit");
	return 0;
}

/* Guest RAM, and for a fresh boot the kernel and the boot information in
 * it: checked before anything is created in the kernel. */
static int vm_setup_ram(struct vm *vm, const struct vm_build *b, char *err, size_t errlen)
{
	const struct vm_config *cfg = &vm->cfg;
	const struct x86_boot_spec spec = {
		.kernel = cfg->kernel, .initrd = cfg->initrd, .cmdline = cfg->cmdline,
		.nr_cpus = cfg->nr_cpus,
	};
	int ret;

	if (b->ram_fd >= 0 && b->ram_shared)
		ret = mem_adopt(&vm->mem, b->ram_fd, cfg->mem_size, cfg->mem_path, err, errlen);
	else if (b->ram_fd >= 0)
		ret = mem_open_private(&vm->mem, b->ram_fd, b->ram_off, cfg->mem_size, err, errlen);
	else
		ret = mem_open(&vm->mem, cfg->mem_size, cfg->mem_path, !b->restoring, err, errlen);
	if (ret < 0 || b->restoring)
		return ret;
	return x86_boot_load(&vm->mem, &spec, &vm->entry, err, errlen);
}

/* Interrupt routing as the MADT describes it (acpi.c): ISA IRQs 0-15 go
 * to the PICs and to the IOAPIC pin of the same number, except IRQ 0, the
 * PIT, which the interrupt source override sends to pin 2. KVM's default
 * sends it to pin 0, where Linux never looks: its timer interrupt would
 * never arrive. GSI 2 (the PICs' cascade) has no source; GSIs 16-23 are
 * the IOAPIC's other pins. The routing belongs to the VM fd, so a live
 * update keeps it; a restore makes it anew here. */
static int vm_route_irqs(struct vm *vm)
{
	struct {
		struct kvm_irq_routing r;
		struct kvm_irq_routing_entry e[40];
	} t = { .r.nr = 0 };
	struct kvm_irq_routing_entry *e = t.e;

	for (uint32_t gsi = 0; gsi < 24; gsi++) {
		if (gsi == 2)
			continue;
		if (gsi < 16)
			*e++ = (struct kvm_irq_routing_entry){
				.gsi = gsi, .type = KVM_IRQ_ROUTING_IRQCHIP,
				.u.irqchip = { gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE,
					       gsi & 7 },
			};
		*e++ = (struct kvm_irq_routing_entry){
			.gsi = gsi, .type = KVM_IRQ_ROUTING_IRQCHIP,
			.u.irqchip = { KVM_IRQCHIP_IOAPIC, gsi ? gsi : 2 },
		};
	}
	t.r.nr = e - t.e;
	return ioctl(vm->cpus.vm_fd, KVM_SET_GSI_ROUTING, &t) < 0 ? -errno : 0;
}

/* The KVM VM: memslots first, then the in-kernel devices. */
static int vm_create_kvm_vm(struct vm *vm, const struct vm_build *b, char *err, size_t errlen)
{
	/* The "dummy" speaker is KVM's port 0x61: the channel 2 gate (bit 0)
	 * and OUT2 (bit 5), which the classic TSC calibration polls. Only bit 1
	 * (speaker data) is not in KVM_GET_PIT2's state. */
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t idmap = 0xfffbc000;
	int ret;

	vm->cpus.vm_fd = ioctl(vm->cpus.kvm_fd, KVM_CREATE_VM, 0);
	if (vm->cpus.vm_fd < 0)
		return vm_fail(err, errlen, -errno, "KVM_CREATE_VM");
	fcntl(vm->cpus.vm_fd, F_SETFD, FD_CLOEXEC);
	ret = mem_register(&vm->mem, vm->cpus.vm_fd);
	if (ret < 0)
		return vm_fail(err, errlen, ret, "cannot register guest RAM with KVM");
	/* Before the irqchip, where a memslot is cheap. Only an optimisation:
	 * without it the first entry is slower, nothing else. */
	if (b->warm_up && (ret = vm_warm_slot_add(vm)) < 0)
		pr_debug("no warm-up slot: %s", strerror(-ret));
	if (ioctl(vm->cpus.vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
		return vm_fail(err, errlen, -errno, "KVM_SET_TSS_ADDR");
	ioctl(vm->cpus.vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap);
	if (ioctl(vm->cpus.vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return vm_fail(err, errlen, -errno, "KVM_CREATE_IRQCHIP");
	if (ioctl(vm->cpus.vm_fd, KVM_CREATE_PIT2, &pit) < 0)
		return vm_fail(err, errlen, -errno, "KVM_CREATE_PIT2");
	if ((ret = vm_route_irqs(vm)) < 0)
		return vm_fail(err, errlen, ret, "KVM_SET_GSI_ROUTING");
	return 0;
}

/* The vCPUs, each with its CPUID; the TSC rate from the first. */
static int vm_create_vcpus(struct vm *vm, char *err, size_t errlen)
{
	int nr = vm->cfg.nr_cpus, ret, tsc;

	vm->cpus.vcpus = calloc(nr, sizeof(*vm->cpus.vcpus));
	if (!vm->cpus.vcpus)
		return vm_fail(err, errlen, -ENOMEM, "cannot allocate vCPUs");
	for (int i = 0; i < nr; i++)
		vm->cpus.vcpus[i].fd = -1;
	for (int i = 0; i < nr; i++) {
		struct vcpu *v = &vm->cpus.vcpus[i];

		ret = vcpu_init(v, &vm->cpus, i);
		vm->cpus.nr_vcpus = i + 1;
		if (ret < 0)
			return vm_fail(err, errlen, ret, "KVM_CREATE_VCPU");
		if (i == 0) {
			tsc = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
			vm->tsc_khz = tsc > 0 ? tsc : 0;
		}
		ret = cpuid_setup_vcpu(v->fd, v->id, vm->cpus.cpuid, nr, vm->tsc_khz);
		if (ret < 0)
			return vm_fail(err, errlen, ret, "KVM_SET_CPUID2");
	}
	return 0;
}

/* What vCPU state looks like here, probed once for save and restore. The
 * MSR list is probed at the first save (vcpu_msr_list_ensure), or by a live
 * update's new side before the stop: a few ioctls that a boot or restore
 * need not pay. */
static void vm_probe_state(struct vm *vm)
{
	const int sync = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
	int n;

	vm->cpus.have_sregs2 = ioctl(vm->cpus.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SREGS2) > 0;
	n = ioctl(vm->cpus.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
	vm->cpus.have_sync_regs = n > 0 && (n & sync) == sync;
	n = ioctl(vm->cpus.vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	vm->cpus.xsave_size = n > (int)sizeof(struct kvm_xsave) ? (uint32_t)n : sizeof(struct kvm_xsave);
}

int vm_create(struct vm **out, const struct vm_config *cfg, const struct vm_build *b,
	      struct loop *loop, char *err, size_t errlen)
{
	static const struct vm_build boot = { .ram_fd = -1 };
	struct vm *vm = calloc(1, sizeof(*vm));
	struct bg_job cpuid_job = { .ret = -EINVAL };
	int ret;

	if (!vm)
		return vm_fail(err, errlen, -ENOMEM, "cannot allocate VM");
	if (!b)
		b = &boot;
	vm->cpus.ops = &vm_vcpu_ops;
	vm->cfg = *cfg;
	vm->loop = loop;
	vm->cpus.kvm_fd = vm->cpus.vm_fd = -1;
	vm->mem.fd = -1;
	vm->state = RUN_STATE_PRELAUNCH;
	vm->migration.stop_wait_us = MIGRATE_STOP_WAIT_US_DEFAULT;
	pthread_mutex_init(&vm->cpus.lock, NULL);
	pthread_cond_init(&vm->cpus.cond, NULL);
	vm->cpus.waker_cpu = -1;

	ret = vm_open_kvm(vm, err, errlen);
	if (ret < 0)
		goto out_free;
	bg_job_start(&cpuid_job, vm_get_cpuid, vm);
	if ((ret = vm_setup_ram(vm, b, err, errlen)) < 0 ||
	    (ret = vm_create_kvm_vm(vm, b, err, errlen)) < 0)
		goto out_free;
	ret = bg_job_finish(&cpuid_job);
	if (ret < 0) {
		vm_fail(err, errlen, ret, "KVM_GET_SUPPORTED_CPUID");
		goto out_free;
	}
	ret = vm_create_vcpus(vm, err, errlen);
	if (ret < 0)
		goto out_free;
	vm_probe_state(vm);
	ret = b->restoring ? 0 : x86_setup_boot_vcpu(vm->cpus.vcpus[0].fd, &vm->entry);
	if (ret < 0) {
		vm_fail(err, errlen, ret, "cannot set the boot vCPU's registers");
		goto out_free;
	}
	if (!b->serial_later) {
		ret = vm_attach_serial(vm, NULL, err, errlen);
		if (ret < 0)
			goto out_free;
	}
	*out = vm;
	return 0;

out_free:
	bg_job_finish(&cpuid_job);
	mem_close(&vm->mem, true);
	vm->mem.fd = -1;
	vm_destroy(vm);
	return ret;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	pthread_mutex_lock(&vm->cpus.lock);
	__atomic_store_n(&vm->cpus.stop_req, true, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&vm->cpus.cond);
	pthread_mutex_unlock(&vm->cpus.lock);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		vcpu_kick(&vm->cpus.vcpus[i]);
	for (int i = 0; i < vm->cpus.nr_vcpus; i++)
		vcpu_destroy(&vm->cpus.vcpus[i]);
	free(vm->cpus.vcpus);
	serial_free(vm->serial);
	chardev_close(vm->serial_chr);
	if (vm->cpus.vm_fd >= 0)
		close(vm->cpus.vm_fd);
	vm->cpus.vm_fd = -1;
	vm_warm_slot_remove(vm); /* its pages, if the VM never got that far */
	if (vm->cpus.kvm_fd >= 0)
		close(vm->cpus.kvm_fd);
	mem_close(&vm->mem, false);
	free(vm->cpus.cpuid);
	free(vm->cpus.msr_indices);
	pthread_mutex_destroy(&vm->cpus.lock);
	pthread_cond_destroy(&vm->cpus.cond);
	free(vm);
}
