-- How enqueue writes jobs (src/store.c): without an idempotency key a job
-- is written by a direct heap and index insertion, not an INSERT statement.
-- The rows must be the same an INSERT would write, every index must hold
-- exactly the rows it should (amcheck, heapallindexed), a read-only
-- transaction is refused, and when the table is not the one store.c knows
-- (a trigger, an unknown column) enqueue falls back to the INSERT.
CREATE DATABASE atomizer_store;
\c atomizer_store
CREATE EXTENSION atomizer;
CREATE EXTENSION amcheck;
SET client_min_messages = warning;

CREATE FUNCTION noop(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE ROLE regress_store_user;
GRANT USAGE ON SCHEMA public TO regress_store_user;
GRANT EXECUTE ON FUNCTION noop(jsonb) TO regress_store_user;

-- one row, written directly, with what the column defaults would give
-- (store.c says at DEBUG1 when it cannot write directly: nothing here)
SET client_min_messages = debug1;
SELECT atomizer.enqueue('noop', '{"n": 0}') > 0 AS enqueued;
SELECT count(*) FROM atomizer.enqueue_many('noop', ARRAY['{}', '{}']::jsonb[]);
SET client_min_messages = warning;
DELETE FROM atomizer.job;
SET ROLE regress_store_user;
BEGIN;
SELECT atomizer.enqueue('noop', '{"n": 1}', priority => 7, max_attempts => 3,
						timeout => '5 s', run_at => now() + interval '1 hour') > 0 AS enqueued;
SELECT queue, handler, payload, state, priority, run_at = now() + interval '1 hour' AS run_at_ok,
	   attempt, max_attempts, timeout, owner, created_at = now() AS created_now
  FROM atomizer.jobs ORDER BY id;
COMMIT;
RESET ROLE;
SELECT solo, idempotency_key, started_at, worker, lease_until, schedule_id, lease, last_error
  FROM atomizer.job;

-- many rows: ids ascend in payload order, the defaults in every row
SELECT count(*), min(e) < max(e) AS ascending
  FROM atomizer.enqueue_many('noop', ARRAY(SELECT jsonb_build_object('n', g)
											 FROM generate_series(1, 500) g)) e;
SELECT count(*) FILTER (WHERE (payload->>'n')::int = r) AS in_payload_order
  FROM (SELECT payload, row_number() OVER (ORDER BY id) AS r
		  FROM atomizer.job WHERE priority = 0) s;

-- a large payload goes to TOAST like an INSERT's
SELECT atomizer.enqueue('noop', jsonb_build_object('big', repeat('x', 100000))) > 0 AS enqueued;
SELECT length(payload->>'big') FROM atomizer.job WHERE payload ? 'big';

-- with a key: the INSERT ... ON CONFLICT path, and the same rows
SELECT atomizer.enqueue('noop', '{}', idempotency_key => 'k1')
	 = atomizer.enqueue('noop', '{}', idempotency_key => 'k1') AS same_job;

-- every btree index holds exactly the rows it should (the GIN index on tags
-- takes only tagged jobs, which take the INSERT statement)
SELECT c.relname, bt_index_check(c.oid, true)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'atomizer.job'::regclass
   AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') ORDER BY c.relname;
-- and the claim index serves a claim of them
SET enable_seqscan = off;
SELECT count(*) FROM atomizer.job WHERE queue = 'default' AND state = 'available'
   AND run_at <= now() + interval '2 hours';
RESET enable_seqscan;

-- a read-only transaction cannot enqueue
BEGIN READ ONLY;
SELECT atomizer.enqueue('noop', '{}');
ROLLBACK;

-- a trigger on the table: enqueue falls back to the INSERT, which fires it
CREATE TABLE seen (id bigint);
CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER seen AFTER INSERT ON atomizer.job FOR EACH ROW EXECUTE FUNCTION seen();
SET client_min_messages = debug1;
SELECT atomizer.enqueue('noop', '{}') AS id \gset
SET client_min_messages = warning;
SELECT :id IN (SELECT id FROM seen) AS trigger_fired;
SELECT count(*) FROM atomizer.enqueue_many('noop', ARRAY['{}', '{}']::jsonb[]);
SELECT count(*) FROM seen;
DROP TRIGGER seen ON atomizer.job;

-- a column store.c does not know: the INSERT writes its default
ALTER TABLE atomizer.job ADD COLUMN note text DEFAULT 'from the default';
SET client_min_messages = debug1;
SELECT atomizer.enqueue('noop', '{}') AS id \gset
SET client_min_messages = warning;
SELECT note FROM atomizer.job WHERE id = :id;
ALTER TABLE atomizer.job DROP COLUMN note;
-- and with it dropped, the direct path again (a dropped column is skipped)
SET client_min_messages = debug1;
SELECT atomizer.enqueue('noop', '{}') > 0 AS enqueued;
SET client_min_messages = warning;

-- an index added by hand is kept up to date by the direct path too
CREATE INDEX job_owner_idx ON atomizer.job (owner, id);
SELECT count(*) FROM atomizer.enqueue_many('noop', ARRAY['{}', '{}', '{}']::jsonb[]);
SELECT c.relname, bt_index_check(c.oid, true)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'atomizer.job'::regclass
   AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') ORDER BY c.relname;
DROP INDEX atomizer.job_owner_idx;

-- the jobs run: what was written is what a worker claims
SELECT atomizer.run_pending() > 0 AS ran;

-- a claim is a HOT update: no index of atomizer.job reads state (the claim
-- and held indexes read parked), and the pages have room for the claimed
-- row versions
SELECT c.relname AS reads_state
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'atomizer.job'::regclass
   AND ((SELECT attnum FROM pg_attribute WHERE attrelid = i.indrelid
          AND attname = 'state') = ANY (i.indkey::int2[])
        OR pg_get_expr(i.indpred, i.indrelid) ~ '\mstate\M');
SELECT count(*) FROM atomizer.enqueue_many('noop',
	(SELECT array_agg('{}'::jsonb) FROM generate_series(1, 20)));
BEGIN;
SELECT pg_stat_get_xact_tuples_updated('atomizer.job'::regclass) AS updated0,
       pg_stat_get_xact_tuples_hot_updated('atomizer.job'::regclass) AS hot0 \gset
SELECT atomizer.run_pending() AS ran;
SELECT pg_stat_get_xact_tuples_updated('atomizer.job'::regclass) - :updated0 AS claimed,
       pg_stat_get_xact_tuples_hot_updated('atomizer.job'::regclass) - :hot0 AS hot;
COMMIT;
-- parked is the state of a held or blocked job, NULL otherwise
SELECT atomizer.enqueue('noop', '{}') AS first_id \gset
SELECT atomizer.enqueue('noop', '{}', depends_on => ARRAY[:first_id]) > 0 AS second;
SELECT state, parked FROM atomizer.job ORDER BY id;
SELECT atomizer.run_pending() AS ran;
-- ... and leased for a job an external worker runs
SELECT atomizer.create_queue('store_ext', external => true);
SELECT atomizer.enqueue('task', '{}', queue => 'store_ext') > 0 AS enqueued;
SELECT count(*) AS claimed FROM atomizer.claim('store_ext', 1);
SELECT state, parked FROM atomizer.job WHERE queue = 'store_ext';


-- The claim's mark is written directly too (store.c; nothing said at
-- DEBUG1): the row an UPDATE would write, with the index entries of an
-- update that is not HOT (an external claim's lease_until is indexed)
SELECT count(*) FROM atomizer.enqueue_many('task',
	(SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 3) i),
	queue => 'store_ext');
