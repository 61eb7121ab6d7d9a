-- atomizer.cron_describe(): a schedule's spec in plain words, made from the
-- parsed spec, so that equivalent specs read the same; every pattern the
-- words follow (steps, times of day, fields in turn, weekdays, days of the
-- month with cron's "either" rule, months, intervals) and a bad spec's
-- error, as atomizer.schedule() reports it.
-- each suite gets a database of its own
CREATE DATABASE atomizer_cron_words;
\c atomizer_cron_words
CREATE EXTENSION atomizer;

SELECT spec, atomizer.cron_describe(spec) AS in_words
  FROM unnest(ARRAY[
	'* * * * *', '*/5 * * * *', '0,15,30,45 * * * *', '0-59/15 * * * *',
	'7 * * * *', '@hourly', '0 */4 * * *', '0 */6 * * *',
	'0 3 * * *', '@daily', '30 9 * * 1', '0 9,17 * * mon-fri',
	'0 0,12 1,15 * *', '0 0 13 * 5', '0 0 */2 * *', '0 0 L * *', '0 0 1,L * *',
	'@weekly', '@monthly', '@yearly', '0 0 1 1 *', '0 12 * jan,jul *',
	'0 9-17 * * mon-fri', '23 0-20/2 * * *', '15,45 */2 * * *',
	'*/15 9-17 * jan,jun *', '5 4 * * sun', '0 22 * * 1-5', '0 0 * * 0,6',
	'* * * * * *', '*/10 * * * * *', '30 0 9 * * *', '0 30 9,17 * * 1',
	'10,20 * * * * *',
	'30 seconds', '1 minute', '90 seconds', '1 hour 30 minutes', '1 day',
	'2 weeks', '36 hours']) spec;

-- the same schedule written three ways reads the same
SELECT count(DISTINCT atomizer.cron_describe(spec)) AS readings
  FROM unnest(ARRAY['*/15 * * * *', '0,15,30,45 * * * *', '0-59/15 * * * *']) spec;

-- a bad spec is an error naming what is wrong
\set VERBOSITY terse
SELECT atomizer.cron_describe('61 * * * *');
SELECT atomizer.cron_describe('every day');
SELECT atomizer.cron_describe(NULL) IS NULL AS null_is_null;

\c postgres
DROP DATABASE atomizer_cron_words;
