/* test_state.c — the state stream format layer: crc32c, sbuf, the stream
 * framing (state/stream.h) and the table interpreter (state/state.h).
 *
 * Hostile streams are built byte by byte with a small writer of this file's
 * own (raw_*), independent of the one under test, so a case can break one
 * thing and keep every checksum right: the refusal then proves the check
 * itself, not the CRC. Every stream is handed to the parser in a heap
 * buffer of exactly its size, so ASan sees any read past the end; loads go
 * into heap objects of exactly their size for the same reason. A refused
 * load must leave the object byte-for-byte as it was. */
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

#include "lib/crc32c.h"
#include "state/sbuf.h"
#include "state/state.h"
#include "state/stream.h"
#include "vcpu/vcpu_state.h"

#define ERRLEN 512

/* ---- the test device ------------------------------------------------------ */

struct t_elem {
	uint32_t index;
	uint32_t flags;
	uint64_t data;
};

struct t_inner {
	uint16_t a;
	uint16_t b;
	uint32_t c;
};

struct t_dev {
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	uint8_t fixed[13];
	uint32_t vlen;
	uint8_t vbuf[40];
	struct t_inner inner;
	uint32_t nr;
	struct t_elem elems[6];
	uint64_t extra; /* saved only when non-zero */
};

/* What a newer cprvm's device might look like: one more member. */
struct t_dev_new {
	struct t_dev d;
	uint32_t more;
};

static bool t_extra_needed(const void *obj)
{
	return ((const struct t_dev *)obj)->extra != 0;
}

static const struct state_field t_elem_fields[] = {
	STATE_FIELD_U32(1, struct t_elem, index, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U32(2, struct t_elem, flags),
	STATE_FIELD_U64(3, struct t_elem, data),
};
static const struct state_desc t_elem_desc = STATE_DESC("t_elem", 1, 1, t_elem_fields);

static const struct state_field t_inner_fields[] = {
	STATE_FIELD_U16(1, struct t_inner, a),
	STATE_FIELD_U16(2, struct t_inner, b),
	STATE_FIELD_U32(3, struct t_inner, c),
};
static const struct state_desc t_inner_desc = STATE_DESC("t_inner", 1, 1, t_inner_fields);

#define T_DEV_FIELDS                                                                           \
	STATE_FIELD_U8(1, struct t_dev, u8, .flags = STATE_F_REQUIRED),                        \
	STATE_FIELD_U16(2, struct t_dev, u16),                                                 \
	STATE_FIELD_U32(3, struct t_dev, u32),                                                 \
	STATE_FIELD_U64(4, struct t_dev, u64),                                                 \
	STATE_FIELD_BYTES(5, struct t_dev, fixed),                                             \
	STATE_FIELD_VBYTES(6, struct t_dev, vbuf, vlen),                                       \
	STATE_FIELD_STRUCT(7, struct t_dev, inner, t_inner_desc),                              \
	STATE_FIELD_ARRAY(8, struct t_dev, elems, nr, t_elem_desc),                            \
	STATE_FIELD_U64(9, struct t_dev, extra, .needed = t_extra_needed)

static const struct state_field t_fields[] = { T_DEV_FIELDS };
static const struct state_desc t_desc = STATE_DESC("t_dev", 2, 1, t_fields);

/* An older writer: version 1, two fields. */
static const struct state_field t_old_fields[] = {
	STATE_FIELD_U8(1, struct t_dev, u8, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U16(2, struct t_dev, u16),
};
static const struct state_desc t_old_desc = STATE_DESC("t_dev", 1, 1, t_old_fields);

/* Newer writers: one more field, optional or required. */
static const struct state_field t_new_fields[] = {
	T_DEV_FIELDS,
	STATE_FIELD_U32(20, struct t_dev_new, more),
};
static const struct state_desc t_new_desc = STATE_DESC("t_dev", 2, 1, t_new_fields);

static const struct state_field t_new_req_fields[] = {
	T_DEV_FIELDS,
	STATE_FIELD_U32(20, struct t_dev_new, more, .flags = STATE_F_REQUIRED),
};
static const struct state_desc t_new_req_desc = STATE_DESC("t_dev", 2, 1, t_new_req_fields);

/* A writer whose section version the reader has never heard of. */
static const struct state_desc t_v3_desc = STATE_DESC("t_dev", 3, 1, t_fields);

static void t_fill(struct t_dev *d)
{
	memset(d, 0, sizeof(*d));
	d->u8 = 0xa5;
	d->u16 = 0xbeef;
	d->u32 = 0xdeadbeef;
	d->u64 = 0x0123456789abcdefULL;
	for (size_t i = 0; i < sizeof(d->fixed); i++)
		d->fixed[i] = (uint8_t)(i * 7 + 1);
	d->vlen = 11;
	memcpy(d->vbuf, "hello world", 11);
	d->inner = (struct t_inner){ 0x1111, 0x2222, 0x33334444 };
	d->nr = 3;
	for (uint32_t i = 0; i < d->nr; i++)
		d->elems[i] = (struct t_elem){ 0xc0000080 + i, i, 0xfee1dead00000000ULL | i };
	d->extra = 0x77;
}

/* Defaults a loader pre-fills before loading. */
static void t_defaults(struct t_dev *d)
{
	memset(d, 0, sizeof(*d));
	d->u16 = 16;
	d->u32 = 32;
	d->u64 = 64;
	d->extra = 99;
	d->inner.c = 3;
}

/* ---- helpers -------------------------------------------------------------- */

static void *dup_exact(const void *p, size_t len)
{
	void *q = malloc(len ? len : 1);

	assert_non_null(q);
	if (len)
		memcpy(q, p, len);
	return q;
}

static int __parse(const uint8_t *buf, size_t len, struct stream_index *idx, char *err)
{
	uint8_t *copy = dup_exact(buf, len);
	int ret;

	/* The index points into the buffer: parse a copy, keep only the
	 * verdict and the message. */
	err[0] = 0;
	ret = stream_parse(copy, len, idx, err, ERRLEN);
	stream_index_free(idx);
	free(copy);
	return ret;
}

/* Asserts a refusal with a one-line message containing want (if given). */
static void refused(const uint8_t *buf, size_t len, const char *want)
{
	struct stream_index idx;
	char err[ERRLEN];
	int ret = __parse(buf, len, &idx, err);

	if (ret >= 0 || !err[0] || (want && !strstr(err, want)))
		fail_msg("expected refusal containing \"%s\": ret %d, \"%s\"", want ? want : "",
			 ret, err);
	assert_null(strchr(err, '\n'));
	assert_int_equal(idx.nr, 0);
	assert_null(idx.sections);
}

static void parse(const uint8_t *buf, size_t len, struct stream_index *idx)
{
	char err[ERRLEN] = "";
	int ret = stream_parse(buf, len, idx, err, ERRLEN);

	if (ret)
		fail_msg("stream_parse: %d %s", ret, err);
}

static int __load(const struct state_desc *d, uint32_t ver, const struct sbuf *payload,
		  struct t_dev *obj, char *err)
{
	uint8_t *p = dup_exact(payload->data, payload->len);
	struct t_dev *o = dup_exact(obj, sizeof(*obj));
	int ret;

	err[0] = 0;
	ret = state_load(d, ver, p, payload->len, o, err, ERRLEN);
	memcpy(obj, o, sizeof(*obj));
	free(o);
	free(p);
	return ret;
}

/* Refused, with want in the message, and obj untouched. */
static void load_refused(const struct state_desc *d, uint32_t ver, const struct sbuf *payload,
			 const char *want)
{
	struct t_dev obj, before;
	char err[ERRLEN];
	int ret;

	t_fill(&obj);
	memcpy(&before, &obj, sizeof(obj));
	ret = __load(d, ver, payload, &obj, err);
	if (ret >= 0 || !err[0] || (want && !strstr(err, want)))
		fail_msg("expected load refusal containing \"%s\": ret %d, \"%s\"",
			 want ? want : "", ret, err);
	assert_memory_equal(&obj, &before, sizeof(obj));
}

/* A stream with the given sections of t_dev state, finished. */
static void write_stream(struct sbuf *b, const struct state_desc *d, const void *obj,
			 int nsections)
{
	assert_int_equal(stream_writer_begin(b, 1, 2, 3), 0);
	for (int i = 0; i < nsections; i++) {
		char name[16];

		snprintf(name, sizeof(name), "dev/%d", i);
		assert_int_equal(stream_put_state(b, name, d, obj, STREAM_SEC_REQUIRED), 0);
	}
	assert_int_equal(stream_writer_end(b), 0);
}

/* ---- raw writer: this file's own, for streams the real one won't make ---- */

static void raw_header(struct sbuf *b, uint32_t fmt, uint32_t hsize, uint16_t reserved,
		       uint32_t flags)
{
	sbuf_put(b, "CPRVMST1", 8);
	sbuf_put_u32(b, fmt);
	sbuf_put_u32(b, hsize);
	sbuf_put_u16(b, 1);
	sbuf_put_u16(b, 2);
	sbuf_put_u16(b, 3);
	sbuf_put_u16(b, reserved);
	sbuf_put_u32(b, flags);
	sbuf_put_u32(b, crc32c(0, b->data + b->len - 28, 28));
}

static void raw_section(struct sbuf *b, uint8_t flags, const char *name, size_t n,
			uint32_t version, const void *payload, uint32_t len)
{
	size_t start = b->len;

	sbuf_put_u8(b, 0x01);
	sbuf_put_u8(b, flags);
	sbuf_put_u16(b, (uint16_t)n);
	sbuf_put(b, name, n);
	sbuf_put_u32(b, version);
	sbuf_put_u32(b, len);
	sbuf_put(b, payload, len);
	sbuf_put_u32(b, crc32c(0, b->data + start, b->len - start));
}

static void raw_end(struct sbuf *b, uint32_t count)
{
	sbuf_put_u8(b, 0xff);
	sbuf_put_u8(b, 0);
	sbuf_put_u16(b, 0);
	sbuf_put_u32(b, count);
	sbuf_put_u32(b, crc32c(0, b->data, b->len));
	assert_int_equal(b->err, 0);
}

/* A field header and data, for hand-made payloads. */
static void raw_field(struct sbuf *b, uint16_t id, uint8_t type, uint8_t flags, const void *data,
		      uint32_t len)
{
	sbuf_put_u16(b, id);
	sbuf_put_u8(b, type);
	sbuf_put_u8(b, flags);
	sbuf_put_u32(b, len);
	sbuf_put(b, data, len);
}

/* ---- crc32c and sbuf ------------------------------------------------------ */

static void crc32c_vectors(void **state)
{
	uint8_t zeros[32] = { 0 }, ones[32], buf[1024];

	(void)state;
	memset(ones, 0xff, sizeof(ones));
	assert_int_equal(crc32c(0, "123456789", 9), 0xe3069283);
	assert_int_equal(crc32c_sw(0, "123456789", 9), 0xe3069283);
	assert_int_equal(crc32c(0, "", 0), 0);
	/* RFC 3720 (iSCSI) B.4 test patterns. */
	assert_int_equal(crc32c(0, zeros, 32), 0x8a9136aa);
	assert_int_equal(crc32c(0, ones, 32), 0x62a8ab43);
	assert_int_equal(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xe3069283);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + (i >> 3));
	for (size_t off = 0; off < 8; off++)
		for (size_t n = 0; n + off <= sizeof(buf); n += 1 + n / 16)
			assert_int_equal(crc32c(7, buf + off, n), crc32c_sw(7, buf + off, n));
}

static void sbuf_basics(void **state)
{
	struct sbuf b = SBUF_INIT;

	(void)state;
	assert_int_equal(sbuf_put_u8(&b, 0x11), 0);
	assert_int_equal(sbuf_put_u16(&b, 0x2233), 0);
	assert_int_equal(sbuf_put_u32(&b, 0x44556677), 0);
	assert_int_equal(sbuf_put_u64(&b, 0x8899aabbccddeeffULL), 0);
	assert_int_equal(b.len, 15);
	assert_memory_equal(b.data, "\x11\x33\x22\x77\x66\x55\x44\xff\xee\xdd\xcc\xbb\xaa\x99\x88",
			    15);
	assert_int_equal(sbuf_get_le16(b.data + 1), 0x2233);
	assert_int_equal(sbuf_get_le32(b.data + 3), 0x44556677);
	assert_true(sbuf_get_le64(b.data + 7) == 0x8899aabbccddeeffULL);
	assert_int_equal(sbuf_patch_u32(&b, 11, 1), 0);
	assert_int_equal(sbuf_get_le32(b.data + 11), 1);
	for (int i = 0; i < 10000; i++)
		sbuf_put_u32(&b, (uint32_t)i);
	assert_int_equal(b.err, 0);
	assert_int_equal(b.len, 15 + 40000);
	assert_int_equal(sbuf_get_le32(b.data + 15 + 4 * 9999), 9999);
	/* Errors are sticky: nothing changes after the first. */
	assert_int_equal(sbuf_patch_u32(&b, b.len - 3, 0), -EINVAL);
	assert_int_equal(sbuf_put_u8(&b, 1), -EINVAL);
	assert_int_equal(sbuf_reserve(&b, 1), -EINVAL);
	assert_int_equal(b.len, 15 + 40000);
	sbuf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.err, 0);
	assert_int_equal(sbuf_reserve(&b, SBUF_MAX + 1), -EOVERFLOW);
	assert_null(b.data);
	sbuf_free(&b);
}

