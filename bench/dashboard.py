#!/usr/bin/python3
"""bench/dashboard.py: what "atomizer dashboard" costs (bench.py's workload
"dashboard"; see bench/README.md, figure 8).

- fill: DASH_HISTORY finished jobs (10,000,000 by default) written straight
  into atomizer.job_history with INSERT ... SELECT generate_series, in
  chunks, over DASH_QUEUES queues and the last 8 days (97 % succeeded, 2 %
  dead, 1 % cancelled), and the per-minute rollups of those 8 days in
  atomizer.stats_minute (one row per queue and minute: what the scheduler
  keeps) and atomizer.stats_hour; then VACUUM (ANALYZE) and CHECKPOINT;
- response time: a dashboard (user= in the DSN, on loopback) is started and
  GET /api/overview and GET /metrics are each timed DASH_N times over one
  keep-alive connection (p50/p99 in ms); baseline: the query the overview
  ran before the rollups, a SELECT of atomizer.queue_stats (which counts
  the job tables), timed three times (median);
- drain: DASH_DRAIN_JOBS jobs drained by the workers (no-op handler), four
  times without the dashboard open and four times with it (a browser-like
  client connected to /api/events, reading it, and a refresh of the
  overview every second), alternated; the means and their ratio.
"""
import http.client
import os
import socket
import subprocess
import sys
import threading
import time

import drain  # noqa: E402

CHUNK = 1000000


