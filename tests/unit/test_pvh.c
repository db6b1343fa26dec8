/* test_pvh.c — the PVH loader (x86/pvh.h): pvh_load_elf against valid and
 * hostile ELF images, the loader's file handling (x86/loader.h), and the start_info,
 * memory map and command line pvh_setup_start_info writes.
 *
 * Images are built in memory from a small model (struct model) so each case
 * states the one field it breaks. Every image is handed to the loader in a
 * heap buffer of exactly its size, so ASan sees any read past the end.
 *
 * "RAM untouched" is checked on the memfd itself: lseek(SEEK_DATA) finds no
 * page at all, i.e. nothing was written (tmpfs allocates a page on first
 * touch). ram_reset() punches the whole file back to holes. */
#include <elf.h>
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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "mem/mem.h"
#include "vm/config.h"
#include "x86/acpi.h"
#include "x86/loader.h"
#include "x86/pvh.h"

#define RAM_SIZE (2ULL << 20)
#define PAGE 4096ULL
#define ERRLEN 256

/* The default image: three program headers (note, text, data+bss). */
#define IMG_MAX 0x2000
#define MAX_PH 70
#define PHOFF 64
#define NOTE_OFF 0x180
#define SEG1_OFF 0x200
#define SEG1_SZ 0x100
#define SEG1_GPA 0x100000ULL
#define SEG2_OFF 0x300
#define SEG2_FILESZ 0x80
#define SEG2_MEMSZ 0x1000
#define SEG2_GPA 0x180000ULL
#define IMG_SIZE 0x380 /* ends with the last loaded byte */
#define ENTRY (SEG1_GPA + 0x10)

struct phdr {
	uint32_t type;
	uint64_t offset, filesz, paddr, memsz;
};

struct model {
	uint8_t cls, data;
	uint16_t machine;
	uint64_t phoff;
	uint16_t phentsize; /* 0: the class's own */
	uint16_t phnum;
	struct phdr ph[MAX_PH];
	uint32_t namesz, descsz, ntype; /* the Xen note's header, possibly lying */
	char name[4];
	uint64_t entry; /* descsz 4: low half only */
	bool gnu_note_first;
	size_t size;
};

static _Alignas(8) uint8_t buf[IMG_MAX];
static struct guest_mem ram;

/* ---- guest RAM ---------------------------------------------------------- */

static bool __ram_untouched(struct guest_mem *m)
{
	errno = 0;
	return lseek(m->fd, 0, SEEK_DATA) < 0 && errno == ENXIO;
}

static void ram_untouched(struct guest_mem *m)
{
	if (!__ram_untouched(m))
		fail_msg("guest RAM was written (first data at file offset 0x%llx)",
			 (unsigned long long)lseek(m->fd, 0, SEEK_DATA));
}

static void ram_reset(struct guest_mem *m)
{
	assert_int_equal(fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
				   (off_t)m->size), 0);
	ram_untouched(m);
}

static void mem_new(struct guest_mem *m, uint64_t size)
{
	char err[ERRLEN] = "";

	if (mem_open(m, size, NULL, true, err, sizeof(err)))
		fail_msg("mem_open(%llu): %s", (unsigned long long)size, err);
}

/* With huge shmem pages a one-byte write dirties 2 MiB: page-exact checks
 * only hold when memfds use small pages (the default, "never"/"advise"). */
static bool shmem_small_pages(void)
{
	char s[256] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");

	if (!f)
		return true;
	if (!fgets(s, sizeof(s), f))
		s[0] = '\0';
	fclose(f);
	return !*s || strstr(s, "[never]") || strstr(s, "[advise]") || strstr(s, "[deny]");
}

static uint64_t file_off_to_gpa(struct guest_mem *m, uint64_t off)
{
	return off < m->low_size ? off : off - m->low_size + CPRVM_HIGH_MEM_BASE;
}

/* Every written page of RAM lies inside [lo[i], hi[i]) for some i. */
static void written_only_within(struct guest_mem *m, const uint64_t *lo, const uint64_t *hi,
				int n)
{
	off_t pos = 0;

	if (!shmem_small_pages())
		return;
	for (;;) {
		off_t d = lseek(m->fd, pos, SEEK_DATA), h;

		if (d < 0) {
			assert_int_equal(errno, ENXIO);
			return;
		}
		h = lseek(m->fd, d, SEEK_HOLE);
		assert_true(h > d);
		for (off_t p = d; p < h; p += PAGE) {
			uint64_t g = file_off_to_gpa(m, p);
			bool ok = false;

			for (int i = 0; i < n; i++)
				ok |= g + PAGE > lo[i] && g < hi[i];
			if (!ok)
				fail_msg("guest page 0x%llx was written", (unsigned long long)g);
		}
		pos = h;
	}
}

/* ---- building images ---------------------------------------------------- */

static size_t phsize(const struct model *md)
{
	return md->cls == ELFCLASS32 ? sizeof(Elf32_Phdr) : sizeof(Elf64_Phdr);
}

