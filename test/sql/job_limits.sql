-- Rate limits and handler concurrency limits: the settings and their
-- errors; claims that take no more than a limit leaves, hold back or put
-- off the rest, and take the jobs of other handlers and partitions behind
-- them (no head-of-line blocking).  External claims here; live workers in
-- test/t/028_limits.pl, racing claimers in specs/claim_limits.spec.
CREATE DATABASE atomizer_job_limits;
\c atomizer_job_limits
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
CREATE FUNCTION try(sql text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
							hint = PG_EXCEPTION_HINT;
END
$$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;

-- settings and their errors
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_limit => 10)$$);
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_limit => -1, rate_period => '1 second')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_period => '1 second')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_limit => 5, rate_period => '0')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_limit => 5, rate_period => '1001 years')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('r', rate_limit => 5, rate_period => '1 s', rate_partition => repeat('x', 64))$$);
-- nothing half-made: the failed create_queue() made no queue
SELECT count(*) AS no_queue_r FROM atomizer.queue WHERE name = 'r';
SELECT atomizer.create_queue('r', external => true, rate_limit => 3, rate_period => '1 hour');
SELECT rate_limit, rate_period, rate_partition FROM atomizer.queue WHERE name = 'r';
SELECT * FROM try($$SELECT atomizer.alter_queue('r', rate_limit => 0, rate_period => '1 s')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('default', rate_partition => 'customer')$$);
SELECT atomizer.alter_queue('r', rate_limit => 4);
SELECT rate_limit, rate_period FROM atomizer.queue WHERE name = 'r';
SELECT atomizer.alter_queue('r', rate_limit => 0);
SELECT rate_limit, rate_period FROM atomizer.queue WHERE name = 'r';
SELECT atomizer.alter_queue('r', rate_limit => 3, rate_period => '1 hour');

