/* config.c — parsers for command-line values (see config.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lib/log.h"
#include "vm/config.h"

int parse_size(const char *s, uint64_t *out, char *err, size_t errlen)
{
	uint64_t v = 0, mult = 1;
	const char *p = s;

	if (!s || !*s)
		return set_err(err, errlen, -EINVAL, "empty size");
	if (*p < '0' || *p > '9')
		return set_err(err, errlen, -EINVAL, "invalid size '%s'", s);
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return set_err(err, errlen, -ERANGE, "size '%s' is too large", s);
		v = v * 10 + (uint64_t)(*p - '0');
	}
	switch (*p) {
	case 'k': case 'K': mult = 1ULL << 10; p++; break;
	case 'm': case 'M': mult = 1ULL << 20; p++; break;
	case 'g': case 'G': mult = 1ULL << 30; p++; break;
	case 't': case 'T': mult = 1ULL << 40; p++; break;
	default: break;
	}
	if (mult > 1 && *p == 'i')
		p++;
	if (*p == 'B' || *p == 'b')
		p++;
	if (*p)
		return set_err(err, errlen, -EINVAL, "invalid size '%s' (use e.g. 512M, 4G)", s);
	if (v > UINT64_MAX / mult)
		return set_err(err, errlen, -ERANGE, "size '%s' is too large", s);
	*out = v * mult;
	return 0;
}

int chardev_parse(const char *s, struct chardev_spec *out, char *err, size_t errlen)
{
	const char *path = NULL;

	memset(out, 0, sizeof(*out));
	if (!s || !*s)
		return set_err(err, errlen, -EINVAL, "empty serial backend");
	if (!strcmp(s, "stdio")) {
		out->kind = CHARDEV_STDIO;
	} else if (!strcmp(s, "none")) {
		out->kind = CHARDEV_NONE;
	} else if (!strcmp(s, "pty")) {
		out->kind = CHARDEV_PTY;
	} else if (!strncmp(s, "file:", 5)) {
		out->kind = CHARDEV_FILE;
		path = s + 5;
	} else if (!strncmp(s, "unix:", 5)) {
		out->kind = CHARDEV_UNIX;
		path = s + 5;
	} else {
		return set_err(err, errlen, -EINVAL,
				  "invalid serial backend '%s' (expected stdio, none, file:PATH, "
				  "pty or unix:PATH)", s);
	}
	if (path) {
		if (!*path)
			return set_err(err, errlen, -EINVAL, "serial backend '%s' needs a path", s);
		if (strlen(path) >= sizeof(out->path))
			return set_err(err, errlen, -ENAMETOOLONG,
					  "serial backend path is too long (max %zu bytes): %s",
					  sizeof(out->path) - 1, path);
		strcpy(out->path, path);
	}
	return 0;
}
