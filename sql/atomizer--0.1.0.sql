/*
 * atomizer 0.1.0: the job store and its SQL API.
 *
 * Tables are owned by the extension owner and written only through the
 * functions below; every role may read them, and row-level security shows
 * each role its own jobs (atomizer_admin and superusers see all).
 */

\echo Use "CREATE EXTENSION atomizer" to load this file. \quit

DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
				   WHERE rolname = 'atomizer_admin') THEN
		CREATE ROLE atomizer_admin NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
				   WHERE rolname = 'atomizer_worker') THEN
		CREATE ROLE atomizer_worker NOLOGIN;
	END IF;
END
$$;

GRANT USAGE ON SCHEMA atomizer TO PUBLIC;

/* ------------------------------------------------------------------------
 * Queues
 * ------------------------------------------------------------------------ */

CREATE TABLE atomizer.queue (
	name			text PRIMARY KEY,
	concurrency		integer NOT NULL DEFAULT 10 CHECK (concurrency > 0),
	external		boolean NOT NULL DEFAULT false,
	max_attempts	integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
	backoff_base	interval NOT NULL DEFAULT '1 second'
					CHECK (backoff_base > interval '0'),
	backoff_cap		interval NOT NULL DEFAULT '1 hour'
					CHECK (backoff_cap >= backoff_base),
	backoff_jitter	double precision NOT NULL DEFAULT 0.1
					CHECK (backoff_jitter >= 0 AND backoff_jitter <= 1),
	timeout			interval NOT NULL DEFAULT '0'
					CHECK (timeout >= interval '0'),
	retention		interval NOT NULL DEFAULT '1 day'
					CHECK (retention >= interval '0'),
	paused			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE atomizer.queue IS
	'Queues and their settings; change them with atomizer.create_queue() and atomizer.alter_queue().';

INSERT INTO atomizer.queue (name) VALUES ('default');

/* ------------------------------------------------------------------------
 * Jobs
 *
 * The job tables have no CHECK constraints: only atomizer's C functions
 * write them, after validating every value, and a CHECK constraint costs a
 * parse of its expression at every INSERT.
 *
 * atomizer.job is the hot table: jobs that are waiting or running.  Finished
 * jobs move to atomizer.job_history, so the hot table stays small whatever
 * the history holds.  The stored state of a waiting job is 'available'; the
 * views call it 'scheduled' or 'retrying' while its run_at is in the future.
 * ------------------------------------------------------------------------ */

CREATE SEQUENCE atomizer.job_id_seq;

CREATE TABLE atomizer.job (
	id				bigint PRIMARY KEY
					DEFAULT pg_catalog.nextval('atomizer.job_id_seq'),
	queue			text NOT NULL,
	handler			text NOT NULL,
	payload			jsonb NOT NULL,
	state			text NOT NULL DEFAULT 'available',	/* available, running */
	priority		smallint NOT NULL DEFAULT 0,
	run_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	attempt			integer NOT NULL DEFAULT 0,
	max_attempts	integer,		/* NULL: the queue's */
	timeout			interval,		/* NULL: the queue's */
	owner			name NOT NULL,
	idempotency_key	text,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	started_at		timestamptz,
	last_error		text,
	worker			text,
	lease_until		timestamptz,
	solo			boolean NOT NULL DEFAULT false,
	schedule_id		bigint,
	lease			interval		/* an external worker's lease length */
);

ALTER SEQUENCE atomizer.job_id_seq OWNED BY atomizer.job.id;

/*
 * Every job is inserted, updated and deleted here: vacuum the hot table
 * after a fixed number of dead rows, not a fraction of its size, and
 * without cost delays, so that claims do not wade through dead index
 * entries between vacuums.
 */
ALTER TABLE atomizer.job SET (
	autovacuum_vacuum_scale_factor = 0,
	autovacuum_vacuum_threshold = 10000,
	autovacuum_vacuum_insert_scale_factor = 0,
	autovacuum_vacuum_insert_threshold = 10000,
	autovacuum_analyze_scale_factor = 0,
	autovacuum_analyze_threshold = 10000,
	autovacuum_vacuum_cost_delay = 0);

/* Serves exactly the claim order. */
CREATE INDEX job_claim_idx ON atomizer.job (queue, priority, run_at, id)
	WHERE state = 'available';

/* An idempotency key is unique among a queue's unfinished jobs. */
CREATE UNIQUE INDEX job_idempotency_idx ON atomizer.job (queue, idempotency_key)
	WHERE idempotency_key IS NOT NULL;

/* Leases of external workers, for their expiry. */
CREATE INDEX job_lease_idx ON atomizer.job (lease_until)
	WHERE state = 'running' AND lease_until IS NOT NULL;

/* A schedule's unfinished jobs, for its overlap policy. */
CREATE INDEX job_schedule_idx ON atomizer.job (schedule_id)
	WHERE schedule_id IS NOT NULL;

COMMENT ON TABLE atomizer.job IS
	'Jobs waiting or running; read atomizer.jobs instead.';

CREATE TABLE atomizer.job_history (
	id				bigint PRIMARY KEY,
	queue			text NOT NULL,
	handler			text NOT NULL,
	payload			jsonb NOT NULL,
	state			text NOT NULL,	/* succeeded, dead, cancelled */
	priority		smallint NOT NULL,
	run_at			timestamptz NOT NULL,
	attempt			integer NOT NULL,
	max_attempts	integer,
	timeout			interval,
	owner			name NOT NULL,
	idempotency_key	text,
	created_at		timestamptz NOT NULL,
	started_at		timestamptz,
	finished_at		timestamptz NOT NULL,
	result			jsonb,
	last_error		text,
	schedule_id		bigint
);

/*
 * Pruning reads the history by finish time.  Rows arrive in finish order,
 * so a BRIN index serves it at a fraction of a btree's cost per finished
 * job (measured: a btree here was one of three index insertions per job).
 */
CREATE INDEX job_history_finished_idx ON atomizer.job_history
	USING brin (finished_at);
CREATE INDEX job_history_dead_idx ON atomizer.job_history (queue, finished_at)
	WHERE state = 'dead';

COMMENT ON TABLE atomizer.job_history IS
	'Finished jobs (succeeded, dead, cancelled) until pruned; read atomizer.jobs instead.';

CREATE TABLE atomizer.job_error (
	job_id			bigint NOT NULL,
	attempt			integer NOT NULL,
	owner			name NOT NULL,
	queue			text NOT NULL,
	failed_at		timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	sqlstate		text,
	message			text NOT NULL,
	detail			text,
	hint			text,
	context			text
);

CREATE INDEX job_error_job_idx ON atomizer.job_error (job_id, attempt);

COMMENT ON TABLE atomizer.job_error IS
	'One row per failed attempt; read atomizer.job_errors instead.';

/* ------------------------------------------------------------------------
 * Privileges and row-level security
 * ------------------------------------------------------------------------ */

REVOKE ALL ON atomizer.queue, atomizer.job, atomizer.job_history,
	atomizer.job_error FROM PUBLIC;
GRANT SELECT ON atomizer.queue, atomizer.job, atomizer.job_history,
	atomizer.job_error TO PUBLIC;
REVOKE ALL ON SEQUENCE atomizer.job_id_seq FROM PUBLIC;

ALTER TABLE atomizer.job ENABLE ROW LEVEL SECURITY;
ALTER TABLE atomizer.job_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE atomizer.job_error ENABLE ROW LEVEL SECURITY;

CREATE POLICY own_jobs ON atomizer.job FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));
CREATE POLICY own_jobs ON atomizer.job_history FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));
CREATE POLICY own_jobs ON atomizer.job_error FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));

