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
PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap
libipc-run-perl python3-psycopg2 make gcc bison flex
libmicrohttpd-dev pkg-config chromium nodejs npm python3-prometheus-client"

# Print one line per missing piece (nothing when all is present).
missing() {
	local f
	for f in "$PGBIN/postgres" "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBIN/psql" \
		"$PGBIN/pg_config" \
		"$PGXS_SRC/makefiles/pgxs.mk" \
		"$PGXS_SRC/test/regress/pg_regress" \
		"$PGXS_SRC/test/isolation/pg_isolation_regress" \
		"$PGXS_SRC/test/isolation/isolationtester" \
		"$PGXS_SRC/test/perl/PostgreSQL/Test/Cluster.pm" \
		/usr/share/postgresql/15/extension/pgtap.control; do
		[ -e "$f" ] || echo "file $f"
	done
	command -v make >/dev/null 2>&1 || echo "command make"
	command -v gcc >/dev/null 2>&1 || echo "command gcc"
	command -v bison >/dev/null 2>&1 || echo "command bison"
	command -v flex >/dev/null 2>&1 || echo "command flex"
	# atomizer dashboard (libmicrohttpd) and its tests: the page in headless
	# Chromium driven by puppeteer-core (npm ci in t/060_dashboard.pl),
	# /metrics parsed by python3-prometheus-client
	[ -e /usr/include/microhttpd.h ] || echo "file /usr/include/microhttpd.h"
	command -v pkg-config >/dev/null 2>&1 || echo "command pkg-config"
	[ -x /usr/bin/chromium ] || echo "command /usr/bin/chromium"
	command -v node >/dev/null 2>&1 || echo "command node"
	command -v npm >/dev/null 2>&1 || echo "command npm"
	/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 ||
		echo "python module prometheus_client (for /usr/bin/python3)"
	[ -x /usr/bin/prove ] || echo "command /usr/bin/prove"
	# The system interpreters, not whatever pyenv/perlbrew puts first in PATH:
	# the Debian packages install their modules for these.
	/usr/bin/perl -MIPC::Run -e1 >/dev/null 2>&1 || echo "perl module IPC::Run"
	/usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 ||
		echo "python module psycopg2 (for /usr/bin/python3)"
	# The server and the headers we build against must be the same release
	# (the dev package is upgraded alone otherwise and the server lags).
	if command -v dpkg-query >/dev/null 2>&1; then
		local vs vd
		vs=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
		vd=$(dpkg-query -W -f='${Version}' postgresql-server-dev-15 2>/dev/null || true)
		if [ -n "$vs" ] && [ -n "$vd" ] && [ "$vs" != "$vd" ]; then
			echo "version mismatch: postgresql-15 $vs, postgresql-server-dev-15 $vd"
		fi
	fi
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
	echo "  apt-get install $(echo $PACKAGES)" >&2
	exit 1
fi

echo "deps: installing: $(echo $PACKAGES)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# postgresql-15 is named together with the dev package so that both end up
# at the same minor release.
# shellcheck disable=SC2086
apt-get install -y $PACKAGES

need=$(missing)
if [ -n "$need" ]; then
	echo "deps: error: still missing after apt-get install:" >&2
	printf '%s\n' "$need" | sed 's/^/  /' >&2
	exit 1
fi
echo "deps: all build and test dependencies are installed"
other_server
