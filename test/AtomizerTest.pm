# AtomizerTest: what atomizer's TAP tests share.
#
#   my $node = AtomizerTest::node('name', conf => q{...});   # preloaded, started
#   AtomizerTest::wait_until($node, $db, $sql, $expected, $name);
#   my @lines = AtomizerTest::log_lines_mentioning($node, $word, $offset);
#
# PostgreSQL::Test::Cluster and ::Utils do the rest.
package AtomizerTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Settings every test server gets (beside Cluster.pm's own).
our $BASE_CONF = q{
shared_preload_libraries = 'atomizer'
max_worker_processes = 32
lc_messages = 'C'
log_line_prefix = '%m [%p] %b %d: '
};

# A new node with atomizer preloaded and $args{conf} appended, started
# unless start => 0.  Other arguments go to PostgreSQL::Test::Cluster->new
# (install_path => ... for another release).
sub node
{
	my ($name, %args) = @_;
	my $conf = delete $args{conf} // '';
	my $start = delete $args{start} // 1;
	my $node = PostgreSQL::Test::Cluster->new($name, %args);
	$node->init;
	$node->append_conf('postgresql.conf', $BASE_CONF . $conf);
	$node->start if $start;
	return $node;
}

# Wait (at most timeout_default) until $sql returns $expected.  A timeout
# fails the test and ends the file: everything after it would only wait
# again.
sub wait_until
{
	my ($node, $db, $sql, $expected, $name) = @_;
	my $ok = $node->poll_query_until($db, $sql, $expected);
	ok($ok, $name);
	die "stopping: timed out waiting for: $name\n" unless $ok;
	return;
}

# Server log lines, from byte $offset on, that mention $word and were
# written by the server itself: not the statements the test sent, nor their
# continuation lines.
sub log_lines_mentioning
{
	my ($node, $word, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset);
	return grep {
		/\Q$word\E/
		  && !/\b(?:statement|STATEMENT):/
		  && !/^\t/
		  && !/parameter "[^"]+" changed to/
	} split /\n/, $log;
}

1;
