/* state.c — the table interpreter (state/state.h): save, load, check and
 * describe field lists, and the glue between tables and stream sections.
 *
 * Invariants: the loader reads only inside [p, p + len) and writes only
 * inside the members a (checked) table names, within their sizes; it never
 * trusts a length before comparing it with what is left. A table is checked
 * once per call (state_desc_check) and trusted after that; the input never
 * is. Objects are accessed with memcpy, so members need no alignment. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lib/log.h"
#include "state/state.h"

static enum state_wire_type state_wire_type(enum state_type t)
{
	switch (t) {
	case STATE_U8:
		return STATE_WIRE_U8;
	case STATE_U16:
		return STATE_WIRE_U16;
	case STATE_U32:
		return STATE_WIRE_U32;
	case STATE_U64:
		return STATE_WIRE_U64;
	case STATE_BYTES:
	case STATE_VBYTES:
		return STATE_WIRE_BYTES;
	case STATE_STRUCT:
		return STATE_WIRE_STRUCT;
	case STATE_ARRAY:
		return STATE_WIRE_ARRAY;
	}
	return 0;
}

static const char *state_wire_name(unsigned wt)
{
	static const char *const names[] = {
		[STATE_WIRE_U8] = "u8",		[STATE_WIRE_U16] = "u16",
		[STATE_WIRE_U32] = "u32",	[STATE_WIRE_U64] = "u64",
		[STATE_WIRE_BYTES] = "bytes",	[STATE_WIRE_STRUCT] = "struct",
		[STATE_WIRE_ARRAY] = "array",
	};

	return wt < sizeof(names) / sizeof(names[0]) && names[wt] ? names[wt] : NULL;
}

/* A wire type for a message: its name, or "type code N". */
static const char *state_wire_fmt(unsigned wt, char *buf, size_t size)
{
	const char *n = state_wire_name(wt);

	if (n)
		return n;
	snprintf(buf, size, "type code %u", wt);
	return buf;
}

/* ---- table check ---------------------------------------------------------- */

static int desc_check(const struct state_desc *d, int depth, char *err, size_t errlen)
{
	static const size_t scalar_size[] = { [STATE_U8] = 1, [STATE_U16] = 2, [STATE_U32] = 4,
					      [STATE_U64] = 8 };
	unsigned prev = 0;

	if (!d || !d->name)
		return set_err(err, errlen, -EINVAL, "state table without a name");
	if (depth >= STATE_MAX_DEPTH)
		return set_err(err, errlen, -EINVAL, "table '%s': nested deeper than %d",
				  d->name, STATE_MAX_DEPTH);
	if (d->min_version > d->version)
		return set_err(err, errlen, -EINVAL,
				  "table '%s': min_version %u above version %u", d->name,
				  d->min_version, d->version);
	if (d->nr_fields && !d->fields)
		return set_err(err, errlen, -EINVAL, "table '%s': no fields array", d->name);
	for (size_t i = 0; i < d->nr_fields; i++) {
		const struct state_field *f = &d->fields[i];
		const char *fname = f->name ? f->name : "?";
		int ret;

		if (!f->name || f->id <= prev)
			return set_err(err, errlen, -EINVAL,
					  "table '%s': field '%s' id %u not above the previous %u",
					  d->name, fname, f->id, prev);
		prev = f->id;
		if (f->flags & ~STATE_F_REQUIRED)
			return set_err(err, errlen, -EINVAL,
					  "table '%s': field '%s' has unknown flags 0x%x", d->name,
					  fname, f->flags);
		switch (f->type) {
		case STATE_U8:
		case STATE_U16:
		case STATE_U32:
		case STATE_U64:
			if (f->size != scalar_size[f->type])
				return set_err(err, errlen, -EINVAL,
						  "table '%s': field '%s' size %zu", d->name, fname,
						  f->size);
			break;
		case STATE_BYTES:
		case STATE_VBYTES:
			if (f->size > STREAM_PAYLOAD_MAX)
				return set_err(err, errlen, -EINVAL,
						  "table '%s': field '%s' size %zu over the limit",
						  d->name, fname, f->size);
			break;
		case STATE_STRUCT:
		case STATE_ARRAY:
			if (f->type == STATE_ARRAY &&
			    (!f->size || !f->max_count || f->size > STREAM_PAYLOAD_MAX / f->max_count))
				return set_err(err, errlen, -EINVAL,
						  "table '%s': array '%s' of %u x %zu bytes", d->name,
						  fname, f->max_count, f->size);
			ret = desc_check(f->sub, depth + 1, err, errlen);
			if (ret)
				return ret;
			break;
		default:
			return set_err(err, errlen, -EINVAL,
					  "table '%s': field '%s' has unknown type %d", d->name, fname,
					  (int)f->type);
		}
	}
	return 0;
}

