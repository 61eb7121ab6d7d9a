# A graceful stop (pg_ctl stop -m fast) neither loses nor double-counts a
# job: a job that ends within atomizer.shutdown_timeout finishes and is
# recorded before the server stops; a longer one is cancelled at the
# deadline and released, available again with its attempt not counted; the
# jobs of a batch cut short are either finished or released.  After each
# stop the server starts with atomizer.enabled = off, so that what the stop
# left behind can be inspected before the workers run it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(time);

# Wait until a worker shows job $id running.
sub wait_running
{
	my ($node, $id, $name) = @_;
	wait_until($node, 'postgres', qq{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'atomizer worker' AND query LIKE 'atomizer job $id:%'},
		'1', $name);
	return;
}

# Stop the server gracefully; start it again with the workers disabled.
sub stop_and_start_disabled
{
	my ($node, $extra_conf) = @_;
	my $t0 = time();
	$node->stop('fast');
	my $elapsed = time() - $t0;
	$node->append_conf('postgresql.conf',
		"atomizer.enabled = off\n" . ($extra_conf // ''));
	$node->start;
	return $elapsed;
}

# Turn the workers back on.
sub enable
{
	my ($node) = @_;
	$node->append_conf('postgresql.conf', 'atomizer.enabled = on');
	$node->reload;
	return;
}

my $node = PostgreSQL::Test::Cluster->new('shutdown');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
atomizer.shutdown_timeout = '5s'
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (n int NOT NULL);
	CREATE TABLE mode (slow boolean NOT NULL);
	INSERT INTO mode VALUES (true);
	-- sleeps payload.s seconds while mode says so, then writes its effect
	CREATE FUNCTION nap(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT slow FROM mode) THEN
			PERFORM pg_sleep((payload->>'s')::float8);
		END IF;
		INSERT INTO effects VALUES ((payload->>'n')::int);
	END $$;
	SELECT atomizer.create_queue('shut',
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0);
});

# ------------------------------------------------------------- finishes within the timeout
my $short = $node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('nap', '{"n": 1, "s": 2}', queue => 'shut')});
wait_running($node, $short, 'a 2 s job is running');
stop_and_start_disabled($node, "atomizer.shutdown_timeout = '1s'\n");

is( $node->safe_psql('postgres', qq{
		SELECT state, attempt, finished_at < pg_postmaster_start_time()
		  FROM atomizer.jobs WHERE id = $short}),
	'succeeded|1|t',
	'shutdown_timeout 5 s: the running 2 s job finished before the server stopped');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects WHERE n = 1'),
	'1', 'its effect was written once');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.job_errors WHERE job_id = $short"),
	'0', 'no error recorded');
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.jobs WHERE state = 'running'}),
	'0', 'nothing left running');
enable($node);

# ------------------------------------------------------------- cancelled at the deadline
my $long = $node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('nap', '{"n": 2, "s": 60}', queue => 'shut')});
wait_running($node, $long, 'a 60 s job is running');
# Its next run will be quick.
$node->safe_psql('postgres', 'UPDATE mode SET slow = false');
my $elapsed = stop_and_start_disabled($node);
cmp_ok($elapsed, '<', 20,
	sprintf('shutdown_timeout 1 s: the stop did not wait for the 60 s job (%.1f s)',
		$elapsed));
is( $node->safe_psql('postgres', qq{
		SELECT state, attempt FROM atomizer.jobs WHERE id = $long}),
	'available|0', 'the cancelled job is available again, its attempt not counted');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.job_errors WHERE job_id = $long"),
	'0', 'the stop is not recorded as a failure of the job');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects WHERE n = 2'),
	'0', 'the cancelled attempt left no effect');
enable($node);
wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $long",
	'succeeded', 'after the restart the job runs again');
is( $node->safe_psql('postgres', qq{
		SELECT attempt, finished_at > pg_postmaster_start_time()
		  FROM atomizer.jobs WHERE id = $long}),
	'1|t', 'at its first counted attempt');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects WHERE n = 2'),
	'1', 'its effect was written once');

# ------------------------------------------------------------- a batch cut short
$node->safe_psql('postgres', 'UPDATE mode SET slow = true');
my @batch = split /\n/, $node->safe_psql('postgres', q{
	SELECT atomizer.enqueue_many('nap',
		ARRAY(SELECT jsonb_build_object('n', g, 's', 0.3)
			    FROM generate_series(10, 21) g), queue => 'shut')});
is(scalar(@batch), 12, 'enqueued 12 jobs of 0.3 s');
my $in_batch = 'id IN (' . join(', ', @batch) . ')';
wait_until($node, 'postgres', qq{
	SELECT count(*) > 0 FROM pg_stat_activity
	 WHERE backend_type = 'atomizer worker'
	   AND substring(query FROM '^atomizer job ([0-9]+):')::bigint >= $batch[2]},
	't', 'the workers are into the batch');
stop_and_start_disabled($node);
my ($succeeded, $bad) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT count(*) FILTER (WHERE state = 'succeeded'),
		   count(*) FILTER (WHERE NOT ((state = 'succeeded' AND attempt = 1
										 AND e.c = 1)
									OR (state = 'available' AND attempt = 0
										 AND e.c = 0)))
	  FROM atomizer.jobs j,
		   LATERAL (SELECT count(*) AS c FROM effects
					 WHERE n = (j.payload->>'n')::int) e
	 WHERE j.$in_batch});
note("$succeeded of 12 jobs finished before the stop");
cmp_ok($succeeded, '>=', 1, 'the job running at the stop finished');
is($bad, '0',
	'every job is either succeeded (attempt 1, one effect) or available (attempt 0, no effect)');
is( $node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.job_errors WHERE job_$in_batch}),
	'0', 'no failures recorded');
enable($node);
wait_until($node, 'postgres', qq{
	SELECT count(*) FROM atomizer.jobs
	 WHERE $in_batch AND state = 'succeeded'},
	'12', 'after the restart the rest of the batch ran');
is( $node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.jobs
		 WHERE $in_batch AND attempt <> 1}),
	'0', 'each at its first counted attempt');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT n) FROM effects WHERE n >= 10'),
	'12|12', 'each effect written once');

$node->stop;
done_testing();
