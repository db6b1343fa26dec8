/* test_aml.c — the AML builder (x86/aml.h): each encoding byte by byte,
 * PkgLength at the edges of its 1-, 2-, 3- and 4-byte forms, the integer
 * width chosen for each value, name strings with every prefix and path
 * form, EISA IDs, refusals of bad arguments and of unbalanced objects, and
 * small buffers: never written past their end, the overflow reported.
 *
 * Expected bytes are from ACPI 6.x section 20 and agree with what iasl
 * compiles from the ASL quoted beside them; tests/host/test_aml.py checks
 * the builder against iasl itself. Each builder writes into a heap buffer
 * of exactly its capacity, so ASan reports any write past the end. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "x86/aml.h"

static struct aml a;
static uint8_t *mem;

/* A fresh builder over a heap buffer of exactly cap bytes. */
static void start(size_t cap)
{
	free(mem);
	mem = malloc(cap ? cap : 1);
	assert_non_null(mem);
	aml_init(&a, mem, cap);
}

static int teardown(void **state)
{
	(void)state;
	free(mem);
	mem = NULL;
	return 0;
}

static void dump(const char *what, const uint8_t *p, size_t n)
{
	fprintf(stderr, "%s (%zu):", what, n);
	for (size_t i = 0; i < n && i < 64; i++)
		fprintf(stderr, " %02x", p[i]);
	fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

/* The builder succeeded and holds exactly want[0..n). */
static void expect(const uint8_t *want, size_t n)
{
	int err = aml_finish(&a);

	if (err)
		fail_msg("aml_finish = %d, expected 0", err);
	if (a.len != n || memcmp(a.buf, want, n)) {
		dump("got", a.buf, a.len);
		dump("expected", want, n);
		fail_msg("AML differs");
	}
}

/* The builder's first n bytes are want[0..n). */
static void expect_head(const uint8_t *want, size_t n)
{
	if (a.len < n || memcmp(a.buf, want, n)) {
		dump("got", a.buf, a.len < n ? a.len : n);
		dump("expected", want, n);
		fail_msg("AML differs");
	}
}

#define BYTES(...) ((const uint8_t[]){ __VA_ARGS__ }), sizeof((const uint8_t[]){ __VA_ARGS__ })

/* ---- integers ----------------------------------------------------------- */

static const struct {
	uint64_t v;
	uint8_t len, aml[9];
} ints[] = {
	{ 0, 1, { 0x00 } }, /* Zero */
	{ 1, 1, { 0x01 } }, /* One */
	{ 2, 2, { 0x0a, 0x02 } },
	{ 0xff, 2, { 0x0a, 0xff } },
	{ 0x100, 3, { 0x0b, 0x00, 0x01 } },
	{ 0xffff, 3, { 0x0b, 0xff, 0xff } },
	{ 0x10000, 5, { 0x0c, 0x00, 0x00, 0x01, 0x00 } },
	{ 0xffffffff, 5, { 0x0c, 0xff, 0xff, 0xff, 0xff } },
	{ 0x100000000, 9, { 0x0e, 0, 0, 0, 0, 1, 0, 0, 0 } },
	{ 0xfffffffffffffffe, 9, { 0x0e, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff } },
	{ UINT64_MAX, 1, { 0xff } }, /* Ones */
};

static void int_smallest_encoding(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
		start(ints[i].len);
		aml_int(&a, ints[i].v);
		expect(ints[i].aml, ints[i].len);
	}
}

/* ---- strings and EISA IDs ----------------------------------------------- */

static void string_encoding(void **state)
{
	(void)state;
	start(2);
	aml_string(&a, "");
	expect(BYTES(0x0d, 0x00));
	start(6);
	aml_string(&a, "COM1");
	expect(BYTES(0x0d, 'C', 'O', 'M', '1', 0x00));
	start(16);
	aml_string(&a, "caf\xc3\xa9"); /* ASCII only */
	assert_int_equal(aml_finish(&a), -EINVAL);
}

static void eisaid_compression(void **state)
{
	(void)state;
	start(5);
	aml_eisaid(&a, "PNP0501"); /* EisaId ("PNP0501") = 0x0105D041 */
	expect(BYTES(0x0c, 0x41, 0xd0, 0x05, 0x01));
	start(5);
	aml_eisaid(&a, "PNP0A03");
	expect(BYTES(0x0c, 0x41, 0xd0, 0x0a, 0x03));
	start(5);
	aml_eisaid(&a, "QEM0001"); /* Q=17 E=5 M=13 */
	expect(BYTES(0x0c, 0x44, 0xad, 0x00, 0x01));
	/* An ordinary integer: 0x0000D041 fits a word. */
	start(3);
	aml_eisaid(&a, "PNP0000");
	expect(BYTES(0x0b, 0x41, 0xd0));
}

