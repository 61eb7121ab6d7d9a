# Lifecycle hooks with live background workers and the scheduler:
#  (a) an internal queue's before_run, on_success, on_failure and on_dead run
#      in atomizer's workers, as the role that enqueued the job, and their
#      writes commit with the jobs' outcomes;
#  (b) a worker killed while it runs a job: the scheduler's orphan recovery
#      ends the job dead and runs on_dead, as the job's owner;
#  (c) an external job whose lease expires on its last attempt: the
#      scheduler's lease expiry runs on_dead; an on_dead hook that fails
#      there is logged, recorded, and does not stop the duty (the next
#      expired lease is handled as well), and a session-level advisory
#      lock a hook took is not kept by the scheduler;
#  (d) a worker stopped while an on_dead hook runs cancels the hook at the
#      shutdown deadline and commits the job's outcome.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('hooks', conf => q{
atomizer.worker_idle_timeout = '5min'
atomizer.shutdown_timeout = '1s'
});

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE ROLE app LOGIN;
	CREATE TABLE audit (hook text, id bigint, state text, attempt int,
						ran_as text, process text, message text);
	GRANT ALL ON audit TO app;
	-- the kind of process this is (pg_stat_activity shows it to the superuser)
	CREATE FUNCTION process() RETURNS text LANGUAGE sql SECURITY DEFINER
		SET search_path = pg_catalog AS $$
		SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()
	$$;
	CREATE FUNCTION audit(job jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO audit
		VALUES (job->>'hook', (job->>'id')::bigint, job->>'state',
				(job->>'attempt')::int, current_user, process(),
				job->'error'->>'message')
	$$;
	CREATE FUNCTION broken(job jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		RAISE EXCEPTION 'broken on_dead hook';
	END $$;
	CREATE TABLE effects (n int);
	GRANT ALL ON effects TO app;
	CREATE FUNCTION work(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
	BEGIN
		IF payload ? 'fail' THEN
			RAISE EXCEPTION 'work failed';
		END IF;
		INSERT INTO effects VALUES ((payload->>'n')::int);
		RETURN payload;
	END $$;
	-- kills the worker that runs it (as the superuser: app may not)
	CREATE FUNCTION poison(payload jsonb) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
		SET search_path = pg_catalog AS $$
	BEGIN
		PERFORM pg_terminate_backend(pg_backend_pid());
		PERFORM pg_sleep(5);
	END $$;
	GRANT EXECUTE ON FUNCTION poison(jsonb) TO app;
	SELECT atomizer.create_queue('hooked', max_attempts => 2,
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0,
		before_run => 'audit', on_success => 'audit', on_failure => 'audit',
		on_dead => 'audit');
	SELECT atomizer.create_queue('leased', external => true, max_attempts => 1,
		on_dead => 'audit');
	SELECT atomizer.create_queue('leased_broken', external => true, max_attempts => 1,
		on_dead => 'broken');
	-- takes a session-level advisory lock: atomizer's processes must drop it
	CREATE FUNCTION locker(job jsonb) RETURNS void LANGUAGE sql AS $$
		SELECT pg_advisory_lock(4711);
		SELECT audit(job);
	$$;
	SELECT atomizer.create_queue('leased_lock', external => true, max_attempts => 1,
		on_dead => 'locker');
	CREATE FUNCTION slow_hook(job jsonb) RETURNS void LANGUAGE sql AS $$
		SELECT pg_sleep(120);
	$$;
	SELECT atomizer.create_queue('stopping', max_attempts => 1, on_dead => 'slow_hook');
	CREATE ROLE ext_worker LOGIN IN ROLE atomizer_worker;
});

# ------------------------------------------------------------- (a) workers
my ($ok, $bad) = split /\n/, $node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT atomizer.enqueue('work', '{"n": 1}', queue => 'hooked');
	SELECT atomizer.enqueue('work', '{"fail": true}', queue => 'hooked');
});
wait_until($node, 'postgres', qq{
	SELECT string_agg(state, ',' ORDER BY id) FROM atomizer.jobs WHERE id IN ($ok, $bad)},
	'succeeded,dead', 'a worker ran both jobs: one succeeded, one is dead');
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(hook || ':' || state || ':' || attempt, ' ' ORDER BY ctid)
		  FROM audit WHERE id = $ok}),
	'before_run:running:1 on_success:succeeded:1',
	'the succeeded job: before_run, then on_success');
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(hook || ':' || state || ':' || attempt || ':' || message, ' ' ORDER BY ctid)
		  FROM audit WHERE id = $bad}),
	'on_failure:retrying:1:work failed on_dead:dead:2:work failed',
	'the failing job: on_failure after attempt 1, on_dead after attempt 2 (before_run rolled back with each attempt)');
