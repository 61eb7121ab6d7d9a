#!/usr/bin/python3
"""bench/run_report.py RESULTS.json HEADER FULL.md SHORT.md: the markdown
of bench/run.  FULL.md gets the full table (also printed), SHORT.md the
compact table for the main README's performance section."""
import json
import sys

r = json.load(open(sys.argv[1]))
header = sys.argv[2]
full, short = [header, ""], []


def n(x):
    return "{:,.0f}".format(x)


def ms(x, d=2):
    return "?" if x is None else ("%." + str(d) + "f") % x


def ratio(a, b):
    return "?" if not a or not b else "%.2f" % (a / b)


T = ["| workload | atomizer | baseline | baseline is | ratio |", "|---|---:|---:|---|---:|"]
S = ["| workload | atomizer | baseline (same run) | ratio |", "|---|---:|---:|---:|"]
notes = []

for row in r.get("enqueue", []):
    c = row["clients"]
    T.append("| 1. `enqueue()`, one job per transaction, pgbench -c %d -j %d, %d s | %s jobs/s"
             " | %s rows/s | one-row INSERT of the same row into a plain table | %s |"
             % (c, row["threads"], row["seconds"], n(row["atomizer"]), n(row["bare"]),
                ratio(row["atomizer"], row["bare"])))
    S.append("| enqueue, 1 job/transaction, %d connection%s | %s jobs/s | %s (plain INSERT) | %s |"
             % (c, "s" if c > 1 else "", n(row["atomizer"]), n(row["bare"]),
                ratio(row["atomizer"], row["bare"])))
if "enqueue" in r and "atomizer_scheduler_cpu_pct" in r["enqueue"][0]:
    notes.append("1: CPU of the database's atomizer scheduler during the enqueue runs"
                 " (queue paused), % of a core: " + ", ".join(
                     "-c %d %.0f %% (bare INSERT run: %.0f %%)"
                     % (x["clients"], x["atomizer_scheduler_cpu_pct"],
                        x["bare_scheduler_cpu_pct"]) for x in r["enqueue"]) + ".")
if "enqueue" in r:
    if "atomizer_runs" in r["enqueue"][0]:
        notes.append("1: each side ran twice, in the order bare, atomizer, atomizer, bare;"
                     " the table shows the means. Single runs, jobs/s: " + "; ".join(
                         "-c %d atomizer %s, bare %s"
                         % (x["clients"], " / ".join(n(v) for v in x["atomizer_runs"]),
                            " / ".join(n(v) for v in x["bare_runs"])) for x in r["enqueue"])
                     + ".")
    notes.append("1–2: the queue is paused (`atomizer.pause_queue`) so that no worker"
                 " competes; both tables are emptied, vacuumed and checkpointed before each"
                 " pgbench run. Durable commits: one-row transactions are bound by the WAL"
                 " flush, so with 1 connection both sides mostly measure fsync.")

m = r.get("many")
if m:
    T.append("| 2. `enqueue_many()` of 1,000 jobs per transaction, pgbench -c 1, %d s"
             " | %s jobs/s | %s rows/s | `INSERT ... SELECT ... FROM generate_series(1,1000)`"
             " | %s |" % (m["seconds"], n(m["atomizer"]), n(m["bare"]),
                          ratio(m["atomizer"], m["bare"])))
    S.append("| enqueue_many, 1,000 per call | %s jobs/s | %s (INSERT … SELECT) | %s |"
             % (n(m["atomizer"]), n(m["bare"]), ratio(m["atomizer"], m["bare"])))

