/* chardev.c — see chardev.h.
 *
 * Each backend has an input fd (in_fd) and an output fd (out_fd), -1 when it
 * has none or no client is connected. unix: a listening socket; one client at
 * a time, later ones wait in the backlog until the current one leaves. pty: the
 * master; while no slave is open the master reports HUP, which we poll for on
 * a timer instead of spinning on it. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include "dev/chardev.h"
#include "lib/log.h"
#include "lib/sock.h"
#include "state/state.h"

#define PTY_POLL_NS (50 * 1000 * 1000)

struct chardev {
	struct chardev_spec spec;
	struct loop *loop;
	pthread_mutex_t lock;
	int listen_fd; /* unix */
	int conn_fd;   /* unix client, pty master, file, stdin/stdout */
	int in_fd, out_fd;
	int timer_fd;  /* pty: polls for a slave to open */
	bool connected;
	bool input_on;
	bool watching; /* in_fd/out_fd registered with the loop */
	bool eof;      /* peer closed its sending side; drain then drop */
	bool frozen;   /* being handed over: hands off the fds */
	char *outbuf;
	size_t outlen;
	const struct chardev_client_ops *ops;
	void *opaque;
	char desc[160];
	bool tty_saved;
	struct termios saved_tio;
	/* Closing leaves the socket file (unix:PATH) in place: it is another
	 * process's (chardev_keep_path). */
	bool keep_path;
};

static void chardev_update_watch(struct chardev *c);

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* --- connection state (main thread) ---------------------------------------- */

static void chardev_notify(struct chardev *c, bool readable, bool writable)
{
	if (!c->ops)
		return;
	if (readable && c->ops->readable)
		c->ops->readable(c->opaque);
	if (writable && c->ops->writable)
		c->ops->writable(c->opaque);
}

static void chardev_fd_event(int fd, uint32_t events, void *opaque);

static void chardev_disconnect_locked(struct chardev *c)
{
	if (c->watching && c->conn_fd >= 0)
		loop_del_fd(c->loop, c->conn_fd);
	c->watching = false;
	if (c->spec.kind == CHARDEV_UNIX) {
		close(c->conn_fd);
		c->conn_fd = -1;
		loop_mod_fd(c->loop, c->listen_fd, EPOLLIN);
		pr_info("serial: client disconnected from %s", c->spec.path);
	} else if (c->spec.kind == CHARDEV_PTY) {
		struct itimerspec its = { .it_interval.tv_nsec = PTY_POLL_NS,
					  .it_value.tv_nsec = PTY_POLL_NS };
		timerfd_settime(c->timer_fd, 0, &its, NULL);
	}
	c->in_fd = c->out_fd = -1;
	c->connected = false;
	c->eof = false;
	c->outlen = 0; /* nobody to deliver to: a real line drops it too */
}

static void chardev_connect_locked(struct chardev *c, int fd)
{
	c->conn_fd = fd;
	c->in_fd = c->out_fd = fd;
	c->connected = true;
	c->eof = false;
	chardev_update_watch(c);
}

/* Disconnect decided on a vCPU thread (EOF seen by chardev_read) runs here. */
static void chardev_deferred_disconnect(void *opaque)
{
	struct chardev *c = opaque;

	pthread_mutex_lock(&c->lock);
	if (c->connected && c->eof)
		chardev_disconnect_locked(c);
	pthread_mutex_unlock(&c->lock);
}

static void chardev_update_watch(struct chardev *c)
{
	uint32_t ev = 0;
	int fd = c->conn_fd;

	if (fd < 0 || !c->connected)
		return;
	if (c->input_on && c->in_fd >= 0 && !c->eof)
		ev |= EPOLLIN;
	if (c->outlen)
		ev |= EPOLLOUT;
	if (c->spec.kind == CHARDEV_UNIX && !c->eof)
		ev |= EPOLLRDHUP;
	if (c->spec.kind == CHARDEV_STDIO || c->spec.kind == CHARDEV_FILE) {
		/* in and out are different fds: only stdin is watched here;
		 * stdout and files are written synchronously. */
		fd = c->in_fd;
		if (fd < 0)
			return;
		ev &= ~(uint32_t)EPOLLOUT;
	}
	if (!c->watching) {
		if (loop_add_fd(c->loop, fd, ev, chardev_fd_event, c) == 0)
			c->watching = true;
	} else {
		loop_mod_fd(c->loop, fd, ev);
	}
}

