# The plans of atomizer's hot statements do not depend on how big
# atomizer.job was when they were made (src/plans.c).  A backend plans a
# statement once and keeps the plan until something invalidates it (a
# VACUUM of the table).  Made while the table held one row, the generic plan
# of a batch's finish is a merge join that walks the table's whole primary
# key: a worker that kept it read every job of a backlog to finish each
# batch.  A statement whose text starts with atomizer's marker (every claim,
# finish, retry and lookup by id of src/jobstore.c) is planned as if the
# table were big: with index probes.  Here the finish is planned on a one-row table, as the
# extension plans it (a generic plan, enable_seqscan off), without the
# marker and with it.  (On a server without preloading, where the library
# and its hook load with the first call of atomizer's, as every marked
# statement is; here LOAD.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('plans', preload => 0);
$node->safe_psql('postgres', q{
	SET client_min_messages = error;
	CREATE EXTENSION atomizer;
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	SELECT atomizer.enqueue('work', '{}');
	VACUUM atomizer.job;
});
is($node->safe_psql('postgres',
	q{SELECT relpages || ' page, ' || reltuples || ' row' FROM pg_class WHERE oid = 'atomizer.job'::regclass}),
	'1 page, 1 row', 'atomizer.job holds one job');

# the batch finish of src/jobstore.c (atomizer_store_finish_succeeded)
my $finish = q{PREPARE finish(int8[], jsonb[]) AS
	WITH r AS (SELECT * FROM unnest($1, $2) AS r(id, result) ORDER BY id),
	d AS (DELETE FROM atomizer.job j USING r WHERE j.id = r.id
	      RETURNING j.*, r.result AS new_result)
	INSERT INTO atomizer.job_history (id, queue, handler, payload, state, priority,
	  run_at, attempt, max_attempts, timeout, owner, idempotency_key, created_at,
	  started_at, finished_at, result, last_error, schedule_id, tags, on_dependency_failure)
	SELECT id, queue, handler, payload, 'succeeded', priority, run_at, attempt,
	  max_attempts, timeout, owner, idempotency_key, created_at, started_at,
	  clock_timestamp(), new_result, last_error, schedule_id, tags, on_dependency_failure
	FROM d RETURNING queue, started_at, run_at, finished_at, id};
my $explain = q{
	LOAD 'atomizer';
	SET plan_cache_mode = force_generic_plan;
	SET enable_seqscan = off;
	%s;
	EXPLAIN (COSTS OFF) EXECUTE finish('{1, 2}', '{null, null}');
};

my $plain = $node->safe_psql('postgres', sprintf($explain, $finish));
like($plain, qr/Merge Join/,
	'planned as usual on a one-row table, the finish walks the whole primary key (a merge join)');

my $marked = $node->safe_psql('postgres',
	sprintf($explain, "/* atomizer: indexed */ $finish"));
like($marked, qr/Nested Loop/, 'with the marker it probes the primary key once per job');
like($marked, qr/Index (Only )?Scan using job_pkey on job j\n\s+Index Cond: \(id = r(_\d+)?\.id\)/,
	'... by the job\'s id');
unlike($marked, qr/Merge Join|Hash Join|Seq Scan on job|Bitmap Heap Scan on job/,
	'... and never reads the whole table');

# only the marked statement: the session's other statements see the table
# as its statistics say
like($node->safe_psql('postgres', q{
	LOAD 'atomizer';
	/* atomizer: indexed */ PREPARE p AS SELECT id FROM atomizer.job WHERE id = 1;
	EXPLAIN EXECUTE p;
	EXPLAIN SELECT id FROM atomizer.job;
}), qr/rows=1 width=8\)\s*$/, 'other statements are planned as usual');

# the scheduler's pruning (atomizer_store_prune), planned while the history
# looks empty (vacuumed with no row): one read of the history until enough
# candidates, a probe per candidate for its dependants, the delete by
# primary key.  Unmarked and written as a join, its plan read the whole
# history again for each row (a pass over 10,000,000 rows took minutes).
$node->safe_psql('postgres', 'VACUUM atomizer.job_history');
is($node->safe_psql('postgres',
	q{SELECT reltuples FROM pg_class WHERE oid = 'atomizer.job_history'::regclass}),
	'0', 'atomizer.job_history looks empty');
