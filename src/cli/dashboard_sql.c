/*-------------------------------------------------------------------------
 *
 * dashboard_sql.c
 *	  Every statement "atomizer dashboard" sends, in one place, so that
 *	  changing where a figure comes from is one edit here.
 *
 *	  Each read returns one row with one column: the JSON text the API
 *	  answers with, made by PostgreSQL (json_agg, json_build_object), so
 *	  that every string from the database is escaped by the server's own
 *	  JSON output and the C code only passes it on.  Every value from a
 *	  request is a parameter ($1, $2, ...) of PQexecParams; no SQL text is
 *	  ever built from a request, and no identifier is interpolated.
 *
 *	  Cost: the overview and /metrics cost O(queues), never a count of the
 *	  job history: the unfinished jobs' states come from the scheduler's
 *	  sample in shared memory (atomizer._gauges()), what finished from the
 *	  shared counters (atomizer._metrics(), atomizer._stats_unflushed())
 *	  and the rollups (atomizer.stats_minute for the last hour, 60 rows
 *	  per queue; atomizer.stats_hour for the last day, 24 rows per queue).  A role that may not read those
 *	  (atomizer._metrics_visible()) sees counts of its own unfinished jobs,
 *	  from the hot table atomizer.job only (row-level security), and no
 *	  finished figures.
 *
 *	  src/cli/dashboard_sql.c
 *
 *-------------------------------------------------------------------------
 */
#include "dashboard.h"

/* who the session is: role, and whether it is a member of atomizer_admin */
const char *const DASHBOARD_SQL_WHOAMI =
"SELECT json_build_object("
"  'role', current_user,"
"  'database', current_database(),"
"  'admin', pg_has_role('atomizer_admin', 'USAGE'))";

/*
 * Per queue: the unfinished jobs per state and the oldest due job's run_at,
 * from the scheduler's sample for roles that may read the shared figures,
 * else counted from the role's own rows of the hot table (never the
 * history).  "vis" says which.  Every queue has a row.
 */
#define UNFINISHED_CTE \
"WITH vis AS (SELECT atomizer._metrics_visible() AS shared)," \
" unfinished AS (" \
"  SELECT q.name AS queue, coalesce(g.scheduled, 0) AS scheduled," \
"         coalesce(g.available, 0) AS available, coalesce(g.running, 0) AS running," \
"         coalesce(g.retrying, 0) AS retrying, g.oldest_available, g.sampled_at," \
"         coalesce(g.blocked, 0) AS blocked" \
"    FROM atomizer.queue q LEFT JOIN atomizer._gauges() g ON g.queue = q.name" \
"   WHERE (SELECT shared FROM vis)" \
"  UNION ALL" \
"  SELECT q.name," \
"         count(j.id) FILTER (WHERE j.state NOT IN ('running', 'blocked') AND j.run_at > now() AND j.attempt = 0)," \
"         count(j.id) FILTER (WHERE j.state NOT IN ('running', 'blocked') AND j.run_at <= now())," \
"         count(j.id) FILTER (WHERE j.state = 'running')," \
"         count(j.id) FILTER (WHERE j.state NOT IN ('running', 'blocked') AND j.run_at > now() AND j.attempt > 0)," \
"         min(j.run_at) FILTER (WHERE j.state NOT IN ('running', 'blocked') AND j.run_at <= now()), now()," \
"         count(j.id) FILTER (WHERE j.state = 'blocked')" \
"    FROM atomizer.queue q LEFT JOIN atomizer.job j ON j.queue = q.name" \
"   WHERE NOT (SELECT shared FROM vis)" \
"   GROUP BY q.name)"

/*
 * The overview, per queue: the unfinished jobs per state (UNFINISHED_CTE);
 * what finished since the server started (the counters), in the last hour
 * (the minutes' rollups) and the last day (the current hour's and the 23
 * before it), each plus the minute not yet written:
 * outcomes, throughput per minute, the failure rate (failed and dead
 * attempts over all finished attempts), and the wait and run time
 * p50/p95/p99 from the histograms' buckets; busy and idle workers.
 */
