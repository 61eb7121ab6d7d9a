/*-------------------------------------------------------------------------
 *
 * cron.c
 *	  Schedule specifications: the cron expression and interval parser, the
 *	  next-fire-time computation in a time zone, and the SQL function
 *	  atomizer.cron_next().  Nothing here reads the catalogs, and the parser
 *	  reports errors as strings, so the scheduler can record a bad spec on
 *	  its schedule and carry on.
 *
 *	  Syntax:
 *	  - five fields "minute hour day-of-month month day-of-week", or six
 *		with a seconds field first;
 *	  - each field a comma-separated list of elements: "*", a value, a range
 *		"a-b", each optionally with a step: "*\/15", "5-59/10", "10/5" (the
 *		same as "10-<max>/5");
 *	  - months by number (1-12) or name, weekdays by number (0-7, both 0 and
 *		7 are Sunday) or name; names are case-insensitive, three-letter
 *		("jan", "mon") or full ("january", "monday"), also in ranges;
 *	  - "L" in the day-of-month field: the last day of the month;
 *	  - macros @yearly (@annually), @monthly, @weekly, @daily (@midnight)
 *		and @hourly; no others (@reboot means nothing to a database);
 *	  - an interval: one or more "<integer> <unit>" pairs, units second(s),
 *		sec(s), s, minute(s), min(s), hour(s), hr(s), h, day(s), d, week(s),
 *		w, e.g. '30 seconds' or '1 hour 30 minutes'; it must be positive, and
 *		fires at after + interval.
 *
 *	  Days: when both the day-of-month and the day-of-week field are
 *	  restricted (neither starts with "*"), a day matching either fires;
 *	  otherwise a day must match both (Vixie cron's rule).
 *
 *	  Time zones and DST: fire times are wall-clock times in the schedule's
 *	  time zone, from PostgreSQL's own tz database.  An entry is fixed-time
 *	  when its minute and hour fields (and its seconds field, if any) do not
 *	  start with "*" (Vixie's definition).  When clocks go forward, fixed-time
 *	  entries whose times fall into the gap fire once, at the first instant
 *	  after it; other entries skip the missing times.  When clocks go back,
 *	  fixed-time entries fire only at the first occurrence of a repeated
 *	  time; other entries fire in both passes.
 *
 *	  The search walks the UTC time line one constant-offset segment at a
 *	  time (segments end at DST boundaries), and inside a segment jumps with
 *	  the field bitmaps from month to day to hour to minute to second, so a
 *	  call costs microseconds whatever the spec.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/int.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "port/pg_bitutils.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "cron.h"

PG_FUNCTION_INFO_V1(atomizer_cron_next_sql);

/* Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01). */
#define EPOCH_DIFF_SECS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)

/*
 * How far cron_next looks back for a DST boundary (to know whether "after"
 * lies in a repeated hour), and how far forward it searches.  Dates repeat
 * every 400 Gregorian years, so a date pattern that has not matched within
 * that many years never will.
 */
#define LOOKBACK_SECS	((int64) 2 * SECS_PER_DAY)
#define HORIZON_SECS	((int64) 401 * 366 * SECS_PER_DAY)

/* More white-space separated tokens than any valid spec has. */
#define MAX_TOKENS		16

/* The fields of a cron expression, in order (seconds only with 6 fields). */
typedef enum CronFieldId
{
	FIELD_SECOND,
	FIELD_MINUTE,
	FIELD_HOUR,
	FIELD_DOM,
	FIELD_MONTH,
	FIELD_DOW,
	NUM_FIELDS
} CronFieldId;

typedef struct CronName
{
	const char *name;
	int			value;
} CronName;

typedef struct CronField
{
	CronFieldId id;
	const char *name;			/* in error messages */
	int			min;			/* smallest value */
	int			max;			/* largest value */
	int			open_max;		/* upper end of "*" and of "n/step" */
	const CronName *names;		/* names of values, or NULL */
} CronField;

