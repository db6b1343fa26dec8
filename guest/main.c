/*
 * main.c - CPL3 side: boot sequence on the BSP, the command line, and the
 * per-CPU workload loop (heartbeat, stall probe, dirty, verify, shutdown).
 *
 * Invariants:
 *  - Every CPU's loop reads the TSC (tick()) between any two pieces of work
 *    (one page, one port access), so the largest gap the stall probe sees is
 *    a host-side pause or, at worst, one VM exit; workloads run in 20 us
 *    slices per round of the loop.
 *  - Only CPU 0 prints HB, STALL and SHUTDOWN; any CPU prints its own OK/BAD.
 *  - APs wait for `go` before touching workload memory; the BSP sets it once
 *    the areas are allocated and split.
 */
#include "guest.h"
#include "verify_page.h"

struct pcpu pcpus[GUEST_MAX_CPUS];
bool stall_probe;

static struct {
	bool heartbeat;
	u64 hb_us;
	bool dirty;
	u64 dirty_mbps, wss_mib;
	u64 verify_mib;
	bool echo;
	bool shutdown;
	u64 shutdown_ms;
	bool crash;
	bool iobench;
	bool pitcal;
	u64 gaps_us;
	bool ipi;
	bool nmi;
} opt;

static struct area dirty_area, verify_area;
static u32 nworkers;        /* CPUs online */
static u32 worker_of[GUEST_MAX_CPUS];
static u64 verify_seed;
static u64 tsc_hz;
static u64 start_tsc; /* CPU 0 entered CPL3 */
static volatile u32 go;

u32 this_cpu(void)
{
	u64 sp = (u64)__builtin_frame_address(0);
	u64 us = (u64)ustacks, ks = (u64)kstacks;

	if (sp >= us && sp < us + GUEST_MAX_CPUS * GUEST_USTACK_SIZE)
		return (u32)((sp - us) / GUEST_USTACK_SIZE);
	if (sp >= ks && sp < ks + GUEST_MAX_CPUS * GUEST_KSTACK_SIZE)
		return (u32)((sp - ks) / GUEST_KSTACK_SIZE);
	return 0;
}

/* ---- command line ----------------------------------------------------------------- */

/* Up to 32 problems, printed after the banner. */
static char opt_errs[32][160];
static u32 nr_opt_errs;

static void opt_err(const char *what, const char *tok, size_t len)
{
	if (nr_opt_errs < 32) {
		char t[128];
		size_t n = len < sizeof(t) - 1 ? len : sizeof(t) - 1;

		memcpy(t, tok, n);
		t[n] = 0;
		fmt(opt_errs[nr_opt_errs++], sizeof(opt_errs[0]), "ERR %s %s", what, t);
	}
}

/* "key" or "key=N": true if the token is this key; *val set when a number follows. */
static bool opt_key(const char *tok, size_t len, const char *key, const char **rest)
{
	size_t k = strlen(key);

	if (len < k || strncmp(tok, key, k))
		return false;
	if (len == k) {
		*rest = tok + len;
		return true;
	}
	if (tok[k] != '=')
		return false;
	*rest = tok + k + 1;
	return true;
}

static bool opt_num(const char *p, const char *end, u64 *v, const char **after)
{
	const char *e;

	if (!parse_u64(p, &e, v) || e > end)
		return false;
	*after = e;
	return true;
}

