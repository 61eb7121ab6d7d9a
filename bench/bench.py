#!/usr/bin/python3
"""bench/bench.py: the workloads of bench/run ("make bench").

Run by bench/run against its throwaway cluster (database "bench", loaded
with setup.sql and setup_run.sql).  Each workload prints a line or two as it
goes and adds its figures to a JSON file (--out), from which
bench/run_report.py writes the markdown.  See bench/README.md.

Workloads (--only picks some, comma-separated):
  enqueue      enqueue(), one job per transaction, pgbench -c 1 and -c 8,
               vs a bare INSERT of the same row
  many         enqueue_many() of 1,000, vs INSERT ... SELECT of 1,000
  drain        drain of N pre-enqueued jobs by the workers, 4 handlers,
               vs a naive SKIP LOCKED queue drained by pgbench -c 2
  workflow     drain of a workflow of N jobs (a fan-out/fan-in per 100: a
               root, 98 parts, a callback) vs the plain drain of N jobs
  latency      enqueue commit -> handler start (bench/latency.py)
  external     atomizer CLI (a process per job, and --persistent), batch-claiming
               Python clients (complete_many, and claim(completed => ...)),
               NOTIFY latency; beside a naive SKIP LOCKED queue
  steady       1,000,000 jobs in chunks of 100,000, twice (once with a
               transaction held open)
  cron         10,000 schedules firing every minute
  dashboard    overview and /metrics response times with 10,000,000 finished
               jobs in the history; the drain with the dashboard open vs not
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import select

import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drain  # noqa: E402  (drain_atomizer, drain_naive, warm_up, cpu_ticks)
import dashboard  # noqa: E402  (the dashboard's response times and drain)

BENCH = os.path.dirname(os.path.abspath(__file__))
HZ = os.sysconf("SC_CLK_TCK")


def log(*args):
    print(*args, flush=True)


def q1(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]


class Bench:
    def __init__(self, a):
        self.a = a
        self.conn = self.connect()
        self.cur = self.conn.cursor()
        self.res = {}
        if os.path.exists(a.out):
            with open(a.out) as f:
                self.res = json.load(f)

    def connect(self):
        conn = psycopg2.connect(host=self.a.host, port=self.a.port, dbname=self.a.db,
                                user="postgres")
        conn.autocommit = True
        return conn

    def save(self):
        with open(self.a.out + ".tmp", "w") as f:
            json.dump(self.res, f, indent=1, default=float)
        os.replace(self.a.out + ".tmp", self.a.out)

    def dsn(self):
        return "host=%s port=%d dbname=%s user=postgres" % (self.a.host, self.a.port, self.a.db)

    def pgbench(self, script, clients, threads, seconds):
        cmd = [self.a.pgbench, "-n", "-M", "prepared", "-T", str(seconds),
               "-c", str(clients), "-j", str(threads), "-f", os.path.join(BENCH, script),
               "-h", self.a.host, "-p", str(self.a.port), "-U", "postgres", self.a.db]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit("pgbench %s failed:\n%s%s" % (script, p.stdout, p.stderr))
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", p.stdout)
        if not m:
            sys.exit("pgbench %s: no tps in its output:\n%s" % (script, p.stdout))
        return float(m.group(1))

    def reset_bench_queue(self):
        """Empty queue 'bench' (paused) and the baseline table."""
        cur = self.cur
        cur.execute("SELECT atomizer.drop_queue('bench', force => true)")
        cur.execute("SELECT atomizer.create_queue('bench')")
        cur.execute("SELECT atomizer.pause_queue('bench')")
        cur.execute("SELECT atomizer.purge()")
        cur.execute("TRUNCATE public.bare_job RESTART IDENTITY")
        cur.execute("VACUUM ANALYZE atomizer.job, atomizer.job_history, public.bare_job")
        cur.execute("CHECKPOINT")

    def scheduler_pid(self):
        r = q1(self.cur, "SELECT pid FROM pg_stat_activity WHERE backend_type ="
                         " 'atomizer scheduler' AND datname = current_database()")
        if not r:
            sys.exit("no atomizer scheduler for this database in pg_stat_activity")
        return r[0]

    # 1 ------------------------------------------------------------------
    def enqueue(self):
        T = self.a.seconds
        out = []
        for c in (1, 8):
            j = min(c, 2)
            row = dict(clients=c, threads=j, seconds=T)
            spid = self.scheduler_pid()
            runs = {"bare": [], "atomizer": []}
            cpu = {"bare": [], "atomizer": []}
            # A B B A: the figure is the mean of two runs each, so that a
            # drift of the (shared, noisy) disk or CPU hits both sides alike
            for name in ("bare", "atomizer", "atomizer", "bare"):
                script = "enqueue.sql" if name == "atomizer" else "enqueue_bare.sql"
                self.reset_bench_queue()
                c0, w0 = drain.cpu_ticks([spid]), time.time()
                runs[name].append(self.pgbench(script, c, j, T))
                cpu[name].append(100.0 * (drain.cpu_ticks([spid]) - c0) / HZ
                                 / (time.time() - w0))
            for name in runs:
                row[name] = sum(runs[name]) / len(runs[name])
                row[name + "_runs"] = runs[name]
                row[name + "_scheduler_cpu_pct"] = sum(cpu[name]) / len(cpu[name])
            n = q1(self.cur, "SELECT count(*) FROM atomizer.job WHERE queue = 'bench'")[0]
            row["atomizer_rows"] = n
            log("  enqueue -c %d: atomizer %.0f/s, bare INSERT %.0f/s, ratio %.2f (scheduler CPU"
                " %.0f %% of a core during the enqueue run, %.0f %% during the bare one)"
                % (c, row["atomizer"], row["bare"], row["atomizer"] / row["bare"],
                   row["atomizer_scheduler_cpu_pct"], row["bare_scheduler_cpu_pct"]))
            out.append(row)
        self.reset_bench_queue()
        self.res["enqueue"] = out
        self.save()

    # 2 ------------------------------------------------------------------
    def many(self):
        T = self.a.seconds
        row = dict(clients=1, seconds=T)
        for name, script in (("bare", "enqueue_many_bare.sql"),
                             ("atomizer", "enqueue_many.sql")):
            self.reset_bench_queue()
            row[name] = self.pgbench(script, 1, 1, T) * 1000
        log("  enqueue_many 1,000: atomizer %.0f jobs/s, bare INSERT ... SELECT %.0f rows/s,"
            " ratio %.2f" % (row["atomizer"], row["bare"], row["atomizer"] / row["bare"]))
        self.reset_bench_queue()
        self.res["many"] = row
        self.save()

    # 3 ------------------------------------------------------------------
    def drain(self):
        a = argparse.Namespace(jobs=self.a.drain_jobs, chunk=1000, timeout=600, host=self.a.host,
                               port=self.a.port, db=self.a.db, pgbench=self.a.pgbench,
                               naive_script=os.path.join(BENCH, "naive_drain.sql"))
        cur = self.cur
        drain.set_batch(cur, 64)
        drain.warm_up(a, cur)
        runs = [drain.drain_naive(a, cur)]
        for handler in ("noop", "noop_plpgsql", "effect", "effect_plpgsql"):
            r = drain.drain_atomizer(a, cur, handler, 64)
            if handler.startswith("effect"):
                rows = q1(cur, "SELECT count(*) FROM public.effect")[0]
                if rows != a.jobs:
                    sys.exit("%s: %d rows, expected %d" % (handler, rows, a.jobs))
            runs.append(r)
        # the baseline again: the best of its two runs is the table's figure
        # (one naive run is easily disturbed, e.g. by autovacuum)
        runs.append(dict(drain.drain_naive(a, cur), rep=2))
        # the bare limit of a batched move into a history, twice (issue 16's
        # target: 0.6 of it)
        runs.append(drain.drain_bare(a, cur))
        runs.append(dict(drain.drain_bare(a, cur), rep=2))
        drain.clean(cur)
        self.res["drain"] = runs
        self.save()

    # 3b -----------------------------------------------------------------
    def limits(self):
        """The cost of limits that do not bind: the no-op drain with a rate
        limit far above the drain's pace against the same drain without it
        (batch 64), and with the handler limited to 8 running against the same
        drain without it (batch 2: a worker records a batch and claims the
        next in one transaction, so two workers count at most 2 x (2 + 2) = 8
        running, and the limit never holds a job back); each pair run
        --limits-reps times, alternating (every other pair runs the limited
        drain first): every run is kept, with the ratio
        of each pair (throughput, and workers' CPU per job), and the better
        run of each for the table."""
        a = argparse.Namespace(jobs=self.a.drain_jobs, chunk=1000, timeout=600, host=self.a.host,
                               port=self.a.port, db=self.a.db, pgbench=self.a.pgbench,
                               naive_script=os.path.join(BENCH, "naive_drain.sql"))
        cur = self.cur
        drain.warm_up(a, cur)

        def unlimited():
            cur.execute("SELECT atomizer.alter_queue('drain', rate_limit => 0)")
            cur.execute("SELECT atomizer.limit_handler('drain', 'noop', NULL)")

        res = {}
        runs = []
        order = (("plain64", 64, None),
                 ("rate", 64, "SELECT atomizer.alter_queue('drain', rate_limit => 100000000,"
                              " rate_period => '1 second')"),
                 ("plain2", 2, None),
                 ("handler", 2, "SELECT atomizer.limit_handler('drain', 'noop', 8)"))
        for rep in range(1, self.a.limits_reps + 1):
            # every other pair runs the limited drain first
            runs_now = order if rep % 2 else (order[1], order[0], order[3], order[2])
            for name, batch, setup in runs_now:
                unlimited()
                if setup:
                    cur.execute(setup)
                r = drain.drain_atomizer(a, cur, "noop", batch)
                if name == "handler" and r["max_running"] > 8:
                    sys.exit("limits: %d running at once under a limit of 8" % r["max_running"])
                runs.append(dict(r, name=name, rep=rep))
                if name not in res or r["per_s"] > res[name]["per_s"]:
                    res[name] = dict(r, rep=rep)
        unlimited()
        drain.clean(cur)

        def cpu_per_job(r):
            return r["cpu_workers"] * r["wall_s"] / 100.0 / r["jobs"] * 1e6 \
                if r.get("cpu_workers") is not None else None
        pairs = []
        for rep in range(1, self.a.limits_reps + 1):
            by = {x["name"]: x for x in runs if x["rep"] == rep}
            for name, base in (("rate", "plain64"), ("handler", "plain2")):
                x, y = by[name], by[base]
                cx, cy = cpu_per_job(x), cpu_per_job(y)
                pairs.append(dict(limit=name, rep=rep, ratio=x["per_s"] / y["per_s"],
                                  limited_per_s=x["per_s"], plain_per_s=y["per_s"],
                                  cpu_us_limited=cx, cpu_us_plain=cy,
                                  cpu_ratio=cy / cx if cx and cy else None))
                log("  limits: %s pair %d: %.0f / %.0f jobs/s = %.3f; workers' CPU per job"
                    " %s / %s us" % (name, rep, x["per_s"], y["per_s"], x["per_s"] / y["per_s"],
                                     cx and round(cx, 1), cy and round(cy, 1)))
        res["pairs"] = pairs
        self.res["limits"] = res
        self.save()

    # 3c -----------------------------------------------------------------
    def workflow_drain(self, a, cur):
        """Enqueue N jobs as N/100 workflows (a root; 98 parts that depend on
        it; a callback that depends on the 98 parts, on_dependency_failure
        'run'), with the queue paused; then drain them with the workers."""
        groups = a.jobs // 100
        drain.set_batch(cur, 64)
        drain.clean(cur)
        cur.execute("VACUUM atomizer.job_dependency")
        cur.execute("SELECT atomizer.pause_queue('drain')")
        t = time.time()
        for g in range(groups):
            cur.execute("""
                WITH r AS (SELECT atomizer.enqueue('noop', queue => 'drain') AS id),
                     p AS (SELECT array_agg(x) AS ids FROM r, atomizer.enqueue_many('noop',
                             array_fill('{}'::jsonb, ARRAY[98]), queue => 'drain',
                             depends_on => ARRAY[r.id]) AS x)
                SELECT atomizer.enqueue('noop', queue => 'drain', depends_on => p.ids,
                                        on_dependency_failure => 'run') FROM p""")
        enqueue_s = time.time() - t
        edges = q1(cur, "SELECT count(*) FROM atomizer.job_dependency")[0]
        cur.execute("CHECKPOINT")
        cur.execute("SELECT atomizer.resume_queue('drain')")
        t0 = time.time()
        while q1(cur, "SELECT EXISTS (SELECT FROM atomizer.job WHERE queue = 'drain')")[0]:
            if time.time() - t0 > a.timeout:
                sys.exit("workflow: jobs still unfinished after %ds" % a.timeout)
            time.sleep(0.01)
        wall = time.time() - t0
        ok, n = q1(cur, "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*)"
                        " FROM atomizer.job_history WHERE queue = 'drain'")
        if ok != groups * 100 or n != ok:
            sys.exit("workflow: %d of %d jobs succeeded" % (ok, n))
        cur.execute("ANALYZE atomizer.job_dependency, atomizer.job_history")
        late = q1(cur, """
            SELECT count(*) FROM (
                SELECT c.id FROM atomizer.job_dependency d
                  JOIN atomizer.job_history c ON c.id = d.job_id
                  JOIN atomizer.job_history p ON p.id = d.depends_on
                 GROUP BY c.id, c.started_at
                HAVING c.started_at < max(p.finished_at)) x""")[0]
        if late:
            sys.exit("workflow: %d jobs started before a dependency finished" % late)
        r = dict(jobs=ok, edges=edges, wall_s=wall, per_s=ok / wall,
                 enqueue_s=enqueue_s, enqueue_per_s=ok / enqueue_s)
        print("  workflow %d jobs, %d edges: %6.2f s  %7.0f jobs/s  (enqueue %.0f jobs/s)"
              % (ok, edges, wall, r["per_s"], r["enqueue_per_s"]), flush=True)
        drain.clean(cur)
        cur.execute("VACUUM atomizer.job_dependency")
        return r

    def workflow(self):
        """The cost of dependencies: a 100,000-job workflow against the plain
        drain of 100,000 jobs (no-op handler, batch 64), alternating
        plain, workflow, workflow, plain; the better run of each kept.  The
        cost per edge is the difference of the two drains (and of the two
        enqueues) over the number of edges."""
        a = argparse.Namespace(jobs=self.a.drain_jobs, chunk=1000, timeout=600, host=self.a.host,
                               port=self.a.port, db=self.a.db, pgbench=self.a.pgbench,
                               naive_script=os.path.join(BENCH, "naive_drain.sql"))
        cur = self.cur
        drain.warm_up(a, cur)
        res = {}
        for rep, name in enumerate(("plain", "workflow", "workflow", "plain")):
            if name == "plain":
                r = drain.drain_atomizer(a, cur, "noop", 64)
                r["enqueue_s"] = a.jobs / r["enqueue_per_s"]
            else:
                r = self.workflow_drain(a, cur)
            if name not in res or r["per_s"] > res[name]["per_s"]:
                res[name] = dict(r, rep=rep)
        p, w = res["plain"], res["workflow"]
        res["ratio"] = w["per_s"] / p["per_s"]
        res["drain_us_per_edge"] = (w["wall_s"] - p["wall_s"] * w["jobs"] / p["jobs"]) \
            * 1e6 / w["edges"]
        res["enqueue_us_per_edge"] = (w["enqueue_s"] - p["enqueue_s"] * w["jobs"] / p["jobs"]) \
            * 1e6 / w["edges"]
        log("  workflow: %.0f jobs/s vs plain %.0f jobs/s (ratio %.2f); per edge %.1f us"
            " to drain, %.1f us to enqueue" % (w["per_s"], p["per_s"], res["ratio"],
                                               res["drain_us_per_edge"],
                                               res["enqueue_us_per_edge"]))
        self.res["workflow"] = res
        self.save()

    # 8 ------------------------------------------------------------------
    def dashboard(self):
        self.res["dashboard"] = dashboard.run(self)
        self.save()

    # 4 ------------------------------------------------------------------
    def latency(self):
        path = self.a.out + ".latency.json"
        subprocess.run([sys.executable, os.path.join(BENCH, "latency.py"), "--host", self.a.host,
                        "--port", str(self.a.port), "--db", self.a.db, "-n",
                        str(self.a.lat_n), "--out", path], check=True)
        with open(path) as f:
            self.res["latency"] = json.load(f)
        self.save()

    # 5 ------------------------------------------------------------------
    def ext_fill(self, n):
        cur = self.cur
        cur.execute("SELECT atomizer.purge()")
        for lo in range(1, n + 1, 1000):
            hi = min(lo + 999, n)
            cur.execute("SELECT count(*) FROM atomizer.enqueue_many('task',"
                        " (SELECT array_agg(jsonb_build_object('i', g) ORDER BY g)"
                        "  FROM generate_series(%s, %s) g), queue => 'ext')", (lo, hi))
        cur.execute("VACUUM ANALYZE atomizer.job, atomizer.job_history")
        cur.execute("CHECKPOINT")

    def ext_check(self, n, what):
        ok, left = q1(self.cur, """
            SELECT (SELECT count(*) FROM atomizer.job_history
                     WHERE queue = 'ext' AND state = 'succeeded'),
                   (SELECT count(*) FROM atomizer.job WHERE queue = 'ext')""")
        if ok != n or left:
            sys.exit("%s: %d jobs succeeded, %d left (expected %d succeeded)"
                     % (what, ok, left, n))

    def ext_client(self, n, mode):
        """Drain n jobs of queue ext with 2 threads, each a psycopg2
        connection claiming 100 jobs at a time; mode "complete_many" reports
        each batch with complete_many(), "one_call" passes it to the next
        claim() (completed => ...), one round trip and one commit a batch."""
        self.ext_fill(n)

        def client(stats):
            conn = self.connect()
            c = conn.cursor()
            done = 0
            ids, atts = None, None
            while True:
                if mode == "one_call":
                    c.execute("SELECT id, attempt FROM atomizer.claim('ext', 100, '1 minute',"
                              " completed => %s::bigint[], completed_attempts => %s::int[])",
                              (ids, atts))
                else:
                    c.execute("SELECT id, attempt FROM atomizer.claim('ext', 100, '1 minute')")
                rows = c.fetchall()
                if not rows:
                    break
                if mode == "one_call":
                    ids, atts = [x[0] for x in rows], [x[1] for x in rows]
                else:
                    c.execute("SELECT atomizer.complete_many(%s::bigint[])",
                              ([x[0] for x in rows],))
                done += len(rows)
            stats.append(done)
            conn.close()

        stats = []
        ts = [threading.Thread(target=client, args=(stats,)) for _ in range(2)]
        t0 = time.time()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        t1 = time.time()
        self.ext_check(n, "python client (%s)" % mode)
        log("  Python client (2 connections, claim 100 + %s): %d jobs in %.2f s, %.0f jobs/s"
            % ("complete_many" if mode == "complete_many" else "completed => in the next claim",
               n, t1 - t0, n / (t1 - t0)))
        return dict(jobs=n, wall_s=t1 - t0, per_s=n / (t1 - t0), clients=2, mode=mode,
                    per_client=stats)

    def ext_persistent(self, n, lang):
        """Drain n jobs with atomizer work --persistent -c 2 --pipeline 100
        and a reference worker of examples/ (lang "c": worker.c, compiled
        here; "python": worker.py)."""
        cli = os.path.join(self.a.bindir, "atomizer")
        if not os.path.exists(cli) or "--persistent" not in subprocess.run(
                [cli, "help", "work"], capture_output=True, text=True).stdout:
            log("  CLI without --persistent: skipped")
            return None
        examples = os.path.join(BENCH, "..", "examples")
        if lang == "c":
            exe = os.path.join(os.path.dirname(self.a.out), "worker-c")
            subprocess.run(["cc", "-O2", "-o", exe, os.path.join(examples, "worker.c")],
                           check=True)
            command = [exe]
        else:
            command = [sys.executable, os.path.join(examples, "worker.py")]
        self.ext_fill(n)
        cmd = [cli, "work", "--dsn", self.dsn(), "--queue", "ext", "--persistent",
               "--concurrency", "2", "--pipeline", "100", "--drain", "--"] + command
        t0 = time.time()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           timeout=300)
        t1 = time.time()
        if p.returncode != 0:
            sys.exit("atomizer work --persistent exited %s: %s" % (p.returncode, p.stderr))
        self.ext_check(n, "persistent CLI (%s)" % lang)
        log("  atomizer work --persistent -c 2 --pipeline 100 (%s worker): %d jobs in %.2f s,"
            " %.0f jobs/s" % (lang, n, t1 - t0, n / (t1 - t0)))
        return dict(jobs=n, wall_s=t1 - t0, per_s=n / (t1 - t0), worker=lang,
                    concurrency=2, pipeline=100)

    def external(self):
        cur = self.cur
        r = {}
        # (a) the CLI
        cli = os.path.join(self.a.bindir, "atomizer")
        n = self.a.cli_jobs
        if not os.path.exists(cli):
            r["cli"] = None
            log("  CLI not built (%s missing)" % cli)
        else:
            self.ext_fill(n)
            has_drain = "--drain" in subprocess.run([cli, "help", "work"], capture_output=True,
                                                    text=True).stdout
            cmd = [cli, "work", "--dsn", self.dsn(), "--queue", "ext", "--concurrency", "2"]
            if has_drain:
                cmd.append("--drain")
            cmd += ["--", "true"]
            t0 = time.time()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
            while True:
                if has_drain and p.poll() is not None:
                    break
                if not has_drain and not q1(cur, "SELECT EXISTS (SELECT FROM atomizer.job"
                                                 " WHERE queue = 'ext')")[0]:
                    break
                if time.time() - t0 > 300:
                    p.terminate()
                    sys.exit("CLI: not drained after 300 s")
                time.sleep(0.02)
            t1 = time.time()
            if p.poll() is None:
                p.terminate()       # our own child, by its pid
            _, err = p.communicate()
            if p.returncode not in (0, -15):
                sys.exit("CLI exited %s: %s" % (p.returncode, err))
            self.ext_check(n, "CLI")
            r["cli"] = dict(jobs=n, wall_s=t1 - t0, per_s=n / (t1 - t0), drain_flag=has_drain)
            log("  CLI (atomizer work -c 2 -- true): %d jobs in %.2f s, %.0f jobs/s"
                % (n, t1 - t0, n / (t1 - t0)))
        # (b) batch-claiming Python clients, 2 connections each, and (d) atomizer
        # work --persistent with the reference workers of examples/ (the no-op
        # C one, and the Python one), in --ext-rounds rounds, each round with
        # its own run of the baseline (the naive queue, same number of jobs)
        n = self.a.ext_jobs
        a = argparse.Namespace(jobs=n, timeout=300, host=self.a.host, port=self.a.port,
                               db=self.a.db, pgbench=self.a.pgbench,
                               naive_script=os.path.join(BENCH, "naive_drain.sql"))
        rounds = []
        for k in range(self.a.ext_rounds):
            log("  round %d of %d" % (k + 1, self.a.ext_rounds))
            one = {}
            one["naive"] = drain.drain_naive(a, cur)
            one["client"] = self.ext_client(n, "complete_many")
            one["client_one_call"] = self.ext_client(n, "one_call")
            one["persistent"] = self.ext_persistent(n, "c")
            one["persistent_py"] = self.ext_persistent(n, "python")
            one["naive2"] = drain.drain_naive(a, cur)
            rounds.append(one)
        cur.execute("SELECT atomizer.purge()")
        r["rounds"] = rounds
        # the table shows the round with the median one-call client ratio
        def one_call_ratio(x):
            return x["client_one_call"]["per_s"] / max(x["naive"]["per_s"], x["naive2"]["per_s"])
        mid = sorted(rounds, key=one_call_ratio)[len(rounds) // 2]
        r.update(mid)
        # (c) notification latency
        r["notify"] = self.notify_latency()
        self.res["external"] = r
        self.save()

    def notify_latency(self):
        lconn = self.connect()
        lcur = lconn.cursor()
        lcur.execute("LISTEN atomizer_ext")
        cur = self.cur
        notif, claim, missed = [], [], 0
        for i in range(self.a.notify_n):
            cur.execute("SELECT atomizer.enqueue('task', jsonb_build_object('i', %s::int),"
                        " queue => 'ext')", (i,))
            cur.fetchone()
            t0 = time.time()        # the enqueue has committed
            got = None
            deadline = t0 + 2
            while got is None and time.time() < deadline:
                lconn.poll()
                if lconn.notifies:
                    got = time.time()
                    lconn.notifies.clear()
                    break
                select.select([lconn], [], [], max(0, deadline - time.time()))
            if got is None:
                missed += 1
            else:
                notif.append((got - t0) * 1000)
            lcur.execute("SELECT id, attempt FROM atomizer.claim('ext', 10, '1 minute')")
            rows = lcur.fetchall()
            if got is not None and rows:
                claim.append((time.time() - t0) * 1000)
            if rows:
                lcur.execute("SELECT atomizer.complete_many(%s::bigint[])", ([x[0] for x in rows],))
            time.sleep(0.005)
        lconn.close()
        notif.sort()
        claim.sort()
        r = dict(n=self.a.notify_n, missed=missed)
        if notif:
            r.update(p50=pct(notif, 50), p99=pct(notif, 99), max=notif[-1])
        if claim:
            r.update(claim_p50=pct(claim, 50), claim_p99=pct(claim, 99))
        log("  notification after enqueue commit, %d samples: p50 %.2f ms, p99 %.2f ms"
            " (claimed: p50 %.2f ms, p99 %.2f ms); %d without notification within 2 s"
            % (r["n"], r.get("p50", -1), r.get("p99", -1), r.get("claim_p50", -1),
               r.get("claim_p99", -1), missed))
        return r

    # 6 ------------------------------------------------------------------
    def sizes(self):
        return dict(zip(
            ("job", "job_idx", "history", "history_idx", "job_dead", "job_autovacuums",
             "job_autoanalyzes"),
            q1(self.cur, """SELECT pg_total_relation_size('atomizer.job'),
                                   pg_indexes_size('atomizer.job'),
                                   pg_total_relation_size('atomizer.job_history'),
                                   pg_indexes_size('atomizer.job_history'),
                                   s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count
                              FROM pg_stat_user_tables s
                             WHERE s.relid = 'atomizer.job'::regclass""")))

    def steady_run(self, hold):
        cur = self.cur
        cur.execute("SELECT atomizer.purge()")
        cur.execute("VACUUM ANALYZE atomizer.job, atomizer.job_history")
        cur.execute("CHECKPOINT")
        holder = None
        if hold:
            holder = subprocess.Popen(
                [os.path.join(self.a.bindir, "psql"), "-X", "-q", "-h", self.a.host, "-p",
                 str(self.a.port), "-U", "postgres", "-d", self.a.db],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            holder.stdin.write("BEGIN; SELECT txid_current();\n")
            holder.stdin.flush()
            deadline = time.time() + 10
            while not q1(cur, "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                              " current_database() AND state = 'idle in transaction'"
                              " AND backend_xid IS NOT NULL")[0]:
                if time.time() > deadline:
                    sys.exit("steady: the held transaction did not start")
                time.sleep(0.05)
        total, chunk = self.a.steady_jobs, self.a.steady_chunk
        # the poll below must not scan the hot table, whatever its statistics
        cur.execute("SET enable_seqscan = off")
        chunks = []
        t_start = time.time()
        done = 0
        while done < total:
            # no chunk that would end after the budget (guessing it takes as
            # long as the last one)
            if chunks and (time.time() - t_start + chunks[-1]["wall_s"]
                           > self.a.steady_budget):
                break
            n = min(chunk, total - done)
            t0 = time.time()
            first_id = None
            for lo in range(0, n, 1000):
                cur.execute("SELECT min(id) FROM atomizer.enqueue_many('noop',"
                            " (SELECT array_agg('{\"a\":1}'::jsonb) FROM generate_series(1, %s)),"
                            " queue => 'steady') id", (min(1000, n - lo),))
                if first_id is None:
                    first_id = cur.fetchone()[0]
            t_enq = time.time()
            polls = 0
            # done when none of the chunk's jobs is left; the primary key
            # range keeps this poll off a sequential scan of the hot table
            sampled = False
            while q1(cur, "SELECT EXISTS (SELECT FROM atomizer.job WHERE id >= %s"
                          " AND queue = 'steady')", (first_id,))[0]:
                polls += 1
                if time.time() - t0 > 600:
                    sys.exit("steady: chunk not drained after 600 s")
                if not sampled and time.time() - t0 > 20:
                    # a chunk ten times slower than usual: say what the
                    # server's processes are doing, for whoever looks at it
                    sampled = True
                    cur.execute("SELECT backend_type, state, wait_event_type, wait_event,"
                                " left(query, 60) FROM pg_stat_activity"
                                " WHERE backend_type LIKE 'atomizer%%' OR backend_type = 'autovacuum worker'"
                                " ORDER BY 1")
                    for row in cur.fetchall():
                        log("    slow chunk: %s" % (row,))
                    log("    slow chunk: job table %s" % (self.sizes(),))
                time.sleep(max(0.0, t_enq + polls * 0.05 - time.time()))
            t1 = time.time()
            done += n
            chunks.append(dict(jobs=n, wall_s=t1 - t0, enqueue_s=t_enq - t0,
                               per_s=n / (t1 - t0)))
            log("    %s chunk %d: %d jobs in %.2f s (enqueue %.2f s), %.0f jobs/s"
                % ("held xact" if hold else "normal", len(chunks), n, t1 - t0, t_enq - t0,
                   n / (t1 - t0)))
        wall = time.time() - t_start
        cur.execute("RESET enable_seqscan")
        ok = q1(cur, "SELECT count(*) FROM atomizer.job_history WHERE queue = 'steady'"
                     " AND state = 'succeeded'")[0]
        if ok != done:
            sys.exit("steady: %d jobs succeeded, expected %d" % (ok, done))
        sizes = self.sizes()
        if holder:
            holder.stdin.write("COMMIT;\n")
            holder.stdin.close()
            holder.wait(timeout=30)
        r = dict(hold=hold, jobs=done, target=total, wall_s=wall, per_s=done / wall,
                 chunks=chunks, first=chunks[0]["per_s"], last=chunks[-1]["per_s"],
                 ratio=chunks[-1]["per_s"] / chunks[0]["per_s"], sizes=sizes)
        log("  steady %s: %d jobs in %.1f s, %.0f jobs/s; last/first chunk %.2f;"
            " job %.1f MB, job_history %.1f MB"
            % ("with a transaction held open" if hold else "normal", done, wall, done / wall,
               r["ratio"], sizes["job"] / 1e6, sizes["history"] / 1e6))
        return r

    def steady(self):
        drain.set_batch(self.cur, 64)
        # the sizes at the end are what a million steady jobs leave, not
        # what the backlogs of the earlier workloads left (a table is never
        # truncated while workers run; a DBA compacts it after such a burst)
        self.cur.execute("SELECT atomizer.purge()")
        self.cur.execute("VACUUM (FULL, ANALYZE) atomizer.job")
        self.res["steady"] = [self.steady_run(False), self.steady_run(True)]
        self.cur.execute("SELECT atomizer.purge()")
        self.cur.execute("VACUUM ANALYZE atomizer.job, atomizer.job_history")
        self.save()

    # 7 ------------------------------------------------------------------
    def cron(self):
        cur = self.cur
        n = self.a.cron_n
        cur.execute("SELECT atomizer.purge()")
        # baseline: enqueueing the same number of jobs in one statement
        cur.execute("SELECT atomizer.pause_queue('bench')")
        t0 = time.time()
        cur.execute("SELECT count(*) FROM atomizer.enqueue_many('noop',"
                    " (SELECT array_agg('{}'::jsonb) FROM generate_series(1, %s)),"
                    " queue => 'bench')", (n,))
        many_s = time.time() - t0
        self.reset_bench_queue()
        t0 = time.time()
        cur.execute("SELECT count(atomizer.schedule('s' || i, '* * * * *', 'noop'))"
                    " FROM generate_series(1, %s) i", (n,))
        create_s = time.time() - t0
        spid = self.scheduler_pid()
        # fires are enqueued this long before their time (0: at it)
        ahead = int(q1(cur, "SELECT setting FROM pg_settings"
                            " WHERE name = 'atomizer.cron_lookahead'")[0]) / 1000.0
        # the next minute boundary at least 3 s beyond the lookahead
        now = time.time()
        minute = (int(now) // 60 + 1) * 60
        if minute - now < 3 + ahead:
            minute += 60
        log("  %d schedules created in %.2f s; waiting %.0f s for %s"
            % (n, create_s, minute - now, time.strftime("%H:%M:%S", time.gmtime(minute))))
        time.sleep(max(0.0, minute - ahead - 1 - time.time()))
        c0, w0 = drain.cpu_ticks([spid]), time.time()
        # when every fire has committed: no schedule is still due for the
        # minute (a scan of atomizer.schedule, which has no index on
        # next_run: about 2 ms for 10,000 schedules, so every 10 ms from just
        # before the firing pass, not to take the scheduler's core);
        # negative: before the minute
        time.sleep(max(0.0, minute - ahead - 0.02 - time.time()))
        committed = None
        while time.time() < minute + 10:
            if q1(cur, "SELECT NOT EXISTS (SELECT FROM atomizer.schedule WHERE enabled"
                       " AND next_run <= to_timestamp(%s))", (minute,))[0]:
                committed = (time.time() - minute) * 1000
                break
            time.sleep(0.01)
        # jobs done?  (queue default's workers run them)
        time.sleep(max(0.0, minute - 1 + self.a.cron_window - time.time()))
        c1, w1 = drain.cpu_ticks([spid]), time.time()
        cpu_s = (c1 - c0) / HZ
        # stop the schedules before anything else fires (the cluster goes
        # away after this workload anyway)
        cur.execute("SELECT count(atomizer.unschedule('s' || i)) FROM generate_series(1, %s) i",
                    (n,))
        deadline = time.time() + 120
        while True:
            cnt, started = q1(cur, """
                SELECT count(*), count(started_at) FROM atomizer.jobs
                 WHERE handler = 'public.noop' AND run_at = to_timestamp(%s)""", (minute,))
            if started >= n or time.time() > deadline:
                break
            time.sleep(0.5)
        p50, p99, pmax, span, first, first_start = q1(cur, """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY d),
                   max(d), extract(epoch FROM max(created_at) - to_timestamp(%s)) * 1000,
                   extract(epoch FROM min(created_at) - to_timestamp(%s)) * 1000,
                   extract(epoch FROM min(started_at) - to_timestamp(%s)) * 1000
              FROM (SELECT extract(epoch FROM started_at - run_at) * 1000 AS d, created_at,
                           started_at
                      FROM atomizer.jobs
                     WHERE handler = 'public.noop' AND run_at = to_timestamp(%s)) j""",
                                          (minute, minute, minute, minute))
        r = dict(schedules=n, create_s=create_s, jobs=cnt, started=started,
                 window_s=w1 - w0, cpu_s=cpu_s, cpu_pct=100 * cpu_s / (w1 - w0),
                 delay_p50_ms=p50, delay_p99_ms=p99, delay_max_ms=pmax,
                 last_enqueued_ms=span, first_enqueued_ms=first, first_start_ms=first_start,
                 committed_ms=committed, lookahead_s=ahead,
                 enqueue_many_s=many_s)
        log("  cron: %d of %d jobs for %s, %d started; scheduler CPU %.2f s over %.0f s (%.1f %%"
            " of a core); firing delay p50 %s ms, p99 %s ms; last job enqueued %s ms after the"
            " minute, all fires committed %s ms after it (lookahead %.1f s; enqueue_many of %d:"
            " %.0f ms)"
            % (cnt, n, time.strftime("%H:%M", time.gmtime(minute)), started, cpu_s, w1 - w0,
               r["cpu_pct"], p50 and round(p50), p99 and round(p99), span and round(span),
               committed and round(committed), ahead, n, many_s * 1000))
        self.res["cron"] = r
        self.save()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--bindir", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--pgbench", default=shutil.which("pgbench") or "pgbench")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="enqueue,many,drain,limits,workflow,latency,external,"
                    "steady,cron,dashboard")
    ap.add_argument("--seconds", type=int, default=15, help="pgbench -T")
    ap.add_argument("--drain-jobs", type=int, default=100000)
    ap.add_argument("--lat-n", type=int, default=1000)
    ap.add_argument("--cli-jobs", type=int, default=5000)
    ap.add_argument("--ext-jobs", type=int, default=50000)
    ap.add_argument("--ext-rounds", type=int, default=3)
    ap.add_argument("--notify-n", type=int, default=500)
    ap.add_argument("--steady-jobs", type=int, default=1000000)
    ap.add_argument("--steady-chunk", type=int, default=100000)
    ap.add_argument("--steady-budget", type=float, default=100,
                    help="seconds per steady-state run; no new chunk after that")
    ap.add_argument("--limits-reps", type=int, default=3)
    ap.add_argument("--cron-n", type=int, default=10000)
    ap.add_argument("--cron-window", type=float, default=60)
    ap.add_argument("--dash-history", type=int, default=10000000)
    ap.add_argument("--dash-queues", type=int, default=8)
    ap.add_argument("--dash-n", type=int, default=500)
    ap.add_argument("--dash-drain-jobs", type=int, default=100000)
    a = ap.parse_args()
    b = Bench(a)
    for w in a.only.split(","):
        t = time.time()
        log("== %s" % w)
        getattr(b, w)()
        b.res.setdefault("seconds", {})[w] = time.time() - t
        b.save()


if __name__ == "__main__":
    main()
