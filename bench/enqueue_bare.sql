INSERT INTO public.bare_job (queue, handler, payload, run_at, owner) VALUES ('bench', 'public.noop', '{"a":1}', now(), current_user);
