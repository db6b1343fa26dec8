/* cpr.c — cpr-exec, see cpr.h. Also the preserved-fd registry: every fd that
 * crosses the exec is named in the stream's "cpr" section, and the new image
 * claims fds by name (QEMU's cpr.c does the same), never by position.
 *
 * Ordering rules on the way out (old image):
 *   1. stop the vCPUs (vm_pause completes any pending I/O exit, vcpu.c);
 *   2. capture all state into memory, then into a memfd: nothing after this
 *      point may change guest-visible state;
 *   3. start the keeper (it copies the fd table: the old VM fd stays open in
 *      it, so execve() neither tears the VM down nor unmaps guest RAM);
 *   4. clear FD_CLOEXEC on exactly the registry's fds, then execve().
 * Any failure before execve() returns succeeds undoes 3 and 4 and resumes.
 * On the way in (new image), handed-over fds are dup()ed before use, so a
 * failed take-over can give the untouched originals back to the previous
 * binary. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cpr/cpr.h"
#include "cpr/snapshot.h"
#include "lib/log.h"
#include "qmp/qmp.h"
#include "state/state.h"
#include "vm/vm_priv.h"

#define CPR_MAX_FDS 16
#define CPR_ARGV_MAX 8192
#define KEEPER_STACK (64 * 1024)

struct cpr_fd {
	uint8_t name[24];
	uint32_t fd;
};

/* Section "cpr": the fd registry and what a rollback needs. */
struct cpr_state {
	uint32_t nr_fds;
	struct cpr_fd fds[CPR_MAX_FDS];
	uint64_t stop_ns;  /* CLOCK_MONOTONIC when the vCPUs stopped */
	uint32_t keeper_pid;
	uint32_t prev_argv_len; /* the old image's argv, NUL-separated */
	char prev_argv[CPR_ARGV_MAX];
};

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
};
static const struct state_desc cpr_state_desc = STATE_DESC("cpr", 1, 1, cpr_fields);

static struct {
	int argc;
	char **argv;     /* this image's own */
	char exe[4096];  /* /proc/self/exe at start-up */
	char **exec_argv; /* cpr-exec-command, or NULL */
	int exec_argc;
	int qmp_fd;
} cpr = { .qmp_fd = -1 };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

void cpr_init(int argc, char **argv)
{
	ssize_t n = readlink("/proc/self/exe", cpr.exe, sizeof(cpr.exe) - 1);

	cpr.exe[n > 0 ? n : 0] = 0;
	cpr.argc = argc;
	cpr.argv = argv;
}

void cpr_set_qmp_fd(int fd)
{
	cpr.qmp_fd = fd;
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
	for (int i = 0; i < cpr.exec_argc; i++)
		free(cpr.exec_argv[i]);
	free(cpr.exec_argv);
	cpr.exec_argv = copy;
	cpr.exec_argc = argc;
	return 0;
}

const char *const *cpr_get_exec_command(int *argc)
{
	*argc = cpr.exec_argc;
	return (const char *const *)cpr.exec_argv;
}

static int cpr_add_fd(struct cpr_state *cs, const char *name, int fd)
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

static int cpr_find_fd(const struct cpr_state *cs, const char *name)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		if (!strncmp((const char *)cs->fds[i].name, name, sizeof(cs->fds[i].name)))
			return (int)cs->fds[i].fd;
	return -1;
}

static void cpr_set_cloexec(const struct cpr_state *cs, bool on)
{
	for (uint32_t i = 0; i < cs->nr_fds; i++) {
		int fd = cs->fds[i].fd, fl = fcntl(fd, F_GETFD);
		if (fl >= 0)
			fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
	}
}

/* --- the keeper ---------------------------------------------------------------
 * Shares the old mm (CLONE_VM) and owns a copy of the old fd table. It waits
 * for EOF on a pipe whose write end the new image holds, then exits: the old
 * VM and address space die there, after the guest runs again, off the
 * critical path. Raw syscalls only: it runs on a borrowed stack in an address
 * space another process is about to leave. */
struct keeper_arg {
	int rfd, wfd;
};