static const CronName month_names[] = {
	{"jan", 1}, {"feb", 2}, {"mar", 3}, {"apr", 4}, {"may", 5}, {"jun", 6},
	{"jul", 7}, {"aug", 8}, {"sep", 9}, {"oct", 10}, {"nov", 11}, {"dec", 12},
	{"january", 1}, {"february", 2}, {"march", 3}, {"april", 4},
	{"june", 6}, {"july", 7}, {"august", 8}, {"september", 9},
	{"october", 10}, {"november", 11}, {"december", 12},
	{NULL, 0}
};

static const CronName weekday_names[] = {
	{"sun", 0}, {"mon", 1}, {"tue", 2}, {"wed", 3}, {"thu", 4}, {"fri", 5},
	{"sat", 6},
	{"sunday", 0}, {"monday", 1}, {"tuesday", 2}, {"wednesday", 3},
	{"thursday", 4}, {"friday", 5}, {"saturday", 6},
	{NULL, 0}
};

static const CronField fields[NUM_FIELDS] = {
	{FIELD_SECOND, "second", 0, 59, 59, NULL},
	{FIELD_MINUTE, "minute", 0, 59, 59, NULL},
	{FIELD_HOUR, "hour", 0, 23, 23, NULL},
	{FIELD_DOM, "day-of-month", 1, 31, 31, NULL},
	{FIELD_MONTH, "month", 1, 12, 12, month_names},
	{FIELD_DOW, "day-of-week", 0, 7, 6, weekday_names}
};

/* The macros and the five fields each stands for. */
static const struct
{
	const char *name;
	const char *fields[5];
}			macros[] = {
	{"@yearly", {"0", "0", "1", "1", "*"}},
	{"@annually", {"0", "0", "1", "1", "*"}},
	{"@monthly", {"0", "0", "1", "*", "*"}},
	{"@weekly", {"0", "0", "*", "*", "0"}},
	{"@daily", {"0", "0", "*", "*", "*"}},
	{"@midnight", {"0", "0", "*", "*", "*"}},
	{"@hourly", {"0", "*", "*", "*", "*"}}
};

/* Units of an interval spec, in microseconds. */
static const struct
{
	const char *name;
	int64		usecs;
}			units[] = {
	{"s", USECS_PER_SEC}, {"sec", USECS_PER_SEC}, {"secs", USECS_PER_SEC},
	{"second", USECS_PER_SEC}, {"seconds", USECS_PER_SEC},
	{"min", USECS_PER_MINUTE}, {"mins", USECS_PER_MINUTE},
	{"minute", USECS_PER_MINUTE}, {"minutes", USECS_PER_MINUTE},
	{"h", USECS_PER_HOUR}, {"hr", USECS_PER_HOUR}, {"hrs", USECS_PER_HOUR},
	{"hour", USECS_PER_HOUR}, {"hours", USECS_PER_HOUR},
	{"d", USECS_PER_DAY}, {"day", USECS_PER_DAY}, {"days", USECS_PER_DAY},
	{"w", 7 * USECS_PER_DAY}, {"week", 7 * USECS_PER_DAY},
	{"weeks", 7 * USECS_PER_DAY}
};

/* What atomizer.cron_next() keeps in fn_extra between calls. */
typedef struct CronNextCache
{
	text	   *expr;			/* the expression last parsed, or NULL */
	AtomizerCron cron;			/* ... parsed */
	text	   *tz_name;		/* the time zone last looked up, or NULL */
	pg_tz	   *tz;				/* ... found */
} CronNextCache;


/* ---------------------------------------------------------------- parser */

static bool fail(char **error, const char *fmt,...) pg_attribute_printf(2, 3);

/*
 * fail
 *		Set *error to a formatted message; returns false for the caller to
 *		return.
 */
static bool
fail(char **error, const char *fmt,...)
{
	va_list		args;
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	*error = buf.data;
	return false;
}

/*
 * parse_number
 *		An unsigned decimal integer of at most 9 digits.
 */
static bool
parse_number(const char *s, int *value)
{
	int			n = 0;
	int			len = 0;

	if (*s == '\0')
		return false;
	for (; *s; s++, len++)
	{
		if (!isdigit((unsigned char) *s) || len >= 9)
			return false;
		n = n * 10 + (*s - '0');
	}
	*value = n;
	return true;
}

