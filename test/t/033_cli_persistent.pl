# "atomizer work --persistent" against a live server: jobs go as JSON lines
# to long-running processes and complete with the results they answer (a few
# processes do many jobs); an error answer fails the job and it is retried,
# or dead at once with "retry": false; --timeout stops the process, fails
# the job, and a new process takes the next jobs; a process that exits in
# the middle of a job fails that job and is started again; a job cancelled
# while it runs stops its process and nothing is reported for it; SIGTERM
# lets the grace pass, then stops the processes and releases their jobs
# (attempt not counted); a line that is not an answer fails its job; a
# broken connection is ridden out; the reference workers of examples/
# (Python, C, and Node when it is installed) work as documented.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use Time::HiRes qw(usleep time);

my $pg_config = $ENV{PG_CONFIG} // '/usr/lib/postgresql/15/bin/pg_config';
my $bindir = `$pg_config --bindir`;
chomp $bindir;
my $cli = "$bindir/atomizer";
ok(-x $cli, "the CLI is installed at $cli") or BAIL_OUT("no $cli: run make install");
my $examples = ($ENV{ATOMIZER_SOURCE} // abs_path(dirname(__FILE__) . '/../..')) . '/examples';
ok(-e "$examples/worker.py", "the reference workers are in $examples");
my $python = '/usr/bin/python3';
my $tmp = PostgreSQL::Test::Utils::tempdir;

# The test's worker: a persistent process whose payload says what to do;
# it notes "<pid> start <id>" in $tmp/started before each job.
my $worker = "$tmp/worker.py";
open my $fh, '>', $worker or die "$worker: $!";
print $fh <<"EOF";
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    p = job["payload"]
    with open("$tmp/started", "a") as f:
        f.write("%d start %d\\n" % (os.getpid(), job["id"]))
    if "sleep" in p:
        time.sleep(p["sleep"])
    if "exit" in p:
        os._exit(p["exit"])
    if "garbage" in p:
        print("this is not an answer", flush=True)
        continue
    if "fail" in p:
        a = {"id": job["id"], "error": p["fail"]}
        if "retry" in p:
            a["retry"] = p["retry"]
        print(json.dumps(a), flush=True)
        continue
    print(json.dumps({"id": job["id"], "ok": True,
                      "result": {"n": p.get("n"), "pid": os.getpid(),
                                 "task": job["task"], "attempt": job["attempt"]}}),
          flush=True)
EOF
close $fh;

my $nworker = 0;
sub start_worker
{
	my ($dsn, @args) = @_;
	$nworker++;
	return AtomizerTest::start_process("$tmp/worker$nworker", $cli, 'work', '--dsn', $dsn, @args);
}

sub finish_worker { return AtomizerTest::finish_process(@_); }

# Wait until the test worker has started job $id; the pid that did.
sub started
{
	my ($id) = @_;
	my $deadline = time + 60;
	while (time < $deadline)
	{
		if (-e "$tmp/started" && slurp_file("$tmp/started") =~ /^(\d+) start $id$/m)
		{
			return $1;
		}
		usleep(50_000);
	}
	fail("job $id was never started");
	return undef;
}

# the manual, and usage errors
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, 'help', 'work' ], '<', \undef, '>', \$out, '2>', \$err);
	like($out, qr/PERSISTENT MODE.*"ok":true.*"error".*--pipeline N/s,
		'help work documents the persistent mode and its line protocol');
	for my $u ([ [ '--pipeline', '4' ], '--pipeline without --persistent' ],
		[ [ '--persistent', '--pipeline', '0' ], 'a --pipeline of 0' ],
		[ [ '--persistent', '--pipeline', '1001' ], 'a --pipeline over 1000' ])
	{
		IPC::Run::run([ $cli, 'work', '-q', 'p', @{ $u->[0] }, '--', 'true' ],
			'<', \undef, '>', \$out, '2>', \$err);
		is($? >> 8, 2, "usage error exits 2: $u->[1]");
	}
}

