/* qmp.c — the QMP server (see qmp.h): the listening socket and the path it
 * created, accepting and greeting clients, the client list, flushing, and
 * event delivery. No VM knowledge lives here. client.c owns one connection's
 * socket and buffers, framing.c cuts its input into JSON values, dispatch.c
 * runs them as requests.
 *
 * Lifetime: clients that fail are marked dead and unwatched at once, and freed
 * by qmp_reap() only when s->busy is zero, i.e. when no client callback,
 * handler or event delivery is on the stack (a handler such as "stop" emits an
 * event that may kill another client, or the very one being served).
 *
 * The socket path: s->dev and s->ino name the socket file this server made
 * (or adopted); qmp_server_free() unlinks the path only while it is still
 * that file, so a successor's socket is never removed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/sock.h"
#include "qmp/qmp.h"
#include "qmp/qmp_priv.h"

/* How long qmp_server_free() waits for slow clients to take their output. */
#define QMP_FREE_FLUSH_MS 500

/* ---- the client list ---------------------------------------------------- */

void qmp_reap(struct qmp_server *s)
{
	struct qmp_client **pp = &s->clients;

	if (s->busy)
		return;
	while (*pp) {
		struct qmp_client *c = *pp;
		if (c->dead) {
			*pp = c->next;
			s->nr_clients--;
			qmp_client_free(c);
		} else {
			pp = &c->next;
		}
	}
}

/* ---- the listening socket --------------------------------------------- */

static void qmp_greet(struct qmp_client *c)
{
	json_t *msg =
	    json_pack("{s:{s:o,s:[]}}", "QMP", "version", qmp_version_json(), "capabilities");

	qmp_client_send(c, msg);
}

static void qmp_accept(int fd, uint32_t events, void *opaque)
{
	struct qmp_server *s = opaque;
	struct qmp_client *c;
	int cfd;

	(void)events;
	cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
		    errno != ECONNABORTED)
			pr_warn("QMP accept on %s: %s", s->path, strerror(errno));
		return;
	}
	if (s->nr_clients >= QMP_MAX_CLIENTS) {
		pr_warn("QMP: too many clients (%d), refusing one", s->nr_clients);
		close(cfd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->s = s;
	c->fd = cfd;
	c->events = EPOLLIN;
	if (loop_add_fd(s->loop, cfd, EPOLLIN, qmp_client_io, c) < 0) {
		close(cfd);
		free(c);
		return;
	}
	c->next = s->clients;
	s->clients = c;
	s->nr_clients++;
	s->busy++;
	qmp_greet(c);
	s->busy--;
	qmp_reap(s);
}

void qmp_server_release_path(struct qmp_server *s)
{
	if (s) {
		s->dev = 0;
		s->ino = 0;
	}
}

int qmp_server_listen_fd(struct qmp_server *s)
{
	return s ? s->fd : -1;
}

int qmp_server_new(struct qmp_server **out, const char *path, struct loop *loop, char *err,
		   size_t errlen)
{
	return qmp_server_new_fd(out, path, -1, loop, err, errlen);
}

int qmp_server_new_fd(struct qmp_server **out, const char *path, int adopt_fd, struct loop *loop,
		      char *err, size_t errlen)
{
	const size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
	struct qmp_server *s;
	struct stat st;
	int ret;

	if (strlen(path) > max) {
		snprintf(err, errlen, "QMP socket path too long (at most %zu bytes): %s", max,
			 path);
		return -ENAMETOOLONG;
	}
	if (!*path) {
		snprintf(err, errlen, "QMP socket path is empty");
		return -EINVAL;
	}
	/* jansson seeds its hash tables on the first object it makes, which
	 * opens, reads and closes /dev/urandom. Seed at setup: otherwise a live
	 * update's new side would pay for it with its first event, sent while
	 * the guest is paused. */
	json_object_seed(0);
	s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(path))) {
		free(s);
		snprintf(err, errlen, "cannot create QMP socket %s: out of memory", path);
		return -ENOMEM;
	}
	s->loop = loop;
	if (adopt_fd >= 0) {
		/* Live update: the listening socket lives on from the previous
		 * cprvm; connections made meanwhile wait in its backlog. */
		s->fd = adopt_fd;
		fcntl(s->fd, F_SETFD, FD_CLOEXEC);
		fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) | O_NONBLOCK);
		if (stat(path, &st) == 0) {
			s->dev = st.st_dev;
			s->ino = st.st_ino;
		}
		goto registered;
	}
	/* The socket file is born 0600: no window in which others may connect.
	 * umask is per process, but nothing else creates files while we are
	 * being set up on the main thread. It is listening once PATH exists
	 * (lib/sock.h). */
	s->fd = unix_listen(path, 16, SOCK_NONBLOCK | SOCK_CLOEXEC, 0177);
	if (s->fd < 0) {
		ret = s->fd;
		if (ret == -EADDRINUSE)
			snprintf(err, errlen, "QMP socket %s is in use by another process", path);
		else if (ret == -EEXIST)
			snprintf(err, errlen,
				 "cannot create QMP socket %s: the path exists and is not a socket",
				 path);
		else
			snprintf(err, errlen, "cannot create QMP socket %s: %s", path,
				 strerror(-ret));
		goto out_close;
	}
	if (stat(path, &st) == 0) {
		s->dev = st.st_dev;
		s->ino = st.st_ino;
	}
