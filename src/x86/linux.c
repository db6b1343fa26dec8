/* linux.c — see linux.h. The image is hostile input: every field is
 * checked against the file and guest RAM before a byte is copied. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "x86/e820.h"
#include "x86/linux.h"
#include "x86/pvh.h"

/* Setup header fields: offsets in the image's first sector, which are
 * also their offsets in the zero page. */
#define HDR_START 0x1f1
#define HDR_SETUP_SECTS 0x1f1
#define HDR_SYSSIZE 0x1f4
#define HDR_BOOT_FLAG 0x1fe
#define HDR_JUMP_END 0x201 /* the jump's offset byte: header end - 0x202 */
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_CMDLINE_SIZE 0x238
#define HDR_PAYLOAD_OFFSET 0x248
#define HDR_PAYLOAD_LENGTH 0x24c
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define HDR_MIN_END 0x264 /* through init_size */

/* Zero page fields outside the setup header. */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_E820_ENTRIES 0x1e8
#define BP_E820_TABLE 0x2d0
#define BP_E820_ENTRY_SIZE 20

#define LOADED_HIGH 0x01
#define LOADER_UNDEFINED 0xff /* a boot loader without an assigned ID */
#define PROTO_ACPI_RSDP 0x020e /* acpi_rsdp_addr is read from 2.14 */

static uint16_t get16(const uint8_t *p, size_t off)
{
	uint16_t v;
	memcpy(&v, p + off, 2);
	return v;
}

static uint32_t get32(const uint8_t *p, size_t off)
{
	uint32_t v;
	memcpy(&v, p + off, 4);
	return v;
}

static uint64_t get64(const uint8_t *p, size_t off)
{
	uint64_t v;
	memcpy(&v, p + off, 8);
	return v;
}

static void put32(uint8_t *p, size_t off, uint32_t v) { memcpy(p + off, &v, 4); }
static void put64(uint8_t *p, size_t off, uint64_t v) { memcpy(p + off, &v, 8); }

static int linux_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int linux_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -ENOEXEC;
}

bool linux_is_bzimage(const void *image, size_t size)
{
	const uint8_t *img = image;

	return size >= HDR_MAGIC + 4 && get16(img, HDR_BOOT_FLAG) == 0xaa55 &&
	       !memcmp(img + HDR_MAGIC, "HdrS", 4);
}

enum linux_format linux_format_of(const uint8_t *p, size_t len)
{
	static const struct {
		uint8_t magic[6];
		size_t len;
		enum linux_format fmt;
	} magics[] = {
		{ { 0x1f, 0x8b }, 2, LINUX_FMT_GZIP },
		{ { 'B', 'Z', 'h' }, 3, LINUX_FMT_BZIP2 },
		{ { 0x5d, 0x00, 0x00 }, 3, LINUX_FMT_LZMA },
		{ { 0xfd, '7', 'z', 'X', 'Z', 0x00 }, 6, LINUX_FMT_XZ },
		{ { 0x89, 'L', 'Z', 'O' }, 4, LINUX_FMT_LZO },
		{ { 0x02, 0x21, 0x4c, 0x18 }, 4, LINUX_FMT_LZ4 },
		{ { 0x28, 0xb5, 0x2f, 0xfd }, 4, LINUX_FMT_ZSTD },
		{ { '0', '7', '0', '7', '0' }, 5, LINUX_FMT_CPIO }, /* newc, crc, odc */
		{ { 0x7f, 'E', 'L', 'F' }, 4, LINUX_FMT_ELF },
	};

	for (size_t i = 0; i < sizeof(magics) / sizeof(magics[0]); i++)
		if (len >= magics[i].len && !memcmp(p, magics[i].magic, magics[i].len))
			return magics[i].fmt;
	return LINUX_FMT_UNKNOWN;
}

/* The header itself: a bzImage of a boot protocol we read, whose setup
 * header lies inside the file. */