/* pg_dump keeps jobs, history and queues (the default queue is made here). */
SELECT pg_catalog.pg_extension_config_dump('atomizer.queue',
										   'WHERE name <> ''default''');
SELECT pg_catalog.pg_extension_config_dump('atomizer.job', '');
SELECT pg_catalog.pg_extension_config_dump('atomizer.job_history', '');
SELECT pg_catalog.pg_extension_config_dump('atomizer.job_error', '');
SELECT pg_catalog.pg_extension_config_dump('atomizer.job_id_seq', '');

/* ------------------------------------------------------------------------
 * Views (security_invoker: row-level security applies to the reader)
 * ------------------------------------------------------------------------ */

CREATE VIEW atomizer.jobs WITH (security_invoker = true) AS
SELECT j.id, j.queue, j.handler, j.payload,
	   CASE WHEN j.state = 'running' THEN 'running'
			WHEN j.run_at > pg_catalog.now() AND j.attempt > 0 THEN 'retrying'
			WHEN j.run_at > pg_catalog.now() THEN 'scheduled'
			ELSE 'available' END AS state,
	   j.priority::integer AS priority, j.run_at, j.attempt,
	   COALESCE(j.max_attempts, q.max_attempts) AS max_attempts,
	   COALESCE(j.timeout, NULLIF(q.timeout, interval '0')) AS timeout,
	   j.owner, j.idempotency_key, j.created_at, j.started_at,
	   NULL::timestamptz AS finished_at, NULL::jsonb AS result, j.last_error,
	   j.worker, j.lease_until
  FROM atomizer.job j
  LEFT JOIN atomizer.queue q ON q.name = j.queue
