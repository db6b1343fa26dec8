/* stream.c — writer and validating reader for the state stream's framing
 * (byte layout in state/stream.h and docs/stream-format.md).
 *
 * The writer appends to an sbuf and keeps no state of its own: an open
 * section is marked by a length of STREAM_LEN_OPEN, which
 * stream_section_end replaces, and stream_writer_end walks the finished
 * sections to count them (and to catch one left open).
 *
 * The reader trusts nothing: every length is checked against what is left
 * before it is used, and every CRC before the bytes it covers are
 * interpreted, so a corrupted byte is reported as a checksum mismatch
 * rather than as whatever it happens to look like. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/crc32c.h"
#include "state/stream.h"

/* Placeholder length of a section still being written: above the limit, so
 * it can never be mistaken for a finished one. */
#define STREAM_LEN_OPEN 0xffffffffU

bool stream_name_valid(const char *name, size_t len)
{
	if (len < 1 || len > STREAM_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)name[i] < 0x21 || (unsigned char)name[i] > 0x7e)
			return false;
	return true;
}

/* ---- writer -------------------------------------------------------------- */

int stream_writer_begin(struct sbuf *b, uint16_t major, uint16_t minor, uint16_t micro)
{
	size_t start = b->len;

	if (b->err)
		return b->err;
	if (b->len)
		return sbuf_set_err(b, -EINVAL);
	sbuf_put(b, STREAM_MAGIC, STREAM_MAGIC_LEN);
	sbuf_put_u32(b, STREAM_FORMAT_VERSION);
	sbuf_put_u32(b, STREAM_HEADER_SIZE);
	sbuf_put_u16(b, major);
	sbuf_put_u16(b, minor);
	sbuf_put_u16(b, micro);
	sbuf_put_u16(b, 0);
	sbuf_put_u32(b, 0);
	if (b->err)
		return b->err;
	return sbuf_put_u32(b, crc32c(0, b->data + start, STREAM_HEADER_SIZE - 4));
}

size_t stream_section_begin(struct sbuf *b, const char *name, uint32_t version, unsigned flags)
{
	size_t token = b->len, n = name ? strnlen(name, STREAM_NAME_MAX + 1) : 0;

	if (!name || !stream_name_valid(name, n) || (flags & ~STREAM_SEC_REQUIRED) ||
	    b->len < STREAM_HEADER_SIZE) {
		sbuf_set_err(b, -EINVAL);
		return token;
	}
	sbuf_put_u8(b, STREAM_KIND_SECTION);
	sbuf_put_u8(b, (uint8_t)flags);
	sbuf_put_u16(b, (uint16_t)n);
	sbuf_put(b, name, n);
	sbuf_put_u32(b, version);
	sbuf_put_u32(b, STREAM_LEN_OPEN);
	return token;
}

int stream_section_end(struct sbuf *b, size_t token)
{
	size_t n, hdr, len;

	if (b->err)
		return b->err;
	if (token < STREAM_HEADER_SIZE || token > b->len || b->len - token < 4 ||
	    b->data[token] != STREAM_KIND_SECTION)
		return sbuf_set_err(b, -EINVAL);
	n = sbuf_get_le16(b->data + token + 2);
	hdr = token + 12 + n;
	if (hdr > b->len || sbuf_get_le32(b->data + hdr - 4) != STREAM_LEN_OPEN)
		return sbuf_set_err(b, -EINVAL);
	len = b->len - hdr;
	if (len > STREAM_PAYLOAD_MAX)
		return sbuf_set_err(b, -EFBIG);
	sbuf_set_le32(b->data + hdr - 4, (uint32_t)len);
	return sbuf_put_u32(b, crc32c(0, b->data + token, b->len - token));
}

