/* snapshot.c — see snapshot.h. Save: pause, capture every section into a
 * memory buffer, write container + stream (+ RAM), rename. Load: parse the
 * container and stream, load every section into plain structs (validating
 * all of it), check the configuration, and only then let the caller build a
 * VM and apply. Nothing is half-applied. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpr/snapshot.h"
#include "lib/crc32c.h"
#include "lib/log.h"
#include "lib/trace.h"
#include "lib/version.h"
#include "state/state.h"
#include "vcpu/vcpu_state.h"
#include "vm/vm_priv.h"

static const struct state_field machine_fields[] = {
	STATE_FIELD_U64(1, struct machine_state, mem_size, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U64(2, struct machine_state, low_size, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U64(3, struct machine_state, high_size, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U32(4, struct machine_state, nr_cpus, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U32(5, struct machine_state, tsc_khz),
	STATE_FIELD_U32(6, struct machine_state, ram_mode, .flags = STATE_F_REQUIRED),
	STATE_FIELD_VBYTES(7, struct machine_state, mem_path, mem_path_len),
};
const struct state_desc machine_state_desc = STATE_DESC("machine", 1, 1, machine_fields);


/* "vcpu-early/N" (live update, see snapshot.h): N of at most 4 digits,
 * no leading zero. */
static bool is_vcpu_early_section(const char *name)
{
	static const char pfx[] = "vcpu-early/";
	const char *d;

	if (strncmp(name, pfx, sizeof(pfx) - 1))
		return false;
	d = name + sizeof(pfx) - 1;
	return *d && strlen(d) <= 4 && strspn(d, "0123456789") == strlen(d) &&
	       !(d[0] == '0' && d[1]);
}

/* Every section this version knows, for stream_check_known. */
static bool snapshot_known(const char *name, void *opaque)
{
	/* Live update adds the fd registry and the serial backend's buffer. */
	if (opaque && (!strcmp(name, "cpr") || !strcmp(name, "chardev/serial0") ||
		       is_vcpu_early_section(name)))
		return true;
	return !strcmp(name, "machine") || !strncmp(name, "vcpu/", 5) || !strcmp(name, "irqchip") ||
	       !strcmp(name, "pit") || !strcmp(name, "clock") || !strcmp(name, "serial/0");
}

const struct state_desc *snapshot_desc_for(const char *section, void *opaque)
{
	(void)opaque;
	if (!strcmp(section, "machine"))
		return &machine_state_desc;
	if (!strncmp(section, "vcpu/", 5) && section[5] && strspn(section + 5, "0123456789") ==
	    strlen(section + 5))
		return &vcpu_state_desc;
	if (!strcmp(section, "irqchip"))
		return &irqchip_state_desc;
	if (!strcmp(section, "pit"))
		return &pit_state_desc;
	if (!strcmp(section, "clock"))
		return &clock_state_desc;
	if (!strcmp(section, "serial/0"))
		return &serial_state_desc;
	return NULL;
}

/* --- save ---------------------------------------------------------------- */

/* Section "vcpu-early/N": 1 if written, 0 if the early messages cannot
 * describe this vCPU (nothing written: "vcpu/N" then), <0 on error. */
static int put_vcpu_early(struct sbuf *b, const struct vcpu_state *s, int i)
{
	char name[32];
	size_t tok, n;
	int ret;

	snprintf(name, sizeof(name), "vcpu-early/%d", i);
	tok = stream_section_begin(b, name, 1, STREAM_SEC_REQUIRED);
	if ((ret = sbuf_reserve(b, VCPU_EARLY_ALL_MAX)) < 0)
		return ret;
	n = vcpu_early_encode_all(s, (uint32_t)i, b->data + b->len, b->cap - b->len);
	if (!n) {
		b->len = tok; /* take the section's start back */
		return 0;
	}
	b->len += n;
	ret = stream_section_end(b, tok);
	return ret < 0 ? ret : 1;
}

