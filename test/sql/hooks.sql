-- Lifecycle hooks: before_run, on_success, on_failure and on_dead, on an
-- internal queue (run with run_pending()) and an external one (claim,
-- complete, fail); their document, their order, their transaction, the
-- role they run as, what their errors do, and the checks of the settings.
CREATE DATABASE atomizer_hooks;
\c atomizer_hooks
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
-- try(sql): run a statement that must fail; its SQLSTATE and message
CREATE FUNCTION try(sql text, OUT code text, OUT message text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;
GRANT EXECUTE ON FUNCTION try(text) TO PUBLIC;

-- the audit table every hook and handler writes to, in call order
CREATE TABLE audit (n serial, hook text, id bigint, state text, attempt int,
					ran_as text, result jsonb, error jsonb, doc jsonb);
GRANT ALL ON audit, audit_n_seq TO PUBLIC;
CREATE FUNCTION audit(job jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO audit (hook, id, state, attempt, ran_as, result, error, doc)
	VALUES (job->>'hook', (job->>'id')::bigint, job->>'state',
			(job->>'attempt')::int, current_user, job->'result', job->'error', job)
$$;
CREATE FUNCTION work(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO audit (hook, id, ran_as) VALUES ('handler', (atomizer.current_job()).id, current_user);
	IF p ? 'fail' THEN
		RAISE EXCEPTION 'work failed: %', p->>'fail' USING ERRCODE = '22012', HINT = 'a hint';
	END IF;
	IF p ? 'discard' THEN
		PERFORM atomizer.discard(p->>'discard');
	END IF;
	IF p ? 'snooze' THEN
		PERFORM atomizer.snooze('1 hour');
	END IF;
	RETURN jsonb_build_object('done', p->'n');
END
$$;
GRANT EXECUTE ON FUNCTION work(jsonb) TO PUBLIC;

SELECT atomizer.create_queue('audited', max_attempts => 2, backoff_base => '1 millisecond',
							 before_run => 'audit', on_success => 'audit',
							 on_failure => 'public.audit', on_dead => 'audit(jsonb)');
-- the settings are stored schema-qualified
SELECT before_run, on_success, on_failure, on_dead FROM atomizer.queue WHERE name = 'audited';

-- a success: before_run, the handler, on_success, in that order, in one transaction
SELECT atomizer.enqueue('work', '{"n": 1}', queue => 'audited', tags => '{a,b}') AS ok_id \gset
SELECT atomizer.run_pending('audited');
SELECT hook, id = :ok_id AS this_job, state, attempt, result FROM audit ORDER BY n;
SELECT state, result FROM atomizer.jobs WHERE id = :ok_id;
-- the document
SELECT array_agg(k ORDER BY k) AS before_run_keys
  FROM audit, jsonb_object_keys(doc) k WHERE hook = 'before_run';
SELECT doc->'queue' AS queue, doc->'handler' AS handler, doc->'payload' AS payload,
	   doc->'max_attempts' AS max_attempts, doc->'priority' AS priority,
	   doc->'tags' AS tags, doc->'owner' = to_jsonb(current_user::text) AS owner_ok,
	   (doc->>'created_at')::timestamptz <= now() AS created_ok,
	   (doc->>'started_at')::timestamptz IS NOT NULL AS started_ok,
	   doc->'schedule' AS schedule, doc->'last_error' AS last_error
  FROM audit WHERE hook = 'on_success';
TRUNCATE audit;

-- on_success's writes roll back with the job: nothing of this run stays
SELECT atomizer.enqueue('work', '{"n": 2}', queue => 'audited') AS rollback_id \gset
BEGIN;
SELECT atomizer.run_pending('audited');
SELECT count(*) AS audit_rows_inside FROM audit;
SELECT state FROM atomizer.jobs WHERE id = :rollback_id;
ROLLBACK;
SELECT count(*) AS audit_rows_after_rollback FROM audit;
SELECT state, attempt FROM atomizer.jobs WHERE id = :rollback_id;
SELECT atomizer.cancel(:rollback_id);

-- a failure: the handler's subtransaction (with before_run's writes) is
-- rolled back; on_failure gets the error, then on_dead after the last attempt
SELECT atomizer.enqueue('work', '{"fail": "twice"}', queue => 'audited') AS fail_id \gset
SELECT atomizer.run_pending('audited');
SELECT pg_sleep(0.05);
SELECT atomizer.run_pending('audited');
SELECT hook, state, attempt, error->>'sqlstate' AS sqlstate, error->>'message' AS message,
	   error->>'hint' AS hint, error->>'context' IS NOT NULL AS has_context,
	   doc->>'last_error' AS last_error
  FROM audit ORDER BY n;
SELECT state, attempt FROM atomizer.jobs WHERE id = :fail_id;
-- on_failure saw when the next attempt was due
SELECT (doc->>'run_at')::timestamptz > (doc->>'started_at')::timestamptz AS next_run_later
  FROM audit WHERE hook = 'on_failure';
TRUNCATE audit;

-- discard(): on_dead at once; snooze(): no hook runs (the attempt is not over)
SELECT atomizer.enqueue('work', '{"discard": "bad input"}', queue => 'audited') AS discard_id \gset
SELECT atomizer.enqueue('work', '{"snooze": true}', queue => 'audited') AS snooze_id \gset
SELECT atomizer.run_pending('audited');
SELECT hook, id = :discard_id AS discarded_job, state, error->>'sqlstate' AS sqlstate,
	   error->>'message' AS message
  FROM audit ORDER BY n;
SELECT state FROM atomizer.jobs WHERE id IN (:discard_id, :snooze_id) ORDER BY id;
-- cancel(): no hook runs
SELECT atomizer.cancel(:snooze_id);
SELECT count(*) AS audit_rows FROM audit;
TRUNCATE audit;

-- before_run: its error fails the attempt (the handler does not run, retries as usual)
CREATE FUNCTION gate(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM audit(job);
	IF job->'payload' ? 'closed' THEN
		RAISE EXCEPTION 'gate closed for job %', job->>'id' USING ERRCODE = '42501';
	END IF;
	IF job->'payload' ? 'later' THEN
		PERFORM atomizer.snooze('1 day');	-- the job, not counted
	END IF;
END
$$;
SELECT atomizer.create_queue('gated', max_attempts => 3, backoff_base => '1 hour',
							 before_run => 'gate');
SELECT atomizer.enqueue('work', '{"closed": true}', queue => 'gated') AS closed_id \gset
SELECT atomizer.enqueue('work', '{"later": true}', queue => 'gated') AS later_id \gset
SELECT atomizer.run_pending('gated');
SELECT count(*) AS rows_left FROM audit;	-- rolled back with the attempt
SELECT id = :closed_id AS closed, state, attempt, last_error FROM atomizer.jobs
 WHERE id IN (:closed_id, :later_id) ORDER BY id;
SELECT sqlstate, message, context FROM atomizer.job_errors WHERE job_id = :closed_id;

-- on_success: its error fails the attempt too, the handler's writes rolled back
CREATE FUNCTION refuse(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'result % refused', job->'result' USING ERRCODE = '23514';
END
$$;
SELECT atomizer.create_queue('picky', max_attempts => 1, on_success => 'refuse', on_dead => 'audit');
SELECT atomizer.enqueue('work', '{"n": 3}', queue => 'picky') AS picky_id \gset
SELECT atomizer.run_pending('picky');
SELECT hook, state, error->>'sqlstate' AS sqlstate, error->>'message' AS message
  FROM audit ORDER BY n;	-- the handler's row is gone
SELECT state, result, last_error FROM atomizer.jobs WHERE id = :picky_id;
TRUNCATE audit;

-- an on_failure or on_dead error: logged, recorded beside the attempt's, the outcome stands
CREATE FUNCTION broken(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO audit (hook) VALUES ('broken: rolled back');
	RAISE EXCEPTION 'broken hook' USING ERRCODE = 'XX001';
END
$$;
SELECT atomizer.create_queue('fragile', max_attempts => 1, on_dead => 'broken');
SELECT atomizer.enqueue('work', '{"fail": "once"}', queue => 'fragile') AS fragile_id \gset
SELECT atomizer.run_pending('fragile');
SELECT state, last_error FROM atomizer.jobs WHERE id = :fragile_id;
SELECT attempt, sqlstate, message FROM atomizer.job_errors WHERE job_id = :fragile_id
 ORDER BY failed_at;
SELECT count(*) AS audit_rows FROM audit;

-- a hook dropped since it was set: an error recorded on the job, with a hint
CREATE FUNCTION soon_gone(job jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT atomizer.create_queue('dropped', max_attempts => 1, before_run => 'soon_gone',
							 on_dead => 'soon_gone');
DROP FUNCTION soon_gone(jsonb);
SELECT atomizer.enqueue('work', '{"n": 4}', queue => 'dropped') AS dropped_id \gset
SELECT atomizer.run_pending('dropped');
SELECT state, last_error FROM atomizer.jobs WHERE id = :dropped_id;
SELECT sqlstate, message, hint FROM atomizer.job_errors WHERE job_id = :dropped_id
 ORDER BY failed_at;

-- hooks run as the job's owner: one the owner may not execute is an error like a handler's
CREATE ROLE regress_hook_user;
GRANT USAGE ON SCHEMA atomizer TO regress_hook_user;
CREATE FUNCTION private_hook(job jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION private_hook(jsonb) FROM PUBLIC;
SELECT atomizer.create_queue('guarded', max_attempts => 1, before_run => 'private_hook');
SELECT atomizer.create_queue('owned', max_attempts => 1, before_run => 'audit', on_dead => 'audit');
SET ROLE regress_hook_user;
SELECT atomizer.enqueue('work', '{"n": 5}', queue => 'guarded') AS guarded_id \gset
SELECT atomizer.enqueue('work', '{"fail": "as user"}', queue => 'owned') AS owned_id \gset
RESET ROLE;
SELECT atomizer.run_pending('guarded') + atomizer.run_pending('owned') AS ran;	-- an admin runs them
SELECT sqlstate, message, hint FROM atomizer.job_errors WHERE job_id = :guarded_id;
SELECT hook, ran_as FROM audit ORDER BY n;	-- before_run's row rolled back with the attempt
TRUNCATE audit;

-- the job's timeout covers before_run, the handler and on_success together
CREATE FUNCTION slow(job jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(2) $$;
SELECT atomizer.create_queue('slowgate', max_attempts => 1, timeout => '100 milliseconds',
							 before_run => 'slow');
SELECT atomizer.enqueue('work', '{"n": 6}', queue => 'slowgate') AS slow_id \gset
SELECT atomizer.run_pending('slowgate');
SELECT state, last_error FROM atomizer.jobs WHERE id = :slow_id;
-- on_failure and on_dead have the job's timeout to themselves
SELECT atomizer.alter_queue('slowgate', before_run => '', on_dead => 'slow');
SELECT atomizer.enqueue('work', '{"fail": "fast"}', queue => 'slowgate') AS slow_dead_id \gset
SELECT atomizer.run_pending('slowgate');
SELECT state, last_error FROM atomizer.jobs WHERE id = :slow_dead_id;
SELECT sqlstate, message FROM atomizer.job_errors WHERE job_id = :slow_dead_id ORDER BY failed_at;

-- a hook cannot run jobs or wait for them
CREATE FUNCTION nested(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM atomizer.run_pending();
END
$$;
SELECT atomizer.create_queue('nesting', max_attempts => 1, on_dead => 'nested');
SELECT atomizer.enqueue('work', '{"fail": "x"}', queue => 'nesting') AS nesting_id \gset
SELECT atomizer.run_pending('nesting');
SELECT message FROM atomizer.job_errors WHERE job_id = :nesting_id ORDER BY failed_at;

-- bad settings, with their SQLSTATEs
CREATE PROCEDURE proc_hook(job jsonb) LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION text_hook(job text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION set_hook(job jsonb) RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT * FROM try($$SELECT atomizer.alter_queue('audited', before_run => 'proc_hook')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('audited', on_success => 'text_hook(text)')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('audited', on_failure => 'text_hook')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('audited', on_dead => 'no_such_hook')$$);
SELECT * FROM try($$SELECT atomizer.alter_queue('audited', on_dead => 'no_schema.audit')$$);
SELECT * FROM try($$SELECT atomizer.create_queue('bad', before_run => 'set_hook')$$);
SELECT count(*) AS bad_created FROM atomizer.queue WHERE name = 'bad';
-- nothing half-written: the queue's hooks are as they were
SELECT before_run, on_success, on_failure, on_dead FROM atomizer.queue WHERE name = 'audited';
-- '' removes a hook, NULL leaves it
SELECT atomizer.alter_queue('audited', before_run => '', on_dead => NULL);
SELECT before_run, on_dead FROM atomizer.queue WHERE name = 'audited';
-- a hook replaced by a set-returning function since: refused when it runs
SELECT atomizer.create_queue('replaced', max_attempts => 1, before_run => 'audit');
DROP FUNCTION audit(jsonb);
CREATE FUNCTION audit(job jsonb) RETURNS SETOF int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT atomizer.enqueue('work', '{"n": 7}', queue => 'replaced') AS replaced_id \gset
SELECT atomizer.run_pending('replaced');
SELECT sqlstate, message FROM atomizer.job_errors WHERE job_id = :replaced_id;
DROP FUNCTION audit(jsonb);
CREATE FUNCTION audit(job jsonb) RETURNS void LANGUAGE sql AS $$
	INSERT INTO audit (hook, id, state, attempt, ran_as, result, error, doc)
	VALUES (job->>'hook', (job->>'id')::bigint, job->>'state',
			(job->>'attempt')::int, current_user, job->'result', job->'error', job)
$$;
GRANT EXECUTE ON FUNCTION audit(jsonb) TO PUBLIC;
TRUNCATE audit;

-- external queues: before_run in claim(), on_success in complete(), on_failure
-- and on_dead in fail(), in the caller's transaction, as the job's owner
CREATE ROLE regress_hook_worker IN ROLE atomizer_worker;
SELECT atomizer.create_queue('ext', external => true, max_attempts => 2,
							 backoff_base => '1 millisecond', backoff_jitter => 0,
							 before_run => 'audit', on_success => 'audit',
							 on_failure => 'audit', on_dead => 'audit');
SET ROLE regress_hook_user;
SELECT atomizer.enqueue('resize', '{"n": 1}', queue => 'ext') AS ext1 \gset
SELECT atomizer.enqueue('resize', '{"n": 2}', queue => 'ext', priority => -1) AS ext2 \gset
RESET ROLE;
SET ROLE regress_hook_worker;
SELECT count(*) AS claimed FROM atomizer.claim('ext', 2);
SELECT atomizer.complete(:ext1, '{"size": 10}');
SELECT atomizer.fail(:ext2, 'resize failed');
RESET ROLE;
SELECT pg_sleep(0.05);
SET ROLE regress_hook_worker;
SELECT id = :ext2 AS second, attempt FROM atomizer.claim('ext');
SELECT atomizer.fail(:ext2, 'resize failed again');
RESET ROLE;
SELECT hook, id = :ext1 AS first_job, state, attempt, ran_as, result,
	   error->>'message' AS message
  FROM audit ORDER BY n;
SELECT id = :ext1 AS first_job, state FROM atomizer.jobs WHERE id IN (:ext1, :ext2) ORDER BY id;
TRUNCATE audit;
-- a before_run error in claim(): that job is not handed out, its attempt failed
SELECT atomizer.alter_queue('ext', before_run => 'gate', backoff_base => '1 hour');
SELECT atomizer.enqueue('resize', '{"closed": true}', queue => 'ext', priority => -1) AS closed_ext \gset
SELECT atomizer.enqueue('resize', '{"n": 3}', queue => 'ext') AS open_ext \gset
SET ROLE regress_hook_worker;
SELECT id = :open_ext AS open_job FROM atomizer.claim('ext', 5);
RESET ROLE;
SELECT id = :closed_ext AS closed_job, state, attempt, last_error
  FROM atomizer.jobs WHERE id IN (:closed_ext, :open_ext) ORDER BY id;
SELECT hook, id = :closed_ext AS closed_job, state, error->>'message' AS message
  FROM audit ORDER BY n;	-- gate's own audit row of the closed job was rolled back
TRUNCATE audit;
-- an on_success error in complete(): a WARNING, and the attempt failed instead
SELECT atomizer.alter_queue('ext', on_success => 'refuse');
SET ROLE regress_hook_worker;
SELECT atomizer.complete(:open_ext, '{"size": 3}');
RESET ROLE;
SELECT state, attempt, last_error FROM atomizer.jobs WHERE id = :open_ext;
SELECT hook, state, error->>'message' AS message FROM audit ORDER BY n;
TRUNCATE audit;
-- complete_many(): counts the jobs it completed; the others' attempts failed
CREATE FUNCTION refuse_some(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF job->'payload' ? 'refuse' THEN
		RAISE EXCEPTION 'job % refused', job->>'id';
	END IF;
	PERFORM audit(job);
END
$$;
SELECT atomizer.alter_queue('ext', before_run => '', on_success => 'refuse_some');
SELECT atomizer.enqueue('resize', '{"refuse": true}', queue => 'ext', priority => -2) AS refused_ext \gset
SELECT atomizer.enqueue('resize', '{"n": 4}', queue => 'ext', priority => -1) AS kept_ext \gset
SET ROLE regress_hook_worker;
SELECT count(*) AS claimed FROM atomizer.claim('ext', 2);
SELECT atomizer.complete_many(ARRAY[:refused_ext, :kept_ext]::bigint[]) AS completed;
RESET ROLE;
SELECT id = :kept_ext AS kept, state, last_error FROM atomizer.jobs
 WHERE id IN (:refused_ext, :kept_ext) ORDER BY id;
SELECT hook, id = :kept_ext AS kept, state FROM audit ORDER BY n;

\c postgres
DROP DATABASE atomizer_hooks;
DROP ROLE regress_hook_user, regress_hook_worker;
