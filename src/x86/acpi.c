/* acpi.c — see acpi.h. Tables are built byte by byte at fixed offsets; all
 * are small and static for a given vCPU count. */
#include <string.h>

#include "dev/pm.h"
#include "x86/acpi.h"

#define RSDP_OFF 0x000
#define XSDT_OFF 0x040
#define FADT_OFF 0x100
#define DSDT_OFF 0x300
#define MADT_OFF 0x400

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static uint8_t acpi_sum(const uint8_t *p, unsigned len)
{
	uint8_t s = 0;

	while (len--)
		s += *p++;
	return s;
}

static void acpi_header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put32(t + 4, len);
	t[8] = rev;
	memcpy(t + 10, "CPRVM ", 6);	/* OEM ID */
	memcpy(t + 16, "CPRVMTBL", 8); /* OEM table ID */
	put32(t + 24, 1);		/* OEM revision */
	memcpy(t + 28, "CPRV", 4);	/* creator */
	put32(t + 32, 1);
	t[9] = 0;
	t[9] = (uint8_t)-acpi_sum(t, len);
}

uint64_t acpi_build(struct guest_mem *m, int nr_cpus)
{
	uint8_t *base = mem_gpa_to_hva(m, ACPI_BASE_GPA, ACPI_AREA_SIZE);
	uint8_t *rsdp, *xsdt, *fadt, *dsdt, *madt, *e;
	uint32_t madt_len;

	/* UIDs and APIC IDs are single bytes in the MADT. */
	if (!base || nr_cpus < 1 || nr_cpus > 254 || 44 + 8 + nr_cpus * 8 + 12 + 10 > ACPI_AREA_SIZE - MADT_OFF)
		return 0;
	memset(base, 0, ACPI_AREA_SIZE);
	rsdp = base + RSDP_OFF;
	xsdt = base + XSDT_OFF;
	fadt = base + FADT_OFF;
	dsdt = base + DSDT_OFF;
	madt = base + MADT_OFF;

	/* DSDT: header only (no AML); enough for guests that only need the MADT. */
	acpi_header(dsdt, "DSDT", 36, 2);

	/* FADT, revision 6 (276 bytes): PM1 event/control blocks, DSDT. */
	put32(fadt + 40, ACPI_BASE_GPA + DSDT_OFF);
	put16(fadt + 46, 9);			 /* SCI_INT */
	put32(fadt + 56, CPRVM_PM_BASE);	 /* PM1a_EVT_BLK */
	put32(fadt + 64, CPRVM_PM_BASE + 4);	 /* PM1a_CNT_BLK */
	fadt[88] = 4;				 /* PM1_EVT_LEN */
	fadt[89] = 2;				 /* PM1_CNT_LEN */
	put16(fadt + 109, 1 << 2);		 /* IAPC_BOOT_ARCH: no VGA */
	put32(fadt + 112, (1 << 4) | (1 << 5)); /* no power/sleep button */
	fadt[131] = 0;				 /* FADT minor version */
	put64(fadt + 140, ACPI_BASE_GPA + DSDT_OFF); /* X_DSDT */
	/* X_PM1a_EVT_BLK / X_PM1a_CNT_BLK: system I/O space GAS */
	fadt[148] = 1; fadt[149] = 32; put64(fadt + 152, CPRVM_PM_BASE);
	fadt[172] = 1; fadt[173] = 16; put64(fadt + 176, CPRVM_PM_BASE + 4);
	acpi_header(fadt, "FACP", 276, 6);

	/* MADT: local APIC address, PC-AT compatible (dual 8259s present). */
	put32(madt + 36, 0xfee00000);
	put32(madt + 40, 1);
	e = madt + 44;
	for (int i = 0; i < nr_cpus; i++, e += 8) {
		e[0] = 0; /* Processor Local APIC */
		e[1] = 8;
		e[2] = i; /* ACPI processor UID */
		e[3] = i; /* APIC ID */
		put32(e + 4, 1); /* enabled */
	}
	e[0] = 1; /* I/O APIC */
	e[1] = 12;
	e[2] = nr_cpus; /* its ID, after the CPUs' */
	put32(e + 4, 0xfec00000);
	put32(e + 8, 0);
	e += 12;
	e[0] = 2; /* Interrupt Source Override: ISA IRQ0 -> GSI 2 */
	e[1] = 10;
	e[2] = 0;
	e[3] = 0;
	put32(e + 4, 2);
	put16(e + 8, 0);
	e += 10;
	madt_len = e - madt;
	acpi_header(madt, "APIC", madt_len, 4);

	/* XSDT: FADT, MADT. */
	put64(xsdt + 36, ACPI_BASE_GPA + FADT_OFF);
	put64(xsdt + 44, ACPI_BASE_GPA + MADT_OFF);
	acpi_header(xsdt, "XSDT", 52, 1);

	/* RSDP, revision 2 (36 bytes, two checksums). */
	memcpy(rsdp, "RSD PTR ", 8);
	memcpy(rsdp + 9, "CPRVM ", 6);
	rsdp[15] = 2;
	put32(rsdp + 20, 36);
	put64(rsdp + 24, ACPI_BASE_GPA + XSDT_OFF);
	rsdp[8] = (uint8_t)-acpi_sum(rsdp, 20);
	rsdp[32] = (uint8_t)-acpi_sum(rsdp, 36);
	return ACPI_BASE_GPA + RSDP_OFF;
}
