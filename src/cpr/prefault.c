/* prefault.c — page faults taken before the blackout, not in it.
 *
 * A page fault costs microseconds on the hosts cprvm runs on, and the
 * blackout is a fraction of a millisecond: every page the blackout touches
 * for the first time is worth touching before the stop. Three kinds:
 *  - heap pages the blackout allocates (cpr_warm_heap, cpr_touch_pages);
 *  - this program's code and data pages, and the stack (cpr_prefault);
 *  - on the new side, the guest pages KVM touches first as a vCPU enters
 *    the guest (cpr_guest_prefault), done just after the vCPUs are let go. */
#include <link.h>
#include <malloc.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "x86/pagewalk.h"

/* Writes a byte into every page of [p, p + n). Not memset(p, 0, n): the
 * compiler turns malloc + memset 0 into calloc, and calloc leaves pages
 * fresh from the kernel untouched (they read as zero), which is the very
 * fault this is to take early. */
void cpr_touch_pages(void *p, size_t n)
{
	for (size_t i = 0; i < n; i += 4096)
		((volatile char *)p)[i] = 0;
	if (n)
		((volatile char *)p)[n - 1] = 0;
}

/* The blackout allocates on this task's heap: the state as structs (a vCPU
 * is ~72 KiB with its XSAVE area), the stream, the serial's pending bytes.
 * Touch enough fresh heap before the stop, and keep malloc from handing it
 * back (or from serving big blocks with new mappings). */
void cpr_warm_heap(int nr_cpus)
{
	size_t n = (4u << 20) + (size_t)nr_cpus * (160u << 10);
	void *p;

	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	p = malloc(n);
	if (p) {
		cpr_touch_pages(p, n);
		free(p);
	}
}

/* Page-table entries for every page of this program and its libraries:
 * code that runs for the first time in the blackout (the stream's parser,
 * device adoption, the build on a vCPU thread) would otherwise fault once
 * per page. Read access maps the page-cache pages; nothing is copied. It
 * reads across whole pages, the sanitizers' redzones included: not
 * instrumented. */
__attribute__((no_sanitize("address")))
static int prefault_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	long page = sysconf(_SC_PAGESIZE);

	(void)size;
	(void)arg;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t a, end;

		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_R))
			continue;
		a = (info->dlpi_addr + ph->p_vaddr) & ~(uintptr_t)(page - 1);
		end = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
		for (; a < end; a += (uintptr_t)page)
			(void)*(volatile const char *)a;
	}
	return 0;
}

/* ... and the calling thread's stack. */
void cpr_prefault(void)
{
	dl_iterate_phdr(prefault_object, NULL);
	stack_touch();
}

/* New side, the vCPUs just let go: this process's own page tables get the
 * pages KVM touches first through them as a vCPU enters the guest (the
 * guest's page tables along RIP and RSP, whose A/D bits it sets, and those
 * two pages), writable, contents untouched (MADV_POPULATE_WRITE). A fresh
 * mapping of the guest's RAM has none of them. Done by the main thread on
 * its own CPU while the vCPU thread, on another, makes its way into the
 * guest; done before RUNNING it would lengthen the blackout by as much as
 * it saves. */
static void populate_write(void *page, void *arg)
{
	(void)arg;
	madvise(page, 4096, MADV_POPULATE_WRITE);
}

static void guest_prefault_path(struct vm *vm, uint64_t cr3, uint64_t va)
{
	uint64_t gpa;
	void *page;

	if (x86_walk(&vm->mem, cr3, va, populate_write, NULL, &gpa) < 0)
		return;
	page = mem_gpa_to_hva(&vm->mem, gpa & ~0xfffull, 4096);
	if (page)
		populate_write(page, NULL);
}

void cpr_guest_prefault(struct vm *vm, const struct vcpu_state *s)
{
	if (!x86_paging_4level(s->sregs.cr0, s->sregs.cr4, s->sregs.efer))
		return;
	guest_prefault_path(vm, s->sregs.cr3, s->regs.rip);
	guest_prefault_path(vm, s->sregs.cr3, s->regs.rsp);
}