/*
 * is_last
 *		Is s the "L" (last day of month) element?
 */
static bool
is_last(const char *s)
{
	return (s[0] == 'L' || s[0] == 'l') && s[1] == '\0';
}

/*
 * parse_value
 *		One value of a field: a number within the field's range, or a name.
 */
static bool
parse_value(const char *s, const CronField *field, int *value, char **error)
{
	if (is_last(s))
	{
		if (field->id == FIELD_DOM)
			return fail(error, "\"L\" cannot be combined with a range or a step in %s field",
						field->name);
		return fail(error, "\"L\" is only allowed in the day-of-month field");
	}
	if (isdigit((unsigned char) s[0]))
	{
		if (!parse_number(s, value) ||
			*value < field->min || *value > field->max)
			return fail(error, "invalid value \"%s\" in %s field",
						s, field->name);
		return true;
	}
	if (isalpha((unsigned char) s[0]) && field->names != NULL)
	{
		for (const CronName *n = field->names; n->name != NULL; n++)
		{
			if (pg_strcasecmp(s, n->name) == 0)
			{
				*value = n->value;
				return true;
			}
		}
		return fail(error, "unknown name \"%s\" in %s field", s, field->name);
	}
	return fail(error, "invalid value \"%s\" in %s field", s, field->name);
}

/*
 * parse_element
 *		One element of a field's list ("*", "5", "1-5", "*\/15", "L", ...),
 *		added to *bits (or *last).  elem is modified.
 */
static bool
parse_element(char *elem, const CronField *field, uint64 *bits, bool *last,
			  char **error)
{
	char	   *orig = pstrdup(elem);
	char	   *slash = strchr(elem, '/');
	char	   *dash;
	int			step = 1;
	int			lo;
	int			hi;

	if (slash != NULL)
	{
		if (!parse_number(slash + 1, &step) ||
			step < 1 || step > field->open_max - field->min + 1)
			return fail(error, "invalid step \"%s\" in %s field",
						slash + 1, field->name);
		*slash = '\0';
	}

	if (elem[0] == '\0')
		return fail(error, "invalid value \"%s\" in %s field",
					orig, field->name);
	else if (strcmp(elem, "*") == 0)
	{
		lo = field->min;
		hi = field->open_max;
	}
	else if (is_last(elem))
	{
		if (field->id != FIELD_DOM)
			return fail(error, "\"L\" is only allowed in the day-of-month field");
		if (slash != NULL)
			return fail(error, "\"L\" cannot be combined with a range or a step in %s field",
						field->name);
		*last = true;
		return true;
	}
	else if ((dash = strchr(elem, '-')) != NULL)
	{
		char	   *range = pstrdup(elem);

		*dash = '\0';
		if (elem[0] == '\0' || dash[1] == '\0' || strchr(dash + 1, '-') != NULL)
			return fail(error, "invalid range \"%s\" in %s field",
						range, field->name);
		if (!parse_value(elem, field, &lo, error) ||
			!parse_value(dash + 1, field, &hi, error))
			return false;
		/* "mon-sun": Sunday named at the end of a range is day 7 */
		if (field->id == FIELD_DOW && hi == 0 && isalpha((unsigned char) dash[1]))
			hi = 7;
		if (lo > hi)
			return fail(error, "invalid range \"%s\" in %s field",
						range, field->name);
	}
	else
	{
		if (!parse_value(elem, field, &lo, error))
			return false;
		hi = (slash != NULL) ? Max(lo, field->open_max) : lo;
	}

	for (int v = lo; v <= hi; v += step)
		*bits |= UINT64CONST(1) << v;
	return true;
}

/*
 * parse_field
 *		One field's comma-separated list into a bitmap.
 */
