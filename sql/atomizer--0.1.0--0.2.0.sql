/*
 * atomizer 0.1.0 -> 0.2.0
 *
 * Applied by ALTER EXTENSION atomizer UPDATE, and appended to the 0.1.0
 * script to make the 0.2.0 install script (see the Makefile), so a fresh
 * install and an updated one are the same.
 */
\echo Use "ALTER EXTENSION atomizer UPDATE TO '0.2.0'" to load this file. \quit

/*
 * Queue settings whose times cannot be represented are refused: a backoff
 * or a retention of more than 1000 years (the longest delay atomizer
 * schedules), a timeout longer than a statement timeout can be (an int of
 * milliseconds).  0.1.0 accepted them and then failed every retry.
 */
CREATE OR REPLACE FUNCTION atomizer._check_queue_settings(
	concurrency integer, max_attempts integer, backoff_base interval,
	backoff_cap interval, backoff_jitter double precision, timeout interval,
	retention interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	longest constant interval := interval '1000 years';
	longest_timeout constant interval := interval '24 days 20:31:23.647';
	-- the messages name them as the C functions do
BEGIN
	IF concurrency IS NOT NULL AND concurrency <= 0 THEN
		RAISE EXCEPTION 'concurrency must be positive'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', concurrency);
	END IF;
	IF max_attempts IS NOT NULL AND max_attempts <= 0 THEN
		RAISE EXCEPTION 'max_attempts must be positive'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', max_attempts);
	END IF;
	IF backoff_base IS NOT NULL AND backoff_base <= interval '0' THEN
		RAISE EXCEPTION 'backoff_base must be positive'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF backoff_base IS NOT NULL AND backoff_base > longest THEN
		RAISE EXCEPTION 'backoff_base must be at most 1000 years'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', backoff_base);
	END IF;
	IF backoff_cap IS NOT NULL AND backoff_cap <= interval '0' THEN
		RAISE EXCEPTION 'backoff_cap must be positive'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF backoff_cap IS NOT NULL AND backoff_cap > longest THEN
		RAISE EXCEPTION 'backoff_cap must be at most 1000 years'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', backoff_cap);
	END IF;
	IF backoff_jitter IS NOT NULL
	   AND (backoff_jitter < 0 OR backoff_jitter > 1 OR backoff_jitter = 'NaN') THEN
		RAISE EXCEPTION 'backoff_jitter must be between 0 and 1'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', backoff_jitter);
	END IF;
	IF timeout IS NOT NULL AND timeout < interval '0' THEN
		RAISE EXCEPTION 'timeout must not be negative'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use interval ''0'' for no timeout.';
	END IF;
	IF timeout IS NOT NULL AND timeout > longest_timeout THEN
		RAISE EXCEPTION 'timeout must be at most 24 days 20:31:23.647'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', timeout),
				  HINT = 'Use interval ''0'' for no timeout.';
	END IF;
	IF retention IS NOT NULL AND retention < interval '0' THEN
		RAISE EXCEPTION 'retention must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF retention IS NOT NULL AND retention > longest THEN
		RAISE EXCEPTION 'retention must be at most 1000 years'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', retention);
	END IF;
END
$$;

/*
 * Idempotency keys belong to the role that enqueues: the same key from two
 * roles makes two jobs, so that no role can suppress another role's job, or
 * learn its id, by guessing its key.  (Unique on (queue, key) implies unique
 * on (queue, owner, key): existing jobs fit.)
 */
DROP INDEX atomizer.job_idempotency_idx;
CREATE UNIQUE INDEX job_idempotency_idx
	ON atomizer.job (queue, owner, idempotency_key)
	WHERE idempotency_key IS NOT NULL;

COMMENT ON FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text) IS
	'Enqueue one job in the current transaction; returns its id (or, for an idempotency_key the same role repeats in the same queue, the id of its unfinished job that has it).';

/* Only the install and upgrade scripts call it. */
REVOKE ALL ON FUNCTION atomizer._extension_created() FROM PUBLIC;

/* ------------------------------------------------------------------------
 * Backups by the database owner (issue 12)
 *
 * pg_dump run by the database's owner, not a superuser, must read what
 * pg_extension_config_dump registered: the id sequences (SELECT) and every
 * row of the job and schedule tables.  SELECT on the sequences reveals no
 * more than enqueue() and schedule() return to any role (the latest id), and
 * allows neither nextval() nor setval().  Row-level security lets the
 * database owner (and roles with its privileges) read every job, error and
 * schedule, so that its dump is complete; writing stays as it was: only
 * through the API, by no role but the extension's owner.  The owner's
 * pg_dump needs --enable-row-security (without it, PostgreSQL refuses to
 * dump a table with row-level security for a role that is neither its owner
 * nor BYPASSRLS).
 * ------------------------------------------------------------------------ */
GRANT SELECT ON SEQUENCE atomizer.job_id_seq, atomizer.schedule_id_seq TO PUBLIC;

CREATE POLICY database_owner_reads ON atomizer.job FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));
CREATE POLICY database_owner_reads ON atomizer.job_history FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));
CREATE POLICY database_owner_reads ON atomizer.job_error FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));
CREATE POLICY database_owner_reads ON atomizer.schedule FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));

/*
 * Schedule names belong to the role that makes them: two roles may each
 * have a schedule "nightly", and no role can take a name another will need
 * or learn from an error that it exists.  (Unique on name implies unique on
 * (owner, name): existing schedules fit.)
 */
ALTER TABLE atomizer.schedule DROP CONSTRAINT schedule_name_key;
ALTER TABLE atomizer.schedule ADD CONSTRAINT schedule_owner_name_key UNIQUE (owner, name);

/*
 * A fire writes next_run, last_run, last_job_id, fires and skipped of every
 * due schedule; with no index on any of them (and room on the page) the
 * update is HOT: it writes the heap and no index.  An index on next_run made
 * each fire an index insert into all three of the table's indexes, 43 % of
 * the firing of 10,000 schedules.  The due schedules are found by a scan of
 * the table (a few hundred pages for 10,000 schedules), which the scheduler
 * runs only when one is due or a schedule changed (src/scheduler.c).
 */
DROP INDEX atomizer.schedule_due_idx;
ALTER TABLE atomizer.schedule SET (fillfactor = 50);

COMMENT ON FUNCTION atomizer.schedule(text, text, text, jsonb, text, text, boolean, text, text, integer, integer, interval) IS
	'Create or replace your recurring entry "name" (each role has its own names): a cron expression (5 fields, or 6 with seconds first) or an interval such as ''30 seconds''; returns its id.';

/*
 * atomizer.workers shows each role the id of the job a worker runs only if
 * the job is the role's own (members of atomizer_admin see every one): the
 * view runs with the caller's rights, so row-level security on atomizer.job
 * decides.
 */
