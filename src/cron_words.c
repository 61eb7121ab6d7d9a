/*-------------------------------------------------------------------------
 *
 * cron_words.c
 *	  A schedule's spec in plain words, for people: "every 5 minutes",
 *	  "at 03:00 on Monday", "every 30 seconds"; atomizer.cron_describe().
 *	  Made from the parsed spec (cron.c's bitmaps), not from its text, so
 *	  that "*\/15", "0,15,30,45" and "0-59/15" read the same.  Times are
 *	  wall-clock times in the schedule's time zone.
 *
 *	  The words follow a few patterns: a step from the start of a field
 *	  ("every 5 minutes", "every 2 hours at minute 30"), a short list of
 *	  times of day ("at 03:00 and 15:30"), and otherwise each restricted
 *	  field in turn ("at minutes 5 and 35 past hours 1 to 4").  Days: the
 *	  weekdays, the days of the month (with "or" when both are restricted,
 *	  as cron matches either), then the months.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "port/pg_bitutils.h"
#include "utils/builtins.h"

#include "cron.h"

PG_FUNCTION_INFO_V1(atomizer_cron_describe_sql);

static const char *const weekday_names[7] = {
	"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"
};
static const char *const month_names[13] = {
	"", "January", "February", "March", "April", "May", "June", "July",
	"August", "September", "October", "November", "December"
};

static bool
has(uint64 bits, int v)
{
	return (bits >> v) & 1;
}

/* The bits lo..hi all set. */
static uint64
all_bits(int lo, int hi)
{
	uint64		bits = 0;

	for (int v = lo; v <= hi; v++)
		bits |= UINT64CONST(1) << v;
	return bits;
}

static int
count_bits(uint64 bits)
{
	return pg_popcount64(bits);
}

static int
first_bit(uint64 bits)
{
	return bits == 0 ? -1 : pg_rightmost_one_pos64(bits);
}

/*
 * step_of
 *		k > 1 when bits are exactly lo, lo + k, lo + 2k, ... up to hi, with
 *		k dividing the field's size when even is set (so that the step
 *		repeats evenly across the hour or day: "every k"), else 0.
 */
static int
step_of_field(uint64 bits, int lo, int hi, bool even)
{
	int			size = hi - lo + 1;

	for (int k = 2; k <= size / 2; k++)
	{
		uint64		want = 0;

		if (even && size % k != 0)
			continue;
		for (int v = lo; v <= hi; v += k)
			want |= UINT64CONST(1) << v;
		if (want == bits)
			return k;
	}
	return 0;
}

static int
step_of(uint64 bits, int lo, int hi)
{
	return step_of_field(bits, lo, hi, true);
}

/*
 * append_list
 *		The values of bits (lo..hi) as "1, 3 and 5 to 9" (runs of three or
 *		more as a range), with names when given.
 */
static void
append_list(StringInfo out, uint64 bits, int lo, int hi,
			const char *const *names)
{
	int			from[64];
	int			to[64];
	int			n = 0;

	for (int v = lo; v <= hi; v++)
	{
		int			end = v;

		if (!has(bits, v))
			continue;
		while (end + 1 <= hi && has(bits, end + 1))
			end++;
		if (end - v >= 2)
		{
			from[n] = v;
			to[n++] = end;
		}
		else
			for (int x = v; x <= end; x++)
			{
				from[n] = x;
				to[n++] = x;
			}
		v = end;
	}
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(out, i == n - 1 ? " and " : ", ");
		if (names)
			appendStringInfoString(out, names[from[i]]);
		else
			appendStringInfo(out, "%d", from[i]);
		if (to[i] != from[i])
		{
			if (names)
				appendStringInfo(out, " to %s", names[to[i]]);
			else
				appendStringInfo(out, " to %d", to[i]);
		}
	}
}

static void
append_unit(StringInfo out, const char *unit, int n)
{
	if (n == 1)
		appendStringInfo(out, "%s", unit);
	else
		appendStringInfo(out, "%d %ss", n, unit);
}

