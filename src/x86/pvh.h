/* pvh.h — loading a PVH kernel (ELF with XEN_ELFNOTE_PHYS32_ENTRY) and
 * building the hvm_start_info it is entered with.
 *
 * Guest-physical layout below 1 MiB, fixed so every boot looks the same:
 *   0x1000  struct hvm_start_info, then the memory map, then the module
 *           list (the initrd), all reserved in the map
 *   0x2000  command line, NUL-terminated, at most 4095 bytes (reserved)
 *   0xe0000 ACPI tables (reserved, see acpi.h)
 * Kernel segments must load at or above 1 MiB, inside RAM. */
#ifndef CPRVM_PVH_H
#define CPRVM_PVH_H

#include <stddef.h>
#include <stdint.h>

#include "mem/mem.h"
#include "x86/e820.h"

#define PVH_START_INFO_GPA 0x1000
#define PVH_MEMMAP_GPA 0x1040
#define PVH_MODLIST_GPA 0x1100
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

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};

struct hvm_memmap_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};


/* Validates an ELF image held in memory and copies its PT_LOAD segments
 * into guest RAM. Checks everything first, copies after: a bad image leaves
 * RAM untouched. Returns 0, the 32-bit entry and (if end is not NULL) the
 * end of the highest segment, or -ENOEXEC with err set. */
int pvh_load_elf(struct guest_mem *m, const void *image, size_t size, uint32_t *entry,
		 uint64_t *end, char *err, size_t errlen);

/* Writes start_info, memory map, module list and command line. initrd_size
 * 0: no module. Returns 0, or -EINVAL (too long a command line, too little
 * RAM) before writing anything. */
int pvh_setup_start_info(struct guest_mem *m, const char *cmdline, uint64_t rsdp,
			 uint64_t initrd_gpa, uint64_t initrd_size);

#endif