CREATE OR REPLACE VIEW atomizer.workers AS
SELECT w.pid, d.datname AS database, w.queue, w.state,
	   CASE WHEN (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE'))
				 OR (d.datname = pg_catalog.current_database()
					 AND EXISTS (SELECT FROM atomizer.job j WHERE j.id = w.job_id))
			THEN w.job_id END AS job_id,
	   w.jobs_succeeded, w.jobs_failed, w.started_at
  FROM atomizer._workers() w
  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.database;
ALTER VIEW atomizer.workers SET (security_invoker = true);

COMMENT ON VIEW atomizer.workers IS
	'atomizer''s worker processes (all databases): queue, state, counters, and the running job''s id if the job is yours.';

/* ------------------------------------------------------------------------
 * Permission errors that say which role to ask for (issue 12)
 *
 * PostgreSQL refuses EXECUTE before a function runs, with "permission
 * denied for function create_queue" and no word on the role that would
 * allow it.  The queue functions are now executable by every role and say,
 * for a role that may not use them, which role to ask for; the work is done
 * by atomizer._create_queue() and its siblings, which keep the privileges
 * create_queue() and the others had (renamed, so any GRANT an
 * administrator made on them still holds), and the wrapper checks exactly
 * that privilege: has_function_privilege() on the function it calls.
 * Wrappers run as the caller (not SECURITY DEFINER), so the check sees the
 * caller's rights.
 *
 * The external workers' functions (claim, complete, ...) are C functions
 * that check membership of atomizer_worker (or atomizer_admin) themselves,
 * before reading any argument, and say which role to ask for; EXECUTE on
 * them is granted to PUBLIC.
 * ------------------------------------------------------------------------ */

CREATE FUNCTION atomizer._require_admin(public_name text, fn text, what text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT pg_catalog.has_function_privilege(fn, 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for function %', public_name
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = pg_catalog.format('Only members of atomizer_admin may %s, and role %s is not one.',
								  what, pg_catalog.quote_ident(current_user::text)),
				  HINT = pg_catalog.format('Ask for atomizer_admin: GRANT atomizer_admin TO %s;',
								pg_catalog.quote_ident(current_user::text));
	END IF;
END
$$;

COMMENT ON FUNCTION atomizer._require_admin(text, text, text) IS
	'ERROR, naming the role to ask for, unless the caller may execute fn.';

ALTER FUNCTION atomizer.create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) RENAME TO _create_queue;
ALTER FUNCTION atomizer.alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) RENAME TO _alter_queue;
ALTER FUNCTION atomizer.drop_queue(text, boolean) RENAME TO _drop_queue;
ALTER FUNCTION atomizer.pause_queue(text) RENAME TO _pause_queue;
ALTER FUNCTION atomizer.resume_queue(text) RENAME TO _resume_queue;

CREATE OR REPLACE FUNCTION atomizer._create_queue(
	name text,
	concurrency integer DEFAULT 10,
	external boolean DEFAULT false,
	max_attempts integer DEFAULT 5,
	backoff_base interval DEFAULT '1 second',
	backoff_cap interval DEFAULT '1 hour',
	backoff_jitter double precision DEFAULT 0.1,
	timeout interval DEFAULT '0',
	retention interval DEFAULT '1 day')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._check_queue_name(name);
	IF concurrency IS NULL OR external IS NULL OR max_attempts IS NULL
	   OR backoff_base IS NULL OR backoff_cap IS NULL
	   OR backoff_jitter IS NULL OR timeout IS NULL OR retention IS NULL THEN
		RAISE EXCEPTION 'queue settings must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Leave a setting out to get its default.';
	END IF;
	PERFORM atomizer._check_queue_settings(concurrency, max_attempts,
		backoff_base, backoff_cap, backoff_jitter, timeout, retention);
	IF backoff_cap < backoff_base THEN
		RAISE EXCEPTION 'backoff_cap must not be less than backoff_base'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO atomizer.queue AS q (name, concurrency, external, max_attempts,
		backoff_base, backoff_cap, backoff_jitter, timeout, retention)
	VALUES (_create_queue.name, _create_queue.concurrency, _create_queue.external,
		_create_queue.max_attempts, _create_queue.backoff_base,
		_create_queue.backoff_cap, _create_queue.backoff_jitter,
		_create_queue.timeout, _create_queue.retention);
	PERFORM atomizer._queues_changed();
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'queue "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Change its settings with atomizer.alter_queue().';
END
$$;

CREATE OR REPLACE FUNCTION atomizer._alter_queue(
	name text,
	concurrency integer DEFAULT NULL,
	external boolean DEFAULT NULL,
	max_attempts integer DEFAULT NULL,
	backoff_base interval DEFAULT NULL,
	backoff_cap interval DEFAULT NULL,
	backoff_jitter double precision DEFAULT NULL,
	timeout interval DEFAULT NULL,
	retention interval DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q atomizer.queue;
BEGIN
	PERFORM atomizer._check_queue_name(name);
	PERFORM atomizer._check_queue_settings(concurrency, max_attempts,
		backoff_base, backoff_cap, backoff_jitter, timeout, retention);
	SELECT * INTO q FROM atomizer.queue WHERE queue.name = _alter_queue.name
		FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object',
				  HINT = format('Create it with atomizer.create_queue(%L).', name);
	END IF;
	IF COALESCE(backoff_cap, q.backoff_cap) < COALESCE(backoff_base, q.backoff_base) THEN
		RAISE EXCEPTION 'backoff_cap must not be less than backoff_base'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF external IS NOT NULL AND external <> q.external
	   AND EXISTS (SELECT 1 FROM atomizer.job j WHERE j.queue = q.name) THEN
		RAISE EXCEPTION 'cannot change whether queue "%" is external while it has unfinished jobs', name
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Let its jobs finish, or cancel them, first.';
	END IF;
	UPDATE atomizer.queue
	   SET concurrency = COALESCE(_alter_queue.concurrency, q.concurrency),
		   external = COALESCE(_alter_queue.external, q.external),
		   max_attempts = COALESCE(_alter_queue.max_attempts, q.max_attempts),
		   backoff_base = COALESCE(_alter_queue.backoff_base, q.backoff_base),
		   backoff_cap = COALESCE(_alter_queue.backoff_cap, q.backoff_cap),
		   backoff_jitter = COALESCE(_alter_queue.backoff_jitter, q.backoff_jitter),
		   timeout = COALESCE(_alter_queue.timeout, q.timeout),
		   retention = COALESCE(_alter_queue.retention, q.retention)
	 WHERE queue.name = q.name;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(name);
END
$$;

CREATE OR REPLACE FUNCTION atomizer._drop_queue(name text, force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	unfinished bigint;
BEGIN
	PERFORM atomizer._check_queue_name(name);
	IF name = 'default' THEN
		RAISE EXCEPTION 'cannot drop queue "default"'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Queue "default" always exists: enqueue() and schedule() put jobs there when they name no queue.',
				  HINT = 'Pause it with atomizer.pause_queue(''default''), or change its settings with atomizer.alter_queue(''default'', ...).';
	END IF;
	PERFORM 1 FROM atomizer.queue WHERE queue.name = _drop_queue.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	SELECT count(*) INTO unfinished FROM atomizer.job j WHERE j.queue = _drop_queue.name;
	IF unfinished > 0 AND NOT COALESCE(force, false) THEN
		RAISE EXCEPTION 'queue "%" has % unfinished job(s)', name, unfinished
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Wait for them or cancel them, or drop the queue and its unfinished jobs with force => true.';
	END IF;
	/* their dependents in other queues count them as failed (workflows) */
	PERFORM atomizer._jobs_deleted(ARRAY(
		SELECT j.id FROM atomizer.job j WHERE j.queue = _drop_queue.name));
	DELETE FROM atomizer.job_dependency d USING atomizer.job j
	 WHERE d.job_id = j.id AND j.queue = _drop_queue.name;
	DELETE FROM atomizer.job j WHERE j.queue = _drop_queue.name;
	DELETE FROM atomizer.queue WHERE queue.name = _drop_queue.name;
	PERFORM atomizer._queues_changed();
END
$$;

CREATE OR REPLACE FUNCTION atomizer._pause_queue(name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._check_queue_name(name);
	UPDATE atomizer.queue SET paused = true WHERE queue.name = _pause_queue.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM atomizer._queues_changed();
END
$$;

CREATE OR REPLACE FUNCTION atomizer._resume_queue(name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._check_queue_name(name);
	UPDATE atomizer.queue SET paused = false WHERE queue.name = _resume_queue.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(name);
END
$$;

COMMENT ON FUNCTION atomizer._create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) IS
	'The work of atomizer.create_queue(); EXECUTE on it is what create_queue() requires.';
COMMENT ON FUNCTION atomizer._alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) IS
	'The work of atomizer.alter_queue(); EXECUTE on it is what alter_queue() requires.';
COMMENT ON FUNCTION atomizer._drop_queue(text, boolean) IS
	'The work of atomizer.drop_queue(); EXECUTE on it is what drop_queue() requires.';
COMMENT ON FUNCTION atomizer._pause_queue(text) IS
	'The work of atomizer.pause_queue(); EXECUTE on it is what pause_queue() requires.';
COMMENT ON FUNCTION atomizer._resume_queue(text) IS
	'The work of atomizer.resume_queue(); EXECUTE on it is what resume_queue() requires.';

CREATE FUNCTION atomizer.create_queue(
	name text,
	concurrency integer DEFAULT 10,
	external boolean DEFAULT false,
	max_attempts integer DEFAULT 5,
	backoff_base interval DEFAULT '1 second',
	backoff_cap interval DEFAULT '1 hour',
	backoff_jitter double precision DEFAULT 0.1,
	timeout interval DEFAULT '0',
	retention interval DEFAULT '1 day',
	rate_limit integer DEFAULT NULL,
	rate_period interval DEFAULT NULL,
	rate_partition text DEFAULT NULL,
	before_run text DEFAULT NULL,
	on_success text DEFAULT NULL,
	on_failure text DEFAULT NULL,
	on_dead text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
-- no SET search_path: hooks are named with the caller's (see _hook_arg)
AS $$
BEGIN
	PERFORM atomizer._require_admin('create_queue', 'atomizer._create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval)', 'create queues');
	PERFORM atomizer._create_queue(name, concurrency, external, max_attempts, backoff_base, backoff_cap,
		backoff_jitter, timeout, retention);
	PERFORM atomizer._queue_options_given(name, rate_limit, rate_period, rate_partition,
		before_run, on_success, on_failure, on_dead);
END
$$;

COMMENT ON FUNCTION atomizer.create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval, integer, interval, text, text, text, text, text) IS
	'Create a queue with its own concurrency, retry, backoff, timeout (0: none), retention, rate limit and lifecycle hook settings (members of atomizer_admin).';

CREATE FUNCTION atomizer.alter_queue(
	name text,
	concurrency integer DEFAULT NULL,
	external boolean DEFAULT NULL,
	max_attempts integer DEFAULT NULL,
	backoff_base interval DEFAULT NULL,
	backoff_cap interval DEFAULT NULL,
	backoff_jitter double precision DEFAULT NULL,
	timeout interval DEFAULT NULL,
	retention interval DEFAULT NULL,
	rate_limit integer DEFAULT NULL,
	rate_period interval DEFAULT NULL,
	rate_partition text DEFAULT NULL,
	before_run text DEFAULT NULL,
	on_success text DEFAULT NULL,
	on_failure text DEFAULT NULL,
	on_dead text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
-- no SET search_path: hooks are named with the caller's (see _hook_arg)
AS $$
BEGIN
	PERFORM atomizer._require_admin('alter_queue', 'atomizer._alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval)', 'change queues');
	PERFORM atomizer._alter_queue(name, concurrency, external, max_attempts, backoff_base, backoff_cap,
		backoff_jitter, timeout, retention);
	PERFORM atomizer._queue_options_given(name, rate_limit, rate_period, rate_partition,
		before_run, on_success, on_failure, on_dead);
END
$$;

COMMENT ON FUNCTION atomizer.alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval, integer, interval, text, text, text, text, text) IS
	'Change a queue''s settings (members of atomizer_admin); a NULL setting is left as it is (rate_limit => 0 removes the rate limit, an empty string a hook or the rate partition).  Waiting jobs that did not set their own max_attempts or timeout follow the queue''s.';

CREATE FUNCTION atomizer.drop_queue(name text, force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._require_admin('drop_queue', 'atomizer._drop_queue(text, boolean)', 'drop queues');
	PERFORM atomizer._drop_queue(name, force);
END
$$;

COMMENT ON FUNCTION atomizer.drop_queue(text, boolean) IS
	'Drop a queue (members of atomizer_admin); with force => true also its unfinished jobs.  Finished jobs stay in the history until purged.';

CREATE FUNCTION atomizer.pause_queue(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._require_admin('pause_queue', 'atomizer._pause_queue(text)', 'pause queues');
	PERFORM atomizer._pause_queue(name);
END
$$;

COMMENT ON FUNCTION atomizer.pause_queue(text) IS
	'Stop claiming jobs of a queue (members of atomizer_admin); jobs can still be enqueued.';

CREATE FUNCTION atomizer.resume_queue(name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._require_admin('resume_queue', 'atomizer._resume_queue(text)', 'resume queues');
	PERFORM atomizer._resume_queue(name);
END
$$;

COMMENT ON FUNCTION atomizer.resume_queue(text) IS
	'Claim jobs of a paused queue again (members of atomizer_admin).';

GRANT EXECUTE ON FUNCTION atomizer.claim(text, integer, interval, text),
	atomizer.complete(bigint, jsonb, integer),
	atomizer.complete_many(bigint[]),
	atomizer.fail(bigint, text, interval, integer),
	atomizer.heartbeat(bigint, interval, integer),
	atomizer.release(bigint, integer) TO PUBLIC;

/* ------------------------------------------------------------------------
 * What workers and admins may see (issue 12)
 *
 * A member of atomizer_worker sees, in queue_stats, every role's counts
 * for the external queues (the queues it may claim from), so that it can
 * scale on queue depth; the other queues' counts, and all of jobs, stay its
 * own.  Counts and times only: payloads, handlers, owners and ids stay
 * behind row-level security.  Members of atomizer_admin see, in workers,
 * what pg_stat_activity says about each worker (its details need
 * pg_read_all_stats otherwise); other roles see NULL there.  Both come from
 * C functions that check the caller themselves (src/visibility.c).
 * ------------------------------------------------------------------------ */

CREATE FUNCTION atomizer._worker_queue_counts(
	OUT queue text, OUT scheduled bigint, OUT available bigint,
	OUT running bigint, OUT retrying bigint, OUT succeeded bigint,
	OUT cancelled bigint, OUT dead bigint, OUT oldest_available timestamptz)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_worker_queue_counts';

COMMENT ON FUNCTION atomizer._worker_queue_counts() IS
	'For members of atomizer_worker: every role''s job counts per external queue (no rows for other roles).';

CREATE OR REPLACE VIEW atomizer.queue_stats WITH (security_invoker = true) AS
SELECT q.name AS queue,
	   q.paused,
	   q.external,
	   q.concurrency,
	   COALESCE(w.scheduled, pg_catalog.count(j.id) FILTER (WHERE j.state = 'scheduled')) AS scheduled,
	   COALESCE(w.available, pg_catalog.count(j.id) FILTER (WHERE j.state = 'available')) AS available,
	   COALESCE(w.running, pg_catalog.count(j.id) FILTER (WHERE j.state = 'running')) AS running,
	   COALESCE(w.retrying, pg_catalog.count(j.id) FILTER (WHERE j.state = 'retrying')) AS retrying,
	   COALESCE(w.succeeded, pg_catalog.count(j.id) FILTER (WHERE j.state = 'succeeded')) AS succeeded,
	   COALESCE(w.cancelled, pg_catalog.count(j.id) FILTER (WHERE j.state = 'cancelled')) AS cancelled,
	   COALESCE(w.dead, pg_catalog.count(j.id) FILTER (WHERE j.state = 'dead')) AS dead,
	   CASE WHEN w.queue IS NOT NULL THEN w.oldest_available
			ELSE pg_catalog.min(j.run_at) FILTER (WHERE j.state = 'available')
	   END AS oldest_available,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'blocked') AS blocked
  FROM atomizer.queue q
  LEFT JOIN atomizer.jobs j ON j.queue = q.name
  LEFT JOIN atomizer._worker_queue_counts() w ON w.queue = q.name
 GROUP BY q.name, q.paused, q.external, q.concurrency, w.queue, w.scheduled,
		  w.available, w.running, w.retrying, w.succeeded, w.cancelled,
		  w.dead, w.oldest_available;

COMMENT ON VIEW atomizer.queue_stats IS
	'One row per queue with the number of your jobs in each state (for members of atomizer_worker, every role''s jobs in the external queues).';

CREATE FUNCTION atomizer._worker_activity(
	OUT pid integer, OUT xact_start timestamptz, OUT query_start timestamptz,
	OUT activity_state text, OUT wait_event_type text, OUT wait_event text,
	OUT activity text)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_worker_activity';

COMMENT ON FUNCTION atomizer._worker_activity() IS
	'For members of atomizer_admin: pg_stat_activity''s row of each atomizer worker (no rows for other roles).';

CREATE OR REPLACE VIEW atomizer.workers WITH (security_invoker = true) AS
SELECT w.pid, d.datname AS database, w.queue, w.state,
	   CASE WHEN (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE'))
				 OR (d.datname = pg_catalog.current_database()
					 AND EXISTS (SELECT FROM atomizer.job j WHERE j.id = w.job_id))
			THEN w.job_id END AS job_id,
	   w.jobs_succeeded, w.jobs_failed, w.started_at,
	   a.xact_start, a.query_start, a.activity_state, a.wait_event_type,
	   a.wait_event, a.activity
  FROM atomizer._workers() w
  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.database
  LEFT JOIN atomizer._worker_activity() a ON a.pid = w.pid;

COMMENT ON VIEW atomizer.workers IS
	'atomizer''s worker processes (all databases): queue, state, counters, the running job''s id if the job is yours; for members of atomizer_admin also pg_stat_activity''s transaction and statement start, wait event and activity.';

/*
 * Metrics: what finished, per queue, counted in shared memory at each commit
 * (src/stats.c), so that reading them costs O(queues), never a count of the
 * job tables; in Prometheus' names.  Every role's jobs are counted, so only
 * atomizer_admin, atomizer_worker and pg_monitor may read them (the C
 * function checks, with a hint).
 */
CREATE FUNCTION atomizer._metrics(
	OUT metric text, OUT queue text, OUT outcome text, OUT le text,
	OUT value double precision)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_metrics';

CREATE VIEW atomizer.metrics WITH (security_invoker = true) AS
SELECT m.metric AS name,
	   pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
		   'queue', m.queue, 'outcome', m.outcome, 'le', m.le)) AS labels,
	   m.value
  FROM atomizer._metrics() m
UNION ALL
SELECT 'atomizer_workers',
	   pg_catalog.jsonb_build_object('queue', w.queue, 'state', w.state),
	   pg_catalog.count(*)::double precision
  FROM atomizer._workers() w
  JOIN pg_catalog.pg_database d ON d.oid = w.database
 WHERE d.datname = pg_catalog.current_database()
 GROUP BY w.queue, w.state
UNION ALL
SELECT 'atomizer_cron_fires_total', pg_catalog.jsonb_build_object('queue', s.queue),
	   pg_catalog.sum(s.fires)::double precision
  FROM atomizer.schedule s GROUP BY s.queue
UNION ALL
SELECT 'atomizer_cron_skips_total', pg_catalog.jsonb_build_object('queue', s.queue),
	   pg_catalog.sum(s.skipped)::double precision
  FROM atomizer.schedule s GROUP BY s.queue;

COMMENT ON VIEW atomizer.metrics IS
	'Prometheus-style figures since the server started: finished jobs per queue and outcome, wait and run time histograms, workers, cron fires and skips (atomizer_admin, atomizer_worker, pg_monitor).';

GRANT SELECT ON atomizer.metrics TO PUBLIC;

/*
 * enqueue_many takes idempotency keys, one per payload (NULL for none), as
 * enqueue does: a key an unfinished job of the same role and queue already
 * has makes no job, and that job's id is returned in its place (with a
 * NOTICE saying how many were not enqueued).  A new parameter is a new
 * signature: the function is made again.
 */
DROP FUNCTION atomizer.enqueue_many(text, jsonb[], text, timestamptz, integer, integer, interval);
CREATE FUNCTION atomizer.enqueue_many(
	handler text,
	payloads jsonb[],
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL,
	idempotency_keys text[] DEFAULT NULL,
	tags text[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue_many';

COMMENT ON FUNCTION atomizer.enqueue_many(text, jsonb[], text, timestamptz, integer, integer, interval, text[], text[]) IS
	'Enqueue one job per payload with one statement, all with the given tags; returns the ids in the order of payloads (for a payload whose idempotency key an unfinished job of yours in the queue has, that job''s id).';

/*
 * Control over a job from its handler: current_job() is the running job;
 * snooze(delay) ends the attempt without counting it and runs the job again
 * after delay; discard(reason) ends it dead now.  For external workers:
 * snooze(job_id, delay, attempt), and fail(..., retry => false) for a
 * failure that is final.  (fail gets a new parameter: a new signature, so
 * it is made again, with the grant it had.)
 */
CREATE FUNCTION atomizer.current_job(
	OUT id bigint, OUT queue text, OUT handler text, OUT attempt integer,
	OUT max_attempts integer, OUT owner text, OUT created_at timestamptz,
	OUT run_at timestamptz, OUT schedule text, OUT tags text[])
RETURNS record
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'atomizer_current_job';

COMMENT ON FUNCTION atomizer.current_job() IS
	'In a handler: the job it runs (id, queue, handler, attempt, max_attempts, owner, created_at, run_at, schedule, tags).';

CREATE FUNCTION atomizer.snooze(delay interval)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_snooze';

COMMENT ON FUNCTION atomizer.snooze(interval) IS
	'In a handler: end this attempt without counting it; the job runs again after delay (the handler''s writes are rolled back).';

CREATE FUNCTION atomizer.discard(reason text)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_discard';

COMMENT ON FUNCTION atomizer.discard(text) IS
	'In a handler: the job is dead now, without retries; its last error is "discarded: <reason>" (SQLSTATE AZ002).';

CREATE FUNCTION atomizer.snooze(job_id bigint, delay interval,
								attempt integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_snooze_job';

COMMENT ON FUNCTION atomizer.snooze(bigint, interval, integer) IS
	'External workers: give a leased job back, to run again after delay, this attempt not counted; returns when it is due.';

DROP FUNCTION atomizer.fail(bigint, text, interval, integer);
CREATE FUNCTION atomizer.fail(job_id bigint, error text,
							  retry_in interval DEFAULT NULL,
							  attempt integer DEFAULT NULL,
							  retry boolean DEFAULT true)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_fail';

COMMENT ON FUNCTION atomizer.fail(bigint, text, interval, integer, boolean) IS
	'External workers: a leased job failed; retried with backoff (or after retry_in) until max_attempts, or dead now with retry => false; ERROR if the lease (of that attempt) was lost.';

GRANT EXECUTE ON FUNCTION atomizer.fail(bigint, text, interval, integer, boolean),
	atomizer.snooze(bigint, interval, integer) TO PUBLIC;

/*
 * Waiting for results: wait() returns a job's outcome as soon as the commit
 * that finished it happens (a condition variable, no polling), or its state
 * when the timeout passes; wait_all() the same for many.  Outside
 * transaction blocks only, never in a handler.
 */
CREATE FUNCTION atomizer.wait(job_id bigint, timeout interval DEFAULT '30 seconds',
							  OUT state text, OUT result jsonb, OUT last_error text)
RETURNS record
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_wait';

COMMENT ON FUNCTION atomizer.wait(bigint, interval) IS
	'Wait until one of your jobs has finished (or timeout passed); its state, result and last error.';

CREATE FUNCTION atomizer.wait_all(job_ids bigint[], timeout interval DEFAULT '30 seconds')
RETURNS TABLE (job_id bigint, state text, result jsonb, last_error text)
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_wait_all';

COMMENT ON FUNCTION atomizer.wait_all(bigint[], interval) IS
	'Wait until all of these jobs of yours have finished (or timeout passed); one row per job.';

/*
 * Uniqueness windows: enqueue(…, idempotency_key, unique_for) makes at most
 * one job with that key (same role and queue) per unique_for, counted from
 * the enqueue that made it, finished or not.  Each key's window is a row
 * here (the job store takes it with INSERT … ON CONFLICT, and the scheduler
 * prunes passed ones).  Rows are read like the jobs: each role its own,
 * atomizer_admin and the database owner all.
 */
CREATE TABLE atomizer.job_unique (
	queue		text NOT NULL,
	owner		name NOT NULL,
	key			text NOT NULL,
	job_id		bigint,
	until		timestamptz NOT NULL,
	PRIMARY KEY (queue, owner, key)
);

COMMENT ON TABLE atomizer.job_unique IS
	'The unique_for windows of idempotency keys; written by enqueue(), pruned by the scheduler.';

REVOKE ALL ON atomizer.job_unique FROM PUBLIC;
GRANT SELECT ON atomizer.job_unique TO PUBLIC;
ALTER TABLE atomizer.job_unique ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_keys ON atomizer.job_unique FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));
CREATE POLICY database_owner_reads ON atomizer.job_unique FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));
SELECT pg_catalog.pg_extension_config_dump('atomizer.job_unique', '');

DROP FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text);
CREATE FUNCTION atomizer.enqueue(
	handler text,
	payload jsonb DEFAULT '{}',
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL,
	idempotency_key text DEFAULT NULL,
	unique_for interval DEFAULT NULL,
	tags text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue';

COMMENT ON FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text, interval, text[]) IS
	'Enqueue one job in the current transaction; returns its id (or, for an idempotency_key the same role repeats in the same queue, the id of its unfinished job that has it; with unique_for, of the job it made within that window, finished or not).';

/*
 * Tags: enqueue(…, tags) and enqueue_many(…, tags) label jobs; the views show
 * them and filters use them (tags @> ARRAY['x'], served by partial GIN
 * indexes that untagged jobs cost nothing in).
 */
ALTER TABLE atomizer.job ADD COLUMN tags text[];
ALTER TABLE atomizer.job_history ADD COLUMN tags text[];
CREATE INDEX job_tags_idx ON atomizer.job USING gin (tags) WHERE tags IS NOT NULL;
CREATE INDEX job_history_tags_idx ON atomizer.job_history USING gin (tags)
	WHERE tags IS NOT NULL;

/* atomizer.jobs shows them: see the view's last definition, under Workflows */

CREATE OR REPLACE VIEW atomizer.dead_jobs WITH (security_invoker = true) AS
SELECT h.id, h.queue, h.handler, h.payload, h.priority::integer AS priority,
	   h.attempt, h.owner, h.created_at, h.finished_at, h.last_error, h.tags
  FROM atomizer.job_history h
 WHERE h.state = 'dead';

/* ------------------------------------------------------------------------
 * Limits and lifecycle hooks (issue 14)
 *
 * A queue's rate limit: at most rate_limit job starts (claims) in any
 * window of rate_period, over every worker, internal and external; with
 * rate_partition, per value of that top-level payload field.  A handler's
 * concurrency limit (atomizer.handler_limit, set by limit_handler()): at
 * most that many of its jobs running at once.  Both are enforced by the
 * claim (src/limits.c): claims of a queue with limits take one lock per
 * queue, so they are exact.  A job held back by a handler limit waits in
 * the stored state 'held' (the views call it available) until a claim
 * finds room; a job held back by a rate limit is put off (its run_at
 * moved) to when its partition has room.  Neither stays in the claim's
 * way, so the jobs behind them run.
 *
 * Hooks: functions f(job jsonb) named in the queue's settings, run in the
 * job's own transaction (src/hooks.c).  Stored as text (a regprocedure
 * column would stop pg_upgrade), schema-qualified, resolved when run.
 * ------------------------------------------------------------------------ */

ALTER TABLE atomizer.queue
	ADD COLUMN rate_limit integer CHECK (rate_limit > 0),
	ADD COLUMN rate_period interval CHECK (rate_period > interval '0'),
	ADD COLUMN rate_partition text,
	ADD COLUMN before_run text,
	ADD COLUMN on_success text,
	ADD COLUMN on_failure text,
	ADD COLUMN on_dead text,
	ADD CONSTRAINT queue_rate_check
		CHECK ((rate_limit IS NULL) = (rate_period IS NULL)
			   AND (rate_partition IS NULL OR rate_limit IS NOT NULL));

COMMENT ON COLUMN atomizer.queue.rate_limit IS
	'At most this many job starts in any window of rate_period (NULL: no rate limit).';
COMMENT ON COLUMN atomizer.queue.rate_partition IS
	'A top-level payload field: the rate limit holds per value of it (NULL: for the whole queue).';
COMMENT ON COLUMN atomizer.queue.before_run IS
	'A function f(job jsonb) run before each attempt''s handler, in its transaction; its error fails the attempt.';

CREATE TABLE atomizer.handler_limit (
	queue			text NOT NULL REFERENCES atomizer.queue (name)
					ON DELETE CASCADE ON UPDATE CASCADE,
	handler			text NOT NULL,
	concurrency		integer NOT NULL CHECK (concurrency > 0),
	PRIMARY KEY (queue, handler)
);

COMMENT ON TABLE atomizer.handler_limit IS
	'At most concurrency jobs of a handler (or an external queue''s task) running at once in a queue; set with atomizer.limit_handler().';

SELECT pg_catalog.pg_extension_config_dump('atomizer.handler_limit', '');
GRANT SELECT ON atomizer.handler_limit TO PUBLIC;

/*
 * The starts of the last rate_period, per queue and partition: one row per
 * claim and partition (n jobs), so at most rate_limit rows per partition
 * are in a window.  Pruned by the scheduler; not dumped (a restored
 * database starts with an empty window).
 */
CREATE TABLE atomizer.rate_start (
	queue			text NOT NULL,
	part			text NOT NULL,
	started_at		timestamptz NOT NULL,
	n				integer NOT NULL
);

CREATE INDEX rate_start_idx ON atomizer.rate_start (queue, part, started_at);

/* The last start time promised to a put-off job, per queue and partition. */
CREATE TABLE atomizer.rate_reserve (
	queue			text NOT NULL,
	part			text NOT NULL,
	reserved_until	timestamptz NOT NULL,
	PRIMARY KEY (queue, part)
);

REVOKE ALL ON atomizer.rate_start, atomizer.rate_reserve FROM PUBLIC;

/* Jobs held back by a handler limit, in claim order per handler. */
CREATE INDEX job_held_idx ON atomizer.job (queue, handler, priority, run_at, id)
	WHERE state = 'held';

/*
 * _hook_arg: a hook's name as given (f, schema.f, or f(jsonb)) resolved
 * with the caller's search_path, and returned schema-qualified; '' (no
 * hook) and NULL (unchanged) pass through.  No SET search_path: it must
 * see the caller's (it is not SECURITY DEFINER, and names every object it
 * uses with its schema).
 */
CREATE FUNCTION atomizer._hook_arg(setting text, hook text)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	fn regprocedure;
	kind "char";
	retset boolean;
	qualified text;
BEGIN
	IF hook IS NULL OR hook = '' THEN
		RETURN hook;
	END IF;
	IF pg_catalog.strpos(hook, '(') > 0 THEN
		fn := pg_catalog.to_regprocedure(hook);
		-- (proargtypes is an oidvector: its subscripts start at 0)
		IF fn IS NOT NULL
		   AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
						   WHERE p.oid OPERATOR(pg_catalog.=) fn
							 AND p.pronargs OPERATOR(pg_catalog.=) 1
							 AND p.proargtypes[0] OPERATOR(pg_catalog.=) 'pg_catalog.jsonb'::pg_catalog.regtype) THEN
			RAISE EXCEPTION '% must take one argument of type jsonb', setting
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = pg_catalog.format('%s was given.', fn),
					  HINT = 'A hook is a function f(job jsonb).';
		END IF;
	ELSE
		fn := pg_catalog.to_regprocedure(hook OPERATOR(pg_catalog.||) '(pg_catalog.jsonb)');
	END IF;
	IF fn IS NULL THEN
		RAISE EXCEPTION 'function %(jsonb) does not exist', pg_catalog.regexp_replace(hook, '\(.*$', '')
			USING ERRCODE = 'undefined_function',
				  DETAIL = pg_catalog.format('%s names it as the queue''s %s hook.', setting, setting),
				  HINT = 'A hook is a function f(job jsonb); create it first, or name it with its schema.';
	END IF;
	SELECT p.prokind, p.proretset, pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
		   OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.proname)
		   OPERATOR(pg_catalog.||) '(jsonb)'
	  INTO kind, retset, qualified
	  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
	 WHERE p.oid OPERATOR(pg_catalog.=) fn;
	IF kind OPERATOR(pg_catalog.<>) 'f' THEN
		RAISE EXCEPTION '% must be a function', setting
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = pg_catalog.format('%s is not a plain function.', fn),
				  HINT = 'A hook is a function f(job jsonb), not a procedure or an aggregate.';
	END IF;
	IF retset THEN
		RAISE EXCEPTION '% must not return a set', setting
			USING ERRCODE = 'invalid_function_definition',
				  DETAIL = pg_catalog.format('%s returns a set.', fn),
				  HINT = 'A hook returns one value (or void); what it returns is ignored.';
	END IF;
	RETURN qualified;
