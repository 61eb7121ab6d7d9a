# The atomizer command-line tool against a live server: --help and usage
# errors; "atomizer work" completes jobs (stdout JSON stored as result, the
# payload on stdin, job details in the environment), fails them with the
# tail of stderr and sees them retried; survives a server restart and a
# terminated backend with every job completed exactly once; a lease lost
# while the command hangs is retried by another claim and the late report
# of the old holder is refused; SIGTERM lets a running command finish
# within the grace, or stops it and releases its job (attempt not counted);
# a mistyped command is refused at start (exit 2) and one that cannot be
# executed later gives its job back uncounted and stops the worker; the
# start line; "atomizer enqueue" with every option, and a payload that is
# not JSON refused by the CLI itself; "atomizer stats".
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;
use Time::HiRes qw(usleep time);

my $pg_config = $ENV{PG_CONFIG} // '/usr/lib/postgresql/15/bin/pg_config';
my $bindir = `$pg_config --bindir`;
chomp $bindir;
my $cli = "$bindir/atomizer";
ok(-x $cli, "the CLI is installed at $cli") or BAIL_OUT("no $cli: run make install");

my $tmp = PostgreSQL::Test::Utils::tempdir;

# Run the CLI to completion: (exit status, stdout, stderr).
sub cli
{
	my @args = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @args ], '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(60));
	return ($? >> 8, $out, $err);
}

# Start "atomizer work" in the background; its stderr goes to a file.
my $nworker = 0;
sub start_worker
{
	my ($dsn, @args) = @_;
	$nworker++;
	return AtomizerTest::start_process("$tmp/worker$nworker", $cli, 'work', '--dsn', $dsn, @args);
}

# Wait for a background CLI to exit; its exit status, or undef on timeout.
sub finish_worker { return AtomizerTest::finish_process(@_); }

sub write_script
{
	my ($name, $body) = @_;
	my $path = "$tmp/$name";
	open my $fh, '>', $path or die "$path: $!";
	print $fh "#!/bin/sh\n$body";
	close $fh;
	chmod 0755, $path;
	return $path;
}

# Lines of a file, as a hash line => count.
sub line_counts
{
	my ($path) = @_;
	my %c;
	return \%c unless -e $path;
	$c{$_}++ for split /\n/, slurp_file($path);
	return \%c;
}

# ------------------------------------------------------------- help and usage
{
	my ($rc, $out, $err) = cli('--help');
	is($rc, 0, '--help exits 0');
	like($out, qr/SYNOPSIS.*atomizer work.*atomizer enqueue.*atomizer stats/s,
		'--help shows the synopsis of every subcommand');
	($rc, $out) = cli('help', 'work');
	is($rc, 0, 'help work exits 0');
	like($out, qr/ATOMIZER_JOB_ID.*--concurrency.*--grace.*--timeout/s,
		'help work documents the environment and the options');
	my ($rc2, $out2) = cli('work', '--help');
	is($out2, $out, 'work --help prints the same as help work');
	($rc, $out) = cli('enqueue', '--help');
	like($out, qr/--payload/, 'enqueue --help');
	($rc, $out) = cli('help', 'stats');
	like($out, qr/throughput/, 'help stats');

	my @usage = (
		[ [], 'no subcommand' ],
		[ ['frobnicate'], 'unknown subcommand' ],
		[ [ 'work', '--queue', 'q' ], 'work without a command' ],
		[ [ 'work', '--', 'true' ], 'work without --queue' ],
		[ [ 'work', '-q', 'q', '--lease', '5x', '--', 'true' ], 'bad duration' ],
		[ [ 'work', '-q', 'q', '--concurrency', '0', '--', 'true' ], 'bad concurrency' ],
		[ [ 'work', '-q', 'q', '--bogus', '--', 'true' ], 'unknown option' ],
		[ [ 'work', '-q' ], 'option without its value' ],
		[ [ 'enqueue', '--priority', 'high' ], 'bad priority' ],
		[ [ 'stats', 'extra' ], 'stray argument' ],
		[ [ 'help', 'nosuch' ], 'help for an unknown subcommand' ]);
	for my $u (@usage)
	{
		my ($rc, $out, $err) = cli(@{ $u->[0] });
		is($rc, 2, "usage error exits 2: $u->[1]");
		# (no subcommand prints the whole manual on stderr)
		next unless @{ $u->[0] };
		like($err, qr/\Aatomizer: [^\n]+\n\z/, "one line on stderr: $u->[1]");
	}
}

