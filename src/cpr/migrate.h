/* migrate.h — QMP's migration verbs over the transports cprvm has: today
 * `file:PATH` (a snapshot). The capabilities and the status they report
 * are the VM's (vm/migration.h). Main thread only. */
#ifndef CPRVM_MIGRATE_H
#define CPRVM_MIGRATE_H

#include <stddef.h>

#include "vm/migration.h"

struct vm;

/* Outgoing: stops the VM, writes the state, leaves it paused (postmigrate).
 * On failure the VM runs again as it was. */
int migrate_start(struct vm *vm, const char *uri, char *err, size_t errlen);
/* Incoming (--incoming defer, QMP migrate-incoming): loads a snapshot
 * (file:PATH) into a VM waiting in state inmigrate and starts the guest; on
 * failure the VM stays as it was, waiting. */
int vm_incoming(struct vm *vm, const char *uri, char *err, size_t errlen);

#endif
