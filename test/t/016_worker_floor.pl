# The claim floor (floor.c), from the outside: workers start their claims at
# a per-queue key (priority, run_at, id) below which no job waits, and no
# job may ever be left below it.  Every check is about behaviour -- a job
# runs, once, promptly -- never about the floor itself:
#  - a drain of 20,000 jobs by two workers runs each job exactly once and
#    passes none over (claim order is kept);
#  - a claim whose floor was lowered while it was in progress does not raise
#    the floor over the newcomer (the slot's generation), also when the
#    newcomer is enqueued by a handler in the transaction that claims the
#    worker's next batch;
#  - every commit that makes a job wait lowers the floor: enqueue and
#    enqueue_many with a run_at a day in the past, a retry after a failure
#    with a lower priority number than the jobs being drained,
#    atomizer.retry() of a dead job, a cron fire, and the release of the
#    jobs of a worker that died mid-batch;
#  - a (sub)transaction that locked waiting jobs and rolls back resets the
#    floors: cancel() rolled back, cancel() in a savepoint rolled back,
#    run_pending() rolled back;
#  - a claim that crosses into a higher priority number does not pass a
#    delayed job of a lower one;
#  - the safety net, with a poll of a second: a job whose cancel was
#    prepared and rolled back, one enqueued in a prepared transaction, and
#    one inserted by hand, all below the floor, run within seconds;
#  - two queues that share a floor slot both run;
#  - the jobs a run_pending() claim locked behind a solo job and left are
#    not stranded when it commits;
#  - after a restart (floors start at the front) everything runs.
#
# Most checks hold the workers on an advisory lock (a "gate") in the middle
# of a drain, do the thing under test, open the gate, and then require the
# job under test to have run before most of the drain: a job left below the
# floor is found only when the drain is over (the safety net's look from
# the front), so it would run after all of it.  The poll interval is a
# minute: nothing is found by polling, except where the safety net is
# tested.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(usleep time);

my $node = PostgreSQL::Test::Cluster->new('floor');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
max_prepared_transactions = 2
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
# The safety-net poll is far away: jobs must be found by their commit's
# wake-up and claim floor, not by polling.
atomizer.poll_interval = '1min'
# Workers stay for the whole test once started.
atomizer.worker_idle_timeout = '5min'
});
$node->start;

sub sql
{
	return $node->safe_psql('postgres', shift);
}

# Wait at most $secs seconds until $sql returns $expected (for "promptly":
# what the floor must not delay is bounded far below timeout_default).
sub wait_within
{
	my ($secs, $sql, $expected, $name) = @_;
	my $deadline = time() + $secs;
	my $got;
	while (1)
	{
		$got = sql($sql);
		last if $got eq $expected;
		if (time() > $deadline)
		{
			ok(0, $name);
			diag("after $secs s: got '$got', want '$expected'");
			die "stopping: timed out waiting for: $name\n";
		}
		usleep(100_000);
	}
	ok(1, $name);
	return;
}

