# Workflows with live workers:
#  (a) a fan-out/fan-in of 10,000 jobs (100 groups: a root, 100 parts that
#      depend on it, a callback that depends on the 100 parts, and one last
#      job that depends on the 100 callbacks), hit by an immediate shutdown
#      in full swing: after the restart every job has run exactly once, and
#      every callback after all its parts;
#  (b) a chain 1,000 deep runs link after link through the workers, each
#      released by the commit of the one before;
#  (c) an internal job releases an external one, whose worker (a separate
#      session, as an external worker is) releases an internal one;
#  (d) a fan-out of 10,000 jobs with one fan-in callback: the callback runs
#      once, after the last part, each part's finish counting it down by
#      one (no statement reads all of its 10,000 dependencies).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(time usleep);

my $node = AtomizerTest::node('workflows', conf => "restart_after_crash = on\n");

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (job bigint NOT NULL, kind text NOT NULL, grp int,
						  seq bigserial, at timestamptz DEFAULT clock_timestamp());
	-- a SQL handler: its effect commits with its job's completion
	CREATE FUNCTION part(payload jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO effects (job, kind, grp)
		SELECT id, payload->>'kind', (payload->>'grp')::int FROM atomizer.current_job()
	$$;
	-- a callback also records how many of its dependencies it saw finished
	CREATE FUNCTION callback(payload jsonb) RETURNS jsonb LANGUAGE sql AS $$
		INSERT INTO effects (job, kind, grp)
		SELECT id, payload->>'kind', (payload->>'grp')::int FROM atomizer.current_job();
		SELECT jsonb_build_object('finished',
			(SELECT count(*) FROM atomizer.dependencies() WHERE state = 'succeeded'))
	$$;
	SELECT atomizer.create_queue('wf', concurrency => 4, max_attempts => 3,
		backoff_base => '100 ms', backoff_cap => '200 ms', backoff_jitter => 0);
});

# ------------------------------------------------------------- (a) fan-out/fan-in and a crash
my $groups = 100;
my $parts = 100;
$node->safe_psql('postgres', q{SELECT atomizer.pause_queue('wf')});
my $t0 = time();
for my $g (1 .. $groups)
{
	$node->safe_psql('postgres', qq{
		SELECT atomizer.enqueue('part', '{"kind": "root", "grp": $g}', queue => 'wf') AS root \\gset
		SELECT array_agg(id) AS ids FROM atomizer.enqueue_many('part',
			ARRAY(SELECT jsonb_build_object('kind', 'part', 'grp', $g, 'n', i)
				    FROM generate_series(1, $parts) i),
			queue => 'wf', depends_on => ARRAY[:root]) AS id \\gset
		SELECT atomizer.enqueue('callback', '{"kind": "callback", "grp": $g}', queue => 'wf',
			depends_on => :'ids', on_dependency_failure => 'run');
	});
}
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('part', '{"kind": "last"}', queue => 'wf',
		depends_on => ARRAY(SELECT id FROM atomizer.jobs WHERE handler = 'public.callback'))});
my $total = $groups * ($parts + 2) + 1;
note(sprintf('enqueued %d jobs with %d edges in %.2f s', $total,
	$groups * ($parts * 2) + $groups, time() - $t0));
is($node->safe_psql('postgres', q{SELECT state, count(*) FROM atomizer.jobs GROUP BY state ORDER BY state}),
	"available|$groups\nblocked|" . ($total - $groups), 'the roots are available, the rest blocked');
wait_until($node, 'postgres', q{SELECT sum(value)::bigint FROM atomizer.metrics
	WHERE name = 'atomizer_jobs' AND labels->>'state' = 'blocked' AND labels->>'queue' = 'wf'},
	$total - $groups, 'the metric atomizer_jobs{state="blocked"} counts them');

$node->safe_psql('postgres', q{SELECT atomizer.resume_queue('wf')});
my $started = 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	if ($node->safe_psql('postgres', q{SELECT count(*) >= 2000 FROM effects}) eq 't')
	{
		$started = 1;
		last;
	}
	usleep(10_000);
}
ok($started, 'the workflow is being worked on') or die "stopping: it did not start\n";
$node->stop('immediate');
$node->start;

wait_until($node, 'postgres', q{
	SELECT count(*) FROM atomizer.jobs WHERE queue = 'wf' AND state = 'succeeded'},
	$total, "after the restart all $total jobs succeeded");
my ($before, $after) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE finished_at < pg_postmaster_start_time()),
		   count(*) FILTER (WHERE finished_at >= pg_postmaster_start_time())
	  FROM atomizer.jobs WHERE queue = 'wf'});
note("$before jobs finished before the crash, $after after the restart");
cmp_ok($after, '>', 0, 'the crash hit the workflow mid-way (precondition)');
is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT job) FROM effects}),
	"$total|$total", 'every job ran exactly once');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM effects c JOIN effects p ON p.grp = c.grp
	 WHERE c.kind = 'callback' AND p.kind = 'part' AND p.seq > c.seq}),
	'0', 'no callback ran before one of its parts');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM effects c JOIN effects p ON p.grp = c.grp
	 WHERE c.kind = 'part' AND p.kind = 'root' AND p.seq > c.seq}),
	'0', 'no part ran before its root');
is($node->safe_psql('postgres', q{
	SELECT count(*), min((result->>'finished')::int), max((result->>'finished')::int)
	  FROM atomizer.jobs WHERE handler = 'public.callback'}),
	"$groups|$parts|$parts", 'every callback ran once and saw all its parts succeeded');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM effects l, effects c WHERE l.kind = 'last' AND c.kind = 'callback'
	   AND c.seq > l.seq}), '0', 'the last job ran after every callback');
