/* state.h — device state declared as tables, one interpreter to save, load,
 * bounds-check and describe it (QEMU's VMState idea, small).
 *
 * Next to a device's state struct:
 *
 *	static bool pit_has_hpet(const void *obj) { ... }
 *	static const struct state_field pit_fields[] = {
 *		STATE_FIELD_U32(1, struct pit_state, flags, .flags = STATE_F_REQUIRED),
 *		STATE_FIELD_BYTES(2, struct pit_state, channels),
 *		STATE_FIELD_U64(3, struct pit_state, hpet_base, .needed = pit_has_hpet),
 *	};
 *	static const struct state_desc pit_desc = STATE_DESC("pit", 2, 1, pit_fields);
 *
 *	stream_put_state(&b, "pit", &pit_desc, &s, STREAM_SEC_REQUIRED);
 *	...
 *	s = pit_defaults;	(fields missing from an older stream keep these)
 *	stream_get_state(&idx, "pit", &pit_desc, &s, err, sizeof(err));
 *
 * A section's payload is a field list; each field on the wire is
 *	u16 id, u8 wire type, u8 flags (bit 0 REQUIRED), u32 length, data
 * with ids strictly increasing (so a list is canonical and a duplicate is
 * caught in O(1)). Tables therefore list fields in increasing id order; a
 * table that does not is refused (-EINVAL) by save and load alike.
 *
 * Compatibility rules, what the reader does:
 *   - field in stream, not in table: skipped, or refused if REQUIRED;
 *   - field in table, not in stream: left as the caller pre-filled it;
 *   - section version above desc->version or below desc->min_version: refused.
 * So: a new field gets a new id (never reuse one); mark it REQUIRED only if
 * an older cprvm would misbehave without it, and then bump the version.
 * Scalars and BYTES must match the table's size exactly, VBYTES fit its
 * capacity, ARRAY counts fit max_count; the wire type must match the
 * table's. Nested descs' own versions are not consulted: the section's
 * version covers the whole tree.
 *
 * state_load is itself parse, validate, apply: it walks the payload once
 * without writing, and only if all of it is acceptable walks it again
 * storing into obj. On error obj is exactly as it was. */
#ifndef CPRVM_STATE_H
#define CPRVM_STATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state/sbuf.h"
#include "state/stream.h"

enum state_type {
	STATE_U8,
	STATE_U16,
	STATE_U32,
	STATE_U64,
	STATE_BYTES,  /* fixed size: exactly size bytes */
	STATE_VBYTES, /* up to size bytes; the length is a uint32_t at count_offset */
	STATE_STRUCT, /* a nested field list described by sub */
	STATE_ARRAY,  /* uint32_t count at count_offset, elements described by sub */
};

/* Type codes on the wire (BYTES and VBYTES are one: the length says it). */
enum state_wire_type {
	STATE_WIRE_U8 = 1,
	STATE_WIRE_U16 = 2,
	STATE_WIRE_U32 = 3,
	STATE_WIRE_U64 = 4,
	STATE_WIRE_BYTES = 5,
	STATE_WIRE_STRUCT = 6,
	STATE_WIRE_ARRAY = 7,
};

#define STATE_F_REQUIRED 0x01 /* a reader that does not know this field must refuse */

/* Nesting limit for tables (and for describing unknown nested fields). */
#define STATE_MAX_DEPTH 8

struct state_desc;

struct state_field {
	uint16_t id; /* 1..65535, unique and increasing within a table */
	const char *name;
	enum state_type type;
	unsigned flags;	     /* STATE_F_* */
	size_t offset;	     /* in the C object */
	size_t size;	     /* scalar/BYTES: byte size; VBYTES: capacity; ARRAY: element size */
	size_t count_offset; /* VBYTES: uint32_t length; ARRAY: uint32_t count */
	uint32_t max_count;  /* ARRAY: capacity */
	const struct state_desc *sub; /* STRUCT, ARRAY element */
	/* Optional: the field is saved only when this says so (QEMU's
	 * subsections); gets the object that holds the field. */
	bool (*needed)(const void *obj);
};

struct state_desc {
	const char *name;
	uint32_t version, min_version;
	const struct state_field *fields;
	size_t nr_fields;
};

/* Evaluates to 0, or fails to compile when e is true (kernel idiom). */
#define STATE_BUILD_BUG_ON_ZERO(e) ((int)(sizeof(struct { int : (-!!(e)); })))
#define STATE_MEMBER_SIZE(T, m) sizeof(((T *)0)->m)

#define __STATE_SCALAR(_id, T, m, _type, _size, ...)                                           \
	{ .id = (_id), .name = #m, .type = (_type), .offset = offsetof(T, m),                  \
	  .size = STATE_MEMBER_SIZE(T, m) +                                                    \
		  STATE_BUILD_BUG_ON_ZERO(STATE_MEMBER_SIZE(T, m) != (_size)),                 \
	  __VA_ARGS__ }