# ------------------------------------------------------------- the server
my $node = PostgreSQL::Test::Cluster->new('cli');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %a: '
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('ext', external => true);
	SELECT atomizer.create_queue('flaky', external => true, max_attempts => 3,
		backoff_base => '100ms', backoff_cap => '200ms');
	SELECT atomizer.create_queue('bulk', external => true);
	SELECT atomizer.create_queue('lease', external => true, backoff_base => '100ms',
		backoff_cap => '200ms');
	SELECT atomizer.create_queue('stop', external => true);
});
my $dsn = $node->connstr('postgres');

# a queue that does not exist (or is not external) is a fatal error
{
	my ($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'nosuch', '--', 'true');
	is($rc, 1, 'work on a queue that does not exist exits 1');
	like($err, qr/claim failed: ERROR: queue "nosuch" does not exist/, 'and says why');
	($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'default', '--', 'true');
	is($rc, 1, 'work on an internal queue exits 1');
	like($err, qr/queue "default" is not external/, 'and says why');
}

# ------------------------------------------------------------- enqueue
{
	my ($rc, $out, $err) = cli('enqueue', '--dsn', $dsn, '--queue', 'ext',
		'--task', 'echo', '--payload', '{"n": 1}');
	is($rc, 0, 'enqueue exits 0') or diag($err);
	like($out, qr/\A\d+\n\z/, 'enqueue prints the job id');
	chomp $out;
	is($node->safe_psql('postgres',
			"SELECT queue, handler, payload, state FROM atomizer.jobs WHERE id = $out"),
		'ext|echo|{"n": 1}|available', 'the job is in the queue as given');
	# a payload that is not JSON is refused by the CLI itself, before it
	# connects: no SQL error text
	my $jobs = $node->safe_psql('postgres', 'SELECT count(*) FROM atomizer.jobs');
	for my $bad ('{not json', '{"a": 1,}', '[1, 2', '"a string"', '42')
	{
		($rc, undef, $err) = cli('enqueue', '--dsn', $dsn, '--queue', 'ext',
			'--payload', $bad);
		is($rc, 2, "enqueue with payload $bad exits 2");
		like($err, qr/\Aatomizer: the payload (is not valid JSON: .* at (character \d+|the end)|must be a JSON object or array)[^\n]*\n\z/,
			"and says what is wrong with $bad, on one line");
		unlike($err, qr/ERROR|SQLSTATE|jsonb|invalid input syntax/,
			'without SQL internals');
	}
	{
		my ($out, $err2) = ('', '');
		IPC::Run::run([ $cli, 'enqueue', '--dsn', $dsn, '-q', 'ext', '-p', '-' ],
			'<', \'{"from": stdin', '>', \$out, '2>', \$err2);
		is($? >> 8, 2, 'a payload read from stdin is checked too');
	}
	is($node->safe_psql('postgres', 'SELECT count(*) FROM atomizer.jobs'), $jobs,
		'no job was enqueued by the refused payloads');

	# every option of atomizer.enqueue()
	($rc, $out, $err) = cli('enqueue', '--dsn', $dsn, '-q', 'ext', '-t', 'opts',
		'--payload', '{"a": [true, null, -1.5e3, "\u00e9"]}', '--max-attempts', '7',
		'--timeout', '90s', '--idempotency-key', 'key-1', '--priority', '-3');
	is($rc, 0, 'enqueue with --max-attempts, --timeout, --idempotency-key') or diag($err);
	chomp $out;
	is($node->safe_psql('postgres',
			"SELECT max_attempts, timeout, idempotency_key, priority,
				payload = '{\"a\": [true, null, -1500, \"\\u00e9\"]}'::jsonb
			   FROM atomizer.jobs WHERE id = $out"),
		"7|00:01:30|key-1|-3|t", 'they are passed on');
	my ($rc2, $out2, $err2) = cli('enqueue', '--dsn', $dsn, '-q', 'ext', '-t', 'opts',
		'--idempotency-key', 'key-1');
	chomp $out2;
	is($out2, $out, 'the same --idempotency-key again returns the first job\'s id');
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM atomizer.jobs WHERE idempotency_key = 'key-1'}),
		'1', 'and enqueues nothing');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($out)");
	for my $u ([ '--max-attempts', '0' ], [ '--timeout', 'soon' ], [ '--priority', '40000' ])
	{
		($rc, undef, $err) = cli('enqueue', '--dsn', $dsn, '-q', 'ext', @$u);
		is($rc, 2, "enqueue @$u is a usage error");
	}
	($rc, $out) = cli('enqueue', '--dsn', $dsn, '-q', 'ext', '-t', 'later',
		'--run-at', '2100-01-01 00:00+00', '--priority', '5');
	chomp $out;
	is($node->safe_psql('postgres',
			"SELECT state, priority FROM atomizer.jobs WHERE id = $out"),
		'scheduled|5', '--run-at and --priority are passed on');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($out)");
}