#define WINDOW_FIGURES(w) \
"json_build_object(" \
"  'succeeded', " w ".succeeded, 'failed', " w ".failed, 'dead', " w ".dead," \
"  'cancelled', " w ".cancelled," \
"  'per_minute', round(" w ".succeeded / " w ".minutes, 3)," \
"  'failure_rate', round((" w ".failed + " w ".dead)::numeric" \
"                  / nullif(" w ".succeeded + " w ".failed + " w ".dead, 0), 4)," \
"  'wait_p50', atomizer._histogram_quantile(" w ".wait, 0.5)," \
"  'wait_p95', atomizer._histogram_quantile(" w ".wait, 0.95)," \
"  'wait_p99', atomizer._histogram_quantile(" w ".wait, 0.99)," \
"  'run_p50', atomizer._histogram_quantile(" w ".run, 0.5)," \
"  'run_p95', atomizer._histogram_quantile(" w ".run, 0.95)," \
"  'run_p99', atomizer._histogram_quantile(" w ".run, 0.99))"

const char *const DASHBOARD_SQL_OVERVIEW =
UNFINISHED_CTE ","
" hour AS ("
"  SELECT r.queue, sum(r.succeeded) AS succeeded, sum(r.failed) AS failed,"
"         sum(r.dead) AS dead, sum(r.cancelled) AS cancelled,"
"         atomizer._sum_buckets(r.wait_buckets) AS wait,"
"         atomizer._sum_buckets(r.run_buckets) AS run"
"    FROM (SELECT queue, succeeded, failed, dead, cancelled, wait_buckets, run_buckets"
"            FROM atomizer.stats_minute WHERE minute > now() - interval '1 hour'"
"          UNION ALL"
"          SELECT queue, succeeded, failed, dead, cancelled, wait_buckets, run_buckets"
"            FROM atomizer._stats_unflushed()) r"
"   GROUP BY r.queue),"
" day AS ("
"  SELECT r.queue, sum(r.succeeded) AS succeeded, sum(r.failed) AS failed,"
"         sum(r.dead) AS dead, sum(r.cancelled) AS cancelled,"
"         atomizer._sum_buckets(r.wait_buckets) AS wait,"
"         atomizer._sum_buckets(r.run_buckets) AS run"
"    FROM (SELECT queue, succeeded, failed, dead, cancelled, wait_buckets, run_buckets"
"            FROM atomizer.stats_hour WHERE hour > now() - interval '1 day'"
"          UNION ALL"
"          SELECT queue, succeeded, failed, dead, cancelled, wait_buckets, run_buckets"
"            FROM atomizer._stats_unflushed()) r"
"   GROUP BY r.queue),"
" total AS ("
"  SELECT m.queue,"
"         sum(m.value) FILTER (WHERE m.outcome = 'succeeded')::bigint AS succeeded,"
"         sum(m.value) FILTER (WHERE m.outcome = 'failed')::bigint AS failed,"
"         sum(m.value) FILTER (WHERE m.outcome = 'dead')::bigint AS dead,"
"         sum(m.value) FILTER (WHERE m.outcome = 'cancelled')::bigint AS cancelled"
"    FROM atomizer._metrics() m"
"   WHERE (SELECT shared FROM vis) AND m.metric = 'atomizer_jobs_finished_total'"
"   GROUP BY m.queue),"
" procs AS ("
"  SELECT queue, count(*) FILTER (WHERE state = 'running') AS busy,"
"         count(*) FILTER (WHERE state <> 'running') AS idle"
"    FROM atomizer.workers WHERE database = current_database() GROUP BY queue)"
"SELECT json_build_object("
"  'shared', (SELECT shared FROM vis),"
"  'queues', (SELECT coalesce(json_agg(json_build_object("
"                'queue', q.name, 'paused', q.paused, 'external', q.external,"
"                'concurrency', q.concurrency,"
"                'scheduled', u.scheduled, 'available', u.available,"
"                'running', u.running, 'retrying', u.retrying, 'blocked', u.blocked,"
"                'oldest_available', u.oldest_available, 'sampled_at', u.sampled_at,"
"                'total', CASE WHEN (SELECT shared FROM vis) THEN json_build_object("
"                   'succeeded', coalesce(t.succeeded, 0), 'failed', coalesce(t.failed, 0),"
"                   'dead', coalesce(t.dead, 0), 'cancelled', coalesce(t.cancelled, 0)) END,"
"                'hour', CASE WHEN (SELECT shared FROM vis) THEN " WINDOW_FIGURES("h") " END,"
"                'day', CASE WHEN (SELECT shared FROM vis) THEN " WINDOW_FIGURES("d") " END,"
"                'workers_busy', coalesce(p.busy, 0), 'workers_idle', coalesce(p.idle, 0))"
"              ORDER BY q.name), '[]')"
"               FROM atomizer.queue q"
"               JOIN unfinished u ON u.queue = q.name"
"               LEFT JOIN total t ON t.queue = q.name"
"               LEFT JOIN hour h0 ON h0.queue = q.name"
"               LEFT JOIN day d0 ON d0.queue = q.name"
"               CROSS JOIN LATERAL (SELECT coalesce(h0.succeeded, 0) AS succeeded,"
"                          coalesce(h0.failed, 0) AS failed, coalesce(h0.dead, 0) AS dead,"
"                          coalesce(h0.cancelled, 0) AS cancelled, 60 AS minutes,"
"                          h0.wait, h0.run) h"
"               CROSS JOIN LATERAL (SELECT coalesce(d0.succeeded, 0) AS succeeded,"
"                          coalesce(d0.failed, 0) AS failed, coalesce(d0.dead, 0) AS dead,"
"                          coalesce(d0.cancelled, 0) AS cancelled, 1440 AS minutes,"
"                          d0.wait, d0.run) d"
"               LEFT JOIN procs p ON p.queue = q.name),"
"  'workers', (SELECT coalesce(json_agg(json_build_object("
"                 'queue', w.queue, 'state', w.state, 'count', w.n)"
"                 ORDER BY w.queue, w.state), '[]')"
"                FROM (SELECT queue, state, count(*) AS n"
"                        FROM atomizer.workers"
"                       WHERE database = current_database()"
"                       GROUP BY queue, state) w),"
"  'now', now())";

