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

/*
 * Last: the schedulers of a server running the 0.2.0 library leave a
 * database with the 0.1.0 objects alone; wake the launcher at commit so that
 * this database's scheduler starts at once.
 */
SELECT atomizer._extension_created();