my $node = AtomizerTest::node('persistent');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('p', external => true);
	SELECT atomizer.create_queue('flaky', external => true, max_attempts => 2,
		backoff_base => '100ms', backoff_cap => '200ms', backoff_jitter => 0);
	SELECT atomizer.create_queue('once', external => true, max_attempts => 1);
});
my $dsn = $node->connstr('postgres');

# ------------------------------------------------------------- results
{
	$node->safe_psql('postgres', q{
		SELECT count(*) FROM atomizer.enqueue_many('echo',
			(SELECT array_agg(jsonb_build_object('n', i) ORDER BY i)
			   FROM generate_series(1, 200) i), queue => 'p')});
	my ($h, $log) = start_worker($dsn, '-q', 'p', '--persistent', '-c', '2',
		'--pipeline', '8', '--drain', '--', $python, $worker);
	is(finish_worker($h), 0, '--drain exits 0 once the queue is empty')
	  or diag(slurp_file($log));
	is($node->safe_psql('postgres', q{
		SELECT count(*) FILTER (WHERE state = 'succeeded'),
		       count(*) FILTER (WHERE (result->>'n')::int = (payload->>'n')::int
		                          AND result->>'task' = 'echo'
		                          AND result->>'attempt' = '1')
		  FROM atomizer.jobs WHERE queue = 'p'}), '200|200',
		'every job succeeded, with the result its answer carried');
	cmp_ok($node->safe_psql('postgres', q{
		SELECT count(DISTINCT result->>'pid') FROM atomizer.jobs WHERE queue = 'p'}),
		'<=', 2, 'two processes did the 200 jobs');
	like(slurp_file($log), qr/concurrency 2 \(persistent processes\)/, 'the start line says so');
	unlike(slurp_file($log), qr/exited|killed/, 'no process ended before the end of its input');
}

# ------------------------------------------------------------- error answers
{
	my $retried = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('f', '{"fail": "boom from the worker"}', queue => 'flaky')});
	my $final = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('f', '{"fail": "never works", "retry": false}', queue => 'flaky')});
	my ($h, $log) = start_worker($dsn, '-q', 'flaky', '--persistent', '--poll', '200ms',
		'--', $python, $worker);
	wait_until($node, 'postgres',
		"SELECT state || ' ' || attempt FROM atomizer.jobs WHERE id = $retried",
		'dead 2', 'an error answer fails the attempt; the job is retried, then dead');
	is($node->safe_psql('postgres',
			"SELECT string_agg(attempt || ': ' || message, ', ' ORDER BY attempt) FROM atomizer.job_errors WHERE job_id = $retried"),
		'1: boom from the worker, 2: boom from the worker', 'with the error it answered');
	is($node->safe_psql('postgres',
			"SELECT state, attempt, last_error FROM atomizer.jobs WHERE id = $final"),
		'dead|1|never works', '"retry": false: dead at the first attempt');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
}

# ------------------------------------------------------------- timeout
{
	my $slow = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('t', '{"sleep": 60}', queue => 'once')});
	my ($h, $log) = start_worker($dsn, '-q', 'once', '--persistent', '--timeout', '500ms',
		'--poll', '200ms', '--', $python, $worker);
	my $pid = started($slow);
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $slow",
		'dead', 'a job past --timeout fails');
	like($node->safe_psql('postgres', "SELECT last_error FROM atomizer.jobs WHERE id = $slow"),
		qr/^timed out after 500ms/, 'with "timed out" as its error');
	my $deadline = time + 30;
	usleep(100_000) while kill(0, $pid) && time < $deadline;
	ok(!kill(0, $pid), 'its process was stopped');
	my $next = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('t', '{"n": 7}', queue => 'once')});
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $next",
		'succeeded', 'a new process takes the next job');
	isnt($node->safe_psql('postgres', "SELECT result->>'pid' FROM atomizer.jobs WHERE id = $next"),
		$pid, 'in another process');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
}