END
$$;

COMMENT ON FUNCTION atomizer._hook_arg(text, text) IS
	'A hook function''s name resolved with the caller''s search_path, schema-qualified.';

/*
 * _queue_options_given: what create_queue() and alter_queue() do with the
 * settings of issue 14, when any is given: resolve the hooks with the
 * caller's search_path (so, like _hook_arg, no SET search_path) and hand
 * them to _queue_options.
 */
CREATE FUNCTION atomizer._queue_options_given(
	name text, rate_limit integer, rate_period interval, rate_partition text,
	before_run text, on_success text, on_failure text, on_dead text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
	IF rate_limit IS NOT NULL OR rate_period IS NOT NULL OR rate_partition IS NOT NULL
	   OR before_run IS NOT NULL OR on_success IS NOT NULL OR on_failure IS NOT NULL
	   OR on_dead IS NOT NULL THEN
		PERFORM atomizer._queue_options(name, rate_limit, rate_period, rate_partition,
			atomizer._hook_arg('before_run', before_run), atomizer._hook_arg('on_success', on_success),
			atomizer._hook_arg('on_failure', on_failure), atomizer._hook_arg('on_dead', on_dead));
	END IF;
END
$$;

COMMENT ON FUNCTION atomizer._queue_options_given(text, integer, interval, text, text, text, text, text) IS
	'The rate limit and hook settings of create_queue() and alter_queue(), when any is given.';

/*
 * _queue_options: the settings of issue 14, after create_queue() or
 * alter_queue() did the others (hooks already resolved by _hook_arg).
 * NULL leaves a setting as it is; rate_limit => 0 removes the rate limit,
 * '' a hook or the rate partition.
 */
CREATE FUNCTION atomizer._queue_options(
	name text, rate_limit integer, rate_period interval, rate_partition text,
	before_run text, on_success text, on_failure text, on_dead text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	q atomizer.queue;
	new_limit integer;
	new_period interval;
	new_part text;
BEGIN
	SELECT * INTO q FROM atomizer.queue WHERE queue.name = _queue_options.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	IF rate_limit < 0 THEN
		RAISE EXCEPTION 'rate_limit must not be negative'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', rate_limit),
				  HINT = 'Give the number of job starts allowed per rate_period, or 0 to remove the rate limit.';
	END IF;
	IF rate_period <= interval '0' OR rate_period > interval '1000 years' THEN
		RAISE EXCEPTION 'rate_period must be positive and at most 1000 years'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', rate_period);
	END IF;
	IF rate_limit = 0 THEN
		IF rate_period IS NOT NULL OR COALESCE(rate_partition, '') <> '' THEN
			RAISE EXCEPTION 'rate_limit => 0 removes the rate limit, and cannot go with rate_period or rate_partition'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		new_limit := NULL;
		new_period := NULL;
		new_part := NULL;
	ELSE
		new_limit := COALESCE(rate_limit, q.rate_limit);
		new_period := COALESCE(rate_period, q.rate_period);
		new_part := CASE WHEN rate_partition IS NULL THEN q.rate_partition
						 ELSE NULLIF(rate_partition, '') END;
		IF new_limit IS NULL AND (rate_period IS NOT NULL OR COALESCE(rate_partition, '') <> '') THEN
			RAISE EXCEPTION 'queue "%" has no rate limit', name
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'rate_period and rate_partition only go with a rate limit.',
					  HINT = 'Give rate_limit too, e.g. rate_limit => 10, rate_period => ''1 second''.';
		END IF;
		IF new_limit IS NOT NULL AND new_period IS NULL THEN
			RAISE EXCEPTION 'rate_limit needs rate_period'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give the window the limit counts starts in, e.g. rate_period => ''1 minute''.';
		END IF;
		IF octet_length(new_part) >= 64 THEN
			RAISE EXCEPTION 'rate_partition must be shorter than 64 bytes'
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'It names a top-level field of the payload, e.g. ''customer_id''.';
		END IF;
	END IF;
	UPDATE atomizer.queue
	   SET rate_limit = new_limit,
		   rate_period = new_period,
		   rate_partition = new_part,
		   before_run = CASE WHEN _queue_options.before_run IS NULL THEN q.before_run
							 ELSE NULLIF(_queue_options.before_run, '') END,
		   on_success = CASE WHEN _queue_options.on_success IS NULL THEN q.on_success
							 ELSE NULLIF(_queue_options.on_success, '') END,
		   on_failure = CASE WHEN _queue_options.on_failure IS NULL THEN q.on_failure
							 ELSE NULLIF(_queue_options.on_failure, '') END,
		   on_dead = CASE WHEN _queue_options.on_dead IS NULL THEN q.on_dead
						  ELSE NULLIF(_queue_options.on_dead, '') END
	 WHERE queue.name = q.name;
	IF new_limit IS DISTINCT FROM q.rate_limit OR new_period IS DISTINCT FROM q.rate_period
	   OR new_part IS DISTINCT FROM q.rate_partition THEN
		-- a new window: the starts counted so far were counted under other rules
		DELETE FROM atomizer.rate_reserve r WHERE r.queue = q.name;
		IF new_part IS DISTINCT FROM q.rate_partition THEN
			DELETE FROM atomizer.rate_start r WHERE r.queue = q.name;
		END IF;
	END IF;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(name);
END
$$;

REVOKE ALL ON FUNCTION atomizer._queue_options(text, integer, interval, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atomizer._queue_options(text, integer, interval, text, text, text, text, text) TO atomizer_admin;

COMMENT ON FUNCTION atomizer._queue_options(text, integer, interval, text, text, text, text, text) IS
	'The work of create_queue() and alter_queue() for the rate limit and the hooks.';

CREATE FUNCTION atomizer._release_held(queue text, handler text)
RETURNS bigint
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_release_held';

REVOKE ALL ON FUNCTION atomizer._release_held(text, text) FROM PUBLIC;

COMMENT ON FUNCTION atomizer._release_held(text, text) IS
	'Make the jobs a handler limit held back available again (all handlers of the queue when handler is NULL).';

CREATE FUNCTION atomizer._limit_handler(queue text, handler text, concurrency integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	old integer;
BEGIN
	PERFORM atomizer._check_queue_name(queue);
	PERFORM 1 FROM atomizer.queue q WHERE q.name = _limit_handler.queue FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', queue
			USING ERRCODE = 'undefined_object',
				  HINT = format('Create it with atomizer.create_queue(%L).', queue);
	END IF;
	IF handler IS NULL OR handler = '' THEN
		RAISE EXCEPTION 'handler must not be null or empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Name the handler function (internal queues) or the task (external queues).';
	END IF;
	IF concurrency <= 0 THEN
		RAISE EXCEPTION 'concurrency must be positive'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The value given was %s.', concurrency),
				  HINT = 'Give NULL to remove the limit.';
	END IF;
	SELECT l.concurrency INTO old FROM atomizer.handler_limit l
	 WHERE l.queue = _limit_handler.queue AND l.handler = _limit_handler.handler;
	IF concurrency IS NULL THEN
		DELETE FROM atomizer.handler_limit l
		 WHERE l.queue = _limit_handler.queue AND l.handler = _limit_handler.handler;
	ELSE
		INSERT INTO atomizer.handler_limit AS l (queue, handler, concurrency)
		VALUES (_limit_handler.queue, _limit_handler.handler, _limit_handler.concurrency)
		ON CONFLICT ON CONSTRAINT handler_limit_pkey DO UPDATE SET concurrency = excluded.concurrency;
	END IF;
	IF concurrency IS NULL OR concurrency > old THEN
		-- room for more: the held jobs go back to the claim, which holds again what it must
		PERFORM atomizer._release_held(queue, handler);
	END IF;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(queue);
END
$$;

REVOKE ALL ON FUNCTION atomizer._limit_handler(text, text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atomizer._limit_handler(text, text, integer) TO atomizer_admin;

COMMENT ON FUNCTION atomizer._limit_handler(text, text, integer) IS
	'The work of atomizer.limit_handler(); EXECUTE on it is what limit_handler() requires.';

/*
 * limit_handler: an internal queue's handler is named as enqueue() names
 * it (resolved with the caller's search_path, stored schema-qualified as
 * jobs store it); an external queue's task as given.  No SET search_path,
 * for the same reason as _hook_arg.
 */
CREATE FUNCTION atomizer.limit_handler(queue text, handler text, concurrency integer)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	fn regprocedure;
	stored text := handler;
BEGIN
	PERFORM atomizer._require_admin('limit_handler', 'atomizer._limit_handler(text, text, integer)', 'limit handlers');
	IF handler IS NOT NULL AND handler OPERATOR(pg_catalog.<>) ''
	   AND EXISTS (SELECT FROM atomizer.queue q
				   WHERE q.name OPERATOR(pg_catalog.=) limit_handler.queue AND NOT q.external) THEN
		fn := pg_catalog.to_regprocedure(handler OPERATOR(pg_catalog.||) '(pg_catalog.jsonb)');
		IF fn IS NULL THEN
			RAISE EXCEPTION 'function %(jsonb) does not exist', handler
				USING ERRCODE = 'undefined_function',
					  HINT = 'Name the handler as enqueue() does: a function f(payload jsonb), with its schema if it is not on your search_path.';
		END IF;
		SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.'
			   OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.proname)
		  INTO stored
		  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
		 WHERE p.oid OPERATOR(pg_catalog.=) fn;
	END IF;
	PERFORM atomizer._limit_handler(queue, stored, concurrency);
END
$$;

COMMENT ON FUNCTION atomizer.limit_handler(text, text, integer) IS
	'At most concurrency jobs of this handler (or task) running at once in the queue, over all workers; NULL removes the limit (members of atomizer_admin).';

/* The hooks' settings, as src/hooks.c runs them (README: Lifecycle hooks). */
COMMENT ON COLUMN atomizer.queue.on_success IS
	'A function f(job jsonb) run after each successful handler, in its subtransaction (external queues: in complete()); its error fails the attempt.';
COMMENT ON COLUMN atomizer.queue.on_failure IS
	'A function f(job jsonb) run after a failed attempt that will be retried, in the transaction that records it; its error is logged and recorded in job_errors only.';
COMMENT ON COLUMN atomizer.queue.on_dead IS
	'A function f(job jsonb) run when a job ends dead, in the transaction that records it; its error is logged and recorded in job_errors only.';

/* ---- Dashboard rollups and gauges (issue 13) ---- */

/*
 * What the dashboard's overview and /metrics read, so that a refresh costs
 * O(queues), never a count of the job tables (src/rollup.c, src/stats.c):
 *
 * - atomizer.stats_minute: once a minute the scheduler writes what the
 *   shared counters added, per queue (jobs succeeded, attempts failed, jobs
 *   dead and cancelled, the wait and run histograms: ATOMIZER_STATS_BUCKETS
 *   counts each, not cumulative, with the bounds of atomizer.metrics' le
 *   labels, and their sums in seconds), one row per queue and minute with
 *   activity, kept 8 days, and the same per hour in atomizer.stats_hour.  The
 *   minute not yet written is in shared memory, atomizer._stats_unflushed(),
 *   and lost if the server crashes;
 * - atomizer._gauges(): the scheduler's last sample of the unfinished jobs
 *   per queue and state (every second at most, and at most 2% of its time).
 *
 * Both count every role's jobs: only roles that may read atomizer.metrics
 * (atomizer_admin, atomizer_worker, pg_monitor) see them; others get no rows.
 */
CREATE FUNCTION atomizer._metrics_visible()
RETURNS boolean
LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'atomizer_metrics_visible';

COMMENT ON FUNCTION atomizer._metrics_visible() IS
	'Whether you may read atomizer''s shared figures (atomizer.metrics, atomizer.stats_minute): members of atomizer_admin, atomizer_worker and pg_monitor.';

CREATE TABLE atomizer.stats_minute (
	minute			timestamptz NOT NULL,
	queue			text NOT NULL,
	succeeded		bigint NOT NULL,
	failed			bigint NOT NULL,
	dead			bigint NOT NULL,
	cancelled		bigint NOT NULL,
	wait_buckets	bigint[] NOT NULL,
	wait_sum		double precision NOT NULL,
	run_buckets		bigint[] NOT NULL,
	run_sum			double precision NOT NULL,
	PRIMARY KEY (minute, queue)
);

COMMENT ON TABLE atomizer.stats_minute IS
	'Finished work per queue and minute, written by the scheduler from the shared counters and kept 8 days (members of atomizer_admin, atomizer_worker and pg_monitor see the rows).';

REVOKE ALL ON atomizer.stats_minute FROM PUBLIC;
GRANT SELECT ON atomizer.stats_minute TO PUBLIC;
ALTER TABLE atomizer.stats_minute ENABLE ROW LEVEL SECURITY;
CREATE POLICY metrics_readers ON atomizer.stats_minute FOR SELECT
	USING ((SELECT atomizer._metrics_visible()));

/* the same per hour, so that a day's figures add 24 rows per queue, not 1,440 */
CREATE TABLE atomizer.stats_hour (LIKE atomizer.stats_minute);
ALTER TABLE atomizer.stats_hour RENAME COLUMN minute TO hour;
ALTER TABLE atomizer.stats_hour ADD PRIMARY KEY (hour, queue);

COMMENT ON TABLE atomizer.stats_hour IS
	'Finished work per queue and hour (the sums of atomizer.stats_minute), kept 8 days (members of atomizer_admin, atomizer_worker and pg_monitor see the rows).';

REVOKE ALL ON atomizer.stats_hour FROM PUBLIC;
GRANT SELECT ON atomizer.stats_hour TO PUBLIC;
ALTER TABLE atomizer.stats_hour ENABLE ROW LEVEL SECURITY;
CREATE POLICY metrics_readers ON atomizer.stats_hour FOR SELECT
	USING ((SELECT atomizer._metrics_visible()));

CREATE FUNCTION atomizer._gauges(
	OUT queue text, OUT scheduled bigint, OUT available bigint,
	OUT running bigint, OUT retrying bigint,
	OUT oldest_available timestamptz, OUT sampled_at timestamptz,
	OUT blocked bigint)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_gauges';

COMMENT ON FUNCTION atomizer._gauges() IS
	'The scheduler''s last sample of every role''s unfinished jobs per queue and state (no rows for roles that may not read atomizer.metrics).';

CREATE FUNCTION atomizer._stats_unflushed(
	OUT queue text, OUT succeeded bigint, OUT failed bigint, OUT dead bigint,
	OUT cancelled bigint, OUT wait_buckets bigint[],
	OUT wait_sum double precision, OUT run_buckets bigint[],
	OUT run_sum double precision)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_stats_unflushed';

COMMENT ON FUNCTION atomizer._stats_unflushed() IS
	'What finished since the scheduler''s last rollup into atomizer.stats_minute, per queue (no rows for roles that may not read atomizer.metrics).';

CREATE FUNCTION atomizer._bucket_add(a bigint[], b bigint[])
RETURNS bigint[]
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_bucket_add';

COMMENT ON FUNCTION atomizer._bucket_add(bigint[], bigint[]) IS
	'Two histograms of atomizer.stats_minute added bucket by bucket.';

CREATE FUNCTION atomizer._buckets_accum(internal, bigint[])
RETURNS internal
LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_buckets_accum';

CREATE FUNCTION atomizer._buckets_final(internal)
RETURNS bigint[]
LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_buckets_final';

CREATE AGGREGATE atomizer._sum_buckets(bigint[]) (
	SFUNC = atomizer._buckets_accum,
	STYPE = internal,
	SSPACE = 120,
	FINALFUNC = atomizer._buckets_final
);

COMMENT ON FUNCTION atomizer._buckets_accum(internal, bigint[]) IS
	'The transition function of atomizer._sum_buckets().';
COMMENT ON FUNCTION atomizer._buckets_final(internal) IS
	'The final function of atomizer._sum_buckets().';
COMMENT ON AGGREGATE atomizer._sum_buckets(bigint[]) IS
	'The histograms of atomizer.stats_minute rows added bucket by bucket.';

CREATE FUNCTION atomizer._histogram_quantile(buckets bigint[], q double precision)
RETURNS double precision
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_histogram_quantile';

COMMENT ON FUNCTION atomizer._histogram_quantile(bigint[], double precision) IS
	'The q-quantile (0 to 1) in seconds of a wait or run histogram of atomizer.stats_minute, estimated as Prometheus'' histogram_quantile() does.';

/*
 * atomizer.metrics gains the sampled gauges: atomizer_jobs{queue,state} for
 * the unfinished states and atomizer_oldest_available_seconds{queue}.
 */
CREATE OR REPLACE VIEW atomizer.metrics WITH (security_invoker = true) AS
SELECT m.metric AS name,
	   pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
		   'queue', m.queue, 'outcome', m.outcome, 'le', m.le)) AS labels,
	   m.value
  FROM atomizer._metrics() m
UNION ALL
SELECT 'atomizer_workers',
	   pg_catalog.jsonb_build_object('queue', w.queue, 'state', w.state),
	   pg_catalog.count(*)::double precision
  FROM atomizer._workers() w
  JOIN pg_catalog.pg_database d ON d.oid = w.database
 WHERE d.datname = pg_catalog.current_database()
 GROUP BY w.queue, w.state
UNION ALL
SELECT 'atomizer_cron_fires_total', pg_catalog.jsonb_build_object('queue', s.queue),
	   pg_catalog.sum(s.fires)::double precision
  FROM atomizer.schedule s GROUP BY s.queue
UNION ALL
SELECT 'atomizer_cron_skips_total', pg_catalog.jsonb_build_object('queue', s.queue),
	   pg_catalog.sum(s.skipped)::double precision
  FROM atomizer.schedule s GROUP BY s.queue
UNION ALL
SELECT 'atomizer_jobs',
	   pg_catalog.jsonb_build_object('queue', q.name, 'state', x.state),
	   COALESCE(x.n, 0)::double precision
  FROM atomizer.queue q
  LEFT JOIN atomizer._gauges() g ON g.queue = q.name
 CROSS JOIN LATERAL (VALUES ('scheduled', g.scheduled), ('available', g.available),
							('running', g.running), ('retrying', g.retrying),
							('blocked', g.blocked)) x(state, n)
UNION ALL
SELECT 'atomizer_oldest_available_seconds',
	   pg_catalog.jsonb_build_object('queue', q.name),
	   COALESCE(pg_catalog.date_part('epoch', pg_catalog.now() - g.oldest_available), 0)::double precision
  FROM atomizer.queue q
  LEFT JOIN atomizer._gauges() g ON g.queue = q.name;

COMMENT ON VIEW atomizer.metrics IS
	'Prometheus-style figures: finished jobs per queue and outcome and the wait and run time histograms since the server started, unfinished jobs per queue and state and the oldest available job''s age (sampled by the scheduler), workers, cron fires and skips (atomizer_admin, atomizer_worker, pg_monitor).';

CREATE FUNCTION atomizer.cron_describe(spec text)
RETURNS text
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_cron_describe_sql';

COMMENT ON FUNCTION atomizer.cron_describe(text) IS
	'A schedule''s spec (cron expression or interval) in plain words, e.g. ''every 5 minutes'' or ''at 03:00 on Monday''; wall-clock times in the schedule''s time zone.';

/* the schedules page's recent fires of a schedule, without a history scan */
CREATE INDEX job_history_schedule_idx ON atomizer.job_history (schedule_id, id)
	WHERE schedule_id IS NOT NULL;

/* ------------------------------------------------------------------------
 * Workflows (issue 15): jobs that wait for other jobs
 *
 * enqueue(…, depends_on, on_dependency_failure) makes a job that waits, in
 * the stored state 'blocked', until its dependencies have finished.  Its
 * edges are rows of atomizer.job_dependency, written with the job; the
 * number of its dependencies not yet finished is job.blockers.  The
 * transaction that finishes a job's last dependency makes it available (or
 * scheduled, by its run_at) at its commit: src/workflow.c does it just
 * before the commit, for every job the transaction finished, children in
 * id order.  A dependency that ends dead or cancelled cancels the jobs
 * with on_dependency_failure 'cancel' (and theirs, transitively; the
 * history's cancelled_by names the dependency), and counts as finished for
 * those with 'run'.  An enqueue locks its dependencies (FOR KEY SHARE), so
 * a dependency cannot finish unseen while its dependent is being made.
 * ------------------------------------------------------------------------ */
ALTER TABLE atomizer.job ADD COLUMN blockers integer,
	ADD COLUMN on_dependency_failure text;
ALTER TABLE atomizer.job_history ADD COLUMN on_dependency_failure text,
	ADD COLUMN cancelled_by bigint;

CREATE TABLE atomizer.job_dependency (
	job_id		bigint NOT NULL,
	depends_on	bigint NOT NULL,
	owner		name NOT NULL,
	PRIMARY KEY (job_id, depends_on)
);

/* a finished job's dependents, for their release */
CREATE INDEX job_dependency_depends_on_idx ON atomizer.job_dependency (depends_on);

/* the jobs a failed job cancelled, for retry() */
CREATE INDEX job_history_cancelled_by_idx ON atomizer.job_history (cancelled_by)
	WHERE cancelled_by IS NOT NULL;

COMMENT ON TABLE atomizer.job_dependency IS
	'Which job waits for which (written by enqueue(…, depends_on); a dependent''s rows go when it is purged).';

REVOKE ALL ON atomizer.job_dependency FROM PUBLIC;
GRANT SELECT ON atomizer.job_dependency TO PUBLIC;
ALTER TABLE atomizer.job_dependency ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_jobs ON atomizer.job_dependency FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));
CREATE POLICY database_owner_reads ON atomizer.job_dependency FOR SELECT
	USING ((SELECT pg_catalog.pg_has_role(d.datdba, 'USAGE')
			  FROM pg_catalog.pg_database d
			 WHERE d.datname = pg_catalog.current_database()));