static void model_default(struct model *md, uint8_t cls)
{
	memset(md, 0, sizeof(*md));
	md->cls = cls;
	md->data = ELFDATA2LSB;
	md->machine = cls == ELFCLASS32 ? EM_386 : EM_X86_64;
	md->phoff = PHOFF;
	md->phnum = 3;
	md->ph[0] = (struct phdr){ PT_NOTE, NOTE_OFF, 20, 0, 0 };
	md->ph[1] = (struct phdr){ PT_LOAD, SEG1_OFF, SEG1_SZ, SEG1_GPA, SEG1_SZ };
	md->ph[2] = (struct phdr){ PT_LOAD, SEG2_OFF, SEG2_FILESZ, SEG2_GPA, SEG2_MEMSZ };
	md->namesz = 4;
	md->descsz = 4;
	md->ntype = XEN_ELFNOTE_PHYS32_ENTRY;
	memcpy(md->name, "Xen", 4);
	md->entry = ENTRY;
	md->size = IMG_SIZE;
}

static void put(size_t off, const void *p, size_t n)
{
	assert_true(off + n <= IMG_MAX);
	memcpy(buf + off, p, n);
}

static void put32(size_t off, uint32_t v) { put(off, &v, 4); }

/* Serialises md into buf; returns the image size. */
static size_t build(const struct model *md)
{
	size_t o = NOTE_OFF;

	memset(buf, 0, sizeof(buf));
	if (md->cls == ELFCLASS32) {
		Elf32_Ehdr eh = {
			.e_type = ET_EXEC, .e_machine = md->machine, .e_version = EV_CURRENT,
			.e_entry = (uint32_t)md->entry, .e_phoff = (uint32_t)md->phoff,
			.e_ehsize = sizeof(eh), .e_phnum = md->phnum,
			.e_phentsize = md->phentsize ? md->phentsize : sizeof(Elf32_Phdr),
		};
		memcpy(eh.e_ident, ELFMAG, SELFMAG);
		eh.e_ident[EI_CLASS] = md->cls;
		eh.e_ident[EI_DATA] = md->data;
		eh.e_ident[EI_VERSION] = EV_CURRENT;
		put(0, &eh, sizeof(eh));
	} else {
		Elf64_Ehdr eh = {
			.e_type = ET_EXEC, .e_machine = md->machine, .e_version = EV_CURRENT,
			.e_entry = md->entry, .e_phoff = md->phoff, .e_ehsize = sizeof(eh),
			.e_phnum = md->phnum,
			.e_phentsize = md->phentsize ? md->phentsize : sizeof(Elf64_Phdr),
		};
		memcpy(eh.e_ident, ELFMAG, SELFMAG);
		eh.e_ident[EI_CLASS] = md->cls;
		eh.e_ident[EI_DATA] = md->data;
		eh.e_ident[EI_VERSION] = EV_CURRENT;
		put(0, &eh, sizeof(eh));
	}
	for (unsigned i = 0; i < md->phnum && i < MAX_PH; i++) {
		const struct phdr *p = &md->ph[i];
		uint64_t off = md->phoff + i * phsize(md);

		if (off >= IMG_MAX - phsize(md))
			break;
		if (md->cls == ELFCLASS32) {
			Elf32_Phdr ph = { .p_type = p->type, .p_offset = (uint32_t)p->offset,
					  .p_vaddr = (uint32_t)p->paddr, .p_paddr = (uint32_t)p->paddr,
					  .p_filesz = (uint32_t)p->filesz,
					  .p_memsz = (uint32_t)p->memsz, .p_flags = PF_R | PF_X,
					  .p_align = 4 };
			put(off, &ph, sizeof(ph));
		} else {
			Elf64_Phdr ph = { .p_type = p->type, .p_offset = p->offset,
					  .p_vaddr = p->paddr, .p_paddr = p->paddr,
					  .p_filesz = p->filesz, .p_memsz = p->memsz,
					  .p_flags = PF_R | PF_X, .p_align = 4 };
			put(off, &ph, sizeof(ph));
		}
	}
	if (md->gnu_note_first) { /* 36 bytes: a build-id note to walk past */
		put32(o, 4);
		put32(o + 4, 16);
		put32(o + 8, NT_GNU_BUILD_ID);
		put(o + 12, "GNU", 4);
		memset(buf + o + 16, 0x11, 16);
		o += 32;
	}
	put32(o, md->namesz);
	put32(o + 4, md->descsz);
	put32(o + 8, md->ntype);
	put(o + 12, md->name, 4);
	put(o + 16, &md->entry, 8);
	for (unsigned i = 0; i < SEG1_SZ; i++)
		buf[SEG1_OFF + i] = (uint8_t)(i * 7 + 1);
	for (unsigned i = 0; i < SEG2_FILESZ; i++)
		buf[SEG2_OFF + i] = (uint8_t)(i * 13 + 5) | 0x80;
	assert_true(md->size <= IMG_MAX);
	return md->size;
}

/* ---- loading: __x() returns the error, x() asserts success -------------- */

static int __load_bytes(struct guest_mem *m, const void *img, size_t size, uint32_t *entry,
			char *err)
{
	void *copy = malloc(size ? size : 1); /* exact size: ASan sees overreads */
	int ret;

	assert_non_null(copy);
	memcpy(copy, img, size);
	err[0] = '\0';
	*entry = 0xdeadbeef;
	ret = pvh_load_elf(m, copy, size, entry, NULL, err, ERRLEN);
	free(copy);
	return ret;
}

