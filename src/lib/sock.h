/* sock.h — unix listening sockets that are listening as soon as their path
 * exists. bind() creates the socket file and listen() comes after it; a
 * client that sees the file in between and connects gets ECONNREFUSED (a
 * client that waits for the QMP socket to appear would be refused). So
 * the socket is bound under a temporary name next to PATH and renamed onto
 * PATH once it listens. */
#ifndef CPRVM_SOCK_H
#define CPRVM_SOCK_H

#include <sys/types.h>

/* A listening AF_UNIX SOCK_STREAM socket at PATH. FLAGS are socket() type
 * flags (SOCK_NONBLOCK, SOCK_CLOEXEC); the file is created with UMASK_BITS
 * as the umask (0: the process's own). A stale socket at PATH (nobody
 * listens on it: a crashed process's) is replaced. Returns the fd or:
 *   -EADDRINUSE  a live socket is at PATH (another process listens there);
 *   -EEXIST      PATH exists and is not a socket: left alone;
 *   -ENAMETOOLONG, or another -errno.
 * When PATH is too long for the temporary name to fit in sun_path, it is
 * bound in place: the window above remains for such paths only. */
int unix_listen(const char *path, int backlog, int flags, mode_t umask_bits);

#endif