static int keeper_main(void *p)
{
	struct keeper_arg *a = p;
	char c;

	syscall(SYS_close, a->wfd);
	while (syscall(SYS_read, a->rfd, &c, 1) < 0)
		;
	syscall(SYS_exit, 0);
	return 0;
}

/* --- outgoing --------------------------------------------------------------------- */

static int cpr_write_memfd(const struct sbuf *b)
{
	int fd = memfd_create("cprvm-cpr-state", 0);

	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < b->len;) {
		ssize_t n = write(fd, b->data + off, b->len - off);
		if (n < 0) {
			int ret = -errno;
			close(fd);
			return ret;
		}
		off += n;
	}
	lseek(fd, 0, SEEK_SET);
	return fd;
}

int cpr_exec(struct vm *vm, char *err, size_t errlen)
{
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct chardev_handover *ho = calloc(1, sizeof(*ho));
	struct machine_state ms;
	struct sbuf b = SBUF_INIT;
	struct keeper_arg ka;
	char envval[32], **argv;
	void *kstack = MAP_FAILED;
	int pipefd[2] = { -1, -1 }, memfd = -1, exefd = -1, ret;
	pid_t keeper = -1;
	size_t off = 0;

	if (!cs || !ho) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out_free;
	}
	if (vm->mem.private_map) {
		snprintf(err, errlen, "cpr-exec: guest RAM is a private copy of a snapshot, "
				      "not a shareable fd");
		ret = -EINVAL;
		goto out_free;
	}
	argv = cpr.exec_argv ? cpr.exec_argv : cpr.argv;
	if (!cpr.exec_argv && !cpr.exe[0]) {
		snprintf(err, errlen, "cpr-exec: cannot tell which binary this is");
		ret = -ENOENT;
		goto out_free;
	}
	/* An fd to this binary: the way back if the new one cannot take over. */
	exefd = open("/proc/self/exe", O_PATH | O_CLOEXEC);

	cs->stop_ns = now_ns();
	ret = vm_pause(vm);
	if (ret < 0) {
		snprintf(err, errlen, "cpr-exec: cannot stop the vCPUs: %s", strerror(-ret));
		goto out_free;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: pipe: %s", strerror(-ret));
		goto out_resume;
	}
	for (int i = 0; i < cpr.argc && off + strlen(cpr.argv[i]) + 1 <= sizeof(cs->prev_argv); i++) {
		memcpy(cs->prev_argv + off, cpr.argv[i], strlen(cpr.argv[i]) + 1);
		off += strlen(cpr.argv[i]) + 1;
	}
	cs->prev_argv_len = off;
	chardev_export(vm->serial_chr, ho);
	if ((ret = cpr_add_fd(cs, "ram", vm->mem.fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "qmp", cpr.qmp_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "serial0-listen", ho->listen_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "serial0-conn", ho->conn_fd)) < 0 ||
	    (ret = cpr_add_fd(cs, "keeper", pipefd[1])) < 0 ||
	    (ret = cpr_add_fd(cs, "prev-exe", exefd)) < 0) {
		snprintf(err, errlen, "cpr-exec: fd registry full");
		goto out_resume;
	}

	/* Keeper first: its pid goes into the state. */
	kstack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (kstack == MAP_FAILED) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: keeper stack: %s", strerror(-ret));
		goto out_resume;
	}
	ka.rfd = pipefd[0];
	ka.wfd = pipefd[1];
	keeper = clone(keeper_main, (char *)kstack + KEEPER_STACK, CLONE_VM | SIGCHLD, &ka);
	if (keeper < 0) {
		ret = -errno;
		snprintf(err, errlen, "cpr-exec: keeper: %s", strerror(-ret));
		goto out_resume;
	}
	cs->keeper_pid = keeper;

	snapshot_machine(vm, &ms, RAM_IN_FD);
	if ((ret = stream_writer_begin(&b, CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR,
				       CPRVM_VERSION_MICRO)) < 0 ||
	    (ret = stream_put_state(&b, "machine", &machine_state_desc, &ms, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = snapshot_put_devices(vm, &b)) < 0 ||
	    (ret = stream_put_state(&b, "chardev/serial0", &chardev_handover_desc, ho,
				    STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_put_state(&b, "cpr", &cpr_state_desc, cs, STREAM_SEC_REQUIRED)) < 0 ||
	    (ret = stream_writer_end(&b)) < 0) {
		snprintf(err, errlen, "cpr-exec: cannot capture VM state: %s", strerror(-ret));
		goto out_resume;
	}
	memfd = cpr_write_memfd(&b);
	if (memfd < 0) {
		ret = memfd;
		snprintf(err, errlen, "cpr-exec: state memfd: %s", strerror(-ret));
		goto out_resume;
	}
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	unsetenv(CPR_ENV_ROLLBACK);
	cpr_set_cloexec(cs, false);
	pr_info("cpr-exec: %s", cpr.exec_argv ? argv[0] : cpr.exe);
	execv(cpr.exec_argv ? argv[0] : cpr.exe, argv);

	/* Still here: the exec failed, and this image carries on. */
	ret = -errno;
	snprintf(err, errlen, "cpr-exec: cannot execute '%s': %s",
		 cpr.exec_argv ? argv[0] : cpr.exe, strerror(-ret));
	cpr_set_cloexec(cs, true);
	unsetenv(CPR_ENV_STATE);
out_resume:
	if (memfd >= 0)
		close(memfd);
	if (pipefd[1] >= 0)
		close(pipefd[1]); /* the keeper sees EOF and exits */
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (keeper > 0)
		waitpid(keeper, NULL, 0);
	if (kstack != MAP_FAILED)
		munmap(kstack, KEEPER_STACK);
	vm_resume(vm);
out_free:
	if (exefd >= 0)
		close(exefd);
	sbuf_free(&b);
	free(ho);
	free(cs);
	return ret;
}

/* --- incoming --------------------------------------------------------------------- */

bool cpr_incoming_pending(void)
{
	return getenv(CPR_ENV_STATE) != NULL;
}

/* Gives everything back to the previous binary. Returns only on failure. */
static void cpr_rollback(const struct cpr_state *cs, int memfd, const char *why)
{
	char *argv[256];
	char envval[32];
	size_t off = 0;
	int argc = 0, exefd = cpr_find_fd(cs, "prev-exe");

	if (exefd < 0 || getenv(CPR_ENV_ROLLBACK) || !cs->prev_argv_len)
		return; /* no way back, or already on it */
	while (off < cs->prev_argv_len && argc < 255) {
		argv[argc++] = (char *)cs->prev_argv + off;
		off += strnlen(cs->prev_argv + off, cs->prev_argv_len - off) + 1;
	}
	argv[argc] = NULL;
	pr_err("live update failed: %s; going back to the previous binary", why);
	lseek(memfd, 0, SEEK_SET);
	snprintf(envval, sizeof(envval), "%d", memfd);
	setenv(CPR_ENV_STATE, envval, 1);
	setenv(CPR_ENV_ROLLBACK, why, 1);
	cpr_set_cloexec(cs, false);
	fcntl(memfd, F_SETFD, 0);
	syscall(SYS_execveat, exefd, "", argv, environ, AT_EMPTY_PATH);
	pr_err("cannot go back to the previous binary: %s", strerror(errno));
}

static int dup_claim(const struct cpr_state *cs, const char *name)
{
	int fd = cpr_find_fd(cs, name);

	return fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

int cpr_incoming(struct vm_config *cfg, struct loop *loop, struct vm **vm_out,
		 struct qmp_server **qmp_out, char *err, size_t errlen)
{
	struct stream_index idx = { 0 };
	struct snapshot snap = { .fd = -1 };
	struct cpr_state *cs = calloc(1, sizeof(*cs));
	struct chardev_handover *ho = calloc(1, sizeof(*ho));
	struct qmp_server *qmp = NULL;
	struct vm *vm = NULL;
	const char *rollback = getenv(CPR_ENV_ROLLBACK);
	char why[480] = "";
	uint8_t *buf = NULL;
	struct stat st;
	int memfd = atoi(getenv(CPR_ENV_STATE)), ret, fd;
	bool have_idx = false;

	unsetenv(CPR_ENV_STATE);
	if (!cs || !ho) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (fstat(memfd, &st) < 0 || st.st_size <= 0 || st.st_size > (256 << 20) ||
	    !(buf = malloc(st.st_size)) || pread(memfd, buf, st.st_size, 0) != st.st_size) {
		snprintf(err, errlen, "live update: cannot read the handed-over state (fd %d)", memfd);
		ret = -EINVAL;
		goto out_err;
	}
	fcntl(memfd, F_SETFD, FD_CLOEXEC);
	chardev_keep_socket_files = true;
	/* The registry first: without it there is no way back. */
	ret = stream_parse(buf, st.st_size, &idx, why, sizeof(why));
	if (ret == 0) {
		ret = stream_get_state(&idx, "cpr", &cpr_state_desc, cs, why, sizeof(why));
		stream_index_free(&idx);
	}
	if (ret < 0) {
		snprintf(err, errlen, "live update: unusable state: %s", why);
		goto out_err;
	}
	ret = snapshot_load_stream(buf, st.st_size, cfg, true, &snap, &idx, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	have_idx = true;
	ret = stream_get_state(&idx, "chardev/serial0", &chardev_handover_desc, ho, why,
			       sizeof(why));
	if (ret < 0)
		goto out_rollback;
	if (snap.machine.ram_mode != RAM_IN_FD) {
		snprintf(why, sizeof(why), "state does not hand over RAM as an fd");
		ret = -EINVAL;
		goto out_rollback;
	}
	/* Everything is checked: claim fds (dups, see the top of the file). */
	cfg->adopt_ram_fd = dup_claim(cs, "ram");
	ho->listen_fd = dup_claim(cs, "serial0-listen");
	ho->conn_fd = dup_claim(cs, "serial0-conn");
	cfg->serial_handover = ho;
	cfg->restoring = 1;
	if (cfg->adopt_ram_fd < 0) {
		snprintf(why, sizeof(why), "no guest RAM fd handed over");
		ret = -EBADF;
		goto out_rollback;
	}
	if (cfg->qmp_path) {
		fd = dup_claim(cs, "qmp");
		ret = qmp_server_new_fd(&qmp, cfg->qmp_path, fd, loop, why, sizeof(why));
		if (ret < 0)
			goto out_rollback;
	}
	ret = vm_create(&vm, cfg, loop, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	ret = snapshot_apply(&snap, vm, true, why, sizeof(why));
	if (ret < 0)
		goto out_rollback;
	if (qmp) {
		ret = qmp_commands_register(qmp, vm);
		if (ret < 0) {
			snprintf(why, sizeof(why), "cannot register QMP commands");
			goto out_rollback;
		}
		cpr_set_qmp_fd(qmp_server_listen_fd(qmp));
	}
	ret = vm_start(vm);
	if (ret < 0) {
		snprintf(why, sizeof(why), "cannot start vCPUs: %s", strerror(-ret));
		goto out_rollback;
	}
	/* The guest runs: report, then let go of the old world. */
	vm_cpr_completed(vm, (int64_t)(now_ns() - cs->stop_ns) / 1000, rollback);
	chardev_keep_socket_files = false;
	signal(SIGCHLD, SIG_IGN); /* the keeper reaps itself */
	for (uint32_t i = 0; i < cs->nr_fds; i++)
		close(cs->fds[i].fd);
	close(memfd);
	stream_index_free(&idx);
	free(snap.vcpus);
	free(buf);
	free(cs);
	*vm_out = vm;
	*qmp_out = qmp;
	/* ho is referenced by cfg only during vm_create; free it now. */
	cfg->serial_handover = NULL;
	free(ho);
	return 0;

out_rollback:
	snprintf(err, errlen, "live update: %s", why);
	cpr_rollback(cs, memfd, why);
out_err:
	if (have_idx)
		stream_index_free(&idx);
	free(snap.vcpus);
	free(buf);
	free(cs);
	free(ho);
	(void)vm;
	(void)qmp;
	return ret < 0 ? ret : -EINVAL;
}