int state_desc_check(const struct state_desc *d, char *err, size_t errlen)
{
	return desc_check(d, 0, err, errlen);
}

/* ---- save ----------------------------------------------------------------- */

static uint32_t obj_u32(const uint8_t *obj, size_t off)
{
	uint32_t v;

	memcpy(&v, obj + off, sizeof(v));
	return v;
}

static int save_list(struct sbuf *b, const struct state_desc *d, const uint8_t *obj)
{
	for (size_t i = 0; i < d->nr_fields; i++) {
		const struct state_field *f = &d->fields[i];
		const uint8_t *m = obj + f->offset;
		size_t lenpos, start;
		uint16_t v16;
		uint32_t v32, n;
		uint64_t v64;
		int ret;

		if (f->needed && !f->needed(obj))
			continue;
		sbuf_put_u16(b, f->id);
		sbuf_put_u8(b, (uint8_t)state_wire_type(f->type));
		sbuf_put_u8(b, (uint8_t)(f->flags & STATE_F_REQUIRED));
		lenpos = b->len;
		sbuf_put_u32(b, 0);
		start = b->len;
		switch (f->type) {
		case STATE_U8:
			sbuf_put_u8(b, *m);
			break;
		case STATE_U16:
			memcpy(&v16, m, 2);
			sbuf_put_u16(b, v16);
			break;
		case STATE_U32:
			memcpy(&v32, m, 4);
			sbuf_put_u32(b, v32);
			break;
		case STATE_U64:
			memcpy(&v64, m, 8);
			sbuf_put_u64(b, v64);
			break;
		case STATE_BYTES:
			sbuf_put(b, m, f->size);
			break;
		case STATE_VBYTES:
			n = obj_u32(obj, f->count_offset);
			if (n > f->size)
				return sbuf_set_err(b, -EINVAL);
			sbuf_put(b, m, n);
			break;
		case STATE_STRUCT:
			ret = save_list(b, f->sub, m);
			if (ret)
				return ret;
			break;
		case STATE_ARRAY:
			n = obj_u32(obj, f->count_offset);
			if (n > f->max_count)
				return sbuf_set_err(b, -EINVAL);
			sbuf_put_u32(b, n);
			for (uint32_t e = 0; e < n; e++) {
				size_t epos = b->len;

				sbuf_put_u32(b, 0);
				ret = save_list(b, f->sub, m + (size_t)e * f->size);
				if (ret)
					return ret;
				sbuf_patch_u32(b, epos, (uint32_t)(b->len - epos - 4));
			}
			break;
		}
		if (b->err)
			return b->err;
		if (b->len - start > STREAM_PAYLOAD_MAX)
			return sbuf_set_err(b, -EFBIG);
		sbuf_patch_u32(b, lenpos, (uint32_t)(b->len - start));
	}
	return b->err;
}

int state_save(struct sbuf *b, const struct state_desc *d, const void *obj)
{
	if (b->err)
		return b->err;
	if (state_desc_check(d, NULL, 0))
		return sbuf_set_err(b, -EINVAL);
	return save_list(b, d, obj);
}

/* ---- load ----------------------------------------------------------------- */

/* Where the loader is, for messages only: a chain of frames up to the root,
 * formatted when something goes wrong ("msrs[3].data"). */
struct load_frame {
	const struct load_frame *up;
	const char *name; /* field name, or NULL for an array element */
	uint32_t index;
};

struct load_ctx {
	const char *what; /* section (or table) name for messages */
	const uint8_t *base;
	bool apply;
	char *err;
	size_t errlen;
};

