#!/bin/bash
# test/deps.sh: make sure everything needed to build and test atomizer is
# installed (PostgreSQL 15 server and headers, pg_regress, pgTAP, the perl
# TAP modules, psycopg2, make, gcc, and bison and flex for building other
# PostgreSQL releases from source with test/build-pg.sh; libmicrohttpd for
# atomizer dashboard, and Chromium, node/npm and prometheus_client for its
# test).
#
# With PG_CONFIG naming another server (e.g. PostgreSQL 18 built by
# test/build-pg.sh), also check that it has what the suites need, and give it
# pgTAP: pgTAP is plain SQL, so Debian's files for 15 serve any release.
#
# Idempotent: when everything is already there it prints one line and exits
# at once, without touching apt.  Otherwise it installs the missing pieces
# with apt-get, which needs root; as another user it explains what to install
# and exits 1.
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
PGXS_SRC=/usr/lib/postgresql/15/lib/pgxs/src

# Print one line per missing piece, "package: what" (nothing when all is
# present).  Only the packages of missing pieces are installed: a machine
# may have some of them from elsewhere (Node.js from NodeSource, say, whose
# nodejs package conflicts with Debian's npm and already brings npm).
missing() {
	local f
	for f in "$PGBIN/postgres" "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/psql"; do
		[ -e "$f" ] || echo "postgresql-15: file $f"
	done
	for f in "$PGBIN/pg_config" \
		/usr/include/postgresql/15/server/postgres.h \
		"$PGXS_SRC/makefiles/pgxs.mk" \
		"$PGXS_SRC/test/regress/pg_regress" \
		"$PGXS_SRC/test/isolation/pg_isolation_regress" \
		"$PGXS_SRC/test/isolation/isolationtester" \
		"$PGXS_SRC/test/perl/PostgreSQL/Test/Cluster.pm"; do
		[ -e "$f" ] || echo "postgresql-server-dev-15: file $f"
	done
	[ -e /usr/share/postgresql/15/extension/pgtap.control ] ||
		echo "postgresql-15-pgtap: pgTAP"
	command -v make >/dev/null 2>&1 || echo "make: command make"
	command -v gcc >/dev/null 2>&1 || echo "gcc: command gcc"
	command -v bison >/dev/null 2>&1 || echo "bison: command bison"
	command -v flex >/dev/null 2>&1 || echo "flex: command flex"
	# atomizer dashboard (libmicrohttpd) and its tests: the page in headless
	# Chromium driven by puppeteer-core (npm ci in t/060_dashboard.pl),
	# /metrics parsed by python3-prometheus-client
	[ -e /usr/include/microhttpd.h ] || echo "libmicrohttpd-dev: file /usr/include/microhttpd.h"
	command -v pkg-config >/dev/null 2>&1 || echo "pkg-config: command pkg-config"
	[ -x /usr/bin/chromium ] || echo "chromium: command /usr/bin/chromium"
	command -v node >/dev/null 2>&1 || echo "nodejs: command node"
	command -v npm >/dev/null 2>&1 || echo "npm: command npm"
	/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 ||
		echo "python3-prometheus-client: python module prometheus_client (for /usr/bin/python3)"
	# The system interpreters, not whatever pyenv/perlbrew puts first in PATH:
	# the Debian packages install their modules for these.
	[ -x /usr/bin/prove ] || echo "perl: command /usr/bin/prove"
	/usr/bin/perl -MIPC::Run -e1 >/dev/null 2>&1 || echo "libipc-run-perl: perl module IPC::Run"
	/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 ||
		echo "python3-psycopg2: python module psycopg2 (for /usr/bin/python3)"
	# The server and the headers we build against must be the same release
	# (the dev package is upgraded alone otherwise and the server lags).
	if command -v dpkg-query >/dev/null 2>&1; then
		local vs vd
		vs=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
		vd=$(dpkg-query -W -f='${Version}' postgresql-server-dev-15 2>/dev/null || true)
		if [ -n "$vs" ] && [ -n "$vd" ] && [ "$vs" != "$vd" ]; then
			echo "postgresql-15: version mismatch: postgresql-15 $vs, postgresql-server-dev-15 $vd"
		fi
	fi
}

# The packages of the missing pieces, once each.  The server and its headers
# go together, so that both end up at the same minor release.
packages_of() {
	printf '%s\n' "$1" | sed 's/:.*//' |
		sed -e 's/^postgresql-15$/postgresql-15 postgresql-server-dev-15/' \
			-e 's/^postgresql-server-dev-15$/postgresql-15 postgresql-server-dev-15/' |
		tr ' ' '\n' | sort -u | tr '\n' ' '
}

# The other server named by PG_CONFIG, if any: what a source build must
# have installed (test/build-pg.sh does), and pgTAP.
other_server() {
	local pgc=${PG_CONFIG:-} pgxs share f
	[ -n "$pgc" ] && [ "$pgc" != "$PGBIN/pg_config" ] || return 0
	if [ ! -x "$pgc" ]; then
		echo "deps: error: PG_CONFIG=$pgc is not an executable pg_config" >&2
		return 1
	fi
	pgxs=$(dirname "$(dirname "$("$pgc" --pgxs)")")
	for f in "$pgxs/test/regress/pg_regress" \
		"$pgxs/test/isolation/pg_isolation_regress" \
		"$pgxs/test/isolation/isolationtester" \
		"$pgxs/test/perl/PostgreSQL/Test/Cluster.pm" \
		"$("$pgc" --pkglibdir)/amcheck.so"; do
		if [ ! -e "$f" ]; then
			echo "deps: error: $pgc's server lacks $f (build it with test/build-pg.sh)" >&2
			return 1
		fi
	done
	share=$("$pgc" --sharedir)/extension
	if [ ! -e "$share/pgtap.control" ]; then
		cp /usr/share/postgresql/15/extension/pgtap* "$share/" || return 1
		echo "deps: installed pgTAP's SQL files into $share"
	fi
}

need=$(missing)
if [ -z "$need" ]; then
	echo "deps: all build and test dependencies are installed"
	other_server
	exit
fi

echo "deps: missing:"
printf '%s\n' "$need" | sed 's/^/  /'

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: error: run as root (e.g. sudo make deps) to install them, or install these Debian packages yourself:" >&2
	echo "  apt-get install $(packages_of "$need")" >&2
	exit 1
fi

packages=$(packages_of "$need")
echo "deps: installing: $packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y $packages

need=$(missing)
if [ -n "$need" ]; then
	echo "deps: error: still missing after apt-get install:" >&2
	printf '%s\n' "$need" | sed 's/^/  /' >&2
	exit 1
fi
echo "deps: all build and test dependencies are installed"
other_server
