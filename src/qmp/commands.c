/* commands.c — the VM's QMP commands and events: what each command name does
 * to struct vm, with QEMU's names, reply shapes and error texts.
 *
 * Built into the server (qmp.c): qmp_capabilities, query-commands.
 * Here: query-status, stop, cont, quit, query-version; and the VM's event sink
 * (STOP, RESUME, SHUTDOWN, ...) forwarded to negotiated clients.
 * Handlers and the sink run on the main thread (vm.h's rule for vm_* calls). */
#include <errno.h>
#include <string.h>

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
	};

	for (size_t i = 0; i < ARRAY_SIZE(cmds); i++) {
		int ret = qmp_register(s, cmds[i].name, cmds[i].fn, vm);
		if (ret < 0)
			return ret;
	}
	vm_set_event_sink(vm, qmp_vm_event, s);
	return 0;
}