static bool chardev_flush_locked(struct chardev *c)
{
	bool freed = false;

	while (c->outlen && c->out_fd >= 0) {
		ssize_t n = write(c->out_fd, c->outbuf, c->outlen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				c->outlen = 0; /* peer gone: the HUP handler cleans up */
			break;
		}
		memmove(c->outbuf, c->outbuf + n, c->outlen - n);
		c->outlen -= n;
		freed = true;
	}
	return freed;
}

static void chardev_fd_event(int fd, uint32_t events, void *opaque)
{
	struct chardev *c = opaque;
	bool readable = false, writable = false;

	(void)fd;
	pthread_mutex_lock(&c->lock);
	if (!c->connected || c->frozen) {
		pthread_mutex_unlock(&c->lock);
		return;
	}
	if (events & EPOLLOUT)
		writable = chardev_flush_locked(c);
	if (events & EPOLLIN)
		readable = true;
	if (events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
		if (c->spec.kind == CHARDEV_PTY && (events & EPOLLHUP)) {
			/* Slave closed. Input already in the master is lost
			 * with the slave's close, as on any tty. */
			chardev_disconnect_locked(c);
			readable = writable = false;
		} else if (c->spec.kind == CHARDEV_UNIX) {
			/* Deliver what the client sent before it closed; the
			 * final read() of 0 completes the disconnect. */
			c->eof = true;
			readable = true;
			if (events & (EPOLLHUP | EPOLLERR))
				c->outlen = 0;
		} else if (c->spec.kind == CHARDEV_STDIO) {
			c->eof = true;
			readable = true;
		}
	}
	chardev_update_watch(c);
	pthread_mutex_unlock(&c->lock);
	chardev_notify(c, readable, writable);
	/* Input nobody wants (no device room) and EOF: finish the disconnect. */
	pthread_mutex_lock(&c->lock);
	if (c->connected && c->eof && c->spec.kind == CHARDEV_UNIX) {
		char probe;
		ssize_t n = recv(c->conn_fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			chardev_disconnect_locked(c);
	}
	pthread_mutex_unlock(&c->lock);
}

static void chardev_accept(int fd, uint32_t events, void *opaque)
{
	struct chardev *c = opaque;
	int cfd;

	(void)events;
	if (__atomic_load_n(&c->frozen, __ATOMIC_RELAXED))
		return; /* a client arriving now belongs to the next process */
	cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0)
		return;
	pthread_mutex_lock(&c->lock);
	if (c->connected) { /* cannot happen: the listener is muted meanwhile */
		close(cfd);
	} else {
		/* One client at a time: the next waits in the backlog. */
		loop_mod_fd(c->loop, c->listen_fd, 0);
		chardev_connect_locked(c, cfd);
		pr_info("serial: client connected on %s", c->spec.path);
	}
	pthread_mutex_unlock(&c->lock);
	chardev_notify(c, true, true);
}

static void chardev_pty_timer(int fd, uint32_t events, void *opaque)
{
	struct chardev *c = opaque;
	struct pollfd p = { .fd = c->conn_fd, .events = POLLIN };
	uint64_t ticks;
	bool now = false;

	(void)events;
	if (read(fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&c->lock);
	if (!c->connected && poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
		struct itimerspec off = { 0 };
		timerfd_settime(c->timer_fd, 0, &off, NULL);
		chardev_connect_locked(c, c->conn_fd);
		now = true;
	}
	pthread_mutex_unlock(&c->lock);
	if (now)
		chardev_notify(c, true, true);
}

/* The timer that looks for a pty's slave (armed by chardev_disconnect_locked),
 * in the loop. -errno on failure. */
static int chardev_pty_timer_add(struct chardev *c, struct loop *loop)
{
	c->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->timer_fd < 0)
		return -errno;
	return loop_add_fd(loop, c->timer_fd, EPOLLIN, chardev_pty_timer, c);
}

/* --- open/close ---------------------------------------------------------- */

static int chardev_open_unix(struct chardev *c, char *err, size_t errlen)
{
	int fd, ret;

	/* Listening once the path exists (lib/sock.h): a client that waits
	 * for the file and connects is never refused. */
	fd = unix_listen(c->spec.path, 8, SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -EEXIST)
		snprintf(err, errlen, "serial socket path '%s' exists and is not a socket",
			 c->spec.path);
	else if (fd == -EADDRINUSE)
		snprintf(err, errlen, "serial socket '%s' is in use by another process",
			 c->spec.path);
	else if (fd < 0)
		snprintf(err, errlen, "cannot listen on serial socket '%s': %s", c->spec.path,
			 strerror(-fd));
	if (fd < 0)
		return fd;
	c->listen_fd = fd;
	ret = loop_add_fd(c->loop, fd, EPOLLIN, chardev_accept, c);
	if (ret < 0) {
		snprintf(err, errlen, "serial: %s", strerror(-ret));
		return ret;
	}
	snprintf(c->desc, sizeof(c->desc), "unix:%s", c->spec.path);
	return 0;
}