/*
 * The filters of GET /api/jobs, shared by the jobs list, its count and the
 * bulk actions, so that a bulk action acts on exactly what the list shows.
 * Parameters: $3 queue, $4 state, $5 handler, $6 id, $7 owner, $8 error
 * text (substring of any attempt's message, case-insensitive), $9 payload
 * containment (jsonb @>), $10 result containment, $11 created_after,
 * $12 created_before, $13 finished_after, $14 finished_before
 * (timestamptz, parsed by PostgreSQL: a bad one is a 22xxx error), $15 a
 * jsonpath that the payload must match (jsonb_path_exists; a bad path is
 * a syntax error at planning).  $1: only ids below it (keyset).
 * A NULL parameter is no filter.
 */
#define JOBS_FILTER \
"   WHERE ($1::bigint IS NULL OR j.id < $1::bigint)" \
"     AND ($3::text IS NULL OR j.queue = $3::text)" \
"     AND ($4::text IS NULL OR j.state = $4::text)" \
"     AND ($5::text IS NULL OR j.handler = $5::text)" \
"     AND ($6::bigint IS NULL OR j.id = $6::bigint)" \
"     AND ($7::text IS NULL OR j.owner = $7::text::name)" \
"     AND ($8::text IS NULL OR strpos(lower(j.last_error), lower($8::text)) > 0" \
"          OR EXISTS (SELECT FROM atomizer.job_errors e WHERE e.job_id = j.id" \
"                      AND strpos(lower(e.message), lower($8::text)) > 0))" \
"     AND ($9::jsonb IS NULL OR j.payload @> $9::jsonb)" \
"     AND ($10::jsonb IS NULL OR j.result @> $10::jsonb)" \
"     AND ($11::timestamptz IS NULL OR j.created_at >= $11::timestamptz)" \
"     AND ($12::timestamptz IS NULL OR j.created_at < $12::timestamptz)" \
"     AND ($13::timestamptz IS NULL OR j.finished_at >= $13::timestamptz)" \
"     AND ($14::timestamptz IS NULL OR j.finished_at < $14::timestamptz)" \
"     AND ($15::jsonpath IS NULL OR jsonb_path_exists(j.payload, $15::jsonpath))"

/*
 * Jobs, filtered (JOBS_FILTER), newest first, keyset paging on id ($1:
 * ids below it), $2 rows.  The row after the page tells whether there is
 * a next page.
 */
