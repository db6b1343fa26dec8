/*
 * lib.c - the few libc pieces the guest needs: memory/string helpers (also the
 * ones gcc may call implicitly), a small formatter and a number parser.
 * Safe at CPL0 and CPL3; no state.
 */
#include "guest.h"

void *memcpy(void *d, const void *s, size_t n)
{
	void *ret = d;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
	u8 *dp = d;
	const u8 *sp = s;

	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	while (n--)
		dp[n] = sp[n];
	return d;
}

void *memset(void *d, int c, size_t n)
{
	void *ret = d;

	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

bool parse_u64(const char *s, const char **end, u64 *out)
{
	u64 v = 0;
	const char *p = s;

	while (*p >= '0' && *p <= '9') {
		u64 d = (u64)(*p - '0');

		if (v > (~0ULL - d) / 10)
			return false;
		v = v * 10 + d;
		p++;
	}
	if (p == s)
		return false;
	*out = v;
	if (end)
		*end = p;
	return true;
}

struct out {
	char *buf;
	size_t size, len;
};

static void out_c(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_num(struct out *o, u64 v, unsigned base, bool neg)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		out_c(o, '-');
	while (n)
		out_c(o, tmp[--n]);
}

/* %s %c %d %u %x with optional l/ll, and %%. No widths. */
int vfmt(char *buf, size_t size, const char *f, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *f; f++) {
		int longs = 0;

		if (*f != '%') {
			out_c(&o, *f);
			continue;
		}
		f++;
		while (*f == 'l') {
			longs++;
			f++;
		}
		switch (*f) {
		case 's': {
			const char *s = va_arg(ap, const char *);

			if (!s)
				s = "(null)";
			while (*s)
				out_c(&o, *s++);
			break;
		}
		case 'c':
			out_c(&o, (char)va_arg(ap, int));
			break;
		case 'd': {
			long long v = longs ? va_arg(ap, long long) : va_arg(ap, int);

			out_num(&o, v < 0 ? -(u64)v : (u64)v, 10, v < 0);
			break;
		}
		case 'u':
		case 'x': {
			u64 v = longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);

			out_num(&o, v, *f == 'u' ? 10 : 16, false);
			break;
		}
		case '%':
			out_c(&o, '%');
			break;
		default:
			out_c(&o, '?');
			if (!*f)
				f--;
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = 0;
	return (int)o.len;
}

int fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vfmt(buf, size, f, ap);
	va_end(ap);
	return n;
}
