/*
 * workload.c - the Linux guest's counterpart of the test guest (guest/main.c):
 * heartbeat, stall probe, verify, dirty, plus clock and kernel-log watches.
 * It runs as /bin/cprvm-workload in the initramfs scripts/linux-guest builds
 * (and natively, for tests/host/test_linux_workload.py). It prints the test
 * guest's line formats where they overlap, so one parser reads either guest;
 * tests/linux/README.md lists the options and lines.
 *
 * Invariants:
 *  - One write(2) per line on stdout, nothing buffered: a line is out as soon
 *    as it is printed, and lines from different threads never mix.
 *  - A worker reads CLOCK_MONOTONIC between any two pieces of work (one page),
 *    so the largest gap it sees is a pause of the VM or a preemption.
 *  - verify and dirty use separate mappings: dirty never writes verify's pages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "verify_page.h"

/*
 * Kernel messages that signal a timing problem (a pause the kernel noticed);
 * each new /dev/kmsg record containing one of these prints `BAD kmsg <text>`.
 */
static const char *const kmsg_bad[] = {
	"soft lockup",           /* watchdog: BUG: soft lockup - CPU#0 stuck for 22s! */
	"hard LOCKUP",           /* Watchdog detected hard LOCKUP on cpu 1 */
	"rcu: INFO:",            /* rcu: INFO: rcu_preempt detected stalls on CPUs/tasks: */
	"detected stall",        /* rcu: INFO: rcu_sched self-detected stall on CPU */
	"blocked for more than", /* INFO: task kworker/0:1:12 blocked for more than 120 seconds. */
	"Marking clocksource",   /* clocksource: ... Marking clocksource 'tsc' as unstable ... */
	"clocksource watchdog",  /* tsc: Marking TSC unstable due to clocksource watchdog */
	"timekeeping watchdog",  /* clocksource: timekeeping watchdog on CPU1: ... */
	"BUG:",                  /* BUG: scheduling while atomic, BUG: kernel NULL pointer ... */
	"WARNING:",              /* WARNING: CPU: 0 PID: 1 at kernel/time/... */
};

typedef uint64_t u64;
typedef unsigned long long ull; /* for printf's %llu on any ABI */

#define NSEC 1000000000ULL
#define MSEC 1000000ULL
#define MIB (1ULL << 20)
#define PAGE 4096ULL
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static struct {
	bool heartbeat;
	u64 hb_us;
	bool dirty;
	u64 dirty_mbps, wss_mib;
	u64 verify_mib;
	bool clock, kmsg;
	u64 corrupt_ms; /* test only: flip a verify word after this long; 0 = never */
} opt = { .hb_us = 100000, .wss_mib = 64 };

/* ---- output and time ------------------------------------------------------- */

static void write_all(const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(1, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return; /* nobody listens: nothing better to do */
		p += w;
		n -= (size_t)w;
	}
}

static void __attribute__((format(printf, 1, 2))) say(const char *fmt, ...)
{
	char buf[1200];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2; /* a long kernel message, cut */
	buf[n++] = '\n';
	write_all(buf, (size_t)n);
}

static u64 clock_ns(clockid_t c)
{
	struct timespec t;

	clock_gettime(c, &t);
	return (u64)t.tv_sec * NSEC + (u64)t.tv_nsec;
}

static u64 now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

static void sleep_until(u64 t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / NSEC), .tv_nsec = (long)(t % NSEC) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* ---- options: space-separated tokens, as on the test guest's command line --- */

static char errs[32][160];
static unsigned nerrs;

static void opt_err(const char *what, const char *tok)
{
	if (nerrs < ARRAY_SIZE(errs))
		snprintf(errs[nerrs++], sizeof(errs[0]), "ERR %s %.120s", what, tok);
}

/* "key" or "key=...": true if tok is this key; *val is NULL or after the '='. */
static bool opt_key(const char *tok, const char *key, const char **val)
{
	size_t k = strlen(key);

	if (strncmp(tok, key, k) || (tok[k] && tok[k] != '='))
		return false;
	*val = tok[k] ? tok + k + 1 : NULL;
	return true;
}

/* A decimal number at s, at most max; *end after it. */
static bool opt_num(const char *s, u64 max, u64 *v, const char **end)
{
	u64 x = 0;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++) {
		x = x * 10 + (u64)(*p - '0');
		if (x > max)
			return false;
	}
	*v = x;
	*end = p;
	return p != s;
}

