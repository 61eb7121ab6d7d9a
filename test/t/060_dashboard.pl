# "atomizer dashboard" against a live server: where it may listen (user= in
# the DSN only on loopback); HTTP basic authentication as two roles that see
# different jobs (row-level security) and a wrong password refused; every
# endpoint of the JSON API; keyset paging and the filters; a payload holding
# <script> returned as JSON data; bad parameters answered 400 with a
# sentence; the CSRF checks (no token, another session's token, another
# origin, no origin: 403); --read-only (403); queue actions need
# atomizer_admin; queue settings edited through alter_queue() (admins only,
# a bad value a 400 with the SQL error's message); schedules in plain words
# with their recent fires; the overview's figures (sampled states, counters,
# rollups, percentiles) agreeing with the job tables, and a plain role's own
# counts; dead letters retried by group; /metrics parsed by
# python3-prometheus-client and agreeing with atomizer.queue_stats; and the
# page in headless Chromium (puppeteer-core from test/browser/, installed
# here with npm ci: no registry, no test), screenshots in the test log
# directory.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;
use IPC::Run;
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64;
use File::Copy;
use Time::HiRes qw(usleep time);
use IO::Socket::INET;
use IO::Select;

my $pg_config = $ENV{PG_CONFIG} // '/usr/lib/postgresql/15/bin/pg_config';
my $bindir = `$pg_config --bindir`;
chomp $bindir;
my $cli = "$bindir/atomizer";
ok(-x $cli, "the CLI is installed at $cli") or BAIL_OUT("no $cli");
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $json = JSON::PP->new->canonical;

my $node = AtomizerTest::node('dash', conf => "password_encryption = 'scram-sha-256'\n");
# logins are checked by PostgreSQL: passwords for everyone but the test's own user
{
	my $hba = $node->data_dir . '/pg_hba.conf';
	open my $fh, '>', $hba or die;
	my $me = getpwuid($<);
	print $fh "local all $me trust\nlocal all all scram-sha-256\n";
	close $fh;
}
$node->reload;
my $host = $node->host;
my $port = $node->port;
my $base_dsn = "host=$host port=$port dbname=postgres";

$node->safe_psql('postgres', q{
	CREATE EXTENSION atomizer;
	CREATE ROLE alice LOGIN PASSWORD 'alice-pw';
	CREATE ROLE bob LOGIN PASSWORD 'bob-pw';
	CREATE ROLE ops LOGIN PASSWORD 'ops-pw' IN ROLE atomizer_admin;
	CREATE FUNCTION ok(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
	CREATE FUNCTION boom(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'boom <b>%</b>', p->>'n' USING ERRCODE = '22012', HINT = 'a hint'; END $$;
	SELECT atomizer.create_queue('held');
});
$node->safe_psql('postgres', q{
	SET ROLE alice;
	SELECT atomizer.enqueue('ok', jsonb_build_object('who', 'alice', 'i', i)) FROM generate_series(1, 5) i;
	SELECT atomizer.enqueue('boom', '{"who": "alice", "x": "<script>window.__xss = 1</script>"}', queue => 'held', max_attempts => 1);
	SELECT atomizer.enqueue('boom', '{"who": "alice", "n": 2}', queue => 'held', max_attempts => 1);
	SELECT atomizer.schedule('nightly', '0 3 * * *', 'ok', tz => 'Europe/Paris');
	RESET ROLE;
	SET ROLE bob;
	SELECT atomizer.enqueue('ok', '{"who": "bob"}');
});
wait_until($node, 'postgres',
	"SELECT count(*) FROM atomizer.jobs WHERE state = 'dead'", '2', 'the failing jobs are dead');
wait_until($node, 'postgres',
	"SELECT count(*) FROM atomizer.jobs WHERE state = 'succeeded'", '6', 'the others succeeded');
$node->safe_psql('postgres', "SELECT atomizer.pause_queue('held')");
my $dead_id = $node->safe_psql('postgres',
	"SELECT id FROM atomizer.jobs WHERE payload ? 'x' AND state = 'dead'");

# ------------------------------------------------------------ start-up rules
sub cli
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $cli, @_ ], '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(30));
	return ($? >> 8, $out, $err);
}
my ($rc, $out, $err) = cli('dashboard', '--dsn', "$base_dsn user=alice", '--listen', '0.0.0.0:0');
is($rc, 2, 'user= in the DSN on a non-loopback address: exit 2');
like($err, qr/refusing to listen on 0\.0\.0\.0:0 without authentication/, '... with a clear message');
($rc, $out, $err) = cli('dashboard', '--listen', 'nonsense');
is($rc, 2, 'a --listen without a port: exit 2');
like($err, qr/invalid --listen "nonsense"/, '... named');
($rc, $out, $err) = cli('dashboard', '--listen', 'example.com:80');
is($rc, 2, 'a host name other than localhost is refused');

