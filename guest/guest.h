/*
 * guest.h - shared declarations of the cprvm test guest.
 *
 * The guest is one identity-mapped address space (every page user-accessible):
 * CPL0 code (entry.S, kernel.c) only sets up descriptor tables and drops to CPL3;
 * CPL3 code (main.c, boot.c, smp.c, serial.c, lib.c) does everything else. On the
 * machine this was written for, CPL0 code is emulated (~1 us per instruction)
 * while CPL3 code runs natively, hence the split.
 */
#ifndef GUEST_H
#define GUEST_H

/* Layout constants, shared with entry.S. */
#define GUEST_MAX_CPUS 64
#define GUEST_KSTACK_SIZE 4096
#define GUEST_USTACK_SIZE 16384
#define GUEST_TRAMPOLINE 0x8000
#define GUEST_TSS_STRIDE 128
#define GUEST_IOMAP_SIZE 8192

#define SEL_KCODE32 0x08
#define SEL_KDATA 0x10
#define SEL_KCODE64 0x18
#define SEL_UDATA 0x23
#define SEL_UCODE64 0x2b
#define SEL_TSS0 0x30

/* Guest service calls, CPL3 -> CPL0: rax = number, rdi = argument. */
#define SYS_HALT 1  /* cli; hlt forever */
#define SYS_CRASH 2 /* triple fault */
#define SYS_NULL 3  /* return at once (iobench) */
#define SYS_OUTB80 4 /* a0 x outb to port 0x80 at CPL0 (iobench) */
#define SYS_WRITE 5 /* COM1 output of a0 = buffer, a1 = length, from CPL0 */
#define SYS_MAGIC 0x53565243 /* "CRVS", the 4 bytes after the ud2 */

#ifndef __ASSEMBLER__
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define PAGE_SIZE 4096ULL
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

/* ---- entry.S ------------------------------------------------------------ */
extern u32 pvh_start_info;           /* EBX at the PVH entry */
extern u64 entry_tsc;                /* TSC at the PVH entry */
extern volatile u32 ap_boot_cpu;     /* index the next AP takes */
extern volatile u32 ap_alive;        /* set by an AP once it owns its stack */
extern u64 pml4[512], pdpt[512];
extern u8 gdt[], tss_area[], idt[];
extern u64 isr_table[32];
#define IPI_VECTOR 0x40
extern void ipi_isr(void);
extern volatile u64 ipi_acks;        /* IPIs CPU 0 took (the `ipi` workload) */
extern void nmi_isr(void);
extern volatile u64 nmi_acks;        /* NMIs CPU 0 took (the `nmi` workload) */
extern u64 lapic_eoi;                /* address of the LAPIC's EOI register */
extern u8 trampoline_start[], trampoline_end[];
extern u8 __image_start[], __image_end[];
extern u8 ustacks[], kstacks[];
void enter_user(u64 rip, u64 rsp, u64 arg) __attribute__((noreturn));

/* ---- kernel.c (CPL0) ------------------------------------------------------ */
void kernel_main(u32 cpu) __attribute__((noreturn));

/* ---- lib.c ------------------------------------------------------------------ */
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
int vfmt(char *buf, size_t size, const char *fmt, va_list ap);
int fmt(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool parse_u64(const char *s, const char **end, u64 *out);

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
	__asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port));
}

/*
 * String I/O. Measured on the target host: KVM hands a whole `rep insb` to the
 * VMM in one exit, but `rep outsb` costs one exit per byte (used by iobench only).
 */
static inline void insb(u16 port, void *buf, u64 n)
{
	__asm__ volatile("rep insb" : "+D"(buf), "+c"(n) : "d"(port) : "memory");
}

static inline void outsb(u16 port, const void *buf, u64 n)
{
	__asm__ volatile("rep outsb" : "+S"(buf), "+c"(n) : "d"(port) : "memory");
}

/*
 * ud2 + magic: the #UD handler runs the service and resumes after the magic,
 * restoring every register but rax (the result).
 */
static inline u64 guest_call2(u64 nr, u64 a0, u64 a1)
{
	__asm__ volatile("ud2; .long %c[magic]"
			 : "+a"(nr)
			 : "D"(a0), "S"(a1), [magic] "i"(SYS_MAGIC)
			 : "memory");
	return nr;
}

