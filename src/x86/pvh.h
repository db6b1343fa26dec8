/* pvh.h — loading a PVH kernel (ELF with XEN_ELFNOTE_PHYS32_ENTRY) and
 * building the hvm_start_info it is entered with.
 *
 * Guest-physical layout below 1 MiB, fixed so every boot looks the same:
 *   0x1000  struct hvm_start_info, then the memory map (reserved in the map)
 *   0x2000  command line, NUL-terminated, at most 4095 bytes (reserved)
 *   0xe0000 ACPI tables (reserved, see acpi.h)
 * Kernel segments must load at or above 1 MiB, inside RAM. */
#ifndef CPRVM_PVH_H
#define CPRVM_PVH_H

#include <stddef.h>
#include <stdint.h>

#include "mem/mem.h"

#define PVH_START_INFO_GPA 0x1000
#define PVH_MEMMAP_GPA 0x1040
#define PVH_CMDLINE_GPA 0x2000
#define PVH_LOAD_MIN 0x100000
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define XEN_HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_memmap_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};

#define E820_RAM 1
#define E820_RESERVED 2

/* Validates an ELF image held in memory and copies its PT_LOAD segments
 * into guest RAM. Checks everything first, copies after: a bad image leaves
 * RAM untouched. Returns 0 and the 32-bit entry, or -errno with err set. */
int pvh_load_elf(struct guest_mem *m, const void *image, size_t size, uint32_t *entry,
		 char *err, size_t errlen);
/* Reads path and calls pvh_load_elf. */
int pvh_load_kernel(struct guest_mem *m, const char *path, uint32_t *entry, char *err,
		    size_t errlen);
/* Writes start_info, memory map and command line. */
int pvh_setup_start_info(struct guest_mem *m, const char *cmdline, uint64_t rsdp);

#endif
