#!/usr/bin/python3
"""bench/drain.py: drain throughput of atomizer's background workers, and of
a naive plain-SQL SKIP LOCKED queue drained by pgbench (the baseline).

Run by bench/workers.sh against its throwaway cluster; prints one line per
run and writes the figures as JSON to the file named by --out.

Before the runs: a probe of how long resume_queue() takes to get a queue
with no worker going, then a warm-up drain, so that every measured run starts
with the drain queue's workers idle, and a probe of the CPU those idle
workers use while their queue is paused with a due job.  Then --reps repetitions of: the
baseline, and atomizer at batch_size 1, 16, 64 (no-op handler) and 16
(one-row INSERT handler).

Each atomizer run: set atomizer.batch_size (ALTER SYSTEM + reload), purge
and VACUUM, pause the queue, enqueue N jobs with enqueue_many in chunks,
CHECKPOINT, resume, and time from the commit of resume_queue() until no job
of the queue is left in atomizer.job (polled every 50 ms with EXISTS: a
count(*) of 50,000 rows every 50 ms costs some 20 % of a core, which the
workers would miss on a 2-core machine).  The CPU time of the queue's
workers, of the database's scheduler and of the polling backend during the
drain is read from /proc.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import psycopg2

POLL = 0.05


def connect(a):
    conn = psycopg2.connect(host=a.host, port=a.port, dbname=a.db, user="postgres")
    conn.autocommit = True
    return conn


def q1(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def set_batch(cur, batch):
    cur.execute("ALTER SYSTEM SET atomizer.batch_size = %s", (batch,))
    cur.execute("SELECT pg_reload_conf()")
    # every backend, the workers included, rereads the file on SIGHUP
    deadline = time.time() + 5
    while time.time() < deadline:
        time.sleep(0.1)
        if int(q1(cur, "SHOW atomizer.batch_size")[0]) == batch:
            return
    sys.exit("atomizer.batch_size did not become %d after reload" % batch)


def clean(cur, queue=None):
    """Delete the finished jobs (of queue only, when given) and vacuum."""
    cur.execute("SELECT atomizer.purge(queue => %s)", (queue,))
    cur.execute("TRUNCATE public.effect")
    cur.execute("VACUUM ANALYZE atomizer.job, atomizer.job_history, "
                "atomizer.job_error, public.effect")


def workers(cur, queue):
    """(alive, running) workers of queue now."""
    return q1(cur, "SELECT count(*), count(*) FILTER (WHERE state = 'running')"
                   " FROM atomizer.workers WHERE queue = %s", (queue,))


def fmt_pct(x):
    return "?" if x is None else "%.0f" % x


def drain_atomizer(a, cur, handler, batch, queue="drain", purge_queue_only=False):
    n, chunk = a.jobs, a.chunk
    set_batch(cur, batch)
    clean(cur, queue if purge_queue_only else None)
    cur.execute("SELECT atomizer.pause_queue(%s)", (queue,))
    t = time.time()
    for lo in range(1, n + 1, chunk):
        hi = min(lo + chunk - 1, n)
        cur.execute("SELECT count(*) FROM atomizer.enqueue_many(%s,"
                    " (SELECT array_agg(jsonb_build_object('i', g) ORDER BY g)"
                    "  FROM generate_series(%s, %s) g), queue => %s)",
                    (handler, lo, hi, queue))
    enqueue_s = time.time() - t
    cur.execute("CHECKPOINT")

    cur.execute("SELECT pid FROM atomizer.workers WHERE queue = %s", (queue,))
    wpids = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'atomizer scheduler'")
    spids = [r[0] for r in cur.fetchall()]
    mypid = q1(cur, "SELECT pg_backend_pid()")[0]
    cpu0 = [cpu_ticks(wpids), cpu_ticks(spids), cpu_ticks([mypid])]

    cur.execute("SELECT atomizer.resume_queue(%s)", (queue,))
    t0 = time.time()                # resume has committed
    max_alive = max_running = 0
    polls = 0
    while True:
        left = q1(cur, "SELECT EXISTS (SELECT FROM atomizer.job WHERE queue = %s)", (queue,))[0]
        alive, running = workers(cur, queue)
        max_alive, max_running = max(max_alive, alive), max(max_running, running)
        polls += 1
        if not left:
            t1 = time.time()
            break
        if time.time() - t0 > a.timeout:
            left = q1(cur, "SELECT count(*) FROM atomizer.job WHERE queue = %s", (queue,))[0]
            sys.exit("drain %s batch %d: %d jobs still unfinished after %ds"
                     % (handler, batch, left, a.timeout))
        time.sleep(max(0.0, t0 + polls * POLL - time.time()))
    wall = t1 - t0
    cur.execute("SELECT pid FROM atomizer.workers WHERE queue = %s", (queue,))
    if sorted(r[0] for r in cur.fetchall()) != sorted(wpids):
        wpids = None                # workers came or went: their CPU is unknown
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [100.0 * (cpu_ticks(p) - c0) / hz / wall if p else None
           for p, c0 in zip((wpids, spids, [mypid]), cpu0)]

    ok, bad, first, last = q1(cur, """
        SELECT count(*) FILTER (WHERE state = 'succeeded'),
               count(*) FILTER (WHERE state <> 'succeeded'),
               extract(epoch FROM min(started_at)),
               extract(epoch FROM max(finished_at))
          FROM atomizer.job_history WHERE queue = %s""", (queue,))
    if ok != n or bad:
        sys.exit("drain %s batch %d: %d succeeded, %d not (expected %d succeeded)"
                 % (handler, batch, ok, bad, n))
    if handler == "effect":
        rows = q1(cur, "SELECT count(*) FROM public.effect")[0]
        if rows != n:
            sys.exit("effect handler: %d rows, expected %d" % (rows, n))
    r = dict(kind="atomizer", handler=handler, batch=batch, concurrency=2,
             jobs=n, wall_s=wall, per_s=n / wall,
             per_s_from_claim=n / (t1 - max(t0, float(first))),
             start_delay_ms=(float(first) - t0) * 1000,
             busy_s=float(last) - float(first),
             enqueue_per_s=n / enqueue_s,
             max_workers=max_alive, max_running=max_running,
             cpu_workers=cpu[0], cpu_scheduler=cpu[1], cpu_poller=cpu[2])
    print("  atomizer %-6s batch %2d: %6.2f s  %7.0f jobs/s  (first claim %+.0f ms after resume,"
          " workers seen %d, running at once %d; CPU %% of a core: workers %s, scheduler %s,"
          " poller %s; enqueue_many %.0f jobs/s)"
          % (handler, batch, wall, r["per_s"], r["start_delay_ms"], max_alive,
             max_running, fmt_pct(cpu[0]), fmt_pct(cpu[1]), fmt_pct(cpu[2]),
             r["enqueue_per_s"]), flush=True)
    return r


def drain_naive(a, cur, script=None, per_xact=10, kind="naive"):
    """The naive SKIP LOCKED queue (10 rows deleted per transaction), or,
    with kind "bare", the bare batched move of bench/bare_move.sql."""
    n = a.jobs
    script = script or a.naive_script
    cur.execute("TRUNCATE public.naive_q, public.naive_done RESTART IDENTITY")
    cur.execute("INSERT INTO public.naive_q (payload)"
                " SELECT jsonb_build_object('i', g) FROM generate_series(1, %s) g", (n,))
    cur.execute("VACUUM ANALYZE public.naive_q")
    cur.execute("CHECKPOINT")
    # -t: far more than enough; the run is timed until the table is empty and
    # pgbench, still running empty transactions by then, is stopped
    cmd = [a.pgbench, "-n", "-M", "prepared", "-c", "2", "-j", "2",
           "-t", str(n // per_xact), "-f", script,
           "-h", a.host, "-p", str(a.port), "-U", "postgres", a.db]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    polls = 0
    while True:
        polls += 1
        time.sleep(max(0.0, t0 + polls * POLL - time.time()))
        left = q1(cur, "SELECT EXISTS (SELECT FROM public.naive_q)")[0]
        if not left:
            t1 = time.time()
            break
        if p.poll() is not None:
            out, err = p.communicate()
            left = q1(cur, "SELECT count(*) FROM public.naive_q")[0]
            sys.exit("pgbench ended (rc %s) with %d rows left:\n%s%s"
                     % (p.returncode, left, out, err))
        if time.time() - t0 > a.timeout:
            p.terminate()
            p.wait()
            left = q1(cur, "SELECT count(*) FROM public.naive_q")[0]
            sys.exit("naive drain: %d rows left after %ds" % (left, a.timeout))
    if p.poll() is None:
        p.terminate()               # our pgbench, by its pid
    p.wait()
    wall = t1 - t0
    r = dict(kind=kind, jobs=n, wall_s=wall, per_s=n / wall)
    if kind == "bare":
        moved = q1(cur, "SELECT count(*) FROM public.naive_done")[0]
        if moved != n:
            sys.exit("bare move: %d rows in the history, expected %d" % (moved, n))
    print("  %s (pgbench -c 2, %d rows/xact): %6.2f s  %7.0f rows/s"
          % ("naive SKIP LOCKED" if kind == "naive" else "bare batched move", per_xact,
             wall, r["per_s"]), flush=True)
    return r


def drain_bare(a, cur):
    return drain_naive(a, cur, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "bare_move.sql"), 64, "bare")


def probe_resume(a, cur, queue="default"):
    """Pause a queue that has no worker, enqueue one job, resume: how long
    until the job is claimed?  A commit of enqueue wakes the scheduler, but
    it finds the queue paused; only resume_queue() is left to wake it."""
    cur.execute("SELECT atomizer.pause_queue(%s)", (queue,))
    cur.execute("SELECT atomizer.enqueue('noop', '{}', queue => %s)", (queue,))
    time.sleep(0.2)
    cur.execute("SELECT atomizer.resume_queue(%s)", (queue,))
    t0 = time.time()
    while time.time() - t0 < a.probe_timeout:
        row = q1(cur, "SELECT extract(epoch FROM started_at) FROM atomizer.jobs"
                      " WHERE queue = %s AND started_at IS NOT NULL", (queue,))
        if row:
            ms = (float(row[0]) - t0) * 1000
            print("  resume_queue() of a queue with no worker: first claim after %.0f ms"
                  % ms, flush=True)
            return ms
        time.sleep(0.01)
    print("  resume_queue() of a queue with no worker: no claim within %d s"
          % a.probe_timeout, flush=True)
    return None


def warm_up(a, cur, queue="drain"):
    """Run a few thousand jobs unpaused, so that every measured run starts
    with the queue's workers alive and idle, and plans and caches warm."""
    cur.execute("SELECT count(*) FROM atomizer.enqueue_many('noop',"
                " (SELECT array_agg('{}'::jsonb) FROM generate_series(1, 2000)),"
                " queue => %s)", (queue,))
    t0 = time.time()
    while q1(cur, "SELECT count(*) FROM atomizer.job WHERE queue = %s", (queue,))[0]:
        if time.time() - t0 > a.timeout:
            sys.exit("warm-up: jobs of queue %s not done after %ds" % (queue, a.timeout))
        time.sleep(POLL)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])     # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def probe_paused_cpu(a, cur, queue="drain", seconds=2.0):
    """CPU used by the queue's idle workers while the queue is paused and a
    job of it is due (they should sleep: nothing can be claimed)."""
    cur.execute("SELECT atomizer.pause_queue(%s)", (queue,))
    cur.execute("SELECT atomizer.enqueue('noop', '{}', queue => %s)", (queue,))
    time.sleep(0.2)
    cur.execute("SELECT pid FROM atomizer.workers WHERE queue = %s", (queue,))
    pids = [r[0] for r in cur.fetchall()]
    c0, t0 = cpu_ticks(pids), time.time()
    time.sleep(seconds)
    c1, t1 = cpu_ticks(pids), time.time()
    cur.execute("SELECT atomizer.resume_queue(%s)", (queue,))
    pct = 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    print("  %d idle worker(s) of a paused queue with a due job: %.1f %% of a core"
          % (len(pids), pct), flush=True)
    while q1(cur, "SELECT count(*) FROM atomizer.job WHERE queue = %s", (queue,))[0]:
        time.sleep(POLL)
    return dict(workers=len(pids), cpu_pct=pct)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=150, help="seconds per drain")
    ap.add_argument("--probe-timeout", type=int, default=15)
    ap.add_argument("--pgbench", default="/usr/lib/postgresql/15/bin/pgbench")
    ap.add_argument("--naive-script", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    conn = connect(a)
    cur = conn.cursor()
    probe_ms = probe_resume(a, cur)
    warm_up(a, cur)
    paused = probe_paused_cpu(a, cur)
    results = []
    for rep in range(1, a.reps + 1):
        print(" repetition %d of %d" % (rep, a.reps), flush=True)
        results.append(dict(drain_naive(a, cur), rep=rep))
        for handler, batch in (("noop", 1), ("noop", 16), ("noop", 64), ("effect", 16)):
            results.append(dict(drain_atomizer(a, cur, handler, batch), rep=rep))
    set_batch(cur, 16)
    clean(cur)
    with open(a.out, "w") as f:
        json.dump(dict(probe_resume_ms=probe_ms, probe_paused=paused, runs=results), f, indent=1)


if __name__ == "__main__":
    main()
