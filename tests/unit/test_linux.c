/* test_linux.c — the Linux boot protocol loader (x86/linux.h) and the
 * initrd side of x86_boot_load (x86/loader.h): a bzImage built in memory
 * from a small model, loaded and refused; the zero page it gets; where
 * the initrd lands, and the initrds that are refused.
 *
 * "RAM untouched" is checked on the memfd: lseek(SEEK_DATA) finds no page
 * (tmpfs allocates a page on first touch). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mem/mem.h"
#include "x86/e820.h"
#include "x86/linux.h"
#include "x86/loader.h"
#include "x86/pvh.h"

#define RAM_SIZE (8ULL << 20)
#define ERRLEN 256
#define SETUP_SECTS 3
#define PM_OFF ((SETUP_SECTS + 1) * 512)
#define PM_LEN 0x2000 /* protected-mode code, a multiple of 16 */
#define PAYLOAD_OFF 0x100
#define PAYLOAD_LEN 0x1000
#define IMG_SIZE (PM_OFF + PM_LEN)
#define INIT_SIZE 0x40000
#define PREF 0x200000

static uint8_t img[IMG_SIZE + 4096];
static struct guest_mem ram;
static char dir[] = "/tmp/cprvm-test-linux-XXXXXX";

static void put16(size_t off, uint16_t v) { memcpy(img + off, &v, 2); }
static void put32(size_t off, uint32_t v) { memcpy(img + off, &v, 4); }
static void put64(size_t off, uint64_t v) { memcpy(img + off, &v, 8); }

static uint32_t zp32(size_t off)
{
	uint32_t v;
	memcpy(&v, (uint8_t *)mem_gpa_to_hva(&ram, LINUX_ZERO_PAGE_GPA, 4096) + off, 4);
	return v;
}

/* A bzImage as Debian's: protocol 2.15, relocatable, an xz payload. */
static void image_default(void)
{
	memset(img, 0, sizeof(img));
	img[0x1f1] = SETUP_SECTS;
	put32(0x1f4, PM_LEN / 16);
	put16(0x1fe, 0xaa55);
	img[0x200] = 0xeb;
	img[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(img + 0x202, "HdrS", 4);
	put16(0x206, 0x020f);
	img[0x211] = 0x01; /* LOADED_HIGH */
	put32(0x214, 0x100000);
	put32(0x22c, 0x7fffffff);
	put32(0x230, 0x200000);
	img[0x234] = 1;
	put32(0x238, 2047);
	put32(0x248, PAYLOAD_OFF);
	put32(0x24c, PAYLOAD_LEN);
	put64(0x258, PREF);
	put32(0x260, INIT_SIZE);
	memcpy(img + PM_OFF + PAYLOAD_OFF, "\xfd" "7zXZ\0", 6);
	for (size_t i = 0; i < PM_LEN; i++)
		if (i < PAYLOAD_OFF || i >= PAYLOAD_OFF + 6)
			img[PM_OFF + i] = (uint8_t)(i * 7 + 1);
}

static bool ram_untouched(void)
{
	errno = 0;
	return lseek(ram.fd, 0, SEEK_DATA) < 0 && errno == ENXIO;
}

static int fresh_ram(void **state)
{
	(void)state;
	assert_int_equal(fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
				   (off_t)ram.size), 0);
	image_default();
	return 0;
}

static void load_ok(size_t size, struct linux_kernel *k)
{
	char err[ERRLEN] = "";

	if (linux_load_bzimage(&ram, img, size, k, err, sizeof(err)))
		fail_msg("refused: %s", err);
}

/* Loads a copy of exactly size bytes of the image, so ASan sees a read
 * past the end; the loader's result, its message in err. */
static int try_load(size_t size, char *err)
{
	struct linux_kernel k;
	uint8_t *copy = malloc(size ? size : 1);
	int ret;

	memcpy(copy, img, size);
	err[0] = 0;
	ret = linux_load_bzimage(&ram, copy, size, &k, err, ERRLEN);
	free(copy);
	return ret;
}

