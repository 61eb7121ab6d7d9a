#!/usr/bin/python3
"""bench/rotation.py: drives the experiment of bench/rotation.sql (run by
bench/rotation.sh; see bench/README.md, "A rotating hot table").

For each table ("one": a single vacuumed table, "rot": three partitions
rotated and truncated) and each mode (normal, a transaction held open the
whole time): JOBS jobs in chunks of CHUNK, each chunk enqueued 1,000 per
statement while WORKERS threads drain it in batches of BATCH (a claim
transaction, then a finish transaction, as atomizer's workers do).  A
housekeeping thread vacuums the single table every 0.5 s (VACUUM of
atomizer.job by its scheduler is at most every half second) or calls
rot.rotate() every 0.1 s.  Prints per-chunk rates, the table's size at the
end (with its indexes, all partitions) and the rotation's counts."""
import argparse
import json
import threading
import time

from drain import connect, q1  # (bench/drain.py)


class Run:
    def __init__(self, a, tab, hold):
        self.a, self.tab, self.hold = a, tab, hold
        self.finished = 0
        self.lock = threading.Lock()
        self.stop = False
        self.errors = []

    def worker(self):
        try:
            cur = connect(self.a).cursor()
            while not self.stop:
                ids = q1(cur, "SELECT rot.claim(%s, %s)", (self.tab, self.a.batch))[0]
                if not ids:
                    time.sleep(0.001)
                    continue
                cur.execute("SELECT rot.finish(%s, %s)", (self.tab, ids))
                with self.lock:
                    self.finished += len(ids)
        except Exception as e:      # reported by the main thread
            self.errors.append(repr(e))

    def housekeeper(self):
        try:
            cur = connect(self.a).cursor()
            while not self.stop:
                t0 = time.time()
                if self.tab == "one":
                    cur.execute("VACUUM (TRUNCATE false) rot.one_job")
                    time.sleep(max(0.0, 0.5 - (time.time() - t0)))
                else:
                    cur.execute("CALL rot.rotate()")
                    time.sleep(max(0.0, 0.1 - (time.time() - t0)))
        except Exception as e:
            self.errors.append(repr(e))

    def size(self, cur):
        if self.tab == "one":
            return q1(cur, "SELECT pg_total_relation_size('rot.one_job')")[0]
        return q1(cur, "SELECT sum(pg_total_relation_size(relid))::bigint"
                       " FROM pg_partition_tree('rot.rot_job')")[0]

    def run(self):
        a = self.a
        cur = connect(a).cursor()
        cur.execute("TRUNCATE rot.history, rot.one_job, rot.rot_job")
        cur.execute("UPDATE rot.rot_state SET cur = 0, since_id ="
                    " (SELECT last_value FROM rot.rot_job_id_seq), every = %s,"
                    " rotations = 0, truncations = 0, moved = 0, busy = 0, lock_ms_max = 0, lock_ms_sum = 0", (a.every,))
        cur.execute("VACUUM ANALYZE rot.one_job, rot.rot_job, rot.history")
        cur.execute("CHECKPOINT")
        holder = None
        if self.hold:
            holder = connect(a)
            holder.autocommit = False
            holder.cursor().execute("SELECT txid_current()")
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(a.workers)]
        threads.append(threading.Thread(target=self.housekeeper, daemon=True))
        for t in threads:
            t.start()
        chunks = []
        done = 0
        t_start = time.time()
        while done < a.jobs:
            n = min(a.chunk, a.jobs - done)
            t0 = time.time()
            for lo in range(0, n, 1000):
                cur.execute("SELECT rot.enqueue(%s, %s)", (self.tab, min(1000, n - lo)))
            while self.finished < done + n:
                if self.errors:
                    raise SystemExit("rotation: %s" % self.errors)
                if time.time() - t0 > 600:
                    raise SystemExit("rotation: chunk not drained after 600 s")
                time.sleep(0.01)
            done += n
            chunks.append(n / (time.time() - t0))
        wall = time.time() - t_start
        size = self.size(cur)
        self.stop = True
        for t in threads:
            t.join()
        if holder:
            holder.rollback()
        hist = q1(cur, "SELECT count(*) FROM rot.history")[0]
        if hist != done:
            raise SystemExit("rotation: %d history rows, expected %d" % (hist, done))
        state = q1(cur, "SELECT rotations, truncations, moved, busy, lock_ms_max, lock_ms_sum"
                       " FROM rot.rot_state")
        r = dict(table=self.tab, hold=self.hold, jobs=done, per_s=done / wall,
                 chunks=[round(c) for c in chunks], ratio=chunks[-1] / chunks[0],
                 size_mb=size / 1e6, rotations=state[0], truncations=state[1],
                 moved=state[2], busy=state[3], lock_ms_max=state[4],
                 lock_ms_mean=state[5] / state[1] if state[1] else 0)
        print("%-3s %-6s %d jobs, %.0f jobs/s, last/first %.2f, table %.1f MB;"
              " rotations %d, truncations %d (lock busy %d; held %.1f ms mean, %.1f max),"
              " rows moved %d; chunks %s"
              % (self.tab, "held" if self.hold else "normal", done, r["per_s"], r["ratio"],
                 r["size_mb"], r["rotations"], r["truncations"], r["busy"], r["lock_ms_mean"],
                 r["lock_ms_max"], r["moved"],
                 r["chunks"]), flush=True)
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--jobs", type=int, default=1000000)
    ap.add_argument("--chunk", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--every", type=int, default=50000)
    ap.add_argument("--runs", default="one:normal,rot:normal,rot:normal,one:normal,"
                    "one:held,rot:held,rot:held,one:held",
                    help="table:mode pairs in order (alternated by default, so that"
                         " a slow period of the machine falls on both)")
    ap.add_argument("--out")
    a = ap.parse_args()
    res = []
    for run in a.runs.split(","):
        tab, mode = run.split(":")
        res.append(Run(a, tab, mode == "held").run())
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
