/* loader.c — see loader.h. Files are read whole (the kernel mapped, the
 * initrd read straight into guest RAM); every refusal names the file. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "x86/acpi.h"
#include "x86/linux.h"
#include "x86/loader.h"
#include "x86/pvh.h"

#define PAGE_SIZE 4096ULL

/* What the kernel leaves for the initrd. */
struct kernel_room {
	uint64_t end;	     /* first byte above the kernel's memory */
	uint64_t limit;	     /* one past the highest byte an initrd may use */
};

/* Opens path as a regular, non-empty file. what: "kernel" or "initrd". */
static int open_input(const char *what, const char *path, off_t *size, char *err,
		      size_t errlen)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret;

	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open %s '%s': %s", what, path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "%s '%s' is not a regular file", what, path);
		return -EINVAL;
	}
	if (st.st_size == 0) {
		close(fd);
		snprintf(err, errlen, "%s '%s' is empty", what, path);
		return -ENOEXEC;
	}
	*size = st.st_size;
	return fd;
}

/* Loads the kernel by its format and fills the entry and room. */
static int load_kernel_image(struct guest_mem *m, const uint8_t *img, size_t size,
			     struct linux_kernel *lk, bool *is_linux, struct x86_boot_entry *e,
			     struct kernel_room *room, char *err, size_t errlen)
{
	int ret;

	*is_linux = linux_is_bzimage(img, size);
	if (*is_linux) {
		ret = linux_load_bzimage(m, img, size, lk, err, errlen);
		if (ret < 0)
			return ret;
		*e = (struct x86_boot_entry){ .rip = LINUX_LOAD_GPA, .rsi = LINUX_ZERO_PAGE_GPA };
		room->end = lk->end;
		if ((uint64_t)lk->initrd_max + 1 < room->limit)
			room->limit = (uint64_t)lk->initrd_max + 1;
		return 0;
	}
	ret = pvh_load_elf(m, img, size, &e->rip, &room->end, err, errlen);
	e->rbx = PVH_START_INFO_GPA;
	return ret;
}

static int load_kernel(struct guest_mem *m, const char *path, struct linux_kernel *lk,
		       bool *is_linux, struct x86_boot_entry *e, struct kernel_room *room,
		       char *err, size_t errlen)
{
	char why[240];
	off_t size;
	void *img;
	int fd, ret;

	fd = open_input("kernel", path, &size, err, errlen);
	if (fd < 0)
		return fd;
	img = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (img == MAP_FAILED) {
		ret = -errno;
		snprintf(err, errlen, "cannot read kernel '%s': %s", path, strerror(-ret));
		return ret;
	}
	ret = load_kernel_image(m, img, size, lk, is_linux, e, room, why, sizeof(why));
	if (ret < 0)
		snprintf(err, errlen, "kernel '%s': %s", path, why);
	munmap(img, size);
	return ret;
}

/* An initramfs is a cpio archive, or one compressed in a format Linux
 * unpacks. Those two whose end is marked (a cpio's TRAILER!!!, an xz
 * stream's footer magic "YZ", each perhaps followed by NUL padding) are
 * checked for it: a truncated one is refused here rather than failing to
 * unpack in the guest. Other formats' truncation is found by the kernel. */
static const char *initrd_problem(const uint8_t *head, size_t hlen, const uint8_t *tail,
				  size_t tlen)
{
	enum linux_format fmt = linux_format_of(head, hlen);
	size_t end = tlen;

	if (fmt == LINUX_FMT_UNKNOWN || fmt == LINUX_FMT_ELF)
		return "is not an initramfs (neither a cpio archive nor compressed as Linux unpacks)";
	if (fmt != LINUX_FMT_CPIO && fmt != LINUX_FMT_XZ)
		return NULL;
	while (end && !tail[end - 1])
		end--;
	if ((end >= 10 && !memcmp(tail + end - 10, "TRAILER!!!", 10)) ||
	    (end >= 2 && !memcmp(tail + end - 2, "YZ", 2)))
		return NULL;
	return "is truncated (its archive has no end)";
}

/* pread until len bytes or an error: short reads are not an error. */
static int read_full(int fd, uint8_t *dst, uint64_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pread(fd, dst, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		dst += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Reads the initrd to the top of the room, checked first. */
static int load_initrd(struct guest_mem *m, const char *path, const struct kernel_room *room,
		       uint64_t *gpa, uint64_t *size, char *err, size_t errlen)
{
	uint8_t head[8] = { 0 }, tail[64] = { 0 };
	uint64_t top = room->limit < m->low_size ? room->limit : m->low_size;
	uint64_t bottom = (room->end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	const char *why;
	off_t sz;
	int fd, ret;

	fd = open_input("initrd", path, &sz, err, errlen);
	if (fd < 0)
		return fd;
	*size = sz;
	if (top < bottom || *size > ((top - bottom) & ~(PAGE_SIZE - 1))) {
		snprintf(err, errlen,
			 "initrd '%s' (%" PRIu64 " MiB) does not fit in guest RAM: %" PRIu64
			 " MiB free above the kernel",
			 path, (*size + (1 << 20) - 1) >> 20, top > bottom ? (top - bottom) >> 20 : 0);
		close(fd);
		return -ENOMEM;
	}
	*gpa = (top - *size) & ~(PAGE_SIZE - 1);
	ret = read_full(fd, head, *size < sizeof(head) ? *size : sizeof(head), 0);
	if (!ret)
		ret = read_full(fd, tail, *size < sizeof(tail) ? *size : sizeof(tail),
				*size < sizeof(tail) ? 0 : *size - sizeof(tail));
	why = ret ? NULL : initrd_problem(head, sizeof(head), tail,
					  *size < sizeof(tail) ? *size : sizeof(tail));
	if (!ret && why)
		ret = -ENOEXEC;
	else if (!ret)
		ret = read_full(fd, mem_gpa_to_hva(m, *gpa, *size), *size, 0);
	close(fd);
	if (why)
		snprintf(err, errlen, "initrd '%s' %s", path, why);
	else if (ret)
		snprintf(err, errlen, "cannot read initrd '%s': %s", path, strerror(-ret));
	return ret;
}

int x86_boot_load(struct guest_mem *m, const struct x86_boot_spec *spec,
		  struct x86_boot_entry *entry, char *err, size_t errlen)
{
	struct kernel_room room = { .limit = CPRVM_LOW_MEM_MAX };
	struct linux_kernel lk;
	uint64_t initrd_gpa = 0, initrd_size = 0, rsdp;
	bool is_linux;
	int ret;

	*entry = (struct x86_boot_entry){ 0 };
	ret = load_kernel(m, spec->kernel, &lk, &is_linux, entry, &room, err, errlen);
	if (!ret && spec->initrd)
		ret = load_initrd(m, spec->initrd, &room, &initrd_gpa, &initrd_size, err, errlen);
	if (ret < 0)
		return ret;
	rsdp = acpi_build(m, spec->nr_cpus);
	if (!rsdp) {
		snprintf(err, errlen, "cannot write the ACPI tables");
		return -EINVAL;
	}
	if (is_linux)
		return linux_setup_zero_page(m, &lk, spec->cmdline, initrd_gpa, initrd_size, rsdp,
					     err, errlen);
	if (pvh_setup_start_info(m, spec->cmdline, rsdp, initrd_gpa, initrd_size) < 0) {
		snprintf(err, errlen, "cannot write the boot information (command line too long?)");
		return -EINVAL;
	}
	return 0;
}
