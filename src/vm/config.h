/* config.h — what the command line asks for (struct vm_config) and the
 * parsers behind it. Parsers never exit: they return 0 or -errno and fill a
 * one-line message for the person who typed the argument. */
#ifndef CPRVM_CONFIG_H
#define CPRVM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "dev/chardev.h"

#define CPRVM_DEFAULT_MEM (512ULL << 20)
#define CPRVM_MIN_MEM (2ULL << 20)
#define CPRVM_MAX_CPUS 64
#define CPRVM_MAX_CMDLINE 4095

struct vm_config {
	const char *kernel;
	const char *initrd;
	const char *cmdline;
	uint64_t mem_size;
	int nr_cpus;
	const char *mem_path;
	struct chardev_spec serial;
	const char *qmp_path;
	const char *incoming;
	const char *name;
};

/* "512M", "1G", "4096K", "1073741824" (bytes). Suffixes K/M/G/T, base 1024,
 * optional trailing "B"/"iB". Refuses empty, negative, fractional, overflow. */
int parse_size(const char *s, uint64_t *out, char *err, size_t errlen);

/* stdio | none | file:PATH | pty | unix:PATH */
int chardev_parse(const char *s, struct chardev_spec *out, char *err, size_t errlen);

#endif
