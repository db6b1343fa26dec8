/* verify_page.h — the verify pattern, one definition for the test guest
 * (guest/main.c) and the Linux workload (tests/linux/workload.c): each
 * 8-byte word i of a page is v + i*VERIFY_K, where v mixes the page's key
 * (its physical address in the test guest, its offset in the area in the
 * workload) with a per-run seed. tests/system/test_workloads.py mirrors it
 * to check a page from outside the guest. */
#ifndef CPRVM_VERIFY_PAGE_H
#define CPRVM_VERIFY_PAGE_H

#include <stdbool.h>
#include <stdint.h>

#define VERIFY_K 0x9e3779b97f4a7c15ULL
#define VERIFY_WORDS (4096 / 8)

static inline uint64_t verify_value(uint64_t key, uint64_t seed)
{
	uint64_t x = key ^ seed;

	x ^= x >> 31;
	x *= 0xd6e8feb86659fd93ULL;
	x ^= x >> 32;
	return x | 1;
}

static inline void verify_page_fill(uint64_t *w, uint64_t key, uint64_t seed)
{
	uint64_t v = verify_value(key, seed);

	for (unsigned i = 0; i < VERIFY_WORDS; i++, v += VERIFY_K)
		w[i] = v;
}

/* volatile: memory is read on every pass, never what the compiler kept. */
static inline bool verify_page_check(const volatile uint64_t *w, uint64_t key, uint64_t seed)
{
	uint64_t v = verify_value(key, seed), bad = 0;

	for (unsigned i = 0; i < VERIFY_WORDS; i++, v += VERIFY_K)
		bad |= w[i] ^ v;
	return bad == 0;
}

#endif