const char *const DASHBOARD_SQL_JOBS =
"WITH page AS ("
"  SELECT j.id, j.queue, j.handler, j.state, j.priority, j.run_at,"
"         j.attempt, j.max_attempts, j.owner, j.created_at, j.started_at,"
"         j.finished_at, j.last_error, j.payload, j.tags"
"    FROM atomizer.jobs j"
JOBS_FILTER
"   ORDER BY j.id DESC"
"   LIMIT $2::int + 1)"
"SELECT json_build_object("
"  'jobs', coalesce((SELECT json_agg(p ORDER BY p.id DESC)"
"                      FROM (SELECT * FROM page ORDER BY id DESC LIMIT $2::int) p), '[]'),"
"  'next', CASE WHEN (SELECT count(*) FROM page) > $2::int"
"               THEN (SELECT min(id) FROM (SELECT id FROM page ORDER BY id DESC"
"                                           LIMIT $2::int) l) END)";

/*
 * How many jobs the filters match ($1 NULL), and the bulk actions' batch
 * size ($2), which is also how far the count confirmed by a person may be
 * from the count when the action starts.  O(matches): only on request,
 * never on a refresh.
 */
const char *const DASHBOARD_SQL_JOBS_COUNT =
"SELECT json_build_object('count', count(*), 'batch', $2::int)"
"  FROM atomizer.jobs j"
JOBS_FILTER;

/*
 * One batch of a bulk action: the next $2 matching ids below $1 (keyset,
 * newest first, so a job the function refuses is not picked again), each
 * passed to atomizer's function in this statement's own transaction.
 */
#define JOBS_BULK_BATCH(call) \
"WITH batch AS (" \
"  SELECT j.id FROM atomizer.jobs j" \
JOBS_FILTER \
"   ORDER BY j.id DESC" \
"   LIMIT $2::int)" \
"SELECT json_build_object(" \
"  'seen', (SELECT count(*) FROM batch)," \
"  'done', (SELECT count(*) FILTER (WHERE " call ") FROM batch b)," \
"  'last_id', (SELECT min(id) FROM batch))"

const char *const DASHBOARD_SQL_JOBS_RETRY_BATCH =
JOBS_BULK_BATCH("atomizer.retry(job_id => b.id)");
const char *const DASHBOARD_SQL_JOBS_CANCEL_BATCH =
JOBS_BULK_BATCH("atomizer.cancel(job_id => b.id)");

/*
 * one job: the row, every failed attempt, its timeline, the jobs it waits
 * for and (the first 500 of) the jobs that wait for it ($1: id)
 */
const char *const DASHBOARD_SQL_JOB =
"SELECT CASE WHEN j.id IS NULL THEN NULL ELSE json_build_object("
"  'job', to_jsonb(j),"
"  'errors', (SELECT coalesce(json_agg(e ORDER BY e.attempt, e.failed_at), '[]')"
"               FROM atomizer.job_errors e WHERE e.job_id = j.id),"
"  'dependencies', (SELECT coalesce(json_agg(json_build_object('id', d.depends_on,"
"                     'state', d.state) ORDER BY d.depends_on), '[]')"
"                     FROM atomizer.job_dependencies d WHERE d.job_id = j.id),"
"  'dependents', (SELECT coalesce(json_agg(json_build_object('id', c.id, 'state', c.state)"
"                   ORDER BY c.id), '[]')"
"                   FROM (SELECT c.id, c.state FROM atomizer.job_dependency d"
"                         JOIN atomizer.jobs c ON c.id = d.job_id"
"                         WHERE d.depends_on = j.id ORDER BY c.id LIMIT 500) c),"
"  'dependents_total', (SELECT count(*) FROM atomizer.job_dependency d"
"                       WHERE d.depends_on = j.id),"
"  'timeline', (SELECT json_agg(t ORDER BY t.at NULLS LAST, t.ord)"
"                 FROM (SELECT 1 AS ord, 'enqueued' AS event, j.created_at AS at, NULL::int AS attempt"
"                       UNION ALL"
"                       SELECT 2, 'attempt ' || e.attempt || ' failed', e.failed_at, e.attempt"
"                         FROM atomizer.job_errors e WHERE e.job_id = j.id"
"                       UNION ALL"
"                       SELECT 3, 'started', j.started_at, j.attempt WHERE j.started_at IS NOT NULL"
"                       UNION ALL"
"                       SELECT 4, j.state, j.finished_at, j.attempt WHERE j.finished_at IS NOT NULL"
"                       UNION ALL"
"                       SELECT 5, 'next run', j.run_at, NULL"
"                        WHERE j.state IN ('scheduled', 'available', 'retrying')) t))"
"  END"
"  FROM (SELECT 1) one LEFT JOIN atomizer.jobs j ON j.id = $1::bigint";

