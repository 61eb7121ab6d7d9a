# Background workers survive crashes, and so do their jobs:
#  (a) a worker killed with SIGKILL in the middle of a job (the postmaster
#      restarts every process): the job is not lost and runs to completion,
#      its effect written once;
#  (b) a poison job whose handler terminates its own worker, enqueued with
#      innocent jobs: the poison ends dead after max_attempts attempts, each
#      recorded as "worker process died", and the innocents succeed once;
#  (c) an immediate shutdown during a load of 10,000 jobs: after the restart
#      every job succeeds and wrote its effect exactly once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
# PostgreSQL::Test::Cluster turns this off; (a) needs the crash restart.
restart_after_crash = on
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (tag text NOT NULL, n int NOT NULL);
	CREATE TABLE slow_mode (slow boolean NOT NULL);
	INSERT INTO slow_mode VALUES (true);
	CREATE FUNCTION work(payload jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO effects VALUES (payload->>'tag', (payload->>'n')::int)
	$$;
	-- the load's handler: a millisecond each, so that the immediate stop
	-- finds the load in full swing however fast the workers are
	CREATE FUNCTION paced(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(0.001);
		INSERT INTO effects VALUES (payload->>'tag', (payload->>'n')::int);
	END $$;
	-- sleeps (to be killed) only while slow_mode says so
	CREATE FUNCTION sleepy(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF (SELECT slow FROM slow_mode) THEN
			PERFORM pg_sleep(30);
		END IF;
		INSERT INTO effects VALUES (payload->>'tag', (payload->>'n')::int);
	END $$;
	-- kills the worker that runs it (the sleep gives the signal a moment
	-- to be acted on inside the handler)
	CREATE FUNCTION poison(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_terminate_backend(pg_backend_pid());
		PERFORM pg_sleep(1);
		INSERT INTO effects VALUES ('poison', 0);
	END $$;
	SELECT atomizer.create_queue('crash', max_attempts => 3,
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0);
	SELECT atomizer.create_queue('poisoned', concurrency => 1, max_attempts => 3,
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0);
	SELECT atomizer.create_queue('load',
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0);
});

# ------------------------------------------------------------- (a) SIGKILL
my $id = $node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('sleepy', '{"tag": "kill", "n": 1}', queue => 'crash')});
my $running = qq{FROM pg_stat_activity WHERE backend_type = 'atomizer worker'
	AND query LIKE 'atomizer job $id:%'};
wait_until($node, 'postgres', "SELECT count(*) $running", '1',
	'the job is running in a worker');
my $pid = $node->safe_psql('postgres', "SELECT pid $running");
is($node->safe_psql('postgres', "SELECT pid FROM atomizer.workers WHERE job_id = $id"),
	$pid, 'atomizer.workers names the same process');
# The next attempt, if any, does not sleep.
$node->safe_psql('postgres', 'UPDATE slow_mode SET slow = false');

my $offset = -s $node->logfile;
ok(kill('KILL', $pid), "SIGKILL to worker $pid");
$node->wait_for_log(qr/\(PID $pid\) was terminated by signal 9/, $offset);
ok(1, 'the postmaster saw the worker die');
$node->wait_for_log(
	qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s,
	$offset);
ok(1, 'the server restarted after the crash');

wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $id",
	'succeeded', 'the killed job was recovered and completed');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM effects WHERE tag = 'kill' AND n = 1}),
	'1', 'its effect was written once');
my ($attempt, $errors, $died) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT attempt,
		   (SELECT count(*) FROM atomizer.job_errors WHERE job_id = $id),
		   (SELECT count(*) FROM atomizer.job_errors WHERE job_id = $id
			   AND message LIKE '%worker process died%')
	  FROM atomizer.jobs WHERE id = $id});
ok($attempt == 1 || $attempt == 2,
	"the crash cost at most one attempt (attempt $attempt)");
is($errors, $attempt - 1, 'one recorded error per failed attempt');
is($died, $errors, "a recorded failure says 'worker process died'");

