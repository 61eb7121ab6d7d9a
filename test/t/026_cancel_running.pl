# cancel() of a job that one of atomizer's workers runs: the worker stops
# that job's handler (its writes are rolled back), records the job
# cancelled, and goes on with the next job.  A cancel that rolls back asks
# nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('cancel_running');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('one', concurrency => 1);
	CREATE TABLE effects (tag text);
	CREATE FUNCTION long(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO effects VALUES (p->>'tag');
		PERFORM pg_sleep((p->>'s')::float8);
	END $$;
});

sub start_long
{
	my ($tag, $s) = @_;
	my $id = $node->safe_psql('postgres',
		qq{SELECT atomizer.enqueue('long', '{"tag": "$tag", "s": $s}', queue => 'one')});
	wait_until($node, 'postgres', qq{SELECT count(*) FROM atomizer.workers WHERE job_id = $id},
		'1', "job $tag runs");
	return $id;
}

# a rolled-back cancel asks nothing
my $id = start_long('kept', 2);
$node->safe_psql('postgres', qq{BEGIN; SELECT atomizer.cancel($id); ROLLBACK;});
wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $id}, 'succeeded',
	'a cancel that rolled back leaves the running job alone');

$id = start_long('cancelled', 60);
my $next = $node->safe_psql('postgres',
	q{SELECT atomizer.enqueue('long', '{"tag": "next", "s": 0}', queue => 'one')});
is($node->safe_psql('postgres', qq{SELECT atomizer.cancel($id)}), 't',
	'cancel() of a running job says it was asked');
wait_until($node, 'postgres', qq{SELECT state, last_error FROM atomizer.jobs WHERE id = $id},
	'cancelled|cancelled while running', 'the worker stops the handler and records the job cancelled');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE tag = 'cancelled'}), '0',
	"the cancelled handler's writes are rolled back");
wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $next}, 'succeeded',
	'the worker goes on with the next job');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE tag = 'next'}), '1',
	'(whose writes are there)');
is($node->safe_psql('postgres', qq{SELECT atomizer.cancel($id)}), 'f',
	'a finished job cannot be cancelled again');
is($node->safe_psql('postgres',
	q{SELECT value FROM atomizer.metrics WHERE name = 'atomizer_jobs_finished_total'
	   AND labels->>'queue' = 'one' AND labels->>'outcome' = 'cancelled'}), '1',
	'the metrics count it cancelled');

$node->stop;
done_testing();
