/* trace.h — a timeline of the live-update blackout, for people tuning it.
 * CPRVM_TRACE=1 in the environment turns it on: each side of an update
 * prints its marks (CLOCK_MONOTONIC, the same clock in every process here)
 * as one line on stderr. Off, a mark costs one load. Safe from any thread
 * and from a vCPU runner (no locks, no allocation). */
#ifndef CPRVM_TRACE_H
#define CPRVM_TRACE_H

#include <stdbool.h>
#include <stdint.h>

extern bool trace_on;

void trace_init(void);
void trace_mark_slow(const char *what);
/* Prints the marks as "+us name" relative to t0_ns (0: the first mark),
 * then forgets them. */
void trace_dump(const char *who, uint64_t t0_ns);

static inline void trace_mark(const char *what)
{
	if (__builtin_expect(trace_on, 0))
		trace_mark_slow(what);
}

#endif
