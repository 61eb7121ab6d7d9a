# pg_dump of a database with atomizer keeps its queues, jobs (waiting,
# retrying, finished, dead), error history and id sequence; the restored
# database runs the restored jobs.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'atomizer'\natomizer.enabled = off");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (n int);
	CREATE FUNCTION work(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
		INSERT INTO effects VALUES ((payload->>'n')::int) RETURNING jsonb_build_object('n', n)
	$$;
	CREATE FUNCTION fail(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'always fails'; END $$;
	SELECT atomizer.create_queue('mail', max_attempts => 2, backoff_base => '1 hour', backoff_jitter => 0);
	SELECT atomizer.enqueue('work', '{"n": 1}');
	SELECT atomizer.enqueue('fail', '{}', queue => 'mail', max_attempts => 1);
	SELECT atomizer.enqueue('fail', '{}', queue => 'mail');
	SELECT atomizer.run_pending();
	SELECT atomizer.enqueue('work', '{"n": 2}', priority => 3, idempotency_key => 'k');
	SELECT atomizer.enqueue('work', '{"n": 3}', run_at => now() + interval '1 hour');
});

my $jobs_sql = q{SELECT id, queue, handler, payload, state, priority, attempt,
	max_attempts, owner, idempotency_key, result, last_error
	FROM atomizer.jobs ORDER BY id};
my $errors_sql = q{SELECT job_id, attempt, sqlstate, message FROM atomizer.job_errors
	ORDER BY job_id, attempt};
my $queues_sql = q{SELECT name, max_attempts, backoff_jitter FROM atomizer.queue ORDER BY name};

my $jobs_before = $node->safe_psql('src', $jobs_sql);
like($jobs_before, qr/succeeded/, 'source has a succeeded job');
like($jobs_before, qr/dead/, 'source has a dead job');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/src.sql';
$node->command_ok([ 'pg_dump', '--no-sync', '-f', $dump, $node->connstr('src') ],
	'pg_dump of a database with atomizer');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $dump,
	$node->connstr('dst') ], 'restore into a new database');

is($node->safe_psql('dst', $jobs_sql), $jobs_before, 'jobs restored');
is($node->safe_psql('dst', $errors_sql), $node->safe_psql('src', $errors_sql),
	'error history restored');
is($node->safe_psql('dst', $queues_sql), $node->safe_psql('src', $queues_sql),
	'queues restored, the default queue once');

my $max_id = $node->safe_psql('dst', 'SELECT max(id) FROM atomizer.jobs');
cmp_ok($node->safe_psql('dst', q{SELECT atomizer.enqueue('work', '{"n": 4}')}),
	'>', $max_id, 'the id sequence continues after the restored jobs');
is($node->safe_psql('dst', q{SELECT atomizer.enqueue('work', '{"n": 9}', idempotency_key => 'k')}),
	$node->safe_psql('src', q{SELECT id FROM atomizer.jobs WHERE idempotency_key = 'k'}),
	'a restored idempotency key still deduplicates');

is($node->safe_psql('dst', 'SELECT atomizer.run_pending()'), '2',
	'the restored due jobs run');
is($node->safe_psql('dst', 'SELECT array_agg(n ORDER BY n) FROM effects'), '{1,2,4}',
	'with their effects');

$node->stop;
done_testing();
