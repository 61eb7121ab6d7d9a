-- Workflows: jobs that wait for other jobs (enqueue(…, depends_on,
-- on_dependency_failure)).  A chain with a failure, a batch with a fan-in
-- callback, dependencies() in a handler and for external workers, the
-- errors, cancel/retry/purge of workflows, savepoints, internal and
-- external queues mixed.  Concurrent releases: specs/workflow_release.spec;
-- live workers and an immediate shutdown: test/t/032_workflows.pl.
CREATE DATABASE atomizer_workflows;
\c atomizer_workflows
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

CREATE TABLE done (name text, deps jsonb);
GRANT INSERT, SELECT ON done TO PUBLIC;
CREATE FUNCTION step(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
	IF p->>'fail' = 'yes' THEN
		RAISE EXCEPTION 'step % failed', p->>'name';
	END IF;
	INSERT INTO done VALUES (p->>'name',
		(SELECT jsonb_agg(jsonb_build_object('id', d.job_id, 'state', d.state,
											 'result', d.result) ORDER BY d.job_id)
		   FROM atomizer.dependencies() d));
	RETURN jsonb_build_object('step', p->>'name');
END
$$;
SELECT atomizer.create_queue('wf', max_attempts => 1);
SELECT atomizer.create_queue('ext', external => true);

-- a three-step chain: charge, then ship, then notify; charging fails
SELECT atomizer.enqueue('step', '{"name": "charge", "fail": "yes"}', queue => 'wf') AS charge \gset
SELECT atomizer.enqueue('step', '{"name": "ship"}', queue => 'wf',
						depends_on => ARRAY[:charge]) AS ship \gset
SELECT atomizer.enqueue('step', '{"name": "notify"}', queue => 'wf',
						depends_on => ARRAY[:ship]) AS notify \gset
SELECT id, state, depends_on, blockers FROM atomizer.jobs ORDER BY id;
SELECT * FROM atomizer.job_dependencies ORDER BY job_id, depends_on;
SELECT queue, available, blocked FROM atomizer.queue_stats WHERE queue = 'wf';
SELECT atomizer.run_pending('wf');
-- charge is dead: ship and notify are cancelled, each naming its cause
SELECT id, state, last_error FROM atomizer.jobs ORDER BY id;
SELECT id, cancelled_by FROM atomizer.job_history WHERE cancelled_by IS NOT NULL ORDER BY id;
SELECT atomizer.run_pending('wf') AS nothing_to_run;

-- retry of the dead job blocks its cancelled dependents again
SELECT atomizer.retry(:charge);
SELECT id, state, blockers, attempt, last_error FROM atomizer.jobs ORDER BY id;
SELECT count(*) AS nothing_ran FROM done;
-- this time charge succeeds: each step runs in its own transaction, the
-- next one released by the commit of the one before
UPDATE atomizer.job SET payload = '{"name": "charge"}' WHERE id = :charge;
SELECT atomizer.run_pending('wf');
SELECT id, state FROM atomizer.jobs ORDER BY id;
SELECT atomizer.run_pending('wf');
SELECT atomizer.run_pending('wf');
SELECT id, state, result FROM atomizer.jobs ORDER BY id;
SELECT name, deps FROM done ORDER BY name;
TRUNCATE done;

-- a batch with a fan-in callback: twenty images, then the gallery, which
-- runs when all have finished, whatever their outcome
SELECT atomizer.enqueue('step', '{"name": "upload"}', queue => 'wf') AS upload \gset
SELECT array_agg(id) AS images FROM atomizer.enqueue_many('step',
	ARRAY(SELECT jsonb_build_object('name', 'image' || i,
									'fail', CASE WHEN i = 7 THEN 'yes' END)
			FROM generate_series(1, 20) i),
	queue => 'wf', depends_on => ARRAY[:upload]) AS id \gset
SELECT atomizer.enqueue('step', '{"name": "gallery"}', queue => 'wf',
						depends_on => :'images', on_dependency_failure => 'run') AS gallery \gset
SELECT state, count(*) FROM atomizer.jobs WHERE id > :notify GROUP BY state ORDER BY state;
SELECT blockers FROM atomizer.jobs WHERE id = :gallery;
SELECT atomizer.run_pending('wf');	-- upload
SELECT atomizer.run_pending('wf');	-- the twenty images (image7 fails)
SELECT state, count(*) FROM atomizer.jobs WHERE id > :notify GROUP BY state ORDER BY state;
SELECT atomizer.run_pending('wf');	-- the gallery
SELECT state, result FROM atomizer.jobs WHERE id = :gallery;
SELECT jsonb_array_length(deps) AS dependencies_seen,
	   (SELECT count(*) FROM jsonb_array_elements(deps) e WHERE e->>'state' = 'dead') AS dead_seen
  FROM done WHERE name = 'gallery';

-- a dependency that has already finished counts as met (or failed)
SELECT atomizer.enqueue('step', '{"name": "late"}', queue => 'wf',
						depends_on => ARRAY[:upload]) AS late \gset
SELECT state, blockers FROM atomizer.jobs WHERE id = :late;
SELECT (SELECT id FROM atomizer.jobs WHERE payload->>'name' = 'image7') AS image7 \gset
SELECT atomizer.enqueue('step', '{"name": "after7"}', queue => 'wf',
						depends_on => ARRAY[:image7]) AS after7 \gset
SELECT state, last_error FROM atomizer.jobs WHERE id = :after7;
SELECT atomizer.enqueue('step', '{"name": "after7run"}', queue => 'wf',
						depends_on => ARRAY[:image7, :image7], on_dependency_failure => 'run') AS after7run \gset
SELECT state, depends_on FROM atomizer.jobs WHERE id = :after7run;

-- bad input: an ERROR with an SQLSTATE and a hint; nothing half-written
SELECT count(*) AS jobs_before FROM atomizer.jobs \gset
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY[1], on_dependency_failure => 'ignore')$$);
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY[1], on_dependency_failure => NULL)$$);
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY[1, NULL])$$);
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY[[1], [2]])$$);
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY[1, 999999, 999998])$$);
SELECT * FROM try($$SELECT atomizer.enqueue('step', depends_on => ARRAY(SELECT generate_series(1, 100001)::bigint))$$);
SELECT * FROM try($$SELECT atomizer.enqueue_many('step', ARRAY['{}'::jsonb], depends_on => ARRAY[999999])$$);
SELECT count(*) = :jobs_before AS nothing_written FROM atomizer.jobs;
SELECT count(*) AS edges_of_nothing FROM atomizer.job_dependency
 WHERE job_id NOT IN (SELECT id FROM atomizer.jobs);