int snapshot_put_devices(struct vm *vm, struct sbuf *b, const struct vcpu_state *captured,
			 bool early_sections)
{
	struct vm_kvm_state kvm;
	struct serial_state ser;
	struct vcpu_state *vs;
	char name[32];
	int ret = 0;

	vs = captured ? NULL : malloc(sizeof(*vs));
	if (!vs && !captured)
		return -ENOMEM;
	for (int i = 0; i < vm->cpus.nr_vcpus; i++) {
		if (!captured) {
			ret = vcpu_state_save(&vm->cpus.vcpus[i], vs);
			if (ret < 0)
				goto out;
		}
		if (captured && early_sections) {
			ret = put_vcpu_early(b, &captured[i], i);
			if (ret < 0)
				goto out;
			if (ret == 1)
				continue;
		}
		snprintf(name, sizeof(name), "vcpu/%d", i);
		ret = stream_put_state(b, name, &vcpu_state_desc, captured ? &captured[i] : vs,
				       STREAM_SEC_REQUIRED);
		if (ret < 0)
			goto out;
	}
	trace_mark("vcpus-put");
	ret = vm_kvm_state_save(&vm->cpus, &kvm);
	trace_mark("vm-state-read");
	if (ret < 0)
		goto out;
	if ((ret = stream_put_state(b, "irqchip", &irqchip_state_desc, &kvm, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(b, "pit", &pit_state_desc, &kvm, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(b, "clock", &clock_state_desc, &kvm, STREAM_SEC_REQUIRED)) < 0)
		goto out;
	serial_save(vm->serial, &ser);
	ret = stream_put_state(b, "serial/0", &serial_state_desc, &ser, STREAM_SEC_REQUIRED);
out:
	free(vs);
	return ret;
}

void snapshot_machine(struct vm *vm, struct machine_state *ms, uint32_t ram_mode)
{
	memset(ms, 0, sizeof(*ms));
	ms->mem_size = vm->mem.size;
	ms->low_size = vm->mem.low_size;
	ms->high_size = vm->mem.high_size;
	ms->nr_cpus = vm->cpus.nr_vcpus;
	ms->tsc_khz = vm->tsc_khz;
	ms->ram_mode = ram_mode;
	if (vm->mem.path && strlen(vm->mem.path) <= sizeof(ms->mem_path)) {
		ms->mem_path_len = strlen(vm->mem.path);
		memcpy(ms->mem_path, vm->mem.path, ms->mem_path_len);
	}
}

static int snapshot_build_stream(struct vm *vm, const struct machine_state *ms, struct sbuf *b)
{
	int ret;

	ret = stream_writer_begin(b, CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR, CPRVM_VERSION_MICRO);
	if (ret < 0)
		return ret;
	ret = stream_put_state(b, "machine", &machine_state_desc, ms, STREAM_SEC_REQUIRED);
	if (ret < 0)
		return ret;
	ret = snapshot_put_devices(vm, b, NULL, false);
	if (ret < 0)
		return ret;
	return stream_writer_end(b);
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf = (const char *)buf + n;
		len -= n;
		off += n;
	}
	return 0;
}

static bool page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;

	for (int i = 0; i < 512; i++)
		if (w[i])
			return false;
	return true;
}

/* Guest RAM into the file at base, skipping what the memfd never allocated
 * (SEEK_DATA) and zero pages: the snapshot stays sparse. */
static int snapshot_write_ram(struct vm *vm, int fd, uint64_t base)
{
	struct guest_mem *m = &vm->mem;
	off_t pos = 0;

	while ((uint64_t)pos < m->size) {
		off_t data = lseek(m->fd, pos, SEEK_DATA), hole;
		if (data < 0) {
			if (errno == ENXIO)
				break;
			data = pos; /* no SEEK_DATA: scan everything */
			hole = m->size;
		} else {
			hole = lseek(m->fd, data, SEEK_HOLE);
			if (hole < 0 || (uint64_t)hole > m->size)
				hole = m->size;
		}
		for (off_t p = data & ~4095L; p < hole;) {
			off_t run = p;
			while (p < hole && !page_is_zero(m->host + p))
				p += 4096;
			if (p > run) {
				int ret = pwrite_all(fd, m->host + run, p - run, base + run);
				if (ret < 0)
					return ret;
			}
			while (p < hole && page_is_zero(m->host + p))
				p += 4096;
		}
		pos = hole;
	}
	return 0;
}

