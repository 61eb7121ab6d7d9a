-- The job API end to end in one session: enqueue, enqueue_many, run_pending,
-- success, failure, retry with backoff, dead letters, results, error history,
-- priorities, delayed jobs, idempotency keys, cancel, retry, purge.
-- each suite gets a database of its own
CREATE DATABASE atomizer_api;
\c atomizer_api
CREATE EXTENSION atomizer;
SET client_min_messages = warning;

-- Jobs are made due "now" by moving their run_at back: the tests drive time.
CREATE FUNCTION make_due() RETURNS void LANGUAGE sql AS $$
	UPDATE atomizer.job SET run_at = now() - interval '1 second'
	 WHERE state = 'available'
$$;

CREATE TABLE effects (job text, n int);
CREATE FUNCTION greet(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('greeting', 'hello ' || (payload->>'name'))
$$;
CREATE FUNCTION record_effect(payload jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO effects VALUES ('effect', (payload->>'n')::int)
$$;
CREATE FUNCTION always_fails(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO effects VALUES ('always_fails', 0);  -- rolled back with the attempt
	RAISE EXCEPTION 'smtp server % refused', payload->>'host'
		USING ERRCODE = 'AT001', DETAIL = 'connection reset', HINT = 'check the relay';
END
$$;
CREATE TABLE flaky_calls (n int);
CREATE SEQUENCE flaky_seq;  -- not rolled back: counts every call
CREATE FUNCTION flaky(payload jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO flaky_calls VALUES (1);
	IF nextval('flaky_seq') < 2 THEN
		-- the INSERT above is rolled back with this attempt
		RAISE EXCEPTION 'first attempt fails';
	END IF;
	RETURN 'not stored: only jsonb results are';
END
$$;
CREATE FUNCTION json_result(payload jsonb) RETURNS json LANGUAGE sql AS $$
	SELECT '{"kind": "json"}'::json
$$;

-- enqueue returns ids; named notation works
SELECT atomizer.enqueue('greet', '{"name": "Ada"}') AS first_id \gset
SELECT atomizer.enqueue(handler => 'public.greet', payload => '{"name": "Grace"}',
                        queue => 'default', priority => 0) = :first_id + 1 AS next_id;
SELECT handler, state, attempt, max_attempts, owner = current_user AS mine
  FROM atomizer.jobs ORDER BY id;

-- run them
SELECT atomizer.run_pending();
SELECT id - :first_id AS n, state, attempt, result, finished_at IS NOT NULL AS finished
  FROM atomizer.jobs ORDER BY id;
SELECT atomizer.run_pending() AS nothing_left;

-- enqueue_many: one statement, ids in payload order
SELECT array_agg(id ORDER BY ord) = array_agg(id ORDER BY id) AS in_order,
       count(*) AS n
  FROM atomizer.enqueue_many('record_effect',
         (SELECT array_agg(jsonb_build_object('n', i) ORDER BY i)
            FROM generate_series(1, 1000) i)) WITH ORDINALITY AS t(id, ord);
SELECT atomizer.run_pending(max_jobs => 10);
SELECT count(*) FROM effects;
SELECT atomizer.run_pending('default');
SELECT count(*), sum(n) FROM effects WHERE job = 'effect';
SELECT count(*) FROM atomizer.enqueue_many('record_effect', '{}');

-- failure, retry with backoff, dead after max_attempts; the failed attempt's
-- writes are rolled back, the error is recorded on every attempt
SELECT atomizer.create_queue('mail', max_attempts => 3, backoff_base => '10 seconds',
                             backoff_cap => '15 seconds', backoff_jitter => 0);
SELECT atomizer.enqueue('always_fails', '{"host": "mx1"}', queue => 'mail') AS bad_id \gset
SELECT atomizer.run_pending('mail');
-- backoff = least(cap, base * 2^(attempt-1)) with no jitter: 10 s, then 15 s
SELECT state, attempt, last_error,
       date_trunc('second', run_at - (SELECT max(failed_at) FROM atomizer.job_errors
                                      WHERE job_id = :bad_id)) AS backoff
  FROM atomizer.jobs WHERE id = :bad_id;
SELECT atomizer.run_pending('mail') AS not_due_yet;
SELECT make_due();
SELECT atomizer.run_pending('mail');
SELECT state, attempt,
       date_trunc('second', run_at - (SELECT max(failed_at) FROM atomizer.job_errors
                                      WHERE job_id = :bad_id)) AS backoff
  FROM atomizer.jobs WHERE id = :bad_id;
SELECT make_due();
SELECT atomizer.run_pending('mail');
SELECT state, attempt, max_attempts, last_error, finished_at IS NOT NULL AS finished
  FROM atomizer.jobs WHERE id = :bad_id;
SELECT attempt, sqlstate, message, detail, hint, context IS NOT NULL AS has_context
  FROM atomizer.job_errors WHERE job_id = :bad_id ORDER BY attempt;
SELECT count(*) AS rolled_back FROM effects WHERE job = 'always_fails';
SELECT id = :bad_id AS is_bad, queue, handler, attempt, last_error FROM atomizer.dead_jobs;
SELECT queue, scheduled, available, running, retrying, succeeded, cancelled, dead
  FROM atomizer.queue_stats ORDER BY queue;

-- a dead job sent back runs again from attempt 0
SELECT atomizer.retry(:bad_id);
SELECT atomizer.retry(:bad_id) AS not_dead_any_more;
SELECT state, attempt FROM atomizer.jobs WHERE id = :bad_id;
SELECT atomizer.cancel(:bad_id);
SELECT state FROM atomizer.jobs WHERE id = :bad_id;

-- flaky: fails once, then succeeds; only the successful attempt's write stays
SELECT atomizer.enqueue('flaky', '{}', max_attempts => 2) AS flaky_id \gset
SELECT atomizer.run_pending('default');
SELECT make_due();
SELECT atomizer.run_pending('default');
SELECT state, attempt, result, last_error FROM atomizer.jobs WHERE id = :flaky_id;
SELECT count(*) AS flaky_rows FROM flaky_calls;

-- a json result is stored as jsonb
SELECT atomizer.enqueue('json_result') AS json_id \gset
SELECT atomizer.run_pending('default');
SELECT result FROM atomizer.jobs WHERE id = :json_id;

-- priorities (lower first), then run_at, then id; delayed jobs wait
TRUNCATE effects;
SELECT count(atomizer.enqueue('record_effect', jsonb_build_object('n', p), priority => p))
  FROM unnest(ARRAY[5, -3, 0, 10, -3]) p;
SELECT atomizer.enqueue('record_effect', '{"n": 99}', priority => -100,
                        run_at => now() + interval '1 hour') AS later_id \gset
SELECT state FROM atomizer.jobs WHERE id = :later_id;
SELECT atomizer.run_pending('default', 1);
SELECT n FROM effects;
SELECT atomizer.run_pending('default');
SELECT array_agg(n) FROM effects;
SELECT state FROM atomizer.jobs WHERE id = :later_id;
SELECT atomizer.cancel(:later_id), atomizer.cancel(:later_id) AS again;
SELECT state FROM atomizer.jobs WHERE id = :later_id;

-- idempotency keys: one unfinished job per key and queue
SELECT atomizer.enqueue('greet', '{"name": "once"}', idempotency_key => 'order-42') AS k1 \gset
SELECT atomizer.enqueue('greet', '{"name": "twice"}', idempotency_key => 'order-42') = :k1 AS same_job;
SELECT count(*) FROM atomizer.jobs WHERE idempotency_key = 'order-42';
-- the caller is told that no job was made, and whether the payloads differ
SET client_min_messages = notice;
SELECT atomizer.enqueue('greet', '{"name": "twice"}', idempotency_key => 'order-42') = :k1 AS same_job_told;
SELECT atomizer.enqueue('greet', '{"name": "once"}', idempotency_key => 'order-42') = :k1 AS same_payload_same_job;
-- enqueue_many takes keys too: one per payload, NULL for none; a repeated
-- key (in the call, or of an unfinished job) gives that job's id
SELECT array_agg(id ORDER BY ord) AS many_ids FROM atomizer.enqueue_many('greet',
	ARRAY['{"many": 1}', '{"many": 2}', '{"many": 3}', '{"many": 4}']::jsonb[],
	idempotency_keys => ARRAY['m-1', NULL, 'order-42', 'm-1']) WITH ORDINALITY AS t(id, ord) \gset
SELECT :'many_ids'::bigint[] AS ids \gset
SELECT (:'ids'::bigint[])[3] = :k1 AS third_is_the_existing_job,
	   (:'ids'::bigint[])[4] = (:'ids'::bigint[])[1] AS fourth_repeats_the_first,
	   (:'ids'::bigint[])[1] < (:'ids'::bigint[])[2] AS new_ids_ascend;
SET client_min_messages = warning;
SELECT count(*) AS new_jobs FROM atomizer.jobs WHERE payload ? 'many';
SELECT idempotency_key, payload FROM atomizer.jobs WHERE payload ? 'many' ORDER BY id;
SELECT * FROM atomizer.enqueue_many('greet', ARRAY['{}']::jsonb[], idempotency_keys => ARRAY['a', 'b']);
SELECT * FROM atomizer.enqueue_many('greet', ARRAY['{}']::jsonb[], idempotency_keys => ARRAY['']);
SELECT count(*) AS without_keys FROM atomizer.enqueue_many('greet', ARRAY['{"many": 0}', '{"many": 0}']::jsonb[], idempotency_keys => ARRAY[NULL, NULL]::text[]);
SELECT atomizer.cancel(id) FROM atomizer.jobs WHERE payload ? 'many' AND state = 'available';
-- tags: shown in the views, usable in filters
SELECT atomizer.create_queue('tagged');
SELECT atomizer.enqueue('greet', '{"name": "tagged"}', queue => 'tagged',
						tags => ARRAY['billing', 'eu']) AS t1 \gset
SELECT count(*) AS tagged_many FROM atomizer.enqueue_many('greet',
	ARRAY['{"name": "t2"}', '{"name": "t3"}']::jsonb[], queue => 'tagged', tags => ARRAY['billing']);
SELECT payload->>'name' AS name, tags FROM atomizer.jobs WHERE tags @> ARRAY['billing'] ORDER BY id;
SELECT atomizer.run_pending('tagged');
SELECT payload->>'name' AS name, state, tags FROM atomizer.jobs WHERE tags && ARRAY['eu'];
SELECT atomizer.enqueue('greet', queue => 'tagged', tags => ARRAY['ok', NULL]);
SELECT atomizer.enqueue('greet', queue => 'tagged', tags => ARRAY['']);
SELECT atomizer.enqueue('greet', queue => 'tagged', tags => ARRAY[]::text[]) IS NOT NULL AS no_tags_is_fine;
SELECT atomizer.run_pending('tagged') AS ran_untagged;
SELECT atomizer.purge(queue => 'tagged') AS purged;
SELECT atomizer.create_queue('other');
SELECT atomizer.enqueue('greet', '{}', queue => 'other', idempotency_key => 'order-42') <> :k1 AS other_queue_other_job;
SELECT atomizer.run_pending('default');
-- once finished, the key is free again
SELECT atomizer.enqueue('greet', '{"name": "later"}', idempotency_key => 'order-42') <> :k1 AS new_job;
SELECT count(*) FILTER (WHERE finished_at IS NULL) AS unfinished, count(*) AS all_jobs
  FROM atomizer.jobs WHERE idempotency_key = 'order-42' AND queue = 'default';
-- unique_for: one job per key per window, finished or not
SELECT atomizer.create_queue('uniq');
SELECT atomizer.enqueue('greet', '{"name": "daily"}', idempotency_key => 'daily',
						queue => 'uniq', unique_for => '1 hour') AS u1 \gset
SELECT atomizer.run_pending('uniq') > 0 AS ran;
SELECT state FROM atomizer.jobs WHERE id = :u1;
SELECT atomizer.enqueue('greet', '{"name": "daily"}', idempotency_key => 'daily',
						queue => 'uniq', unique_for => '1 hour') = :u1 AS same_window_same_job;
SELECT count(*) AS daily_jobs FROM atomizer.jobs WHERE idempotency_key = 'daily';
-- a window that has passed makes a new job
SELECT atomizer.enqueue('greet', '{}', idempotency_key => 'brief', queue => 'uniq', unique_for => '200 milliseconds') AS b1 \gset
SELECT atomizer.run_pending('uniq') > 0 AS ran_brief;
SELECT pg_sleep(0.3);
SELECT atomizer.enqueue('greet', '{}', idempotency_key => 'brief', queue => 'uniq', unique_for => '200 milliseconds') <> :b1 AS new_window_new_job;
-- a rolled-back enqueue takes no window
BEGIN;
SELECT atomizer.enqueue('greet', '{}', idempotency_key => 'undone', unique_for => '1 hour') IS NOT NULL;
ROLLBACK;
SELECT count(*) AS windows FROM atomizer.job_unique WHERE key = 'undone';
SELECT atomizer.enqueue('greet', unique_for => '1 hour');
SELECT atomizer.enqueue('greet', idempotency_key => 'x', unique_for => '0');
SELECT atomizer.enqueue('greet', idempotency_key => 'x', unique_for => '2000 years');
SELECT atomizer.cancel(id) FROM atomizer.jobs WHERE idempotency_key = 'brief' AND state = 'available';

-- per-job timeout, and the queue's
CREATE FUNCTION sleepy(payload jsonb) RETURNS void LANGUAGE sql AS $$
	SELECT pg_sleep((payload->>'s')::float8)
$$;
SELECT atomizer.enqueue('sleepy', '{"s": 5}', timeout => '50 milliseconds') AS slow_id \gset
SELECT atomizer.run_pending('default');
SELECT state, attempt, last_error FROM atomizer.jobs WHERE id = :slow_id;
SELECT sqlstate, message FROM atomizer.job_errors WHERE job_id = :slow_id;
SELECT atomizer.cancel(:slow_id);
SELECT atomizer.create_queue('tight', timeout => '50 milliseconds');
SELECT atomizer.enqueue('sleepy', '{"s": 5}', queue => 'tight') AS slow2_id \gset
SELECT atomizer.enqueue('sleepy', '{"s": 0}', queue => 'tight') AS quick_id \gset
SELECT atomizer.run_pending('tight');
SELECT id = :slow2_id AS slow, state, last_error FROM atomizer.jobs
 WHERE queue = 'tight' ORDER BY id;
SELECT atomizer.cancel(:slow2_id);

-- a handler dropped after enqueue fails its job with a clear error
CREATE FUNCTION doomed(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT atomizer.enqueue('doomed', max_attempts => 1) AS doomed_id \gset
DROP FUNCTION doomed(jsonb);
SELECT atomizer.run_pending('default');
SELECT state, last_error FROM atomizer.jobs WHERE id = :doomed_id;
SELECT sqlstate FROM atomizer.job_errors WHERE job_id = :doomed_id;

-- run_pending cannot be nested inside a handler
CREATE FUNCTION nested(payload jsonb) RETURNS void LANGUAGE sql AS $$
	SELECT atomizer.run_pending()
$$;
SELECT atomizer.enqueue('nested', max_attempts => 1) AS nested_id \gset
SELECT atomizer.run_pending('default');
SELECT state, last_error FROM atomizer.jobs WHERE id = :nested_id;

-- the caller's transaction decides: roll back, and the job never existed
BEGIN;
SELECT atomizer.enqueue('greet', '{}', idempotency_key => 'rolled-back') IS NOT NULL;
ROLLBACK;
SELECT count(*) FROM atomizer.jobs WHERE idempotency_key = 'rolled-back';

-- ... and run_pending's effects and completions commit or roll back together
SELECT atomizer.enqueue('record_effect', '{"n": 7}') AS rb_id \gset
TRUNCATE effects;
BEGIN;
SELECT atomizer.run_pending('default');
SELECT count(*) FROM effects;
ROLLBACK;
SELECT state, attempt FROM atomizer.jobs WHERE id = :rb_id;
SELECT count(*) FROM effects;
SELECT atomizer.run_pending('default');
SELECT state, attempt FROM atomizer.jobs WHERE id = :rb_id;
SELECT count(*) FROM effects;

-- purge: finished jobs and their error history
SELECT atomizer.purge(older_than => '1 hour') AS nothing_that_old;
SELECT atomizer.purge(queue => 'mail') AS mail_purged;
SELECT count(*) FROM atomizer.job_errors WHERE queue = 'mail';
SELECT atomizer.purge() > 1000 AS purged_all;
SELECT state, count(*) FROM atomizer.jobs GROUP BY state ORDER BY state;
