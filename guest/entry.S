/*
 * entry.S - PVH entry, the AP trampoline, exception stubs and the static tables.
 *
 * Owns everything the CPU needs before C can run: the PVH ELF note, the switch
 * from 32-bit protected mode (PVH entry, or an AP coming out of the trampoline)
 * to long mode, the GDT, the per-CPU TSSs with their shared I/O permission
 * bitmap, and the boot page tables.
 *
 * Invariants:
 *  - No loops here: CPL0 code is slow on the target host, so the page tables
 *    (0-4 GiB in 2 MiB pages, every page user-accessible, 0xfe000000 and up
 *    uncached for the LAPIC/IOAPIC) and the I/O bitmap are assembled as data.
 *    CPL3 code adds mappings above 4 GiB later (boot.c).
 *  - CPU n uses GDT selector SEL_TSS0 + 16n and the TSS at tss_area + 128n; all
 *    TSSs share one bitmap after the last TSS (iomap_base = distance to it).
 */
#include "guest.h"

/* ---- PVH note: Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18) ------------------- */
	/*
	 * 4-byte alignment only: QEMU locates the descriptor with the PT_NOTE's
	 * p_align. QEMU reads the descriptor as a 64-bit value but keeps only the
	 * low 32 bits (FW_CFG_KERNEL_ENTRY), so a 4-byte descriptor is enough.
	 */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_entry32

/* ---- 32-bit entry: BSP from PVH, APs from the trampoline --------------------- */
	.section .text.entry, "ax"
	.code32
	.globl pvh_entry32
pvh_entry32:
	cli
	cld
	movl %ebx, pvh_start_info
	rdtsc
	movl %eax, entry_tsc
	movl %edx, entry_tsc + 4
	xorl %esi, %esi			/* esi = 0: the BSP */
	jmp 1f

	.globl ap_entry32
ap_entry32:
	/*
	 * Data segments still have real-mode 64 KiB limits: load flat ones from
	 * our GDT (the trampoline loaded it) before touching the image.
	 */
	movw $SEL_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl $1, %esi			/* esi = 1: an AP, its index is in ap_boot_cpu */
1:	lgdt gdt_ptr
	movw $SEL_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		/* EFER.LME */
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* PG | PE */
	movl %eax, %cr0
	ljmp $SEL_KCODE64, $entry64

	.code64
entry64:
	xorl %edi, %edi
	testl %esi, %esi
	jz 2f
	movl ap_boot_cpu(%rip), %edi
2:	leal 1(%edi), %eax
	shll $12, %eax			/* GUEST_KSTACK_SIZE */
	leaq kstacks(%rip), %rsp
	addq %rax, %rsp
	call kernel_main
	ud2

/*
 * enter_user(rip, rsp, arg): iretq to CPL3 with IF=1 (all interrupt sources
 * stay masked) and IOPL=3. The TSS I/O bitmap also grants the ports CPL3
 * uses, but IOPL=3 is what makes them reachable on every platform: after a
 * restore, KVM on AMD SVM hands back TR as a busy TSS (type 11), which real
 * CPUs accept for the bitmap check, while QEMU's TCG consults the bitmap only
 * for type 9 and raises #GP. IOPL=3 also lets CPL3 run cli/sti; the user
 * code never does.
 */
	.globl enter_user
enter_user:
	pushq $SEL_UDATA
	pushq %rsi
	pushq $0x3202
	pushq $SEL_UCODE64
	pushq %rdi
	movq %rdx, %rdi
	xorl %esi, %esi
	xorl %edx, %edx
	iretq

/*
 * ---- exception stubs, vectors 0-31 ------------------------------------------
 * CPL3 enters CPL0 for a service with `ud2` followed by a 4-byte magic (see
 * guest_call in guest.h): on the target host `int n` from CPL3 raises #UD
 * instead of going through the IDT gate, while exceptions are delivered fine.
 */
	.macro ISR n
isr\n:
	.if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
	.else
	pushq $0			/* no error code from the CPU */
	.endif
	pushq $\n
	jmp isr_common
	.endm

	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ISR \n
	.endr

isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rdi
	call kernel_exception		/* returns only for a guest service call */
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp			/* vector, error code */
	iretq

/*
 * ---- the `ipi` workload's interrupt (IPI_VECTOR): count it, EOI, return ------
 * A handful of instructions: CPL0 is emulated on the target host.
 */
	.globl ipi_isr
ipi_isr:
	pushq %rax
	lock incq ipi_acks(%rip)
	movq lapic_eoi(%rip), %rax
	movl $0, (%rax)
	popq %rax
	iretq