static bool
parse_field(const char *text, const CronField *field, uint64 *bits,
			bool *last, char **error)
{
	char	   *copy = pstrdup(text);
	char	   *elem = copy;

	*bits = 0;
	for (;;)
	{
		char	   *comma = strchr(elem, ',');

		if (comma != NULL)
			*comma = '\0';
		if (elem[0] == '\0')
			return fail(error, "invalid list \"%s\" in %s field",
						text, field->name);
		if (!parse_element(elem, field, bits, last, error))
			return false;
		if (comma == NULL)
			break;
		elem = comma + 1;
	}

	/* Sunday is 0 and 7 */
	if (field->id == FIELD_DOW && (*bits & (UINT64CONST(1) << 7)))
		*bits = (*bits & ~(UINT64CONST(1) << 7)) | 1;
	return true;
}

/*
 * parse_fields
 *		A 5- or 6-field cron expression into *out.
 */
static bool
parse_fields(const char *const *tokens, int ntokens, AtomizerCron *out,
			 char **error)
{
	bool		star[NUM_FIELDS];
	uint64		bits[NUM_FIELDS];
	int			first = (ntokens == 6) ? FIELD_SECOND : FIELD_MINUTE;

	if (ntokens != 5 && ntokens != 6)
		return fail(error, "wrong number of fields: %d (expected 5, or 6 with seconds first)",
					ntokens);

	memset(star, 0, sizeof(star));
	bits[FIELD_SECOND] = 1;		/* second 0, unless given */
	for (int f = first; f < NUM_FIELDS; f++)
	{
		const char *text = tokens[f - first];

		star[f] = (text[0] == '*');
		if (!parse_field(text, &fields[f], &bits[f],
						 &out->last_day_of_month, error))
			return false;
	}

	out->seconds = bits[FIELD_SECOND];
	out->minutes = bits[FIELD_MINUTE];
	out->hours = (uint32) bits[FIELD_HOUR];
	out->days_of_month = (uint32) bits[FIELD_DOM];
	out->months = (uint16) bits[FIELD_MONTH];
	out->days_of_week = (uint8) bits[FIELD_DOW];
	out->has_seconds = (ntokens == 6);
	out->dom_star = star[FIELD_DOM];
	out->dow_star = star[FIELD_DOW];
	out->fixed_time = !star[FIELD_MINUTE] && !star[FIELD_HOUR] &&
		!(out->has_seconds && star[FIELD_SECOND]);
	return true;
}

/*
 * is_unit
 *		Is s a unit of an interval spec?  Sets *usecs if so.
 */
static bool
is_unit(const char *s, int64 *usecs)
{
	for (int i = 0; i < lengthof(units); i++)
	{
		if (pg_strcasecmp(s, units[i].name) == 0)
		{
			*usecs = units[i].usecs;
			return true;
		}
	}
	return false;
}

/*
 * parse_interval
 *		"<integer> <unit>" pairs into an interval schedule.
 */
static bool
parse_interval(const char *const *tokens, int ntokens, const char *spec,
			   AtomizerCron *out, char **error)
{
	int64		total = 0;

	for (int i = 0; i < ntokens; i += 2)
	{
		const char *num = tokens[i];
		bool		negative = (num[0] == '-');
		int			n;
		int64		usecs;
		int64		part;

		if (!parse_number((num[0] == '-' || num[0] == '+') ? num + 1 : num, &n))
			return fail(error, "invalid value \"%s\" in interval \"%s\"",
						num, spec);
		if (i + 1 >= ntokens)
			return fail(error, "missing unit after \"%s\" in interval \"%s\"",
						num, spec);
		if (!is_unit(tokens[i + 1], &usecs))
			return fail(error, "unknown unit \"%s\" in interval \"%s\"",
						tokens[i + 1], spec);
		if (pg_mul_s64_overflow(negative ? -n : n, usecs, &part) ||
			pg_add_s64_overflow(total, part, &total))
			return fail(error, "interval \"%s\" is longer than 1000 years, the longest a schedule may have", spec);
	}
	if (total <= 0)
		return fail(error, "interval \"%s\" is not positive", spec);
	if (total > INTERVAL_SPEC_MAX_SECS * USECS_PER_SEC)
		return fail(error, "interval \"%s\" is longer than 1000 years, the longest a schedule may have", spec);

	out->is_interval = true;
	out->interval = total;
	return true;
}