int stream_writer_end(struct sbuf *b)
{
	size_t off = STREAM_HEADER_SIZE;
	uint32_t count = 0;

	if (b->err)
		return b->err;
	if (b->len < STREAM_HEADER_SIZE)
		return sbuf_set_err(b, -EINVAL);
	/* Our own output, but a section left open or bytes appended outside a
	 * section would make a stream no reader accepts: refuse it here. */
	while (off < b->len) {
		size_t n, left = b->len - off;
		uint32_t len;

		if (left < STREAM_SECTION_OVERHEAD || b->data[off] != STREAM_KIND_SECTION)
			return sbuf_set_err(b, -EINVAL);
		n = sbuf_get_le16(b->data + off + 2);
		if (left < STREAM_SECTION_OVERHEAD + n)
			return sbuf_set_err(b, -EINVAL);
		len = sbuf_get_le32(b->data + off + 8 + n);
		if (len > STREAM_PAYLOAD_MAX || left - STREAM_SECTION_OVERHEAD - n < len)
			return sbuf_set_err(b, -EINVAL);
		off += STREAM_SECTION_OVERHEAD + n + len;
		if (++count > STREAM_MAX_SECTIONS)
			return sbuf_set_err(b, -E2BIG);
	}
	sbuf_put_u8(b, STREAM_KIND_END);
	sbuf_put_u8(b, 0);
	sbuf_put_u16(b, 0);
	sbuf_put_u32(b, count);
	if (b->err)
		return b->err;
	return sbuf_put_u32(b, crc32c(0, b->data, b->len));
}

/* ---- reader -------------------------------------------------------------- */

void stream_index_free(struct stream_index *idx)
{
	free(idx->sections);
	free(idx->by_name);
	memset(idx, 0, sizeof(*idx));
}

