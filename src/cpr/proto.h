/* proto.h — the live-update wire protocol: what an old and a new cprvm say
 * to each other over a connected unix stream socket. Knows the messages and
 * their framing, nothing of VMs: transfer_in.c and transfer_out.c run the two
 * sides, exec.c the keeper's hello.
 *
 * Two kinds of message:
 *   - a state message: struct cpr_hdr (magic, fd count, body length), the
 *     fds as SCM_RIGHTS with the header's first byte, then the body (a state
 *     stream, state/stream.h). A body is 1 byte to CPR_PROTO_MAX_LEN.
 *   - a one-byte message, enum cpr_msg; CPR_MSG_REFUSED is followed by the
 *     reason, NUL-terminated.
 *
 * The exchange (cpr-transfer; a live cpr-exec runs the same between the
 * keeper in the old image's address space and the new image):
 *   old -> new  phase 1 (the guest still runs): a state message with the
 *               fds, "machine" and "cpr" (the fd registry, registry.h)
 *   new -> old  READY or READY_EARLY (VM built over those fds), or REFUSED
 *   old -> new  (the guest stopped) early vCPU state on a channel of its own
 *               (early.c), then phase 2: a state message with the whole
 *               state; or the header alone with CPR_OVER_MAGIC if the guest
 *               powered off or crashed meanwhile
 *   new -> old  RUNNING (state applied: the guest is the new side's from
 *               here on), or REFUSED (the old side resumes the guest)
 *   old -> new  GO
 *   new -> old  KEPT (the guest runs there; the old side may exit)
 *
 * Who may run the guest: the new side only after sending RUNNING; the old
 * side after REFUSED, or on EOF before RUNNING (a message sent before the
 * new side died is still read first), never after RUNNING. */
#ifndef CPRVM_CPR_PROTO_H
#define CPRVM_CPR_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "state/sbuf.h"

#define CPR_MAX_FDS 16
#define CPR_MAGIC 0x54525043u      /* "CPRT": a state message */
#define CPR_OVER_MAGIC 0x5245564fu /* "OVER": the guest ended; no phase 2 */
#define CPR_PROTO_MAX_LEN (256u << 20)
#define CPR_PROTO_TIMEOUT_MS 10000
/* The longest reason a refusal carries, NUL included. */
#define CPR_PROTO_REASON_MAX 512

struct cpr_hdr {
	uint32_t magic;
	uint32_t nr_fds;
	uint64_t len;
};

enum cpr_msg {
	CPR_MSG_READY = 'P',       /* new: VM built, ready for phase 2 */
	CPR_MSG_READY_EARLY = 'Q', /* new: the same, and phase 2 may carry the
				    * vCPUs as early sections (CPR_CAP_*) */
	CPR_MSG_REFUSED = 'F',     /* new: refused; a reason follows */
	CPR_MSG_RUNNING = 'R',     /* new: state applied, the guest is mine */
	CPR_MSG_GO = 'G',          /* old: seen RUNNING (older builds wait) */
	CPR_MSG_KEPT = 'K',        /* new: the guest runs here; old may exit */
	CPR_MSG_HELLO = 'H',       /* new image to the cpr-exec keeper */
	CPR_MSG_ABORT = 'A',       /* old image to its keeper: the exec failed */
};

/* The answer deadline: CPR_PROTO_TIMEOUT_MS, or the tests' shorter one
 * (CPRVM_TEST_XFER_TIMEOUT_MS). */
int cpr_proto_timeout_ms(void);

/* One-byte messages. send: 0, or -EPIPE if the peer is gone. wait: 0 with
 * *msg the byte read (any byte: the caller checks what it expects), or
 * -ETIMEDOUT after timeout_ms (<0: forever), -EPIPE at EOF; why says which. */
int cpr_proto_send(int sock, enum cpr_msg msg);
int cpr_proto_wait(int sock, int timeout_ms, char *msg, char *why, size_t whylen);

/* REFUSED and its reason; after a REFUSED read by cpr_proto_wait, the
 * reason (a default one if the peer gave none). */
void cpr_proto_refuse(int sock, const char *why);
void cpr_proto_recv_reason(int sock, char *why, size_t whylen);

/* State messages. send: 0 or -EPIPE. recv: 0 with *buf (malloc'd, *len
 * bytes); -ESHUTDOWN for CPR_OVER_MAGIC; -EPROTO for anything malformed
 * (bad magic, empty or oversized body, truncated, fds cut off), -ENOMEM.
 * Whatever fds came are in fds[0..*nfds) either way: the caller closes
 * them. */
int cpr_proto_send_msg(int sock, const struct sbuf *b, const int *fds, int nfds);
int cpr_proto_send_over(int sock);
int cpr_proto_recv_msg(int sock, uint8_t **buf, size_t *len, int *fds, int *nfds);

/* The old side's answer to a peer that does not answer in phase 2: kill it
 * (SO_PEERCRED, pidfd) and wait until it is gone. 1 with *msg what it had
 * sent (RUNNING: it had taken the guest), 0 gone without a word, <0 it
 * could not be killed and may still run. */
int cpr_proto_fence(int sock, char *msg);

#endif
