-- bench/setup.sql: schema for bench/workers.sh (run once in a fresh database).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE EXTENSION atomizer;

-- Handlers.  noop: nothing at all.  effect: one row per job.
-- lat_mark: the time its handler started, for the latency test.
CREATE FUNCTION public.noop(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';

CREATE TABLE public.effect (i bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION public.effect(payload jsonb) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.effect (i) VALUES ((payload->>'i')::bigint) $$;

CREATE TABLE public.lat (i integer PRIMARY KEY, started timestamptz NOT NULL);
CREATE FUNCTION public.lat_mark(payload jsonb) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.lat (i, started) VALUES ((payload->>'i')::int, clock_timestamp()) $$;

-- Latency baseline: a durable commit of one row in a plain table.
CREATE TABLE public.commit_probe (i integer NOT NULL);

-- The drains run on queue "drain"; the resume_queue() probe and the latency
-- test on "default".  No other queue: each idle queue adds to the
-- scheduler's work (see bench/README.md).
SELECT atomizer.create_queue('drain', concurrency => 2);

-- Baseline: a plain-SQL queue drained with FOR UPDATE SKIP LOCKED.
CREATE TABLE public.naive_q (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
-- and the bare limit of a batched move into a history (bench/bare_move.sql)
CREATE TABLE public.naive_done (id bigint PRIMARY KEY, payload jsonb NOT NULL,
								finished_at timestamptz NOT NULL);