SELECT * FROM try($$SELECT * FROM atomizer.dependencies()$$);
-- an empty depends_on is no dependency
SELECT atomizer.enqueue('step', '{"name": "free"}', queue => 'wf', depends_on => '{}') AS free \gset
SELECT state, depends_on FROM atomizer.jobs WHERE id = :free;
SELECT atomizer.run_pending('wf') AS ran_the_free_ones;

-- a role may only depend on jobs it may see
CREATE ROLE regress_wf_user;
CREATE ROLE regress_wf_worker IN ROLE atomizer_worker;
SET ROLE regress_wf_user;
SELECT * FROM try(format($$SELECT atomizer.enqueue('public.step', depends_on => ARRAY[%s])$$, :upload));
SELECT count(*) AS edges_seen FROM atomizer.job_dependencies;
SELECT * FROM try(format($$SELECT * FROM atomizer.dependencies(%s)$$, :gallery));
RESET ROLE;

-- cancel of a blocked job cancels its dependents, transitively
SELECT atomizer.enqueue('step', '{"name": "root"}', queue => 'wf', run_at => now() + interval '1 hour') AS root \gset
SELECT atomizer.enqueue('step', '{"name": "mid"}', queue => 'wf', depends_on => ARRAY[:root]) AS mid \gset
SELECT atomizer.enqueue('step', '{"name": "leaf"}', queue => 'wf', depends_on => ARRAY[:mid]) AS leaf \gset
SELECT atomizer.enqueue('step', '{"name": "sweep"}', queue => 'wf', depends_on => ARRAY[:mid], on_dependency_failure => 'run') AS sweep \gset
SELECT atomizer.cancel(:mid);
SELECT id, state, last_error FROM atomizer.jobs WHERE id IN (:root, :mid, :leaf, :sweep) ORDER BY id;