/* The trailing arguments are designated initialisers: .flags, .needed. */
#define STATE_FIELD_U8(id, T, m, ...) __STATE_SCALAR(id, T, m, STATE_U8, 1, __VA_ARGS__)
#define STATE_FIELD_U16(id, T, m, ...) __STATE_SCALAR(id, T, m, STATE_U16, 2, __VA_ARGS__)
#define STATE_FIELD_U32(id, T, m, ...) __STATE_SCALAR(id, T, m, STATE_U32, 4, __VA_ARGS__)
#define STATE_FIELD_U64(id, T, m, ...) __STATE_SCALAR(id, T, m, STATE_U64, 8, __VA_ARGS__)

/* Any member saved as its bytes: an array, or a kernel struct of plain data. */
#define STATE_FIELD_BYTES(_id, T, m, ...)                                                      \
	{ .id = (_id), .name = #m, .type = STATE_BYTES, .offset = offsetof(T, m),              \
	  .size = STATE_MEMBER_SIZE(T, m), __VA_ARGS__ }

/* A byte array m of which the uint32_t member len holds the used length. */
#define STATE_FIELD_VBYTES(_id, T, m, len, ...)                                                \
	{ .id = (_id), .name = #m, .type = STATE_VBYTES, .offset = offsetof(T, m),             \
	  .size = STATE_MEMBER_SIZE(T, m), .count_offset = offsetof(T, len) +                  \
		  STATE_BUILD_BUG_ON_ZERO(STATE_MEMBER_SIZE(T, len) != 4),                     \
	  __VA_ARGS__ }

/* A nested struct member described by desc. */
#define STATE_FIELD_STRUCT(_id, T, m, desc, ...)                                               \
	{ .id = (_id), .name = #m, .type = STATE_STRUCT, .offset = offsetof(T, m),             \
	  .size = STATE_MEMBER_SIZE(T, m), .sub = &(desc), __VA_ARGS__ }

/* An array member m of structs described by desc; the uint32_t member
 * count holds how many are in use. */
#define STATE_FIELD_ARRAY(_id, T, m, count, desc, ...)                                         \
	{ .id = (_id), .name = #m, .type = STATE_ARRAY, .offset = offsetof(T, m),              \
	  .size = sizeof(((T *)0)->m[0]),                                                      \
	  .max_count = (uint32_t)(STATE_MEMBER_SIZE(T, m) / sizeof(((T *)0)->m[0])),           \
	  .count_offset = offsetof(T, count) +                                                 \
		  STATE_BUILD_BUG_ON_ZERO(STATE_MEMBER_SIZE(T, count) != 4),                   \
	  .sub = &(desc), __VA_ARGS__ }

#define STATE_DESC(_name, _version, _min_version, _fields)                                     \
	{ .name = (_name), .version = (_version), .min_version = (_min_version),               \
	  .fields = (_fields), .nr_fields = sizeof(_fields) / sizeof((_fields)[0]) }

/* Checks a table (and the tables it nests) for the rules above; for unit
 * tests of each device's table, and done by save and load. */
int state_desc_check(const struct state_desc *d, char *err, size_t errlen);

/* Appends obj's field list to b. -EINVAL for a bad table or an object whose
 * counts exceed their capacity; otherwise b->err. */
int state_save(struct sbuf *b, const struct state_desc *d, const void *obj);

/* Loads a field list written with section version section_version into
 * obj, which the caller has pre-filled with defaults. 0, or -EINVAL
 * (malformed, or not what the table expects), -ENOTSUP (version out of
 * range, unknown required field) with err naming the field and offset;
 * obj untouched on error. */
int state_load(const struct state_desc *d, uint32_t section_version, const uint8_t *p,
	       size_t len, void *obj, char *err, size_t errlen);

/* The field list as JSON for a person (cprvm-stream dump): an array of
 * {"id", "name" (when d knows it), "type", "length", "required",
 * "value" (u8..u32 as numbers, u64 as a "0x..." string) | "hex" (bytes,
 * first 64) | "fields" (struct) | "count" + "elements" (array)}. d may be
 * NULL: ids and wire types only. Malformed input ends the list with an
 * {"error": ...} element. NULL only when out of memory. */
json_t *state_describe(const struct state_desc *d, const uint8_t *p, size_t len);

/* section_begin + state_save + section_end, with d->version as the section
 * version. On failure the partial section is taken back out of b. */
int stream_put_state(struct sbuf *b, const char *section_name, const struct state_desc *d,
		     const void *obj, unsigned flags);

/* stream_find + state_load; -ENOENT if the section is absent. Messages
 * start with the section's name. */
int stream_get_state(const struct stream_index *idx, const char *section_name,
		     const struct state_desc *d, void *obj, char *err, size_t errlen);

/* The stream as JSON: format and writer versions, and each section (name,
 * version, flags, offset, length, crc, "fields" from state_describe with the
 * table desc_for returns for its name, or none). desc_for may be NULL. */
json_t *stream_describe(const struct stream_index *idx,
			const struct state_desc *(*desc_for)(const char *section, void *opaque),
			void *opaque);

#endif
