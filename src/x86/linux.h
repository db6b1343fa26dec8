/* linux.h — the Linux/x86 boot protocol (the kernel's
 * Documentation/arch/x86/boot.rst), 32-bit entry: the bzImage every
 * distribution ships. Its protected-mode part is loaded at 1 MiB and
 * entered in flat 32-bit protected mode with ESI pointing at the zero page
 * (struct boot_params), which carries the image's setup header, the memory
 * map, the command line and the initrd.
 *
 * Guest-physical layout: the zero page at LINUX_ZERO_PAGE_GPA (the page PVH
 * uses for its start info: one protocol per boot), the command line at
 * PVH_CMDLINE_GPA; both reserved in the memory map (e820.h). */
#ifndef CPRVM_LINUX_H
#define CPRVM_LINUX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mem/mem.h"

#define LINUX_ZERO_PAGE_GPA 0x1000
#define LINUX_LOAD_GPA 0x100000
/* Boot protocol versions we read: 2.10 (Linux 2.6.31) brought init_size
 * and pref_address, which say how much memory the kernel takes while it
 * decompresses itself; major versions other than 2 are unknown. */
#define LINUX_PROTO_MIN 0x020a

/* What the loader learned from a bzImage, for the zero page. */
struct linux_kernel {
	uint8_t hdr[0x1000 - 0x1f1]; /* the setup header, as in the image */
	size_t hdr_len;
	uint16_t version;
	uint32_t cmdline_max;  /* longest command line it takes, without NUL */
	uint32_t initrd_max;   /* highest address an initrd byte may have */
	uint64_t end;	       /* end of the memory it uses while it starts */
};

/* What data starts with, by its magic: one of the compressions the
 * kernel unpacks (its own payload, an initramfs), a cpio archive, or an
 * ELF (an uncompressed payload). */
enum linux_format {
	LINUX_FMT_UNKNOWN,
	LINUX_FMT_GZIP,
	LINUX_FMT_BZIP2,
	LINUX_FMT_LZMA,
	LINUX_FMT_XZ,
	LINUX_FMT_LZO,
	LINUX_FMT_LZ4,
	LINUX_FMT_ZSTD,
	LINUX_FMT_CPIO,
	LINUX_FMT_ELF,
};

enum linux_format linux_format_of(const uint8_t *p, size_t len);

/* True if image starts like a bzImage (boot sector flag and "HdrS"). */
bool linux_is_bzimage(const void *image, size_t size);

/* Validates a bzImage held in memory and copies its protected-mode part to
 * LINUX_LOAD_GPA. Checks first, copies after: a refused image leaves RAM
 * untouched. Returns 0, or -ENOEXEC with a one-line reason in err. */
int linux_load_bzimage(struct guest_mem *m, const void *image, size_t size,
		       struct linux_kernel *k, char *err, size_t errlen);

/* Writes the zero page and the command line. initrd_size 0: none.
 * Returns 0, or -EINVAL (with err) if the command line is too long for
 * this kernel or RAM is too small. */
int linux_setup_zero_page(struct guest_mem *m, const struct linux_kernel *k, const char *cmdline,
			  uint64_t initrd_gpa, uint64_t initrd_size, uint64_t rsdp, char *err,
			  size_t errlen);

#endif
