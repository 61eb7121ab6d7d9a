# Upgrades: a database still on the 0.1.0 schema, served by this (newer)
# library, is left alone (one log line, no job touched, no crash loop, other
# databases unaffected); ALTER EXTENSION atomizer UPDATE then brings it to
# the current version with everything it held working: waiting, delayed,
# retrying, dead and orphaned jobs, their errors, external leases (held and
# expired) and schedules.  Afterwards the database's schema dumps the same
# as a fresh install's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('upgrade', conf => q{
atomizer.poll_interval = '500ms'
atomizer.worker_idle_timeout = '5min'
});
my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'atomizer'});
isnt($current, '0.1.0', "the library's default version ($current) is newer than 0.1.0");

# What the application has: the same in both databases.
my $app = q{
	CREATE TABLE effects (tag text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
	CREATE FUNCTION work(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO effects (tag) VALUES (p->>'tag')
	$$;
	-- fails until the test inserts the tag 'switch'
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF NOT EXISTS (SELECT FROM effects WHERE tag = 'switch') THEN
			RAISE EXCEPTION 'boom %', p->>'tag';
		END IF;
		INSERT INTO effects (tag) VALUES (p->>'tag');
	END $$;
};
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', "CREATE EXTENSION atomizer; $app");

# ---------------------------------------------------------------- 0.1.0
my $offset = -s $node->logfile;
$node->safe_psql('old', "CREATE EXTENSION atomizer VERSION '0.1.0'; $app");
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'atomizer'}),
	'0.1.0', 'database old has the 0.1.0 schema');

my %id;
$node->safe_psql('old', q{
	SELECT atomizer.create_queue('fast', backoff_base => '1 second', backoff_jitter => 0);
	SELECT atomizer.create_queue('ext', external => true, max_attempts => 3);
	SELECT atomizer.enqueue('work', jsonb_build_object('tag', 'waiting')) FROM generate_series(1, 5);
	SELECT atomizer.schedule('tick', '1 second', 'work', '{"tag": "tick"}');
});
$id{delayed} = $node->safe_psql('old',
	q{SELECT atomizer.enqueue('work', '{"tag": "delayed"}', run_at => now() + interval '15 seconds')});
$id{retrying} = $node->safe_psql('old',
	q{SELECT atomizer.enqueue('boom', '{"tag": "retrying"}', queue => 'fast')});
$id{dead} = $node->safe_psql('old',
	q{SELECT atomizer.enqueue('boom', '{"tag": "dead"}', queue => 'fast', max_attempts => 1)});
is($node->safe_psql('old', q{SELECT atomizer.run_pending('fast')}), '2',
	'run_pending on the 0.1.0 schema ran both boom jobs');
$id{orphan} = $node->safe_psql('old', q{SELECT atomizer.enqueue('work', '{"tag": "orphan"}')});
# a job whose worker died while running it (pid 999999 does not exist)
$node->safe_psql('old', qq{
	UPDATE atomizer.job SET state = 'running', attempt = 1, started_at = now(),
		worker = 'atomizer:999999:1:1'
	WHERE id = $id{orphan}});
$id{held} = $node->safe_psql('old', q{SELECT atomizer.enqueue('task', '{"n": 1}', queue => 'ext')});
$node->safe_psql('old', q{SELECT * FROM atomizer.claim('ext', 1, lease => '1 hour')});
$id{expired} = $node->safe_psql('old', q{SELECT atomizer.enqueue('task', '{"n": 2}', queue => 'ext')});
$node->safe_psql('old', q{SELECT * FROM atomizer.claim('ext', 1, lease => '2 seconds')});

is($node->safe_psql('old', qq{
	SELECT string_agg(id || ':' || state, ' ' ORDER BY id) FROM atomizer.jobs
	WHERE id IN ($id{retrying}, $id{dead}, $id{orphan}, $id{held}, $id{expired})}),
	"$id{retrying}:retrying $id{dead}:dead $id{orphan}:running $id{held}:running $id{expired}:running",
	'0.1.0 database holds retrying, dead, orphaned and leased jobs');

