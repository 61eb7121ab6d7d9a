# The version is written in several places: atomizer.control's
# default_version (what the library is built for), META.json (PGXN),
# debian/changelog and CHANGELOG.md.  They must agree, META.json must have
# what the PGXN meta spec 1.0.0 requires, and every version since 0.1.0
# must be reachable through upgrade scripts.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;

# test/run copies those files here; by hand, the clone's top directory
my $root = $ENV{ATOMIZER_SOURCE} // '..';
my ($version) = slurp_file("$root/atomizer.control") =~ /^default_version = '([^']+)'/m;
ok(defined $version, "atomizer.control names the default version ($version)");

my $meta = decode_json(slurp_file("$root/META.json"));
for my $key (qw(name abstract version maintainer license provides meta-spec))
{
	ok(exists $meta->{$key}, "META.json has $key");
}
is($meta->{name}, 'atomizer', 'META.json name');
is($meta->{version}, $version, 'META.json version is the default version');
like($meta->{version}, qr/^\d+\.\d+\.\d+$/, 'a semantic version, as PGXN requires');
is($meta->{'meta-spec'}{version}, '1.0.0', 'meta-spec 1.0.0');
ok((grep { $_ eq $meta->{license} } qw(postgresql bsd mit apache_2_0 gpl_3)),
	'a license name the spec knows');
is($meta->{provides}{atomizer}{version}, $version, 'provides atomizer at that version');
ok(-e "$root/$meta->{provides}{atomizer}{file}", 'the file it names exists');
is(ref $meta->{maintainer}, 'ARRAY', 'maintainer is a list');

my ($deb) = slurp_file("$root/debian/changelog") =~ /^atomizer \(([^)]+)\)/;
is($deb, $version, 'debian/changelog starts at the default version');
like(slurp_file("$root/CHANGELOG.md"), qr/^## \Q$version\E\b/m, 'CHANGELOG.md has a section for it');

# 0.1.0 to the default version through upgrade scripts
my %next;
for my $f (glob "$root/sql/atomizer--*--*.sql")
{
	my ($from, $to) = $f =~ /atomizer--([^-]+)--([^-]+)\.sql$/;
	$next{$from} = $to;
}
my ($v, $steps) = ('0.1.0', 0);
$v = $next{$v}, $steps++ while exists $next{$v} && $steps < 100;
is($v, $version, "upgrade scripts lead from 0.1.0 to $version ($steps step(s))");
ok(-e "$root/sql/atomizer--0.1.0.sql", 'the frozen 0.1.0 install script is there');

done_testing();
