/* fuzz_stream.c — libFuzzer target for the state stream reader
 * (state/stream.h) and the table interpreter's loader (state/state.h).
 *
 * Beyond "no crash" (ASan/UBSan), it checks the layer's promises on every
 * input:
 *   - a refusal comes with a message;
 *   - an accepted stream is canonical: writing its sections back with the
 *     writer gives exactly the input bytes;
 *   - for each section, state_load with a small table either refuses with a
 *     message and leaves the object exactly as it was, or accepts; then
 *     saving the object and loading that into a fresh copy gives the same
 *     object (nothing the loader accepts is lost or invented);
 *   - state_describe and stream_describe never fail on an accepted stream.
 *
 * Run with --write-seeds=DIR to write a few valid streams into DIR and exit;
 * fuzz/fuzz.mk does this. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_seeds.h"
#include "lib/crc32c.h"
#include "state/state.h"
#include "state/stream.h"

struct fz_elem {
	uint32_t index;
	uint64_t data;
};

struct fz_inner {
	uint16_t a;
	uint8_t b;
};

struct fz_dev {
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64;
	uint8_t fixed[6];
	uint32_t vlen;
	uint8_t vbuf[24];
	struct fz_inner inner;
	uint32_t nr;
	struct fz_elem elems[4];
};

static const struct state_field fz_elem_fields[] = {
	STATE_FIELD_U32(1, struct fz_elem, index, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U64(2, struct fz_elem, data),
};
static const struct state_desc fz_elem_desc = STATE_DESC("elem", 1, 1, fz_elem_fields);

static const struct state_field fz_inner_fields[] = {
	STATE_FIELD_U16(1, struct fz_inner, a),
	STATE_FIELD_U8(2, struct fz_inner, b),
};
static const struct state_desc fz_inner_desc = STATE_DESC("inner", 1, 1, fz_inner_fields);

static const struct state_field fz_fields[] = {
	STATE_FIELD_U8(1, struct fz_dev, u8, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U16(2, struct fz_dev, u16),
	STATE_FIELD_U32(3, struct fz_dev, u32),
	STATE_FIELD_U64(4, struct fz_dev, u64),
	STATE_FIELD_BYTES(5, struct fz_dev, fixed),
	STATE_FIELD_VBYTES(6, struct fz_dev, vbuf, vlen),
	STATE_FIELD_STRUCT(7, struct fz_dev, inner, fz_inner_desc),
	STATE_FIELD_ARRAY(9, struct fz_dev, elems, nr, fz_elem_desc),
};
static const struct state_desc fz_desc = STATE_DESC("dev", 3, 2, fz_fields);

static void fuzz_die(const char *why, const char *err)
{
	fprintf(stderr, "fuzz_stream: %s (%s)\n", why, err ? err : "");
	abort();
}

static const struct state_desc *fz_desc_for(const char *section, void *opaque)
{
	(void)opaque;
	return section[0] == 'd' ? &fz_desc : NULL;
}

/* Defaults, with the padding zeroed so objects compare with memcmp. */
static void fz_defaults(struct fz_dev *d)
{
	memset(d, 0, sizeof(*d));
	d->u16 = 0x1616;
	d->u64 = 0x6464;
	d->inner.b = 0xbb;
}

static void check_section(const struct stream_section *s)
{
	struct fz_dev *obj = malloc(sizeof(*obj)), before, again;
	struct sbuf b = SBUF_INIT;
	char err[256] = "";
	json_t *j;
	int ret;

	if (!obj)
		fuzz_die("out of memory", NULL);
	fz_defaults(obj);
	memcpy(&before, obj, sizeof(before));
	ret = state_load(&fz_desc, s->version, s->payload, s->len, obj, err, sizeof(err));
	if (ret > 0)
		fuzz_die("positive return", NULL);
	if (ret < 0) {
		if (!err[0])
			fuzz_die("load refused without a message", s->name);
		if (memcmp(obj, &before, sizeof(before)))
			fuzz_die("load refused but changed the object", err);
	} else {
		/* Save what was loaded and load it again: the same object. */
		if (state_save(&b, &fz_desc, obj))
			fuzz_die("cannot save a loaded object", s->name);
		fz_defaults(&again);
		if (state_load(&fz_desc, fz_desc.version, b.data, b.len, &again, err, sizeof(err)))
			fuzz_die("cannot load what was saved", err);
		if (memcmp(obj, &again, sizeof(again)))
			fuzz_die("save/load changed the object", s->name);
		sbuf_free(&b);
	}
	j = state_describe(ret ? NULL : &fz_desc, s->payload, s->len);
	if (!j)
		fuzz_die("state_describe failed", s->name);
	json_decref(j);
	free(obj);
}

