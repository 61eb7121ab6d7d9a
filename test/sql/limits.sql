-- Limits of intervals and settings: a retry's backoff saturates at its cap
-- for every attempt number, however large; every interval argument either
-- works as given or is refused with an error that names its limit; and
-- settings whose times cannot be represented are refused when a queue is
-- created or altered.  (0.1.0 raised "interval out of range" at the 41st
-- failure, which crash-looped the scheduler, and turned timeouts of
-- hundreds of thousands of years into 200 ms.)
CREATE DATABASE atomizer_limits;
\c atomizer_limits
CREATE EXTENSION atomizer;
SET client_min_messages = warning;
\set SHOW_CONTEXT never
\pset null '-'

CREATE FUNCTION try(sql text, OUT code text, OUT message text, OUT detail text,
                    OUT hint text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
		detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
END
$$;
CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'boom';
END $$;

-- ---------------------------------------------------------------- backoff
-- The issue's settings: 10 s doubling, capped at an hour, 50 attempts.
SELECT atomizer.create_queue('slow', backoff_base => '10 seconds',
                             backoff_cap => '1 hour', max_attempts => 50,
                             backoff_jitter => 0);
SELECT atomizer.enqueue('boom', queue => 'slow') AS job \gset
-- attempt n's failure waits least(cap, base * 2^(n-1)); try attempts 1, 5,
-- 41 (2^40 * 10 s is past any interval), and 49
CREATE TABLE delays (attempt int, delay interval);
DO $$
DECLARE
	a int;
BEGIN
	FOREACH a IN ARRAY ARRAY[0, 4, 40, 48] LOOP
		UPDATE atomizer.job SET attempt = a, run_at = now() WHERE queue = 'slow';
		PERFORM atomizer.run_pending('slow');
		INSERT INTO delays
		SELECT attempt, date_trunc('second', run_at - clock_timestamp() + interval '0.5 s')
		  FROM atomizer.job WHERE queue = 'slow';
	END LOOP;
END $$;
SELECT * FROM delays ORDER BY attempt;
-- the 50th failure makes it dead, as always
UPDATE atomizer.job SET attempt = 49, run_at = now() WHERE queue = 'slow';
SELECT atomizer.run_pending('slow');
SELECT state, attempt FROM atomizer.jobs WHERE id = :job;
SELECT count(*) AS errors FROM atomizer.job_errors WHERE job_id = :job;

-- A queue that 0.1.0 let have a cap of 300,000 years (written here by
-- hand): a retry is scheduled at most 1000 years ahead, never an error.
SELECT atomizer.create_queue('huge', backoff_jitter => 0);
UPDATE atomizer.queue SET backoff_base = '300000 years', backoff_cap = '300000 years'
 WHERE name = 'huge';
SELECT atomizer.enqueue('boom', queue => 'huge') AS huge_job \gset
SELECT atomizer.run_pending('huge');
SELECT state, attempt,
       run_at > now() + interval '985 years' AND run_at < now() + interval '1001 years' AS at_most_1000_years
  FROM atomizer.jobs WHERE id = :huge_job;

-- ---------------------------------------------------------------- queue settings
SELECT * FROM try($$SELECT atomizer.create_queue('q1', backoff_base => '300000 years',
                                                   backoff_cap => '300000 years')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('q1', backoff_cap => '1001 years')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('q1', timeout => '100000000 years')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('q1', timeout => '7116800 mons -423:58:10.248384')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('q1', timeout => '25 days')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('q1', retention => '5000 years')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('slow', backoff_cap => '2000 years')$$);
-- the limits themselves are accepted
SELECT * FROM try($$SELECT atomizer.create_queue('q2', backoff_base => '1000 years',
                                                   backoff_cap => '1000 years',
                                                   timeout => '24 days 20:31:23.647',
                                                   retention => '1000 years')$$);
SELECT backoff_base, backoff_cap, timeout, retention FROM atomizer.queue WHERE name = 'q2';

-- ---------------------------------------------------------------- job arguments
SELECT * FROM try($$SELECT atomizer.enqueue('boom', timeout => '100000000 years')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('boom', timeout => '7116800 mons -423:58:10.248384')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('boom', timeout => '-7116800 mons')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('boom', timeout => '24 days 20:31:23.648')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('boom', timeout => '24 days 20:31:23.647', queue => 'q2')$$);
SELECT * FROM try($$SELECT atomizer.schedule('s', '1 minute', 'boom', timeout => '100000000 years')$$);
SELECT * FROM try($$SELECT atomizer.purge(older_than => '178000000 years')$$);
SELECT * FROM try($$SELECT atomizer.purge(older_than => '-1 day')$$);
SELECT atomizer.purge(older_than => '1000 years');

-- external workers: leases and retry_in
SELECT atomizer.create_queue('ext', external => true);
SELECT atomizer.enqueue('task', queue => 'ext') AS ext_job \gset
SELECT * FROM try($$SELECT atomizer.claim('ext', lease => '178000000 years')$$);
SELECT * FROM try($$SELECT atomizer.claim('ext', lease => '7116800 mons -423:58:10.248384')$$);
SELECT * FROM try($$SELECT atomizer.claim('ext', lease => '0')$$);
-- (a lease counts months as 30 days, as intervals compare: 1000 years are
-- 360,000 days)
SELECT attempt, lease_until > now() + interval '985 years' AS lease_of_1000_years
  FROM atomizer.claim('ext', lease => '1000 years');
SELECT * FROM try(format('SELECT atomizer.heartbeat(%s, lease => %L)', :ext_job, '178000000 years'));
SELECT * FROM try(format('SELECT atomizer.fail(%s, %L, retry_in => %L)', :ext_job, 'no', '2000 years'));
SELECT * FROM try(format('SELECT atomizer.fail(%s, %L, retry_in => %L)', :ext_job, 'no', '-1 second'));
SELECT atomizer.fail(:ext_job, 'later', retry_in => '1000 years');
SELECT state, run_at > now() + interval '999 years' AS in_1000_years
  FROM atomizer.jobs WHERE id = :ext_job;


-- schedule intervals: up to 1000 years, then an error that names the limit
-- (0.1.0 accepted '300000 weeks' with next_run NULL: it never fired)
SELECT atomizer.schedule('long', '51000 weeks', 'boom') IS NOT NULL AS about_1000_years;
SELECT next_run > now() + interval '975 years' AS fires_in_977_years
  FROM atomizer.schedules WHERE name = 'long';
SELECT code, message FROM try($$SELECT atomizer.schedule('longer', '300000 weeks', 'boom')$$);
SELECT code, message FROM try($$SELECT atomizer.schedule('longer', '2147483647 weeks', 'boom')$$);
SELECT code, message FROM try($$SELECT atomizer.schedule('longer', '200000 weeks 200000 weeks', 'boom')$$);
SELECT atomizer.unschedule('long');
