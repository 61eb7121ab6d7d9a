# One failing duty of the scheduler does not stop the others.  Triggers
# (a superuser's, on atomizer's own tables) make three things impossible to
# write: the job of one cron schedule, the retry of one external job whose
# lease expires, and every prune.  The scheduler sets the faulty rows aside
# (the schedule disabled, the job dead, each with the error), retries the
# failing prune with a growing pause and logs it, while another schedule
# keeps firing and an internal queue keeps running, all in the same
# scheduler process.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('duties');
$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	SELECT atomizer.create_queue('ext', external => true, max_attempts => 5);
	SELECT atomizer.alter_queue('default', retention => '1 second');
	CREATE TABLE ran (tag text, at timestamptz DEFAULT clock_timestamp());
	CREATE FUNCTION tick(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO ran (tag) VALUES (p->>'tag')
	$$;
	-- a job that has succeeded, for the pruning to (fail to) delete
	SELECT atomizer.enqueue('tick', '{"tag": "first"}');
});
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'},
	'1', 'a first job ran');
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF TG_TABLE_NAME = 'job_history' THEN
			RAISE EXCEPTION 'no pruning today';
		ELSIF TG_OP = 'INSERT' AND NEW.payload ? 'poison_insert' THEN
			RAISE EXCEPTION 'poisoned insert';
		ELSIF TG_OP = 'UPDATE' AND NEW.payload ? 'poison_retry'
			  AND NEW.state = 'available' THEN
			RAISE EXCEPTION 'poisoned retry of job %', NEW.id;
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON atomizer.job
		FOR EACH ROW EXECUTE FUNCTION poison();
	CREATE TRIGGER poison BEFORE DELETE ON atomizer.job_history
		FOR EACH ROW EXECUTE FUNCTION poison();
});
# a scheduler prunes at its first pass (then every minute)
wait_until($node, 'postgres',
	q{SELECT finished_at < now() - interval '2 seconds' FROM atomizer.jobs WHERE payload->>'tag' = 'first'},
	't', 'the first job is past its retention');
$node->restart;
wait_until($node, 'postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'atomizer scheduler'},
	'1', 'one scheduler runs');
my $scheduler = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'atomizer scheduler'});
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue('lost', '{"poison_retry": true}', queue => 'ext');
	SELECT count(*) FROM atomizer.claim('ext', lease => '1 second');
	SELECT atomizer.schedule('bad', '1 second', 'tick', '{"poison_insert": true}');
	SELECT atomizer.schedule('good', '1 second', 'tick', '{"tag": "cron"}');
});

wait_until($node, 'postgres', q{SELECT count(*) >= 3 FROM ran WHERE tag = 'cron'},
	't', 'a good schedule keeps firing beside a bad one, a bad lease and a failing prune');
wait_until($node, 'postgres', q{SELECT enabled, last_error FROM atomizer.schedules WHERE name = 'bad'},
	"f|could not fire: poisoned insert", 'the schedule whose job cannot be inserted is disabled, with the error');
wait_until($node, 'postgres',
	q{SELECT state, last_error LIKE '%lease expiry: poisoned retry of job%' FROM atomizer.jobs WHERE handler = 'lost'},
	'dead|t', 'the job whose retry cannot be written is set aside as dead, with the error');

$node->safe_psql('postgres', q{SELECT atomizer.enqueue('tick', '{"tag": "after"}')});
wait_until($node, 'postgres', q{SELECT count(*) FROM ran WHERE tag = 'after'},
	'1', 'a job enqueued afterwards runs');

# the failing prune is retried with a growing pause, and says so
wait_until($node, 'postgres', q{SELECT 1}, '1', '(server up)');
my $deadline = time + 15;
my @prune;
while (time < $deadline)
{
	@prune = log_lines_mentioning($node, q{the scheduler's pruning failed in database "postgres": no pruning today}, $offset);
	last if @prune >= 3;
	sleep 1;
}
cmp_ok(scalar @prune, '>=', 3, 'the failing prune is logged each time it is tried');
like($prune[0], qr/LOG:/, 'as a LOG line, not an error that ends the scheduler');
my @pauses = map { /tried again in (\d+) ms/ ? $1 : () }
  log_lines_mentioning($node, 'tried again in', $offset);
is_deeply([ @pauses[0 .. 2] ], [ 1000, 2000, 4000 ], 'with a pause that doubles');

is($node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'atomizer scheduler'}),
	$scheduler, 'all in the same scheduler process');