/* ---- the writer ----------------------------------------------------------- */

/* The writer's bytes equal this file's raw writer's: the layout in the
 * header comment and the docs is what is on the wire. */
static void writer_layout(void **state)
{
	struct sbuf w = SBUF_INIT, r = SBUF_INIT;
	size_t tok;

	(void)state;
	assert_int_equal(stream_writer_begin(&w, 1, 2, 3), 0);
	tok = stream_section_begin(&w, "irqchip", 7, STREAM_SEC_REQUIRED);
	sbuf_put(&w, "abc", 3);
	assert_int_equal(stream_section_end(&w, tok), 0);
	tok = stream_section_begin(&w, "empty/0", 1, 0);
	assert_int_equal(stream_section_end(&w, tok), 0);
	assert_int_equal(stream_writer_end(&w), 0);

	raw_header(&r, 1, 32, 0, 0);
	raw_section(&r, 1, "irqchip", 7, 7, "abc", 3);
	raw_section(&r, 0, "empty/0", 7, 1, NULL, 0);
	raw_end(&r, 2);
	assert_int_equal(w.len, 32 + (16 + 7 + 3) + (16 + 7) + 12);
	assert_int_equal(w.len, r.len);
	assert_memory_equal(w.data, r.data, w.len);
	sbuf_free(&w);
	sbuf_free(&r);
}

