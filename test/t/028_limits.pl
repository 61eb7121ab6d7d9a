# Limits are exact with live claimers: atomizer's workers drain 10,000
# jobs under a rate limit of 1,000 starts a second and never start more in
# any second; a handler limited to 2 never runs more than 2 at once while
# another handler's jobs behind its backlog run freely (no head-of-line
# blocking); four external claimers racing on a queue with a per-customer
# rate limit and a handler limit never pass either; and a worker that dies
# with a limited job stops counting once the scheduler recovers the job.
# Starts and overlaps are counted from the jobs' own started_at and
# finished_at (the limits count the same times).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use AtomizerTest;

my $node = AtomizerTest::node('limits', conf => q{
max_worker_processes = 32
max_prepared_transactions = 2
atomizer.max_workers = 8
atomizer.poll_interval = 200
});

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	-- the most starts in any window of length w (per partition)
	CREATE FUNCTION max_starts(q text, w interval, field text DEFAULT NULL)
	RETURNS bigint LANGUAGE sql AS $$
		SELECT coalesce(max(c), 0) FROM (
			SELECT count(*) OVER (PARTITION BY coalesce(payload->>field, '')
								  ORDER BY started_at
								  RANGE BETWEEN CURRENT ROW
								  AND w - interval '1 microsecond' FOLLOWING) AS c
			  FROM atomizer.jobs WHERE queue = q AND started_at IS NOT NULL) x
	$$;
	-- the most jobs of handler h running at once, from their start and end
	CREATE FUNCTION max_running(q text, h text) RETURNS bigint LANGUAGE sql AS $$
		SELECT coalesce(max(s), 0) FROM (
			SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS s FROM (
				SELECT started_at AS t, 1 AS d FROM atomizer.jobs
				 WHERE queue = q AND handler = h AND started_at IS NOT NULL
				UNION ALL
				SELECT coalesce(finished_at, 'infinity'), -1 FROM atomizer.jobs
				 WHERE queue = q AND handler = h AND started_at IS NOT NULL) e) x
	$$;
	CREATE FUNCTION noop(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE FUNCTION slow(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(0.01)';
});

# 1. A rate limit on atomizer's own workers, over 10,000 jobs.  The
# database asks for REPEATABLE READ, in which a limited claim is refused:
# the workers claim all the same, since atomizer's processes always run in
# READ COMMITTED.
$node->safe_psql('postgres',
	q{ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'});
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('rl', concurrency => 4, rate_limit => 1000,
								 rate_period => '1 second');
	SELECT atomizer.pause_queue('rl');
	SELECT count(atomizer.enqueue('noop', '{}', queue => 'rl'))
	  FROM generate_series(1, 10000);
	SELECT atomizer.resume_queue('rl');
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 10000 FROM atomizer.jobs WHERE queue = 'rl' AND state = 'succeeded'})
  or die "the rate-limited jobs did not all run";
my ($starts, $took) = split /\|/, $node->safe_psql('postgres', q{
	SELECT max_starts('rl', '1 second'),
		   extract(epoch FROM max(started_at) - min(started_at))::int
	  FROM atomizer.jobs WHERE queue = 'rl'});
cmp_ok($starts, '<=', 1000, "rate limit: at most 1000 starts in any second ($starts)");
cmp_ok($starts, '>=', 500, "rate limit: the limit was reached, so it was tested ($starts)");
cmp_ok($took, '>=', 9, "rate limit: 10,000 jobs took at least 9 s ($took s)");
note("rate limit overshoot: " . ($starts > 1000 ? $starts - 1000 : 0));
is($node->safe_psql('postgres', q{SHOW default_transaction_isolation}), 'repeatable read',
	'(a session of the database is in REPEATABLE READ)');
$node->safe_psql('postgres', q{ALTER DATABASE postgres RESET default_transaction_isolation});

# 2. A handler limit on atomizer's workers; the other handler's jobs behind
# the held-back backlog run at once.
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('hl', concurrency => 4);
	SELECT atomizer.limit_handler('hl', 'slow', 2);
	SELECT atomizer.pause_queue('hl');
	SELECT count(atomizer.enqueue('slow', '{}', queue => 'hl')) FROM generate_series(1, 200);
	SELECT count(atomizer.enqueue('noop', '{}', queue => 'hl')) FROM generate_series(1, 200);
	SELECT atomizer.resume_queue('hl');
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 400 FROM atomizer.jobs WHERE queue = 'hl' AND state = 'succeeded'})
  or die "the handler-limited jobs did not all run";
