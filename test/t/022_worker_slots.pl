# Worker slots are shared: with every atomizer.max_workers slot taken, a
# queue that gets due jobs still gets a worker.  An idle worker anywhere
# (here: of another database, kept alive by a long worker_idle_timeout) is
# asked to give its slot up; when every slot is busy, the queue that holds
# the most gives one up after its batch, and the waiting queue's log line
# says once which queue of which database waits.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use AtomizerTest;

my $node = AtomizerTest::node('slots', conf => q{
atomizer.max_workers = 2
atomizer.worker_idle_timeout = '10min'
});
$node->safe_psql('postgres', 'CREATE DATABASE other');
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{
		CREATE EXTENSION atomizer;
		CREATE TABLE ran (tag text, at timestamptz DEFAULT clock_timestamp());
		CREATE FUNCTION note(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_sleep((p->>'sleep')::float8);
			INSERT INTO ran (tag) VALUES (p->>'tag');
		END $$;
	});
}
$node->safe_psql('postgres', q{SELECT atomizer.create_queue('busy', concurrency => 2)});
$node->safe_psql('other', q{SELECT atomizer.alter_queue('default', concurrency => 2)});

# both slots held by idle workers of database postgres
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue_many('note',
		array_fill('{"sleep": 0.05, "tag": "warm-up"}'::jsonb, ARRAY[40]), queue => 'busy')});
wait_until($node, 'postgres', q{SELECT count(*) FROM ran}, '40', 'the warm-up jobs ran');
wait_until($node, 'postgres',
	q{SELECT count(*) FROM atomizer.workers WHERE database = 'postgres' AND state = 'idle'},
	'2', 'two idle workers of database postgres hold both slots');

$node->safe_psql('other', q{SELECT atomizer.enqueue('note', '{"sleep": 0, "tag": "first"}')});
wait_until($node, 'other', q{SELECT count(*) FROM ran WHERE tag = 'first'},
	'1', "another database's job runs while idle workers held every slot");

# every slot busy: the busy queue gives one up to the newcomer
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	SELECT atomizer.enqueue_many('note',
		array_fill('{"sleep": 0.1, "tag": "busy"}'::jsonb, ARRAY[60]), queue => 'busy')});
wait_until($node, 'postgres',
	q{SELECT count(*) FROM atomizer.workers WHERE database = 'postgres' AND state = 'running'},
	'2', 'the busy queue runs on both slots');
$node->safe_psql('other', q{
	SELECT atomizer.enqueue_many('note',
		array_fill('{"sleep": 0.1, "tag": "share"}'::jsonb, ARRAY[6]))});
wait_until($node, 'other', q{SELECT count(*) FROM ran WHERE tag = 'share'},
	'6', "the other database's jobs ran");
my $other_done = $node->safe_psql('other', q{SELECT max(at) FROM ran WHERE tag = 'share'});
wait_until($node, 'postgres', q{SELECT count(*) FROM ran WHERE tag = 'busy'},
	'60', 'the busy queue finished');
is($node->safe_psql('postgres',
	qq{SELECT count(*) > 0 FROM ran WHERE tag = 'busy' AND at > '$other_done'}), 't',
	'the other database got a slot while the busy queue still had jobs waiting');

my @waits = log_lines_mentioning($node,
	q{queue "default" of database "other" has due jobs, but all 2 worker slots are busy}, $offset);
is(scalar @waits, 1, 'the wait for a slot is logged once, naming queue and database');

$node->stop;
done_testing();
