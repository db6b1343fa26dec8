/* chardev.h — host side of a serial port: stdio, none, file, pty, unix socket.
 *
 * Owns: the backend fds, an output buffer, the connection state of unix/pty
 * clients. Lossless in both directions: output that cannot be written yet is
 * buffered, and when the buffer is full chardev_write() accepts less, so the
 * UART reports its transmitter busy (back-pressure to the guest); input is
 * read only when the device has room (chardev_set_input()), the rest waits in
 * the kernel. Output with no client connected (unix, pty) is dropped, as on a
 * real unplugged line.
 * Threading: chardev_write/read/set_input from vCPU threads (under the
 * device's lock); connection handling on the main loop. The device's callbacks
 * are called without the chardev's lock held. */
#ifndef CPRVM_CHARDEV_H
#define CPRVM_CHARDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/loop.h"

#define CHARDEV_OUTBUF_MAX (64 * 1024)

enum chardev_kind { CHARDEV_STDIO, CHARDEV_NONE, CHARDEV_FILE, CHARDEV_PTY, CHARDEV_UNIX };

/* Which backend, and its path where it has one. */
struct chardev_spec {
	enum chardev_kind kind;
	char path[108]; /* file:PATH, unix:PATH (fits sockaddr_un.sun_path) */
};

struct chardev;

struct chardev_client_ops {
	void (*readable)(void *opaque); /* input is waiting: call chardev_read */
	void (*writable)(void *opaque); /* output room freed: retry pending output */
};

int chardev_open(struct chardev **out, const struct chardev_spec *spec, struct loop *loop,
		 char *err, size_t errlen);
void chardev_close(struct chardev *c);
void chardev_set_client(struct chardev *c, const struct chardev_client_ops *ops, void *opaque);
/* Returns how many bytes were accepted (0 when the output buffer is full). */
size_t chardev_write(struct chardev *c, const void *buf, size_t len);
/* Non-blocking: returns bytes read, 0 if nothing is waiting. */
size_t chardev_read(struct chardev *c, void *buf, size_t len);
/* Whether to watch for input (device has room). */
void chardev_set_input(struct chardev *c, bool on);
/* Live update: what carries the backend's connection over to the next cprvm
 * process: its fds (-1 when none) and the bytes accepted but not yet written.
 * Input still in the kernel's buffers travels with the fds themselves. */
struct chardev_handover {
	int listen_fd, conn_fd;
	uint8_t connected;
	uint32_t pending_len;
	uint8_t pending[CHARDEV_OUTBUF_MAX];
};

struct state_desc;
extern const struct state_desc chardev_handover_desc;

/* While frozen the chardev neither reads nor writes its fds (their bytes
 * are being handed over); writes are refused, so the UART holds them. */
void chardev_set_frozen(struct chardev *c, bool frozen);
/* Fills h; the chardev must be quiet (vCPUs parked, frozen). */
void chardev_export(struct chardev *c, struct chardev_handover *h);
/* Like chardev_open, but over the fds of h (stdio and none open anew). */
int chardev_adopt(struct chardev **out, const struct chardev_spec *spec,
		  const struct chardev_handover *h, struct loop *loop, char *err, size_t errlen);
/* The rest of a hand-over whose fds were adopted early (live update: before
 * the stop, with h's state not known yet): whether a pty had a reader, and
 * the output not yet written, from the final h. */
void chardev_adopt_finish(struct chardev *c, const struct chardev_handover *h);

/* Whether closing c leaves its socket file. A live update's new side
 * adopts the old side's sockets, whose files stay the old side's until the
 * take-over commits (chardev_adopt keeps them; the new side then calls
 * keep false); the old side keeps them once it has handed them over. */
void chardev_keep_path(struct chardev *c, bool keep);

/* Human-readable description ("unix:/path", "pty:/dev/pts/3"). */
const char *chardev_describe(struct chardev *c);

#endif
