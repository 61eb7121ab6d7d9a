/*-------------------------------------------------------------------------
 *
 * atomizer.c
 *	  The atomizer command-line tool: a libpq client of the external-worker
 *	  protocol (atomizer.claim / complete / fail / heartbeat / release), and
 *	  two small helpers around it.
 *
 *	  atomizer work     runs a command once per job of an external queue:
 *	                    fork/exec (no shell), payload on stdin, job details
 *	                    in the environment, exit status and output turned
 *	                    into complete or fail; heartbeats while it runs;
 *	                    LISTEN/NOTIFY between claims; reconnects after a
 *	                    server restart and reports again what it could not
 *	                    report; releases its jobs on SIGTERM after a grace
 *	                    period.  With --persistent, one long-running process
 *	                    per slot takes the jobs as JSON lines instead.
 *	  atomizer enqueue  enqueues one job and prints its id.
 *	  atomizer stats    prints a table of the queues.
 *
 *	  The work loop is single-threaded: one poll() over a self-pipe for
 *	  signals, the libpq socket (notifications), and the pipes of every
 *	  running command.  SQL calls are synchronous and short.  Every call
 *	  about a claimed job passes the attempt returned by claim, so a report
 *	  about a job whose lease was lost is refused by the server (SQLSTATE
 *	  55000) instead of completing the job twice.
 *
 *	  Files: atomizer.c (this: main and the manual), common.c (helpers,
 *	  connecting), work.c (the work loop and its SQL), command.c (running
 *	  one command: fork/exec, pipes, outcome), persist.c (--persistent: its
 *	  loop and its SQL), proc.c (--persistent: the processes and the line
 *	  protocol), json.c (JSON checks), admin.c (enqueue, stats).
 *
 *	  src/cli/atomizer.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- help */

static const char *help_main =
"NAME\n"
"    atomizer - command-line client of the atomizer job queue\n"
"\n"
"SYNOPSIS\n"
"    atomizer work    [--dsn DSN] --queue Q [OPTIONS] -- COMMAND [ARGS...]\n"
"    atomizer enqueue [--dsn DSN] [--queue Q] [--task NAME] [--payload JSON]\n"
"                     [--run-at TS] [--priority N] [--max-attempts N]\n"
"                     [--timeout DUR] [--idempotency-key KEY]\n"
"    atomizer stats   [--dsn DSN]\n"
"    atomizer dashboard [--dsn DSN] [--listen HOST:PORT] [--read-only]\n"
"    atomizer help [SUBCOMMAND]\n"
"    atomizer --help | --version\n"
"\n"
"DESCRIPTION\n"
"    atomizer talks to a PostgreSQL database with the atomizer extension.\n"
"\n"
"    work     run COMMAND once per job of an external queue (see\n"
"             \"atomizer help work\")\n"
"    enqueue  enqueue one job and print its id\n"
"    stats    print one line per queue: waiting, running, dead, succeeded\n"
"             and throughput\n"
"    dashboard  serve the web dashboard, its JSON API and /metrics\n"
"    help     print the manual of a subcommand\n"
"\n"
"CONNECTING\n"
"    --dsn DSN takes a libpq connection string (\"host=db dbname=app\") or\n"
"    URI (\"postgresql://app@db/app\").  Without --dsn, and for anything the\n"
"    DSN leaves out, the usual libpq environment variables apply (PGHOST,\n"
"    PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE, ...) and ~/.pgpass.\n"
"    The role needs the atomizer_worker role (work) or the right to enqueue\n"
"    (enqueue).\n"
"\n"
"EXIT STATUS\n"
"    0 success, 1 error (connection, SQL), 2 usage error.\n";