static void writer_misuse(void **state)
{
	struct sbuf b = SBUF_INIT;
	char longname[66];
	size_t tok;

	(void)state;
	/* Sections need a header first. */
	stream_section_begin(&b, "x", 1, 0);
	assert_int_equal(b.err, -EINVAL);
	sbuf_free(&b);

	/* Only on an empty buffer. */
	sbuf_put_u8(&b, 0);
	assert_int_equal(stream_writer_begin(&b, 0, 0, 0), -EINVAL);
	sbuf_free(&b);

	memset(longname, 'a', 65);
	longname[65] = 0;
	const char *bad[] = { "", "has space", "tab\t", "\x80high", longname, NULL };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		stream_writer_begin(&b, 0, 0, 0);
		stream_section_begin(&b, bad[i], 1, 0);
		assert_int_equal(b.err, -EINVAL);
		assert_int_equal(stream_writer_end(&b), -EINVAL);
		sbuf_free(&b);
	}
	longname[64] = 0; /* 64 is fine */
	stream_writer_begin(&b, 0, 0, 0);
	assert_int_equal(stream_section_end(&b, stream_section_begin(&b, longname, 1, 0)), 0);
	assert_int_equal(stream_writer_end(&b), 0);
	sbuf_free(&b);

	/* Unknown section flags. */
	stream_writer_begin(&b, 0, 0, 0);
	stream_section_begin(&b, "x", 1, 2);
	assert_int_equal(b.err, -EINVAL);
	sbuf_free(&b);

	/* A section left open. */
	stream_writer_begin(&b, 0, 0, 0);
	stream_section_begin(&b, "x", 1, 0);
	assert_int_equal(stream_writer_end(&b), -EINVAL);
	sbuf_free(&b);

	/* Ended twice, or with a made-up token. */
	stream_writer_begin(&b, 0, 0, 0);
	tok = stream_section_begin(&b, "x", 1, 0);
	assert_int_equal(stream_section_end(&b, tok), 0);
	assert_int_equal(stream_section_end(&b, tok), -EINVAL);
	sbuf_free(&b);
	stream_writer_begin(&b, 0, 0, 0);
	assert_int_equal(stream_section_end(&b, 5), -EINVAL);
	sbuf_free(&b);

	/* Bytes outside any section. */
	stream_writer_begin(&b, 0, 0, 0);
	sbuf_put_u8(&b, 1);
	assert_int_equal(stream_writer_end(&b), -EINVAL);
	sbuf_free(&b);
}

static void writer_payload_limit(void **state)
{
	struct sbuf b = SBUF_INIT;
	size_t tok;

	(void)state;
	stream_writer_begin(&b, 0, 0, 0);
	tok = stream_section_begin(&b, "big", 1, 0);
	assert_int_equal(sbuf_reserve(&b, STREAM_PAYLOAD_MAX + 1), 0);
	memset(b.data + b.len, 0, STREAM_PAYLOAD_MAX + 1);
	b.len += STREAM_PAYLOAD_MAX + 1;
	assert_int_equal(stream_section_end(&b, tok), -EFBIG);
	sbuf_free(&b);

	/* Exactly the limit is fine. */
	stream_writer_begin(&b, 0, 0, 0);
	tok = stream_section_begin(&b, "big", 1, 0);
	assert_int_equal(sbuf_reserve(&b, STREAM_PAYLOAD_MAX), 0);
	memset(b.data + b.len, 0, STREAM_PAYLOAD_MAX);
	b.len += STREAM_PAYLOAD_MAX;
	assert_int_equal(stream_section_end(&b, tok), 0);
	assert_int_equal(stream_writer_end(&b), 0);
	{
		struct stream_index idx;

		parse(b.data, b.len, &idx);
		assert_int_equal(idx.sections[0].len, STREAM_PAYLOAD_MAX);
		stream_index_free(&idx);
	}
	sbuf_free(&b);
}

/* ---- round trips ---------------------------------------------------------- */

static void round_trip_all_types(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	struct t_dev in, out;
	char err[ERRLEN];

	(void)state;
	t_fill(&in);
	write_stream(&b, &t_desc, &in, 2);
	parse(b.data, b.len, &idx);
	assert_int_equal(idx.format_version, 1);
	assert_int_equal(idx.writer_major, 1);
	assert_int_equal(idx.writer_minor, 2);
	assert_int_equal(idx.writer_micro, 3);
	assert_int_equal(idx.nr, 2);
	assert_string_equal(idx.sections[1].name, "dev/1");
	assert_int_equal(idx.sections[1].version, 2);
	assert_int_equal(idx.sections[1].flags, STREAM_SEC_REQUIRED);
	assert_ptr_equal(stream_find(&idx, "dev/1"), &idx.sections[1]);
	assert_ptr_equal(stream_find(&idx, "dev/0"), &idx.sections[0]);
	assert_null(stream_find(&idx, "dev/2"));
	assert_null(stream_find(&idx, "dev"));

	t_defaults(&out);
	assert_int_equal(stream_get_state(&idx, "dev/1", &t_desc, &out, err, ERRLEN), 0);
	assert_memory_equal(&in, &out, sizeof(in));
	assert_int_equal(stream_get_state(&idx, "dev/9", &t_desc, &out, err, ERRLEN), -ENOENT);
	assert_non_null(strstr(err, "'dev/9'"));
	stream_index_free(&idx);
	sbuf_free(&b);
}

static void round_trip_edges(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct t_dev in, out;
	char err[ERRLEN];

	(void)state;
	/* Empty VBYTES and array, all-ones scalars. */
	t_fill(&in);
	in.vlen = 0;
	in.nr = 0;
	in.u8 = 0xff;
	in.u16 = 0xffff;
	in.u32 = 0xffffffff;
	in.u64 = ~0ULL;
	memset(in.vbuf, 0, sizeof(in.vbuf));
	memset(in.elems, 0, sizeof(in.elems));
	assert_int_equal(state_save(&b, &t_desc, &in), 0);
	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_memory_equal(&in, &out, sizeof(in));
	/* Elements past the count are not the stream's: left alone. */
	t_fill(&out);
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_int_equal(out.nr, 0);
	assert_int_equal(out.elems[0].index, 0xc0000080);
	sbuf_free(&b);

	/* Full VBYTES and array. */
	t_fill(&in);
	in.vlen = sizeof(in.vbuf);
	memset(in.vbuf, 0x5a, sizeof(in.vbuf));
	in.nr = 6;
	for (uint32_t i = 0; i < 6; i++)
		in.elems[i] = (struct t_elem){ i, ~i, (uint64_t)i << 40 };
	assert_int_equal(state_save(&b, &t_desc, &in), 0);
	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_memory_equal(&in, &out, sizeof(in));
	sbuf_free(&b);

	/* A shorter VBYTES clears the rest of the buffer. */
	t_fill(&in);
	in.vlen = 2;
	assert_int_equal(state_save(&b, &t_desc, &in), 0);
	t_defaults(&out);
	memset(out.vbuf, 0xee, sizeof(out.vbuf));
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_int_equal(out.vlen, 2);
	assert_memory_equal(out.vbuf, "he", 2);
	for (size_t i = 2; i < sizeof(out.vbuf); i++)
		assert_int_equal(out.vbuf[i], 0);
	sbuf_free(&b);

	/* Counts over capacity are a writer bug: refused, nothing read
	 * out of bounds, and stream_put_state takes the section back. */
	t_fill(&in);
	in.nr = 7;
	assert_int_equal(state_save(&b, &t_desc, &in), -EINVAL);
	sbuf_free(&b);
	in.nr = 3;
	in.vlen = 41;
	stream_writer_begin(&b, 0, 0, 0);
	assert_int_equal(stream_put_state(&b, "dev", &t_desc, &in, 0), -EINVAL);
	assert_int_equal(b.len, STREAM_HEADER_SIZE);
	assert_int_equal(b.err, 0);
	assert_int_equal(stream_writer_end(&b), 0);
	sbuf_free(&b);
}

/* needed(): the field is written only when it says so; absent, the
 * reader's default stays. */
static void needed_subsection(void **state)
{
	struct sbuf with = SBUF_INIT, without = SBUF_INIT;
	struct t_dev in, out;
	char err[ERRLEN];
	json_t *j;

	(void)state;
	t_fill(&in);
	assert_int_equal(state_save(&with, &t_desc, &in), 0);
	in.extra = 0;
	assert_int_equal(state_save(&without, &t_desc, &in), 0);
	assert_int_equal(with.len, without.len + 8 + 8);

	j = state_describe(&t_desc, without.data, without.len);
	for (size_t i = 0; i < json_array_size(j); i++)
		assert_int_not_equal(json_integer_value(json_object_get(json_array_get(j, i), "id")),
				     9);
	json_decref(j);

	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &without, &out, err), 0);
	assert_true(out.extra == 99);
	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &with, &out, err), 0);
	assert_true(out.extra == 0x77);
	sbuf_free(&with);
	sbuf_free(&without);
}