static size_t frame_fmt(const struct load_frame *fr, char *buf, size_t size)
{
	size_t n = 0;
	int r;

	if (!fr)
		return 0;
	n = frame_fmt(fr->up, buf, size);
	if (fr->name)
		r = snprintf(buf + n, size - n, "%s%s", n ? "." : "", fr->name);
	else
		r = snprintf(buf + n, size - n, "[%" PRIu32 "]", fr->index);
	if (r < 0)
		return n;
	return n + (size_t)r < size ? n + (size_t)r : size - 1;
}

static int load_fail(const struct load_ctx *c, const struct load_frame *fr, const uint8_t *at,
		     int ret, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int load_fail(const struct load_ctx *c, const struct load_frame *fr, const uint8_t *at,
		     int ret, const char *fmt, ...)
{
	char path[160] = "", msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	frame_fmt(fr, path, sizeof(path));
	if (path[0])
		return set_err(c->err, c->errlen, ret, "section '%s' field '%s' at offset %zu: %s",
				  c->what, path, (size_t)(at - c->base), msg);
	return set_err(c->err, c->errlen, ret, "section '%s' at offset %zu: %s", c->what,
			  (size_t)(at - c->base), msg);
}

static int load_list(const struct load_ctx *c, const struct load_frame *up,
		     const struct state_desc *d, const uint8_t *p, size_t len, uint8_t *obj);

static int load_field(const struct load_ctx *c, const struct load_frame *fr,
		      const struct state_field *f, unsigned wt, const uint8_t *p, uint32_t len,
		      uint8_t *obj)
{
	uint8_t *m = obj + f->offset;
	unsigned want = state_wire_type(f->type);
	uint32_t n, q;
	uint16_t v16;
	uint32_t v32;
	uint64_t v64;
	int ret;

	if (wt != want) {
		char tb[24];

		return load_fail(c, fr, p - 8, -EINVAL, "%s on the wire, expected %s",
				 state_wire_fmt(wt, tb, sizeof(tb)), state_wire_name(want));
	}
	switch (f->type) {
	case STATE_U8:
	case STATE_U16:
	case STATE_U32:
	case STATE_U64:
	case STATE_BYTES:
		if (len != f->size)
			return load_fail(c, fr, p - 8, -EINVAL, "length %" PRIu32 ", expected %zu",
					 len, f->size);
		if (!c->apply)
			return 0;
		switch (f->type) {
		case STATE_U8:
			*m = *p;
			break;
		case STATE_U16:
			v16 = sbuf_get_le16(p);
			memcpy(m, &v16, 2);
			break;
		case STATE_U32:
			v32 = sbuf_get_le32(p);
			memcpy(m, &v32, 4);
			break;
		case STATE_U64:
			v64 = sbuf_get_le64(p);
			memcpy(m, &v64, 8);
			break;
		default:
			memcpy(m, p, len);
			break;
		}
		return 0;
	case STATE_VBYTES:
		if (len > f->size)
			return load_fail(c, fr, p - 8, -EINVAL,
					 "length %" PRIu32 " exceeds the capacity of %zu", len,
					 f->size);
		if (c->apply) {
			memcpy(m, p, len);
			memset(m + len, 0, f->size - len);
			memcpy(obj + f->count_offset, &len, 4);
		}
		return 0;
	case STATE_STRUCT:
		return load_list(c, fr, f->sub, p, len, m);
	case STATE_ARRAY:
		if (len < 4)
			return load_fail(c, fr, p - 8, -EINVAL,
					 "length %" PRIu32 ", too short for the element count", len);
		n = sbuf_get_le32(p);
		if (n > f->max_count)
			return load_fail(c, fr, p, -EINVAL, "%" PRIu32 " elements, capacity %" PRIu32,
					 n, f->max_count);
		q = 4;
		for (uint32_t i = 0; i < n; i++) {
			struct load_frame el = { fr, NULL, i };
			uint32_t elen;

			if (len - q < 4)
				return load_fail(c, &el, p + q, -EINVAL,
						 "truncated: element length needs 4 bytes, %" PRIu32
						 " left of %" PRIu32 " elements' data",
						 len - q, n);
			elen = sbuf_get_le32(p + q);
			q += 4;
			if (elen > len - q)
				return load_fail(c, &el, p + q - 4, -EINVAL,
						 "element needs %" PRIu32 " bytes, only %" PRIu32
						 " left",
						 elen, len - q);
			ret = load_list(c, &el, f->sub, p + q, elen, m + (size_t)i * f->size);
			if (ret)
				return ret;
			q += elen;
		}
		if (q != len)
			return load_fail(c, fr, p + q, -EINVAL,
					 "%" PRIu32 " stray bytes after %" PRIu32 " elements", len - q,
					 n);
		if (c->apply)
			memcpy(obj + f->count_offset, &n, 4);
		return 0;
	}
	return load_fail(c, fr, p, -EINVAL, "bad table");
}

static int load_list(const struct load_ctx *c, const struct load_frame *up,
		     const struct state_desc *d, const uint8_t *p, size_t len, uint8_t *obj)
{
	size_t pos = 0, ti = 0;
	unsigned prev = 0;

	while (pos < len) {
		const uint8_t *h = p + pos;
		const struct state_field *f = NULL;
		unsigned id, wt, wf;
		uint32_t flen;
		int ret;

		if (len - pos < 8)
			return load_fail(c, up, h, -EINVAL,
					 "truncated field header: 8 bytes needed, only %zu left",
					 len - pos);
		id = sbuf_get_le16(h);
		wt = h[2];
		wf = h[3];
		flen = sbuf_get_le32(h + 4);
		pos += 8;
		if (flen > len - pos)
			return load_fail(c, up, h, -EINVAL,
					 "field id %u needs %" PRIu32 " bytes, only %zu left", id,
					 flen, len - pos);
		if (id == 0)
			return load_fail(c, up, h, -EINVAL, "field id 0 is reserved");
		if (id == prev)
			return load_fail(c, up, h, -EINVAL, "duplicate field id %u", id);
		if (id < prev)
			return load_fail(c, up, h, -EINVAL, "field id %u out of order (after %u)", id,
					 prev);
		prev = id;
		if (wf & ~STATE_F_REQUIRED)
			return load_fail(c, up, h, -EINVAL, "field id %u has unknown flags 0x%02x",
					 id, wf);
		/* Both the wire and the table are in increasing id order. */
		while (ti < d->nr_fields && d->fields[ti].id < id)
			ti++;
		if (ti < d->nr_fields && d->fields[ti].id == id)
			f = &d->fields[ti];
		if (!f) {
			char tb[24];

			if (wf & STATE_F_REQUIRED)
				return load_fail(c, up, h, -ENOTSUP,
						 "unknown required field id %u (%s, %" PRIu32
						 " bytes) in '%s'",
						 id, state_wire_fmt(wt, tb, sizeof(tb)), flen, d->name);
			pos += flen;
			continue;
		}
		{
			struct load_frame fr = { up, f->name, 0 };

			ret = load_field(c, &fr, f, wt, p + pos, flen, obj);
		}
		if (ret)
			return ret;
		pos += flen;
	}
	return 0;
}

static int state_load_named(const char *what, const struct state_desc *d, uint32_t version,
			    const uint8_t *p, size_t len, void *obj, char *err, size_t errlen)
{
	struct load_ctx c = { .what = what, .base = p, .err = err, .errlen = errlen };
	int ret;

	if (err && errlen)
		err[0] = 0;
	ret = state_desc_check(d, err, errlen);
	if (ret)
		return ret;
	if (version > d->version)
		return set_err(err, errlen, -ENOTSUP,
				  "section '%s' version %" PRIu32 " is newer than supported %" PRIu32,
				  what, version, d->version);
	if (version < d->min_version)
		return set_err(err, errlen, -ENOTSUP,
				  "section '%s' version %" PRIu32
				  " is older than the oldest supported %" PRIu32,
				  what, version, d->min_version);
	if (!p && len)
		return set_err(err, errlen, -EINVAL, "section '%s': no payload", what);
	if (len > STREAM_PAYLOAD_MAX)
		return set_err(err, errlen, -EINVAL, "section '%s': payload over the limit", what);
	/* Validate everything, then apply: a refusal leaves obj untouched. */
	ret = load_list(&c, NULL, d, p, len, obj);
	if (ret)
		return ret;
	c.apply = true;
	return load_list(&c, NULL, d, p, len, obj);
}

int state_load(const struct state_desc *d, uint32_t section_version, const uint8_t *p,
	       size_t len, void *obj, char *err, size_t errlen)
{
	return state_load_named(d && d->name ? d->name : "?", d, section_version, p, len, obj, err,
				errlen);
}

/* ---- describe ------------------------------------------------------------- */

#define DESCRIBE_HEX_MAX 64
#define DESCRIBE_ELEMENTS_MAX 4096

static json_t *hex_string(const uint8_t *p, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	char buf[2 * DESCRIBE_HEX_MAX + 1];
	size_t n = len < DESCRIBE_HEX_MAX ? len : DESCRIBE_HEX_MAX;

	for (size_t i = 0; i < n; i++) {
		buf[2 * i] = digits[p[i] >> 4];
		buf[2 * i + 1] = digits[p[i] & 15];
	}
	buf[2 * n] = 0;
	return json_string(buf);
}

static void describe_hex(json_t *o, const uint8_t *p, size_t len)
{
	json_object_set_new(o, "hex", hex_string(p, len));
	if (len > DESCRIBE_HEX_MAX)
		json_object_set_new(o, "truncated", json_true());
}

static void describe_list(json_t *arr, const struct state_desc *d, const uint8_t *p, size_t len,
			  int depth);

static void describe_array(json_t *o, const struct state_desc *sub, const uint8_t *p,
			   uint32_t len, int depth)
{
	json_t *els;
	uint32_t n, q = 4;

	if (len < 4) {
		json_object_set_new(o, "error", json_string("too short for the element count"));
		return;
	}
	n = sbuf_get_le32(p);
	json_object_set_new(o, "count", json_integer(n));
	els = json_array();
	json_object_set_new(o, "elements", els);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t elen;
		json_t *el;

		if (i == DESCRIBE_ELEMENTS_MAX) {
			json_object_set_new(o, "truncated", json_true());
			return;
		}
		if (len - q < 4) {
			json_object_set_new(o, "error", json_string("truncated element length"));
			return;
		}
		elen = sbuf_get_le32(p + q);
		q += 4;
		if (elen > len - q) {
			json_object_set_new(o, "error", json_string("element overruns the field"));
			return;
		}
		el = json_array();
		describe_list(el, sub, p + q, elen, depth + 1);
		json_array_append_new(els, el);
		q += elen;
	}
	if (q != len)
		json_object_set_new(o, "error", json_string("stray bytes after the elements"));
}