-- a savepoint rolled back takes its finish along: nothing is released
SELECT atomizer.enqueue('step', '{"name": "p"}', queue => 'wf', run_at => now() + interval '1 hour') AS p \gset
SELECT atomizer.enqueue('step', '{"name": "c"}', queue => 'wf', depends_on => ARRAY[:p]) AS c \gset
BEGIN;
SAVEPOINT s;
SELECT atomizer.cancel(:p);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT id, state FROM atomizer.jobs WHERE id IN (:p, :c) ORDER BY id;
-- and a whole transaction rolled back too
BEGIN;
SELECT atomizer.cancel(:p);
ROLLBACK;
SELECT id, state FROM atomizer.jobs WHERE id IN (:p, :c) ORDER BY id;

-- purge keeps a finished job while an unfinished job depends on it
SELECT atomizer.enqueue('step', '{"name": "q"}', queue => 'wf', run_at => now() + interval '1 hour') AS q \gset
SELECT atomizer.enqueue('step', '{"name": "r"}', queue => 'wf', depends_on => ARRAY[:p, :q]) AS r \gset
SELECT atomizer.cancel(:q);
SELECT atomizer.enqueue('step', '{"name": "s"}', queue => 'wf', depends_on => ARRAY[:q],
						on_dependency_failure => 'run') AS s \gset
SELECT id, state, blockers FROM atomizer.jobs WHERE id IN (:p, :q, :r, :s) ORDER BY id;
SELECT atomizer.purge() > 0 AS purged_some;
SELECT id, state FROM atomizer.jobs WHERE id IN (:p, :q, :r, :s, :charge, :ship) ORDER BY id;
SELECT job_id, depends_on, state FROM atomizer.job_dependencies WHERE job_id IN (:r, :s) ORDER BY 1, 2;
SELECT count(*) AS edges_of_purged_jobs FROM atomizer.job_dependency
 WHERE job_id NOT IN (SELECT id FROM atomizer.jobs);

-- internal and external queues mixed: an internal job releases an external
-- one, whose worker reads its dependencies and releases an internal one
SELECT atomizer.enqueue('step', '{"name": "render"}', queue => 'wf') AS render \gset
SELECT atomizer.enqueue('mail', '{"to": "x"}', queue => 'ext', depends_on => ARRAY[:render]) AS mail \gset
SELECT atomizer.enqueue('step', '{"name": "archive"}', queue => 'wf', depends_on => ARRAY[:mail]) AS archive \gset
SET ROLE regress_wf_worker;
SELECT count(*) AS nothing_to_claim FROM atomizer.claim('ext');
RESET ROLE;
SELECT atomizer.run_pending('wf');
SET ROLE regress_wf_worker;
SELECT id = :mail AS claimed_mail, handler FROM atomizer.claim('ext');
SELECT job_id = :render AS render, state, result FROM atomizer.dependencies(:mail);
SELECT atomizer.complete(:mail, '{"sent": true}');
RESET ROLE;
SELECT id, state FROM atomizer.jobs WHERE id IN (:render, :mail, :archive) ORDER BY id;
SELECT atomizer.run_pending('wf');
SELECT deps FROM done WHERE name = 'archive';

-- an idempotency key that finds an unfinished job adds no dependencies to it
SELECT atomizer.enqueue('step', '{"name": "k"}', queue => 'wf', idempotency_key => 'k',
						run_at => now() + interval '1 hour') AS k \gset
SELECT atomizer.enqueue('step', '{"name": "k"}', queue => 'wf', idempotency_key => 'k',
						depends_on => ARRAY[:p]) = :k AS same_job;
SELECT state, depends_on FROM atomizer.jobs WHERE id = :k;
SELECT array_agg(id) AS ks FROM atomizer.enqueue_many('step',
	ARRAY['{"name": "k"}', '{"name": "k2"}']::jsonb[], queue => 'wf',
	idempotency_keys => ARRAY['k', 'k2'], depends_on => ARRAY[:p]) AS id \gset