static void eisaid_refusals(void **state)
{
	static const char *const bad[] = {
		"", "PNP050", "PNP05011", "pnp0501", "PN10501", "PNP050G", "PNP05a1", "@NP0501",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		start(16);
		aml_eisaid(&a, bad[i]);
		if (aml_finish(&a) != -EINVAL)
			fail_msg("EISA ID \"%s\" accepted", bad[i]);
		assert_int_equal(a.len, 0);
	}
}

/* ---- names -------------------------------------------------------------- */

static const struct {
	const char *name;
	uint8_t len, aml[24];
} names[] = {
	{ "_S5", 4, { '_', 'S', '5', '_' } },
	{ "A", 4, { 'A', '_', '_', '_' } },
	{ "COM1", 4, { 'C', 'O', 'M', '1' } },
	{ "\\_SB", 5, { '\\', '_', 'S', 'B', '_' } },
	{ "^PAR", 5, { '^', 'P', 'A', 'R', '_' } },
	{ "^^XX", 6, { '^', '^', 'X', 'X', '_', '_' } },
	{ "\\", 2, { '\\', 0x00 } }, /* NullName */
	{ "^", 2, { '^', 0x00 } },
	{ "GHI.JKL", 9, { 0x2e, 'G', 'H', 'I', '_', 'J', 'K', 'L', '_' } },
	{ "\\_SB.PCI0", 10, { '\\', 0x2e, '_', 'S', 'B', '_', 'P', 'C', 'I', '0' } },
	{ "\\_SB.PCI0.S08",
	  15,
	  { '\\', 0x2f, 3, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'S', '0', '8', '_' } },
	{ "^A.B.C.D",
	  19,
	  { '^', 0x2f, 4, 'A', '_', '_', '_', 'B', '_', '_', '_', 'C', '_', '_', '_', 'D', '_',
	    '_', '_' } },
};

static void name_forms(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		start(names[i].len);
		aml_namestring(&a, names[i].name);
		expect(names[i].aml, names[i].len);
	}
}

static void name_refusals(void **state)
{
	static const char *const bad[] = {
		"", "abcd", "ABCDE", "1ABC", ".A", "A.", "A..B", "\\^A", "^\\A", "\\\\A",
		"A B", "A-B", "_SB.", "^.A", "\\.A", "ABC.DEFGH",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		start(64);
		aml_namestring(&a, bad[i]);
		if (aml_finish(&a) != -EINVAL)
			fail_msg("name \"%s\" accepted", bad[i]);
		assert_int_equal(a.len, 0);
	}
}

/* MultiNamePrefix counts segments in a byte: 255 fit, 256 do not. */
static void name_segment_limit(void **state)
{
	char path[256 * 2];

	(void)state;
	for (int i = 0; i < 256; i++) {
		path[2 * i] = 'A';
		path[2 * i + 1] = '.';
	}
	path[2 * 255 - 1] = '\0';
	start(2 + 255 * 4);
	aml_namestring(&a, path);
	assert_int_equal(aml_finish(&a), 0);
	assert_int_equal(a.len, 2 + 255 * 4);
	assert_int_equal(a.buf[0], 0x2f);
	assert_int_equal(a.buf[1], 255);
	path[2 * 255 - 1] = '.';
	path[2 * 256 - 1] = '\0';
	start(2 + 256 * 4);
	aml_namestring(&a, path);
	assert_int_equal(aml_finish(&a), -EINVAL);
}

/* ---- PkgLength, through Buffer ------------------------------------------ */

/* Buffer (n) { pattern }, built into exactly its final size: head is the
 * opcode, PkgLength and BufferSize, and the data must follow it intact
 * after being moved behind a PkgLength longer than the one byte reserved. */
static void check_buffer(size_t n, const uint8_t *head, size_t head_len)
{
	uint8_t *data = malloc(n ? n : 1);

	assert_non_null(data);
	for (size_t i = 0; i < n; i++)
		data[i] = (uint8_t)(i * 7 + 3);
	start(head_len + n);
	aml_buffer(&a, data, n);
	assert_int_equal(aml_finish(&a), 0);
	assert_int_equal(a.len, head_len + n);
	expect_head(head, head_len);
	assert_memory_equal(a.buf + head_len, data, n);
	free(data);
}

