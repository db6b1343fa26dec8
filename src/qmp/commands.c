/* commands.c — the VM's QMP commands and events: what each command name does
 * to struct vm, with QEMU's names, reply shapes and error texts.
 *
 * Built into the server (dispatch.c): qmp_capabilities, query-commands.
 * Here: query-status, stop, cont, quit, query-version; migrate, its
 * parameters, capabilities and status, migrate-incoming; and the VM's event
 * sink (STOP, RESUME, SHUTDOWN, ...) forwarded to negotiated clients.
 * Handlers and the sink run on the main thread (vm.h's rule for vm_* calls). */
#include <errno.h>
#include <string.h>

#include "cpr/cpr.h"
#include "cpr/migrate.h"
#include "lib/log.h"
#include "qmp/qmp.h"
#include "vm/vm.h"

/* How long "quit" waits for its reply to reach slow clients. */
#define QMP_QUIT_FLUSH_MS 1000

static json_t *qmp_cmd_query_status(struct qmp_req *req, json_t *args, void *opaque)
{
	struct vm *vm = opaque;
	enum vm_run_state st;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	st = vm_get_run_state(vm);
	return json_pack("{s:b,s:b,s:s}", "running", st == RUN_STATE_RUNNING, "singlestep", 0,
			 "status", vm_run_state_name(st));
}

/* Like QEMU: stopping a VM that is not running succeeds and changes nothing. */
static json_t *qmp_cmd_stop(struct qmp_req *req, json_t *args, void *opaque)
{
	struct vm *vm = opaque;
	int ret;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	if (vm_get_run_state(vm) != RUN_STATE_RUNNING)
		return NULL;
	ret = vm_pause(vm);
	if (ret < 0)
		qmp_req_error(req, QMP_ERR_GENERIC, "Could not stop the VM: %s", strerror(-ret));
	return NULL;
}

static json_t *qmp_cmd_cont(struct qmp_req *req, json_t *args, void *opaque)
{
	struct vm *vm = opaque;
	int ret;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	switch (vm_get_run_state(vm)) {
	case RUN_STATE_RUNNING:
		return NULL;
	case RUN_STATE_SHUTDOWN:
	case RUN_STATE_INTERNAL_ERROR:
		qmp_req_error(req, QMP_ERR_GENERIC, "Resetting the Virtual Machine is required");
		return NULL;
	case RUN_STATE_INMIGRATE:
		/* QEMU would note "run when loaded"; cprvm has no such flag yet. */
		qmp_req_error(req, QMP_ERR_GENERIC,
			      "The VM's state is still being loaded (incoming migration)");
		return NULL;
	default:
		break;
	}
	ret = vm_resume(vm);
	if (ret < 0)
		qmp_req_error(req, QMP_ERR_GENERIC, "Could not resume the VM: %s", strerror(-ret));
	return NULL;
}

/* After the reply is queued: push it out, then end the process. vm_quit()
 * emits SHUTDOWN, which qmp_server_free() still tries to deliver. */
static void qmp_quit_after_reply(struct qmp_server *s, void *opaque)
{
	struct vm *vm = opaque;

	qmp_server_flush(s, QMP_QUIT_FLUSH_MS);
	vm_quit(vm, 0, "host-qmp-quit", false);
}

static json_t *qmp_cmd_quit(struct qmp_req *req, json_t *args, void *opaque)
{
	if (!qmp_args_check(req, args, NULL))
		return NULL;
	qmp_req_after_reply(req, qmp_quit_after_reply, opaque);
	return NULL;
}

static json_t *qmp_cmd_query_version(struct qmp_req *req, json_t *args, void *opaque)
{
	(void)opaque;
	if (!qmp_args_check(req, args, NULL))
		return NULL;
	return qmp_version_json();
}

/* --- migration: snapshots to file:PATH, and live update (cpr-*) ------------ */

static const char *const migrate_caps[] = { "x-ignore-shared" };