# ------------------------------------------------------------- complete
my $echo = write_script('echo.sh', q{
payload=$(cat)
echo "$ATOMIZER_JOB_ID" >> "$1"
printf '{"id": %s, "task": "%s", "attempt": %s, "queue": "%s", "payload": %s}\n' \
	"$ATOMIZER_JOB_ID" "$ATOMIZER_TASK" "$ATOMIZER_ATTEMPT" "$ATOMIZER_QUEUE" "$payload"
});
$node->safe_psql('postgres', q{
	SELECT count(*) FROM atomizer.enqueue_many('echo',
		ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(2, 20) g),
		queue => 'ext')});
{
	my ($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'ext', '-c', '4',
		'--drain', '--', $echo, "$tmp/ext.ids");
	is($rc, 0, 'work --drain exits 0 once the queue is empty') or diag($err);
	is($node->safe_psql('postgres', q{
			SELECT count(*), count(*) FILTER (WHERE state = 'succeeded' AND attempt = 1)
			  FROM atomizer.jobs WHERE queue = 'ext' AND handler = 'echo'}),
		'20|20', 'all 20 jobs succeeded at the first attempt');
	is($node->safe_psql('postgres', q{
			SELECT count(*) FROM atomizer.jobs
			 WHERE queue = 'ext' AND handler = 'echo'
			   AND result = jsonb_build_object('id', id, 'task', 'echo', 'attempt', 1,
					'queue', 'ext', 'payload', payload)}),
		'20', 'each result is the command\'s stdout: its payload (stdin) and environment');
	my $ids = line_counts("$tmp/ext.ids");
	is(scalar(keys %$ids), 20, 'the command ran for 20 distinct jobs');
	is(scalar(grep { $_ != 1 } values %$ids), 0, 'once each');
}

# a command whose stdout is not JSON: the job succeeds, result NULL
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('plain', '{}', queue => 'ext')});
	my ($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'ext', '--drain',
		'--', 'echo', 'hello, not json');
	is($rc, 0, 'work exits 0') or diag($err);
	is($node->safe_psql('postgres',
			"SELECT state, result IS NULL FROM atomizer.jobs WHERE id = $id"),
		'succeeded|t', 'stdout that is not JSON: succeeded, result NULL');
}