static void buffer_small(void **state)
{
	(void)state;
	check_buffer(0, BYTES(0x11, 0x02, 0x00)); /* Buffer () {} */
	check_buffer(3, BYTES(0x11, 0x06, 0x0a, 0x03));
}

/* A PkgLength counts its own bytes: 62 bytes of content take a 1-byte
 * PkgLength of 63 (0x3f, the largest), 63 take 2 bytes and encode 65. */
static void pkglen_one_two(void **state)
{
	(void)state;
	check_buffer(60, BYTES(0x11, 0x3f, 0x0a, 60));
	check_buffer(61, BYTES(0x11, 0x41, 0x04, 0x0a, 61));
}

/* 4093 bytes of content: 2-byte PkgLength 4095 (0xfff, the largest);
 * 4094: 3 bytes encoding 4097. */
static void pkglen_two_three(void **state)
{
	(void)state;
	check_buffer(4090, BYTES(0x11, 0x4f, 0xff, 0x0b, 0xfa, 0x0f));
	check_buffer(4091, BYTES(0x11, 0x81, 0x00, 0x01, 0x0b, 0xfb, 0x0f));
}

/* 0xffffc bytes of content: 3-byte PkgLength 0xfffff (the largest);
 * 0xffffd: 4 bytes encoding 0x100001. */
static void pkglen_three_four(void **state)
{
	(void)state;
	check_buffer(0xffff7, BYTES(0x11, 0x8f, 0xff, 0xff, 0x0c, 0xf7, 0xff, 0x0f, 0x00));
	check_buffer(0xffff8,
		     BYTES(0x11, 0xc1, 0x00, 0x00, 0x01, 0x0c, 0xf8, 0xff, 0x0f, 0x00));
}

/* ---- packages, named objects, methods ----------------------------------- */

/* Name (\_S5, Package (0x04) { Zero, Zero, Zero, Zero }), as acpi.c ships
 * it (at the root, iasl drops the '\'). */