const char *const DASHBOARD_SQL_RETRY =
"SELECT json_build_object('ok', atomizer.retry(job_id => $1::bigint))";
const char *const DASHBOARD_SQL_CANCEL =
"SELECT json_build_object('ok', atomizer.cancel(job_id => $1::bigint))";
/* $1 older_than (interval or NULL), $2 queue (or NULL) */
const char *const DASHBOARD_SQL_PURGE =
"SELECT json_build_object('purged', atomizer.purge(older_than => $1::interval,"
"                                                  queue => $2::text))";

/*
 * Dead letters grouped by queue, handler, and the SQLSTATE and message of
 * the last failure (a job retried after it was dead has failures of earlier
 * rounds with the same attempt numbers).  (O(dead jobs): the dead set is kept until retried or
 * purged, and job_history_dead_idx serves it.)
 */
const char *const DASHBOARD_SQL_DEAD_GROUPS =
"SELECT coalesce(json_agg(g ORDER BY g.count DESC, g.queue, g.handler), '[]')"
"  FROM (SELECT d.queue, d.handler, e.sqlstate,"
"               coalesce(e.message, d.last_error) AS message,"
"               count(*) AS count, max(d.finished_at) AS last_at,"
"               max(d.id) AS last_id"
"          FROM atomizer.dead_jobs d"
"          LEFT JOIN LATERAL (SELECT e.sqlstate, e.message"
"                               FROM atomizer.job_errors e WHERE e.job_id = d.id"
"                              ORDER BY e.failed_at DESC LIMIT 1) e ON true"
"         GROUP BY 1, 2, 3, 4) g";

/*
 * One batch of a dead-letter group: the next ids below $5 (keyset, so a
 * job retry() refuses is not picked again), retried in this statement's
 * own transaction.  $1 queue, $2 handler, $3 sqlstate, $4 message (NULL
 * matches NULL), $5 before id, $6 batch size.
 */
const char *const DASHBOARD_SQL_DEAD_RETRY_BATCH =
"WITH batch AS ("
"  SELECT d.id"
"    FROM atomizer.dead_jobs d"
"    LEFT JOIN LATERAL (SELECT e.sqlstate, e.message"
"                         FROM atomizer.job_errors e WHERE e.job_id = d.id"
"                        ORDER BY e.failed_at DESC LIMIT 1) e ON true"
"   WHERE d.queue = $1::text AND d.handler = $2::text"
"     AND e.sqlstate IS NOT DISTINCT FROM $3::text"
"     AND coalesce(e.message, d.last_error) IS NOT DISTINCT FROM $4::text"
"     AND ($5::bigint IS NULL OR d.id < $5::bigint)"
"   ORDER BY d.id DESC"
"   LIMIT $6::int)"
"SELECT json_build_object("
"  'seen', (SELECT count(*) FROM batch),"
"  'retried', (SELECT count(*) FILTER (WHERE atomizer.retry(job_id => b.id))"
"                FROM batch b),"
"  'last_id', (SELECT min(id) FROM batch))";

