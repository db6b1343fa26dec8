/*
 * boot.c - what the guest learns at boot, at CPL3 on the BSP: the PVH start info
 * (command line, memory map), ACPI (MADT: CPUs and the LAPIC address), the TSC
 * frequency, mappings above 4 GiB, and a bump allocator over free RAM.
 *
 * Invariants: everything needed from start_info is copied into `boot` before any
 * memory below 1 MiB is reused (the AP trampoline); free RAM is RAM above the
 * image (and below 512 GiB, the reach of our one PDPT), handed out from the bottom
 * so that firmware leftovers at the top of RAM (QEMU's ACPI tables) go last.
 */
#include "guest.h"

struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

#define HVM_START_MAGIC 0x336ec578
#define E820_RAM 1
#define MAP_LIMIT (512 * GIB) /* one PDPT */

struct boot_info boot;

static struct mem_range free_ram[BOOT_MAX_RANGES];
static u32 nr_free;

static bool overlaps(u64 a, u64 alen, u64 b, u64 blen)
{
	return a < b + blen && b < a + alen;
}

/* Mark low pages that hold boot structures as unusable for the trampoline. */
static void low_reserve(u64 addr, u64 len)
{
	for (u64 pg = 0; pg < 256; pg++)
		if (len && overlaps(pg * PAGE_SIZE, PAGE_SIZE, addr, len))
			boot.low_page_ok[pg] = false;
}

