-- bench/setup_run.sql: what bench/run needs beyond bench/setup.sql.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- PL/pgSQL twins of the SQL handlers (PL/pgSQL caches its plans across
-- calls; an SQL-language function is planned again in every subtransaction).
CREATE FUNCTION public.noop_plpgsql(payload jsonb) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN END $$;
CREATE FUNCTION public.effect_plpgsql(payload jsonb) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN INSERT INTO public.effect (i) VALUES ((payload->>'i')::bigint); END $$;

-- Enqueue baseline: the same row in a plain table with a bigserial key.
CREATE TABLE public.bare_job (
	id bigserial PRIMARY KEY,
	queue text NOT NULL,
	handler text NOT NULL,
	payload jsonb NOT NULL,
	run_at timestamptz NOT NULL,
	owner name NOT NULL
);

-- enqueue runs (kept paused), steady state, external workers
SELECT atomizer.create_queue('bench');
SELECT atomizer.pause_queue('bench');
SELECT atomizer.create_queue('steady', concurrency => 2);
SELECT atomizer.create_queue('ext', external => true);