sql(q{
	CREATE EXTENSION atomizer;
	-- one row per handler run that committed; seq is the order they ran in
	CREATE TABLE effects (seq bigserial PRIMARY KEY, tag text NOT NULL,
						  n int NOT NULL,
						  at timestamptz NOT NULL DEFAULT clock_timestamp());
	-- payload: tag and n for the effect; "gate": first wait for the
	-- advisory lock the test holds ("once": only on the first run, counted
	-- by that sequence); "spawn": enqueue a job with that tag, a day in the
	-- past; "fail_once": the first run (counted by that sequence) fails.
	CREATE FUNCTION work(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF payload ? 'gate' THEN
			IF NOT (payload ? 'once') THEN
				PERFORM pg_advisory_xact_lock_shared((payload->>'gate')::bigint);
			ELSIF nextval((payload->>'once')::regclass) = 1 THEN
				PERFORM pg_advisory_xact_lock_shared((payload->>'gate')::bigint);
			END IF;
		END IF;
		IF payload ? 'spawn' THEN
			PERFORM atomizer.enqueue('work',
				jsonb_build_object('tag', payload->>'spawn', 'n', 1),
				queue => 'q', run_at => now() - interval '1 day');
		END IF;
		IF payload ? 'fail_once' THEN
			IF nextval((payload->>'fail_once')::regclass) = 1 THEN
				RAISE EXCEPTION 'first run of % fails', payload->>'tag';
			END IF;
		END IF;
		INSERT INTO effects (tag, n) VALUES (payload->>'tag', (payload->>'n')::int);
	END $$;
	-- a failed attempt is retried 200 ms later
	SELECT atomizer.create_queue('q', concurrency => 2,
		backoff_base => '200 milliseconds', backoff_jitter => 0);
});

# ------------------------------------------------------------- gates
# A session that holds the gates (session advisory locks), for the whole
# file: its timeout counts from each query, not from its start.
my $gates = $node->background_psql('postgres');
$gates->set_query_timer_restart;
my $next_gate = 1000;

sub close_gate
{
	my $g = ++$next_gate;
	$gates->query_safe("SELECT pg_advisory_lock($g)");
	return $g;
}

sub open_gate
{
	my $g = shift;
	$gates->query_safe("SELECT pg_advisory_unlock($g)");
	return;
}

# Wait until at least $n processes wait at gate $g.
sub wait_blocked
{
	my ($g, $n, $name) = @_;
	wait_until($node, 'postgres', qq{
		SELECT count(*) >= $n FROM pg_locks
		 WHERE locktype = 'advisory' AND classid = 0 AND objid = $g
		   AND objsubid = 1 AND NOT granted},
		't', $name);
	return;
}

# Enqueue $n jobs tagged $tag into q, in one transaction.
sub enqueue_bulk
{
	my (%o) = @_;
	my $extra = defined $o{gate} ? ", 'gate', $o{gate}" : '';
	my $prio = $o{priority} // 0;
	my $run_at = $o{run_at} // 'now()';
	return sql(qq{
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', '$o{tag}', 'n', g$extra)
				    FROM generate_series(1, $o{n}) g),
			queue => 'q', priority => $prio, run_at => $run_at)});
}

# Enqueue one job tagged $tag (n = 1) with extra payload keys and enqueue
# arguments; returns its id.
sub enqueue_one
{
	my ($tag, $payload_extra, $args) = @_;
	$payload_extra = $payload_extra ? ", $payload_extra" : '';
	$args = $args ? ", $args" : '';
	return sql(qq{
		SELECT atomizer.enqueue('work',
			jsonb_build_object('tag', '$tag', 'n', 1$payload_extra),
			queue => 'q'$args)});
}

# Wait until $count effects tagged $tag exist.
sub wait_effects
{
	my ($tag, $count, $name) = @_;
	wait_until($node, 'postgres',
		"SELECT count(*) FROM effects WHERE tag = '$tag'", $count, $name);
	return;
}

# The job(s) tagged $tag ran once each, and before most of the drain
# $bulk ($n jobs): a job left below the floor would have run after all of
# it.
sub ran_early
{
	my ($tag, $jobs, $bulk, $n, $name) = @_;
	is(sql("SELECT count(*), count(DISTINCT n) FROM effects WHERE tag = '$tag'"),
		"$jobs|$jobs", "$name: ran once");
	my $after = sql(qq{
		SELECT count(*) FROM effects
		 WHERE tag = '$bulk'
		   AND seq > (SELECT max(seq) FROM effects WHERE tag = '$tag')});
	cmp_ok($after, '>=', $n / 2,
		"$name: ran before most of a drain of $n jobs (ran before $after of them)");
	return;
}

my $bulk_n = 1000;

# ------------------------------------------------------------- a long drain
# 20,000 jobs in four transactions while two workers drain them: the floor
# rises with every claim.  Each job must run exactly once, and none may be
# passed over: in claim order (priority, run_at, id), no job is claimed
# after the job 1,000 places behind it (two workers' batches of up to 64
# overlap by far less).
my $t0 = time();
for my $part (0 .. 3)
{
	sql(qq{
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', 'drain', 'n', g)
				    FROM generate_series($part * 5000 + 1, $part * 5000 + 5000) g),
			queue => 'q')});
}
wait_effects('drain', 20000, 'a drain of 20,000 jobs by two workers finished');
note(sprintf('drain of 20,000 jobs: %.1f s', time() - $t0));
is(sql(q{SELECT count(*), count(DISTINCT n) FROM effects WHERE tag = 'drain'}),
	'20000|20000', 'each of the 20,000 jobs ran exactly once');
is(sql(q{
	SELECT count(*), count(*) FILTER (WHERE attempt = 1 AND state = 'succeeded')
	  FROM atomizer.jobs WHERE payload->>'tag' = 'drain'}),
	'20000|20000', 'all succeeded at the first attempt');