/*
 * atomizer_cron_parse
 *		Parse a cron expression, macro or interval; see the file header.
 */
bool
atomizer_cron_parse(const char *spec, AtomizerCron *out, char **error)
{
	char	   *copy = pstrdup(spec);
	char	   *trimmed;
	char	   *tokens[MAX_TOKENS];
	int			ntokens = 0;
	char	   *p;
	int64		usecs;

	memset(out, 0, sizeof(*out));
	*error = NULL;

	/* trim, for messages */
	trimmed = copy;
	while (isspace((unsigned char) *trimmed))
		trimmed++;
	p = trimmed + strlen(trimmed);
	while (p > trimmed && isspace((unsigned char) p[-1]))
		*--p = '\0';
	trimmed = pstrdup(trimmed);

	/* split into white-space separated tokens, in place */
	p = copy;
	for (;;)
	{
		while (isspace((unsigned char) *p))
			p++;
		if (*p == '\0')
			break;
		if (ntokens < MAX_TOKENS)
			tokens[ntokens] = p;
		ntokens++;
		while (*p != '\0' && !isspace((unsigned char) *p))
			p++;
		if (*p != '\0')
			*p++ = '\0';
	}

	if (ntokens == 0)
		return fail(error, "cron expression must not be empty");

	if (tokens[0][0] == '@')
	{
		if (ntokens > 1)
			return fail(error, "unexpected \"%s\" after macro \"%s\"",
						tokens[1], tokens[0]);
		for (int i = 0; i < lengthof(macros); i++)
		{
			if (pg_strcasecmp(tokens[0], macros[i].name) == 0)
				return parse_fields(macros[i].fields, 5, out, error);
		}
		return fail(error, "unknown macro \"%s\"", tokens[0]);
	}

	/*
	 * An interval has a unit second; a cron expression never has a word there
	 * (its second field is the hour, or the minute).
	 */
	if (ntokens >= 2 && ntokens <= MAX_TOKENS &&
		(is_unit(tokens[1], &usecs) ||
		 (ntokens != 5 && ntokens != 6 && isalpha((unsigned char) tokens[1][0]))))
		return parse_interval((const char *const *) tokens, ntokens, trimmed,
							  out, error);

	return parse_fields((const char *const *) tokens, ntokens, out, error);
}

/*
 * atomizer_cron_parse_or_error
 *		atomizer_cron_parse, with the error raised.
 */
void
atomizer_cron_parse_or_error(const char *spec, AtomizerCron *out)
{
	char	   *error;

	if (!atomizer_cron_parse(spec, out, &error))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s", error),
				 errhint("A schedule is five cron fields (minute hour day-of-month month day-of-week), or six with seconds first, each a list of values, names, ranges a-b and steps /n, \"*\", or \"L\" for the last day of the month; a macro such as @daily; or an interval such as '5 minutes'.")));
}


/* ---------------------------------------------------------------- next */

/*
 * next_bit
 *		The lowest set bit of map at or above position from, or -1.
 */
static inline int
next_bit(uint64 map, int from)
{
	if (from >= 64)
		return -1;
	map &= ~UINT64CONST(0) << from;
	return map != 0 ? pg_rightmost_one_pos64(map) : -1;
}

/*
 * floor_div
 *		a / b rounded towards minus infinity (b > 0).
 */
static inline int64
floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	return (a % b != 0 && a < 0) ? q - 1 : q;
}

/*
 * day_mask
 *		The days (bits 1-31) of month m of year y on which cron fires.
 */
