# The database's owner, not a superuser, backs up its own database: a
# superuser creates the role, the database (owned by it) and the extension;
# the owner and another role enqueue jobs and create schedules; the owner's
# pg_dump --enable-row-security holds every role's jobs, errors and
# schedules and the id sequences; a superuser restores it into a new
# database owned by the same role (CREATE EXTENSION needs one), where the
# jobs and schedules are there and run.  The owner still cannot write
# atomizer's tables, and a plain pg_dump of the owner fails only at the
# first table with row-level security, as PostgreSQL documents.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;

my $node = AtomizerTest::node('owner_dump', conf => "atomizer.enabled = off\n");

$node->safe_psql('postgres', q{
	CREATE ROLE app_owner LOGIN;
	CREATE ROLE app_user LOGIN;
	CREATE DATABASE app OWNER app_owner;
});
$node->safe_psql('app', q{
	CREATE EXTENSION atomizer;
	GRANT CREATE ON SCHEMA public TO app_user;
});

# as the owner: a handler, jobs (one finished, one failed), a schedule
my $owner = $node->connstr('app') . ' user=app_owner';
my $user = $node->connstr('app') . ' user=app_user';
# Run SQL as the role of $connstr: (exit status, stdout, stderr).
sub psql_as
{
	my ($connstr, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $connstr ],
		'<', \$sql, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}
my ($rc, $out, $err) = psql_as($owner, q{
	CREATE TABLE public.effects (n int);
	CREATE FUNCTION public.work(payload jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO public.effects VALUES ((payload->>'n')::int) $$;
	CREATE FUNCTION public.boom(payload jsonb) RETURNS void LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'boom'; END $$;
	SELECT atomizer.enqueue('work', '{"n": 1}');
	SELECT atomizer.enqueue('boom', '{}', max_attempts => 1);
	SELECT atomizer.run_pending();
	SELECT atomizer.enqueue('work', '{"n": 2}', run_at => now() + interval '1 hour');
	SELECT atomizer.schedule('nightly', '0 3 * * *', 'work', '{"n": 3}', tz => 'Europe/Berlin');
});
is($rc, 0, 'the owner enqueues jobs and creates a schedule') or diag($err);
($rc, $out, $err) = psql_as($user, q{
	CREATE FUNCTION public.other(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT atomizer.enqueue('other', '{"by": "app_user"}');
	SELECT atomizer.schedule('hourly', '@hourly', 'other');
});
is($rc, 0, 'another role enqueues a job and creates a schedule') or diag($err);

# the owner still cannot forge a job or change one
($rc, $out, $err) = psql_as($owner, q{
	INSERT INTO atomizer.job (id, queue, handler, owner) VALUES (999, 'default', 'public.work', 'postgres')});
isnt($rc, 0, 'the owner cannot insert into atomizer.job');
like($err, qr/permission denied for table job/, 'permission denied');
($rc, $out, $err) = psql_as($owner, q{UPDATE atomizer.schedule SET owner = 'postgres'});
like($err, qr/permission denied for table schedule/, 'nor update a schedule');
($rc, $out, $err) = psql_as($owner, q{SELECT setval('atomizer.job_id_seq', 1000)});
like($err, qr/permission denied for sequence job_id_seq/, 'nor set the id sequence');

my $jobs_sql = q{SELECT id, queue, handler, payload, state, attempt, owner, last_error
	FROM atomizer.jobs ORDER BY id};
my $schedules_sql = q{SELECT name, spec, handler, payload, tz, owner, next_run
	FROM atomizer.schedules ORDER BY name};
my $errors_sql = q{SELECT job_id, attempt, message FROM atomizer.job_errors ORDER BY job_id};
my $jobs = $node->safe_psql('app', $jobs_sql);
my $schedules = $node->safe_psql('app', $schedules_sql);
my $errors = $node->safe_psql('app', $errors_sql);
like($jobs, qr/app_user/, 'a job of another role is there');
like($schedules, qr/hourly.*\n.*nightly/, 'both schedules are there');

# a plain pg_dump by the owner: PostgreSQL's own refusal for RLS tables
my $dir = PostgreSQL::Test::Utils::tempdir();
my ($stdout, $stderr);
IPC::Run::run([ 'pg_dump', '--no-sync', '-f', "$dir/plain.sql", $owner ],
	'>', \$stdout, '2>', \$stderr);
like($stderr, qr/row-level security/,
	'plain pg_dump by the owner stops at row-level security (not at a sequence)');
unlike($stderr, qr/sequence/, 'the sequences are readable');

# the owner's dump
$node->command_ok([ 'pg_dump', '--no-sync', '--enable-row-security', '-f', "$dir/app.sql", $owner ],
	'pg_dump --enable-row-security by the database owner');
my $dump = slurp_file("$dir/app.sql");
my ($job_rows) = $dump =~ /^COPY atomizer\.job \([^\n]*\n(.*?)^\\\.$/ms;
like($job_rows, qr/\tapp_user\t/, 'the dump holds the other role\'s job');
like($dump, qr/setval\('atomizer\.job_id_seq'/, 'and the id sequence');

# restored by a superuser into a new database of the same owner
$node->safe_psql('postgres', 'CREATE DATABASE app_restored OWNER app_owner');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', "$dir/app.sql",
	$node->connstr('app_restored') ], 'a superuser restores it into a new database');
is($node->safe_psql('app_restored', $jobs_sql), $jobs, 'every job is restored');
is($node->safe_psql('app_restored', $errors_sql), $errors, 'with its errors');
is($node->safe_psql('app_restored', $schedules_sql), $schedules, 'every schedule is restored');
cmp_ok($node->safe_psql('app_restored', q{SET ROLE app_owner; SELECT atomizer.enqueue('work', '{"n": 4}')}),
	'>', $node->safe_psql('app', 'SELECT max(id) FROM atomizer.jobs'),
	'the id sequence goes on after the restored jobs');
is($node->safe_psql('app_restored', 'SELECT atomizer.run_pending()'), '2',
	'the restored due jobs run (the other role\'s and the new one)');
is($node->safe_psql('app_restored', 'SELECT array_agg(n ORDER BY n) FROM public.effects'),
	'{1,4}', 'with their effects');
is($node->safe_psql('app_restored', q{SELECT owner FROM atomizer.jobs WHERE handler = 'public.other'}),
	'app_user', 'the other role\'s job is still its own');

$node->stop;
done_testing();
