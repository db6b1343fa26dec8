/* fault.h — faults the system tests inject into a live update.
 *
 * A test names one fault in the environment, CPRVM_TEST_XFER_FAULT=NAME, for
 * the process it starts; the code at the step the fault concerns asks
 * test_fault(TEST_FAULT_...) and misbehaves as the fault says. Without the
 * variable every answer is false. The names are the tests' interface: each
 * is documented beside its enum value and used at one place. */
#ifndef CPRVM_FAULT_H
#define CPRVM_FAULT_H

#include <stdbool.h>

#define TEST_FAULT_ENV "CPRVM_TEST_XFER_FAULT"

enum test_fault {
	TEST_FAULT_NONE,
	/* New side, after phase 1 arrived: */
	TEST_FAULT_KILL,            /* "kill": die with the fds */
	TEST_FAULT_HANG,            /* "hang": hang with the fds */
	TEST_FAULT_SLOW_BUILD,      /* "slow-build": 2 s before building the VM */
	/* New side, phase 2 (the guest stopped): */
	TEST_FAULT_SLOW,            /* "slow": 0.5 s of blackout the guest must see */
	TEST_FAULT_HANG_WITH_STATE, /* "hang-with-state": hang with the state */
	TEST_FAULT_REFUSE_LATE,     /* "refuse-late": refuse after adopting the sockets */
	TEST_FAULT_NO_BASE,         /* "no-base": no base state read before the stop */
	/* Capabilities and early state (either side): */
	TEST_FAULT_NEW_CLASSIC,     /* "new-classic": a new side without early sections */
	TEST_FAULT_OLD_CLASSIC,     /* "old-classic": an old side without them */
	TEST_FAULT_EARLY_SKIP_LAPIC, /* "early-skip-lapic": no LAPIC part sent early */
	TEST_FAULT_EARLY_WRONG_REGS, /* "early-wrong-regs": an early RIP off by one */
	TEST_FAULT_AHEAD_WRONG_MSR, /* "ahead-wrong-msr": a wrong SYSENTER_ESP ahead */
	TEST_FAULT_AHEAD_WRONG_TSC, /* "ahead-wrong-tsc": a wrong TSC offset ahead */
	/* Old side: */
	TEST_FAULT_LATE_KICK,       /* "late-kick": vCPUs but the first kicked 3 ms late */
	TEST_FAULT_COUNT
};

/* Whether the environment names fault f. Read once, then cached. */
bool test_fault(enum test_fault f);

#endif
