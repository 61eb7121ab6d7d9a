# What a handler leaves on a worker's session: a session-level advisory lock
# taken by a handler (pg_advisory_lock), which no commit or abort releases,
# is given up when the job ends, succeeded or failed, so the next job (here
# of another role) does not run holding it and other sessions can take it.
# The rest of a session's state is refused to handlers (PREPARE, LISTEN,
# cursors WITH HOLD: test/sql/security.sql covers the restricted operation).
# Last, atomizer.workers shows a running job's id only to those who may see
# the job.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('session', conf => q{
atomizer.worker_idle_timeout = '10min'
});
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('one', concurrency => 1, max_attempts => 1);
	CREATE ROLE app_a;
	CREATE ROLE app_b;
	CREATE TABLE seen (tag text, held_by_me boolean, pid int);
	GRANT INSERT ON seen TO app_a, app_b;
	-- takes session-level advisory lock 4711 and keeps it
	CREATE FUNCTION take(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_advisory_lock(4711);
		IF p->>'fail' = 'yes' THEN
			RAISE EXCEPTION 'failing while holding the lock';
		END IF;
	END $$;
	-- records whether its session holds lock 4711
	CREATE FUNCTION look(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO seen
		SELECT p->>'tag', EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory'
									AND objid = 4711 AND pid = pg_backend_pid()),
			   pg_backend_pid()
	$$;
	GRANT EXECUTE ON FUNCTION take(jsonb), look(jsonb) TO app_a, app_b;
	GRANT USAGE ON SCHEMA atomizer TO app_a, app_b;
});

# The same worker runs each pair in order (concurrency 1, one enqueue each).
for my $case (['succeeded', '{}'], ['failed', '{"fail": "yes"}'])
{
	my ($outcome, $payload) = @$case;
	$node->safe_psql('postgres', qq{
		SET ROLE app_a;
		SELECT atomizer.enqueue('take', '$payload', queue => 'one');
		SET ROLE app_b;
		SELECT atomizer.enqueue('look', '{"tag": "after $outcome"}', queue => 'one');
	});
	wait_until($node, 'postgres', qq{SELECT count(*) FROM seen WHERE tag = 'after $outcome'},
		'1', "the next job ran after one that took the lock and $outcome");
	is($node->safe_psql('postgres', qq{SELECT held_by_me FROM seen WHERE tag = 'after $outcome'}),
		'f', "the next job, of another role, does not hold the lock ($outcome)");
	is($node->safe_psql('postgres', q{SELECT pg_try_advisory_lock(4711)}), 't',
		"another session can take the lock after the job $outcome");
}
is($node->safe_psql('postgres', q{SELECT count(DISTINCT pid) FROM seen}), '1',
	'(both jobs ran in the same worker)');
is($node->safe_psql('postgres', q{SELECT string_agg(state, ' ' ORDER BY id) FROM atomizer.jobs
	WHERE handler LIKE '%take'}), 'succeeded dead', 'the taking jobs ended as they should');

# atomizer.workers shows the id of the job a worker runs to the job's owner
# and to atomizer_admin, not to other roles
$node->safe_psql('postgres', q{
	CREATE FUNCTION nap(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT pg_sleep(5) $$;
	GRANT EXECUTE ON FUNCTION nap(jsonb) TO app_a;
	SET ROLE app_a;
	SELECT atomizer.enqueue('nap', '{}', queue => 'one');
});
wait_until($node, 'postgres',
	q{SELECT count(*) FROM atomizer.workers WHERE state = 'running' AND job_id IS NOT NULL},
	'1', 'a job of app_a runs');
for my $case (['app_a', '1'], ['app_b', '0'], ['atomizer_admin', '1'])
{
	my ($role, $sees) = @$case;
	is($node->safe_psql('postgres', qq{SET ROLE $role;
		SELECT count(job_id) FROM atomizer.workers WHERE state = 'running'}),
		$sees, "$role sees the running job's id: $sees");
}

$node->stop;
done_testing();
