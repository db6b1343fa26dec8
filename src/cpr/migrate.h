/* migrate.h — QMP's migration verbs over the transports cprvm has: today
 * `file:PATH` (a snapshot). Owns the capabilities and the status that
 * query-migrate reports. Main thread only. */
#ifndef CPRVM_MIGRATE_H
#define CPRVM_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

struct migration {
	bool ignore_shared; /* capability x-ignore-shared */
	const char *status; /* NULL: never started; "completed", "failed" */
	int64_t total_ms_x1000, downtime_us, setup_us; /* microseconds */
	uint64_t transferred, total;
	char error[256];
};

struct migration *vm_migration(struct vm *vm);
/* Outgoing: stops the VM, writes the state, leaves it paused (postmigrate).
 * On failure the VM runs again as it was. */
int migrate_start(struct vm *vm, const char *uri, char *err, size_t errlen);

#endif