registered:
	ret = qmp_register_builtins(s);
	if (!ret)
		ret = loop_add_fd(loop, s->fd, EPOLLIN, qmp_accept, s);
	if (ret) {
		snprintf(err, errlen, "cannot set up QMP socket %s: %s", path, strerror(-ret));
		goto out_unlink;
	}
	*out = s;
	return 0;
out_unlink:
	unlink(path);
out_close:
	if (s->fd >= 0)
		close(s->fd);
	free(s->cmds);
	free(s->path);
	free(s);
	return ret;
}

int qmp_server_flush(struct qmp_server *s, int timeout_ms)
{
	struct timespec t0, t;
	int ret = 0;

	if (!s)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	s->busy++;
	for (;;) {
		struct pollfd pfd[QMP_MAX_CLIENTS];
		int n = 0;
		long left;

		for (struct qmp_client *c = s->clients; c; c = c->next) {
			qmp_client_write(c);
			if (!c->dead && c->out_len && n < QMP_MAX_CLIENTS)
				pfd[n++] = (struct pollfd){.fd = c->fd, .events = POLLOUT};
		}
		if (!n)
			break;
		clock_gettime(CLOCK_MONOTONIC, &t);
		left = timeout_ms -
		       ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			ret = -ETIMEDOUT;
			break;
		}
		if (poll(pfd, n, (int)left) < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
	}
	s->busy--;
	qmp_reap(s);
	return ret;
}

void qmp_server_free(struct qmp_server *s)
{
	struct stat st;

	if (!s)
		return;
	qmp_server_flush(s, QMP_FREE_FLUSH_MS);
	while (s->clients) {
		struct qmp_client *c = s->clients;
		s->clients = c->next;
		qmp_client_free(c);
	}
	loop_del_fd(s->loop, s->fd);
	close(s->fd);
	/* Only our own socket: another cprvm may have replaced it since. */
	if (lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
		unlink(s->path);
	free(s->cmds);
	free(s->path);
	free(s);
}

/* ---- events ----------------------------------------------------------- */

void qmp_event(struct qmp_server *s, const char *name, json_t *data)
{
	struct timespec ts;
	json_t *msg;
	char *text;

	if (!s)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	msg = json_pack("{s:s}", "event", name);
	if (!msg)
		return;
	if (data)
		json_object_set(msg, "data", data);
	json_object_set_new(msg, "timestamp",
			    json_pack("{s:I,s:I}", "seconds", (json_int_t)ts.tv_sec, "microseconds",
				      (json_int_t)(ts.tv_nsec / 1000)));
	text = json_dumps(msg, 0);
	json_decref(msg);
	if (!text)
		return;
	s->busy++;
	for (struct qmp_client *c = s->clients; c; c = c->next)
		if (c->negotiated)
			qmp_client_send_text(c, text);
	s->busy--;
	free(text);
	qmp_reap(s);
}
