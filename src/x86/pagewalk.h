/* pagewalk.h — translating a guest virtual address through the guest's own
 * page tables, read from guest RAM. 4-level long mode only (the mode every
 * 64-bit guest cprvm runs uses); 5-level paging and anything malformed end
 * the walk. Reads guest memory only: nothing here writes it. */
#ifndef CPRVM_X86_PAGEWALK_H
#define CPRVM_X86_PAGEWALK_H

#include <stdbool.h>
#include <stdint.h>

#include "mem/mem.h"

#define X86_CR0_PG (1ull << 31)
#define X86_CR4_LA57 (1ull << 12)
#define X86_EFER_LMA (1ull << 10)

#define X86_PTE_P (1ull << 0)  /* present */
#define X86_PTE_PS (1ull << 7) /* in a PDPTE or PDE: a 1 GiB or 2 MiB page */
#define X86_PTE_ADDR 0x000ffffffffff000ull /* the next table's or page's frame */

/* Whether cr0/cr4/efer describe 4-level long-mode paging. */
bool x86_paging_4level(uint64_t cr0, uint64_t cr4, uint64_t efer);

/* Each page-table page the walk reads, as a host address (4 KiB). */
typedef void (*x86_walk_fn)(void *table, void *arg);

/* Walks va from cr3. 0 with *gpa the guest physical address va maps to;
 * -ENOENT at an entry that is not present, -EFAULT at a table outside RAM.
 * fn (if not NULL) sees every table page read, whatever the outcome. */
int x86_walk(struct guest_mem *mem, uint64_t cr3, uint64_t va, x86_walk_fn fn, void *arg,
	     uint64_t *gpa);

#endif
