/*-------------------------------------------------------------------------
 *
 * persist.c
 *	  "atomizer work --persistent": one long-running process per slot,
 *	  started once and fed jobs as JSON lines on its stdin; it answers one
 *	  JSON line per job on its stdout.  The line protocol (README, "The
 *	  atomizer command-line worker"):
 *
 *		in:  {"id":42,"task":"resize","attempt":1,"queue":"images","payload":{...}}
 *		out: {"id":42,"ok":true,"result":{...}}		(result optional)
 *			 {"id":42,"error":"text","retry":false,"retry_in":30}
 *												(retry, retry_in optional)
 *
 *	  "id" in an answer is optional: without it the answer is for the
 *	  oldest job the process has not answered.  Up to --pipeline jobs are
 *	  sent ahead to a process.  End of stdin asks the process to exit.
 *
 *	  What the per-job mode guarantees holds here too: leases renewed by
 *	  heartbeat while a job runs; --timeout stops the process (its process
 *	  group: SIGTERM, SIGKILL after 3 s) and fails the job; a job cancelled
 *	  or whose lease is lost while it runs stops the process, and nothing
 *	  is reported for it; a process that exits while it has jobs fails the
 *	  oldest of them (the one it was running) and is started again, the
 *	  others given back uncounted (release); on SIGTERM/SIGINT no more
 *	  claims, the processes get the grace to answer, then are stopped and
 *	  their unanswered jobs released.  Jobs are released only once the
 *	  process that had them is gone, so no job runs twice at a time.
 *
 *	  Successes are reported in batches, with the next claim in the same
 *	  call: claim(completed => ids, results => ..., completed_attempts =>
 *	  ...), one round trip and one commit for a batch.
 *
 *	  This file has the loop, its rounds with the server, heartbeats and
 *	  timers; proc.c the processes (start, stop, reap) and the lines
 *	  (requests written, answers read).
 *
 *	  src/cli/persist.c
 *
 *-------------------------------------------------------------------------
 */
#include "persist.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Successes are reported, and free places claimed, once half the places
 * are free (or none is busy), or this long after the last round: big
 * batches when jobs are short, little delay when they are long.
 */
#define BATCH_WAIT_MS 20

/* Append s (or NULL) to b as an element of an array literal. */
static void
array_elem(Buf *b, const char *s)
{
	if (s == NULL)
	{
		buf_append(b, "NULL", 4);
		return;
	}
	buf_append(b, "\"", 1);
	for (; *s; s++)
	{
		if (*s == '"' || *s == '\\')
			buf_append(b, "\\", 1);
		buf_append(b, s, 1);
	}
	buf_append(b, "\"", 1);
}


static int
free_places(Worker *w)
{
	Persist    *P = w->persist;
	int			n = 0;

	for (int i = 0; i < w->concurrency; i++)
		if (proc_live(&P->procs[i]))
			n += w->pipeline - P->procs[i].njobs;
	return n;
}

/* Forget report i (it was reported, or refused for good). */
static void
report_done(Persist *P, int i)
{
	free(P->reports[i].text);
	P->reports[i].kind = P_DONE;
}

static void
reports_compact(Persist *P)
{
	int			o = 0;

	P->ncomplete = 0;
	for (int i = 0; i < P->nreports; i++)
		if (P->reports[i].kind != P_DONE)
		{
			P->reports[o++] = P->reports[i];
			if (P->reports[o - 1].kind == P_COMPLETE)
				P->ncomplete++;
		}
	P->nreports = o;
}

/* Log a refused report; true if it is refused for good (not the connection). */
static void
log_refused(const PReport *r, const char *what, const char *state, const char *msg)
{
	if (strcmp(state, "55000") == 0 || strcmp(state, "AZ003") == 0)
		logmsg("job %s (attempt %s): %s, %s refused: %s", r->id, r->attempt,
			   strcmp(state, "AZ003") == 0 ? "cancelled" : "lease lost", what, msg);
	else
		logmsg("job %s (attempt %s): %s failed: %s", r->id, r->attempt, what, msg);
}