# ------------------------------------------------------------- a process that exits mid-job
{
	my $crash = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('c', '{"exit": 3}', queue => 'once')});
	my ($h, $log) = start_worker($dsn, '-q', 'once', '--persistent', '--poll', '200ms',
		'--', $python, $worker);
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $crash",
		'dead', 'the job of a process that exits in the middle of it fails');
	is($node->safe_psql('postgres', "SELECT last_error FROM atomizer.jobs WHERE id = $crash"),
		'worker process exited with status 3 while running the job', 'saying so');
	my $next = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('c', '{"n": 8}', queue => 'once')});
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $next",
		'succeeded', 'the process is started again and takes the next job');
	like(slurp_file($log), qr/process 0 \(pid \d+\) exited with status 3 with jobs in flight/,
		'the log says the process exited');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
}

# ------------------------------------------------------------- cancel while it runs
{
	my $long = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('l', '{"sleep": 60}', queue => 'p')});
	my ($h, $log) = start_worker($dsn, '-q', 'p', '--persistent', '--heartbeat', '200ms',
		'--poll', '200ms', '--', $python, $worker);
	my $pid = started($long);
	is($node->safe_psql('postgres', "SELECT atomizer.cancel($long)"), 't',
		'a running job is cancelled');
	my $deadline = time + 30;
	usleep(100_000) while kill(0, $pid) && time < $deadline;
	ok(!kill(0, $pid), 'the next heartbeat stops its process');
	like(slurp_file($log), qr/job $long \(attempt 1\): cancelled .*stopping process 0/,
		'the log says why');
	is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $long"),
		'cancelled', 'the job stays cancelled');
	my $next = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('l', '{"n": 9}', queue => 'p')});
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $next",
		'succeeded', 'a new process takes the next job');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
}

# ------------------------------------------------------------- SIGTERM releases
{
	my $long = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('s', '{"sleep": 60}', queue => 'p')});
	my $behind = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('s', '{"n": 10}', queue => 'p')});
	my ($h, $log) = start_worker($dsn, '-q', 'p', '--persistent', '--pipeline', '2',
		'--grace', '500ms', '--', $python, $worker);
	my $pid = started($long);
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM atomizer.jobs WHERE id IN ($long, $behind) AND state = 'running'"),
		'2', 'both jobs are with the process (one runs, one waits in its stdin)');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 after the grace');
	ok(!kill(0, $pid), 'its process was stopped');
	is($node->safe_psql('postgres',
			"SELECT string_agg(state || ' ' || attempt, ', ' ORDER BY id) FROM atomizer.jobs WHERE id IN ($long, $behind)"),
		'available 0, available 0', 'both jobs were released, their attempts not counted');
	like(slurp_file($log), qr/grace period over; stopping process 0 and releasing its 2 job/,
		'the log says so');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($long)");
	$node->safe_psql('postgres', "SELECT atomizer.cancel($behind)");
}

# ------------------------------------------------------------- invalid answers
{
	my $bad = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('g', '{"garbage": true}', queue => 'once')});
	my $next = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('g', '{"n": 11}', queue => 'once')});
	my ($h, $log) = start_worker($dsn, '-q', 'once', '--persistent', '--drain',
		'--', $python, $worker);
	is(finish_worker($h), 0, 'the worker exits 0') or diag(slurp_file($log));
	like($node->safe_psql('postgres', "SELECT state || ': ' || last_error FROM atomizer.jobs WHERE id = $bad"),
		qr/^dead: invalid answer from the worker process \(not a JSON object: .*\): this is not an answer$/,
		'a line that is not an answer fails its job, with the line in the error');
	is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $next"),
		'succeeded', 'the same process goes on with the next job');
}

