/*-------------------------------------------------------------------------
 *
 * persist.h
 *	  The state of "atomizer work --persistent", shared by persist.c (the
 *	  loop and its SQL) and proc.c (the processes and the line protocol).
 *
 *	  src/cli/persist.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_PERSIST_H
#define ATOMIZER_PERSIST_H

#include "cli.h"

/*
 * A process that exits before it has answered anything is started again
 * after this, doubled each time up to RECONNECT_MAX_MS.
 */
#define RESTART_MIN_MS 100
/* an answer line longer than this is a protocol error */
#define MAX_ANSWER (MAX_RESULT + 65536)

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

/* proc.c */
extern void report_add(Persist *P, ReportKindP kind, const PJob *job,
					   char *text, bool retry, const char *retry_in);
extern void report_fail_msg(Persist *P, const PJob *job, const char *msg);
extern void proc_drop_job(Persist *P, Proc *pr, int k);
extern bool proc_start(Worker *w, Proc *pr);
extern void proc_stop(Proc *pr, int64_t now);
extern void proc_close_input(Proc *pr);
extern bool proc_live(const Proc *pr);
extern bool read_answers(Worker *w, Proc *pr);
extern void write_requests(Proc *pr);
extern void reap_processes(Worker *w);
extern void dispatch_jobs(Worker *w, PGresult *r);

#endif							/* ATOMIZER_PERSIST_H */