/*
 * Report one by one: every failure and release, and the successes too
 * when with_complete (after a batch was refused).  False when the
 * connection is gone.
 */
static bool
report_each(Worker *w, bool with_complete)
{
	Persist    *P = w->persist;
	bool		ok = true;

	for (int i = 0; i < P->nreports && w->conn; i++)
	{
		PReport    *r = &P->reports[i];
		const char *vals[5];
		PGresult   *res = NULL;
		char		state[6];
		char		msg[1024];
		SqlResult	rc;
		const char *what;

		if (r->kind == P_COMPLETE && !with_complete)
			continue;
		vals[0] = r->id;
		if (r->kind == P_COMPLETE)
		{
			what = "complete";
			vals[1] = r->text;
			vals[2] = r->attempt;
			rc = run_prepared(w, "complete", 3, vals, &res, state, msg, sizeof(msg));
			if (rc == SQL_ERROR && r->text && strncmp(state, "22", 2) == 0)
			{
				logmsg("job %s: its result is not valid jsonb (%s); completing it without one",
					   r->id, msg);
				vals[1] = NULL;
				rc = run_prepared(w, "complete", 3, vals, &res, state, msg, sizeof(msg));
			}
			if (rc == SQL_OK)
				w->done_ok++;
		}
		else if (r->kind == P_FAIL)
		{
			what = "fail";
			vals[1] = r->text;
			vals[2] = r->retry_in[0] ? r->retry_in : NULL;
			vals[3] = r->attempt;
			vals[4] = r->retry ? "true" : "false";
			rc = run_prepared(w, "fail_answer", 5, vals, &res, state, msg, sizeof(msg));
			if (rc == SQL_ERROR && strncmp(state, "22", 2) == 0)
			{
				/* not jsonb, or a bad retry_in: the text as it is */
				char	   *t = sanitize_utf8(r->text, strlen(r->text));
				const char *v2[3] = {r->id, t, r->attempt};

				rc = run_prepared(w, "fail", 3, v2, &res, state, msg, sizeof(msg));
				free(t);
			}
			if (rc == SQL_OK)
				w->done_failed++;
		}
		else
		{
			what = "release";
			vals[1] = r->attempt;
			rc = run_prepared(w, "release", 2, vals, &res, state, msg, sizeof(msg));
		}
		if (rc == SQL_LOST)
		{
			ok = false;
			break;
		}
		if (rc == SQL_ERROR)
			log_refused(r, what, state, msg);
		PQclear(res);
		report_done(P, i);
	}
	reports_compact(P);
	return ok;
}

/*
 * The successes as the three array literals claim(completed => ...) and
 * complete_many() take.
 */
static void
completion_arrays(Persist *P, Buf *ids, Buf *results, Buf *atts)
{
	bool		first = true;

	buf_append(ids, "{", 1);
	buf_append(results, "{", 1);
	buf_append(atts, "{", 1);
	for (int i = 0; i < P->nreports; i++)
	{
		PReport    *r = &P->reports[i];

		if (r->kind != P_COMPLETE)
			continue;
		if (!first)
		{
			buf_append(ids, ",", 1);
			buf_append(results, ",", 1);
			buf_append(atts, ",", 1);
		}
		first = false;
		buf_append(ids, r->id, strlen(r->id));
		array_elem(results, r->text);
		buf_append(atts, r->attempt, strlen(r->attempt));
	}
	buf_append(ids, "}", 1);
	buf_append(results, "}", 1);
	buf_append(atts, "}", 1);
}

static void
completions_reported(Worker *w)
{
	Persist    *P = w->persist;

	for (int i = 0; i < P->nreports; i++)
		if (P->reports[i].kind == P_COMPLETE)
		{
			report_done(P, i);
			w->done_ok++;
		}
	reports_compact(P);
}

/*
 * One round with the database: the successes so far and, when want > 0, a
 * claim of want jobs, in one call; then failures and releases one by one.
 */