d = r.get("drain")
if d:
    naives = [x for x in d if x["kind"] == "naive"]
    naive = max(naives, key=lambda x: x["per_s"])
    names = {"noop": "no-op SQL handler", "noop_plpgsql": "no-op PL/pgSQL handler",
             "effect": "one-row INSERT, SQL handler",
             "effect_plpgsql": "one-row INSERT, PL/pgSQL handler"}
    for x in d:
        if x["kind"] != "atomizer":
            continue
        T.append("| 3. drain of %s pre-enqueued jobs by the workers (concurrency 2), %s"
                 " | %s jobs/s | %s rows/s | naive SKIP LOCKED queue, pgbench -c 2, 10 rows"
                 " per transaction | %s |"
                 % (n(x["jobs"]), names[x["handler"]], n(x["per_s"]), n(naive["per_s"]),
                    ratio(x["per_s"], naive["per_s"])))
        S.append("| drain by workers (2), %s | %s jobs/s | %s (naive SKIP LOCKED) | %s |"
                 % (names[x["handler"]], n(x["per_s"]), n(naive["per_s"]),
                    ratio(x["per_s"], naive["per_s"])))
    bares = [x for x in d if x["kind"] == "bare"]
    if bares:
        bare = max(bares, key=lambda x: x["per_s"])
        for x in d:
            if x["kind"] == "atomizer" and x["handler"] in ("noop", "effect"):
                T.append("| 3. … the same drain, %s, against the bare limit | %s jobs/s | %s rows/s |"
                         " bare batched move: 64 rows per transaction deleted and inserted into"
                         " a history table in one statement, pgbench -c 2 | %s |"
                         % (names[x["handler"]], n(x["per_s"]), n(bare["per_s"]),
                            ratio(x["per_s"], bare["per_s"])))
                S.append("| drain by workers (2), %s | %s jobs/s | %s (bare batched move into a history) | %s |"
                         % (names[x["handler"]], n(x["per_s"]), n(bare["per_s"]),
                            ratio(x["per_s"], bare["per_s"])))
    cpu = ", ".join("%s %s" % (x["handler"], "n/a (a worker came or went)"
                               if x.get("cpu_workers") is None
                               else "%.0f %%" % x["cpu_workers"])
                    for x in d if x["kind"] == "atomizer")
    notes.append("3: batch_size 64 (the default); timed from `resume_queue()` until no job"
                 " is left; every job checked to have succeeded. The naive queue deletes"
                 " rows and records nothing: an upper bound for a queue in SQL on this"
                 " machine, not a like-for-like competitor; it runs before and after the"
                 " atomizer drains and the table shows the better run (%s)."
                 " Workers' CPU, %% of one core: " % " and ".join(n(x["per_s"]) + " rows/s"
                                                                  for x in naives)
                 + cpu + ".")

lim = r.get("limits")
if lim:
    for name, base, what in (("rate", "plain64", "a rate limit that does not bind"
                              " (100,000,000 a second), batch 64"),
                             ("handler", "plain2", "the handler limited to 8 running, which"
                              " does not bind (2 workers, batch 2)")):
        x, y = lim[name], lim[base]
        T.append("| 3b. drain of %s no-op jobs with %s | %s jobs/s | %s jobs/s | the same drain"
                 " without the limit | %s |"
                 % (n(x["jobs"]), what, n(x["per_s"]), n(y["per_s"]), ratio(x["per_s"], y["per_s"])))
        S.append("| drain with %s | %s jobs/s | %s (no limit) | %s |"
                 % ("a rate limit (not binding)" if name == "rate"
                    else "a handler limit of 8 (not binding)",
                    n(x["per_s"]), n(y["per_s"]), ratio(x["per_s"], y["per_s"])))
    pairs = lim.get("pairs", [])
    notes.append("3b: each drain with a limit runs beside the same drain without it, %s,"
                 " alternating; the better run of each is shown. Every pair's ratio"
                 " (throughput; workers' CPU per job, without ÷ with): %s. The limits' cost"
                 " is the claim's per-queue lock, the handlers' running counts, and the record"
                 " of the rate window's starts."
                 % ("%d times" % max([p["rep"] for p in pairs] or [2]),
                    "; ".join("%s %s (CPU %s)" % (p["limit"], ratio(p["limited_per_s"],
                                                                     p["plain_per_s"]),
                                                 ratio(p["cpu_us_plain"], p["cpu_us_limited"]))
                              for p in pairs) or "?"))

