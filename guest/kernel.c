/*
 * kernel.c - everything the guest does at CPL0: per-CPU descriptor set-up, the
 * drop to CPL3, exceptions (PANIC line, halt) and the guest service calls.
 *
 * CPL0 code is emulated instruction by instruction on the target host, so this
 * file stays short and loop-free where it can: one CPU's set-up is a few hundred
 * instructions. Everything else (boot info, ACPI, SMP, workloads) runs at CPL3.
 */
#include "guest.h"

struct tss {
	u32 reserved0;
	u64 rsp0, rsp1, rsp2;
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
} __attribute__((packed));

struct dtr {
	u16 limit;
	u64 base;
} __attribute__((packed));

struct exc_frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vec, err, rip, cs, rflags, rsp, ss;
};

void kernel_exception(struct exc_frame *f);

static void set_gate(unsigned vec, u64 handler, unsigned dpl)
{
	u64 *g = (u64 *)(idt + vec * 16);

	g[0] = (handler & 0xffff) | (u64)SEL_KCODE64 << 16 | (u64)(0x8e | dpl << 5) << 40 |
	       ((handler >> 16) & 0xffff) << 48;
	g[1] = handler >> 32;
}

static __attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

void kernel_main(u32 cpu)
{
	struct tss *t = (struct tss *)(tss_area + cpu * GUEST_TSS_STRIDE);
	u64 *desc = (u64 *)(gdt + SEL_TSS0 + cpu * 16);
	u64 base = (u64)t;
	u32 iomap = (GUEST_MAX_CPUS - cpu) * GUEST_TSS_STRIDE;
	u32 limit = iomap + GUEST_IOMAP_SIZE; /* includes the trailing 0xff byte */
	struct dtr idtr = { 256 * 16 - 1, (u64)idt };

	if (cpu == 0) {
		/* Mask both PICs: the guest never takes an external interrupt. */
		outb(0x21, 0xff);
		outb(0xa1, 0xff);
		for (unsigned v = 0; v < 32; v++)
			set_gate(v, isr_table[v], 0);
		set_gate(IPI_VECTOR, (u64)ipi_isr, 0);
		set_gate(2, (u64)nmi_isr, 0); /* NMIs are counted (the `nmi` workload) */
	} else {
		/* ap_boot_cpu was read in entry64; the BSP may start the next AP. */
		__atomic_store_n(&ap_alive, 1, __ATOMIC_RELEASE);
	}

	t->rsp0 = (u64)kstacks + (u64)(cpu + 1) * GUEST_KSTACK_SIZE;
	t->iomap_base = (u16)iomap;
	desc[0] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89ULL << 40 |
		  (u64)((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
	desc[1] = base >> 32;
	__asm__ volatile("ltr %0" ::"r"((u16)(SEL_TSS0 + cpu * 16)));
	__asm__ volatile("lidt %0" ::"m"(idtr));

	enter_user((u64)user_main, (u64)ustacks + (u64)(cpu + 1) * GUEST_USTACK_SIZE, cpu);
}

static u64 kernel_call(u64 nr, u64 arg, u64 arg1)
{
	switch (nr) {
	case SYS_CRASH: {
		/*
		 * An empty IDT: ud2 -> #GP -> #DF -> triple fault, a VM shutdown.
		 * Not int3: on the target host a software interrupt with an empty
		 * IDT spins forever instead of faulting (and `int n` from CPL3
		 * raises #UD). If ud2 somehow returns, fault with no usable stack.
		 */
		struct dtr none = { 0, 0 };

		__asm__ volatile("lidt %0; ud2; xorl %%esp, %%esp; pushq $0" ::"m"(none));
		break;
	}
	case SYS_NULL:
		return 0;
	case SYS_OUTB80:
		for (u64 i = 0; i < arg; i++)
			outb(0x80, 0);
		return 0;
	case SYS_WRITE:
		serial_tx((const char *)arg, arg1, NULL);
		return 0;
	}
	halt_forever();
}

void kernel_exception(struct exc_frame *f)
{
	char line[128];
	int n;

	if (f->vec == 6 && (f->cs & 3) == 3 && *(const u16 *)f->rip == 0x0b0f &&
	    *(const u32 *)(f->rip + 2) == SYS_MAGIC) {
		f->rax = kernel_call(f->rax, f->rdi, f->rsi);
		f->rip += 6;
		return;
	}
	n = fmt(line, sizeof(line), "PANIC vec=%lu err=0x%lx rip=0x%lx cpu=%u\n", f->vec, f->err,
		f->rip, this_cpu());
	serial_panic_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	halt_forever();
}