SELECT pg_catalog.pg_extension_config_dump('atomizer.job_dependency', '');

DROP FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text, interval, text[]);
CREATE FUNCTION atomizer.enqueue(
	handler text,
	payload jsonb DEFAULT '{}',
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL,
	idempotency_key text DEFAULT NULL,
	unique_for interval DEFAULT NULL,
	tags text[] DEFAULT NULL,
	depends_on bigint[] DEFAULT NULL,
	on_dependency_failure text DEFAULT 'cancel')
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue';

COMMENT ON FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text, interval, text[], bigint[], text) IS
	'Enqueue one job in the current transaction; returns its id (or, for an idempotency_key the same role repeats in the same queue, the id of its unfinished job that has it; with unique_for, of the job it made within that window, finished or not).  With depends_on, the job is blocked until those jobs have finished; on_dependency_failure (''cancel'' or ''run'') says what a dead or cancelled dependency does to it.';

DROP FUNCTION atomizer.enqueue_many(text, jsonb[], text, timestamptz, integer, integer, interval, text[], text[]);
CREATE FUNCTION atomizer.enqueue_many(
	handler text,
	payloads jsonb[],
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL,
	idempotency_keys text[] DEFAULT NULL,
	tags text[] DEFAULT NULL,
	depends_on bigint[] DEFAULT NULL,
	on_dependency_failure text DEFAULT 'cancel')