UNION ALL
SELECT h.id, h.queue, h.handler, h.payload, h.state,
	   h.priority::integer, h.run_at, h.attempt,
	   COALESCE(h.max_attempts, q.max_attempts),
	   COALESCE(h.timeout, NULLIF(q.timeout, interval '0')),
	   h.owner, h.idempotency_key, h.created_at, h.started_at,
	   h.finished_at, h.result, h.last_error, NULL::text, NULL::timestamptz
  FROM atomizer.job_history h
  LEFT JOIN atomizer.queue q ON q.name = h.queue;

COMMENT ON VIEW atomizer.jobs IS
	'Every job you may see: waiting, running, and finished until pruned.';

CREATE VIEW atomizer.dead_jobs WITH (security_invoker = true) AS
SELECT h.id, h.queue, h.handler, h.payload, h.priority::integer AS priority,
	   h.attempt, h.owner, h.created_at, h.finished_at, h.last_error
  FROM atomizer.job_history h
 WHERE h.state = 'dead';

COMMENT ON VIEW atomizer.dead_jobs IS
	'Jobs that failed max_attempts times; send one back with atomizer.retry(id).';

CREATE VIEW atomizer.job_errors WITH (security_invoker = true) AS
SELECT e.job_id, e.attempt, e.queue, e.owner, e.failed_at, e.sqlstate,
	   e.message, e.detail, e.hint, e.context
  FROM atomizer.job_error e;

COMMENT ON VIEW atomizer.job_errors IS
	'Why each failed attempt of a job failed.';

CREATE VIEW atomizer.queue_stats WITH (security_invoker = true) AS
SELECT q.name AS queue,
	   q.paused,
	   q.external,
	   q.concurrency,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'scheduled') AS scheduled,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'available') AS available,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'running') AS running,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'retrying') AS retrying,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'succeeded') AS succeeded,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'cancelled') AS cancelled,
	   pg_catalog.count(j.id) FILTER (WHERE j.state = 'dead') AS dead,
	   pg_catalog.min(j.run_at) FILTER (WHERE j.state = 'available') AS oldest_available
  FROM atomizer.queue q
  LEFT JOIN atomizer.jobs j ON j.queue = q.name
 GROUP BY q.name, q.paused, q.external, q.concurrency;

COMMENT ON VIEW atomizer.queue_stats IS
	'One row per queue with the number of your jobs in each state.';

CREATE FUNCTION atomizer._workers(
	OUT pid integer, OUT database oid, OUT queue text, OUT state text,
	OUT job_id bigint, OUT jobs_succeeded bigint, OUT jobs_failed bigint,
	OUT started_at timestamptz)
RETURNS SETOF record
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_workers';

CREATE VIEW atomizer.workers AS
SELECT w.pid, d.datname AS database, w.queue, w.state, w.job_id,
	   w.jobs_succeeded, w.jobs_failed, w.started_at
  FROM atomizer._workers() w
  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.database;

