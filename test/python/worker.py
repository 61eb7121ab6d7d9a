#!/usr/bin/python3
"""An atomizer external worker in plain Python (psycopg2), for the tests.

It follows the documented protocol and nothing else, to show that the
protocol is plain SQL:

    LISTEN atomizer_<queue>;
    repeat:
        claim(queue, max_jobs, lease, worker) until it returns no rows,
            doing each job and reporting it with the attempt claim returned:
            complete(id, result, attempt) / fail(id, error, NULL, attempt),
            heartbeat(id, lease, attempt) while a slow job runs,
            or, with --complete-many, complete_many(ids) for a whole batch,
            or, with --one-call, the batch's successes (ids, results,
            attempts) passed to the next claim(completed => ...);
        wait for a notification on the connection, or --poll seconds.

On SIGTERM/SIGINT it stops claiming, releases the jobs of its batch that
it has not done yet (release(id, attempt): available again, the attempt
not counted) and exits 0.

What a "job" does here: append "<id> <task> <attempt>" to --out; the task
named by --fail-task fails its first attempt with "boom from python"; a
payload {"sleep": S} sleeps S seconds, heartbeating every lease/2.
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

import psycopg2
import psycopg2.extensions

stopping = False


def on_signal(signo, frame):
    global stopping
    stopping = True


def log(msg):
    sys.stderr.write("%s worker.py[%d]: %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--batch", type=int, default=1, help="max_jobs per claim")
    ap.add_argument("--lease", type=float, default=60.0, help="seconds")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between claims without NOTIFY")
    ap.add_argument("--out", help="append '<id> <task> <attempt>' per job run")
    ap.add_argument("--fail-task", help="this task fails its first attempt")
    ap.add_argument("--complete-many", action="store_true",
                    help="report a batch of successes with complete_many(ids)")
    ap.add_argument("--one-call", action="store_true",
                    help="report a batch of successes with the next claim (completed =>)")
    ap.add_argument("--drain", action="store_true",
                    help="exit once a claim returns nothing")
    ap.add_argument("--stats", action="store_true",
                    help="print 'jobs seconds' on stdout at the end")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A signal also writes to this pipe, so that it ends a select() at once
    # (Python restarts an interrupted select otherwise).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    conn = psycopg2.connect(args.dsn, application_name="worker.py")
    conn.autocommit = True
    cur = conn.cursor()
    # The channel is atomizer_<queue>; queue names are plain identifiers.
    cur.execute('LISTEN "atomizer_%s"' % args.queue.replace('"', '""'))
    me = "%s:worker.py:%d" % (socket.gethostname(), os.getpid())
    lease = "%f seconds" % args.lease
    out = open(args.out, "a") if args.out else None
    done = 0
    first = None
    # --one-call: successes not reported yet, for the next claim
    pending = ([], [], [])

    while not stopping:
        if args.one_call:
            cur.execute("SELECT id, handler, payload, attempt"
                        "  FROM atomizer.claim(%s, %s, %s::interval, %s,"
                        "    completed => %s::bigint[], results => %s::jsonb[],"
                        "    completed_attempts => %s::int[])",
                        (args.queue, args.batch, lease, me) + pending)
            pending = ([], [], [])
        else:
            cur.execute("SELECT id, handler, payload, attempt"
                        "  FROM atomizer.claim(%s, %s, %s::interval, %s)",
                        (args.queue, args.batch, lease, me))
        jobs = cur.fetchall()
        if first is None and jobs:
            first = time.time()
        if not jobs:
            if args.drain:
                break
            # Wait for a NOTIFY on the connection's socket, or the poll
            # timeout; then claim again whatever the notification said.
            ready = select.select([conn, wake_r], [], [], args.poll)[0]
            if conn in ready:
                conn.poll()
                del conn.notifies[:]
            continue

        succeeded = []
        for n, (job_id, task, payload, attempt) in enumerate(jobs):
            if stopping:
                # give back what we have not started: attempt not counted
                for (rid, _, _, ratt) in jobs[n:]:
                    cur.execute("SELECT atomizer.release(%s, %s)", (rid, ratt))
                log("released %d job(s)" % (len(jobs) - n))
                break
            if out:
                out.write("%d %s %d\n" % (job_id, task, attempt))
                out.flush()
            if isinstance(payload, dict) and "sleep" in payload:
                end = time.time() + float(payload["sleep"])
                while time.time() < end:
                    time.sleep(min(args.lease / 2, end - time.time()))
                    cur.execute("SELECT atomizer.heartbeat(%s, %s::interval, %s)",
                                (job_id, lease, attempt))
            if task == args.fail_task and attempt == 1:
                cur.execute("SELECT atomizer.fail(%s, %s, NULL, %s)",
                            (job_id, "boom from python (attempt %d)" % attempt, attempt))
                continue
            if args.one_call:
                pending[0].append(job_id)
                pending[1].append(json.dumps({"by": "python", "attempt": attempt}))
                pending[2].append(attempt)
            elif args.complete_many:
                succeeded.append(job_id)
            else:
                try:
                    cur.execute("SELECT atomizer.complete(%s, %s::jsonb, %s)",
                                (job_id, json.dumps({"by": "python", "attempt": attempt}),
                                 attempt))
                except psycopg2.Error as e:
                    if e.pgcode == "55000":  # lease lost: someone else has it
                        log("job %d: lease lost: %s" % (job_id, e.pgerror.strip()))
                        continue
                    raise
            done += 1
        if succeeded:
            cur.execute("SELECT atomizer.complete_many(%s::bigint[])", (succeeded,))
            if cur.fetchone()[0] != len(succeeded):
                log("complete_many completed fewer jobs than given")

    if pending[0]:
        cur.execute("SELECT atomizer.complete_many(%s::bigint[], %s::jsonb[], %s::int[])", pending)
    if args.stats:
        print("%d %.3f" % (done, (time.time() - first) if first else 0.0))
    log("stopped after %d job(s)" % done)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