/* ---- versions and compatibility ------------------------------------------- */

static void older_writer_newer_reader(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	struct t_dev in, out, want;
	char err[ERRLEN];

	(void)state;
	t_fill(&in);
	write_stream(&b, &t_old_desc, &in, 1);
	parse(b.data, b.len, &idx);
	assert_int_equal(idx.sections[0].version, 1);
	t_defaults(&out);
	assert_int_equal(stream_get_state(&idx, "dev/0", &t_desc, &out, err, ERRLEN), 0);
	t_defaults(&want);
	want.u8 = in.u8;
	want.u16 = in.u16;
	assert_memory_equal(&out, &want, sizeof(out));
	stream_index_free(&idx);
	sbuf_free(&b);
}

static void newer_writer_older_reader(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct t_dev_new in;
	struct t_dev out;
	char err[ERRLEN];

	(void)state;
	memset(&in, 0, sizeof(in));
	t_fill(&in.d);
	in.more = 0x12345678;

	/* An optional field the reader does not know: skipped. */
	assert_int_equal(state_save(&b, &t_new_desc, &in), 0);
	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_memory_equal(&out, &in.d, sizeof(out));
	sbuf_free(&b);

	/* A required one: refused, by id, object untouched. */
	assert_int_equal(state_save(&b, &t_new_req_desc, &in), 0);
	load_refused(&t_desc, 2, &b, "unknown required field id 20");
	sbuf_free(&b);
}

static void section_versions(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	struct t_dev in, out;
	char err[ERRLEN];

	(void)state;
	t_fill(&in);
	write_stream(&b, &t_v3_desc, &in, 1);
	parse(b.data, b.len, &idx);
	t_defaults(&out);
	assert_int_equal(stream_get_state(&idx, "dev/0", &t_desc, &out, err, ERRLEN), -ENOTSUP);
	assert_string_equal(err, "section 'dev/0' version 3 is newer than supported 2");
	stream_index_free(&idx);
	sbuf_free(&b);

	assert_int_equal(state_save(&b, &t_desc, &in), 0);
	load_refused(&t_desc, 0, &b, "version 0 is older than the oldest supported 1");
	load_refused(&t_desc, 3, &b, "section 't_dev' version 3 is newer than supported 2");
	sbuf_free(&b);
}

/* ---- hostile payloads ----------------------------------------------------- */

static void payload_refusals(void **state)
{
	static const uint8_t u32v[4] = { 1, 2, 3, 4 }, u16v[2] = { 1, 2 }, big[64] = { 0 };
	struct sbuf b = SBUF_INIT, inner = SBUF_INIT;
	struct t_dev out;
	char err[ERRLEN];

	(void)state;
#define CASE(want, ...)                                                                        \
	do {                                                                                   \
		__VA_ARGS__;                                                                   \
		load_refused(&t_desc, 2, &b, want);                                            \
		sbuf_free(&b);                                                                 \
		sbuf_free(&inner);                                                             \
	} while (0)

	CASE("duplicate field id 3", raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4);
	     raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4));
	CASE("field id 2 out of order (after 3)", raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4);
	     raw_field(&b, 2, STATE_WIRE_U16, 0, u16v, 2));
	/* Unknown fields are ordered and de-duplicated too. */
	CASE("duplicate field id 50", raw_field(&b, 50, 99, 0, u32v, 4);
	     raw_field(&b, 50, 99, 0, u32v, 4));
	CASE("field id 0 is reserved", raw_field(&b, 0, STATE_WIRE_U8, 0, u32v, 1));
	CASE("unknown flags 0x02", raw_field(&b, 3, STATE_WIRE_U32, 2, u32v, 4));
	CASE("u16 on the wire, expected u32", raw_field(&b, 3, STATE_WIRE_U16, 0, u16v, 2));
	CASE("type code 99 on the wire", raw_field(&b, 3, 99, 0, u32v, 4));
	CASE("field 'u32' at offset 0: length 2, expected 4",
	     raw_field(&b, 3, STATE_WIRE_U32, 0, u16v, 2));
	CASE("length 5, expected 8", raw_field(&b, 4, STATE_WIRE_U64, 0, big, 5));
	CASE("length 12, expected 13", raw_field(&b, 5, STATE_WIRE_BYTES, 0, big, 12));
	CASE("length 14, expected 13", raw_field(&b, 5, STATE_WIRE_BYTES, 0, big, 14));
	CASE("length 41 exceeds the capacity of 40", raw_field(&b, 6, STATE_WIRE_BYTES, 0, big, 41));
	CASE("unknown required field id 30 (bytes, 4 bytes) in 't_dev'",
	     raw_field(&b, 30, STATE_WIRE_BYTES, STATE_F_REQUIRED, big, 4));
	CASE("truncated field header: 8 bytes needed, only 7 left",
	     raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4); sbuf_put(&b, big, 7));
	CASE("field id 3 needs 4 bytes, only 3 left",
	     raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4); b.len--);
	/* Inside a struct: the path names it. */
	CASE("field 'inner.c' at offset 8: length 2, expected 4",
	     raw_field(&inner, 3, STATE_WIRE_U32, 0, u16v, 2);
	     raw_field(&b, 7, STATE_WIRE_STRUCT, 0, inner.data, (uint32_t)inner.len));
	/* Arrays: count over capacity, short, overrun, stray bytes, a bad element. */
	{
		uint32_t seven = 7;

		CASE("field 'elems' at offset 8: 7 elements, capacity 6",
		     raw_field(&b, 8, STATE_WIRE_ARRAY, 0, &seven, 4));
	}
	CASE("too short for the element count", raw_field(&b, 8, STATE_WIRE_ARRAY, 0, big, 3));
	CASE("field 'elems[0]' at offset 12: truncated: element length needs 4 bytes",
	     sbuf_put_u32(&inner, 1);
	     raw_field(&b, 8, STATE_WIRE_ARRAY, 0, inner.data, (uint32_t)inner.len));
	CASE("field 'elems[0]' at offset 12: element needs 100 bytes, only 0 left",
	     sbuf_put_u32(&inner, 1); sbuf_put_u32(&inner, 100);
	     raw_field(&b, 8, STATE_WIRE_ARRAY, 0, inner.data, (uint32_t)inner.len));
	CASE("2 stray bytes after 0 elements", sbuf_put_u32(&inner, 0); sbuf_put_u16(&inner, 0);
	     raw_field(&b, 8, STATE_WIRE_ARRAY, 0, inner.data, (uint32_t)inner.len));
	/* Element 1 lacks its required 'index'? No: required is about the
	 * writer's fields. Give element 1 a u64 index instead. */
	CASE("field 'elems[1].index' at offset 32: u64 on the wire, expected u32",
	     sbuf_put_u32(&inner, 2); sbuf_put_u32(&inner, 12);
	     raw_field(&inner, 1, STATE_WIRE_U32, 0, u32v, 4); sbuf_put_u32(&inner, 16);
	     raw_field(&inner, 1, STATE_WIRE_U64, 0, big, 8);
	     raw_field(&b, 8, STATE_WIRE_ARRAY, 0, inner.data, (uint32_t)inner.len));
	/* A bad field after good ones: still nothing applied. */
	CASE("length 41", raw_field(&b, 1, STATE_WIRE_U8, 0, big, 1);
	     raw_field(&b, 3, STATE_WIRE_U32, 0, u32v, 4);
	     raw_field(&b, 6, STATE_WIRE_BYTES, 0, big, 41));
#undef CASE

	/* An empty payload is an empty field list: everything defaults. */
	t_defaults(&out);
	assert_int_equal(state_load(&t_desc, 2, NULL, 0, &out, err, ERRLEN), 0);

	/* Unknown optional fields of any type are skipped. */
	raw_field(&b, 1, STATE_WIRE_U8, 0, big, 1);
	raw_field(&b, 15, 200, 0, big, 64);
	raw_field(&b, 16, STATE_WIRE_STRUCT, 0, big, 7);
	t_defaults(&out);
	assert_int_equal(__load(&t_desc, 2, &b, &out, err), 0);
	assert_int_equal(out.u8, 0);
	sbuf_free(&b);
}

