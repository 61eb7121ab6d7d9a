-- Schedules with a clock the test controls: atomizer._tick(now) runs the
-- scheduler's firing pass as if the clock read "now".  Overlap and misfire
-- policies, restarts, clock jumps, broken handlers, ownership.
CREATE DATABASE atomizer_schedules;
\c atomizer_schedules
CREATE EXTENSION atomizer;
SET timezone = 'UTC';
\set SHOW_CONTEXT never

CREATE TABLE runs (tag text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION work(payload jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO runs (tag) VALUES (payload->>'tag')
$$;
-- anchor(name, t): make the schedule's next run the first fire time after t
CREATE FUNCTION anchor(sname text, t timestamptz) RETURNS timestamptz LANGUAGE sql AS $$
	UPDATE atomizer.schedule SET next_run = atomizer.cron_next(spec, t, tz)
	 WHERE name = sname RETURNING next_run
$$;
CREATE FUNCTION tick(t timestamptz) RETURNS integer LANGUAGE sql AS $$
	SELECT atomizer._tick(t)
$$;
CREATE VIEW state AS
	SELECT name, enabled, next_run, last_run, fires, skipped, last_outcome, last_error
	  FROM atomizer.schedules ORDER BY name;

-- a schedule is created or replaced by name; schedule() returns its id
SELECT atomizer.schedule('five', '*/5 * * * *', 'work', '{"tag": "five"}') AS five_id \gset
SELECT atomizer.schedule('five', '*/5 * * * *', 'work', '{"tag": "five"}') = :five_id AS same_id;
SELECT name, spec, tz, handler, payload, queue, owner = current_user AS mine, enabled,
       overlap, misfire, next_run > now() AS next_run_in_future
  FROM atomizer.schedules;
SELECT anchor('five', '2030-01-01 00:00');

-- fires at its time, once
SELECT tick('2030-01-01 00:04:59') AS fired;
SELECT tick('2030-01-01 00:05:00') AS fired;
SELECT tick('2030-01-01 00:05:00') AS fired_again;
SELECT tick('2030-01-01 00:05:30') AS fired;
SELECT * FROM state;
SELECT handler, payload, state, owner = current_user AS mine FROM atomizer.jobs;

-- overlap 'skip' (default): the 00:05 job still waits, so 00:10 is skipped
SELECT tick('2030-01-01 00:10:00') AS fired;
SELECT name, next_run, fires, skipped FROM state;
SELECT atomizer.run_pending();
SELECT tick('2030-01-01 00:15:00') AS fired;
SELECT name, next_run, last_run, fires, skipped, last_outcome FROM state;
SELECT atomizer.run_pending();
SELECT name, last_outcome FROM state;

-- overlap 'allow' fires anyway
SELECT atomizer.schedule('every_minute', '* * * * *', 'work', '{"tag": "allow"}',
                         overlap => 'allow') IS NOT NULL AS created;
SELECT anchor('every_minute', '2030-01-01 00:15:00');
SELECT tick('2030-01-01 00:16:00') AS fired;
SELECT tick('2030-01-01 00:17:00') AS fired;
SELECT count(*) AS waiting FROM atomizer.jobs
 WHERE payload->>'tag' = 'allow' AND state = 'available';
SELECT atomizer.unschedule('every_minute'), atomizer.unschedule('every_minute') AS again;
SELECT atomizer.run_pending();

-- (five rests until the enable/disable part below)
SELECT atomizer.disable_schedule('five');

-- downtime: misfire 'fire_once' fires once for the missed period, never N times;
-- misfire 'skip' does not fire for it; both go on from now
SELECT atomizer.schedule('catch_up', '*/10 * * * *', 'work', '{"tag": "catch_up"}') IS NOT NULL;
SELECT atomizer.schedule('no_catch_up', '*/10 * * * *', 'work', '{"tag": "no_catch_up"}',
                         misfire => 'skip') IS NOT NULL;
SELECT anchor('catch_up', '2030-01-01 00:15'), anchor('no_catch_up', '2030-01-01 00:15');
SELECT tick('2030-01-01 03:03:00') AS fired;
SELECT name, next_run, last_run, fires, skipped FROM state
 WHERE name IN ('catch_up', 'no_catch_up');
SELECT payload->>'tag' AS tag, count(*) FROM atomizer.jobs
 WHERE payload->>'tag' IN ('catch_up', 'no_catch_up') GROUP BY 1 ORDER BY 1;
SELECT atomizer.run_pending();

-- a restart is a new session: nothing fires twice, the schedule goes on
\c atomizer_schedules
SET timezone = 'UTC';
SELECT tick('2030-01-01 03:03:00') AS fired_after_restart;
SELECT tick('2030-01-01 03:10:00') AS fired;
SELECT atomizer.run_pending();

-- the clock steps back an hour: next runs come back, nothing stalls
SELECT name, next_run FROM state WHERE name = 'catch_up';
SELECT tick('2030-01-01 02:11:00') AS fired;
SELECT name, next_run FROM state WHERE name = 'catch_up';
SELECT tick('2030-01-01 02:20:00') AS fired;
SELECT atomizer.run_pending();
-- ... and steps forward again: fires once
SELECT tick('2030-01-01 05:00:00') AS fired;
SELECT atomizer.run_pending();
SELECT name, next_run, fires FROM state WHERE name = 'catch_up';

-- interval specs, and seconds
SELECT atomizer.schedule('half_minute', '30 seconds', 'work', '{"tag": "interval"}') IS NOT NULL;
SELECT anchor('half_minute', '2030-01-01 06:00:00');
SELECT tick('2030-01-01 06:00:30') AS fired;
SELECT name, next_run FROM state WHERE name = 'half_minute';
SELECT atomizer.unschedule('half_minute');
SELECT atomizer.unschedule('catch_up'), atomizer.unschedule('no_catch_up');
SELECT atomizer.run_pending();

-- time zones: a daily 09:00 in Berlin is 08:00 UTC in winter
SELECT atomizer.schedule('berlin', '0 9 * * *', 'work', '{"tag": "berlin"}',
                         tz => 'Europe/Berlin') IS NOT NULL;
SELECT anchor('berlin', '2030-01-01 00:00');
SELECT name, next_run FROM state WHERE name = 'berlin';
SELECT atomizer.unschedule('berlin');

-- disable / enable / run now
SELECT atomizer.enable_schedule('five');
SELECT atomizer.disable_schedule('five');
SELECT tick('2030-01-01 06:05:00') AS fired_while_disabled;
SELECT name, enabled, next_run FROM state WHERE name = 'five';
SELECT atomizer.enable_schedule('five');
SELECT name, enabled, next_run > now() AS next_run_in_future FROM state WHERE name = 'five';
SELECT atomizer.run_schedule('five') > 0 AS ran_now;
SELECT count(*) AS waiting FROM atomizer.jobs WHERE payload->>'tag' = 'five' AND state = 'available';
SELECT atomizer.run_pending();
SELECT atomizer.disable_schedule('nope'), atomizer.enable_schedule('nope'), atomizer.unschedule('nope');
SELECT atomizer.unschedule('five');

-- fired ahead: a pass with a lookahead fires what is due by now + lookahead;
-- the job waits, scheduled, until its fire time
CREATE FUNCTION fired(sid bigint) RETURNS TABLE (state text, run_at timestamptz,
                                                 tag text, last_error text)
LANGUAGE sql AS $$
	SELECT v.state, v.run_at, v.payload->>'tag', v.last_error FROM atomizer.jobs v
	 WHERE v.id IN (SELECT id FROM atomizer.job WHERE schedule_id = sid
	                UNION ALL SELECT id FROM atomizer.job_history WHERE schedule_id = sid)
	 ORDER BY v.id
$$;
SELECT atomizer.schedule('ahead', '* * * * *', 'work', '{"tag": "ahead"}') AS ahead_id \gset
SELECT anchor('ahead', '2030-01-01 08:00');
SELECT atomizer._tick('2030-01-01 08:00:57', '2 seconds') AS fired_too_early;
SELECT atomizer._tick('2030-01-01 08:00:58.5', '2 seconds') AS fired_ahead;
SELECT name, next_run, last_run, fires, skipped FROM state WHERE name = 'ahead';
SELECT state, run_at FROM fired(:ahead_id);
SELECT atomizer._tick('2030-01-01 08:01:00', '2 seconds') AS fired_again;
-- overlap 'skip' ahead of time: the previous run waits, so the fire is not
-- decided (neither fired nor skipped) until its fire time
SELECT atomizer._tick('2030-01-01 08:01:59', '2 seconds') AS fired_while_busy;
SELECT name, next_run, fires, skipped FROM state WHERE name = 'ahead';
SELECT atomizer._tick('2030-01-01 08:02:00', '2 seconds') AS fired_on_time;
SELECT name, next_run, fires, skipped FROM state WHERE name = 'ahead';
-- replacing, enabling, disabling or removing the schedule before the fire
-- time cancels the job fired ahead, and says why
SELECT atomizer.schedule('ahead', '* * * * *', 'work', '{"tag": "ahead, replaced"}') = :ahead_id;
SELECT state, run_at, last_error FROM fired(:ahead_id);
SELECT anchor('ahead', '2030-01-01 08:10');
SELECT atomizer._tick('2030-01-01 08:10:59', '2 seconds') AS fired_ahead;
SELECT tag, state FROM fired(:ahead_id) WHERE state = 'scheduled';
SELECT atomizer.enable_schedule('ahead');
SELECT anchor('ahead', '2030-01-01 08:20');
SELECT atomizer._tick('2030-01-01 08:20:59', '2 seconds') AS fired_ahead;
SELECT atomizer.disable_schedule('ahead');
SELECT atomizer.enable_schedule('ahead');
SELECT anchor('ahead', '2030-01-01 08:30');
SELECT atomizer._tick('2030-01-01 08:30:59', '2 seconds') AS fired_ahead;
SELECT atomizer.unschedule('ahead');
SELECT state, run_at, last_error FROM fired(:ahead_id);
-- the clock going back cancels it too, and the schedule fires at its time
SELECT atomizer.schedule('ahead_back', '* * * * *', 'work', '{"tag": "ahead_back"}') AS back_id \gset
SELECT anchor('ahead_back', '2030-01-01 09:00');
SELECT atomizer._tick('2030-01-01 09:00:59', '2 seconds') AS fired_ahead;
SELECT atomizer._tick('2030-01-01 08:00:30', '2 seconds') AS fired_after_clock_back;
SELECT name, next_run FROM state WHERE name = 'ahead_back';
SELECT state, run_at, last_error FROM fired(:back_id);
SELECT atomizer.unschedule('ahead_back');
-- a job fired ahead whose fire time has come has fired: it stays, and runs
SELECT atomizer.schedule('ahead_due', '* * * * *', 'work', '{"tag": "ahead_due"}') AS due_id \gset
UPDATE atomizer.schedule SET next_run = clock_timestamp() + interval '1.5 s'
 WHERE name = 'ahead_due';
SELECT atomizer._tick(clock_timestamp(), '2 seconds') AS fired_ahead;
SELECT state FROM fired(:due_id);
SELECT pg_sleep(1.7);
SELECT atomizer.unschedule('ahead_due');
SELECT atomizer.run_pending();
SELECT state, last_error FROM fired(:due_id);
-- a dropped handler disables only its own schedule, with the reason
CREATE FUNCTION doomed(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT atomizer.schedule('doomed', '* * * * *', 'doomed') IS NOT NULL;
SELECT atomizer.schedule('healthy', '* * * * *', 'work', '{"tag": "healthy"}') IS NOT NULL;
SELECT anchor('doomed', '2030-01-01 07:00'), anchor('healthy', '2030-01-01 07:00');
DROP FUNCTION doomed(jsonb);
SELECT tick('2030-01-01 07:01:00') AS fired;
SELECT name, enabled, next_run, last_error FROM state WHERE name IN ('doomed', 'healthy');
SELECT atomizer.unschedule('doomed'), atomizer.unschedule('healthy');
SELECT atomizer.run_pending();

-- bad input is an ERROR at schedule() time
CREATE FUNCTION try(sql text, OUT code text, OUT message text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;
-- a lookahead is 0 to 1 minute
SELECT * FROM try($$SELECT atomizer._tick('2030-01-01', '61 seconds')$$);
SELECT * FROM try($$SELECT atomizer._tick('2030-01-01', '-1 second')$$);
SELECT * FROM try($$SELECT atomizer._tick('2030-01-01', '1 day')$$);
SELECT * FROM try($$SELECT atomizer._tick('2030-01-01', NULL)$$);
-- a name has 1 to 200 characters (not bytes)
SELECT atomizer.schedule(repeat('é', 200), '0 0 1 1 *', 'work') IS NOT NULL AS two_hundred_characters;
SELECT code, left(message, 25) AS message FROM try($$SELECT atomizer.schedule(repeat('é', 201), '0 0 1 1 *', 'work')$$);
SELECT atomizer.unschedule(repeat('é', 200));
SELECT * FROM try($$SELECT atomizer.schedule('x', '61 * * * *', 'work')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * *', 'work')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'work', tz => 'Mars/Olympus')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'missing')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'work', queue => 'nope')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'work', overlap => 'queue')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'work', misfire => 'all')$$);
SELECT * FROM try($$SELECT atomizer.schedule('', '* * * * *', 'work')$$);
SELECT * FROM try($$SELECT atomizer.schedule(NULL, '* * * * *', 'work')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', NULL, 'work')$$);
SELECT * FROM try($$SELECT atomizer.schedule('x', '* * * * *', 'work', payload => '3')$$);
SELECT * FROM try($$SELECT atomizer.run_schedule('nope')$$);
SELECT count(*) AS nothing_written FROM atomizer.schedule WHERE name = 'x';

-- schedules belong to the role that made them; their jobs run as it
CREATE ROLE regress_cron_alice;
CREATE ROLE regress_cron_bob;
GRANT USAGE ON SCHEMA public TO regress_cron_alice, regress_cron_bob;
GRANT INSERT ON runs TO regress_cron_alice;
SET ROLE regress_cron_alice;
SELECT atomizer.schedule('alices', '* * * * *', 'work', '{"tag": "alice"}') IS NOT NULL;
RESET ROLE;
SET ROLE regress_cron_bob;
SELECT count(*) AS bob_sees FROM atomizer.schedules;
-- names belong to roles: bob's "alices" is his own, alice's is untouched
SELECT atomizer.schedule('alices', '0 0 1 1 *', 'work', '{"tag": "bob"}') IS NOT NULL AS bob_has_his_own;
SELECT name, owner, payload FROM atomizer.schedules;
SELECT atomizer.unschedule('alices') AS bob_unschedules_his;
SELECT atomizer.unschedule('alices') AS but_not_alices;
RESET ROLE;
SELECT anchor('alices', '2030-01-01 08:00');
SELECT tick('2030-01-01 08:01:00') AS fired;
SELECT handler, owner FROM atomizer.jobs WHERE payload->>'tag' = 'alice';
SELECT atomizer.run_pending();
SELECT state FROM atomizer.jobs WHERE payload->>'tag' = 'alice';
-- an admin acts on the only schedule of a name, and must say whose when
-- several roles have one
SELECT atomizer.disable_schedule('alices') AS admin_disables_alices;
SET ROLE regress_cron_bob;
SELECT atomizer.schedule('alices', '0 0 1 1 *', 'work', '{"tag": "bob"}') IS NOT NULL AS bob_again;
RESET ROLE;
SELECT * FROM try($$SELECT atomizer.run_schedule('alices')$$);
SELECT owner, enabled FROM atomizer.schedules WHERE name = 'alices' ORDER BY owner;
SET ROLE regress_cron_alice;
SELECT atomizer.unschedule('alices');
RESET ROLE;
SELECT atomizer.unschedule('alices') AS admin_removes_bobs;
SELECT count(*) AS left_over FROM atomizer.schedules WHERE name = 'alices';
DROP OWNED BY regress_cron_alice, regress_cron_bob;
DROP ROLE regress_cron_alice, regress_cron_bob;

SELECT tag, count(*) FROM runs GROUP BY tag ORDER BY tag;