static int chardev_open_pty(struct chardev *c, char *err, size_t errlen)
{
	struct termios tio;
	int fd = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	const char *name;
	int ret;

	if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0 || !(name = ptsname(fd))) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		snprintf(err, errlen, "cannot create pty: %s", strerror(-ret));
		return ret;
	}
	if (tcgetattr(fd, &tio) == 0) {
		cfmakeraw(&tio);
		tcsetattr(fd, TCSANOW, &tio);
	}
	c->conn_fd = fd;
	snprintf(c->desc, sizeof(c->desc), "pty:%s", name);
	ret = chardev_pty_timer_add(c, c->loop);
	if (ret < 0) {
		snprintf(err, errlen, "cannot set up the pty's timer: %s", strerror(-ret));
		return ret;
	}
	/* Same words as QEMU, so scripts that look for the path work for both. */
	fprintf(stderr, "char device redirected to %s (label serial0)\n", name);
	chardev_disconnect_locked(c); /* starts the timer that looks for a slave */
	c->conn_fd = fd;
	return 0;
}

static const struct state_field handover_fields[] = {
	STATE_FIELD_U8(1, struct chardev_handover, connected, .flags = STATE_F_REQUIRED),
	STATE_FIELD_VBYTES(2, struct chardev_handover, pending, pending_len,
			   .flags = STATE_F_REQUIRED),
};
/* The fd numbers travel in the cpr fd registry, by name. */
const struct state_desc chardev_handover_desc = STATE_DESC("chardev", 1, 1, handover_fields);

void chardev_export(struct chardev *c, struct chardev_handover *h)
{
	pthread_mutex_lock(&c->lock);
	h->listen_fd = c->listen_fd;
	h->conn_fd = -1;
	if (c->spec.kind == CHARDEV_UNIX && c->connected)
		h->conn_fd = c->conn_fd;
	else if (c->spec.kind == CHARDEV_PTY)
		h->conn_fd = c->conn_fd;
	else if (c->spec.kind == CHARDEV_FILE)
		h->conn_fd = c->out_fd;
	h->connected = c->connected;
	h->pending_len = c->outlen;
	memcpy(h->pending, c->outbuf, c->outlen);
	pthread_mutex_unlock(&c->lock);
}

static struct chardev *chardev_alloc(const struct chardev_spec *spec, struct loop *loop)
{
	struct chardev *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->outbuf = malloc(CHARDEV_OUTBUF_MAX);
	if (!c->outbuf) {
		free(c);
		return NULL;
	}
	c->spec = *spec;
	c->loop = loop;
	c->listen_fd = c->conn_fd = c->in_fd = c->out_fd = c->timer_fd = -1;
	pthread_mutex_init(&c->lock, NULL);
	c->input_on = true;
	return c;
}