my $running = $node->safe_psql('postgres', q{SELECT max_running('hl', 'public.slow')});
is($running, 2, 'handler limit: at most 2 slow jobs running at once, and 2 did');
my $blocked = $node->safe_psql('postgres', q{
	SELECT (SELECT max(finished_at) FROM atomizer.jobs WHERE queue = 'hl' AND handler = 'public.noop')
		 < (SELECT max(finished_at) FROM atomizer.jobs WHERE queue = 'hl' AND handler = 'public.slow')
		   - interval '0.5 second'});
is($blocked, 't', 'handler limit: the other handler ran while the limited backlog waited');

# 3. Four external claimers racing: a rate limit of 300 a second per
# customer, and task "a" limited to 3 at once.
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('ex', external => true, rate_limit => 300,
								 rate_period => '1 second', rate_partition => 'customer');
	SELECT atomizer.limit_handler('ex', 'a', 3);
	SELECT count(atomizer.enqueue(CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END,
								  jsonb_build_object('customer', 'c' || (i % 3)), queue => 'ex'))
	  FROM generate_series(1, 3000) i;
	CREATE PROCEDURE claim_and_complete(w text) LANGUAGE plpgsql AS $$
	DECLARE
		ids bigint[];
		idle int := 0;
	BEGIN
		LOOP
			SELECT array_agg(id) INTO ids FROM atomizer.claim('ex', 5, '1 minute', w);
			COMMIT;
			IF ids IS NULL THEN
				EXIT WHEN NOT EXISTS (SELECT FROM atomizer.job WHERE queue = 'ex');
				idle := idle + 1;
				PERFORM pg_sleep(0.005);
				CONTINUE;
			END IF;
			PERFORM pg_sleep(0.002);
			PERFORM atomizer.complete(id) FROM unnest(ids) id;
			COMMIT;
		END LOOP;
	END $$;
	GRANT atomizer_worker TO CURRENT_USER;
});
my @claimers;
for my $w (1 .. 4)
{
	my ($out, $err) = ('', '');
	push @claimers, [ IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-c', "CALL claim_and_complete('w$w')" ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(300)), \$err ];
}
for my $c (@claimers)
{
	ok($c->[0]->finish, "an external claimer ended cleanly") or diag(${ $c->[1] });
}
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'ex' AND state = 'succeeded'}),
	3000, 'external: every job ran once');
# a transaction that claimed from a limited queue cannot be prepared
$node->safe_psql('postgres', q{SELECT atomizer.enqueue('b', '{"customer": "z"}', queue => 'ex')});
my ($rc, $out, $err) = $node->psql('postgres', q{
	BEGIN;
	SELECT count(*) FROM atomizer.claim('ex', 1, '1 minute', 'p');
	PREPARE TRANSACTION 'claimed';});
like($err, qr/cannot prepare a transaction that claimed jobs of a queue with limits/,
	'PREPARE TRANSACTION after a limited claim is refused');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts}), 0,
	'... and nothing was prepared');
$node->safe_psql('postgres', q{SELECT atomizer.cancel(id) FROM atomizer.job WHERE queue = 'ex'});
my $ext_starts = $node->safe_psql('postgres', q{SELECT max_starts('ex', '1 second', 'customer')});
cmp_ok($ext_starts, '<=', 300, "external: at most 300 starts a second per customer ($ext_starts)");
cmp_ok($ext_starts, '>=', 150, "external: the rate limit was reached ($ext_starts)");
my $ext_running = $node->safe_psql('postgres', q{SELECT max_running('ex', 'a')});
cmp_ok($ext_running, '<=', 3, "external: at most 3 of task a at once ($ext_running)");
note("external overshoot: rate " . ($ext_starts > 300 ? $ext_starts - 300 : 0)
	  . ", concurrency " . ($ext_running > 3 ? $ext_running - 3 : 0));

# 4. A worker that dies with a limited job: the job counts against the
# limit until the scheduler recovers it, then the held-back job runs.
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('hang', concurrency => 2);
	CREATE FUNCTION stuck(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF p->>'hang' = 'yes' AND (SELECT attempt FROM atomizer.current_job()) = 1 THEN
			PERFORM pg_sleep(300);
		END IF;
	END $$;
	SELECT atomizer.limit_handler('hang', 'stuck', 1);
	SELECT atomizer.enqueue('stuck', '{"hang": "yes"}', queue => 'hang');
});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM atomizer.jobs WHERE queue = 'hang' AND state = 'running'})
  or die "the stuck job did not start";
$node->safe_psql('postgres', q{SELECT atomizer.enqueue('stuck', '{}', queue => 'hang')});
sleep 1;
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM atomizer.job WHERE queue = 'hang' AND state = 'held'}),
	1, 'crash: the second job is held back while the first runs');