wf = r.get("workflow")
if wf:
    x, y = wf["workflow"], wf["plain"]
    T.append("| 3c. drain of a %s-job workflow: per 100 jobs a root, 98 parts that depend on"
             " it and a callback that depends on the 98 (%s edges) | %s jobs/s | %s jobs/s |"
             " the plain drain of %s jobs | %s |"
             % (n(x["jobs"]), n(x["edges"]), n(x["per_s"]), n(y["per_s"]), n(y["jobs"]),
                ratio(x["per_s"], y["per_s"])))
    S.append("| drain of a workflow (fan-out/fan-in per 100 jobs) | %s jobs/s | %s (no"
             " dependencies) | %s |" % (n(x["per_s"]), n(y["per_s"]), ratio(x["per_s"], y["per_s"])))
    notes.append("3c: plain, workflow, workflow, plain; the better run of each is shown."
                 " Cost per dependency edge: %.1f µs of drain, %.1f µs of enqueue"
                 " (enqueue_many of the parts with `depends_on`, %s jobs/s, against"
                 " enqueue_many of plain jobs, %s jobs/s)."
                 % (wf["drain_us_per_edge"], wf["enqueue_us_per_edge"],
                    n(x["enqueue_per_s"]), n(y["enqueue_per_s"])))

lat = r.get("latency")
if lat:
    T.append("| 4. enqueue commit returned → handler start, %d jobs 5 ms apart, idle worker,"
             " p50 / p95 / p99 | %s / %s / %s ms | %s ms | round trip of a durable one-row"
             " INSERT (p50) | %s |"
             % (lat["n"], ms(lat["p50"]), ms(lat["p95"]), ms(lat["p99"]),
                ms(lat["insert_p50"]), ratio(lat["p50"], lat["insert_p50"])))
    if "insert_paced_p99" in lat:
        T.append("| 4. … p50 / p99 against the same INSERT between the enqueues (5 ms apart, same seconds)"
                 " | %s / %s ms | %s / %s ms | round trip of a durable one-row INSERT,"
                 " paced (p50 / p99) | %s / %s |"
                 % (ms(lat["p50"]), ms(lat["p99"]), ms(lat["insert_paced_p50"]),
                    ms(lat["insert_paced_p99"]), ratio(lat["p50"], lat["insert_paced_p50"]),
                    ratio(lat["p99"], lat["insert_paced_p99"])))
        S.append("| enqueue commit → handler start, p50 / p99 | %s / %s ms | %s ms (1-row"
                 " INSERT round trip); %s / %s ms paced between the enqueues | %s;"
                 " p99 %s |"
                 % (ms(lat["p50"]), ms(lat["p99"]), ms(lat["insert_p50"]),
                    ms(lat["insert_paced_p50"]), ms(lat["insert_paced_p99"]),
                    ratio(lat["p50"], lat["insert_p50"]),
                    ratio(lat["p99"], lat["insert_paced_p99"])))
    else:
        S.append("| enqueue commit → handler start, p50 / p99 | %s / %s ms | %s ms (1-row"
                 " INSERT round trip) | %s |"
                 % (ms(lat["p50"]), ms(lat["p99"]), ms(lat["insert_p50"]),
                    ratio(lat["p50"], lat["insert_p50"])))
    notes.append("4: client and server share the clock; the handler records"
                 " `clock_timestamp()`. Latency can be slightly negative: the worker is woken"
                 " at commit, before the client has read the reply. Round trips p50: `SELECT 1`"
                 " %s ms, `enqueue()` %s ms; commit → claim p50 %s ms."
                 % (ms(lat["select1_p50"], 3), ms(lat["enqueue_p50"], 3),
                    ms(lat["claim_p50"])))
    if "insert_paced_p99" in lat:
        notes.append("4: split at the claim (`started_at`, set by the claim's UPDATE), p50 / p99:"
                     " commit → claim %s / %s ms, claim → handler start (the claim's commit"
                     " and WAL flush, the handler's transaction) %s / %s ms. Round trips"
                     " p50 / p99: `SELECT 1` %s / %s ms, one-row INSERT back to back %s / %s ms,"
                     " between the enqueues %s / %s ms, `enqueue()` 5 ms apart %s / %s ms."
                     % (ms(lat["claim_p50"]), ms(lat["claim_p99"]),
                        ms(lat["claim_to_start_p50"]), ms(lat["claim_to_start_p99"]),
                        ms(lat["select1_p50"], 3), ms(lat["select1_p99"], 3),
                        ms(lat["insert_p50"], 3), ms(lat["insert_p99"], 3),
                        ms(lat["insert_paced_p50"], 3), ms(lat["insert_paced_p99"], 3),
                        ms(lat["enqueue_p50"], 3), ms(lat["enqueue_p99"], 3)))