static uint64
day_mask(const AtomizerCron *cron, int y, int m)
{
	int			ndays = day_tab[isleap(y)][m - 1];
	uint64		valid = (UINT64CONST(2) << ndays) - 2;
	uint64		dom = cron->days_of_month & valid;
	uint64		week = 0;
	uint64		dow;
	int			wday1 = j2day(date2j(y, m, 1));

	if (cron->last_day_of_month)
		dom |= UINT64CONST(1) << ndays;

	/* the weekly pattern from day 1, repeated over the month */
	for (int k = 0; k < 7; k++)
	{
		if (cron->days_of_week & (1 << ((wday1 + k) % 7)))
			week |= UINT64CONST(1) << (k + 1);
	}
	dow = (week | week << 7 | week << 14 | week << 21 | week << 28) & valid;

	if (cron->dom_star || cron->dow_star)
		return dom & dow;
	return dom | dow;
}

/*
 * date_possible
 *		Can the month and day fields ever match?  ("30 2 *" cannot.)  If a
 *		month and day can, they fall on every weekday within 400 years.
 */
static bool
date_possible(const AtomizerCron *cron)
{
	if (!cron->dom_star && !cron->dow_star)
		return true;			/* every weekday matches in some month */
	for (int m = 1; m <= 12; m++)
	{
		int			ndays = (m == 2) ? 29 : day_tab[0][m - 1];

		if ((cron->months & (1 << m)) &&
			(cron->last_day_of_month ||
			 (cron->days_of_month & ((UINT64CONST(2) << ndays) - 2)) != 0))
			return true;
	}
	return false;
}

/*
 * next_day
 *		Move y-m-d to the following day.
 */
static inline void
next_day(int *y, int *m, int *d)
{
	if (++*d > day_tab[isleap(*y)][*m - 1])
	{
		*d = 1;
		if (++*m > 12)
		{
			*m = 1;
			++*y;
		}
	}
}

/*
 * first_match
 *		The first local wall-clock time in [lo, hi) that cron matches, as
 *		seconds since 1970-01-01 00:00 local time.  False if there is none.
 */
static bool
first_match(const AtomizerCron *cron, int64 lo, int64 hi, int64 *result)
{
	int64		days = floor_div(lo, SECS_PER_DAY);
	int			sod = (int) (lo - days * SECS_PER_DAY);
	int			y;
	int			m;
	int			d;
	int			h = sod / SECS_PER_HOUR;
	int			mi = (sod / SECS_PER_MINUTE) % MINS_PER_HOUR;
	int			s = sod % SECS_PER_MINUTE;
	int			mask_y = 0;
	int			mask_m = 0;
	uint64		mask = 0;

	j2date((int) (days + UNIX_EPOCH_JDATE), &y, &m, &d);

	for (;;)
	{
		int64		t;
		int			x;

		t = (int64) (date2j(y, m, d) - UNIX_EPOCH_JDATE) * SECS_PER_DAY +
			h * SECS_PER_HOUR + mi * SECS_PER_MINUTE + s;
		if (t >= hi)
			return false;

		/* month */
		if (!(cron->months & (1 << m)))
		{
			x = next_bit(cron->months, m);
			if (x < 0)
			{
				y++;
				x = next_bit(cron->months, 1);
			}
			m = x;
			d = 1;
			h = mi = s = 0;
			continue;
		}

		/* day */
		if (y != mask_y || m != mask_m)
		{
			mask = day_mask(cron, y, m);
			mask_y = y;
			mask_m = m;
		}
		x = next_bit(mask, d);
		if (x < 0)
		{
			d = day_tab[isleap(y)][m - 1];
			next_day(&y, &m, &d);
			h = mi = s = 0;
			continue;
		}
		if (x != d)
		{
			d = x;
			h = mi = s = 0;
		}

		/* hour */
		x = next_bit(cron->hours, h);
		if (x < 0)
		{
			next_day(&y, &m, &d);
			h = mi = s = 0;
			continue;
		}
		if (x != h)
		{
			h = x;
			mi = s = 0;
		}

		/* minute */
		x = next_bit(cron->minutes, mi);
		if (x < 0)
		{
			mi = s = 0;
			if (++h == HOURS_PER_DAY)
			{
				h = 0;
				next_day(&y, &m, &d);
			}
			continue;
		}
		if (x != mi)
		{
			mi = x;
			s = 0;
		}

		/* second */
		x = next_bit(cron->seconds, s);
		if (x < 0)
		{
			s = 0;
			if (++mi == MINS_PER_HOUR)
			{
				mi = 0;
				if (++h == HOURS_PER_DAY)
				{
					h = 0;
					next_day(&y, &m, &d);
				}
			}
			continue;
		}
		s = x;

		t = (int64) (date2j(y, m, d) - UNIX_EPOCH_JDATE) * SECS_PER_DAY +
			h * SECS_PER_HOUR + mi * SECS_PER_MINUTE + s;
		if (t >= hi)
			return false;
		*result = t;
		return true;
	}
}

