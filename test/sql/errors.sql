-- Bad input: every mistake is an ERROR with an errcode and a clear message,
-- and nothing half-written stays behind.
-- each suite gets a database of its own
CREATE DATABASE atomizer_errors;
\c atomizer_errors
CREATE EXTENSION atomizer;

CREATE FUNCTION ok(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION two_args(payload jsonb, extra int) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION text_arg(payload text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE a_procedure(payload jsonb) LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION a_set(payload jsonb) RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE AGGREGATE an_aggregate(jsonb) (sfunc = jsonb_concat, stype = jsonb);
CREATE FUNCTION no_args() RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION json_arg(payload json) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE SCHEMA hidden;
CREATE FUNCTION hidden.h(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;

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
\pset null '-'

-- handlers
SELECT * FROM try($$SELECT atomizer.enqueue(NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('no_such_function')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('two_args')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('text_arg')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('a_procedure')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('a_set')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('an_aggregate')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('h')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('"unterminated')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('no_args')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('json_arg')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok()')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok(jsonb)')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('public.ok(payload jsonb)')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('public.two_args')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('hidden.two_args')$$);
SELECT atomizer.enqueue('hidden.h') > 0 AS qualified_name_works;

-- queues
SELECT * FROM try($$SELECT atomizer.enqueue('ok', queue => NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', queue => 'Bad-Name')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', queue => '9lives')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', queue => repeat('q', 49))$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', queue => 'nope')$$);

-- payloads
SELECT * FROM try($$SELECT atomizer.enqueue('ok', NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', '"just a string"')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', '42')$$);
SELECT atomizer.enqueue('ok', '[1, 2]') > 0 AS array_payload_works;

-- scheduling settings
SELECT * FROM try($$SELECT atomizer.enqueue('ok', run_at => NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', run_at => 'infinity')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', priority => NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', priority => 40000)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', priority => -40000)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', max_attempts => 0)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', max_attempts => -1)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', timeout => '-1 second')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', timeout => '0')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('ok', idempotency_key => '')$$);

-- enqueue_many: any bad element fails the whole call
SELECT * FROM try($$SELECT atomizer.enqueue_many('ok', NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('ok', ARRAY['{}', NULL]::jsonb[])$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('ok', ARRAY['{}', '{}', '3']::jsonb[])$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('ok', ARRAY[['{}'], ['{}']]::jsonb[])$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('missing', ARRAY['{}']::jsonb[])$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('ok', ARRAY['{}']::jsonb[], queue => 'nope')$$);

-- run_pending, purge
SELECT * FROM try($$SELECT atomizer.run_pending('nope')$$);
SELECT * FROM try($$SELECT atomizer.run_pending('No')$$);
SELECT * FROM try($$SELECT atomizer.run_pending(max_jobs => -1)$$);
SELECT * FROM try($$SELECT atomizer.purge(older_than => '-1 day')$$);
SELECT * FROM try($$SELECT atomizer.purge(queue => 'BAD')$$);

-- unknown ids are not errors: false
SELECT atomizer.cancel(-1), atomizer.retry(-1), atomizer.cancel(NULL), atomizer.retry(NULL);

-- nothing half-written: only the two successful enqueues above exist
SELECT handler, payload FROM atomizer.jobs ORDER BY id;
SELECT count(*) FROM atomizer.job_error;
-- failed calls consumed no job ids
SELECT last_value FROM atomizer.job_id_seq;

-- a schedule that can never fire is refused, naming why
SELECT * FROM try($$SELECT atomizer.schedule('never', '0 0 30 2 *', 'ok')$$);
SELECT * FROM try($$SELECT atomizer.schedule('never', '0 12 31 4,6,9,11 *', 'ok')$$);
SELECT count(*) AS none_saved FROM atomizer.schedules WHERE name = 'never';
SELECT atomizer.schedule('leap_day', '0 0 29 2 *', 'ok') > 0 AS leap_day_works;
SELECT atomizer.unschedule('leap_day');

-- the default queue cannot be dropped, and says why
SELECT * FROM try($$SELECT atomizer.drop_queue('default')$$);
