/* sock.c — see sock.h. */
#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* 0 when nothing is at PATH or a stale socket was removed from it. */
static int clear_stale(const struct sockaddr_un *sa)
{
	struct stat st;
	int fd, r, e;

	if (lstat(sa->sun_path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	e = errno;
	close(fd);
	/* A full backlog answers EAGAIN: someone listens. */
	if (r == 0 || e == EAGAIN || e == EINPROGRESS)
		return -EADDRINUSE;
	if (e != ECONNREFUSED)
		return -e;
	if (unlink(sa->sun_path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

/* Like bind(), never over a file that appeared at PATH meanwhile (another
 * process started on the same path): EADDRINUSE then, as bind() says. */
static int move_into_place(const char *tmp, const char *path)
{
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno == EEXIST) {
		errno = EADDRINUSE;
		return -1;
	}
	if (errno != EINVAL)
		return -1;
	/* A file system without RENAME_NOREPLACE. */
	return rename(tmp, path);
}

int unix_listen(const char *path, int backlog, int flags, mode_t umask_bits)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	bool renamed = true;
	mode_t old = 0;
	int fd, r, e;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	r = clear_stale(&sa);
	if (r < 0)
		return r;
	r = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.%d.tmp", path, (int)getpid());
	if (r < 0 || (size_t)r >= sizeof(sa.sun_path)) {
		strcpy(sa.sun_path, path);
		renamed = false;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | flags, 0);
	if (fd < 0)
		return -errno;
	if (renamed)
		unlink(sa.sun_path); /* left by a crashed process that had our PID */
	if (umask_bits)
		old = umask(umask_bits);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	e = errno;
	if (umask_bits)
		umask(old);
	if (r < 0)
		goto fail;
	if (listen(fd, backlog) < 0 || (renamed && move_into_place(sa.sun_path, path) < 0)) {
		e = errno;
		unlink(sa.sun_path);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -e;
}
