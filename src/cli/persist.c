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
 *	  src/cli/persist.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <unistd.h>

/* a process exiting before it answered anything is restarted after this,
 * doubled each time up to RECONNECT_MAX_MS */
#define RESTART_MIN_MS 100
/* an answer line longer than this is a protocol error */
#define MAX_ANSWER (MAX_RESULT + 65536)
/*
 * Successes are reported, and free places claimed, once half the places
 * are free (or none is busy), or this long after the last round: big
 * batches when jobs are short, little delay when they are long.
 */
#define BATCH_WAIT_MS 20

typedef struct PJob
{
	char		id[24];
	char		attempt[16];
	int64_t		sent;			/* written to the process: its timeout runs */
	int64_t		next_hb;
	bool		lost;			/* cancelled or lease lost: nothing to report */
} PJob;

typedef struct Proc
{
	int			index;
	pid_t		pid;			/* 0: not running */
	int			in_fd;
	int			out_fd;
	Buf			wbuf;			/* request lines not yet written */
	size_t		woff;
	Buf			rbuf;			/* answer text not yet a whole line */
	bool		rbuf_too_big;
	PJob	   *jobs;			/* in flight, oldest first */
	int			njobs;
	int64_t		start_at;		/* when pid is 0: start it then */
	int64_t		backoff_ms;
	int64_t		kill_at;		/* stopping: SIGKILL then (INT64_MAX: sent) */
	bool		stopping;
	bool		release_all;	/* when reaped: release every job */
	char		fail_id[24];	/* when reaped: fail this job with fail_msg */
	char	   *fail_msg;
	bool		answered;		/* answered a job since it started */
} Proc;

typedef enum ReportKindP
{
	P_COMPLETE,
	P_FAIL,
	P_RELEASE,
	P_DONE						/* reported: to be dropped */
} ReportKindP;

typedef struct PReport
{
	ReportKindP kind;
	char		id[24];
	char		attempt[16];
	char	   *text;			/* result JSON (or NULL), or error JSON */
	bool		retry;
	char		retry_in[48];	/* "" none */
} PReport;

typedef struct Persist
{
	Proc	   *procs;
	int			capacity;		/* concurrency x pipeline */
	int			inflight;
	PReport    *reports;
	int			nreports;
	int			reports_cap;
	int			ncomplete;		/* P_COMPLETE among reports */
	int64_t		last_round;		/* the last db_round() */
} Persist;

/* Append s to b as a JSON string. */
static void
json_quote(Buf *b, const char *s)
{
	buf_append(b, "\"", 1);
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
		{
			buf_append(b, "\\", 1);
			buf_append(b, s, 1);
		}
		else if (c == '\n')
			buf_append(b, "\\n", 2);
		else if (c < 0x20)
			buf_appendf(b, "\\u%04x", c);
		else
			buf_append(b, s, 1);
	}
	buf_append(b, "\"", 1);
}

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

static void
report_add(Persist *P, ReportKindP kind, const PJob *job, char *text,
		   bool retry, const char *retry_in)
{
	PReport    *r;

	if (P->nreports == P->reports_cap)
	{
		P->reports_cap = P->reports_cap ? P->reports_cap * 2 : 64;
		P->reports = realloc(P->reports, sizeof(PReport) * P->reports_cap);
		if (P->reports == NULL)
		{
			logmsg("out of memory");
			exit(1);
		}
	}
	r = &P->reports[P->nreports++];
	memset(r, 0, sizeof(PReport));
	r->kind = kind;
	snprintf(r->id, sizeof(r->id), "%s", job->id);
	snprintf(r->attempt, sizeof(r->attempt), "%s", job->attempt);
	r->text = text;
	r->retry = retry;
	snprintf(r->retry_in, sizeof(r->retry_in), "%s", retry_in ? retry_in : "");
	if (kind == P_COMPLETE)
		P->ncomplete++;
}

