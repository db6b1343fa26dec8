/* pvh.c — loads a PVH kernel (an ELF with a XEN_ELFNOTE_PHYS32_ENTRY note)
 * into guest RAM and writes the hvm_start_info, memory map and command line
 * it boots with, at the addresses pvh.h fixes. Reading the file is the
 * loader's (loader.c).
 *
 * The ELF image is hostile input: every offset and size is checked against
 * the file and against guest RAM before anything is copied, so a refused
 * image leaves RAM untouched. Both ELF32 and ELF64 x86 images are accepted.
 * pvh_load_elf() runs in steps: the header, the program headers (segments
 * and the entry note), where the segments would land, then the copy. */
#include <elf.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "x86/pvh.h"

#define PVH_MAX_PHDRS 64

struct seg {
	uint64_t offset, filesz, paddr, memsz;
};

/* Every refusal of an image is -ENOEXEC with a one-line reason. */
static int pvh_err(char *err, size_t errlen, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
	return -ENOEXEC;
}

static int pvh_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int pvh_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
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

/* An ELF image as the loader reads it, whichever its class. */
struct elf_image {
	const uint8_t *img;
	size_t size;
	bool is64;
	uint64_t phoff;
	unsigned phnum, phentsize;
};

/* What the program headers hold for the loader. */
struct elf_segs {
	struct seg load[PVH_MAX_PHDRS]; /* the PT_LOAD segments, in order */
	int nload;
	bool found;	/* a PHYS32_ENTRY note was seen */
	uint64_t entry; /* from the last PT_NOTE segment that held one */
};

/* e_ident and the class's header: an x86 ELF whose program header table
 * lies inside the file. Fills elf's class and table. */
static int pvh_check_header(struct elf_image *elf, char *err, size_t errlen)
{
	const uint8_t *img = elf->img;
	size_t size = elf->size;

	if (size >= 0x206 && !memcmp(img + 0x202, "HdrS", 4))
		return pvh_err(err, errlen, "is a bzImage, not an ELF");
	if (size < EI_NIDENT || memcmp(img, ELFMAG, SELFMAG))
		return pvh_err(err, errlen, "not an ELF file");
	if (img[EI_DATA] != ELFDATA2LSB)
		return pvh_err(err, errlen, "not a little-endian ELF");
	elf->is64 = img[EI_CLASS] == ELFCLASS64;
	if (!elf->is64 && img[EI_CLASS] != ELFCLASS32)
		return pvh_err(err, errlen, "unknown ELF class");
	if (elf->is64) {
		Elf64_Ehdr eh;
		if (size < sizeof(eh))
			return pvh_err(err, errlen, "truncated ELF header");
		memcpy(&eh, img, sizeof(eh));
		if (eh.e_machine != EM_X86_64 && eh.e_machine != EM_386)
			return pvh_err(err, errlen, "ELF is not for x86");
		elf->phoff = eh.e_phoff;
		elf->phnum = eh.e_phnum;
		elf->phentsize = eh.e_phentsize;
		if (elf->phentsize != sizeof(Elf64_Phdr))
			return pvh_err(err, errlen, "bad ELF program header size");
	} else {
		Elf32_Ehdr eh;
		if (size < sizeof(eh))
			return pvh_err(err, errlen, "truncated ELF header");
		memcpy(&eh, img, sizeof(eh));
		if (eh.e_machine != EM_386 && eh.e_machine != EM_X86_64)
			return pvh_err(err, errlen, "ELF is not for x86");
		elf->phoff = eh.e_phoff;
		elf->phnum = eh.e_phnum;
		elf->phentsize = eh.e_phentsize;
		if (elf->phentsize != sizeof(Elf32_Phdr))
			return pvh_err(err, errlen, "bad ELF program header size");
	}
	if (elf->phnum == 0 || elf->phnum > PVH_MAX_PHDRS)
		return pvh_err(err, errlen, "ELF has no (or too many) program headers");
	if (elf->phoff > size || (uint64_t)elf->phnum * elf->phentsize > size - elf->phoff)
		return pvh_err(err, errlen, "truncated ELF: program headers past end of file");
	return 0;
}

/* Program header i (inside the file: pvh_check_header) as a type and a
 * segment, whichever the class. */
static uint32_t pvh_read_phdr(const struct elf_image *elf, unsigned i, struct seg *s)
{
	const uint8_t *ph = elf->img + elf->phoff + (uint64_t)i * elf->phentsize;

	if (elf->is64) {
		Elf64_Phdr p;
		memcpy(&p, ph, sizeof(p));
		*s = (struct seg){ p.p_offset, p.p_filesz, p.p_paddr, p.p_memsz };
		return p.p_type;
	} else {
		Elf32_Phdr p;
		memcpy(&p, ph, sizeof(p));
		*s = (struct seg){ p.p_offset, p.p_filesz, p.p_paddr, p.p_memsz };
		return p.p_type;
	}
}

/* Walks the program headers in order: each PT_LOAD and PT_NOTE must lie
 * inside the file; PT_LOAD segments are kept, PT_NOTE ones searched for the
 * PVH entry. Other types are skipped. */
