/*-------------------------------------------------------------------------
 *
 * work.c
 *	  "atomizer work": the worker loop.  One poll() over a self-pipe for
 *	  signals, the libpq socket (LISTEN atomizer_<queue>), and the pipes of
 *	  the running commands; claims while slots are free and jobs may be due;
 *	  reports outcomes (successes batched into one statement), heartbeats,
 *	  timeouts; gives a job back uncounted, and stops, when its command
 *	  cannot be started; reconnects with exponential backoff and reports
 *	  again what it could not report; on SIGTERM stops claiming, waits up to
 *	  the grace, then stops the commands and releases their jobs.
 *
 *	  Every call about a claimed job passes the attempt claim returned: a
 *	  report about a job whose lease was lost is refused by the server
 *	  (SQLSTATE 55000), logged, and dropped; it never completes a job twice.
 *
 *	  src/cli/work.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>



int			sig_pipe[2] = {-1, -1};
volatile sig_atomic_t sig_count = 0;

/*
 * worker_wake
 *		When either event loop must wake at the latest, whatever its
 *		processes: to reconnect, to poll for jobs, at the end of the grace
 *		period, and in a minute anyway.
 */
int64_t
worker_wake(const Worker *w, int64_t now)
{
	int64_t		wake = now + 60000;

	if (w->conn == NULL)
		wake = min64(wake, w->reconnect_at);
	else if (!w->stopping)
		wake = min64(wake, w->next_poll);
	if (w->stopping && w->grace_end > now)
		wake = min64(wake, w->grace_end);
	return wake;
}

/*
 * take_signals
 *		Empty the signal pipe; the first SIGTERM/SIGINT stops claiming and
 *		starts the grace period for the busy jobs (what they are, for the
 *		log), a second one ends the grace period now.
 */
void
take_signals(Worker *w, int64_t now, int busy, const char *what)
{
	char		tmp[64];

	while (read(sig_pipe[0], tmp, sizeof(tmp)) > 0)
		;
	if (sig_count > 0 && !w->stopping)
	{
		char		dur[32];

		format_duration(w->grace_ms, dur, sizeof(dur));
		w->stopping = true;
		w->grace_end = now + w->grace_ms;
		if (busy > 0)
			logmsg("stopping: no more claims; waiting up to %s for %d %s",
				   dur, busy, what);
	}
	if (sig_count > 1 && w->grace_end > now)
	{
		logmsg("second signal: ending the grace period now");
		w->grace_end = now;
	}
}

static void
handle_stop_signal(int signo)
{
	int			save = errno;
	char		c = 's';

	sig_count++;
	if (write(sig_pipe[1], &c, 1) < 0)
	{
		/* the pipe is full: a wake-up is pending anyway */
	}
	errno = save;
}

static void
handle_sigchld(int signo)
{
	int			save = errno;
	char		c = 'c';

	if (write(sig_pipe[1], &c, 1) < 0)
	{
		/* as above */
	}
	errno = save;
}




void
worker_disconnect(Worker *w, const char *why)
{
	char		line[512];

	if (w->conn == NULL)
		return;
	logmsg("connection lost: %s; reconnecting",
		   oneline(why ? why : PQerrorMessage(w->conn), line, sizeof(line)));
	PQfinish(w->conn);
	w->conn = NULL;
	w->backoff_ms = RECONNECT_MIN_MS;
	w->reconnect_at = now_ms();
}

/* Note the notifications libpq has read; any of ours means claim again. */
void
drain_notifies(Worker *w)
{
	PGnotify   *n;

	while (w->conn && (n = PQnotifies(w->conn)) != NULL)
	{
		w->maybe_jobs = true;
		PQfreemem(n);
	}
}

/*
 * Run a prepared statement.  On SQL_OK *res holds the result (caller
 * clears it); on SQL_ERROR sqlstate and msg describe the error.  SQL_LOST
 * closes the connection and schedules the reconnect.
 */