COMMENT ON VIEW atomizer.workers IS
	'atomizer''s worker processes (all databases): queue, state, running job and counters.';

GRANT SELECT ON atomizer.jobs, atomizer.dead_jobs, atomizer.job_errors,
	atomizer.queue_stats, atomizer.workers TO PUBLIC;

/* ------------------------------------------------------------------------
 * External workers (members of atomizer_worker)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION atomizer.claim(queue text, max_jobs integer DEFAULT 1,
							   lease interval DEFAULT '5 minutes',
							   worker text DEFAULT NULL)
RETURNS TABLE (id bigint, handler text, payload jsonb, attempt integer,
			   lease_until timestamptz)
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_claim';

COMMENT ON FUNCTION atomizer.claim(text, integer, interval, text) IS
	'External workers: lock up to max_jobs due jobs of an external queue (FOR UPDATE SKIP LOCKED), count the attempt, and lease them.';

CREATE FUNCTION atomizer.complete(job_id bigint, result jsonb DEFAULT NULL,
								  attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_complete';

COMMENT ON FUNCTION atomizer.complete(bigint, jsonb, integer) IS
	'External workers: a leased job succeeded; ERROR if the lease (of that attempt) was lost.';

CREATE FUNCTION atomizer.complete_many(job_ids bigint[])
RETURNS integer
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_complete_many';

COMMENT ON FUNCTION atomizer.complete_many(bigint[]) IS
	'External workers: many leased jobs succeeded, all or none.';

CREATE FUNCTION atomizer.fail(job_id bigint, error text,
							  retry_in interval DEFAULT NULL,
							  attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_fail';

COMMENT ON FUNCTION atomizer.fail(bigint, text, interval, integer) IS
	'External workers: a leased job failed; retried after retry_in (or the queue''s backoff), dead after max_attempts.';

CREATE FUNCTION atomizer.heartbeat(job_id bigint, lease interval DEFAULT NULL,
								   attempt integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_heartbeat';

COMMENT ON FUNCTION atomizer.heartbeat(bigint, interval, integer) IS
	'External workers: extend a lease by lease (NULL: the claim''s) from now; returns its new end.';

CREATE FUNCTION atomizer.release(job_id bigint, attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_release';

COMMENT ON FUNCTION atomizer.release(bigint, integer) IS
	'External workers: give a leased job back, available now, its attempt not counted.';

REVOKE ALL ON FUNCTION atomizer.claim(text, integer, interval, text),
	atomizer.complete(bigint, jsonb, integer),
	atomizer.complete_many(bigint[]),
	atomizer.fail(bigint, text, interval, integer),
	atomizer.heartbeat(bigint, interval, integer),
	atomizer.release(bigint, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atomizer.claim(text, integer, interval, text),
	atomizer.complete(bigint, jsonb, integer),
	atomizer.complete_many(bigint[]),
	atomizer.fail(bigint, text, interval, integer),
	atomizer.heartbeat(bigint, interval, integer),
	atomizer.release(bigint, integer) TO atomizer_worker, atomizer_admin;

/* ------------------------------------------------------------------------
 * Schedules (cron)
 *
 * Each fire of a schedule enqueues an ordinary job (schedule_id set), in the
 * same transaction that moves next_run on: a fire happens once per
 * (schedule, fire time), whatever crashes or restarts.
 * ------------------------------------------------------------------------ */