static void opt_parse_token(const char *tok, size_t len)
{
	const char *end = tok + len, *p, *e;
	u64 v;

	if (opt_key(tok, len, "heartbeat", &p)) {
		opt.heartbeat = true;
		if (p == end)
			return;
		if (opt_num(p, end, &v, &e) && e == end && v)
			opt.hb_us = v;
		else
			opt_err("bad value", tok, len);
	} else if (opt_key(tok, len, "dirty", &p) && p != end) {
		if (!opt_num(p, end, &v, &e)) {
			opt_err("bad value", tok, len);
			return;
		}
		opt.dirty = true;
		opt.heartbeat = true;
		opt.dirty_mbps = v;
		if (e == end)
			return;
		if (end - e > 5 && !strncmp(e, ",wss=", 5) && opt_num(e + 5, end, &v, &e) &&
		    e == end && v)
			opt.wss_mib = v;
		else
			opt_err("bad value", tok, len);
	} else if (opt_key(tok, len, "wss", &p) && p != end) {
		if (opt_num(p, end, &v, &e) && e == end && v)
			opt.wss_mib = v;
		else
			opt_err("bad value", tok, len);
	} else if (opt_key(tok, len, "verify", &p) && p != end) {
		if (opt_num(p, end, &v, &e) && e == end)
			opt.verify_mib = v;
		else
			opt_err("bad value", tok, len);
	} else if (opt_key(tok, len, "shutdown", &p) && p != end) {
		if (opt_num(p, end, &v, &e) && e == end) {
			opt.shutdown = true;
			opt.shutdown_ms = v;
		} else {
			opt_err("bad value", tok, len);
		}
	} else if (opt_key(tok, len, "gaps", &p) && p != end) {
		if (opt_num(p, end, &v, &e) && e == end && v)
			opt.gaps_us = v;
		else
			opt_err("bad value", tok, len);
	} else if (len == 4 && !strncmp(tok, "echo", 4)) {
		opt.echo = true;
	} else if (len == 5 && !strncmp(tok, "crash", 5)) {
		opt.crash = true;
	} else if (len == 7 && !strncmp(tok, "iobench", 7)) {
		opt.iobench = true;
	} else if (len == 6 && !strncmp(tok, "pitcal", 6)) {
		opt.pitcal = true;
	} else if (len == 3 && !strncmp(tok, "ipi", 3)) {
		opt.ipi = true;
	} else if (len == 3 && !strncmp(tok, "nmi", 3)) {
		opt.nmi = true;
	} else if (len == 11 && !strncmp(tok, "serial=cpl0", 11)) {
		serial_tx_cpl0 = true;
	} else if (len == 11 && !strncmp(tok, "serial=cpl3", 11)) {
		serial_tx_cpl0 = false;
	} else {
		opt_err("unknown option", tok, len);
	}
}

static void opt_parse(const char *s)
{
	bool any = false;

	opt.hb_us = 1000;
	opt.wss_mib = 64;
	while (*s) {
		size_t n = 0;

		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		while (s[n] && s[n] != ' ' && s[n] != '\t' && s[n] != '\n')
			n++;
		if (n) {
			opt_parse_token(s, n);
			any = true;
		}
		s += n;
	}
	if (!any)
		opt.heartbeat = true;
}

/* ---- workloads -------------------------------------------------------------------- */

struct slice {
	u64 lo, hi; /* page indexes in the area */
};

static struct slice slice_of(const struct area *a, u32 cpu)
{
	u32 w = worker_of[cpu];
	struct slice s = { a->pages * w / nworkers, a->pages * (w + 1) / nworkers };

	return s;
}

/* verify: the pattern is verify_page.h's, keyed by the page's address. */
#define VERIFY_MIN_PASS_MS 100
#define VERIFY_MAX_BAD_LINES 16

static void verify_fill(u64 pa)
{
	verify_page_fill((u64 *)pa, pa, verify_seed);
}

static bool verify_check(u64 pa)
{
	return verify_page_check((const volatile u64 *)pa, pa, verify_seed);
}

struct verify_state {
	struct slice s;
	u64 next;       /* page index */
	bool filled;
	u64 pass;       /* passes completed */
	u64 bad;        /* bad pages this pass */
	u64 pass_start; /* tsc */
	u64 wait_until; /* tsc; 0 = not waiting */
};

static void verify_step(struct verify_state *vs, u32 cpu, u64 now)
{
	if (vs->wait_until) {
		if (now < vs->wait_until)
			return;
		vs->wait_until = 0;
		vs->pass_start = now;
	}
	if (vs->next < vs->s.hi) {
		u64 pa = area_page(&verify_area, vs->next++);

		if (!vs->filled) {
			verify_fill(pa);
		} else if (!verify_check(pa)) {
			if (vs->bad++ < VERIFY_MAX_BAD_LINES)
				say("BAD 0x%lx cpu=%u", pa, cpu);
		}
		return;
	}
	/* End of a fill or a pass. */
	vs->next = vs->s.lo;
	if (!vs->filled) {
		vs->filled = true;
		vs->pass_start = now;
		return;
	}
	vs->pass++;
	if (vs->bad)
		say("FAIL %lu cpu=%u bad=%lu", vs->pass, cpu, vs->bad);
	else
		say("OK %lu cpu=%u", vs->pass, cpu);
	vs->bad = 0;
	vs->wait_until = vs->pass_start + VERIFY_MIN_PASS_MS * boot.tsc_khz;
	if (vs->wait_until <= now)
		vs->wait_until = 0, vs->pass_start = now;
}

/*
 * dirty: one 8-byte store per page at pps pages per second, cycling through this
 * CPU's slice. `credit` counts pages times tsc_hz; at most 100 ms of backlog is
 * kept, so a pause does not turn into a burst.
 */
#define DIRTY_MAX_PER_STEP 16