int chardev_adopt(struct chardev **out, const struct chardev_spec *spec,
		  const struct chardev_handover *h, struct loop *loop, char *err, size_t errlen)
{
	struct chardev *c;
	int ret;

	if (spec->kind == CHARDEV_STDIO || spec->kind == CHARDEV_NONE)
		ret = chardev_open(&c, spec, loop, err, errlen);
	else if (!(c = chardev_alloc(spec, loop)))
		return -ENOMEM;
	else
		ret = 0;
	if (ret < 0)
		return ret;
	c->keep_path = true; /* the previous process's, until the take-over commits */
	switch (spec->kind) {
	case CHARDEV_UNIX:
		if (h->listen_fd < 0) {
			snprintf(err, errlen, "serial: no listening socket handed over");
			ret = -EBADF;
			goto out_free;
		}
		c->listen_fd = h->listen_fd;
		fcntl(c->listen_fd, F_SETFD, FD_CLOEXEC);
		snprintf(c->desc, sizeof(c->desc), "unix:%s", spec->path);
		ret = loop_add_fd(loop, c->listen_fd, h->conn_fd >= 0 ? 0 : EPOLLIN, chardev_accept, c);
		if (ret < 0)
			goto out_err;
		if (h->conn_fd >= 0) {
			fcntl(h->conn_fd, F_SETFD, FD_CLOEXEC);
			pthread_mutex_lock(&c->lock);
			chardev_connect_locked(c, h->conn_fd);
			pthread_mutex_unlock(&c->lock);
		}
		break;
	case CHARDEV_PTY:
		if (h->conn_fd < 0) {
			snprintf(err, errlen, "serial: no pty handed over");
			ret = -EBADF;
			goto out_free;
		}
		c->conn_fd = h->conn_fd;
		fcntl(c->conn_fd, F_SETFD, FD_CLOEXEC);
		snprintf(c->desc, sizeof(c->desc), "pty:%s", ptsname(c->conn_fd) ?: "?");
		ret = chardev_pty_timer_add(c, loop);
		if (ret < 0)
			goto out_err;
		pthread_mutex_lock(&c->lock);
		if (h->connected) {
			chardev_connect_locked(c, c->conn_fd);
		} else {
			chardev_disconnect_locked(c);
			c->conn_fd = h->conn_fd;
		}
		pthread_mutex_unlock(&c->lock);
		break;
	case CHARDEV_FILE:
		if (h->conn_fd < 0) {
			snprintf(err, errlen, "serial: no file handed over");
			ret = -EBADF;
			goto out_free;
		}
		c->out_fd = h->conn_fd;
		fcntl(c->out_fd, F_SETFD, FD_CLOEXEC);
		c->connected = true;
		snprintf(c->desc, sizeof(c->desc), "file:%s", spec->path);
		break;
	default:
		break;
	}
	chardev_adopt_finish(c, h);
	*out = c;
	return 0;
out_err:
	snprintf(err, errlen, "serial: cannot adopt handed-over fds: %s", strerror(-ret));
out_free:
	/* The fds stay open (and the socket file in place): a failed live
	 * update hands them back to the previous binary. */
	if (c->listen_fd >= 0)
		loop_del_fd(loop, c->listen_fd);
	if (c->watching)
		loop_del_fd(loop, c->conn_fd);
	c->watching = false;
	c->listen_fd = c->conn_fd = c->out_fd = -1;
	if (spec->kind == CHARDEV_FILE)
		c->spec.kind = CHARDEV_NONE;
	chardev_close(c);
	return ret;
}

void chardev_adopt_finish(struct chardev *c, const struct chardev_handover *h)
{
	pthread_mutex_lock(&c->lock);
	if (c->spec.kind == CHARDEV_PTY && c->conn_fd >= 0 && !!h->connected != c->connected) {
		int fd = c->conn_fd;

		if (h->connected) {
			chardev_connect_locked(c, fd);
		} else {
			chardev_disconnect_locked(c);
			c->conn_fd = fd; /* the master stays ours */
		}
	}
	if (c->connected && h->pending_len <= CHARDEV_OUTBUF_MAX) {
		memcpy(c->outbuf, h->pending, h->pending_len);
		c->outlen = h->pending_len;
		chardev_update_watch(c);
	}
	pthread_mutex_unlock(&c->lock);
}

int chardev_open(struct chardev **out, const struct chardev_spec *spec, struct loop *loop,
		 char *err, size_t errlen)
{
	struct chardev *c = chardev_alloc(spec, loop);
	int ret = 0, fd;

	if (!c)
		return -ENOMEM;

	switch (spec->kind) {
	case CHARDEV_NONE:
		snprintf(c->desc, sizeof(c->desc), "none");
		break;
	case CHARDEV_STDIO:
		snprintf(c->desc, sizeof(c->desc), "stdio");
		c->connected = true;
		c->out_fd = STDOUT_FILENO;
		if (fcntl(STDIN_FILENO, F_GETFL) >= 0 && isatty(STDIN_FILENO)) {
			struct termios tio;
			/* Raw input so the guest sees each key; keep ISIG so
			 * Ctrl-C still stops cprvm. */
			if (tcgetattr(STDIN_FILENO, &c->saved_tio) == 0) {
				c->tty_saved = true;
				tio = c->saved_tio;
				tio.c_lflag &= ~(ICANON | ECHO | IEXTEN);
				tio.c_iflag &= ~(ICRNL | IXON);
				tcsetattr(STDIN_FILENO, TCSANOW, &tio);
			}
		}
		/* stdin from a pipe, /dev/null or a tty: read without blocking
		 * via a dup so the caller's file flags stay untouched. */
		fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
		if (fd >= 0) {
			struct stat st;
			if (fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) ||
						    S_ISSOCK(st.st_mode)) &&
			    !(S_ISCHR(st.st_mode) && !isatty(fd))) {
				set_nonblock(fd);
				c->in_fd = fd;
				c->conn_fd = fd;
				chardev_update_watch(c);
			} else {
				close(fd);
			}
		}
		break;
	case CHARDEV_FILE:
		fd = open(spec->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			ret = -errno;
			snprintf(err, errlen, "cannot open serial file '%s': %s", spec->path,
				 strerror(-ret));
			goto out_free;
		}
		c->out_fd = fd;
		c->conn_fd = -1;
		c->connected = true;
		snprintf(c->desc, sizeof(c->desc), "file:%s", spec->path);
		break;
	case CHARDEV_UNIX:
		ret = chardev_open_unix(c, err, errlen);
		if (ret < 0)
			goto out_free;
		break;
	case CHARDEV_PTY:
		ret = chardev_open_pty(c, err, errlen);
		if (ret < 0)
			goto out_free;
		break;
	}
	*out = c;
	return 0;
