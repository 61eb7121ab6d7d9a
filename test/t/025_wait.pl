# atomizer.wait() and wait_all(): they return a job's outcome as soon as the
# worker's commit finished it (woken by that commit), or its state when the
# timeout passes; a role waits for its own jobs only; refused inside a
# transaction block and inside a handler.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use AtomizerTest;

my $node = AtomizerTest::node('wait');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE FUNCTION slow(p jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep((p->>'s')::float8);
		RETURN jsonb_build_object('slept', p->'s');
	END $$;
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'boom'; END $$;
	CREATE FUNCTION waits(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN PERFORM atomizer.wait(1); END $$;
	CREATE ROLE other;
	GRANT USAGE ON SCHEMA atomizer TO other;
});

my $id = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('slow', '{"s": 0.5}')});
my $t0 = time;
is($node->safe_psql('postgres', qq{SELECT state, result FROM atomizer.wait($id, '60 seconds')}),
	'succeeded|{"slept": 0.5}', 'wait() returns the outcome and the result');
cmp_ok(time - $t0, '<', 30, '(when the job finished, not at the timeout)');

$id = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('boom', max_attempts => 1)});
is($node->safe_psql('postgres', qq{SELECT state, last_error FROM atomizer.wait($id)}),
	'dead|boom', 'a dead job: its last error');

$id = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('slow', '{"s": 3}')});
is($node->safe_psql('postgres', qq{SELECT state, result FROM atomizer.wait($id, '200 milliseconds')}),
	'running|', 'the timeout passes first: the state now');
is($node->safe_psql('postgres', q{SELECT atomizer.cancel(atomizer.enqueue('slow', '{"s": 0}', run_at => now() + interval '1 hour'))}),
	't', '(a delayed job cancelled)');

my $ids = $node->safe_psql('postgres', q{
	SELECT array_agg(id) FROM (SELECT atomizer.enqueue('slow', jsonb_build_object('s', 0.1 * i)) AS id
	                             FROM generate_series(1, 4) i) x});
is($node->safe_psql('postgres', qq{SELECT string_agg(state, ',' ORDER BY job_id) FROM atomizer.wait_all('$ids', '60 seconds')}),
	'succeeded,succeeded,succeeded,succeeded', 'wait_all() returns when all have finished');

# who may wait, and where
my ($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE other; SELECT * FROM atomizer.wait($id)});
like($err, qr/job $id does not exist/, "another role's job is not there for it");
($rc, $out, $err) = $node->psql('postgres', qq{BEGIN; SELECT * FROM atomizer.wait($id); COMMIT;});
like($err, qr/atomizer\.wait\(\) cannot run inside a transaction block.*HINT:  Commit first/s,
	'refused inside a transaction block, with the reason');
$id = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('waits', max_attempts => 1)});
is($node->safe_psql('postgres', qq{SELECT state, last_error FROM atomizer.wait($id)}),
	"dead|atomizer.wait() cannot be called from a job's handler", 'refused in a handler');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM atomizer.wait(1, '-1 second')});
like($err, qr/timeout must not be negative/, 'a negative timeout is refused');

$node->stop;
done_testing();
