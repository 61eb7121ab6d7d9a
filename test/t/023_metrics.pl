# atomizer.metrics counts what finished, per queue and outcome, when it
# commits: jobs run by workers, by run_pending() and by external workers,
# failed attempts, dead and cancelled jobs; a rolled-back run (or a
# subtransaction's) counts nothing.  The wait and run histograms count every
# job that ran, cumulatively per bucket.  Counters only grow.  The sampled
# gauges agree with the job table; the per-minute rollups plus the minute not
# yet written equal the counters; percentiles come from the buckets.  Plain
# roles may not read them; pg_monitor may.
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

# gauges: the scheduler's sample of unfinished jobs agrees with the job table
$node->safe_psql('postgres', q{
	SELECT atomizer.pause_queue('manual');
	SELECT atomizer.enqueue_many('ok', array_fill('{}'::jsonb, ARRAY[3]), queue => 'manual');
	SELECT atomizer.enqueue_many('ok', array_fill('{}'::jsonb, ARRAY[2]), queue => 'manual',
		run_at => now() + interval '1 hour');
	CREATE FUNCTION g(q text, s text) RETURNS double precision LANGUAGE sql AS $$
		SELECT value FROM atomizer.metrics
		 WHERE name = 'atomizer_jobs' AND labels->>'queue' = q AND labels->>'state' = s
	$$;
});
wait_until($node, 'postgres', q{
	SELECT string_agg(s || '=' || g('manual', s), ' ' ORDER BY s)
	  FROM unnest(ARRAY['available', 'running', 'retrying', 'scheduled']) s},
	'available=3 retrying=0 running=0 scheduled=2',
	'atomizer_jobs: the sampled states of the paused queue');
is($node->safe_psql('postgres', q{
	SELECT bool_and(g(queue, state) = n) FROM (
		SELECT queue, state, count(*) AS n FROM atomizer.jobs
		 WHERE state IN ('available', 'scheduled') GROUP BY 1, 2) j}),
	't', 'the gauges agree with a count of atomizer.jobs');
cmp_ok($node->safe_psql('postgres', q{
	SELECT value FROM atomizer.metrics
	 WHERE name = 'atomizer_oldest_available_seconds' AND labels->>'queue' = 'manual'}),
	'>', 0, 'atomizer_oldest_available_seconds: the paused queue has waited');
is($node->safe_psql('postgres', q{
	SELECT value FROM atomizer.metrics
	 WHERE name = 'atomizer_oldest_available_seconds' AND labels->>'queue' = 'flaky'}),
	'0', 'and a queue with nothing waiting says 0');

# rollups: once a minute the counters' increase goes to atomizer.stats_minute;
# the rows plus what is not written yet are the counters, per queue and outcome
wait_until($node, 'postgres', q{SELECT count(*) > 0 FROM atomizer.stats_minute
	WHERE queue = 'default' AND succeeded > 0}, 't', 'a rollup was written');
my $agree = q{
	WITH r AS (SELECT queue, sum(succeeded) AS succeeded, sum(failed) AS failed,
					  sum(dead) AS dead, sum(cancelled) AS cancelled,
					  atomizer._sum_buckets(run_buckets) AS run
				 FROM (SELECT queue, succeeded, failed, dead, cancelled, run_buckets
						 FROM atomizer.stats_minute
					   UNION ALL
					   SELECT queue, succeeded, failed, dead, cancelled, run_buckets
						 FROM atomizer._stats_unflushed()) x
				GROUP BY queue)
	SELECT bool_and(r.succeeded = m(r.queue, 'succeeded') AND r.failed = m(r.queue, 'failed')
					AND r.dead = m(r.queue, 'dead') AND r.cancelled = m(r.queue, 'cancelled')
					AND (SELECT sum(b) FROM unnest(r.run) b)
						= h('atomizer_job_run_seconds_count', r.queue, NULL))
		   || ' ' || count(*)
	  FROM r};
is($node->safe_psql('postgres', $agree), 'true 4',
	'rollups plus the unflushed minute equal the counters of the four queues');