static int __load(struct guest_mem *m, const struct model *md, uint32_t *entry, char *err)
{
	size_t size = build(md);

	return __load_bytes(m, buf, size, entry, err);
}

static uint32_t load(struct guest_mem *m, const struct model *md)
{
	char err[ERRLEN];
	uint32_t entry;
	int ret = __load(m, md, &entry, err);

	if (ret)
		fail_msg("pvh_load_elf (ELFCLASS%d) = %d: %s", md->cls == ELFCLASS32 ? 32 : 64,
			 ret, err);
	return entry;
}

/* Asserts a refusal: negative return, a message, entry not written, RAM
 * untouched. */
static void refused_bytes(struct guest_mem *m, const void *img, size_t size, const char *what)
{
	char err[ERRLEN];
	uint32_t entry;
	int ret = __load_bytes(m, img, size, &entry, err);

	if (ret >= 0)
		fail_msg("%s: pvh_load_elf accepted it (entry 0x%x)", what, entry);
	if (!*err)
		fail_msg("%s: refused (%d) without a message", what, ret);
	assert_int_equal(entry, 0xdeadbeef);
	if (!__ram_untouched(m))
		fail_msg("%s: refused (%s) but guest RAM was written", what, err);
}

/* The PT_LOAD segments of md landed exactly, bss zeroed, nothing else written. */
/* boot_info: the loader also wrote the boot information and ACPI tables. */
static void loaded_as_modelled(struct guest_mem *m, const struct model *md, bool boot_info)
{
	uint64_t lo[MAX_PH + 2], hi[MAX_PH + 2];
	int n = 0;

	if (boot_info) {
		lo[n] = PVH_START_INFO_GPA;
		hi[n++] = PVH_CMDLINE_GPA + 4096;
		lo[n] = ACPI_BASE_GPA;
		hi[n++] = ACPI_BASE_GPA + ACPI_AREA_SIZE;
	}
	for (unsigned i = 0; i < md->phnum && i < MAX_PH; i++)
		if (md->ph[i].type == PT_LOAD && md->ph[i].memsz) {
			lo[n] = md->ph[i].paddr;
			hi[n++] = md->ph[i].paddr + md->ph[i].memsz;
		}
	written_only_within(m, lo, hi, n); /* before reading: reads allocate too */
	for (unsigned i = 0; i < md->phnum && i < MAX_PH; i++) {
		const struct phdr *p = &md->ph[i];
		const uint8_t *g;

		if (p->type != PT_LOAD || !p->memsz)
			continue;
		g = mem_gpa_to_hva(m, p->paddr, p->memsz);
		assert_non_null(g);
		assert_memory_equal(g, buf + p->offset, p->filesz);
		for (uint64_t j = p->filesz; j < p->memsz; j++)
			if (g[j])
				fail_msg("bss byte 0x%llx not zeroed",
					 (unsigned long long)(p->paddr + j));
	}
}

static int group_setup(void **state)
{
	char err[ERRLEN] = "";

	(void)state;
	if (mem_open(&ram, RAM_SIZE, NULL, true, err, sizeof(err))) {
		fprintf(stderr, "mem_open: %s\n", err);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	mem_close(&ram, false);
	return 0;
}

static int fresh_ram(void **state)
{
	(void)state;
	ram_reset(&ram);
	return 0;
}

static const uint8_t classes[] = { ELFCLASS64, ELFCLASS32 };

/* ---- the checker checks ------------------------------------------------- */

static void untouched_detects_one_byte(void **state)
{
	(void)state;
	ram_untouched(&ram);
	ram.host[RAM_SIZE - 1] = 1;
	assert_false(__ram_untouched(&ram));
	ram_reset(&ram);
	ram.host[0x12345] = 0; /* writing a zero still counts as touching */
	assert_false(__ram_untouched(&ram));
	ram_reset(&ram);
	assert_int_equal(ram.host[0x12345], 0);
}

/* ---- valid images ------------------------------------------------------- */

static void loads_default_image(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;
		uint8_t *bss;

		model_default(&md, classes[c]);
		/* Dirty the bss so zeroing it is visible. */
		bss = mem_gpa_to_hva(&ram, SEG2_GPA + SEG2_FILESZ, SEG2_MEMSZ - SEG2_FILESZ);
		memset(bss, 0xaa, SEG2_MEMSZ - SEG2_FILESZ);
		assert_int_equal(load(&ram, &md), ENTRY);
		loaded_as_modelled(&ram, &md, false);
		ram_reset(&ram);
	}
}

static void loads_8_byte_entry_note(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;

		model_default(&md, classes[c]);
		md.descsz = 8;
		md.ph[0].filesz = 24;
		md.entry = SEG2_GPA + 4;
		assert_int_equal(load(&ram, &md), SEG2_GPA + 4);
		loaded_as_modelled(&ram, &md, false);
		ram_reset(&ram);
	}
}

static void finds_note_after_another(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;

		model_default(&md, classes[c]);
		md.gnu_note_first = true;
		md.ph[0].filesz = 32 + 20;
		assert_int_equal(load(&ram, &md), ENTRY);
		ram_reset(&ram);
	}
}