static const char *help_work =
"NAME\n"
"    atomizer work - run a command for each job of an external queue\n"
"\n"
"SYNOPSIS\n"
"    atomizer work [--dsn DSN] --queue Q [--concurrency N] [--lease DUR]\n"
"                  [--batch N] [--grace DUR] [--timeout DUR]\n"
"                  [--heartbeat DUR] [--poll DUR] [--drain] [--verbose]\n"
"                  [--persistent [--pipeline N]] -- COMMAND [ARGS...]\n"
"\n"
"DESCRIPTION\n"
"    Claims jobs of queue Q (created with atomizer.create_queue(Q,\n"
"    external => true)) and runs COMMAND once per job, directly (fork and\n"
"    exec, no shell), in its own process group, with up to N at once.\n"
"    COMMAND is found as execvp finds it: a name with a slash as it is,\n"
"    any other in PATH.  At start, a COMMAND that does not exist or is not\n"
"    executable is an error (exit status 2, nothing claimed).  Once\n"
"    connected it prints one line: the queue, the concurrency, the\n"
"    database and role.\n"
"\n"
"    The command gets:\n"
"      stdin              the job's payload (JSON text and a newline)\n"
"      ATOMIZER_JOB_ID    the job id\n"
"      ATOMIZER_TASK      the task name given at enqueue time (the handler)\n"
"      ATOMIZER_ATTEMPT   the attempt number, 1 for the first run\n"
"      ATOMIZER_QUEUE     the queue name\n"
"\n"
"    Exit status 0 completes the job; its stdout is the job's result when\n"
"    it is valid JSON of at most 1 MB (otherwise the result is NULL).\n"
"    Any other exit status, or death by a signal, fails the job with the\n"
"    last 2 kB of the command's stderr as the error (or the exit status\n"
"    when stderr is empty); the job is retried with the queue's backoff\n"
"    until its max_attempts, then it is dead.\n"
"\n"
"    If COMMAND cannot be executed when a job comes (it was removed or\n"
"    made non-executable since the start), the job is given back at once\n"
"    with its attempt not counted (atomizer.release), and the worker stops\n"
"    claiming, lets running commands finish within --grace, and exits 1.\n"
"\n"
"    While a command runs, its job's lease is renewed (every half lease by\n"
"    default).  If the lease is lost anyway (the worker was cut off longer\n"
"    than the lease and the job was claimed again), the command is stopped\n"
"    and its outcome is not reported: the server refuses reports about a\n"
"    lost lease, so a job never completes twice.\n"
"\n"
"    Between claims the worker LISTENs on channel atomizer_Q and claims as\n"
"    soon as a notification arrives, or after --poll at the latest.\n"
"\n"
"    When the connection breaks (server restart, terminated backend) the\n"
"    worker reconnects with exponential backoff (100 ms to 10 s); commands\n"
"    keep running, and outcomes that could not be reported are reported\n"
"    after the reconnect.\n"
"\n"
"    If atomizer work itself dies (SIGKILL, out of memory), its commands\n"
"    get SIGTERM (Linux), and its jobs come back when their leases expire.\n"
"    Its connections show in pg_stat_activity as application_name\n"
"    \"atomizer work\"; claims record WORKER as \"host:pid\".\n"
"\n"
"    SIGTERM or SIGINT: stop claiming, let running commands finish for up\n"
"    to --grace, then stop them (SIGTERM, SIGKILL 3 s later) and release\n"
"    their jobs (available again at once, the attempt not counted), and\n"
"    exit 0.  A second signal ends the grace at once.\n"
"\n"
"PERSISTENT MODE\n"
"    With --persistent, COMMAND is started once per slot (N processes) and\n"
"    kept running; each job is one line of JSON on its stdin:\n"
"        {\"id\":42,\"task\":\"resize\",\"attempt\":1,\"queue\":\"images\",\"payload\":{...}}\n"
"    and it answers each job with one line of JSON on its stdout (flushed):\n"
"        {\"id\":42,\"ok\":true,\"result\":{...}}     success (result optional)\n"
"        {\"id\":42,\"error\":\"why\"}               failure, retried with backoff\n"
"    with \"retry\":false for a failure that can never succeed (dead at once)\n"
"    and \"retry_in\":SECONDS to choose the delay.  \"id\" may be left out: the\n"
"    answer is then for the oldest job not answered.  A line that is not\n"
"    such an answer fails the job it answers.  stderr is atomizer work's.\n"
"    End of stdin asks the process to exit.  The environment has\n"
"    ATOMIZER_QUEUE and ATOMIZER_SLOT (0 to N-1).\n"
"\n"
"    Up to --pipeline jobs (default 1) are sent ahead to each process: for\n"
"    short jobs, 16 to 100 let claims and reports go in batches (one call\n"
"    to the server reports the batch done and claims the next).\n"
"\n"
"    Leases are renewed while jobs are with a process.  --timeout counts\n"
"    from when a job is written to the process (with --pipeline, that\n"
"    includes waiting behind the others): a job past it stops the process\n"
"    and fails.  A process that exits (or dies) while it has jobs fails the\n"
"    oldest of them (\"worker process exited with status S while running\n"
"    the job\") and is started again (at once if it had answered a job,\n"
"    else after 100 ms doubling up to 10 s); its other jobs are released,\n"
"    uncounted.  A job cancelled or whose lease is lost stops its process\n"
"    (at the next heartbeat), nothing is reported for it, and the\n"
"    process's other jobs are released.  On SIGTERM, idle processes get end\n"
"    of input; the others have --grace to answer, then are stopped and\n"
"    their jobs released.  Jobs are released only once their process is\n"
"    gone.\n"
"\n"
"OPTIONS\n"
"    --dsn DSN          connection string or URI (default: environment)\n"
"    -q, --queue Q      the queue to work on (required)\n"
"    -c, --concurrency N\n"
"                       commands running at once (default 1)\n"
"    --lease DUR        lease asked for at each claim and heartbeat\n"
"                       (default 5m)\n"
"    --batch N          jobs claimed per claim call, at most the free\n"
"                       slots (default: the concurrency, times --pipeline\n"
"                       with --persistent; at most 1000)\n"
"    --grace DUR        how long running commands may finish after SIGTERM\n"
"                       (default 30s)\n"
"    --timeout DUR      stop a command running longer (SIGTERM to its\n"
"                       process group, SIGKILL 3 s later) and fail its job\n"
"                       with \"command timed out after DUR\" (default: none)\n"
"    --heartbeat DUR    heartbeat interval (default: half the lease;\n"
"                       0 disables heartbeats)\n"
"    --poll DUR         claim at least this often without notification\n"
"                       (default 10s)\n"
"    --drain            exit 0 as soon as the queue has no due job and no\n"
"                       command is running (batch use, benchmarks)\n"
"    -v, --verbose      log every job claimed and finished\n"
"    --persistent       one long-running COMMAND per slot, jobs as JSON\n"
"                       lines (see PERSISTENT MODE)\n"
"    --pipeline N       jobs sent ahead to each persistent process\n"
"                       (default 1, at most 1000)\n"
"\n"
"    DUR is a number with a unit: 500ms, 30s, 5m, 1h (no unit: seconds).\n"
"\n"
"EXIT STATUS\n"
"    0 after SIGTERM/SIGINT (or --drain) once every outcome is reported;\n"
"    1 when claim fails for a reason that will not go away by itself (no\n"
"    such queue, not an external queue, permission denied: the worker\n"
"    stops as on SIGTERM first), when COMMAND could not be executed for a\n"
"    job (given back uncounted), or when outcomes could not be reported\n"
"    within 30 s after the grace; 2 usage error, or a COMMAND that is not\n"
"    found or not executable at start.\n"
"\n"
"EXAMPLES\n"
"    atomizer work --dsn 'dbname=app' --queue images -c 4 --timeout 10m \\\n"
"        -- ./resize.sh --quality 80\n"
"\n"
"    A command reads the payload from stdin:\n"
"        #!/bin/sh\n"
"        jq -r .url | xargs curl -fsS -o /dev/null && echo '{\"ok\": true}'\n"
"\n"
"    A persistent worker in Python (examples/worker.py is a fuller one):\n"
"        import json, sys\n"
"        for line in sys.stdin:\n"
"            job = json.loads(line)\n"
"            print(json.dumps({\"id\": job[\"id\"], \"ok\": True}), flush=True)\n"
"    atomizer work -q images --persistent -c 2 --pipeline 32 -- python3 w.py\n";