/* A failure atomizer itself describes (timeout, crash): its error as JSON. */
static void
report_fail_msg(Persist *P, const PJob *job, const char *msg)
{
	Buf			b = {0};
	char	   *clean = sanitize_utf8(msg, strlen(msg));

	json_quote(&b, clean);
	free(clean);
	report_add(P, P_FAIL, job, b.data, true, NULL);
}

static void
close_fd(int *fd)
{
	if (*fd >= 0)
	{
		close(*fd);
		*fd = -1;
	}
}

/* Remove job k of pr (shifting the younger ones). */
static void
proc_drop_job(Persist *P, Proc *pr, int k)
{
	memmove(&pr->jobs[k], &pr->jobs[k + 1], sizeof(PJob) * (pr->njobs - k - 1));
	pr->njobs--;
	P->inflight--;
}

/*
 * Start the command of process slot pr: stdin and stdout are pipes, stderr
 * is ours.  False (and the worker stops) when it cannot be executed.
 */
static bool
proc_start(Worker *w, Proc *pr)
{
	int			in[2],
				out[2],
				st[2];
	pid_t		pid;
	pid_t		parent = getpid();
	int			exec_errno = 0;
	ssize_t		n;
	char		slot[16];

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
		pipe2(st, O_CLOEXEC) < 0)
	{
		logmsg("could not create pipes for the command: %s", strerror(errno));
		pr->start_at = now_ms() + RECONNECT_MAX_MS;
		return true;
	}
	snprintf(slot, sizeof(slot), "%d", pr->index);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
	{
		logmsg("could not start the command: %s", strerror(errno));
		close(in[0]);
		close(in[1]);
		close(out[0]);
		close(out[1]);
		close(st[0]);
		close(st[1]);
		pr->start_at = now_ms() + RECONNECT_MAX_MS;
		return true;
	}
	if (pid == 0)
	{
		sigset_t	none;
		int			e;

		setpgid(0, 0);
#ifdef __linux__
		/* if atomizer work dies, so does the process; the leases expire */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);
#endif
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGCHLD, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		dup2(in[0], 0);
		dup2(out[1], 1);
		setenv("ATOMIZER_QUEUE", w->queue, 1);
		setenv("ATOMIZER_SLOT", slot, 1);
		execvp(w->command[0], w->command);
		e = errno;
		if (write(st[1], &e, sizeof(e)) < 0)
		{
			/* the parent reads EOF and sees exit status 127 */
		}
		_exit(127);
	}
	setpgid(pid, pid);
	close(in[0]);
	close(out[1]);
	close(st[1]);
	do
		n = read(st[0], &exec_errno, sizeof(exec_errno));
	while (n < 0 && errno == EINTR);
	close(st[0]);
	if (n == sizeof(exec_errno))
	{
		close(in[1]);
		close(out[0]);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		logmsg("could not execute \"%s\": %s; stopping", w->command[0],
			   strerror(exec_errno));
		return false;
	}
	fcntl(in[1], F_SETFL, fcntl(in[1], F_GETFL) | O_NONBLOCK);
	fcntl(out[0], F_SETFL, fcntl(out[0], F_GETFL) | O_NONBLOCK);
	pr->pid = pid;
	pr->in_fd = in[1];
	pr->out_fd = out[0];
	pr->woff = 0;
	pr->wbuf.len = 0;
	pr->rbuf.len = 0;
	pr->rbuf_too_big = false;
	pr->kill_at = 0;
	pr->stopping = false;
	pr->release_all = false;
	pr->fail_id[0] = '\0';
	pr->answered = false;
	if (w->verbose)
		logmsg("process %d started, pid %d", pr->index, (int) pid);
	return true;
}

/*
 * Stop process pr (its process group): SIGTERM now, SIGKILL after
 * KILL_DELAY_MS.  What happens to its jobs is decided when it is reaped.
 */
static void
proc_stop(Proc *pr, int64_t now)
{
	if (pr->pid <= 0 || pr->stopping)
		return;
	pr->stopping = true;
	close_fd(&pr->in_fd);
	kill(-pr->pid, SIGTERM);
	pr->kill_at = now + KILL_DELAY_MS;
}

