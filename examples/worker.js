#!/usr/bin/env node
// A persistent worker for "atomizer work --persistent" in Node, no
// dependencies: one JSON line per job on stdin, one JSON answer per job on
// stdout.
//
//   atomizer work --dsn "dbname=app" --queue images --persistent \
//                 --concurrency 2 --pipeline 16 -- node examples/worker.js
//
// handle() may be async: jobs sent ahead (--pipeline) then run at the same
// time, and each answer carries its job's id, so answers may come in any
// order.  A thrown error fails the job (retried as the queue says); an
// error with .retry = false fails it for good.  Log to stderr: stdout is
// for answers.  End of stdin means "exit" (once the jobs in hand are done).
'use strict';
const readline = require('readline');

async function handle(task, payload) {
  // your work here; what it returns is the job's result (any JSON value)
  return { task: task, echo: payload };
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', async (line) => {
  const job = JSON.parse(line);
  let answer;
  try {
    answer = { id: job.id, ok: true, result: await handle(job.task, job.payload) };
  } catch (e) {
    answer = { id: job.id, error: String((e && e.message) || e) };
    if (e && e.retry === false) answer.retry = false;
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
});
