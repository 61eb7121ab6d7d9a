#!/bin/bash
# test/build-deb.sh OUTDIR: build the Debian packages of atomizer
# (postgresql-NN-atomizer, one per PostgreSQL version in debian/pgversions
# whose postgresql-server-dev-NN is installed) with dpkg-buildpackage, in a
# copy of the tree so that the clone stays as it is, and put the .deb files
# into OUTDIR.  Installs the packaging tools first when run as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:?usage: test/build-deb.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v dpkg-buildpackage >/dev/null || ! command -v pg_buildext >/dev/null ||
	! dpkg-query -W -f='${Status}' debhelper 2>/dev/null | grep -q 'ok installed'; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "build-deb: error: install dpkg-dev, debhelper, postgresql-server-dev-all and libpq-dev (as root)" >&2
		exit 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev debhelper \
		postgresql-server-dev-all libpq-dev >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/atomizer-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/atomizer"
tar -C "$ROOT" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude=dist \
	--exclude=.build-server -cf - . | tar -C "$work/atomizer" -xf -
(
	cd "$work/atomizer"
	make -s clean >/dev/null 2>&1 || true
	# debian/control lists the versions installed here
	pg_buildext updatecontrol
	dpkg-buildpackage -us -uc -b
) >"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "build-deb: error: dpkg-buildpackage failed" >&2
	exit 1
}
cp "$work"/*.deb "$OUT/"
ls -1 "$OUT"/*.deb
