#!/usr/bin/python3
"""bench/latency.py: enqueue-to-start latency of atomizer's workers.

With an idle worker already waiting on queue "default", enqueue one job at a
time (autocommit: the enqueue statement commits) whose handler writes
clock_timestamp() into public.lat; note time.time() just after the enqueue
returned; sleep 2.5 ms, time a one-row INSERT (the paced baseline below),
sleep 2.5 ms; repeat.  Latency of a job = its handler's start minus
the moment its enqueue's commit returned to the client.  Client and server
share the machine and so the wall clock.

Baselines in the same run: round trips of a bare SELECT 1, of a one-row
INSERT into a plain table (a durable commit and nothing else), back to back
and also paced like the enqueues (between them, in the same seconds), and of
the enqueue call itself; p50 and p99 of each.  The paced INSERT is the fair
yardstick for the tail: the worker's claim is one durable commit too (its
WAL flush), made by a process that has slept since the last job, like the
paced INSERT's backend.  The job's own latency is split at its claim (started_at, set by
the claim's UPDATE before its commit): commit -> claim (wake-up and the
claim's statements) and claim -> handler start (the claim's commit, its
WAL flush, and the handler's transaction).
"""
import argparse
import json
import sys
import time

import psycopg2


def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]


def wait_done(cur, queue, n, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        cur.execute("SELECT count(*) FROM atomizer.job_history"
                    " WHERE queue = %s AND state = 'succeeded'", (queue,))
        if cur.fetchone()[0] >= n:
            return
        time.sleep(0.05)
    sys.exit("latency: fewer than %d jobs of queue %s succeeded after %ds"
             % (n, queue, timeout))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--sleep-ms", type=float, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    conn = psycopg2.connect(host=a.host, port=a.port, dbname=a.db, user="postgres")
    conn.autocommit = True
    cur = conn.cursor()
    queue = "default"

    cur.execute("SELECT atomizer.purge(queue => %s)", (queue,))
    cur.execute("TRUNCATE public.lat, public.commit_probe")
    cur.execute("SHOW atomizer.worker_idle_timeout")
    idle_timeout = cur.fetchone()[0]

    # warm up: one job, so that a worker of the queue is running and idle
    cur.execute("SELECT atomizer.enqueue('lat_mark', '{\"i\": 0}', queue => %s)", (queue,))
    wait_done(cur, queue, 1, 60)
    time.sleep(0.2)
    cur.execute("SELECT count(*) FROM atomizer.workers WHERE queue = %s AND state = 'idle'",
                (queue,))
    idle_workers = cur.fetchone()[0]
    if idle_workers < 1:
        sys.exit("latency: no idle worker for queue %s after the warm-up job" % queue)

    # baseline: a bare round trip
    sel1 = []
    for _ in range(a.n):
        t = time.perf_counter()
        cur.execute("SELECT 1")
        cur.fetchone()
        sel1.append((time.perf_counter() - t) * 1000)

    # baseline: a durable commit of a one-row INSERT, nothing else
    ins = []
    for i in range(a.n):
        t = time.perf_counter()
        cur.execute("INSERT INTO public.commit_probe (i) VALUES (%s)", (i,))
        ins.append((time.perf_counter() - t) * 1000)

    enq = "SELECT atomizer.enqueue('lat_mark', jsonb_build_object('i', %s::int), queue => %s)"
    sent = {}
    rtt = []
    ins_paced = []
    for i in range(1, a.n + 1):
        t = time.perf_counter()
        cur.execute(enq, (i, queue))
        cur.fetchone()
        sent[i] = time.time()       # the enqueue has committed
        rtt.append((time.perf_counter() - t) * 1000)
        # baseline in the same seconds: the bare durable commit, half-way
        # between two enqueues (when the job has long started, as a rule)
        time.sleep(a.sleep_ms / 2000)
        t = time.perf_counter()
        cur.execute("INSERT INTO public.commit_probe (i) VALUES (%s)", (i,))
        ins_paced.append((time.perf_counter() - t) * 1000)
        time.sleep(a.sleep_ms / 2000)

    wait_done(cur, queue, a.n + 1, 60)
    cur.execute("SELECT i, extract(epoch FROM started) FROM public.lat WHERE i > 0")
    started = dict(cur.fetchall())
    cur.execute("SELECT (payload->>'i')::int, extract(epoch FROM started_at)"
                " FROM atomizer.job_history WHERE queue = %s AND (payload->>'i')::int > 0",
                (queue,))
    claimed = dict(cur.fetchall())
    cur.execute("SELECT count(*) FROM atomizer.workers WHERE queue = %s", (queue,))
    workers_after = cur.fetchone()[0]

    lat = sorted((float(started[i]) - sent[i]) * 1000 for i in sent)
    claim = sorted((float(claimed[i]) - sent[i]) * 1000 for i in sent)
    to_start = sorted((float(started[i]) - float(claimed[i])) * 1000 for i in sent)
    sel1.sort()
    ins.sort()
    ins_paced.sort()
    rtt.sort()
    r = dict(n=a.n, idle_timeout=idle_timeout, workers=workers_after,
             p50=pct(lat, 50), p95=pct(lat, 95), p99=pct(lat, 99),
             max=lat[-1], min=lat[0],
             claim_p50=pct(claim, 50), claim_p99=pct(claim, 99),
             claim_to_start_p50=pct(to_start, 50), claim_to_start_p99=pct(to_start, 99),
             select1_p50=pct(sel1, 50), select1_p99=pct(sel1, 99),
             insert_p50=pct(ins, 50), insert_p99=pct(ins, 99),
             insert_paced_p50=pct(ins_paced, 50), insert_paced_p99=pct(ins_paced, 99),
             enqueue_p50=pct(rtt, 50), enqueue_p99=pct(rtt, 99))
    print("  latency commit-returned -> handler start, %d jobs: p50 %.2f ms, p95 %.2f ms,"
          " p99 %.2f ms (min %.2f, max %.2f; workers %d)"
          % (a.n, r["p50"], r["p95"], r["p99"], r["min"], r["max"], workers_after), flush=True)
    print("  split at the claim, p50 / p99: commit -> claim %.2f / %.2f ms,"
          " claim -> handler start %.2f / %.2f ms"
          % (r["claim_p50"], r["claim_p99"], r["claim_to_start_p50"],
             r["claim_to_start_p99"]), flush=True)
    print("  round trips p50 / p99: SELECT 1 %.3f / %.3f ms, one-row INSERT %.3f / %.3f ms,"
          " the same between the enqueues %.3f / %.3f ms, enqueue (%g ms apart) %.3f / %.3f ms"
          % (r["select1_p50"], r["select1_p99"], r["insert_p50"], r["insert_p99"],
             r["insert_paced_p50"], r["insert_paced_p99"], a.sleep_ms,
             r["enqueue_p50"], r["enqueue_p99"]), flush=True)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
