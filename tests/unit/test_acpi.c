/* test_acpi.c — the ACPI tables acpi_build writes (x86/acpi.h), read back
 * the way a guest does: from the RSDP through the XSDT to each table, every
 * length and checksum verified, every pointer resolved in guest RAM. The
 * DSDT's AML is compared byte for byte here; tests/host/test_aml.py checks
 * the same bytes against iasl. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dev/pm.h"
#include "mem/mem.h"
#include "vm/config.h"
#include "x86/acpi.h"

#define RAM_SIZE (2ULL << 20)

static struct guest_mem ram;

static uint8_t sum(const uint8_t *p, size_t len)
{
	uint8_t s = 0;

	while (len--)
		s += *p++;
	return s;
}

static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Resolves a table at gpa: in RAM, inside the ACPI area, signature sig,
 * length at least min_len, checksum zero. Returns it and its length. */
static const uint8_t *table(uint64_t gpa, const char *sig, uint32_t min_len, uint32_t *len)
{
	const uint8_t *t = mem_gpa_to_hva(&ram, gpa, 36);

	if (!t)
		fail_msg("%s at 0x%llx is not in RAM", sig, (unsigned long long)gpa);
	if (memcmp(t, sig, 4))
		fail_msg("table at 0x%llx is '%.4s', expected '%s'", (unsigned long long)gpa, t, sig);
	*len = get32(t + 4);
	if (*len < min_len)
		fail_msg("%s is %u bytes, expected at least %u", sig, *len, min_len);
	assert_true(gpa >= ACPI_BASE_GPA && gpa + *len <= ACPI_BASE_GPA + ACPI_AREA_SIZE);
	if (sum(t, *len))
		fail_msg("%s checksum is off by %u", sig, sum(t, *len));
	assert_memory_equal(t + 10, "CPRVM ", 6); /* OEM ID */
	return t;
}

/* __x() returns the failure, x() asserts success. */
static uint64_t __build(int nr_cpus)
{
	return acpi_build(&ram, nr_cpus);
}

static uint64_t build(int nr_cpus)
{
	uint64_t rsdp = __build(nr_cpus);

	if (rsdp != ACPI_BASE_GPA)
		fail_msg("acpi_build(%d) = 0x%llx, expected 0x%x", nr_cpus,
			 (unsigned long long)rsdp, ACPI_BASE_GPA);
	return rsdp;
}

/* Follows RSDP -> XSDT and returns the table with signature sig. */
static const uint8_t *find(uint64_t rsdp_gpa, const char *sig, uint32_t min_len, uint32_t *len)
{
	const uint8_t *rsdp = mem_gpa_to_hva(&ram, rsdp_gpa, 36), *xsdt;
	const uint8_t *found = NULL;
	uint32_t xlen;

	assert_non_null(rsdp);
	xsdt = table(get64(rsdp + 24), "XSDT", 36, &xlen);
	assert_int_equal((xlen - 36) % 8, 0);
	for (uint32_t off = 36; off < xlen; off += 8) {
		uint64_t gpa = get64(xsdt + off);
		const uint8_t *t = mem_gpa_to_hva(&ram, gpa, 4);

		assert_non_null(t);
		if (!memcmp(t, sig, 4)) {
			if (found)
				fail_msg("two %s tables in the XSDT", sig);
			found = table(gpa, sig, min_len, len);
		}
	}
	if (!found)
		fail_msg("no %s in the XSDT", sig);
	return found;
}

static int group_setup(void **state)
{
	char err[256] = "";

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
	return fallocate(ram.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, RAM_SIZE);
}

/* ---- tests -------------------------------------------------------------- */

static void rsdp_is_valid(void **state)
{
	const uint8_t *rsdp;
	uint64_t gpa;

	(void)state;
	gpa = build(1);
	/* Guests search the BIOS area 0xe0000-0xfffff on 16-byte boundaries. */
	assert_true(gpa >= 0xe0000 && gpa + 36 <= 0x100000 && gpa % 16 == 0);
	rsdp = mem_gpa_to_hva(&ram, gpa, 36);
	assert_memory_equal(rsdp, "RSD PTR ", 8);
	assert_int_equal(rsdp[15], 2); /* ACPI 2.0+: has the XSDT and length */
	assert_int_equal(get32(rsdp + 20), 36);
	assert_int_equal(sum(rsdp, 20), 0); /* ACPI 1.0 checksum */
	assert_int_equal(sum(rsdp, 36), 0); /* extended checksum */
	assert_int_equal(get64(rsdp + 24), ACPI_BASE_GPA + 0x40);
}

