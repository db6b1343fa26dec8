/* migration.h — what a VM carries of migration: the capabilities and
 * parameters QMP sets, and the status query-migrate reports (struct
 * migration, held in struct vm). The transports (cpr/) fill it in through
 * the functions here; a change of status also goes out as a MIGRATION
 * event. Main thread only. */
#ifndef CPRVM_MIGRATION_H
#define CPRVM_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

enum migrate_mode { MIGRATE_MODE_NORMAL, MIGRATE_MODE_CPR_EXEC, MIGRATE_MODE_CPR_TRANSFER };

/* A live update stops the vCPUs at an exit of their own within this long,
 * if one comes (parameter x-stop-wait-us; see vm_pause_quiet). */
#define MIGRATE_STOP_WAIT_US_DEFAULT 2000
#define MIGRATE_STOP_WAIT_US_MAX 1000000

struct migration {
	bool ignore_shared; /* capability x-ignore-shared */
	enum migrate_mode mode;
	unsigned stop_wait_us; /* x-stop-wait-us */
	const char *status; /* NULL: never started; "completed", "failed" */
	int64_t total_us, downtime_us, setup_us;
	uint64_t transferred, total;
	bool have_phases;
	int64_t phases_us[6]; /* live update blackout, see cpr/takeover.c */
	/* Live update: when the vCPUs stopped and when they ran again
	 * (CLOCK_MONOTONIC, us; the same clock in every process here). */
	int64_t blackout_start_us, blackout_end_us;
	/* Live update, new side: how the vCPUs' state came (x-vcpu-state):
	 * vCPUs the early state set whole (the stream only confirmed it),
	 * vCPUs whose stream section held the early messages' bytes, vCPUs
	 * whose MSRs were set before the stop (the stream only confirmed them). */
	bool have_vcpu_state;
	uint32_t vcpus, vcpus_set_early, vcpus_as_messages, vcpus_msrs_ahead;
	char error[256];
};

struct migration *vm_migration(struct vm *vm);
/* Sends the MIGRATION event with this status ("setup", "active", ...). */
void migrate_event(struct vm *vm, const char *status);
/* The new image after a live update: the guest runs again after
 * downtime_us; rollback_reason non-NULL if this is the old binary taking
 * the guest back after a failed update. */
void vm_cpr_completed(struct vm *vm, int64_t downtime_us, const char *rollback_reason);
void vm_cpr_phases(struct vm *vm, const int64_t phases_us[6]);
void vm_cpr_blackout(struct vm *vm, int64_t start_us, int64_t end_us);
void vm_cpr_vcpu_state(struct vm *vm, uint32_t vcpus, uint32_t set_early, uint32_t as_messages,
		       uint32_t msrs_ahead);
/* A cpr-exec that failed before exec(): the guest runs on, report it. */
void migrate_failed(struct vm *vm, const char *why);
const char *migrate_mode_name(enum migrate_mode m);
int migrate_mode_parse(const char *s, enum migrate_mode *m);

#endif