static void describe_list(json_t *arr, const struct state_desc *d, const uint8_t *p, size_t len,
			  int depth)
{
	size_t pos = 0, ti = 0;

	while (pos < len) {
		const struct state_field *f = NULL;
		const char *wn;
		unsigned id, wt, wf;
		uint32_t flen;
		const uint8_t *q;
		char msg[128];
		json_t *o;

		if (len - pos < 8) {
			snprintf(msg, sizeof(msg), "truncated field header at offset %zu", pos);
			json_array_append_new(arr, json_pack("{ss}", "error", msg));
			return;
		}
		id = sbuf_get_le16(p + pos);
		wt = p[pos + 2];
		wf = p[pos + 3];
		flen = sbuf_get_le32(p + pos + 4);
		if (flen > len - pos - 8) {
			snprintf(msg, sizeof(msg), "field id %u at offset %zu overruns its list", id,
				 pos);
			json_array_append_new(arr, json_pack("{ss}", "error", msg));
			return;
		}
		q = p + pos + 8;
		pos += 8 + (size_t)flen;
		if (d) {
			while (ti < d->nr_fields && d->fields[ti].id < id)
				ti++;
			if (ti < d->nr_fields && d->fields[ti].id == id &&
			    state_wire_type(d->fields[ti].type) == wt)
				f = &d->fields[ti];
		}
		o = json_object();
		if (!o)
			return;
		json_array_append_new(arr, o);
		json_object_set_new(o, "id", json_integer(id));
		if (f)
			json_object_set_new(o, "name", json_string(f->name));
		wn = state_wire_name(wt);
		if (wn)
			json_object_set_new(o, "type", json_string(wn));
		else
			json_object_set_new(o, "type", json_integer(wt));
		json_object_set_new(o, "length", json_integer(flen));
		if (wf & STATE_F_REQUIRED)
			json_object_set_new(o, "required", json_true());
		if (wf & ~STATE_F_REQUIRED)
			json_object_set_new(o, "flags", json_integer(wf));
		switch (wt) {
		case STATE_WIRE_U8:
		case STATE_WIRE_U16:
		case STATE_WIRE_U32:
			if (flen == 1u << (wt - 1))
				json_object_set_new(o, "value",
						    json_integer(flen == 1   ? q[0]
								 : flen == 2 ? sbuf_get_le16(q)
									     : sbuf_get_le32(q)));
			else
				describe_hex(o, q, flen);
			break;
		case STATE_WIRE_U64:
			if (flen == 8) {
				snprintf(msg, sizeof(msg), "0x%016" PRIx64, sbuf_get_le64(q));
				json_object_set_new(o, "value", json_string(msg));
			} else {
				describe_hex(o, q, flen);
			}
			break;
		case STATE_WIRE_STRUCT:
			if (depth + 1 < 2 * STATE_MAX_DEPTH) {
				json_t *sub = json_array();

				json_object_set_new(o, "fields", sub);
				describe_list(sub, f ? f->sub : NULL, q, flen, depth + 1);
			} else {
				describe_hex(o, q, flen);
			}
			break;
		case STATE_WIRE_ARRAY:
			if (depth + 1 < 2 * STATE_MAX_DEPTH)
				describe_array(o, f ? f->sub : NULL, q, flen, depth);
			else
				describe_hex(o, q, flen);
			break;
		default:
			describe_hex(o, q, flen);
			break;
		}
	}
}