static int check_header(const uint8_t *img, size_t size, struct linux_kernel *k, char *err,
			size_t errlen)
{
	uint16_t v;

	if (!linux_is_bzimage(img, size))
		return linux_err(err, errlen, "not a bzImage (no boot flag and \"HdrS\" header)");
	if (size < HDR_MIN_END)
		return linux_err(err, errlen, "truncated bzImage: %zu bytes, in its setup header",
				 size);
	v = get16(img, HDR_VERSION);
	if (v >> 8 != 2)
		return linux_err(err, errlen, "unknown boot protocol version %u.%02u", v >> 8,
				 v & 0xff);
	if (v < LINUX_PROTO_MIN)
		return linux_err(err, errlen,
				 "boot protocol %u.%02u is too old: cprvm needs %u.%02u or later",
				 v >> 8, v & 0xff, LINUX_PROTO_MIN >> 8, LINUX_PROTO_MIN & 0xff);
	k->hdr_len = HDR_MAGIC + img[HDR_JUMP_END] - HDR_START;
	if (HDR_START + k->hdr_len < HDR_MIN_END || HDR_START + k->hdr_len > 0x1000)
		return linux_err(err, errlen, "corrupt bzImage: setup header length %zu", k->hdr_len);
	if (HDR_START + k->hdr_len > size)
		return linux_err(err, errlen, "truncated bzImage: %zu bytes, setup header needs %zu",
				 size, HDR_START + k->hdr_len);
	if (!(img[HDR_LOADFLAGS] & LOADED_HIGH))
		return linux_err(err, errlen, "not a bzImage: a zImage loads low, which cprvm does not support");
	memcpy(k->hdr, img + HDR_START, k->hdr_len);
	k->version = v;
	return 0;
}

/* Where the protected-mode part is in the file, and its compressed
 * payload: both inside the file. Sets *pm_off and *pm_len. */
static int check_body(const uint8_t *img, size_t size, uint64_t *pm_off, uint64_t *pm_len,
		      char *err, size_t errlen)
{
	unsigned sects = img[HDR_SETUP_SECTS] ? img[HDR_SETUP_SECTS] : 4;
	uint64_t off = (uint64_t)(sects + 1) * 512;
	uint64_t len = (uint64_t)get32(img, HDR_SYSSIZE) * 16;
	uint64_t poff = get32(img, HDR_PAYLOAD_OFFSET), plen = get32(img, HDR_PAYLOAD_LENGTH);
	enum linux_format fmt;

	if (!len)
		return linux_err(err, errlen, "corrupt bzImage: no protected-mode code (syssize 0)");
	if (off > size || len > size - off)
		return linux_err(err, errlen,
				 "truncated bzImage: %zu bytes, its header says %" PRIu64, size,
				 off + len);
	if (!plen || poff > len || plen > len - poff)
		return linux_err(err, errlen, "corrupt bzImage: payload outside the kernel image");
	/* Compressed, or a plain ELF: anything else is a damaged image, and
	 * the guest would halt in its decompressor with nothing on the
	 * console. */
	fmt = linux_format_of(img + off + poff, plen);
	if (fmt == LINUX_FMT_UNKNOWN || fmt == LINUX_FMT_CPIO)
		return linux_err(err, errlen,
				 "corrupt bzImage: the compressed kernel is in no format Linux knows");
	*pm_off = off;
	*pm_len = len;
	return 0;
}

/* Where the kernel will run while it decompresses itself (arch/x86/boot/
 * compressed/head_64.S): from the load address rounded up to its
 * alignment, or from pref_address if that is higher, for init_size
 * bytes. All of it must be RAM. */
static int check_memory(struct guest_mem *m, const uint8_t *img, uint64_t pm_len,
			struct linux_kernel *k, char *err, size_t errlen)
{
	uint32_t align = get32(img, HDR_KERNEL_ALIGNMENT);
	uint64_t pref = get64(img, HDR_PREF_ADDRESS), init = get32(img, HDR_INIT_SIZE);
	uint64_t start = pref;