static void
db_round(Worker *w, int want)
{
	Persist    *P = w->persist;
	char		state[6];
	char		msg[1024];
	PGresult   *r = NULL;
	SqlResult	rc = SQL_OK;

	if (want > 0 || P->ncomplete > 0)
	{
		Buf			ids = {0},
					results = {0},
					atts = {0};
		char		wantbuf[16];
		char		host[256];
		char		workerbuf[300];

		if (P->ncomplete > 0)
			completion_arrays(P, &ids, &results, &atts);
		if (want > 0)
		{
			const char *vals[7];

			snprintf(wantbuf, sizeof(wantbuf), "%d", want);
			if (gethostname(host, sizeof(host)) != 0)
				strcpy(host, "?");
			host[sizeof(host) - 1] = '\0';
			snprintf(workerbuf, sizeof(workerbuf), "%s:%d", host, (int) getpid());
			vals[0] = w->queue;
			vals[1] = wantbuf;
			vals[2] = w->lease_text;
			vals[3] = workerbuf;
			vals[4] = ids.data;
			vals[5] = results.data;
			vals[6] = atts.data;
			rc = run_prepared(w, "claim_done", 7, vals, &r, state, msg, sizeof(msg));
			w->next_poll = now_ms() + w->poll_ms;
		}
		else
		{
			const char *vals[3] = {ids.data, results.data, atts.data};

			rc = run_prepared(w, "complete_done", 3, vals, &r, state, msg, sizeof(msg));
		}
		buf_free(&ids);
		buf_free(&results);
		buf_free(&atts);
		if (rc == SQL_LOST)
			return;
		if (rc == SQL_OK)
		{
			completions_reported(w);
			if (want > 0)
			{
				w->maybe_jobs = (PQntuples(r) == want);
				dispatch_jobs(w, r);
			}
			PQclear(r);
		}
		else if (P->ncomplete > 0 && (strcmp(state, "55000") == 0 ||
									  strcmp(state, "AZ003") == 0 ||
									  strncmp(state, "22", 2) == 0))
		{
			/* one of them was refused: report each, claim next time */
			if (w->verbose)
				logmsg("a batch of %d results was refused (%s); reporting them one by one",
					   P->ncomplete, msg);
			if (!report_each(w, true))
				return;
		}
		else
		{
			logmsg("%s failed: %s", want > 0 ? "claim" : "complete_many", msg);
			w->maybe_jobs = false;
			/* as in the per-job mode: only transient errors are retried */
			if (strncmp(state, "40", 2) != 0 && strncmp(state, "53", 2) != 0 &&
				strcmp(state, "55P03") != 0 && strcmp(state, "57014") != 0)
			{
				w->failed = true;
				if (!w->stopping)
				{
					w->stopping = true;
					w->grace_end = now_ms() + w->grace_ms;
				}
			}
		}
	}
	if (P->nreports > P->ncomplete)
		report_each(w, false);
	P->last_round = now_ms();
}

/* Heartbeat every job in flight that is due. */
static void
heartbeats(Worker *w, int64_t now)
{
	Persist    *P = w->persist;

	if (w->hb_ms <= 0)
		return;
	for (int i = 0; i < w->concurrency && w->conn; i++)
	{
		Proc	   *pr = &P->procs[i];

		for (int k = 0; k < pr->njobs && w->conn; k++)
		{
			PJob	   *job = &pr->jobs[k];
			const char *vals[3] = {job->id, w->lease_text, job->attempt};
			PGresult   *r;
			char		state[6];
			char		msg[1024];
			SqlResult	rc;

			if (job->lost || job->next_hb > now)
				continue;
			rc = run_prepared(w, "heartbeat", 3, vals, &r, state, msg, sizeof(msg));
			if (rc == SQL_LOST)
				return;
			PQclear(r);
			job->next_hb = now + w->hb_ms;
			if (rc == SQL_ERROR && (strcmp(state, "55000") == 0 || strcmp(state, "AZ003") == 0))
			{
				logmsg("job %s (attempt %s): %s (%s); stopping process %d",
					   job->id, job->attempt,
					   strcmp(state, "AZ003") == 0 ? "cancelled" : "lease lost", msg,
					   pr->index);
				job->lost = true;
				pr->release_all = true; /* it was not the others' fault */
				proc_stop(pr, now);
			}
			else if (rc == SQL_ERROR)
				logmsg("job %s: heartbeat failed: %s", job->id, msg);
			else if (w->verbose)
				logmsg("job %s: heartbeat", job->id);
		}
	}
}