struct dirty_state {
	struct slice s;
	u64 next, pps, credit, last, val;
};

static void dirty_step(struct dirty_state *ds, u64 now)
{
	u64 el = now - ds->last, pages;

	ds->last = now;
	if (el > tsc_hz / 10)
		el = tsc_hz / 10;
	ds->credit += el * ds->pps;
	if (ds->credit > ds->pps * (tsc_hz / 10))
		ds->credit = ds->pps * (tsc_hz / 10);
	pages = ds->credit / tsc_hz;
	if (pages > DIRTY_MAX_PER_STEP)
		pages = DIRTY_MAX_PER_STEP;
	ds->credit -= pages * tsc_hz;
	while (pages--) {
		*(volatile u64 *)area_page(&dirty_area, ds->next) = ++ds->val;
		if (++ds->next >= ds->s.hi)
			ds->next = ds->s.lo;
	}
}

#define WORK_SLICE_US 20

/* ---- the per-CPU loop -------------------------------------------------------------- */

static void __attribute__((noreturn)) do_shutdown(void)
{
	say("SHUTDOWN");
	outw(0x604, 0x2000); /* PM1a_CNT: SLP_EN, SLP_TYP 0 (S5 on QEMU pc/q35, cprvm) */
	guest_call(SYS_HALT, 0);
	for (;;)
		;
}

/*
 * ipi: CPU 1 sends CPU 0 one fixed interrupt (IPI_VECTOR) every IPI_PERIOD_US,
 * each only once CPU 0's handler has counted the one before. One that is
 * never taken within IPI_LOST_MS is lost: a host that stops or moves the CPUs
 * must carry an interrupt in flight over, as real hardware never drops one.
 * The period keeps the sends apart from CPU 0's acknowledgements: a send can
 * come well after CPU 0 last ran, as it would while a host stops CPU 0 first.
 * nmi: the same with NMIs, which KVM keeps apart from the LAPIC's state (a
 * vCPU's pending events), not with the fixed interrupts.
 */
#define IPI_LOST_MS 3000
#define IPI_PERIOD_US 400
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310

struct ipi_state {
	volatile u64 *acks;
	u32 icr;          /* ICR low: vector and delivery mode */
	const char *name, *tag; /* "ipi" / "IPI", or "nmi" / "NMI" */
	bool waiting;
	u64 base, sent_at, taken, report;
};

static void ipi_step(struct ipi_state *is, u64 now)
{
	u64 acks = __atomic_load_n(is->acks, __ATOMIC_ACQUIRE);

	if (is->waiting && acks != is->base) {
		is->waiting = false;
		is->taken++;
	} else if (is->waiting && now - is->sent_at > IPI_LOST_MS * boot.tsc_khz) {
		say("BAD %s lost seq=%lu cpu=1", is->name, is->taken);
		is->waiting = false;
	}
	if (now >= is->report) {
		say("%s %lu cpu=1", is->tag, is->taken);
		is->report = now + tsc_hz;
	}
	if (is->waiting || now - is->sent_at < IPI_PERIOD_US * boot.tsc_khz / 1000)
		return;
	is->base = acks;
	is->sent_at = now;
	is->waiting = true;
	*(volatile u32 *)(boot.lapic + LAPIC_ICR_HI) = boot.apic_ids[0] << 24;
	*(volatile u32 *)(boot.lapic + LAPIC_ICR_LO) = is->icr; /* physical */
}

