/* aml_cases.c — prints the AML our builder (x86/aml.h) makes for each case
 * of tests/host/test_aml.py, one "NAME HEX" line per case; the test compiles
 * the same ASL with iasl and compares. Case "dsdt" is the DSDT body
 * acpi_build() ships, read back from guest RAM, not rebuilt here.
 *
 * Each case's ASL is quoted above its builder; names are written as iasl
 * emits them (it drops a root prefix where the name resolves the same
 * without it, so test_aml.py's ASL says "_SB" where a person might write
 * "\_SB"). */
#include <stdio.h>
#include <string.h>

#include "mem/mem.h"
#include "x86/acpi.h"
#include "x86/aml.h"

#define AML_MAX (64 << 10)

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

/* The table at gpa if it has signature sig, else NULL. */
static const uint8_t *table(struct guest_mem *m, uint64_t gpa, const char *sig)
{
	const uint8_t *t = gpa ? mem_gpa_to_hva(m, gpa, 36) : NULL;

	return t && !memcmp(t, sig, 4) ? t : NULL;
}

/* The DSDT acpi_build() writes: RSDP -> XSDT's first entry (the FADT) ->
 * X_DSDT. Its body follows the 36-byte header. */
static int case_dsdt(struct aml *a)
{
	struct guest_mem m;
	char err[256] = "";
	const uint8_t *t;
	uint64_t gpa = 0;
	uint32_t len = 0;

	if (mem_open(&m, 2 << 20, NULL, true, err, sizeof(err))) {
		fprintf(stderr, "aml-cases: mem_open: %s\n", err);
		return -1;
	}
	t = table(&m, acpi_build(&m, 1), "RSD PTR ");
	t = t ? table(&m, get64(t + 24), "XSDT") : NULL;
	t = t ? table(&m, get64(t + 36), "FACP") : NULL;
	if (t)
		gpa = get64(t + 140);
	t = table(&m, gpa, "DSDT");
	if (t)
		memcpy(&len, t + 4, 4);
	if (len < 36 || len - 36 > a->cap || !mem_gpa_to_hva(&m, gpa, len)) {
		fprintf(stderr, "aml-cases: no DSDT found from the RSDP\n");
		mem_close(&m, false);
		return -1;
	}
	memcpy(a->buf, t + 36, len - 36);
	a->len = len - 36;
	mem_close(&m, false);
	return 0;
}

/* Name (INTS, Package (0x0B) { 0, 1, 2, 0xFF, 0x100, 0xFFFF, 0x10000,
 *     0xFFFFFFFF, 0x100000000, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF }) */
static void case_integers(struct aml *a)
{
	static const uint64_t v[] = {
		0, 1, 2, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000,
		0xfffffffffffffffe, UINT64_MAX,
	};

	aml_name(a, "INTS");
	aml_package_open(a, sizeof(v) / sizeof(v[0]));
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		aml_int(a, v[i]);
	aml_close(a);
}

/* Name (E1, EisaId ("PNP0501")) Name (E2, EisaId ("PNP0A03"))
 * Name (E3, EisaId ("PNP0000")) */
static void case_eisaid(struct aml *a)
{
	aml_name(a, "E1");
	aml_eisaid(a, "PNP0501");
	aml_name(a, "E2");
	aml_eisaid(a, "PNP0A03");
	aml_name(a, "E3");
	aml_eisaid(a, "PNP0000");
}

/* Scope (_SB) { Device (COM1) { Name (_HID, EisaId ("PNP0501"))
 *     Name (_UID, One) Name (_DDN, "COM1") } } */
static void case_device_eisaid(struct aml *a)
{
	aml_scope_open(a, "_SB");
	aml_device_open(a, "COM1");
	aml_name(a, "_HID");
	aml_eisaid(a, "PNP0501");
	aml_name(a, "_UID");
	aml_int(a, 1);
	aml_name(a, "_DDN");
	aml_string(a, "COM1");
	aml_close(a);
	aml_close(a);
}

/* Scope (_SB) { Device (VGEN) { Name (_HID, "QEMU0002")
 *     Name (_CID, "VM_Gen_Counter") Name (_DDN, "VM_Gen_Counter")
 *     Name (ADDR, Package (0x02) { 0x12345678, 0x9ABCDEF0 }) } } */
static void case_device_string_hid(struct aml *a)
{
	aml_scope_open(a, "_SB");
	aml_device_open(a, "VGEN");
	aml_name(a, "_HID");
	aml_string(a, "QEMU0002");
	aml_name(a, "_CID");
	aml_string(a, "VM_Gen_Counter");
	aml_name(a, "_DDN");
	aml_string(a, "VM_Gen_Counter");
	aml_name(a, "ADDR");
	aml_package_open(a, 2);
	aml_int(a, 0x12345678);
	aml_int(a, 0x9abcdef0);
	aml_close(a);
	aml_close(a);
	aml_close(a);
}

/* Method (_STA, 0, NotSerialized) { Return (0x0F) }
 * Method (MSER, 7, Serialized) { Return ("done") } */