/* A whole token's value: a number in [min, max], nothing after it. */
static bool opt_val(const char *s, u64 min, u64 max, u64 *v)
{
	const char *e;

	return s && opt_num(s, max, v, &e) && !*e && *v >= min;
}

/* dirty=MBPS or dirty=MBPS,wss=MIB */
static bool opt_dirty(const char *s)
{
	const char *e;

	if (!s || !opt_num(s, 1000000, &opt.dirty_mbps, &e))
		return false;
	if (*e && (strncmp(e, ",wss=", 5) || !opt_val(e + 5, 1, 1 << 30, &opt.wss_mib)))
		return false;
	opt.dirty = opt.heartbeat = true;
	return true;
}

static void opt_token(const char *tok)
{
	const char *v;
	bool ok = true;

	if (opt_key(tok, "heartbeat", &v)) {
		opt.heartbeat = true;
		ok = !v || opt_val(v, 1, 3600 * 1000000ULL, &opt.hb_us);
	} else if (opt_key(tok, "dirty", &v) && v) {
		ok = opt_dirty(v);
	} else if (opt_key(tok, "wss", &v) && v) {
		ok = opt_val(v, 1, 1 << 30, &opt.wss_mib);
	} else if (opt_key(tok, "verify", &v) && v) {
		ok = opt_val(v, 0, 1 << 30, &opt.verify_mib);
	} else if (opt_key(tok, "corrupt-after", &v) && v) {
		ok = opt_val(v, 1, 3600 * 1000ULL, &opt.corrupt_ms);
	} else if (!strcmp(tok, "clock")) {
		opt.clock = true;
	} else if (!strcmp(tok, "kmsg")) {
		opt.kmsg = true;
	} else {
		opt_err("unknown option", tok);
		return;
	}
	if (!ok)
		opt_err("bad value", tok);
}

