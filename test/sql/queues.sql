-- Queue management: create, alter, pause, resume, drop; external queues.
-- each suite gets a database of its own
CREATE DATABASE atomizer_queues;
\c atomizer_queues
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
\pset null '-'

-- try(sql): run a statement that must fail; show its SQLSTATE and message
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

SELECT name, concurrency, external, max_attempts, backoff_base, backoff_cap,
       backoff_jitter, timeout, retention, paused
  FROM atomizer.queue;

SELECT atomizer.create_queue('emails', concurrency => 4, max_attempts => 8,
                             backoff_base => '2 seconds', backoff_cap => '10 minutes',
                             backoff_jitter => 0.25, timeout => '30 seconds',
                             retention => '7 days');
SELECT atomizer.create_queue(name => 'images', external => true);
SELECT name, concurrency, external, max_attempts, backoff_base, backoff_cap,
       backoff_jitter, timeout, retention, paused
  FROM atomizer.queue ORDER BY name;

-- bad settings
SELECT * FROM try($$SELECT atomizer.create_queue('emails')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('Emails')$$);
SELECT * FROM try($$SELECT atomizer.create_queue(NULL)$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', concurrency => 0)$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', max_attempts => 0)$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', backoff_base => '0')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', backoff_base => '1 hour', backoff_cap => '1 minute')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', backoff_jitter => 1.5)$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', timeout => '-1 s')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', retention => '-1 s')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('x', concurrency => NULL)$$);
SELECT count(*) FROM atomizer.queue WHERE name = 'x';

-- alter: NULL leaves a setting alone
SELECT atomizer.alter_queue('emails', max_attempts => 3, timeout => '0');
SELECT name, concurrency, max_attempts, backoff_base, timeout FROM atomizer.queue
 WHERE name = 'emails';
SELECT atomizer.alter_queue('nope', max_attempts => 3);
SELECT atomizer.alter_queue('emails', backoff_cap => '1 second');
SELECT atomizer.alter_queue('emails', concurrency => -2);

-- a job without its own max_attempts follows the queue's
CREATE FUNCTION ok(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT atomizer.enqueue('ok', queue => 'emails') AS j1 \gset
SELECT atomizer.enqueue('ok', queue => 'emails', max_attempts => 9) AS j2 \gset
SELECT atomizer.alter_queue('emails', max_attempts => 4);
SELECT id = :j1 AS follows_queue, max_attempts FROM atomizer.jobs
 WHERE queue = 'emails' ORDER BY id;

-- a queue with jobs cannot change kind
SELECT atomizer.alter_queue('emails', external => true);

-- pause: not claimed, still enqueued; resume
SELECT atomizer.pause_queue('emails');
SELECT queue, paused, available FROM atomizer.queue_stats WHERE queue = 'emails';
SELECT atomizer.run_pending('emails');
SELECT atomizer.run_pending() AS all_queues_skip_paused;
SELECT atomizer.enqueue('ok', queue => 'emails') > 0 AS still_enqueues;
SELECT atomizer.resume_queue('emails');
SELECT atomizer.run_pending('emails');
SELECT atomizer.pause_queue('nope');
SELECT atomizer.resume_queue('nope');

-- external queues: free task names, not run by atomizer
SELECT atomizer.enqueue('resize-image', '{"w": 64}', queue => 'images') > 0 AS enqueued;
SELECT atomizer.enqueue('', '{}', queue => 'images');
SELECT handler, state FROM atomizer.jobs WHERE queue = 'images';
SELECT atomizer.run_pending('images');
SELECT atomizer.run_pending() AS internal_only;
SELECT handler, state FROM atomizer.jobs WHERE queue = 'images';

-- drop: refuses while jobs are unfinished, unless forced
SELECT atomizer.drop_queue('images');
SELECT atomizer.drop_queue('images', force => true);
SELECT count(*) FROM atomizer.jobs WHERE queue = 'images';
SELECT atomizer.drop_queue('default');
SELECT atomizer.drop_queue('nope');
SELECT atomizer.drop_queue('emails');
SELECT name FROM atomizer.queue ORDER BY name;
SELECT count(*) AS history_kept FROM atomizer.jobs WHERE queue = 'emails';

-- a dead job of a dropped queue cannot be retried into nowhere
SELECT atomizer.create_queue('brief', max_attempts => 1);
CREATE FUNCTION bad(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT 1/0 $$;
SELECT atomizer.enqueue('bad', queue => 'brief') AS dead_id \gset
SELECT atomizer.run_pending('brief');
SELECT atomizer.drop_queue('brief');
SELECT atomizer.retry(:dead_id);
SELECT state FROM atomizer.jobs WHERE id = :dead_id;