/* Segments and entry right at the last byte of RAM are inside it. */
static void loads_at_end_of_ram(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;

		model_default(&md, classes[c]);
		md.ph[2].paddr = RAM_SIZE - SEG2_MEMSZ;
		md.entry = RAM_SIZE - 1;
		assert_int_equal(load(&ram, &md), RAM_SIZE - 1);
		loaded_as_modelled(&ram, &md, false);
		ram_reset(&ram);
	}
}

/* Program headers at an unaligned offset: the loader must not do unaligned
 * struct reads (UBSan would say so). Other types are skipped unchecked, and
 * an empty PT_LOAD loads nothing, wherever it claims to be. */
static void tolerates_odd_layouts(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;

		model_default(&md, classes[c]);
		md.phoff = 0x401;
		md.phnum = 5;
		md.ph[3] = (struct phdr){ PT_GNU_STACK, UINT64_MAX, UINT64_MAX, 0, UINT64_MAX };
		md.ph[4] = (struct phdr){ PT_LOAD, 0, 0, 0, 0 };
		md.size = md.phoff + 5 * phsize(&md);
		assert_int_equal(load(&ram, &md), ENTRY);
		loaded_as_modelled(&ram, &md, false);
		ram_reset(&ram);
	}
}

/* 64 program headers is the limit: accepted; 65 refused though all fit. */
static void phnum_limit(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;

		model_default(&md, classes[c]);
		md.phoff = 0x400;
		md.phnum = 64; /* 61 PT_NULL after the three real ones */
		md.size = md.phoff + 65 * phsize(&md);
		assert_int_equal(load(&ram, &md), ENTRY);
		ram_reset(&ram);
		md.phnum = 65;
		build(&md);
		refused_bytes(&ram, buf, md.size, "65 program headers");
	}
}

/* ---- refused images: one broken field each ------------------------------ */

struct bad {
	const char *name;
	void (*edit)(struct model *md);
	const char *needle; /* expected in the message, or NULL */
	bool only64;	    /* the broken value does not fit an ELF32 field */
};

#define EDIT(n, body)                                                                    \
	static void edit_##n(struct model *md)                                           \
	{                                                                                \
		body;                                                                    \
	}

EDIT(class_none, md->cls = ELFCLASSNONE)
EDIT(class_3, md->cls = 3)
EDIT(big_endian, md->data = ELFDATA2MSB)
EDIT(data_none, md->data = ELFDATANONE)
EDIT(machine_aarch64, md->machine = EM_AARCH64)
EDIT(machine_arm, md->machine = EM_ARM)
EDIT(machine_none, md->machine = EM_NONE)
EDIT(phentsize_1, md->phentsize = 1)
EDIT(phentsize_ffff, md->phentsize = 0xffff)
EDIT(phentsize_big, md->phentsize = phsize(md) + 8)
EDIT(phentsize_other_class, md->phentsize = md->cls == ELFCLASS32 ? 56 : 32)
EDIT(phnum_0, md->phnum = 0)
EDIT(phnum_65, md->phnum = 65)
EDIT(phnum_xnum, md->phnum = PN_XNUM)
EDIT(phoff_at_end, md->phoff = md->size)
EDIT(phoff_max, md->phoff = UINT64_MAX)
EDIT(phoff_one_short, md->phoff = md->size - 3 * phsize(md) + 1)
EDIT(load_offset_past_end, md->ph[2].offset = md->size + 1)
EDIT(load_offset_at_end, md->ph[2].offset = md->size; md->ph[2].filesz = 1)
EDIT(load_offset_max, md->ph[2].offset = UINT64_MAX)
EDIT(load_filesz_past_end, md->ph[2].filesz = md->size - SEG2_OFF + 1)
EDIT(load_filesz_wraps, md->ph[2].filesz = UINT64_MAX - SEG2_OFF + 1;
     md->ph[2].memsz = UINT64_MAX)