# ------------------------------------------------------------- the connection breaks
# The worker's backend is terminated while jobs are with the processes: it
# reconnects, reports what it could not, and every job succeeds; a job
# whose claim was lost with the connection comes back when its 2 s lease
# expires.
{
	$node->safe_psql('postgres', q{
		SELECT count(*) FROM atomizer.enqueue_many('r',
			(SELECT array_agg(jsonb_build_object('n', i, 'sleep', 0.01)) FROM generate_series(1, 300) i),
			queue => 'flaky')});
	my ($h, $log) = start_worker($dsn, '-q', 'flaky', '--persistent', '-c', '2',
		'--pipeline', '4', '--lease', '2s', '--poll', '200ms', '--', $python, $worker);
	wait_until($node, 'postgres', q{SELECT count(*) >= 50 FROM atomizer.jobs
		WHERE handler = 'r' AND state = 'succeeded'}, 't', 'the drain is under way');
	is($node->safe_psql('postgres', q{SELECT count(pg_terminate_backend(pid))
		FROM pg_stat_activity WHERE application_name = 'atomizer work'}), '1',
		"the worker's backend is terminated");
	wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs
		WHERE handler = 'r' AND state = 'succeeded'}, '300', 'every job succeeded');
	like(slurp_file($log), qr/reconnected/, 'the worker reconnected');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
}

# ------------------------------------------------------------- the reference workers
{
	my $cworker = "$tmp/worker-c";
	IPC::Run::run([ 'cc', '-O2', '-Wall', '-Werror', '-o', $cworker, "$examples/worker.c" ],
		'>', \my $ccout, '2>', \my $ccerr);
	is($?, 0, 'examples/worker.c compiles without warnings') or diag($ccerr);
	my ($node_js) = grep { -x $_ } ('/usr/bin/node', '/usr/bin/nodejs', '/usr/local/bin/node');
	my @workers = ([ 'python', $python, "$examples/worker.py" ], [ 'c', $cworker ]);
	push @workers, [ 'node', $node_js, "$examples/worker.js" ] if $node_js;
	note('node not installed: examples/worker.js not tried') unless $node_js;
	for my $w (@workers)
	{
		my ($name, @cmd) = @$w;
		$node->safe_psql('postgres', qq{
			SELECT count(*) FROM atomizer.enqueue_many('ref-$name',
				(SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 50) i),
				queue => 'p')});
		my ($h, $log) = start_worker($dsn, '-q', 'p', '--persistent', '-c', '2',
			'--pipeline', '16', '--drain', '--', @cmd);
		is(finish_worker($h), 0, "$name reference worker: the worker exits 0")
		  or diag(slurp_file($log));
		is($node->safe_psql('postgres',
				"SELECT count(*) FROM atomizer.jobs WHERE handler = 'ref-$name' AND state = 'succeeded'"),
			'50', "$name reference worker: every job succeeded");
	}
	is($node->safe_psql('postgres', q{
		SELECT result FROM atomizer.jobs WHERE handler = 'ref-python' AND payload->>'n' = '1'}),
		'{"echo": {"n": 1}, "task": "ref-python"}', 'the Python worker answers its result');
	is($node->safe_psql('postgres', q{
		SELECT result FROM atomizer.jobs WHERE handler = 'ref-node' AND payload->>'n' = '1'}),
		'{"echo": {"n": 1}, "task": "ref-node"}', 'the Node worker answers its result')
	  if $node_js;
}

# A command that cannot be executed when a process is started again: the
# worker says so and stops.
{
	my $dsn = $node->connstr('postgres');
	my $noexec = "$tmp/noexec.sh";
	open(my $ne, '>', $noexec) or die $!;
	print $ne "#!/bin/sh\nsleep 1\n";
	close $ne;
	chmod 0755, $noexec;
	my ($h, $log) = start_worker($dsn, '-q', 'p', '--persistent', '-c', '1', '--', $noexec);
	my $deadline = time + 30;
	usleep(50_000) until slurp_file($log) =~ /working on queue/ || time > $deadline;
	chmod 0644, $noexec;
	is(finish_worker($h, 30), 1,
		'a command that cannot be executed any more: the worker exits 1');
	like(slurp_file($log), qr/could not execute "\Q$noexec\E": Permission denied; stopping/,
		'... and says why');
}

done_testing();
