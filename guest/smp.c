/*
 * smp.c - bringing up the APs from CPL3: copy the real-mode trampoline below
 * 1 MiB, then INIT + SIPI (+ SIPI) through the xAPIC ICR, which is mapped user-
 * accessible and uncached. One AP at a time: each takes its index from
 * ap_boot_cpu and sets ap_alive once it is on its own stack.
 *
 * CPU index i is the i-th enabled MADT entry (the BSP is 0); an AP that does not
 * start leaves its index unused.
 */
#include "guest.h"

#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_INIT 0x00004500   /* INIT, level assert */
#define ICR_STARTUP 0x00004600 /* start-up, vector = page number */
/*
 * How long an AP may take to start, as Linux allows (10 s). A host that is
 * busy, nested or sanitised can leave a vCPU thread unscheduled for over a
 * second; an AP that starts after we gave up would run as a CPU we called
 * absent.
 */
#define AP_START_MS 10000

static void lapic_write(u32 reg, u32 v)
{
	*(volatile u32 *)(boot.lapic + reg) = v;
}

static void lapic_ipi(u32 apic_id, u32 icr)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
}

static bool wait_flag(volatile u32 *flag, u64 ms)
{
	u64 t0 = rdtsc(), limit = ms * boot.tsc_khz;

	while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
		if (rdtsc() - t0 > limit)
			return false;
		cpu_relax();
	}
	return true;
}

static u64 trampoline_page(void)
{
	if (boot.low_page_ok[GUEST_TRAMPOLINE / PAGE_SIZE])
		return GUEST_TRAMPOLINE;
	for (u64 pg = 1; pg < 0xa0; pg++)
		if (boot.low_page_ok[pg])
			return pg * PAGE_SIZE;
	return 0;
}

u32 smp_start_aps(char *errs, size_t size)
{
	u64 tramp = trampoline_page();
	size_t elen = 0;
	u32 online = 1;

	errs[0] = 0;
	if (boot.ncpus < 2)
		return 1;
	if (!tramp) {
		fmt(errs, size, "no free page below 1 MiB for the AP trampoline");
		return 1;
	}
	memcpy((void *)tramp, trampoline_start, (size_t)(trampoline_end - trampoline_start));
	lapic_write(LAPIC_SVR, 0x1ff); /* software-enable the BSP's LAPIC */

	for (u32 i = 1; i < boot.ncpus; i++) {
		u32 apic = boot.apic_ids[i];

		__atomic_store_n(&ap_alive, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&ap_boot_cpu, i, __ATOMIC_RELEASE);
		pcpus[i].apic_id = apic;
		/*
		 * KVM keeps INIT and SIPI pending in order, so no delay is needed in
		 * between; the second SIPI is for CPUs that missed the first.
		 */
		lapic_ipi(apic, ICR_INIT);
		lapic_ipi(apic, ICR_STARTUP | (u32)(tramp >> 12));
		if (!wait_flag(&ap_alive, 10)) {
			lapic_ipi(apic, ICR_STARTUP | (u32)(tramp >> 12));
			if (!wait_flag(&ap_alive, AP_START_MS)) {
				elen += (size_t)fmt(errs + elen, elen < size ? size - elen : 0,
						    "%scpu %u (apic %u) did not start", elen ? "; " : "",
						    i, apic);
				continue;
			}
		}
		if (wait_flag(&pcpus[i].online, AP_START_MS))
			online++;
	}
	return online;
}