/* Is this process taking jobs? */
static bool
proc_live(const Proc *pr)
{
	return pr->pid > 0 && !pr->stopping && pr->in_fd >= 0;
}

/* One answer line of process pr. */
static void
handle_answer(Worker *w, Proc *pr, char *line, size_t len)
{
	Persist    *P = w->persist;
	bool		container;
	char		err[256];
	const char *v;
	size_t		vlen;
	int			k = 0;
	PJob		job;

	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
		line[--len] = '\0';
	if (len == 0)
		return;					/* blank lines are allowed */
	if (pr->njobs == 0)
	{
		logmsg("process %d (pid %d) answered with no job in flight; ignored: %.200s",
			   pr->index, (int) pr->pid, line);
		return;
	}
	if (!json_check(line, &container, err, sizeof(err)) || line[0] != '{')
	{
		Buf			e = {0};

		buf_appendf(&e, "invalid answer from the worker process (not a JSON object: %s): ",
					json_check(line, &container, err, sizeof(err)) ? "another value" : err);
		buf_append(&e, line, len > 300 ? 300 : len);
		job = pr->jobs[0];
		proc_drop_job(P, pr, 0);
		if (!job.lost)
			report_fail_msg(P, &job, e.data);
		logmsg("job %s: %s", job.id, e.data);
		buf_free(&e);
		return;
	}
	if (json_member(line, "id", &v, &vlen))
	{
		for (k = 0; k < pr->njobs; k++)
			if (strlen(pr->jobs[k].id) == vlen && strncmp(pr->jobs[k].id, v, vlen) == 0)
				break;
		if (k == pr->njobs)
		{
			logmsg("process %d (pid %d) answered for job %.*s, which it does not have; ignored",
				   pr->index, (int) pr->pid, (int) (vlen > 30 ? 30 : vlen), v);
			return;
		}
	}
	job = pr->jobs[k];
	proc_drop_job(P, pr, k);
	pr->answered = true;
	pr->backoff_ms = RESTART_MIN_MS;
	if (job.lost)
		return;
	if (json_member(line, "error", &v, &vlen) && !(vlen == 4 && strncmp(v, "null", 4) == 0))
	{
		char	   *text = xmalloc(vlen + 1);
		bool		retry = true;
		char		retry_in[48] = "";
		const char *rv;
		size_t		rlen;

		memcpy(text, v, vlen);
		text[vlen] = '\0';
		if (json_member(line, "retry", &rv, &rlen) && rlen == 5 && strncmp(rv, "false", 5) == 0)
			retry = false;
		if (json_member(line, "retry_in", &rv, &rlen) && rlen < 40 &&
			(rv[0] == '-' || (rv[0] >= '0' && rv[0] <= '9')))
			snprintf(retry_in, sizeof(retry_in), "%.*s seconds", (int) rlen, rv);
		report_add(P, P_FAIL, &job, text, retry, retry_in);
		if (w->verbose)
			logmsg("job %s (attempt %s) failed: %s", job.id, job.attempt, text);
		return;
	}
	if (json_member(line, "ok", &v, &vlen) && vlen == 4 && strncmp(v, "true", 4) == 0)
	{
		char	   *result = NULL;

		if (json_member(line, "result", &v, &vlen) &&
			!(vlen == 4 && strncmp(v, "null", 4) == 0) && vlen <= MAX_RESULT)
		{
			result = sanitize_utf8(v, vlen);
		}
		report_add(P, P_COMPLETE, &job, result, true, NULL);
		if (w->verbose)
			logmsg("job %s (attempt %s) succeeded", job.id, job.attempt);
		return;
	}
	{
		Buf			e = {0};

		buf_appendf(&e, "invalid answer from the worker process (neither \"ok\": true nor \"error\"): ");
		buf_append(&e, line, len > 300 ? 300 : len);
		report_fail_msg(P, &job, e.data);
		logmsg("job %s: %s", job.id, e.data);
		buf_free(&e);
	}
}

