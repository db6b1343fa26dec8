/* fuzz_pvh.c — libFuzzer target for pvh_load_elf (x86/pvh.h).
 *
 * Beyond "no crash" (ASan/UBSan), it checks the loader's promise on every
 * input: a refusal comes with a message and leaves guest RAM untouched (the
 * memfd has no page at all: lseek(SEEK_DATA) finds nothing), a success
 * returns an entry inside RAM. After a success RAM is punched back to holes.
 *
 * Run with --write-seeds=DIR to write a few valid images (ELF64, ELF32,
 * 8-byte entry note) into DIR and exit; fuzz/fuzz.mk does this. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_seeds.h"
#include "mem/mem.h"
#include "x86/pvh.h"

#define FUZZ_RAM (16ULL << 20)

static struct guest_mem ram;

static void fuzz_die(const char *why, const char *err)
{
	fprintf(stderr, "fuzz_pvh: %s (%s)\n", why, err ? err : "");
	abort();
}

/* ---- seeds: a note segment and one PT_LOAD with some bss --------------- */

/* Writes a minimal PVH ELF into b (zeroed, at least 0x200 bytes); returns
 * its size. Layout: ehdr, 2 phdrs at 0x40, note at 0x100, payload at 0x180. */
static size_t seed_build(uint8_t *b, int is64, int desc8)
{
	const uint32_t note_off = 0x100, load_off = 0x180, load_sz = 0x80;
	const uint64_t gpa = 0x100000;
	uint32_t note[6] = { 4, desc8 ? 8 : 4, XEN_ELFNOTE_PHYS32_ENTRY, 0,
			     (uint32_t)gpa + 0x10, 0 };
	uint32_t note_sz = desc8 ? 24 : 20;

	memcpy(&note[3], "Xen", 4);
	memcpy(b + note_off, note, note_sz);
	for (uint32_t i = 0; i < load_sz; i++)
		b[load_off + i] = (uint8_t)(0x90 + i);
	if (is64) {
		Elf64_Ehdr eh = { .e_type = ET_EXEC, .e_machine = EM_X86_64,
				  .e_version = EV_CURRENT, .e_entry = gpa + 0x10,
				  .e_phoff = 0x40, .e_ehsize = sizeof(eh),
				  .e_phentsize = sizeof(Elf64_Phdr), .e_phnum = 2 };
		Elf64_Phdr ph[2] = {
			{ .p_type = PT_NOTE, .p_offset = note_off, .p_filesz = note_sz, .p_align = 4 },
			{ .p_type = PT_LOAD, .p_offset = load_off, .p_vaddr = gpa, .p_paddr = gpa,
			  .p_filesz = load_sz, .p_memsz = 0x1000, .p_flags = PF_R | PF_X,
			  .p_align = 0x1000 },
		};
		memcpy(eh.e_ident, ELFMAG, SELFMAG);
		eh.e_ident[EI_CLASS] = ELFCLASS64;
		eh.e_ident[EI_DATA] = ELFDATA2LSB;
		eh.e_ident[EI_VERSION] = EV_CURRENT;
		memcpy(b, &eh, sizeof(eh));
		memcpy(b + 0x40, ph, sizeof(ph));
	} else {
		Elf32_Ehdr eh = { .e_type = ET_EXEC, .e_machine = EM_386,
				  .e_version = EV_CURRENT, .e_entry = gpa + 0x10,
				  .e_phoff = 0x40, .e_ehsize = sizeof(eh),
				  .e_phentsize = sizeof(Elf32_Phdr), .e_phnum = 2 };
		Elf32_Phdr ph[2] = {
			{ .p_type = PT_NOTE, .p_offset = note_off, .p_filesz = note_sz, .p_align = 4 },
			{ .p_type = PT_LOAD, .p_offset = load_off, .p_vaddr = gpa, .p_paddr = gpa,
			  .p_filesz = load_sz, .p_memsz = 0x1000, .p_flags = PF_R | PF_X,
			  .p_align = 0x1000 },
		};
		memcpy(eh.e_ident, ELFMAG, SELFMAG);
		eh.e_ident[EI_CLASS] = ELFCLASS32;
		eh.e_ident[EI_DATA] = ELFDATA2LSB;
		eh.e_ident[EI_VERSION] = EV_CURRENT;
		memcpy(b, &eh, sizeof(eh));
		memcpy(b + 0x40, ph, sizeof(ph));
	}
	return load_off + load_sz;
}

static void seed_write(const char *dir)
{
	static const struct {
		const char *name;
		int is64, desc8;
	} seeds[] = {
		{ "elf64", 1, 0 }, { "elf32", 0, 0 }, { "elf64-entry8", 1, 1 }, { "elf32-entry8", 0, 1 },
	};

	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
		uint8_t b[0x200] = { 0 };
		size_t n = seed_build(b, seeds[i].is64, seeds[i].desc8);
		uint32_t entry;
		char err[256];

		/* A seed that does not load would only teach the fuzzer refusals. */
		if (pvh_load_elf(&ram, b, n, &entry, NULL, err, sizeof(err)))
			fuzz_die("seed does not load", err);
		fuzz_seed_file(dir, seeds[i].name, b, n);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256] = "";

	if (mem_open(&ram, FUZZ_RAM, NULL, true, err, sizeof(err)))
		fuzz_die("mem_open", err);
	fuzz_seed_option(*argc, *argv, seed_write);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256] = "";
	uint32_t entry = 0;
	int ret = pvh_load_elf(&ram, data, size, &entry, NULL, err, sizeof(err));

	if (ret < 0) {
		if (!err[0])
			fuzz_die("refused without a message", NULL);
		errno = 0;
		if (lseek(ram.fd, 0, SEEK_DATA) >= 0 || errno != ENXIO)
			fuzz_die("refused but guest RAM was written", err);
		return 0;
	}
	if (ret > 0)
		fuzz_die("positive return", NULL);
	if (!mem_gpa_to_hva(&ram, entry, 1))
		fuzz_die("accepted an entry outside RAM", NULL);
	if (fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)FUZZ_RAM))
		fuzz_die("cannot reset guest RAM", strerror(errno));
	return 0;
}
