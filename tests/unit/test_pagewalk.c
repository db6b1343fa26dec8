/* test_pagewalk.c — x86_walk over page tables built in a guest RAM memfd:
 * 4 KiB, 2 MiB and 1 GiB pages, a missing entry at each level, a table
 * outside RAM, and the tables the walk reports reading. No KVM. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "x86/pagewalk.h"

#define RAM (8u << 20)
#define PML4 0x1000ull
#define PDPT 0x2000ull
#define PD 0x3000ull
#define PT 0x4000ull
#define P X86_PTE_P
#define W (1ull << 1)

static struct guest_mem ram;

static int setup(void **state)
{
	char err[256];

	(void)state;
	return mem_open(&ram, RAM, NULL, true, err, sizeof(err));
}

static int teardown(void **state)
{
	(void)state;
	mem_close(&ram, true);
	return 0;
}

static void set_pte(uint64_t table, unsigned idx, uint64_t e)
{
	uint64_t *t = mem_gpa_to_hva(&ram, table + idx * 8, 8);

	assert_non_null(t);
	*t = e;
}

static unsigned idx(uint64_t va, int level)
{
	return (va >> (12 + 9 * (level - 1))) & 511;
}

/* Maps va through all four levels to a 4 KiB frame. */
static void map_4k(uint64_t va, uint64_t frame)
{
	set_pte(PML4, idx(va, 4), PDPT | P | W);
	set_pte(PDPT, idx(va, 3), PD | P | W);
	set_pte(PD, idx(va, 2), PT | P | W);
	set_pte(PT, idx(va, 1), frame | P | W);
}

struct seen {
	int n;
	void *tables[8];
};

static void note(void *table, void *arg)
{
	struct seen *s = arg;

	if (s->n < 8)
		s->tables[s->n] = table;
	s->n++;
}

static void test_4k_page(void **state)
{
	uint64_t va = 0xffff800000123abcull, gpa = 0;
	struct seen s = { 0 };

	(void)state;
	map_4k(va, 0x5000);
	assert_int_equal(x86_walk(&ram, PML4 | 0x18 /* PCD|PWT ignored */, va, note, &s, &gpa), 0);
	assert_int_equal(gpa, 0x5abc);
	assert_int_equal(s.n, 4);
	assert_ptr_equal(s.tables[0], ram.host + PML4);
	assert_ptr_equal(s.tables[3], ram.host + PT);
}

static void test_2m_page(void **state)
{
	uint64_t va = 0x40345678ull, gpa = 0;
	struct seen s = { 0 };

	(void)state;
	set_pte(PML4, idx(va, 4), PDPT | P);
	set_pte(PDPT, idx(va, 3), PD | P);
	set_pte(PD, idx(va, 2), 0x600000 | X86_PTE_PS | P);
	assert_int_equal(x86_walk(&ram, PML4, va, note, &s, &gpa), 0);
	assert_int_equal(gpa, 0x600000 + (va & 0x1fffff));
	assert_int_equal(s.n, 3);
}

static void test_1g_page(void **state)
{
	uint64_t va = 0x80000000ull + 0x1234567, gpa = 0;

	(void)state;
	set_pte(PML4, idx(va, 4), PDPT | P);
	set_pte(PDPT, idx(va, 3), 0x40000000ull | X86_PTE_PS | P);
	assert_int_equal(x86_walk(&ram, PML4, va, NULL, NULL, &gpa), 0);
	assert_int_equal(gpa, 0x40000000ull + 0x1234567);
}

/* PS in a PML4 entry or a PTE is not a large page: the walk goes on. */
static void test_ps_bit_ignored_elsewhere(void **state)
{
	uint64_t va = 0x7000, gpa = 0;

	(void)state;
	map_4k(va, 0x9000);
	set_pte(PT, idx(va, 1), 0x9000 | X86_PTE_PS | P);
	assert_int_equal(x86_walk(&ram, PML4, va, NULL, NULL, &gpa), 0);
	assert_int_equal(gpa, 0x9000);
}

static void test_not_present_each_level(void **state)
{
	uint64_t va = 0x12345000ull, gpa = 0xdead;

	(void)state;
	for (int level = 4; level >= 1; level--) {
		struct seen s = { 0 };
		uint64_t table = level == 4 ? PML4 : level == 3 ? PDPT : level == 2 ? PD : PT;

		map_4k(va, 0x5000);
		set_pte(table, idx(va, level), 0x5000); /* P clear */
		assert_int_equal(x86_walk(&ram, PML4, va, note, &s, &gpa), -ENOENT);
		assert_int_equal(s.n, 5 - level);
		assert_int_equal(gpa, 0xdead);
	}
}

static void test_table_outside_ram(void **state)
{
	uint64_t va = 0x1000, gpa = 0;

	(void)state;
	assert_int_equal(x86_walk(&ram, 0x7fff0000000ull, va, NULL, NULL, &gpa), -EFAULT);
	set_pte(PML4, idx(va, 4), 0x7fff0000000ull | P);
	assert_int_equal(x86_walk(&ram, PML4, va, NULL, NULL, &gpa), -EFAULT);
}

static void test_paging_mode(void **state)
{
	(void)state;
	assert_true(x86_paging_4level(X86_CR0_PG | 1, 0x20, X86_EFER_LMA | 0x100));
	assert_false(x86_paging_4level(X86_CR0_PG, X86_CR4_LA57, X86_EFER_LMA));
	assert_false(x86_paging_4level(0, 0, X86_EFER_LMA));
	assert_false(x86_paging_4level(X86_CR0_PG, 0x20, 0x100)); /* LME without LMA */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(test_4k_page),
		T(test_2m_page),
		T(test_1g_page),
		T(test_ps_bit_ignored_elsewhere),
		T(test_not_present_each_level),
		T(test_table_outside_ram),
		T(test_paging_mode),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
