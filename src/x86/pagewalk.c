/* pagewalk.c — see pagewalk.h. */
#include <errno.h>

#include "x86/pagewalk.h"

bool x86_paging_4level(uint64_t cr0, uint64_t cr4, uint64_t efer)
{
	return (efer & X86_EFER_LMA) && (cr0 & X86_CR0_PG) && !(cr4 & X86_CR4_LA57);
}

int x86_walk(struct guest_mem *mem, uint64_t cr3, uint64_t va, x86_walk_fn fn, void *arg,
	     uint64_t *gpa)
{
	uint64_t table = cr3 & X86_PTE_ADDR;

	/* Level 4 is the PML4, level 1 the page table; each level's index is
	 * 9 bits of va above the 12-bit page offset. */
	for (int level = 4; level >= 1; level--) {
		unsigned shift = 12 + 9 * (level - 1);
		uint64_t *pt = mem_gpa_to_hva(mem, table, 4096);
		uint64_t e;

		if (!pt)
			return -EFAULT;
		if (fn)
			fn(pt, arg);
		e = pt[(va >> shift) & 511];
		if (!(e & X86_PTE_P))
			return -ENOENT;
		if ((level == 3 || level == 2) && (e & X86_PTE_PS)) {
			uint64_t size = 1ull << shift;

			*gpa = (e & X86_PTE_ADDR & ~(size - 1)) + (va & (size - 1));
			return 0;
		}
		table = e & X86_PTE_ADDR;
	}
	*gpa = table + (va & 0xfff);
	return 0;
}
