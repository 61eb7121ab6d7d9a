# A second external worker, written in Python with psycopg2
# (test/python/worker.py), drives the documented protocol against a live
# server: the protocol is plain SQL.  Two Python workers, logged in as a
# member of atomizer_worker (not a superuser), one claiming one job at a
# time with complete/fail, the other claiming batches of 25 and reporting
# with complete_many, drain N jobs enqueued after they started listening
# (so NOTIFY wakes them: their poll is 60 s): every job completes exactly
# once, and a failing job is retried and then succeeds.  A worker that
# reports each batch with the next claim (claim(completed => ...)) stores
# every result, each job once.  A slow job keeps
# its 2 s lease alive with heartbeats for 5 s.  SIGTERM releases the jobs
# of a batch not started yet.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;
use Time::HiRes qw(usleep time);
use File::Basename qw(dirname);
use Cwd qw(abs_path);

my $python = '/usr/bin/python3';
my $worker_py = abs_path(dirname(__FILE__) . '/../python/worker.py');
ok(-e $worker_py, "the Python worker exists: $worker_py");
{
	my $rc = system($python, '-c', 'import psycopg2');
	plan skip_all => "$python has no psycopg2 (apt-get install python3-psycopg2)"
	  if $rc != 0;
}

my $tmp = PostgreSQL::Test::Utils::tempdir;

my $nw = 0;
sub start_py
{
	my @args = @_;
	$nw++;
	return AtomizerTest::start_process("$tmp/py$nw", $python, $worker_py, @args);
}

sub finish_py { return AtomizerTest::finish_process(@_); }

my $node = PostgreSQL::Test::Cluster->new('py');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('py', external => true, max_attempts => 3,
		backoff_base => '100ms', backoff_cap => '200ms');
	SELECT atomizer.create_queue('slow', external => true);
	SELECT atomizer.create_queue('stop', external => true);
	SELECT atomizer.create_queue('batched', external => true);
	CREATE ROLE pyworker LOGIN IN ROLE atomizer_worker;
});
my $dsn = $node->connstr('postgres') . ' user=pyworker';

# ------------------------------------------------------------- drain N jobs
my $n = 400;
my ($h1, $log1) = start_py('--dsn', $dsn, '--queue', 'py', '--batch', '1',
	'--poll', '60', '--fail-task', 'explode', '--out', "$tmp/runs1");
my ($h2, $log2) = start_py('--dsn', $dsn, '--queue', 'py', '--batch', '25',
	'--complete-many', '--poll', '60', '--fail-task', 'explode',
	'--out', "$tmp/runs2");
wait_until($node, 'postgres', q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'worker.py' AND usename = 'pyworker'},
	'2', 'two Python workers are connected as pyworker');
usleep(500_000);    # let both reach their LISTEN and first (empty) claim

my $t0 = time;
my $explode = $node->safe_psql('postgres', qq{
	SELECT count(*) FROM atomizer.enqueue_many('work',
		ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $n) g),
		queue => 'py');
	SELECT atomizer.enqueue('explode', '{}', queue => 'py');
});
($explode) = (split /\n/, $explode)[1];
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs
	WHERE queue = 'py' AND handler = 'work' AND state = 'succeeded'}, $n,
	"all $n jobs succeeded");
my $elapsed = time - $t0;
cmp_ok($elapsed, '<', 20, 'well before the 60 s poll: NOTIFY woke the workers');
note(sprintf('%d jobs drained by two Python workers in %.2f s', $n, $elapsed));
wait_until($node, 'postgres', qq{SELECT state FROM atomizer.jobs WHERE id = $explode},
	'succeeded', 'the failing job succeeded too');
note(sprintf('the failing job succeeded %.2f s after the enqueue', time - $t0));
$h1->signal('TERM');
$h2->signal('TERM');
is(finish_py($h1), 0, 'worker 1 exits 0 on SIGTERM');
is(finish_py($h2), 0, 'worker 2 exits 0 on SIGTERM');