EDIT(note_offset_past_end, md->ph[0].offset = md->size + 4)
EDIT(note_filesz_past_end, md->ph[0].filesz = md->size - NOTE_OFF + 1)
EDIT(filesz_gt_memsz, md->ph[2].memsz = SEG2_FILESZ - 1)
EDIT(below_1m, md->ph[1].paddr = 0xff000)
EDIT(at_0, md->ph[1].paddr = 0)
EDIT(straddles_1m, md->ph[1].paddr = PVH_LOAD_MIN - 1)
EDIT(past_ram_by_one, md->ph[2].paddr = RAM_SIZE - SEG2_MEMSZ + 1)
EDIT(at_end_of_ram, md->ph[2].paddr = RAM_SIZE)
EDIT(in_mmio_hole, md->ph[2].paddr = 0xc0000000)
EDIT(at_4g_without_high_ram, md->ph[2].paddr = CPRVM_HIGH_MEM_BASE)
EDIT(memsz_past_ram, md->ph[1].memsz = RAM_SIZE)
EDIT(memsz_max, md->ph[1].memsz = UINT64_MAX)
EDIT(wraps_to_0, md->ph[2].paddr = 0ULL - SEG2_MEMSZ)
EDIT(wraps_into_ram, md->ph[2].paddr = 0ULL - 0x800)
EDIT(paddr_max, md->ph[2].paddr = UINT64_MAX; md->ph[2].memsz = 2)
EDIT(no_note_null, md->ph[0].type = PT_NULL)
EDIT(no_note_dynamic, md->ph[0].type = PT_DYNAMIC)
EDIT(note_name_xem, memcpy(md->name, "Xem", 4))
EDIT(note_name_lower, memcpy(md->name, "xen", 4))
EDIT(note_namesz_3, md->namesz = 3)
EDIT(note_namesz_5, md->namesz = 5)
EDIT(note_type_17, md->ntype = 17)
EDIT(note_type_high_bits, md->ntype = 0x10000 | XEN_ELFNOTE_PHYS32_ENTRY)
EDIT(note_namesz_lies, md->namesz = 0x1000)
EDIT(note_namesz_max, md->namesz = UINT32_MAX)
EDIT(note_descsz_lies, md->descsz = 0x100)
EDIT(note_descsz_max, md->descsz = UINT32_MAX)
EDIT(note_descsz_0, md->descsz = 0)
EDIT(note_descsz_2, md->descsz = 2)
EDIT(note_descsz_16, md->descsz = 16; md->ph[0].filesz = 32)
EDIT(note_cut_in_desc, md->ph[0].filesz = 19)
EDIT(note_cut_in_header, md->ph[0].filesz = 11)
EDIT(entry_at_end_of_ram, md->entry = RAM_SIZE)
EDIT(entry_in_hole, md->entry = 0xfffffff0)
EDIT(entry_above_4g, md->descsz = 8; md->ph[0].filesz = 24;
     md->entry = (1ULL << 32) | ENTRY)
EDIT(no_loadable, md->ph[1].type = PT_NULL; md->ph[2].type = PT_NULL)
EDIT(only_empty_loads, md->ph[1].memsz = md->ph[1].filesz = 0;
     md->ph[2].memsz = md->ph[2].filesz = 0)

static struct bad bad_cases[] = {
#define BAD(n, needle) { #n, edit_##n, needle, false }
	BAD(class_none, NULL),
	BAD(class_3, NULL),
	BAD(big_endian, NULL),
	BAD(data_none, NULL),
	BAD(machine_aarch64, "x86"),
	BAD(machine_arm, "x86"),
	BAD(machine_none, "x86"),
	BAD(phentsize_1, NULL),
	BAD(phentsize_ffff, NULL),
	BAD(phentsize_big, NULL),
	BAD(phentsize_other_class, NULL),
	BAD(phnum_0, NULL),
	BAD(phnum_65, NULL),
	BAD(phnum_xnum, NULL),
	BAD(phoff_at_end, NULL),
	BAD(phoff_max, NULL),
	BAD(phoff_one_short, NULL),
	BAD(load_offset_past_end, NULL),
	BAD(load_offset_at_end, NULL),
	BAD(load_offset_max, NULL),
	BAD(load_filesz_past_end, NULL),
	BAD(load_filesz_wraps, NULL),
	BAD(note_offset_past_end, NULL),
	BAD(note_filesz_past_end, NULL),
	BAD(filesz_gt_memsz, NULL),
	BAD(below_1m, "0xff000"),
	BAD(at_0, "1 MiB"),
	BAD(straddles_1m, "0xfffff"),
	BAD(past_ram_by_one, "0x1ff001"),
	BAD(at_end_of_ram, "0x200000"),
	BAD(in_mmio_hole, "0xc0000000"),
	{ "at_4g_without_high_ram", edit_at_4g_without_high_ram, "0x100000000", true },
	BAD(memsz_past_ram, "outside guest RAM"),
	BAD(memsz_max, "outside guest RAM"),
	BAD(wraps_to_0, NULL),
	BAD(wraps_into_ram, NULL),
	BAD(paddr_max, NULL),
	BAD(no_note_null, "PVH"),
	BAD(no_note_dynamic, "PVH"),
	BAD(note_name_xem, NULL),
	BAD(note_name_lower, NULL),
	BAD(note_namesz_3, NULL),
	BAD(note_namesz_5, NULL),
	BAD(note_type_17, NULL),
	BAD(note_type_high_bits, NULL),
	BAD(note_namesz_lies, NULL),
	BAD(note_namesz_max, NULL),
	BAD(note_descsz_lies, NULL),
	BAD(note_descsz_max, NULL),
	BAD(note_descsz_0, NULL),
	BAD(note_descsz_2, NULL),
	BAD(note_descsz_16, NULL),
	BAD(note_cut_in_desc, NULL),
	BAD(note_cut_in_header, NULL),
	BAD(entry_at_end_of_ram, "0x200000"),
	BAD(entry_in_hole, "0xfffffff0"),
	BAD(entry_above_4g, "0x100100010"),
	BAD(no_loadable, NULL),
	BAD(only_empty_loads, NULL),
#undef BAD
};

static void refuses(void **state)
{
	const struct bad *b = *state;

	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;
		char what[128], err[ERRLEN];
		uint32_t entry;

		if (b->only64 && classes[c] == ELFCLASS32)
			continue;
		model_default(&md, classes[c]);
		b->edit(&md);
		snprintf(what, sizeof(what), "%s (ELFCLASS%d)", b->name,
			 classes[c] == ELFCLASS32 ? 32 : 64);
		refused_bytes(&ram, buf, build(&md), what);
		if (b->needle) {
			__load(&ram, &md, &entry, err);
			if (!strstr(err, b->needle))
				fail_msg("%s: message does not name \"%s\": %s", what, b->needle,
					 err);
		}
	}
}

