INSERT INTO public.bare_job (queue, handler, payload, run_at, owner) SELECT 'bench', 'public.noop', '{"a":1}', now(), current_user FROM generate_series(1,1000);