static json_t *qmp_cmd_migrate_set_capabilities(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = { "capabilities", NULL };
	struct migration *mig = vm_migration(opaque);
	json_t *caps, *c;
	size_t i;
	bool want_ignore_shared = mig->ignore_shared;

	if (!qmp_args_check(req, args, allowed))
		return NULL;
	caps = args ? json_object_get(args, "capabilities") : NULL;
	if (!json_is_array(caps)) {
		qmp_req_error(req, QMP_ERR_GENERIC, "Parameter 'capabilities' is missing or not a list");
		return NULL;
	}
	/* Check all, then apply: a bad entry changes nothing. */
	json_array_foreach(caps, i, c) {
		json_t *name = json_object_get(c, "capability"), *state = json_object_get(c, "state");
		if (!json_is_string(name) || !json_is_boolean(state)) {
			qmp_req_error(req, QMP_ERR_GENERIC,
				      "Each capability needs 'capability' (string) and 'state' (bool)");
			return NULL;
		}
		if (strcmp(json_string_value(name), "x-ignore-shared")) {
			qmp_req_error(req, QMP_ERR_GENERIC,
				      "Capability '%s' is not supported by cprvm yet",
				      json_string_value(name));
			return NULL;
		}
		want_ignore_shared = json_is_true(state);
	}
	mig->ignore_shared = want_ignore_shared;
	return NULL;
}

static json_t *qmp_cmd_query_migrate_capabilities(struct qmp_req *req, json_t *args, void *opaque)
{
	struct migration *mig = vm_migration(opaque);
	json_t *list;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	list = json_array();
	for (size_t i = 0; i < ARRAY_SIZE(migrate_caps); i++)
		json_array_append_new(list, json_pack("{s:s,s:b}", "capability", migrate_caps[i],
						      "state", mig->ignore_shared));
	return list;
}

static void qmp_cpr_exec_after_reply(struct qmp_server *s, void *opaque)
{
	char err[512];

	qmp_server_flush(s, QMP_QUIT_FLUSH_MS);
	if (cpr_exec(opaque, err, sizeof(err)) < 0) {
		pr_err("%s", err);
		migrate_failed(opaque, err);
	}
}

static char cpr_transfer_uri[108];

static void qmp_cpr_transfer_after_reply(struct qmp_server *s, void *opaque)
{
	char err[512];

	qmp_server_flush(s, QMP_QUIT_FLUSH_MS);
	if (cpr_transfer(opaque, cpr_transfer_uri, err, sizeof(err)) < 0) {
		pr_err("%s", err);
		migrate_failed(opaque, err);
		return;
	}
	/* The guest runs in the new process, which owns the sockets now. This
	 * one stays SCHED_BATCH (cpr/place.c): its teardown never preempts
	 * the guest's vCPUs, yet gets its share of a CPU. Not SCHED_IDLE: with
	 * the guest busy on every CPU an idle task hardly runs, so the old
	 * process would hold its memory for tens of seconds. */
	qmp_server_release_path(s);
	vm_quit(opaque, 0, "host-cpr-transfer", false);
}

static json_t *qmp_cmd_migrate(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = { "uri", "detach", NULL };
	json_t *uri = args ? json_object_get(args, "uri") : NULL;
	char err[512];

	if (!qmp_args_check(req, args, allowed))
		return NULL;
	if (!json_is_string(uri)) {
		qmp_req_error(req, QMP_ERR_GENERIC, "Parameter 'uri' is missing");
		return NULL;
	}
	if (vm_migration(opaque)->mode != MIGRATE_MODE_NORMAL &&
	    vm_get_run_state(opaque) != RUN_STATE_RUNNING &&
	    vm_get_run_state(opaque) != RUN_STATE_PAUSED) {
		qmp_req_error(req, QMP_ERR_GENERIC, "%s: the VM is %s",
			      migrate_mode_name(vm_migration(opaque)->mode),
			      vm_run_state_name(vm_get_run_state(opaque)));
		return NULL;
	}
	switch (vm_migration(opaque)->mode) {
	case MIGRATE_MODE_CPR_EXEC:
		/* The state travels in a memfd whatever the URI says; the
		 * reply goes out first, then this process becomes the new
		 * binary (the connection closes; reconnect to the socket). */
		/* Until the new image reports, query-migrate says "setup". */
		vm_migration(opaque)->status = "setup";
		qmp_req_after_reply(req, qmp_cpr_exec_after_reply, opaque);
		return NULL;
	case MIGRATE_MODE_CPR_TRANSFER:
		if (strncmp(json_string_value(uri), "unix:", 5) || !json_string_value(uri)[5]) {
			qmp_req_error(req, QMP_ERR_GENERIC,
				      "cpr-transfer needs a unix:PATH URI (the new cprvm's "
				      "--incoming)");
			return NULL;
		}
		snprintf(cpr_transfer_uri, sizeof(cpr_transfer_uri), "%s",
			 json_string_value(uri) + 5);
		vm_migration(opaque)->status = "setup";
		qmp_req_after_reply(req, qmp_cpr_transfer_after_reply, opaque);
		return NULL;
	default:
		break;
	}
	if (migrate_start(opaque, json_string_value(uri), err, sizeof(err)) < 0)
		qmp_req_error(req, QMP_ERR_GENERIC, "%s", err);
	return NULL;
}

