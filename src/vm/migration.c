/* migration.c — see migration.h. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vm/migration.h"
#include "vm/vm_priv.h"

struct migration *vm_migration(struct vm *vm)
{
	return &vm->migration;
}

void migrate_event(struct vm *vm, const char *status)
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