# ------------------------------------------------------------- fail and retry
{
	my $flaky = write_script('flaky.sh', q{
cat > /dev/null
echo "attempt $ATOMIZER_ATTEMPT" >&2
if [ "$ATOMIZER_ATTEMPT" -lt 2 ]; then echo "boom: it broke" >&2; exit 1; fi
echo '{"fixed": true}'
});
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('flaky', '{}', queue => 'flaky')});
	my $nope = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('nope', '{}', queue => 'flaky', max_attempts => 1)});
	my ($h) = start_worker($dsn, '-q', 'flaky', '-c', '2', '--poll', '1s', '--', $flaky);
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $id",
		'succeeded', 'a job whose command exits 1 is retried, then succeeds');
	is($node->safe_psql('postgres',
			"SELECT attempt, result FROM atomizer.jobs WHERE id = $id"),
		'2|{"fixed": true}', 'at the second attempt, with its result');
	is($node->safe_psql('postgres',
			"SELECT attempt, message FROM atomizer.job_errors WHERE job_id = $id"),
		"1|attempt 1\nboom: it broke",
		'job_errors holds the first attempt\'s stderr');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');

	# a mistyped command: refused at start (exit 2), no job touched
	my $bad = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('x', '{}', queue => 'flaky', max_attempts => 1)});
	for my $cmd ("$tmp/no-such-command", 'no-such-command-in-path', $tmp)
	{
		my ($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'flaky', '--drain',
			'--', $cmd);
		is($rc, 2, "work with command $cmd exits 2");
		like($err, qr/\Aatomizer: (cannot execute command|command) "\Q$cmd\E"[^\n]*\n\z/,
			'with one line that names the command');
	}
	my (undef, undef, $err) = cli('work', '--dsn', $dsn, '-q', 'flaky', '--', 'no-such-command-in-path');
	like($err, qr/not found in PATH/, 'a name without a slash is looked up in PATH');
	is($node->safe_psql('postgres',
			"SELECT state, attempt FROM atomizer.jobs WHERE id = $bad"),
		'available|0', 'the job was not touched');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM atomizer.job_errors WHERE job_id = $bad"),
		'0', 'and has no failed attempt');
	my ($rc, $out);
	($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'flaky', '--drain',
		'--', 'sh', '-c', 'cat > /dev/null');
	is($rc, 0, 'a command found in PATH (sh) runs') or diag($err);
	is($node->safe_psql('postgres',
			"SELECT state, attempt FROM atomizer.jobs WHERE id = $bad"),
		'succeeded|1', 'and completes the job');

	# a command that cannot be executed any more when a job comes: the job
	# is given back uncounted and the worker stops (exit 1)
	$node->safe_psql('postgres', q{SELECT atomizer.create_queue('gone', external => true)});
	my $gone = write_script('gone.sh', "cat > /dev/null\n");
	my ($hg, $log) = start_worker($dsn, '-q', 'gone', '-c', '2', '--poll', '1s', '--', $gone);
	my $deadline = time + 30;
	usleep(50_000) until slurp_file($log) =~ /working on queue/ || time > $deadline;
	like(slurp_file($log),
		qr/^\S+ \S+ atomizer: working on queue "gone" with concurrency 2, connected to database "postgres" as "[^"]+" \([^)]*\); command: \Q$gone\E$/m,
		'work prints one line when it starts, without -v: queue, concurrency, database');
	chmod 0644, $gone;
	my $gid = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('gone', '{}', queue => 'gone', max_attempts => 1)});
	is(finish_worker($hg, 30), 1, 'the worker stops with exit status 1');
	is($node->safe_psql('postgres',
			"SELECT state, attempt FROM atomizer.jobs WHERE id = $gid"),
		'available|0', 'the job was given back, its attempt not counted');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM atomizer.job_errors WHERE job_id = $gid"),
		'0', 'no failed attempt was recorded');
	like(slurp_file($log),
		qr/could not execute "\Q$gone\E": Permission denied; giving job $gid back \(attempt not counted\) and stopping/,
		'the worker says why it stopped');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($gid)");
	$node->safe_psql('postgres', "SELECT atomizer.cancel($nope)");
}