e = r.get("external")
if e:
    naive = max([e["naive"]] + ([e["naive2"]] if "naive2" in e else []),
                key=lambda x: x["per_s"])
    if e.get("cli"):
        c = e["cli"]
        T.append("| 5a. `atomizer work --concurrency 2 -- true` (CLI, a process per job),"
                 " drain of %s jobs | %s jobs/s | %s rows/s | naive SKIP LOCKED queue"
                 " (%s rows) | %s |" % (n(c["jobs"]), n(c["per_s"]), n(naive["per_s"]),
                                        n(naive["jobs"]), ratio(c["per_s"], naive["per_s"])))
        S.append("| external CLI worker, `-- true`, concurrency 2 | %s jobs/s | %s | %s |"
                 % (n(c["per_s"]), n(naive["per_s"]), ratio(c["per_s"], naive["per_s"])))
    else:
        T.append("| 5a. `atomizer work` (CLI) | CLI not built | | | |")
        S.append("| external CLI worker | CLI not built | | |")
    c = e["client"]
    T.append("| 5b. Python client, 2 connections, `claim(…, 100)` + `complete_many()`,"
             " drain of %s jobs | %s jobs/s | %s rows/s | naive SKIP LOCKED queue | %s |"
             % (n(c["jobs"]), n(c["per_s"]), n(naive["per_s"]),
                ratio(c["per_s"], naive["per_s"])))
    S.append("| external client, claim 100 + complete_many, 2 connections | %s jobs/s | %s |"
             " %s |" % (n(c["per_s"]), n(naive["per_s"]), ratio(c["per_s"], naive["per_s"])))
    c = e.get("client_one_call")
    if c:
        T.append("| 5b. Python client, 2 connections, `claim(…, 100, completed => the last"
                 " batch)`, one call a batch, drain of %s jobs | %s jobs/s | %s rows/s |"
                 " naive SKIP LOCKED queue | %s |"
                 % (n(c["jobs"]), n(c["per_s"]), n(naive["per_s"]),
                    ratio(c["per_s"], naive["per_s"])))
        S.append("| external client, claim 100 with `completed =>`, 2 connections | %s jobs/s"
                 " | %s | %s |" % (n(c["per_s"]), n(naive["per_s"]),
                                   ratio(c["per_s"], naive["per_s"])))
    for key, what in (("persistent", "no-op C worker (examples/worker.c)"),
                      ("persistent_py", "Python worker (examples/worker.py)")):
        c = e.get(key)
        if not c:
            continue
        T.append("| 5d. `atomizer work --persistent --concurrency 2 --pipeline 100`, %s,"
                 " drain of %s jobs | %s jobs/s | %s rows/s | naive SKIP LOCKED queue | %s |"
                 % (what, n(c["jobs"]), n(c["per_s"]), n(naive["per_s"]),
                    ratio(c["per_s"], naive["per_s"])))
        S.append("| external CLI worker, `--persistent`, %s, concurrency 2 | %s jobs/s"
                 " | %s | %s |" % (what, n(c["per_s"]), n(naive["per_s"]),
                                   ratio(c["per_s"], naive["per_s"])))
    if len(e.get("rounds", [])) > 1:
        def rr(x, key):
            b = max(x["naive"]["per_s"], x["naive2"]["per_s"])
            return "?" if not x.get(key) else "%.2f" % (x[key]["per_s"] / b)
        notes.append("5b/5d: %d rounds, each beside its own two naive runs (the table shows the"
                     " round of the median one-call ratio); ratios per round:"
                     " complete_many %s; completed => %s; --persistent C %s; --persistent"
                     " Python %s." % (len(e["rounds"]),
                                      " / ".join(rr(x, "client") for x in e["rounds"]),
                                      " / ".join(rr(x, "client_one_call") for x in e["rounds"]),
                                      " / ".join(rr(x, "persistent") for x in e["rounds"]),
                                      " / ".join(rr(x, "persistent_py") for x in e["rounds"])))
    nt = e["notify"]
    base = lat["insert_p50"] if lat else None
    T.append("| 5c. enqueue commit returned → NOTIFY on `atomizer_ext` received, %d samples,"
             " p50 / p99 | %s / %s ms | %s ms | round trip of a durable one-row INSERT (p50)"
             " | %s |" % (nt["n"], ms(nt.get("p50")), ms(nt.get("p99")), ms(base),
                          ratio(nt.get("p50"), base)))
    T.append("| 5c. … → job claimed by the listener, p50 / p99 | %s / %s ms | | | |"
             % (ms(nt.get("claim_p50")), ms(nt.get("claim_p99"))))
    S.append("| external: enqueue commit → notification, p50 / p99 | %s / %s ms | | |"
             % (ms(nt.get("p50")), ms(nt.get("p99"))))
    if nt.get("missed"):
        notes.append("5c: %d of %d enqueues got no notification within 2 s."
                     % (nt["missed"], nt["n"]))

