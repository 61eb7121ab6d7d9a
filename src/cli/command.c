/*-------------------------------------------------------------------------
 *
 * command.c
 *	  Running one job's command for "atomizer work": fork and exec (no shell)
 *	  in its own process group with the job in its environment and the
 *	  payload on its stdin (after checking at start that the command can be
 *	  executed at all); collecting its stdout (the result) and the tail
 *	  of its stderr (the error) through non-blocking pipes; and, once it is
 *	  reaped, turning its exit status into the outcome to report.
 *
 *	  src/cli/command.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <unistd.h>

static void
set_nonblock(int fd)
{
	int			fl = fcntl(fd, F_GETFL);

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
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

void
slot_reset(Slot *s)
{
	free(s->task);
	free(s->payload);
	free(s->error);
	buf_free(&s->out);
	memset(s, 0, sizeof(Slot));
	s->in_fd = s->out_fd = s->err_fd = -1;
	s->state = SLOT_FREE;
}

/* Append to a slot's stderr tail, keeping the last ERR_TAIL bytes. */
static void
err_append(Slot *s, const char *p, size_t n)
{
	if (n >= ERR_TAIL)
	{
		p += n - ERR_TAIL;
		n = ERR_TAIL;
		s->err_cut = true;
		s->err_len = 0;
	}
	if (s->err_len + n > sizeof(s->err))
	{
		size_t		keep = ERR_TAIL - n;

		memmove(s->err, s->err + s->err_len - keep, keep);
		s->err_len = keep;
		s->err_cut = true;
	}
	memcpy(s->err + s->err_len, p, n);
	s->err_len += n;
}

