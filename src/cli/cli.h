/*-------------------------------------------------------------------------
 *
 * cli.h
 *	  Declarations shared by the files of the atomizer command-line tool:
 *	  helpers (common.c), the JSON check (json.c), the worker's state
 *	  (work.c, command.c; persist.c and proc.c share persist.h too), the
 *	  subcommands (work.c, admin.c) and the manual (atomizer.c).
 *
 *	  src/cli/cli.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_CLI_H
#define ATOMIZER_CLI_H

#define _GNU_SOURCE

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>

#include "libpq-fe.h"

#define EXIT_USAGE 2

/* how much of a command's stderr becomes the error of a failed job */
#define ERR_TAIL 2048
/* a command's stdout beyond this is not a result (stored as NULL) */
#define MAX_RESULT (1024 * 1024)
/* SIGTERM to SIGKILL, for timed-out commands and at the end of the grace */
#define KILL_DELAY_MS 3000
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 10000

typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

typedef enum SlotState
{
	SLOT_FREE,
	SLOT_RUNNING,				/* command running (or its pipes open) */
	SLOT_REPORT					/* finished, outcome not yet reported */
} SlotState;

typedef enum ReportKind
{
	REPORT_COMPLETE,
	REPORT_FAIL,
	REPORT_RELEASE,
	REPORT_NONE					/* lease lost: nothing to report */
} ReportKind;

typedef struct Slot
{
	SlotState	state;
	char		id[24];
	char		attempt[16];
	char	   *task;
	char	   *payload;		/* payload text followed by a newline */
	size_t		payload_len;
	size_t		payload_off;
	pid_t		pid;
	int			in_fd;
	int			out_fd;
	int			err_fd;
	Buf			out;
	bool		out_too_big;
	char		err[ERR_TAIL * 2];
	size_t		err_len;
	bool		err_cut;		/* earlier stderr was dropped */
	int64_t		started;
	int64_t		next_hb;
	int64_t		kill_at;		/* send SIGKILL then (0: not scheduled) */
	bool		timed_out;
	bool		lease_lost;
	bool		released;		/* stopped at the end of the grace */
	ReportKind	report;
	char	   *error;			/* for REPORT_FAIL */
	bool		has_result;
	bool		tried_once;		/* a report attempt already failed */
} Slot;

typedef struct Worker
{
	/* options */
	const char *dsn;
	const char *queue;
	int			concurrency;
	int			batch;
	int64_t		lease_ms;
	int64_t		grace_ms;
	int64_t		timeout_ms;		/* 0: none */
	int64_t		hb_ms;			/* 0: no heartbeats */
	int64_t		poll_ms;
	bool		drain;
	bool		verbose;
	bool		persistent;		/* --persistent: one process per slot */
	int			pipeline;		/* --pipeline: jobs sent ahead per process */
	char	  **command;

	/* state */
	PGconn	   *conn;
	char		lease_text[64];
	int64_t		reconnect_at;
	int64_t		backoff_ms;
	bool		ever_connected;
	bool		maybe_jobs;		/* claim again without waiting */
	int64_t		next_poll;
	bool		stopping;
	bool		failed;			/* a fatal error: exit 1 once stopped */
	bool		cannot_start;	/* a command could not be started */
	int64_t		grace_end;
	int			busy;			/* slots not free */
	Slot	   *slots;
	long		done_ok;
	long		done_failed;
	struct Persist *persist;	/* --persistent mode's state (persist.c) */
} Worker;

typedef enum SqlResult
{
	SQL_OK,
	SQL_ERROR,					/* the statement failed, connection is fine */
	SQL_LOST					/* the connection is gone */
} SqlResult;

extern const char *progname;

/* common.c */
extern void *xmalloc(size_t n);
extern char *xstrdup(const char *s);
extern void buf_append(Buf *b, const char *s, size_t n);
extern void buf_appendf(Buf *b, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
extern void buf_free(Buf *b);
extern int64_t now_ms(void);
static inline int64_t
min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}
extern void logmsg(const char *fmt,...) __attribute__((format(printf, 1, 2)));
extern void usage_error(const char *cmd, const char *fmt,...)
			__attribute__((format(printf, 2, 3), noreturn));
extern int64_t parse_duration(const char *s);
extern void format_duration(int64_t ms, char *out, size_t len);
extern int	parse_positive(const char *cmd, const char *opt, const char *s, int min);
extern int64_t duration_opt(const char *cmd, const char *opt, const char *arg,
							bool allow_zero);
extern const char *oneline(const char *msg, char *buf, size_t len);
extern PGconn *connect_db(const char *dsn, const char *appname, char *err,
						  size_t errlen);

/* json.c */
extern bool json_check(const char *text, bool *container, char *err,
					   size_t errlen);
extern bool json_member(const char *text, const char *key, const char **value,
						size_t *len);

/* work.c: the connection and the signals, shared with persist.c */
extern int	sig_pipe[2];
extern volatile sig_atomic_t sig_count;
extern void take_signals(Worker *w, int64_t now, int busy, const char *what);
extern int64_t worker_wake(const Worker *w, int64_t now);
extern bool worker_connect(Worker *w);
extern void worker_disconnect(Worker *w, const char *why);
extern void drain_notifies(Worker *w);
extern SqlResult run_prepared(Worker *w, const char *stmt, int n,
							  const char *const *vals, PGresult **res,
							  char *sqlstate, char *msg, size_t msglen);

/* persist.c: --persistent mode */
extern int	persist_loop(Worker *w);
extern void persist_connected(Worker *w);

/* command.c */
typedef enum StartResult
{
	START_OK,
	START_FAILED,				/* no pipe or no fork: errno says why */
	START_EXEC_FAILED			/* the command could not be executed */
} StartResult;

extern void slot_reset(Slot *s);
typedef struct Spawned
{
	pid_t		pid;
	int			in_fd;			/* its stdin, ours to write */
	int			out_fd;			/* its stdout */
	int			err_fd;			/* its stderr, or -1 */
} Spawned;
extern StartResult spawn_command(char **argv, bool capture_err,
								 const char *const *env, Spawned *sp, int *err);
extern StartResult slot_start(Worker *w, Slot *s, int *err);
extern void check_command(const char *cmd);
extern void reap_children(Worker *w);
extern bool read_pipe(Slot *s, int *fd, bool is_out);
extern void write_stdin(Slot *s);
extern char *sanitize_utf8(const char *p, size_t n);

/* subcommands: work.c, admin.c; the manual: atomizer.c */
extern int	cmd_work(int argc, char **argv);
extern int	cmd_enqueue(int argc, char **argv);
extern int	cmd_stats(int argc, char **argv);
extern int	cmd_dashboard(int argc, char **argv);
extern int	print_help(const char *sub);

#endif							/* ATOMIZER_CLI_H */
