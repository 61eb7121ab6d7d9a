# Failures reach the server log: atomizer.log_failures = dead (the default)
# writes one LOG line per job that ends dead, with queue, job id, handler,
# attempts, SQLSTATE and message; 'all' also one per failed attempt that will
# be retried; 'none' nothing.  0.1.0 wrote no line for any of them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('failure_log');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('flaky', max_attempts => 2, backoff_base => '10 milliseconds',
		backoff_cap => '10 milliseconds');
	SELECT atomizer.create_queue('ext', external => true, max_attempts => 1);
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'boom %', p->>'n' USING ERRCODE = 'data_exception'; END $$;
});

sub run_one
{
	my ($n) = @_;
	my $id = $node->safe_psql('postgres',
		qq{SELECT atomizer.enqueue('boom', '{"n": "$n"}', queue => 'flaky')});
	wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $id},
		'dead', "job $n ended dead");
	return $id;
}

my $offset = -s $node->logfile;
my $id = run_one('one');
my @dead = log_lines_mentioning($node, "job $id of queue", $offset);
is(scalar @dead, 1, 'by default, one line for the dead job');
like($dead[0], qr/LOG:  atomizer: job $id of queue "flaky" \(public\.boom\) is dead after 2 attempt\(s\): SQLSTATE 22000: boom one/,
	'naming queue, job, handler, attempts, SQLSTATE and message');

$node->append_conf('postgresql.conf', "atomizer.log_failures = 'all'");
$node->reload;
$offset = -s $node->logfile;
$id = run_one('two');
my @lines = log_lines_mentioning($node, "job $id of queue", $offset);
is(scalar @lines, 2, "with 'all', one more line for the failed attempt");
like($lines[0], qr/job $id of queue "flaky" \(public\.boom\) failed attempt 1 of 2, to be retried: SQLSTATE 22000: boom two/,
	'the failed attempt');

# external workers' failures too
$offset = -s $node->logfile;
$id = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('resize', queue => 'ext')});
$node->safe_psql('postgres', q{SELECT atomizer.fail(id, 'image too large') FROM atomizer.claim('ext')});
wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $id}, 'dead',
	'the external job is dead');
like((log_lines_mentioning($node, "job $id of queue", $offset))[0],
	qr/job $id of queue "ext" \(resize\) is dead after 1 attempt\(s\): SQLSTATE -: image too large/,
	"an external worker's failure is logged too");

$node->append_conf('postgresql.conf', "atomizer.log_failures = 'none'");
$node->reload;
$offset = -s $node->logfile;
$id = run_one('three');
is(scalar(log_lines_mentioning($node, "job $id of queue", $offset)), 0, "'none' writes nothing");

$node->stop;
done_testing();