# ------------------------------------------------------------- timeout
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('slow', '{}', queue => 'flaky', max_attempts => 1)});
	my ($rc, $out, $err) = cli('work', '--dsn', $dsn, '-q', 'flaky', '--drain',
		'--timeout', '500ms', '--', 'sleep', '30');
	is($rc, 0, 'work --timeout exits 0');
	is($node->safe_psql('postgres',
			"SELECT state, last_error FROM atomizer.jobs WHERE id = $id"),
		'dead|command timed out after 500ms',
		'a command past --timeout is stopped and its job failed');
}

# ------------------------------------------------------------- restart, terminate
# 300 jobs, each appending its id to a file; meanwhile the server restarts
# once and the worker's backend is terminated twice.  Every job completes,
# and every command ran exactly once.
{
	my $n = 300;
	$node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.enqueue_many('bulk',
			ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $n) g),
			queue => 'bulk')});
	my $bulk = write_script('bulk.sh', q{
cat > /dev/null
echo "$ATOMIZER_JOB_ID" >> "$1"
sleep 0.03
});
	my ($h, $log) = start_worker($dsn, '-q', 'bulk', '-c', '4', '--lease', '20s',
		'--poll', '1s', '--', $bulk, "$tmp/bulk.ids");
	wait_until($node, 'postgres',
		q{SELECT count(*) > 30 FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'succeeded'},
		't', 'the bulk queue is being worked on');
	$node->restart(mode => 'fast');
	ok(1, 'the server restarted mid-run');
	wait_until($node, 'postgres',
		q{SELECT count(*) > 150 FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'succeeded'},
		't', 'the worker reconnected and goes on');
	for my $k (1 .. 2)
	{
		wait_until($node, 'postgres', q{SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'atomizer work'}, '1',
			"the worker's backend is in pg_stat_activity (kill $k)");
		is($node->safe_psql('postgres', q{
				SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				 WHERE application_name = 'atomizer work') t}),
			'1', "terminated the worker's backend ($k)");
		usleep(300_000);
	}
	wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs
		WHERE queue = 'bulk' AND state = 'succeeded'}, $n,
		"all $n jobs succeeded");
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
	my $ids = line_counts("$tmp/bulk.ids");
	is(scalar(keys %$ids), $n, "the command ran for all $n jobs");
	my @dups = grep { $ids->{$_} > 1 } keys %$ids;
	is(scalar(@dups), 0, 'and for none of them twice')
	  or diag("ran twice: @dups");
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'bulk' AND attempt <> 1}),
		'0', 'no job needed a second attempt');
	my $wlog = slurp_file($log);
	note("bulk worker's log:\n$wlog");
	like($wlog, qr/connection lost/, 'the worker noticed the lost connections');
	like($wlog, qr/reconnected/, 'and reconnected');
}

# ------------------------------------------------------------- lease lost
# Worker A claims with a 1 s lease and no heartbeat, its command hangs 5 s;
# the lease expires, the job is retried and completed by worker B; A's late
# report is refused, and the job completed exactly once (by B).
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('hang', '{}', queue => 'lease')});
	my $script = write_script('lease.sh', q{
cat > /dev/null
echo "$1 $ATOMIZER_ATTEMPT" >> "$2"
[ "$1" = A ] && sleep 5
echo "{\"by\": \"$1\"}"
});
	my ($ha, $loga) = start_worker($dsn, '-q', 'lease', '--lease', '1s',
		'--heartbeat', '0', '--drain', '--', $script, 'A', "$tmp/lease.runs");
	wait_until($node, 'postgres', "SELECT state, attempt FROM atomizer.jobs WHERE id = $id",
		'running|1', 'worker A claimed the job');
	my ($hb, $logb) = start_worker($dsn, '-q', 'lease', '--poll', '500ms',
		'--', $script, 'B', "$tmp/lease.runs");
	wait_until($node, 'postgres', "SELECT state, attempt, result->>'by' FROM atomizer.jobs WHERE id = $id",
		'succeeded|2|B', 'after the lease expired, worker B ran attempt 2 and completed it');
	is(finish_worker($ha, 30), 0, 'worker A exits 0 after its late report');
	note("worker A's log:\n" . slurp_file($loga));
	like(slurp_file($loga), qr/job $id \(attempt 1\): lease lost, complete refused/,
		'worker A\'s late report was refused (lease lost)');
	is($node->safe_psql('postgres', qq{
			SELECT state, attempt, result->>'by' FROM atomizer.jobs WHERE id = $id}),
		'succeeded|2|B', 'the job is still the one completed by B');
	like($node->safe_psql('postgres',
			"SELECT message FROM atomizer.job_errors WHERE job_id = $id AND attempt = 1"),
		qr/lease .* expired/, 'attempt 1 is recorded as a lost lease');
	is(slurp_file("$tmp/lease.runs"), "A 1\nB 2\n", 'each attempt ran once');
	$hb->signal('TERM');
	is(finish_worker($hb), 0, 'worker B exits 0 on SIGTERM');
}