RETURNS SETOF bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue_many';

COMMENT ON FUNCTION atomizer.enqueue_many(text, jsonb[], text, timestamptz, integer, integer, interval, text[], text[], bigint[], text) IS
	'Enqueue one job per payload with one statement, all with the given tags and dependencies; returns the ids in the order of payloads (for a payload whose idempotency key an unfinished job of yours in the queue has, that job''s id).';

CREATE FUNCTION atomizer.dependencies(
	OUT job_id bigint, OUT state text, OUT result jsonb, OUT last_error text)
RETURNS SETOF record
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'atomizer_dependencies';

COMMENT ON FUNCTION atomizer.dependencies() IS
	'In a handler: the dependencies of the job it runs, with their states, results and last errors.';

CREATE FUNCTION atomizer.dependencies(job_id bigint,
	OUT job_id bigint, OUT state text, OUT result jsonb, OUT last_error text)
RETURNS SETOF record
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'atomizer_dependencies_of';

COMMENT ON FUNCTION atomizer.dependencies(bigint) IS
	'The dependencies of a job (yours, or, for a member of atomizer_worker, one in an external queue), with their states, results and last errors.';

GRANT EXECUTE ON FUNCTION atomizer.dependencies(), atomizer.dependencies(bigint) TO PUBLIC;