	if (img[HDR_RELOCATABLE]) {
		if (!align || (align & (align - 1)))
			return linux_err(err, errlen, "corrupt bzImage: kernel_alignment 0x%x", align);
		start = (LINUX_LOAD_GPA + align - 1) & ~(uint64_t)(align - 1);
		if (start < pref)
			start = pref;
	}
	if (init < pm_len || start > UINT32_MAX || init > UINT32_MAX)
		return linux_err(err, errlen, "corrupt bzImage: init_size 0x%" PRIx64, init);
	k->end = start + init;
	if (k->end > m->low_size || !mem_gpa_to_hva(m, LINUX_LOAD_GPA, pm_len))
		return linux_err(err, errlen,
				 "kernel needs %" PRIu64 " MiB of RAM to start, the guest has %" PRIu64
				 " MiB below 3 GiB",
				 (k->end + (1 << 20) - 1) >> 20, m->low_size >> 20);
	return 0;
}

int linux_load_bzimage(struct guest_mem *m, const void *image, size_t size,
		       struct linux_kernel *k, char *err, size_t errlen)
{
	const uint8_t *img = image;
	uint64_t pm_off = 0, pm_len = 0;
	int ret;

	memset(k, 0, sizeof(*k));
	if ((ret = check_header(img, size, k, err, errlen)) < 0 ||
	    (ret = check_body(img, size, &pm_off, &pm_len, err, errlen)) < 0 ||
	    (ret = check_memory(m, img, pm_len, k, err, errlen)) < 0)
		return ret;
	k->cmdline_max = get32(img, HDR_CMDLINE_SIZE);
	k->initrd_max = get32(img, HDR_INITRD_ADDR_MAX);
	/* Everything checked: now copy. */
	memcpy(mem_gpa_to_hva(m, LINUX_LOAD_GPA, pm_len), img + pm_off, pm_len);
	return 0;
}

/* The memory map, in the zero page's e820 table. */
static int put_e820(struct guest_mem *m, uint8_t *bp)
{
	struct e820_range map[E820_MAX];
	int n = e820_build(m, map);

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		uint8_t *e = bp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE;
		put64(e, 0, map[i].addr);
		put64(e, 8, map[i].size);
		put32(e, 16, map[i].type);
	}
	bp[BP_E820_ENTRIES] = (uint8_t)n;
	return 0;
}

int linux_setup_zero_page(struct guest_mem *m, const struct linux_kernel *k, const char *cmdline,
			  uint64_t initrd_gpa, uint64_t initrd_size, uint64_t rsdp, char *err,
			  size_t errlen)
{
	uint8_t *bp = mem_gpa_to_hva(m, LINUX_ZERO_PAGE_GPA, 4096);
	char *cl = mem_gpa_to_hva(m, PVH_CMDLINE_GPA, 4096);
	size_t len = cmdline ? strlen(cmdline) : 0;

	if (!bp || !cl) {
		snprintf(err, errlen, "guest RAM too small for the boot information");
		return -EINVAL;
	}
	if (len > k->cmdline_max || len > 4095) {
		snprintf(err, errlen, "command line too long: %zu bytes, this kernel takes %u",
			 len, k->cmdline_max < 4095 ? k->cmdline_max : 4095);
		return -EINVAL;
	}
	memset(bp, 0, 4096);
	memcpy(bp + HDR_START, k->hdr, k->hdr_len);
	if (put_e820(m, bp) < 0) {
		snprintf(err, errlen, "guest RAM too small to boot");
		return -EINVAL;
	}
	bp[HDR_TYPE_OF_LOADER] = LOADER_UNDEFINED;
	put32(bp, HDR_CMD_LINE_PTR, PVH_CMDLINE_GPA);
	memcpy(cl, cmdline ? cmdline : "", len + 1);
	put32(bp, HDR_RAMDISK_IMAGE, (uint32_t)initrd_gpa);
	put32(bp, HDR_RAMDISK_SIZE, (uint32_t)initrd_size);
	put32(bp, BP_EXT_RAMDISK_IMAGE, (uint32_t)(initrd_gpa >> 32));
	put32(bp, BP_EXT_RAMDISK_SIZE, (uint32_t)(initrd_size >> 32));
	if (k->version >= PROTO_ACPI_RSDP)
		put64(bp, BP_ACPI_RSDP_ADDR, rsdp);
	return 0;
}
