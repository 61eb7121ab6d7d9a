# unique_for windows live in atomizer.job_unique until the scheduler prunes
# them once they have passed (a scheduler prunes at its first pass, then
# every minute); the key then makes a new job.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('unique_windows');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
});
my $first = $node->safe_psql('postgres',
	q{SELECT atomizer.enqueue('work', idempotency_key => 'k', unique_for => '1 second')});
wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $first},
	'succeeded', 'the first job ran');
is($node->safe_psql('postgres',
	q{SELECT atomizer.enqueue('work', idempotency_key => 'k', unique_for => '1 second')}),
	$first, 'within the window the key gives the same job');
wait_until($node, 'postgres', q{SELECT bool_and(until < now()) FROM atomizer.job_unique},
	't', 'the window passes');
$node->restart;
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.job_unique}, '0',
	'the scheduler prunes the passed window');
isnt($node->safe_psql('postgres',
	q{SELECT atomizer.enqueue('work', idempotency_key => 'k', unique_for => '1 second')}),
	$first, 'and the key makes a new job');

$node->stop;
done_testing();
