/* cprvm-stream.c — look inside snapshot files and state streams without a VM.
 *
 *   cprvm-stream dump FILE      the container header and every section as JSON
 *   cprvm-stream verify FILE    everything restore checks before it builds a VM
 *
 * FILE is a snapshot container (magic "CPRVMSNP", src/cpr/snapshot.h) or a
 * bare state stream (magic "CPRVMST1" at offset 0, docs/stream-format.md).
 *
 * The file is hostile until proven otherwise: every read is bounded by the
 * file's size and by SNAP_MAX_STREAM, the framing is checked by
 * stream_parse() before any section is looked at, and sections are loaded
 * into scratch objects sized from their own tables. A problem is one line
 * on stderr naming the file and what is wrong; exit 1. Usage errors exit 2. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cpr/snapshot.h"
#include "lib/crc32c.h"
#include "lib/log.h"
#include "state/state.h"
#include "state/stream.h"

enum {
	EXIT_OK = 0,
	EXIT_BAD = 1, /* the file is not a valid snapshot or stream, or cannot be read */
	EXIT_USAGE = 2,
};

#define CONTAINER_HDR_LEN 52 /* fields and CRC; the rest of the 4 KiB page is padding */

/* What was read from FILE. The stream buffer is ours; idx points into it. */
struct input {
	const char *path;
	off_t size;
	bool container;
	uint32_t version, flags;
	uint64_t stream_off, stream_len, ram_off, ram_len;
	uint32_t hdr_crc;
	uint8_t *stream;
	struct stream_index idx;
	bool have_idx;
};

static int bad(const struct input *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(const struct input *in, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "cprvm-stream: %s: ", in->path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_BAD;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: cprvm-stream dump FILE\n"
		   "       cprvm-stream verify FILE\n"
		   "Inspect a cprvm snapshot (QMP migrate file:PATH) or a bare state stream.\n\n"
		   "  dump      print the container header (for a snapshot) and every section\n"
		   "            of the state stream, with its fields, as JSON\n"
		   "  verify    check the container, the stream's framing and checksums, and\n"
		   "            load every section this version knows, as restore would,\n"
		   "            without a VM; prints one line\n"
		   "  -h, --help  show this help\n\n"
		   "Exit status: 0 valid (dump: printed), 1 invalid or unreadable (one line on\n"
		   "stderr says why), 2 usage error.\n");
}

/* ---- reading ------------------------------------------------------------ */

static int pread_exact(int fd, void *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pread(fd, buf, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO; /* the file shrank under us */
		buf = (uint8_t *)buf + n;
		len -= n;
		off += n;
	}
	return 0;
}

/* The container header: every field checked against the file before the
 * stream is read. */
static int read_container(struct input *in, const uint8_t *hdr)
{
	uint64_t end;

	if (in->size < CONTAINER_HDR_LEN)
		return bad(in, "truncated: %lld bytes, no complete container header",
			   (long long)in->size);
	in->container = true;
	in->version = sbuf_get_le32(hdr + 8);
	in->flags = sbuf_get_le32(hdr + 12);
	in->stream_off = sbuf_get_le64(hdr + 16);
	in->stream_len = sbuf_get_le64(hdr + 24);
	in->ram_off = sbuf_get_le64(hdr + 32);
	in->ram_len = sbuf_get_le64(hdr + 40);
	in->hdr_crc = sbuf_get_le32(hdr + 48);
	if (crc32c(0, hdr, 48) != in->hdr_crc)
		return bad(in, "container header checksum mismatch");
	if (in->version == 0 || in->version > SNAP_VERSION)
		return bad(in, "container version %u is not supported (this cprvm reads %u)",
			   in->version, SNAP_VERSION);
	if (in->flags & ~SNAP_F_RAM)
		return bad(in, "unknown container flags 0x%x", in->flags & ~SNAP_F_RAM);
	if (in->stream_off != SNAP_HDR_SIZE)
		return bad(in, "stream offset %" PRIu64 " is not %u", in->stream_off,
			   SNAP_HDR_SIZE);
	if (in->stream_len > SNAP_MAX_STREAM)
		return bad(in, "stream length %" PRIu64 " exceeds the limit of %llu bytes",
			   in->stream_len, SNAP_MAX_STREAM);
	end = in->stream_off + in->stream_len;
	if (end > (uint64_t)in->size)
		return bad(in,
			   "truncated: stream of %" PRIu64 " bytes at %" PRIu64
			   " does not fit in the file (%lld bytes)",
			   in->stream_len, in->stream_off, (long long)in->size);
	if (in->flags & SNAP_F_RAM) {
		if (!in->ram_off || in->ram_off % SNAP_RAM_ALIGN || in->ram_off < end ||
		    in->ram_len > UINT64_MAX - in->ram_off ||
		    in->ram_off + in->ram_len > (uint64_t)in->size)
			return bad(in,
				   "truncated or corrupt: RAM area %" PRIu64 "+%" PRIu64
				   " does not fit in the file (%lld bytes)",
				   in->ram_off, in->ram_len, (long long)in->size);
	} else if (in->ram_off || in->ram_len) {
		return bad(in, "RAM area %" PRIu64 "+%" PRIu64 " given without the RAM flag",
			   in->ram_off, in->ram_len);
	}
	return 0;
}

