#!/bin/bash
# bench/workers.sh: throughput and latency of atomizer's background workers,
# against a naive SKIP LOCKED queue, on a throwaway durable cluster.
# Run as root (Debian 12, PostgreSQL 15).  See bench/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3                # the one with psycopg2
JOBS=${JOBS:-50000}
LAT_N=${LAT_N:-500}
REPS=${REPS:-3}
START=$(date +%s)

if [ "$(id -u)" -eq 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi

echo "== build and install"
make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config"
make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config" install

DIR=$(mktemp -d /tmp/atomizer-bench.XXXXXX)
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
	if [ -n "${KEEP_WORK:-}" ]; then echo "kept $DIR (server.log, drain.json, latency.json)"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
# a port no one listens on (the socket lives in $DIR anyway)
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== cluster in $DIR, port $PORT"
cd "$DIR"                          # somewhere user postgres may be
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat <<EOF | as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null
listen_addresses = ''
unix_socket_directories = '$DIR'
port = $PORT
# durable: every commit waits for its WAL flush
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 256MB
max_wal_size = 4GB                 # no checkpoint in the middle of a run
max_worker_processes = 32
shared_preload_libraries = 'atomizer'
atomizer.max_workers = 8
atomizer.worker_idle_timeout = '600s'
EOF
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
trap 'echo "FAILED; end of the server log:" >&2; tail -n 30 "$DIR/server.log" >&2' ERR

PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
"$PGBIN/createdb" -h "$DIR" -p "$PORT" -U postgres bench
"${PSQL[@]}" -d bench -f "$BENCH/setup.sql" >/dev/null

echo "== drain throughput ($JOBS jobs per run, $REPS repetitions)"
$PY "$BENCH/drain.py" --host "$DIR" --port "$PORT" --jobs "$JOBS" --reps "$REPS" \
	--naive-script "$BENCH/naive_drain.sql" --out "$DIR/drain.json"

echo "== latency ($LAT_N jobs)"
$PY "$BENCH/latency.py" --host "$DIR" --port "$PORT" -n "$LAT_N" --out "$DIR/latency.json"

ERRORS=$(grep -c -E '(ERROR|FATAL|PANIC):' "$DIR/server.log" || true)
if [ "$ERRORS" -gt 0 ]; then
	echo "== server log: $ERRORS ERROR/FATAL/PANIC lines, the first ones with their statements:"
	grep -A1 -E '(ERROR|FATAL|PANIC):' "$DIR/server.log" | head -n 20
fi
HEADER="## atomizer workers benchmark

$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src sql 2>/dev/null || echo ' + uncommitted changes in src/ or sql/'), \
$("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), $(nproc) cores; \
durable (fsync, synchronous_commit on), shared_buffers 256MB, atomizer.max_workers 8; \
run took $(( $(date +%s) - START )) s; server log: $ERRORS ERROR/FATAL/PANIC lines."

echo
$PY "$BENCH/report.py" "$DIR/drain.json" "$DIR/latency.json" "$HEADER" | tee "$BENCH/results-workers.md"
echo
echo "(written to bench/results-workers.md)"
