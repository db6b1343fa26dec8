/* fuzz_seeds.h — the option every fuzzer here takes: --write-seeds=DIR
 * writes a few valid inputs into DIR and exits (fuzz/fuzz.mk seeds each
 * corpus this way). Call from LLVMFuzzerInitialize. */
#ifndef CPRVM_FUZZ_SEEDS_H
#define CPRVM_FUZZ_SEEDS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes len bytes of data to DIR/NAME; aborts, naming the file, if it
 * cannot (a corpus without its seeds would fuzz blind). */
static inline void fuzz_seed_file(const char *dir, const char *name, const void *data,
				  size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!len || !f || fwrite(data, 1, len, f) != len || fclose(f)) {
		fprintf(stderr, "cannot write seed %s\n", path);
		abort();
	}
}

static inline void fuzz_seed_option(int argc, char **argv, void (*write)(const char *dir))
{
	static const char opt[] = "--write-seeds=";

	for (int i = 1; i < argc; i++)
		if (!strncmp(argv[i], opt, sizeof(opt) - 1)) {
			write(argv[i] + sizeof(opt) - 1);
			exit(0);
		}
}

#endif
