# atomizer.databases is reloadable: a database taken out of the list loses
# its scheduler and workers and its jobs wait, a listed one keeps running,
# a listed database without the extension is skipped with at most one log
# line, and back to '*' every database with the extension is served again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(usleep);

# How long "nothing happens" is watched (seconds).
my $window = 3;

my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
});
$node->start;

for my $db (qw(app app2))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{
		CREATE EXTENSION atomizer;
		CREATE TABLE effects (n int NOT NULL);
		CREATE FUNCTION work(payload jsonb) RETURNS void LANGUAGE sql AS $$
			INSERT INTO effects VALUES ((payload->>'n')::int)
		$$;
	});
}
$node->safe_psql('postgres', 'CREATE DATABASE noext');

for my $db (qw(app app2))
{
	my $id = $node->safe_psql($db, q{SELECT atomizer.enqueue('work', '{"n": 1}')});
	wait_until($node, $db, "SELECT state FROM atomizer.jobs WHERE id = $id",
		'succeeded', "with the default '*', $db runs its jobs");
}

# An explicit list: app is no longer served, app2 is, noext is skipped.
my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "atomizer.databases = 'app2, noext'");
$node->reload;
wait_until($node, 'postgres', q{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type LIKE 'atomizer%' AND datname = 'app'},
	'0', 'a database taken out of atomizer.databases loses its scheduler and workers');
my $x = $node->safe_psql('app', q{SELECT atomizer.enqueue('work', '{"n": 2}')});
my $y = $node->safe_psql('app2', q{SELECT atomizer.enqueue('work', '{"n": 2}')});
wait_until($node, 'app2', "SELECT state FROM atomizer.jobs WHERE id = $y",
	'succeeded', 'a listed database still runs its jobs');
usleep($window * 1_000_000);
is($node->safe_psql('app', "SELECT state FROM atomizer.jobs WHERE id = $x"),
	'available', "a database not listed does not run its jobs (watched ${window} s)");
my @noext = log_lines_mentioning($node, 'noext', $offset, qr/exited with exit code/);
cmp_ok(scalar(@noext), '<=', 1,
	'a listed database without the extension: at most one log line')
  or diag(join("\n", @noext));
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type LIKE 'atomizer%' AND datname = 'noext'}),
	'0', 'no atomizer process stays in it');

$node->append_conf('postgresql.conf', "atomizer.databases = '*'");
$node->reload;
wait_until($node, 'app', "SELECT state FROM atomizer.jobs WHERE id = $x",
	'succeeded', "back to '*': the database is served again and its waiting job runs");
is($node->safe_psql('app', 'SELECT count(*), count(DISTINCT n) FROM effects'),
	'2|2', 'each effect written once');

# DROP DATABASE is not refused because atomizer's processes are connected:
# its scheduler and workers are stopped first, and none comes back.
$node->safe_psql('app2', q{SELECT atomizer.enqueue('work', '{"n": 3}')});
$node->poll_query_until('postgres', q{
	SELECT count(*) > 0 FROM pg_stat_activity
	 WHERE backend_type LIKE 'atomizer%' AND datname = 'app2'})
  or die 'app2 has no atomizer process to stop';
my ($rc, $out, $err) = $node->psql('postgres', 'DROP DATABASE app2');
is($rc, 0, 'DROP DATABASE of a database served by atomizer succeeds')
  or diag($err);
is( $node->safe_psql('postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type LIKE 'atomizer%' AND datname = 'app2'}),
	'0', 'no atomizer process is left in it');

# Errors of atomizer's processes (a scheduler stopped by the launcher may
# say "terminating background worker ... due to administrator command").
my @errors =
  grep { /\batomizer (?:launcher|scheduler|worker)\b.*\b(?:ERROR|FATAL|PANIC):/
	  && !/terminating background worker .* due to administrator command/ }
  split /\n/, slurp_file($node->logfile);
is(scalar(@errors), 0, 'no ERROR, FATAL or PANIC from atomizer processes')
  or diag(join("\n", @errors[ 0 .. ($#errors < 9 ? $#errors : 9) ]));

$node->stop;
done_testing();