is(sql(q{
	WITH r AS (
		SELECT started_at,
			   row_number() OVER (ORDER BY priority, run_at, id) AS k
		  FROM atomizer.jobs WHERE payload->>'tag' = 'drain')
	SELECT count(*) FROM r a JOIN r b ON b.k = a.k + 1000
	 WHERE a.started_at > b.started_at}),
	'0', 'no job was passed over: each was claimed before the job 1,000 places behind it');
is(sql(q{SELECT count(*) FROM atomizer.job_errors}), '0', 'no errors');

# ------------------------------------------------------------- generation
# A claim reads the floor, then (here: held by a trigger on its UPDATE)
# commits.  A job enqueued in between, below the claim's last key, must
# not end up under the floor that claim raises.
{
	my $gz = close_gate();
	# one worker busy elsewhere
	my $z = enqueue_one('gen-z', "'gate', $gz");
	wait_blocked($gz, 1, 'generation: one worker waits at a gate');

	my $gc = close_gate();
	sql(qq{
		CREATE FUNCTION claim_gate() RETURNS trigger LANGUAGE plpgsql AS \$\$
		BEGIN
			PERFORM pg_advisory_xact_lock_shared($gc);
			RETURN NULL;
		END \$\$;
		CREATE TRIGGER claim_gate AFTER UPDATE ON atomizer.job FOR EACH ROW
			WHEN (OLD.state = 'available' AND NEW.state = 'running')
			EXECUTE FUNCTION claim_gate();
	});
	enqueue_bulk(tag => 'gen-bulk', n => $bulk_n, priority => 5);
	wait_blocked($gc, 1, 'generation: the other worker is inside its claim');
	my $x = enqueue_one('gen-x');
	open_gate($gc);
	open_gate($gz);
	wait_effects('gen-bulk', $bulk_n, 'generation: the drain finished');
	wait_effects('gen-x', 1, 'generation: the job enqueued during the claim ran');
	ran_early('gen-x', 1, 'gen-bulk', $bulk_n,
		'a job enqueued while a claim was in progress');
	sql('DROP TRIGGER claim_gate ON atomizer.job; DROP FUNCTION claim_gate()');
}

# ------------------------------------------------------------- enqueue below the floor
# Workers hold a batch of a drain at the gate (the floor is past it); a job
# enqueued with a run_at a day in the past sorts far below the floor.
{
	my $g = close_gate();
	enqueue_bulk(tag => 'past-bulk', n => $bulk_n, gate => $g);
	wait_blocked($g, 1, 'enqueue in the past: workers wait at the gate');
	enqueue_one('past', undef, q{run_at => now() - interval '1 day'});
	open_gate($g);
	wait_effects('past-bulk', $bulk_n, 'enqueue in the past: the drain finished');
	wait_effects('past', 1, 'enqueue in the past: the job ran');
	ran_early('past', 1, 'past-bulk', $bulk_n,
		"enqueue with run_at a day in the past");
}
{
	my $g = close_gate();
	enqueue_bulk(tag => 'past-many-bulk', n => $bulk_n, gate => $g);
	wait_blocked($g, 1, 'enqueue_many in the past: workers wait at the gate');
	enqueue_bulk(tag => 'past-many', n => 3,
		run_at => q{now() - interval '1 day'});
	open_gate($g);
	wait_effects('past-many-bulk', $bulk_n, 'enqueue_many in the past: the drain finished');
	wait_effects('past-many', 3, 'enqueue_many in the past: the jobs ran');
	ran_early('past-many', 3, 'past-many-bulk', $bulk_n,
		"enqueue_many with run_at a day in the past");
}

# A handler enqueues a job a day in the past, in the middle of a drain: it
# commits in the worker's transaction that records the batch and claims the
# worker's next one (whose claim read the floor before the lowering).
{
	sql(q{
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', 'spawn-bulk', 'n', g)
						 || CASE WHEN g = 100 THEN '{"spawn": "spawned"}'::jsonb
								 ELSE '{}' END
				    FROM generate_series(1, 2000) g),
			queue => 'q', priority => 5)});
	wait_effects('spawn-bulk', 2000, 'enqueue from a handler: the drain finished');
	wait_effects('spawned', 1, 'enqueue from a handler: the job ran');
	my $after = sql(q{
		SELECT count(*) FROM effects
		 WHERE tag = 'spawn-bulk'
		   AND seq > (SELECT max(seq) FROM effects WHERE tag = 'spawned')});
	cmp_ok($after, '>=', 1000,
		"a job enqueued by a handler during a drain ran before most of the 1,900 jobs behind it (before $after)");
}

