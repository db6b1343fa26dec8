/* fuzz_seeds.h — the option every fuzzer here takes: --write-seeds=DIR
 * writes a few valid inputs into DIR and exits (fuzz/fuzz.mk seeds each
 * corpus this way). Call from LLVMFuzzerInitialize. */
#ifndef CPRVM_FUZZ_SEEDS_H
#define CPRVM_FUZZ_SEEDS_H

#include <stdlib.h>
#include <string.h>

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
