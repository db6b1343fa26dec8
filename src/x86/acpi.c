/* acpi.c — see acpi.h. Tables are built byte by byte at fixed offsets; all
 * are small and static for a given vCPU count. The DSDT's AML comes from
 * the builder in aml.c. */
#include <string.h>

#include "dev/pm.h"
#include "x86/acpi.h"
#include "x86/aml.h"

#define RSDP_OFF 0x000
#define XSDT_OFF 0x040
#define FADT_OFF 0x100
#define DSDT_OFF 0x300
#define MADT_OFF 0x400

#define ACPI_HDR_LEN 36
#define DSDT_MAX_LEN (MADT_OFF - DSDT_OFF)

/* Every MADT entry build_madt() writes, for the size check in acpi_build(). */
#define MADT_LAPIC_LEN 8
#define MADT_IOAPIC_LEN 12
#define MADT_ISO_LEN 10
#define MADT_NR_ISO 2
#define MADT_LEN(n) (44 + (n) * MADT_LAPIC_LEN + MADT_IOAPIC_LEN + MADT_NR_ISO * MADT_ISO_LEN)

#define GAS_SYSTEM_IO 1
#define GAS_ACCESS_BYTE 1

#define FADT_PWR_BUTTON (1 << 4)     /* no fixed-feature power button */
#define FADT_SLP_BUTTON (1 << 5)     /* no fixed-feature sleep button */
#define FADT_RESET_REG_SUP (1 << 10) /* RESET_REG and RESET_VALUE are valid */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Generic Address Structure (12 bytes). Access size 0 is "undefined":
 * the register's width says how to access it. */
static void put_gas(uint8_t *p, uint8_t bit_width, uint8_t access_size, uint64_t port)
{
	p[0] = GAS_SYSTEM_IO;
	p[1] = bit_width;
	p[2] = 0; /* bit offset */
	p[3] = access_size;
	put64(p + 4, port);
}

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

/* DSDT revision 2 (64-bit integers). Its AML, as ASL:
 *
 *	Name (\_S5, Package (0x04) { Zero, Zero, Zero, Zero })
 *
 * \_S5 gives the SLP_TYP values a guest writes to PM1a_CNT, with SLP_EN,
 * to power off; Linux installs its ACPI power-off only where it exists. Our
 * PM1a_CNT handler powers off on SLP_EN whatever SLP_TYP is; 0 is the value
 * of QEMU's PIIX and the one our test guest writes. At the root, _S5 is
 * \_S5: iasl drops the prefix too. Returns the table's length, 0 if the
 * AML did not fit in len bytes. */
static uint32_t build_dsdt(uint8_t *t, uint32_t len)
{
	struct aml a;

	aml_init(&a, t + ACPI_HDR_LEN, len - ACPI_HDR_LEN);
	aml_name(&a, "_S5");
	aml_package_open(&a, 4);
	for (int i = 0; i < 4; i++)
		aml_int(&a, 0);
	aml_close(&a);
	if (aml_finish(&a))
		return 0;
	acpi_header(t, "DSDT", ACPI_HDR_LEN + a.len, 2);
	return ACPI_HDR_LEN + a.len;
}

/* FADT revision 6 (276 bytes): PM1 event/control blocks, DSDT, reset
 * register. Linux ignores a reset register that is not 8 bits wide at bit
 * offset 0, which is also all ACPI allows. */
static void build_fadt(uint8_t *fadt)
{
	put32(fadt + 40, ACPI_BASE_GPA + DSDT_OFF);	/* DSDT */
	put16(fadt + 46, 9);				/* SCI_INT */
	put32(fadt + 56, CPRVM_PM_BASE);		/* PM1a_EVT_BLK */
	put32(fadt + 64, CPRVM_PM_BASE + 4);		/* PM1a_CNT_BLK */
	fadt[88] = 4;					/* PM1_EVT_LEN */
	fadt[89] = 2;					/* PM1_CNT_LEN */
	put16(fadt + 109, 1 << 2);			/* IAPC_BOOT_ARCH: no VGA */
	put32(fadt + 112, FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP); /* Flags */
	put_gas(fadt + 116, 8, GAS_ACCESS_BYTE, CPRVM_RESET_PORT); /* RESET_REG */
	fadt[128] = CPRVM_RESET_VALUE;			/* RESET_VALUE */
	fadt[131] = 0;					/* FADT minor version */
	put64(fadt + 140, ACPI_BASE_GPA + DSDT_OFF);	/* X_DSDT */
	put_gas(fadt + 148, 32, 0, CPRVM_PM_BASE);	/* X_PM1a_EVT_BLK */
	put_gas(fadt + 172, 16, 0, CPRVM_PM_BASE + 4);	/* X_PM1a_CNT_BLK */
	acpi_header(fadt, "FACP", 276, 6);
}