static void refused(size_t size, const char *want)
{
	char err[ERRLEN];
	int ret = try_load(size, err);

	if (ret != -ENOEXEC)
		fail_msg("accepted (%d), wanted \"%s\"", ret, want);
	if (!strstr(err, want))
		fail_msg("error \"%s\" does not say \"%s\"", err, want);
	assert_null(strchr(err, '\n'));
	if (!ram_untouched())
		fail_msg("refused image wrote guest RAM (%s)", want);
}

static void loads_protected_mode_part(void **state)
{
	struct linux_kernel k;

	(void)state;
	load_ok(IMG_SIZE, &k);
	assert_memory_equal(mem_gpa_to_hva(&ram, LINUX_LOAD_GPA, PM_LEN), img + PM_OFF, PM_LEN);
	assert_int_equal(k.version, 0x020f);
	assert_int_equal(k.hdr_len, 0x26c - 0x1f1);
	assert_int_equal(k.cmdline_max, 2047);
	assert_int_equal(k.initrd_max, 0x7fffffff);
	/* Relocatable: decompressed at the load address rounded up to 2 MiB,
	 * or pref_address if higher, for init_size bytes. */
	assert_int_equal(k.end, PREF + INIT_SIZE);
	/* Trailing bytes (a signature, say) are not the kernel's. */
	assert_true(linux_is_bzimage(img, IMG_SIZE));
	fresh_ram(NULL);
	load_ok(IMG_SIZE + 1472, &k);
}

static void zero_page(void **state)
{
	struct linux_kernel k;
	char err[ERRLEN] = "";
	const uint8_t *bp;
	uint64_t addr, size;
	uint32_t type;

	(void)state;
	load_ok(IMG_SIZE, &k);
	assert_int_equal(linux_setup_zero_page(&ram, &k, "console=ttyS0", 0x600000, 0x1234,
					       0xe0000, err, sizeof(err)), 0);
	bp = mem_gpa_to_hva(&ram, LINUX_ZERO_PAGE_GPA, 4096);
	/* The image's setup header, as it was, with what a loader fills in. */
	assert_memory_equal(bp + 0x202, "HdrS", 4);
	assert_int_equal(bp[0x1f1], SETUP_SECTS);
	assert_int_equal(bp[0x210], 0xff);
	assert_int_equal(zp32(0x228), PVH_CMDLINE_GPA);
	assert_string_equal(mem_gpa_to_hva(&ram, PVH_CMDLINE_GPA, 4096), "console=ttyS0");
	assert_int_equal(zp32(0x218), 0x600000);
	assert_int_equal(zp32(0x21c), 0x1234);
	assert_int_equal(zp32(0x0c0), 0);
	assert_int_equal(zp32(0x070), 0xe0000); /* acpi_rsdp_addr, 2.14+ */
	assert_int_equal(bp[0x1ef], 0);		/* sentinel: all fields are ours */
	/* The memory map: e820_build's, RAM to the end. */
	assert_int_equal(bp[0x1e8], 5);
	memcpy(&addr, bp + 0x2d0 + 4 * 20, 8);
	memcpy(&size, bp + 0x2d0 + 4 * 20 + 8, 8);
	memcpy(&type, bp + 0x2d0 + 4 * 20 + 16, 4);
	assert_int_equal(addr, 0x100000);
	assert_int_equal(addr + size, RAM_SIZE);
	assert_int_equal(type, E820_RAM);
}

static void zero_page_refusals(void **state)
{
	struct linux_kernel k;
	char err[ERRLEN] = "", *cl = malloc(3000);

	(void)state;
	load_ok(IMG_SIZE, &k);
	memset(cl, 'a', 2048);
	cl[2048] = 0;
	assert_int_equal(linux_setup_zero_page(&ram, &k, cl, 0, 0, 0, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "2047"));
	cl[2047] = 0;
	assert_int_equal(linux_setup_zero_page(&ram, &k, cl, 0, 0, 0, err, sizeof(err)), 0);
	free(cl);
}