BEGIN;
SET LOCAL client_min_messages = debug1;
SELECT id - min(id) OVER () AS n, handler, attempt, payload,
       lease_until - clock_timestamp() BETWEEN interval '50 seconds' AND interval '60 seconds' AS leased
  FROM atomizer.claim('store_ext', 3, lease => '1 minute', worker => 'mark test') ORDER BY id;
RESET client_min_messages;
SELECT state, attempt, worker, lease, parked, started_at IS NOT NULL AS started,
       lease_until = started_at + lease AS lease_from_start
  FROM atomizer.job WHERE queue = 'store_ext' AND payload ? 'n' ORDER BY id;
SELECT c.relname, bt_index_check(c.oid, true)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'atomizer.job'::regclass
   AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') ORDER BY c.relname;
COMMIT;
-- a trigger on the table: the claim is an UPDATE, which fires it
CREATE FUNCTION claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER claimed AFTER UPDATE ON atomizer.job FOR EACH ROW EXECUTE FUNCTION claimed();
TRUNCATE seen;
SELECT atomizer.enqueue('task', '{"by": "update"}', queue => 'store_ext') AS id \gset
SET client_min_messages = debug1;
SELECT id = :id AS claimed, attempt FROM atomizer.claim('store_ext', 1, worker => 'mark test');
SET client_min_messages = warning;
SELECT id = :id AS trigger_fired FROM seen;
SELECT state, attempt, worker FROM atomizer.job WHERE id = :id;
DROP TRIGGER claimed ON atomizer.job;

