# pg_upgrade: a cluster of an older release (ATOMIZER_UPGRADE_FROM, the
# bindir of Debian's PostgreSQL 15 in test/run) with atomizer's waiting and
# delayed jobs, external jobs, schedules and history is upgraded to the
# server under test; afterwards every job runs, schedules fire on time, the
# history is there and job ids go on from where they were.
use strict;
use warnings;
use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $old_bindir = $ENV{ATOMIZER_UPGRADE_FROM} // '';
my ($new_major) = `pg_config --version` =~ /PostgreSQL (\d+)/;
if ($old_bindir eq '')
{
	# test/run always sets it when testing a release newer than 15
	plan skip_all => 'the server under test is the oldest release: nothing to upgrade from'
	  if $new_major <= 15;
	BAIL_OUT('ATOMIZER_UPGRADE_FROM is not set: test/run builds atomizer for the old release first');
}
my ($old_major) = `$old_bindir/pg_config --version` =~ /PostgreSQL (\d+)/;
ok($old_major < $new_major, "upgrading from PostgreSQL $old_major to $new_major");

my $conf = q{
atomizer.poll_interval = '500ms'
atomizer.worker_idle_timeout = '5min'
};
my $old = PostgreSQL::Test::Cluster->new('old', install_path => dirname($old_bindir));
$old->init;
$old->append_conf('postgresql.conf', $AtomizerTest::BASE_CONF . $conf);
$old->start;
$old->safe_psql('postgres', 'CREATE DATABASE app');
$old->safe_psql('app', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (tag text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO effects (tag) VALUES (p->>'tag')
	$$;
	SELECT atomizer.create_queue('cron');
	SELECT atomizer.create_queue('ext', external => true);
	SELECT atomizer.enqueue('work', '{"tag": "history"}') FROM generate_series(1, 20);
});
wait_until($old, 'app', q{SELECT count(*) FROM effects WHERE tag = 'history'},
	'20', "old: the workers of PostgreSQL $old_major ran 20 jobs");
$old->safe_psql('app', q{
	SELECT atomizer.pause_queue('default');
	SELECT atomizer.enqueue('work', jsonb_build_object('tag', 'waiting')) FROM generate_series(1, 10);
	SELECT atomizer.enqueue('task', '{"n": 1}', queue => 'ext');
	SELECT atomizer.schedule('tick', '* * * * * *', 'work', '{"tag": "tick"}', queue => 'cron');
});
my $delayed_at = $old->safe_psql('app', q{SELECT now() + interval '20 seconds'});
my $delayed = $old->safe_psql('app',
	qq{SELECT atomizer.enqueue('work', '{"tag": "delayed"}', queue => 'cron', run_at => '$delayed_at')});
wait_until($old, 'app', q{SELECT count(*) >= 2 FROM effects WHERE tag = 'tick'},
	't', 'old: the schedule fires');
my $history = $old->safe_psql('app', q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'});
ok($history >= 22, "old: $history finished jobs in the history");
my $last_id = $old->safe_psql('app', q{SELECT max(id) FROM atomizer.jobs});
my $ticks_before = $old->safe_psql('app', q{SELECT count(*) FROM effects WHERE tag = 'tick'});

# Debian's PostgreSQL 15.20 packages (15.20-0+deb12u1) stamp every column
# with an attribute option "pg_attver" that upstream releases do not know:
# pg_upgrade to the upstream 18 server then fails for any database with any
# table ('unrecognized parameter "pg_attver"'), atomizer or not.  Remove the
# stamp from the old cluster's catalogs first, where it is there.
for my $db (split /\n/, $old->safe_psql('postgres',
	q{SELECT datname FROM pg_database WHERE datallowconn}))
{
	$old->safe_psql($db, q{
		UPDATE pg_attribute
		SET attoptions = NULLIF(ARRAY(SELECT o FROM unnest(attoptions) o
									  WHERE o NOT LIKE 'pg_attver=%'), '{}')
		WHERE attoptions::text LIKE '%pg_attver=%'});
}
is($old->safe_psql('app', qq{SELECT state FROM atomizer.jobs WHERE id = $delayed}), 'scheduled',
	'old: the delayed job waits');
$old->stop;

# ---------------------------------------------------------------- upgrade
my $new = PostgreSQL::Test::Cluster->new('new');
# pg_upgrade needs the same data-checksum setting: 18's initdb turns them on
$new->init(extra => [ $new_major >= 18 ? ('--no-data-checksums') : () ]);
$new->append_conf('postgresql.conf', $AtomizerTest::BASE_CONF . $conf);
my $upgrade_dir = PostgreSQL::Test::Utils::tempdir;
chdir $upgrade_dir or die "chdir $upgrade_dir: $!";
command_ok(
	[
		'pg_upgrade', '--no-sync',
		'--old-datadir' => $old->data_dir,
		'--new-datadir' => $new->data_dir,
		'--old-bindir' => $old_bindir,
		'--new-bindir' => $new->config_data('--bindir'),
		'--socketdir' => $new->host,
		'--old-port' => $old->port,
		'--new-port' => $new->port,
	],
	"pg_upgrade from PostgreSQL $old_major to $new_major");
$new->start;

# ---------------------------------------------------------------- after
is($new->safe_psql('app', q{SELECT count(*) FROM atomizer.jobs
	WHERE state = 'succeeded' AND payload->>'tag' = 'history'}), '20', 'the history came along');
ok($new->safe_psql('app', q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'}) >= $history,
	'all of it');
wait_until($new, 'app', qq{SELECT count(*) > $ticks_before FROM effects WHERE tag = 'tick'},
	't', 'the schedule fires on the new server');
my $t0 = $new->safe_psql('app', q{SELECT count(*) FROM effects WHERE tag = 'tick'});
sleep 3;
my ($n, $lag) = split /\|/, $new->safe_psql('app', qq{
	SELECT count(*), max(extract(epoch FROM at - date_trunc('second', at)))
	FROM (SELECT at FROM effects WHERE tag = 'tick' ORDER BY at OFFSET $t0) t});
ok($n >= 2 && $n <= 4, "every second: $n fires in 3 s");
ok($lag < 0.5, "on time: each within 0.5 s of its second (latest $lag s)");

$new->safe_psql('app', q{SELECT atomizer.resume_queue('default')});
wait_until($new, 'app', q{SELECT count(*) FROM effects WHERE tag = 'waiting'},
	'10', 'the jobs that waited through the upgrade run');
is($new->safe_psql('app', q{SELECT string_agg(handler || ':' || attempt, ' ') FROM atomizer.claim('ext')}),
	'task:1', 'the external job can be claimed');
my $id = $new->safe_psql('app', q{SELECT atomizer.enqueue('work', '{"tag": "new"}')});
ok($id > $last_id, "new job ids go on after the old ones ($id > $last_id)");
wait_until($new, 'app', q{SELECT count(*) FROM effects WHERE tag = 'new'},
	'1', 'and the new job runs');
wait_until($new, 'app', q{SELECT count(*) FROM effects WHERE tag = 'delayed'},
	'1', 'the delayed job runs');
is($new->safe_psql('app', qq{SELECT min(at) >= '$delayed_at' FROM effects WHERE tag = 'delayed'}),
	't', 'not before its run_at');
# (the every-second schedule's next fire is enqueued ahead of its time)
is($new->safe_psql('app', q{SELECT count(*) FROM atomizer.job WHERE queue <> 'ext'
	AND (schedule_id IS NULL OR run_at < now() - interval '2 seconds')}), '0',
	'no internal job is left waiting');

$new->stop;
done_testing();