static int section_cmp(const void *a, const void *b)
{
	const struct stream_section *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

static int parse_header(const uint8_t *buf, size_t len, struct stream_index *idx, char *err,
			size_t errlen)
{
	uint32_t fmt, hsize, flags, stored, crc;

	if (len < STREAM_MAGIC_LEN || memcmp(buf, STREAM_MAGIC, STREAM_MAGIC_LEN))
		return set_err(err, errlen, -EINVAL,
				   "not a cprvm state stream: expected magic \"%s\" at offset 0",
				   STREAM_MAGIC);
	if (len < STREAM_HEADER_SIZE)
		return set_err(err, errlen, -EINVAL,
				   "truncated stream: header needs %d bytes, only %zu",
				   STREAM_HEADER_SIZE, len);
	/* Magic and format version keep their place in every format version,
	 * so a newer stream is recognised as such before anything else. */
	fmt = sbuf_get_le32(buf + 8);
	if (fmt > STREAM_FORMAT_VERSION)
		return set_err(err, errlen, -ENOTSUP,
				   "stream format version %u is newer than this cprvm supports (%d)",
				   fmt, STREAM_FORMAT_VERSION);
	stored = sbuf_get_le32(buf + 28);
	crc = crc32c(0, buf, 28);
	if (stored != crc)
		return set_err(err, errlen, -EBADMSG,
				   "header at offset 0: checksum mismatch (stored 0x%08x, computed 0x%08x)",
				   stored, crc);
	if (fmt == 0)
		return set_err(err, errlen, -EINVAL, "header at offset 8: format version 0 is invalid");
	hsize = sbuf_get_le32(buf + 12);
	if (hsize != STREAM_HEADER_SIZE)
		return set_err(err, errlen, -EINVAL,
				   "header at offset 12: header size %u, expected %d", hsize,
				   STREAM_HEADER_SIZE);
	flags = sbuf_get_le32(buf + 24);
	if (sbuf_get_le16(buf + 22) || flags)
		return set_err(err, errlen, -EINVAL,
				   "header: reserved field 0x%04x and flags 0x%08x must be zero",
				   sbuf_get_le16(buf + 22), flags);
	idx->format_version = fmt;
	idx->writer_major = sbuf_get_le16(buf + 16);
	idx->writer_minor = sbuf_get_le16(buf + 18);
	idx->writer_micro = sbuf_get_le16(buf + 20);
	return 0;
}

/* Copies a name from the stream for a message, bytes outside 0x21..0x7e
 * shown as '?': messages are made before the CRC has vouched for it. */
static void name_for_msg(char *dst, const uint8_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = src[i] >= 0x21 && src[i] <= 0x7e ? (char)src[i] : '?';
	dst[n] = 0;
}

/* Parses the section at off; on success *next is the offset after it.
 * Bounds first (to find the CRC), then the CRC, then the meaning of the
 * bytes it covers. */
static int parse_section(const uint8_t *buf, size_t len, size_t off, struct stream_section *s,
			 size_t *next, char *err, size_t errlen)
{
	size_t left = len - off, n, need;
	char shown[STREAM_NAME_MAX + 1];
	uint32_t plen, stored, crc;
	uint8_t flags;

	if (left < 4)
		return set_err(err, errlen, -EINVAL,
				   "truncated stream: section at offset %zu needs a 4-byte header, only %zu left",
				   off, left);
	flags = buf[off + 1];
	n = sbuf_get_le16(buf + off + 2);
	if (n < 1 || n > STREAM_NAME_MAX)
		return set_err(err, errlen, -EINVAL,
				   "section at offset %zu: name length %zu, expected 1..%d", off, n,
				   STREAM_NAME_MAX);
	name_for_msg(shown, buf + off + 4, left - 4 < n ? left - 4 : n);
	if (left < STREAM_SECTION_OVERHEAD + n)
		return set_err(err, errlen, -EINVAL,
				   "truncated stream: section '%s' at offset %zu needs at least %zu bytes, only %zu left",
				   shown, off, STREAM_SECTION_OVERHEAD + n, left);
	plen = sbuf_get_le32(buf + off + 8 + n);
	if (plen > STREAM_PAYLOAD_MAX)
		return set_err(err, errlen, -EINVAL,
				   "section '%s' at offset %zu: payload length %u exceeds the limit of %u bytes",
				   shown, off, plen, STREAM_PAYLOAD_MAX);
	need = STREAM_SECTION_OVERHEAD + n + plen;
	if (left < need)
		return set_err(err, errlen, -EINVAL,
				   "truncated stream: section '%s' needs %zu bytes at offset %zu, only %zu left",
				   shown, need, off, left);
	stored = sbuf_get_le32(buf + off + need - 4);
	crc = crc32c(0, buf + off, need - 4);
	if (stored != crc)
		return set_err(err, errlen, -EBADMSG,
				   "section '%s' at offset %zu: checksum mismatch (stored 0x%08x, computed 0x%08x)",
				   shown, off, stored, crc);
	if (!stream_name_valid((const char *)buf + off + 4, n))
		return set_err(err, errlen, -EINVAL,
				   "section '%s' at offset %zu: name has bytes outside 0x21..0x7e", shown,
				   off);
	if (flags & ~STREAM_SEC_REQUIRED)
		return set_err(err, errlen, -EINVAL,
				   "section '%s' at offset %zu: unknown flags 0x%02x", shown, off, flags);
	memcpy(s->name, buf + off + 4, n);
	s->name[n] = 0;
	s->version = sbuf_get_le32(buf + off + 4 + n);
	s->flags = flags;
	s->payload = buf + off + 12 + n;
	s->len = plen;
	s->crc = stored;
	s->offset = off;
	*next = off + need;
	return 0;
}

static int parse_end(const uint8_t *buf, size_t len, size_t off, uint32_t nr, char *err,
		     size_t errlen)
{
	size_t left = len - off;
	uint32_t count, stored, crc;

	if (left < STREAM_END_SIZE)
		return set_err(err, errlen, -EINVAL,
				   "truncated stream: end marker at offset %zu needs %d bytes, only %zu left",
				   off, STREAM_END_SIZE, left);
	stored = sbuf_get_le32(buf + off + 8);
	crc = crc32c(0, buf, off + 8);
	if (stored != crc)
		return set_err(err, errlen, -EBADMSG,
				   "end marker at offset %zu: stream checksum mismatch (stored 0x%08x, computed 0x%08x)",
				   off, stored, crc);
	if (buf[off + 1] || sbuf_get_le16(buf + off + 2))
		return set_err(err, errlen, -EINVAL,
				   "end marker at offset %zu: reserved bytes must be zero", off);
	count = sbuf_get_le32(buf + off + 4);
	if (count != nr)
		return set_err(err, errlen, -EINVAL,
				   "end marker at offset %zu: says %u sections, the stream has %u", off,
				   count, nr);
	if (left > STREAM_END_SIZE)
		return set_err(err, errlen, -EINVAL,
				   "%zu trailing bytes after the end marker at offset %zu",
				   left - STREAM_END_SIZE, off);
	return 0;
}

int stream_parse(const uint8_t *buf, size_t len, struct stream_index *idx, char *err,
		 size_t errlen)
{
	size_t off = STREAM_HEADER_SIZE, cap = 0;
	int ret;

	memset(idx, 0, sizeof(*idx));
	if (err && errlen)
		err[0] = 0;
	if (!buf && len)
		return set_err(err, errlen, -EINVAL, "no stream");
	ret = parse_header(buf, len, idx, err, errlen);
	if (ret)
		goto out_free;
	for (;;) {
		struct stream_section s;

		if (off == len) {
			ret = set_err(err, errlen, -EINVAL,
					  "truncated stream: no end marker after %u sections (offset %zu)",
					  idx->nr, off);
			goto out_free;
		}
		if (buf[off] == STREAM_KIND_END)
			break;
		if (buf[off] != STREAM_KIND_SECTION) {
			ret = set_err(err, errlen, -EINVAL,
					  "offset %zu: unknown record kind 0x%02x (expected a section 0x01 or the end marker 0xff)",
					  off, buf[off]);
			goto out_free;
		}
		if (idx->nr == STREAM_MAX_SECTIONS) {
			ret = set_err(err, errlen, -EINVAL,
					  "offset %zu: more than %d sections", off,
					  STREAM_MAX_SECTIONS);
			goto out_free;
		}
		ret = parse_section(buf, len, off, &s, &off, err, errlen);
		if (ret)
			goto out_free;
		if (idx->nr == cap) {
			struct stream_section *p;

			cap = cap ? cap * 2 : 16;
			p = reallocarray(idx->sections, cap, sizeof(*p));
			if (!p) {
				ret = set_err(err, errlen, -ENOMEM, "out of memory");
				goto out_free;
			}
			idx->sections = p;
		}
		idx->sections[idx->nr++] = s;
	}
	ret = parse_end(buf, len, off, idx->nr, err, errlen);
	if (ret)
		goto out_free;

	/* Sections are addressed by name: two with one name is ambiguous. */
	if (idx->nr) {
		idx->by_name = calloc(idx->nr, sizeof(*idx->by_name));
		if (!idx->by_name) {
			ret = set_err(err, errlen, -ENOMEM, "out of memory");
			goto out_free;
		}
		for (uint32_t i = 0; i < idx->nr; i++)
			idx->by_name[i] = &idx->sections[i];
		qsort(idx->by_name, idx->nr, sizeof(*idx->by_name), section_cmp);
		for (uint32_t i = 1; i < idx->nr; i++) {
			const struct stream_section *a = idx->by_name[i - 1], *b = idx->by_name[i];

			if (!strcmp(a->name, b->name)) {
				ret = set_err(err, errlen, -EINVAL,
						  "section '%s' appears twice (offsets %zu and %zu)",
						  a->name, a->offset < b->offset ? a->offset : b->offset,
						  a->offset < b->offset ? b->offset : a->offset);
				goto out_free;
			}
		}
	}
	return 0;

out_free:
	stream_index_free(idx);
	return ret;
}

const struct stream_section *stream_find(const struct stream_index *idx, const char *name)
{
	size_t lo = 0, hi = idx->nr;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, idx->by_name[mid]->name);

		if (!c)
			return idx->by_name[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int stream_check_known(const struct stream_index *idx,
		       bool (*known)(const char *name, void *opaque), void *opaque, char *err,
		       size_t errlen)
{
	for (uint32_t i = 0; i < idx->nr; i++) {
		const struct stream_section *s = &idx->sections[i];

		if ((s->flags & STREAM_SEC_REQUIRED) && !known(s->name, opaque))
			return set_err(err, errlen, -ENOTSUP,
					   "section '%s' (version %u) at offset %zu is required but unknown to this cprvm",
					   s->name, s->version, s->offset);
	}
	return 0;
}