/*
 * ---- the `nmi` workload's NMI (vector 2): count it, return ------------------
 * No EOI for an NMI; iretq ends the NMI blocking.
 */
	.globl nmi_isr
nmi_isr:
	lock incq nmi_acks(%rip)
	iretq

/* ---- AP trampoline, copied below 1 MiB; entered in real mode at CS:0 --------- */
	.section .rodata.trampoline, "a"
	.code16
	.globl trampoline_start, trampoline_end
trampoline_start:
	cli
	cld
	lgdtl %cs:(tramp_gdt_ptr - trampoline_start)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $SEL_KCODE32, $ap_entry32
	.balign 8
tramp_gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
trampoline_end:
	.code64

/* ---- data --------------------------------------------------------------------- */
	.data
	.globl pvh_start_info, ap_boot_cpu, ap_alive, entry_tsc
	.balign 8
entry_tsc:	.quad 0
pvh_start_info:	.long 0
ap_boot_cpu:	.long 0
ap_alive:	.long 0
	.globl ipi_acks, nmi_acks, lapic_eoi
	.balign 8
ipi_acks:	.quad 0
nmi_acks:	.quad 0
lapic_eoi:	.quad 0

	.globl isr_table
	.balign 8
isr_table:
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad isr\n
	.endr

	/* Accessed bits preset so the CPU never writes the GDT. */
	.balign 16
	.globl gdt, gdt_end
gdt:
	.quad 0
	.quad 0x00cf9b000000ffff	/* 0x08 kernel code, 32-bit */
	.quad 0x00cf93000000ffff	/* 0x10 kernel data */
	.quad 0x00af9b000000ffff	/* 0x18 kernel code, 64-bit */
	.quad 0x00cff3000000ffff	/* 0x20 user data */
	.quad 0x00affb000000ffff	/* 0x28 user code, 64-bit */
	.fill GUEST_MAX_CPUS * 2, 8, 0	/* 0x30 TSS descriptors, 16 bytes each */
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt

	.balign 16
	.globl idt
idt:
	.fill 256 * 16, 1, 0		/* not-present entries give #NP naming the vector */

	.balign 4096
	.globl tss_area
tss_area:
	.fill GUEST_MAX_CPUS * GUEST_TSS_STRIDE, 1, 0
	/*
	 * I/O permission bitmap, one bit per port, 0 = allowed: PIT 0x40-0x43,
	 * 0x61, 0x80, COM1 0x3f8-0x3ff, ACPI PM 0x600-0x607; then the 0xff byte
	 * the CPU requires after the bitmap.
	 */
iomap:
	.fill 8, 1, 0xff		/* 0x000-0x03f */
	.byte 0xf0			/* 0x040-0x047: 0x40-0x43 */
	.fill 3, 1, 0xff
	.byte 0xfd			/* 0x060-0x067: 0x61 */
	.fill 3, 1, 0xff
	.byte 0xfe			/* 0x080-0x087: 0x80 */
	.fill 127 - 17, 1, 0xff
	.byte 0x00			/* 0x3f8-0x3ff */
	.fill 192 - 128, 1, 0xff
	.byte 0x00			/* 0x600-0x607 */
	.fill GUEST_IOMAP_SIZE - 193, 1, 0xff
	.byte 0xff
	.if (. - iomap) != GUEST_IOMAP_SIZE + 1
	.error "I/O bitmap size"
	.endif

/* ---- boot page tables: identity map of 0-4 GiB, all user-accessible ----------- */
	.balign 4096
	.globl pml4, pdpt
pml4:
	.quad pdpt + 0x7
	.fill 511, 8, 0
pdpt:
	.quad pd_low + 0x0007
	.quad pd_low + 0x1007
	.quad pd_low + 0x2007
	.quad pd_low + 0x3007
	.fill 508, 8, 0			/* above 4 GiB: filled at CPL3 from the memmap */
pd_low:
	.set i, 0
	.rept 2048
	.if i >= (0xfe000000 >> 21)
	.quad (i << 21) | 0x9f		/* P RW US PWT PCD PS: LAPIC, IOAPIC */
	.else
	.quad (i << 21) | 0x87		/* P RW US PS */
	.endif
	.set i, i + 1
	.endr

/* ---- stacks ------------------------------------------------------------------- */
	.bss
	.balign 4096
	.globl kstacks, ustacks
kstacks:
	.fill GUEST_MAX_CPUS * GUEST_KSTACK_SIZE, 1, 0
ustacks:
	.fill GUEST_MAX_CPUS * GUEST_USTACK_SIZE, 1, 0

	.section .note.GNU-stack, "", @progbits
