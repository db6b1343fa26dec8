/* fault.c — see fault.h. */
#include <stdlib.h>
#include <string.h>

#include "lib/fault.h"
#include "lib/log.h"

static const char *const fault_names[TEST_FAULT_COUNT] = {
	[TEST_FAULT_KILL] = "kill",
	[TEST_FAULT_HANG] = "hang",
	[TEST_FAULT_SLOW_BUILD] = "slow-build",
	[TEST_FAULT_SLOW] = "slow",
	[TEST_FAULT_HANG_WITH_STATE] = "hang-with-state",
	[TEST_FAULT_REFUSE_LATE] = "refuse-late",
	[TEST_FAULT_NO_BASE] = "no-base",
	[TEST_FAULT_NEW_CLASSIC] = "new-classic",
	[TEST_FAULT_OLD_CLASSIC] = "old-classic",
	[TEST_FAULT_EARLY_SKIP_LAPIC] = "early-skip-lapic",
	[TEST_FAULT_EARLY_WRONG_REGS] = "early-wrong-regs",
	[TEST_FAULT_AHEAD_WRONG_MSR] = "ahead-wrong-msr",
	[TEST_FAULT_AHEAD_WRONG_TSC] = "ahead-wrong-tsc",
	[TEST_FAULT_LATE_KICK] = "late-kick",
};

/* -1: not looked up yet. Set once by whichever thread asks first; every
 * thread computes the same value, so a race only repeats the lookup. */
static int fault_on = -1;

static int fault_lookup(void)
{
	const char *e = getenv(TEST_FAULT_ENV);

	if (!e || !*e)
		return TEST_FAULT_NONE;
	for (int f = TEST_FAULT_NONE + 1; f < TEST_FAULT_COUNT; f++)
		if (!strcmp(e, fault_names[f]))
			return f;
	pr_warn("%s=%s: no such fault; none is injected", TEST_FAULT_ENV, e);
	return TEST_FAULT_NONE;
}

bool test_fault(enum test_fault f)
{
	int on = __atomic_load_n(&fault_on, __ATOMIC_RELAXED);

	if (on < 0) {
		on = fault_lookup();
		__atomic_store_n(&fault_on, on, __ATOMIC_RELAXED);
	}
	return f != TEST_FAULT_NONE && on == (int)f;
}
