-- bench/bare_move.sql: pgbench script of the bare limit of a queue that
-- keeps a history: each transaction takes 64 rows nobody else holds,
-- deletes them and inserts them into a history table, in one statement; no
-- per-row state is written before (no claim), nothing runs.
WITH c AS (SELECT id FROM naive_q ORDER BY id LIMIT 64 FOR UPDATE SKIP LOCKED),
	 d AS (DELETE FROM naive_q q USING c WHERE q.id = c.id RETURNING q.id, q.payload)
INSERT INTO naive_done (id, payload, finished_at) SELECT id, payload, now() FROM d;
