/* test_cpr_proto.c — the live-update wire protocol (cpr/proto.c), message by
 * message over a socketpair: the good path, each refusal, time-outs, peers
 * that vanish, and truncated or hostile messages. No KVM. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "cpr/proto.h"

static int sv[2];

static int setup(void **state)
{
	(void)state;
	return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
}

static int teardown(void **state)
{
	(void)state;
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	return 0;
}

static void sbuf_of(struct sbuf *b, const char *text)
{
	*b = (struct sbuf)SBUF_INIT;
	assert_int_equal(sbuf_put(b, text, strlen(text)), 0);
}

/* Writes raw bytes as a (possibly malformed) message would arrive. */
static void put_raw_hdr(int sock, uint32_t magic, uint64_t len)
{
	struct cpr_hdr h = { .magic = magic, .len = len };

	assert_int_equal(send(sock, &h, sizeof(h), 0), sizeof(h));
}

static void close_fds(const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

static void test_state_message_with_fds(void **state)
{
	struct sbuf b;
	int p[2], fds[CPR_MAX_FDS], nfds = -1;
	uint8_t *buf;
	size_t len = 0;
	char c = 0;

	(void)state;
	assert_int_equal(pipe(p), 0);
	sbuf_of(&b, "the state stream");
	assert_int_equal(cpr_proto_send_msg(sv[0], &b, p, 2), 0);
	assert_int_equal(cpr_proto_recv_msg(sv[1], &buf, &len, fds, &nfds), 0);
	assert_int_equal(len, b.len);
	assert_memory_equal(buf, b.data, len);
	assert_int_equal(nfds, 2);
	/* The fds are the pipe's ends, close-on-exec on this side. */
	assert_true(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);
	assert_int_equal(write(fds[1], "x", 1), 1);
	assert_int_equal(read(p[0], &c, 1), 1);
	assert_int_equal(c, 'x');
	close_fds(fds, nfds);
	close_fds(p, 2);
	free(buf);
	sbuf_free(&b);
}

struct big_reader {
	int sock, ret, nfds;
	uint8_t *buf;
	size_t len;
	int fds[CPR_MAX_FDS];
};

static void *read_big(void *p)
{
	struct big_reader *r = p;

	r->ret = cpr_proto_recv_msg(r->sock, &r->buf, &r->len, r->fds, &r->nfds);
	return NULL;
}

/* Larger than a socket buffer: the sender goes on where sendmsg() stopped. */
static void test_large_message(void **state)
{
	struct sbuf b = SBUF_INIT;
	struct big_reader r = { .sock = sv[1] };
	pthread_t t;

	(void)state;
	assert_int_equal(sbuf_reserve(&b, 8u << 20), 0);
	for (size_t i = 0; i < (8u << 20); i++)
		b.data[i] = (uint8_t)(i * 7 + (i >> 12));
	b.len = 8u << 20;
	assert_int_equal(pthread_create(&t, NULL, read_big, &r), 0);
	assert_int_equal(cpr_proto_send_msg(sv[0], &b, NULL, 0), 0);
	pthread_join(t, NULL);
	assert_int_equal(r.ret, 0);
	assert_int_equal(r.nfds, 0);
	assert_int_equal(r.len, b.len);
	assert_memory_equal(r.buf, b.data, b.len);
	free(r.buf);
	sbuf_free(&b);
}

static void test_one_byte_messages(void **state)
{
	const enum cpr_msg all[] = { CPR_MSG_READY, CPR_MSG_READY_EARLY, CPR_MSG_RUNNING,
				     CPR_MSG_GO, CPR_MSG_KEPT, CPR_MSG_HELLO, CPR_MSG_ABORT };
	char why[128], c;

	(void)state;
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		assert_int_equal(cpr_proto_send(sv[0], all[i]), 0);
		assert_int_equal(cpr_proto_wait(sv[1], 1000, &c, why, sizeof(why)), 0);
		assert_int_equal(c, (char)all[i]);
	}
}

static void test_refusal_carries_reason(void **state)
{
	char why[128], c;

	(void)state;
	cpr_proto_refuse(sv[1], "the VM has --memory 64M, this process 128M");
	assert_int_equal(cpr_proto_wait(sv[0], 1000, &c, why, sizeof(why)), 0);
	assert_int_equal(c, CPR_MSG_REFUSED);
	cpr_proto_recv_reason(sv[0], why, sizeof(why));
	assert_string_equal(why, "the VM has --memory 64M, this process 128M");
	/* Nothing left over: the next message is read whole. */
	assert_int_equal(cpr_proto_send(sv[1], CPR_MSG_READY), 0);
	assert_int_equal(cpr_proto_wait(sv[0], 1000, &c, why, sizeof(why)), 0);
	assert_int_equal(c, CPR_MSG_READY);
}