# ------------------------------------------------------------- retry after a failure
# A priority-0 job fails while the workers drain priority 5: its retry
# (200 ms later) sorts below the floor.
{
	sql('CREATE SEQUENCE retry_once');
	my $gf = close_gate();
	my $gb = close_gate();
	my $f = enqueue_one('retry', "'gate', $gf, 'fail_once', 'retry_once'");
	wait_blocked($gf, 1, 'retry: the failing job waits at its gate');
	enqueue_bulk(tag => 'retry-bulk', n => $bulk_n, priority => 5, gate => $gb);
	wait_blocked($gb, 1, 'retry: the other worker drains priority 5');
	open_gate($gf);
	# the failure is recorded, then its worker claims priority 5 too
	wait_until($node, 'postgres',
		"SELECT count(*) FROM atomizer.job_errors WHERE job_id = $f",
		'1', 'retry: the first attempt failed');
	wait_blocked($gb, 2, 'retry: both workers drain priority 5');
	wait_until($node, 'postgres',
		"SELECT run_at <= now() FROM atomizer.jobs WHERE id = $f",
		't', 'retry: the retry is due');
	open_gate($gb);
	wait_effects('retry-bulk', $bulk_n, 'retry: the drain finished');
	wait_effects('retry', 1, 'retry: the job ran again');
	ran_early('retry', 1, 'retry-bulk', $bulk_n,
		'a retry (priority 0) during a drain of priority 5');
	is(sql("SELECT state, attempt FROM atomizer.jobs WHERE id = $f"),
		'succeeded|2', 'retry: it succeeded at its second attempt');
}

# ------------------------------------------------------------- atomizer.retry() of a dead job
{
	sql('CREATE SEQUENCE dead_once');
	my $d = enqueue_one('dead', "'fail_once', 'dead_once'", 'max_attempts => 1');
	wait_until($node, 'postgres',
		"SELECT state FROM atomizer.jobs WHERE id = $d", 'dead',
		'atomizer.retry(): the job is dead');
	my $g = close_gate();
	enqueue_bulk(tag => 'dead-bulk', n => $bulk_n, priority => 5, gate => $g);
	wait_blocked($g, 1, 'atomizer.retry(): workers drain priority 5');
	is(sql("SELECT atomizer.retry($d)"), 't', 'atomizer.retry() sent it back');
	open_gate($g);
	wait_effects('dead-bulk', $bulk_n, 'atomizer.retry(): the drain finished');
	wait_effects('dead', 1, 'atomizer.retry(): the job ran');
	ran_early('dead', 1, 'dead-bulk', $bulk_n,
		'a dead job sent back with atomizer.retry() during a drain of priority 5');
}

# ------------------------------------------------------------- cron fire
{
	my $g = close_gate();
	enqueue_bulk(tag => 'cron-bulk', n => $bulk_n, priority => 5, gate => $g);
	wait_blocked($g, 1, 'cron: workers drain priority 5');
	sql(q{
		SELECT atomizer.schedule('floor_cron', '* * * * * *', 'work',
			'{"tag": "cron", "n": 1}', queue => 'q', priority => 0)});
	# a fire is enqueued ahead of its time (atomizer.cron_lookahead), and
	# unschedule() before that time would cancel it: wait until it is due
	wait_until($node, 'postgres',
		q{SELECT count(*) > 0 FROM atomizer.jobs WHERE payload->>'tag' = 'cron'
		   AND state = 'available'},
		't', 'cron: the schedule fired');
	sql(q{SELECT atomizer.unschedule('floor_cron')});
	open_gate($g);
	wait_effects('cron-bulk', $bulk_n, 'cron: the drain finished');
	wait_until($node, 'postgres',
		q{SELECT count(*) > 0 FROM effects WHERE tag = 'cron'},
		't', "cron: the fire's job ran");
	my $after = sql(q{
		SELECT count(*) FROM effects
		 WHERE tag = 'cron-bulk'
		   AND seq > (SELECT min(seq) FROM effects WHERE tag = 'cron')});
	cmp_ok($after, '>=', $bulk_n / 2,
		"a cron fire (priority 0) during a drain of priority 5: ran before most of it (before $after of $bulk_n)");
}

