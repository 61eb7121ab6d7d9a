# When max_worker_processes has no slot left for a worker, the scheduler
# says so once, naming the queue and the database (0.1.0 named neither the
# database nor what else takes slots), and jobs still run by run_pending().
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use AtomizerTest;

# the launcher, the scheduler and PostgreSQL's logical replication launcher
# take all three slots
my $node = AtomizerTest::node('no_bgworker_slot', conf => q{
max_worker_processes = 3
});
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT atomizer.enqueue('work');
});
my @lines;
for (1 .. 100)
{
	@lines = log_lines_mentioning($node, 'no background worker slot is free', $offset);
	last if @lines;
	sleep 0.1;
}
like($lines[0] // '', qr/could not start a worker for queue "default" of database "postgres": no background worker slot is free/,
	'the log names the queue and the database');
like(slurp_file($node->logfile, $offset), qr/HINT:  Raise max_worker_processes: .*beside those PostgreSQL itself uses/,
	'and says what else takes slots');
$node->safe_psql('postgres', q{SELECT atomizer.enqueue('work')});
sleep 1;
is(scalar(log_lines_mentioning($node, 'no background worker slot is free', $offset)), 1,
	'once, not at every pass');
is($node->safe_psql('postgres', q{SELECT atomizer.run_pending()}), '2', 'run_pending still runs the jobs');

$node->stop;
done_testing();
