/* cprctl.c — a small command line over QMP for people and scripts.
 *
 *   cprctl --qmp PATH [--json] [--timeout SEC] COMMAND [ARGS...]
 *
 * One connection per run: greeting, qmp_capabilities, one command, exit.
 * Events that arrive meanwhile are skipped; replies are matched by id.
 * Commands live in ctl_cmds[]: a name, the QMP command it runs, how it builds
 * the arguments and how it prints the result; a verb that needs several QMP
 * commands (snapshot) has a run() of its own instead.
 * Exit codes are a promise to scripts; see usage(). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "lib/log.h"

enum {
	EXIT_OK = 0,
	EXIT_QMP_ERROR = 1, /* the VM answered with an error */
	EXIT_USAGE = 2,
	EXIT_CONNECT = 3, /* could not reach cprvm, or the connection failed */
};

#define CTL_MAX_MSG (64u << 20)

struct ctl {
	const char *path;
	int fd;
	int timeout_ms; /* per reply; -1: wait forever */
	bool json;
	bool bypass; /* snapshot --bypass */
	char *buf;
	size_t len, cap;
};

static void __attribute__((noreturn, format(printf, 2, 3))) ctl_die(int code, const char *fmt, ...)
{
	va_list ap;

	fputs("cprctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static json_t *ctl_execute(struct ctl *c, const char *execute, json_t *args, const char *id);

/* ---- commands --------------------------------------------------------- */

struct ctl_cmd {
	const char *name;
	const char *args_usage; /* for --help, after the name */
	const char *help;
	const char *execute; /* the QMP command, unless build() picks one */
	int min_args, max_args;
	/* Optional: builds "arguments" (and may override execute) from argv. */
	int (*build)(int argc, char **argv, const char **execute, json_t **args);
	/* Optional: prints the "return" value for people. */
	void (*print)(json_t *ret);
	/* Optional, instead of execute/build/print: runs the verb on a
	 * negotiated connection and prints; returns the exit code. */
	int (*run)(struct ctl *c, int argc, char **argv);
};

static void print_status(json_t *ret)
{
	const char *st = json_string_value(json_object_get(ret, "status"));

	printf("%s\n", st ? st : "unknown");
}

static void print_version(json_t *ret)
{
	json_t *q = json_object_get(ret, "qemu");

	printf("%lld.%lld.%lld (%s)\n", (long long)json_integer_value(json_object_get(q, "major")),
	       (long long)json_integer_value(json_object_get(q, "minor")),
	       (long long)json_integer_value(json_object_get(q, "micro")),
	       json_string_value(json_object_get(ret, "package")) ?: "?");
}

static void print_json(json_t *ret)
{
	char *s = json_dumps(ret, JSON_ENCODE_ANY);

	if (s)
		printf("%s\n", s);
	free(s);
}

/* raw EXECUTE [ARGUMENTS-JSON]: any QMP command, for what has no verb yet. */
static int build_raw(int argc, char **argv, const char **execute, json_t **args)
{
	json_error_t jerr;

	*execute = argv[0];
	if (argc < 2)
		return 0;
	*args = json_loads(argv[1], 0, &jerr);
	if (!json_is_object(*args)) {
		fprintf(stderr, "cprctl: raw: arguments must be a JSON object: %s\n",
			*args ? "not an object" : jerr.text);
		json_decref(*args);
		*args = NULL;
		return -EINVAL;
	}
	return 0;
}

static double ms_of_us(json_t *us)
{
	return (double)json_integer_value(us) / 1000.0;
}

/* query-migrate for people: what the last snapshot/migration did. */
static void print_migrate_status(json_t *ret)
{
	const char *st = json_string_value(json_object_get(ret, "status"));
	json_t *ram = json_object_get(ret, "ram");

	if (!st) {
		printf("no migration or snapshot has run\n");
		return;
	}
	if (!strcmp(st, "failed")) {
		printf("failed: %s\n",
		       json_string_value(json_object_get(ret, "error-desc")) ?: "unknown error");
		return;
	}
	if (strcmp(st, "completed")) {
		printf("%s\n", st);
		return;
	}
	printf("completed: downtime %.1f ms, total %.1f ms",
	       ms_of_us(json_object_get(ret, "x-downtime-us")),
	       ms_of_us(json_object_get(ret, "x-total-time-us")));
	if (ram)
		printf(", RAM %" PRIu64 " MiB, %.1f MiB written",
		       (uint64_t)json_integer_value(json_object_get(ram, "total")) >> 20,
		       (double)json_integer_value(json_object_get(ram, "transferred")) / (1 << 20));
	printf("\n");
}

/* snapshot PATH [--bypass]: x-ignore-shared on or off, migrate to file:PATH,
 * then query-migrate for the pause. PATH is made absolute here: cprvm's
 * working directory need not be ours. */
static char *file_uri(const char *verb, const char *path)
{
	char cwd[PATH_MAX], *uri;
	int n;

	if (path[0] == '/') {
		n = asprintf(&uri, "file:%s", path);
	} else {
		if (!getcwd(cwd, sizeof(cwd)))
			ctl_die(EXIT_USAGE, "%s: cannot make '%s' absolute: %s", verb, path,
				strerror(errno));
		n = asprintf(&uri, "file:%s/%s", cwd, path);
	}
	if (n < 0)
		ctl_die(EXIT_CONNECT, "out of memory");
	return uri;
}

static int run_snapshot(struct ctl *c, int argc, char **argv)
{
	char *uri = file_uri("snapshot", argv[0]);
	json_t *caps, *margs, *st;
	double ms;

	(void)argc;
	caps = json_pack("{s[{sssb}]}", "capabilities", "capability", "x-ignore-shared", "state",
			 (int)c->bypass);
	json_decref(ctl_execute(c, "migrate-set-capabilities", caps, "cprctl-caps"));
	json_decref(caps);
	margs = json_pack("{ss}", "uri", uri);
	json_decref(ctl_execute(c, "migrate", margs, "cprctl-migrate"));
	json_decref(margs);
	st = ctl_execute(c, "query-migrate", NULL, "cprctl-query");
	if (strcmp(json_string_value(json_object_get(st, "status")) ?: "", "completed"))
		ctl_die(EXIT_QMP_ERROR, "snapshot: migration %s: %s",
			json_string_value(json_object_get(st, "status")) ?: "did not run",
			json_string_value(json_object_get(st, "error-desc")) ?: "no details");
	if (c->json) {
		print_json(st);
	} else {
		ms = ms_of_us(json_object_get(st, "x-downtime-us"));
		printf("snapshot written to %s (%s) in %.1f ms, VM paused\n", uri + 5,
		       c->bypass ? "bypass: device state only" : "full: device state and RAM", ms);
	}
	json_decref(st);
	free(uri);
	return EXIT_OK;
}

/* restore PATH: into a cprvm waiting with --incoming defer. */
static int run_restore(struct ctl *c, int argc, char **argv)
{
	char *uri = file_uri("restore", argv[0]);
	json_t *args = json_pack("{ss}", "uri", uri);

	(void)argc;
	json_decref(ctl_execute(c, "migrate-incoming", args, "cprctl-incoming"));
	json_decref(args);
	if (!c->json)
		printf("restored from %s, guest running\n", uri + 5);
	free(uri);
	return EXIT_OK;
}

#define CTL_CMD(_name, _args, _help, _execute, _min, _max, ...)                                 \
	{ .name = (_name), .args_usage = (_args), .help = (_help), .execute = (_execute),       \
	  .min_args = (_min), .max_args = (_max), __VA_ARGS__ }

static const struct ctl_cmd ctl_cmds[] = {
	CTL_CMD("status", "", "print the run state (running, paused, shutdown, ...)",
		"query-status", 0, 0, .print = print_status),
	CTL_CMD("stop", "", "pause the guest's vCPUs", "stop", 0, 0),
	CTL_CMD("cont", "", "resume the guest's vCPUs", "cont", 0, 0),
	CTL_CMD("quit", "", "end cprvm (the guest is gone)", "quit", 0, 0),
	CTL_CMD("version", "", "print cprvm's version", "query-version", 0, 0,
		.print = print_version),
	CTL_CMD("snapshot", " PATH [--bypass]", "pause the guest, write a snapshot to PATH", NULL,
		1, 1, .run = run_snapshot),
	CTL_CMD("restore", " PATH", "load a snapshot into a cprvm started with --incoming defer",
		NULL, 1, 1, .run = run_restore),
	CTL_CMD("migrate-status", "", "what the last snapshot or migration did",
		"query-migrate", 0, 0, .print = print_migrate_status),
	CTL_CMD("raw", " EXECUTE [ARGUMENTS-JSON]", "run any QMP command, print its return as JSON",
		NULL, 1, 2, .build = build_raw, .print = print_json),
};

static const struct ctl_cmd *ctl_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++)
		if (!strcmp(ctl_cmds[i].name, name))
			return &ctl_cmds[i];
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: cprctl --qmp PATH [--json] [--timeout SEC] COMMAND [ARGS...]\n"
		   "Control a running cprvm over its QMP socket (cprvm --qmp PATH).\n\n"
		   "Commands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++) {
		char left[64];
		snprintf(left, sizeof(left), "%s%s", ctl_cmds[i].name, ctl_cmds[i].args_usage);
		fprintf(f, "  %-34s %s\n", left, ctl_cmds[i].help);
	}
	fprintf(f, "\nOptions:\n"
		   "  --qmp PATH       the QMP unix socket (required)\n"
		   "  --json           print the command's raw QMP return value as JSON\n"
		   "  --timeout SEC    give up waiting for a reply after SEC seconds\n"
		   "                   (default 60; 0 waits forever)\n"
		   "  --bypass         snapshot: x-ignore-shared, device state only\n"
		   "  -h, --help       show this help\n\n"
		   "stop, cont and quit print nothing on success. After snapshot the VM stays\n"
		   "paused ('cont' resumes it). Restoring a snapshot starts a new cprvm, with the\n"
		   "options the VM was started with (and its --mem-path for --bypass):\n"
		   "  cprvm --kernel ... --memory ... --incoming file:PATH\n"
		   "or, for a cprvm started with --incoming defer --qmp PATH: cprctl restore FILE\n\n"
		   "Exit status:\n"
		   "  0  success\n"
		   "  1  cprvm answered with an error (its message is on stderr)\n"
		   "  2  usage error\n"
		   "  3  cannot connect to PATH, or the connection failed or timed out\n");
}

