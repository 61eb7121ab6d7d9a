# atomizer on a server that does not preload it: CREATE EXTENSION and LOAD
# work (0.1.0 ended the session with "FATAL: cannot create PGC_POSTMASTER
# variables after startup"), CREATE EXTENSION says once, with the line for
# postgresql.conf, that background workers need preloading, and everything
# that needs no background process works in the session: enqueue, run_pending,
# retries, cron fired by _tick, external workers, the views.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('no_preload', preload => 0);

my ($rc, $out, $err) = $node->psql('postgres', q{CREATE EXTENSION atomizer});
is($rc, 0, 'CREATE EXTENSION works without shared_preload_libraries');
like($err, qr/WARNING:  atomizer is not in shared_preload_libraries: no background worker will run jobs/,
	'and says that no background worker will run jobs');
like($err, qr/HINT:  Add this line to postgresql.conf and restart the server: shared_preload_libraries = 'atomizer'/,
	'with the line to add to postgresql.conf');

($rc, $out, $err) = $node->psql('postgres', q{LOAD 'atomizer'; SELECT 1});
is($rc, 0, "LOAD 'atomizer' works too");
is($out, '1', '(the session lives on)');

# jobs run in the session
$node->safe_psql('postgres', q{
	CREATE TABLE done (n int);
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO done VALUES ((p->>'n')::int)
	$$;
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'boom'; END $$;
	SELECT atomizer.enqueue_many('work', ARRAY['{"n": 1}', '{"n": 2}']::jsonb[]);
	SELECT atomizer.enqueue('boom', max_attempts => 1);
});
is($node->safe_psql('postgres', q{SELECT atomizer.run_pending()}), '3', 'run_pending runs the jobs');
is($node->safe_psql('postgres', q{SELECT string_agg(n::text, ',' ORDER BY n) FROM done}), '1,2',
	'their effects are there');
is($node->safe_psql('postgres', q{SELECT string_agg(state, ',' ORDER BY id) FROM atomizer.jobs}),
	'succeeded,succeeded,dead', 'and their outcomes');

# cron: a pass fired by hand
$node->safe_psql('postgres', q{
	SELECT atomizer.schedule('tick', '* * * * *', 'work', '{"n": 3}')});
is($node->safe_psql('postgres', q{SELECT atomizer._tick(now() + interval '2 minutes')}), '1',
	'a cron pass by hand fires the schedule');
$node->safe_psql('postgres', q{SELECT atomizer.run_pending()});
is($node->safe_psql('postgres', q{SELECT count(*) FROM done WHERE n = 3}), '1', 'and its job runs');

# external workers
$node->safe_psql('postgres', q{SELECT atomizer.create_queue('ext', external => true)});
$node->safe_psql('postgres', q{SELECT atomizer.enqueue('resize', queue => 'ext')});
is($node->safe_psql('postgres', q{SELECT count(atomizer.complete(id)) FROM atomizer.claim('ext')}), '1',
	'an external worker claims and completes');

# wait() without the shared condition variable: it looks by itself
my $done = $node->safe_psql('postgres', q{SELECT max(id) FROM atomizer.jobs WHERE state = 'succeeded'});
is($node->safe_psql('postgres', qq{SELECT state FROM atomizer.wait($done, '5 seconds')}), 'succeeded',
	'wait() answers without preloading');
my $later = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('work', '{"n": 9}')});
is($node->safe_psql('postgres', qq{SELECT state FROM atomizer.wait($later, '300 milliseconds')}), 'available',
	'and returns at the timeout when nothing runs the job');

# the views answer (nothing runs in the background)
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.workers}), '0', 'no workers');
is($node->safe_psql('postgres', q{SELECT succeeded FROM atomizer.queue_stats WHERE queue = 'default'}),
	'3', 'queue_stats counts');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM atomizer.metrics WHERE name = 'atomizer_jobs_finished_total'}),
	'0', 'metrics: no counters without the shared memory preloading gives');

$node->stop;
done_testing();