my %runs;
my %by_worker;
for my $k (1, 2)
{
	next unless -e "$tmp/runs$k";
	for (split /\n/, slurp_file("$tmp/runs$k"))
	{
		my ($id, $task, $attempt) = split / /;
		$runs{"$id $attempt"}++;
		$by_worker{$k}++;
	}
}
is(scalar(keys %runs), $n + 2, "$n + 2 runs: each job once, the failing one twice");
is(scalar(grep { $_ > 1 } values %runs), 0, 'no (job, attempt) ran twice');
ok($by_worker{1} && $by_worker{2}, 'both workers did some of the jobs')
  or diag(explain(\%by_worker));
is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.jobs
		 WHERE queue = 'py' AND id <> $explode AND attempt <> 1}),
	'0', 'every other job succeeded at its first attempt');
is($node->safe_psql('postgres', qq{
		SELECT state, attempt FROM atomizer.jobs WHERE id = $explode}),
	'succeeded|2', 'the failing job was retried and succeeded at attempt 2');
is($node->safe_psql('postgres', qq{
		SELECT attempt, message FROM atomizer.job_errors WHERE job_id = $explode}),
	'1|boom from python (attempt 1)', 'its first failure is in job_errors');
is($node->safe_psql('postgres', q{
		SELECT count(*) FILTER (WHERE result->>'by' = 'python') > 0,
			   count(*) FILTER (WHERE result IS NULL) > 0,
			   count(*) FILTER (WHERE result->>'by' = 'python' OR result IS NULL)
		  FROM atomizer.jobs WHERE queue = 'py'}),
	't|t|' . ($n + 1),
	'complete() stored its results, complete_many() none');

# ------------------------------------------------------------- one call a batch
# --one-call reports each batch's successes, with their results and
# attempts, in the next claim (claim(completed => ...)), and the last batch
# with complete_many(ids, results, attempts)
{
	$node->safe_psql('postgres', q{
		SELECT count(*) FROM atomizer.enqueue_many('batched',
			ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 95) g),
			queue => 'batched')});
	my ($h, $log) = start_py('--dsn', $dsn, '--queue', 'batched', '--batch', '20',
		'--one-call', '--drain', '--out', "$tmp/batched");
	is(finish_py($h, 60), 0, '--one-call: the worker exits 0') or diag(slurp_file($log));
	is($node->safe_psql('postgres', q{
			SELECT count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1
			                          AND result = '{"by": "python", "attempt": 1}'),
			       count(*)
			  FROM atomizer.jobs WHERE handler = 'batched'}),
		'95|95', 'every job succeeded once, with its result');
	is(scalar(split /\n/, slurp_file("$tmp/batched")), 95, 'each job ran once');
}

# ------------------------------------------------------------- heartbeat
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('nap', '{"sleep": 5}', queue => 'slow')});
	my ($h, $log) = start_py('--dsn', $dsn, '--queue', 'slow', '--lease', '2',
		'--drain', '--out', "$tmp/slow");
	is(finish_py($h, 30), 0, 'the slow job\'s worker exits 0') or diag(slurp_file($log));
	is($node->safe_psql('postgres',
			"SELECT state, attempt FROM atomizer.jobs WHERE id = $id"),
		'succeeded|1', 'heartbeats kept a 2 s lease alive for a 5 s job');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM atomizer.job_errors WHERE job_id = $id"),
		'0', 'no lease expired');
}

# ------------------------------------------------------------- SIGTERM releases
{
	$node->safe_psql('postgres', q{
		SELECT atomizer.enqueue('nap', '{"sleep": 3}', queue => 'stop');
		SELECT atomizer.enqueue('nap', '{}', queue => 'stop');
		SELECT atomizer.enqueue('nap', '{}', queue => 'stop');
	});
	my ($h, $log) = start_py('--dsn', $dsn, '--queue', 'stop', '--batch', '3',
		'--lease', '30', '--out', "$tmp/stop");
	wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs
		WHERE queue = 'stop' AND state = 'running'}, '3',
		'a batch of three is claimed');
	$h->signal('TERM');
	is(finish_py($h, 30), 0, 'SIGTERM: the worker exits 0');
	like(slurp_file($log), qr/released 2 job\(s\)/, 'it released the two jobs not started');
	is($node->safe_psql('postgres', q{
			SELECT string_agg(state || ':' || attempt, ',' ORDER BY id)
			  FROM atomizer.jobs WHERE queue = 'stop'}),
		'succeeded:1,available:0,available:0',
		'the started job completed; the others are available, attempt not counted');
}

$node->stop;
done_testing();