static const char *help_enqueue =
"NAME\n"
"    atomizer enqueue - enqueue one job\n"
"\n"
"SYNOPSIS\n"
"    atomizer enqueue [--dsn DSN] [--queue Q] [--task NAME] [--payload JSON]\n"
"                     [--run-at TS] [--priority N] [--max-attempts N]\n"
"                     [--timeout DUR] [--idempotency-key KEY]\n"
"\n"
"DESCRIPTION\n"
"    Calls atomizer.enqueue() and prints the new job's id on stdout (with\n"
"    an idempotency key that the role already used for an unfinished job\n"
"    of the queue: that job's id, and nothing is enqueued).  The payload\n"
"    is checked before connecting: text that is not JSON, or JSON that is\n"
"    not an object or an array, is a usage error (exit status 2).\n"
"\n"
"OPTIONS\n"
"    --dsn DSN          connection string or URI (default: environment)\n"
"    -q, --queue Q      queue (default \"default\")\n"
"    -t, --task NAME    task name for an external queue, handler function\n"
"                       for an internal one (default: the queue name)\n"
"    -p, --payload JSON the payload, a JSON object or array (default {});\n"
"                       \"-\" reads it from stdin\n"
"    --run-at TS        do not run before this timestamptz\n"
"                       (default: now)\n"
"    --priority N       priority, -32768 to 32767, lower runs first\n"
"                       (default 0)\n"
"    --max-attempts N   attempts before the job is dead (default: the\n"
"                       queue's)\n"
"    --timeout DUR      the job's timeout, e.g. 30s, 10m (default: the\n"
"                       queue's); for an internal queue, the handler's\n"
"    -k, --idempotency-key KEY\n"
"                       enqueue nothing while an unfinished job of this\n"
"                       role in the queue has KEY\n"
"\n"
"    DUR is a number with a unit: 500ms, 30s, 5m, 1h (no unit: seconds).\n"
"\n"
"EXIT STATUS\n"
"    0 enqueued (or found by its key), 1 error (connection, SQL),\n"
"    2 usage error (including a payload that is not JSON).\n"
"\n"
"EXAMPLES\n"
"    atomizer enqueue -q images -t resize -p '{\"w\": 640}'\n"
"    atomizer enqueue -q images -t resize --run-at '2030-01-01 03:00+00'\n"
"    echo '{\"w\": 320}' | atomizer enqueue -q images -t resize -p - \\\n"
"        --idempotency-key thumb-42 --max-attempts 3 --timeout 2m\n";

