/* migrate.c — see migrate.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cpr/migrate.h"
#include "cpr/snapshot.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "vm/vm_priv.h"

struct migration *vm_migration(struct vm *vm)
{
	return &vm->migration;
}

static void migrate_event(struct vm *vm, const char *status)
{
	char data[64];

	snprintf(data, sizeof(data), "{\"status\": \"%s\"}", status);
	if (vm->event_fn)
		vm->event_fn(vm->event_opaque, "MIGRATION", data);
}

static const char *const mode_names[] = { "normal", "cpr-exec", "cpr-transfer" };

const char *migrate_mode_name(enum migrate_mode m)
{
	return (unsigned)m < 3 ? mode_names[m] : "?";
}

int migrate_mode_parse(const char *s, enum migrate_mode *m)
{
	for (int i = 0; i < 3; i++)
		if (!strcmp(s, mode_names[i])) {
			*m = i;
			return 0;
		}
	return -EINVAL;
}

void vm_cpr_completed(struct vm *vm, int64_t downtime_us, const char *rollback_reason)
{
	struct migration *mig = &vm->migration;

	mig->downtime_us = downtime_us;
	mig->total_us = downtime_us;
	mig->setup_us = 0;
	mig->total = vm->mem.size;
	mig->transferred = 0;
	if (rollback_reason) {
		mig->status = "failed";
		snprintf(mig->error, sizeof(mig->error), "%s", rollback_reason);
		migrate_event(vm, "failed");
	} else {
		mig->status = "completed";
		migrate_event(vm, "completed");
	}
}

void vm_cpr_phases(struct vm *vm, const int64_t phases_us[6])
{
	memcpy(vm->migration.phases_us, phases_us, sizeof(vm->migration.phases_us));
	vm->migration.have_phases = true;
}

void vm_cpr_blackout(struct vm *vm, int64_t start_us, int64_t end_us)
{
	vm->migration.blackout_start_us = start_us;
	vm->migration.blackout_end_us = end_us;
}

void vm_cpr_vcpu_state(struct vm *vm, uint32_t vcpus, uint32_t set_early, uint32_t as_messages,
		       uint32_t msrs_ahead)
{
	vm->migration.have_vcpu_state = true;
	vm->migration.vcpus = vcpus;
	vm->migration.vcpus_set_early = set_early;
	vm->migration.vcpus_as_messages = as_messages;
	vm->migration.vcpus_msrs_ahead = msrs_ahead;
}

void migrate_failed(struct vm *vm, const char *why)
{
	struct migration *mig = &vm->migration;

	mig->status = "failed";
	snprintf(mig->error, sizeof(mig->error), "%s", why);
	migrate_event(vm, "failed");
}

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