is($node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.job WHERE blockers <> 0 OR state = 'blocked'}),
	'0', 'nothing is left blocked, no count left over');

# the fan-in: from a group's last part's finish to its callback's start
my $fanin = $node->safe_psql('postgres', q{
	SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
		   round(max(ms)::numeric, 2)
	  FROM (SELECT extract(epoch FROM c.started_at - max(p.finished_at)) * 1000 AS ms
			  FROM atomizer.jobs c
			  JOIN atomizer.job_dependencies d ON d.job_id = c.id
			  JOIN atomizer.jobs p ON p.id = d.depends_on
			 WHERE c.handler = 'public.callback'
			   AND c.finished_at >= pg_postmaster_start_time()
			 GROUP BY c.id, c.started_at) x});
note("fan-in (a group's last part finished -> its callback started), after the restart: p50|max ms = $fanin");

# ------------------------------------------------------------- (b) a chain 1,000 deep
$node->safe_psql('postgres', q{
	TRUNCATE effects;
	SELECT atomizer.pause_queue('wf');
	DO $$
	DECLARE
		prev bigint := atomizer.enqueue('part', '{"kind": "link", "grp": 0}', queue => 'wf');
	BEGIN
		FOR i IN 1..999 LOOP
			prev := atomizer.enqueue('part', jsonb_build_object('kind', 'link', 'grp', i),
									 queue => 'wf', depends_on => ARRAY[prev]);
		END LOOP;
	END $$;
});
$t0 = time();
$node->safe_psql('postgres', q{SELECT atomizer.resume_queue('wf')});
wait_until($node, 'postgres', q{SELECT count(*) FROM effects WHERE kind = 'link'}, '1000',
	'a chain 1,000 deep ran to its end');
my $chain_s = time() - $t0;
note(sprintf('the chain took %.2f s: %.2f ms per link', $chain_s, $chain_s));
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM effects a JOIN effects b ON b.grp = a.grp + 1 WHERE b.seq < a.seq}),
	'0', 'each link ran after the one before');

# ------------------------------------------------------------- (c) internal and external
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('ext', external => true);
	SELECT atomizer.enqueue('part', '{"kind": "render"}', queue => 'wf') AS render \gset
	SELECT atomizer.enqueue('mail', '{}', queue => 'ext', depends_on => ARRAY[:render]) AS mail \gset
	SELECT atomizer.enqueue('part', '{"kind": "archive"}', queue => 'wf', depends_on => ARRAY[:mail]);
});
# the external worker is a session of its own
my $worker = $node->background_psql('postgres');
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'ext' AND state = 'available'},
	'1', 'the internal job released the external one');
my $claimed = $worker->query_safe(q{
	SELECT id || ':' || (SELECT string_agg(state, ',') FROM atomizer.dependencies(id))
	  FROM atomizer.claim('ext')});
like($claimed, qr/^\d+:succeeded$/, 'the external worker claims it and reads its dependency');
my ($mail) = split /:/, $claimed;
$worker->query_safe("SELECT atomizer.complete($mail, '{\"sent\": true}')");
$worker->quit;
wait_until($node, 'postgres', q{SELECT count(*) FROM effects WHERE kind = 'archive'}, '1',
	'the external job released the internal one, which ran');

# ------------------------------------------------------------- (d) 10,000 parts, one callback
$node->safe_psql('postgres', q{
	TRUNCATE effects;
	SELECT atomizer.pause_queue('wf');
	SELECT atomizer.enqueue('part', '{"kind": "root", "grp": 1}', queue => 'wf') AS root \gset
	SELECT array_agg(id) AS ids FROM atomizer.enqueue_many('part',
		ARRAY(SELECT jsonb_build_object('kind', 'part', 'grp', 1) FROM generate_series(1, 10000)),
		queue => 'wf', depends_on => ARRAY[:root]) AS id \gset
	SELECT atomizer.enqueue('callback', '{"kind": "callback", "grp": 1}', queue => 'wf',
		depends_on => :'ids', on_dependency_failure => 'run');
});
is($node->safe_psql('postgres', q{SELECT blockers FROM atomizer.jobs WHERE handler = 'public.callback' AND state = 'blocked'}),
	'10000', 'the callback waits for 10,000 jobs');
$t0 = time();
$node->safe_psql('postgres', q{SELECT atomizer.resume_queue('wf')});
wait_until($node, 'postgres', q{SELECT count(*) FROM effects WHERE kind = 'callback'}, '1',
	'the callback of 10,000 parts ran');
note(sprintf('10,000 parts and their callback took %.2f s', time() - $t0));
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE kind = 'part'),
		   count(*) FILTER (WHERE p.kind = 'part' AND p.seq > (SELECT seq FROM effects WHERE kind = 'callback'))
	  FROM effects p}), '10000|0', 'all 10,000 parts ran before it, once each');
is($node->safe_psql('postgres', q{
	SELECT result->>'finished' FROM atomizer.jobs WHERE handler = 'public.callback' AND state = 'succeeded'
	 ORDER BY id DESC LIMIT 1}), '10000', 'it saw all 10,000 succeeded');
$fanin = $node->safe_psql('postgres', q{
	SELECT round((extract(epoch FROM c.started_at - max(p.finished_at)) * 1000)::numeric, 2)
	  FROM atomizer.jobs c JOIN atomizer.job_dependencies d ON d.job_id = c.id
	  JOIN atomizer.jobs p ON p.id = d.depends_on
	 WHERE c.id = (SELECT max(id) FROM atomizer.jobs WHERE handler = 'public.callback')
	 GROUP BY c.started_at});
note("fan-in of 10,000: the last part finished -> the callback started: $fanin ms");

$node->stop;
done_testing();
