-- Control over a job from its handler and from an external worker:
-- current_job(), snooze(), discard(), snooze(job_id, ...), fail(retry => false).
CREATE DATABASE atomizer_control;
\c atomizer_control
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
CREATE FUNCTION try(sql text, OUT code text, OUT message text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;
CREATE TABLE seen (id bigint, queue text, handler text, attempt int, max_attempts int,
				   owner text, created_ok boolean, run_at_ok boolean, schedule text);
CREATE TABLE writes (note text);

-- current_job(): the running job, as its handler sees it
CREATE FUNCTION look(p jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO seen
	SELECT id, queue, handler, attempt, max_attempts, owner,
		   created_at <= now(), run_at <= now(), schedule
	  FROM atomizer.current_job()
$$;
SELECT atomizer.enqueue('look', max_attempts => 3) AS look_id \gset
SELECT atomizer.run_pending();
SELECT id = :look_id AS its_own_id, queue, handler, attempt, max_attempts,
	   owner = current_user AS owner_ok, created_ok, run_at_ok, schedule
  FROM seen;
-- a fired schedule's job knows its schedule
SELECT atomizer.schedule('nightly', '0 3 * * *', 'look') IS NOT NULL AS scheduled;
SELECT atomizer.run_schedule('nightly') IS NOT NULL AS fired;
SELECT atomizer.run_pending();
SELECT schedule FROM seen WHERE schedule IS NOT NULL;
SELECT atomizer.unschedule('nightly');
-- outside a handler
SELECT * FROM try($$SELECT * FROM atomizer.current_job()$$);
SELECT * FROM try($$SELECT atomizer.snooze('1 minute')$$);
SELECT * FROM try($$SELECT atomizer.discard('no')$$);

-- snooze(): again later, the attempt not counted, the handler's writes gone
CREATE FUNCTION sleepy(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO writes VALUES ('before snooze');
	PERFORM atomizer.snooze((p->>'delay')::interval);
	INSERT INTO writes VALUES ('after snooze');
END $$;
SELECT atomizer.enqueue('sleepy', '{"delay": "1 hour"}', max_attempts => 1) AS sleepy_id \gset
SELECT atomizer.run_pending() AS ran;
SELECT state, attempt, run_at > now() + interval '59 minutes' AS in_an_hour, last_error
  FROM atomizer.jobs WHERE id = :sleepy_id;
SELECT count(*) AS errors FROM atomizer.job_errors WHERE job_id = :sleepy_id;
SELECT count(*) AS writes_kept FROM writes;
-- snoozed for no time, it is not run again by the same run_pending()
SELECT atomizer.enqueue('sleepy', '{"delay": "0"}') AS again_id \gset
SELECT atomizer.run_pending() AS ran_once;
SELECT state, attempt FROM atomizer.jobs WHERE id = :again_id;
SELECT atomizer.cancel(:again_id);
-- a handler that catches the snooze is snoozed all the same (and keeps its writes)
CREATE FUNCTION sly(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		PERFORM atomizer.snooze('1 hour');
	EXCEPTION WHEN OTHERS THEN
		INSERT INTO writes VALUES ('caught ' || SQLSTATE);
	END;
END $$;
SELECT atomizer.enqueue('sly') AS sly_id \gset
SELECT atomizer.run_pending();
SELECT state, attempt FROM atomizer.jobs WHERE id = :sly_id;
SELECT note FROM writes;
-- bad delays
CREATE FUNCTION bad_snooze(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM atomizer.snooze((p->>'delay')::interval); END $$;
SELECT atomizer.enqueue('bad_snooze', jsonb_build_object('delay', d), max_attempts => 1)
  FROM unnest(ARRAY['-1 second', '2000 years']) d;
SELECT atomizer.enqueue('bad_snooze', '{}', max_attempts => 1);
SELECT atomizer.run_pending();
SELECT state, last_error FROM atomizer.jobs WHERE handler = 'public.bad_snooze' ORDER BY id;

-- discard(): dead now, whatever attempts are left
CREATE FUNCTION hopeless(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM atomizer.discard('the account is closed'); END $$;
SELECT atomizer.enqueue('hopeless', max_attempts => 5) AS hopeless_id \gset
SELECT atomizer.run_pending();
SELECT state, attempt, last_error FROM atomizer.jobs WHERE id = :hopeless_id;
SELECT attempt, sqlstate, message FROM atomizer.job_errors WHERE job_id = :hopeless_id;

-- external workers: snooze(job_id, delay, attempt) and fail(..., retry => false)
SELECT atomizer.create_queue('ext', external => true, max_attempts => 5);
SELECT atomizer.enqueue('task', queue => 'ext') AS ext_id \gset
SELECT attempt FROM atomizer.claim('ext');
SELECT atomizer.snooze(:ext_id, '1 hour', attempt => 1) > now() + interval '59 minutes' AS due_in_an_hour;
SELECT state, attempt FROM atomizer.jobs WHERE id = :ext_id;
SELECT * FROM try(format('SELECT atomizer.snooze(%s, %L)', :ext_id, '1 minute'));
SELECT * FROM try(format('SELECT atomizer.snooze(%s, NULL)', :ext_id));
SELECT atomizer.enqueue('task', queue => 'ext') AS ext2_id \gset
SELECT attempt FROM atomizer.claim('ext');
SELECT atomizer.fail(:ext2_id, 'the file is corrupt', retry => false);
SELECT state, attempt, last_error FROM atomizer.jobs WHERE id = :ext2_id;

\c contrib_regression
DROP DATABASE atomizer_control;