/* Parses cmdline in place (it is cut into tokens). */
static void opt_parse(char *cmdline)
{
	char *save = NULL, *tok;
	bool any = false;

	for (tok = strtok_r(cmdline, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		opt_token(tok);
		any = true;
	}
	if (!any)
		opt.heartbeat = true; /* as the test guest's empty command line */
}

/* ---- the stall probe ---------------------------------------------------------- */

/* The largest gap a thread saw since the last STALL line; one cache line each. */
struct slot {
	_Alignas(64) u64 max_ns;
};

static struct slot *slots; /* workers first, then heartbeat, then the ticker */
static unsigned nslots;
/* Without workers, the timed threads' lateness is the probe (see README). */
static bool timers_probe;

static void slot_note(struct slot *s, u64 gap)
{
	/* Racing STALL's reset can lose one gap at the turn of a second: fine. */
	if (gap > __atomic_load_n(&s->max_ns, __ATOMIC_RELAXED))
		__atomic_store_n(&s->max_ns, gap, __ATOMIC_RELAXED);
}

static u64 stall_take(void)
{
	u64 max = 0;

	for (unsigned i = 0; i < nslots; i++) {
		u64 g = __atomic_exchange_n(&slots[i].max_ns, 0, __ATOMIC_RELAXED);

		if (g > max)
			max = g;
	}
	return max;
}

/* ---- verify and dirty ----------------------------------------------------------- */

struct area {
	unsigned char *base;
	u64 pages;
};

static struct area verify_area, dirty_area;
static u64 verify_seed;
static unsigned verify_filled;  /* workers whose first fill is done */
static unsigned verify_fillers; /* workers with verify pages */

/* The pattern is verify_page.h's (the test guest's), keyed by the page's
 * byte offset in the area. */
#define VERIFY_MIN_PASS_NS (100 * MSEC)
#define VERIFY_MAX_BAD_LINES 16

static void verify_fill(u64 off)
{
	verify_page_fill((u64 *)(verify_area.base + off), off, verify_seed);
}

static bool verify_check(u64 off)
{
	return verify_page_check((const volatile u64 *)(verify_area.base + off), off, verify_seed);
}

struct worker {
	pthread_t thread;
	int cpu;        /* the CPU it is pinned to */
	struct slot *slot;
	u64 vlo, vhi;   /* verify pages [vlo, vhi) */
	u64 dlo, dhi;   /* dirty pages [dlo, dhi) */
	u64 pps;        /* dirty pages per second */
};

struct verify_state {
	u64 next;       /* page index */
	bool filled;
	u64 pass;       /* passes completed */
	u64 bad;        /* bad pages this pass */
	u64 pass_start; /* ns */
	u64 wait_until; /* ns; 0 = not waiting */
};

static void verify_end_pass(struct worker *w, struct verify_state *vs, u64 now)
{
	vs->next = w->vlo;
	if (!vs->filled) {
		vs->filled = true;
		__atomic_add_fetch(&verify_filled, 1, __ATOMIC_RELEASE);
		vs->pass_start = now;
		return;
	}
	vs->pass++;
	if (vs->bad)
		say("FAIL %llu cpu=%d bad=%llu", (ull)vs->pass, w->cpu, (ull)vs->bad);
	else
		say("OK %llu cpu=%d", (ull)vs->pass, w->cpu);
	vs->bad = 0;
	/* At least 100 ms a pass, as the test guest: bounded OK lines. */
	if (now - vs->pass_start < VERIFY_MIN_PASS_NS)
		vs->wait_until = vs->pass_start + VERIFY_MIN_PASS_NS;
	else
		vs->pass_start = now;
}

/* One page of fill or check, or nothing while a pass waits out its 100 ms. */
static void verify_step(struct worker *w, struct verify_state *vs, u64 now)
{
	if (vs->wait_until) {
		if (now < vs->wait_until)
			return;
		vs->wait_until = 0;
		vs->pass_start = now;
	}
	if (vs->next >= w->vhi) {
		verify_end_pass(w, vs, now);
		return;
	}
	u64 off = vs->next++ * PAGE;

	if (!vs->filled)
		verify_fill(off);
	else if (!verify_check(off) && vs->bad++ < VERIFY_MAX_BAD_LINES)
		say("BAD 0x%llx cpu=%d", (ull)off, w->cpu);
}

/*
 * dirty: one 8-byte store per page at pps pages per second, cycling through
 * this worker's pages. credit counts pages times NSEC; at most 100 ms of
 * backlog is kept, so a pause does not turn into a burst.
 */
#define DIRTY_MAX_BACKLOG_NS (100 * MSEC)
#define DIRTY_MAX_PER_STEP 16

struct dirty_state {
	u64 next, credit, last, val;
};

static void dirty_step(struct worker *w, struct dirty_state *ds, u64 now)
{
	u64 el = now - ds->last, pages;

	ds->last = now;
	if (el > DIRTY_MAX_BACKLOG_NS)
		el = DIRTY_MAX_BACKLOG_NS;
	ds->credit += el * w->pps;
	if (ds->credit > w->pps * DIRTY_MAX_BACKLOG_NS)
		ds->credit = w->pps * DIRTY_MAX_BACKLOG_NS;
	pages = ds->credit / NSEC;
	if (pages > DIRTY_MAX_PER_STEP)
		pages = DIRTY_MAX_PER_STEP;
	ds->credit -= pages * NSEC;
	while (pages--) {
		*(volatile u64 *)(dirty_area.base + ds->next * PAGE) = ++ds->val;
		if (++ds->next >= w->dhi)
			ds->next = w->dlo;
	}
}

/* A busy loop: every round reads the clock, then does one small piece of work. */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	u64 last = now_ns(), now;
	struct verify_state vs = { .next = w->vlo };
	struct dirty_state ds = { .next = w->dlo, .last = last };
	bool verify = w->vlo < w->vhi, dirty = w->dlo < w->dhi && w->pps;

	for (;;) {
		now = now_ns();
		slot_note(w->slot, now - last);
		last = now;
		if (verify)
			verify_step(w, &vs, now);
		if (dirty)
			dirty_step(w, &ds, now);
	}
	return NULL;
}

/* ---- the timed threads ----------------------------------------------------------- */

static void note_lateness(struct slot *s, u64 due)
{
	u64 now = now_ns();

	if (timers_probe && now > due)
		slot_note(s, now - due);
}

/* After a pause (or a slow line) no catch-up: the next tick on the grid after now. */
static u64 next_tick(u64 next, u64 period)
{
	u64 now = now_ns();

	next += period;
	if (next <= now)
		next += ((now - next) / period + 1) * period;
	return next;
}