my $prune = $node->safe_psql('postgres', q{
	LOAD 'atomizer';
	SET plan_cache_mode = force_generic_plan;
	/* atomizer: indexed */ PREPARE prune(int) AS
	WITH d AS (DELETE FROM atomizer.job_history h
	  WHERE h.id = ANY (ARRAY(SELECT p.id FROM
	   (SELECT h.id FROM atomizer.job_history h
	     JOIN atomizer.queue q ON q.name = h.queue
	     WHERE h.state <> 'dead'
	     AND h.finished_at < now() - q.retention OFFSET 0) p
	   WHERE NOT EXISTS (SELECT 1 FROM atomizer.job_dependency x
	     JOIN atomizer.job c ON c.id = x.job_id WHERE x.depends_on = p.id OFFSET 0)
	   LIMIT $1)) RETURNING h.id),
	e AS (DELETE FROM atomizer.job_error e USING d WHERE e.job_id = d.id),
	f AS (DELETE FROM atomizer.job_dependency x USING d WHERE x.job_id = d.id)
	SELECT count(*) FROM d;
	EXPLAIN (COSTS OFF) EXECUTE prune(10000);
});
my @history_scans = $prune =~ /(Seq Scan on job_history|Recheck Cond: \((?!id = ANY))/g;
is(scalar @history_scans, 1, 'pruning reads the history once') or diag($prune);
like($prune, qr/Index Scan using job_history_pkey on job_history h_\d+\n\s+Index Cond: \(id = ANY /,
	'... deletes by primary key');
like($prune, qr/SubPlan \d+\n(.*\n)*?\s+->  Index Scan using job_dependency_depends_on_idx on job_dependency x\n\s+Index Cond: \(depends_on = p\.id\)/,
	'... and probes the dependencies per candidate');
unlike($prune, qr/Seq Scan on job c\b/, '... never reading the job table');

# the claim's first statement (CLAIM_CANDIDATES of src/jobstore.c), as an
# external claim() runs it (auto_explain shows its plan), planned while the
# statistics say that every job is running (an ANALYZE in the middle of a
# drain): the claim index, in claim order, stopping after a batch -- not a
# bitmap scan of every entry from the floor on, sorted, which made each
# batch read every waiting job
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('ext', external => true);
	SELECT count(*) FROM atomizer.enqueue_many('work',
		ARRAY(SELECT '{}'::jsonb FROM generate_series(1, 2000)), queue => 'ext');
	UPDATE atomizer.job SET state = 'running', started_at = now();
	ANALYZE atomizer.job;
});
is($node->safe_psql('postgres', q{
	SELECT most_common_vals::text FROM pg_stats
	 WHERE schemaname = 'atomizer' AND tablename = 'job' AND attname = 'state'}),
	'{running}', 'the statistics say every job is running');
SKIP:
{
	# (test/build-pg.sh installs auto_explain; a server built from
	# source without contrib has none)
	skip 'auto_explain is not installed', 4
	  unless -e $node->config_data('--pkglibdir') . '/auto_explain.so';
	my ($rc, $out, $claim) = $node->psql('postgres', q{
		LOAD 'auto_explain';
		SET auto_explain.log_min_duration = 0;
		SET auto_explain.log_nested_statements = on;
		SET auto_explain.log_level = notice;
		SET client_min_messages = notice;
		SELECT count(*) FROM atomizer.claim('ext', 64);
	});
	is($rc, 0, 'claim() ran');
	like($claim, qr/FOR UPDATE SKIP LOCKED/, 'auto_explain showed the claim\'s statement')
		or diag($claim);
	like($claim, qr/Index Scan using job_claim_idx on job/, 'the claim reads the claim index')
		or diag($claim);
	unlike($claim, qr/Bitmap|Sort/, '... in claim order, with no bitmap scan and no sort');
}
# and the session's own statements may still use bitmap scans
like($node->safe_psql('postgres', q{
	LOAD 'atomizer';
	/* atomizer: indexed */ PREPARE one AS SELECT id FROM atomizer.job WHERE id = 1;
	SET enable_seqscan = off; SET enable_indexscan = off;
	EXPLAIN (COSTS OFF) SELECT id FROM atomizer.job WHERE id = 1;
}), qr/Bitmap Heap Scan on job/, 'other statements may use bitmap scans');

$node->stop;
done_testing();