/* Read what process pr has written; false at end of file. */
static bool
read_answers(Worker *w, Proc *pr)
{
	char		buf[65536];

	while (pr->out_fd >= 0)
	{
		ssize_t		n = read(pr->out_fd, buf, sizeof(buf));
		char	   *start;
		char	   *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (n <= 0)
		{
			close_fd(&pr->out_fd);
			return false;
		}
		buf_append(&pr->rbuf, buf, n);
		start = pr->rbuf.data;
		while ((nl = memchr(start, '\n', pr->rbuf.len - (start - pr->rbuf.data))) != NULL)
		{
			*nl = '\0';
			if (!pr->rbuf_too_big)
				handle_answer(w, pr, start, nl - start);
			pr->rbuf_too_big = false;
			start = nl + 1;
		}
		if (start > pr->rbuf.data)
		{
			size_t		rest = pr->rbuf.len - (start - pr->rbuf.data);

			memmove(pr->rbuf.data, start, rest);
			pr->rbuf.len = rest;
		}
		if (pr->rbuf.len > MAX_ANSWER)
		{
			/* a line this long is not an answer: fail the job it was for */
			if (!pr->rbuf_too_big && pr->njobs > 0)
			{
				PJob		job = pr->jobs[0];

				proc_drop_job(w->persist, pr, 0);
				if (!job.lost)
					report_fail_msg(w->persist, &job,
									"invalid answer from the worker process: a line longer than the limit");
			}
			pr->rbuf_too_big = true;
			pr->rbuf.len = 0;
		}
	}
	return false;
}

/* Write what is pending to process pr's stdin. */
static void
write_requests(Proc *pr)
{
	while (pr->in_fd >= 0 && pr->woff < pr->wbuf.len)
	{
		ssize_t		n = write(pr->in_fd, pr->wbuf.data + pr->woff,
							  pr->wbuf.len - pr->woff);

		if (n > 0)
			pr->woff += n;
		else if (n < 0 && errno == EINTR)
			continue;
		else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		else
		{
			close_fd(&pr->in_fd);	/* EPIPE: it is gone; reaped soon */
			return;
		}
	}
	if (pr->woff == pr->wbuf.len)
		pr->woff = pr->wbuf.len = 0;
}

/* Process pr was reaped: what it was doing becomes reports. */
static void
proc_reaped(Worker *w, Proc *pr, int status)
{
	Persist    *P = w->persist;
	char		how[128];
	int64_t		now = now_ms();

	read_answers(w, pr);
	close_fd(&pr->out_fd);
	close_fd(&pr->in_fd);
	if (WIFEXITED(status))
		snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(how, sizeof(how), "was killed by signal %d (%s)", WTERMSIG(status),
				 strsignal(WTERMSIG(status)));
	else
		snprintf(how, sizeof(how), "ended with status %d", status);
	if (pr->njobs > 0 || (!pr->stopping && !w->stopping) || w->verbose)
		logmsg("process %d (pid %d) %s%s", pr->index, (int) pr->pid, how,
			   pr->njobs > 0 ? " with jobs in flight" : "");
	for (int k = 0; k < pr->njobs; k++)
	{
		PJob	   *job = &pr->jobs[k];

		if (job->lost)
			continue;
		if (pr->fail_id[0] && strcmp(job->id, pr->fail_id) == 0)
			report_fail_msg(P, job, pr->fail_msg);
		else if (k == 0 && !pr->release_all && pr->fail_id[0] == '\0')
		{
			char		msg[256];

			snprintf(msg, sizeof(msg), "worker process %s while running the job", how);
			report_fail_msg(P, job, msg);
		}
		else
			report_add(P, P_RELEASE, job, NULL, true, NULL);
	}
	P->inflight -= pr->njobs;
	pr->njobs = 0;
	free(pr->fail_msg);
	pr->fail_msg = NULL;
	pr->pid = 0;
	pr->stopping = false;
	pr->kill_at = 0;
	if (!pr->answered)
	{
		pr->start_at = now + pr->backoff_ms;
		pr->backoff_ms = pr->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS :
			pr->backoff_ms * 2;
	}
	else
	{
		pr->start_at = now;
		pr->backoff_ms = RESTART_MIN_MS;
	}
}