static void *heartbeat_main(void *arg)
{
	struct slot *s = arg;
	u64 period = opt.hb_us * 1000, next = now_ns() + period, seq = 0;

	for (;;) {
		sleep_until(next);
		note_lateness(s, next);
		say("HB %llu", (ull)seq++);
		next = next_tick(next, period);
	}
	return NULL;
}

/* Once a second: STALL, and CLOCK with `clock`. Runs on the main thread. */
static void __attribute__((noreturn)) ticker(struct slot *s)
{
	u64 next = now_ns() + NSEC;

	for (;;) {
		sleep_until(next);
		note_lateness(s, next);
		say("STALL %llu", (ull)(stall_take() / 1000));
		if (opt.clock) {
			u64 mono = now_ns(), real = clock_ns(CLOCK_REALTIME);

			say("CLOCK %llu %llu", (ull)mono, (ull)real);
		}
		next = next_tick(next, NSEC);
	}
}

/* The text of one /dev/kmsg record ("prio,seq,usec,flags;text\n more..."). */
static void kmsg_record(char *rec)
{
	char *text = strchr(rec, ';');

	if (!text)
		return;
	text++;
	text[strcspn(text, "\n")] = 0; /* continuation lines (" KEY=value") left out */
	for (size_t i = 0; i < ARRAY_SIZE(kmsg_bad); i++) {
		if (strstr(text, kmsg_bad[i])) {
			say("BAD kmsg %s", text);
			return;
		}
	}
}

static void *kmsg_main(void *arg)
{
	char rec[8192]; /* a record never exceeds this; shorter buffers get EINVAL */
	int fd = open("/dev/kmsg", O_RDONLY | O_CLOEXEC);

	(void)arg;
	if (fd < 0) {
		say("ERR kmsg: /dev/kmsg: %s", strerror(errno));
		return NULL;
	}
	/* The backlog is history (a boot's own messages): only new problems count. */
	lseek(fd, 0, SEEK_END);
	say("KMSG ok");
	for (;;) {
		ssize_t n = read(fd, rec, sizeof(rec) - 1);

		if (n < 0 && (errno == EPIPE || errno == EINTR))
			continue; /* EPIPE: records overwritten before we read them */
		if (n <= 0) {
			say("ERR kmsg: read: %s", n ? strerror(errno) : "end of file");
			return NULL;
		}
		rec[n] = 0;
		kmsg_record(rec);
	}
}

/* corrupt-after=MS: once every worker has filled its pages, flip one bit. */
static void *corrupt_main(void *arg)
{
	u64 start = *(u64 *)arg, off = verify_area.pages / 2 * PAGE;

	while (__atomic_load_n(&verify_filled, __ATOMIC_ACQUIRE) < verify_fillers)
		usleep(1000);
	sleep_until(start + opt.corrupt_ms * MSEC);
	*(volatile u64 *)(verify_area.base + off + 24) ^= 1ULL << 17;
	say("CORRUPT 0x%llx", (ull)off);
	return NULL;
}

/* ---- setup ----------------------------------------------------------------------- */

static u64 mem_available_mib(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	unsigned long long kb;
	u64 mib = UINT64_MAX; /* unknown: let mmap decide */

	if (!f)
		return mib;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			mib = kb / 1024;
	fclose(f);
	return mib;
}

/*
 * As the test guest: a workload that does not fit is dropped with an ERR.
 * Each area has an inaccessible page on either side: a stray access off its
 * ends faults, and the area stays one mapping of its own (never merged with
 * a neighbour), which tests read from outside. The dirty area is in 4 KiB
 * pages (no THP: khugepaged's copies would dirty memory beyond the rate
 * asked for) and resident from the start (its first writes are writes, not
 * faults); verify's own fill touches its pages.
 */
static void area_alloc(struct area *a, u64 mib, const char *name, bool dirty)
{
	u64 avail = mem_available_mib();
	unsigned char *p;

	if (!mib)
		return;
	if (mib > avail) {
		say("ERR %s: %llu MiB requested, %llu MiB of free RAM", name, (ull)mib, (ull)avail);
		return;
	}
	p = mmap(NULL, mib * MIB + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || mprotect(p + PAGE, mib * MIB, PROT_READ | PROT_WRITE)) {
		say("ERR %s: %llu MiB requested, mmap: %s", name, (ull)mib, strerror(errno));
		return;
	}
	p += PAGE;
	if (dirty) {
		madvise(p, mib * MIB, MADV_NOHUGEPAGE);
		for (u64 off = 0; off < mib * MIB; off += PAGE)
			p[off] = 0;
	}
	a->base = p;
	a->pages = mib * MIB / PAGE;
}