# once the cause is gone, the duty works again and says so
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{DROP TRIGGER poison ON atomizer.job_history});
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded' AND payload->>'tag' = 'first'},
	'0', 'pruning deletes once the trigger is gone');
ok(scalar log_lines_mentioning($node, q{the scheduler's pruning works again}, $offset),
	'and the log says the duty works again');

# the scheduler vacuums the hot table itself after atomizer.vacuum_after_jobs
# outcomes (here 200), in the same process, without an error
$offset = -s $node->logfile;
my $vacuums = $node->safe_psql('postgres',
	q{SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'atomizer.job'::regclass});
$node->append_conf('postgresql.conf', "atomizer.vacuum_after_jobs = 200\n");
$node->reload;
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('vac');
	SELECT count(*) FROM atomizer.enqueue_many('tick', queue => 'vac', payloads =>
		ARRAY(SELECT jsonb_build_object('tag', 'vacuum', 'n', i) FROM generate_series(1, 500) i))});
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE payload->>'tag' = 'vacuum' AND state = 'succeeded'},
	'500', '500 more jobs ran');
wait_until($node, 'postgres', qq{SELECT vacuum_count > $vacuums FROM pg_stat_user_tables
	WHERE relid = 'atomizer.job'::regclass}, 't', 'the scheduler vacuumed atomizer.job');
is(scalar log_lines_mentioning($node, 'vacuum of atomizer.job failed', $offset), 0,
	'without an error');
is($node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'atomizer scheduler'}),
	$scheduler, 'in the same scheduler process');
# while jobs keep finishing, the vacuums follow their pace (every 200
# outcomes here, at most every half second), not the scheduler's other passes:
# 2,000 jobs enqueued at about 200 a second for 10 s get several vacuums
$vacuums = $node->safe_psql('postgres',
	q{SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'atomizer.job'::regclass});
for my $round (1 .. 20)
{
	$node->safe_psql('postgres', qq{
		SELECT count(*) FROM atomizer.enqueue_many('tick', queue => 'vac', payloads =>
			ARRAY(SELECT jsonb_build_object('tag', 'paced', 'n', i) FROM generate_series(1, 100) i))});
	select(undef, undef, undef, 0.5);
}
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE payload->>'tag' = 'paced' AND state = 'succeeded'},
	'2000', '2,000 jobs ran at a steady pace');
my $paced = $node->safe_psql('postgres', qq{SELECT vacuum_count - $vacuums FROM pg_stat_user_tables
	WHERE relid = 'atomizer.job'::regclass});
cmp_ok($paced, '>=', 4, "the scheduler vacuumed at their pace ($paced vacuums in about 10 s)");
# 0 turns it off: no more vacuums by the scheduler
$node->append_conf('postgresql.conf', "atomizer.vacuum_after_jobs = 0\n");
$node->reload;
sleep 1;
$vacuums = $node->safe_psql('postgres',
	q{SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'atomizer.job'::regclass});
$node->safe_psql('postgres', q{
	SELECT count(*) FROM atomizer.enqueue_many('tick', queue => 'vac', payloads =>
		ARRAY(SELECT jsonb_build_object('tag', 'novacuum', 'n', i) FROM generate_series(1, 500) i))});
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE payload->>'tag' = 'novacuum' AND state = 'succeeded'},
	'500', '500 more jobs ran with atomizer.vacuum_after_jobs = 0');
sleep 6;
is($node->safe_psql('postgres', q{SELECT vacuum_count FROM pg_stat_user_tables
	WHERE relid = 'atomizer.job'::regclass}), $vacuums, 'and no vacuum by the scheduler');

$node->stop;
done_testing();