static void refusals(void **state)
{
	(void)state;
	refused(0x1f0, "not a bzImage");
	put16(0x1fe, 0x55aa);
	refused(IMG_SIZE, "not a bzImage");
	image_default();
	put16(0x206, 0x0300);
	refused(IMG_SIZE, "unknown boot protocol version 3.00");
	put16(0x206, 0x0209);
	refused(IMG_SIZE, "boot protocol 2.09 is too old");
	image_default();
	img[0x211] = 0;
	refused(IMG_SIZE, "zImage");
	image_default();
	img[0x201] = 0x10;
	refused(IMG_SIZE, "setup header length");
	image_default();
	put32(0x1f4, 0);
	refused(IMG_SIZE, "syssize 0");
	image_default();
	put32(0x24c, PM_LEN);
	refused(IMG_SIZE, "payload outside");
	image_default();
	img[PM_OFF + PAYLOAD_OFF] = 0;
	refused(IMG_SIZE, "no format Linux knows");
	image_default();
	put32(0x230, 0x300000);
	refused(IMG_SIZE, "kernel_alignment");
	image_default();
	put32(0x260, 64 << 20);
	refused(IMG_SIZE, "MiB of RAM to start");
	image_default();
	put32(0x260, PM_LEN - 16);
	refused(IMG_SIZE, "init_size");
}

/* Every cut of the file short of the protected-mode part is refused. */
static void refuses_every_truncation(void **state)
{
	(void)state;
	for (size_t size = 0; size < IMG_SIZE; size += size < 0x300 ? 1 : 97) {
		char err[ERRLEN];

		if (try_load(size, err) != -ENOEXEC)
			fail_msg("a bzImage cut to %zu bytes was accepted", size);
		assert_true(ram_untouched());
	}
}

/* ---- x86_boot_load: kernel and initrd from files ------------------------ */

static const char *write_file(const char *name, const void *data, size_t len)
{
	static char path[4][128];
	static int next;
	char *p = path[next++ % 4];
	int fd;

	snprintf(p, 128, "%s/%s", dir, name);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	return p;
}

static int boot_load(const void *initrd, size_t len, struct x86_boot_entry *e, char *err)
{
	struct x86_boot_spec spec = {
		.kernel = write_file("kernel", img, IMG_SIZE),
		.initrd = initrd ? write_file("initrd", initrd, len) : NULL,
		.cmdline = "quiet",
		.nr_cpus = 2,
	};

	err[0] = 0;
	return x86_boot_load(&ram, &spec, e, err, ERRLEN);
}

/* A small newc archive's end: the trailer entry, padded. */
static size_t make_cpio(uint8_t *out, size_t size)
{
	static const char trailer[] = "TRAILER!!!";

	memset(out, 'x', size);
	memcpy(out, "070701", 6);
	memcpy(out + size - 16, trailer, sizeof(trailer) - 1);
	memset(out + size - 6, 0, 6);
	return size;
}

static void initrd_at_top_of_ram(void **state)
{
	struct x86_boot_entry e;
	char err[ERRLEN];
	uint8_t rd[10000];

	(void)state;
	make_cpio(rd, sizeof(rd));
	if (boot_load(rd, sizeof(rd), &e, err))
		fail_msg("refused: %s", err);
	assert_int_equal(e.rip, LINUX_LOAD_GPA);
	assert_int_equal(e.rsi, LINUX_ZERO_PAGE_GPA);
	assert_int_equal(e.rbx, 0);
	/* Page-aligned, as high as it fits, whole. */
	assert_int_equal(zp32(0x218), (RAM_SIZE - sizeof(rd)) & ~4095ULL);
	assert_int_equal(zp32(0x21c), sizeof(rd));
	assert_memory_equal(mem_gpa_to_hva(&ram, zp32(0x218), sizeof(rd)), rd, sizeof(rd));
}

