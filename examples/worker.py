#!/usr/bin/python3
"""A persistent worker for "atomizer work --persistent" in Python, standard
library only: one JSON line per job on stdin, one JSON answer per job on
stdout.

    atomizer work --dsn "dbname=app" --queue images --persistent \
                  --concurrency 2 --pipeline 16 -- python3 examples/worker.py

Put the work in handle(); an exception fails the job (retried as the queue
says), raising Discard fails it for good.  Log to stderr: stdout is for
answers.  End of stdin means "exit now"."""
import json
import sys


class Discard(Exception):
    """A failure that can never succeed: the job is dead at once."""


def handle(task, payload):
    # your work here; what it returns is the job's result (any JSON value)
    return {"task": task, "echo": payload}


for line in sys.stdin:
    job = json.loads(line)
    try:
        answer = {"id": job["id"], "ok": True, "result": handle(job["task"], job["payload"])}
    except Discard as e:
        answer = {"id": job["id"], "error": str(e), "retry": False}
    except Exception as e:
        answer = {"id": job["id"], "error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()          # an answer not flushed is an answer not given