my $snapshot_sql = q{
	SELECT string_agg(concat_ws(',', id, state, attempt, run_at, worker, lease_until), ' ' ORDER BY id)
	FROM atomizer.job};
my $before = $node->safe_psql('old', $snapshot_sql);
my $schedule_before = $node->safe_psql('old', q{SELECT next_run FROM atomizer.schedule});

# The launcher looks at a database it skipped every 10 s: watch two looks.
my $fresh_job = $node->safe_psql('fresh', q{SELECT atomizer.enqueue('work', '{"tag": "fresh"}')});
wait_until($node, 'fresh', q{SELECT count(*) FROM effects WHERE tag = 'fresh'},
	'1', 'another database with the current schema runs its jobs meanwhile');
sleep 12;
is($node->safe_psql('old', $snapshot_sql), $before,
	'no job of the 0.1.0 database was touched: the orphan and the expired lease too');
is($node->safe_psql('old', q{SELECT count(*) FROM effects}), '0', 'no handler ran there');
is($node->safe_psql('old', q{SELECT next_run FROM atomizer.schedule}), $schedule_before,
	'its schedule did not fire');
my @told = log_lines_mentioning($node, 'has version 0.1.0 of the extension', $offset);
is(scalar(@told), 1, 'the log says once that the database needs the update')
  or diag(join("\n", @told));
like($told[0] // '', qr/database "old" has version 0\.1\.0 of the extension, but the server runs version \Q$current\E/,
	'naming the database and both versions');
like(slurp_file($node->logfile, $offset), qr/HINT:  Run ALTER EXTENSION atomizer UPDATE in database "old"/,
	'with the command to run as hint');
my @crashes = grep { /exited with exit code [^0]|terminated by signal/ }
  split /\n/, slurp_file($node->logfile, $offset);
is(scalar(@crashes), 0, 'no atomizer process failed meanwhile') or diag(join("\n", @crashes));

# ---------------------------------------------------------------- update
my $updated_at = $node->safe_psql('old', 'SELECT now()');
$node->safe_psql('old', 'ALTER EXTENSION atomizer UPDATE');
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'atomizer'}),
	$current, "ALTER EXTENSION atomizer UPDATE brings it to $current");

wait_until($node, 'old', q{SELECT count(*) FROM effects WHERE tag = 'waiting'},
	'5', 'the waiting jobs run after the update');
# the update wakes the launcher at commit: not its next look, 10 s later
is($node->safe_psql('old', qq{SELECT min(at) - '$updated_at' < interval '5 seconds'
	FROM effects WHERE tag = 'waiting'}), 't', 'at once: the update woke the launcher');
wait_until($node, 'old', q{SELECT count(*) >= 3 FROM effects WHERE tag = 'tick'},
	't', 'the schedule fires');
wait_until($node, 'old', q{SELECT count(*) FROM effects WHERE tag = 'orphan'},
	'1', 'the orphaned job is recovered and runs again');
is($node->safe_psql('old', qq{
	SELECT attempt || ' ' || (message LIKE '%worker process died%')
	FROM atomizer.job_errors WHERE job_id = $id{orphan}}),
	'1 true', "the orphan's lost attempt is recorded as its worker's death");

# the held lease works on: heartbeat and complete
ok($node->safe_psql('old', qq{SELECT atomizer.heartbeat($id{held}) > now() + interval '50 minutes'}) eq 't',
	'a lease claimed under 0.1.0 can be renewed');
$node->safe_psql('old', qq{SELECT atomizer.complete($id{held}, '{"ok": true}')});
is($node->safe_psql('old', qq{SELECT state || ' ' || result FROM atomizer.jobs WHERE id = $id{held}}),
	'succeeded {"ok": true}', 'and completed');
# the expired one is taken back and can be claimed again
wait_until($node, 'old', qq{SELECT state <> 'running' FROM atomizer.jobs WHERE id = $id{expired}},
	't', 'the lease that ran out under 0.1.0 expires after the update');
