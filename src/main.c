/* main.c — argv -> struct vm_config, --help, and the process's lifetime:
 * build the VM and the QMP server, run the main loop, tear down. The only
 * file allowed to die(), and only before a guest exists. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "lib/log.h"
#include "lib/loop.h"
#include "lib/version.h"
#include "cpr/cpr.h"
#include "cpr/snapshot.h"
#include "qmp/qmp.h"
#include "vm/vm.h"

static const char usage_text[] =
	"Usage: cprvm --kernel FILE [options]\n"
	"Run a KVM guest whose RAM lives in a file descriptor, ready for checkpoint/restart.\n"
	"\n"
	"  --kernel FILE        a Linux bzImage, or a PVH ELF (XEN_ELFNOTE_PHYS32_ENTRY)\n"
	"  --initrd FILE        initial ramdisk (an initramfs: cpio, or compressed)\n"
	"  --cmdline STR        kernel command line (at most 4095 bytes)\n"
	"  --memory SIZE        guest RAM, with K/M/G/T suffix (default 512M)\n"
	"  --cpus N             number of vCPUs, 1-64 (default 1)\n"
	"  --mem-path FILE      keep guest RAM in FILE (tmpfs, hugetlbfs or disk), created\n"
	"                       and sized if absent; default: an anonymous memfd\n"
	"  --serial BACKEND     COM1 backend: stdio (default), none, file:PATH, pty,\n"
	"                       unix:PATH (listening; one client at a time)\n"
	"  --qmp PATH           QMP server on a unix socket (mode 0600)\n"
	"  --incoming URI       load state instead of booting: file:PATH (a snapshot\n"
	"                       written by QMP migrate), then run the guest; defer:\n"
	"                       wait for QMP migrate-incoming; unix:PATH: receive a\n"
	"                       running guest from another cprvm (cpr-transfer)\n"
	"  --name NAME          a name for this VM (shown in messages)\n"
	"  -v, --verbose        more messages on stderr (repeat for debug)\n"
	"  -h, --help           this help\n"
	"  -V, --version        print the version\n"
	"\n"
	"Exit status: 0 when the guest powers off or on QMP 'quit', 1 on a guest crash\n"
	"or runtime error, 2 on a bad command line or set-up failure.\n";

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	fprintf(stderr, "cprvm: %s\n", buf);
	exit(2);
}

static void parse_args(int argc, char **argv, struct vm_config *cfg)
{
	enum { OPT_KERNEL = 256, OPT_INITRD, OPT_CMDLINE, OPT_MEMORY, OPT_CPUS, OPT_MEM_PATH,
	       OPT_SERIAL, OPT_QMP, OPT_INCOMING, OPT_NAME };
	static const struct option opts[] = {
		{ "kernel", required_argument, NULL, OPT_KERNEL },
		{ "initrd", required_argument, NULL, OPT_INITRD },
		{ "cmdline", required_argument, NULL, OPT_CMDLINE },
		{ "memory", required_argument, NULL, OPT_MEMORY },
		{ "cpus", required_argument, NULL, OPT_CPUS },
		{ "mem-path", required_argument, NULL, OPT_MEM_PATH },
		{ "serial", required_argument, NULL, OPT_SERIAL },
		{ "qmp", required_argument, NULL, OPT_QMP },
		{ "incoming", required_argument, NULL, OPT_INCOMING },
		{ "name", required_argument, NULL, OPT_NAME },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	char err[256];
	int c, verbose = 0;

	memset(cfg, 0, sizeof(*cfg));
	cfg->mem_size = CPRVM_DEFAULT_MEM;
	cfg->nr_cpus = 1;
	cfg->serial.kind = CHARDEV_STDIO;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":vhV", opts, NULL)) != -1) {
		switch (c) {
		case OPT_KERNEL: cfg->kernel = optarg; break;
		case OPT_INITRD: cfg->initrd = optarg; break;
		case OPT_CMDLINE: cfg->cmdline = optarg; break;
		case OPT_MEM_PATH: cfg->mem_path = optarg; break;
		case OPT_QMP: cfg->qmp_path = optarg; break;
		case OPT_INCOMING: cfg->incoming = optarg; break;
		case OPT_NAME: cfg->name = optarg; break;
		case OPT_MEMORY:
			if (parse_size(optarg, &cfg->mem_size, err, sizeof(err)) < 0)
				die("--memory: %s", err);
			break;
		case OPT_CPUS: {
			char *end;
			long n;
			errno = 0;
			n = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || n < 1 || n > CPRVM_MAX_CPUS)
				die("--cpus: '%s' is not a number from 1 to %d", optarg,
				    CPRVM_MAX_CPUS);
			cfg->nr_cpus = (int)n;
			break;
		}
		case OPT_SERIAL:
			if (chardev_parse(optarg, &cfg->serial, err, sizeof(err)) < 0)
				die("--serial: %s", err);
			break;
		case 'v': verbose++; break;
		case 'h':
			fputs(usage_text, stdout);
			exit(0);
		case 'V':
			printf("cprvm %d.%d.%d\n", CPRVM_VERSION_MAJOR, CPRVM_VERSION_MINOR,
			       CPRVM_VERSION_MICRO);
			exit(0);
		case ':':
			die("option '%s' needs an argument (see --help)", argv[optind - 1]);
		default:
			die("unknown option '%s' (see --help)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (!cfg->kernel)
		die("--kernel FILE is required (see --help)");
	if (cfg->mem_size < CPRVM_MIN_MEM)
		die("--memory must be at least %lluM", CPRVM_MIN_MEM >> 20);
	if (cfg->cmdline && strlen(cfg->cmdline) > CPRVM_MAX_CMDLINE)
		die("--cmdline is longer than %d bytes", CPRVM_MAX_CMDLINE);
	if (cfg->incoming && strncmp(cfg->incoming, "file:", 5) && strcmp(cfg->incoming, "defer") &&
	    (strncmp(cfg->incoming, "unix:", 5) || !cfg->incoming[5]))
		die("--incoming '%s' is not supported yet (use file:PATH, unix:PATH or defer)",
		    cfg->incoming);
	if (cfg->incoming && !strcmp(cfg->incoming, "defer") && !cfg->qmp_path)
		die("--incoming defer needs --qmp (state arrives with QMP migrate-incoming)");
	if (cfg->qmp_path && strlen(cfg->qmp_path) >= 108)
		die("--qmp path is too long (max 107 bytes): %s", cfg->qmp_path);
	log_set_level(verbose >= 2 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);
}

struct main_ctx {
	struct vm *vm;
	int sfd;
	struct qmp_server *qmp;
	const char *qmp_path;
	struct loop *loop;
};

/* A live update's new side builds the QMP server here, over the listening
 * socket the old side handed over (struct cpr_qmp_hooks). */