# A worker frozen (SIGSTOP) past its lease: when it resumes, its heartbeat
# is refused, so it stops the command it was running and reports nothing.
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('frozen', '{}', queue => 'lease')});
	my $pidfile = "$tmp/frozen.pid";
	my ($h, $log) = start_worker($dsn, '-q', 'lease', '--lease', '1s',
		'--grace', '0', '--', 'sh', '-c',
		"[ \$ATOMIZER_ATTEMPT = 1 ] && echo \$\$ > $pidfile; exec sleep 60");
	wait_until($node, 'postgres', "SELECT state, attempt FROM atomizer.jobs WHERE id = $id",
		'running|1', 'a job is running under a 1 s lease');
	$h->signal('STOP');
	wait_until($node, 'postgres', "SELECT attempt > 1 OR state <> 'running' FROM atomizer.jobs WHERE id = $id",
		't', 'while the worker is frozen, its lease expires');
	$h->signal('CONT');
	my $deadline = time + 20;
	usleep(100_000) until slurp_file($log) =~ /lease lost/ || time > $deadline;
	like(slurp_file($log), qr/job $id \(attempt 1\): lease lost .*stopping its command/,
		'once resumed, its heartbeat is refused and it stops the command');
	my $cpid = slurp_file($pidfile);
	chomp $cpid;
	$deadline = time + 10;
	usleep(100_000) while kill(0, $cpid) && time < $deadline;
	ok(!kill(0, $cpid), 'the command of the lost lease was killed');
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
	like($node->safe_psql('postgres',
			"SELECT message FROM atomizer.job_errors WHERE job_id = $id AND attempt = 1"),
		qr/lease .* expired/, 'attempt 1 failed as a lost lease');
	unlike(slurp_file($log), qr/job $id \(attempt 1\): (complete|fail)/,
		'and the worker reported nothing for it');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($id)");
}

# The job cancelled while its command runs: the next heartbeat is refused
# with SQLSTATE AZ003, the worker stops the command and reports nothing.
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('doomed', '{}', queue => 'lease')});
	my $pidfile = "$tmp/doomed.pid";
	my ($h, $log) = start_worker($dsn, '-q', 'lease', '--lease', '10s', '--heartbeat', '200ms',
		'--grace', '0', '--', 'sh', '-c', "echo \$\$ > $pidfile; exec sleep 60");
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $id",
		'running', 'a job is running under atomizer work');
	is($node->safe_psql('postgres', "SELECT atomizer.cancel($id)"), 't', 'it is cancelled');
	my $deadline = time + 20;
	usleep(100_000) until slurp_file($log) =~ /job $id .*cancelled/ || time > $deadline;
	like(slurp_file($log), qr/job $id \(attempt 1\): cancelled .*stopping its command/,
		'the next heartbeat says so, and the worker stops the command');
	my $cpid = slurp_file($pidfile);
	chomp $cpid;
	$deadline = time + 10;
	usleep(100_000) while kill(0, $cpid) && time < $deadline;
	ok(!kill(0, $cpid), "the cancelled job's command was killed");
	$h->signal('TERM');
	is(finish_worker($h), 0, 'the worker exits 0 on SIGTERM');
	is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $id"), 'cancelled',
		'the job stays cancelled');
}