/* Interrupt Source Override: ISA IRQ irq arrives at GSI gsi. */
static uint8_t *madt_iso(uint8_t *e, uint8_t irq, uint32_t gsi, uint16_t flags)
{
	e[0] = 2;
	e[1] = MADT_ISO_LEN;
	e[2] = 0; /* bus: ISA */
	e[3] = irq;
	put32(e + 4, gsi);
	put16(e + 8, flags);
	return e + MADT_ISO_LEN;
}

/* MADT: local APIC address, PC-AT compatible (dual 8259s present), one
 * local APIC per vCPU, the IOAPIC, and the ISA overrides QEMU's pc has:
 * the PIT's IRQ0 on GSI 2, and the SCI (the FADT's SCI_INT, IRQ 9) on GSI 9,
 * level-triggered and active high; without an override a guest takes the
 * SCI as ACPI's default, level and active low. Writes MADT_LEN(nr_cpus)
 * bytes. */
static void build_madt(uint8_t *madt, int nr_cpus)
{
	uint8_t *e = madt + 44;

	put32(madt + 36, 0xfee00000);
	put32(madt + 40, 1);
	for (int i = 0; i < nr_cpus; i++, e += MADT_LAPIC_LEN) {
		e[0] = 0; /* Processor Local APIC */
		e[1] = MADT_LAPIC_LEN;
		e[2] = i; /* ACPI processor UID */
		e[3] = i; /* APIC ID */
		put32(e + 4, 1); /* enabled */
	}
	e[0] = 1; /* I/O APIC */
	e[1] = MADT_IOAPIC_LEN;
	e[2] = nr_cpus; /* its ID, after the CPUs' */
	put32(e + 4, 0xfec00000);
	put32(e + 8, 0);
	e += MADT_IOAPIC_LEN;
	e = madt_iso(e, 0, 2, 0); /* flags 0: the bus's defaults (ISA: edge, high) */
	e = madt_iso(e, 9, 9, 0x000d); /* active high (01), level (11 << 2) */
	acpi_header(madt, "APIC", e - madt, 4);
}

static void build_rsdp(uint8_t *rsdp)
{
	memcpy(rsdp, "RSD PTR ", 8);
	memcpy(rsdp + 9, "CPRVM ", 6);
	rsdp[15] = 2; /* revision 2: 36 bytes, two checksums */
	put32(rsdp + 20, 36);
	put64(rsdp + 24, ACPI_BASE_GPA + XSDT_OFF);
	rsdp[8] = (uint8_t)-acpi_sum(rsdp, 20);
	rsdp[32] = (uint8_t)-acpi_sum(rsdp, 36);
}

uint64_t acpi_build(struct guest_mem *m, int nr_cpus)
{
	uint8_t *base = mem_gpa_to_hva(m, ACPI_BASE_GPA, ACPI_AREA_SIZE);
	uint8_t *xsdt, dsdt[DSDT_MAX_LEN] = { 0 };
	uint32_t dsdt_len;

	/* UIDs and APIC IDs are single bytes in the MADT. */
	if (!base || nr_cpus < 1 || nr_cpus > 254 ||
	    MADT_LEN(nr_cpus) > ACPI_AREA_SIZE - MADT_OFF)
		return 0;
	/* Built aside first: a refusal leaves guest RAM untouched. */
	dsdt_len = build_dsdt(dsdt, sizeof(dsdt));
	if (!dsdt_len)
		return 0;
	memset(base, 0, ACPI_AREA_SIZE);
	memcpy(base + DSDT_OFF, dsdt, dsdt_len);
	build_fadt(base + FADT_OFF);
	build_madt(base + MADT_OFF, nr_cpus);

	/* XSDT: FADT, MADT. */
	xsdt = base + XSDT_OFF;
	put64(xsdt + 36, ACPI_BASE_GPA + FADT_OFF);
	put64(xsdt + 44, ACPI_BASE_GPA + MADT_OFF);
	acpi_header(xsdt, "XSDT", 52, 1);

	build_rsdp(base + RSDP_OFF);
	return ACPI_BASE_GPA + RSDP_OFF;
}
