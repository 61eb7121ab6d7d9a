-- SQL-language handlers run with their plan kept from job to job
-- (src/sqlfunc.c).  They must behave exactly as a call through fmgr_sql:
-- results, effects visible to the next job, a replaced function body, a
-- dropped and recreated table, privileges checked for each job's role,
-- the error context, and the handlers that keep the fmgr path.
CREATE DATABASE atomizer_handlers;
\c atomizer_handlers
CREATE EXTENSION atomizer;
SET client_min_messages = warning;

CREATE FUNCTION make_due() RETURNS void LANGUAGE sql AS $$
	UPDATE atomizer.job SET run_at = now() - interval '1 second'
	 WHERE state = 'available'
$$;

CREATE TABLE log (n int, seen bigint);

-- jsonb and json results; void with a trailing SELECT
CREATE FUNCTION as_jsonb(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('double', (payload->>'n')::int * 2) $$;
CREATE FUNCTION as_json(payload jsonb) RETURNS json LANGUAGE sql
AS $$ SELECT json_build_object('n', payload->'n') $$;
CREATE FUNCTION as_void(payload jsonb) RETURNS void LANGUAGE sql
AS $$ SELECT 1 $$;
-- volatile: each job sees the rows earlier jobs of the same batch wrote
CREATE FUNCTION count_and_log(payload jsonb) RETURNS void LANGUAGE sql
AS $$ INSERT INTO log SELECT (payload->>'n')::int, count(*) FROM log $$;
-- stable: runs read-only
CREATE FUNCTION stable_read(payload jsonb) RETURNS jsonb LANGUAGE sql STABLE
AS $$ SELECT jsonb_build_object('rows', count(*)) FROM log $$;
-- kept on the fmgr path: two statements, a SET clause
CREATE FUNCTION two_statements(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	INSERT INTO log VALUES (-1, 0);
	SELECT jsonb_build_object('two', true)
$$;
CREATE FUNCTION with_setting(payload jsonb) RETURNS jsonb LANGUAGE sql
SET work_mem = '1MB' AS $$ SELECT jsonb_build_object('work_mem', current_setting('work_mem')) $$;

SELECT atomizer.enqueue('as_jsonb', '{"n": 21}') AS j1 \gset
SELECT atomizer.enqueue('as_json', '{"n": 5}') AS j2 \gset
SELECT atomizer.enqueue('as_void', '{}') AS j3 \gset
SELECT count(*) FROM atomizer.enqueue_many('count_and_log',
	ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 3) g));
SELECT atomizer.enqueue('stable_read', '{}', priority => 1) AS j4 \gset
SELECT atomizer.enqueue('two_statements', '{}', priority => 2) AS j5 \gset
SELECT atomizer.enqueue('with_setting', '{}', priority => 2) AS j6 \gset
SELECT make_due();
SELECT atomizer.run_pending();
SELECT id = :j1 AS j1, id = :j2 AS j2, id = :j3 AS j3, id = :j4 AS j4,
	   id = :j5 AS j5, id = :j6 AS j6, handler, state, result
  FROM atomizer.jobs ORDER BY id;
SELECT n, seen FROM log ORDER BY n;

-- a replaced body is used by the next job
CREATE OR REPLACE FUNCTION as_jsonb(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('triple', (payload->>'n')::int * 3) $$;
SELECT atomizer.enqueue('as_jsonb', '{"n": 7}') AS j \gset
SELECT make_due();
SELECT atomizer.run_pending();
SELECT result FROM atomizer.jobs WHERE id = :j;

-- the table it writes dropped and created again: planned again
DROP TABLE log;
CREATE TABLE log (n int, seen bigint, extra text DEFAULT 'new table');
SELECT atomizer.enqueue('count_and_log', '{"n": 100}') AS j \gset
SELECT make_due();
SELECT atomizer.run_pending();
SELECT j.state, l.n, l.seen, l.extra FROM atomizer.jobs j, log l WHERE j.id = :j;

-- the same handler, for a role that may not write the table: refused for it
CREATE ROLE regress_handler_user;
GRANT USAGE ON SCHEMA public TO regress_handler_user;
GRANT EXECUTE ON FUNCTION count_and_log(jsonb) TO regress_handler_user;
SET ROLE regress_handler_user;
SELECT atomizer.enqueue('count_and_log', '{"n": 200}') AS j \gset
RESET ROLE;
SELECT make_due();
SELECT atomizer.run_pending();
SELECT state, last_error FROM atomizer.jobs WHERE id = :j;
-- and allowed, at its next attempt, once it may
GRANT INSERT, SELECT ON log TO regress_handler_user;
SELECT make_due();
SELECT atomizer.run_pending();
SELECT state FROM atomizer.jobs WHERE id = :j;

-- an error carries the function's context line, as through fmgr (and,
-- from SPI, the statement)
CREATE FUNCTION divide(payload jsonb) RETURNS void LANGUAGE sql
AS $$ SELECT 1 / (payload->>'by')::int $$;
SELECT atomizer.enqueue('divide', '{"by": 0}', max_attempts => 1) AS j \gset
SELECT make_due();
SELECT atomizer.run_pending();
SELECT sqlstate, message, context FROM atomizer.job_errors WHERE job_id = :j;

\c postgres
DROP DATABASE atomizer_handlers;
DROP ROLE regress_handler_user;