CREATE FUNCTION atomizer._jobs_deleted(job_ids bigint[])
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'atomizer_jobs_deleted';

COMMENT ON FUNCTION atomizer._jobs_deleted(bigint[]) IS
	'drop_queue(force => true): the unfinished jobs it deletes count as failed for the jobs that depend on them.';

REVOKE ALL ON FUNCTION atomizer._jobs_deleted(bigint[]) FROM PUBLIC;

CREATE OR REPLACE VIEW atomizer.jobs WITH (security_invoker = true) AS
SELECT j.id, j.queue, j.handler, j.payload,
	   CASE WHEN j.state = 'running' THEN 'running'
			WHEN j.state = 'blocked' THEN 'blocked'
			WHEN j.run_at > pg_catalog.now() AND j.attempt > 0 THEN 'retrying'
			WHEN j.run_at > pg_catalog.now() THEN 'scheduled'
			ELSE 'available' END AS state,
	   j.priority::integer AS priority, j.run_at, j.attempt,
	   COALESCE(j.max_attempts, q.max_attempts) AS max_attempts,
	   COALESCE(j.timeout, NULLIF(q.timeout, interval '0')) AS timeout,
	   j.owner, j.idempotency_key, j.created_at, j.started_at,
	   NULL::timestamptz AS finished_at, NULL::jsonb AS result, j.last_error,
	   j.worker, j.lease_until, j.tags,
	   CASE WHEN j.on_dependency_failure IS NOT NULL THEN
		   ARRAY(SELECT d.depends_on FROM atomizer.job_dependency d
				  WHERE d.job_id = j.id ORDER BY d.depends_on) END AS depends_on,
	   j.blockers
  FROM atomizer.job j
  LEFT JOIN atomizer.queue q ON q.name = j.queue