static void spawn(pthread_t *t, const cpu_set_t *cpu, void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	int err;

	pthread_attr_init(&attr);
	if (cpu)
		pthread_attr_setaffinity_np(&attr, sizeof(*cpu), cpu);
	err = pthread_create(t, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	if (err) {
		say("ERR thread: %s", strerror(err));
		exit(1);
	}
}

/* One worker per CPU this process may run on, each pinned to its CPU. */
static void start_workers(struct worker *ws, unsigned n, const cpu_set_t *allowed)
{
	u64 pps;
	unsigned i = 0;

	if (!n)
		return;
	pps = opt.dirty_mbps * (MIB / PAGE) / n; /* 1 MB/s = 256 pages/s, as the guest */

	for (int cpu = 0; cpu < CPU_SETSIZE && i < n; cpu++) {
		struct worker *w = &ws[i];

		if (!CPU_ISSET(cpu, allowed))
			continue;
		*w = (struct worker){
			.cpu = cpu, .slot = &slots[i], .pps = pps,
			.vlo = verify_area.pages * i / n, .vhi = verify_area.pages * (i + 1) / n,
			.dlo = dirty_area.pages * i / n, .dhi = dirty_area.pages * (i + 1) / n,
		};
		if (w->vlo < w->vhi)
			verify_fillers++;
		i++;
	}
	for (i = 0; i < n; i++) {
		cpu_set_t one;

		CPU_ZERO(&one);
		CPU_SET(ws[i].cpu, &one);
		spawn(&ws[i].thread, &one, worker_main, &ws[i]);
	}
}

static void banner(int argc, char **argv, char *cmdline, size_t size)
{
	size_t n = 0;

	cmdline[0] = 0;
	for (int i = 1; i < argc && n < size; i++)
		n += (size_t)snprintf(cmdline + n, size - n, "%s%s", i > 1 ? " " : "", argv[i]);
	say("WORKLOAD ready%s%s", n ? " " : "", cmdline);
}

int main(int argc, char **argv)
{
	static char cmdline[4096];
	static u64 start;
	cpu_set_t allowed;
	unsigned ncpus;
	struct worker *ws;
	pthread_t t;

	start = now_ns();
	banner(argc, argv, cmdline, sizeof(cmdline));
	opt_parse(cmdline);
	for (unsigned i = 0; i < nerrs; i++)
		say("%s", errs[i]);
	if (nerrs)
		return 2;

	if (sched_getaffinity(0, sizeof(allowed), &allowed) || !CPU_COUNT(&allowed)) {
		CPU_ZERO(&allowed); /* unknown: one worker, on CPU 0 */
		CPU_SET(0, &allowed);
	}
	ncpus = (unsigned)CPU_COUNT(&allowed);
	if (opt.dirty && opt.dirty_mbps)
		area_alloc(&dirty_area, opt.wss_mib, "dirty", true);
	verify_seed = (now_ns() ^ (u64)getpid() << 32) * 0x2545f4914f6cdd1dULL;
	area_alloc(&verify_area, opt.verify_mib, "verify", false);
	if (opt.corrupt_ms && !verify_area.pages)
		say("ERR corrupt-after: needs verify");

	/* Busy workers only when there is work: each spins on its CPU for good. */
	unsigned nworkers = (verify_area.pages || dirty_area.pages) ? ncpus : 0;

	timers_probe = !nworkers;
	nslots = nworkers + 2;
	slots = aligned_alloc(64, nslots * sizeof(*slots));
	ws = calloc(nworkers ? nworkers : 1, sizeof(*ws));
	if (!slots || !ws) {
		say("ERR out of memory");
		return 1;
	}
	memset(slots, 0, nslots * sizeof(*slots));
	start_workers(ws, nworkers, &allowed);
	if (opt.heartbeat)
		spawn(&t, NULL, heartbeat_main, &slots[nworkers]);
	if (opt.kmsg)
		spawn(&t, NULL, kmsg_main, NULL);
	if (opt.corrupt_ms && verify_area.pages)
		spawn(&t, NULL, corrupt_main, &start);
	ticker(&slots[nworkers + 1]);
}