-- A batch's finish is written directly as well (nothing said at DEBUG1):
-- each job leaves atomizer.job, and its history row is the one the
-- statement writes, in every index of the history
TRUNCATE seen;
SELECT count(*) FROM atomizer.enqueue_many('task',
	(SELECT array_agg(jsonb_build_object('done', i)) FROM generate_series(1, 3) i),
	queue => 'store_ext', priority => 3, max_attempts => 4, timeout => '9 seconds',
	tags => ARRAY['red', 'blue']);
BEGIN;
SET LOCAL client_min_messages = debug1;
SELECT array_agg(id ORDER BY id) AS done_ids FROM atomizer.claim('store_ext', 3, worker => 'mark test')
 WHERE payload ? 'done' \gset
SELECT atomizer.complete_many(:'done_ids', ARRAY['{"r": 1}', NULL, '{"r": 3}']::jsonb[]) AS completed;
RESET client_min_messages;
COMMIT;
SELECT count(*) AS left_in_job FROM atomizer.job WHERE id = ANY (:'done_ids');
SELECT h.id - min(h.id) OVER () AS n, h.queue, h.handler, h.payload, h.state, h.priority,
       h.attempt, h.max_attempts, h.timeout, h.owner = current_user AS owner, h.result,
       h.tags, h.on_dependency_failure, h.cancelled_by, h.last_error, h.schedule_id,
       h.created_at <= h.run_at AND h.run_at <= h.started_at AND h.started_at <= h.finished_at AS times
  FROM atomizer.job_history h WHERE h.id = ANY (:'done_ids') ORDER BY h.id;
SELECT c.relname, bt_index_check(c.oid, true)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'atomizer.job_history'::regclass
   AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') ORDER BY c.relname;
SELECT count(*) AS tagged FROM atomizer.job_history WHERE tags @> ARRAY['red'];
-- a trigger on the history: the statement moves them, and fires it
CREATE FUNCTION recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER recorded AFTER INSERT ON atomizer.job_history FOR EACH ROW EXECUTE FUNCTION recorded();
SELECT atomizer.enqueue('task', '{"by": "statement"}', queue => 'store_ext') AS id \gset
SELECT count(*) AS claimed FROM atomizer.claim('store_ext', 1, worker => 'mark test');
SET client_min_messages = debug1;
SELECT atomizer.complete_many(ARRAY[:id]::bigint[], ARRAY['{"r": "s"}']::jsonb[]) AS completed;
SET client_min_messages = warning;
SELECT id = :id AS trigger_fired FROM seen;
SELECT state, result FROM atomizer.job_history WHERE id = :id;
DROP TRIGGER recorded ON atomizer.job_history;
\c postgres
DROP DATABASE atomizer_store;
DROP ROLE regress_store_user;