json_t *state_describe(const struct state_desc *d, const uint8_t *p, size_t len)
{
	json_t *arr = json_array();

	if (!arr)
		return NULL;
	if (d && state_desc_check(d, NULL, 0))
		d = NULL;
	describe_list(arr, d, p, len, 0);
	return arr;
}

/* ---- sections of state ---------------------------------------------------- */

int stream_put_state(struct sbuf *b, const char *section_name, const struct state_desc *d,
		     const void *obj, unsigned flags)
{
	size_t token;
	int ret;

	if (b->err)
		return b->err;
	if (state_desc_check(d, NULL, 0))
		return sbuf_set_err(b, -EINVAL);
	token = stream_section_begin(b, section_name, d->version, flags);
	state_save(b, d, obj);
	ret = stream_section_end(b, token);
	/* Take a half-written section back out, so the caller may carry on
	 * without it; an allocation failure stays sticky. */
	if (ret == -EINVAL || ret == -EFBIG) {
		b->len = token;
		b->err = 0;
	}
	return ret;
}

int stream_get_state(const struct stream_index *idx, const char *section_name,
		     const struct state_desc *d, void *obj, char *err, size_t errlen)
{
	const struct stream_section *s = stream_find(idx, section_name);

	if (!s)
		return set_err(err, errlen, -ENOENT, "section '%s' is missing from the stream",
				  section_name);
	return state_load_named(s->name, d, s->version, s->payload, s->len, obj, err, errlen);
}