static void xsdt_lists_fadt_and_madt(void **state)
{
	uint64_t rsdp;
	const uint8_t *xsdt;
	uint32_t len;

	(void)state;
	rsdp = build(2);
	xsdt = table(get64((const uint8_t *)mem_gpa_to_hva(&ram, rsdp, 36) + 24), "XSDT", 36,
		     &len);
	assert_int_equal(len, 36 + 2 * 8);
	assert_int_equal(xsdt[8], 1); /* revision */
	find(rsdp, "FACP", 244, &len);
	find(rsdp, "APIC", 44, &len);
}

static void fadt_points_to_dsdt_and_pm(void **state)
{
	const uint8_t *fadt;
	uint32_t len, dlen;
	uint64_t rsdp;

	(void)state;
	rsdp = build(1);
	fadt = find(rsdp, "FACP", 276, &len);
	assert_int_equal(fadt[8], 6); /* revision */
	/* 32- and 64-bit DSDT pointers agree and resolve to a valid DSDT. */
	assert_int_equal(get32(fadt + 40), get64(fadt + 140));
	table(get64(fadt + 140), "DSDT", 36, &dlen);
	assert_int_equal(get16(fadt + 46), 9); /* SCI_INT */
	assert_int_equal(get32(fadt + 56), CPRVM_PM_BASE);
	assert_int_equal(get32(fadt + 64), CPRVM_PM_BASE + 4);
	assert_int_equal(get64(fadt + 152), CPRVM_PM_BASE);
	assert_int_equal(get64(fadt + 176), CPRVM_PM_BASE + 4);
	assert_int_equal(fadt[148], 1); /* system I/O */
	assert_int_equal(fadt[172], 1);
}

/* RESET_REG: an 8-bit system I/O register at bit 0, byte access (Linux
 * refuses any other width or offset), valid by RESET_REG_SUP. */
static void fadt_reset_register(void **state)
{
	const uint8_t *fadt;
	uint32_t len;

	(void)state;
	fadt = find(build(1), "FACP", 276, &len);
	assert_true(get32(fadt + 112) & (1 << 10)); /* RESET_REG_SUP */
	assert_int_equal(fadt[116], 1);		     /* system I/O */
	assert_int_equal(fadt[117], 8);		     /* bit width */
	assert_int_equal(fadt[118], 0);		     /* bit offset */
	assert_int_equal(fadt[119], 1);		     /* byte access */
	assert_int_equal(get64(fadt + 120), CPRVM_RESET_PORT);
	assert_int_equal(get64(fadt + 120), 0xcf9);
	assert_int_equal(fadt[128], CPRVM_RESET_VALUE);
	assert_int_equal(fadt[128], 0x06);
}

/* The DSDT's AML is Name (\_S5, Package (0x04) { Zero, Zero, Zero, Zero }). */
static void dsdt_has_s5(void **state)
{
	static const uint8_t s5[] = { 0x08, '_', 'S', '5', '_', 0x12, 0x06, 0x04, 0, 0, 0, 0 };
	const uint8_t *fadt, *dsdt;
	uint32_t len;

	(void)state;
	fadt = find(build(1), "FACP", 276, &len);
	dsdt = table(get64(fadt + 140), "DSDT", 36, &len);
	assert_int_equal(dsdt[8], 2); /* revision 2: 64-bit integers */
	assert_int_equal(len, 36 + sizeof(s5));
	assert_memory_equal(dsdt + 36, s5, sizeof(s5));
}

/* Local APICs, the IOAPIC, two overrides. */
#define MADT_LEN(n) (44 + (n) * 8 + 12 + 2 * 10)

/* The overrides QEMU's pc has: the PIT's IRQ0 on GSI 2 with the bus's
 * defaults, and the SCI (IRQ 9) on GSI 9, active high and level-triggered. */
static void check_iso(uint8_t irq, uint32_t gsi, uint16_t flags)
{
	switch (irq) {
	case 0:
		assert_int_equal(gsi, 2);
		assert_int_equal(flags, 0);
		break;
	case 9:
		assert_int_equal(gsi, 9);
		assert_int_equal(flags, 0x000d);
		break;
	default:
		fail_msg("override for ISA IRQ %u", irq);
	}
}

