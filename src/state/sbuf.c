/* sbuf.c — the growable byte buffer (state/sbuf.h). Capacity doubles from
 * 256 bytes; len never exceeds SBUF_MAX; once b->err is set nothing changes
 * but sbuf_free. */
#include <errno.h>
#include <stdlib.h>

#include "state/sbuf.h"

int sbuf_set_err(struct sbuf *b, int err)
{
	if (!b->err)
		b->err = err;
	return b->err;
}

int sbuf_reserve(struct sbuf *b, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (b->err)
		return b->err;
	if (n > SBUF_MAX - b->len)
		return sbuf_set_err(b, -EOVERFLOW);
	if (b->len + n <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	p = realloc(b->data, cap);
	if (!p)
		return sbuf_set_err(b, -ENOMEM);
	b->data = p;
	b->cap = cap;
	return 0;
}

int sbuf_put(struct sbuf *b, const void *p, size_t n)
{
	if (sbuf_reserve(b, n))
		return b->err;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

int sbuf_put_u8(struct sbuf *b, uint8_t v)
{
	return sbuf_put(b, &v, 1);
}

int sbuf_put_u16(struct sbuf *b, uint16_t v)
{
	uint8_t le[2];

	sbuf_set_le16(le, v);
	return sbuf_put(b, le, sizeof(le));
}

int sbuf_put_u32(struct sbuf *b, uint32_t v)
{
	uint8_t le[4];

	sbuf_set_le32(le, v);
	return sbuf_put(b, le, sizeof(le));
}

int sbuf_put_u64(struct sbuf *b, uint64_t v)
{
	uint8_t le[8];

	sbuf_set_le64(le, v);
	return sbuf_put(b, le, sizeof(le));
}

int sbuf_patch_u32(struct sbuf *b, size_t off, uint32_t v)
{
	if (b->err)
		return b->err;
	if (off > b->len || b->len - off < 4)
		return sbuf_set_err(b, -EINVAL);
	sbuf_set_le32(b->data + off, v);
	return 0;
}

void sbuf_free(struct sbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->err = 0;
}
