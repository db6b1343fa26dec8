/* migrate.c — see migrate.h. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cpr/migrate.h"
#include "cpr/snapshot.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "vm/vm_priv.h"

int migrate_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct migration *mig = &vm->migration;
	bool was_running = vm->state == RUN_STATE_RUNNING;
	int64_t t0 = (int64_t)mono_us(), t_stop;
	struct stat st;
	int ret;

	if (strncmp(uri, "file:", 5) || !uri[5]) {
		snprintf(err, errlen, "migration URI '%s' is not supported yet (use file:PATH)", uri);
		return -ENOTSUP;
	}
	if (vm->state != RUN_STATE_RUNNING && vm->state != RUN_STATE_PAUSED &&
	    vm->state != RUN_STATE_POSTMIGRATE) {
		snprintf(err, errlen, "cannot migrate a VM in state '%s'",
			 vm_run_state_name(vm->state));
		return -EINVAL;
	}
	memset(mig->error, 0, sizeof(mig->error));
	mig->status = "setup";
	migrate_event(vm, "setup");
	t_stop = (int64_t)mono_us();
	ret = vm_pause(vm);
	if (ret < 0) {
		snprintf(err, errlen, "cannot stop the VM: %s", strerror(-ret));
		goto out_fail;
	}
	migrate_event(vm, "active");
	ret = snapshot_save(vm, uri + 5, mig->ignore_shared, err, errlen);
	if (ret < 0)
		goto out_fail;
	mig->downtime_us = (int64_t)mono_us() - t_stop;
	mig->total_us = (int64_t)mono_us() - t0;
	mig->setup_us = t_stop - t0;
	mig->total = vm->mem.size;
	mig->transferred = stat(uri + 5, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
	mig->status = "completed";
	vm->state = RUN_STATE_POSTMIGRATE;
	migrate_event(vm, "completed");
	return 0;
out_fail:
	snprintf(mig->error, sizeof(mig->error), "%s", err);
	mig->status = "failed";
	migrate_event(vm, "failed");
	/* A failed outgoing migration leaves the source as it was. */
	if (was_running && vm->state == RUN_STATE_PAUSED)
		vm_resume(vm);
	return ret;
}

int vm_incoming(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct snapshot *snap = NULL;
	struct vm_build b;
	int ret;

	if (vm->state != RUN_STATE_INMIGRATE) {
		snprintf(err, errlen, "the VM is not waiting for incoming state (state '%s')",
			 vm_run_state_name(vm->state));
		return -EINVAL;
	}
	if (strncmp(uri, "file:", 5) || !uri[5]) {
		snprintf(err, errlen, "incoming URI '%s' is not supported yet (use file:PATH)", uri);
		return -ENOTSUP;
	}
	ret = snapshot_open(uri + 5, &vm->cfg, &snap, err, errlen);
	if (ret < 0)
		return ret;
	/* A full snapshot brings its own RAM: swap it in. The vCPUs have
	 * never run, so the memslots may change. */
	snapshot_vm_build(snap, &b);
	if (b.ram_fd >= 0) {
		ret = vm_replace_ram(vm, b.ram_fd, b.ram_off, vm->cfg.mem_size, err, errlen);
		if (ret < 0)
			goto out;
	}
	ret = snapshot_apply(snap, vm, false, false, err, errlen);
	if (ret < 0)
		goto out;
	ret = vm_start(vm);
	if (ret < 0)
		snprintf(err, errlen, "cannot start vCPUs: %s", strerror(-ret));
	else
		vm_emit(vm, "RESUME", NULL);
out:
	snapshot_free(snap);
	return ret;
}
