# Background workers run jobs concurrently, within limits: never more jobs
# of a queue at once than its concurrency, never more worker processes than
# atomizer.max_workers.  Two queues of concurrency 2 share a cap of 3; each
# handler records when it ran and in which process, and the overlaps are
# counted from those intervals (and, while the jobs run, sampled from
# pg_stat_activity and atomizer.workers).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(usleep time);

my $max_workers = 3;
my %concurrency = (qa => 2, qb => 2);
my $per_queue = 20;
my $total = $per_queue * keys %concurrency;

my $node = PostgreSQL::Test::Cluster->new('concurrency');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
atomizer.max_workers = $max_workers
# One job per claim, so that every free slot takes the next job.
atomizer.batch_size = 1
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE runs (q text NOT NULL, n int NOT NULL, pid int NOT NULL,
					   started timestamptz NOT NULL, finished timestamptz NOT NULL);
	CREATE FUNCTION slow(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		t0 timestamptz := clock_timestamp();
	BEGIN
		PERFORM pg_sleep(0.3);
		INSERT INTO runs VALUES (payload->>'q', (payload->>'n')::int,
								 pg_backend_pid(), t0, clock_timestamp());
	END $$;
});
for my $q (sort keys %concurrency)
{
	$node->safe_psql('postgres',
		"SELECT atomizer.create_queue('$q', concurrency => $concurrency{$q})");
}

# Both queues' jobs in one transaction, so that they become available together.
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT count(*) FROM atomizer.enqueue_many('slow',
		ARRAY(SELECT jsonb_build_object('q', 'qa', 'n', g)
			    FROM generate_series(1, $per_queue) g), queue => 'qa');
	SELECT count(*) FROM atomizer.enqueue_many('slow',
		ARRAY(SELECT jsonb_build_object('q', 'qb', 'n', g)
			    FROM generate_series(1, $per_queue) g), queue => 'qb');
	COMMIT;
});

# Sample while the jobs run: worker processes, and running workers per
# queue.  Bounded by timeout_default.
my %max_seen = (procs => 0, qa => 0, qb => 0);
my $samples = 0;
my $done = 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	my ($ret, $out, $err) = $node->psql('postgres', q{
		SELECT (SELECT count(*) FROM atomizer.jobs
				 WHERE queue IN ('qa', 'qb') AND state = 'succeeded'),
			   (SELECT count(*) FROM pg_stat_activity
				 WHERE backend_type = 'atomizer worker'),
			   (SELECT count(*) FROM atomizer.workers
				 WHERE queue = 'qa' AND state = 'running'),
			   (SELECT count(*) FROM atomizer.workers
				 WHERE queue = 'qb' AND state = 'running')});
	if ($ret != 0)
	{
		fail('sampling the workers');
		diag($err);
		die "stopping: cannot sample the workers\n";
	}
	my ($succeeded, $procs, $qa, $qb) = split /\|/, $out;
	$samples++;
	$max_seen{procs} = $procs if $procs > $max_seen{procs};
	$max_seen{qa} = $qa if $qa > $max_seen{qa};
	$max_seen{qb} = $qb if $qb > $max_seen{qb};
	if ($succeeded == $total)
	{
		$done = 1;
		last;
	}
	usleep(50_000);
}
ok($done, "all $total jobs succeeded")
  or die "stopping: the jobs did not finish\n";
note("$samples samples; most seen at once: $max_seen{procs} worker processes, "
	  . "$max_seen{qa} running in qa, $max_seen{qb} running in qb");
cmp_ok($max_seen{procs}, '<=', $max_workers,
	'sampled: never more worker processes than atomizer.max_workers');
for my $q (sort keys %concurrency)
{
	cmp_ok($max_seen{$q}, '<=', $concurrency{$q},
		"sampled: never more running workers in $q than its concurrency");
}

# Each handler ran once, in one process at a time.
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(DISTINCT (q, n)) FROM runs}),
	"$total|$total", 'every job ran exactly once');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM atomizer.jobs
		 WHERE queue IN ('qa', 'qb') AND (state <> 'succeeded' OR attempt <> 1)}),
	'0', 'all succeeded at the first attempt');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM runs a JOIN runs b
		  ON a.pid = b.pid AND (a.q, a.n) <> (b.q, b.n)
		 AND a.started < b.finished AND b.started < a.finished}),
	'0', 'a worker process runs one job at a time');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM runs r JOIN pg_stat_activity a ON a.pid = r.pid
		 WHERE a.backend_type IS DISTINCT FROM 'atomizer worker'}),
	'0', 'the jobs ran in atomizer worker processes');

# The most intervals open at one instant (counted at each start).
my $per_queue_overlap = $node->safe_psql('postgres', q{
	SELECT s.q, max((SELECT count(*) FROM runs r
					  WHERE r.q = s.q AND r.started <= s.started
					    AND r.finished > s.started))
	  FROM runs s GROUP BY s.q ORDER BY s.q});
my %overlap = map { split /\|/ } split /\n/, $per_queue_overlap;
for my $q (sort keys %concurrency)
{
	ok(defined $overlap{$q}, "$q has recorded runs");
	cmp_ok($overlap{$q} // 0, '<=', $concurrency{$q},
		"at most $concurrency{$q} jobs of $q ran at once (most: "
		  . ($overlap{$q} // 'none') . ')');
}
my $global = $node->safe_psql('postgres', q{
	SELECT max((SELECT count(*) FROM runs r
				 WHERE r.started <= s.started AND r.finished > s.started))
	  FROM runs s});
cmp_ok($global, '<=', $max_workers,
	"at most $max_workers jobs ran at once over both queues (most: $global)");
is( $node->safe_psql('postgres', q{
		SELECT max((SELECT count(DISTINCT r.pid) FROM runs r
					 WHERE r.started <= s.started AND r.finished > s.started))
		  FROM runs s}),
	$global, 'as many distinct processes as jobs at that instant');
cmp_ok($global, '>=', 2, 'jobs did run concurrently');

$node->stop;
done_testing();