/* Read what a command's pipe has; false at EOF or error (fd closed). */
bool
read_pipe(Slot *s, int *fd, bool is_out)
{
	char		buf[8192];

	for (;;)
	{
		ssize_t		n = read(*fd, buf, sizeof(buf));

		if (n > 0)
		{
			if (is_out)
			{
				if (!s->out_too_big && s->out.len + n <= MAX_RESULT)
					buf_append(&s->out, buf, n);
				else
					s->out_too_big = true;
			}
			else
				err_append(s, buf, n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		close_fd(fd);
		return false;
	}
}

/* Write more of the payload to the command's stdin. */
void
write_stdin(Slot *s)
{
	while (s->in_fd >= 0 && s->payload_off < s->payload_len)
	{
		ssize_t		n = write(s->in_fd, s->payload + s->payload_off,
							  s->payload_len - s->payload_off);

		if (n > 0)
			s->payload_off += n;
		else if (n < 0 && errno == EINTR)
			continue;
		else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		else
			close_fd(&s->in_fd);	/* EPIPE: it does not read its stdin */
	}
	close_fd(&s->in_fd);
}

/*
 * Make a string safe to send as text: valid UTF-8 without NUL bytes.
 * Invalid bytes become '?'; leading continuation bytes (from cutting the
 * tail) are dropped.
 */
char *
sanitize_utf8(const char *p, size_t n)
{
	char	   *out = xmalloc(n + 1);
	size_t		o = 0;
	size_t		i = 0;

	while (i < n && ((unsigned char) p[i] & 0xC0) == 0x80)
		i++;
	while (i < n)
	{
		unsigned char c = (unsigned char) p[i];
		int			len;

		if (c < 0x80)
			len = 1;
		else if ((c & 0xE0) == 0xC0 && c >= 0xC2)
			len = 2;
		else if ((c & 0xF0) == 0xE0)
			len = 3;
		else if ((c & 0xF8) == 0xF0 && c <= 0xF4)
			len = 4;
		else
			len = 0;
		if (len > 0 && i + len <= n)
		{
			bool		ok = true;

			for (int k = 1; k < len; k++)
				if (((unsigned char) p[i + k] & 0xC0) != 0x80)
					ok = false;
			if (ok && c != 0)
			{
				memcpy(out + o, p + i, len);
				o += len;
				i += len;
				continue;
			}
		}
		out[o++] = '?';
		i++;
	}
	out[o] = '\0';
	return out;
}

/* Does the text look like it could be JSON at all (cheap pre-check)? */
static bool
maybe_json(const Buf *b)
{
	size_t		i = 0;

	if (b->len == 0 || memchr(b->data, '\0', b->len) != NULL)
		return false;
	while (i < b->len && isspace((unsigned char) b->data[i]))
		i++;
	if (i == b->len)
		return false;
	return strchr("{[\"-0123456789tfn", b->data[i]) != NULL;
}

/* A command's process was reaped: collect its output, decide the report. */
static void
slot_finished(Worker *w, Slot *s, int status)
{
	char		dur[32];

	if (s->out_fd >= 0)
		read_pipe(s, &s->out_fd, true);
	if (s->err_fd >= 0)
		read_pipe(s, &s->err_fd, false);
	close_fd(&s->out_fd);
	close_fd(&s->err_fd);
	close_fd(&s->in_fd);
	s->pid = 0;
	s->kill_at = 0;
	s->state = SLOT_REPORT;

	if (s->lease_lost)
	{
		s->report = REPORT_NONE;
		return;
	}
	if (s->released)
	{
		s->report = REPORT_RELEASE;
		return;
	}
	if (s->timed_out)
	{
		Buf			e = {0};

		format_duration(w->timeout_ms, dur, sizeof(dur));
		buf_appendf(&e, "command timed out after %s", dur);
		if (s->err_len > 0)
		{
			buf_append(&e, "\n", 1);
			buf_append(&e, s->err, s->err_len);
		}
		s->error = sanitize_utf8(e.data, e.len);
		buf_free(&e);
		s->report = REPORT_FAIL;
	}
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
	{
		s->report = REPORT_COMPLETE;
		s->has_result = !s->out_too_big && maybe_json(&s->out);
	}
	else
	{
		Buf			e = {0};
		size_t		n = s->err_len;

		while (n > 0 && (s->err[n - 1] == '\n' || s->err[n - 1] == '\r'))
			n--;
		if (n > 0)
			buf_append(&e, s->err, n);
		else if (WIFEXITED(status))
			buf_appendf(&e, "command exited with status %d", WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			buf_appendf(&e, "command killed by signal %d (%s)", WTERMSIG(status),
						strsignal(WTERMSIG(status)));
		else
			buf_appendf(&e, "command ended with status %d", status);
		s->error = sanitize_utf8(e.data, e.len);
		buf_free(&e);
		s->report = REPORT_FAIL;
	}
	if (w->verbose)
		logmsg("job %s (attempt %s) %s in %" PRId64 " ms", s->id, s->attempt,
			   s->report == REPORT_COMPLETE ? "succeeded" : "failed",
			   now_ms() - s->started);
}

/* Reap every exited command. */
void
reap_children(Worker *w)
{
	for (;;)
	{
		int			status;
		pid_t		pid = waitpid(-1, &status, WNOHANG);

		if (pid <= 0)
			return;
		for (int i = 0; i < w->concurrency; i++)
		{
			Slot	   *s = &w->slots[i];

			if (s->state == SLOT_RUNNING && s->pid == pid)
			{
				slot_finished(w, s, status);
				break;
			}
		}
	}
}

/*
 * Is path a file this process may execute?  False with errno set (ENOENT,
 * EACCES, EISDIR) when not.
 */
static bool
executable_file(const char *path)
{
	struct stat st;

	if (stat(path, &st) != 0)
		return false;
	if (S_ISDIR(st.st_mode))
	{
		errno = EISDIR;
		return false;
	}
	return access(path, X_OK) == 0;
}

/*
 * Check at start that the command can be executed, finding it as execvp
 * will: a name with a slash as it is, any other in the directories of PATH
 * (an empty entry is the current directory; without PATH, the system's
 * default path).  A command that cannot be executed is a usage error: the
 * worker exits 2 before it claims anything, instead of failing every job.
 */
void
check_command(const char *cmd)
{
	const char *path;
	const char *dir;
	bool		denied = false;
	char		defpath[1024];

	if (cmd[0] == '\0')
	{
		fprintf(stderr, "%s: the command is an empty string\n", progname);
		exit(EXIT_USAGE);
	}
	if (strchr(cmd, '/') != NULL)
	{
		if (executable_file(cmd))
			return;
		fprintf(stderr, "%s: cannot execute command \"%s\": %s\n", progname, cmd,
				strerror(errno));
		exit(EXIT_USAGE);
	}
	path = getenv("PATH");
	if (path == NULL)
	{
		if (confstr(_CS_PATH, defpath, sizeof(defpath)) == 0)
			strcpy(defpath, "/bin:/usr/bin");
		path = defpath;
	}
	for (dir = path;; dir = strchr(dir, ':') + 1)
	{
		size_t		dlen = strcspn(dir, ":");
		char	   *full = xmalloc(dlen + strlen(cmd) + 3);

		if (dlen == 0)
			sprintf(full, "./%s", cmd);
		else
			sprintf(full, "%.*s/%s", (int) dlen, dir, cmd);
		if (executable_file(full))
		{
			free(full);
			return;
		}
		if (errno == EACCES)
			denied = true;
		free(full);
		if (dir[dlen] == '\0')
			break;
	}
	if (denied)
		fprintf(stderr, "%s: cannot execute command \"%s\": found in PATH, but not executable\n",
				progname, cmd);
	else
		fprintf(stderr, "%s: command \"%s\" not found in PATH (%s)\n",
				progname, cmd, path);
	exit(EXIT_USAGE);
}

/* Close both ends of the first n pipes of p. */
static void
close_pipes(int p[][2], int n)
{
	for (int i = 0; i < n; i++)
	{
		close(p[i][0]);
		close(p[i][1]);
	}
}

/*
 * spawn_command
 *		Start argv in a process group of its own, with default signal
 *		handling, stdin and stdout (and, with capture_err, stderr) pipes to
 *		us, and the environment variables env[] (name, value, ..., NULL)
 *		set; on Linux it gets SIGTERM if we die.  Our ends are non-blocking,
 *		in *sp.  START_EXEC_FAILED when the command could not be executed
 *		(*err: the errno of execvp, which a status pipe tells: it is closed
 *		by a successful exec, O_CLOEXEC, or carries the errno; the child is
 *		reaped), START_FAILED when no pipe or process could be made (*err:
 *		that errno).
 */
StartResult
spawn_command(char **argv, bool capture_err, const char *const *env,
			  Spawned *sp, int *err)
{
	int			p[4][2];		/* stdin, stdout, status, stderr */
	int			np = capture_err ? 4 : 3;
	pid_t		pid;
	pid_t		parent = getpid();
	int			exec_errno = 0;
	ssize_t		n;

	for (int i = 0; i < np; i++)
		if (pipe2(p[i], O_CLOEXEC) < 0)
		{
			*err = errno;
			close_pipes(p, i);
			return START_FAILED;
		}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
	{
		*err = errno;
		close_pipes(p, np);
		return START_FAILED;
	}
	if (pid == 0)
	{
		sigset_t	none;
		int			e;

		setpgid(0, 0);
#ifdef __linux__

		/*
		 * If atomizer work dies (SIGKILL, OOM), stop the command too: its
		 * jobs' leases will expire and the jobs run again elsewhere.
		 */
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
		dup2(p[0][0], 0);
		dup2(p[1][1], 1);
		if (capture_err)
			dup2(p[3][1], 2);
		for (int i = 0; env[i] != NULL && env[i + 1] != NULL; i += 2)
			setenv(env[i], env[i + 1], 1);
		execvp(argv[0], argv);
		e = errno;
		if (write(p[2][1], &e, sizeof(e)) < 0)
		{
			/* the parent reads EOF and sees an exit status of 127 */
		}
		_exit(127);
	}
	setpgid(pid, pid);			/* also here: no race with kill(-pid) */
	close(p[0][0]);
	close(p[1][1]);
	close(p[2][1]);
	if (capture_err)
		close(p[3][1]);
	do
		n = read(p[2][0], &exec_errno, sizeof(exec_errno));
	while (n < 0 && errno == EINTR);
	close(p[2][0]);
	if (n == sizeof(exec_errno))
	{
		/* not started: reap it here, no outcome to collect */
		close(p[0][1]);
		close(p[1][0]);
		if (capture_err)
			close(p[3][0]);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		*err = exec_errno;
		return START_EXEC_FAILED;
	}
	sp->pid = pid;
	sp->in_fd = p[0][1];
	sp->out_fd = p[1][0];
	sp->err_fd = capture_err ? p[3][0] : -1;
	set_nonblock(sp->in_fd);
	set_nonblock(sp->out_fd);
	if (capture_err)
		set_nonblock(sp->err_fd);
	return START_OK;
}

/*
 * Start the command for a claimed job in slot s (see spawn_command for
 * what comes back).
 */
StartResult
slot_start(Worker *w, Slot *s, int *err_out)
{
	const char *env[] = {"ATOMIZER_JOB_ID", s->id, "ATOMIZER_TASK", s->task,
		"ATOMIZER_ATTEMPT", s->attempt, "ATOMIZER_QUEUE", w->queue, NULL};
	Spawned		sp;
	StartResult r = spawn_command(w->command, true, env, &sp, err_out);

	if (r != START_OK)
		return r;
	s->in_fd = sp.in_fd;
	s->out_fd = sp.out_fd;
	s->err_fd = sp.err_fd;
	s->pid = sp.pid;
	s->started = now_ms();
	s->next_hb = w->hb_ms > 0 ? s->started + w->hb_ms : INT64_MAX;
	s->state = SLOT_RUNNING;
	w->busy++;
	write_stdin(s);
	if (w->verbose)
		logmsg("job %s (task %s, attempt %s) started, pid %d", s->id, s->task,
			   s->attempt, (int) sp.pid);
	return START_OK;
}