static void __attribute__((noreturn)) run(u32 cpu)
{
	struct pcpu *p = &pcpus[cpu];
	struct verify_state vs = { 0 };
	struct dirty_state ds = { 0 };
	struct ipi_state is = { .acks = &ipi_acks, .icr = IPI_VECTOR, /* fixed */
				.name = "ipi", .tag = "IPI", .report = rdtsc() + tsc_hz };
	struct ipi_state ns = { .acks = &nmi_acks, .icr = 0x4400, /* NMI, assert */
				.name = "nmi", .tag = "NMI", .report = rdtsc() + tsc_hz };
	bool verify = opt.verify_mib && verify_area.pages;
	bool dirty = opt.dirty && dirty_area.pages && opt.dirty_mbps;
	u64 now = rdtsc();
	u64 hb_period = opt.hb_us * boot.tsc_khz / 1000, hb_next = now + hb_period, hb_seq = 0;
	u64 stall_next = now + tsc_hz;
	u64 shutdown_at = start_tsc + opt.shutdown_ms * boot.tsc_khz;
	u64 slice = WORK_SLICE_US * boot.tsc_khz / 1000;

	if (!hb_period)
		hb_period = 1;
	if (verify) {
		vs.s = slice_of(&verify_area, cpu);
		vs.next = vs.s.lo;
		verify = vs.s.lo < vs.s.hi;
	}
	if (dirty) {
		ds.s = slice_of(&dirty_area, cpu);
		ds.next = ds.s.lo;
		ds.pps = opt.dirty_mbps * 256 / nworkers;
		ds.last = now;
		dirty = ds.s.lo < ds.s.hi && ds.pps;
	}
	p->last_tsc = now;

	for (;;) {
		now = tick(p);
		if (cpu == 1 && opt.ipi)
			ipi_step(&is, now);
		if (cpu == 1 && opt.nmi)
			ipi_step(&ns, now);
		if (cpu == 0) {
			if (opt.heartbeat && now >= hb_next) {
				say("HB %lu", hb_seq++);
				hb_next += hb_period;
				if (hb_next <= now) /* paused: skip the missed ticks */
					hb_next += ((now - hb_next) / hb_period + 1) * hb_period;
			}
			if (now >= stall_next) {
				u64 max = 0;

				for (u32 i = 0; i < GUEST_MAX_CPUS; i++) {
					u64 g = __atomic_exchange_n(&pcpus[i].max_gap, 0, __ATOMIC_RELAXED);

					if (g > max)
						max = g;
				}
				say("STALL %lu", max * 1000 / boot.tsc_khz);
				stall_next += tsc_hz;
				if (stall_next <= now)
					stall_next = now + tsc_hz;
			}
			for (u32 i = 0; opt.gaps_us && i < GUEST_MAX_CPUS; i++) {
				struct pcpu *c = &pcpus[i];
				u32 t = c->gap_tail;

				if (t == __atomic_load_n(&c->gap_head, __ATOMIC_ACQUIRE))
					continue;
				u64 at = c->gaps[t % GAP_RING].at, len = c->gaps[t % GAP_RING].len;
				__atomic_store_n(&c->gap_tail, t + 1, __ATOMIC_RELEASE);
				say("GAP %u %lu %lu %lu", i, at, len * 1000 / boot.tsc_khz, at + len);
			}
			if (opt.shutdown && now >= shutdown_at)
				do_shutdown();
		}
		if (!verify && !dirty) {
			cpu_relax();
			continue;
		}
		/*
		 * A fixed slice of work per round, whatever CPU 0 spent printing:
		 * verify must not advance one page per (slow) HB line.
		 */
		for (u64 end = now + slice; now < end; now = tick(p)) {
			if (verify)
				verify_step(&vs, cpu, now);
			if (dirty)
				dirty_step(&ds, now);
		}
	}
}

/*
 * iobench: the cost of the exits this guest relies on, as seen from CPL3.
 * Port 0x80 and COM1 go to the VMM in user space; 0x61 (PIT speaker) and the
 * LAPIC are handled inside KVM when the VMM uses the in-kernel irqchip/PIT.
 */
static void iobench_one(const char *name, int kind, u32 n)
{
	u64 total = 0, max = 0;
	u8 buf[16] = { 0 };

	for (u32 i = 0; i < n; i++) {
		u64 t0 = rdtsc(), t;

		switch (kind) {
		case 0: (void)inb(COM1 + 5); break;
		case 1: outb(0x80, 0); break;
		case 2: (void)inb(0x61); break;
		case 3: (void)*(volatile u32 *)(boot.lapic + 0x30); break;
		case 4: outsb(0x80, buf, 16); break;
		case 5: for (int j = 0; j < 16; j++) outb(0x80, 0); break;
		case 6: insb(0x80, buf, 14); break;
		case 7: guest_call(SYS_NULL, 0); break;
		case 8: guest_call(SYS_OUTB80, 16); break;
		case 9: serial_tx("IOBENCH-x\n", 10, NULL); break;
		case 10: guest_call2(SYS_WRITE, (u64)"IOBENCH-y\n", 10); break;
		}
		t = rdtsc() - t0;
		total += t;
		if (t > max)
			max = t;
	}
	say("IOBENCH %s avg_ns=%lu max_ns=%lu n=%u", name, total * 1000000 / boot.tsc_khz / n,
	    max * 1000000 / boot.tsc_khz, n);
}