UNION ALL
SELECT h.id, h.queue, h.handler, h.payload, h.state,
	   h.priority::integer, h.run_at, h.attempt,
	   COALESCE(h.max_attempts, q.max_attempts),
	   COALESCE(h.timeout, NULLIF(q.timeout, interval '0')),
	   h.owner, h.idempotency_key, h.created_at, h.started_at,
	   h.finished_at, h.result, h.last_error, NULL::text, NULL::timestamptz,
	   h.tags,
	   CASE WHEN h.on_dependency_failure IS NOT NULL THEN
		   ARRAY(SELECT d.depends_on FROM atomizer.job_dependency d
				  WHERE d.job_id = h.id ORDER BY d.depends_on) END,
	   NULL::integer
  FROM atomizer.job_history h
  LEFT JOIN atomizer.queue q ON q.name = h.queue;

CREATE VIEW atomizer.job_dependencies WITH (security_invoker = true) AS
SELECT d.job_id, d.depends_on, p.state
  FROM atomizer.job_dependency d
  LEFT JOIN atomizer.jobs p ON p.id = d.depends_on;

COMMENT ON VIEW atomizer.job_dependencies IS
	'Which of your jobs waits for which, and the state of the job waited for (NULL once it is purged, or if it is not yours).';

GRANT SELECT ON atomizer.job_dependencies TO PUBLIC;