/* Unlike the model-based cases, these are not ELF files at all. */
static void refuses_non_elf(void **state)
{
	static const char script[] = "#!/bin/sh\necho not a kernel\n";
	uint8_t zeros[128] = { 0 }, magic[4] = { 0x7f, 'E', 'L', 'F' };
	struct model md;

	(void)state;
	refused_bytes(&ram, zeros, 0, "empty");
	refused_bytes(&ram, zeros, sizeof(zeros), "zeros");
	refused_bytes(&ram, script, sizeof(script) - 1, "a shell script");
	refused_bytes(&ram, magic, sizeof(magic), "bare magic");
	for (int i = 0; i < SELFMAG; i++) {
		model_default(&md, ELFCLASS64);
		build(&md);
		buf[i] ^= 0x20;
		refused_bytes(&ram, buf, md.size, "bad magic byte");
	}
}

/* Every strict prefix of the image is refused (it ends with loaded bytes),
 * the whole one loads. */
static void refuses_every_truncation(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;
		char what[64];

		model_default(&md, classes[c]);
		build(&md);
		for (size_t len = 0; len < md.size; len++) {
			snprintf(what, sizeof(what), "ELFCLASS%d cut at %zu",
				 classes[c] == ELFCLASS32 ? 32 : 64, len);
			refused_bytes(&ram, buf, len, what);
		}
		assert_int_equal(load(&ram, &md), ENTRY);
		ram_reset(&ram);
	}
}

/* With unloaded bytes at the end (section headers, say), a cut there may
 * load; whatever happens, a refusal leaves RAM untouched and a load is
 * complete. */
static void truncation_in_trailing_bytes(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;
		char err[ERRLEN];
		uint32_t entry;

		model_default(&md, classes[c]);
		md.size = IMG_SIZE + 0x80;
		build(&md);
		memset(buf + IMG_SIZE, 0xee, 0x80);
		for (size_t len = 0; len <= md.size; len++) {
			int ret = __load_bytes(&ram, buf, len, &entry, err);

			if (ret < 0) {
				assert_true(len < md.size);
				assert_true(*err);
				ram_untouched(&ram);
				continue;
			}
			assert_true(len >= IMG_SIZE);
			assert_int_equal(entry, ENTRY);
			loaded_as_modelled(&ram, &md, false);
			ram_reset(&ram);
		}
	}
}

/* Each header and note byte set to a few values: no crash (ASan/UBSan),
 * and every refusal leaves RAM untouched. */
static void survives_byte_mutations(void **state)
{
	(void)state;
	for (size_t c = 0; c < sizeof(classes); c++) {
		struct model md;
		uint8_t orig[IMG_SIZE];

		model_default(&md, classes[c]);
		build(&md);
		memcpy(orig, buf, IMG_SIZE);
		for (size_t i = 0; i < SEG1_OFF; i++) {
			const uint8_t vals[] = { 0x00, 0xff, orig[i] ^ 0x01, orig[i] ^ 0x80,
						 orig[i] + 0x40 };

			for (size_t v = 0; v < sizeof(vals); v++) {
				char err[ERRLEN];
				uint32_t entry;
				int ret;

				memcpy(buf, orig, IMG_SIZE);
				buf[i] = vals[v];
				ret = __load_bytes(&ram, buf, IMG_SIZE, &entry, err);
				if (ret < 0) {
					if (!*err || !__ram_untouched(&ram))
						fail_msg("byte %zu = 0x%02x: refused (%s) but RAM "
							 "written or no message", i, vals[v], err);
					continue;
				}
				assert_non_null(mem_gpa_to_hva(&ram, entry, 1));
				ram_reset(&ram);
			}
		}
	}
}

/* ---- high memory (sparse 5 GiB memfd) ----------------------------------- */

static void loads_into_high_ram(void **state)
{
	struct guest_mem big;
	struct model md;
	const uint8_t *g;

	(void)state;
	mem_new(&big, 5ULL << 30);
	assert_int_equal(big.high_size, 2ULL << 30);
	model_default(&md, ELFCLASS64);
	md.ph[2].paddr = CPRVM_HIGH_MEM_BASE + 0x1000;
	assert_int_equal(load(&big, &md), ENTRY);
	loaded_as_modelled(&big, &md, false);
	/* High RAM is the file from low_size on. */
	g = big.host + big.low_size + 0x1000;
	assert_memory_equal(g, buf + SEG2_OFF, SEG2_FILESZ);
	ram_reset(&big);

	/* Last byte of high RAM: in; one more: out; the hole and both of its
	 * edges: out; an entry in high RAM: out (PVH enters in 32-bit mode). */
	md.ph[2].paddr = (5ULL << 30) + (1ULL << 30) - SEG2_MEMSZ;
	assert_int_equal(load(&big, &md), ENTRY);
	ram_reset(&big);
	{
		static const uint64_t out[] = {
			(6ULL << 30) - SEG2_MEMSZ + 1, 6ULL << 30, (3ULL << 30) - 0x800,
			3ULL << 30, (4ULL << 30) - 0x800, (4ULL << 30) - SEG2_MEMSZ,
		};
		for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++) {
			model_default(&md, ELFCLASS64);
			md.ph[2].paddr = out[i];
			build(&md);
			refused_bytes(&big, buf, md.size, "segment outside 5 GiB RAM");
		}
	}
	model_default(&md, ELFCLASS64);
	md.ph[2].paddr = CPRVM_HIGH_MEM_BASE;
	md.descsz = 8;
	md.ph[0].filesz = 24;
	md.entry = CPRVM_HIGH_MEM_BASE;
	build(&md);
	refused_bytes(&big, buf, md.size, "entry in high RAM");
	mem_close(&big, false);
}

