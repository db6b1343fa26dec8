/* e820.h — the guest's memory map, one list for every boot protocol: PVH
 * copies it into hvm_memmap_entry records, the Linux boot protocol into the
 * zero page's e820 table. Sorted, non-overlapping, covering all guest RAM.
 *
 * Below 1 MiB: page 0 is RAM; 0x1000..0x3000 (boot information and command
 * line, see pvh.h and linux.h) and 0x9f000..1 MiB (EBDA, ACPI tables, the
 * BIOS area) are reserved; the rest is conventional RAM, where guests put
 * their real-mode trampolines. */
#ifndef CPRVM_E820_H
#define CPRVM_E820_H

#include <stdint.h>

#include "mem/mem.h"

#define E820_RAM 1
#define E820_RESERVED 2
#define E820_MAX 8

struct e820_range {
	uint64_t addr, size;
	uint32_t type;
};

/* Fills map (room for E820_MAX) for m's layout; returns the entry count, or
 * -EINVAL if m is too small to boot (under 2 MiB of low RAM). */
int e820_build(const struct guest_mem *m, struct e820_range *map);

#endif