SELECT id = :k AS old_job, state, depends_on = ARRAY[:p]::bigint[] AS depends_on_p
  FROM atomizer.jobs WHERE id = ANY (:'ks') ORDER BY id;

-- finished and retried in one transaction: the dependents are counted once
SELECT atomizer.enqueue('step', '{"name": "t1"}', queue => 'wf', run_at => now() + interval '1 hour') AS t1 \gset
SELECT atomizer.enqueue('step', '{"name": "t2"}', queue => 'wf', depends_on => ARRAY[:t1]) AS t2 \gset
BEGIN;
SELECT atomizer.cancel(:t1);
SELECT atomizer.retry(:t1);
COMMIT;
SELECT id, state, blockers FROM atomizer.jobs WHERE id IN (:t1, :t2) ORDER BY id;
BEGIN;
SELECT atomizer.cancel(:t1);
SAVEPOINT s;
SELECT atomizer.retry(:t1);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT id, state, blockers, last_error FROM atomizer.jobs WHERE id IN (:t1, :t2) ORDER BY id;

-- drop_queue(force => true) deletes unfinished jobs: their dependents in
-- other queues count them as failed
SELECT atomizer.create_queue('doomed');
SELECT atomizer.enqueue('step', '{"name": "d1"}', queue => 'doomed') AS d1 \gset
SELECT atomizer.enqueue('step', '{"name": "d2"}', queue => 'doomed', depends_on => ARRAY[:d1]) AS d2 \gset
SELECT atomizer.enqueue('step', '{"name": "after_doom"}', queue => 'wf', depends_on => ARRAY[:d1]) AS ad \gset
SELECT atomizer.enqueue('step', '{"name": "sweep_doom"}', queue => 'wf', depends_on => ARRAY[:d2],
						on_dependency_failure => 'run') AS sd \gset
SELECT atomizer.drop_queue('doomed', force => true);
SELECT id, state, blockers, last_error FROM atomizer.jobs WHERE id IN (:ad, :sd) ORDER BY id;
SELECT count(*) AS edges_of_dropped_jobs FROM atomizer.job_dependency WHERE job_id IN (:d1, :d2);
SET ROLE regress_wf_user;
SELECT code, message FROM try($$SELECT atomizer._jobs_deleted(ARRAY[1]::bigint[])$$);
RESET ROLE;

-- with unique_for: the job made in the window waits; a repeat adds nothing
SELECT atomizer.enqueue('step', '{"name": "u"}', queue => 'wf', idempotency_key => 'u',
						unique_for => '1 hour', depends_on => ARRAY[:p]) AS u \gset
SET client_min_messages = warning;	-- (the NOTICE names the window's end)
SELECT atomizer.enqueue('step', '{"name": "u"}', queue => 'wf', idempotency_key => 'u',
						unique_for => '1 hour', depends_on => ARRAY[:t1]) = :u AS same_job;
RESET client_min_messages;
SELECT state, blockers, depends_on = ARRAY[:p]::bigint[] AS waits_for_p FROM atomizer.jobs WHERE id = :u;

-- a chain 1,000 deep: cancelling its head cancels all of it, in one pass each
SELECT atomizer.enqueue('step', '{"name": "head"}', queue => 'wf', run_at => now() + interval '1 hour') AS head \gset
DO $$
DECLARE
	prev bigint := currval('atomizer.job_id_seq');
BEGIN
	FOR i IN 1..1000 LOOP
		prev := atomizer.enqueue('step', jsonb_build_object('name', 'link' || i),
								 queue => 'wf', depends_on => ARRAY[prev]);
	END LOOP;
END
$$;
SELECT count(*) AS blocked_links FROM atomizer.jobs WHERE state = 'blocked' AND payload->>'name' LIKE 'link%';
SELECT atomizer.cancel(:head);
SELECT state, count(*) FROM atomizer.jobs WHERE payload->>'name' LIKE 'link%' GROUP BY state;
-- retry of the head blocks the whole chain again
SELECT atomizer.retry(:head);
SELECT state, count(*) FROM atomizer.jobs WHERE payload->>'name' LIKE 'link%' GROUP BY state;

\c postgres
DROP DATABASE atomizer_workflows;
DROP ROLE regress_wf_user, regress_wf_worker;
