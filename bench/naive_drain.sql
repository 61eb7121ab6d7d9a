-- bench/naive_drain.sql: pgbench script of the baseline queue; each
-- transaction takes 10 rows nobody else holds and deletes them.
WITH c AS (SELECT id FROM naive_q ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED)
DELETE FROM naive_q q USING c WHERE q.id = c.id;