/* ---- the connection --------------------------------------------------- */

static void ctl_connect(struct ctl *c)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	if (strlen(c->path) >= sizeof(sa.sun_path))
		ctl_die(EXIT_CONNECT, "cannot connect to %s: %s", c->path, strerror(ENAMETOOLONG));
	memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		ctl_die(EXIT_CONNECT, "cannot connect to %s: %s", c->path, strerror(errno));
}

static void ctl_send(struct ctl *c, json_t *msg)
{
	char *text = json_dumps(msg, JSON_COMPACT);
	size_t len, off = 0;

	if (!text)
		ctl_die(EXIT_CONNECT, "out of memory");
	len = strlen(text);
	text[len++] = '\n'; /* replaces the NUL: json_dumps' buffer has room */
	while (off < len) {
		ssize_t n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			ctl_die(EXIT_CONNECT, "lost connection to %s: %s", c->path,
				strerror(errno));
		off += n;
	}
	free(text);
}

static long ctl_now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000L + t.tv_nsec / 1000000;
}

/* The next message: cprvm sends one JSON object per line. */
static json_t *ctl_recv(struct ctl *c)
{
	long deadline = c->timeout_ms < 0 ? -1 : ctl_now_ms() + c->timeout_ms;

	for (;;) {
		char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
		struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
		json_error_t jerr;
		ssize_t n;
		int wait;

		if (nl) {
			size_t l = nl - c->buf + 1;
			json_t *m = json_loadb(c->buf, l, 0, &jerr);
			if (!m)
				ctl_die(EXIT_CONNECT, "bad message from %s: %s", c->path,
					jerr.text);
			memmove(c->buf, c->buf + l, c->len - l);
			c->len -= l;
			return m;
		}
		if (c->len >= CTL_MAX_MSG)
			ctl_die(EXIT_CONNECT, "message from %s too large", c->path);
		if (c->cap - c->len < 4096) {
			c->cap = c->cap ? c->cap * 2 : 65536;
			c->buf = realloc(c->buf, c->cap);
			if (!c->buf)
				ctl_die(EXIT_CONNECT, "out of memory");
		}
		wait = deadline < 0 ? -1 : (int)(deadline - ctl_now_ms());
		if (deadline >= 0 && wait <= 0)
			ctl_die(EXIT_CONNECT, "no reply from %s within %d s", c->path,
				c->timeout_ms / 1000);
		if (poll(&pfd, 1, wait) < 0 && errno != EINTR)
			ctl_die(EXIT_CONNECT, "poll: %s", strerror(errno));
		if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			ctl_die(EXIT_CONNECT, "lost connection to %s: %s", c->path,
				strerror(errno));
		if (n == 0)
			ctl_die(EXIT_CONNECT, "%s closed the connection", c->path);
		c->len += n;
	}
}