/* Timeouts, SIGKILL escalation, the end of the grace, restarts. */
static bool
timers(Worker *w, int64_t now)
{
	Persist    *P = w->persist;

	for (int i = 0; i < w->concurrency; i++)
	{
		Proc	   *pr = &P->procs[i];

		if (pr->pid > 0 && pr->stopping && now >= pr->kill_at)
		{
			kill(-pr->pid, SIGKILL);
			pr->kill_at = INT64_MAX;
		}
		if (pr->pid > 0 && !pr->stopping && w->timeout_ms > 0)
			for (int k = 0; k < pr->njobs; k++)
				if (!pr->jobs[k].lost && now - pr->jobs[k].sent >= w->timeout_ms)
				{
					char		dur[32];
					Buf			m = {0};

					format_duration(w->timeout_ms, dur, sizeof(dur));
					buf_appendf(&m, "timed out after %s; worker process stopped", dur);
					logmsg("job %s: timed out after %s; stopping process %d (pid %d)",
						   pr->jobs[k].id, dur, pr->index, (int) pr->pid);
					snprintf(pr->fail_id, sizeof(pr->fail_id), "%s", pr->jobs[k].id);
					pr->fail_msg = m.data;
					proc_stop(pr, now);
					break;
				}
		if (w->stopping && pr->pid > 0 && !pr->stopping)
		{
			if (pr->njobs == 0 && pr->woff == pr->wbuf.len)
				proc_close_input(pr);	/* end of input: exit, please */
			if (now >= w->grace_end)
			{
				if (pr->njobs > 0)
					logmsg("grace period over; stopping process %d and releasing its %d job(s)",
						   pr->index, pr->njobs);
				pr->release_all = true;
				proc_stop(pr, now);
			}
		}
		if (pr->pid == 0 && !w->stopping && now >= pr->start_at)
		{
			if (!proc_start(w, pr))
			{
				w->failed = true;
				w->stopping = true;
				w->grace_end = now + w->grace_ms;
				return false;
			}
		}
	}
	return true;
}

/* After a (re)connect: the leases of jobs in flight may be near their end. */
void
persist_connected(Worker *w)
{
	Persist    *P = w->persist;

	if (P == NULL)
		return;
	for (int i = 0; i < w->concurrency; i++)
		for (int k = 0; k < P->procs[i].njobs; k++)
			P->procs[i].jobs[k].next_hb = 0;
}