json_t *stream_describe(const struct stream_index *idx,
			const struct state_desc *(*desc_for)(const char *section, void *opaque),
			void *opaque)
{
	json_t *root, *secs;
	char crc[16];

	root = json_pack("{sI s{sisisi}}", "format_version", (json_int_t)idx->format_version,
			 "writer", "major", (int)idx->writer_major, "minor",
			 (int)idx->writer_minor, "micro", (int)idx->writer_micro);
	if (!root)
		return NULL;
	secs = json_array();
	json_object_set_new(root, "sections", secs);
	for (uint32_t i = 0; i < idx->nr; i++) {
		const struct stream_section *s = &idx->sections[i];
		const struct state_desc *d = desc_for ? desc_for(s->name, opaque) : NULL;
		json_t *o;

		snprintf(crc, sizeof(crc), "0x%08" PRIx32, s->crc);
		o = json_pack("{sssIsbsIsIss}", "name", s->name, "version", (json_int_t)s->version,
			      "required", (int)!!(s->flags & STREAM_SEC_REQUIRED), "offset",
			      (json_int_t)s->offset, "length", (json_int_t)s->len, "crc", crc);
		if (!o)
			continue;
		if (d)
			json_object_set_new(o, "table", json_string(d->name));
		json_object_set_new(o, "fields", state_describe(d, s->payload, s->len));
		json_array_append_new(secs, o);
	}
	return root;
}