# The worker killed with SIGKILL: its command goes too (PR_SET_PDEATHSIG),
# rather than run on while its job is retried elsewhere.
{
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('orphan', '{}', queue => 'lease')});
	my $pidfile = "$tmp/orphan.pid";
	my ($h, $log) = start_worker($dsn, '-q', 'lease', '--lease', '1s', '--',
		'sh', '-c', "echo \$\$ > $pidfile; exec sleep 60");
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $id",
		'running', 'a job is running');
	my $deadline = time + 10;
	usleep(50_000) until -s $pidfile || time > $deadline;
	my $cpid = slurp_file($pidfile);
	chomp $cpid;
	kill 'KILL', $h->{KIDS}[0]{PID};
	finish_worker($h);
	$deadline = time + 10;
	usleep(100_000) while kill(0, $cpid) && time < $deadline;
	ok(!kill(0, $cpid), 'SIGKILL of the worker: its command is gone too');
	wait_until($node, 'postgres', "SELECT state <> 'running' FROM atomizer.jobs WHERE id = $id",
		't', 'and the job comes back once its lease expires');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($id)");
}

# ------------------------------------------------------------- SIGTERM
{
	# finishes within the grace
	my $id = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('short', '{}', queue => 'stop')});
	my ($h, $log) = start_worker($dsn, '-q', 'stop', '--grace', '10s',
		'--', 'sh', '-c', 'sleep 1; echo \'{"done": 1}\'');
	wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $id",
		'running', 'a job is running');
	my $t0 = time;
	$h->signal('TERM');
	is(finish_worker($h, 20), 0, 'SIGTERM: the worker exits 0');
	cmp_ok(time - $t0, '<', 8, 'once its command finished, before the grace ended');
	is($node->safe_psql('postgres',
			"SELECT state, attempt, result FROM atomizer.jobs WHERE id = $id"),
		'succeeded|1|{"done": 1}', 'the running command finished and its job completed');

	# outlives the grace: stopped, job released, attempt not counted
	my $id2 = $node->safe_psql('postgres',
		q{SELECT atomizer.enqueue('long', '{}', queue => 'stop')});
	my $pidfile = "$tmp/long.pid";
	($h, $log) = start_worker($dsn, '-q', 'stop', '--grace', '1s',
		'--', 'sh', '-c', "echo \$\$ > $pidfile; exec sleep 60");
	wait_until($node, 'postgres', "SELECT state, attempt FROM atomizer.jobs WHERE id = $id2",
		'running|1', 'a long job is running');
	$h->signal('TERM');
	is(finish_worker($h, 20), 0, 'SIGTERM: the worker exits 0 after the grace');
	is($node->safe_psql('postgres',
			"SELECT state, attempt FROM atomizer.jobs WHERE id = $id2"),
		'available|0', 'the job was released: available, attempt not counted');
	like(slurp_file($log), qr/grace period over/, 'the worker says why');
	my $cpid = slurp_file($pidfile);
	chomp $cpid;
	ok(!kill(0, $cpid), 'the command was killed');
	$node->safe_psql('postgres', "SELECT atomizer.cancel($id2)");
}

# ------------------------------------------------------------- stats
{
	my ($rc, $out, $err) = cli('stats', '--dsn', $dsn);
	is($rc, 0, 'stats exits 0') or diag($err);
	like($out, qr/^queue\s+flags\s+waiting\s+running\s+dead\s+succeeded\s+per min$/m,
		'stats prints a header');
	like($out, qr/^bulk\s+external\s+0\s+0\s+0\s+300\s+\d+$/m,
		'and one line per queue with its counts');
}

# DSN from the environment
{
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGDATABASE} = 'postgres';
	my ($rc, $out, $err) = cli('enqueue', '-q', 'stop', '-t', 'env');
	is($rc, 0, 'without --dsn the environment (PGHOST, PGPORT, ...) is used') or diag($err);
	$node->safe_psql('postgres', "SELECT atomizer.cancel($out)");
}

$node->stop;
done_testing();
