/*-------------------------------------------------------------------------
 *
 * proc.c
 *	  The processes of "atomizer work --persistent" and its line protocol
 *	  (persist.c has the loop): a process started with its stdin and
 *	  stdout as pipes (stderr is atomizer work's), in its own process
 *	  group; jobs written to it as one JSON line each; its answers read,
 *	  split into lines and turned into reports (complete, fail); a process
 *	  reaped, its jobs failed (the oldest, if it died with them) or released
 *	  (the others).
 *
 *	  src/cli/proc.c
 *
 *-------------------------------------------------------------------------
 */
#include "persist.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <unistd.h>

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

void
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
void
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

/* End of input for process pr: it exits once it has answered its jobs. */
void
proc_close_input(Proc *pr)
{
	close_fd(&pr->in_fd);
}

/* Remove job k of pr (shifting the younger ones). */
void
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
bool
proc_start(Worker *w, Proc *pr)
{
	char		slot[16];
	const char *env[] = {"ATOMIZER_QUEUE", w->queue, "ATOMIZER_SLOT", slot, NULL};
	Spawned		sp;
	int			err;

	snprintf(slot, sizeof(slot), "%d", pr->index);
	switch (spawn_command(w->command, false, env, &sp, &err))
	{
		case START_FAILED:
			logmsg("could not start the command: %s", strerror(err));
			pr->start_at = now_ms() + RECONNECT_MAX_MS;
			return true;
		case START_EXEC_FAILED:
			logmsg("could not execute \"%s\": %s; stopping", w->command[0],
				   strerror(err));
			return false;
		case START_OK:
			break;
	}
	pr->pid = sp.pid;
	pr->in_fd = sp.in_fd;
	pr->out_fd = sp.out_fd;
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
		logmsg("process %d started, pid %d", pr->index, (int) sp.pid);
	return true;
}

/*
 * Stop process pr (its process group): SIGTERM now, SIGKILL after
 * KILL_DELAY_MS.  What happens to its jobs is decided when it is reaped.
 */
void
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
bool
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
bool
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
void
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

void
reap_processes(Worker *w)
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
void
dispatch_jobs(Worker *w, PGresult *r)
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
