/* log.h — messages for people. One line each, to stderr, prefixed "cprvm: ".
 * Safe from any thread. Library code returns -errno and lets the edge that a
 * person sees (command line, QMP, stream loader) decide what to print. */
#ifndef CPRVM_LOG_H
#define CPRVM_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
void log_set_prefix(const char *prefix);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pr_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define pr_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define pr_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define pr_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Formats a one-line message for a person into err (if given) and returns
 * ret: "return set_err(err, errlen, -EINVAL, "bad %s", what);" */
int set_err(char *err, size_t errlen, int ret, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
