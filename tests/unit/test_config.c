/* test_config.c — the command-line value parsers: parse_size and
 * chardev_parse (vm/config.h).
 *
 * Every refusal must return -errno, leave the output alone (parse_size) and
 * give the person a non-empty one-line message that quotes what they typed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "vm/config.h"

#define ERRLEN 256
#define UNTOUCHED 0x5a5a5a5a5a5a5a5aULL

/* ---- helpers: __x() returns the error, x() asserts success ------------ */

static int __size(const char *s, uint64_t *out, char *err)
{
	*out = UNTOUCHED;
	err[0] = '\0';
	return parse_size(s, out, err, ERRLEN);
}

static uint64_t size(const char *s)
{
	char err[ERRLEN];
	uint64_t v;
	int ret = __size(s, &v, err);

	if (ret)
		fail_msg("parse_size(\"%s\") = %d (%s), expected success", s, ret, err);
	return v;
}

/* Asserts parse_size refuses s with -want, leaves *out alone and names s. */
static void size_refused(const char *s, int want)
{
	char err[ERRLEN];
	uint64_t v;
	int ret = __size(s, &v, err);

	if (ret != want)
		fail_msg("parse_size(\"%s\") = %d, expected %d", s, ret, want);
	assert_int_equal(v, UNTOUCHED);
	assert_true(strlen(err) > 0);
	assert_true(strlen(err) < ERRLEN - 1); /* one line that fits */
	if (s && !strchr(s, '\n')) /* the message quotes the input as typed */
		assert_null(strchr(err, '\n'));
	if (s && *s && !strstr(err, s))
		fail_msg("message for \"%s\" does not quote it: %s", s, err);
}

static int __chardev(const char *s, struct chardev_spec *out, char *err)
{
	memset(out, 0x5a, sizeof(*out));
	err[0] = '\0';
	return chardev_parse(s, out, err, ERRLEN);
}

static struct chardev_spec chardev(const char *s)
{
	struct chardev_spec c;
	char err[ERRLEN];
	int ret = __chardev(s, &c, err);

	if (ret)
		fail_msg("chardev_parse(\"%s\") = %d (%s), expected success", s, ret, err);
	return c;
}

/* Asserts chardev_parse refuses s with -want and a message naming needle
 * (the input, or the offending part of it). */
static void chardev_refused(const char *s, int want, const char *needle)
{
	struct chardev_spec c;
	char err[512];
	int ret;

	memset(&c, 0x5a, sizeof(c));
	err[0] = '\0';
	ret = chardev_parse(s, &c, err, sizeof(err));
	if (ret != want)
		fail_msg("chardev_parse(\"%s\") = %d, expected %d", s, ret, want);
	assert_true(strlen(err) > 0);
	assert_null(strchr(err, '\n'));
	if (needle && !strstr(err, needle))
		fail_msg("message for \"%s\" does not name \"%s\": %s", s, needle, err);
}

/* ---- parse_size: accepted ----------------------------------------------- */

static void size_plain_bytes(void **state)
{
	(void)state;
	assert_int_equal(size("0"), 0);
	assert_int_equal(size("1"), 1);
	assert_int_equal(size("1073741824"), 1ULL << 30);
	assert_int_equal(size("007"), 7);
	assert_int_equal(size("1B"), 1);
	assert_int_equal(size("4096b"), 4096);
}