static inline u64 guest_call(u64 nr, u64 a0)
{
	return guest_call2(nr, a0, 0);
}

struct pcpu;

/* ---- serial.c ----------------------------------------------------------------- */
#define COM1 0x3f8
void serial_init(void);
void serial_tx(const char *s, size_t n, struct pcpu *p); /* no locking; p ticks */
extern bool serial_tx_cpl0;
void serial_line(const char *s, size_t n);      /* whole line under the lock */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void serial_echo(void) __attribute__((noreturn));
void serial_panic_line(const char *s, size_t n); /* CPL0, bounded lock wait */

/* ---- per-CPU state and the stall probe (main.c) --------------------------------- */
#define GAP_RING 16
struct pcpu {
	u64 last_tsc;
	u64 max_gap;  /* largest rdtsc gap since CPU 0 last took it */
	u32 online;
	u32 apic_id;
	/* gaps=US: every gap longer than gap_min is queued for CPU 0 to
	 * print as a GAP line (the CPU writes head, CPU 0 reads tail). */
	u64 gap_min;
	u32 gap_head, gap_tail;
	struct { u64 at, len; } gaps[GAP_RING];
} __attribute__((aligned(64)));

extern struct pcpu pcpus[GUEST_MAX_CPUS];
extern bool stall_probe;

/* Read the TSC and account the gap since the previous read on this CPU. */
static inline u64 tick(struct pcpu *p)
{
	u64 now = rdtsc();
	u64 gap = now - p->last_tsc;

	if (gap > __atomic_load_n(&p->max_gap, __ATOMIC_RELAXED))
		__atomic_store_n(&p->max_gap, gap, __ATOMIC_RELAXED);
	if (p->gap_min && gap > p->gap_min) {
		u32 h = p->gap_head;

		if (h - __atomic_load_n(&p->gap_tail, __ATOMIC_ACQUIRE) < GAP_RING) {
			p->gaps[h % GAP_RING].at = p->last_tsc;
			p->gaps[h % GAP_RING].len = gap;
			__atomic_store_n(&p->gap_head, h + 1, __ATOMIC_RELEASE);
		}
	}
	p->last_tsc = now;
	return now;
}

u32 this_cpu(void);

/* ---- boot.c: what the PVH start info and ACPI told us --------------------------- */
struct mem_range {
	u64 start, end;
};

#define BOOT_MAX_RANGES 64
#define BOOT_CMDLINE_MAX 1024

struct boot_info {
	char cmdline[BOOT_CMDLINE_MAX];
	u64 ram_bytes;                 /* sum of all RAM regions */
	struct mem_range ram[BOOT_MAX_RANGES];  /* RAM regions, page aligned */
	u32 nr_ram;
	u64 rsdp;
	u32 ncpus;
	u32 apic_ids[GUEST_MAX_CPUS];  /* [0] is the BSP */
	u64 lapic;
	u64 tsc_khz;
	const char *tsc_source;
	bool low_page_ok[256];         /* page below 1 MiB is RAM and not a boot struct */
	const char *err;
};

extern struct boot_info boot;
void boot_read_start_info(void);
void boot_read_acpi(void);
void boot_tsc(void);
u64 tsc_khz_from_pit(void);
void boot_map_high(void);

/* A set of pages from free RAM, possibly in several physically contiguous pieces. */
#define AREA_MAX_PIECES 8
struct area {
	u64 pages;
	u32 nr;
	struct {
		u64 start, pages;
	} piece[AREA_MAX_PIECES];
};
bool area_alloc(struct area *a, u64 pages);
u64 area_page(const struct area *a, u64 idx); /* physical = virtual address */
u64 mem_alloc(u64 bytes, u64 align);  /* from RAM above the image; 0 if none */
u64 mem_free_bytes(void);

/* ---- smp.c ------------------------------------------------------------------------ */
u32 smp_start_aps(char *errs, size_t size); /* returns CPUs online */

/* ---- main.c ------------------------------------------------------------------------ */
void user_main(u64 cpu) __attribute__((noreturn));

#endif /* __ASSEMBLER__ */
#endif
