# Background workers, end to end: jobs run by themselves after commit (no
# run_pending), delayed jobs wait for their run_at, an idle worker is woken
# by a commit, the processes show in pg_stat_activity and atomizer.workers,
# paused queues wait, a database that gets the extension after start-up is
# picked up, and a database without it is skipped with at most one log line.
# (Changing atomizer.databases at run time: 015_worker_databases.pl.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(usleep);

# How long the checks for "nothing happens" watch (seconds): what a
# negative assertion needs, not a wait for something to happen.
my $window = 4;

my $node = PostgreSQL::Test::Cluster->new('basic');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
# The safety-net poll is far away: everything below must be woken by a
# commit, a resume, or a due run_at, not found by polling.
atomizer.poll_interval = '1min'
# Workers stay for the whole test once started.
atomizer.worker_idle_timeout = '5min'
});
$node->start;

# "app" and "noext" exist when the server starts; "app2" comes later.
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('postgres', 'CREATE DATABASE noext');
my $setup = q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (tag text NOT NULL, n int NOT NULL);
	CREATE FUNCTION work(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
		INSERT INTO effects VALUES (payload->>'tag', (payload->>'n')::int)
		RETURNING jsonb_build_object('n', n)
	$$;
	-- waits for an advisory lock the test holds, so that it is seen running
	CREATE FUNCTION gate(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_advisory_xact_lock_shared(4242);
		INSERT INTO effects VALUES ('gate', 1);
	END $$;
};
$node->safe_psql('app', $setup);
# Restart, so that app and noext are there when the launcher starts; the
# log checks below read from the new start on.
$node->stop;
my $start_offset = -s $node->logfile;
$node->start;

# ------------------------------------------------------------- processes
wait_until($node, 'postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'atomizer launcher'},
	'1', 'one atomizer launcher in pg_stat_activity');
wait_until($node, 'postgres',
	q{SELECT count(*) FROM pg_stat_activity
	   WHERE backend_type = 'atomizer scheduler' AND datname = 'app'},
	'1', 'one atomizer scheduler for the database with the extension');

# ------------------------------------------------------------- end to end
is( $node->safe_psql('app', q{
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', 'e2e', 'n', g)
				    FROM generate_series(1, 100) g))}),
	'100', 'enqueued 100 jobs, nothing else called');
wait_until($node, 'app',
	q{SELECT count(*) FROM atomizer.jobs WHERE payload->>'tag' = 'e2e' AND state = 'succeeded'},
	'100', 'all 100 jobs succeeded by themselves');
is( $node->safe_psql('app',
		q{SELECT count(*), count(DISTINCT n) FROM effects WHERE tag = 'e2e'}),
	'100|100', 'exactly one effect per job');
is( $node->safe_psql('app',
		q{SELECT count(*) FROM atomizer.jobs WHERE payload->>'tag' = 'e2e' AND attempt <> 1}),
	'0', 'each job ran once');

# ------------------------------------------------------------- delayed job
my $delayed = $node->safe_psql('app', q{
	SELECT atomizer.enqueue('work', '{"tag": "delayed", "n": 1}',
		run_at => now() + interval '2 seconds')});
is($node->safe_psql('app', "SELECT state FROM atomizer.jobs WHERE id = $delayed"),
	'scheduled', 'a job with a future run_at is scheduled');
wait_until($node, 'app',
	"SELECT state FROM atomizer.jobs WHERE id = $delayed",
	'succeeded', 'the delayed job ran');
is( $node->safe_psql('app', qq{
		SELECT started_at >= run_at, finished_at >= run_at
		  FROM atomizer.jobs WHERE id = $delayed}),
	't|t', 'the delayed job did not start before its run_at');
is( $node->safe_psql('app', qq{
		SELECT finished_at < run_at + interval '5 seconds'
		  FROM atomizer.jobs WHERE id = $delayed}),
	't', 'the delayed job ran soon after its run_at (sanity bound 5 s; poll is 1 min)');