static void
reap(Worker *w)
{
	Persist    *P = w->persist;

	for (;;)
	{
		int			status;
		pid_t		pid = waitpid(-1, &status, WNOHANG);

		if (pid <= 0)
			return;
		for (int i = 0; i < w->concurrency; i++)
			if (P->procs[i].pid == pid)
			{
				proc_reaped(w, &P->procs[i], status);
				break;
			}
	}
}

/* Hand the claimed rows of r to the live processes, fewest jobs first. */
static void
dispatch(Worker *w, PGresult *r)
{
	Persist    *P = w->persist;
	int64_t		now = now_ms();

	for (int row = 0; row < PQntuples(r); row++)
	{
		Proc	   *best = NULL;
		PJob	   *job;
		const char *payload = PQgetisnull(r, row, 2) ? "null" : PQgetvalue(r, row, 2);

		for (int i = 0; i < w->concurrency; i++)
		{
			Proc	   *pr = &P->procs[i];

			if (proc_live(pr) && pr->njobs < w->pipeline &&
				(best == NULL || pr->njobs < best->njobs))
				best = pr;
		}
		if (best == NULL)
		{
			PJob		j = {{0}};

			/* cannot happen: claims ask for the free places only */
			snprintf(j.id, sizeof(j.id), "%s", PQgetvalue(r, row, 0));
			snprintf(j.attempt, sizeof(j.attempt), "%s", PQgetvalue(r, row, 3));
			report_add(P, P_RELEASE, &j, NULL, true, NULL);
			continue;
		}
		job = &best->jobs[best->njobs++];
		P->inflight++;
		memset(job, 0, sizeof(PJob));
		snprintf(job->id, sizeof(job->id), "%s", PQgetvalue(r, row, 0));
		snprintf(job->attempt, sizeof(job->attempt), "%s", PQgetvalue(r, row, 3));
		job->sent = now;
		job->next_hb = w->hb_ms > 0 ? now + w->hb_ms : INT64_MAX;
		buf_appendf(&best->wbuf, "{\"id\":%s,\"task\":", job->id);
		json_quote(&best->wbuf, PQgetvalue(r, row, 1));
		buf_appendf(&best->wbuf, ",\"attempt\":%s,\"queue\":", job->attempt);
		json_quote(&best->wbuf, w->queue);
		buf_append(&best->wbuf, ",\"payload\":", 11);
		buf_append(&best->wbuf, payload, strlen(payload));
		buf_append(&best->wbuf, "}\n", 2);
		if (w->verbose)
			logmsg("job %s (task %s, attempt %s) sent to process %d", job->id,
				   PQgetvalue(r, row, 1), job->attempt, best->index);
	}
	for (int i = 0; i < w->concurrency; i++)
		write_requests(&P->procs[i]);
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
				dispatch(w, r);
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
				close_fd(&pr->in_fd);	/* end of input: exit, please */
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

static int64_t
min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
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
		char		tmp[64];
		int64_t		batch_wake = 0;

		while (read(sig_pipe[0], tmp, sizeof(tmp)) > 0)
			;
		if (sig_count > 0 && !w->stopping)
		{
			char		dur[32];

			format_duration(w->grace_ms, dur, sizeof(dur));
			w->stopping = true;
			w->grace_end = now + w->grace_ms;
			if (P->inflight > 0)
				logmsg("stopping: no more claims; waiting up to %s for %d job(s) in flight",
					   dur, P->inflight);
		}
		if (sig_count > 1 && w->grace_end > now)
		{
			logmsg("second signal: ending the grace period now");
			w->grace_end = now;
		}
		reap(w);
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
		wake = now + 60000;
		if (w->conn == NULL)
			wake = min64(wake, w->reconnect_at);
		else if (!w->stopping)
			wake = min64(wake, w->next_poll);
		if (w->stopping && w->grace_end > now)
			wake = min64(wake, w->grace_end);
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
