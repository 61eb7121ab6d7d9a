-- The external workers' protocol in one session: claim, heartbeat,
-- complete, complete_many, fail, release; lost leases are errors; only
-- members of atomizer_worker may act; only external queues are claimed.
CREATE DATABASE atomizer_external;
\c atomizer_external
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
-- try(sql): run a statement that must fail; its SQLSTATE and message (times masked)
CREATE FUNCTION try(sql text, OUT code text, OUT message text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
	message := regexp_replace(message, '\d{4}-\d\d-\d\d [0-9:.+-]+', '<time>');
END
$$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;
SELECT atomizer.create_queue('images', external => true, max_attempts => 2,
                             backoff_base => '1 hour', backoff_jitter => 0);
CREATE ROLE regress_image_worker IN ROLE atomizer_worker;
CREATE ROLE regress_stranger;
SELECT count(atomizer.enqueue('resize', jsonb_build_object('n', i), queue => 'images',
                              priority => 10 - i))
  FROM generate_series(1, 6) i;
SELECT atomizer.enqueue('later', '{}', queue => 'images',
                        run_at => now() + interval '1 hour') AS later_id \gset

-- only members of atomizer_worker (or admins) act as external workers
SET ROLE regress_stranger;
SELECT * FROM try($$SELECT * FROM atomizer.claim('images')$$);
-- saying which role to ask for
SELECT * FROM atomizer.complete(1);
RESET ROLE;
SET ROLE regress_image_worker;
SELECT count(*) AS sees_no_jobs FROM atomizer.jobs;
-- but it sees every role's counts in the external queues, to scale on
-- queue depth (the internal queue's counts stay its own: none)
SELECT queue, scheduled, available, running, oldest_available IS NOT NULL AS has_oldest
  FROM atomizer.queue_stats ORDER BY queue;

-- claims come in priority order, attempt counted, leased; delayed jobs wait
SELECT id, handler, payload, attempt, lease_until > now() AS leased
  FROM atomizer.claim('images', max_jobs => 2, lease => '1 minute', worker => 'w1')
 ORDER BY id;
SELECT id, attempt FROM atomizer.claim('images', 10, '1 minute', 'w2') ORDER BY id;
SELECT count(*) AS nothing_left FROM atomizer.claim('images', 10);
SELECT queue, scheduled, available, running FROM atomizer.queue_stats
 WHERE queue = 'images';
RESET ROLE;
-- a role that is not a worker sees only its own jobs' counts
SET ROLE regress_stranger;
SELECT queue, scheduled, available, running FROM atomizer.queue_stats
 WHERE queue = 'images';
SELECT count(*) AS no_counts_for_strangers FROM atomizer._worker_queue_counts();
RESET ROLE;
SELECT id, state, attempt, worker FROM atomizer.jobs ORDER BY id;
SET ROLE regress_image_worker;

-- heartbeat extends; complete records the result; a second complete is refused
SELECT atomizer.heartbeat(6, '10 minutes', attempt => 1) > now() + interval '9 minutes' AS extended;
SELECT atomizer.complete(6, '{"bytes": 100}', attempt => 1);
SELECT * FROM try($$SELECT atomizer.complete(6, '{"bytes": 100}', attempt => 1)$$);
SELECT * FROM try($$SELECT atomizer.heartbeat(6, attempt => 1)$$);
-- the wrong attempt is refused
SELECT * FROM try($$SELECT atomizer.complete(5, NULL, attempt => 7)$$);
-- complete_many: all or none
SELECT * FROM try($$SELECT atomizer.complete_many(ARRAY[4, 3, 6])$$);
SELECT atomizer.complete_many(ARRAY[4, 3]);
-- fail: retried after the queue's backoff, or retry_in; dead after max_attempts
SELECT atomizer.fail(2, 'upstream returned 503', attempt => 1);
SELECT atomizer.fail(1, 'try again soon', retry_in => '0', attempt => 1);
-- release: back, attempt not counted
SELECT atomizer.release(5, attempt => 1);
RESET ROLE;
SELECT id, state, attempt, result, last_error, run_at <= now() AS due
  FROM atomizer.jobs ORDER BY id;
SELECT job_id, attempt, sqlstate, message FROM atomizer.job_errors ORDER BY job_id, attempt;

-- the second failure of a job with max_attempts 2 is its last
SET ROLE regress_image_worker;
SELECT id, attempt FROM atomizer.claim('images', 10) ORDER BY id;
SELECT atomizer.fail(1, 'still broken', attempt => 2);
SELECT atomizer.complete(5, NULL, attempt => 1);
RESET ROLE;
SELECT id, state, attempt, last_error FROM atomizer.jobs WHERE id IN (1, 5) ORDER BY id;

-- a lease that passes is lost: the late report is refused
SET ROLE regress_image_worker;
SELECT atomizer.retry(1);
RESET ROLE;
SELECT atomizer.retry(1);
SET ROLE regress_image_worker;
SELECT id, attempt FROM atomizer.claim('images', 1, lease => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT * FROM try($$SELECT atomizer.complete(1, attempt => 1)$$);
SELECT * FROM try($$SELECT atomizer.heartbeat(1, attempt => 1)$$);

-- bad input
SELECT * FROM try($$SELECT * FROM atomizer.claim(NULL)$$);
SELECT * FROM try($$SELECT * FROM atomizer.claim('images', 0)$$);
SELECT * FROM try($$SELECT * FROM atomizer.claim('images', 1, '-1 second')$$);
SELECT * FROM try($$SELECT * FROM atomizer.claim('images', 1, '1 minute', 'atomizer:1:2')$$);
SELECT * FROM try($$SELECT * FROM atomizer.claim('default')$$);
SELECT * FROM try($$SELECT * FROM atomizer.claim('nope')$$);
SELECT * FROM try($$SELECT atomizer.complete(NULL)$$);
SELECT * FROM try($$SELECT atomizer.complete(999999)$$);
SELECT * FROM try($$SELECT atomizer.fail(1, 'x', retry_in => '-1 minute')$$);
SELECT * FROM try($$SELECT atomizer.complete_many(ARRAY[NULL]::bigint[])$$);
RESET ROLE;

-- jobs of internal queues are not the external workers' to report
CREATE FUNCTION noop(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT atomizer.enqueue('noop') AS internal_id \gset
SELECT * FROM try(format('SELECT atomizer.complete(%s)', :internal_id));

-- claims start at the queue's claim floor (floor.c), which no waiting job
-- may be left below: each claim here follows one that raised it
SELECT atomizer.create_queue('floors', external => true);
SELECT count(atomizer.enqueue('f', jsonb_build_object('n', i), queue => 'floors'))
  FROM generate_series(1, 4) i;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 2) ORDER BY id;
-- enqueued with a run_at a day ago: below the floor, claimed first
SELECT atomizer.enqueue('f', '{"n": "old"}', queue => 'floors',
						run_at => now() - interval '1 day') AS old_id \gset
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
-- a claim rolled back: its jobs wait again, below the floor others raised
BEGIN;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
ROLLBACK;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
-- a claim in a savepoint rolled back, the transaction committed
BEGIN;
SAVEPOINT s;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
-- a delayed job of an urgent priority, passed by a claim of later ones
SELECT atomizer.enqueue('f', '{"n": "urgent"}', queue => 'floors', priority => -5,
						run_at => clock_timestamp() + interval '1 second') AS urgent_id \gset
SELECT count(atomizer.enqueue('f', jsonb_build_object('n', 'p5-' || i), queue => 'floors',
								priority => 5))
  FROM generate_series(1, 3) i;
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 2) ORDER BY id;
SELECT pg_sleep(1.2);
-- the urgent job first, not p5-3 above the floor the last claim left
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
SELECT payload->>'n' AS n FROM atomizer.claim('floors', 1);
-- a failed attempt comes back (retry_in 0): claimed again
SELECT atomizer.fail(:urgent_id, 'try again', retry_in => '0 seconds');
SELECT payload->>'n' AS n, attempt FROM atomizer.claim('floors', 10);

DROP ROLE regress_image_worker, regress_stranger;