# ------------------------------------------------------------- release
# A worker dies (pg_terminate_backend) in the middle of a batch of two: the
# scheduler puts both jobs back (uncounted, solo), far below the floor of
# the other worker's drain.
{
	sql('CREATE SEQUENCE release_once');
	my $gl = close_gate();
	my ($l1, $l2) = split /\n/, sql(qq{
		SELECT * FROM atomizer.enqueue_many('work', ARRAY[
			jsonb_build_object('tag', 'release', 'n', 1, 'gate', $gl, 'once', 'release_once'),
			jsonb_build_object('tag', 'release', 'n', 2, 'gate', $gl, 'once', 'release_once')],
			queue => 'q')});
	wait_blocked($gl, 1, 'release: a worker waits in a batch of two');
	my $worker = sql(
		"SELECT string_agg(DISTINCT worker, ',') FROM atomizer.job WHERE id IN ($l1, $l2)");
	like($worker, qr/^atomizer:\d+:\d+:2$/,
		'release: both jobs are in the same batch of two');
	my $g = close_gate();
	enqueue_bulk(tag => 'release-bulk', n => $bulk_n, priority => 5, gate => $g);
	wait_blocked($g, 1, 'release: the other worker drains priority 5');
	sql("SELECT pg_terminate_backend(pid) FROM atomizer.workers WHERE job_id = $l1");
	wait_until($node, 'postgres',
		"SELECT count(*) FROM atomizer.job WHERE worker = '$worker'",
		'0', "release: the dead worker's jobs were recovered");
	open_gate($g);
	open_gate($gl);
	wait_effects('release-bulk', $bulk_n, 'release: the drain finished');
	wait_effects('release', 2, 'release: the released jobs ran');
	ran_early('release', 2, 'release-bulk', $bulk_n,
		'jobs released after their worker died, during a drain of priority 5');
	is(sql("SELECT string_agg(attempt::text, ',' ORDER BY id) FROM atomizer.jobs WHERE id IN ($l1, $l2)"),
		'1,1', 'release: they were put back uncounted (released, not failed)');
}

# ------------------------------------------------------------- rolled-back locks
# A session locks a waiting job (cancel() locks it FOR UPDATE) while the
# workers start a drain behind it: they skip it and the floor passes it.
# When the lock is rolled back the job waits again, below the floor.
sub locked_then_rolled_back
{
	my ($tag, $begin, $rollback, $end) = @_;
	sql(q{SELECT atomizer.pause_queue('q')});
	my $t = enqueue_one($tag);
	my $g = close_gate();
	enqueue_bulk(tag => "$tag-bulk", n => $bulk_n, gate => $g);
	my $s = $node->background_psql('postgres');
	$s->query_safe($begin);
	is($s->query_safe("SELECT atomizer.cancel($t)"), 't', "$tag: cancel() took the job");
	sql(q{SELECT atomizer.resume_queue('q')});
	wait_blocked($g, 1, "$tag: workers drain past the locked job");
	$s->query_safe($rollback);
	open_gate($g);
	wait_effects("$tag-bulk", $bulk_n, "$tag: the drain finished");
	wait_effects($tag, 1, "$tag: the job ran");
	$s->query_safe($end) if $end;
	$s->quit;
	ran_early($tag, 1, "$tag-bulk", $bulk_n, "$tag: a cancel() rolled back");
	return;
}
locked_then_rolled_back('cancel-rollback', 'BEGIN', 'ROLLBACK');
# the savepoint's rollback, not the end of the transaction, must do it: the
# transaction stays open until the job has run
locked_then_rolled_back('cancel-savepoint', 'BEGIN; SAVEPOINT s',
	'ROLLBACK TO SAVEPOINT s', 'COMMIT');

# run_pending() in a transaction that rolls back: it claimed (and ran) the
# job; the workers drain past it; after the rollback it waits again.
{
	my $g1 = close_gate();
	my $g2 = close_gate();
	enqueue_bulk(tag => 'rp-bulk1', n => 200, priority => 5, gate => $g1);
	wait_blocked($g1, 2, 'run_pending rolled back: both workers wait at a gate');
	my $t = enqueue_one('rp');
	my $s = $node->background_psql('postgres');
	$s->query_safe('BEGIN');
	is($s->query_safe(q{SELECT atomizer.run_pending('q', 1)}), '1',
		'run_pending rolled back: it ran the job');
	enqueue_bulk(tag => 'rp-bulk2', n => $bulk_n, priority => 5, gate => $g2);
	open_gate($g1);
	wait_blocked($g2, 2, 'run_pending rolled back: the workers drained past the job');
	$s->query_safe('ROLLBACK');
	$s->quit;
	open_gate($g2);
	wait_effects('rp-bulk2', $bulk_n, 'run_pending rolled back: the drain finished');
	wait_effects('rp', 1, 'run_pending rolled back: the job ran');
	ran_early('rp', 1, 'rp-bulk2', $bulk_n, 'a run_pending() rolled back');
}

