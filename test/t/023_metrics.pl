# atomizer.metrics counts what finished, per queue and outcome, when it
# commits: jobs run by workers, by run_pending() and by external workers,
# failed attempts, dead and cancelled jobs; a rolled-back run (or a
# subtransaction's) counts nothing.  The wait and run histograms count every
# job that ran, cumulatively per bucket.  Counters only grow.  Plain roles
# may not read them; pg_monitor may.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('metrics');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('flaky', max_attempts => 2, backoff_base => '10 milliseconds',
		backoff_cap => '10 milliseconds');
	SELECT atomizer.create_queue('ext', external => true, max_attempts => 1);
	SELECT atomizer.create_queue('manual', concurrency => 1);
	SELECT atomizer.pause_queue('manual');
	CREATE FUNCTION ok(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(0.02) $$;
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'boom'; END $$;
	CREATE FUNCTION m(q text, o text) RETURNS double precision LANGUAGE sql AS $$
		SELECT coalesce(sum(value), 0) FROM atomizer.metrics
		 WHERE name = 'atomizer_jobs_finished_total'
		   AND labels->>'queue' = q AND labels->>'outcome' = o
	$$;
	CREATE FUNCTION h(name text, q text, le text) RETURNS double precision LANGUAGE sql AS $$
		SELECT coalesce(sum(value), 0) FROM atomizer.metrics
		 WHERE metrics.name = h.name AND labels->>'queue' = q
		   AND (le IS NULL OR labels->>'le' = le)
	$$;
});

# workers: 5 succeed; one fails, retries and is dead; one is cancelled
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue_many('ok', array_fill('{}'::jsonb, ARRAY[5]));
	SELECT atomizer.enqueue('boom', queue => 'flaky');
	SELECT atomizer.cancel(atomizer.enqueue('ok', run_at => now() + interval '1 hour'));
});
wait_until($node, 'postgres', q{SELECT m('default', 'succeeded')}, '5', 'five jobs succeeded');
wait_until($node, 'postgres', q{SELECT m('flaky', 'dead')}, '1', 'the failing job is dead');
is($node->safe_psql('postgres', q{SELECT m('flaky', 'failed')}), '1',
	'after one failed attempt (the last attempt counts as dead, not failed)');
is($node->safe_psql('postgres', q{SELECT m('default', 'cancelled')}), '1', 'one cancelled');

# run_pending: committed runs count, rolled-back ones do not
$node->safe_psql('postgres', q{
	SELECT atomizer.resume_queue('manual');
	BEGIN;
	SELECT atomizer.enqueue('ok', queue => 'manual');
	SELECT atomizer.run_pending('manual');
	ROLLBACK;
	BEGIN;
	SELECT atomizer.enqueue('ok', queue => 'manual');
	SELECT atomizer.run_pending('manual');
	SAVEPOINT s;
	SELECT atomizer.enqueue('ok', queue => 'manual');
	SELECT atomizer.run_pending('manual');
	ROLLBACK TO s;
	COMMIT;
});
is($node->safe_psql('postgres', q{SELECT m('manual', 'succeeded')}), '1',
	'run_pending: only the run that committed is counted');

# external workers: one completed, one failed for good
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('task', queue => 'ext');
	SELECT atomizer.complete(id) FROM atomizer.claim('ext');
	SELECT atomizer.enqueue('task', queue => 'ext');
	SELECT atomizer.fail(id, 'no') FROM atomizer.claim('ext');
});
is($node->safe_psql('postgres', q{SELECT m('ext', 'succeeded') || ' ' || m('ext', 'dead')}),
	'1 1', 'external completions and failures are counted');

# histograms: every job that ran, cumulative buckets, +Inf = _count
is($node->safe_psql('postgres', q{
	SELECT h('atomizer_job_run_seconds_count', 'default', NULL) || ' ' ||
		   h('atomizer_job_wait_seconds_count', 'default', NULL) || ' ' ||
		   h('atomizer_job_run_seconds_bucket', 'default', '+Inf')}),
	'5 5 5', 'the run and wait histograms count the five jobs that ran (not the cancelled one)');
is($node->safe_psql('postgres', q{SELECT h('atomizer_job_run_seconds_count', 'flaky', NULL)}),
	'2', 'both attempts of the failing job ran');
is($node->safe_psql('postgres', q{
	SELECT bool_and(value >= coalesce(prev, 0)) FROM (
		SELECT value, lag(value) OVER (ORDER BY (labels->>'le')::float8) AS prev
		  FROM atomizer.metrics
		 WHERE name = 'atomizer_job_run_seconds_bucket' AND labels->>'queue' = 'default') b}),
	't', 'the buckets are cumulative');
cmp_ok($node->safe_psql('postgres', q{SELECT h('atomizer_job_run_seconds_sum', 'default', NULL)}),
	'>=', 0.1, 'the run time sum covers five 20 ms jobs');
cmp_ok($node->safe_psql('postgres',
	q{SELECT h('atomizer_job_run_seconds_bucket', 'default', '0.01')}), '==', 0,
	'and none of them ran in 10 ms or less');

# counters only grow
my $before = $node->safe_psql('postgres', q{SELECT m('default', 'succeeded')});
$node->safe_psql('postgres', q{SELECT atomizer.enqueue('ok')});
wait_until($node, 'postgres', qq{SELECT m('default', 'succeeded') > $before}, 't',
	'the counter grows with the next job');

# who may read them
$node->safe_psql('postgres', q{CREATE ROLE plain; CREATE ROLE monitor IN ROLE pg_monitor});
my ($rc, $out, $err) = $node->psql('postgres',
	q{SET ROLE plain; SELECT count(*) FROM atomizer.metrics});
like($err, qr/permission denied to read atomizer's metrics.*HINT:  GRANT pg_monitor TO plain;/s,
	'a plain role may not read the metrics, and is told what to ask for');
cmp_ok($node->safe_psql('postgres', q{SET ROLE monitor; SELECT count(*) FROM atomizer.metrics}),
	'>', 0, 'pg_monitor may');

$node->stop;
done_testing();