static void bad_tables(void **state)
{
	static const struct state_field unordered[] = {
		STATE_FIELD_U16(2, struct t_dev, u16),
		STATE_FIELD_U8(1, struct t_dev, u8),
	};
	static const struct state_field zero_id[] = { STATE_FIELD_U8(0, struct t_dev, u8) };
	static const struct state_field bad_size[] = {
		{ .id = 1, .name = "u8", .type = STATE_U32, .size = 2 },
	};
	static const struct state_desc d1 = STATE_DESC("unordered", 1, 1, unordered);
	static const struct state_desc d2 = STATE_DESC("zero", 1, 1, zero_id);
	static const struct state_desc d3 = STATE_DESC("size", 1, 1, bad_size);
	static const struct state_desc d4 = STATE_DESC("versions", 1, 2, t_fields);
	const struct state_desc *bad[] = { &d1, &d2, &d3, &d4 };
	struct sbuf b = SBUF_INIT;
	struct t_dev obj;
	char err[ERRLEN];

	(void)state;
	assert_int_equal(state_desc_check(&t_desc, err, ERRLEN), 0);
	assert_int_equal(state_desc_check(&t_new_req_desc, err, ERRLEN), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		assert_int_equal(state_desc_check(bad[i], err, ERRLEN), -EINVAL);
		assert_non_null(strstr(err, bad[i]->name));
		t_fill(&obj);
		assert_int_equal(state_save(&b, bad[i], &obj), -EINVAL);
		sbuf_free(&b);
		assert_int_equal(state_load(bad[i], 1, NULL, 0, &obj, err, ERRLEN), -EINVAL);
	}
}

/* ---- hostile streams ------------------------------------------------------ */

/* Two sections of device state and a small optional one. */
static void sample_stream(struct sbuf *b)
{
	struct t_dev in;
	size_t tok;

	t_fill(&in);
	in.nr = 2;
	in.vlen = 3;
	assert_int_equal(stream_writer_begin(b, 0, 1, 0), 0);
	assert_int_equal(stream_put_state(b, "dev/0", &t_desc, &in, STREAM_SEC_REQUIRED), 0);
	tok = stream_section_begin(b, "note", 1, 0);
	sbuf_put(b, "hi", 2);
	stream_section_end(b, tok);
	assert_int_equal(stream_writer_end(b), 0);
}

static void stream_header_refusals(void **state)
{
	struct sbuf b = SBUF_INIT;
	uint8_t *p;

	(void)state;
	sample_stream(&b);
	p = dup_exact(b.data, b.len);

	p[0] = 'X';
	refused(p, b.len, "not a cprvm state stream: expected magic \"CPRVMST1\" at offset 0");
	memcpy(p, b.data, b.len);
	p[28] ^= 1;
	refused(p, b.len, "header at offset 0: checksum mismatch (stored 0x");
	free(p);
	sbuf_free(&b);

	/* A newer format is named as such, whatever follows it. */
	raw_header(&b, 2, 48, 0, 0);
	sbuf_put(&b, "future things", 13);
	refused(b.data, b.len, "stream format version 2 is newer than this cprvm supports (1)");
	sbuf_free(&b);

	/* Checksums right, contents wrong. */
	raw_header(&b, 0, 32, 0, 0);
	raw_end(&b, 0);
	refused(b.data, b.len, "format version 0 is invalid");
	sbuf_free(&b);
	raw_header(&b, 1, 40, 0, 0);
	raw_end(&b, 0);
	refused(b.data, b.len, "header size 40, expected 32");
	sbuf_free(&b);
	raw_header(&b, 1, 32, 1, 0);
	raw_end(&b, 0);
	refused(b.data, b.len, "must be zero");
	sbuf_free(&b);
	raw_header(&b, 1, 32, 0, 4);
	raw_end(&b, 0);
	refused(b.data, b.len, "flags 0x00000004 must be zero");
	sbuf_free(&b);

	/* The smallest stream: a header and the end. */
	{
		struct stream_index idx;

		raw_header(&b, 1, 32, 0, 0);
		raw_end(&b, 0);
		assert_int_equal(b.len, 44);
		parse(b.data, b.len, &idx);
		assert_int_equal(idx.nr, 0);
		assert_null(stream_find(&idx, "x"));
		stream_index_free(&idx);
		sbuf_free(&b);
	}
	refused(NULL, 0, "magic");
}

/* Every single-bit flip and every byte inverted, at every position. */
static void stream_every_flip_refused(void **state)
{
	struct sbuf b = SBUF_INIT;
	uint8_t *p;

	(void)state;
	sample_stream(&b);
	p = malloc(b.len);
	assert_non_null(p);
	for (size_t i = 0; i < b.len; i++) {
		for (int bit = 0; bit <= 8; bit++) {
			memcpy(p, b.data, b.len);
			p[i] ^= bit == 8 ? 0xff : (uint8_t)(1u << bit);
			refused(p, b.len, NULL);
		}
	}
	free(p);
	sbuf_free(&b);
}

static void stream_every_truncation_refused(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	char err[ERRLEN];

	(void)state;
	sample_stream(&b);
	for (size_t n = 0; n < b.len; n++)
		refused(b.data, n, NULL);
	/* The messages say where and how much. */
	__parse(b.data, 20, &idx, err);
	assert_string_equal(err, "truncated stream: header needs 32 bytes, only 20");
	__parse(b.data, 32, &idx, err);
	assert_string_equal(err, "truncated stream: no end marker after 0 sections (offset 32)");
	__parse(b.data, 40, &idx, err);
	assert_string_equal(err, "truncated stream: section 'dev/' at offset 32 needs at least 21 bytes, only 8 left");
	__parse(b.data, 100, &idx, err);
	assert_non_null(strstr(err, "truncated stream: section 'dev/0' needs "));
	assert_non_null(strstr(err, " bytes at offset 32, only 68 left"));
	__parse(b.data, b.len - 1, &idx, err);
	assert_non_null(strstr(err, "end marker at offset"));
	assert_non_null(strstr(err, "needs 12 bytes, only 11 left"));
	sbuf_free(&b);
}