# ------------------------------------------------------------- delayed job, higher priority number drained
# D (priority 0) is due in 2 s; the workers' claims cross from priority 0
# into the drain of priority 5, passing D, which is not yet due.
{
	my $g = close_gate();
	my $d = enqueue_one('delayed', undef, q{run_at => now() + interval '2 seconds'});
	enqueue_bulk(tag => 'delayed-bulk', n => $bulk_n, priority => 5, gate => $g);
	wait_blocked($g, 1, 'delayed: workers drain priority 5');
	wait_until($node, 'postgres',
		"SELECT run_at <= now() FROM atomizer.jobs WHERE id = $d", 't',
		'delayed: the delayed job is due');
	open_gate($g);
	wait_effects('delayed-bulk', $bulk_n, 'delayed: the drain finished');
	wait_effects('delayed', 1, 'delayed: the job ran');
	ran_early('delayed', 1, 'delayed-bulk', $bulk_n,
		'a delayed priority-0 job passed by claims of priority 5');
	is(sql(qq{
		SELECT started_at >= run_at, started_at < run_at + interval '5 seconds'
		  FROM atomizer.jobs WHERE id = $d}),
		't|t', 'delayed: it started after its run_at, and within 5 s of it (poll is 1 min)');
}

# ------------------------------------------------------------- safety net
# Jobs below the floor that no commit callback saw are found by a look from
# the front of the queue, taken (at most once a second) when a claim or due
# check from the floor finds nothing.  They need a wake-up: poll every
# second here.
sql(q{ALTER SYSTEM SET atomizer.poll_interval = '1s'; SELECT pg_reload_conf()});

# A prepared transaction that cancelled a job is rolled back after the
# workers drained past the job.
{
	sql(q{SELECT atomizer.pause_queue('q')});
	my $t = enqueue_one('prepared');
	my $g = close_gate();
	enqueue_bulk(tag => 'prepared-bulk', n => $bulk_n, gate => $g);
	sql(qq{BEGIN; SELECT atomizer.cancel($t); PREPARE TRANSACTION 'floor_cancel'});
	sql(q{SELECT atomizer.resume_queue('q')});
	wait_blocked($g, 1, 'prepared: workers drain past the locked job');
	sql(q{ROLLBACK PREPARED 'floor_cancel'});
	open_gate($g);
	wait_effects('prepared-bulk', $bulk_n, 'prepared: the drain finished');
	wait_within(10, q{SELECT count(*) FROM effects WHERE tag = 'prepared'}, '1',
		'a job whose cancel was prepared, then rolled back, ran within 10 s of the drain (poll 1 s)');
}

# A job enqueued, a day in the past, in a prepared transaction that is
# committed later: its commit callback ran at PREPARE, not at COMMIT
# PREPARED.
{
	enqueue_bulk(tag => 'prepared-enqueue-pre', n => 100);
	wait_effects('prepared-enqueue-pre', 100, 'prepared enqueue: the floor is past a small drain');
	sql(q{
		BEGIN;
		SELECT atomizer.enqueue('work', '{"tag": "prepared-enqueue", "n": 1}',
			queue => 'q', run_at => now() - interval '1 day');
		PREPARE TRANSACTION 'floor_enqueue'});
	sql(q{COMMIT PREPARED 'floor_enqueue'});
	wait_within(10, q{SELECT count(*) FROM effects WHERE tag = 'prepared-enqueue'}, '1',
		'a job enqueued in a prepared transaction ran within 10 s of COMMIT PREPARED (poll 1 s)');
}

# A row inserted by hand, far below the floor.
{
	enqueue_bulk(tag => 'direct-pre', n => 100);
	wait_effects('direct-pre', 100, 'by hand: the floor is past a small drain');
	my $id = sql(q{
		INSERT INTO atomizer.job (queue, handler, payload, owner, run_at, priority)
		VALUES ('q', 'public.work', '{"tag": "direct", "n": 1}', current_user,
				now() - interval '1 day', 0)
		RETURNING id});
	my $inserted = sql('SELECT clock_timestamp()');
	wait_within(15, q{SELECT count(*) FROM effects WHERE tag = 'direct'}, '1',
		'a job inserted by hand below the floor ran');
	is(sql(qq{SELECT finished_at < '$inserted'::timestamptz + interval '6 seconds'
			   FROM atomizer.jobs WHERE id = $id}),
		't', 'by hand: within 6 s (poll 1 s)');
}
sql(q{ALTER SYSTEM RESET atomizer.poll_interval; SELECT pg_reload_conf()});