/*
 * segment_at
 *		The UTC offset (seconds east) in effect at Unix time t, and the end
 *		of the constant-offset segment containing t: the next DST boundary
 *		after t, or PG_INT64_MAX if there is none.
 */
static void
segment_at(pg_tz *tz, int64 t, long *offset, int64 *end)
{
	pg_time_t	probe = t + 1;	/* so that a boundary at t is not "next" */
	pg_time_t	boundary;
	long		after_offset;
	int			isdst;
	int			after_isdst;

	*offset = 0;
	*end = PG_INT64_MAX;
	if (tz == NULL)
		return;
	if (pg_next_dst_boundary(&probe, offset, &isdst, &boundary,
							 &after_offset, &after_isdst, tz) == 1)
		*end = boundary;
}

/*
 * unix_to_timestamp
 *		Unix seconds as a TimestampTz.
 */
static inline TimestampTz
unix_to_timestamp(int64 t)
{
	return (t - EPOCH_DIFF_SECS) * USECS_PER_SEC;
}

/*
 * atomizer_cron_next
 *		The first fire time strictly after "after"; see cron.h.
 *
 *		The UTC time line from a little before "after" is cut into segments
 *		of constant UTC offset.  Within a segment local time runs with UTC,
 *		so the first local match in it is its first fire time, and segments
 *		are visited in UTC order: the first segment with a match has the
 *		answer.  At a boundary where clocks went forward, a fixed-time entry
 *		matching a skipped local time fires at the boundary; where they went
 *		back, a fixed-time entry skips local times the previous segment had.
 */
TimestampTz
atomizer_cron_next(const AtomizerCron *cron, TimestampTz after, pg_tz *tz)
{
	int64		t0;				/* first candidate, Unix seconds */
	int64		limit;			/* end of the search, Unix seconds */
	int64		seg_start;
	long		prev_offset = 0;
	bool		have_prev = false;

	if (TIMESTAMP_NOT_FINITE(after))
		return DT_NOEND;

	if (cron->is_interval)
	{
		TimestampTz next;

		if (pg_add_s64_overflow(after, cron->interval, &next) ||
			!IS_VALID_TIMESTAMP(next))
			return DT_NOEND;
		return next;
	}

	if (!date_possible(cron))
		return DT_NOEND;

	/* keep local dates well inside the Julian day range */
	after = Max(after, MIN_TIMESTAMP + 4 * USECS_PER_DAY);

	t0 = floor_div(after, USECS_PER_SEC) + EPOCH_DIFF_SECS + 1;
	limit = Min(t0 + HORIZON_SECS,
				END_TIMESTAMP / USECS_PER_SEC + EPOCH_DIFF_SECS);

	seg_start = t0 - LOOKBACK_SECS;
	for (;;)
	{
		long		offset;
		int64		seg_end;
		int64		local;

		segment_at(tz, seg_start, &offset, &seg_end);

		if (seg_end > t0)
		{
			int64		local_lo = Max(seg_start, t0) + offset;
			int64		local_hi = Min(seg_end, limit) + offset;

			if (have_prev && cron->fixed_time)
			{
				if (offset > prev_offset && seg_start >= t0 &&
					first_match(cron, seg_start + prev_offset,
								seg_start + offset, &local))
					return unix_to_timestamp(seg_start);
				if (offset < prev_offset)
					local_lo = Max(local_lo, seg_start + prev_offset);
			}
			if (local_lo < local_hi)
			{
				int64		skip_to;

				if (!first_match(cron, local_lo, limit + offset, &local))
					return DT_NOEND;
				if (local < local_hi)
					return unix_to_timestamp(local - offset);

				/*
				 * The next match is in a later segment.  Nothing matches
				 * before it, so go straight to its neighbourhood (with the
				 * same look-back as at the start) rather than visit every DST
				 * change of the years in between.
				 */
				skip_to = local - offset - LOOKBACK_SECS;
				if (skip_to > seg_end)
				{
					seg_start = skip_to;
					have_prev = false;
					continue;
				}
			}
		}

		if (seg_end >= limit)
			return DT_NOEND;
		prev_offset = offset;
		have_prev = true;
		seg_start = seg_end;
	}
}


