#!/usr/bin/python3
"""bench/report.py DRAIN.json LATENCY.json HEADER: the markdown table of
bench/workers.sh, on stdout."""
import json
import statistics
import sys

drain = json.load(open(sys.argv[1]))
lat = json.load(open(sys.argv[2]))
header = sys.argv[3]
runs = drain["runs"]
reps = max(r["rep"] for r in runs)
n = runs[0]["jobs"]


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def med_opt(rs, key):
    xs = [r[key] for r in rs if r.get(key) is not None]
    return "?" if not xs else "%.0f" % statistics.median(xs)


def spread(rs, key):
    xs = [r[key] for r in rs]
    return "%.0f–%.0f" % (min(xs), max(xs))


naive = [r for r in runs if r["kind"] == "naive"]
naive_med = med(naive, "per_s")
configs = []
for r in runs:
    key = (r["kind"], r.get("handler"), r.get("batch"))
    if r["kind"] == "atomizer" and key not in configs:
        configs.append(key)

out = [header, ""]
out.append("| drain of %s jobs, concurrency 2 (median of %d) | jobs/s | min–max | vs naive "
           "| jobs/s from first claim | first claim after resume (max) "
           "| workers seen / running at once | CPU %% of a core: workers / scheduler / poller |"
           % (format(n, ","), reps))
out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
out.append("| naive SKIP LOCKED queue: pgbench -c 2, 10 rows/xact (baseline) | %.0f | %s | 1.00 | | | | |"
           % (naive_med, spread(naive, "per_s")))
for kind, handler, batch in configs:
    rs = [r for r in runs if r["kind"] == kind and r["handler"] == handler and r["batch"] == batch]
    what = "no-op handler" if handler == "noop" else "one-row INSERT handler"
    out.append("| atomizer, %s, batch_size %d | %.0f | %s | %.2f | %.0f | %.0f ms | %d / %d | %s / %s / %s |"
               % (what, batch, med(rs, "per_s"), spread(rs, "per_s"),
                  med(rs, "per_s") / naive_med, med(rs, "per_s_from_claim"),
                  max(r["start_delay_ms"] for r in rs),
                  max(r["max_workers"] for r in rs), max(r["max_running"] for r in rs),
                  med_opt(rs, "cpu_workers"), med_opt(rs, "cpu_scheduler"),
                  med_opt(rs, "cpu_poller")))
atom = [r for r in runs if r["kind"] == "atomizer"]
out.append("")
out.append("Enqueueing (queue paused): enqueue_many in chunks of 1,000, median %.0f jobs/s."
           % med(atom, "enqueue_per_s"))
probe = drain.get("probe_resume_ms")
out.append("resume_queue() of a paused queue with no worker running: first claim after %s."
           % ("%.0f ms" % probe if probe is not None else "more than the probe's timeout"))
pp = drain.get("probe_paused")
if pp:
    out.append("Idle workers of a paused queue that has a due job: %d worker(s) using %.1f %% of a core "
               "(should be about 0)." % (pp["workers"], pp["cpu_pct"]))
out.append("")
out.append("| latency, %d jobs one at a time, idle worker waiting | ms |" % lat["n"])
out.append("|---|---:|")
out.append("| enqueue commit returned → handler start, p50 | %.2f |" % lat["p50"])
out.append("| … p95 | %.2f |" % lat["p95"])
out.append("| … p99 | %.2f |" % lat["p99"])
out.append("| … min / max | %.2f / %.2f |" % (lat["min"], lat["max"]))
out.append("| enqueue commit returned → job claimed (its started_at), p50 | %.2f |"
           % lat["claim_p50"])
out.append("| baseline: round trip of `SELECT 1`, p50 | %.3f |" % lat["select1_p50"])
if "insert_p50" in lat:
    out.append("| baseline: round trip of a one-row `INSERT` into a plain table (commits), p50 | %.3f |"
               % lat["insert_p50"])
out.append("| baseline: round trip of `atomizer.enqueue(...)` (commits), p50 | %.3f |"
           % lat["enqueue_p50"])
print("\n".join(out))
