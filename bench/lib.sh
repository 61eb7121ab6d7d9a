# bench/lib.sh: sourced by bench/run and bench/workers.sh.  Builds and
# installs the extension, starts a throwaway durable PostgreSQL cluster (15,
# or the server of PG_CONFIG) as
# user postgres (socket in a mktemp directory, no TCP, removed on exit),
# creates database "bench" and loads bench/setup.sql into it.
# Sets ROOT BENCH PGBIN PY DIR PORT PSQL START; defines as_pg.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
# PG_CONFIG=/path/to/pg_config benchmarks another server (default: 15)
PGBIN=$(dirname "${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}")
PY=/usr/bin/python3                # the one with psycopg2
START=$(date +%s)

if [ "$(id -u)" -eq 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi

bench_build() {
	echo "== build and install"
	# what was built (src/ may change while the benchmark runs)
	BUILT="commit $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src sql 2>/dev/null || echo ' + uncommitted changes in src/ or sql/')"
	make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config" ATOMIZER_CPPFLAGS="${ATOMIZER_CPPFLAGS:-}"
	make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config" ATOMIZER_CPPFLAGS="${ATOMIZER_CPPFLAGS:-}" install
}

bench_cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
	if [ -n "${KEEP_WORK:-}" ]; then echo "kept $DIR (server.log, JSON figures)"; else rm -rf "$DIR"; fi
}

# bench_cluster [extra postgresql.conf lines]
bench_cluster() {
	DIR=$(mktemp -d /tmp/atomizer-bench.XXXXXX)
	[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
	trap bench_cleanup EXIT
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
checkpoint_timeout = 30min
max_worker_processes = 32
max_connections = 100
shared_preload_libraries = 'atomizer'
atomizer.max_workers = 8
atomizer.worker_idle_timeout = '600s'
${1:-}
EOF
	as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
	trap 'echo "FAILED; end of the server log:" >&2; tail -n 30 "$DIR/server.log" >&2' ERR
	PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
	"$PGBIN/createdb" -h "$DIR" -p "$PORT" -U postgres bench
	"${PSQL[@]}" -d bench -f "$BENCH/setup.sql" >/dev/null
}

# the number of ERROR/FATAL/PANIC lines of the server log, in $ERRORS;
# prints the first ones
bench_log_errors() {
	ERRORS=$(grep -c -E '(ERROR|FATAL|PANIC):' "$DIR/server.log" || true)
	if [ "$ERRORS" -gt 0 ]; then
		echo "== server log: $ERRORS ERROR/FATAL/PANIC lines, the first ones with their statements:"
		grep -A1 -E '(ERROR|FATAL|PANIC):' "$DIR/server.log" | head -n 20
	fi
}

bench_header_facts() {
	echo "$(date -u '+%Y-%m-%d %H:%M UTC'), built from ${BUILT:-?}, \
$("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /'), $(nproc) cores"
}