/* Opens FILE, reads the container header if there is one, reads and parses
 * the stream. 0 or EXIT_BAD (already reported). */
static int input_open(struct input *in)
{
	uint8_t hdr[CONTAINER_HDR_LEN] = {0};
	char why[512];
	struct stat st;
	int fd, ret;

	fd = open(in->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return bad(in, "%s", strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = bad(in, "not a regular file");
		goto out;
	}
	in->size = st.st_size;
	if (in->size < 8) {
		ret = bad(in, "%lld bytes: too short for a snapshot or a state stream",
			  (long long)in->size);
		goto out;
	}
	ret = pread_exact(fd, hdr, in->size < CONTAINER_HDR_LEN ? (size_t)in->size
							: CONTAINER_HDR_LEN, 0);
	if (ret < 0) {
		ret = bad(in, "cannot read: %s", strerror(-ret));
		goto out;
	}
	if (!memcmp(hdr, SNAP_MAGIC, 8)) {
		ret = read_container(in, hdr);
		if (ret)
			goto out;
	} else if (!memcmp(hdr, STREAM_MAGIC, STREAM_MAGIC_LEN)) {
		if ((uint64_t)in->size > SNAP_MAX_STREAM) {
			ret = bad(in, "a %lld-byte state stream exceeds the limit of %llu bytes",
				  (long long)in->size, SNAP_MAX_STREAM);
			goto out;
		}
		in->stream_off = 0;
		in->stream_len = in->size;
	} else {
		ret = bad(in, "not a cprvm snapshot or state stream (bad magic)");
		goto out;
	}
	in->stream = malloc(in->stream_len ? in->stream_len : 1);
	if (!in->stream) {
		ret = bad(in, "out of memory for a %" PRIu64 "-byte stream", in->stream_len);
		goto out;
	}
	ret = pread_exact(fd, in->stream, in->stream_len, in->stream_off);
	if (ret < 0) {
		ret = bad(in, "cannot read the state stream: %s", strerror(-ret));
		goto out;
	}
	ret = stream_parse(in->stream, in->stream_len, &in->idx, why, sizeof(why));
	if (ret < 0) {
		ret = bad(in, "%s", why);
		goto out;
	}
	in->have_idx = true;
	ret = 0;
out:
	close(fd);
	return ret;
}

static void input_close(struct input *in)
{
	if (in->have_idx)
		stream_index_free(&in->idx);
	free(in->stream);
}

/* ---- dump --------------------------------------------------------------- */

static int cmd_dump(struct input *in)
{
	json_t *root = json_object(), *stream;
	int ret = EXIT_OK;

	stream = stream_describe(&in->idx, snapshot_desc_for, NULL);
	if (!root || !stream) {
		json_decref(root);
		json_decref(stream);
		return bad(in, "out of memory");
	}
	json_object_set_new(root, "file", json_string(in->path));
	if (in->container) {
		char crc[16];

		snprintf(crc, sizeof(crc), "0x%08" PRIx32, in->hdr_crc);
		json_object_set_new(
			root, "container",
			json_pack("{sIsIs[]sIsIsIsIss}", "version", (json_int_t)in->version, "flags",
				  (json_int_t)in->flags, "flag_names", "stream_offset",
				  (json_int_t)in->stream_off, "stream_length",
				  (json_int_t)in->stream_len, "ram_offset", (json_int_t)in->ram_off,
				  "ram_length", (json_int_t)in->ram_len, "crc", crc));
		if (in->flags & SNAP_F_RAM)
			json_array_append_new(
				json_object_get(json_object_get(root, "container"), "flag_names"),
				json_string("ram"));
	}
	json_object_set_new(root, "stream", stream);
	if (json_dumpf(root, stdout, JSON_INDENT(2)) < 0 || fputc('\n', stdout) == EOF ||
	    fflush(stdout) == EOF)
		ret = bad(in, "cannot write the dump: %s", strerror(errno));
	json_decref(root);
	return ret;
}

/* ---- verify ------------------------------------------------------------- */

/* The bytes a table writes into its object: scratch objects for state_load
 * are sized from the table itself, so no C struct is needed here. */
static size_t desc_extent(const struct state_desc *d)
{
	size_t ext = 0;

	for (size_t i = 0; i < d->nr_fields; i++) {
		const struct state_field *f = &d->fields[i];
		size_t end = f->offset + (f->type == STATE_ARRAY ? f->size * f->max_count : f->size);

		if (end > ext)
			ext = end;
		if ((f->type == STATE_VBYTES || f->type == STATE_ARRAY) &&
		    f->count_offset + sizeof(uint32_t) > ext)
			ext = f->count_offset + sizeof(uint32_t);
	}
	return ext;
}

static bool section_known(const char *name, void *opaque)
{
	return snapshot_desc_for(name, opaque) != NULL;
}

/* A field's value from state_describe()'s JSON (u64 come as "0x..."). */
static bool field_value(const json_t *fields, const char *name, uint64_t *v)
{
	size_t i;
	json_t *f;

	json_array_foreach(fields, i, f) {
		const char *n = json_string_value(json_object_get(f, "name"));
		json_t *val = json_object_get(f, "value");

		if (!n || strcmp(n, name))
			continue;
		if (json_is_integer(val)) {
			*v = (uint64_t)json_integer_value(val);
			return true;
		}
		if (json_is_string(val)) {
			char *end;
			errno = 0;
			*v = strtoull(json_string_value(val), &end, 0);
			return !errno && !*end;
		}
		return false;
	}
	return false;
}

/* What snapshot_open() demands of a snapshot's sections beyond their tables:
 * a machine section, one vcpu/N for each of its vCPUs and no others, the
 * VM-wide devices, and RAM where the machine section says it is. */
static int verify_snapshot_sections(struct input *in)
{
	static const char *const vm_sections[] = {"irqchip", "pit", "clock", "serial/0"};
	const struct stream_section *m = stream_find(&in->idx, "machine");
	uint64_t mem_size, nr_cpus, ram_mode;
	uint32_t nr_vcpu_sections = 0;
	json_t *fields;
	bool ok;

	if (!m)
		return bad(in, "no 'machine' section");
	fields = state_describe(&machine_state_desc, m->payload, m->len);
	ok = fields && field_value(fields, "mem_size", &mem_size) &&
	     field_value(fields, "nr_cpus", &nr_cpus) && field_value(fields, "ram_mode", &ram_mode);
	json_decref(fields);
	if (!ok)
		return bad(in, "section 'machine': mem_size, nr_cpus or ram_mode is missing");
	if (nr_cpus < 1 || nr_cpus > 64)
		return bad(in, "section 'machine': %" PRIu64 " vCPUs (1 to 64 are possible)",
			   nr_cpus);
	for (uint32_t i = 0; i < in->idx.nr; i++)
		if (!strncmp(in->idx.sections[i].name, "vcpu/", 5))
			nr_vcpu_sections++;
	for (uint64_t i = 0; i < nr_cpus; i++) {
		char name[32];
		snprintf(name, sizeof(name), "vcpu/%" PRIu64, i);
		if (!stream_find(&in->idx, name))
			return bad(in, "section '%s' is missing (the machine has %" PRIu64 " vCPUs)",
				   name, nr_cpus);
	}
	if (nr_vcpu_sections != nr_cpus)
		return bad(in, "%u vCPU sections for a machine with %" PRIu64 " vCPUs",
			   nr_vcpu_sections, nr_cpus);
	for (size_t i = 0; i < ARRAY_SIZE(vm_sections); i++)
		if (!stream_find(&in->idx, vm_sections[i]))
			return bad(in, "section '%s' is missing", vm_sections[i]);
	if (ram_mode == RAM_IN_SNAPSHOT) {
		if (!(in->flags & SNAP_F_RAM))
			return bad(in, "the machine's RAM should be in the file, but the "
				       "container has no RAM area");
		if (in->ram_len != mem_size)
			return bad(in,
				   "RAM area of %" PRIu64 " bytes for a machine with %" PRIu64
				   " bytes of RAM",
				   in->ram_len, mem_size);
	} else if (ram_mode == RAM_IN_MEM_PATH) {
		if (in->flags & SNAP_F_RAM)
			return bad(in, "device-state-only snapshot with a RAM area");
	} else {
		return bad(in, "section 'machine': unknown RAM mode %" PRIu64, ram_mode);
	}
	return 0;
}

static int cmd_verify(struct input *in)
{
	char why[512];
	int ret;

	ret = stream_check_known(&in->idx, section_known, NULL, why, sizeof(why));
	if (ret < 0)
		return bad(in, "%s", why);
	/* Every section this version has a table for loads as restore would
	 * load it: versions, required fields, sizes, capacities. */
	for (uint32_t i = 0; i < in->idx.nr; i++) {
		const struct stream_section *s = &in->idx.sections[i];
		const struct state_desc *d = snapshot_desc_for(s->name, NULL);
		size_t ext;
		void *obj;

		if (!d)
			continue; /* optional and unknown: restore skips it too */
		ext = desc_extent(d);
		obj = calloc(1, ext ? ext : 1);
		if (!obj)
			return bad(in, "out of memory");
		ret = state_load(d, s->version, s->payload, s->len, obj, why, sizeof(why));
		free(obj);
		if (ret < 0)
			return bad(in, "section '%s': %s", s->name, why);
	}
	if (in->container) {
		ret = verify_snapshot_sections(in);
		if (ret)
			return ret;
	}
	printf("ok: %u sections, format version %u, written by cprvm %u.%u.%u\n", in->idx.nr,
	       in->idx.format_version, in->idx.writer_major, in->idx.writer_minor,
	       in->idx.writer_micro);
	return fflush(stdout) == EOF ? EXIT_BAD : EXIT_OK;
}

int main(int argc, char **argv)
{
	struct input in = {0};
	int ret;

	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		usage(stdout);
		return EXIT_OK;
	}
	if (argc != 3 || (strcmp(argv[1], "dump") && strcmp(argv[1], "verify"))) {
		if (argc >= 2 && strcmp(argv[1], "dump") && strcmp(argv[1], "verify"))
			fprintf(stderr, "cprvm-stream: unknown command '%s'\n", argv[1]);
		else
			fprintf(stderr, "cprvm-stream: usage: cprvm-stream dump|verify FILE\n");
		fprintf(stderr, "Try 'cprvm-stream --help'.\n");
		return EXIT_USAGE;
	}
	in.path = argv[2];
	ret = input_open(&in);
	if (!ret)
		ret = !strcmp(argv[1], "dump") ? cmd_dump(&in) : cmd_verify(&in);
	input_close(&in);
	return ret;
}
