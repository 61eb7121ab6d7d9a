/*-------------------------------------------------------------------------
 *
 * common.c
 *	  Helpers of the atomizer command-line tool: growable buffers, the clock,
 *	  logging, usage errors, durations (500ms, 30s, 5m, 1h), one-line error
 *	  messages, and connecting with libpq.
 *
 *	  src/cli/common.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *progname = "atomizer";

static void notice_processor(void *arg, const char *message);

void *
xmalloc(size_t n)
{
	void	   *p = malloc(n ? n : 1);

	if (p == NULL)
	{
		fprintf(stderr, "%s: out of memory\n", progname);
		exit(1);
	}
	return p;
}

char *
xstrdup(const char *s)
{
	size_t		n = strlen(s) + 1;
	char	   *p = xmalloc(n);

	memcpy(p, s, n);
	return p;
}

void
buf_append(Buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 256;
		char	   *p;

		while (b->len + n + 1 > cap)
			cap *= 2;
		p = realloc(b->data, cap);
		if (p == NULL)
		{
			fprintf(stderr, "%s: out of memory\n", progname);
			exit(1);
		}
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_appendf(Buf *b, const char *fmt,...)
{
	char		tmp[512];
	va_list		ap;
	int			n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		buf_append(b, tmp, (size_t) n < sizeof(tmp) ? (size_t) n : sizeof(tmp) - 1);
}

void
buf_free(Buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* Monotonic clock in milliseconds. */
int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Log a line to stderr, prefixed with the wall-clock time. */
void
logmsg(const char *fmt,...)
{
	char		stamp[64];
	struct timespec ts;
	struct tm	tm;
	va_list		ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ld atomizer: ", stamp, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* A usage error: one line on stderr, exit status 2. */
void
usage_error(const char *cmd, const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "%s: ", progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (try \"%s %s--help\")\n", progname, cmd ? cmd : "");
	exit(EXIT_USAGE);
}

/*
 * Parse a duration: a number followed by ms, s, m or h (no unit means
 * seconds).  Returns milliseconds, or -1 when invalid.
 */
int64_t
parse_duration(const char *s)
{
	char	   *end;
	double		v;
	double		mult;

	if (s == NULL || *s == '\0' || isspace((unsigned char) *s) || *s == '-')
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || v < 0)
		return -1;
	if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "s") == 0 || *end == '\0')
		mult = 1000;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mult = 60 * 1000;
	else if (strcmp(end, "h") == 0)
		mult = 3600 * 1000;
	else
		return -1;
	v *= mult;
	if (v > 1e15)
		return -1;
	return (int64_t) v;
}

/* Format milliseconds back the way a user would write them. */
void
format_duration(int64_t ms, char *out, size_t len)
{
	if (ms % 3600000 == 0 && ms > 0)
		snprintf(out, len, "%" PRId64 "h", ms / 3600000);
	else if (ms % 60000 == 0 && ms > 0)
		snprintf(out, len, "%" PRId64 "m", ms / 60000);
	else if (ms % 1000 == 0)
		snprintf(out, len, "%" PRId64 "s", ms / 1000);
	else
		snprintf(out, len, "%" PRId64 "ms", ms);
}

/* Parse a positive integer option, or exit with a usage error. */
int
parse_positive(const char *cmd, const char *opt, const char *s, int min)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > 100000)
		usage_error(cmd, "invalid value \"%s\" for %s", s, opt);
	return (int) v;
}

/*
 * An error message on one line: newlines and tabs become single spaces,
 * no trailing blanks.  msg and buf may be the same buffer.
 */
const char *
oneline(const char *msg, char *buf, size_t len)
{
	size_t		o = 0;
	bool		space = false;

	if (msg == NULL)
		msg = "";
	for (size_t i = 0; msg[i] != '\0' && o + 1 < len; i++)
	{
		char		c = msg[i];

		if (c == '\n' || c == '\t' || c == ' ')
		{
			space = true;
			continue;
		}
		if (space && o > 0)
			buf[o++] = ' ';
		space = false;
		if (o + 1 < len)
			buf[o++] = c;
	}
	buf[o] = '\0';
	return buf;
}

/* libpq notices (and FATAL messages of a dying backend) as log lines. */
static void
notice_processor(void *arg, const char *message)
{
	char		line[1024];

	logmsg("server: %s", oneline(message, line, sizeof(line)));
}

/*
 * Connect with the DSN (or the environment when dsn is NULL), forcing the
 * application name.  Returns NULL, with the reason in *err, on failure.
 */
PGconn *
connect_db(const char *dsn, const char *appname, char *err, size_t errlen)
{
	const char *keys[8];
	const char *vals[8];
	PGconn	   *conn;
	int			i = 0;

	/*
	 * Defaults the DSN may override: notice a dead peer over TCP within
	 * about a minute rather than the kernel's two hours.
	 */
	keys[i] = "keepalives_idle";
	vals[i++] = "30";
	keys[i] = "keepalives_interval";
	vals[i++] = "10";
	keys[i] = "keepalives_count";
	vals[i++] = "3";
	/* the DSN; what follows it overrides it */
	if (dsn != NULL)
	{
		keys[i] = "dbname";
		vals[i++] = dsn;
	}
	keys[i] = "application_name";
	vals[i++] = appname;
	keys[i] = "client_encoding";
	vals[i++] = "UTF8";
	keys[i] = NULL;
	vals[i] = NULL;
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		oneline(conn ? PQerrorMessage(conn) : "out of memory", err, errlen);
		PQfinish(conn);
		return NULL;
	}
	PQsetNoticeProcessor(conn, notice_processor, NULL);
	return conn;
}

/* Fetch the argument of an option in a getopt loop, with a clear error. */
int64_t
duration_opt(const char *cmd, const char *opt, const char *arg, bool allow_zero)
{
	int64_t		v = parse_duration(arg);

	if (v < 0 || (!allow_zero && v == 0))
		usage_error(cmd, "invalid duration \"%s\" for %s (use e.g. 500ms, 30s, 5m, 1h)",
					arg, opt);
	return v;
}