/* Runs one QMP command; returns its "return" value (a new reference), or
 * exits 1 with the error's description. */
static json_t *ctl_execute(struct ctl *c, const char *execute, json_t *args, const char *id)
{
	json_t *req = json_pack("{s:s,s:s}", "execute", execute, "id", id);

	if (!req)
		ctl_die(EXIT_CONNECT, "out of memory");
	if (args)
		json_object_set(req, "arguments", args);
	ctl_send(c, req);
	json_decref(req);
	for (;;) {
		json_t *m = ctl_recv(c), *ret, *err;
		const char *rid = json_string_value(json_object_get(m, "id"));

		if (json_object_get(m, "event") || !rid || strcmp(rid, id)) {
			json_decref(m); /* an event, or not ours */
			continue;
		}
		err = json_object_get(m, "error");
		if (err) {
			const char *desc = json_string_value(json_object_get(err, "desc"));
			ctl_die(EXIT_QMP_ERROR, "%s", desc ? desc : "unknown error");
		}
		ret = json_object_get(m, "return");
		if (!ret)
			ctl_die(EXIT_CONNECT, "bad reply from %s", c->path);
		json_incref(ret);
		json_decref(m);
		return ret;
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"qmp", required_argument, NULL, 'q'},
	    {"json", no_argument, NULL, 'j'},
	    {"timeout", required_argument, NULL, 't'},
	    {"bypass", no_argument, NULL, 'b'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ctl c = {.fd = -1, .timeout_ms = 60000};
	const struct ctl_cmd *cmd;
	const char *execute;
	json_t *greeting, *args = NULL, *ret;
	int opt, nargs;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'q':
			c.path = optarg;
			break;
		case 'j':
			c.json = true;
			break;
		case 't': {
			char *end;
			long sec = strtol(optarg, &end, 10);
			if (*end || end == optarg || sec < 0 || sec > 86400)
				ctl_die(EXIT_USAGE,
					"--timeout: expected seconds (0-86400), got '%s'", optarg);
			c.timeout_ms = sec ? (int)sec * 1000 : -1;
			break;
		}
		case 'b':
			c.bypass = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			fprintf(stderr, "Try 'cprctl --help'.\n");
			return EXIT_USAGE;
		}
	}
	if (optind >= argc)
		ctl_die(EXIT_USAGE, "no command given (try 'cprctl --help')");
	cmd = ctl_find(argv[optind]);
	if (!cmd)
		ctl_die(EXIT_USAGE, "unknown command '%s' (try 'cprctl --help')", argv[optind]);
	nargs = argc - optind - 1;
	if (nargs < cmd->min_args || nargs > cmd->max_args)
		ctl_die(EXIT_USAGE, "usage: cprctl --qmp PATH %s%s", cmd->name, cmd->args_usage);
	if (c.bypass && cmd->run != run_snapshot)
		ctl_die(EXIT_USAGE, "--bypass is an option of 'snapshot' only");
	if (!c.path)
		ctl_die(EXIT_USAGE, "--qmp PATH is required (try 'cprctl --help')");
	execute = cmd->execute;
	if (cmd->build && cmd->build(nargs, argv + optind + 1, &execute, &args) < 0)
		return EXIT_USAGE;

	ctl_connect(&c);
	greeting = ctl_recv(&c);
	if (!json_object_get(greeting, "QMP"))
		ctl_die(EXIT_CONNECT, "%s does not speak QMP", c.path);
	json_decref(greeting);
	json_decref(ctl_execute(&c, "qmp_capabilities", NULL, "cprctl-cap"));
	if (cmd->run) {
		int code = cmd->run(&c, nargs, argv + optind + 1);
		close(c.fd);
		free(c.buf);
		return fflush(stdout) == 0 ? code : EXIT_CONNECT;
	}
	ret = ctl_execute(&c, execute, args, "cprctl-cmd");
	if (c.json)
		print_json(ret);
	else if (cmd->print)
		cmd->print(ret);
	json_decref(ret);
	json_decref(args);
	close(c.fd);
	free(c.buf);
	return fflush(stdout) == 0 ? EXIT_OK : EXIT_CONNECT;
}