static json_t *qmp_cmd_migrate_set_parameters(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = { "mode", "cpr-exec-command", "x-stop-wait-us", NULL };
	struct migration *mig = vm_migration(opaque);
	json_t *mode = args ? json_object_get(args, "mode") : NULL;
	json_t *cmd = args ? json_object_get(args, "cpr-exec-command") : NULL;
	json_t *wait = args ? json_object_get(args, "x-stop-wait-us") : NULL;
	enum migrate_mode m = mig->mode;
	char *argv[64];
	size_t i, n = 0;
	json_t *a;

	if (!qmp_args_check(req, args, allowed))
		return NULL;
	if (mode && (!json_is_string(mode) || migrate_mode_parse(json_string_value(mode), &m) < 0)) {
		qmp_req_error(req, QMP_ERR_GENERIC,
			      "Parameter 'mode' expects normal, cpr-exec or cpr-transfer");
		return NULL;
	}
	if (wait && (!json_is_integer(wait) || json_integer_value(wait) < 0 ||
		     json_integer_value(wait) > MIGRATE_STOP_WAIT_US_MAX)) {
		qmp_req_error(req, QMP_ERR_GENERIC,
			      "Parameter 'x-stop-wait-us' expects an integer from 0 to %d",
			      MIGRATE_STOP_WAIT_US_MAX);
		return NULL;
	}
	if (cmd) {
		if (!json_is_array(cmd) || json_array_size(cmd) >= ARRAY_SIZE(argv)) {
			qmp_req_error(req, QMP_ERR_GENERIC,
				      "Parameter 'cpr-exec-command' expects a list of strings");
			return NULL;
		}
		json_array_foreach(cmd, i, a) {
			if (!json_is_string(a)) {
				qmp_req_error(req, QMP_ERR_GENERIC,
					      "Parameter 'cpr-exec-command' expects a list of strings");
				return NULL;
			}
			argv[n++] = (char *)json_string_value(a);
		}
		if (cpr_set_exec_command(argv, (int)n) < 0) {
			qmp_req_error(req, QMP_ERR_GENERIC, "out of memory");
			return NULL;
		}
	}
	mig->mode = m;
	if (wait)
		mig->stop_wait_us = (unsigned)json_integer_value(wait);
	return NULL;
}

static json_t *qmp_cmd_query_migrate_parameters(struct qmp_req *req, json_t *args, void *opaque)
{
	struct migration *mig = vm_migration(opaque);
	const char *const *argv;
	json_t *r, *list;
	int argc;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	r = json_pack("{s:s, s:I}", "mode", migrate_mode_name(mig->mode), "x-stop-wait-us",
		      (json_int_t)mig->stop_wait_us);
	list = json_array();
	argv = cpr_get_exec_command(&argc);
	for (int i = 0; i < argc; i++)
		json_array_append_new(list, json_string(argv[i]));
	json_object_set_new(r, "cpr-exec-command", list);
	return r;
}

static json_t *qmp_cmd_migrate_incoming(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = { "uri", NULL };
	json_t *uri = args ? json_object_get(args, "uri") : NULL;
	char err[512];

	if (!qmp_args_check(req, args, allowed))
		return NULL;
	if (!json_is_string(uri)) {
		qmp_req_error(req, QMP_ERR_GENERIC, "Parameter 'uri' is missing");
		return NULL;
	}
	if (vm_incoming(opaque, json_string_value(uri), err, sizeof(err)) < 0)
		qmp_req_error(req, QMP_ERR_GENERIC, "%s", err);
	return NULL;
}