/*
 * atomizer_cron_check_fires
 *		ERROR unless spec (parsed into cron) fires at least once after
 *		"after" in tz, naming why it never does: a date no month has (30
 *		February), or a first fire time past the end of the timestamp range.
 */
void
atomizer_cron_check_fires(const char *spec, const AtomizerCron *cron,
						  TimestampTz after, pg_tz *tz)
{
	if (!TIMESTAMP_NOT_FINITE(atomizer_cron_next(cron, after, tz)))
		return;

	if (!cron->is_interval && !date_possible(cron))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("schedule \"%s\" never fires", spec),
				 errdetail("None of the months in its month field has a day its day-of-month field names (as 30 February, or 31 April)."),
				 errhint("Write L in the day-of-month field for the last day of every month.")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("schedule \"%s\" never fires", spec),
			 errdetail("Its first fire time would be past the end of the timestamp range.")));
}


/* ---------------------------------------------------------------- SQL */

/*
 * same_text
 *		Do two text values have the same bytes?
 */
static bool
same_text(text *a, text *b)
{
	return a != NULL &&
		VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/*
 * atomizer.cron_next(expr text, after timestamptz, tz text DEFAULT 'UTC')
 *		RETURNS timestamptz
 *		The first fire time of expr strictly after "after", or NULL if it
 *		never fires.  The parsed expression and the time zone are kept in
 *		fn_extra, so a query calling it for many rows parses once.
 */
Datum
atomizer_cron_next_sql(PG_FUNCTION_ARGS)
{
	text	   *expr = PG_GETARG_TEXT_PP(0);
	TimestampTz after = PG_GETARG_TIMESTAMPTZ(1);
	text	   *tz_name = PG_GETARG_TEXT_PP(2);
	CronNextCache *cache = (CronNextCache *) fcinfo->flinfo->fn_extra;
	TimestampTz next;

	if (cache == NULL)
	{
		cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt,
									   sizeof(CronNextCache));
		fcinfo->flinfo->fn_extra = cache;
	}

	if (!same_text(cache->expr, expr))
	{
		AtomizerCron cron;

		atomizer_cron_parse_or_error(text_to_cstring(expr), &cron);
		if (cache->expr != NULL)
			pfree(cache->expr);
		cache->expr = NULL;
		cache->cron = cron;
		cache->expr = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt,
										 VARSIZE_ANY(expr));
		memcpy(cache->expr, expr, VARSIZE_ANY(expr));
	}

	if (!same_text(cache->tz_name, tz_name))
	{
		char	   *name = text_to_cstring(tz_name);
		pg_tz	   *tz = pg_tzset(name);

		if (tz == NULL || !pg_tz_acceptable(tz))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("time zone \"%s\" not recognized", name),
					 errhint("Use a name from pg_timezone_names, such as 'Europe/Berlin' or 'UTC'.")));
		if (cache->tz_name != NULL)
			pfree(cache->tz_name);
		cache->tz_name = NULL;
		cache->tz = tz;
		cache->tz_name = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt,
											VARSIZE_ANY(tz_name));
		memcpy(cache->tz_name, tz_name, VARSIZE_ANY(tz_name));
	}

	next = atomizer_cron_next(&cache->cron, after, cache->tz);
	if (TIMESTAMP_NOT_FINITE(next))
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(next);
}
