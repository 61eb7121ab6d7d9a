-- Batches for external workers: complete_many() with results and attempts,
-- and claim(completed => ...), which completes the last batch and claims the
-- next in one call; all or nothing, with the error of the first job that is
-- wrong; hooks still run.
CREATE DATABASE atomizer_external_batch;
\c atomizer_external_batch
CREATE EXTENSION atomizer;
\set SHOW_CONTEXT never
CREATE FUNCTION try(sql text, OUT code text, OUT message text) LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	code := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
	message := regexp_replace(message, '\d{4}-\d\d-\d\d [0-9:.+-]+', '<time>');
END
$$;
SELECT atomizer.create_queue('b', external => true, backoff_jitter => 0);
SELECT count(atomizer.enqueue('t', jsonb_build_object('n', i), queue => 'b'))
  FROM generate_series(1, 8) i;
CREATE TEMP TABLE c AS SELECT id, attempt FROM atomizer.claim('b', 3);
-- complete_many with results and attempts
SELECT atomizer.complete_many(array_agg(id ORDER BY id),
                              array_agg(jsonb_build_object('r', id) ORDER BY id),
                              array_agg(attempt ORDER BY id)) FROM c;
SELECT state, result = jsonb_build_object('r', id) AS has_result
  FROM atomizer.jobs WHERE id IN (SELECT id FROM c) ORDER BY id;
-- claim(completed => ...): the last batch done and the next claimed, one call
TRUNCATE c;
INSERT INTO c SELECT id, attempt FROM atomizer.claim('b', 2);
CREATE TEMP TABLE c2 AS
  SELECT id, attempt FROM atomizer.claim('b', 2,
           completed => (SELECT array_agg(id ORDER BY id) FROM c),
           results => (SELECT array_agg(NULL::jsonb) FROM c),
           completed_attempts => (SELECT array_agg(attempt ORDER BY id) FROM c));
SELECT count(*) AS claimed FROM c2;
SELECT state, count(*) FROM atomizer.jobs WHERE queue = 'b' GROUP BY state ORDER BY state;
-- no results and no attempts: fine too
SELECT count(*) AS claimed FROM atomizer.claim('b', 10,
           completed => (SELECT array_agg(id) FROM c2));
SELECT state, count(*) FROM atomizer.jobs WHERE queue = 'b' GROUP BY state ORDER BY state;
-- all or nothing: a wrong attempt, an id done already, a repeated id,
-- arrays of the wrong length; nothing is completed, nothing claimed
SELECT count(*) AS claimed FROM atomizer.claim('b', 1,
           completed => (SELECT array_agg(id) FROM atomizer.jobs
                          WHERE queue = 'b' AND state = 'running'));
SELECT count(atomizer.enqueue('t', '{}', queue => 'b')) FROM generate_series(1, 3);
TRUNCATE c;
INSERT INTO c SELECT id, attempt FROM atomizer.claim('b', 3);
SELECT count(*) AS running FROM c;
SELECT * FROM try(format('SELECT atomizer.complete_many(%L::bigint[], NULL, %L::int[])',
                         (SELECT array_agg(id ORDER BY id) FROM c),
                         (SELECT array_agg(attempt + 1) FROM c)));
SELECT * FROM try(format('SELECT * FROM atomizer.claim(''b'', 1, completed => %L::bigint[])',
                         (SELECT array_agg(id ORDER BY id) FROM c) ||
                         (SELECT min(id) FROM atomizer.jobs WHERE queue = 'b' AND state = 'succeeded')));
SELECT * FROM try(format('SELECT atomizer.complete_many(%L::bigint[])',
                         (SELECT array_agg(id) FROM c) || (SELECT min(id) FROM c)));
SELECT * FROM try(format('SELECT atomizer.complete_many(%L::bigint[], ARRAY[''{}''::jsonb])',
                         (SELECT array_agg(id) FROM c)));
SELECT * FROM try(format('SELECT atomizer.complete_many(%L::bigint[], NULL, ARRAY[1])',
                         (SELECT array_agg(id) FROM c)));
SELECT * FROM try('SELECT * FROM atomizer.claim(''b'', 1, completed => ARRAY[NULL]::bigint[])');
SELECT state, count(*) FROM atomizer.jobs WHERE queue = 'b' GROUP BY state ORDER BY state;
-- a cancelled job among them: the dedicated SQLSTATE
SELECT atomizer.cancel((SELECT min(id) FROM c));
SELECT * FROM try(format('SELECT atomizer.complete_many(%L::bigint[])',
                         (SELECT array_agg(id) FROM c)));
SELECT atomizer.complete_many((SELECT array_agg(id) FROM c WHERE id > (SELECT min(id) FROM c)));
-- an on_success hook runs for each job of a batch
CREATE TABLE seen (id bigint);
CREATE FUNCTION note_success(job jsonb) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO seen VALUES ((job->>'id')::bigint) $$;
SELECT atomizer.alter_queue('b', on_success => 'note_success');
SELECT count(atomizer.enqueue('t', '{}', queue => 'b')) FROM generate_series(1, 3);
TRUNCATE c;
INSERT INTO c SELECT id, attempt FROM atomizer.claim('b', 3);
SELECT count(*) AS claimed FROM atomizer.claim('b', 1,
           completed => (SELECT array_agg(id) FROM c),
           results => (SELECT array_agg('{"ok": true}'::jsonb) FROM c));
SELECT count(*) AS hooks_ran FROM seen WHERE id IN (SELECT id FROM c);
SELECT count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE result = '{"ok": true}') AS with_result
  FROM atomizer.jobs WHERE id IN (SELECT id FROM c);