/* ---- x86_boot_load: the file side --------------------------------------- */

static void load_kernel_from_file(void **state)
{
	char dir[] = "/tmp/cprvm-test-pvh-XXXXXX", path[128], err[ERRLEN];
	struct model md;
	struct x86_boot_spec spec = { .kernel = path, .nr_cpus = 1 };
	struct x86_boot_entry e;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/kernel", dir);

	model_default(&md, ELFCLASS64);
	build(&md);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, md.size), (ssize_t)md.size);
	close(fd);
	assert_int_equal(x86_boot_load(&ram, &spec, &e, err, sizeof(err)), 0);
	assert_int_equal(e.rip, ENTRY);
	assert_int_equal(e.rbx, PVH_START_INFO_GPA);
	loaded_as_modelled(&ram, &md, true);
	ram_reset(&ram);

	/* Each refusal names the file. */
	assert_int_equal(truncate(path, 100), 0);
	err[0] = '\0';
	assert_true(x86_boot_load(&ram, &spec, &e, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, path));
	assert_int_equal(truncate(path, 0), 0);
	err[0] = '\0';
	assert_true(x86_boot_load(&ram, &spec, &e, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, path));
	err[0] = '\0';
	spec.kernel = dir;
	assert_true(x86_boot_load(&ram, &spec, &e, err, sizeof(err)) < 0);
	spec.kernel = path;
	assert_non_null(strstr(err, dir));
	unlink(path);
	err[0] = '\0';
	assert_int_equal(x86_boot_load(&ram, &spec, &e, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, path));
	ram_untouched(&ram);
	rmdir(dir);
}

/* ---- start_info, memory map, command line ------------------------------- */

struct range {
	uint64_t lo, hi;
};

static bool map_covers(const struct hvm_memmap_entry *map, uint32_t n, uint32_t type,
		       struct range r)
{
	for (uint32_t i = 0; i < n; i++)
		if (map[i].type == type && map[i].addr <= r.lo && r.hi <= map[i].addr + map[i].size)
			return true;
	return false;
}

/* Checks the start_info and map that pvh_setup_start_info wrote into m. */
static void check_start_info(struct guest_mem *m, uint64_t rsdp)
{
	const struct hvm_start_info *si = mem_gpa_to_hva(m, PVH_START_INFO_GPA, sizeof(*si));
	const struct hvm_memmap_entry *map;
	uint64_t end = 0, ram_bytes = 0, reserved_bytes = 0;
	uint32_t n;

	assert_int_equal(si->magic, XEN_HVM_START_MAGIC);
	assert_int_equal(si->version, 1);
	assert_int_equal(si->nr_modules, 0);
	assert_int_equal(si->cmdline_paddr, PVH_CMDLINE_GPA);
	assert_int_equal(si->rsdp_paddr, rsdp);
	assert_int_equal(si->memmap_paddr, PVH_MEMMAP_GPA);
	n = si->memmap_entries;
	assert_true(n >= 1 && n <= 8);
	map = mem_gpa_to_hva(m, PVH_MEMMAP_GPA, n * sizeof(*map));
	assert_non_null(map);

	/* Sorted, non-overlapping, no gaps below low_size; only RAM above. */
	for (uint32_t i = 0; i < n; i++) {
		assert_true(map[i].type == E820_RAM || map[i].type == E820_RESERVED);
		assert_true(map[i].size > 0);
		assert_int_equal(map[i].reserved, 0);
		if (map[i].addr < m->low_size)
			assert_int_equal(map[i].addr, end);
		else
			assert_true(map[i].addr >= end);
		end = map[i].addr + map[i].size;
		if (map[i].type == E820_RAM)
			ram_bytes += map[i].size;
		else
			reserved_bytes += map[i].size;
	}
	assert_int_equal(ram_bytes + reserved_bytes, m->size);
	assert_true(ram_bytes >= m->size - 0x100000);
	/* Low RAM ends exactly at low_size, high RAM is [4 GiB, +high_size). */
	assert_true(map_covers(map, n, E820_RAM, (struct range){ 0x100000, m->low_size }));
	if (m->high_size) {
		assert_int_equal(map[n - 1].addr, CPRVM_HIGH_MEM_BASE);
		assert_int_equal(map[n - 1].size, m->high_size);
		assert_int_equal(map[n - 1].type, E820_RAM);
	} else {
		assert_int_equal(end, m->low_size);
	}
	/* Nothing we wrote below 1 MiB is offered to the guest as RAM. */
	assert_true(map_covers(map, n, E820_RESERVED,
			       (struct range){ PVH_START_INFO_GPA,
					       PVH_START_INFO_GPA + sizeof(*si) }));
	assert_true(map_covers(map, n, E820_RESERVED,
			       (struct range){ PVH_MEMMAP_GPA, PVH_MEMMAP_GPA + n * sizeof(*map) }));
	assert_true(map_covers(map, n, E820_RESERVED,
			       (struct range){ PVH_CMDLINE_GPA, PVH_CMDLINE_GPA + 4096 }));
	assert_true(map_covers(map, n, E820_RESERVED,
			       (struct range){ ACPI_BASE_GPA, ACPI_BASE_GPA + ACPI_AREA_SIZE }));
	/* Guests want some conventional memory below 640K. */
	assert_true(map_covers(map, n, E820_RAM, (struct range){ 0x10000, 0x9f000 }));
}