int snapshot_save(struct vm *vm, const char *path, bool bypass, char *err, size_t errlen)
{
	struct machine_state ms = { 0 };
	struct sbuf b = SBUF_INIT;
	uint8_t hdr[SNAP_HDR_SIZE] = { 0 };
	uint64_t ram_off = 0;
	char tmp[4200];
	uint32_t crc;
	int fd = -1, ret;

	if (bypass && !vm->mem.path) {
		snprintf(err, errlen, "x-ignore-shared needs guest RAM in a --mem-path file "
				      "(this VM's RAM is an anonymous memfd)");
		return -EINVAL;
	}
	if (vm->mem.private_map && bypass) {
		snprintf(err, errlen, "x-ignore-shared: this VM's RAM is a private copy of a snapshot");
		return -EINVAL;
	}
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, errlen, "snapshot path is too long");
		return -ENAMETOOLONG;
	}
	snapshot_machine(vm, &ms, bypass ? RAM_IN_MEM_PATH : RAM_IN_SNAPSHOT);
	if (bypass && !ms.mem_path_len) {
		snprintf(err, errlen, "--mem-path is too long to record");
		return -ENAMETOOLONG;
	}
	ret = snapshot_build_stream(vm, &ms, &b);
	if (ret < 0) {
		snprintf(err, errlen, "cannot capture VM state: %s", strerror(-ret));
		goto out;
	}
	if (!bypass)
		ram_off = (SNAP_HDR_SIZE + b.len + SNAP_RAM_ALIGN - 1) & ~(SNAP_RAM_ALIGN - 1);
	memcpy(hdr, SNAP_MAGIC, 8);
	sbuf_set_le32(hdr + 8, SNAP_VERSION);
	sbuf_set_le32(hdr + 12, bypass ? 0 : SNAP_F_RAM);
	sbuf_set_le64(hdr + 16, SNAP_HDR_SIZE);
	sbuf_set_le64(hdr + 24, b.len);
	sbuf_set_le64(hdr + 32, ram_off);
	sbuf_set_le64(hdr + 40, bypass ? 0 : vm->mem.size);
	crc = crc32c(0, hdr, 48);
	sbuf_set_le32(hdr + 48, crc);

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot create snapshot '%s': %s", tmp, strerror(-ret));
		goto out;
	}
	if ((ret = pwrite_all(fd, hdr, sizeof(hdr), 0)) < 0 ||
	    (ret = pwrite_all(fd, b.data, b.len, SNAP_HDR_SIZE)) < 0 ||
	    (!bypass && (ret = snapshot_write_ram(vm, fd, ram_off)) < 0) ||
	    (!bypass && ftruncate(fd, ram_off + vm->mem.size) < 0 && (ret = -errno) < 0)) {
		snprintf(err, errlen, "cannot write snapshot '%s': %s", tmp, strerror(-ret));
		goto out_unlink;
	}
	if (close(fd) < 0) {
		fd = -1;
		ret = -errno;
		snprintf(err, errlen, "cannot write snapshot '%s': %s", tmp, strerror(-ret));
		goto out_unlink;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot rename snapshot to '%s': %s", path, strerror(-ret));
		goto out_unlink;
	}
	ret = 0;
	goto out;
out_unlink:
	if (fd >= 0)
		close(fd);
	fd = -1;
	unlink(tmp);
out:
	if (fd >= 0)
		close(fd);
	sbuf_free(&b);
	return ret;
}

/* --- load ---------------------------------------------------------------- */

void snapshot_free(struct snapshot *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s->vcpus);
	free(s);
}