/* queues, their settings and their handler limits */
const char *const DASHBOARD_SQL_QUEUES =
"SELECT coalesce(json_agg(json_build_object("
"  'name', q.name, 'paused', q.paused, 'external', q.external,"
"  'concurrency', q.concurrency, 'max_attempts', q.max_attempts,"
"  'backoff_base', q.backoff_base, 'backoff_cap', q.backoff_cap,"
"  'backoff_jitter', q.backoff_jitter,"
"  'timeout', q.timeout, 'retention', q.retention,"
"  'rate_limit', q.rate_limit, 'rate_period', q.rate_period,"
"  'rate_partition', q.rate_partition, 'before_run', q.before_run,"
"  'on_success', q.on_success, 'on_failure', q.on_failure,"
"  'on_dead', q.on_dead,"
"  'handler_limits', (SELECT coalesce(json_agg(json_build_object("
"       'handler', l.handler, 'concurrency', l.concurrency) ORDER BY l.handler), '[]')"
"     FROM atomizer.handler_limit l WHERE l.queue = q.name)) ORDER BY q.name), '[]')"
"  FROM atomizer.queue q";
const char *const DASHBOARD_SQL_PAUSE =
"SELECT json_build_object('ok', true) FROM (SELECT atomizer.pause_queue(name => $1::text)) x";
const char *const DASHBOARD_SQL_RESUME =
"SELECT json_build_object('ok', true) FROM (SELECT atomizer.resume_queue(name => $1::text)) x";

/*
 * A queue's settings through atomizer.alter_queue(): $1 the queue, then
 * one parameter per setting, in the order of dashboard_api.c's
 * queue_settings[] (NULL: unchanged, as alter_queue() takes it).  PostgreSQL
 * parses each value (a bad interval or number is a 22xxx error: a 400) and
 * alter_queue() checks it.  A new setting is one line here and one there.
 */
const char *const DASHBOARD_SQL_QUEUE_SETTINGS =
"SELECT json_build_object('ok', true) FROM (SELECT atomizer.alter_queue("
"  name => $1::text,"
"  concurrency => $2::int,"
"  max_attempts => $3::int,"
"  backoff_base => $4::interval,"
"  backoff_cap => $5::interval,"
"  backoff_jitter => $6::float8,"
"  timeout => $7::interval,"
"  retention => $8::interval,"
"  rate_limit => $9::int,"
"  rate_period => $10::interval,"
"  rate_partition => $11::text,"
"  before_run => $12::text,"
"  on_success => $13::text,"
"  on_failure => $14::text,"
"  on_dead => $15::text)) x";

/*
 * Schedules: the spec in plain words (atomizer.cron_describe), the next
 * five fire times (atomizer.cron_next, chained), and the last five fires
 * with their outcome (job_schedule_idx and job_history_schedule_idx: five
 * rows, not a history scan).
 */
const char *const DASHBOARD_SQL_SCHEDULES =
"SELECT coalesce(json_agg(json_build_object("
"  'name', s.name, 'spec', s.spec, 'in_words', atomizer.cron_describe(s.spec),"
"  'tz', s.tz, 'handler', s.handler,"
"  'queue', s.queue, 'owner', s.owner, 'enabled', s.enabled,"
"  'next_run', s.next_run, 'last_run', s.last_run,"
"  'last_job_id', s.last_job_id, 'last_outcome', s.last_outcome,"
"  'last_error', s.last_error, 'fires', s.fires, 'skipped', s.skipped,"
"  'next_five', (WITH RECURSIVE f(n, at) AS ("
"                  SELECT 1, atomizer.cron_next(s.spec, now(), s.tz)"
"                  UNION ALL"
"                  SELECT n + 1, atomizer.cron_next(s.spec, f.at, s.tz)"
"                    FROM f WHERE n < 5 AND f.at IS NOT NULL)"
"                SELECT json_agg(f.at ORDER BY f.n) FROM f),"
"  'recent', (SELECT coalesce(json_agg(json_build_object("
"                'id', r.id, 'state', r.state, 'created_at', r.created_at,"
"                'finished_at', r.finished_at, 'last_error', r.last_error)"
"                ORDER BY r.id DESC), '[]')"
"               FROM (SELECT id FROM (SELECT j.id FROM atomizer.job j"
"                                      WHERE j.schedule_id = t.id"
"                                     UNION ALL"
"                                     SELECT h.id FROM atomizer.job_history h"
"                                      WHERE h.schedule_id = t.id) ids"
"                      ORDER BY id DESC LIMIT 5) f"
"               JOIN atomizer.jobs r ON r.id = f.id)"
"  ) ORDER BY s.name, s.owner), '[]')"
"  FROM atomizer.schedules s JOIN atomizer.schedule t ON t.name = s.name";
const char *const DASHBOARD_SQL_RUN_SCHEDULE =
"SELECT json_build_object('job_id', atomizer.run_schedule(name => $1::text))";
const char *const DASHBOARD_SQL_ENABLE_SCHEDULE =
"SELECT json_build_object('ok', atomizer.enable_schedule(name => $1::text))";
const char *const DASHBOARD_SQL_DISABLE_SCHEDULE =
"SELECT json_build_object('ok', atomizer.disable_schedule(name => $1::text))";

