/* aml.h — a small ACPI Machine Language builder (ACPI 6.x, section 20) for
 * the DSDT. It writes into a caller's buffer, never past its end, and
 * encodes every object the way iasl does for the same ASL, so that a table
 * built here equals the one iasl would compile (tests/host/test_aml.py).
 *
 * AML is prefix notation, and so is this API: aml_name() and aml_return()
 * write an operator whose operand is the next object written. Objects with
 * a PkgLength (Scope, Device, Method, Package) are opened, filled, then
 * closed with aml_close(), innermost first:
 *
 *	aml_scope_open(a, "\\_SB");
 *	aml_device_open(a, "COM1");
 *	aml_name(a, "_HID");
 *	aml_eisaid(a, "PNP0501");
 *	aml_close(a);
 *	aml_close(a);
 *	err = aml_finish(a);
 *
 * Errors are remembered, not returned: after the first one every call does
 * nothing, and the caller checks aml_finish() once at the end.
 *
 * Names are ASL name strings: an optional root prefix '\' or parent
 * prefixes '^', then segments of 1 to 4 characters (A-Z, 0-9, '_', not
 * starting with a digit) joined by '.'; short segments are padded with '_'.
 * A prefix alone ("\") is the NullName.
 *
 * A buffer as long as the finished AML is enough: an open object reserves
 * one byte for its PkgLength and grows it on close only when needed. */
#ifndef CPRVM_AML_H
#define CPRVM_AML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AML_MAX_DEPTH 16

struct aml {
	uint8_t *buf;
	size_t cap, len;	    /* len <= cap, always */
	bool overflow;		    /* a write did not fit */
	bool invalid;		    /* a bad argument or unbalanced close */
	unsigned depth;		    /* objects open */
	size_t open[AML_MAX_DEPTH]; /* offset of each open object's PkgLength */
};

void aml_init(struct aml *a, uint8_t *buf, size_t cap);
/* 0; -ENOSPC if the AML did not fit; -EINVAL for a bad argument or an
 * object left open. The AML is buf[0..len) only when it returns 0. */
int aml_finish(const struct aml *a);

/* Encodings. */
void aml_namestring(struct aml *a, const char *name);
/* Zero, One, Ones (all bits set), else the smallest of byte to qword. */
void aml_int(struct aml *a, uint64_t v);
/* ASCII 0x01-0x7f. */
void aml_string(struct aml *a, const char *s);
/* "PNP0501": 3 letters A-Z, 4 hex digits 0-9 A-F. */
void aml_eisaid(struct aml *a, const char *id);
/* Buffer (n) { data }. */
void aml_buffer(struct aml *a, const void *data, size_t n);

/* Operators taking the next object as their operand. */
void aml_name(struct aml *a, const char *name);
void aml_return(struct aml *a);

/* Objects closed by aml_close(), which closes the innermost one open; at
 * most AML_MAX_DEPTH are open at once. A Package's elements are the
 * objects written until it is closed, nr_elements of them (Package (n)); a
 * Method takes 0 to 7 arguments. */
void aml_package_open(struct aml *a, uint8_t nr_elements);
void aml_scope_open(struct aml *a, const char *name);
void aml_device_open(struct aml *a, const char *name);
void aml_method_open(struct aml *a, const char *name, unsigned nr_args, bool serialized);
void aml_close(struct aml *a);

#endif