is( $node->safe_psql('postgres', q{
		SELECT string_agg(DISTINCT ran_as || '/' || process, ',') FROM audit}),
	'app/atomizer worker', 'every hook ran in a worker, as the role that enqueued the job');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects'), '1',
	'the handler wrote once');

# ------------------------------------------------------------- (b) killed worker
$node->safe_psql('postgres', 'TRUNCATE audit');
my $poison = $node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT atomizer.enqueue('poison', '{}', queue => 'hooked', max_attempts => 1)});
wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $poison",
	'dead', 'the job whose worker died is dead after its only attempt');
my ($hooks, $message) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT string_agg(hook || ':' || state || ':' || ran_as || ':' || process, ' '),
		   max(message)
	  FROM audit WHERE id = $poison AND hook <> 'before_run'});
is($hooks, 'on_dead:dead:app:atomizer scheduler',
	"the scheduler's orphan recovery ran on_dead as the job's owner");
like($message, qr/^worker process died while running the job/,
	'on_dead got the recovery\'s error');

# ------------------------------------------------------------- (c) lease expiry
$node->safe_psql('postgres', 'TRUNCATE audit');
my $offset = -s $node->logfile;
my ($broken, $leased) = split /\n/, $node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT atomizer.enqueue('resize', '{}', queue => 'leased_broken');
	SELECT atomizer.enqueue('resize', '{}', queue => 'leased');
});
$node->safe_psql('postgres', q{
	SET ROLE ext_worker;
	SELECT count(*) FROM atomizer.claim('leased_broken', lease => '1 second');
});
wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $broken",
	'dead', 'the first lease expired: that job is dead');
$node->wait_for_log(qr/on_dead hook public\.broken\(jsonb\) failed for job $broken/, $offset);
ok(1, "the failing on_dead hook was logged");
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(CASE WHEN message LIKE 'lease of worker % expired at %' THEN 'lease expired'
							   ELSE message END, ', ' ORDER BY failed_at)
		  FROM atomizer.job_errors WHERE job_id = $broken}),
	'lease expired, on_dead hook failed: broken on_dead hook',
	"the hook's error is recorded beside the expired attempt's");

$node->safe_psql('postgres', q{
	SET ROLE ext_worker;
	SELECT count(*) FROM atomizer.claim('leased', lease => '1 second');
});
wait_until($node, 'postgres', "SELECT state FROM atomizer.jobs WHERE id = $leased",
	'dead', 'the next lease expired too: the duty went on');
is( $node->safe_psql('postgres', qq{
		SELECT hook, state, ran_as, process, message LIKE 'lease of worker % expired at %'
		  FROM audit WHERE id = $leased}),
	'on_dead|dead|app|atomizer scheduler|t',
	"lease expiry ran on_dead in the scheduler, as the job's owner");

# a session-level advisory lock a hook took in the scheduler is not kept there
my $locked = $node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT atomizer.enqueue('resize', '{}', queue => 'leased_lock')});
$node->safe_psql('postgres', q{
	SET ROLE ext_worker;
	SELECT count(*) FROM atomizer.claim('leased_lock', lease => '1 second');
});
wait_until($node, 'postgres', "SELECT count(*) FROM audit WHERE id = $locked AND hook = 'on_dead'",
	'1', 'on_dead ran after the third lease expired');
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4711}),
	'0', "the scheduler dropped the session-level advisory lock the hook took");

# ------------------------------------------------------------- (d) shutdown
# an on_dead hook still running at the shutdown deadline is cancelled, and
# the job's outcome is committed before the worker exits
my $stopping = $node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT atomizer.enqueue('work', '{"fail": true}', queue => 'stopping')});
wait_until($node, 'postgres', q{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'atomizer worker' AND wait_event = 'PgSleep'},
	'1', 'the on_dead hook is running (sleeping) in a worker');
my $t0 = time;
$node->stop('fast');
my $took = time - $t0;
ok($took < 30, "a fast stop did not wait for the hook ($took s)");
$node->append_conf('postgresql.conf', "atomizer.enabled = off\n");
$node->start;
is( $node->safe_psql('postgres', qq{
		SELECT state FROM atomizer.jobs WHERE id = $stopping}),
	'dead', 'the job is dead');
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(message, ', ' ORDER BY failed_at)
		  FROM atomizer.job_errors WHERE job_id = $stopping}),
	'work failed, on_dead hook failed: on_dead hook was cancelled: the worker was stopped',
	"the hook's cancellation is recorded beside the attempt's error");

$node->stop;
done_testing();
