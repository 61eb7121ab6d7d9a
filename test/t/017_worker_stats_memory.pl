# Long-lived background processes in production: workers report table
# statistics while they work (autovacuum must see the dead rows they make,
# not only after they exit), and the memory of a worker and of a scheduler
# stays flat over tens of thousands of jobs and passes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('stats', conf => q{
# one job per batch: a batch is one pass of the worker's loop, so 20,000
# jobs are 20,000 passes
atomizer.batch_size = 1
# a scheduler pass every 10 ms at the least
atomizer.poll_interval = '10ms'
atomizer.worker_idle_timeout = '10min'
# autovacuum would reset the counters under test
autovacuum = off
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('mem', concurrency => 1);
	CREATE FUNCTION noop(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
});

# ---------------------------------------------------------------- statistics
$node->safe_psql('postgres',
	q{SELECT atomizer.enqueue_many('noop', array_fill('{}'::jsonb, ARRAY[2000]), queue => 'mem')});
wait_until($node, 'postgres',
	q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'mem' AND state = 'succeeded'},
	'2000', '2,000 jobs ran');
my $worker = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'atomizer worker mem'});
ok($worker > 0, "the queue's worker ($worker) is still alive");
# Each claim updates a job's row and each finish deletes it: the worker's
# own counts reach the statistics within about a second (pgstat's rate),
# while it lives.
wait_until($node, 'postgres', q{
	SELECT n_tup_upd >= 2000 AND n_tup_del >= 2000 AND n_dead_tup > 0
	FROM pg_stat_user_tables WHERE relid = 'atomizer.job'::regclass},
	't', "pg_stat_user_tables counts the worker's updates, deletes and dead rows while it runs");
is($node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'atomizer worker mem'}),
	$worker, '(the same worker, still running)');

# ---------------------------------------------------------------- memory
# pg_log_backend_memory_contexts writes a process's memory contexts to the
# log, TopMemoryContext first.  What a loop allocates outside its per-pass
# context lands in TopMemoryContext itself (0.1.0's leak did); its children
# (caches, kept plans) grow once, when a duty first runs, so they are not
# counted: the bytes TopMemoryContext itself uses are.
sub memory_of
{
	my ($pid) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
	my $used;
	for (1 .. 100)
	{
		my $log = slurp_file($node->logfile, $offset);
		if ($log =~ /\[$pid\][^\n]*level: \d+; TopMemoryContext: \d+ total in \d+ blocks; \d+ free \(\d+ chunks\); (\d+) used/)
		{
			$used = $1;
			last;
		}
		select(undef, undef, undef, 0.1);
	}
	die "no memory report from process $pid" unless defined $used;
	return $used;
}

my $scheduler = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'atomizer scheduler'});
ok($scheduler > 0, "the database's scheduler ($scheduler) runs");

my $worker_before = memory_of($worker);
my $scheduler_before = memory_of($scheduler);
my $passes_sql = q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'mem' AND state = 'succeeded'};
$node->safe_psql('postgres',
	q{SELECT atomizer.enqueue_many('noop', array_fill('{}'::jsonb, ARRAY[20000]), queue => 'mem')});
wait_until($node, 'postgres', $passes_sql, '22000',
	'20,000 more jobs ran, one per batch');
is($node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE application_name = 'atomizer worker mem'}),
	$worker, 'by the same worker');
my $worker_after = memory_of($worker);
my $scheduler_after = memory_of($scheduler);
note("TopMemoryContext used: worker $worker_before -> $worker_after bytes; scheduler $scheduler_before -> $scheduler_after bytes");

# 0.1.0 leaked about 200 bytes a pass into TopMemoryContext: megabytes
# here.
cmp_ok($worker_after - $worker_before, '<', 16 * 1024,
	"the worker's memory stays flat over 20,000 batches ($worker_before -> $worker_after bytes)");
cmp_ok($scheduler_after - $scheduler_before, '<', 16 * 1024,
	"the scheduler's memory stays flat over its passes ($scheduler_before -> $scheduler_after bytes)");

$node->stop;
done_testing();