# ------------------------------------------------------------- two queues, one slot
# Queues are hashed to 256 floor slots by (database, name); one whose slot
# another holds has no floor.  Find two names that share a slot (the hash
# of floor.c, computed here) and drain both at once, each with jobs below
# the other's floor.
{
	my $dboid = sql(q{SELECT oid FROM pg_database WHERE datname = current_database()});
	my $mask = 0xffffffff;
	my $mul = sub {
		my ($a, $b) = @_;
		my $lo = ($a * ($b & 0xffff)) & $mask;
		my $hi = (($a * ($b >> 16)) & 0xffff) << 16;
		return ($lo + $hi) & $mask;
	};
	my $m = $dboid & $mask;
	$m ^= $m >> 16;
	$m = $mul->($m, 0x85ebca6b);
	$m ^= $m >> 13;
	$m = $mul->($m, 0xc2b2ae35);
	$m ^= $m >> 16;
	my @names = map { "slot_$_" } 1 .. 200;
	my %hash = split /[|\n]/, sql(
		'SELECT n, hashtext(n) FROM unnest(ARRAY['
		  . join(',', map { "'$_'" } @names) . ']) n');
	my %by_slot;
	my @pair;
	for my $n (@names)
	{
		my $h = $hash{$n} & $mask;
		$h ^= ($m + 0x9e3779b9 + (($h << 6) & $mask) + ($h >> 2)) & $mask;
		my $slot = $h % 256;
		if ($by_slot{$slot})
		{
			@pair = ($by_slot{$slot}, $n);
			last;
		}
		$by_slot{$slot} = $n;
	}
	die "no two queue names share a slot" unless @pair;
	note("queues @pair share a floor slot in database $dboid");
	my ($qa, $qb) = @pair;
	sql(qq{
		SELECT atomizer.create_queue('$qa', concurrency => 2);
		SELECT atomizer.create_queue('$qb', concurrency => 2);
		SELECT atomizer.pause_queue('$qb');
		-- waits while $qa drains and takes the slot
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', 'slot-b', 'n', g)
				    FROM generate_series(1, 2000) g), queue => '$qb');
		SELECT count(*) FROM atomizer.enqueue_many('work',
			ARRAY(SELECT jsonb_build_object('tag', 'slot-a', 'n', g)
				    FROM generate_series(1, 2000) g), queue => '$qa');
	});
	wait_effects('slot-a', 2000, "shared slot: $qa drained");
	my $resumed = sql(qq{SELECT now() FROM atomizer.resume_queue('$qb')});
	# both at once, with jobs a day in the past in each
	for my $i (1 .. 4)
	{
		for my $q ($qa, $qb)
		{
			sql(qq{
				SELECT count(*) FROM atomizer.enqueue_many('work',
					ARRAY(SELECT jsonb_build_object('tag', 'slot-mix-$q', 'n', $i * 1000 + g)
						    FROM generate_series(1, 500) g), queue => '$q',
					run_at => now() - interval '1 day' * $i)});
		}
	}
	wait_effects('slot-b', 2000, "shared slot: $qb drained after its resume");
	wait_effects("slot-mix-$qa", 2000, "shared slot: $qa ran its jobs in the past");
	wait_effects("slot-mix-$qb", 2000, "shared slot: $qb ran its jobs in the past");
	is(sql(q{
		SELECT count(*) = count(DISTINCT (tag, n)) FROM effects WHERE tag LIKE 'slot-%'}),
		't', 'shared slot: each job ran once');
	is(sql(qq{
		SELECT max(at) < '$resumed'::timestamptz + interval '20 seconds'
		  FROM effects WHERE tag LIKE 'slot-%'}),
		't', 'shared slot: all within 20 s of the resume (poll is 1 min)');
}

