SELECT count(*) FROM atomizer.enqueue_many('noop', (SELECT array_agg('{"a":1}'::jsonb) FROM generate_series(1,1000)), queue => 'bench');
