/*-------------------------------------------------------------------------
 *
 * cron.h
 *	  Cron expressions and interval schedules: parsing, and the next fire
 *	  time in a time zone.  No catalog access: the scheduler, schedule()
 *	  and atomizer.cron_next() all use this API.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_CRON_H
#define ATOMIZER_CRON_H

#include "datatype/timestamp.h"
#include "pgtime.h"

/*
 * A parsed schedule.  For a cron expression each bitmap has bit n set when
 * value n matches; a 5-field expression has seconds = {0}.  For an interval
 * schedule ("30 seconds") only is_interval and interval are meaningful.
 */
typedef struct AtomizerCron
{
	uint64		seconds;		/* bits 0-59 */
	uint64		minutes;		/* bits 0-59 */
	uint32		hours;			/* bits 0-23 */
	uint32		days_of_month;	/* bits 1-31 */
	uint16		months;			/* bits 1-12 */
	uint8		days_of_week;	/* bits 0-6, 0 = Sunday */
	bool		has_seconds;	/* 6 fields, seconds first */
	bool		dom_star;		/* day-of-month field starts with '*' */
	bool		dow_star;		/* day-of-week field starts with '*' */
	bool		last_day_of_month;	/* "L" in the day-of-month field */
	bool		fixed_time;		/* minute, hour (and second) fields do not
								 * start with '*': fires once across a DST
								 * change */
	bool		is_interval;	/* an interval schedule, not a cron one */
	int64		interval;		/* its length in microseconds, > 0 */
} AtomizerCron;

/*
 * Parse spec into *out.  On error returns false and sets *error to a
 * palloc'd message naming the field and the reason; never ereports (except
 * for out of memory).
 */
extern bool atomizer_cron_parse(const char *spec, AtomizerCron *out,
								char **error);

/* Parse spec into *out, or ERROR (ERRCODE_INVALID_PARAMETER_VALUE). */
extern void atomizer_cron_parse_or_error(const char *spec, AtomizerCron *out);

/*
 * The first fire time strictly after "after", with the wall clock of tz
 * (NULL means UTC); DT_NOEND if there is none (an impossible date such as
 * 30 February, an infinite "after", or beyond the timestamp range).
 */
extern TimestampTz atomizer_cron_next(const AtomizerCron *cron,
									  TimestampTz after, pg_tz *tz);

/*
 * The longest interval a schedule may have: 1000 years (of 360 days, as
 * interval arithmetic counts them), the longest delay atomizer schedules
 * anywhere (ATOMIZER_MAX_DELAY_SECS; schedule.c checks they agree).
 */
#define INTERVAL_SPEC_MAX_SECS	INT64CONST(31104000000)

/*
 * ERROR (ERRCODE_INVALID_PARAMETER_VALUE), naming the reason, if cron never
 * fires after "after" in tz; spec is its text, for the message.
 */
extern void atomizer_cron_check_fires(const char *spec,
									  const AtomizerCron *cron,
									  TimestampTz after, pg_tz *tz);

/* cron_words.c: the parsed spec in plain words, palloc'd */
extern char *atomizer_cron_describe(const AtomizerCron *cron);

#endif							/* ATOMIZER_CRON_H */
