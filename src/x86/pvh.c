/* pvh.c — see pvh.h. The ELF image is hostile input: every offset and size
 * is checked against the file and against guest RAM before anything is
 * copied. Both ELF32 and ELF64 x86 images are accepted. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "x86/pvh.h"

#define PVH_MAX_PHDRS 64

struct seg {
	uint64_t offset, filesz, paddr, memsz;
};

static int pvh_err(char *err, size_t errlen, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
	return -ENOEXEC;
}

/* Looks for the Xen PHYS32_ENTRY note in one PT_NOTE segment. */
static int pvh_find_note(const uint8_t *p, uint64_t len, uint64_t *entry)
{
	uint64_t off = 0;

	while (len - off >= 12) {
		uint32_t namesz, descsz, type;
		uint64_t name_off, desc_off, next;

		memcpy(&namesz, p + off, 4);
		memcpy(&descsz, p + off + 4, 4);
		memcpy(&type, p + off + 8, 4);
		name_off = off + 12;
		desc_off = name_off + (((uint64_t)namesz + 3) & ~3ULL);
		next = desc_off + (((uint64_t)descsz + 3) & ~3ULL);
		if (desc_off > len || next > len || desc_off + descsz > len)
			return -EINVAL; /* a note that lies about its size */
		if (type == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 &&
		    !memcmp(p + name_off, "Xen", 4)) {
			if (descsz == 4) {
				uint32_t e;
				memcpy(&e, p + desc_off, 4);
				*entry = e;
			} else if (descsz == 8) {
				memcpy(entry, p + desc_off, 8);
			} else {
				return -EINVAL;
			}
			return 1;
		}
		off = next;
	}
	return 0;
}

int pvh_load_elf(struct guest_mem *m, const void *image, size_t size, uint32_t *entry,
		 char *err, size_t errlen)
{
	const uint8_t *img = image;
	struct seg segs[PVH_MAX_PHDRS];
	int nsegs = 0, found = 0, loaded = 0, is64;
	uint64_t phoff, e = 0;
	unsigned phnum, phentsize;
	char msg[200];

	if (size >= 0x206 && !memcmp(img + 0x202, "HdrS", 4))
		return pvh_err(err, errlen,
			       "is a bzImage; only PVH ELF kernels (e.g. vmlinux) are supported so far");
	if (size < EI_NIDENT || memcmp(img, ELFMAG, SELFMAG))
		return pvh_err(err, errlen, "not an ELF file");
	if (img[EI_DATA] != ELFDATA2LSB)
		return pvh_err(err, errlen, "not a little-endian ELF");
	is64 = img[EI_CLASS] == ELFCLASS64;
	if (!is64 && img[EI_CLASS] != ELFCLASS32)
		return pvh_err(err, errlen, "unknown ELF class");
	if (is64) {
		Elf64_Ehdr eh;
		if (size < sizeof(eh))
			return pvh_err(err, errlen, "truncated ELF header");
		memcpy(&eh, img, sizeof(eh));
		if (eh.e_machine != EM_X86_64 && eh.e_machine != EM_386)
			return pvh_err(err, errlen, "ELF is not for x86");
		phoff = eh.e_phoff;
		phnum = eh.e_phnum;
		phentsize = eh.e_phentsize;
		if (phentsize != sizeof(Elf64_Phdr))
			return pvh_err(err, errlen, "bad ELF program header size");
	} else {
		Elf32_Ehdr eh;
		if (size < sizeof(eh))
			return pvh_err(err, errlen, "truncated ELF header");
		memcpy(&eh, img, sizeof(eh));
		if (eh.e_machine != EM_386 && eh.e_machine != EM_X86_64)
			return pvh_err(err, errlen, "ELF is not for x86");
		phoff = eh.e_phoff;
		phnum = eh.e_phnum;
		phentsize = eh.e_phentsize;
		if (phentsize != sizeof(Elf32_Phdr))
			return pvh_err(err, errlen, "bad ELF program header size");
	}
	if (phnum == 0 || phnum > PVH_MAX_PHDRS)
		return pvh_err(err, errlen, "ELF has no (or too many) program headers");
	if (phoff > size || (uint64_t)phnum * phentsize > size - phoff)
		return pvh_err(err, errlen, "truncated ELF: program headers past end of file");

	for (unsigned i = 0; i < phnum; i++) {
		const uint8_t *ph = img + phoff + (uint64_t)i * phentsize;
		uint32_t type;
		struct seg s;

		if (is64) {
			Elf64_Phdr p;
			memcpy(&p, ph, sizeof(p));
			type = p.p_type;
			s = (struct seg){ p.p_offset, p.p_filesz, p.p_paddr, p.p_memsz };
		} else {
			Elf32_Phdr p;
			memcpy(&p, ph, sizeof(p));
			type = p.p_type;
			s = (struct seg){ p.p_offset, p.p_filesz, p.p_paddr, p.p_memsz };
		}
		if (type != PT_LOAD && type != PT_NOTE)
			continue;
		if (s.offset > size || s.filesz > size - s.offset)
			return pvh_err(err, errlen, "truncated ELF: segment past end of file");
		if (type == PT_NOTE) {
			int r = pvh_find_note(img + s.offset, s.filesz, &e);
			if (r < 0)
				return pvh_err(err, errlen, "malformed ELF note");
			if (r > 0)
				found = 1;
			continue;
		}
		if (nsegs == PVH_MAX_PHDRS)
			return pvh_err(err, errlen, "too many ELF segments");
		segs[nsegs++] = s;
	}
	/* The note first: an ELF that is not a PVH kernel at all should be
	 * called that, not blamed for where its segments sit. */
	if (!found)
		return pvh_err(err, errlen,
			       "ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): not a PVH kernel");
	for (int i = 0, n = nsegs; i < n; i++) {
		struct seg s = segs[i];
		if (s.filesz > s.memsz)
			return pvh_err(err, errlen, "ELF segment has filesz > memsz");
		if (!s.memsz) {
			segs[i].memsz = 0;
			continue;
		}
		if (s.paddr < PVH_LOAD_MIN) {
			snprintf(msg, sizeof(msg),
				 "ELF segment at 0x%" PRIx64 " is below 1 MiB (reserved for boot data)",
				 s.paddr);
			return pvh_err(err, errlen, msg);
		}
		if (!mem_gpa_to_hva(m, s.paddr, s.memsz)) {
			snprintf(msg, sizeof(msg),
				 "ELF segment 0x%" PRIx64 "+0x%" PRIx64 " is outside guest RAM",
				 s.paddr, s.memsz);
			return pvh_err(err, errlen, msg);
		}
		loaded++;
	}
	if (!loaded)
		return pvh_err(err, errlen, "ELF has no loadable segment");
	if (e >= (1ULL << 32) || !mem_gpa_to_hva(m, e, 1)) {
		snprintf(msg, sizeof(msg), "PVH entry 0x%" PRIx64 " is not in guest RAM below 4 GiB", e);
		return pvh_err(err, errlen, msg);
	}
	/* Everything checked: now copy. */
	for (int i = 0; i < nsegs; i++) {
		uint8_t *dst;

		if (!segs[i].memsz)
			continue;
		dst = mem_gpa_to_hva(m, segs[i].paddr, segs[i].memsz);
		memcpy(dst, img + segs[i].offset, segs[i].filesz);
		memset(dst + segs[i].filesz, 0, segs[i].memsz - segs[i].filesz);
	}
	*entry = (uint32_t)e;
	return 0;
}