static json_t *qmp_cmd_query_migrate(struct qmp_req *req, json_t *args, void *opaque)
{
	struct migration *mig = vm_migration(opaque);
	json_t *r;

	if (!qmp_args_check(req, args, NULL))
		return NULL;
	if (!mig->status)
		return json_object();
	r = json_pack("{s:s}", "status", mig->status);
	if (!strcmp(mig->status, "completed")) {
		/* QEMU reports milliseconds; cprvm's pauses are shorter, so
		 * also give microseconds (x-*-us). */
		json_object_set_new(r, "total-time", json_integer(mig->total_us / 1000));
		json_object_set_new(r, "downtime", json_integer(mig->downtime_us / 1000));
		json_object_set_new(r, "setup-time", json_integer(mig->setup_us / 1000));
		json_object_set_new(r, "x-downtime-us", json_integer(mig->downtime_us));
		json_object_set_new(r, "x-total-time-us", json_integer(mig->total_us));
		json_object_set_new(r, "ram", json_pack("{s:I,s:I,s:I}", "transferred",
							(json_int_t)mig->transferred, "total",
							(json_int_t)mig->total, "remaining", (json_int_t)0));
		if (mig->have_phases) {
			static const char *const names[6] = { "stop", "prepare", "handover",
							      "rebuild", "restore", "resume" };
			json_t *ph = json_object();
			for (int i = 0; i < 6; i++)
				json_object_set_new(ph, names[i], json_integer(mig->phases_us[i]));
			json_object_set_new(r, "x-blackout-us", ph);
		}
		if (mig->blackout_end_us) {
			/* When, on CLOCK_MONOTONIC: lets a local client place
			 * the pause among what the guest saw. */
			json_object_set_new(r, "x-blackout-monotonic-us",
					    json_pack("[I,I]", (json_int_t)mig->blackout_start_us,
						      (json_int_t)mig->blackout_end_us));
		}
		if (mig->have_vcpu_state)
			json_object_set_new(r, "x-vcpu-state",
					    json_pack("{s:i,s:i,s:i,s:i}", "vcpus", (int)mig->vcpus,
						      "set-early", (int)mig->vcpus_set_early,
						      "as-early-messages",
						      (int)mig->vcpus_as_messages, "msrs-set-ahead",
						      (int)mig->vcpus_msrs_ahead));
	} else if (!strcmp(mig->status, "failed")) {
		json_object_set_new(r, "error-desc", json_string(mig->error));
	}
	return r;
}

static void qmp_vm_event(void *opaque, const char *event, const char *data_json)
{
	struct qmp_server *s = opaque;
	json_t *data = NULL;
	json_error_t jerr;

	if (data_json) {
		data = json_loads(data_json, 0, &jerr);
		if (!data)
			pr_warn("QMP event %s: bad data (%s), sent without it", event, jerr.text);
	}
	qmp_event(s, event, data);
	json_decref(data);
}

int qmp_commands_register(struct qmp_server *s, struct vm *vm)
{
	static const struct {
		const char *name;
		qmp_cmd_fn fn;
	} cmds[] = {
	    {"query-status", qmp_cmd_query_status},
	    {"stop", qmp_cmd_stop},
	    {"cont", qmp_cmd_cont},
	    {"quit", qmp_cmd_quit},
	    {"query-version", qmp_cmd_query_version},
	    {"migrate", qmp_cmd_migrate},
	    {"query-migrate", qmp_cmd_query_migrate},
	    {"migrate-incoming", qmp_cmd_migrate_incoming},
	    {"migrate-set-parameters", qmp_cmd_migrate_set_parameters},
	    {"query-migrate-parameters", qmp_cmd_query_migrate_parameters},
	    {"migrate-set-capabilities", qmp_cmd_migrate_set_capabilities},
	    {"query-migrate-capabilities", qmp_cmd_query_migrate_capabilities},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cmds); i++) {
		int ret = qmp_register(s, cmds[i].name, cmds[i].fn, vm);
		if (ret < 0)
			return ret;
	}
	vm_set_event_sink(vm, qmp_vm_event, s);
	return 0;
}
