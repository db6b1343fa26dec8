/* warmup.c — a new VM's vCPUs run once before they take a guest over.
 *
 * The first KVM_RUN of a vCPU pays one-time costs inside KVM: with shadow
 * paging, a CPL3 guest's first exit after a fresh vCPU costs several times
 * the same exit once warm, more with two memslots (a 4 GiB or larger
 * guest). In a live update that first entry is the tail of the guest's
 * pause. So the
 * new side's vCPU threads each run a scratch context once, before the stop:
 * a few pages of page tables and code in a private memslot above the guest's
 * RAM, entered at CPL3, that write to an unbacked address (an MMIO exit) and
 * so return at once. What stays warm is KVM's own: after this, a restored
 * vCPU's first exit costs only the shadow pages its guest touches.
 *
 * Why a scratch context and not the guest's own: the guest still runs on
 * the old side and rewrites its page tables in the shared RAM; this VM's
 * shadow pages would not see those writes (KVM write-protects guest page
 * tables only through its own mappings) and would go stale.
 *
 * The slot is added before KVM_CREATE_IRQCHIP, where a memslot is cheap, and
 * removed after the run (milliseconds, before the stop), so the guest never sees
 * it; removing it drops KVM's shadow pages, not what the run warmed. */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "lib/log.h"
#include "vm/vm_priv.h"

#define WARM_SLOT 2
#define WARM_SIZE 0x4000 /* PML4, PDPT, PD, code */
#define WARM_CODE_VA 0x3000
#define WARM_MMIO_VA 0x200000 /* PD[1]: the 2 MiB above the slot, unbacked */

/* The scratch GPA: 2 MiB-aligned, above every byte of guest RAM and above
 * 4 GiB, so clear of the devices below it too. */
static uint64_t warm_gpa(const struct vm *vm)
{
	uint64_t end = CPRVM_HIGH_MEM_BASE + vm->mem.high_size;

	return (end + (2ULL << 20) - 1) & ~((2ULL << 20) - 1);
}

int vm_warm_slot_add(struct vm *vm)
{
	uint64_t gpa = warm_gpa(vm), *pml4, *pdpt, *pd, mmio = WARM_MMIO_VA;
	uint8_t *page, *code;
	struct kvm_userspace_memory_region r;
	size_t k = 0;

	page = mmap(NULL, WARM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return -errno;
	pml4 = (uint64_t *)page;
	pdpt = (uint64_t *)(page + 0x1000);
	pd = (uint64_t *)(page + 0x2000);
	code = page + WARM_CODE_VA;
	/* Present, writable, user; PD entries are 2 MiB pages (PS). VA 0
	 * maps the slot itself, VA 2 MiB what lies above it. */
	pml4[0] = (gpa + 0x1000) | 0x7;
	pdpt[0] = (gpa + 0x2000) | 0x7;
	pd[0] = gpa | 0x87;
	pd[1] = (gpa + (2ULL << 20)) | 0x87;
	/* mov rdx, WARM_MMIO_VA; mov [rdx], al; hlt. The write exits to us;
	 * were it ever to land, hlt at CPL3 faults with no IDT: a shutdown
	 * exit, never a guest that spins. */
	code[k++] = 0x48;
	code[k++] = 0xba;
	memcpy(code + k, &mmio, 8);
	k += 8;
	code[k++] = 0x88;
	code[k++] = 0x02;
	code[k++] = 0xf4;
	r = (struct kvm_userspace_memory_region){
		.slot = WARM_SLOT,
		.guest_phys_addr = gpa,
		.memory_size = WARM_SIZE,
		.userspace_addr = (uintptr_t)page,
	};
	if (ioctl(vm->cpus.vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
		int ret = -errno;

		munmap(page, WARM_SIZE);
		return ret;
	}
	vm->warm_page = page;
	vm->warm_gpa = gpa;
	return 0;
}

int vm_warm_slot_remove(struct vm *vm)
{
	struct kvm_userspace_memory_region r = {
		.slot = WARM_SLOT,
		.guest_phys_addr = vm->warm_gpa,
	};

	if (!vm->warm_page)
		return 0;
	/* A slot is deleted by giving it size 0. */
	if (vm->cpus.vm_fd >= 0 && ioctl(vm->cpus.vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	munmap(vm->warm_page, WARM_SIZE);
	vm->warm_page = NULL;
	return 0;
}

static void warm_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	*s = (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = sel, .type = type, .present = 1,
		.dpl = 3, .db = !code, .s = 1, .l = code, .g = 1,
	};
}

int vcpu_warm_up(struct vcpu *v)
{
	struct vm *vm = vm_of(v->vs);
	struct kvm_mp_state mp;
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = WARM_CODE_VA, .rflags = 0x2 };
	bool ok;
	int ret = 0;

	if (!vm->warm_page)
		return -ENOENT;
	/* An AP waits for INIT/SIPI (KVM_RUN would block until one came). */
	if (ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0)
		return -errno;
	if (mp.mp_state != KVM_MP_STATE_RUNNABLE) {
		mp.mp_state = KVM_MP_STATE_RUNNABLE;
		if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
			return -errno;
	}
	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	/* 64-bit mode at CPL3 (where guests here do their work), interrupts
	 * off; APIC base and TPR stay as they are. */
	warm_seg(&sregs.cs, 0x1b, 0xb, true);
	warm_seg(&sregs.ss, 0x23, 0x3, false);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss;
	sregs.tr = (struct kvm_segment){ .base = 0x1000, .limit = 0x67, .selector = 0x28,
					 .type = 0xb, .present = 1 };
	sregs.ldt = (struct kvm_segment){ .type = 0x2, .unusable = 1 };
	sregs.gdt.base = sregs.idt.base = 0;
	sregs.gdt.limit = sregs.idt.limit = 0;
	sregs.cr0 = 0x80000033; /* PG | NE | ET | MP | PE */
	sregs.cr3 = vm->warm_gpa;
	sregs.cr4 = 0x20; /* PAE */
	sregs.efer = 0x500; /* LMA | LME */
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	if (ioctl(v->fd, KVM_RUN, 0) < 0)
		return -errno; /* a kick: nothing pending, only not warm */
	ok = v->run->exit_reason == KVM_EXIT_MMIO && v->run->mmio.is_write &&
	     v->run->mmio.phys_addr == vm->warm_gpa + (2ULL << 20);
	if (!ok) {
		pr_debug("vCPU %d warm-up: exit %u, not the expected write", v->id,
			  v->run->exit_reason);
		ret = -EIO;
	}
	/* Complete the exit (KVM finishes an MMIO write on the next KVM_RUN),
	 * entering no guest, so that nothing is pending when state is set. */
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (ioctl(v->fd, KVM_RUN, 0) == 0 || errno != EINTR)
		ret = ret ? ret : -EIO;
	__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	return ret;
}
