/* trace.c — see trace.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/trace.h"

#define TRACE_MAX 64

bool trace_on;

static struct {
	const char *what;
	uint64_t ns;
	long minflt;
} marks[TRACE_MAX];
static unsigned nr_marks;

void trace_init(void)
{
	const char *e = getenv("CPRVM_TRACE");

	trace_on = e && *e && strcmp(e, "0");
}

void trace_mark_slow(const char *what)
{
	unsigned i = __atomic_fetch_add(&nr_marks, 1, __ATOMIC_RELAXED);

	if (i >= TRACE_MAX)
		return;
	marks[i].ns = mono_ns();
	{
		struct rusage ru;
		getrusage(RUSAGE_THREAD, &ru);
		marks[i].minflt = ru.ru_minflt;
	}
	__atomic_store_n(&marks[i].what, what, __ATOMIC_RELEASE);
}

void trace_dump(const char *who, uint64_t t0_ns)
{
	char line[2048];
	size_t off = 0;
	unsigned n = __atomic_exchange_n(&nr_marks, 0, __ATOMIC_ACQ_REL);

	if (!trace_on)
		return;
	if (n > TRACE_MAX)
		n = TRACE_MAX;
	if (!t0_ns && n)
		t0_ns = marks[0].ns;
	off += snprintf(line + off, sizeof(line) - off, "trace %s t0=%llu:", who,
			(unsigned long long)t0_ns);
	for (unsigned i = 0; i < n && off < sizeof(line); i++) {
		const char *w = __atomic_load_n(&marks[i].what, __ATOMIC_ACQUIRE);
		off += snprintf(line + off, sizeof(line) - off, " %+.0f:%s/%ld",
				((double)marks[i].ns - (double)t0_ns) / 1000.0, w ? w : "?", marks[i].minflt);
		marks[i].what = NULL;
	}
	pr_warn("%s", line);
}
