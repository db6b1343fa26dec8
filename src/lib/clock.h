/* clock.h — CLOCK_MONOTONIC as one number: the same clock in every process
 * on the host, so a live update's two sides can compare their times. */
#ifndef CPRVM_CLOCK_H
#define CPRVM_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t mono_us(void)
{
	return mono_ns() / 1000;
}

#endif