static int qmp_adopt(void *opaque, int fd, char *why, size_t whylen)
{
	struct main_ctx *m = opaque;

	return qmp_server_new_fd(&m->qmp, m->qmp_path, fd, m->loop, why, whylen);
}

static int qmp_attach(void *opaque, struct vm *vm, char *why, size_t whylen)
{
	struct main_ctx *m = opaque;
	int ret = qmp_commands_register(m->qmp, vm);

	if (ret < 0)
		return set_err(why, whylen, ret, "cannot register QMP commands");
	cpr_set_qmp_fd(qmp_server_listen_fd(m->qmp));
	return 0;
}

static void qmp_drop(void *opaque)
{
	struct main_ctx *m = opaque;

	qmp_server_release_path(m->qmp);
	qmp_server_free(m->qmp);
	m->qmp = NULL;
}

static void on_signal(int fd, uint32_t events, void *opaque)
{
	struct main_ctx *m = opaque;
	struct signalfd_siginfo si;

	(void)events;
	if (read(fd, &si, sizeof(si)) != sizeof(si))
		return;
	pr_info("signal %u: shutting down", si.ssi_signo);
	vm_quit(m->vm, 0, "host-signal", false);
}

int main(int argc, char **argv)
{
	struct vm_config cfg;
	struct main_ctx m = { .sfd = -1 };
	const struct cpr_qmp_hooks qmp_hooks = { .adopt = qmp_adopt, .attach = qmp_attach,
						 .drop = qmp_drop, .ctx = &m };
	struct snapshot *snap = NULL;
	struct vm_build build = { .ram_fd = -1 };
	struct loop *loop;
	sigset_t sigs;
	char err[512];
	bool exec_update;
	int ret, status;

	cpr_init(argc, argv);
	parse_args(argc, argv, &cfg);
	if (cfg.name)
		log_set_prefix("cprvm"); /* one prefix for scripts; name goes in QMP */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	ret = loop_new(&loop);
	if (ret < 0)
		die("cannot create event loop: %s", strerror(-ret));
	m.loop = loop;
	m.qmp_path = cfg.qmp_path;
	exec_update = cpr_incoming_pending();
	if (exec_update || (cfg.incoming && !strncmp(cfg.incoming, "unix:", 5))) {
		/* Live update: this image (cpr-exec) or this process, to which
		 * the old one sends state and fds (cpr-transfer), takes over a
		 * running guest. */
		ret = exec_update ? cpr_incoming(&cfg, loop, &qmp_hooks, &m.vm, err, sizeof(err)) :
			cpr_transfer_incoming(&cfg, loop, cfg.incoming + 5, &qmp_hooks, &m.vm, err,
					      sizeof(err));
		if (ret == -ESHUTDOWN) { /* the guest powered off meanwhile: done */
			pr_warn("%s", err);
			loop_free(loop);
			return 0;
		}
		if (ret < 0)
			die("%s", err);
		goto run;
	}
	/* The QMP socket first: it is cheap to undo, the VM (a --mem-path file
	 * it may create) is not. Clients that connect meanwhile wait in the
	 * backlog until the loop runs. */
	if (cfg.qmp_path) {
		ret = qmp_server_new(&m.qmp, cfg.qmp_path, loop, err, sizeof(err));
		if (ret < 0)
			die("%s", err);
	}
	/* Incoming state is read and validated whole before any VM exists;
	 * a VM that waits for it (defer) loads no kernel either. */
	build.restoring = cfg.incoming != NULL;
	if (cfg.incoming && strcmp(cfg.incoming, "defer")) {
		ret = snapshot_open(cfg.incoming + 5, &cfg, &snap, err, sizeof(err));
		if (ret < 0) {
			qmp_server_free(m.qmp);
			die("%s", err);
		}
		snapshot_vm_build(snap, &build);
	}
	ret = vm_create(&m.vm, &cfg, &build, loop, err, sizeof(err));
	if (ret == 0 && snap) {
		ret = snapshot_apply(snap, m.vm, false, false, err, sizeof(err));
		if (ret < 0)
			vm_destroy(m.vm);
	}
	snapshot_free(snap);
	if (ret < 0) {
		qmp_server_free(m.qmp);
		die("%s", err);
	}
	if (m.qmp) {
		ret = qmp_commands_register(m.qmp, m.vm);
		if (ret < 0) {
			vm_destroy(m.vm);
			qmp_server_free(m.qmp);
			die("cannot register QMP commands: %s", strerror(-ret));
		}
	}
	cpr_set_qmp_fd(qmp_server_listen_fd(m.qmp));
	if (cfg.incoming && !strcmp(cfg.incoming, "defer")) {
		vm_set_inmigrate(m.vm);
		ret = 0;
	} else {
		ret = vm_start(m.vm);
	}
run:
	m.sfd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (m.sfd >= 0)
		loop_add_fd(loop, m.sfd, EPOLLIN, on_signal, &m);

	if (ret < 0) {
		pr_err("cannot start vCPUs: %s", strerror(-ret));
		status = 1;
	} else {
		status = loop_run(loop);
	}
	if (m.qmp)
		qmp_server_flush(m.qmp, 1000);
	vm_destroy(m.vm);
	qmp_server_free(m.qmp);
	if (m.sfd >= 0) {
		loop_del_fd(loop, m.sfd);
		close(m.sfd);
	}
	loop_free(loop);
	return status < 0 ? 1 : status;
}