SELECT * FROM try($$SELECT atomizer.limit_handler('nowhere', 'send', 2)$$);
SELECT * FROM try($$SELECT atomizer.limit_handler('default', 'no_such_function', 2)$$);
SELECT * FROM try($$SELECT atomizer.limit_handler('default', 'pg_catalog.jsonb_typeof', 0)$$);
SELECT * FROM try($$SELECT atomizer.limit_handler('default', NULL, 2)$$);
CREATE ROLE regress_limit_user;
SET ROLE regress_limit_user;
SELECT * FROM try($$SELECT atomizer.limit_handler('default', 'pg_catalog.jsonb_typeof', 2)$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('r', rate_limit => 100)$$);
RESET ROLE;
-- an internal queue's handler is stored as its jobs store it
CREATE FUNCTION send_mail(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT atomizer.limit_handler('default', 'send_mail', 2);
SELECT queue, handler, concurrency FROM atomizer.handler_limit;
SELECT atomizer.limit_handler('default', 'send_mail', NULL);
SELECT count(*) AS removed FROM atomizer.handler_limit;

-- a handler limit on an external queue: two "send" at once; the others
-- are held back, and the jobs behind them are claimed
SELECT atomizer.create_queue('ext', external => true);
SELECT atomizer.limit_handler('ext', 'send', 2);
SELECT count(atomizer.enqueue('send', jsonb_build_object('n', i), queue => 'ext'))
  FROM generate_series(1, 5) i;
SELECT count(atomizer.enqueue('other', jsonb_build_object('n', i), queue => 'ext'))
  FROM generate_series(1, 3) i;
SELECT handler, count(*) FROM atomizer.claim('ext', 4, '1 minute', 'w1')
 GROUP BY handler ORDER BY handler;
SELECT handler, count(*) FROM atomizer.claim('ext', 10, '1 minute', 'w2')
 GROUP BY handler ORDER BY handler;
-- the held ones show as available
SELECT state, count(*) FROM atomizer.jobs WHERE queue = 'ext' GROUP BY state ORDER BY state;
SELECT count(*) AS nothing_while_full FROM atomizer.claim('ext', 10);
-- one finishes: one more may start
SELECT atomizer.complete(id) FROM atomizer.jobs
 WHERE queue = 'ext' AND handler = 'send' AND state = 'running' ORDER BY id LIMIT 1;
SELECT handler, count(*) FROM atomizer.claim('ext', 10, '1 minute', 'w3')
 GROUP BY handler ORDER BY handler;
-- a failure and a release free room too
SELECT atomizer.fail(id, 'boom', retry_in => '1 hour') FROM atomizer.jobs
 WHERE queue = 'ext' AND handler = 'send' AND state = 'running' ORDER BY id LIMIT 1;
SELECT atomizer.release(id) FROM atomizer.jobs
 WHERE queue = 'ext' AND handler = 'send' AND state = 'running' ORDER BY id LIMIT 1;
SELECT handler, count(*) FROM atomizer.claim('ext', 10, '1 minute', 'w4')
 GROUP BY handler ORDER BY handler;
-- three more are held back while two run
SELECT count(atomizer.enqueue('send', jsonb_build_object('n', i), queue => 'ext'))
  FROM generate_series(6, 8) i;
SELECT count(*) AS claimed FROM atomizer.claim('ext', 10, '1 minute', 'w5');
SELECT count(*) AS held FROM atomizer.job WHERE queue = 'ext' AND state = 'held';
-- a held job can be cancelled
SELECT atomizer.cancel(id) FROM atomizer.job WHERE queue = 'ext' AND state = 'held'
 ORDER BY id LIMIT 1;
SELECT count(*) AS held FROM atomizer.job WHERE queue = 'ext' AND state = 'held';
-- raising the limit lets the held ones go
SELECT atomizer.limit_handler('ext', 'send', 10);
SELECT count(*) AS held FROM atomizer.job WHERE queue = 'ext' AND state = 'held';
SELECT handler, count(*) FROM atomizer.claim('ext', 10, '1 minute', 'w6')
 GROUP BY handler ORDER BY handler;
-- a claim inside REPEATABLE READ cannot keep a limit
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM try($$SELECT * FROM atomizer.claim('ext', 1)$$);
ROLLBACK;

-- a rate limit: 3 starts an hour; the others are put off, one every 20
-- minutes after the window frees room, all started at the same time
SELECT count(atomizer.enqueue('call', jsonb_build_object('n', i), queue => 'r'))
  FROM generate_series(1, 5) i;
SELECT count(*) AS claimed FROM atomizer.claim('r', 10, '1 minute', 'w1');
SELECT count(*) AS running, count(DISTINCT started_at) AS start_times
  FROM atomizer.jobs WHERE queue = 'r' AND state = 'running';
SELECT state, run_at - (SELECT min(started_at) FROM atomizer.jobs WHERE queue = 'r')
	   AS put_off_by
  FROM atomizer.jobs WHERE queue = 'r' AND state <> 'running' ORDER BY id;
SELECT count(*) AS nothing_more FROM atomizer.claim('r', 10);
SELECT sum(n) AS starts_in_window FROM atomizer.rate_start WHERE queue = 'r';

-- partitions: 2 starts an hour per customer; customer a's backlog does
-- not hold back b and c behind it
SELECT atomizer.create_queue('p', external => true, rate_limit => 2,
                             rate_period => '1 hour', rate_partition => 'customer');
SELECT count(atomizer.enqueue('call', jsonb_build_object('customer', c), queue => 'p'))
  FROM unnest(ARRAY['a', 'a', 'a', 'a', 'b', 'b', 'b', 'c']) c;
SELECT atomizer.enqueue('call', '{"no": "customer"}', queue => 'p') IS NOT NULL AS enqueued;
SELECT coalesce(payload->>'customer', '(none)') AS customer, count(*)
  FROM atomizer.claim('p', 3, '1 minute', 'w1') GROUP BY 1 ORDER BY 1;
SELECT coalesce(payload->>'customer', '(none)') AS customer, count(*)
  FROM atomizer.claim('p', 10, '1 minute', 'w2') GROUP BY 1 ORDER BY 1;
SELECT payload->>'customer' AS customer, state, count(*)
  FROM atomizer.jobs WHERE queue = 'p' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT part, sum(n) FROM atomizer.rate_start WHERE queue = 'p' GROUP BY part ORDER BY part;
-- changing the partition field starts a new window
SELECT atomizer.alter_queue('p', rate_partition => '');
SELECT count(*) AS window_rows FROM atomizer.rate_start WHERE queue = 'p';

-- the shared-memory bound of a window: claims of 2 while it leaves room
-- (10 starts an hour) take 2 each without reading the window; the claim
-- the bound cannot vouch for reads it and finds it full, and a job it
-- cannot take is put off, never started over the limit
SELECT atomizer.create_queue('b', external => true, rate_limit => 10,
                             rate_period => '1 hour');
SELECT count(atomizer.enqueue('call', jsonb_build_object('n', i), queue => 'b'))
  FROM generate_series(1, 14) i;
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 2, '1 minute', 'w1');
SELECT state, count(*) FROM atomizer.jobs WHERE queue = 'b' GROUP BY 1 ORDER BY 1;
SELECT sum(n) AS starts_in_window FROM atomizer.rate_start WHERE queue = 'b';
-- a new period makes the bound again from the window (still 10 in it)
SELECT atomizer.alter_queue('b', rate_limit => 12, rate_period => '2 hours');
UPDATE atomizer.job SET run_at = now() - interval '1 second'
 WHERE queue = 'b' AND state = 'available';
SELECT count(*) AS claimed FROM atomizer.claim('b', 1, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 1, '1 minute', 'w1');
SELECT count(*) AS claimed FROM atomizer.claim('b', 1, '1 minute', 'w1');
SELECT sum(n) AS starts_in_window FROM atomizer.rate_start WHERE queue = 'b';

-- dropping a queue drops its handler limits
SELECT atomizer.drop_queue('ext', force => true);
SELECT count(*) AS limits_left FROM atomizer.handler_limit WHERE queue = 'ext';

\c postgres
DROP DATABASE atomizer_job_limits;
DROP ROLE regress_limit_user;