# ------------------------------------------------------------- a running job is visible
my $bg = $node->background_psql('app');
$bg->query_safe('SELECT pg_advisory_lock(4242)');
my $gate = $node->safe_psql('app', q{SELECT atomizer.enqueue('gate', '{}')});
wait_until($node, 'app',
	qq{SELECT count(*) FROM pg_stat_activity
	    WHERE backend_type = 'atomizer worker' AND datname = 'app'
	      AND query LIKE 'atomizer job $gate: %gate%'},
	'1', "pg_stat_activity shows the worker running 'atomizer job <id>: <handler>'");
wait_until($node, 'app',
	qq{SELECT count(*) FROM atomizer.workers w
	     JOIN pg_stat_activity a ON a.pid = w.pid
	    WHERE w.job_id = $gate AND w.state = 'running' AND w.queue = 'default'
	      AND w.database = 'app' AND a.backend_type = 'atomizer worker'},
	'1', 'atomizer.workers shows the running job');
is($node->safe_psql('app', "SELECT state FROM atomizer.jobs WHERE id = $gate"),
	'running', 'the job is running');

# Members of atomizer_admin (without pg_read_all_stats) cannot read the
# workers' rows of pg_stat_activity; atomizer.workers shows them what they
# need: the activity, when it started, what it waits for.  Other roles see
# none of it.
$node->safe_psql('app', q{
	CREATE ROLE regress_ops IN ROLE atomizer_admin;
	CREATE ROLE regress_plain;
});
is($node->safe_psql('app', q{SET ROLE regress_ops;
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'atomizer worker' AND query LIKE 'atomizer job%'}),
	'0', 'an admin cannot read the workers in pg_stat_activity');
is($node->safe_psql('app', qq{SET ROLE regress_ops;
	SELECT concat_ws(' ', activity_state, wait_event_type, wait_event,
			activity LIKE 'atomizer job $gate: %gate%',
			query_start >= started_at, xact_start IS NOT NULL)
	  FROM atomizer.workers WHERE job_id = $gate}),
	'active Lock advisory t t t',
	'atomizer.workers shows an admin the running job\'s activity, start and wait event');
is($node->safe_psql('app', q{SET ROLE regress_plain;
	SELECT count(*) FROM atomizer.workers
	 WHERE activity IS NOT NULL OR wait_event IS NOT NULL OR query_start IS NOT NULL}),
	'0', 'other roles see no activity in atomizer.workers');
$bg->query_safe('SELECT pg_advisory_unlock(4242)');
$bg->quit;
wait_until($node, 'app', "SELECT state FROM atomizer.jobs WHERE id = $gate",
	'succeeded', 'the gated job finished once released');

# ------------------------------------------------------------- atomizer.workers
wait_until($node, 'app',
	q{SELECT count(*) > 0 FROM atomizer.workers
	   WHERE database = 'app' AND queue = 'default' AND state = 'idle'},
	't', 'an idle worker of the default queue is listed');
is( $node->safe_psql('app', q{
		SELECT count(*) = count(a.pid),
			   bool_and(w.state IN ('starting', 'idle', 'running', 'stopping')),
			   bool_and(w.started_at <= now()),
			   sum(w.jobs_succeeded) > 0,
			   sum(w.jobs_failed) = 0
		  FROM atomizer.workers w
		  LEFT JOIN pg_stat_activity a
			ON a.pid = w.pid AND a.backend_type = 'atomizer worker'
		 WHERE w.database = 'app'}),
	't|t|t|t|t',
	'atomizer.workers: every row is a live worker process, with state, start and counters');
is( $node->safe_psql('app', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'atomizer worker' AND datname = 'app'
		   AND pid NOT IN (SELECT pid FROM atomizer.workers)}),
	'0', 'every atomizer worker process is listed in atomizer.workers');

# ------------------------------------------------------------- wake-up
my $wake = $node->safe_psql('app', q{SELECT atomizer.enqueue('work', '{"tag": "wake", "n": 1}')});
wait_until($node, 'app', "SELECT state FROM atomizer.jobs WHERE id = $wake",
	'succeeded', 'a job enqueued while a worker is idle runs');
is( $node->safe_psql('app', qq{
		SELECT finished_at - created_at < interval '5 seconds'
		  FROM atomizer.jobs WHERE id = $wake}),
	't', 'and it finished within 5 s of its commit (sanity bound; poll is 1 min)');