static void add_ram(u64 addr, u64 size)
{
	u64 start = (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	u64 end = (addr + size) & ~(PAGE_SIZE - 1);

	boot.ram_bytes += size;
	if (end <= start || boot.nr_ram == BOOT_MAX_RANGES)
		return;
	boot.ram[boot.nr_ram].start = start;
	boot.ram[boot.nr_ram].end = end;
	boot.nr_ram++;
}

void boot_read_start_info(void)
{
	const struct hvm_start_info *si = (const void *)(u64)pvh_start_info;
	u64 image_end = (u64)__image_end;

	boot.cmdline[0] = 0;
	if (!si || si->magic != HVM_START_MAGIC) {
		boot.err = "bad PVH start info magic";
		add_ram(image_end, 64 * MIB - image_end);
		return;
	}
	if (si->cmdline_paddr && si->cmdline_paddr < 4 * GIB) {
		const char *c = (const char *)si->cmdline_paddr;
		size_t n = 0;

		while (c[n] && n < BOOT_CMDLINE_MAX - 1) {
			boot.cmdline[n] = c[n];
			n++;
		}
		boot.cmdline[n] = 0;
	}
	boot.rsdp = si->rsdp_paddr;
	if (si->version >= 1 && si->memmap_paddr && si->memmap_entries) {
		const struct hvm_memmap_entry *e = (const void *)si->memmap_paddr;

		for (u32 i = 0; i < si->memmap_entries; i++)
			if (e[i].type == E820_RAM)
				add_ram(e[i].addr, e[i].size);
	} else {
		boot.err = "no memory map in PVH start info";
		add_ram(image_end, 64 * MIB - image_end);
	}

	for (u32 pg = 0; pg < 256; pg++) {
		boot.low_page_ok[pg] = false;
		for (u32 i = 0; i < boot.nr_ram; i++)
			if (pg * PAGE_SIZE >= boot.ram[i].start && (pg + 1) * PAGE_SIZE <= boot.ram[i].end)
				boot.low_page_ok[pg] = true;
	}
	low_reserve(0, PAGE_SIZE); /* real-mode IVT/BDA */
	low_reserve(pvh_start_info, sizeof(*si));
	low_reserve(si->cmdline_paddr, BOOT_CMDLINE_MAX);
	low_reserve(si->memmap_paddr, (u64)si->memmap_entries * sizeof(struct hvm_memmap_entry));
	low_reserve(si->modlist_paddr, si->nr_modules * 32ULL);
	low_reserve(si->rsdp_paddr, 36);

	/* Free RAM: above the image and below what one PDPT maps. */
	for (u32 i = 0; i < boot.nr_ram; i++) {
		u64 s = boot.ram[i].start, e = boot.ram[i].end;

		if (s < image_end)
			s = image_end;
		if (e > MAP_LIMIT)
			e = MAP_LIMIT;
		if (s < e) {
			free_ram[nr_free].start = s;
			free_ram[nr_free].end = e;
			nr_free++;
		}
	}
}

/* ---- allocator -------------------------------------------------------------------- */

u64 mem_alloc(u64 bytes, u64 align)
{
	for (u32 i = 0; i < nr_free; i++) {
		u64 s = (free_ram[i].start + align - 1) & ~(align - 1);

		if (s < free_ram[i].end && free_ram[i].end - s >= bytes) {
			free_ram[i].start = s + bytes;
			return s;
		}
	}
	return 0;
}

u64 mem_free_bytes(void)
{
	u64 n = 0;

	for (u32 i = 0; i < nr_free; i++)
		n += free_ram[i].end - free_ram[i].start;
	return n;
}

/* Take `pages` pages of free RAM, in as few pieces as the free ranges allow. */
bool area_alloc(struct area *a, u64 pages)
{
	u64 want = pages;

	a->nr = 0;
	a->pages = pages;
	if (pages * PAGE_SIZE > mem_free_bytes())
		return false;
	for (u32 i = 0; i < nr_free && want; i++) {
		u64 have = (free_ram[i].end - free_ram[i].start) / PAGE_SIZE;
		u64 take = have < want ? have : want;

		if (!take)
			continue;
		if (a->nr == AREA_MAX_PIECES)
			return false;
		a->piece[a->nr].start = free_ram[i].start;
		a->piece[a->nr].pages = take;
		a->nr++;
		free_ram[i].start += take * PAGE_SIZE;
		want -= take;
	}
	return want == 0;
}

u64 area_page(const struct area *a, u64 idx)
{
	for (u32 i = 0; i < a->nr; i++) {
		if (idx < a->piece[i].pages)
			return a->piece[i].start + idx * PAGE_SIZE;
		idx -= a->piece[i].pages;
	}
	return 0;
}

/*
 * RAM above 4 GiB: 1 GiB pages when the CPU has them, else 2 MiB pages in page
 * directories taken from free RAM. Filled here at CPL3 through the user-writable
 * tables; entries go from not-present to present, which needs no TLB flush.
 */
void boot_map_high(void)
{
	u32 a, b, c, d;
	bool gbpages;
	u64 top = 0;

	for (u32 i = 0; i < boot.nr_ram; i++)
		if (boot.ram[i].end > top)
			top = boot.ram[i].end;
	if (top > MAP_LIMIT)
		top = MAP_LIMIT;
	if (top <= 4 * GIB)
		return;
	cpuid(0x80000000, 0, &a, &b, &c, &d);
	gbpages = false;
	if (a >= 0x80000001) {
		cpuid(0x80000001, 0, &a, &b, &c, &d);
		gbpages = d & (1u << 26);
	}
	for (u64 g = 4; g < (top + GIB - 1) / GIB; g++) {
		u64 entry;

		if (gbpages) {
			entry = (g << 30) | 0x87;
		} else {
			u64 *pd = (u64 *)mem_alloc(PAGE_SIZE, PAGE_SIZE);

			if (!pd) {
				boot.err = "no memory for page tables above 4 GiB";
				return;
			}
			for (u64 j = 0; j < 512; j++)
				pd[j] = ((g << 30) + (j << 21)) | 0x87;
			entry = (u64)pd | 0x7;
		}
		__atomic_store_n(&pdpt[g], entry, __ATOMIC_RELEASE);
	}
}

/* ---- ACPI ------------------------------------------------------------------------- */

static bool acpi_sum_ok(const u8 *p, u32 len)
{
	u8 sum = 0;

	for (u32 i = 0; i < len; i++)
		sum += p[i];
	return sum == 0;
}

static u64 acpi_find_rsdp(void)
{
	for (u64 a = 0xe0000; a < 0x100000; a += 16)
		if (!memcmp((const void *)a, "RSD PTR ", 8) && acpi_sum_ok((const u8 *)a, 20))
			return a;
	return 0;
}

static u32 rd32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u64 rd64(const u8 *p)
{
	return rd32(p) | (u64)rd32(p + 4) << 32;
}

static void acpi_madt(const u8 *madt, u32 len, u32 bsp_apic)
{
	boot.lapic = rd32(madt + 36);
	boot.ncpus = 1;
	boot.apic_ids[0] = bsp_apic;
	for (u32 off = 44; off + 2 <= len;) {
		const u8 *e = madt + off;

		if (e[1] < 2)
			break;
		if (e[0] == 0 && e[1] >= 8 && (rd32(e + 4) & 1) && e[3] != bsp_apic &&
		    boot.ncpus < GUEST_MAX_CPUS)
			boot.apic_ids[boot.ncpus++] = e[3];
		if (e[0] == 5 && e[1] >= 12)
			boot.lapic = rd64(e + 4);
		off += e[1];
	}
}

void boot_read_acpi(void)
{
	u32 a, b, c, d;
	u32 bsp_apic;
	const u8 *rsdp;
	u64 root;
	u32 width, len;

	cpuid(1, 0, &a, &b, &c, &d);
	bsp_apic = b >> 24;
	boot.ncpus = 1;
	boot.apic_ids[0] = bsp_apic;
	boot.lapic = 0xfee00000;

	if (!boot.rsdp)
		boot.rsdp = acpi_find_rsdp();
	if (!boot.rsdp || boot.rsdp >= 4 * GIB)
		return;
	rsdp = (const u8 *)boot.rsdp;
	if (memcmp(rsdp, "RSD PTR ", 8))
		return;
	if (rsdp[15] >= 2 && rd64(rsdp + 24)) {
		root = rd64(rsdp + 24);
		width = 8;
	} else {
		root = rd32(rsdp + 16);
		width = 4;
	}
	if (!root || root >= 4 * GIB)
		return;
	len = rd32((const u8 *)root + 4);
	for (u32 off = 36; off + width <= len; off += width) {
		const u8 *p = (const u8 *)root + off;
		u64 t = width == 8 ? rd64(p) : rd32(p);

		if (!t || t >= 4 * GIB)
			continue;
		if (!memcmp((const void *)t, "APIC", 4)) {
			acpi_madt((const u8 *)t, rd32((const u8 *)t + 4), bsp_apic);
			break;
		}
	}
	if (boot.lapic != 0xfee00000)
		boot.err = "LAPIC not at 0xfee00000, SMP disabled";
	if (boot.lapic != 0xfee00000)
		boot.ncpus = 1;
}

/* ---- TSC frequency ------------------------------------------------------------------ */

/*
 * PIT channel 2 in mode 0 for ~20 ms, gate through port 0x61, polling OUT2 (bit
 * 5). Each port access is a VM exit; taking midpoints of the rdtsc reads around
 * the accesses that start and end the interval keeps the error to a fraction of
 * one exit (~0.2%). A host-side stall inside the interval would inflate the
 * result (up to double), so a run whose largest step between two TSC reads exceeds
 * 1/40 of the interval is rejected; the result is the median of good runs.
 */
static u64 pit_run(bool *clean)
{
	const u64 pit_hz = 1193182, count = 23864; /* 20 ms */
	u64 t0a, t0b, prev, now, max_step, total;
	u8 v;

	v = inb(0x61);
	outb(0x61, (v & ~0x02) | 0x01); /* gate on, speaker off */
	outb(0x43, 0xb0);               /* channel 2, lo/hi byte, mode 0, binary */
	outb(0x42, count & 0xff);
	t0a = rdtsc();
	outb(0x42, count >> 8); /* counting starts */
	t0b = rdtsc();
	prev = t0b;
	max_step = t0b - t0a;
	for (;;) {
		v = inb(0x61);
		now = rdtsc();
		if (now - prev > max_step)
			max_step = now - prev;
		if (v & 0x20)
			break;
		if (now - t0a > 20000000000ULL) /* ~4 s even at 5 GHz: no PIT */
			return 0;
		prev = now;
	}
	total = (prev + now) / 2 - (t0a + t0b) / 2;
	*clean = max_step < total / 40;
	return total * pit_hz / (count * 1000);
}

u64 tsc_khz_from_pit(void)
{
	u64 good[5], min = ~0ULL;
	u32 ngood = 0;

	for (u32 tries = 0; tries < 12 && ngood < 5; tries++) {
		bool clean = false;
		u64 khz = pit_run(&clean);

		if (!khz)
			return 0;
		if (khz < min)
			min = khz;
		if (!clean)
			continue;
		/* insertion sort */
		u32 i = ngood++;
		for (; i > 0 && good[i - 1] > khz; i--)
			good[i] = good[i - 1];
		good[i] = khz;
		if (ngood == 3 && good[2] - good[0] < good[1] / 500)
			break; /* three clean runs within 0.2%: done */
	}
	return ngood ? good[ngood / 2] : min;
}

void boot_tsc(void)
{
	u32 a, b, c, d, max;

	cpuid(0, 0, &max, &b, &c, &d);
	cpuid(1, 0, &a, &b, &c, &d);
	if (c & (1u << 31)) { /* hypervisor present */
		cpuid(0x40000000, 0, &a, &b, &c, &d);
		if (a >= 0x40000010 && a < 0x40010000) {
			cpuid(0x40000010, 0, &a, &b, &c, &d);
			if (a >= 100000 && a <= 20000000) {
				boot.tsc_khz = a;
				boot.tsc_source = "cpuid-40000010";
				return;
			}
		}
	}
	if (max >= 0x15) {
		cpuid(0x15, 0, &a, &b, &c, &d);
		if (a && b && c) {
			boot.tsc_khz = (u64)c * b / a / 1000;
			boot.tsc_source = "cpuid-15";
			return;
		}
	}
	boot.tsc_khz = tsc_khz_from_pit();
	boot.tsc_source = "pit";
	if (boot.tsc_khz >= 100000)
		return;
	if (max >= 0x16) {
		cpuid(0x16, 0, &a, &b, &c, &d);
		if (a) {
			boot.tsc_khz = (u64)(a & 0xffff) * 1000;
			boot.tsc_source = "cpuid-16";
			return;
		}
	}
	boot.tsc_khz = 2000000;
	boot.tsc_source = "guess";
}
