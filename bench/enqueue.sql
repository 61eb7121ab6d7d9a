SELECT atomizer.enqueue('noop', '{"a":1}', queue => 'bench');
