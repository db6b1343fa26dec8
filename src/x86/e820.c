/* e820.c — see e820.h. */
#include <errno.h>

#include "x86/e820.h"

#define LOW_RESERVED_START 0x1000
#define LOW_RESERVED_END 0x3000
#define BIOS_AREA_START 0x9f000
#define HIGH_RAM_START 0x100000

int e820_build(const struct guest_mem *m, struct e820_range *map)
{
	int n = 0;

	if (m->low_size < 2 * HIGH_RAM_START)
		return -EINVAL;
	map[n++] = (struct e820_range){ 0, LOW_RESERVED_START, E820_RAM };
	map[n++] = (struct e820_range){ LOW_RESERVED_START, LOW_RESERVED_END - LOW_RESERVED_START,
					E820_RESERVED };
	map[n++] = (struct e820_range){ LOW_RESERVED_END, BIOS_AREA_START - LOW_RESERVED_END,
					E820_RAM };
	map[n++] = (struct e820_range){ BIOS_AREA_START, HIGH_RAM_START - BIOS_AREA_START,
					E820_RESERVED };
	map[n++] = (struct e820_range){ HIGH_RAM_START, m->low_size - HIGH_RAM_START, E820_RAM };
	if (m->high_size)
		map[n++] = (struct e820_range){ CPRVM_HIGH_MEM_BASE, m->high_size, E820_RAM };
	return n;
}
