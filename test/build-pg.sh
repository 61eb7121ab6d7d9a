#!/bin/bash
# test/build-pg.sh VERSION: build PostgreSQL VERSION from the source tarball
# in ../shared/vendor beside the clone (or $PG_TARBALL) into a cache directory outside the
# clone, /var/cache/atomizer/pgVERSION (or $PG_CACHE_DIR), together with what
# the test suites need from a source tree: pg_regress, the isolation tester,
# the perl TAP modules and the contrib modules the tests load (amcheck,
# pageinspect, pg_stat_statements, auto_explain).
#
# Prints the path of the installed pg_config on its last line.  Does nothing
# but print it when the cache already holds a complete build, so a machine
# builds each version once.  Needs bison and flex (test/deps.sh installs
# them); about 3 minutes on 2 cores.
set -euo pipefail

VERSION=${1:?usage: test/build-pg.sh VERSION (e.g. 18.6)}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL=${PG_TARBALL:-}
if [ -z "$TARBALL" ]; then
	for dir in "$ROOT/../shared/vendor" /work/shared/vendor; do
		TARBALL=$dir/postgresql-$VERSION.tar.bz2
		[ -r "$TARBALL" ] && break
	done
fi
PREFIX=${PG_CACHE_DIR:-/var/cache/atomizer}/pg$VERSION
STAMP=$PREFIX/.atomizer-complete

# (a cache built before auto_explain was in the list is built again)
if [ -e "$STAMP" ] && [ -x "$PREFIX/bin/pg_config" ] &&
	[ -e "$("$PREFIX/bin/pg_config" --pkglibdir)/auto_explain.so" ]; then
	echo "$PREFIX/bin/pg_config"
	exit 0
fi

if [ ! -r "$TARBALL" ]; then
	echo "build-pg: error: $TARBALL not found" >&2
	exit 1
fi
sums=$(dirname "$TARBALL")/SHA256SUMS
if [ -r "$sums" ]; then
	(cd "$(dirname "$TARBALL")" &&
		grep " $(basename "$TARBALL")\$" SHA256SUMS | sha256sum -c --quiet -) || {
		echo "build-pg: error: checksum of $TARBALL does not match $sums" >&2
		exit 1
	}
fi

for tool in bison flex; do
	command -v $tool >/dev/null 2>&1 || {
		echo "build-pg: error: $tool is needed (apt-get install bison flex)" >&2
		exit 1
	}
done

build=$(mktemp -d "${TMPDIR:-/tmp}/atomizer-pg$VERSION.XXXXXX")
trap 'rm -rf "$build"' EXIT
echo "build-pg: building PostgreSQL $VERSION into $PREFIX (log: $build/build.log)" >&2
start=$(date +%s)
tar -xjf "$TARBALL" -C "$build"
src=$build/postgresql-$VERSION
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
(
	set -e
	cd "$src"
	# System perl: the TAP modules need IPC::Run from Debian's packages.
	PERL=/usr/bin/perl ./configure --prefix="$PREFIX" --enable-tap-tests \
		--without-icu --without-readline
	make -j"$(nproc)" -s
	make -s install
	make -s -j"$(nproc)" -C contrib/amcheck
	make -s -C src/test/isolation install
	make -s -C src/test/perl install
	make -s -C src/test/regress install
	make -s -C contrib/amcheck install
	make -s -C contrib/pageinspect install
	make -s -C contrib/pg_stat_statements install
	make -s -C contrib/auto_explain install
) >"$build/build.log" 2>&1 || {
	echo "build-pg: error: the build failed; last lines of the log:" >&2
	tail -n 40 "$build/build.log" >&2
	rm -rf "$PREFIX"
	exit 1
}
touch "$STAMP"
echo "build-pg: PostgreSQL $VERSION built in $(($(date +%s) - start)) s" >&2
echo "$PREFIX/bin/pg_config"
