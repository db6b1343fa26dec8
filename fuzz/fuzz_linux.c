/* fuzz_linux.c — libFuzzer target for linux_load_bzimage (x86/linux.h),
 * then linux_setup_zero_page on what it accepted.
 *
 * Beyond "no crash" (ASan/UBSan) it checks the loader's promise: a refusal
 * comes with a one-line message and leaves guest RAM untouched (the memfd
 * has no page at all), a success says the kernel fits in RAM. After a
 * success RAM is punched back to holes.
 *
 * --write-seeds=DIR writes a small valid bzImage (protocol 2.15, an xz
 * payload magic) into DIR and exits; fuzz/fuzz.mk does this. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_seeds.h"
#include "mem/mem.h"
#include "x86/linux.h"

#define FUZZ_RAM (8ULL << 20)
#define SEED_SECTS 1
#define SEED_PM_OFF ((SEED_SECTS + 1) * 512)
#define SEED_PM_LEN 0x400

static struct guest_mem ram;

static void fuzz_die(const char *why, const char *err)
{
	fprintf(stderr, "fuzz_linux: %s (%s)\n", why, err ? err : "");
	abort();
}

static void put32(uint8_t *b, size_t off, uint32_t v) { memcpy(b + off, &v, 4); }

/* The setup header of a relocatable 64-bit kernel, as Debian's. */
static size_t seed_build(uint8_t *b)
{
	uint64_t pref = 0x200000;

	b[0x1f1] = SEED_SECTS;
	put32(b, 0x1f4, SEED_PM_LEN / 16);
	b[0x1fe] = 0x55;
	b[0x1ff] = 0xaa;
	b[0x201] = 0x6a;
	memcpy(b + 0x202, "HdrS", 4);
	b[0x206] = 0x0f;
	b[0x207] = 0x02;
	b[0x211] = 0x01;
	put32(b, 0x22c, 0x7fffffff);
	put32(b, 0x230, 0x200000);
	b[0x234] = 1;
	put32(b, 0x238, 2047);
	put32(b, 0x248, 0x40);
	put32(b, 0x24c, 0x100);
	memcpy(b + 0x258, &pref, 8);
	put32(b, 0x260, 0x10000);
	memcpy(b + SEED_PM_OFF + 0x40, "\xfd" "7zXZ", 6);
	return SEED_PM_OFF + SEED_PM_LEN;
}

static void seed_write(const char *dir)
{
	uint8_t b[SEED_PM_OFF + SEED_PM_LEN] = { 0 };
	size_t n = seed_build(b);
	struct linux_kernel k;
	char err[256];

	/* A seed that does not load would only teach the fuzzer refusals. */
	if (linux_load_bzimage(&ram, b, n, &k, err, sizeof(err)))
		fuzz_die("seed does not load", err);
	fuzz_seed_file(dir, "bzimage", b, n);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256] = "";

	if (mem_open(&ram, FUZZ_RAM, NULL, true, err, sizeof(err)))
		fuzz_die("mem_open", err);
	fuzz_seed_option(*argc, *argv, seed_write);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct linux_kernel k;
	char err[256] = "";
	int ret = linux_load_bzimage(&ram, data, size, &k, err, sizeof(err));

	if (ret < 0) {
		if (!err[0] || strchr(err, '\n'))
			fuzz_die("refused without a one-line message", err);
		errno = 0;
		if (lseek(ram.fd, 0, SEEK_DATA) >= 0 || errno != ENXIO)
			fuzz_die("refused but guest RAM was written", err);
		return 0;
	}
	if (ret > 0)
		fuzz_die("positive return", NULL);
	if (k.end > ram.low_size)
		fuzz_die("accepted a kernel larger than RAM", NULL);
	/* The zero page for what was accepted: a too-long command line for
	 * this kernel is refused, anything else written. */
	if (linux_setup_zero_page(&ram, &k, "console=ttyS0", 0x700000, 0x1000, 0xe0000, err,
				  sizeof(err)) < 0 && !strstr(err, "too long"))
		fuzz_die("zero page refused", err);
	if (fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)FUZZ_RAM))
		fuzz_die("cannot reset guest RAM", strerror(errno));
	return 0;
}