static void stream_section_refusals(void **state)
{
	static const uint8_t pl[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	char name65[65];
	struct sbuf b = SBUF_INIT;
	size_t sec;

	(void)state;
	memset(name65, 'n', sizeof(name65));

#define CASE(want, ...)                                                                        \
	do {                                                                                   \
		raw_header(&b, 1, 32, 0, 0);                                                   \
		__VA_ARGS__;                                                                   \
		refused(b.data, b.len, want);                                                  \
		sbuf_free(&b);                                                                 \
	} while (0)

	CASE("section at offset 32: name length 0, expected 1..64",
	     raw_section(&b, 0, "", 0, 1, pl, 8); raw_end(&b, 1));
	CASE("section at offset 32: name length 65, expected 1..64",
	     raw_section(&b, 0, name65, 65, 1, pl, 8); raw_end(&b, 1));
	CASE("section 'a?b' at offset 32: name has bytes outside 0x21..0x7e",
	     raw_section(&b, 0, "a\x01" "b", 3, 1, pl, 8); raw_end(&b, 1));
	CASE("section 'a?b' at offset 32: name has bytes outside",
	     raw_section(&b, 0, "a b", 3, 1, pl, 8); raw_end(&b, 1));
	CASE("section 'x' at offset 32: unknown flags 0x80",
	     raw_section(&b, 0x80, "x", 1, 1, pl, 8); raw_end(&b, 1));
	CASE("offset 32: unknown record kind 0x02",
	     raw_section(&b, 0, "x", 1, 1, pl, 8); b.data[32] = 2; raw_end(&b, 1));
	CASE("section 'x' appears twice (offsets 32 and 57)",
	     raw_section(&b, 0, "x", 1, 1, pl, 8); raw_section(&b, 0, "x", 1, 1, pl, 8);
	     raw_end(&b, 2));
	CASE("end marker at offset 57: says 2 sections, the stream has 1",
	     raw_section(&b, 0, "x", 1, 1, pl, 8); raw_end(&b, 2));
	CASE("end marker at offset 57: says 0 sections, the stream has 1",
	     raw_section(&b, 0, "x", 1, 1, pl, 8); raw_end(&b, 0));
	CASE("1 trailing bytes after the end marker at offset 57",
	     raw_section(&b, 0, "x", 1, 1, pl, 8); raw_end(&b, 1); sbuf_put_u8(&b, 0));
	CASE("end marker at offset 32: reserved bytes must be zero",
	     sbuf_put_u8(&b, 0xff); sbuf_put_u8(&b, 1); sbuf_put_u16(&b, 0); sbuf_put_u32(&b, 0);
	     sbuf_put_u32(&b, crc32c(0, b.data, b.len)));
	CASE("end marker at offset 32: stream checksum mismatch",
	     sbuf_put_u8(&b, 0xff); sbuf_put_u8(&b, 0); sbuf_put_u16(&b, 0); sbuf_put_u32(&b, 0);
	     sbuf_put_u32(&b, 1234));
	/* A payload over the limit, announced (the bytes needn't be there). */
	CASE("section 'x' at offset 32: payload length 67108865 exceeds the limit",
	     sbuf_put_u8(&b, 1); sbuf_put_u8(&b, 0); sbuf_put_u16(&b, 1); sbuf_put_u8(&b, 'x');
	     sbuf_put_u32(&b, 1); sbuf_put_u32(&b, STREAM_PAYLOAD_MAX + 1); sbuf_put_u32(&b, 0));
	/* Lengths that lie, by one either way and by a lot; the section CRC is
	 * then read from the wrong place or past the end. */
	CASE("section 'x' at offset 32: checksum mismatch",
	     sec = b.len; raw_section(&b, 0, "x", 1, 1, pl, 8);
	     sbuf_patch_u32(&b, sec + 9, 9); raw_end(&b, 1));
	CASE("section 'x' at offset 32: checksum mismatch",
	     sec = b.len; raw_section(&b, 0, "x", 1, 1, pl, 8);
	     sbuf_patch_u32(&b, sec + 9, 7); raw_end(&b, 1));
	CASE("truncated stream: section 'x' needs 1017 bytes at offset 32, only 37 left",
	     sec = b.len; raw_section(&b, 0, "x", 1, 1, pl, 8);
	     sbuf_patch_u32(&b, sec + 9, 1000); raw_end(&b, 1));
	/* Claimed and real length agree, checksums right, but the payload
	 * now swallows the end marker: no end marker follows. */
	CASE("truncated stream: no end marker after 1 sections",
	     sec = b.len; raw_section(&b, 0, "x", 1, 1, pl, 8); b.len -= 4;
	     sbuf_put(&b, "\xff\0\0\0\1\0\0\0", 8);
	     sbuf_patch_u32(&b, sec + 9, 16);
	     sbuf_put_u32(&b, crc32c(0, b.data + sec, b.len - sec)));
#undef CASE
}

static bool known_dev(const char *name, void *opaque)
{
	(void)opaque;
	return !strncmp(name, "dev/", 4);
}

static bool known_none(const char *name, void *opaque)
{
	(*(int *)opaque)++;
	(void)name;
	return false;
}

static void stream_known_sections(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	char err[ERRLEN] = "";
	int calls = 0;

	(void)state;
	/* "note" is optional: unknown is fine. */
	sample_stream(&b);
	parse(b.data, b.len, &idx);
	assert_int_equal(stream_check_known(&idx, known_dev, NULL, err, ERRLEN), 0);
	/* "dev/0" is required. */
	assert_int_equal(stream_check_known(&idx, known_none, &calls, err, ERRLEN), -ENOTSUP);
	assert_string_equal(err, "section 'dev/0' (version 2) at offset 32 is required but unknown to this cprvm");
	assert_int_equal(calls, 1);
	stream_index_free(&idx);
	sbuf_free(&b);
}

/* Many sections: the index grows, names are found by binary search. */
static void stream_many_sections(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	char name[16];

	(void)state;
	stream_writer_begin(&b, 0, 0, 0);
	for (int i = 999; i >= 0; i--) {
		snprintf(name, sizeof(name), "s/%d", i);
		stream_section_end(&b, stream_section_begin(&b, name, (uint32_t)i, 0));
	}
	assert_int_equal(stream_writer_end(&b), 0);
	parse(b.data, b.len, &idx);
	assert_int_equal(idx.nr, 1000);
	for (int i = 0; i < 1000; i++) {
		const struct stream_section *s;

		snprintf(name, sizeof(name), "s/%d", i);
		s = stream_find(&idx, name);
		assert_non_null(s);
		assert_int_equal(s->version, i);
		assert_ptr_equal(s, &idx.sections[999 - i]);
	}
	stream_index_free(&idx);
	sbuf_free(&b);
}

/* A stream as a cprvm of format 1 writes it, kept as bytes: a newer cprvm
 * must load it forever (DESIGN.md: tests keep golden streams). Writer
 * 0.1.0, one required section "dev/0" v2 of t_desc with u8 0x42, u16
 * 0x1234, inner.c 7 and one element {index 0x10, data 0x20}, one optional
 * empty section "x". */
static const uint8_t golden_v1[] = {
	0x43, 0x50, 0x52, 0x56, 0x4d, 0x53, 0x54, 0x31, 0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x5a, 0xd1,
	0xf4, 0x5f, 0x01, 0x01, 0x05, 0x00, 0x64, 0x65, 0x76, 0x2f, 0x30, 0x02, 0x00, 0x00, 0x00,
	0x53, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x42, 0x02, 0x00,
	0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x34, 0x12, 0x07, 0x00, 0x06, 0x00, 0x0c, 0x00, 0x00,
	0x00, 0x03, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x08, 0x00,
	0x07, 0x00, 0x24, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01,
	0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00,
	0x08, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x29, 0xed, 0x70,
	0x4b, 0x01, 0x00, 0x01, 0x00, 0x78, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1c,
	0x68, 0x69, 0xa4, 0xff, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x4f, 0xc0, 0x84, 0xd4,
};

static void golden_stream_loads(void **state)
{
	struct stream_index idx;
	struct t_dev out, want;
	char err[ERRLEN];
	uint8_t *p = dup_exact(golden_v1, sizeof(golden_v1));

	(void)state;
	parse(p, sizeof(golden_v1), &idx);
	assert_int_equal(idx.nr, 2);
	assert_int_equal(idx.writer_minor, 1);
	t_defaults(&out);
	assert_int_equal(stream_get_state(&idx, "dev/0", &t_desc, &out, err, ERRLEN), 0);
	t_defaults(&want);
	want.u8 = 0x42;
	want.u16 = 0x1234;
	want.inner.c = 7;
	want.nr = 1;
	want.elems[0].index = 0x10;
	want.elems[0].data = 0x20;
	assert_memory_equal(&out, &want, sizeof(out));
	assert_non_null(stream_find(&idx, "x"));
	stream_index_free(&idx);
	free(p);
}

/* The writer of today still writes the golden bytes from the same state
 * (only new optional fields may change that; then keep both). */
static void golden_stream_writes(void **state)
{
	static const struct state_field elem_fields[] = {
		STATE_FIELD_U32(1, struct t_elem, index, .flags = STATE_F_REQUIRED),
		STATE_FIELD_U64(3, struct t_elem, data),
	};
	static const struct state_desc elem_desc = STATE_DESC("t_elem", 1, 1, elem_fields);
	static const struct state_field inner_fields[] = { STATE_FIELD_U32(3, struct t_inner, c) };
	static const struct state_desc inner_desc = STATE_DESC("t_inner", 1, 1, inner_fields);
	static const struct state_field fields[] = {
		STATE_FIELD_U8(1, struct t_dev, u8, .flags = STATE_F_REQUIRED),
		STATE_FIELD_U16(2, struct t_dev, u16),
		STATE_FIELD_STRUCT(7, struct t_dev, inner, inner_desc),
		STATE_FIELD_ARRAY(8, struct t_dev, elems, nr, elem_desc),
	};
	static const struct state_desc desc = STATE_DESC("t_dev", 2, 1, fields);
	struct sbuf b = SBUF_INIT;
	struct t_dev in;

	(void)state;
	memset(&in, 0, sizeof(in));
	in.u8 = 0x42;
	in.u16 = 0x1234;
	in.inner.c = 7;
	in.nr = 1;
	in.elems[0].index = 0x10;
	in.elems[0].data = 0x20;
	assert_int_equal(stream_writer_begin(&b, 0, 1, 0), 0);
	assert_int_equal(stream_put_state(&b, "dev/0", &desc, &in, STREAM_SEC_REQUIRED), 0);
	stream_section_end(&b, stream_section_begin(&b, "x", 1, 0));
	assert_int_equal(stream_writer_end(&b), 0);
	if (b.len != sizeof(golden_v1) || memcmp(b.data, golden_v1, b.len)) {
		for (size_t i = 0; i < b.len; i++)
			fprintf(stderr, "0x%02x,%s", b.data[i], i % 15 == 14 ? "\n" : " ");
		fprintf(stderr, "\n");
		fail_msg("writer output differs from golden_v1 (printed above)");
	}
	sbuf_free(&b);
}

/* ---- describe ------------------------------------------------------------- */

static const struct state_desc *desc_for(const char *section, void *opaque)
{
	(void)opaque;
	return !strncmp(section, "dev/", 4) ? &t_desc : NULL;
}

static void describe_json(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct stream_index idx;
	json_t *j, *secs, *fields, *f;
	char *s;

	(void)state;
	sample_stream(&b);
	parse(b.data, b.len, &idx);

	j = stream_describe(&idx, desc_for, NULL);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "format_version")), 1);
	secs = json_object_get(j, "sections");
	assert_int_equal(json_array_size(secs), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(secs, 0), "name")),
			    "dev/0");
	assert_true(json_is_true(json_object_get(json_array_get(secs, 0), "required")));
	assert_true(json_is_false(json_object_get(json_array_get(secs, 1), "required")));
	fields = json_object_get(json_array_get(secs, 0), "fields");
	f = json_array_get(fields, 0);
	assert_string_equal(json_string_value(json_object_get(f, "name")), "u8");
	assert_int_equal(json_integer_value(json_object_get(f, "value")), 0xa5);
	assert_true(json_is_true(json_object_get(f, "required")));
	f = json_array_get(fields, 3);
	assert_string_equal(json_string_value(json_object_get(f, "value")), "0x0123456789abcdef");
	f = json_array_get(fields, 5);
	assert_string_equal(json_string_value(json_object_get(f, "name")), "vbuf");
	assert_string_equal(json_string_value(json_object_get(f, "hex")), "68656c");
	f = json_array_get(fields, 7);
	assert_int_equal(json_integer_value(json_object_get(f, "count")), 2);
	f = json_array_get(json_array_get(json_object_get(f, "elements"), 1), 0);
	assert_string_equal(json_string_value(json_object_get(f, "name")), "index");
	assert_int_equal(json_integer_value(json_object_get(f, "value")), 0xc0000081);
	/* The optional section is not a field list: described as far as it goes. */
	fields = json_object_get(json_array_get(secs, 1), "fields");
	assert_non_null(json_object_get(json_array_get(fields, 0), "error"));
	s = json_dumps(j, JSON_COMPACT);
	assert_non_null(s);
	free(s);
	json_decref(j);

	/* Without tables: ids and types, no names. */
	j = stream_describe(&idx, NULL, NULL);
	f = json_array_get(json_object_get(json_array_get(json_object_get(j, "sections"), 0),
					   "fields"), 6);
	assert_null(json_object_get(f, "name"));
	assert_int_equal(json_integer_value(json_object_get(f, "id")), 7);
	assert_string_equal(json_string_value(json_object_get(f, "type")), "struct");
	assert_int_equal(json_array_size(json_object_get(f, "fields")), 3);
	json_decref(j);
	stream_index_free(&idx);
	sbuf_free(&b);
}

