/* sbuf.h — a growable byte buffer that state streams are written into, and
 * little-endian accessors for reading them back.
 *
 * Errors are sticky: the first failed append (-ENOMEM, or -EOVERFLOW past
 * SBUF_MAX) or a writer's misuse (-EINVAL) lands in b->err, every later
 * append is a no-op, and whoever finishes the buffer checks b->err once.
 * This keeps writers free of an error check per field. */
#ifndef CPRVM_SBUF_H
#define CPRVM_SBUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Device state is KBs; a buffer this big is a bug. */
#define SBUF_MAX (1UL << 30)

struct sbuf {
	uint8_t *data;
	size_t len, cap;
	int err; /* 0 or the first -errno */
};

#define SBUF_INIT { 0 }

/* Make room for n more bytes; returns b->err. */
int sbuf_reserve(struct sbuf *b, size_t n);
int sbuf_put(struct sbuf *b, const void *p, size_t n);
int sbuf_put_u8(struct sbuf *b, uint8_t v);
int sbuf_put_u16(struct sbuf *b, uint16_t v);
int sbuf_put_u32(struct sbuf *b, uint32_t v);
int sbuf_put_u64(struct sbuf *b, uint64_t v);
/* Overwrite 4 bytes already in the buffer (a length written as a placeholder). */
int sbuf_patch_u32(struct sbuf *b, size_t off, uint32_t v);
/* Record a writer's error (first one wins); returns b->err. */
int sbuf_set_err(struct sbuf *b, int err);
/* Frees the data; the buffer is empty and usable again afterwards. */
void sbuf_free(struct sbuf *b);

static inline uint16_t sbuf_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t sbuf_get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sbuf_get_le64(const uint8_t *p)
{
	return (uint64_t)sbuf_get_le32(p) | (uint64_t)sbuf_get_le32(p + 4) << 32;
}

static inline void sbuf_set_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void sbuf_set_le32(uint8_t *p, uint32_t v)
{
	sbuf_set_le16(p, (uint16_t)v);
	sbuf_set_le16(p + 2, (uint16_t)(v >> 16));
}

static inline void sbuf_set_le64(uint8_t *p, uint64_t v)
{
	sbuf_set_le32(p, (uint32_t)v);
	sbuf_set_le32(p + 4, (uint32_t)(v >> 32));
}

#endif