static void start_info_small(void **state)
{
	const char *cl;
	uint64_t lo[] = { PVH_START_INFO_GPA }, hi[] = { PVH_CMDLINE_GPA + 4096 };

	(void)state;
	assert_int_equal(pvh_setup_start_info(&ram, "console=ttyS0 quiet", 0xe0000, 0, 0), 0);
	written_only_within(&ram, lo, hi, 1);
	check_start_info(&ram, 0xe0000);
	cl = mem_gpa_to_hva(&ram, PVH_CMDLINE_GPA, 4096);
	assert_string_equal(cl, "console=ttyS0 quiet");
}

static void start_info_sizes(void **state)
{
	static const uint64_t sizes[] = {
		CPRVM_MIN_MEM, 512ULL << 20, CPRVM_LOW_MEM_MAX, CPRVM_LOW_MEM_MAX + PAGE,
		5ULL << 30,
	};

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct guest_mem m;
		const struct hvm_start_info *si;

		mem_new(&m, sizes[i]);
		assert_int_equal(pvh_setup_start_info(&m, NULL, 0, 0, 0), 0);
		check_start_info(&m, 0);
		si = mem_gpa_to_hva(&m, PVH_START_INFO_GPA, sizeof(*si));
		assert_int_equal(si->memmap_entries, m.high_size ? 6 : 5);
		if (sizes[i] == (5ULL << 30)) {
			const struct hvm_memmap_entry *e =
				mem_gpa_to_hva(&m, PVH_MEMMAP_GPA + 5 * sizeof(*e), sizeof(*e));
			assert_int_equal(e->addr, 4ULL << 30);
			assert_int_equal(e->size, 2ULL << 30);
		}
		mem_close(&m, false);
	}
}

static void start_info_cmdline(void **state)
{
	char *long_cl = malloc(4097);
	const char *cl;

	(void)state;
	assert_non_null(long_cl);
	/* NULL is an empty command line. */
	memset(mem_gpa_to_hva(&ram, PVH_CMDLINE_GPA, 16), 'x', 16);
	assert_int_equal(pvh_setup_start_info(&ram, NULL, 0, 0, 0), 0);
	cl = mem_gpa_to_hva(&ram, PVH_CMDLINE_GPA, 4096);
	assert_string_equal(cl, "");
	ram_reset(&ram);

	/* 4095 bytes fit with the NUL in the reserved page. */
	memset(long_cl, 'a', 4095);
	long_cl[4095] = '\0';
	assert_int_equal(pvh_setup_start_info(&ram, long_cl, 0, 0, 0), 0);
	cl = mem_gpa_to_hva(&ram, PVH_CMDLINE_GPA, 4096);
	assert_int_equal(strnlen(cl, 4096), 4095);
	assert_memory_equal(cl, long_cl, 4096);
	ram_reset(&ram);

	/* 4096 do not: refused before anything is written. */
	memset(long_cl, 'b', 4096);
	long_cl[4096] = '\0';
	assert_int_equal(pvh_setup_start_info(&ram, long_cl, 0, 0, 0), -EINVAL);
	ram_untouched(&ram);
	free(long_cl);
}

#define T(f) cmocka_unit_test_setup(f, fresh_ram)

int main(void)
{
	struct CMUnitTest tests[32 + sizeof(bad_cases) / sizeof(bad_cases[0])];
	const struct CMUnitTest fixed[] = {
		T(untouched_detects_one_byte),
		T(loads_default_image),
		T(loads_8_byte_entry_note),
		T(finds_note_after_another),
		T(loads_at_end_of_ram),
		T(tolerates_odd_layouts),
		T(phnum_limit),
		T(refuses_non_elf),
		T(refuses_every_truncation),
		T(truncation_in_trailing_bytes),
		T(survives_byte_mutations),
		T(loads_into_high_ram),
		T(load_kernel_from_file),
		T(start_info_small),
		T(start_info_sizes),
		T(start_info_cmdline),
	};
	size_t n = 0;
	char names[sizeof(bad_cases) / sizeof(bad_cases[0])][64];

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		tests[n++] = fixed[i];
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		snprintf(names[i], sizeof(names[i]), "refuses_%s", bad_cases[i].name);
		tests[n++] = (struct CMUnitTest){ .name = names[i], .test_func = refuses,
						  .setup_func = fresh_ram,
						  .initial_state = &bad_cases[i] };
	}
	return _cmocka_run_group_tests("test_pvh", tests, n, group_setup, group_teardown);
}
