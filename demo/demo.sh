#!/bin/bash
# demo/demo.sh: a short tour of atomizer, a job queue that lives inside
# PostgreSQL.  Run it with "make demo" (as root, on Debian 12).
#
# It builds and installs the extension, starts a throwaway PostgreSQL 15
# server (unix socket only, removed on exit), and shows jobs that succeed,
# fail and retry with backoff, run later, and die after max_attempts; a
# rollback that leaves no job, a cancel, a cron entry, and an external queue
# served by the "atomizer work" command.  Every table it shows is preceded
# by the query that made it.  PG_CONFIG=... runs it on another server.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=$("$PG_CONFIG" --bindir)
PGVERSION=$("$PG_CONFIG" --version)
section() { printf '\n\n=== %s ===\n\n' "$*"; }

section "Building and installing atomizer"
make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config"
make -C "$ROOT" -s PG_CONFIG="$PGBIN/pg_config" install
echo "installed into $("$PGBIN/pg_config" --pkglibdir)"

# The server runs as "postgres" (it refuses to run as root).
if [ "$(id -u)" -eq 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi

section "Starting a throwaway $PGVERSION server"
DIR=$(mktemp -d /tmp/atomizer-demo.XXXXXX)
[ "$(id -u)" -ne 0 ] || chown postgres: "$DIR"
PORT=$((50000 + RANDOM % 10000))
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
	rm -rf "$DIR"
}
trap cleanup EXIT
cd "$DIR" # somewhere user postgres may be
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
cat <<EOF | as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null
listen_addresses = ''              # no TCP: unix socket in $DIR only
unix_socket_directories = '$DIR'
port = $PORT
shared_preload_libraries = 'atomizer'
EOF
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
echo "server running in $DIR (socket only, port $PORT)"

# sql: run the SQL on stdin in database "demo", with readable tables, each
# statement printed before its result; sqlq: the same without the
# statements (for the demo's own bookkeeping, and repeated queries).
sqlq() {
	{ printf '%s\n' '\pset border 2' '\pset linestyle unicode' \
		'\pset null -' '\pset footer off' '\set ON_ERROR_STOP 1'; cat; } |
		as_pg "$PGBIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d demo "$@"
}
sql() { { echo '\set ECHO queries'; cat; } | sqlq "$@"; }
as_pg "$PGBIN/createdb" -h "$DIR" -p "$PORT" -U postgres demo

section "Installing the extension and creating a queue"
sql <<'SQL'
CREATE EXTENSION atomizer;
-- At most 3 attempts per job, retried after 1 s, 2 s, 4 s... (no jitter).
SELECT atomizer.create_queue('demo', max_attempts => 3, backoff_base => '1 second', backoff_jitter => 0) \g /dev/null
SELECT name, max_attempts, backoff_base, backoff_cap, backoff_jitter FROM atomizer.queue ORDER BY name;
SQL

section "Handlers: plain SQL functions taking the job's payload (jsonb)"
sql <<'SQL'
-- Succeeds, and its jsonb return value is stored as the job's result.
CREATE FUNCTION public.greet(payload jsonb) RETURNS jsonb LANGUAGE sql
AS $$ SELECT jsonb_build_object('greeting', 'hello ' || (payload->>'name')) $$;

-- Always fails: every attempt's error is recorded, then the job is dead.
CREATE FUNCTION public.send_email(payload jsonb) RETURNS void LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'smtp server % refused', payload->>'host'; END $$;