out_free:
	chardev_close(c);
	return ret;
}

void chardev_keep_path(struct chardev *c, bool keep)
{
	if (c)
		c->keep_path = keep;
}

void chardev_close(struct chardev *c)
{
	if (!c)
		return;
	if (c->watching) {
		int fd = c->spec.kind == CHARDEV_STDIO ? c->in_fd : c->conn_fd;
		loop_del_fd(c->loop, fd);
	}
	if (c->listen_fd >= 0) {
		loop_del_fd(c->loop, c->listen_fd);
		close(c->listen_fd);
		if (!c->keep_path)
			unlink(c->spec.path);
	}
	if (c->timer_fd >= 0) {
		loop_del_fd(c->loop, c->timer_fd);
		close(c->timer_fd);
	}
	if (c->spec.kind == CHARDEV_STDIO) {
		if (c->in_fd >= 0)
			close(c->in_fd);
		if (c->tty_saved)
			tcsetattr(STDIN_FILENO, TCSANOW, &c->saved_tio);
	} else if (c->spec.kind == CHARDEV_FILE) {
		if (c->out_fd >= 0)
			close(c->out_fd);
	} else if (c->conn_fd >= 0) {
		close(c->conn_fd);
	}
	pthread_mutex_destroy(&c->lock);
	free(c->outbuf);
	free(c);
}

void chardev_set_client(struct chardev *c, const struct chardev_client_ops *ops, void *opaque)
{
	pthread_mutex_lock(&c->lock);
	c->ops = ops;
	c->opaque = opaque;
	pthread_mutex_unlock(&c->lock);
}

/* --- data path (vCPU threads) -------------------------------------------------- */

void chardev_set_frozen(struct chardev *c, bool frozen)
{
	pthread_mutex_lock(&c->lock);
	c->frozen = frozen;
	pthread_mutex_unlock(&c->lock);
}

size_t chardev_write(struct chardev *c, const void *buf, size_t len)
{
	size_t done = 0;

	pthread_mutex_lock(&c->lock);
	if (c->frozen)
		goto out;
	if (!c->connected || c->out_fd < 0) {
		done = len; /* unplugged line */
		goto out;
	}
	if (c->spec.kind == CHARDEV_STDIO || c->spec.kind == CHARDEV_FILE) {
		/* stdout and files: written synchronously, blocking. */
		while (done < len) {
			ssize_t n = write(c->out_fd, (const char *)buf + done, len - done);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				done = len;
				break;
			}
			done += n;
		}
		goto out;
	}
	if (!c->outlen) {
		ssize_t n = write(c->out_fd, buf, len);
		if (n > 0)
			done = n;
	}
	if (done < len) {
		size_t room = CHARDEV_OUTBUF_MAX - c->outlen;
		size_t take = len - done < room ? len - done : room;
		bool was_empty = !c->outlen;
		memcpy(c->outbuf + c->outlen, (const char *)buf + done, take);
		c->outlen += take;
		done += take;
		if (was_empty && take)
			chardev_update_watch(c);
	}
out:
	pthread_mutex_unlock(&c->lock);
	return done;
}

size_t chardev_read(struct chardev *c, void *buf, size_t len)
{
	ssize_t n = 0;
	bool gone = false;

	pthread_mutex_lock(&c->lock);
	if (c->connected && c->in_fd >= 0 && !c->frozen) {
		n = read(c->in_fd, buf, len);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EIO)) {
			c->eof = true;
			gone = c->spec.kind == CHARDEV_UNIX;
			n = 0;
		} else if (n < 0) {
			n = 0;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (gone)
		loop_call(c->loop, chardev_deferred_disconnect, c);
	return n;
}

void chardev_set_input(struct chardev *c, bool on)
{
	pthread_mutex_lock(&c->lock);
	if (c->input_on != on) {
		c->input_on = on;
		chardev_update_watch(c);
	}
	pthread_mutex_unlock(&c->lock);
}

const char *chardev_describe(struct chardev *c)
{
	return c->desc;
}