static void iobench(void)
{
	say("IOBENCH pvh-entry-to-cpl3 us=%lu", (start_tsc - entry_tsc) * 1000 / boot.tsc_khz);
	iobench_one("inb-com1-lsr", 0, 2000);
	iobench_one("outb-0x80", 1, 2000);
	iobench_one("inb-0x61", 2, 2000);
	iobench_one("mmio-lapic-read", 3, 2000);
	iobench_one("rep-outsb-16-0x80", 4, 500);
	iobench_one("16x-outb-0x80", 5, 500);
	iobench_one("rep-insb-14-0x80", 6, 500);
	iobench_one("syscall-null", 7, 500);
	iobench_one("syscall-16x-outb-cpl0", 8, 500);
	iobench_one("line-10B-cpl3", 9, 200);
	iobench_one("line-10B-cpl0", 10, 200);
}

/* ---- boot -------------------------------------------------------------------------- */

static void __attribute__((noreturn)) ap_main(u32 cpu)
{
	struct pcpu *p = &pcpus[cpu];

	p->last_tsc = rdtsc();
	__atomic_store_n(&p->online, 1, __ATOMIC_RELEASE);
	while (!go) {
		if (stall_probe)
			tick(p);
		cpu_relax();
	}
	if (opt.echo)
		guest_call(SYS_HALT, 0);
	run(cpu);
}

static bool alloc_workload(struct area *a, u64 mib, const char *name)
{
	if (!mib)
		return true;
	if (area_alloc(a, mib * (MIB / PAGE_SIZE)))
		return true;
	a->pages = 0;
	if (!opt.echo)
		say("ERR %s: %lu MiB requested, %lu MiB of free RAM", name, mib,
		    mem_free_bytes() >> 20);
	return false;
}

static void __attribute__((noreturn)) bsp_main(void)
{
	char smp_errs[512];
	u32 online, w;

	start_tsc = rdtsc();
	boot_read_start_info();
	serial_init();
	boot_tsc();
	tsc_hz = boot.tsc_khz * 1000;
	opt_parse(boot.cmdline);
	stall_probe = !opt.echo;
	for (u32 i = 0; i < GUEST_MAX_CPUS; i++)
		pcpus[i].gap_min = opt.gaps_us * boot.tsc_khz / 1000;
	boot_read_acpi();
	boot_map_high();
	pcpus[0].apic_id = boot.apic_ids[0];
	pcpus[0].online = 1;
	pcpus[0].last_tsc = rdtsc();
	online = smp_start_aps(smp_errs, sizeof(smp_errs));

	if (!opt.echo) {
		say("GUEST ready cpus=%u mem=%lu tsc_khz=%lu cmdline=%s", online, (u64)((boot.ram_bytes + MIB / 2) >> 20),
		    boot.tsc_khz, boot.cmdline);
		for (u32 i = 0; i < nr_opt_errs; i++)
			say("%s", opt_errs[i]);
		if (smp_errs[0])
			say("ERR smp: %s", smp_errs);
		if (boot.err)
			say("ERR boot: %s", boot.err);
	}
	if (opt.ipi && online < 2) {
		if (!opt.echo)
			say("ERR ipi: needs 2 CPUs");
		opt.ipi = false;
	}
	lapic_eoi = boot.lapic + 0xb0;
	if (opt.crash)
		guest_call(SYS_CRASH, 0);
	if (opt.iobench && !opt.echo)
		iobench();
	if (opt.pitcal && !opt.echo)
		say("PITCAL khz=%lu ref_khz=%lu ref=%s", tsc_khz_from_pit(), boot.tsc_khz,
		    boot.tsc_source);

	w = 0;
	for (u32 i = 0; i < GUEST_MAX_CPUS; i++)
		if (pcpus[i].online)
			worker_of[i] = w++;
	nworkers = w;
	alloc_workload(&dirty_area, opt.dirty ? opt.wss_mib : 0, "dirty");
	verify_seed = rdtsc() * 0x2545f4914f6cdd1dULL;
	alloc_workload(&verify_area, opt.verify_mib, "verify");
	/* Where the pattern lives and its seed, so the host can check guest RAM
	 * from outside (e.g. a --mem-path file after the VM is gone). */
	if (verify_area.pages && !opt.echo)
		for (u32 i = 0; i < verify_area.nr; i++)
			say("VERIFY seed=0x%lx start=0x%lx pages=%lu", verify_seed,
			    verify_area.piece[i].start, verify_area.piece[i].pages);

	for (u32 i = 0; i < GUEST_MAX_CPUS; i++)
		__atomic_store_n(&pcpus[i].max_gap, 0, __ATOMIC_RELAXED);
	pcpus[0].last_tsc = rdtsc();
	__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
	if (opt.echo)
		serial_echo();
	run(0);
}

void user_main(u64 cpu)
{
	if (cpu == 0)
		bsp_main();
	ap_main((u32)cpu);
}
