-- Security: jobs run as the role that enqueued them; row-level security shows
-- each role its own jobs; atomizer_admin sees and steers all; nobody writes
-- atomizer's tables directly; handlers cannot take the runner's identity or
-- leak settings; SECURITY DEFINER functions pin search_path.
-- each suite gets a database of its own
CREATE DATABASE atomizer_security;
\c atomizer_security
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
SET client_min_messages = warning;

CREATE ROLE regress_alice LOGIN;
CREATE ROLE regress_bob LOGIN;
CREATE ROLE regress_ops LOGIN IN ROLE atomizer_admin;
CREATE SCHEMA app;
GRANT USAGE, CREATE ON SCHEMA app TO regress_alice, regress_bob;

SET ROLE regress_alice;
CREATE FUNCTION app.whoami(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('current_user', current_user::text)
$$;
REVOKE EXECUTE ON FUNCTION app.whoami(jsonb) FROM PUBLIC;
CREATE FUNCTION app.reset_role(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN RESET ROLE; END $$;
CREATE FUNCTION app.set_role(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN SET ROLE postgres; END $$;
CREATE FUNCTION app.set_session(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN SET SESSION AUTHORIZATION DEFAULT; END $$;
CREATE FUNCTION app.reset_all(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	RESET ALL;
	SET work_mem = '77MB';
	PERFORM set_config('search_path', 'app', false);
	RETURN jsonb_build_object('current_user', current_user::text);
END $$;
CREATE FUNCTION app.temp_table(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN CREATE TEMP TABLE leftover (a int); END $$;

-- alice enqueues; bob may not execute her whoami, so he cannot enqueue it
SELECT count(atomizer.enqueue(h)) FROM unnest(ARRAY['app.whoami', 'app.reset_role',
	'app.set_role', 'app.set_session', 'app.reset_all', 'app.temp_table']) h;
SELECT min(id) AS alices_job FROM atomizer.jobs \gset
SELECT handler, owner FROM atomizer.jobs ORDER BY id;

-- nobody writes the tables directly, so no one can forge a job's owner
INSERT INTO atomizer.job (queue, handler, payload, owner)
	VALUES ('default', 'app.whoami', '{}', 'postgres');
UPDATE atomizer.job SET owner = 'postgres';
DELETE FROM atomizer.job;
INSERT INTO atomizer.queue (name) VALUES ('mine');
SELECT nextval('atomizer.job_id_seq');
-- nor manages queues without atomizer_admin
SELECT atomizer.create_queue('mine');
SELECT atomizer.pause_queue('default');
-- (the functions doing the work are no way around it)
SELECT atomizer._create_queue('mine');
SELECT atomizer._pause_queue('default');
RESET ROLE;

SET ROLE regress_bob;
SELECT atomizer.enqueue('app.whoami');
CREATE FUNCTION app.bobs(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('current_user', current_user::text)
$$;
SELECT atomizer.enqueue('app.bobs') AS bobs_job \gset
-- bob sees only his job, cannot cancel alice's, and runs only his own
SELECT handler, owner FROM atomizer.jobs ORDER BY id;
SELECT count(*) FROM atomizer.job;
SELECT atomizer.cancel(id) FROM atomizer.job_history;  -- sees none
SELECT atomizer.cancel(:alices_job) AS cancel_alices;
SELECT atomizer.run_pending();
SELECT handler, state, result FROM atomizer.jobs ORDER BY id;
SELECT queue, available, succeeded FROM atomizer.queue_stats;
RESET ROLE;

-- the admin sees everything and runs alice's jobs as alice
SET ROLE regress_ops;
SELECT handler, owner, state FROM atomizer.jobs ORDER BY id;
SET work_mem = '5MB';
SET search_path = public;
SELECT atomizer.run_pending();
-- nothing a handler set leaks into the session that ran it
SHOW work_mem;
SHOW search_path;
SELECT current_user, session_user = current_user AS same;
SELECT handler, owner, state, result, last_error FROM atomizer.jobs ORDER BY id;
RESET ROLE;

-- and steers all: an admin cancels and retries alice's jobs, which alice
-- cannot do to an admin's
SET ROLE regress_alice;
SELECT atomizer.enqueue('app.whoami', run_at => now() + interval '1 day') AS later \gset
RESET ROLE;
SET ROLE regress_ops;
SELECT atomizer.cancel(:later) AS ops_cancels, atomizer.retry(:later) AS ops_retries;
SELECT atomizer.enqueue('pg_catalog.jsonb_pretty') AS ops_job \gset
RESET ROLE;
SET ROLE regress_alice;
SELECT count(*) AS alice_cannot_see_ops_job FROM atomizer.jobs WHERE id = :ops_job;
SELECT atomizer.cancel(:ops_job) AS alice_cannot_cancel;
SELECT atomizer.cancel(:later) AS alice_cancels_her_own;
RESET ROLE;

-- EXECUTE revoked after enqueue: the job fails, recorded, never runs
SET ROLE regress_alice;
CREATE FUNCTION app.revocable(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
GRANT EXECUTE ON FUNCTION app.revocable(jsonb) TO regress_bob;
RESET ROLE;
SET ROLE regress_bob;
SELECT atomizer.enqueue('app.revocable', max_attempts => 1) AS revoked_job \gset
RESET ROLE;
REVOKE EXECUTE ON FUNCTION app.revocable(jsonb) FROM regress_bob, PUBLIC;
SELECT atomizer.run_pending();
SELECT state, last_error FROM atomizer.jobs WHERE id = :revoked_job;

-- a role dropped after enqueueing: its job fails, recorded
CREATE ROLE regress_gone;
GRANT USAGE ON SCHEMA app TO regress_gone;
GRANT EXECUTE ON FUNCTION app.bobs(jsonb) TO regress_gone;
SET ROLE regress_gone;
SELECT atomizer.enqueue('app.bobs', max_attempts => 1) AS gone_job \gset
RESET ROLE;
DROP OWNED BY regress_gone;
DROP ROLE regress_gone;
SELECT atomizer.run_pending();
SELECT state, last_error FROM atomizer.jobs WHERE id = :gone_job;

-- every SECURITY DEFINER function of the extension pins search_path
SELECT p.oid::regprocedure AS function, p.proconfig
  FROM pg_proc p
  JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'atomizer'
 WHERE p.prosecdef
 ORDER BY 1::text;
SELECT count(*) AS unpinned
  FROM pg_proc p
  JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'atomizer'
 WHERE p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%');

-- a caller's search_path cannot redirect atomizer's own statements: an
-- operator planted ahead of pg_catalog is never called
CREATE SCHEMA evil;
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'evil operator called as %', current_user; END $$;
CREATE OPERATOR evil.= (leftarg = text, rightarg = text, function = evil.texteq);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
SET ROLE regress_alice;
SET search_path = evil, pg_catalog, app;
SELECT atomizer.enqueue('whoami', queue => 'default') > 0 AS safe_enqueue;
SELECT atomizer.run_pending() >= 0 AS safe_run;
RESET search_path;
RESET ROLE;

DROP SCHEMA evil CASCADE;

-- idempotency keys are the enqueuing role's own: bob's key does not
-- swallow alice's job, nor tell her that bob's job exists
SET ROLE regress_bob;
SELECT atomizer.enqueue('app.bobs', idempotency_key => 'welcome:ada@example.com') AS bobs_keyed \gset
RESET ROLE;
SET ROLE regress_alice;
SELECT atomizer.enqueue('app.whoami', idempotency_key => 'welcome:ada@example.com') AS alices_keyed \gset
SELECT :alices_keyed <> :bobs_keyed AS a_job_of_her_own;
SELECT atomizer.enqueue('app.whoami', idempotency_key => 'welcome:ada@example.com') = :alices_keyed
	AS her_repeat_finds_hers;
SELECT count(*) AS keyed_jobs_she_sees FROM atomizer.jobs
 WHERE idempotency_key = 'welcome:ada@example.com';
RESET ROLE;
SELECT owner, count(*) FROM atomizer.jobs WHERE idempotency_key = 'welcome:ada@example.com'
 GROUP BY owner ORDER BY owner;

SELECT atomizer.purge();
DROP EXTENSION atomizer;
DROP SCHEMA app CASCADE;
DROP ROLE regress_alice, regress_bob, regress_ops;
