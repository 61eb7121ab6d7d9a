-- Cron expressions and atomizer.cron_next(): the parser (every valid form
-- and every error), month ends and leap years, the day-of-month /
-- day-of-week rule, names, seconds, macros, intervals, and time zones with
-- their DST changes (gaps and repeated hours, for fixed-time and wildcard
-- entries), fire after fire, with nothing missed or doubled.
-- each suite gets a database of its own
CREATE DATABASE atomizer_cron;
\c atomizer_cron
CREATE EXTENSION atomizer;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';
\pset null '-'

-- try(sql): run a statement that must fail; show its SQLSTATE and message
CREATE FUNCTION try(sql text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;

-- fires(expr, tz, start, n): the first n fire times after start, each from
-- the one before (as the scheduler does), in UTC and on tz's wall clock
CREATE FUNCTION fires(expr text, tz text, start timestamptz, n int)
RETURNS TABLE (utc timestamptz, wall_clock timestamp, utc_offset interval)
LANGUAGE sql AS $$
	WITH RECURSIVE r(i, t) AS (
		SELECT 1, atomizer.cron_next(expr, start, tz)
		UNION ALL
		SELECT i + 1, atomizer.cron_next(expr, t, tz)
		  FROM r WHERE i < n AND t IS NOT NULL)
	SELECT t, t AT TIME ZONE tz, (t AT TIME ZONE tz) - (t AT TIME ZONE 'UTC')
	  FROM r WHERE t IS NOT NULL ORDER BY i
$$;

-- Valid forms, from Wednesday 2024-05-15 12:34:56.5 UTC
SELECT expr, atomizer.cron_next(expr, '2024-05-15 12:34:56.5+00') AS next,
	   to_char(atomizer.cron_next(expr, '2024-05-15 12:34:56.5+00'), 'Dy') AS day
  FROM (VALUES
	('* * * * *'), ('*/15 * * * *'), ('5-59/10 * * * *'), ('10/5 * * * *'),
	('0,20,40 * * * *'), ('0 13-15 * * *'), ('0 */6 * * *'),
	('0 0 1,15 * *'), ('0 0 L * *'), ('0 0 1,L * *'), ('0 0 31 * *'),
	('0 9 * * mon-fri'), ('0 9 * * MON-Fri'), ('0 9 * * sat,sun'),
	('0 9 * * 0'), ('0 9 * * 7'), ('0 9 * * 5-7'), ('0 9 * * mon-sun'),
	('0 9 * * Saturday'), ('0 9 * * */2'), ('0 9 * * 1/2'),
	('0 0 1 jan-mar *'), ('0 0 1 JUL *'), ('0 0 1 September *'),
	('0 0 1 */4 *'), ('0 0 1 2/5 *'),
	('*/10 * * * * *'), ('0 * * * * *'), ('30 0 13 * * *'),
	('0-5 35 12 * * *'),
	('@yearly'), ('@annually'), ('@monthly'), ('@weekly'), ('@daily'),
	('@midnight'), ('@hourly'), ('@DAILY'),
	('  0   12   *   *   *  '), (E'0\t12\t*\t*\t*'),
	('30 seconds'), ('5 minutes'), ('2 hours'), ('1 day'), ('1 week'),
	('90 s'), ('10 sec'), ('15 min'), ('3 h'), ('1 hour 30 minutes'),
	('1 Hour'), ('1 minute 1 second')
  ) AS t(expr);

-- strictly after: a fire time itself gives the next one
SELECT atomizer.cron_next('0 * * * *', '2024-05-15 12:00:00+00') AS at_fire,
	   atomizer.cron_next('0 * * * *', '2024-05-15 11:59:59.999999+00') AS just_before,
	   atomizer.cron_next('* * * * * *', '2024-05-15 12:00:00+00') AS every_second,
	   atomizer.cron_next('* * * * * *', '2024-05-15 12:00:00.000001+00') AS from_fraction;

-- errors: SQLSTATE 22023 and a message naming the field and the reason
SELECT expr, (try(format('SELECT atomizer.cron_next(%L, now())', expr))).*
  FROM (VALUES
	(''), ('   '),
	('* * * *'), ('* * * * * * *'), ('1 2 3'), ('daily'),
	('61 * * * *'), ('* 24 * * *'), ('* * 0 * *'), ('* * 32 * *'),
	('* * * 0 *'), ('* * * 13 *'), ('* * * * 8'), ('60 * * * * *'),
	('x * * * *'), ('0 x * * *'), ('jan * * * *'), ('* * * * 1.5'),
	('* * * * -1'), ('99999999999 * * * *'),
	('* 5-2 * * *'), ('* * * * fri-mon'), ('* * * nov-feb *'), ('1- * * * *'), ('-5 * * * *'),
	('1-2-3 * * * *'),
	('*/0 * * * * *'), ('*/61 * * * *'), ('*/x * * * *'), ('*/ * * * *'),
	('1-5/0 * * * *'), ('*/2/3 * * * *'),
	('/5 * * * *'), ('1,,2 * * * *'), ('1, * * * *'), (',1 * * * *'),
	('* * * foo *'), ('* * * * foo'), ('* * * * mo'), ('* * * january1 *'),
	('L * * * *'), ('* * * L *'), ('* * * * L'),
	('* * L/2 * *'), ('* * 1-L * *'), ('* * L-5 * *'), ('* * LW * *'),
	('@often'), ('@reboot'), ('@daily extra'), ('@'),
	('0 seconds'), ('-5 minutes'), ('1 hour -2 hours'), ('5 fortnights'),
	('1 hour 30'), ('x minutes'), ('1.5 hours'), ('999999999 weeks')
  ) AS t(expr);

-- the hint describes the syntax
SELECT atomizer.cron_next('61 * * * *', now());

-- time zones
SELECT * FROM try($$SELECT atomizer.cron_next('* * * * *', now(), 'Mars/Olympus')$$);
SELECT * FROM try($$SELECT atomizer.cron_next('* * * * *', now(), '')$$);
SELECT atomizer.cron_next('0 12 * * *', '2024-05-15', 'utc') AS lower_case_utc,
	   atomizer.cron_next('0 12 * * *', '2024-05-15', 'europe/berlin') AS lower_case_berlin,
	   atomizer.cron_next('0 12 * * *', '2024-05-15') AS default_utc;

-- STRICT: NULL in, NULL out; infinite "after": NULL
SELECT atomizer.cron_next(NULL, now()) AS null_expr,
	   atomizer.cron_next('* * * * *', NULL) AS null_after,
	   atomizer.cron_next('* * * * *', now(), NULL) AS null_tz,
	   atomizer.cron_next('* * * * *', 'infinity') AS infinity,
	   atomizer.cron_next('* * * * *', '-infinity') AS minus_infinity,
	   atomizer.cron_next('5 minutes', 'infinity') AS interval_infinity;

-- Leap years and month ends
SELECT atomizer.cron_next('0 0 29 2 *', '2025-01-01') AS feb_29_from_2025,
	   atomizer.cron_next('0 0 29 2 *', '2096-03-01') AS skips_2100,
	   atomizer.cron_next('0 0 L 2 *', '2024-01-01') AS last_of_feb_2024,
	   atomizer.cron_next('0 0 L 2 *', '2025-01-01') AS last_of_feb_2025;
SELECT utc, to_char(utc, 'Mon DD') FROM fires('0 0 L * *', 'UTC', '2023-12-15', 14);
SELECT utc FROM fires('0 0 31 * *', 'UTC', '2024-01-01', 8);
SELECT utc FROM fires('0 0 30 * *', 'UTC', '2024-01-01', 4);

-- impossible dates: NULL, at once
SELECT atomizer.cron_next('0 0 30 2 *', '2024-01-01') AS feb_30,
	   atomizer.cron_next('30 2 31 2 *', '2024-01-01') AS feb_31,
	   atomizer.cron_next('0 0 31 4,6,9,11 *', '2024-01-01') AS short_months,
	   atomizer.cron_next('0 0 31 2 mon', '2024-01-01') AS feb_31_or_monday;
SELECT count(atomizer.cron_next('0 0 30 2 *', t)) AS never
  FROM generate_series(timestamptz '2024-01-01', '2024-01-02', '1 minute') t;

-- rare but possible: 29 February on a Sunday (day-of-week starts with "*",
-- so both fields must match)
SELECT utc, to_char(utc, 'Dy') FROM fires('0 0 29 2 */7', 'UTC', '2024-01-01', 3);

-- Day of month and day of week: both restricted, either matches (Vixie)
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 13 * fri', 'UTC', '2024-09-01', 8);
-- day of month "*": only the weekday counts
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 * * fri', 'UTC', '2024-09-01', 3);
-- day of week "*": only the day of month counts
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 13 * *', 'UTC', '2024-09-01', 3);
-- a field starting with "*" but stepped still counts as "*": both must match
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 */10 * fri', 'UTC', '2024-01-01', 4);
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 1-7 * mon', 'UTC', '2024-09-01', 9);
-- L or a weekday
SELECT utc, to_char(utc, 'DD Dy') FROM fires('0 0 L * sun', 'UTC', '2024-09-20', 4);

-- Names: weekdays and months, in lists and ranges, Sunday as 0 and 7
SELECT utc, to_char(utc, 'Dy') FROM fires('0 9 * * mon-fri', 'UTC', '2024-05-16', 6);
SELECT utc, to_char(utc, 'Dy') FROM fires('0 9 * * fri-sun', 'UTC', '2024-05-16', 4);
SELECT utc, to_char(utc, 'Dy') FROM fires('0 9 * * 5-7', 'UTC', '2024-05-16', 4);
SELECT utc FROM fires('0 0 1 jan-feb,nov-dec *', 'UTC', '2024-01-15', 5);
SELECT utc FROM fires('0 0 1 jan,apr,jul,oct *', 'UTC', '2024-01-15', 4);

-- Six fields: seconds first
SELECT utc FROM fires('*/20 * * * * *', 'UTC', '2024-05-15 12:00:30', 5);
SELECT utc FROM fires('15,45 30 9 * * *', 'UTC', '2024-05-15', 4);
SELECT utc FROM fires('59 59 23 31 12 *', 'UTC', '2024-05-15', 2);

-- Macros
SELECT utc, to_char(utc, 'Dy') FROM fires('@weekly', 'UTC', '2024-05-15', 3);
SELECT utc FROM fires('@monthly', 'Europe/Berlin', '2024-05-15', 3);

-- Intervals: after + interval, whatever the time zone
SELECT utc FROM fires('30 seconds', 'UTC', '2024-05-15 12:00:00.25', 3);
SELECT utc FROM fires('1 day', 'America/New_York', '2024-03-09 12:00', 3);

-- Time zones: the wall clock of tz
SELECT * FROM fires('0 9 * * *', 'Europe/Berlin', '2024-05-15', 2);
SELECT * FROM fires('0 9 * * *', 'Asia/Kolkata', '2024-05-15', 2);
SELECT * FROM fires('0 9 * * *', 'America/New_York', '2024-05-15', 2);
SELECT * FROM fires('0 9 1 1 *', 'Pacific/Kiritimati', '2024-05-15', 1);

-- Asia/Kolkata: +05:30 all year, no DST
SELECT * FROM fires('*/45 23 * * *', 'Asia/Kolkata', '2024-03-30', 4);

-- America/New_York, spring forward 2024-03-10 02:00 EST -> 03:00 EDT:
-- a fixed-time entry in the gap fires once, at 03:00 EDT (07:00 UTC)
SELECT * FROM fires('30 2 * * *', 'America/New_York', '2024-03-08 12:00', 4);
SELECT * FROM fires('0,30 2 * * *', 'America/New_York', '2024-03-09 12:00', 3);
-- ... from inside the gap's day, and from the fire time itself
SELECT atomizer.cron_next('30 2 * * *', '2024-03-10 06:59:59+00', 'America/New_York') AS before_gap,
	   atomizer.cron_next('30 2 * * *', '2024-03-10 07:00:00+00', 'America/New_York') AS at_gap_fire;
-- wildcard entries skip the missing times
SELECT * FROM fires('*/30 * * * *', 'America/New_York', '2024-03-10 05:00+00', 5);
SELECT * FROM fires('*/20 2 * * *', 'America/New_York', '2024-03-09 00:00', 6);

-- America/New_York, fall back 2024-11-03 02:00 EDT -> 01:00 EST:
-- a fixed-time entry fires once, at the first 01:30 (EDT, 05:30 UTC)
SELECT * FROM fires('30 1 * * *', 'America/New_York', '2024-11-01 12:00', 4);
-- ... also when asked from inside the repeated hour
SELECT atomizer.cron_next('30 1 * * *', '2024-11-03 05:45+00', 'America/New_York') AS from_first_pass,
	   atomizer.cron_next('30 1 * * *', '2024-11-03 06:15+00', 'America/New_York') AS from_second_pass;
-- wildcard entries fire in both passes: 01:00, 01:30 EDT, then 01:00, 01:30 EST
SELECT * FROM fires('*/30 * * * *', 'America/New_York', '2024-11-03 04:00+00', 8);
SELECT atomizer.cron_next('*/30 * * * *', '2024-11-03 05:45+00', 'America/New_York') AS from_first_pass,
	   atomizer.cron_next('*/30 * * * *', '2024-11-03 06:15+00', 'America/New_York') AS from_second_pass;

-- Europe/Berlin, spring forward 2024-03-31 02:00 CET -> 03:00 CEST
SELECT * FROM fires('30 2 * * *', 'Europe/Berlin', '2024-03-29 12:00', 4);
SELECT * FROM fires('0 30 2 * * *', 'Europe/Berlin', '2024-03-30 12:00', 2);
SELECT * FROM fires('*/15 2 * * *', 'Europe/Berlin', '2024-03-30 00:00', 6);
SELECT * FROM fires('*/30 * * * *', 'Europe/Berlin', '2024-03-30 23:30+00', 4);
-- Europe/Berlin, fall back 2024-10-27 03:00 CEST -> 02:00 CET
SELECT * FROM fires('30 2 * * *', 'Europe/Berlin', '2024-10-25 12:00', 4);
SELECT * FROM fires('*/30 2 * * *', 'Europe/Berlin', '2024-10-26 12:00', 6);
SELECT * FROM fires('* 30 2 * * *', 'Europe/Berlin', '2024-10-27 00:29:58+00', 4);
SELECT * FROM fires('* 30 2 * * *', 'Europe/Berlin', '2024-10-27 00:30:58+00', 3);

-- Australia/Lord_Howe: a 30-minute shift.  Back 2024-04-07 02:00 (+11) ->
-- 01:30 (+10:30): 01:30-01:59 twice; forward 2024-10-06 02:00 (+10:30) ->
-- 02:30 (+11): 02:00-02:29 missing
SELECT * FROM fires('45 1 * * *', 'Australia/Lord_Howe', '2024-04-05', 3);
SELECT * FROM fires('*/15 1 * * *', 'Australia/Lord_Howe', '2024-04-06', 6);
SELECT * FROM fires('15 2 * * *', 'Australia/Lord_Howe', '2024-10-04', 3);
SELECT * FROM fires('*/15 2 * * *', 'Australia/Lord_Howe', '2024-10-05', 4);
SELECT * FROM fires('*/30 * * * *', 'Australia/Lord_Howe', '2024-10-05 14:00+00', 4);

-- a whole year, fire after fire: fixed-time entries fire exactly once per
-- local day, gaps and repeated hours included; wildcard entries fire once per
-- existing wall-clock time (23 on the short day, 25 on the long one)
SELECT tz, count(*) AS fires, count(DISTINCT wall_clock::date) AS local_days,
	   min(utc) AS first, max(utc) AS last
  FROM unnest(ARRAY['America/New_York', 'Europe/Berlin', 'Australia/Lord_Howe',
				   'Asia/Kolkata']) AS tz,
	   fires('30 2 * * *', tz, ('2024-01-01 00:00'::timestamp AT TIME ZONE tz), 366)
 GROUP BY tz ORDER BY tz;
SELECT tz, wall_clock::date AS day, count(*) AS hourly_fires
  FROM unnest(ARRAY['America/New_York', 'Europe/Berlin']) AS tz,
	   fires('0 * * * *', tz,
			 ('2024-01-01 00:00'::timestamp AT TIME ZONE tz) - interval '1 second', 8784)
 GROUP BY 1, 2 HAVING count(*) <> 24 ORDER BY 1, 2;
-- ... with no fire time repeated and none out of order
SELECT count(*) AS fires, count(DISTINCT utc) AS distinct_fires,
	   bool_and(utc > prev) AS increasing
  FROM (SELECT utc, lag(utc, 1, '-infinity') OVER (ORDER BY utc) AS prev
		  FROM fires('*/30 * * * *', 'Australia/Lord_Howe', '2024-01-01', 17568)) s;

-- The session's TimeZone changes how results print, never which instants
CREATE TABLE in_utc AS
SELECT expr, tz, atomizer.cron_next(expr, '2024-03-10 06:45+00', tz) AS next
  FROM unnest(ARRAY['30 2 * * *', '*/30 * * * *', '0 0 * * *', '@hourly']) AS expr,
	   unnest(ARRAY['UTC', 'America/New_York', 'Europe/Berlin',
				   'Australia/Lord_Howe', 'Asia/Kolkata']) AS tz;
SET timezone = 'Pacific/Chatham';
SELECT count(*) AS same
  FROM in_utc WHERE atomizer.cron_next(expr, '2024-03-10 06:45+00', tz) = next;
SELECT atomizer.cron_next('30 2 * * *', '2024-03-10 00:00+00', 'America/New_York');
SET timezone = 'America/Los_Angeles';
SELECT count(*) AS same
  FROM in_utc WHERE atomizer.cron_next(expr, '2024-03-10 06:45+00', tz) = next;
SELECT atomizer.cron_next('30 2 * * *', '2024-03-10 00:00+00', 'America/New_York');
RESET timezone;
SET timezone = 'UTC';

-- many rows, one expression (parsed once), and a different expression and
-- time zone on each row
SELECT count(*), min(n), max(n)
  FROM (SELECT atomizer.cron_next('*/5 * * * *', t, 'Europe/Berlin') AS n
		  FROM generate_series(timestamptz '2024-01-01', '2024-01-08', '1 minute') t) s;
SELECT expr, tz, next FROM in_utc WHERE expr IN ('30 2 * * *', '@hourly') ORDER BY 1, 2;