/* Walks the MADT's entries; checks lengths and the local APIC list. */
static void check_madt(int nr_cpus)
{
	bool seen[256] = { false };
	const uint8_t *madt;
	uint32_t len, off;
	int lapics = 0, ioapics = 0, ioapic_id = -1, isos = 0;

	madt = find(build(nr_cpus), "APIC", 44, &len);
	assert_int_equal(len, MADT_LEN(nr_cpus));
	assert_int_equal(get32(madt + 36), 0xfee00000);
	for (off = 44; off < len; off += madt[off + 1]) {
		const uint8_t *e = madt + off;

		assert_true(len - off >= 2);
		assert_true(e[1] >= 2 && e[1] <= len - off);
		switch (e[0]) {
		case 0: /* Processor Local APIC */
			assert_int_equal(e[1], 8);
			if (e[3] >= nr_cpus)
				fail_msg("nr_cpus %d: APIC ID %u", nr_cpus, e[3]);
			if (seen[e[3]])
				fail_msg("nr_cpus %d: APIC ID %u twice", nr_cpus, e[3]);
			seen[e[3]] = true;
			assert_int_equal(e[2], e[3]); /* UID */
			assert_int_equal(get32(e + 4) & 1, 1); /* enabled */
			lapics++;
			break;
		case 1: /* I/O APIC */
			assert_int_equal(e[1], 12);
			assert_int_equal(get32(e + 4), 0xfec00000);
			assert_int_equal(get32(e + 8), 0); /* GSI base */
			ioapic_id = e[2];
			ioapics++;
			break;
		case 2: /* Interrupt Source Override */
			assert_int_equal(e[1], 10);
			assert_int_equal(e[2], 0); /* ISA */
			check_iso(e[3], get32(e + 4), get16(e + 8));
			isos++;
			break;
		default:
			fail_msg("unexpected MADT entry type %u", e[0]);
		}
	}
	assert_int_equal(off, len); /* the last entry ends at the table's end */
	assert_int_equal(lapics, nr_cpus);
	assert_int_equal(ioapics, 1);
	assert_int_equal(isos, 2);
	if (ioapic_id < 256)
		assert_false(ioapic_id < nr_cpus && seen[ioapic_id]);
}

static void madt_one_cpu(void **state)
{
	(void)state;
	check_madt(1);
}

static void madt_two_cpus(void **state)
{
	(void)state;
	check_madt(2);
}

static void madt_max_cpus(void **state)
{
	(void)state;
	check_madt(CPRVM_MAX_CPUS);
}

/* Rebuilding for fewer CPUs leaves no trace of the first build. */
static void rebuild_shrinks(void **state)
{
	const uint8_t *madt;
	uint32_t len;

	(void)state;
	build(CPRVM_MAX_CPUS);
	check_madt(3);
	madt = find(ACPI_BASE_GPA, "APIC", 44, &len);
	for (uint32_t i = len; i < MADT_LEN(CPRVM_MAX_CPUS); i++)
		if (madt[i])
			fail_msg("stale MADT byte at +%u", i);
}

/* Only the ACPI area is written; a refusal writes nothing. */
static void writes_only_its_area(void **state)
{
	off_t d, h;

	(void)state;
	assert_int_equal(__build(0), 0);
	assert_int_equal(__build(-1), 0);
	errno = 0;
	assert_true(lseek(ram.fd, 0, SEEK_DATA) < 0 && errno == ENXIO);

	build(CPRVM_MAX_CPUS);
	d = lseek(ram.fd, 0, SEEK_DATA);
	h = lseek(ram.fd, d, SEEK_HOLE);
	assert_true(d >= ACPI_BASE_GPA);
	assert_true(h <= ACPI_BASE_GPA + ACPI_AREA_SIZE);
	errno = 0;
	assert_true(lseek(ram.fd, h, SEEK_DATA) < 0 && errno == ENXIO);
}

/* RAM too small to hold the area: refused, not written past the end. */
static void refuses_tiny_ram(void **state)
{
	struct guest_mem m;
	char err[256];

	(void)state;
	assert_int_equal(mem_open(&m, 0xe0000, NULL, true, err, sizeof(err)), 0);
	assert_int_equal(acpi_build(&m, 1), 0);
	mem_close(&m, false);
}

#define T(f) cmocka_unit_test_setup(f, fresh_ram)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(rsdp_is_valid),
		T(xsdt_lists_fadt_and_madt),
		T(fadt_points_to_dsdt_and_pm),
		T(fadt_reset_register),
		T(dsdt_has_s5),
		T(madt_one_cpu),
		T(madt_two_cpus),
		T(madt_max_cpus),
		T(rebuild_shrinks),
		T(writes_only_its_area),
		T(refuses_tiny_ram),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