# Start a dashboard; returns (handle, base URL).
my $ndash = 0;
sub start_dashboard
{
	my @args = @_;
	$ndash++;
	my $log = "$tmp/dashboard$ndash.log";
	my $h = IPC::Run::start([ $cli, 'dashboard', @args, '--listen', '127.0.0.1:0' ],
		'<', \undef, '>', "$tmp/dashboard$ndash.out", '2>', $log);
	my $deadline = time + 30;
	while (time < $deadline)
	{
		my $l = -e $log ? slurp_file($log) : '';
		return ($h, "http://$1") if $l =~ m{listening on http://(127\.0\.0\.1:\d+)/};
		usleep(50_000);
	}
	die "dashboard did not start: " . slurp_file($log);
}

my ($dash, $url) = start_dashboard('--dsn', $base_dsn);
my $http = HTTP::Tiny->new(timeout => 30, max_redirect => 0);

# One visitor: a role's login and its session cookie.
sub visitor
{
	my ($user, $pw) = @_;
	return { auth => $user ? 'Basic ' . encode_base64("$user:$pw", '') : undef, cookie => undef, csrf => undef };
}

sub request
{
	my ($v, $method, $path, %h) = @_;
	my %headers = %{ $h{headers} // {} };
	$headers{Authorization} = $v->{auth} if $v && $v->{auth};
	$headers{Cookie} = $v->{cookie} if $v && $v->{cookie} && !$h{no_cookie};
	my $r = $http->request($method, "$url$path", { headers => \%headers });
	if ($v && $r->{headers}{'set-cookie'})
	{
		my $c = $r->{headers}{'set-cookie'};
		$c = $c->[0] if ref $c;
		$v->{cookie} = $1 if $c =~ /^(atomizer_session=[0-9a-f]+)/;
	}
	my $body = eval { $json->decode($r->{content}) };
	return ($r->{status}, $body, $r);
}

sub get { return request(shift, 'GET', @_); }

sub login
{
	my $v = visitor(@_);
	my ($s, $b) = get($v, '/api/session');
	is($s, 200, "$_[0] logs in");
	$v->{csrf} = $b->{csrf};
	return ($v, $b);
}

# POST as the page does: token and same-origin Origin
sub act
{
	my ($v, $path, %h) = @_;
	return request($v, 'POST', $path,
		headers => { 'X-CSRF-Token' => $v->{csrf}, Origin => $url, %{ $h{headers} // {} } }, %h);
}

# ------------------------------------------------------------ logins
my ($s, $b, $r) = get(undef, '/api/session');
is($s, 401, 'no login: 401');
like($r->{headers}{'www-authenticate'} // '', qr/^Basic realm="atomizer"/, '... asking for basic authentication');
($s, $b) = get(undef, '/');
is($s, 401, 'the page itself needs a login too');
($s, $b) = get(visitor('alice', 'wrong'), '/api/session');
is($s, 401, 'a wrong password: 401');
like($b->{error}, qr/login failed/, '... saying so');

my ($alice, $sa) = login('alice', 'alice-pw');
is($sa->{who}{role}, 'alice', 'the session is alice\'s role');
ok(!$sa->{who}{admin}, '... not an admin');
like($sa->{csrf}, qr/^[0-9a-f]{32}$/, '... with a CSRF token');
my ($bob) = login('bob', 'bob-pw');
my ($ops, $so) = login('ops', 'ops-pw');
ok($so->{who}{admin}, 'ops is an admin');

($s, $b, $r) = get($alice, '/');
is($s, 200, 'the page');
like($r->{content}, qr/<script src="\/app\.js"/, '... loads app.js');
($s, $b, $r) = get($alice, '/app.js');
is($s, 200, 'app.js');
like($r->{headers}{'content-type'}, qr{^text/javascript}, '... as JavaScript');
unlike($r->{content}, qr/\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write/, 'the page never parses data as HTML');

# ------------------------------------------------------------ jobs and RLS
($s, $b) = get($alice, '/api/jobs?limit=100');
is($s, 200, 'jobs');
is(scalar @{ $b->{jobs} }, 7, 'alice sees her 7 jobs');
ok(!(grep { $_->{owner} ne 'alice' } @{ $b->{jobs} }), '... and only hers');
($s, $b) = get($bob, '/api/jobs');
is_deeply([ map { $_->{owner} } @{ $b->{jobs} } ], ['bob'], 'bob sees only his one job');
($s, $b) = get($ops, '/api/jobs?limit=100');
is(scalar @{ $b->{jobs} }, 8, 'an admin sees all 8');

# keyset paging: pages of 2, newest first, no job twice, the end says so
my (@ids, $before);
for my $i (1 .. 10)
{
	($s, $b) = get($alice, '/api/jobs?limit=2' . ($before ? "&before=$before" : ''));
	push @ids, map { $_->{id} } @{ $b->{jobs} };
	$before = $b->{next};
	last unless defined $before;
}
is(scalar @ids, 7, 'paging by 2 walks all 7 jobs');
ok(!(grep { $ids[$_] >= $ids[ $_ - 1 ] } 1 .. $#ids), '... newest first, each once');

($s, $b) = get($alice, '/api/jobs?state=dead');
is(scalar @{ $b->{jobs} }, 2, 'filter by state');
($s, $b) = get($alice, '/api/jobs?queue=held&handler=public.boom');
is(scalar @{ $b->{jobs} }, 2, 'filter by queue and handler');
($s, $b) = get($alice, "/api/jobs?id=$dead_id");
is($b->{jobs}[0]{id}, $dead_id, 'filter by id');
($s, $b) = get($ops, '/api/jobs?owner=bob');
is(scalar @{ $b->{jobs} }, 1, 'filter by owner');
($s, $b) = get($alice, '/api/jobs?error=BOOM%20%3Cb%3E2');
is(scalar @{ $b->{jobs} }, 1, 'filter by error text (case-insensitive)');
($s, $b) = get($alice, '/api/jobs?payload=%7B%22i%22%3A3%7D');
is(scalar @{ $b->{jobs} }, 1, 'filter by payload containment');
# time ranges, parsed by PostgreSQL; a JSON path over the payload
my %alice_sql = map { $_ => $node->safe_psql('postgres', "SET ROLE alice; SELECT count(*) FROM atomizer.jobs WHERE $_") }
	"created_at >= '2000-01-01'", "finished_at >= '2000-01-01'", "created_at < now() - interval '1 day'";
($s, $b) = get($alice, '/api/jobs?limit=100&created_after=2000-01-01');
is(scalar @{ $b->{jobs} }, $alice_sql{"created_at >= '2000-01-01'"}, 'filter by created_after');
($s, $b) = get($alice, '/api/jobs?limit=100&created_before=' . uri('2000-01-01T00:00:00+00:00'));
is(scalar @{ $b->{jobs} }, 0, 'filter by created_before (an ISO timestamp with its offset)');
($s, $b) = get($alice, '/api/jobs?limit=100&finished_after=2000-01-01&finished_before=' . uri('2999-01-01 00:00'));
is(scalar @{ $b->{jobs} }, $alice_sql{"finished_at >= '2000-01-01'"}, 'filter by finished_after and finished_before');
($s, $b) = get($alice, '/api/jobs?limit=100&path=' . uri('$.i ? (@ > 3)'));
is_deeply([ sort map { $_->{payload}{i} } @{ $b->{jobs} } ], [ 4, 5 ], 'filter by a JSON path over the payload');
($s, $b) = get($alice, '/api/jobs?limit=100&path=' . uri('$.who ? (@ == "alice")') . '&queue=held');
is(scalar @{ $b->{jobs} }, 2, '... with the other filters');
for my $bad ('created_after=yesterday-ish', 'finished_before=2026-13-45', 'path=' . uri('$.a[') , 'path=' . uri('strict $.nokey'))
{
	($s, $b) = get($alice, "/api/jobs?$bad");
	is($s, 400, "400 for $bad (never a 500)");
	ok(defined $b->{error} && length $b->{error} > 10, "... with a sentence: " . ($b->{error} // ''));
}

($s, $b, $r) = get($alice, "/api/job?id=$dead_id");
is($s, 200, 'a job');
is($b->{job}{payload}{x}, '<script>window.__xss = 1</script>', 'the <script> payload comes back as JSON data');
like($r->{headers}{'content-type'}, qr{^application/json}, '... as application/json');
is($r->{headers}{'x-content-type-options'}, 'nosniff', '... never sniffed as HTML');
is($b->{errors}[0]{sqlstate}, '22012', 'the attempt\'s SQLSTATE');
is($b->{errors}[0]{hint}, 'a hint', '... hint');
like($b->{errors}[0]{context}, qr/PL\/pgSQL function boom/, '... context');
ok((grep { $_->{event} eq 'enqueued' } @{ $b->{timeline} }), 'the timeline starts with the enqueue');
($s, $b) = get($bob, "/api/job?id=$dead_id");
is($s, 404, 'bob cannot see alice\'s job');

# ------------------------------------------------------------ bad parameters
for my $bad ('/api/jobs?limit=0', '/api/jobs?limit=abc', '/api/jobs?id=-1',
	'/api/jobs?state=bogus', '/api/jobs?payload=%7Bnot', '/api/jobs?before=1e9',
	'/api/jobs?bogus=1', '/api/job', '/api/job?id=x')
{
	($s, $b) = get($alice, $bad);
	is($s, 400, "400 for $bad");
	ok(defined $b->{error} && length $b->{error} > 10, "... with a sentence: " . ($b->{error} // ''));
}
($s, $b) = act($alice, '/api/purge?older_than=soon');
is($s, 400, 'an interval PostgreSQL rejects: 400');
($s, $b) = get($alice, '/api/nope');
is($s, 404, 'an unknown endpoint: 404');
($s, $b) = get($alice, "/api/job/retry?id=$dead_id");
is($s, 405, 'an action by GET: 405');

# ------------------------------------------------------------ CSRF
($s, $b) = request($alice, 'POST', "/api/job/retry?id=$dead_id", headers => { Origin => $url });
is($s, 403, 'a POST without the token: 403');
($s, $b) = request($alice, 'POST', "/api/job/retry?id=$dead_id",
	headers => { Origin => $url, 'X-CSRF-Token' => $bob->{csrf} });
is($s, 403, 'another session\'s token: 403');
($s, $b) = act($alice, "/api/job/retry?id=$dead_id", headers => { Origin => 'http://evil.example' });
is($s, 403, 'another origin: 403');
like($b->{error}, qr/cross-origin/, '... named');
($s, $b) = request($alice, 'POST', "/api/job/retry?id=$dead_id",
	headers => { 'X-CSRF-Token' => $alice->{csrf} });
is($s, 403, 'neither Origin nor Referer: 403');
($s, $b) = request($alice, 'POST', "/api/job/retry?id=$dead_id",
	headers => { 'X-CSRF-Token' => $alice->{csrf}, Referer => "$url/#/job/1" });
is($s, 200, 'a same-origin Referer will do');
($s, $b) = request({ %$bob, csrf => $alice->{csrf}, cookie => $alice->{cookie} }, 'POST',
	"/api/job/cancel?id=1", headers => { 'X-CSRF-Token' => $alice->{csrf}, Origin => $url });
is($s, 403, 'alice\'s session and token with bob\'s login: 403');
is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $dead_id"),
	'available', 'the one accepted retry made the job available (its queue is paused)');

# ------------------------------------------------------------ actions
my $waiting = $node->safe_psql('postgres', q{
	SET ROLE alice; SELECT atomizer.enqueue('ok', '{}', queue => 'held')});
($s, $b) = act($bob, "/api/job/cancel?id=$waiting");
is($s, 200, 'bob cancelling alice\'s job is answered');
ok(!$b->{ok}, '... with ok false (not his)');
($s, $b) = act($alice, "/api/job/cancel?id=$waiting");
ok($b->{ok}, 'alice cancels her waiting job');
($s, $b) = act($alice, "/api/job/retry?id=$waiting");
ok($b->{ok}, '... and retries it');

($s, $b) = get($alice, '/api/dead');
is($s, 200, 'dead letter groups');
is(scalar @$b, 1, 'one group left');
is($b->[0]{count}, 1, '... of one job');
is($b->[0]{sqlstate}, '22012', '... by SQLSTATE');
my $g = $b->[0];
my $q = join '&', map { "$_=" . uri($g->{$_}) } qw(queue handler sqlstate message);
($s, $b) = act($alice, "/api/dead/retry?$q");
is($s, 200, 'retry a group');
is($b->{retried}, 1, '... retried 1');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.dead_jobs"), '0', 'no dead job left');

sub uri
{
	my $v = shift;
	$v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord $1)/ge;
	return $v;
}

($s, $b) = get($alice, '/api/queues');
is($s, 200, 'queues');
ok((grep { $_->{name} eq 'held' && $_->{paused} } @$b), '... held is paused');
($s, $b) = act($alice, '/api/queue/resume?name=held');
is($s, 403, 'alice (not an admin) cannot resume a queue: 403 from PostgreSQL\'s check');
($s, $b) = act($ops, '/api/queue/concurrency?name=held&concurrency=3');
is($s, 200, 'an admin sets the concurrency');
is($node->safe_psql('postgres', "SELECT concurrency FROM atomizer.queue WHERE name = 'held'"), '3', '... to 3');
($s, $b) = act($ops, '/api/queue/concurrency?name=held&concurrency=many');
is($s, 400, 'a concurrency that is not a number: 400');
($s, $b) = act($ops, '/api/queue/pause?name=nosuch');
is($s, 404, 'pausing a queue that does not exist: 404');
# every setting through alter_queue(); those not given stay
($s, $b) = act($ops, '/api/queue/settings?name=held&max_attempts=7&backoff_base=' . uri('2 seconds')
	. '&backoff_cap=' . uri('10 minutes') . '&backoff_jitter=0.25&timeout=' . uri('30 seconds')
	. '&retention=' . uri('3 days'));
is($s, 200, 'an admin edits the settings of held');
is($node->safe_psql('postgres', q{SELECT concat_ws(' ', concurrency, max_attempts, backoff_base,
	backoff_cap, backoff_jitter, timeout, retention) FROM atomizer.queue WHERE name = 'held'}),
	'3 7 00:00:02 00:10:00 0.25 00:00:30 3 days', '... they act, and the concurrency given before stays');
($s, $b) = get($ops, '/api/queues');
is((grep { $_->{name} eq 'held' } @$b)[0]{retention}, '3 days', '... and GET /api/queues shows them');
# the rate limit, and a hook removed by giving it empty
$node->safe_psql('postgres', q{CREATE FUNCTION hook(job jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
	SELECT atomizer.alter_queue('held', on_dead => 'hook')});
isnt($node->safe_psql('postgres', "SELECT on_dead FROM atomizer.queue WHERE name = 'held'"), '',
	'(held has an on_dead hook)');
($s, $b) = act($ops, '/api/queue/settings?name=held&rate_limit=100&rate_period=' . uri('1 minute') . '&on_dead=');
is($s, 200, 'an admin sets a rate limit and removes a hook (given empty)') or diag(explain($b));
is($node->safe_psql('postgres', q{SELECT concat_ws(' ', rate_limit, rate_period, coalesce(on_dead, 'none'))
	FROM atomizer.queue WHERE name = 'held'}), '100 00:01:00 none', '... both act');
# handler limits are shown with the queue
$node->safe_psql('postgres', q{SELECT atomizer.limit_handler('held', 'hook', 4)});
($s, $b) = get($ops, '/api/queues');
is_deeply((grep { $_->{name} eq 'held' } @$b)[0]{handler_limits},
	[ { handler => 'public.hook', concurrency => 4 } ], 'GET /api/queues shows a queue\'s handler limits');
$node->safe_psql('postgres', q{SELECT atomizer.limit_handler('held', 'hook', NULL)});
($s, $b) = act($ops, '/api/queue/settings?name=held&rate_limit=0&rate_period=');
is($node->safe_psql('postgres', "SELECT coalesce(rate_limit::text, 'none') FROM atomizer.queue WHERE name = 'held'"),
	'none', 'a rate limit of 0 removes it (an interval given empty is not given)');
($s, $b) = act($ops, '/api/queue/settings?name=held&backoff_jitter=2');
is($s, 400, 'a setting alter_queue() refuses: 400');
is($b->{error}, 'backoff_jitter must be between 0 and 1', '... with the SQL error\'s message');
($s, $b) = act($ops, '/api/queue/settings?name=held&timeout=soon');
is($s, 400, 'an interval PostgreSQL cannot parse: 400');
like($b->{error}, qr/invalid input syntax for type interval: "soon"/, '... with PostgreSQL\'s message');
($s, $b) = act($ops, '/api/queue/settings?name=held&max_attempts=x');
is($s, 400, 'a number that is not one: 400');
($s, $b) = act($ops, '/api/queue/settings?name=held');
is($s, 400, 'no setting: 400');
like($b->{error}, qr/give at least one setting to change: concurrency, max_attempts/, '... naming them');
($s, $b) = act($ops, '/api/queue/settings?name=held&rate=1');
is($s, 400, 'a setting the dashboard does not know: 400');
($s, $b) = act($alice, '/api/queue/settings?name=held&max_attempts=1');
is($s, 403, 'alice (not an admin) cannot edit settings: 403');
is($node->safe_psql('postgres', "SELECT max_attempts FROM atomizer.queue WHERE name = 'held'"), '7',
	'... and nothing changed');
$node->safe_psql('postgres', q{SELECT atomizer.alter_queue('held', max_attempts => 5, backoff_base => '1 second',
	backoff_cap => '1 hour', backoff_jitter => 0.1, timeout => '0', retention => '1 day')});

($s, $b) = get($alice, '/api/schedules');
is($s, 200, 'schedules');
is($b->[0]{name}, 'nightly', '... alice\'s');
is(scalar @{ $b->[0]{next_five} }, 5, '... with the next five fire times');
is($b->[0]{tz}, 'Europe/Paris', '... and the time zone');
is($b->[0]{in_words}, 'at 03:00 every day', '... the spec in plain words');
is($b->[0]{in_words}, $node->safe_psql('postgres', "SELECT atomizer.cron_describe('0 3 * * *')"),
	'... as atomizer.cron_describe() says it');
my $fired_before = scalar @{ $b->[0]{recent} };
($s, $b) = get($bob, '/api/schedules');
is_deeply($b, [], 'bob sees no schedule');
($s, $b) = act($alice, '/api/schedule/disable?name=nightly');
ok($b->{ok}, 'disable a schedule');
is($node->safe_psql('postgres', "SELECT enabled FROM atomizer.schedule"), 'f', '... disabled');
($s, $b) = act($alice, '/api/schedule/enable?name=nightly');
ok($b->{ok}, 'enable it');
($s, $b) = act($alice, '/api/schedule/run?name=nightly');
like($b->{job_id}, qr/^\d+$/, 'run it now: a job id');
my $run_now = $b->{job_id};
($s, $b) = get($alice, '/api/schedules');
is($b->[0]{recent}[0]{id}, $run_now, 'the recent fires start with that job');
is(scalar @{ $b->[0]{recent} }, $fired_before + 1, '... one more fire');
ok(defined $b->[0]{recent}[0]{state}, '... with its state');

($s, $b) = get($alice, '/api/overview');
is($s, 200, 'overview');
ok((grep { $_->{queue} eq 'held' } @{ $b->{queues} }), '... per queue');
ok(!$b->{shared}, 'alice may not read the shared figures: her own counts');
ok(!defined $b->{queues}[0]{hour} && !defined $b->{queues}[0]{total}, '... and no finished figures');
my %own = map { my ($q2, $n) = split /=/; ($q2 => $n) } split / /, $node->safe_psql('postgres', q{
	SET ROLE alice; SELECT string_agg(q || '=' || n, ' ') FROM (
	  SELECT q.name AS q, count(j.id) AS n
	    FROM atomizer.queue q LEFT JOIN atomizer.jobs j ON j.queue = q.name
	     AND j.state IN ('scheduled', 'available', 'running', 'retrying') GROUP BY q.name) c});
my %ovq = map { $_->{queue} => $_ } @{ $b->{queues} };
is(join(' ', map { "$_=" . ($ovq{$_}{scheduled} + $ovq{$_}{available} + $ovq{$_}{running} + $ovq{$_}{retrying}) }
	sort keys %ovq),
	join(' ', map { "$_=$own{$_}" } sort keys %own), '... which agree with her rows of atomizer.jobs');
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'default'
	AND state NOT IN ('succeeded', 'dead', 'cancelled')}, '0', 'the job run now has run');
# an admin: every role's jobs, from the scheduler's sample, the counters
# and the rollups; they agree with the job tables
my $unfinished_sql = q{SELECT string_agg(q || '/' || st || '=' || n, ' ' ORDER BY q, st) FROM (
	SELECT q.name AS q, st, count(j.id) AS n
	  FROM atomizer.queue q CROSS JOIN unnest(ARRAY['scheduled', 'available', 'running', 'retrying']) st
	  LEFT JOIN atomizer.jobs j ON j.queue = q.name AND j.state = st GROUP BY 1, 2) c};
my $overview_unfinished = sub {
	my ($s2, $b2) = get($ops, '/api/overview');
	my %byq = map { $_->{queue} => $_ } @{ $b2->{queues} };
	return join ' ', map { my $q2 = $byq{$_}; map { "$q2->{queue}/$_=$q2->{$_}" } qw(available retrying running scheduled) }
		sort keys %byq;
};
my $want = $node->safe_psql('postgres', $unfinished_sql);
my $got_ov;
for (1 .. 50) { $got_ov = $overview_unfinished->(); last if $got_ov eq $want; usleep(200_000); }
is($got_ov, $want, 'the overview\'s sampled states agree with a count of atomizer.jobs (within a sample)');
($s, $b) = get($ops, '/api/overview');
ok($b->{shared}, 'ops reads the shared figures');
my %ov = map { $_->{queue} => $_ } @{ $b->{queues} };
my $succ = $node->safe_psql('postgres', q{SELECT count(*) FROM atomizer.jobs WHERE queue = 'default' AND state = 'succeeded'});
is($ov{default}{total}{succeeded} . ' ' . $ov{default}{hour}{succeeded} . ' ' . $ov{default}{day}{succeeded},
	"$succ $succ $succ", 'succeeded since start, in the last hour and day: the jobs in the history');
is($ov{held}{total}{dead}, $node->safe_psql('postgres',
	q{SELECT value FROM atomizer.metrics WHERE name = 'atomizer_jobs_finished_total'
	   AND labels->>'queue' = 'held' AND labels->>'outcome' = 'dead'}), 'dead since start: the counter');
cmp_ok($ov{held}{hour}{failure_rate}, '==', 1, 'every attempt in held failed: failure rate 1');
cmp_ok($ov{default}{hour}{failure_rate}, '==', 0, '... none in default');
ok(defined $ov{default}{hour}{run_p50} && $ov{default}{hour}{run_p50} <= $ov{default}{hour}{run_p95}
	&& $ov{default}{hour}{run_p95} <= $ov{default}{hour}{run_p99} && $ov{default}{hour}{run_p99} < 1,
	"run time p50 <= p95 <= p99, under a second for SELECT jobs: $ov{default}{hour}{run_p50}");
{
	my $p50 = $node->safe_psql('postgres', q{
	SELECT atomizer._histogram_quantile(atomizer._sum_buckets(wait_buckets), 0.5)
	  FROM (SELECT wait_buckets FROM atomizer.stats_minute WHERE queue = 'default'
			UNION ALL SELECT wait_buckets FROM atomizer._stats_unflushed() WHERE queue = 'default') x});
	# (JSON::PP reads the number as a Perl double: compared as numbers)
	cmp_ok(abs($ov{default}{hour}{wait_p50} - $p50), '<', 1e-9 * (1 + abs($p50)),
		"the wait p50 is the rollups' and the current minute's: $p50");
}
ok(defined $ov{default}{workers_busy} && defined $ov{default}{workers_idle}, 'busy and idle workers per queue');
($s, $b) = get($alice, '/api/workers');
is($s, 200, 'workers');
is(ref $b->{processes}, 'ARRAY', '... processes');
is(ref $b->{leases}, 'ARRAY', '... and external workers\' leases');
($s, $b) = act($ops, '/api/purge?older_than=1000%20years');
is($s, 200, 'purge');
is($b->{purged}, 0, '... nothing that old');

# ------------------------------------------------------------ bulk actions
# three dead jobs for the page's bulk bar
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('bulkpage', external => true);
	SELECT atomizer.enqueue_many('task', array['{}', '{}', '{}']::jsonb[], queue => 'bulkpage');
	SELECT atomizer.fail(c.id, 'gave up', retry => false) FROM atomizer.claim('bulkpage', 3) c;
});

# ------------------------------------------------------------ live updates
# GET /api/events as a browser's EventSource does: a raw socket, since the
# answer never ends.  Returns the socket and what came so far.
sub sse_open
{
	my ($v) = @_;
	my ($hp) = $url =~ m{^http://(.*)$};
	my $sock = IO::Socket::INET->new(PeerAddr => $hp, Timeout => 10) or die "connect $hp: $!";
	print $sock "GET /api/events HTTP/1.1\r\nHost: $hp\r\nAccept: text/event-stream\r\n"
	  . ($v->{auth} ? "Authorization: $v->{auth}\r\n" : '') . "\r\n";
	my $st = { sock => $sock, buf => '' };
	sse_until($st, qr/\r\n\r\n/, 10);
	return $st;
}

# Read the stream until its text (from the start) matches re; true if it did.
sub sse_until
{
	my ($st, $re, $timeout) = @_;
	my $sel = IO::Select->new($st->{sock});
	my $deadline = time + $timeout;
	while ($st->{buf} !~ $re)
	{
		my $left = $deadline - time;
		return 0 if $left <= 0;
		next unless $sel->can_read($left);
		my $n = sysread($st->{sock}, my $chunk, 65536);
		return 0 unless $n;
		$st->{buf} .= $chunk;
	}
	return 1;
}

my $anon_stream = sse_open(visitor());
like($anon_stream->{buf}, qr{^HTTP/1\.1 401}, 'GET /api/events without a login: 401');
close $anon_stream->{sock};
my $ops_stream = sse_open($ops);
like($ops_stream->{buf}, qr{^HTTP/1\.1 200}, 'an event stream for ops');
like($ops_stream->{buf}, qr{content-type: text/event-stream}i, '... text/event-stream');
my $alice_stream = sse_open($alice);
ok(sse_until($alice_stream, qr/event: hello/, 10), 'a second stream, for alice, says hello');
{
	my $t0 = time;
	($s, $b) = get($alice, '/api/overview');
	is($s, 200, 'an API request answers while two event streams are open');
	cmp_ok(time - $t0, '<', 5, '... at once');
}
# an internal queue is never notified: the feed sees its counters move
# (once it has read them a first time: that is what they are compared with)
wait_until($node, 'postgres', q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'atomizer dashboard feed' AND query LIKE '%atomizer.metrics%'},
	'1', 'one feed connection for both streams, reading the counters');
$ops_stream->{buf} = $alice_stream->{buf} = '';
$node->safe_psql('postgres', "SET ROLE alice; SELECT atomizer.enqueue('ok', '{\"live\": 1}')");
ok(sse_until($ops_stream, qr/event: change\ndata: \{"queues": \[[^\]]*"default"/, 15),
	'a job that ran in internal queue default: an event naming default (the counters moved)');
ok(sse_until($alice_stream, qr/event: change\ndata: \{"queues": \[[^\]]*"default"/, 15),
	'... on every open stream');
unlike($ops_stream->{buf} . $alice_stream->{buf}, qr/"live"|payload|"id"/, '... and never job data');
# an external queue: its NOTIFY, once the feed listens on the new queue
$node->safe_psql('postgres', "SELECT atomizer.create_queue('live_ext', external => true)");
ok(sse_until($ops_stream, qr/"live_ext"/, 15), 'a new queue is an event (the feed now listens on atomizer_live_ext)');
$ops_stream->{buf} = '';
$node->safe_psql('postgres', "SELECT atomizer.enqueue('task', '{}', queue => 'live_ext')");
ok(sse_until($ops_stream, qr/event: change\ndata: \{"queues": \[[^\]]*"live_ext"/, 15),
	'a job enqueued in an external queue: an event from its NOTIFY');
# an action through the dashboard is an event for every stream
$alice_stream->{buf} = '';
($s, $b) = act($ops, '/api/queue/pause?name=live_ext');
is($s, 200, 'ops pauses live_ext');
ok(sse_until($alice_stream, qr/data: \{"queues": null\}/, 10), '... an event ("every queue") on alice\'s stream');
close $_->{sock} for $ops_stream, $alice_stream;

# ------------------------------------------------------------ /metrics
# the scheduler's sample gives live_ext (jobs, none finished) its counters'
# slot: wait for it, so that /metrics and atomizer.metrics below list the
# same queues
wait_until($node, 'postgres', q{SELECT count(*) FROM atomizer._gauges() WHERE queue = 'live_ext'},
	'1', 'the sample has seen queue live_ext');
($s, $b, $r) = get($ops, '/metrics');
is($s, 200, '/metrics');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, '... in the text format');
my $metrics = $r->{content};
my ($pout, $perr) = ('', '');
IPC::Run::run([ '/usr/bin/python3', '-c', q{
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        print(fam.type, s.name, s.labels.get('queue', ''),
              s.labels.get('state', s.labels.get('outcome', s.labels.get('le', ''))),
              int(s.value) if s.value == int(s.value) else s.value)
} ], '<', \$metrics, '>', \$pout, '2>', \$perr);
is($?, 0, 'python3-prometheus-client parses /metrics') or diag($perr);
my %m;
my %type;
for (split /\n/, $pout)
{
	my ($type, $name, $queue, $state, $v) = split / /;
	$m{"$name/$queue/$state"} = $v;
	$type{$name} = $type;
	is($type, 'gauge', "$name is a gauge") if $name eq 'atomizer_jobs' && $queue eq 'default' && $state eq 'available';
}
# the counters and histograms of atomizer.metrics (shared memory, O(queues))
is($type{atomizer_jobs_finished_total}, 'counter', 'atomizer_jobs_finished_total is a counter');
is($type{atomizer_job_run_seconds_bucket}, 'histogram', 'atomizer_job_run_seconds is a histogram');
my $finished = $node->safe_psql('postgres', q{
	SELECT string_agg(labels->>'queue' || '/' || (labels->>'outcome') || '=' || value, ' '
					  ORDER BY labels->>'queue', labels->>'outcome')
	  FROM atomizer.metrics WHERE name = 'atomizer_jobs_finished_total'});
my $got_finished = join ' ', map {
	my ($k) = split /=/;
	my $v = $m{"atomizer_jobs_finished_total/$k"};
	"$k=" . (defined $v ? $v + 0 : 'missing')
} split / /, $finished;
is($got_finished, $finished, 'atomizer_jobs_finished_total agrees with atomizer.metrics');
is($m{'atomizer_job_run_seconds_count/default/'}, $m{'atomizer_job_run_seconds_bucket/default/+Inf'},
	'a histogram\'s _count is its +Inf bucket');
($s, $b, $r) = get($alice, '/metrics');
like($r->{content}, qr/^# atomizer.metrics not shown: permission denied to read atomizer's metrics$/m,
	'a role that may not read atomizer.metrics gets the gauges and a comment, not an error');
# the gauges are the scheduler's sample (at most a second old): compared
# with queue_stats once the sample has caught up
my $stats_sql = q{
	SELECT string_agg(queue || '/' || s || '=' || n, ' ' ORDER BY queue, s)
	  FROM atomizer.queue_stats,
	       LATERAL (VALUES ('available', available), ('running', running), ('retrying', retrying), ('scheduled', scheduled)) v(s, n)};
my $sql = $node->safe_psql('postgres', $stats_sql);
my $got;
for (1 .. 50)
{
	($s, $b, $r) = get($ops, '/metrics');
	my %g;
	$g{"$1/$2"} = $3 while $r->{content} =~ /^atomizer_jobs\{queue="([^"]+)",state="([^"]+)"\} (\S+)$/mg;
	$got = join ' ', map { my ($q2, $st) = split m{/}; "$q2/$st=" . ($g{"$q2/$st"} // 'missing') }
		map { (split /=/)[0] } split / /, $sql;
	last if $got eq $sql;
	usleep(200_000);
}
is($got, $sql, 'atomizer_jobs agrees with atomizer.queue_stats (within a sample)');
ok(!exists $m{'atomizer_jobs/default/succeeded'}, 'atomizer_jobs has no finished states (atomizer_jobs_finished_total counts them)');
my $sampled = $node->safe_psql('postgres', q{SELECT string_agg(labels->>'queue' || '/' || (labels->>'state') || '=' || value, ' '
	ORDER BY labels->>'queue', labels->>'state') FROM atomizer.metrics WHERE name = 'atomizer_jobs'
	AND labels->>'state' IN ('available', 'running', 'retrying', 'scheduled')});
is($sampled, $sql, 'atomizer.metrics has the same gauges');
ok(exists $m{'atomizer_oldest_available_seconds/held/'}, 'atomizer_oldest_available_seconds per queue');

# ------------------------------------------------------------ the browser
my $shots = "$PostgreSQL::Test::Utils::log_path/dashboard";
mkdir $shots;
my $bdir = "$tmp/browser";
mkdir $bdir;
copy("browser/$_", "$bdir/$_") or die "$_: $!" for qw(package.json package-lock.json dashboard.js);
my ($nout, $nerr) = ('', '');
IPC::Run::run([ 'npm', 'ci', '--no-audit', '--no-fund', '--prefix', $bdir ], '<', \undef,
	'>', \$nout, '2>', \$nerr, IPC::Run::timeout(300));
is($?, 0, 'npm ci installs the pinned puppeteer-core (needs the npm registry)')
  or BAIL_OUT("npm ci failed: $nerr");
# the jobs retried above run and die again: dead jobs for the page to
# retry, in queue held, paused again so that a retried job stays available
$node->safe_psql('postgres', "SELECT atomizer.resume_queue('held')");
wait_until($node, 'postgres', "SELECT count(*) FROM atomizer.jobs WHERE queue = 'held' AND state NOT IN ('dead', 'succeeded', 'cancelled')",
	'0', 'the retried jobs ran');
$node->safe_psql('postgres', "SELECT atomizer.pause_queue('held')");
is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $dead_id"), 'dead', 'the <script> job is dead again');
($s, $b) = get($ops, '/api/dead');
my $in_groups = 0;
$in_groups += $_->{count} for @$b;
is($in_groups, $node->safe_psql('postgres', "SELECT count(*) FROM atomizer.dead_jobs"),
	'each dead job is in one group once (its last failure), also after a retry');
# the page pauses queue mail and runs ops's schedule report
$node->safe_psql('postgres', q{SELECT atomizer.create_queue('mail');
	SET ROLE ops; SELECT atomizer.schedule('report', '*/5 * * * *', 'ok')});
my $fires = $node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE owner = 'ops'");
my ($bout, $berr) = ('', '');
IPC::Run::run([ 'node', "$bdir/dashboard.js", $url, 'ops', 'ops-pw', $shots, $dead_id, 'mail', 'report', 'bulkpage' ],
	'<', \undef, '>', \$bout, '2>', \$berr, IPC::Run::timeout(180));
my $brc = $? >> 8;
for (split /\n/, $bout)
{
	ok(1, "browser: $1") if /^ok (.*)/;
	ok(0, "browser: $1") if /^not ok (.*)/;
}
is($brc, 0, 'the browser run passed') or diag($berr);
is($node->safe_psql('postgres', "SELECT state FROM atomizer.jobs WHERE id = $dead_id"),
	'available', 'the job retried from the page is available');
is($node->safe_psql('postgres', "SELECT paused FROM atomizer.queue WHERE name = 'mail'"),
	't', 'the queue paused from the page is paused');
is($node->safe_psql('postgres', "SELECT max_attempts FROM atomizer.queue WHERE name = 'mail'"),
	'9', 'the setting saved on the page is the queue\'s');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE owner = 'ops'"),
	'>', $fires, 'the schedule run from the page enqueued a job');
is($node->safe_psql('postgres', "SELECT string_agg(state, ' ') FROM atomizer.jobs WHERE queue = 'bulkpage'"),
	'available available available', 'the jobs retried by the page\'s bulk bar are available');
ok(-s "$shots/$_.png", "screenshot $_.png") for qw(overview jobs job dead queues schedules workers bulk overview-live);

# ------------------------------------------------------------ bulk actions, 2,500 jobs
# 2,500 dead jobs in an external queue (claimed, failed for good)
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('bulk', external => true);
	SELECT count(*) FROM atomizer.enqueue_many('task',
		array(SELECT jsonb_build_object('n', i) FROM generate_series(1, 2500) i), queue => 'bulk');
	SELECT atomizer.fail(c.id, 'gave up', retry => false) FROM atomizer.claim('bulk', 1000) c;
	SELECT atomizer.fail(c.id, 'gave up', retry => false) FROM atomizer.claim('bulk', 1000) c;
	SELECT atomizer.fail(c.id, 'gave up', retry => false) FROM atomizer.claim('bulk', 1000) c;
});
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'dead'"),
	'2500', '2,500 dead jobs in queue bulk');
($s, $b) = get($ops, '/api/jobs/count?queue=bulk&state=dead');
is($s, 200, 'count what a filter matches');
is($b->{count}, 2500, '... 2,500');
is($b->{batch}, 1000, '... and the batch size');
($s, $b) = get($alice, '/api/jobs/count?queue=bulk&state=dead');
is($b->{count}, 0, 'alice counts none of them (row-level security)');
($s, $b) = get($ops, '/api/jobs/count?created_after=never');
is($s, 400, 'a bad filter of the count: 400');
($s, $b) = act($ops, '/api/jobs/bulk?action=retry&queue=bulk&state=dead&expected=10');
is($s, 409, 'a bulk retry confirmed for 10 jobs when 2,500 match: 409');
is($b->{count}, 2500, '... saying how many match now');
($s, $b) = request($ops, 'POST', '/api/jobs/bulk?action=retry&queue=bulk&state=dead&expected=2500',
	headers => { Origin => $url });
is($s, 403, 'a bulk action without the CSRF token: 403');
($s, $b) = act($ops, '/api/jobs/bulk?action=delete&queue=bulk&state=dead&expected=2500');
is($s, 400, 'bulk delete is not offered (atomizer has no per-job delete): 400');
like($b->{error}, qr/purge/, '... pointing at purge');
($s, $b) = act($ops, '/api/jobs/bulk?action=explode&queue=bulk&expected=1');
is($s, 400, 'an unknown bulk action: 400');
($s, $b) = act($ops, '/api/jobs/bulk?action=retry&queue=bulk&state=dead');
is($s, 400, 'a bulk action without expected: 400');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'dead'"),
	'2500', 'none of the refused requests retried anything');
($s, $b) = act($ops, '/api/jobs/bulk?action=retry&queue=bulk&state=dead&expected=2499');
is($s, 200, 'a bulk retry of everything the filter matches (confirmed count within a batch)');
is($b->{matched}, 2500, '... matched 2,500');
is($b->{done}, 2500, '... retried 2,500');
is($b->{batches}, 3, '... in 3 batches of at most 1,000');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'available'"),
	'2500', 'all 2,500 are available again');
($s, $b) = act($ops, '/api/jobs/bulk?action=cancel&queue=bulk&path=' . uri('$.n ? (@ <= 10)') . '&expected=10');
is($b->{done}, 10, 'a bulk cancel of the ten the JSON path matches');
is($node->safe_psql('postgres', "SELECT count(*) FROM atomizer.jobs WHERE queue = 'bulk' AND state = 'cancelled'"),
	'10', '... cancelled');
# ------------------------------------------------------------ --read-only, no login
$dash->signal('TERM');
$dash->finish;
is($dash->result(0), 0, 'SIGTERM: exit 0');

($dash, $url) = start_dashboard('--dsn', $base_dsn, '--read-only');
my ($ro) = login('alice', 'alice-pw');
($s, $b) = get($ro, '/api/jobs');
is($s, 200, '--read-only: reading works');
($s, $b) = act($ro, "/api/job/cancel?id=$dead_id");
is($s, 403, '--read-only: an action is 403');
like($b->{error}, qr/read-only/, '... saying why');
($s, $b) = act($ro, '/api/jobs/bulk?action=retry&queue=bulk&expected=0');
is($s, 403, '--read-only: a bulk action is 403');
($s, $b) = get($ro, '/api/jobs/count?queue=bulk');
is($s, 200, '--read-only: counting works');
my ($ro_ops) = login('ops', 'ops-pw');
($s, $b) = act($ro_ops, '/api/queue/settings?name=held&max_attempts=2');
is($s, 403, '--read-only: editing settings is 403, also for an admin');
$dash->signal('TERM');
$dash->finish;

my $me = getpwuid($<);
($dash, $url) = start_dashboard('--dsn', "$base_dsn user=$me");
my $anon = visitor();
($s, $b) = get($anon, '/api/session');
is($s, 200, 'user= in the DSN on loopback: no login');
is($b->{who}{role}, $me, '... every visitor is that role');
$anon->{csrf} = $b->{csrf};
($s, $b) = act($anon, '/api/queue/resume?name=mail');
is($s, 200, '... and acts with the session\'s token');

# a job's dependencies and dependents
$node->safe_psql('postgres', q{
	SELECT atomizer.create_queue('flow');
	SELECT atomizer.pause_queue('flow')});
my $parent = $node->safe_psql('postgres', q{SELECT atomizer.enqueue('ok', queue => 'flow')});
my $child = $node->safe_psql('postgres',
	"SELECT atomizer.enqueue('ok', queue => 'flow', depends_on => ARRAY[$parent])");
($s, $b) = get($anon, "/api/job?id=$child");
is($b->{job}{state}, 'blocked', 'a job waiting for another is blocked');
is_deeply($b->{dependencies}, [ { id => $parent, state => 'available' } ], '... and shows what it waits for');
($s, $b) = get($anon, "/api/job?id=$parent");
is_deeply($b->{dependents}, [ { id => $child, state => 'blocked' } ], 'a job shows what waits for it');
is($b->{dependents_total}, 1, '... and how many');
my $blocked_seen;
for (1 .. 50)
{
	($s, $b) = get($anon, '/api/overview');
	($blocked_seen) = map { $_->{blocked} } grep { $_->{queue} eq 'flow' } @{ $b->{queues} };
	last if ($blocked_seen // 0) == 1;
	usleep(200_000);
}
is($blocked_seen, 1, 'the overview counts the blocked job (from the scheduler\'s sample)');
($s, $b) = get($anon, '/api/jobs?state=blocked');
is_deeply([ map { $_->{id} } @{ $b->{jobs} } ], [ $child ], 'the jobs page filters blocked jobs');
$dash->signal('TERM');
$dash->finish;

$node->stop;
done_testing();