static void check_stream(const uint8_t *data, size_t size)
{
	struct stream_index idx;
	struct sbuf b = SBUF_INIT;
	char err[512] = "";
	json_t *j;
	int ret = stream_parse(data, size, &idx, err, sizeof(err));

	if (ret > 0)
		fuzz_die("positive return", NULL);
	if (ret < 0) {
		if (!err[0])
			fuzz_die("refused without a message", NULL);
		if (idx.nr || idx.sections)
			fuzz_die("refused but left an index", err);
		return;
	}

	/* Accepted: the writer reproduces it byte for byte. */
	stream_writer_begin(&b, idx.writer_major, idx.writer_minor, idx.writer_micro);
	for (uint32_t i = 0; i < idx.nr; i++) {
		const struct stream_section *s = &idx.sections[i];
		size_t tok = stream_section_begin(&b, s->name, s->version, s->flags);

		sbuf_put(&b, s->payload, s->len);
		stream_section_end(&b, tok);
		if (stream_find(&idx, s->name) != s)
			fuzz_die("stream_find does not find", s->name);
	}
	if (stream_writer_end(&b) || b.len != size || memcmp(b.data, data, size))
		fuzz_die("accepted stream is not what the writer writes", NULL);
	sbuf_free(&b);

	for (uint32_t i = 0; i < idx.nr; i++)
		check_section(&idx.sections[i]);
	j = stream_describe(&idx, fz_desc_for, NULL);
	if (!j)
		fuzz_die("stream_describe failed", NULL);
	json_decref(j);
	stream_index_free(&idx);
}

/* Random bytes almost never carry right CRCs, and then the fuzzer never gets
 * past them. So each input is also tried with every CRC recomputed where
 * the framing, read loosely, says one is; that copy reaches the length,
 * name and field checks. */
static void fix_crcs(uint8_t *p, size_t size)
{
	size_t off = STREAM_HEADER_SIZE;

	if (size < STREAM_HEADER_SIZE)
		return;
	sbuf_set_le32(p + 28, crc32c(0, p, 28));
	while (size - off >= 4 && p[off] == STREAM_KIND_SECTION) {
		size_t n = sbuf_get_le16(p + off + 2), need;

		if (size - off < STREAM_SECTION_OVERHEAD + n)
			return;
		need = STREAM_SECTION_OVERHEAD + n + sbuf_get_le32(p + off + 8 + n);
		if (size - off < need)
			return;
		sbuf_set_le32(p + off + need - 4, crc32c(0, p + off, need - 4));
		off += need;
	}
	if (size - off >= STREAM_END_SIZE && p[off] == STREAM_KIND_END)
		sbuf_set_le32(p + off + 8, crc32c(0, p, off + 8));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	check_stream(data, size);
	copy = malloc(size ? size : 1);
	if (!copy)
		fuzz_die("out of memory", NULL);
	memcpy(copy, data, size);
	fix_crcs(copy, size);
	if (memcmp(copy, data, size))
		check_stream(copy, size);
	free(copy);
	return 0;
}

/* ---- seeds ---------------------------------------------------------------- */

static void seed_file(const char *dir, const char *name, const struct sbuf *b)
{
	char path[4096], err[512];
	struct stream_index idx;
	FILE *f;

	/* A seed that does not parse would only teach the fuzzer refusals. */
	if (b->err || stream_parse(b->data, b->len, &idx, err, sizeof(err)))
		fuzz_die("seed does not parse", err);
	stream_index_free(&idx);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f))
		fuzz_die("cannot write seed", path);
}

static void seed_write(const char *dir)
{
	struct fz_dev d;
	struct sbuf b = SBUF_INIT;
	size_t tok;

	fz_defaults(&d);
	d.u8 = 1;
	d.u32 = 0xabcdef01;
	memcpy(d.fixed, "fixed!", 6);
	d.vlen = 5;
	memcpy(d.vbuf, "vbuf.", 5);
	d.inner.a = 0x1234;
	d.nr = 2;
	d.elems[0] = (struct fz_elem){ 0x10, 0x1000 };
	d.elems[1] = (struct fz_elem){ 0x11, 0x1100 };

	/* Header and end only. */
	stream_writer_begin(&b, 0, 1, 0);
	stream_writer_end(&b);
	seed_file(dir, "empty", &b);
	sbuf_free(&b);

	/* Two device sections, an unknown optional one, an older version. */
	stream_writer_begin(&b, 0, 1, 0);
	stream_put_state(&b, "dev/0", &fz_desc, &d, STREAM_SEC_REQUIRED);
	d.nr = 0;
	d.vlen = 0;
	stream_put_state(&b, "dev/1", &fz_desc, &d, 0);
	tok = stream_section_begin(&b, "other", 7, 0);
	sbuf_put(&b, "opaque bytes", 12);
	stream_section_end(&b, tok);
	tok = stream_section_begin(&b, "dev/old", 2, STREAM_SEC_REQUIRED);
	state_save(&b, &fz_inner_desc, &d.inner);
	stream_section_end(&b, tok);
	stream_writer_end(&b);
	seed_file(dir, "devices", &b);
	sbuf_free(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_seed_option(*argc, *argv, seed_write);
	return 0;
}