# ------------------------------------------------------------- a claim that leaves jobs locked
# run_pending() meets a solo job (one put back after its worker died
# mid-batch, as the release check above made; marked by hand here) at the
# front of the queue: its claim locks a batch of up to 64 jobs but claims
# only the solo job.  The jobs it locked and left are skipped by the
# workers' drain while its transaction stays open, and the floor passes
# them; when it commits they wait again and must not stay below the floor.
# (Last before the restart, and without dying: if they are stranded, they
# wait for the poll, a minute, or the restart.)
{
	my $g1 = close_gate();
	my $g2 = close_gate();
	enqueue_bulk(tag => 'solo-bulk1', n => 200, priority => 5, gate => $g1);
	wait_blocked($g1, 2, 'solo: both workers wait at a gate');
	my $s_id = enqueue_one('solo-s');
	enqueue_bulk(tag => 'solo-left', n => 20);
	sql("UPDATE atomizer.job SET solo = true WHERE id = $s_id");
	enqueue_bulk(tag => 'solo-bulk2', n => $bulk_n, priority => 5, gate => $g2);
	my $s = $node->background_psql('postgres');
	$s->query_safe('BEGIN');
	is($s->query_safe(q{SELECT atomizer.run_pending('q')}), '1',
		'solo: run_pending ran the solo job alone');
	open_gate($g1);
	wait_blocked($g2, 2, 'solo: the workers drained past the jobs it locked');
	$s->query_safe('COMMIT');
	$s->quit;
	open_gate($g2);
	wait_effects('solo-bulk2', $bulk_n, 'solo: the drain finished');
	my $deadline = time() + 10;
	usleep(100_000)
	  while sql(q{SELECT count(*) FROM effects WHERE tag = 'solo-left'}) ne '20'
	  && time() < $deadline;
	my $ran = sql(q{SELECT count(*) FROM effects WHERE tag = 'solo-left'});
	my $after = $ran < 20 ? 0 : sql(q{
		SELECT count(*) FROM effects
		 WHERE tag = 'solo-bulk2'
		   AND seq > (SELECT max(seq) FROM effects WHERE tag = 'solo-left')});
	cmp_ok($after, '>=', $bulk_n / 2,
		"the jobs a run_pending() claim locked behind a solo job and left ran before most of a drain of $bulk_n jobs (before $after of them; $ran of 20 ran within 10 s of its end)");
}

$gates->quit;

# ------------------------------------------------------------- restart
# Floors live in shared memory: after a restart they start at the front.
# Jobs left waiting at the stop, a delayed one, and new ones all run.
{
	enqueue_bulk(tag => 'restart-a', n => 2000);
	enqueue_bulk(tag => 'restart-b', n => 500, priority => 5);
	my $d = enqueue_one('restart-delayed', undef,
		q{run_at => now() + interval '4 seconds'});
	$node->restart;
	enqueue_one('restart-past', undef, q{run_at => now() - interval '1 day'});
	wait_effects('restart-a', 2000, 'restart: the jobs left at the stop ran');
	wait_effects('restart-b', 500, 'restart: the priority-5 jobs ran');
	wait_effects('restart-past', 1, 'restart: a job enqueued after it in the past ran');
	wait_effects('restart-delayed', 1, 'restart: the delayed job ran');
	is(sql(q{
		SELECT count(*) = count(DISTINCT (tag, n)) FROM effects WHERE tag LIKE 'restart-%'}),
		't', 'restart: each job ran once');
	is(sql(qq{SELECT started_at < run_at + interval '5 seconds' FROM atomizer.jobs WHERE id = $d}),
		't', 'restart: the delayed job started within 5 s of its run_at (poll is 1 min)');
}

is(sql(q{SELECT count(*) FROM atomizer.job}), '0', 'nothing is left waiting');
is(sql(q{
	SELECT (SELECT count(*) FROM effects)
			 = (SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'),
		   (SELECT count(*) FROM effects WHERE tag <> 'cron')
			 = (SELECT count(DISTINCT (tag, n)) FROM effects WHERE tag <> 'cron')}),
	't|t', 'over the whole file: one effect per succeeded job, and no job ran twice')
  or diag(sql(q{
	SELECT tag, count(*), count(DISTINCT n) FROM effects GROUP BY tag ORDER BY tag}));

# ------------------------------------------------------------- the log
my @errors =
  grep { /\batomizer (?:launcher|scheduler|worker)\b.*\b(?:ERROR|FATAL|PANIC):/
	  && !/terminating (?:background worker|connection) .*due to administrator command/ }
  split /\n/, slurp_file($node->logfile);
is(scalar(@errors), 0, 'no ERROR, FATAL or PANIC from atomizer processes')
  or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));

$node->stop;
done_testing();