static int pvh_read_segments(const struct elf_image *elf, struct elf_segs *out, char *err,
			     size_t errlen)
{
	for (unsigned i = 0; i < elf->phnum; i++) {
		struct seg s;
		uint32_t type = pvh_read_phdr(elf, i, &s);

		if (type != PT_LOAD && type != PT_NOTE)
			continue;
		if (s.offset > elf->size || s.filesz > elf->size - s.offset)
			return pvh_err(err, errlen, "truncated ELF: segment past end of file");
		if (type == PT_NOTE) {
			int r = pvh_find_note(elf->img + s.offset, s.filesz, &out->entry);
			if (r < 0)
				return pvh_err(err, errlen, "malformed ELF note");
			if (r > 0)
				out->found = true;
			continue;
		}
		if (out->nload == PVH_MAX_PHDRS)
			return pvh_err(err, errlen, "too many ELF segments");
		out->load[out->nload++] = s;
	}
	return 0;
}

/* Where the image would land: every segment with a size fits in guest RAM
 * at or above 1 MiB (boot data lives below), at least one does, and the
 * entry is in RAM below 4 GiB (the guest starts in 32-bit mode). */
static int pvh_check_placement(struct guest_mem *m, const struct elf_segs *segs, char *err,
			       size_t errlen)
{
	int loaded = 0;

	for (int i = 0; i < segs->nload; i++) {
		const struct seg *s = &segs->load[i];
		if (s->filesz > s->memsz)
			return pvh_err(err, errlen, "ELF segment has filesz > memsz");
		if (!s->memsz)
			continue;
		if (s->paddr < PVH_LOAD_MIN)
			return pvh_errf(err, errlen,
					"ELF segment at 0x%" PRIx64
					" is below 1 MiB (reserved for boot data)",
					s->paddr);
		if (!mem_gpa_to_hva(m, s->paddr, s->memsz))
			return pvh_errf(err, errlen,
					"ELF segment 0x%" PRIx64 "+0x%" PRIx64
					" is outside guest RAM",
					s->paddr, s->memsz);
		loaded++;
	}
	if (!loaded)
		return pvh_err(err, errlen, "ELF has no loadable segment");
	if (segs->entry >= (1ULL << 32) || !mem_gpa_to_hva(m, segs->entry, 1))
		return pvh_errf(err, errlen,
				"PVH entry 0x%" PRIx64 " is not in guest RAM below 4 GiB",
				segs->entry);
	return 0;
}

/* Copies each segment's file bytes and zeroes the rest of its memory size.
 * Only after pvh_check_placement(): nothing here can fail. */
static void pvh_copy_segments(struct guest_mem *m, const uint8_t *img, const struct elf_segs *segs)
{
	for (int i = 0; i < segs->nload; i++) {
		const struct seg *s = &segs->load[i];
		uint8_t *dst;

		if (!s->memsz)
			continue;
		dst = mem_gpa_to_hva(m, s->paddr, s->memsz);
		memcpy(dst, img + s->offset, s->filesz);
		memset(dst + s->filesz, 0, s->memsz - s->filesz);
	}
}

int pvh_load_elf(struct guest_mem *m, const void *image, size_t size, uint32_t *entry,
		 uint64_t *end, char *err, size_t errlen)
{
	struct elf_image elf = { .img = image, .size = size };
	struct elf_segs segs = { .nload = 0 };
	int ret;

	ret = pvh_check_header(&elf, err, errlen);
	if (!ret)
		ret = pvh_read_segments(&elf, &segs, err, errlen);
	if (ret)
		return ret;
	/* The note first: an ELF that is not a PVH kernel at all should be
	 * called that, not blamed for where its segments sit. */
	if (!segs.found)
		return pvh_err(err, errlen,
			       "ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): not a PVH kernel");
	ret = pvh_check_placement(m, &segs, err, errlen);
	if (ret)
		return ret;
	/* Everything checked: now copy. */
	pvh_copy_segments(m, elf.img, &segs);
	*entry = (uint32_t)segs.entry;
	if (end) {
		*end = 0;
		for (int i = 0; i < segs.nload; i++)
			if (segs.load[i].memsz && segs.load[i].paddr + segs.load[i].memsz > *end)
				*end = segs.load[i].paddr + segs.load[i].memsz;
	}
	return 0;
}

int pvh_setup_start_info(struct guest_mem *m, const char *cmdline, uint64_t rsdp,
			 uint64_t initrd_gpa, uint64_t initrd_size)
{
	struct hvm_start_info *si = mem_gpa_to_hva(m, PVH_START_INFO_GPA, sizeof(*si));
	struct hvm_memmap_entry *map = mem_gpa_to_hva(m, PVH_MEMMAP_GPA, E820_MAX * sizeof(*map));
	struct hvm_modlist_entry *mod = mem_gpa_to_hva(m, PVH_MODLIST_GPA, sizeof(*mod));
	size_t len = cmdline ? strlen(cmdline) : 0;
	char *cl = mem_gpa_to_hva(m, PVH_CMDLINE_GPA, 4096);
	struct e820_range r[E820_MAX];
	int n = e820_build(m, r);

	if (!si || !map || !mod || !cl || len > 4095 || n < 0)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		map[i] = (struct hvm_memmap_entry){ r[i].addr, r[i].size, r[i].type, 0 };
	memcpy(cl, cmdline ? cmdline : "", len + 1);
	*si = (struct hvm_start_info){
		.magic = XEN_HVM_START_MAGIC,
		.version = 1,
		.cmdline_paddr = PVH_CMDLINE_GPA,
		.rsdp_paddr = rsdp,
		.memmap_paddr = PVH_MEMMAP_GPA,
		.memmap_entries = n,
	};
	if (initrd_size) {
		*mod = (struct hvm_modlist_entry){ .paddr = initrd_gpa, .size = initrd_size };
		si->nr_modules = 1;
		si->modlist_paddr = PVH_MODLIST_GPA;
	}
	return 0;
}
