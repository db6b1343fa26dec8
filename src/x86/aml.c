/* aml.c — see aml.h. Every write goes through put(), which refuses one that
 * does not fit, except aml_close()'s, which checks its room itself: nothing
 * is ever written at or past cap. Opcode values and encodings are from
 * ACPI 6.x section 20.2; the choices the spec leaves open (integer width,
 * PkgLength size) are the ones iasl makes. */
#include <errno.h>
#include <string.h>

#include "x86/aml.h"

#define AML_ZERO_OP 0x00
#define AML_ONE_OP 0x01
#define AML_NAME_OP 0x08
#define AML_BYTE_PREFIX 0x0a
#define AML_WORD_PREFIX 0x0b
#define AML_DWORD_PREFIX 0x0c
#define AML_STRING_PREFIX 0x0d
#define AML_QWORD_PREFIX 0x0e
#define AML_SCOPE_OP 0x10
#define AML_BUFFER_OP 0x11
#define AML_PACKAGE_OP 0x12
#define AML_METHOD_OP 0x14
#define AML_DUAL_NAME_PREFIX 0x2e
#define AML_MULTI_NAME_PREFIX 0x2f
#define AML_EXT_OP_PREFIX 0x5b
#define AML_DEVICE_OP 0x82 /* after AML_EXT_OP_PREFIX */
#define AML_ROOT_CHAR '\\'
#define AML_PARENT_PREFIX '^'
#define AML_RETURN_OP 0xa4
#define AML_ONES_OP 0xff

#define AML_NULL_NAME 0x00
#define AML_SEG_LEN 4
#define AML_MAX_SEGS 255      /* MultiNamePrefix's SegCount is a byte */
#define AML_MAX_PKGLEN 0x0fffffff /* 28 bits in a 4-byte PkgLength */

void aml_init(struct aml *a, uint8_t *buf, size_t cap)
{
	memset(a, 0, sizeof(*a));
	a->buf = buf;
	a->cap = cap;
}

int aml_finish(const struct aml *a)
{
	if (a->overflow)
		return -ENOSPC;
	if (a->invalid || a->depth)
		return -EINVAL;
	return 0;
}

static bool failed(const struct aml *a)
{
	return a->overflow || a->invalid;
}

static void put(struct aml *a, const void *p, size_t n)
{
	if (failed(a))
		return;
	if (a->cap - a->len < n) {
		a->overflow = true;
		return;
	}
	memcpy(a->buf + a->len, p, n);
	a->len += n;
}

static void put8(struct aml *a, uint8_t v)
{
	put(a, &v, 1);
}

/* ---- PkgLength ------------------------------------------------------------ */

/* Bytes a PkgLength takes in front of n bytes of content; the length it
 * encodes counts those bytes too, so a size is chosen for content plus
 * itself (iasl decides the same way). 0: too long for any. */
static unsigned pkglen_size(size_t n)
{
	if (n + 1 <= 0x3f)
		return 1;
	if (n + 2 <= 0xfff)
		return 2;
	if (n + 3 <= 0xfffff)
		return 3;
	if (n + 4 <= AML_MAX_PKGLEN)
		return 4;
	return 0;
}

/* One byte holds 6 bits; longer forms put the byte count - 1 in bits 7-6
 * of the lead byte, the low 4 bits of the length in bits 3-0, and the rest
 * in the following bytes, least significant first. */