/*
 * Fewer round trips for external workers (issue 16): claim() may first
 * complete the jobs the worker has done (completed, with their results and
 * attempts), so that one call and one commit report a batch and claim the
 * next; complete_many() takes results and attempts.  Both complete a batch
 * with two statements, not two per job.
 */
DROP FUNCTION atomizer.claim(text, integer, interval, text);
CREATE FUNCTION atomizer.claim(queue text, max_jobs integer DEFAULT 1,
							   lease interval DEFAULT '5 minutes',
							   worker text DEFAULT NULL,
							   completed bigint[] DEFAULT NULL,
							   results jsonb[] DEFAULT NULL,
							   completed_attempts integer[] DEFAULT NULL)
RETURNS TABLE (id bigint, handler text, payload jsonb, attempt integer,
			   lease_until timestamptz)
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_claim';

COMMENT ON FUNCTION atomizer.claim(text, integer, interval, text, bigint[], jsonb[], integer[]) IS
	'External workers: complete the jobs in completed (as complete_many does), then lock up to max_jobs due jobs of an external queue (FOR UPDATE SKIP LOCKED), count the attempt, and lease them.';

DROP FUNCTION atomizer.complete_many(bigint[]);
CREATE FUNCTION atomizer.complete_many(job_ids bigint[],
									   results jsonb[] DEFAULT NULL,
									   attempts integer[] DEFAULT NULL)
RETURNS integer
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_complete_many';

COMMENT ON FUNCTION atomizer.complete_many(bigint[], jsonb[], integer[]) IS
	'External workers: many leased jobs succeeded, with their results (element i for job i) and the attempts claim returned; all or none.';

GRANT EXECUTE ON FUNCTION atomizer.claim(text, integer, interval, text, bigint[], jsonb[], integer[]),
	atomizer.complete_many(bigint[], jsonb[], integer[]) TO PUBLIC;

/*
 * No index of atomizer.job reads state, so that the claim of atomizer's
 * own workers (state, attempt, started_at, worker) is a HOT update: one new
 * row version on the same page, no index entry.  The indexes that must
 * leave jobs out by their state read parked instead: held and blocked
 * jobs, and external workers' running jobs ('leased': their claim writes
 * lease_until, an indexed column, so it is no HOT update anyway).  The
 * claim index keeps the running jobs of atomizer's workers (a claim starts
 * at the claim floor, past them, and checks state on the row); the lease
 * index has the jobs with a lease.  Pages are half filled by inserts, so
 * that a batch's claimed rows find room on their own page.
 */
ALTER TABLE atomizer.job ADD COLUMN parked text
	GENERATED ALWAYS AS (CASE WHEN state IN ('held', 'blocked') THEN state
							  WHEN state = 'running' AND lease_until IS NOT NULL THEN 'leased'
						 END) STORED;
COMMENT ON COLUMN atomizer.job.parked IS
	'held, blocked, or leased (an external worker runs it); NULL for jobs that wait or that atomizer''s workers run: what the claim and held indexes read instead of state.';
DROP INDEX atomizer.job_claim_idx;
CREATE INDEX job_claim_idx ON atomizer.job (queue, priority, run_at, id)
	WHERE parked IS NULL;
DROP INDEX atomizer.job_held_idx;
CREATE INDEX job_held_idx ON atomizer.job (queue, handler, priority, run_at, id)
	WHERE parked = 'held';
DROP INDEX atomizer.job_lease_idx;
CREATE INDEX job_lease_idx ON atomizer.job (lease_until)
	WHERE lease_until IS NOT NULL;
ALTER TABLE atomizer.job SET (fillfactor = 50);

/*
 * Schedules fire up to atomizer.cron_lookahead ahead of their fire time;
 * _tick() takes the lookahead its pass uses (0: fire only what is due).
 */
DROP FUNCTION atomizer._tick(timestamptz);
CREATE FUNCTION atomizer._tick(now timestamptz, lookahead interval DEFAULT '0')
RETURNS integer
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_tick';

REVOKE ALL ON FUNCTION atomizer._tick(timestamptz, interval) FROM PUBLIC;

COMMENT ON FUNCTION atomizer._tick(timestamptz, interval) IS
	'One pass of the cron firing logic as if the clock read "now", firing what is due by now + lookahead (for tests and manual catch-up); returns the number of jobs enqueued.';

/*
 * Last: the schedulers of a server running the 0.2.0 library leave a
 * database with the 0.1.0 objects alone; wake the launcher at commit so that
 * this database's scheduler starts at once.
 */
SELECT atomizer._extension_created();