int pvh_load_kernel(struct guest_mem *m, const char *path, uint32_t *entry, char *err,
		    size_t errlen)
{
	struct stat st;
	void *img;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open kernel '%s': %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "kernel '%s' is not a regular file", path);
		return -EINVAL;
	}
	if (st.st_size == 0) {
		close(fd);
		snprintf(err, errlen, "kernel '%s' is empty", path);
		return -ENOEXEC;
	}
	img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (img == MAP_FAILED) {
		ret = -errno;
		snprintf(err, errlen, "cannot read kernel '%s': %s", path, strerror(-ret));
		return ret;
	}
	{
		char why[240];
		ret = pvh_load_elf(m, img, st.st_size, entry, why, sizeof(why));
		if (ret < 0)
			snprintf(err, errlen, "kernel '%s': %s", path, why);
	}
	munmap(img, st.st_size);
	return ret;
}

int pvh_setup_start_info(struct guest_mem *m, const char *cmdline, uint64_t rsdp)
{
	struct hvm_start_info *si = mem_gpa_to_hva(m, PVH_START_INFO_GPA, sizeof(*si));
	struct hvm_memmap_entry map[8];
	size_t len = cmdline ? strlen(cmdline) : 0;
	char *cl = mem_gpa_to_hva(m, PVH_CMDLINE_GPA, 4096);
	int n = 0;

	if (!si || !cl || len > 4095 || m->low_size < 2 * PVH_LOAD_MIN)
		return -EINVAL;
	map[n++] = (struct hvm_memmap_entry){ 0, 0x1000, E820_RAM, 0 };
	map[n++] = (struct hvm_memmap_entry){ 0x1000, 0x2000, E820_RESERVED, 0 };
	map[n++] = (struct hvm_memmap_entry){ 0x3000, 0x9f000 - 0x3000, E820_RAM, 0 };
	map[n++] = (struct hvm_memmap_entry){ 0x9f000, 0x100000 - 0x9f000, E820_RESERVED, 0 };
	map[n++] = (struct hvm_memmap_entry){ 0x100000, m->low_size - 0x100000, E820_RAM, 0 };
	if (m->high_size)
		map[n++] = (struct hvm_memmap_entry){ CPRVM_HIGH_MEM_BASE, m->high_size, E820_RAM, 0 };
	memcpy(mem_gpa_to_hva(m, PVH_MEMMAP_GPA, sizeof(map)), map, n * sizeof(map[0]));
	memcpy(cl, cmdline ? cmdline : "", len + 1);
	*si = (struct hvm_start_info){
		.magic = XEN_HVM_START_MAGIC,
		.version = 1,
		.cmdline_paddr = PVH_CMDLINE_GPA,
		.rsdp_paddr = rsdp,
		.memmap_paddr = PVH_MEMMAP_GPA,
		.memmap_entries = n,
	};
	return 0;
}