# The orphan counts until the scheduler recovers it: a session holding a
# lock on its row keeps the recovery off it (SKIP LOCKED) for a while, and
# meanwhile the second job stays held back.
my ($lock_in, $lock_out) = ('', '');
my $locker = IPC::Run::start(
	[ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$lock_in, '>', \$lock_out, '2>', \$lock_out, IPC::Run::timeout(120));
$lock_in .= "BEGIN;\nSELECT 'locked' FROM atomizer.job WHERE queue = 'hang' AND state = 'running' FOR SHARE;\n";
$locker->pump until $lock_out =~ /locked/;
$node->safe_psql('postgres', q{
	SELECT pg_terminate_backend(w.pid) FROM atomizer.workers w
	 WHERE w.queue = 'hang' AND w.job_id IS NOT NULL});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM atomizer.workers WHERE queue = 'hang' AND job_id IS NOT NULL})
  or die "the worker did not end";
sleep 2;
is($node->safe_psql('postgres', q{
	SELECT string_agg(state, ',' ORDER BY id) FROM atomizer.job WHERE queue = 'hang'}),
	'running,held', 'crash: the dead worker\'s job still counts until it is recovered');
$lock_in .= "COMMIT;\n";
$locker->finish;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 2 FROM atomizer.jobs WHERE queue = 'hang' AND state = 'succeeded'})
  or die "the jobs of the dead worker's handler did not run";
pass('crash: after recovery both jobs ran');
is($node->safe_psql('postgres', q{SELECT max_running('hang', 'public.stuck')}), 1,
	'crash: never two of the limited handler at once');

# 5. Holds: an internal queue's running jobs of a limited handler are
# counted by the processes that run them.  Three workers and two sessions
# calling run_pending() share a handler limited to 2; an immediate stop in
# the middle leaves the workers' batches orphaned (after the restart the
# claims count them in the table until the scheduler recovers them).
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('mix', concurrency => 3);
	SELECT atomizer.limit_handler('mix', 'slow', 2);
	SELECT atomizer.pause_queue('mix');
	SELECT count(atomizer.enqueue('slow', jsonb_build_object('n', i), queue => 'mix'))
	  FROM generate_series(1, 400) i;
	SELECT count(atomizer.enqueue('noop', jsonb_build_object('n', i), queue => 'mix'))
	  FROM generate_series(1, 400) i;
	SELECT atomizer.resume_queue('mix');
});
sub run_pending_loop
{
	my ($rounds) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr('postgres'),
		  '-c', join(' ', map { "SELECT atomizer.run_pending('mix', 3);" } 1 .. $rounds) ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(300));
	return [ $h, \$err ];
}
my @sessions = map { run_pending_loop(40) } 1 .. 2;
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 100 FROM atomizer.jobs WHERE queue = 'mix' AND handler = 'public.slow' AND state = 'succeeded'})
  or die "the limited jobs did not start";
$node->stop('immediate');
$_->[0]->finish for @sessions;		# they lost their server
$node->start;
@sessions = map { run_pending_loop(40) } 1 .. 2;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 800 FROM atomizer.jobs WHERE queue = 'mix' AND state = 'succeeded'})
  or die "the jobs of queue mix did not all run";
$_->[0]->finish for @sessions;
pass('holds: every job of the limited queue ran, across an immediate stop');
my $mix_running = $node->safe_psql('postgres', q{SELECT max_running('mix', 'public.slow')});
cmp_ok($mix_running, '<=', 2,
	"holds: at most 2 of the limited handler at once, workers and run_pending() ($mix_running)");
note("holds overshoot: " . ($mix_running > 2 ? $mix_running - 2 : 0));

# The rate window's bound lives in shared memory: after a restart (and
# after an immediate stop, a crash's recovery) it is gone, and the first
# claim reads the window from the table, so the starts before the restart
# still count.  Three of five starts an hour before; two after.
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('rr', external => true, rate_limit => 5,
								 rate_period => '1 hour');
	SELECT count(atomizer.enqueue('t', jsonb_build_object('n', i), queue => 'rr'))
	  FROM generate_series(1, 10) i;
	SELECT count(*) FROM atomizer.claim('rr', 3, '1 hour', 'w');
});
$node->restart;
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.claim('rr', 3, '1 hour', 'w')}),
	2, 'restart: the rate window still counts the starts before it');
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.claim('rr', 3, '1 hour', 'w')}),
	0, 'restart: and the window is full');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.claim('rr', 3, '1 hour', 'w')}),
	0, 'crash: the window is still full after an immediate stop');
is($node->safe_psql('postgres', q{SELECT sum(n) FROM atomizer.rate_start WHERE queue = 'rr'}),
	5, 'restart and crash: five starts in the window, never more');

$node->stop;
done_testing();