/* "every 1 hour 30 minutes" for an interval schedule */
static void
describe_interval(StringInfo out, int64 usecs)
{
	int64		secs = usecs / USECS_PER_SEC;
	static const struct
	{
		const char *unit;
		int64		secs;
	}			units[] = {
		{"week", 7 * SECS_PER_DAY}, {"day", SECS_PER_DAY},
		{"hour", SECS_PER_HOUR}, {"minute", SECS_PER_MINUTE}, {"second", 1}
	};
	bool		first = true;

	appendStringInfoString(out, "every");
	for (int i = 0; i < lengthof(units); i++)
	{
		int64		n = secs / units[i].secs;

		if (n == 0)
			continue;
		secs -= n * units[i].secs;
		if (first && n == 1 && secs == 0)
			appendStringInfo(out, " %s", units[i].unit);
		else
			appendStringInfo(out, " " INT64_FORMAT " %s%s", n, units[i].unit,
							 n == 1 ? "" : "s");
		first = false;
	}
	if (first)
		appendStringInfo(out, " " INT64_FORMAT " microseconds", usecs);
}

/* "at 03:00 and 15:30": every combination of the fields, in order */
static bool
append_times(StringInfo out, const AtomizerCron *c, uint64 sec)
{
	int			n = count_bits(c->minutes) * count_bits(c->hours) * count_bits(sec);
	int			i = 0;

	appendStringInfoString(out, "at ");
	for (int h = 0; h < 24; h++)
		for (int m = 0; m < 60; m++)
			for (int s = 0; s < 60; s++)
			{
				if (!has(c->hours, h) || !has(c->minutes, m) || !has(sec, s))
					continue;
				i++;
				if (i > 1)
					appendStringInfoString(out, i == n ? " and " : ", ");
				appendStringInfo(out, "%02d:%02d", h, m);
				if (sec != 1)
					appendStringInfo(out, ":%02d", s);
			}
	return true;
}

/*
 * describe_time
 *		The time-of-day part: seconds, minutes and hours.  Returns true when
 *		it is a list of times of day ("at 03:00"), which reads "every day"
 *		when no day is restricted.
 */
static bool
describe_time(StringInfo out, const AtomizerCron *c)
{
	uint64		all60 = all_bits(0, 59);
	uint64		all24 = all_bits(0, 23);
	uint64		sec = c->has_seconds ? c->seconds : 1;
	bool		sec_zero = (sec == 1);
	int			ntimes = count_bits(c->minutes) * count_bits(c->hours) * count_bits(sec);
	int			k;

	/* every second, every k seconds */
	if (c->minutes == all60 && c->hours == all24 && !sec_zero)
	{
		if (sec == all60)
		{
			appendStringInfoString(out, "every second");
			return false;
		}
		if (has(sec, 0) && (k = step_of(sec, 0, 59)) > 0)
		{
			appendStringInfoString(out, "every ");
			append_unit(out, "second", k);
			return false;
		}
	}
	/* every minute, every k minutes, every hour at minute m */
	if (sec_zero && c->hours == all24)
	{
		if (c->minutes == all60)
		{
			appendStringInfoString(out, "every minute");
			return false;
		}
		if (has(c->minutes, 0) && (k = step_of(c->minutes, 0, 59)) > 0)
		{
			appendStringInfoString(out, "every ");
			append_unit(out, "minute", k);
			return false;
		}
		if (count_bits(c->minutes) == 1)
		{
			appendStringInfo(out, "every hour at minute %d", first_bit(c->minutes));
			return false;
		}
	}
	/* up to four times of day */
	if (ntimes <= 4)
		return append_times(out, c, sec);
	/* every k hours at minute m */
	if (sec_zero && count_bits(c->minutes) == 1 && c->hours != all24 &&
		has(c->hours, 0) && (k = step_of(c->hours, 0, 23)) > 0)
	{
		appendStringInfoString(out, "every ");
		append_unit(out, "hour", k);
		appendStringInfo(out, " at minute %d", first_bit(c->minutes));
		return false;
	}
	/* a few times of day */
	if (ntimes <= 6)
		return append_times(out, c, sec);
	/* each field in turn */
	if (!sec_zero)
	{
		if (sec == all60)
			appendStringInfoString(out, "every second");
		else
		{
			appendStringInfo(out, "at second%s ", count_bits(sec) > 1 ? "s" : "");
			append_list(out, sec, 0, 59, NULL);
		}
		appendStringInfoString(out, " of ");
	}
	if (c->minutes == all60)
		appendStringInfoString(out, "every minute");
	else if (has(c->minutes, 0) && (k = step_of(c->minutes, 0, 59)) > 0)
	{
		appendStringInfoString(out, "every ");
		append_unit(out, "minute", k);
	}
	else
	{
		appendStringInfo(out, "%sminute%s ", sec_zero ? "at " : "",
						 count_bits(c->minutes) > 1 ? "s" : "");
		append_list(out, c->minutes, 0, 59, NULL);
	}
	if (c->hours == all24)
		return false;
	appendStringInfoString(out, " past ");
	if (has(c->hours, 0) && (k = step_of(c->hours, 0, 23)) > 0)
	{
		appendStringInfoString(out, "every ");
		append_unit(out, "hour", k);
	}
	else
	{
		appendStringInfo(out, "hour%s ", count_bits(c->hours) > 1 ? "s" : "");
		append_list(out, c->hours, 0, 23, NULL);
	}
	return false;
}

