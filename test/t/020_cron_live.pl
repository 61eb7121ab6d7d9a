# Cron on a live server: a schedule fires on time by itself, each fire once;
# a schedule created while the scheduler sleeps is picked up at once; fires
# are enqueued ahead of their time (atomizer.cron_lookahead) and start at
# it; a restart does not double a fire.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
atomizer.poll_interval = '1min'
atomizer.worker_idle_timeout = '5min'
lc_messages = 'C'
});
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE FUNCTION tick(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	-- a fire's job has run_at = its fire time; started_at is when a worker
	-- claimed it
	CREATE VIEW fires AS
		SELECT run_at AS fire_time, started_at AS started, id AS job_id
		  FROM atomizer.jobs
		 WHERE handler = 'public.tick' AND state = 'succeeded';
});

# every second (6 fields, seconds first)
$node->safe_psql('postgres',
	q{SELECT atomizer.schedule('every_second', '* * * * * *', 'tick')});

$node->poll_query_until('postgres', 'SELECT count(*) >= 6 FROM fires')
  or die 'the schedule did not fire by itself';

my $fires = $node->safe_psql('postgres', q{
	SELECT count(*), count(DISTINCT fire_time),
	       bool_and(fire_time = date_trunc('second', fire_time))
	  FROM fires});
my ($n, $distinct, $whole) = split /\|/, $fires;
is($distinct, $n, 'each fire time ran once');
is($whole, 't', 'fire times are whole seconds');

# sanity bound, not a speed test: a job starts well within a second of its
# fire time (the figures are measured by the benchmark)
my $late = $node->safe_psql('postgres',
	q{SELECT count(*) FROM fires WHERE started - fire_time > interval '1 second'});
is($late, '0', 'every fire started within a second of its time');

# consecutive seconds: none skipped while the schedule was idle
my $gaps = $node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT fire_time - lag(fire_time) OVER (ORDER BY fire_time) AS gap FROM fires
	) g WHERE gap > interval '1 second'});
is($gaps, '0', 'no second skipped');

# fired ahead (atomizer.cron_lookahead, 2 s by default): a fire's job is
# committed before its fire time and starts at it, not before; with 0 it is
# enqueued at its fire time
$node->safe_psql('postgres', q{
	CREATE FUNCTION tock(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	CREATE VIEW tocks AS
		SELECT run_at, created_at, started_at FROM atomizer.jobs
		 WHERE handler = 'public.tock' AND state = 'succeeded';
	SELECT atomizer.schedule('every_5s', '*/5 * * * * *', 'tock');
});
$node->poll_query_until('postgres', 'SELECT count(*) >= 3 FROM tocks')
  or die 'every_5s did not fire';
my ($tocks, $ahead, $started_early, $twice) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*), count(*) FILTER (WHERE created_at < run_at),
	       count(*) FILTER (WHERE started_at < run_at),
	       count(*) - count(DISTINCT run_at) FROM tocks});
# (the first fire may come due within milliseconds of schedule())
cmp_ok($ahead, '>=', $tocks - 1, "fires enqueued before their fire time ($ahead of $tocks)");
is($started_early, '0', 'no job fired ahead started before its fire time');
is($twice, '0', 'each fire time ran once');
$node->append_conf('postgresql.conf', 'atomizer.cron_lookahead = 0');
$node->reload;
my $reloaded = $node->safe_psql('postgres', 'SELECT now() + interval \'5 seconds\'');
$node->poll_query_until('postgres', "SELECT count(*) >= 2 FROM tocks WHERE run_at > '$reloaded'")
  or die 'every_5s stopped firing with no lookahead';
is($node->safe_psql('postgres', "SELECT count(*) FROM tocks WHERE run_at > '$reloaded'"
		. ' AND created_at < run_at'), '0',
	'with atomizer.cron_lookahead = 0 a fire is enqueued at its time');
$node->safe_psql('postgres', q{SELECT atomizer.unschedule('every_5s')});

# a restart does not double a fire
$node->safe_psql('postgres', q{SELECT atomizer.unschedule('every_second')});
$node->safe_psql('postgres', q{SELECT atomizer.purge()});
$node->safe_psql('postgres',
	q{SELECT atomizer.schedule('every_second', '* * * * * *', 'tick')});
$node->poll_query_until('postgres', 'SELECT count(*) >= 2 FROM fires')
  or die 'no fires before restart';
$node->restart;
$node->poll_query_until('postgres',
	q{SELECT count(*) >= 3 FROM fires WHERE started > (SELECT pg_postmaster_start_time())})
  or die 'no fires after restart';
is($node->safe_psql('postgres',
	'SELECT count(*) - count(DISTINCT fire_time) FROM fires'), '0',
	'no fire time ran twice across the restart');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM atomizer.jobs j
	 WHERE j.handler = 'public.tick'
	 GROUP BY j.run_at HAVING count(*) > 1}), '',
	'no fire time was enqueued twice');

# a schedule whose handler is dropped is disabled, with the reason; the
# scheduler goes on
$node->safe_psql('postgres', q{
	CREATE FUNCTION doomed(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT atomizer.schedule('doomed', '* * * * * *', 'doomed');
	DROP FUNCTION doomed(jsonb);
});
$node->poll_query_until('postgres',
	q{SELECT NOT enabled FROM atomizer.schedules WHERE name = 'doomed'})
  or die 'the doomed schedule was not disabled';
like($node->safe_psql('postgres',
	q{SELECT last_error FROM atomizer.schedules WHERE name = 'doomed'}),
	qr/does not exist/, 'its reason is recorded');
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM fires');
$node->poll_query_until('postgres', "SELECT count(*) > $before + 1 FROM fires")
  or die 'other schedules stopped';
pass('the other schedule goes on firing');

$node->stop;
done_testing();
