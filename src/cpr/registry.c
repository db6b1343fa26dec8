/* registry.c — the preserved-fd registry and the live-update stream.
 *
 * Every fd that crosses to the new side is named in the stream's "cpr"
 * section, and the new side claims fds by name, never by position (QEMU's
 * cpr.c does the same). The names, and who registers each:
 *   ram             guest RAM (memfd or --mem-path file)
 *   qmp             the QMP listening socket
 *   serial0-listen  the serial console's listening socket, if any
 *   serial0-conn    its connected client, if any
 *   keeper          stopped-first cpr-exec: the keeper's pipe (exec.c)
 *   prev-exe        stopped-first cpr-exec: the previous binary (exec.c)
 *   vcpu-early      cpr-transfer and live cpr-exec: the early channel
 * In a cpr-exec an entry's fd is the fd number itself (it survives the
 * exec); in cpr-transfer it is an index into the fds of the message. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpr/cpr_priv.h"
#include "lib/log.h"
#include "lib/trace.h"

static const struct state_field cpr_fd_fields[] = {
	STATE_FIELD_BYTES(1, struct cpr_fd, name, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U32(2, struct cpr_fd, fd, .flags = STATE_F_REQUIRED),
};
static const struct state_desc cpr_fd_desc = STATE_DESC("cpr-fd", 1, 1, cpr_fd_fields);

static const struct state_field cpr_fields[] = {
	STATE_FIELD_ARRAY(1, struct cpr_state, fds, nr_fds, cpr_fd_desc, .flags = STATE_F_REQUIRED),
	STATE_FIELD_U64(2, struct cpr_state, stop_ns),
	STATE_FIELD_U32(3, struct cpr_state, keeper_pid),
	STATE_FIELD_VBYTES(4, struct cpr_state, prev_argv, prev_argv_len),
	STATE_FIELD_U64(5, struct cpr_state, paused_ns),
	STATE_FIELD_U64(6, struct cpr_state, captured_ns),
	STATE_FIELD_U32(7, struct cpr_state, guest_paused),
	STATE_FIELD_VBYTES(8, struct cpr_state, vcpu_tid, vcpu_tid_len),
	STATE_FIELD_VBYTES(9, struct cpr_state, run_tid, run_tid_len),
	STATE_FIELD_U32(10, struct cpr_state, caps),
};
const struct state_desc cpr_state_desc = STATE_DESC("cpr", 1, 1, cpr_fields);

struct cpr_image cpr_image = { .qmp_fd = -1 };

void cpr_init(int argc, char **argv)
{
	trace_init();
	ssize_t n = readlink("/proc/self/exe", cpr_image.exe, sizeof(cpr_image.exe) - 1);

	cpr_image.exe[n > 0 ? n : 0] = 0;
	cpr_image.argc = argc;
	cpr_image.argv = argv;
}

void cpr_set_qmp_fd(int fd)
{
	cpr_image.qmp_fd = fd;
}

int cpr_set_exec_command(char **argv, int argc)
{
	char **copy = NULL;

	if (argc) {
		copy = calloc(argc + 1, sizeof(*copy));
		if (!copy)
			return -ENOMEM;
		for (int i = 0; i < argc; i++)
			if (!(copy[i] = strdup(argv[i]))) {
				while (i--)
					free(copy[i]);
				free(copy);
				return -ENOMEM;
			}
	}
	for (int i = 0; i < cpr_image.exec_argc; i++)
		free(cpr_image.exec_argv[i]);
	free(cpr_image.exec_argv);
	cpr_image.exec_argv = copy;
	cpr_image.exec_argc = argc;
	return 0;
}

const char *const *cpr_get_exec_command(int *argc)
{
	*argc = cpr_image.exec_argc;
	return (const char *const *)cpr_image.exec_argv;
}

int cpr_add_fd(struct cpr_state *cs, const char *name, int fd)
{
	if (fd < 0)
		return 0;
	if (cs->nr_fds == CPR_MAX_FDS || strlen(name) >= sizeof(cs->fds[0].name))
		return -E2BIG;
	memset(cs->fds[cs->nr_fds].name, 0, sizeof(cs->fds[0].name));
	memcpy(cs->fds[cs->nr_fds].name, name, strlen(name));
	cs->fds[cs->nr_fds].fd = fd;
	cs->nr_fds++;
	return 0;
}

int cpr_find_fd(const struct cpr_state *cs, const char *name)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		if (!strncmp((const char *)cs->fds[i].name, name, sizeof(cs->fds[i].name)))
			return (int)cs->fds[i].fd;
	return -1;
}

int cpr_claim_fd(const struct cpr_state *cs, const char *name)
{
	int fd = cpr_find_fd(cs, name);

	return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

int cpr_fd_sources(const struct vm *vm, const struct chardev_handover *ho,
		   struct cpr_fd_source src[CPR_FD_SOURCES_MAX])
{
	int n = 0;

	src[n++] = (struct cpr_fd_source){ CPR_FD_RAM, vm->mem.fd };
	src[n++] = (struct cpr_fd_source){ CPR_FD_QMP, cpr_image.qmp_fd };
	src[n++] = (struct cpr_fd_source){ CPR_FD_SERIAL_LISTEN, ho->listen_fd };
	src[n++] = (struct cpr_fd_source){ CPR_FD_SERIAL_CONN, ho->conn_fd };
	return n;
}

void cpr_set_cloexec(const struct cpr_state *cs, bool on)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++) {
		int fd = cs->fds[i].fd, fl = fcntl(fd, F_GETFD);
		if (fl >= 0)
			fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
	}
}

void cpr_put_prev_argv(struct cpr_state *cs)
{
	size_t off = 0;

	for (int i = 0; i < cpr_image.argc; i++) {
		size_t n = strlen(cpr_image.argv[i]) + 1;

		if (off + n > sizeof(cs->prev_argv))
			break;
		memcpy(cs->prev_argv + off, cpr_image.argv[i], n);
		off += n;
	}
	cs->prev_argv_len = off;
}

int cpr_load_registry(const uint8_t *buf, size_t len, struct cpr_state *cs,
		      const int *recv_fds, int nr_recv, char *why, size_t whylen)
{
	struct stream_index idx = { 0 };
	int ret;

	ret = stream_parse(buf, len, &idx, why, whylen);
	if (ret < 0)
		return ret;
	ret = stream_get_state(&idx, "cpr", &cpr_state_desc, cs, why, whylen);
	stream_index_free(&idx);
	if (ret < 0 || !recv_fds)
		return ret;
	for (uint32_t i = 0; i < cs->nr_fds; i++) {
		if (cs->fds[i].fd >= (uint32_t)nr_recv)
			return set_err(why, whylen, -EBADF, "fd '%.24s' was not received",
				       (const char *)cs->fds[i].name);
		cs->fds[i].fd = recv_fds[cs->fds[i].fd];
	}
	return 0;
}
