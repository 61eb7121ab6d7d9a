# AtomizerTest: what atomizer's TAP tests share.
#
#   use AtomizerTest;     # exports wait_until and log_lines_mentioning
#   my $node = AtomizerTest::node('name', conf => q{...});   # preloaded, started
#   wait_until($node, $db, $sql, $expected, $name);
#   my @lines = log_lines_mentioning($node, $words, $offset [, qr/also skip/]);
#   my ($h, $log) = AtomizerTest::start_process("$tmp/w1", @command);
#   my $status = AtomizerTest::finish_process($h, $secs);   # undef: timed out
#
# PostgreSQL::Test::Cluster and ::Utils do the rest.
package AtomizerTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use Exporter 'import';

our @EXPORT = qw(wait_until log_lines_mentioning);

# Settings every test server gets (beside Cluster.pm's own).
our $BASE_CONF = q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
};

# A new node with atomizer preloaded (unless preload => 0) and $args{conf}
# appended, started unless start => 0.  Other arguments go to PostgreSQL::Test::Cluster->new
# (install_path => ... for another release).
sub node
{
	my ($name, %args) = @_;
	my $conf = delete $args{conf} // '';
	my $start = delete $args{start} // 1;
	my $preload = delete $args{preload} // 1;
	my $base = $BASE_CONF;
	$base =~ s/^shared_preload_libraries = 'atomizer'\n//m unless $preload;
	my $node = PostgreSQL::Test::Cluster->new($name, %args);
	$node->init;
	$node->append_conf('postgresql.conf', $base . $conf);
	$node->start if $start;
	return $node;
}

# Wait (at most timeout_default) until $sql returns $expected.  A timeout
# fails the test and ends the file: everything after it would only wait
# again.  (poll_query_until also rides out a server that is restarting:
# failed connections are retried.)
sub wait_until
{
	my ($node, $db, $sql, $expected, $name) = @_;
	my $ok = $node->poll_query_until($db, $sql, $expected);
	ok($ok, $name);
	die "stopping: timed out waiting for: $name\n" unless $ok;
	return;
}

# Server log lines, from byte $offset on, that mention $words (as whole
# words) and were written by the server itself: not the statements the test
# sent (log_statement = all), nor their continuation lines, nor the notes of
# changed settings, nor lines matching one of the further patterns given.
sub log_lines_mentioning
{
	my ($node, $words, $offset, @skip) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return grep {
		my $line = $_;
		$line =~ /\b\Q$words\E\b/
		  && $line !~ /\b(?:statement|STATEMENT):/
		  && $line !~ /^\t/
		  && $line !~ /parameter "[^"]+" changed to/
		  && !grep { $line =~ $_ } @skip
	} split /\n/, $log;
}

# Start a command in the background, stdin empty, its stdout in $prefix.out
# and its stderr in $prefix.log; the IPC::Run handle and the log's path.
sub start_process
{
	my ($prefix, @cmd) = @_;
	my $h = IPC::Run::start([@cmd], '<', \undef, '>', "$prefix.out", '2>', "$prefix.log");
	return ($h, "$prefix.log");
}

# Wait (up to $secs, 60 by default) for a background process to exit; its
# exit status, or undef after killing it on timeout.
sub finish_process
{
	my ($h, $secs) = @_;
	my $deadline = time + ($secs // 60);
	while ($h->pumpable && time < $deadline)
	{
		usleep(50_000);
		eval { $h->pump_nb; };
	}
	if ($h->pumpable)
	{
		$h->kill_kill;
		return undef;
	}
	$h->finish;
	return $h->result(0);
}

1;
