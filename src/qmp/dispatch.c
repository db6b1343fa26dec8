/* dispatch.c — requests: the command table, and one request's way from a
 * complete JSON value to its reply.
 *
 * A value becomes a request once jansson parses it as an object with a string
 * "execute" and, if present, an object "arguments"; each refusal is answered
 * with QEMU's error text. Until a client has negotiated capabilities, only
 * qmp_capabilities runs. The handler reports failure with qmp_req_error();
 * the first error is the one replied. Each request gets one reply, a
 * "return" or an "error" (a client whose reply cannot be queued is dropped
 * instead), and a hook set with qmp_req_after_reply() runs after it.
 *
 * Built in here, because they need the server itself: qmp_capabilities
 * (negotiation is per client) and query-commands (the table). commands.c
 * registers the VM's commands. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/version.h"
#include "qmp/qmp.h"
#include "qmp/qmp_priv.h"

json_t *qmp_version_json(void)
{
	return json_pack("{s:{s:i,s:i,s:i},s:s}", "qemu", "micro", CPRVM_VERSION_MICRO, "minor",
			 CPRVM_VERSION_MINOR, "major", CPRVM_VERSION_MAJOR, "package", "cprvm");
}

void qmp_req_error(struct qmp_req *req, const char *cls, const char *fmt, ...)
{
	va_list ap;

	if (req->failed)
		return; /* the first error is the one that explains */
	req->failed = true;
	snprintf(req->cls, sizeof(req->cls), "%s", cls);
	va_start(ap, fmt);
	vsnprintf(req->desc, sizeof(req->desc), fmt, ap);
	va_end(ap);
}

void qmp_req_after_reply(struct qmp_req *req, qmp_after_fn fn, void *opaque)
{
	req->after = fn;
	req->after_opaque = opaque;
}

bool qmp_args_check(struct qmp_req *req, json_t *args, const char *const *allowed)
{
	const char *key;
	json_t *v;

	if (!args)
		return true;
	json_object_foreach(args, key, v)
	{
		bool ok = false;
		for (const char *const *a = allowed; a && *a; a++)
			if (!strcmp(*a, key))
				ok = true;
		if (!ok) {
			qmp_req_error(req, QMP_ERR_GENERIC, "Parameter '%s' is unexpected", key);
			return false;
		}
	}
	return true;
}

static struct qmp_cmd *qmp_find(struct qmp_server *s, const char *name)
{
	for (int i = 0; i < s->nr_cmds; i++)
		if (!strcmp(s->cmds[i].name, name))
			return &s->cmds[i];
	return NULL;
}

int qmp_register(struct qmp_server *s, const char *name, qmp_cmd_fn fn, void *opaque)
{
	struct qmp_cmd *p;

	if (qmp_find(s, name))
		return -EEXIST;
	p = realloc(s->cmds, (s->nr_cmds + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	s->cmds = p;
	s->cmds[s->nr_cmds++] = (struct qmp_cmd){.name = name, .fn = fn, .opaque = opaque};
	return 0;
}

/* Built in: negotiation is per client, which only the server knows. */
static json_t *qmp_cmd_capabilities(struct qmp_req *req, json_t *args, void *opaque)
{
	static const char *const allowed[] = {"enable", NULL};
	json_t *enable = args ? json_object_get(args, "enable") : NULL;
	size_t i;
	json_t *v;

	(void)opaque;
	if (req->c->negotiated) {
		qmp_req_error(req, QMP_ERR_NOT_FOUND,
			      "Capabilities negotiation is already complete, command ignored");
		return NULL;
	}
	if (!qmp_args_check(req, args, allowed))
		return NULL;
	if (enable && !json_is_array(enable)) {
		qmp_req_error(req, QMP_ERR_GENERIC,
			      "Invalid parameter type for 'enable', expected: array");
		return NULL;
	}
	json_array_foreach(enable, i, v)
	{
		/* cprvm offers no optional capability (QEMU's "oob" included). */
		qmp_req_error(req, QMP_ERR_GENERIC, "Capability '%s' not available",
			      json_is_string(v) ? json_string_value(v) : "?");
		return NULL;
	}
	req->c->negotiated = true;
	return NULL;
}

static json_t *qmp_cmd_query_commands(struct qmp_req *req, json_t *args, void *opaque)
{
	json_t *list;

	(void)opaque;
	if (!qmp_args_check(req, args, NULL))
		return NULL;
	list = json_array();
	for (int i = 0; list && i < req->s->nr_cmds; i++)
		json_array_append_new(list, json_pack("{s:s}", "name", req->s->cmds[i].name));
	return list;
}

int qmp_register_builtins(struct qmp_server *s)
{
	int ret = qmp_register(s, "qmp_capabilities", qmp_cmd_capabilities, NULL);

	if (!ret)
		ret = qmp_register(s, "query-commands", qmp_cmd_query_commands, NULL);
	return ret;
}

/* One complete top-level value, as the scanner delimited it. */
void qmp_client_dispatch(struct qmp_client *c, const char *buf, size_t len)
{
	struct qmp_server *s = c->s;
	struct qmp_req req = {.s = s, .c = c};
	json_t *msg, *id, *exec, *args, *ret, *reply;
	json_error_t jerr;
	struct qmp_cmd *cmd;
	const char *name;

	msg = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!msg) {
		qmp_client_reply_error(c, NULL, QMP_ERR_GENERIC, "JSON parse error, %s", jerr.text);
		return;
	}
	if (!json_is_object(msg)) {
		qmp_client_reply_error(c, NULL, QMP_ERR_GENERIC, "QMP input must be a JSON object");
		goto out;
	}
	id = json_object_get(msg, "id");
	exec = json_object_get(msg, "execute");
	args = json_object_get(msg, "arguments");
	if (!exec) {
		qmp_client_reply_error(c, id, QMP_ERR_GENERIC, "QMP input lacks member 'execute'");
		goto out;
	}
	if (!json_is_string(exec)) {
		qmp_client_reply_error(c, id, QMP_ERR_GENERIC,
				       "QMP input member 'execute' must be a string");
		goto out;
	}
	if (args && !json_is_object(args)) {
		qmp_client_reply_error(c, id, QMP_ERR_GENERIC,
				       "QMP input member 'arguments' must be an object");
		goto out;
	}
	name = json_string_value(exec);
	if (!c->negotiated && strcmp(name, "qmp_capabilities")) {
		qmp_client_reply_error(
		    c, id, QMP_ERR_NOT_FOUND,
		    "Expecting capabilities negotiation with 'qmp_capabilities'");
		goto out;
	}
	cmd = qmp_find(s, name);
	if (!cmd) {
		qmp_client_reply_error(c, id, QMP_ERR_NOT_FOUND,
				       "The command %s has not been found", name);
		goto out;
	}
	ret = cmd->fn(&req, args, cmd->opaque);
	if (req.failed) {
		json_decref(ret);
		qmp_client_reply_error(c, id, req.cls, "%s", req.desc);
	} else {
		reply = json_object();
		if (reply) {
			json_object_set_new(reply, "return", ret ? ret : json_object());
			if (id)
				json_object_set(reply, "id", id);
		} else {
			json_decref(ret);
		}
		qmp_client_send(c, reply);
	}
	if (req.after)
		req.after(s, req.after_opaque);
out:
	json_decref(msg);
}