st = r.get("steady")
if st:
    for x in st:
        what = "with a transaction held open" if x["hold"] else "normal"
        sz = x["sizes"]
        T.append("| 6. steady state, %s: %s jobs in chunks of %s (enqueue_many, then drain)"
                 " | %s jobs/s overall; first chunk %s, last %s | | last chunk / first"
                 " | %s |"
                 % (what, n(x["jobs"]), n(x["chunks"][0]["jobs"]), n(x["per_s"]),
                    n(x["first"]), n(x["last"]), ratio(x["last"], x["first"])))
        T.append("| 6. … sizes at the end, %s: `atomizer.job` (its indexes) / `job_history`"
                 " (its indexes) | %.1f (%.1f) / %.1f (%.1f) MB | | | |"
                 % (what, sz["job"] / 1e6, sz["job_idx"] / 1e6, sz["history"] / 1e6,
                    sz["history_idx"] / 1e6))
        if "job_dead" in sz:
            notes.append("6, %s: at the end `atomizer.job` had %s dead rows (pg_stat); autovacuum"
                         " had processed it %s times, autoanalyze %s times."
                         % (what, n(sz["job_dead"]), sz["job_autovacuums"],
                            sz["job_autoanalyzes"]))
        S.append("| %s jobs through enqueue + drain, %s | %s jobs/s | | last/first %s |"
                 % (n(x["jobs"]), what, n(x["per_s"]), ratio(x["last"], x["first"])))
    short_of = [x for x in st if x["jobs"] < x["target"]]
    notes.append("6: no-op SQL handler, queue concurrency 2, batch_size 64; each chunk is"
                 " enqueued with enqueue_many in batches of 1,000 (workers start at once)"
                 " and timed until the queue is empty. Per-chunk jobs/s: "
                 + "; ".join("%s: %s" % ("held" if x["hold"] else "normal",
                                         ", ".join(n(c["per_s"]) for c in x["chunks"]))
                             for x in st) + "."
                 + ("" if not short_of else
                    " Time budget: %s instead of %s jobs."
                    % (" and ".join(n(x["jobs"]) for x in short_of), n(short_of[0]["target"]))))

cr = r.get("cron")
if cr:
    T.append("| 7. cron: %s schedules `* * * * *`, one minute: scheduler CPU | %.2f s"
             " (%.1f %% of a core) | | | |" % (n(cr["schedules"]), cr["cpu_s"], cr["cpu_pct"]))
    T.append("| 7. … firing delay (started_at − run_at) p50 / p99 | %s / %s ms | | | |"
             % (ms(cr["delay_p50_ms"], 0), ms(cr["delay_p99_ms"], 0)))
    T.append("| 7. … minute boundary → last of the %s jobs enqueued | %s ms | %s ms"
             " | `enqueue_many()` of %s jobs in one statement | %s |"
             % (n(cr["jobs"]), ms(cr["last_enqueued_ms"], 0), ms(cr["enqueue_many_s"] * 1000, 0),
                n(cr["schedules"]), ("fired ahead" if (cr["last_enqueued_ms"] or 0) < 0 else ratio(cr["last_enqueued_ms"], cr["enqueue_many_s"] * 1000))))
    if cr.get("committed_ms") is not None:
        T.append("| 7. … minute boundary → every fire committed (polled every 10 ms;"
                 " negative: before the minute, `atomizer.cron_lookahead` = %s s) | %s ms"
                 " | | | |" % (ms(cr.get("lookahead_s", 0), 1), ms(cr["committed_ms"], 0)))
    S.append("| cron, %s schedules every minute: fire span (all committed) / scheduler CPU"
             " | %s ms (%s ms) / %.1f %% of a core | %s ms (enqueue_many) | %s |"
             % (n(cr["schedules"]), ms(cr["last_enqueued_ms"], 0), ms(cr.get("committed_ms"), 0),
                cr["cpu_pct"], ms(cr["enqueue_many_s"] * 1000, 0),
                ("fired ahead" if (cr["last_enqueued_ms"] or 0) < 0 else ratio(cr["last_enqueued_ms"], cr["enqueue_many_s"] * 1000))))
    notes.append("7: %s of %s jobs seen, %s started. Firing delay includes the wait for a"
                 " worker of queue `default` (concurrency 10, but idle workers of the other"
                 " queues hold some of the 8 `atomizer.max_workers` slots). `created_at` is"
                 " the firing transaction's start: first %s ms, last %s ms after the minute;"
                 " the first job started %s ms after it. `schedule()` of all %s took %.1f s."
                 % (n(cr["jobs"]), n(cr["schedules"]), n(cr["started"]),
                    ms(cr["first_enqueued_ms"], 0), ms(cr["last_enqueued_ms"], 0),
                    ms(cr.get("first_start_ms"), 0), n(cr["schedules"]), cr["create_s"]))