SqlResult
run_prepared(Worker *w, const char *stmt, int n, const char *const *vals,
			 PGresult **res, char *sqlstate, char *msg, size_t msglen)
{
	PGresult   *r;
	ExecStatusType st;

	*res = NULL;
	sqlstate[0] = '\0';
	msg[0] = '\0';
	if (w->conn == NULL)
		return SQL_LOST;
	r = PQexecPrepared(w->conn, stmt, n, vals, NULL, NULL, 0);
	st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
	{
		*res = r;
		drain_notifies(w);
		return SQL_OK;
	}
	if (r && PQresultErrorField(r, PG_DIAG_SQLSTATE))
		snprintf(sqlstate, 6, "%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
	oneline(r ? PQresultErrorMessage(r) : PQerrorMessage(w->conn), msg, msglen);
	if (msg[0] == '\0')
		oneline(PQerrorMessage(w->conn), msg, msglen);
	PQclear(r);
	if (PQstatus(w->conn) == CONNECTION_BAD || strncmp(sqlstate, "57P", 3) == 0 ||
		strncmp(sqlstate, "08", 2) == 0)
	{
		worker_disconnect(w, msg);
		return SQL_LOST;
	}
	drain_notifies(w);
	return SQL_ERROR;
}

/*
 * Try to connect: LISTEN and prepare the statements (in --persistent
 * mode also those of 0.2.0 that it uses).  False on failure.
 */
bool
worker_connect(Worker *w)
{
	char		err[1024];
	char	   *chan;
	char		sql[512];
	PGresult   *r;
	static const char *const stmts[][2] = {
		{"claim",
		"SELECT id, handler, payload, attempt FROM atomizer.claim($1, $2::integer, $3::interval, $4)"},
		{"complete", "SELECT atomizer.complete($1::bigint, $2::jsonb, $3::integer)"},
		{"complete_batch",
			"SELECT atomizer.complete(t.id, CASE WHEN t.h THEN $2::jsonb -> (t.n - 1)::integer END, t.a)"
		" FROM unnest($1::bigint[], $3::integer[], $4::boolean[]) WITH ORDINALITY AS t(id, a, h, n)"},
		{"fail", "SELECT atomizer.fail($1::bigint, $2, NULL, $3::integer)"},
		{"heartbeat", "SELECT atomizer.heartbeat($1::bigint, $2::interval, $3::integer)"},
		{"release", "SELECT atomizer.release($1::bigint, $2::integer)"},
		/* --persistent only (0.2.0) */
		{"claim_done",
			"SELECT id, handler, payload, attempt FROM atomizer.claim($1, $2::integer, $3::interval, $4,"
		" completed => $5::bigint[], results => $6::jsonb[], completed_attempts => $7::integer[])"},
		{"complete_done",
		"SELECT atomizer.complete_many($1::bigint[], $2::jsonb[], $3::integer[])"},
		{"fail_answer",
			"SELECT atomizer.fail($1::bigint, $2::jsonb #>> '{}', $3::interval, $4::integer,"
		" retry => $5::boolean)"},
	};
	size_t		nstmts = sizeof(stmts) / sizeof(stmts[0]) - (w->persistent ? 0 : 3);

	w->conn = connect_db(w->dsn, "atomizer work", err, sizeof(err));
	if (w->conn == NULL)
	{
		logmsg("could not connect: %s; retrying in %" PRId64 " ms",
			   err, w->backoff_ms);
		return false;
	}

	chan = xmalloc(strlen(w->queue) + 16);
	sprintf(chan, "atomizer_%s", w->queue);
	{
		char	   *ident = PQescapeIdentifier(w->conn, chan, strlen(chan));

		snprintf(sql, sizeof(sql), "LISTEN %s", ident ? ident : "\"\"");
		PQfreemem(ident);
	}
	free(chan);
	r = PQexec(w->conn, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		logmsg("could not listen: %s", oneline(PQresultErrorMessage(r), err, sizeof(err)));
		PQclear(r);
		PQfinish(w->conn);
		w->conn = NULL;
		return false;
	}
	PQclear(r);

	for (size_t i = 0; i < nstmts; i++)
	{
		r = PQprepare(w->conn, stmts[i][0], stmts[i][1], 0, NULL);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
		{
			const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

			logmsg("could not prepare \"%s\": %s", stmts[i][0],
				   oneline(PQresultErrorMessage(r), err, sizeof(err)));
			/* a missing function or schema will not fix itself */
			if (state && (strcmp(state, "42883") == 0 || strcmp(state, "3F000") == 0 ||
						  strcmp(state, "42501") == 0))
			{
				logmsg("is the atomizer extension (%s or later) installed in this database, and may this role use it?",
					   w->persistent ? "0.2.0" : "0.1.0");
				exit(1);
			}
			PQclear(r);
			PQfinish(w->conn);
			w->conn = NULL;
			return false;
		}
		PQclear(r);
	}

	if (w->ever_connected)
		logmsg("reconnected");
	else
		logmsg("working on queue \"%s\" with concurrency %d%s, connected to database \"%s\" as \"%s\" (%s:%s); command: %s",
			   w->queue, w->concurrency, w->persistent ? " (persistent processes)" : "",
			   PQdb(w->conn), PQuser(w->conn),
			   PQhost(w->conn), PQport(w->conn), w->command[0]);
	w->ever_connected = true;
	w->backoff_ms = RECONNECT_MIN_MS;
	w->maybe_jobs = true;

	/* the leases of running jobs may be near their end: renew them now */
	for (int i = 0; w->slots && i < w->concurrency; i++)
		if (w->slots[i].state == SLOT_RUNNING)
			w->slots[i].next_hb = 0;
	if (w->persistent)
		persist_connected(w);
	return true;
}









/* Claim up to the free slots' worth of jobs and start them. */
static void
do_claim(Worker *w)
{
	int			free_slots = w->concurrency - w->busy;
	int			want = free_slots < w->batch ? free_slots : w->batch;
	char		wantbuf[16];
	char		workerbuf[300];
	char		host[256];
	const char *vals[4];
	PGresult   *r;
	char		state[6];
	char		msg[1024];
	SqlResult	rc;
	int			got;

	snprintf(wantbuf, sizeof(wantbuf), "%d", want);
	if (gethostname(host, sizeof(host)) != 0)
		strcpy(host, "?");
	host[sizeof(host) - 1] = '\0';
	snprintf(workerbuf, sizeof(workerbuf), "%s:%d", host, (int) getpid());
	vals[0] = w->queue;
	vals[1] = wantbuf;
	vals[2] = w->lease_text;
	vals[3] = workerbuf;
	rc = run_prepared(w, "claim", 4, vals, &r, state, msg, sizeof(msg));
	w->next_poll = now_ms() + w->poll_ms;
	if (rc != SQL_OK)
	{
		if (rc == SQL_ERROR)
		{
			logmsg("claim failed: %s", msg);
			w->maybe_jobs = false;

			/*
			 * Transient errors are retried at the next poll; anything else
			 * (no such queue, not external, permission denied) needs the
			 * operator: stop as on SIGTERM, and exit 1.
			 */
			if (strncmp(state, "40", 2) != 0 && strncmp(state, "53", 2) != 0 &&
				strcmp(state, "55P03") != 0 && strcmp(state, "57014") != 0)
			{
				w->failed = true;
				w->stopping = true;
				w->grace_end = now_ms() + w->grace_ms;
			}
		}
		return;
	}
	got = PQntuples(r);
	w->maybe_jobs = (got == want);
	for (int row = 0; row < got; row++)
	{
		Slot	   *s = NULL;
		const char *payload;
		StartResult started;
		int			err = 0;

		for (int i = 0; i < w->concurrency; i++)
			if (w->slots[i].state == SLOT_FREE)
			{
				s = &w->slots[i];
				break;
			}
		if (s == NULL)
			break;				/* cannot happen: want <= free slots */
		slot_reset(s);
		snprintf(s->id, sizeof(s->id), "%s", PQgetvalue(r, row, 0));
		s->task = xstrdup(PQgetvalue(r, row, 1));
		payload = PQgetisnull(r, row, 2) ? "null" : PQgetvalue(r, row, 2);
		s->payload_len = strlen(payload) + 1;
		s->payload = xmalloc(s->payload_len + 1);
		memcpy(s->payload, payload, s->payload_len - 1);
		s->payload[s->payload_len - 1] = '\n';
		s->payload[s->payload_len] = '\0';
		snprintf(s->attempt, sizeof(s->attempt), "%s", PQgetvalue(r, row, 3));
		started = w->cannot_start ? START_FAILED : slot_start(w, s, &err);
		if (started == START_OK)
			continue;

		/*
		 * The command cannot be started (it was removed or made
		 * non-executable since the check at start, or no process can be
		 * made): that is not the job's fault.  Give it, and the rest of
		 * this claim, back uncounted, and stop claiming: retrying would
		 * only burn the jobs' attempts.
		 */
		if (!w->cannot_start)
		{
			if (started == START_EXEC_FAILED)
				logmsg("could not execute \"%s\": %s; giving job %s back (attempt not counted) and stopping",
					   w->command[0], strerror(err), s->id);
			else
				logmsg("could not start the command for job %s: %s; giving it back (attempt not counted) and stopping",
					   s->id, strerror(err));
			w->cannot_start = true;
			w->failed = true;
			if (!w->stopping)
			{
				w->stopping = true;
				w->grace_end = now_ms() + w->grace_ms;
			}
		}
		s->state = SLOT_REPORT;
		s->report = REPORT_RELEASE;
		w->busy++;
	}
	PQclear(r);
}

/* Report one slot's outcome.  Returns false when the connection is gone. */
static bool
report_one(Worker *w, Slot *s)
{
	const char *vals[3];
	PGresult   *r;
	char		state[6];
	char		msg[1024];
	SqlResult	rc;
	const char *what;
	char	   *result = NULL;

	vals[0] = s->id;
	switch (s->report)
	{
		case REPORT_COMPLETE:
			if (s->has_result)
				result = sanitize_utf8(s->out.data, s->out.len);
			vals[1] = result;
			vals[2] = s->attempt;
			rc = run_prepared(w, "complete", 3, vals, &r, state, msg, sizeof(msg));
			if (rc == SQL_ERROR && result != NULL && strncmp(state, "22", 2) == 0)
			{
				/* stdout was not JSON after all: no result */
				vals[1] = NULL;
				rc = run_prepared(w, "complete", 3, vals, &r, state, msg, sizeof(msg));
			}
			free(result);
			what = "complete";
			break;
		case REPORT_FAIL:
			vals[1] = s->error;
			vals[2] = s->attempt;
			rc = run_prepared(w, "fail", 3, vals, &r, state, msg, sizeof(msg));
			what = "fail";
			break;
		case REPORT_RELEASE:
			vals[1] = s->attempt;
			rc = run_prepared(w, "release", 2, vals, &r, state, msg, sizeof(msg));
			what = "release";
			break;
		default:
			rc = SQL_OK;
			r = NULL;
			what = "nothing";
			break;
	}
	if (rc == SQL_LOST)
	{
		s->tried_once = true;
		return false;
	}
	if (rc == SQL_ERROR)
	{
		if (strcmp(state, "55000") == 0)
			logmsg("job %s (attempt %s): lease lost, %s refused: %s",
				   s->id, s->attempt, what, msg);
		else
			logmsg("job %s (attempt %s): %s failed%s: %s", s->id, s->attempt,
				   what, s->tried_once ? " (after reconnect)" : "", msg);
	}
	else if (s->tried_once)
		logmsg("job %s (attempt %s): %s reported after reconnect", s->id,
			   s->attempt, what);
	PQclear(r);
	if (s->report == REPORT_COMPLETE && rc == SQL_OK)
		w->done_ok++;
	else if (s->report == REPORT_FAIL && rc == SQL_OK)
		w->done_failed++;
	slot_reset(s);
	w->busy--;
	return true;
}

/*
 * Report every finished job.  Successful jobs go in one statement (one
 * round trip and one commit for all); if that statement fails for any
 * reason but the connection, each is reported on its own.
 */
static void
do_reports(Worker *w)
{
	int			nok = 0;

	for (int i = 0; i < w->concurrency; i++)
		if (w->slots[i].state == SLOT_REPORT && w->slots[i].report == REPORT_COMPLETE &&
			!w->slots[i].tried_once)
			nok++;
	if (nok > 1)
	{
		Buf			ids = {0},
					atts = {0},
					has = {0},
					res = {0};
		const char *vals[4];
		PGresult   *r;
		char		state[6];
		char		msg[1024];
		SqlResult	rc;
		bool		first = true;

		buf_append(&ids, "{", 1);
		buf_append(&atts, "{", 1);
		buf_append(&has, "{", 1);
		buf_append(&res, "[", 1);
		for (int i = 0; i < w->concurrency; i++)
		{
			Slot	   *s = &w->slots[i];

			if (!(s->state == SLOT_REPORT && s->report == REPORT_COMPLETE && !s->tried_once))
				continue;
			if (!first)
			{
				buf_append(&ids, ",", 1);
				buf_append(&atts, ",", 1);
				buf_append(&has, ",", 1);
				buf_append(&res, ",", 1);
			}
			first = false;
			buf_appendf(&ids, "%s", s->id);
			buf_appendf(&atts, "%s", s->attempt);
			buf_append(&has, s->has_result ? "t" : "f", 1);
			if (s->has_result)
			{
				char	   *t = sanitize_utf8(s->out.data, s->out.len);

				buf_append(&res, t, strlen(t));
				free(t);
			}
			else
				buf_append(&res, "null", 4);
		}
		buf_append(&ids, "}", 1);
		buf_append(&atts, "}", 1);
		buf_append(&has, "}", 1);
		buf_append(&res, "]", 1);
		vals[0] = ids.data;
		vals[1] = res.data;
		vals[2] = atts.data;
		vals[3] = has.data;
		rc = run_prepared(w, "complete_batch", 4, vals, &r, state, msg, sizeof(msg));
		buf_free(&ids);
		buf_free(&atts);
		buf_free(&has);
		buf_free(&res);
		if (rc == SQL_OK)
		{
			PQclear(r);
			for (int i = 0; i < w->concurrency; i++)
			{
				Slot	   *s = &w->slots[i];

				if (s->state == SLOT_REPORT && s->report == REPORT_COMPLETE && !s->tried_once)
				{
					slot_reset(s);
					w->busy--;
					w->done_ok++;
				}
			}
		}
		else if (rc == SQL_LOST)
		{
			for (int i = 0; i < w->concurrency; i++)
				if (w->slots[i].state == SLOT_REPORT &&
					w->slots[i].report == REPORT_COMPLETE)
					w->slots[i].tried_once = true;
			return;
		}
		/* SQL_ERROR: fall through, one by one */
	}
	for (int i = 0; i < w->concurrency && w->conn; i++)
		if (w->slots[i].state == SLOT_REPORT)
			if (!report_one(w, &w->slots[i]))
				return;
}

/* Heartbeat every running job that is due. */
static void
do_heartbeats(Worker *w, int64_t now)
{
	for (int i = 0; i < w->concurrency && w->conn; i++)
	{
		Slot	   *s = &w->slots[i];
		const char *vals[3];
		PGresult   *r;
		char		state[6];
		char		msg[1024];
		SqlResult	rc;

		if (s->state != SLOT_RUNNING || s->lease_lost || w->hb_ms <= 0 ||
			s->next_hb > now)
			continue;
		vals[0] = s->id;
		vals[1] = w->lease_text;
		vals[2] = s->attempt;
		rc = run_prepared(w, "heartbeat", 3, vals, &r, state, msg, sizeof(msg));
		if (rc == SQL_LOST)
			return;
		PQclear(r);
		s->next_hb = now + w->hb_ms;
		if (rc == SQL_ERROR)
		{
			if (strcmp(state, "55000") == 0 || strcmp(state, "AZ003") == 0)
			{
				logmsg("job %s (attempt %s): %s (%s); stopping its command",
					   s->id, s->attempt,
					   strcmp(state, "AZ003") == 0 ? "cancelled" : "lease lost", msg);
				s->lease_lost = true;
				kill(-s->pid, SIGTERM);
				s->kill_at = now + KILL_DELAY_MS;
			}
			else
				logmsg("job %s: heartbeat failed: %s", s->id, msg);
		}
		else if (w->verbose)
			logmsg("job %s: heartbeat", s->id);
	}
}

/* Timeouts, SIGKILL escalation, end of the grace period. */
static void
do_timers(Worker *w, int64_t now)
{
	for (int i = 0; i < w->concurrency; i++)
	{
		Slot	   *s = &w->slots[i];

		if (s->state != SLOT_RUNNING)
			continue;
		if (s->kill_at > 0 && now >= s->kill_at)
		{
			kill(-s->pid, SIGKILL);
			s->kill_at = INT64_MAX;
		}
		if (w->timeout_ms > 0 && !s->timed_out && !s->released && s->kill_at == 0 &&
			now - s->started >= w->timeout_ms)
		{
			char		dur[32];

			format_duration(w->timeout_ms, dur, sizeof(dur));
			logmsg("job %s: command timed out after %s; stopping it", s->id, dur);
			s->timed_out = true;
			kill(-s->pid, SIGTERM);
			s->kill_at = now + KILL_DELAY_MS;
		}
		if (w->stopping && now >= w->grace_end && !s->released)
		{
			logmsg("job %s: grace period over; stopping its command and releasing the job",
				   s->id);
			s->released = true;
			if (!s->timed_out && !s->lease_lost)
			{
				kill(-s->pid, SIGTERM);
				s->kill_at = now + KILL_DELAY_MS;
			}
		}
	}
}

static int
work_loop(Worker *w)
{
	struct pollfd *pfds;
	int			npfd_max = 2 + 3 * w->concurrency;
	int64_t		give_up_at = 0;

	pfds = xmalloc(sizeof(struct pollfd) * npfd_max);
	w->reconnect_at = now_ms();
	w->backoff_ms = RECONNECT_MIN_MS;

	for (;;)
	{
		int64_t		now = now_ms();
		int64_t		wake;
		int			np = 0;
		int			rc;

		take_signals(w, now, w->busy, "running command(s)");
		reap_children(w);
		do_timers(w, now);

		/* the database */
		if (w->conn == NULL && now >= w->reconnect_at)
		{
			if (!worker_connect(w))
			{
				w->reconnect_at = now_ms() + w->backoff_ms;
				w->backoff_ms = min64(w->backoff_ms * 2, RECONNECT_MAX_MS);
			}
		}
		if (w->conn)
		{
			do_reports(w);
			do_heartbeats(w, now);
		}
		if (w->conn && !w->stopping)
		{
			while (w->conn && w->busy < w->concurrency &&
				   (w->maybe_jobs || now_ms() >= w->next_poll))
			{
				do_claim(w);
				reap_children(w);
				do_reports(w);
			}
		}

		/* done? */
		if (w->busy == 0)
		{
			if (w->stopping)
			{
				logmsg("stopped (%ld succeeded, %ld failed)", w->done_ok, w->done_failed);
				free(pfds);
				return w->failed ? 1 : 0;
			}
			if (w->drain && w->conn && !w->maybe_jobs)
			{
				if (w->verbose)
					logmsg("queue drained (%ld succeeded, %ld failed)",
						   w->done_ok, w->done_failed);
				break;
			}
		}
		if (w->stopping && w->conn == NULL)
		{
			/* unreported outcomes: keep trying a while after the grace */
			if (give_up_at == 0)
				give_up_at = w->grace_end + 30000;
			if (now >= give_up_at)
			{
				logmsg("giving up: %d job outcome(s) not reported; their leases will expire and they will run again",
					   w->busy);
				free(pfds);
				return 1;
			}
		}

		/* wait */
		wake = worker_wake(w, now);
		for (int i = 0; i < w->concurrency; i++)
		{
			Slot	   *s = &w->slots[i];

			if (s->state != SLOT_RUNNING)
				continue;
			if (s->kill_at > 0 && s->kill_at < INT64_MAX)
				wake = min64(wake, s->kill_at);
			if (w->timeout_ms > 0 && !s->timed_out)
				wake = min64(wake, s->started + w->timeout_ms);
			if (w->conn && w->hb_ms > 0 && !s->lease_lost)
				wake = min64(wake, s->next_hb);
		}
		pfds[np].fd = sig_pipe[0];
		pfds[np].events = POLLIN;
		np++;
		if (w->conn)
		{
			pfds[np].fd = PQsocket(w->conn);
			pfds[np].events = POLLIN;
			np++;
		}
		for (int i = 0; i < w->concurrency; i++)
		{
			Slot	   *s = &w->slots[i];

			if (s->state != SLOT_RUNNING)
				continue;
			if (s->out_fd >= 0)
			{
				pfds[np].fd = s->out_fd;
				pfds[np].events = POLLIN;
				np++;
			}
			if (s->err_fd >= 0)
			{
				pfds[np].fd = s->err_fd;
				pfds[np].events = POLLIN;
				np++;
			}
			if (s->in_fd >= 0)
			{
				pfds[np].fd = s->in_fd;
				pfds[np].events = POLLOUT;
				np++;
			}
		}
		rc = poll(pfds, np, (int) (wake > now ? min64(wake - now, 60000) : 0));
		if (rc < 0 && errno != EINTR)
		{
			logmsg("poll failed: %s", strerror(errno));
			free(pfds);
			return 1;
		}
		if (rc <= 0)
			continue;

		if (w->conn)
		{
			if (PQconsumeInput(w->conn) == 0 || PQstatus(w->conn) == CONNECTION_BAD)
				worker_disconnect(w, NULL);
			else
				drain_notifies(w);
		}
		for (int i = 0; i < w->concurrency; i++)
		{
			Slot	   *s = &w->slots[i];

			if (s->state != SLOT_RUNNING)
				continue;
			if (s->out_fd >= 0)
				read_pipe(s, &s->out_fd, true);
			if (s->err_fd >= 0)
				read_pipe(s, &s->err_fd, false);
			if (s->in_fd >= 0)
				write_stdin(s);
		}
	}
	free(pfds);
	return 0;
}


int
cmd_work(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"queue", required_argument, NULL, 'q'},
		{"concurrency", required_argument, NULL, 'c'},
		{"lease", required_argument, NULL, 'l'},
		{"batch", required_argument, NULL, 'b'},
		{"grace", required_argument, NULL, 'g'},
		{"timeout", required_argument, NULL, 'T'},
		{"heartbeat", required_argument, NULL, 'H'},
		{"poll", required_argument, NULL, 'P'},
		{"drain", no_argument, NULL, 'D'},
		{"persistent", no_argument, NULL, 'p'},
		{"pipeline", required_argument, NULL, 'L'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	Worker		w;
	int			c;
	bool		hb_set = false;
	struct sigaction sa;

	memset(&w, 0, sizeof(w));
	w.concurrency = 1;
	w.batch = 0;
	w.lease_ms = 5 * 60 * 1000;
	w.grace_ms = 30 * 1000;
	w.poll_ms = 10 * 1000;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:q:c:vh", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				w.dsn = optarg;
				break;
			case 'q':
				w.queue = optarg;
				break;
			case 'c':
				w.concurrency = parse_positive("work ", "--concurrency", optarg, 1);
				break;
			case 'b':
				w.batch = parse_positive("work ", "--batch", optarg, 1);
				break;
			case 'l':
				w.lease_ms = duration_opt("work ", "--lease", optarg, false);
				if (w.lease_ms < 1000)
					usage_error("work ", "--lease must be at least 1s");
				break;
			case 'g':
				w.grace_ms = duration_opt("work ", "--grace", optarg, true);
				break;
			case 'T':
				w.timeout_ms = duration_opt("work ", "--timeout", optarg, false);
				break;
			case 'H':
				w.hb_ms = duration_opt("work ", "--heartbeat", optarg, true);
				hb_set = true;
				break;
			case 'P':
				w.poll_ms = duration_opt("work ", "--poll", optarg, false);
				break;
			case 'D':
				w.drain = true;
				break;
			case 'p':
				w.persistent = true;
				break;
			case 'L':
				w.pipeline = parse_positive("work ", "--pipeline", optarg, 1);
				if (w.pipeline > 1000)
					usage_error("work ", "--pipeline must be at most 1000");
				break;
			case 'v':
				w.verbose = true;
				break;
			case 'h':
				return print_help("work");
			case ':':
				usage_error("work ", "option %s needs a value", argv[optind - 1]);
				break;
			default:
				usage_error("work ", "unknown option \"%s\"", argv[optind - 1]);
		}
	}
	if (w.queue == NULL || w.queue[0] == '\0')
		usage_error("work ", "--queue is required");
	if (optind >= argc)
		usage_error("work ", "no command given (put it after \"--\")");
	w.command = &argv[optind];
	check_command(w.command[0]);
	if (w.pipeline > 0 && !w.persistent)
		usage_error("work ", "--pipeline needs --persistent");
	if (w.pipeline == 0)
		w.pipeline = 1;
	{
		/* a claim asks for at most the places free, and at most 1000 jobs */
		int			places = w.persistent ? w.concurrency * w.pipeline : w.concurrency;

		if (places > 1000)
			places = 1000;
		if (w.batch == 0 || w.batch > places)
			w.batch = places;
	}
	if (!hb_set)
		w.hb_ms = w.lease_ms / 2;
	snprintf(w.lease_text, sizeof(w.lease_text), "%" PRId64 " milliseconds", w.lease_ms);
	w.slots = xmalloc(sizeof(Slot) * w.concurrency);
	memset(w.slots, 0, sizeof(Slot) * w.concurrency);
	for (int i = 0; i < w.concurrency; i++)
		slot_reset(&w.slots[i]);
	w.maybe_jobs = true;

	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
	{
		logmsg("could not create pipe: %s", strerror(errno));
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = handle_stop_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = handle_sigchld;
	sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	return w.persistent ? persist_loop(&w) : work_loop(&w);
}