CREATE TABLE atomizer.schedule (
	id				bigserial PRIMARY KEY,
	name			text NOT NULL UNIQUE,
	spec			text NOT NULL,
	handler			text NOT NULL,
	payload			jsonb NOT NULL,
	queue			text NOT NULL,
	tz				text NOT NULL,
	owner			name NOT NULL,
	enabled			boolean NOT NULL DEFAULT true,
	overlap			text NOT NULL CHECK (overlap IN ('skip', 'allow')),
	misfire			text NOT NULL CHECK (misfire IN ('fire_once', 'skip')),
	priority		smallint NOT NULL DEFAULT 0,
	max_attempts	integer CHECK (max_attempts > 0),
	timeout			interval CHECK (timeout > interval '0'),
	next_run		timestamptz,
	last_run		timestamptz,
	last_job_id		bigint,
	last_error		text,
	fires			bigint NOT NULL DEFAULT 0,
	skipped			bigint NOT NULL DEFAULT 0,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE INDEX schedule_due_idx ON atomizer.schedule (next_run) WHERE enabled;

COMMENT ON TABLE atomizer.schedule IS
	'Recurring jobs; change them with atomizer.schedule() and read atomizer.schedules.';

REVOKE ALL ON atomizer.schedule FROM PUBLIC;
GRANT SELECT ON atomizer.schedule TO PUBLIC;
REVOKE ALL ON SEQUENCE atomizer.schedule_id_seq FROM PUBLIC;
ALTER TABLE atomizer.schedule ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_schedules ON atomizer.schedule FOR SELECT
	USING (owner = CURRENT_USER
		   OR (SELECT pg_catalog.pg_has_role('atomizer_admin', 'USAGE')));
SELECT pg_catalog.pg_extension_config_dump('atomizer.schedule', '');
SELECT pg_catalog.pg_extension_config_dump('atomizer.schedule_id_seq', '');

CREATE VIEW atomizer.schedules WITH (security_invoker = true) AS
SELECT s.name, s.spec, s.tz, s.handler, s.payload, s.queue, s.owner,
	   s.enabled, s.overlap, s.misfire, s.next_run, s.last_run,
	   s.last_job_id, j.state AS last_outcome, s.last_error, s.fires,
	   s.skipped, s.created_at
  FROM atomizer.schedule s
  LEFT JOIN atomizer.jobs j ON j.id = s.last_job_id;

COMMENT ON VIEW atomizer.schedules IS
	'Your recurring jobs: spec, time zone, next and last run, the last run''s outcome, and why a schedule was disabled.';

GRANT SELECT ON atomizer.schedules TO PUBLIC;

CREATE FUNCTION atomizer.schedule(
	name text,
	spec text,
	handler text,
	payload jsonb DEFAULT '{}',
	queue text DEFAULT 'default',
	tz text DEFAULT 'UTC',
	enabled boolean DEFAULT true,
	overlap text DEFAULT 'skip',
	misfire text DEFAULT 'fire_once',
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_schedule';

COMMENT ON FUNCTION atomizer.schedule(text, text, text, jsonb, text, text, boolean, text, text, integer, integer, interval) IS
	'Create or replace the recurring entry "name": a cron expression (5 fields, or 6 with seconds first) or an interval such as ''30 seconds''; returns its id.';

CREATE FUNCTION atomizer.unschedule(name text)
RETURNS boolean
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_unschedule';

COMMENT ON FUNCTION atomizer.unschedule(text) IS
	'Remove a recurring entry; true if it existed (and was yours).';

CREATE FUNCTION atomizer.enable_schedule(name text)
RETURNS boolean
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enable_schedule';

COMMENT ON FUNCTION atomizer.enable_schedule(text) IS
	'Enable a recurring entry (its next run is computed from now); true if it exists and is yours.';

CREATE FUNCTION atomizer.disable_schedule(name text)
RETURNS boolean
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_disable_schedule';

COMMENT ON FUNCTION atomizer.disable_schedule(text) IS
	'Disable a recurring entry; true if it exists and is yours.';

CREATE FUNCTION atomizer.run_schedule(name text)
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_run_schedule';

COMMENT ON FUNCTION atomizer.run_schedule(text) IS
	'Fire a recurring entry now, whatever its spec and overlap policy; returns the job id.';

CREATE FUNCTION atomizer._tick(now timestamptz)
RETURNS integer
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_tick';

REVOKE ALL ON FUNCTION atomizer._tick(timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION atomizer._tick(timestamptz) IS
	'One pass of the cron firing logic as if the clock read "now" (for tests and manual catch-up); returns the number of jobs enqueued.';


/* ------------------------------------------------------------------------
 * Jobs: C functions (they check the caller and write as the owner)
 * ------------------------------------------------------------------------ */

CREATE FUNCTION atomizer.enqueue(
	handler text,
	payload jsonb DEFAULT '{}',
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL,
	idempotency_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue';

COMMENT ON FUNCTION atomizer.enqueue(text, jsonb, text, timestamptz, integer, integer, interval, text) IS
	'Enqueue one job in the current transaction; returns its id (or, for a repeated idempotency_key, the id of the unfinished job that has it).';

CREATE FUNCTION atomizer.enqueue_many(
	handler text,
	payloads jsonb[],
	queue text DEFAULT 'default',
	run_at timestamptz DEFAULT pg_catalog.now(),
	priority integer DEFAULT 0,
	max_attempts integer DEFAULT NULL,
	timeout interval DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_enqueue_many';

COMMENT ON FUNCTION atomizer.enqueue_many(text, jsonb[], text, timestamptz, integer, integer, interval) IS
	'Enqueue one job per payload with one statement; returns the ids in the order of payloads.';

CREATE FUNCTION atomizer.cancel(job_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_cancel';

COMMENT ON FUNCTION atomizer.cancel(bigint) IS
	'Cancel a waiting job; true if it was cancelled.';

CREATE FUNCTION atomizer.retry(job_id bigint)
RETURNS boolean
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_retry';

COMMENT ON FUNCTION atomizer.retry(bigint) IS
	'Send a dead or cancelled job back to its queue, available now, attempts counted from zero; true if it was sent back.';

CREATE FUNCTION atomizer.purge(older_than interval DEFAULT NULL,
							   queue text DEFAULT NULL)
RETURNS bigint
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_purge';

COMMENT ON FUNCTION atomizer.purge(interval, text) IS
	'Delete finished jobs that finished at least older_than ago (all if NULL), of one queue or all; returns how many.';

CREATE FUNCTION atomizer.run_pending(queue text DEFAULT NULL,
									 max_jobs integer DEFAULT NULL)
RETURNS integer
LANGUAGE C VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'atomizer_run_pending';

COMMENT ON FUNCTION atomizer.run_pending(text, integer) IS
	'Run due jobs now in this session and transaction (one queue, or every internal queue that is not paused); returns how many ran.';

/* ------------------------------------------------------------------------
 * Queues: SQL functions for atomizer_admin
 * ------------------------------------------------------------------------ */

CREATE FUNCTION atomizer._check_queue_name(name text)
RETURNS void
LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_check_queue_name_sql';

CREATE FUNCTION atomizer._queues_changed()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_queues_changed';

REVOKE ALL ON FUNCTION atomizer._queues_changed() FROM PUBLIC;

CREATE FUNCTION atomizer._wake_at_commit(queue text)
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_wake_at_commit';

REVOKE ALL ON FUNCTION atomizer._wake_at_commit(text) FROM PUBLIC;

CREATE FUNCTION atomizer._check_queue_settings(
	concurrency integer, max_attempts integer, backoff_base interval,
	backoff_cap interval, backoff_jitter double precision, timeout interval,
	retention interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
	IF backoff_cap IS NOT NULL AND backoff_cap <= interval '0' THEN
		RAISE EXCEPTION 'backoff_cap must be positive'
			USING ERRCODE = 'invalid_parameter_value';
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
	IF retention IS NOT NULL AND retention < interval '0' THEN
		RAISE EXCEPTION 'retention must not be negative'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;

CREATE FUNCTION atomizer.create_queue(
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
	VALUES (create_queue.name, create_queue.concurrency, create_queue.external,
		create_queue.max_attempts, create_queue.backoff_base,
		create_queue.backoff_cap, create_queue.backoff_jitter,
		create_queue.timeout, create_queue.retention);
	PERFORM atomizer._queues_changed();
EXCEPTION
	WHEN unique_violation THEN
		RAISE EXCEPTION 'queue "%" already exists', name
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Change its settings with atomizer.alter_queue().';
END
$$;

COMMENT ON FUNCTION atomizer.create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) IS
	'Create a queue with its own concurrency, retry, backoff, timeout (0: none) and retention settings.';

CREATE FUNCTION atomizer.alter_queue(
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
	SELECT * INTO q FROM atomizer.queue WHERE queue.name = alter_queue.name
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
	   SET concurrency = COALESCE(alter_queue.concurrency, q.concurrency),
		   external = COALESCE(alter_queue.external, q.external),
		   max_attempts = COALESCE(alter_queue.max_attempts, q.max_attempts),
		   backoff_base = COALESCE(alter_queue.backoff_base, q.backoff_base),
		   backoff_cap = COALESCE(alter_queue.backoff_cap, q.backoff_cap),
		   backoff_jitter = COALESCE(alter_queue.backoff_jitter, q.backoff_jitter),
		   timeout = COALESCE(alter_queue.timeout, q.timeout),
		   retention = COALESCE(alter_queue.retention, q.retention)
	 WHERE queue.name = q.name;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(name);
END
$$;

COMMENT ON FUNCTION atomizer.alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval) IS
	'Change a queue''s settings; a NULL setting is left as it is.  Waiting jobs that did not set their own max_attempts or timeout follow the queue''s.';

CREATE FUNCTION atomizer.drop_queue(name text, force boolean DEFAULT false)
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
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	PERFORM 1 FROM atomizer.queue WHERE queue.name = drop_queue.name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	SELECT count(*) INTO unfinished FROM atomizer.job j WHERE j.queue = drop_queue.name;
	IF unfinished > 0 AND NOT COALESCE(force, false) THEN
		RAISE EXCEPTION 'queue "%" has % unfinished job(s)', name, unfinished
			USING ERRCODE = 'dependent_objects_still_exist',
				  HINT = 'Wait for them or cancel them, or drop the queue and its unfinished jobs with force => true.';
	END IF;
	DELETE FROM atomizer.job j WHERE j.queue = drop_queue.name;
	DELETE FROM atomizer.queue WHERE queue.name = drop_queue.name;
	PERFORM atomizer._queues_changed();
END
$$;

COMMENT ON FUNCTION atomizer.drop_queue(text, boolean) IS
	'Drop a queue; with force => true also its unfinished jobs.  Finished jobs stay in the history until purged.';

CREATE FUNCTION atomizer.pause_queue(name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._check_queue_name(name);
	UPDATE atomizer.queue SET paused = true WHERE queue.name = pause_queue.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM atomizer._queues_changed();
END
$$;

COMMENT ON FUNCTION atomizer.pause_queue(text) IS
	'Stop claiming jobs of a queue; jobs can still be enqueued.';

CREATE FUNCTION atomizer.resume_queue(name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM atomizer._check_queue_name(name);
	UPDATE atomizer.queue SET paused = false WHERE queue.name = resume_queue.name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'queue "%" does not exist', name
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM atomizer._queues_changed();
	PERFORM atomizer._wake_at_commit(name);
END
$$;

COMMENT ON FUNCTION atomizer.resume_queue(text) IS
	'Claim jobs of a paused queue again.';

REVOKE ALL ON FUNCTION atomizer._check_queue_settings(integer, integer, interval, interval, double precision, interval, interval),
	atomizer.create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval),
	atomizer.alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval),
	atomizer.drop_queue(text, boolean),
	atomizer.pause_queue(text),
	atomizer.resume_queue(text)
	FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	atomizer.create_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval),
	atomizer.alter_queue(text, integer, boolean, integer, interval, interval, double precision, interval, interval),
	atomizer.drop_queue(text, boolean),
	atomizer.pause_queue(text),
	atomizer.resume_queue(text)
	TO atomizer_admin;

CREATE FUNCTION atomizer.cron_next(expr text, after timestamptz,
								   tz text DEFAULT 'UTC')
RETURNS timestamptz
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'atomizer_cron_next_sql';

COMMENT ON FUNCTION atomizer.cron_next(text, timestamptz, text) IS
	'The first fire time of a cron expression or interval strictly after "after", on the wall clock of time zone tz; NULL if it never fires.';

/* Start this database's scheduler as soon as CREATE EXTENSION commits. */
CREATE FUNCTION atomizer._extension_created()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'atomizer_extension_created';

SELECT atomizer._extension_created();