static void name_package_s5(void **state)
{
	(void)state;
	start(12);
	aml_name(&a, "_S5");
	aml_package_open(&a, 4);
	for (int i = 0; i < 4; i++)
		aml_int(&a, 0);
	aml_close(&a);
	expect(BYTES(0x08, '_', 'S', '5', '_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00));
}

/* Package (0x02) { 0x12345678, Package (0x01) { "x" } } */
static void package_nested(void **state)
{
	(void)state;
	start(14);
	aml_package_open(&a, 2);
	aml_int(&a, 0x12345678);
	aml_package_open(&a, 1);
	aml_string(&a, "x");
	aml_close(&a);
	aml_close(&a);
	expect(BYTES(0x12, 0x0d, 0x02, 0x0c, 0x78, 0x56, 0x34, 0x12, 0x12, 0x05, 0x01, 0x0d,
		     'x', 0x00));
}

/* Scope (_SB) { Device (COM1) { Name (_HID, EisaId ("PNP0501"))
 *                               Name (_UID, One) } } */
static void scope_device(void **state)
{
	(void)state;
	start(29);
	aml_scope_open(&a, "_SB");
	aml_device_open(&a, "COM1");
	aml_name(&a, "_HID");
	aml_eisaid(&a, "PNP0501");
	aml_name(&a, "_UID");
	aml_int(&a, 1);
	aml_close(&a);
	aml_close(&a);
	expect(BYTES(0x10, 0x1c, '_', 'S', 'B', '_', 0x5b, 0x82, 0x15, 'C', 'O', 'M', '1',
		     0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01, 0x08, '_', 'U',
		     'I', 'D', 0x01));
}

/* Scope (\) { Name (ABCD, One) }: the root as a NullName. */
static void scope_root(void **state)
{
	(void)state;
	start(10);
	aml_scope_open(&a, "\\");
	aml_name(&a, "ABCD");
	aml_int(&a, 1);
	aml_close(&a);
	expect(BYTES(0x10, 0x09, '\\', 0x00, 0x08, 'A', 'B', 'C', 'D', 0x01));
}

/* Method (_STA, 0, Serialized) { Return (0x0F) } and
 * Method (M3, 3, NotSerialized) { Return ("x") } */
static void method_return(void **state)
{
	(void)state;
	start(21);
	aml_method_open(&a, "_STA", 0, true);
	aml_return(&a);
	aml_int(&a, 0x0f);
	aml_close(&a);
	aml_method_open(&a, "M3", 3, false);
	aml_return(&a);
	aml_string(&a, "x");
	aml_close(&a);
	expect(BYTES(0x14, 0x09, '_', 'S', 'T', 'A', 0x08, 0xa4, 0x0a, 0x0f, 0x14, 0x0a, 'M',
		     '3', '_', '_', 0x03, 0xa4, 0x0d, 'x', 0x00));
	start(64);
	aml_method_open(&a, "M8", 8, false);
	aml_close(&a);
	assert_int_equal(aml_finish(&a), -EINVAL);
}

/* Both PkgLengths grow on close, the inner one first:
 * Scope (_SB) { Name (B, Buffer (61) { ... }) } */
static void build_nested_growing(void)
{
	uint8_t data[61];

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)i;
	aml_scope_open(&a, "_SB");
	aml_name(&a, "B");
	aml_buffer(&a, data, sizeof(data));
	aml_close(&a);
}

static void nested_pkglen_grow(void **state)
{
	(void)state;
	start(78);
	build_nested_growing();
	assert_int_equal(aml_finish(&a), 0);
	assert_int_equal(a.len, 78);
	expect_head(BYTES(0x10, 0x4d, 0x04, '_', 'S', 'B', '_', 0x08, 'B', '_', '_', '_', 0x11,
			  0x41, 0x04, 0x0a, 61, 0, 1, 2));
	assert_int_equal(a.buf[77], 60);
}

/* ---- refusals ------------------------------------------------------------ */

static void unbalanced(void **state)
{
	(void)state;
	start(16);
	aml_close(&a);
	assert_int_equal(aml_finish(&a), -EINVAL);
	start(16);
	aml_scope_open(&a, "_SB");
	assert_int_equal(aml_finish(&a), -EINVAL); /* left open */
	aml_close(&a);
	assert_int_equal(aml_finish(&a), 0);
}

static void depth_limit(void **state)
{
	(void)state;
	start(1024);
	for (int i = 0; i < AML_MAX_DEPTH; i++)
		aml_scope_open(&a, "S");
	for (int i = 0; i < AML_MAX_DEPTH; i++)
		aml_close(&a);
	assert_int_equal(aml_finish(&a), 0);
	start(1024);
	for (int i = 0; i <= AML_MAX_DEPTH; i++)
		aml_scope_open(&a, "S");
	assert_int_equal(aml_finish(&a), -EINVAL);
}

/* After the first error every call does nothing. */
static void errors_stick(void **state)
{
	(void)state;
	start(64);
	aml_int(&a, 5);
	aml_name(&a, "bad");
	assert_int_equal(a.len, 3); /* the NameOp went out before the name failed */
	aml_int(&a, 5);
	aml_string(&a, "x");
	aml_scope_open(&a, "_SB");
	aml_close(&a);
	assert_int_equal(a.len, 3);
	assert_int_equal(aml_finish(&a), -EINVAL);
}

/* Every capacity short of the full 78 bytes: -ENOSPC, nothing written at or
 * past cap (a canary follows it), len never above cap. */
static void overflow_every_cap(void **state)
{
	const size_t full = 78, guard = 16;

	(void)state;
	for (size_t cap = 0; cap <= full; cap++) {
		start(cap + guard);
		memset(mem, 0xa5, cap + guard);
		aml_init(&a, mem, cap);
		build_nested_growing();
		if (cap < full) {
			assert_int_equal(aml_finish(&a), -ENOSPC);
			assert_true(a.overflow);
		} else {
			assert_int_equal(aml_finish(&a), 0);
		}
		assert_true(a.len <= cap);
		for (size_t i = cap; i < cap + guard; i++)
			if (mem[i] != 0xa5)
				fail_msg("cap %zu: byte %zu written", cap, i);
	}
}

#define T(f) cmocka_unit_test_teardown(f, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(int_smallest_encoding),
		T(string_encoding),
		T(eisaid_compression),
		T(eisaid_refusals),
		T(name_forms),
		T(name_refusals),
		T(name_segment_limit),
		T(buffer_small),
		T(pkglen_one_two),
		T(pkglen_two_three),
		T(pkglen_three_four),
		T(name_package_s5),
		T(package_nested),
		T(scope_device),
		T(scope_root),
		T(method_return),
		T(nested_pkglen_grow),
		T(unbalanced),
		T(depth_limit),
		T(errors_stick),
		T(overflow_every_cap),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