static void case_methods(struct aml *a)
{
	aml_method_open(a, "_STA", 0, false);
	aml_return(a);
	aml_int(a, 0x0f);
	aml_close(a);
	aml_method_open(a, "MSER", 7, true);
	aml_return(a);
	aml_string(a, "done");
	aml_close(a);
}

/* Device (AAA) { Name (_ADR, Zero) Device (BBB) { Name (_ADR, Zero) } }
 * Scope (_SB) { Device (DEV0) { Name (_ADR, Zero)
 *     Device (GHI) { Name (_ADR, Zero) Device (KLM) { Name (_ADR, Zero) }
 *         Name (^^PP, 8) }
 *     Name (\ROOT, One) Name (^PAR, 2) Name (GHI.DUAL, 3)
 *     Name (GHI.KLM.MULT, 4) Name (\AAA.RDUA, 5) Name (\AAA.BBB.RMUL, 6) } }
 * Scope (\) { Name (ABCD, One) } */
static void dev_adr(struct aml *a, const char *name)
{
	aml_device_open(a, name);
	aml_name(a, "_ADR");
	aml_int(a, 0);
}

static void name_one(struct aml *a, const char *name, uint64_t v)
{
	aml_name(a, name);
	aml_int(a, v);
}

static void case_names(struct aml *a)
{
	dev_adr(a, "AAA");
	dev_adr(a, "BBB");
	aml_close(a);
	aml_close(a);
	aml_scope_open(a, "_SB");
	dev_adr(a, "DEV0");
	dev_adr(a, "GHI");
	dev_adr(a, "KLM");
	aml_close(a);
	name_one(a, "^^PP", 8);
	aml_close(a);
	name_one(a, "\\ROOT", 1);
	name_one(a, "^PAR", 2);
	name_one(a, "GHI.DUAL", 3);
	name_one(a, "GHI.KLM.MULT", 4);
	name_one(a, "\\AAA.RDUA", 5);
	name_one(a, "\\AAA.BBB.RMUL", 6);
	aml_close(a);
	aml_close(a);
	aml_scope_open(a, "\\");
	name_one(a, "ABCD", 1);
	aml_close(a);
}

/* Name (P2, Package (0x40) { 0x10000, 0x10001, ... 0x1003F }): 321 bytes
 * of content, a 2-byte PkgLength. */
static void case_pkglen_2(struct aml *a)
{
	aml_name(a, "P2");
	aml_package_open(a, 0x40);
	for (int i = 0; i < 0x40; i++)
		aml_int(a, 0x10000 + i);
	aml_close(a);
}

/* Name (name, Buffer (n) { ... }) holding test_aml.py's pattern,
 * (i * 7 + 3) & 0xFF; n is at most PATTERN_MAX. */
#define PATTERN_MAX 0x1400

static void pattern_buffer(struct aml *a, const char *name, size_t n)
{
	static uint8_t data[PATTERN_MAX];

	for (size_t i = 0; i < PATTERN_MAX; i++)
		data[i] = (uint8_t)(i * 7 + 3);
	aml_name(a, name);
	aml_buffer(a, data, n);
}

/* Scope (_SB) { Name (BIG, Buffer (0x1400) { ... }) }: both PkgLengths
 * take 3 bytes. */
static void case_pkglen_3(struct aml *a)
{
	aml_scope_open(a, "_SB");
	pattern_buffer(a, "BIG", PATTERN_MAX);
	aml_close(a);
}

/* Buffers whose content is the largest for a 1- and a 2-byte PkgLength,
 * and one byte more: 60 and 61 bytes of data (62 and 63 of content),
 * 4090 and 4091 (4093 and 4094). And Buffer () {}. */
static void case_pkglen_edges(struct aml *a)
{
	pattern_buffer(a, "B060", 60);
	pattern_buffer(a, "B061", 61);
	pattern_buffer(a, "B4K0", 4090);
	pattern_buffer(a, "B4K1", 4091);
	pattern_buffer(a, "B000", 0);
}

static const struct {
	const char *name;
	void (*build)(struct aml *a);
} cases[] = {
	{ "integers", case_integers },
	{ "eisaid", case_eisaid },
	{ "device_eisaid", case_device_eisaid },
	{ "device_string_hid", case_device_string_hid },
	{ "methods", case_methods },
	{ "names", case_names },
	{ "pkglen_2", case_pkglen_2 },
	{ "pkglen_3", case_pkglen_3 },
	{ "pkglen_edges", case_pkglen_edges },
};

static void print(const char *name, const struct aml *a)
{
	printf("%s ", name);
	for (size_t i = 0; i < a->len; i++)
		printf("%02x", a->buf[i]);
	printf("\n");
}

int main(void)
{
	static uint8_t buf[AML_MAX];
	struct aml a;
	int err;

	aml_init(&a, buf, sizeof(buf));
	if (case_dsdt(&a))
		return 1;
	print("dsdt", &a);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		aml_init(&a, buf, sizeof(buf));
		cases[i].build(&a);
		err = aml_finish(&a);
		if (err) {
			fprintf(stderr, "aml-cases: %s: aml_finish = %d\n", cases[i].name, err);
			return 1;
		}
		print(cases[i].name, &a);
	}
	return 0;
}
