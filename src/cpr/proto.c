/* proto.c — the live-update wire protocol, see proto.h. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpr/proto.h"

int cpr_proto_timeout_ms(void)
{
	const char *t = getenv("CPRVM_TEST_XFER_TIMEOUT_MS"); /* tests: shorter */

	return t && atoi(t) > 0 ? atoi(t) : CPR_PROTO_TIMEOUT_MS;
}

int cpr_proto_send(int sock, enum cpr_msg msg)
{
	char c = (char)msg;

	return send(sock, &c, 1, MSG_NOSIGNAL) == 1 ? 0 : -EPIPE;
}

int cpr_proto_wait(int sock, int timeout_ms, char *msg, char *why, size_t whylen)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, timeout_ms) <= 0) {
		snprintf(why, whylen, "no answer within %d ms", timeout_ms);
		return -ETIMEDOUT;
	}
	n = recv(sock, msg, 1, 0);
	if (n <= 0) {
		snprintf(why, whylen, "the other process is gone");
		return -EPIPE;
	}
	return 0;
}

void cpr_proto_refuse(int sock, const char *why)
{
	char msg[CPR_PROTO_REASON_MAX];
	int n = snprintf(msg, sizeof(msg), "%c%s", CPR_MSG_REFUSED, why);

	send(sock, msg, (size_t)(n < (int)sizeof(msg) ? n + 1 : (int)sizeof(msg)), MSG_NOSIGNAL);
}

void cpr_proto_recv_reason(int sock, char *why, size_t whylen)
{
	size_t n = 0;

	while (n < whylen - 1 && recv(sock, why + n, 1, 0) == 1 && why[n])
		n++;
	why[n] = 0;
	if (!n)
		snprintf(why, whylen, "the new process refused the state");
}

static int recv_all(int sock, void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = recv(sock, (char *)buf + off, len - off, 0);
		if (n <= 0)
			return n < 0 ? -errno : -EPIPE;
		off += n;
	}
	return 0;
}

/* The fds of a received message, at most CPR_MAX_FDS (more: MSG_CTRUNC). */
static void take_fds(struct msghdr *msg, int *fds, int *nfds)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

		if (k > CPR_MAX_FDS - *nfds)
			k = CPR_MAX_FDS - *nfds;
		memcpy(fds + *nfds, CMSG_DATA(cm), k * sizeof(int));
		*nfds += k;
	}
}

int cpr_proto_recv_msg(int sock, uint8_t **buf, size_t *len, int *fds, int *nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * CPR_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct cpr_hdr h;
	struct iovec iov = { .iov_base = &h, .iov_len = sizeof(h) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			      .msg_controllen = sizeof(ctl.buf) };
	ssize_t n;

	*nfds = 0;
	*buf = NULL;
	n = recvmsg(sock, &msg, MSG_WAITALL | MSG_CMSG_CLOEXEC);
	if (n > 0)
		take_fds(&msg, fds, nfds);
	if (n == sizeof(h) && h.magic == CPR_OVER_MAGIC)
		return -ESHUTDOWN;
	if (n != sizeof(h) || h.magic != CPR_MAGIC || h.len == 0 || h.len > CPR_PROTO_MAX_LEN ||
	    (msg.msg_flags & MSG_CTRUNC))
		return -EPROTO;
	*buf = malloc(h.len);
	if (!*buf)
		return -ENOMEM;
	if (recv_all(sock, *buf, h.len) < 0) {
		free(*buf);
		*buf = NULL;
		return -EPROTO;
	}
	*len = h.len;
	return 0;
}

int cpr_proto_send_msg(int sock, const struct sbuf *b, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * CPR_MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct cpr_hdr h = { .magic = CPR_MAGIC, .nr_fds = nfds, .len = b->len };
	/* Header and body in one call: the reader, which polls for the
	 * header, then finds the body there too rather than sleeping in
	 * recv() until a second send() (a wakeup on another CPU). */
	struct iovec iov[2] = { { .iov_base = &h, .iov_len = sizeof(h) },
				{ .iov_base = b->data, .iov_len = b->len } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
	size_t left = sizeof(h) + b->len;
	ssize_t n;

	if (nfds < 0 || nfds > CPR_MAX_FDS)
		return -EINVAL;
	if (nfds) {
		struct cmsghdr *cm;
		msg.msg_control = ctl.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	if (n < (ssize_t)sizeof(h))
		return -EPIPE;
	/* A stream socket may take less (the fds went with the first byte). */
	for (left -= (size_t)n; left;) {
		n = send(sock, b->data + (b->len - left), left, MSG_NOSIGNAL);
		if (n <= 0)
			return -EPIPE;
		left -= (size_t)n;
	}
	return 0;
}

int cpr_proto_send_over(int sock)
{
	struct cpr_hdr over = { .magic = CPR_OVER_MAGIC };

	return send(sock, &over, sizeof(over), MSG_NOSIGNAL) == sizeof(over) ? 0 : -EPIPE;
}

int cpr_proto_fence(int sock, char *msg)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	struct pollfd p = { .events = POLLIN };
	int r;

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.pid <= 0)
		return -ESRCH;
	/* Never this process: a socketpair's credentials are its creator's. */
	if (cr.pid == getpid())
		return -ESRCH;
	p.fd = syscall(SYS_pidfd_open, cr.pid, 0);
	if (p.fd < 0)
		return errno == ESRCH ? (recv(sock, msg, 1, MSG_DONTWAIT) == 1) : -errno;
	syscall(SYS_pidfd_send_signal, p.fd, SIGKILL, NULL, 0);
	r = poll(&p, 1, CPR_PROTO_TIMEOUT_MS); /* readable once it has exited */
	close(p.fd);
	if (r <= 0)
		return -ETIMEDOUT;
	return recv(sock, msg, 1, MSG_DONTWAIT) == 1;
}