static int snap_err(char *err, size_t errlen, int ret, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static int snap_err(char *err, size_t errlen, int ret, const char *path, const char *fmt, ...)
{
	char msg[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "snapshot '%s': %s", path, msg);
	return ret;
}

int snapshot_load_stream(const uint8_t *stream, size_t slen, const struct vm_config *cfg,
			 bool cpr, struct snapshot *s, struct stream_index *idxp, char *err,
			 size_t errlen)
{
	struct stream_index idx = { 0 };
	bool have_idx = false;
	char why[400];
	int ret;

	ret = stream_parse(stream, slen, &idx, why, sizeof(why));
	if (ret < 0) {
		set_err(err, errlen, ret, "%s", why);
		goto out_free;
	}
	have_idx = true;
	ret = stream_check_known(&idx, snapshot_known, cpr ? (void *)1 : NULL, why, sizeof(why));
	if (ret < 0) {
		set_err(err, errlen, ret, "%s", why);
		goto out_free;
	}
	ret = stream_get_state(&idx, "machine", &machine_state_desc, &s->machine, why, sizeof(why));
	if (ret < 0) {
		set_err(err, errlen, ret, "%s", ret == -ENOENT ? "no 'machine' section" : why);
		goto out_free;
	}
	/* The configuration must match: a snapshot is not a different VM. */
	if (s->machine.mem_size != cfg->mem_size) {
		ret = set_err(err, errlen, -EINVAL,
			       "was taken with --memory %" PRIu64 "M, this VM has %" PRIu64 "M",
			       s->machine.mem_size >> 20, cfg->mem_size >> 20);
		goto out_free;
	}
	if (s->machine.nr_cpus != (uint32_t)cfg->nr_cpus) {
		ret = set_err(err, errlen, -EINVAL,
			       "was taken with --cpus %u, this VM has %d", s->machine.nr_cpus,
			       cfg->nr_cpus);
		goto out_free;
	}
	/* Load every section now: all validation happens before any VM exists. */
	s->nr_vcpus = s->machine.nr_cpus;
	/* Not calloc: zeroing ~72 KiB per vCPU (mostly XSAVE room) would be
	 * paid in a live update's blackout. Each vCPU is zeroed below as far
	 * as its section leaves it unset. */
	s->vcpus = malloc(s->nr_vcpus * sizeof(*s->vcpus));
	if (!s->vcpus) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (uint32_t i = 0; i < s->nr_vcpus; i++) {
		const struct stream_section *sec;
		char name[32];

		snprintf(name, sizeof(name), "vcpu-early/%u", i);
		sec = cpr && i < CPRVM_MAX_CPUS ? stream_find(&idx, name) : NULL;
		if (sec) {
			snprintf(name, sizeof(name), "vcpu/%u", i);
			if (stream_find(&idx, name)) {
				ret = set_err(err, errlen, -EINVAL,
					      "vCPU %u has both 'vcpu/%u' and 'vcpu-early/%u'", i,
					      i, i);
				goto out_free;
			}
			if (sec->version != 1) {
				ret = set_err(err, errlen, -ENOTSUP,
					      "section 'vcpu-early/%u' is version %u, this build "
					      "reads version 1", i, sec->version);
				goto out_free;
			}
			/* It sets every field but sregs2 (unused: PAE paging
			 * is never sent so) and the XSAVE and MSR room past
			 * their lengths (never read). */
			memset(&s->vcpus[i], 0, offsetof(struct vcpu_state, xsave));
			if (vcpu_early_decode_all(sec->payload, sec->len, i, &s->vcpus[i]) < 0) {
				ret = set_err(err, errlen, -EINVAL,
					      "section 'vcpu-early/%u' is malformed", i);
				goto out_free;
			}
			s->vcpu_early[i] = sec->payload;
			s->vcpu_early_len[i] = sec->len;
			continue;
		}
		snprintf(name, sizeof(name), "vcpu/%u", i);
		memset(&s->vcpus[i], 0, sizeof(s->vcpus[i])); /* the fields' defaults */
		ret = stream_get_state(&idx, name, &vcpu_state_desc, &s->vcpus[i], why, sizeof(why));
		if (ret < 0) {
			set_err(err, errlen, ret, "%s",
				 ret == -ENOENT ? "a vCPU section is missing" : why);
			goto out_free;
		}
	}
	{
		static const struct { const char *name; const struct state_desc *d; } vmsecs[] = {
			{ "irqchip", &irqchip_state_desc },
			{ "pit", &pit_state_desc },
			{ "clock", &clock_state_desc },
		};
		for (size_t i = 0; i < ARRAY_SIZE(vmsecs); i++) {
			ret = stream_get_state(&idx, vmsecs[i].name, vmsecs[i].d, &s->kvm, why,
					       sizeof(why));
			if (ret < 0) {
				set_err(err, errlen, ret, "section '%s': %s", vmsecs[i].name,
					 ret == -ENOENT ? "missing" : why);
				goto out_free;
			}
		}
	}
	ret = stream_get_state(&idx, "serial/0", &serial_state_desc, &s->serial, why, sizeof(why));
	if (ret < 0 || s->serial.rx_len > SERIAL_FIFO_LEN || s->serial.tx_len > SERIAL_FIFO_LEN) {
		set_err(err, errlen, ret < 0 ? ret : -EINVAL, "section 'serial/0': %s",
			 ret == -ENOENT ? "missing" : ret < 0 ? why : "bad FIFO length");
		ret = ret < 0 ? ret : -EINVAL;
		goto out_free;
	}
	*idxp = idx;
	return 0;
out_free:
	if (have_idx)
		stream_index_free(&idx);
	return ret;
}

int snapshot_open(const char *path, const struct vm_config *cfg, struct snapshot **out,
		  char *err, size_t errlen)
{
	struct stream_index idx = { 0 };
	struct snapshot *s = calloc(1, sizeof(*s));
	uint8_t hdr[64], *stream = NULL;
	uint64_t soff, slen, roff, rlen;
	bool have_idx = false;
	struct stat st;
	char why[400];
	int ret;

	if (!s)
		return -ENOMEM;
	s->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (s->fd < 0) {
		ret = snap_err(err, errlen, -errno, path, "%s", strerror(errno));
		goto out_free;
	}
	if (fstat(s->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = snap_err(err, errlen, -EINVAL, path, "not a regular file");
		goto out_free;
	}
	if (pread(s->fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) {
		ret = snap_err(err, errlen, -EINVAL, path, "truncated: no container header");
		goto out_free;
	}
	if (memcmp(hdr, SNAP_MAGIC, 8)) {
		ret = snap_err(err, errlen, -EINVAL, path, "not a cprvm snapshot (bad magic)");
		goto out_free;
	}
	if (sbuf_get_le32(hdr + 8) > SNAP_VERSION) {
		ret = snap_err(err, errlen, -ENOTSUP, path,
			       "container version %u is newer than this cprvm supports (%u)",
			       sbuf_get_le32(hdr + 8), SNAP_VERSION);
		goto out_free;
	}
	if (crc32c(0, hdr, 48) != sbuf_get_le32(hdr + 48)) {
		ret = snap_err(err, errlen, -EBADMSG, path, "container header checksum mismatch");
		goto out_free;
	}
	soff = sbuf_get_le64(hdr + 16);
	slen = sbuf_get_le64(hdr + 24);
	roff = sbuf_get_le64(hdr + 32);
	rlen = sbuf_get_le64(hdr + 40);
	if (soff != SNAP_HDR_SIZE || slen > SNAP_MAX_STREAM || soff + slen > (uint64_t)st.st_size) {
		ret = snap_err(err, errlen, -EINVAL, path,
			       "truncated or corrupt: stream of %" PRIu64 " bytes at %" PRIu64
			       " does not fit in the file (%lld bytes)",
			       slen, soff, (long long)st.st_size);
		goto out_free;
	}
	stream = malloc(slen ? slen : 1);
	if (!stream || pread(s->fd, stream, slen, soff) != (ssize_t)slen) {
		ret = snap_err(err, errlen, -EIO, path, "cannot read the state stream");
		goto out_free;
	}
	ret = snapshot_load_stream(stream, slen, cfg, false, s, &idx, why, sizeof(why));
	if (ret < 0) {
		snap_err(err, errlen, ret, path, "%s", why);
		goto out_free;
	}
	have_idx = true;
	if (s->machine.ram_mode == RAM_IN_SNAPSHOT) {
		if (roff % SNAP_RAM_ALIGN || !roff || rlen != cfg->mem_size ||
		    roff + rlen > (uint64_t)st.st_size || roff < soff + slen) {
			ret = snap_err(err, errlen, -EINVAL, path,
				       "truncated or corrupt: RAM area %" PRIu64 "+%" PRIu64
				       " does not fit in the file", roff, rlen);
			goto out_free;
		}
		if (cfg->mem_path) {
			ret = snap_err(err, errlen, -EINVAL, path,
				       "holds its own RAM; --mem-path cannot be used with it");
			goto out_free;
		}
		s->ram_off = roff;
	} else if (s->machine.ram_mode == RAM_IN_MEM_PATH) {
		struct stat ms;
		if (!cfg->mem_path) {
			ret = snap_err(err, errlen, -EINVAL, path,
				       "is device state only; its RAM is in '%.*s': pass --mem-path",
				       (int)s->machine.mem_path_len, s->machine.mem_path);
			goto out_free;
		}
		if (stat(cfg->mem_path, &ms) < 0) {
			ret = snap_err(err, errlen, -ENOENT, path, "its RAM file '%s' is missing: %s",
				       cfg->mem_path, strerror(errno));
			goto out_free;
		}
		if ((uint64_t)ms.st_size != cfg->mem_size) {
			ret = snap_err(err, errlen, -EINVAL, path,
				       "RAM file '%s' has %lld bytes, expected %" PRIu64,
				       cfg->mem_path, (long long)ms.st_size, cfg->mem_size);
			goto out_free;
		}
	} else {
		ret = snap_err(err, errlen, -EINVAL, path, "unknown RAM mode %u",
			       s->machine.ram_mode);
		goto out_free;
	}
	stream_index_free(&idx);
	free(stream);
	*out = s;
	return 0;
out_free:
	if (have_idx)
		stream_index_free(&idx);
	free(stream);
	snapshot_free(s);
	return ret;
}

void snapshot_vm_build(const struct snapshot *s, struct vm_build *b)
{
	*b = (struct vm_build){ .restoring = true, .ram_fd = -1 };
	if (s->machine.ram_mode == RAM_IN_SNAPSHOT) {
		b->ram_fd = s->fd;
		b->ram_off = s->ram_off;
	}
}

struct apply_job {
	const struct vcpu_state *s;
	bool same_host;
	bool done; /* the early state set all of it (early.c) */
};

static int apply_job_fn(struct vcpu *v, void *arg)
{
	const struct apply_job *j = arg;

	return j->done ? 0 : vcpu_state_apply_parked(v, j->s, j->same_host);
}

/* Each parked vCPU thread sets its own vCPU from s (vcpu_jobs_post),
 * unless the early state set all of it already; each vCPU's early state is
 * compared with s once, here. Its last early jobs must be done. */
static int apply_on_vcpu_threads(struct snapshot *s, struct vm *vm, bool same_host)
{
	struct apply_job jobs[CPRVM_MAX_CPUS];
	void *args[CPRVM_MAX_CPUS];
	bool left = false;

	if (s->nr_vcpus > CPRVM_MAX_CPUS)
		return -EINVAL;
	for (uint32_t i = 0; i < s->nr_vcpus; i++) {
		/* The early messages' bytes, if the stream has them: equal
		 * bytes, equal state (else the fields are compared). */
		bool done = (s->vcpu_early[i] &&
			     vcpu_state_early_same(&vm->cpus.vcpus[i], s->vcpu_early[i],
						   s->vcpu_early_len[i])) ||
			    vcpu_state_early_complete(&vm->cpus.vcpus[i], &s->vcpus[i]);

		jobs[i] = (struct apply_job){ &s->vcpus[i], same_host, done };
		args[i] = &jobs[i];
		left |= !jobs[i].done;
		s->nr_set_early += done;
	}
	if (!left)
		return 0;
	vcpu_jobs_post(&vm->cpus, apply_job_fn, args);
	return vcpu_jobs_wait(&vm->cpus);
}

/* A vCPU state KVM refused: name the part, and what it means. */
static void restore_refused(struct vm *vm, struct snapshot *s, uint32_t i, int ret, char *err,
			    size_t errlen)
{
	char why[320];

	if (vcpu_state_refusal(&vm->cpus.vcpus[i], &s->vcpus[i], why, sizeof(why)) > 0)
		snprintf(err, errlen, "cannot restore vCPU %u: %s: the state was saved on a CPU "
			 "that this host's KVM cannot present (an incompatible CPU model)", i, why);
	else
		snprintf(err, errlen, "cannot restore vCPU %u: %s", i, strerror(-ret));
}

int snapshot_apply(struct snapshot *s, struct vm *vm, bool same_host, bool on_vcpu_threads,
		   char *err, size_t errlen)
{
	int ret;

	/* VM-wide devices first: the LAPICs restored next deliver into the
	 * IOAPIC/PIC routing restored here. */
	ret = vm_kvm_state_load(&vm->cpus, &s->kvm, same_host);
	if (ret < 0) {
		snprintf(err, errlen, "cannot restore irqchip/PIT/clock: %s", strerror(-ret));
		return ret;
	}
	if (on_vcpu_threads && s->nr_vcpus == (uint32_t)vm->cpus.nr_vcpus) {
		/* Parked threads (live update): each restores its own vCPU
		 * (the early state's last jobs may still run: done first). */
		vcpu_jobs_wait(&vm->cpus);
		if ((ret = apply_on_vcpu_threads(s, vm, same_host)) < 0) {
			snprintf(err, errlen, "cannot restore the vCPUs: %s", strerror(-ret));
			return ret;
		}
	} else {
		for (uint32_t i = 0; i < s->nr_vcpus; i++) {
			ret = vcpu_state_load(&vm->cpus.vcpus[i], &s->vcpus[i], same_host);
			if (ret < 0) {
				restore_refused(vm, s, i, ret, err, errlen);
				return ret;
			}
		}
	}
	trace_mark("vcpus-set");
	ret = serial_load(vm->serial, &s->serial);
	if (ret < 0) {
		snprintf(err, errlen, "cannot restore the serial port: %s", strerror(-ret));
		return ret;
	}
	return 0;
}