/* atomizer's processes, and external workers seen through their leases */
const char *const DASHBOARD_SQL_WORKERS =
"SELECT json_build_object("
"  'processes', (SELECT coalesce(json_agg(w ORDER BY w.database, w.queue, w.pid), '[]')"
"                  FROM atomizer.workers w),"
"  'leases', (SELECT coalesce(json_agg(json_build_object("
"                 'worker', j.worker, 'queue', j.queue, 'jobs', j.n,"
"                 'lease_until', j.lease_until) ORDER BY j.worker), '[]')"
"               FROM (SELECT worker, queue, count(*) AS n,"
"                            max(lease_until) AS lease_until"
"                       FROM atomizer.jobs"
"                      WHERE state = 'running' AND lease_until IS NOT NULL"
"                      GROUP BY worker, queue) j))";

/*
 * /metrics: rows (kind, queue, state, value) turned into the text format
 * by dashboard_api.c: the unfinished jobs per queue and state and the age
 * of the oldest due job (UNFINISHED_CTE: the scheduler's sample, or the
 * role's own unfinished jobs), and atomizer's workers.
 */
const char *const DASHBOARD_SQL_METRICS =
UNFINISHED_CTE
"SELECT 'jobs', u.queue, x.state, x.n::float8"
"  FROM unfinished u"
"  CROSS JOIN LATERAL (VALUES ('scheduled', u.scheduled), ('available', u.available),"
"                             ('running', u.running), ('retrying', u.retrying),"
"                             ('blocked', u.blocked)) x(state, n)"
" UNION ALL "
"SELECT 'oldest', u.queue, NULL,"
"       coalesce(extract(epoch FROM now() - u.oldest_available), 0)::float8"
"  FROM unfinished u"
" UNION ALL "
"SELECT 'workers', w.queue, w.state, count(*)::float8"
"  FROM atomizer.workers w WHERE w.database = current_database()"
" GROUP BY w.queue, w.state"
" ORDER BY 1, 2, 3";

/*
 * /metrics: the counters and histograms of atomizer.metrics (shared-memory
 * counters, O(queues)), one row per sample, in the order the text format
 * wants: family, queue, then a histogram's buckets (by le), _sum, _count.
 * Only roles that may read atomizer.metrics get them.
 */
const char *const DASHBOARD_SQL_COUNTERS =
"SELECT regexp_replace(name, '_(bucket|sum|count)$', '') AS family, name,"
"       labels->>'queue' AS queue, labels->>'outcome' AS outcome,"
"       labels->>'le' AS le, value"
"  FROM atomizer.metrics"
" WHERE name NOT IN ('atomizer_workers', 'atomizer_jobs', 'atomizer_oldest_available_seconds')"
" ORDER BY 1, 3,"
"       CASE WHEN name LIKE '%\\_sum' THEN 1 WHEN name LIKE '%\\_count' THEN 2 ELSE 0 END,"
"       4, CASE WHEN labels->>'le' = '+Inf' THEN 'infinity'::float8"
"               ELSE (labels->>'le')::float8 END";

/*
 * The live-update feed (dashboard_events.c), once a second while a stream
 * is open: the queues (whose channels atomizer_<queue> it listens to), and
 * per queue a figure that changes whenever a job of it is claimed or
 * finishes: the sum of atomizer_jobs_finished_total and of
 * atomizer_job_wait_seconds_count (shared-memory counters, O(queues)).
 */
const char *const DASHBOARD_SQL_FEED_QUEUES =
"SELECT name FROM atomizer.queue ORDER BY name";
const char *const DASHBOARD_SQL_FEED_COUNTERS =
"SELECT labels->>'queue', sum(value)::text"
"  FROM atomizer.metrics"
" WHERE name IN ('atomizer_jobs_finished_total', 'atomizer_job_wait_seconds_count')"
" GROUP BY 1";