/* What the registers part carries equals in's. */
static void assert_regs_part_equal(const struct vcpu_state *got, const struct vcpu_state *in)
{
	assert_memory_equal(&got->regs, &in->regs, sizeof(in->regs));
	assert_memory_equal(&got->sregs, &in->sregs, sizeof(in->sregs));
	assert_memory_equal(&got->events, &in->events, sizeof(in->events));
	assert_memory_equal(&got->xcrs, &in->xcrs, sizeof(in->xcrs));
	assert_memory_equal(&got->debugregs, &in->debugregs, sizeof(in->debugregs));
	assert_memory_equal(&got->mp_state, &in->mp_state, sizeof(in->mp_state));
}

/* A live update's early vCPU state (vcpu_early.c): each part round-trips,
 * and every truncation, extension and header change is refused. */
static void early_part_check(enum vcpu_early_part part, const struct vcpu_state *in, size_t want)
{
	static struct vcpu_state got;
	static uint8_t buf[VCPU_EARLY_MAX + 16];
	enum vcpu_early_part gp = 0;
	uint32_t id = 0;
	size_t n;

	memset(&got, 0, sizeof(got));
	n = vcpu_early_encode(in, 3, part, buf, sizeof(buf));
	assert_int_equal(n, VCPU_EARLY_HDR + want);
	assert_int_equal(vcpu_early_decode(buf, n, &id, &gp, &got), 0);
	assert_int_equal(id, 3);
	assert_int_equal(gp, part);
	switch (part) {
	case VCPU_EARLY_XSAVE:
		assert_int_equal(got.xsave_len, in->xsave_len);
		assert_memory_equal(got.xsave, in->xsave, in->xsave_len);
		break;
	case VCPU_EARLY_LAPIC:
		assert_memory_equal(&got.lapic, &in->lapic, sizeof(in->lapic));
		break;
	case VCPU_EARLY_MSRS:
	case VCPU_EARLY_MSRS_AHEAD:
		assert_int_equal(got.nr_msrs, in->nr_msrs);
		assert_memory_equal(got.msrs, in->msrs, in->nr_msrs * sizeof(in->msrs[0]));
		assert_int_equal(got.have_tsc_offset, 1);
		assert_true(got.tsc_offset == in->tsc_offset);
		break;
	case VCPU_EARLY_REGS:
		assert_regs_part_equal(&got, in);
		/* Nothing else is touched. */
		assert_int_equal(got.xsave_len, 0);
		assert_int_equal(got.nr_msrs, 0);
		break;
	}
	/* Too small a buffer: nothing written. */
	assert_int_equal(vcpu_early_encode(in, 3, part, buf, n - 1), 0);
	/* Every truncation, one byte more, and any change in the header but
	 * the vCPU id (bytes 6-7) and, for the MSRs, the TSC offset (24-31). */
	for (size_t len = 0; len < n; len++)
		assert_int_equal(vcpu_early_decode(buf, len, &id, &gp, &got), -EINVAL);
	assert_int_equal(vcpu_early_decode(buf, n + 1, &id, &gp, &got), -EINVAL);
	for (size_t off = 0; off < VCPU_EARLY_HDR; off++) {
		if ((off >= 6 && off < 8) ||
		    ((part == VCPU_EARLY_MSRS || part == VCPU_EARLY_MSRS_AHEAD) && off >= 24))
			continue;
		buf[off] ^= 0x40;
		assert_int_equal(vcpu_early_decode(buf, n, &id, &gp, &got), -EINVAL);
		buf[off] ^= 0x40;
	}
	assert_int_equal(vcpu_early_decode(buf, n, &id, &gp, &got), 0);
}