# ------------------------------------------------------------- (b) poison
# Innocents before and after the poison, all in one transaction.
my $ids = $node->safe_psql('postgres', q{
	BEGIN;
	SELECT atomizer.enqueue_many('work',
		ARRAY['{"tag": "innocent", "n": 1}', '{"tag": "innocent", "n": 2}']::jsonb[],
		queue => 'poisoned');
	SELECT atomizer.enqueue('poison', '{}', queue => 'poisoned');
	SELECT atomizer.enqueue_many('work',
		ARRAY['{"tag": "innocent", "n": 3}', '{"tag": "innocent", "n": 4}',
			  '{"tag": "innocent", "n": 5}']::jsonb[],
		queue => 'poisoned');
	COMMIT;
});
my @ids = split /\n/, $ids;
is(scalar(@ids), 6, 'enqueued a poison job among five innocent ones');
my $poison = $ids[2];

wait_until($node, 'postgres', qq{
	SELECT count(*) FROM atomizer.jobs
	 WHERE queue = 'poisoned' AND state IN ('succeeded', 'dead')},
	'6', 'every job of the poisoned queue finished');
is( $node->safe_psql('postgres',
		"SELECT state, attempt, max_attempts FROM atomizer.jobs WHERE id = $poison"),
	'dead|3|3', 'the poison job is dead after max_attempts attempts');
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(attempt::text, ',' ORDER BY attempt),
			   bool_and(message LIKE '%worker process died%')
		  FROM atomizer.job_errors WHERE job_id = $poison}),
	'1,2,3|t', "one error per attempt, each 'worker process died'");
is( $node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.dead_jobs WHERE id = $poison}),
	'1', 'it is in atomizer.dead_jobs');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1), count(*)
		  FROM atomizer.jobs WHERE queue = 'poisoned' AND handler LIKE '%work'}),
	'5|5', 'the innocent jobs succeeded, their attempts not charged for the deaths');
is( $node->safe_psql('postgres', q{
		SELECT count(*), count(DISTINCT n) FROM effects WHERE tag = 'innocent'}),
	'5|5', 'each innocent effect written once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM effects WHERE tag = 'poison'}),
	'0', 'the poison never got past its own death');

# ------------------------------------------------------------- (c) immediate shutdown under load
# The load is enqueued into the paused queue, then released all at once;
# the server is stopped with -m immediate as soon as the first jobs have
# succeeded, so that the crash hits the workers in full swing.
my $n_jobs = 10_000;
$node->safe_psql('postgres', q{SELECT atomizer.pause_queue('load')});
for my $b (0 .. 9)
{
	my ($lo, $hi) = ($b * 1000 + 1, $b * 1000 + 1000);
	$node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.enqueue_many('paced',
			ARRAY(SELECT jsonb_build_object('tag', 'load', 'n', g)
				    FROM generate_series($lo, $hi) g), queue => 'load')});
}
ok(1, "enqueued $n_jobs jobs in 10 transactions");
$node->safe_psql('postgres', q{SELECT atomizer.resume_queue('load')});
# Poll every 10 ms, bounded by timeout_default.
my $started = 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	if ($node->safe_psql('postgres', q{
		SELECT EXISTS (SELECT 1 FROM atomizer.jobs
						WHERE queue = 'load' AND state = 'succeeded')}) eq 't')
	{
		$started = 1;
		last;
	}
	usleep(10_000);
}
ok($started, 'the load is being worked on')
  or die "stopping: the load did not start\n";
$node->stop('immediate');
$node->start;

wait_until($node, 'postgres', q{
	SELECT count(*) FROM atomizer.jobs WHERE queue = 'load' AND state = 'succeeded'},
	$n_jobs, "after the restart all $n_jobs jobs succeeded");
my ($before, $after) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE finished_at < pg_postmaster_start_time()),
		   count(*) FILTER (WHERE finished_at >= pg_postmaster_start_time())
	  FROM atomizer.jobs WHERE queue = 'load'});
note("$before jobs finished before the crash, $after after the restart");
cmp_ok($after, '>', 0,
	'the crash hit the load mid-way (precondition: some jobs ran after the restart)');
is( $node->safe_psql('postgres', q{
		SELECT count(*), count(DISTINCT n), min(n), max(n) FROM effects WHERE tag = 'load'}),
	"$n_jobs|$n_jobs|1|$n_jobs", 'exactly one effect per job');
is( $node->safe_psql('postgres', q{
		SELECT count(*), max(attempt) <= 2 FROM atomizer.jobs WHERE queue = 'load'}),
	"$n_jobs|t", 'no job lost, none charged more than once for the crash');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM atomizer.job_errors
		 WHERE queue = 'load' AND message NOT LIKE '%worker process died%'}),
	'0', "the only recorded failures are 'worker process died'");

$node->stop;
done_testing();