static const char *help_stats =
"NAME\n"
"    atomizer stats - one line per queue\n"
"\n"
"SYNOPSIS\n"
"    atomizer stats [--dsn DSN]\n"
"\n"
"DESCRIPTION\n"
"    Prints, for each queue visible to the role: whether it is external or\n"
"    paused, the jobs waiting (scheduled, available and retrying), running,\n"
"    dead and succeeded (still in the history), and the throughput: jobs\n"
"    that succeeded during the last minute.\n"
"\n"
"OPTIONS\n"
"    --dsn DSN          connection string or URI (default: environment)\n";

static const char *help_dashboard =
"NAME\n"
"    atomizer dashboard - web page, JSON API and Prometheus metrics\n"
"\n"
"SYNOPSIS\n"
"    atomizer dashboard [--dsn DSN] [--listen HOST:PORT] [--read-only]\n"
"\n"
"DESCRIPTION\n"
"    Serves a web page (overview, jobs, a job's attempts, dead letters,\n"
"    queues, schedules, workers), the JSON API the page uses (/api/...),\n"
"    and /metrics in the Prometheus text format.\n"
"\n"
"    Who acts: when the DSN names no user, every visitor logs in with\n"
"    HTTP basic authentication as a PostgreSQL role (name and password\n"
"    checked by PostgreSQL; row-level security decides what each one\n"
"    sees).  When it names one (user=...), every visitor acts as that\n"
"    role without a login: allowed on a loopback address only.\n"
"\n"
"    Actions (retry, cancel, purge, pause, run a schedule, ...) are POST\n"
"    requests that call atomizer's SQL functions; each needs the\n"
"    session's X-CSRF-Token (GET /api/session) and an Origin or Referer\n"
"    of the dashboard's own address.\n"
"\n"
"OPTIONS\n"
"    --dsn DSN          connection string or URI (default: environment)\n"
"    --listen HOST:PORT numeric address (or localhost) and port\n"
"                       (default 127.0.0.1:8080; port 0: any free port,\n"
"                       printed at start)\n"
"    --read-only        refuse every action (403)\n"
"\n"
"EXIT STATUS\n"
"    0 after SIGTERM/SIGINT, 1 when it cannot listen, 2 usage error\n"
"    (including user= in the DSN with a non-loopback address).\n";

int
print_help(const char *sub)
{
	if (sub == NULL)
		fputs(help_main, stdout);
	else if (strcmp(sub, "work") == 0)
		fputs(help_work, stdout);
	else if (strcmp(sub, "enqueue") == 0)
		fputs(help_enqueue, stdout);
	else if (strcmp(sub, "stats") == 0)
		fputs(help_stats, stdout);
	else if (strcmp(sub, "dashboard") == 0)
		fputs(help_dashboard, stdout);
	else if (strcmp(sub, "help") == 0)
		fputs(help_main, stdout);
	else
		usage_error(NULL, "unknown subcommand \"%s\"", sub);
	return 0;
}

/* ---------------------------------------------------------------- main */

int
main(int argc, char **argv)
{
	const char *sub;

	if (argc < 2)
	{
		fputs(help_main, stderr);
		return EXIT_USAGE;
	}
	sub = argv[1];
	if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0)
		return print_help(NULL);
	if (strcmp(sub, "--version") == 0 || strcmp(sub, "-V") == 0)
	{
		printf("atomizer %s\n", ATOMIZER_VERSION);
		return 0;
	}
	if (strcmp(sub, "help") == 0)
	{
		if (argc > 3)
			usage_error(NULL, "help takes at most one subcommand");
		return print_help(argc == 3 ? argv[2] : NULL);
	}
	if (strcmp(sub, "work") == 0)
		return cmd_work(argc - 1, argv + 1);
	if (strcmp(sub, "enqueue") == 0)
		return cmd_enqueue(argc - 1, argv + 1);
	if (strcmp(sub, "stats") == 0)
		return cmd_stats(argc - 1, argv + 1);
	if (strcmp(sub, "dashboard") == 0)
		return cmd_dashboard(argc - 1, argv + 1);
	if (sub[0] == '-')
		usage_error(NULL, "unknown option \"%s\"", sub);
	usage_error(NULL, "unknown subcommand \"%s\"", sub);
	return EXIT_USAGE;
}