/* All four parts back to back (section "vcpu-early/N"): the whole state
 * round-trips, as the same bytes as the four messages; anything but
 * exactly those four, in order, for that vCPU, is refused. */
static void early_all_check(const struct vcpu_state *in)
{
	static struct vcpu_state got, tmp;
	static uint8_t all[VCPU_EARLY_ALL_MAX + 16], msgs[VCPU_EARLY_ALL_MAX], swapped[VCPU_EARLY_ALL_MAX];
	size_t n, off = 0, part_off[VCPU_EARLY_PARTS + 1];

	n = vcpu_early_encode_all(in, 5, all, sizeof(all));
	assert_true(n > 0);
	for (int p = VCPU_EARLY_XSAVE; p <= VCPU_EARLY_REGS; p++) {
		part_off[p - 1] = off;
		off += vcpu_early_encode(in, 5, (enum vcpu_early_part)p, msgs + off,
					 sizeof(msgs) - off);
	}
	part_off[VCPU_EARLY_PARTS] = off;
	assert_int_equal(n, off);
	assert_memory_equal(all, msgs, n);

	memset(&got, 0xa5, sizeof(got));
	assert_int_equal(vcpu_early_decode_all(all, n, 5, &got), 0);
	assert_int_equal(got.xsave_len, in->xsave_len);
	assert_memory_equal(got.xsave, in->xsave, in->xsave_len);
	assert_memory_equal(&got.lapic, &in->lapic, sizeof(in->lapic));
	assert_int_equal(got.nr_msrs, in->nr_msrs);
	assert_memory_equal(got.msrs, in->msrs, in->nr_msrs * sizeof(in->msrs[0]));
	assert_int_equal(got.have_tsc_offset, in->have_tsc_offset);
	assert_true(got.tsc_offset == in->tsc_offset);
	assert_int_equal(got.have_sregs2, 0);
	assert_regs_part_equal(&got, in);

	/* Another vCPU's; every truncation; a byte more; a part missing. */
	assert_int_equal(vcpu_early_decode_all(all, n, 4, &tmp), -EINVAL);
	for (size_t len = 0; len < n; len++)
		assert_int_equal(vcpu_early_decode_all(all, len, 5, &tmp), -EINVAL);
	assert_int_equal(vcpu_early_decode_all(all, n + 1, 5, &tmp), -EINVAL);
	assert_int_equal(vcpu_early_decode_all(all + part_off[1], n - part_off[1], 5, &tmp),
			 -EINVAL);
	/* The MSRs read ahead in place of the MSRs part: not one of the four. */
	memcpy(swapped, all, n);
	swapped[part_off[2] + 8] = VCPU_EARLY_MSRS_AHEAD;
	assert_int_equal(vcpu_early_decode_all(swapped, n, 5, &tmp), -EINVAL);
	/* Two parts swapped (LAPIC before XSAVE). */
	off = 0;
	memcpy(swapped, all + part_off[1], part_off[2] - part_off[1]);
	off += part_off[2] - part_off[1];
	memcpy(swapped + off, all, part_off[1]);
	off += part_off[1];
	memcpy(swapped + off, all + part_off[2], n - part_off[2]);
	assert_int_equal(vcpu_early_decode_all(swapped, n, 5, &tmp), -EINVAL);
	/* A part's length that runs past the end. */
	memcpy(swapped, all, n);
	swapped[part_off[3] + 12] ^= 0x10;
	assert_int_equal(vcpu_early_decode_all(swapped, n, 5, &tmp), -EINVAL);
	/* Too small a buffer: nothing. */
	assert_int_equal(vcpu_early_encode_all(in, 5, all, n - 1), 0);
	/* PAE paging: the registers part cannot be sent, nor can the whole. */
	memcpy(&tmp, in, sizeof(tmp));
	tmp.have_sregs2 = 1;
	assert_int_equal(vcpu_early_encode_all(&tmp, 5, all, sizeof(all)), 0);
}

static void early_state_round_trip_and_refusals(void **st)
{
	static struct vcpu_state in;
	static uint8_t buf[VCPU_EARLY_MAX];

	(void)st;
	in.xsave_len = 2696;
	for (uint32_t i = 0; i < in.xsave_len; i++)
		in.xsave[i] = (uint8_t)(i * 13 + 1);
	for (size_t i = 0; i < sizeof(in.lapic.regs); i++)
		in.lapic.regs[i] = (char)i;
	in.nr_msrs = 40;
	for (uint32_t i = 0; i < in.nr_msrs; i++) {
		in.msrs[i].index = 0x10 + i;
		in.msrs[i].data = 0x0123456789abcdefull ^ i;
	}
	in.have_tsc_offset = 1;
	in.tsc_offset = (uint64_t)-987654321ll;
	in.mp_state.mp_state = KVM_MP_STATE_HALTED;
	in.regs.rip = 0xffffffff81000000ull;
	in.regs.rsp = 0x7ffc0000;
	in.sregs.cr3 = 0x10c000;
	in.sregs.apic_base = 0xfee00900;
	in.events.exception.nr = 14;
	in.xcrs.nr_xcrs = 1;
	in.xcrs.xcrs[0].value = 7;
	in.debugregs.dr7 = 0x400;
	early_part_check(VCPU_EARLY_XSAVE, &in, 2696);
	early_part_check(VCPU_EARLY_LAPIC, &in, sizeof(in.lapic));
	early_part_check(VCPU_EARLY_MSRS, &in, 40 * sizeof(in.msrs[0]));
	/* The MSRs read ahead of the stop: the MSRs part's layout. */
	early_part_check(VCPU_EARLY_MSRS_AHEAD, &in, 40 * sizeof(in.msrs[0]));
	early_part_check(VCPU_EARLY_REGS, &in,
			 sizeof(in.regs) + sizeof(in.sregs) + sizeof(in.events) + sizeof(in.xcrs) +
				 sizeof(in.debugregs) + sizeof(in.mp_state) + 4);
	/* What cannot be sent: PAE paging (its PDPTRs are not in the part),
	 * an unknown part, a vCPU id over 16 bits. */
	in.have_sregs2 = 1;
	assert_int_equal(vcpu_early_encode(&in, 3, VCPU_EARLY_REGS, buf, sizeof(buf)), 0);
	in.have_sregs2 = 0;
	assert_int_equal(vcpu_early_encode(&in, 3, (enum vcpu_early_part)6, buf, sizeof(buf)), 0);
	assert_int_equal(vcpu_early_encode(&in, 70000, VCPU_EARLY_LAPIC, buf, sizeof(buf)), 0);
	early_all_check(&in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(early_state_round_trip_and_refusals),
		cmocka_unit_test(crc32c_vectors),
		cmocka_unit_test(sbuf_basics),
		cmocka_unit_test(writer_layout),
		cmocka_unit_test(writer_misuse),
		cmocka_unit_test(writer_payload_limit),
		cmocka_unit_test(round_trip_all_types),
		cmocka_unit_test(round_trip_edges),
		cmocka_unit_test(needed_subsection),
		cmocka_unit_test(older_writer_newer_reader),
		cmocka_unit_test(newer_writer_older_reader),
		cmocka_unit_test(section_versions),
		cmocka_unit_test(payload_refusals),
		cmocka_unit_test(bad_tables),
		cmocka_unit_test(stream_header_refusals),
		cmocka_unit_test(stream_every_flip_refused),
		cmocka_unit_test(stream_every_truncation_refused),
		cmocka_unit_test(stream_section_refusals),
		cmocka_unit_test(stream_known_sections),
		cmocka_unit_test(stream_many_sections),
		cmocka_unit_test(golden_stream_loads),
		cmocka_unit_test(golden_stream_writes),
		cmocka_unit_test(describe_json),
	};

	return cmocka_run_group_tests_name("test_state", tests, NULL, NULL);
}