static void initrd_refusals(void **state)
{
	struct x86_boot_entry e;
	char err[ERRLEN];
	static uint8_t rd[8 << 20];
	size_t n;

	(void)state;
	/* Too big for the RAM above the kernel: named, with sizes. */
	n = make_cpio(rd, RAM_SIZE - PREF - INIT_SIZE + 1);
	assert_int_equal(boot_load(rd, n, &e, err), -ENOMEM);
	assert_non_null(strstr(err, "does not fit in guest RAM"));
	assert_non_null(strstr(err, "initrd '"));
	/* Just fits. */
	fresh_ram(NULL);
	n = make_cpio(rd, RAM_SIZE - PREF - INIT_SIZE);
	assert_int_equal(boot_load(rd, n, &e, err), 0);
	/* A cpio cut short, an xz stream without its footer, no archive at all. */
	fresh_ram(NULL);
	make_cpio(rd, 5000);
	assert_int_equal(boot_load(rd, 4000, &e, err), -ENOEXEC);
	assert_non_null(strstr(err, "truncated"));
	memcpy(rd, "\xfd" "7zXZ\0", 6);
	memcpy(rd + 4994, "YZ\0\0\0\0", 6);
	fresh_ram(NULL);
	assert_int_equal(boot_load(rd, 5000, &e, err), 0);
	fresh_ram(NULL);
	assert_int_equal(boot_load(rd, 4990, &e, err), -ENOEXEC);
	assert_non_null(strstr(err, "truncated"));
	memcpy(rd, "hello world", 11);
	assert_int_equal(boot_load(rd, 5000, &e, err), -ENOEXEC);
	assert_non_null(strstr(err, "not an initramfs"));
	/* gzip's end is not marked: the kernel finds its truncation. */
	memcpy(rd, "\x1f\x8b", 2);
	fresh_ram(NULL);
	assert_int_equal(boot_load(rd, 100, &e, err), 0);
	/* Empty. */
	assert_true(boot_load(rd, 0, &e, err) < 0);
	assert_non_null(strstr(err, "is empty"));
	assert_null(strchr(err, '\n'));
}

/* PVH kernels get the initrd as the start info's one module. */
static void pvh_module_list(void **state)
{
	const struct hvm_start_info *si;
	const struct hvm_modlist_entry *mod;

	(void)state;
	assert_int_equal(pvh_setup_start_info(&ram, "x", 0xe0000, 0x500000, 777), 0);
	si = mem_gpa_to_hva(&ram, PVH_START_INFO_GPA, sizeof(*si));
	assert_int_equal(si->nr_modules, 1);
	assert_int_equal(si->modlist_paddr, PVH_MODLIST_GPA);
	mod = mem_gpa_to_hva(&ram, PVH_MODLIST_GPA, sizeof(*mod));
	assert_int_equal(mod->paddr, 0x500000);
	assert_int_equal(mod->size, 777);
	assert_int_equal(mod->cmdline_paddr, 0);
	/* The module list sits after the largest memory map, in the
	 * reserved page. */
	assert_true(PVH_MEMMAP_GPA + E820_MAX * sizeof(struct hvm_memmap_entry) <= PVH_MODLIST_GPA);
	assert_int_equal(pvh_setup_start_info(&ram, "x", 0xe0000, 0, 0), 0);
	assert_int_equal(si->nr_modules, 0);
}

static int group_setup(void **state)
{
	char err[ERRLEN] = "";

	(void)state;
	if (!mkdtemp(dir) || mem_open(&ram, RAM_SIZE, NULL, true, err, sizeof(err))) {
		fprintf(stderr, "setup: %s\n", err);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	char path[160];

	(void)state;
	mem_close(&ram, false);
	snprintf(path, sizeof(path), "%s/kernel", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/initrd", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

#define T(f) cmocka_unit_test_setup(f, fresh_ram)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(loads_protected_mode_part),
		T(zero_page),
		T(zero_page_refusals),
		T(refusals),
		T(refuses_every_truncation),
		T(initrd_at_top_of_ram),
		T(initrd_refusals),
		T(pvh_module_list),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
