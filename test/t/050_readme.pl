# Every example in README.md runs as written.  The README's ```sql,
# ```sh / ```bash / ```shell and ```python blocks run in the order they
# appear, against a live server with atomizer preloaded and its background
# workers running, in a fresh database "app" (the name the examples use),
# as the cluster's superuser: SQL with psql -v ON_ERROR_STOP=1, shell with
# bash -e in a scratch directory (the installed atomizer first in PATH),
# Python with /usr/bin/python3 (psycopg2); libpq finds the server through
# PGHOST, PGPORT and PGDATABASE.  A block fails the test if it exits with
# an error or runs longer than a minute.
#
# A block that cannot run here (it needs root, apt, or the source tree:
# the quick start, make install) is marked in the README on the line just
# before its fence with
#     <!-- not run: the reason -->
# and only marked blocks are skipped.  Blocks of other languages (```text,
# a fence without a language) are output or configuration, never run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;

my $readme = ($ENV{ATOMIZER_SOURCE} // '../..') . '/README.md';
ok(-e $readme, "README found: $readme") or BAIL_OUT("no $readme");

my $pg_config = $ENV{PG_CONFIG} // '/usr/lib/postgresql/15/bin/pg_config';
my $bindir = `$pg_config --bindir`;
chomp $bindir;
my $python = '/usr/bin/python3';

my %runner = (sql => 'sql', sh => 'sh', bash => 'sh', shell => 'sh',
	python => 'python');

# The README's fenced blocks: { line, lang, code, skip (the reason) }.
sub blocks
{
	my @lines = split /\n/, slurp_file($readme);
	my @blocks;
	my $prev = '';
	for (my $i = 0; $i < @lines; $i++)
	{
		my $line = $lines[$i];
		if ($line =~ /^(\s*)```\s*([A-Za-z0-9_+-]*)\s*$/)
		{
			my ($indent, $lang) = (length $1, lc $2);
			my $start = $i + 1;
			my @code;
			for ($i++; $i < @lines && $lines[$i] !~ /^\s*```\s*$/; $i++)
			{
				my $l = $lines[$i];
				$l =~ s/^ {0,$indent}//;
				push @code, $l;
			}
			my ($skip) = $prev =~ /^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$/;
			push @blocks, { line => $start, lang => $lang,
				code => join("\n", @code) . "\n", skip => $skip,
				marked => ($prev =~ /<!--\s*not run/ ? 1 : 0) };
			$prev = '';
			next;
		}
		$prev = $line if $line =~ /\S/;
	}
	return @blocks;
}

my @blocks = blocks();
cmp_ok(scalar(grep { $runner{ $_->{lang} } } @blocks), '>=', 10,
	'the README has SQL, shell and Python examples');

my $node = AtomizerTest::node('readme');
$node->safe_psql('postgres', 'CREATE DATABASE app');
my $scratch = PostgreSQL::Test::Utils::tempdir();

my %env = (
	PGHOST => $node->host,
	PGPORT => $node->port,
	PGDATABASE => 'app',
	PATH => "$bindir:/usr/bin:/bin",
	HOME => $scratch);

my ($ran, $skipped) = (0, 0);
for my $b (@blocks)
{
	my $kind = $runner{ $b->{lang} };
	my $what = "README line $b->{line} ($b->{lang})";
	if ($b->{marked})
	{
		ok(defined $b->{skip} && $b->{skip} ne '',
			"$what is marked not run, with a reason: " . ($b->{skip} // ''));
		$skipped++;
		next;
	}
	next unless $kind;

	my @cmd =
		$kind eq 'sql' ? ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', '-')
	  : $kind eq 'sh' ? ('bash', '-e', '-o', 'pipefail', '-s')
	  : ($python, '-');
	my ($out, $err) = ('', '');
	my $ok = eval {
		local @ENV{ keys %env } = values %env;
		IPC::Run::run(\@cmd, init => sub { chdir $scratch or die $!; },
			'<', \$b->{code}, '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	};
	my $why = $@ ? "timed out or could not run: $@" : "exit status " . ($? >> 8);
	ok($ok, "$what runs")
	  or diag("$why\n--- code:\n$b->{code}--- stdout:\n$out--- stderr:\n$err");
	note("$what stderr:\n$err") if $err ne '';
	$ran++;
}
note("$ran README blocks run, $skipped marked not run");
cmp_ok($ran, '>', $skipped, 'most of the README\'s examples run');

# What the examples promised happened (they leave these behind).
# (a job an example discards on purpose ends dead with "discarded: ...";
# the workflow example's first step fails on purpose, in queue checkout)
is($node->safe_psql('app', q{SELECT count(*) FROM atomizer.jobs
	WHERE state IN ('retrying', 'dead') AND last_error NOT LIKE 'discarded: %'
	  AND NOT (queue = 'checkout' AND payload ? 'fail')}), '0',
	'no example left a job failing or dead');
is($node->safe_psql('app', q{SELECT string_agg(payload->>'step' || ' ' || state, ', ' ORDER BY id)
	FROM atomizer.jobs WHERE queue = 'checkout' AND payload->>'step' NOT LIKE 'resize %'}),
	'charge dead, ship cancelled, notify cancelled, gallery succeeded',
	'the workflow examples: the chain stopped at its failure, the fan-in ran');
is($node->safe_psql('app', q{SELECT count(*) FILTER (WHERE state = 'succeeded'),
	max(finished_at) <= (SELECT started_at FROM atomizer.jobs WHERE payload->>'step' = 'gallery')
	FROM atomizer.jobs WHERE queue = 'checkout' AND payload->>'step' LIKE 'resize %'}),
	'20|t', '... after its twenty parts');
is($node->safe_psql('app', q{SELECT string_agg(payload::text || ' ' || state, ', ' ORDER BY id)
	FROM atomizer.jobs WHERE handler = 'public.charge'}),
	'{"account": "closed"} dead, {"bank": "busy"} scheduled, {"account": "open"} succeeded',
	'the handler-control example: discarded, snoozed, succeeded');
is($node->safe_psql('app', q{SELECT string_agg(a.hook || ' ' || a.attempt || ' ' || a.state, ', ' ORDER BY a.at)
	FROM job_audit a JOIN atomizer.jobs j ON j.id = a.job_id
	WHERE j.payload->>'customer' = '8'}),
	'on_failure 1 retrying, before_run 2 running, on_success 2 succeeded',
	'the lifecycle hooks example: on_failure, then before_run and on_success of the retry');

$node->stop;
done_testing();