static void test_refusal_long_or_empty_reason(void **state)
{
	char huge[2000], why[128], small[16], rest[CPR_PROTO_REASON_MAX], c;

	(void)state;
	memset(huge, 'a', sizeof(huge) - 1);
	huge[sizeof(huge) - 1] = 0;
	cpr_proto_refuse(sv[1], huge);
	assert_int_equal(cpr_proto_wait(sv[0], 1000, &c, why, sizeof(why)), 0);
	cpr_proto_recv_reason(sv[0], small, sizeof(small)); /* cut to the room given */
	assert_int_equal(strlen(small), sizeof(small) - 1);

	/* A peer that refuses without a word, then goes. */
	c = CPR_MSG_REFUSED;
	assert_int_equal(send(sv[1], &c, 1, 0), 1);
	close(sv[1]);
	sv[1] = -1;
	/* The rest of the long reason first (it was cut to fit a message),
	 * then the refusal. */
	cpr_proto_recv_reason(sv[0], rest, sizeof(rest));
	assert_int_equal(strlen(small) + strlen(rest), CPR_PROTO_REASON_MAX - 2);
	assert_int_equal(cpr_proto_wait(sv[0], 1000, &c, why, sizeof(why)), 0);
	assert_int_equal(c, CPR_MSG_REFUSED);
	cpr_proto_recv_reason(sv[0], why, sizeof(why));
	assert_string_equal(why, "the new process refused the state");
}

static void test_wait_times_out(void **state)
{
	char why[128], c;

	(void)state;
	assert_int_equal(cpr_proto_wait(sv[0], 50, &c, why, sizeof(why)), -ETIMEDOUT);
	assert_string_equal(why, "no answer within 50 ms");
}

static void test_peer_gone(void **state)
{
	struct sbuf b;
	char why[128], c;

	(void)state;
	close(sv[1]);
	sv[1] = -1;
	assert_int_equal(cpr_proto_wait(sv[0], 1000, &c, why, sizeof(why)), -EPIPE);
	assert_string_equal(why, "the other process is gone");
	sbuf_of(&b, "state");
	assert_int_equal(cpr_proto_send_msg(sv[0], &b, NULL, 0), -EPIPE);
	assert_int_equal(cpr_proto_send(sv[0], CPR_MSG_GO), -EPIPE);
	sbuf_free(&b);
}

static void expect_refused(uint32_t magic, uint64_t len, const void *body, size_t body_len,
			   int want)
{
	int fds[CPR_MAX_FDS], nfds = -1;
	uint8_t *buf = (uint8_t *)"untouched";
	size_t got = 0;

	put_raw_hdr(sv[0], magic, len);
	if (body_len)
		assert_int_equal(send(sv[0], body, body_len, 0), (ssize_t)body_len);
	shutdown(sv[0], SHUT_WR); /* whatever is missing never comes */
	assert_int_equal(cpr_proto_recv_msg(sv[1], &buf, &got, fds, &nfds), want);
	assert_null(buf);
	assert_int_equal(nfds, 0);
}

static void test_truncated_body(void **state)
{
	(void)state;
	expect_refused(CPR_MAGIC, 100, "only ten b", 10, -EPROTO);
}

static void test_bad_magic(void **state)
{
	(void)state;
	expect_refused(0x12345678, 4, "abcd", 4, -EPROTO);
}

static void test_empty_body(void **state)
{
	(void)state;
	expect_refused(CPR_MAGIC, 0, NULL, 0, -EPROTO);
}

/* A length beyond the limit is refused before anything is allocated. */
static void test_oversized_body(void **state)
{
	(void)state;
	expect_refused(CPR_MAGIC, (uint64_t)CPR_PROTO_MAX_LEN + 1, NULL, 0, -EPROTO);
	teardown(state);
	setup(state);
	expect_refused(CPR_MAGIC, UINT64_MAX, NULL, 0, -EPROTO);
}

static void test_truncated_header(void **state)
{
	int fds[CPR_MAX_FDS], nfds;
	uint8_t *buf;
	size_t len;

	(void)state;
	assert_int_equal(send(sv[0], "CPRT", 4, 0), 4);
	close(sv[0]);
	sv[0] = -1;
	assert_int_equal(cpr_proto_recv_msg(sv[1], &buf, &len, fds, &nfds), -EPROTO);
}

static void test_guest_over(void **state)
{
	int fds[CPR_MAX_FDS], nfds;
	uint8_t *buf;
	size_t len;

	(void)state;
	assert_int_equal(cpr_proto_send_over(sv[0]), 0);
	assert_int_equal(cpr_proto_recv_msg(sv[1], &buf, &len, fds, &nfds), -ESHUTDOWN);
}