da = r.get("dashboard")
if da and "overview" in da:
    for key, what in (("overview", "`GET /api/overview`"), ("metrics", "`GET /metrics`")):
        x = da[key]
        T.append("| 8. dashboard %s with %s finished jobs in the history, %d requests: p50 / p99"
                 " | %s / %s ms | %s ms | `SELECT * FROM atomizer.queue_stats` (the count"
                 " the overview and /metrics read before) | %s |"
                 % (what, n(da["history"]), x["n"], ms(x["p50"], 1), ms(x["p99"], 1),
                    ms(da["queue_stats_ms"], 0), ratio(x["p99"], da["queue_stats_ms"])))
        S.append("| dashboard %s, %s finished jobs in the history, p50 / p99 | %s / %s ms"
                 " | %s ms (counting `queue_stats`) | %s |"
                 % (what, n(da["history"]), ms(x["p50"], 1), ms(x["p99"], 1),
                    ms(da["queue_stats_ms"], 0), ratio(x["p99"], da["queue_stats_ms"])))
    T.append("| 8. drain of %s jobs (no-op SQL handler) with the dashboard open (an event"
             " stream and an overview refresh every second) | %s jobs/s | %s jobs/s | the"
             " same drain without the dashboard, same run | %s |"
             % (n(da["drains"][0]["jobs"]), n(da["drain_with"]), n(da["drain_without"]),
                "%.3f" % (da["drain_with"] / da["drain_without"])))
    S.append("| drain with the dashboard open | %s jobs/s | %s jobs/s (without) | %.3f |"
             % (n(da["drain_with"]), n(da["drain_without"]), da["drain_with"] / da["drain_without"]))
    notes.append("8: history filled in %.0f s (%s, %d queues; %s rollup rows for 8 days); each"
                 " side of the drain ran 4 times, alternated; single runs, jobs/s: without %s;"
                 " with %s (overview refreshes during those: %s). The dashboard's own cost"
                 " during the open runs, from /proc: its database connections %s %% of a core,"
                 " the dashboard process %s %%."
                 % (da["fill_s"], da["history_size"], da["queues"], n(da["rollup_rows"]),
                    " / ".join(n(x["per_s"]) for x in da["drains"] if not x["dashboard_open"]),
                    " / ".join(n(x["per_s"]) for x in da["drains"] if x["dashboard_open"]),
                    " / ".join(str(x.get("refreshes")) for x in da["drains"] if x["dashboard_open"]),
                    " / ".join(ms(x.get("dashboard_db_cpu_pct"), 1) for x in da["drains"] if x["dashboard_open"]),
                    " / ".join(ms(x.get("dashboard_cli_cpu_pct"), 1) for x in da["drains"] if x["dashboard_open"])))
elif da:
    T.append("| 8. dashboard | %s | | | |" % da.get("error", "?"))

full += T + [""] + ["- " + x for x in notes]
secs = r.get("seconds", {})
if secs:
    full += ["", "Time per workload: " + ", ".join("%s %.0f s" % (k, v) for k, v in secs.items())
             + "."]
short = S
open(sys.argv[3], "w").write("\n".join(full) + "\n")
open(sys.argv[4], "w").write("\n".join(short) + "\n")
print("\n".join(full))