-- Fails on its first call only.  A failed attempt is rolled back, so the
-- call counter is a sequence: nextval() survives the rollback.
CREATE SEQUENCE public.flaky_calls;
CREATE FUNCTION public.flaky(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('public.flaky_calls');
BEGIN
	IF n = 1 THEN RAISE EXCEPTION 'connection reset by peer (call %)', n; END IF;
	RETURN jsonb_build_object('succeeded_on_call', n);
END $$;

-- Writes to a table: the insert commits together with the job's success.
CREATE TABLE public.audit (at timestamptz DEFAULT now(), event text);
CREATE FUNCTION public.record_event(payload jsonb) RETURNS void LANGUAGE sql
AS $$ INSERT INTO public.audit (event) VALUES (payload->>'event') $$;
SQL

section "Enqueueing jobs (each enqueue is part of your transaction)"
# Each statement is shown, followed by the job id(s) it returns.  The jobs
# become visible to the workers when the transaction commits.
sql <<'SQL'
\pset tuples_only on
\pset format unaligned
BEGIN;
SELECT atomizer.enqueue('public.greet', '{"name":"Ada"}', queue => 'demo');
SELECT atomizer.enqueue_many('public.greet', ARRAY['{"name":"Grace"}', '{"name":"Linus"}']::jsonb[], queue => 'demo');
SELECT atomizer.enqueue('public.send_email', '{"host":"mail.example.com"}', queue => 'demo');
SELECT atomizer.enqueue('public.flaky', '{}', queue => 'demo');
SELECT atomizer.enqueue('public.record_event', '{"event":"user signed up"}', queue => 'demo', priority => -1);
SELECT atomizer.enqueue('public.greet', '{"name":"later"}', queue => 'demo', run_at => now() + interval '2 seconds');
\pset tuples_only off
\pset format aligned
\echo
\echo 'atomizer.jobs, before COMMIT:'
SELECT id, handler, payload, state, priority, attempt, max_attempts FROM atomizer.jobs ORDER BY id;
COMMIT;
SQL

section "A rollback leaves no job; a cancel stops a waiting one"
sql <<'SQL'
BEGIN;
SELECT atomizer.enqueue('public.greet', '{"name":"nobody"}', queue => 'demo') AS rolled_back_id \gset
ROLLBACK;
SELECT count(*) AS jobs_with_that_id FROM atomizer.jobs WHERE id = :rolled_back_id;
SELECT atomizer.enqueue('public.greet', '{"name":"too late"}', queue => 'demo', run_at => now() + interval '1 hour') AS waiting_id \gset
SELECT atomizer.cancel(:waiting_id) AS cancelled;
SELECT id, state, finished_at IS NOT NULL AS finished FROM atomizer.jobs WHERE id = :waiting_id;
SQL

section "A cron entry: every 2 seconds, in the same engine"
sql <<'SQL'
SELECT atomizer.schedule('tick', '*/2 * * * * *', 'public.record_event', '{"event":"cron tick"}', queue => 'demo') \g /dev/null
SELECT name, spec, tz, handler, next_run > now() AS next_run_is_ahead FROM atomizer.schedules;
SQL

section "Watching the background workers run them (nobody calls anything)"
# The commit woke a worker: the due jobs ran within milliseconds.  Failed
# jobs come back after their backoff, the delayed one at its run_at.
sql <<'SQL'
\echo 'atomizer.workers and pg_stat_activity:'
SELECT pid IS NOT NULL AS started, database, queue, state, jobs_succeeded, jobs_failed FROM atomizer.workers;
SELECT backend_type, application_name FROM pg_stat_activity WHERE backend_type LIKE 'atomizer%' ORDER BY 1;
SQL
run=sql
for tick in 1 2 3 4 5 6 7 8 9 10; do
	echo "--- after ${tick} s"
	$run <<'SQL'
SELECT id, handler, state, attempt || '/' || max_attempts AS attempt,
       CASE WHEN run_at > now() AND state NOT IN ('succeeded', 'dead', 'cancelled')
            THEN 'in ' || round(extract(epoch FROM run_at - now()), 1) || ' s' END AS next_run,
       left(last_error, 45) AS last_error
  FROM atomizer.jobs ORDER BY id;
SQL
	run=sqlq # the same query each second: printed once
	left=$(sqlq -At <<'SQL'
SELECT count(*) FROM atomizer.jobs WHERE state NOT IN ('succeeded', 'dead', 'cancelled');
SQL
)
	[ "$left" -eq 0 ] && break
	sleep 1
done

section "The cron entry after a few seconds"
sql <<'SQL'
SELECT name, spec, to_char(last_run, 'HH24:MI:SS') AS last_run, to_char(next_run, 'HH24:MI:SS') AS next_run, last_outcome, fires FROM atomizer.schedules;
SELECT atomizer.unschedule('tick') AS unscheduled;
SQL

section "Results"
sql <<'SQL'
\echo 'atomizer.queue_stats (jobs per state):'
SELECT queue, scheduled, available, running, retrying, succeeded, cancelled, dead FROM atomizer.queue_stats ORDER BY queue;
\echo 'results of the jobs that succeeded:'
SELECT id, handler, result FROM atomizer.jobs WHERE state = 'succeeded' ORDER BY id;
\echo 'atomizer.job_errors (one row per failed attempt):'
SELECT job_id, attempt, to_char(failed_at, 'HH24:MI:SS.MS') AS failed_at, sqlstate, message FROM atomizer.job_errors ORDER BY job_id, attempt;
\echo 'the audit table written by record_event:'
SELECT to_char(at, 'HH24:MI:SS') AS at, event FROM public.audit;
\echo 'atomizer.dead_jobs:'
SELECT id, handler, payload, attempt, last_error FROM atomizer.dead_jobs ORDER BY id;
SQL

section "Sending the dead job back with atomizer.retry(id)"
sql <<'SQL'
SELECT id, atomizer.retry(id) AS sent_back FROM atomizer.dead_jobs ORDER BY id;
SELECT id, handler, state, attempt, max_attempts FROM atomizer.jobs WHERE handler = 'public.send_email';
\echo '(a worker picks it up again at once; it will fail 3 more times and be dead again)'
SQL

section "An external queue, served by the atomizer command-line worker"
# Jobs whose work lives outside the database: any program, run once per job
# by "atomizer work" (payload on stdin, stdout is the result).
ATOMIZER="$PGBIN/atomizer"
DSN="host=$DIR port=$PORT user=postgres dbname=demo"
sql <<'SQL'
SELECT atomizer.create_queue('images', external => true) \g /dev/null
SELECT atomizer.enqueue('resize', jsonb_build_object('w', w), queue => 'images') FROM unnest(ARRAY[640, 320, 160]) w \g /dev/null
SELECT queue, external, available, running, succeeded FROM atomizer.queue_stats WHERE queue = 'images';
SQL
printf '%s\n' '#!/bin/sh' 'payload=$(cat)' \
	'echo "{\"job\": $ATOMIZER_JOB_ID, \"resized\": $payload}"' >"$DIR/resize.sh"
chmod 755 "$DIR/resize.sh"
echo '$ atomizer work --queue images --concurrency 2 --drain -- ./resize.sh'
as_pg "$ATOMIZER" work --dsn "$DSN" --queue images --concurrency 2 --drain -- ./resize.sh
sql <<'SQL'
SELECT id, handler, state, result FROM atomizer.jobs WHERE queue = 'images' ORDER BY id;
SQL

section "Summary"
cat <<'EOF'
- Jobs are rows: enqueue() commits or rolls back with your transaction.
- A handler is any function f(payload jsonb); its jsonb return value is the
  job's result, and an error fails the attempt (recorded in job_errors).
- Failed attempts retry with exponential backoff (queue setting backoff_base)
  until max_attempts; then the job is dead until atomizer.retry(id).
- run_at delays a job; priority orders due jobs (lower runs first).
- A rolled-back enqueue leaves no job; cancel(id) stops a waiting one.
- Background workers ran every job by themselves, woken by the commit.
  Without shared_preload_libraries, SELECT atomizer.run_pending() runs due
  jobs in your session instead.
- External queues are for work outside the database: any program, through
  "atomizer work" or claim()/complete() from any language.
EOF
