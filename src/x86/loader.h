/* loader.h — puts a kernel (and an initrd) into fresh guest RAM with the
 * boot information its protocol wants, and says how to enter it:
 *   - a bzImage: the Linux/x86 boot protocol (linux.h), ESI = zero page;
 *   - an ELF with a PVH entry note (pvh.h), EBX = hvm_start_info.
 * Either way the boot vCPU starts in flat 32-bit protected mode (boot.h)
 * and the ACPI tables (acpi.h) describe the machine.
 *
 * The initrd goes at the top of RAM below 3 GiB (and below what the kernel
 * accepts), page-aligned, above everything the kernel uses while it starts. */
#ifndef CPRVM_LOADER_H
#define CPRVM_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "mem/mem.h"

struct x86_boot_spec {
	const char *kernel;  /* path */
	const char *initrd;  /* path, or NULL */
	const char *cmdline; /* or NULL */
	int nr_cpus;
};

/* The boot vCPU's entry: 32-bit protected mode at rip, with these
 * registers (the rest zero). */
struct x86_boot_entry {
	uint32_t rip, rbx, rsi;
};

/* Returns 0, or -errno with a one-line message naming the file at fault. */
int x86_boot_load(struct guest_mem *m, const struct x86_boot_spec *spec,
		  struct x86_boot_entry *entry, char *err, size_t errlen);

#endif