# ------------------------------------------------------------- paused queue
$node->safe_psql('app', q{
	SELECT atomizer.create_queue('held');
	SELECT atomizer.pause_queue('held');
	SELECT count(*) FROM atomizer.enqueue_many('work',
		ARRAY(SELECT jsonb_build_object('tag', 'held', 'n', g)
			    FROM generate_series(1, 3) g), queue => 'held');
});

# ------------------------------------------------------------- a second database
$node->safe_psql('postgres', 'CREATE DATABASE app2');
$node->safe_psql('app2', $setup);
$node->safe_psql('app2', q{
	SELECT count(*) FROM atomizer.enqueue_many('work',
		ARRAY(SELECT jsonb_build_object('tag', 'app2', 'n', g)
			    FROM generate_series(1, 5) g))});
wait_until($node, 'app2',
	q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'},
	'5', 'CREATE EXTENSION after start-up is picked up: its jobs run');
wait_until($node, 'postgres',
	q{SELECT count(*) FROM pg_stat_activity
	   WHERE backend_type = 'atomizer scheduler' AND datname IN ('app', 'app2')},
	'2', 'one scheduler in each database with the extension');
my $j1 = $node->safe_psql('app', q{SELECT atomizer.enqueue('work', '{"tag": "both", "n": 1}')});
my $j2 = $node->safe_psql('app2', q{SELECT atomizer.enqueue('work', '{"tag": "both", "n": 2}')});
wait_until($node, 'app', "SELECT state FROM atomizer.jobs WHERE id = $j1",
	'succeeded', 'both databases run their jobs: app');
wait_until($node, 'app2', "SELECT state FROM atomizer.jobs WHERE id = $j2",
	'succeeded', 'both databases run their jobs: app2');
is($node->safe_psql('app2', q{SELECT count(*) FROM effects}), '6',
	"app2's handlers wrote into app2");

# ------------------------------------------------------------- nothing happens
# Watch for a while: the paused queue stays untouched, and the database
# without the extension is not retried over and over.
my @noext_before = log_lines_mentioning($node, 'noext', $start_offset);
usleep($window * 1_000_000);
is( $node->safe_psql('app', q{
		SELECT count(*) FILTER (WHERE state = 'available'), count(*)
		  FROM atomizer.jobs WHERE queue = 'held'}),
	'3|3', 'jobs of a paused queue are not run');
is($node->safe_psql('app', q{SELECT count(*) FROM effects WHERE tag = 'held'}),
	'0', 'no effects from the paused queue');
my @noext = log_lines_mentioning($node, 'noext', $start_offset);
my @noext_exits = grep { /exited with exit code/ } @noext;
my @noext_other = grep { !/exited with exit code/ } @noext;
cmp_ok(scalar(@noext_other), '<=', 1,
	'a database without the extension: at most one log line')
  or diag(join("\n", @noext));
cmp_ok(scalar(@noext_exits), '<=', 1,
	'a database without the extension: at most one worker exit logged');
is(scalar(@noext), scalar(@noext_before),
	"no new log lines about it over ${window} s");
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type LIKE 'atomizer%' AND datname = 'noext'}),
	'0', 'no atomizer process stays in the database without the extension');

my $resumed_at = $node->safe_psql('app',
	q{SELECT now() FROM atomizer.resume_queue('held')});
wait_until($node, 'app',
	q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'held' AND state = 'succeeded'},
	'3', 'a resumed queue runs its jobs');
is( $node->safe_psql('app', qq{
		SELECT max(finished_at) < '$resumed_at'::timestamptz + interval '5 seconds'
		  FROM atomizer.jobs WHERE queue = 'held'}),
	't', 'within 5 s of the resume (sanity bound; poll is 1 min)');

# ------------------------------------------------------------- the log
# (A scheduler stopped by the launcher may say "terminating background
# worker ... due to administrator command"; that is not an error.)
my @errors =
  grep { /\batomizer (?:launcher|scheduler|worker)\b.*\b(?:ERROR|FATAL|PANIC):/
	  && !/terminating background worker .* due to administrator command/ }
  split /\n/, slurp_file($node->logfile, $start_offset);
is(scalar(@errors), 0, 'no ERROR, FATAL or PANIC from atomizer processes')
  or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));

$node->stop;
done_testing();
