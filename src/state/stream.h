/* stream.h — the state stream's framing: header, named sections, end marker,
 * CRC32C everywhere. Works on memory only; files, memfds and sockets are the
 * caller's business (cpr/). Field lists inside sections are state/state.h's.
 *
 * All integers little-endian. docs/stream-format.md has the full rules.
 *
 *   header (32 bytes)
 *   0      8  magic "CPRVMST1"
 *   8      4  format version (STREAM_FORMAT_VERSION)
 *   12     4  header size (32)
 *   16     2  writer major      18  2  writer minor      20  2  writer micro
 *   22     2  reserved, 0
 *   24     4  flags, 0
 *   28     4  CRC32C of bytes 0..27
 *
 *   section (16 + n + len bytes), any number, names unique
 *   +0     1  kind 0x01
 *   +1     1  flags: bit 0 REQUIRED (a reader that does not know the name
 *             must refuse the stream); bits 1..7 zero
 *   +2     2  n = name length, 1..64
 *   +4     n  name, bytes 0x21..0x7e ("vcpu/0", "irqchip", "serial/0")
 *   +4+n   4  section version
 *   +8+n   4  len = payload length, <= 64 MiB
 *   +12+n len payload
 *   +12+n+len 4  CRC32C of the section from its kind byte to the payload's end
 *
 *   end (12 bytes), then nothing
 *   +0     1  kind 0xff
 *   +1     1  0
 *   +2     2  0
 *   +4     4  number of sections
 *   +8     4  CRC32C of the whole stream from byte 0 up to this field
 *
 * Reading is parse, validate, apply: stream_parse checks every byte of the
 * framing before the caller sees a single section, so a bad stream is
 * refused before anything is applied.
 *
 * Errors: -EINVAL malformed or truncated, -EBADMSG checksum mismatch,
 * -ENOTSUP newer format or unknown required section, -ENOMEM. Messages (for
 * a person) name the offset, the section and what was expected. */
#ifndef CPRVM_STREAM_H
#define CPRVM_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state/sbuf.h"

#define STREAM_MAGIC "CPRVMST1"
#define STREAM_MAGIC_LEN 8
#define STREAM_FORMAT_VERSION 1
#define STREAM_HEADER_SIZE 32
#define STREAM_END_SIZE 12
#define STREAM_KIND_SECTION 0x01
#define STREAM_KIND_END 0xff
#define STREAM_NAME_MAX 64
#define STREAM_PAYLOAD_MAX (64U << 20)
#define STREAM_MAX_SECTIONS 65536
#define STREAM_SECTION_OVERHEAD 16 /* kind, flags, name_len, version, len, crc */

#define STREAM_SEC_REQUIRED 0x01

/* ---- writing --------------------------------------------------------------
 * One stream per sbuf, started on an empty buffer:
 *	stream_writer_begin(&b, maj, min, mic);
 *	tok = stream_section_begin(&b, "pit", 1, STREAM_SEC_REQUIRED);
 *	... append the payload to b ...
 *	stream_section_end(&b, tok);
 *	ret = stream_writer_end(&b);	(b->err of everything above)
 * Sections do not nest. Misuse (a bad name, a section never ended) makes
 * b->err -EINVAL; a payload over the limit -EFBIG. */
int stream_writer_begin(struct sbuf *b, uint16_t major, uint16_t minor, uint16_t micro);
size_t stream_section_begin(struct sbuf *b, const char *name, uint32_t version, unsigned flags);
int stream_section_end(struct sbuf *b, size_t token);
int stream_writer_end(struct sbuf *b);

/* True if name is a valid section name (1..64 bytes, 0x21..0x7e). */
bool stream_name_valid(const char *name, size_t len);

/* ---- reading ------------------------------------------------------------- */
struct stream_section {
	char name[STREAM_NAME_MAX + 1];
	uint32_t version;
	unsigned flags;		/* STREAM_SEC_* */
	const uint8_t *payload; /* points into the parsed buffer */
	uint32_t len;
	uint32_t crc;
	size_t offset; /* of the kind byte */
};

struct stream_index {
	uint32_t format_version;
	uint16_t writer_major, writer_minor, writer_micro;
	uint32_t nr;			  /* sections, in stream order */
	struct stream_section *sections;
	const struct stream_section **by_name; /* sorted, for stream_find */
};

/* Validates all of buf (which must outlive idx) and indexes its sections.
 * On failure idx is empty (stream_index_free is still fine) and err says
 * why. */
int stream_parse(const uint8_t *buf, size_t len, struct stream_index *idx, char *err,
		 size_t errlen);
void stream_index_free(struct stream_index *idx);
const struct stream_section *stream_find(const struct stream_index *idx, const char *name);

/* Refuses (-ENOTSUP) the first REQUIRED section for which known() says no;
 * unknown optional sections are the caller's to ignore. */
int stream_check_known(const struct stream_index *idx,
		       bool (*known)(const char *name, void *opaque), void *opaque, char *err,
		       size_t errlen);

#endif