/* The main loop of --persistent. */
int
persist_loop(Worker *w)
{
	Persist    *P = xmalloc(sizeof(Persist));
	struct pollfd *pfds = xmalloc(sizeof(struct pollfd) * (2 + 2 * w->concurrency));
	int64_t		give_up_at = 0;
	bool		drained = false;

	memset(P, 0, sizeof(Persist));
	w->persist = P;
	P->capacity = w->concurrency * w->pipeline;
	P->procs = xmalloc(sizeof(Proc) * w->concurrency);
	memset(P->procs, 0, sizeof(Proc) * w->concurrency);
	for (int i = 0; i < w->concurrency; i++)
	{
		P->procs[i].index = i;
		P->procs[i].in_fd = P->procs[i].out_fd = -1;
		P->procs[i].jobs = xmalloc(sizeof(PJob) * w->pipeline);
		P->procs[i].backoff_ms = RESTART_MIN_MS;
	}
	w->reconnect_at = now_ms();
	w->backoff_ms = RECONNECT_MIN_MS;

	for (;;)
	{
		int64_t		now = now_ms();
		int64_t		wake;
		int			np = 0;
		int			running = 0;
		int64_t		batch_wake = 0;

		take_signals(w, now, P->inflight, "job(s) in flight");
		reap_processes(w);
		timers(w, now);

		if (w->conn == NULL && now >= w->reconnect_at && (!w->stopping || P->nreports > 0))
		{
			if (!worker_connect(w))
			{
				w->reconnect_at = now_ms() + w->backoff_ms;
				w->backoff_ms = min64(w->backoff_ms * 2, RECONNECT_MAX_MS);
			}
		}
		if (w->conn)
		{
			int			free_n = free_places(w);
			int			want = 0;
			bool		may_claim = !w->stopping && (w->maybe_jobs || now >= w->next_poll);
			bool		due = now - P->last_round >= BATCH_WAIT_MS;

			heartbeats(w, now);
			if (may_claim && free_n > 0 &&
				(P->inflight == 0 || free_n * 2 >= P->capacity || due))
				want = free_n < w->batch ? free_n : w->batch;
			if (want > 0 || (P->ncomplete > 0 &&
							 (P->inflight == 0 || !w->maybe_jobs || w->stopping ||
							  P->ncomplete * 2 >= P->capacity || due)) ||
				P->nreports > P->ncomplete)
				db_round(w, want);
			if (P->ncomplete > 0 || (may_claim && free_places(w) > 0))
				batch_wake = P->last_round + BATCH_WAIT_MS;
		}

		/* done? */
		for (int i = 0; i < w->concurrency; i++)
			if (P->procs[i].pid > 0)
				running++;
		if (!w->stopping && w->drain && w->conn && !w->maybe_jobs &&
			P->inflight == 0 && P->nreports == 0)
		{
			if (w->verbose)
				logmsg("queue drained (%ld succeeded, %ld failed)", w->done_ok, w->done_failed);
			drained = true;
			w->stopping = true;
			w->grace_end = now + w->grace_ms;
			continue;
		}
		if (w->stopping && P->inflight == 0 && P->nreports == 0 && running == 0)
		{
			if (!drained || w->verbose)
				logmsg("stopped (%ld succeeded, %ld failed)", w->done_ok, w->done_failed);
			free(pfds);
			return w->failed ? 1 : 0;
		}
		if (w->stopping && w->conn == NULL && P->nreports > 0)
		{
			if (give_up_at == 0)
				give_up_at = w->grace_end + 30000;
			if (now >= give_up_at && running == 0)
			{
				logmsg("giving up: %d job outcome(s) not reported; their leases will expire and they will run again",
					   P->nreports);
				free(pfds);
				return 1;
			}
		}

		/* wait */
		wake = worker_wake(w, now);
		if (w->conn && batch_wake > 0)
			wake = min64(wake, batch_wake);
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
			Proc	   *pr = &P->procs[i];

			if (pr->pid == 0)
			{
				if (!w->stopping)
					wake = min64(wake, pr->start_at);
				continue;
			}
			if (pr->stopping && pr->kill_at < INT64_MAX)
				wake = min64(wake, pr->kill_at);
			for (int k = 0; k < pr->njobs; k++)
			{
				if (w->timeout_ms > 0 && !pr->stopping)
					wake = min64(wake, pr->jobs[k].sent + w->timeout_ms);
				if (w->conn && w->hb_ms > 0 && !pr->jobs[k].lost)
					wake = min64(wake, pr->jobs[k].next_hb);
			}
			if (pr->out_fd >= 0)
			{
				pfds[np].fd = pr->out_fd;
				pfds[np].events = POLLIN;
				np++;
			}
			if (pr->in_fd >= 0 && pr->woff < pr->wbuf.len)
			{
				pfds[np].fd = pr->in_fd;
				pfds[np].events = POLLOUT;
				np++;
			}
		}
		if (poll(pfds, np, (int) (wake > now ? min64(wake - now, 60000) : 0)) < 0 &&
			errno != EINTR)
		{
			logmsg("poll failed: %s", strerror(errno));
			free(pfds);
			return 1;
		}
		if (w->conn)
		{
			if (PQconsumeInput(w->conn) == 0 || PQstatus(w->conn) == CONNECTION_BAD)
				worker_disconnect(w, NULL);
			else
				drain_notifies(w);
		}
		for (int i = 0; i < w->concurrency; i++)
		{
			Proc	   *pr = &P->procs[i];

			if (pr->pid == 0)
				continue;
			if (pr->out_fd >= 0)
				read_answers(w, pr);
			write_requests(pr);
		}
	}
}