def q1(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def pct(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]


def fill(cur, n, nqueues):
    t = time.time()
    for i in range(nqueues):
        cur.execute("SELECT 1 FROM atomizer.queue WHERE name = %s", ("dash%d" % i,))
        if not cur.fetchone():
            cur.execute("SELECT atomizer.create_queue(%s)", ("dash%d" % i,))
    base = q1(cur, "SELECT nextval('atomizer.job_id_seq')")[0]
    for lo in range(1, n + 1, CHUNK):
        hi = min(lo + CHUNK - 1, n)
        cur.execute("""
            INSERT INTO atomizer.job_history (id, queue, handler, payload, state,
                priority, run_at, attempt, max_attempts, timeout, owner,
                idempotency_key, created_at, started_at, finished_at, result,
                last_error, schedule_id, tags)
            SELECT %(base)s + g, 'dash' || (g %% %(nq)s), 'public.noop',
                   '{"n": 1}', CASE WHEN g %% 100 < 97 THEN 'succeeded'
                                    WHEN g %% 100 < 99 THEN 'dead' ELSE 'cancelled' END,
                   0, t, 1, NULL, NULL, 'postgres', NULL, t, t + interval '2 ms',
                   t + interval '5 ms', NULL,
                   CASE WHEN g %% 100 BETWEEN 97 AND 98 THEN 'boom' END, NULL, NULL
              FROM generate_series(%(lo)s, %(hi)s) g,
                   LATERAL (SELECT now() - interval '8 days' * (1 - g::float8 / %(n)s) AS t) x
        """, dict(base=base, nq=nqueues, lo=lo, hi=hi, n=n))
        print("  history: %d of %d rows (%.0f s)" % (hi, n, time.time() - t), flush=True)
    cur.execute("SELECT setval('atomizer.job_id_seq', %s)", (base + n + 1,))
    # the rollups of those 8 days: one row per queue and minute
    cur.execute("""
        INSERT INTO atomizer.stats_minute AS s (minute, queue, succeeded, failed, dead,
            cancelled, wait_buckets, wait_sum, run_buckets, run_sum)
        SELECT m, 'dash' || q, 97, 3, 2, 1,
               ARRAY[40, 30, 10, 5, 5, 3, 2, 1, 1, 0, 0, 0, 0, 0, 0]::bigint[], 0.9,
               ARRAY[10, 60, 20, 5, 3, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]::bigint[], 0.5
          FROM generate_series(date_trunc('minute', now()) - interval '8 days',
                               date_trunc('minute', now()) - interval '1 minute',
                               interval '1 minute') m,
               generate_series(0, %s) q
        ON CONFLICT (minute, queue) DO NOTHING""", (nqueues - 1,))
    cur.execute("""
        INSERT INTO atomizer.stats_hour (hour, queue, succeeded, failed, dead, cancelled,
            wait_buckets, wait_sum, run_buckets, run_sum)
        SELECT date_trunc('hour', minute), queue, sum(succeeded), sum(failed), sum(dead),
               sum(cancelled), atomizer._sum_buckets(wait_buckets), sum(wait_sum),
               atomizer._sum_buckets(run_buckets), sum(run_sum)
          FROM atomizer.stats_minute WHERE queue LIKE 'dash%%' GROUP BY 1, 2
        ON CONFLICT (hour, queue) DO NOTHING""")
    # vacuumed now, so that autovacuum does not visit the 10 million rows
    # during the measured runs, and checkpointed
    cur.execute("VACUUM (ANALYZE) atomizer.job_history, atomizer.stats_minute,"
                " atomizer.stats_hour")
    cur.execute("CHECKPOINT")
    rows = q1(cur, "SELECT count(*) FROM atomizer.stats_minute")[0]
    size = q1(cur, "SELECT pg_size_pretty(pg_total_relation_size('atomizer.job_history'))")[0]
    took = time.time() - t
    print("  filled %d history rows (%s) and %d rollup rows in %.0f s" % (n, size, rows, took),
          flush=True)
    return dict(history=n, queues=nqueues, rollup_rows=rows, history_size=size, fill_s=took)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Dashboard:
    """An "atomizer dashboard" process of ours, stopped by its pid."""

    def __init__(self, cli, dsn, log):
        self.port = free_port()
        self.log = open(log, "w")
        self.p = subprocess.Popen([cli, "dashboard", "--dsn", dsn, "--listen",
                                   "127.0.0.1:%d" % self.port],
                                  stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/api/session")
                if c.getresponse().status == 200:
                    c.close()
                    return
            except OSError:
                time.sleep(0.1)
        sys.exit("the dashboard did not start; see %s" % log)

    def stop(self):
        self.p.terminate()
        self.p.wait()
        self.log.close()


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit("GET %s: %d %s" % (path, r.status, body[:300]))
    return body


def response_times(port, path, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    get(conn, path)                 # warm: the first request connects
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        get(conn, path)
        ms.append((time.perf_counter() - t) * 1000)
    conn.close()
    return dict(p50=pct(ms, 50), p99=pct(ms, 99), n=n, max=max(ms))


class Viewer:
    """A browser-like visitor: connected to /api/events (reading what it
    sends) and refreshing the overview every second."""

    def __init__(self, port):
        self.port = port
        self.stop_flag = threading.Event()
        self.refreshes = 0
        self.events = 0
        self.threads = [threading.Thread(target=self.stream, daemon=True),
                        threading.Thread(target=self.refresh, daemon=True)]
        for t in self.threads:
            t.start()

    def stream(self):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        s.settimeout(0.5)
        while not self.stop_flag.is_set():
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            self.events += data.count(b"event: ")
        s.close()

    def refresh(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_flag.wait(1.0):
            get(conn, "/api/overview")
            self.refreshes += 1
        conn.close()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


def baseline_count(cur):
    ms = []
    for _ in range(3):
        t = time.perf_counter()
        cur.execute("SELECT * FROM atomizer.queue_stats")
        cur.fetchall()
        ms.append((time.perf_counter() - t) * 1000)
    return sorted(ms)[1]


def run(b):
    a = b.a
    cur = b.cur
    res = fill(cur, a.dash_history, a.dash_queues)
    cli = os.path.join(a.bindir, "atomizer")
    if not os.access(cli, os.X_OK):
        res["error"] = "CLI not built"
        return res
    dsn = "host=%s port=%d dbname=%s user=postgres" % (a.host, a.port, a.db)
    dash = Dashboard(cli, dsn, os.path.join(os.path.dirname(a.out), "dashboard.log"))
    try:
        res["overview"] = response_times(dash.port, "/api/overview", a.dash_n)
        res["metrics"] = response_times(dash.port, "/metrics", a.dash_n)
        res["queue_stats_ms"] = baseline_count(cur)
        print("  GET /api/overview p50 %.1f ms p99 %.1f ms; GET /metrics p50 %.1f ms p99 %.1f ms;"
              " SELECT * FROM atomizer.queue_stats (the count it replaced) %.0f ms"
              % (res["overview"]["p50"], res["overview"]["p99"], res["metrics"]["p50"],
                 res["metrics"]["p99"], res["queue_stats_ms"]), flush=True)

        da = drain.argparse.Namespace(jobs=a.dash_drain_jobs, chunk=1000, timeout=600)
        drain.set_batch(cur, 64)
        runs = []
        for rep in range(4):
            for open_ in ((False, True) if rep % 2 == 0 else (True, False)):
                viewer = Viewer(dash.port) if open_ else None
                pids = []
                if viewer:
                    time.sleep(1.5)     # its stream, feed and first refresh are up
                    cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                " AND application_name LIKE 'atomizer dashboard%%'")
                    pids = [x[0] for x in cur.fetchall()]
                t0, c0, p0 = time.time(), drain.cpu_ticks(pids), drain.cpu_ticks([dash.p.pid])
                r = drain.drain_atomizer(da, cur, "noop", 64, purge_queue_only=True)
                if viewer:
                    hz = os.sysconf("SC_CLK_TCK")
                    took = time.time() - t0
                    r.update(dashboard_db_cpu_pct=100.0 * (drain.cpu_ticks(pids) - c0) / hz / took,
                             dashboard_cli_cpu_pct=100.0 * (drain.cpu_ticks([dash.p.pid]) - p0) / hz / took,
                             dashboard_backends=len(pids))
                    viewer.stop()
                    r.update(refreshes=viewer.refreshes, events=viewer.events)
                    print("    (dashboard open: %d refreshes, %d events; its %d database connections"
                          " used %.1f %% of a core, the dashboard process %.1f %%)"
                          % (r["refreshes"], r["events"], len(pids), r["dashboard_db_cpu_pct"],
                             r["dashboard_cli_cpu_pct"]), flush=True)
                r["dashboard_open"] = open_
                runs.append(r)
        res["drains"] = runs
        without = [r["per_s"] for r in runs if not r["dashboard_open"]]
        with_ = [r["per_s"] for r in runs if r["dashboard_open"]]
        res["drain_without"] = sum(without) / len(without)
        res["drain_with"] = sum(with_) / len(with_)
        print("  drain: %.0f jobs/s without the dashboard, %.0f with it open (ratio %.3f)"
              % (res["drain_without"], res["drain_with"],
                 res["drain_with"] / res["drain_without"]), flush=True)
    finally:
        dash.stop()
        drain.clean(cur, "drain")
    return res