wait_until($node, 'old', q{SELECT string_agg(id || ':' || attempt, ' ') FROM atomizer.claim('ext', 5)},
	"$id{expired}:2", 'and its job is claimed again, as attempt 2');

# retrying and dead jobs, and their errors
is($node->safe_psql('old', qq{SELECT count(*) FROM atomizer.job_errors WHERE job_id IN ($id{retrying}, $id{dead})
	AND message LIKE 'boom %' AND failed_at < '$updated_at'}), '2', "the 0.1.0 failures' errors are kept");
$node->safe_psql('old', q{INSERT INTO effects (tag) VALUES ('switch')});
wait_until($node, 'old', qq{SELECT state FROM atomizer.jobs WHERE id = $id{retrying}},
	'succeeded', 'the retrying job runs its next attempt');
is($node->safe_psql('old', qq{SELECT atomizer.retry($id{dead})}), 't', 'the dead job can be retried');
wait_until($node, 'old', qq{SELECT state FROM atomizer.jobs WHERE id = $id{dead}},
	'succeeded', 'and runs');
wait_until($node, 'old', q{SELECT count(*) FROM effects WHERE tag = 'delayed'},
	'1', 'the delayed job runs');
is($node->safe_psql('old', qq{SELECT e.at >= j.run_at FROM effects e, atomizer.jobs j
	WHERE e.tag = 'delayed' AND j.id = $id{delayed}}), 't', 'not before its run_at');
my $new = $node->safe_psql('old', q{SELECT atomizer.enqueue('work', '{"tag": "new"}')});
ok($new > $id{expired}, 'new jobs continue the id sequence');
wait_until($node, 'old', q{SELECT count(*) FROM effects WHERE tag = 'new'},
	'1', 'and run');

# ---------------------------------------------------------------- schema
# The updated database and the fresh install must be the same schema.
# pg_dump --schema-only shows the extension and the application's objects;
# --binary-upgrade also dumps every object the extension owns (as pg_upgrade
# sees them).  Oids, frozen xids, sequence positions and pg_dump's per-run
# \restrict keys are the only differences two identical schemas have.
sub dump_schema
{
	my ($db, @opts) = @_;
	my ($out, $err) = run_command([ 'pg_dump', '--schema-only', @opts,
		'--dbname' => $node->connstr($db) ]);
	die "pg_dump $db failed: $err" if $err =~ /error/;
	$out =~ s/'\{[0-9,]+\}'/'{oids}'/g;	# the extension's configuration tables
	$out =~ s/WHERE oid = '[0-9]+'/WHERE oid = ?/g;
	$out =~ s/(setval\('[^']+', )[0-9]+, (?:true|false)\)/$1?)/g;	# sequence states
	return join "\n", grep { !/binary_upgrade_set_next|relfrozenxid|^\\(?:un)?restrict |oid\b.*::pg_catalog\.oid/ }
	  split /\n/, $out;
}
my $plain_old = dump_schema('old');
my $plain_fresh = dump_schema('fresh');
like($plain_old, qr/CREATE EXTENSION IF NOT EXISTS atomizer/, 'the dump has the extension');
is($plain_old, $plain_fresh, 'pg_dump --schema-only of the updated database equals a fresh install');
my $full_old = dump_schema('old', '--binary-upgrade');
my $full_fresh = dump_schema('fresh', '--binary-upgrade');
like($full_old, qr/CREATE TABLE atomizer\.job /, "the binary-upgrade dump has the extension's objects");
if ($full_old ne $full_fresh)
{
	my @a = split /\n/, $full_old;
	my @b = split /\n/, $full_fresh;
	my $i = 0;
	$i++ while $i < @a && $i < @b && $a[$i] eq $b[$i];
	diag("first difference at line $i:\n  updated: " . ($a[$i] // '(end)')
		  . "\n  fresh:   " . ($b[$i] // '(end)'));
}
ok($full_old eq $full_fresh, "every object of the extension is the same after the update as in a fresh install");

$node->stop;
done_testing();