is($node->safe_psql('postgres', q{
	SELECT sum(succeeded) FILTER (WHERE queue = 'default') || ' ' ||
		   sum(dead) FILTER (WHERE queue = 'flaky')
	  FROM (SELECT queue, succeeded, dead FROM atomizer.stats_minute
			UNION ALL SELECT queue, succeeded, dead FROM atomizer._stats_unflushed()) x}),
	'6 1', 'and they agree with the jobs that ran');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM atomizer.jobs WHERE queue = 'default' AND state = 'succeeded'}),
	'6', '(the history holds those six)');

is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT queue, sum(succeeded), sum(failed), sum(dead), sum(cancelled),
			   atomizer._sum_buckets(wait_buckets), atomizer._sum_buckets(run_buckets)
		  FROM atomizer.stats_minute GROUP BY queue
		EXCEPT
		SELECT queue, sum(succeeded), sum(failed), sum(dead), sum(cancelled),
			   atomizer._sum_buckets(wait_buckets), atomizer._sum_buckets(run_buckets)
		  FROM atomizer.stats_hour GROUP BY queue) d}),
	'0', 'the hours\' rollups are the sums of the minutes\'');

# percentiles from the buckets, as Prometheus' histogram_quantile() does
is($node->safe_psql('postgres', q{
	SELECT round(atomizer._histogram_quantile(ARRAY[0,0,0,0,0,10,0,0,0,0,0,0,0,0,0], 0.5)::numeric, 6) || ' ' ||
		   round(atomizer._histogram_quantile(ARRAY[10,0,0,0,0,0,0,0,0,0,0,0,0,0,0], 0.9)::numeric, 6) || ' ' ||
		   atomizer._histogram_quantile(ARRAY[0,0,0,0,0,0,0,0,0,0,0,0,0,0,4], 0.99) || ' ' ||
		   coalesce(atomizer._histogram_quantile(array_fill(0::bigint, ARRAY[15]), 0.5)::text, 'null')}),
	'0.075000 0.000900 600 null', 'quantiles interpolate within a bucket; the +Inf bucket gives its lower bound');
is($node->safe_psql('postgres', q{
	WITH est AS (SELECT atomizer._histogram_quantile(atomizer._sum_buckets(run_buckets), 0.5) AS p50
				   FROM (SELECT run_buckets FROM atomizer.stats_minute WHERE queue = 'default'
						 UNION ALL SELECT run_buckets FROM atomizer._stats_unflushed()
						  WHERE queue = 'default') x),
		 real AS (SELECT percentile_cont(0.5) WITHIN GROUP (
						ORDER BY extract(epoch FROM finished_at - started_at)) AS p50
					FROM atomizer.jobs WHERE queue = 'default' AND state = 'succeeded')
	SELECT est.p50 BETWEEN real.p50 / 2.5 AND real.p50 * 2.5 FROM est, real}),
	't', 'the run time p50 from the buckets is near the median of the jobs\' run times');
my ($qrc, $qout, $qerr) = $node->psql('postgres',
	q{SELECT atomizer._histogram_quantile(ARRAY[1,2], 0.5)});
like($qerr, qr/a histogram must have 15 buckets, not 2/, 'a histogram of the wrong size is refused');

# who may read them
$node->safe_psql('postgres', q{CREATE ROLE plain; CREATE ROLE monitor IN ROLE pg_monitor});
is($node->safe_psql('postgres', q{SET ROLE plain;
	SELECT (SELECT count(*) FROM atomizer.stats_minute) + (SELECT count(*) FROM atomizer.stats_hour) || ' ' ||
		   (SELECT count(*) FROM atomizer._gauges()) || ' ' ||
		   (SELECT count(*) FROM atomizer._stats_unflushed()) || ' ' ||
		   atomizer._metrics_visible()}),
	'0 0 0 false', 'a plain role sees no rollup, no gauge and no unflushed count');
cmp_ok($node->safe_psql('postgres', q{SET ROLE monitor; SELECT count(*) FROM atomizer.stats_minute}),
	'>', 0, 'pg_monitor sees the rollups');
my ($rc, $out, $err) = $node->psql('postgres',
	q{SET ROLE plain; SELECT count(*) FROM atomizer.metrics});
like($err, qr/permission denied to read atomizer's metrics.*HINT:  GRANT pg_monitor TO plain;/s,
	'a plain role may not read the metrics, and is told what to ask for');
cmp_ok($node->safe_psql('postgres', q{SET ROLE monitor; SELECT count(*) FROM atomizer.metrics}),
	'>', 0, 'pg_monitor may');

$node->stop;
done_testing();