/* More fds than a message may carry: refused, and every fd that did come
 * is the caller's to close (none beyond the array). */
static void test_too_many_fds(void **state)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 40)];
		struct cmsghdr align;
	} ctl;
	struct cpr_hdr h = { .magic = CPR_MAGIC, .nr_fds = 40, .len = 1 };
	char body = 'x';
	struct iovec iov[2] = { { &h, sizeof(h) }, { &body, 1 } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = ctl.buf,
			      .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	int many[40], fds[CPR_MAX_FDS], nfds = -1;
	uint8_t *buf;
	size_t len;

	(void)state;
	for (int i = 0; i < 40; i++)
		many[i] = sv[0];
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(many));
	memcpy(CMSG_DATA(cm), many, sizeof(many));
	assert_int_equal(sendmsg(sv[0], &msg, 0), (ssize_t)(sizeof(h) + 1));
	assert_int_equal(cpr_proto_recv_msg(sv[1], &buf, &len, fds, &nfds), -EPROTO);
	assert_in_range(nfds, 0, CPR_MAX_FDS);
	close_fds(fds, nfds);
	/* And a sender never puts more than CPR_MAX_FDS in one message. */
	struct sbuf b;
	sbuf_of(&b, "x");
	assert_int_equal(cpr_proto_send_msg(sv[0], &b, many, CPR_MAX_FDS + 1), -EINVAL);
	sbuf_free(&b);
}

/* Fencing a peer process that never answers: it is killed, and what it
 * said before is still read. A socketpair's own process is never fenced. */
static pid_t peer_that_says(const char *path, char what)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int s = socket(AF_UNIX, SOCK_STREAM, 0);

		strcpy(sa.sun_path, path);
		if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			_exit(1);
		if (what && send(s, &what, 1, 0) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	return pid;
}

/* A peer process connected to this one over a unix socket (SO_PEERCRED
 * names it, unlike a socketpair's), having said what (0: nothing). */
static int connected_peer(char what, pid_t *pid)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), s;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/cprvm-test-fence-%d", (int)getpid());
	unlink(sa.sun_path);
	assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(l, 1), 0);
	*pid = peer_that_says(sa.sun_path, what);
	s = accept(l, NULL, NULL);
	assert_true(s >= 0);
	close(l);
	unlink(sa.sun_path);
	return s;
}

static void test_fence_kills_silent_peer(void **state)
{
	char c = 0;
	int s, status;
	pid_t pid;

	(void)state;
	s = connected_peer(0, &pid);
	assert_int_equal(cpr_proto_fence(s, &c), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	close(s);
}

static void test_fence_reads_late_answer(void **state)
{
	char c = 0;
	int s;
	pid_t pid;

	(void)state;
	s = connected_peer(CPR_MSG_RUNNING, &pid);
	/* The peer answered, but too late for the wait: the fence finds it. */
	for (int i = 0; i < 500 && recv(s, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 1; i++)
		usleep(10000);
	assert_int_equal(cpr_proto_fence(s, &c), 1);
	assert_int_equal(c, CPR_MSG_RUNNING);
	waitpid(pid, NULL, 0);
	close(s);
}

static void test_fence_never_self(void **state)
{
	char c;

	(void)state;
	assert_int_equal(cpr_proto_fence(sv[0], &c), -ESRCH);
}

static void test_timeout_knob(void **state)
{
	(void)state;
	unsetenv("CPRVM_TEST_XFER_TIMEOUT_MS");
	assert_int_equal(cpr_proto_timeout_ms(), CPR_PROTO_TIMEOUT_MS);
	setenv("CPRVM_TEST_XFER_TIMEOUT_MS", "2000", 1);
	assert_int_equal(cpr_proto_timeout_ms(), 2000);
	setenv("CPRVM_TEST_XFER_TIMEOUT_MS", "-5", 1);
	assert_int_equal(cpr_proto_timeout_ms(), CPR_PROTO_TIMEOUT_MS);
	unsetenv("CPRVM_TEST_XFER_TIMEOUT_MS");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(test_state_message_with_fds),
		T(test_large_message),
		T(test_one_byte_messages),
		T(test_refusal_carries_reason),
		T(test_refusal_long_or_empty_reason),
		T(test_wait_times_out),
		T(test_peer_gone),
		T(test_truncated_body),
		T(test_bad_magic),
		T(test_empty_body),
		T(test_oversized_body),
		T(test_truncated_header),
		T(test_guest_over),
		T(test_too_many_fds),
		T(test_fence_kills_silent_peer),
		T(test_fence_reads_late_answer),
		T(test_fence_never_self),
		T(test_timeout_knob),
#undef T
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