/* The days part: weekdays, days of the month, months. */
static void
describe_days(StringInfo out, const AtomizerCron *c, bool times)
{
	bool		dom = c->last_day_of_month ||
		(c->days_of_month & all_bits(1, 31)) != all_bits(1, 31);
	bool		dow = (c->days_of_week & all_bits(0, 6)) != all_bits(0, 6);
	int			k;

	if (dow)
	{
		appendStringInfoString(out, " on ");
		append_list(out, c->days_of_week, 0, 6, weekday_names);
	}
	if (dom)
	{
		uint64		days = c->days_of_month & all_bits(1, 31);

		/* both restricted (neither a '*'): cron matches either */
		if (dow)
			appendStringInfoString(out, !c->dom_star && !c->dow_star ? " or" : " and");
		if (c->last_day_of_month && days == 0)
			appendStringInfoString(out, " on the last day of the month");
		else if (has(days, 1) && (k = step_of_field(days, 1, 31, false)) > 0 &&
				 !c->last_day_of_month)
		{
			appendStringInfoString(out, " every ");
			append_unit(out, "day", k);
			appendStringInfoString(out, " of the month, from day 1");
		}
		else
		{
			appendStringInfo(out, " on day%s ", count_bits(days) > 1 ? "s" : "");
			append_list(out, days, 1, 31, NULL);
			if (c->last_day_of_month)
				appendStringInfoString(out, " and the last day");
			appendStringInfoString(out, " of the month");
		}
	}
	if ((c->months & all_bits(1, 12)) != all_bits(1, 12))
	{
		appendStringInfoString(out, " in ");
		append_list(out, c->months, 1, 12, month_names);
	}
	else if (!dow && !dom && times)
		appendStringInfoString(out, " every day");
}

/*
 * atomizer_cron_describe
 *		The parsed spec in plain words, palloc'd.
 */
char *
atomizer_cron_describe(const AtomizerCron *cron)
{
	StringInfoData out;

	initStringInfo(&out);
	if (cron->is_interval)
		describe_interval(&out, cron->interval);
	else
	{
		bool		times = describe_time(&out, cron);

		describe_days(&out, cron, times);
	}
	return out.data;
}

/*
 * atomizer.cron_describe(spec text) RETURNS text
 *		A cron expression or interval spec in plain words; a bad spec is an
 *		ERROR naming what is wrong (as atomizer.schedule() says it).
 */
Datum
atomizer_cron_describe_sql(PG_FUNCTION_ARGS)
{
	char	   *spec = text_to_cstring(PG_GETARG_TEXT_PP(0));
	AtomizerCron cron;

	atomizer_cron_parse_or_error(spec, &cron);
	PG_RETURN_TEXT_P(cstring_to_text(atomizer_cron_describe(&cron)));
}