static void size_suffixes_are_base_1024(void **state)
{
	static const struct {
		const char *s;
		uint64_t v;
	} ok[] = {
		{ "1K", 1ULL << 10 },	{ "1k", 1ULL << 10 },	 { "4096K", 4ULL << 20 },
		{ "512M", 512ULL << 20 }, { "512m", 512ULL << 20 }, { "1G", 1ULL << 30 },
		{ "4g", 4ULL << 30 },	{ "1T", 1ULL << 40 },	 { "2t", 2ULL << 40 },
		{ "1KB", 1ULL << 10 },	{ "1KiB", 1ULL << 10 },	 { "512MB", 512ULL << 20 },
		{ "512MiB", 512ULL << 20 }, { "3GiB", 3ULL << 30 }, { "1TiB", 1ULL << 40 },
		{ "1gb", 1ULL << 30 },	{ "0G", 0 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		uint64_t v = size(ok[i].s);
		if (v != ok[i].v)
			fail_msg("parse_size(\"%s\") = %llu, expected %llu", ok[i].s,
				 (unsigned long long)v, (unsigned long long)ok[i].v);
	}
}

static void size_limits(void **state)
{
	(void)state;
	/* The largest values that fit, exactly. */
	assert_true(size("18446744073709551615") == UINT64_MAX);
	assert_true(size("18014398509481983K") == (UINT64_MAX >> 10) << 10);
	assert_true(size("16777215T") == 16777215ULL << 40);
	assert_true(size("17179869183G") == 17179869183ULL << 30);
}

/* ---- parse_size: refused ------------------------------------------------ */

static void size_refuses_empty(void **state)
{
	(void)state;
	size_refused("", -EINVAL);
	size_refused(NULL, -EINVAL);
}

static void size_refuses_non_numeric(void **state)
{
	static const char *bad[] = {
		"M", "G", "abc", "x512M", " 512M", "512 M", "512M ", "\t1", "0x100", "1e9",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		size_refused(bad[i], -EINVAL);
}

static void size_refuses_signs_and_fractions(void **state)
{
	static const char *bad[] = { "-1", "-512M", "+1", "+1G", "1.5G", "0.5", ".5G", "1,5G" };

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		size_refused(bad[i], -EINVAL);
}

static void size_refuses_trailing_garbage(void **state)
{
	static const char *bad[] = {
		"512MM", "1KG", "1P", "1E", "1Z", "1iB", "1i", "1BB", "1GiBx", "1GBi", "1Gx",
		"12a", "1 ", "1\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		size_refused(bad[i], -EINVAL);
}

static void size_refuses_overflow(void **state)
{
	static const char *bad[] = {
		"18446744073709551616",	     /* UINT64_MAX + 1 */
		"18446744073709551620",	     /* last digit overflows */
		"99999999999999999999",	     /* 20 digits */
		"184467440737095516150",     /* one digit too many */
		"99999999999999999999999999999999999999", "16777216T", /* exactly 2^64 */
		"17179869184G", "18014398509481984K", "18014398509481984KiB",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		size_refused(bad[i], -ERANGE);
}

/* A caller that does not want the message may pass no buffer. */
static void size_without_err_buffer(void **state)
{
	uint64_t v = UNTOUCHED;
	char err[4] = "xyz";

	(void)state;
	assert_int_equal(parse_size("bad", &v, NULL, 0), -EINVAL);
	assert_int_equal(parse_size("bad", &v, err, 0), -EINVAL);
	assert_string_equal(err, "xyz");
	assert_int_equal(v, UNTOUCHED);
	/* A short buffer is truncated, still terminated. */
	assert_int_equal(parse_size("bad", &v, err, sizeof(err)), -EINVAL);
	assert_int_equal(strlen(err), sizeof(err) - 1);
}

/* ---- chardev_parse ------------------------------------------------------ */

static void chardev_keywords(void **state)
{
	(void)state;
	assert_int_equal(chardev("stdio").kind, CHARDEV_STDIO);
	assert_int_equal(chardev("none").kind, CHARDEV_NONE);
	assert_int_equal(chardev("pty").kind, CHARDEV_PTY);
	/* Keywords carry no path: the whole struct is reset. */
	assert_string_equal(chardev("stdio").path, "");
	assert_string_equal(chardev("pty").path, "");
}

static void chardev_paths(void **state)
{
	struct chardev_spec c;

	(void)state;
	c = chardev("file:/tmp/serial.log");
	assert_int_equal(c.kind, CHARDEV_FILE);
	assert_string_equal(c.path, "/tmp/serial.log");
	c = chardev("unix:/run/cprvm/serial.sock");
	assert_int_equal(c.kind, CHARDEV_UNIX);
	assert_string_equal(c.path, "/run/cprvm/serial.sock");
	/* Everything after the first colon is the path, colons included. */
	c = chardev("file:a:b");
	assert_int_equal(c.kind, CHARDEV_FILE);
	assert_string_equal(c.path, "a:b");
	c = chardev("unix:relative");
	assert_string_equal(c.path, "relative");
}

static void chardev_path_length_limit(void **state)
{
	char s[5 + 200], path[200];
	struct chardev_spec c;

	(void)state;
	/* 107 bytes + NUL fill sun_path exactly: accepted. */
	memset(path, 'p', 107);
	path[107] = '\0';
	snprintf(s, sizeof(s), "unix:%s", path);
	c = chardev(s);
	assert_int_equal(strlen(c.path), 107);
	assert_string_equal(c.path, path);
	snprintf(s, sizeof(s), "file:%s", path);
	assert_string_equal(chardev(s).path, path);

	/* 108 bytes: no room for the NUL. */
	memset(path, 'p', 108);
	path[108] = '\0';
	snprintf(s, sizeof(s), "unix:%s", path);
	chardev_refused(s, -ENAMETOOLONG, path);
	snprintf(s, sizeof(s), "file:%s", path);
	chardev_refused(s, -ENAMETOOLONG, path);

	memset(path, 'q', 199);
	path[199] = '\0';
	snprintf(s, sizeof(s), "unix:%s", path);
	chardev_refused(s, -ENAMETOOLONG, NULL);
}

static void chardev_refuses_empty_path(void **state)
{
	(void)state;
	chardev_refused("file:", -EINVAL, "file:");
	chardev_refused("unix:", -EINVAL, "unix:");
}

static void chardev_refuses_unknown(void **state)
{
	static const char *bad[] = {
		"STDIO", "stdio ", " stdio", "stdio:", "std", "nonee", "pty:", "pty:/dev/pts/1",
		"file", "unix", "tcp:localhost:4444", "File:/x", "socket:/x", "file/x",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		chardev_refused(bad[i], -EINVAL, bad[i]);
	chardev_refused("", -EINVAL, NULL);
	chardev_refused(NULL, -EINVAL, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(size_plain_bytes),
		cmocka_unit_test(size_suffixes_are_base_1024),
		cmocka_unit_test(size_limits),
		cmocka_unit_test(size_refuses_empty),
		cmocka_unit_test(size_refuses_non_numeric),
		cmocka_unit_test(size_refuses_signs_and_fractions),
		cmocka_unit_test(size_refuses_trailing_garbage),
		cmocka_unit_test(size_refuses_overflow),
		cmocka_unit_test(size_without_err_buffer),
		cmocka_unit_test(chardev_keywords),
		cmocka_unit_test(chardev_paths),
		cmocka_unit_test(chardev_path_length_limit),
		cmocka_unit_test(chardev_refuses_empty_path),
		cmocka_unit_test(chardev_refuses_unknown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
