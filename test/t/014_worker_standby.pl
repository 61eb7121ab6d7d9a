# On a streaming standby nothing runs: jobs replicated from the primary stay
# available, no scheduler or worker process starts, and atomizer logs no
# errors, although the standby has atomizer.enabled = on.  After promotion
# the same jobs run on the promoted node.  (The primary keeps its workers
# off with atomizer.enabled = off from the start, so that the jobs are
# still waiting when they reach the standby.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use Time::HiRes qw(usleep time);

# Log lines from byte $offset on that are errors of atomizer's processes,
# or abnormal exits of them reported by the postmaster.
sub atomizer_trouble
{
	my ($node, $offset) = @_;
	my @lines = split /\n/, slurp_file($node->logfile, $offset);
	my @errors = grep {
		(/\batomizer (?:launcher|scheduler|worker)\b.*\b(?:ERROR|FATAL|PANIC):/
			  || /\b(?:ERROR|FATAL|PANIC):.*atomizer/)
		  && !/terminating background worker .* due to administrator command/
	} @lines;
	my @exits = grep { /background worker "atomizer[^"]*" \(PID \d+\) (?:exited with exit code [1-9]|was terminated)/ }
	  @lines;
	return (\@errors, \@exits);
}

# How long the standby is watched for processes that should not start
# (seconds): what a negative assertion needs, not a wait.
my $window = 3;
my $n_jobs = 20;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
atomizer.enabled = off
});
$primary->start;
$primary->safe_psql('postgres', 'CREATE DATABASE app');
$primary->safe_psql('app', q{
	CREATE EXTENSION atomizer;
	CREATE TABLE effects (n int NOT NULL);
	CREATE FUNCTION work(payload jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO effects VALUES ((payload->>'n')::int)
	$$;
});

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
# The backup carries the primary's postgresql.conf; on the standby the
# workers are on, so that only recovery keeps them from running.
$standby->append_conf('postgresql.conf', 'atomizer.enabled = on');
$standby->start;

# Jobs enqueued on the primary reach the standby by streaming.
$primary->safe_psql('app', qq{
	SELECT count(*) FROM atomizer.enqueue_many('work',
		ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, $n_jobs) g))});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('app', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is($standby->safe_psql('app', 'SHOW atomizer.enabled'), 'on', 'with atomizer.enabled on');
is( $standby->safe_psql('app', q{
		SELECT count(*) FROM atomizer.jobs WHERE state = 'available'}),
	$n_jobs, "the $n_jobs jobs replicated, available");

# Watch the standby for a while: no scheduler, no worker.
my %seen;
my $samples = 0;
my $until = time() + $window;
while (time() < $until)
{
	my ($ret, $out, $err) = $standby->psql('app', q{
		SELECT backend_type FROM pg_stat_activity
		 WHERE backend_type LIKE 'atomizer%' AND backend_type <> 'atomizer launcher'});
	if ($ret != 0)
	{
		fail('sampling pg_stat_activity on the standby');
		diag($err);
		die "stopping: cannot query the standby\n";
	}
	$seen{$_}++ for grep { $_ ne '' } split /\n/, $out;
	$samples++;
	usleep(200_000);
}
is(join(', ', sort keys %seen), '',
	"no atomizer scheduler or worker on the standby ($samples samples over ${window} s)");
is($standby->safe_psql('app', 'SELECT count(*) FROM atomizer.workers'), '0',
	'atomizer.workers is empty on the standby');
is( $standby->safe_psql('app', q{
		SELECT count(*) FROM atomizer.jobs WHERE state = 'available'}),
	$n_jobs, 'the jobs are still available on the standby');
my ($errors, $exits) = atomizer_trouble($standby, 0);
is(scalar(@$errors), 0, 'the standby log has no errors from atomizer')
  or diag(join("\n", @$errors[ 0 .. ($#$errors < 9 ? $#$errors : 9) ]));
cmp_ok(scalar(@$exits), '<=', 1,
	'and no atomizer process restarting over and over')
  or diag(join("\n", @$exits[ 0 .. ($#$exits < 9 ? $#$exits : 9) ]));

# ------------------------------------------------------------- promotion
my $offset = -s $standby->logfile;
$standby->promote;
wait_until($standby, 'app', 'SELECT NOT pg_is_in_recovery()', 't',
	'the standby is promoted');
wait_until($standby, 'app',
	q{SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'},
	$n_jobs, 'the replicated jobs run on the promoted node');
is($standby->safe_psql('app', 'SELECT count(*), count(DISTINCT n) FROM effects'),
	"$n_jobs|$n_jobs", 'each effect written once');
wait_until($standby, 'app', q{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'atomizer scheduler' AND datname = 'app'},
	'1', 'the promoted node has a scheduler for the database');
my $new = $standby->safe_psql('app', q{SELECT atomizer.enqueue('work', '{"n": 1000}')});
wait_until($standby, 'app', "SELECT state FROM atomizer.jobs WHERE id = $new",
	'succeeded', 'a job enqueued on the promoted node runs');
($errors) = atomizer_trouble($standby, $offset);
is(scalar(@$errors), 0, 'no errors from atomizer after the promotion')
  or diag(join("\n", @$errors[ 0 .. ($#$errors < 9 ? $#$errors : 9) ]));

# The old primary, workers off, ran nothing.
is($primary->safe_psql('app', 'SELECT count(*) FROM effects'), '0',
	'the primary, with atomizer.enabled off, ran nothing');

$standby->stop;
$primary->stop;
done_testing();
