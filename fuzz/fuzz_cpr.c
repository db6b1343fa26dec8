/* fuzz_cpr.c — libFuzzer target for what a live update's new side reads from
 * another process before anything is built: a state message off the socket
 * (cpr_proto_recv_msg: header, fds, body) and the fd registry in it
 * (cpr_load_registry: the stream, its "cpr" section, the fd indexes).
 *
 * The input is the bytes the old side would write to the socket. Beyond "no
 * crash" (ASan/UBSan): a refused message yields no buffer; an accepted one
 * is exactly the body its header announced; an accepted registry names at
 * most CPR_MAX_FDS fds, and in transfer mode each is one that came with the
 * message, never an index past them.
 *
 * Run with --write-seeds=DIR to write a few valid messages into DIR and
 * exit; fuzz/fuzz.mk does this. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "fuzz_seeds.h"

#define FUZZ_MAX_INPUT (64u << 10) /* fits a socketpair's buffer: no writer thread */

static struct cpr_state cs;

static void fuzz_die(const char *why)
{
	fprintf(stderr, "fuzz_cpr: %s\n", why);
	abort();
}

/* The registry as cpr-transfer reads it: fd numbers are indexes into the
 * fds that came with the message (here: 100..100+n-1). */
static void check_registry(const uint8_t *buf, size_t len, int nrecv)
{
	int recv_fds[CPR_MAX_FDS];
	char why[256];

	for (int i = 0; i < CPR_MAX_FDS; i++)
		recv_fds[i] = 100 + i;
	memset(&cs, 0, sizeof(cs));
	if (cpr_load_registry(buf, len, &cs, recv_fds, nrecv, why, sizeof(why)) == 0) {
		if (cs.nr_fds > CPR_MAX_FDS)
			fuzz_die("more fds than the registry holds");
		for (uint32_t i = 0; i < cs.nr_fds; i++)
			if (cs.fds[i].fd < 100 || cs.fds[i].fd >= 100u + (uint32_t)nrecv)
				fuzz_die("an fd that did not come with the message");
		if (cs.prev_argv_len > sizeof(cs.prev_argv))
			fuzz_die("argv longer than its room");
	} else if (!why[0]) {
		fuzz_die("a refusal without a reason");
	}
	/* As cpr-exec reads it: the numbers are the fds themselves. */
	memset(&cs, 0, sizeof(cs));
	if (cpr_load_registry(buf, len, &cs, NULL, 0, why, sizeof(why)) == 0 &&
	    cs.nr_fds > CPR_MAX_FDS)
		fuzz_die("more fds than the registry holds (exec)");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2], fds[CPR_MAX_FDS], nfds = -1, ret;
	struct cpr_hdr h;
	uint8_t *buf = (uint8_t *)1;
	size_t len = 0;

	if (size > FUZZ_MAX_INPUT || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 0;
	if (size && write(sv[0], data, size) != (ssize_t)size)
		fuzz_die("cannot write the input to the socket");
	shutdown(sv[0], SHUT_WR); /* whatever is missing never comes */
	ret = cpr_proto_recv_msg(sv[1], &buf, &len, fds, &nfds);
	close(sv[0]);
	close(sv[1]);
	if (nfds != 0)
		fuzz_die("fds out of nowhere");
	if (ret < 0) {
		if (buf)
			fuzz_die("a refused message left a buffer");
		return 0;
	}
	memcpy(&h, data, sizeof(h));
	if (h.magic != CPR_MAGIC || h.len != len || len == 0 || len > CPR_PROTO_MAX_LEN ||
	    size < sizeof(h) + len || memcmp(buf, data + sizeof(h), len))
		fuzz_die("an accepted message is not the body its header announced");
	check_registry(buf, len, (int)(h.nr_fds % (CPR_MAX_FDS + 1)));
	free(buf);
	return 0;
}

/* ---- seeds ---------------------------------------------------------------- */

static void seed_file(const char *dir, const char *name, const struct sbuf *body)
{
	struct cpr_hdr h = { .magic = CPR_MAGIC, .nr_fds = 4, .len = body->len };
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(&h, sizeof(h), 1, f) != 1 ||
	    fwrite(body->data, 1, body->len, f) != body->len || fclose(f))
		fuzz_die("cannot write a seed");
}

static void seed_write(const char *dir)
{
	static struct cpr_state s;
	struct sbuf b = SBUF_INIT;

	cpr_add_fd(&s, CPR_FD_RAM, 0);
	cpr_add_fd(&s, CPR_FD_QMP, 1);
	cpr_add_fd(&s, CPR_FD_SERIAL_LISTEN, 2);
	cpr_add_fd(&s, CPR_FD_VCPU_EARLY, 3);
	s.caps = CPR_CAP_EARLY_SECTIONS;
	s.run_tid_len = 2 * sizeof(s.run_tid[0]);
	s.run_tid[0] = 1234;
	s.run_tid[1] = 1235;
	memcpy(s.prev_argv, "cprvm\0--qmp\0/run/vm.qmp", 24);
	s.prev_argv_len = 24;
	stream_writer_begin(&b, 0, 1, 0);
	stream_put_state(&b, "cpr", &cpr_state_desc, &s, STREAM_SEC_REQUIRED);
	stream_writer_end(&b);
	if (b.err)
		fuzz_die("cannot build a seed");
	seed_file(dir, "phase1", &b);
	sbuf_free(&b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_seed_option(*argc, *argv, seed_write);
	return 0;
}