static void pkglen_put(uint8_t *p, size_t total, unsigned size)
{
	if (size == 1) {
		p[0] = (uint8_t)total;
		return;
	}
	p[0] = (uint8_t)((size - 1) << 6 | (total & 0xf));
	for (unsigned i = 1; i < size; i++)
		p[i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
}

/* Writes the opcode and reserves one byte for the PkgLength; aml_close()
 * fills it in and makes room for more bytes if the content needs them. */
static void open_pkg(struct aml *a, const uint8_t *op, size_t op_len)
{
	put(a, op, op_len);
	if (failed(a))
		return;
	if (a->depth == AML_MAX_DEPTH) {
		a->invalid = true;
		return;
	}
	a->open[a->depth++] = a->len;
	put8(a, 0);
}

void aml_close(struct aml *a)
{
	size_t start, n;
	unsigned size;

	if (failed(a))
		return;
	if (!a->depth) {
		a->invalid = true;
		return;
	}
	start = a->open[--a->depth];
	n = a->len - start - 1;
	size = pkglen_size(n);
	if (!size) {
		a->invalid = true;
		return;
	}
	if (a->cap - a->len < size - 1) {
		a->overflow = true;
		return;
	}
	memmove(a->buf + start + size, a->buf + start + 1, n);
	pkglen_put(a->buf + start, n + size, size);
	a->len += size - 1;
}

/* ---- names ---------------------------------------------------------------- */

static bool seg_char(char c, bool lead)
{
	return c == '_' || (c >= 'A' && c <= 'Z') || (!lead && c >= '0' && c <= '9');
}

/* Length (1-4) of the segment at p, ended by '.' or NUL; 0 if invalid. */
static size_t seg_len(const char *p)
{
	size_t n = 0;

	while (p[n] && p[n] != '.') {
		if (n == AML_SEG_LEN || !seg_char(p[n], n == 0))
			return 0;
		n++;
	}
	return n;
}

/* Segments in the path at p (after its prefix), or -1 if it is invalid:
 * an empty or bad segment, a leading, doubled or trailing '.'. */
static int count_segs(const char *p)
{
	int n = 0;

	if (!*p)
		return 0;
	for (;;) {
		size_t len = seg_len(p);

		if (!len || ++n > AML_MAX_SEGS)
			return -1;
		p += len;
		if (!*p)
			return n;
		p++; /* '.' */
	}
}

void aml_namestring(struct aml *a, const char *name)
{
	const char *p = name;
	int nsegs;

	if (*p == AML_ROOT_CHAR)
		p++;
	else
		while (*p == AML_PARENT_PREFIX)
			p++;
	nsegs = count_segs(p);
	if (nsegs < 0 || (nsegs == 0 && p == name)) {
		a->invalid = true;
		return;
	}
	put(a, name, p - name);
	if (nsegs == 0)
		put8(a, AML_NULL_NAME);
	else if (nsegs == 2)
		put8(a, AML_DUAL_NAME_PREFIX);
	else if (nsegs > 2) {
		put8(a, AML_MULTI_NAME_PREFIX);
		put8(a, (uint8_t)nsegs);
	}
	for (int i = 0; i < nsegs; i++) {
		char seg[AML_SEG_LEN] = { '_', '_', '_', '_' };
		size_t len = seg_len(p);

		memcpy(seg, p, len);
		put(a, seg, AML_SEG_LEN);
		p += len + 1;
	}
}

/* ---- data objects ------------------------------------------------------------- */

void aml_int(struct aml *a, uint64_t v)
{
	uint8_t b[9];
	size_t n;

	if (v == 0 || v == 1) {
		put8(a, v ? AML_ONE_OP : AML_ZERO_OP);
		return;
	}
	if (v == UINT64_MAX) {
		put8(a, AML_ONES_OP);
		return;
	}
	if (v <= UINT8_MAX) {
		b[0] = AML_BYTE_PREFIX;
		n = 1;
	} else if (v <= UINT16_MAX) {
		b[0] = AML_WORD_PREFIX;
		n = 2;
	} else if (v <= UINT32_MAX) {
		b[0] = AML_DWORD_PREFIX;
		n = 4;
	} else {
		b[0] = AML_QWORD_PREFIX;
		n = 8;
	}
	for (size_t i = 0; i < n; i++)
		b[1 + i] = (uint8_t)(v >> (8 * i));
	put(a, b, 1 + n);
}

void aml_string(struct aml *a, const char *s)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] > 0x7f)
			a->invalid = true;
	put8(a, AML_STRING_PREFIX);
	put(a, s, n + 1);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* A 32-bit compressed EISA ID: three letters of 5 bits each (A is 1) in
 * bits 30-16, the four hex digits in bits 15-0, stored big-endian. It is an
 * ordinary integer, so it takes the smallest encoding that fits. */
void aml_eisaid(struct aml *a, const char *id)
{
	uint32_t v = 0;

	if (strlen(id) != 7) {
		a->invalid = true;
		return;
	}
	for (int i = 0; i < 3; i++) {
		if (id[i] < 'A' || id[i] > 'Z') {
			a->invalid = true;
			return;
		}
		v |= (uint32_t)(id[i] - 'A' + 1) << (26 - 5 * i);
	}
	for (int i = 3; i < 7; i++) {
		int d = hex_digit(id[i]);

		if (d < 0) {
			a->invalid = true;
			return;
		}
		v |= (uint32_t)d << (4 * (6 - i));
	}
	aml_int(a, __builtin_bswap32(v));
}

/* Buffer (n) { data }: the size is an integer, encoded as any other. */
void aml_buffer(struct aml *a, const void *data, size_t n)
{
	const uint8_t op = AML_BUFFER_OP;

	open_pkg(a, &op, 1);
	aml_int(a, n);
	if (n)
		put(a, data, n);
	aml_close(a);
}

/* ---- operators and named objects ------------------------------------------ */

void aml_name(struct aml *a, const char *name)
{
	put8(a, AML_NAME_OP);
	aml_namestring(a, name);
}

void aml_return(struct aml *a)
{
	put8(a, AML_RETURN_OP);
}

/* Package (n) { ... }: NumElements is a byte after the PkgLength. */
void aml_package_open(struct aml *a, uint8_t nr_elements)
{
	const uint8_t op = AML_PACKAGE_OP;

	open_pkg(a, &op, 1);
	put8(a, nr_elements);
}

void aml_scope_open(struct aml *a, const char *name)
{
	const uint8_t op = AML_SCOPE_OP;

	open_pkg(a, &op, 1);
	aml_namestring(a, name);
}

void aml_device_open(struct aml *a, const char *name)
{
	const uint8_t op[2] = { AML_EXT_OP_PREFIX, AML_DEVICE_OP };

	open_pkg(a, op, 2);
	aml_namestring(a, name);
}

/* MethodFlags: bits 2-0 the argument count, bit 3 serialized, bits 7-4
 * the sync level (always 0 here). */
void aml_method_open(struct aml *a, const char *name, unsigned nr_args, bool serialized)
{
	const uint8_t op = AML_METHOD_OP;

	if (nr_args > 7)
		a->invalid = true;
	open_pkg(a, &op, 1);
	aml_namestring(a, name);
	put8(a, (uint8_t)(nr_args | (serialized ? 1 << 3 : 0)));
}
