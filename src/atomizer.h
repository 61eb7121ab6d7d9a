/*-------------------------------------------------------------------------
 *
 * atomizer.h
 *	  Declarations shared by atomizer's modules: GUC values, the privilege
 *	  switch used around atomizer's own table access, queue lookups, handler
 *	  resolution, and the claim / run / record-outcome steps that both
 *	  atomizer.run_pending() and the background workers use.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_H
#define ATOMIZER_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

#define ATOMIZER_SCHEMA			"atomizer"
#define ATOMIZER_ADMIN_ROLE		"atomizer_admin"
#define ATOMIZER_QUEUE_NAME_MAX	48
#define ATOMIZER_PRIORITY_MIN	(-32768)
#define ATOMIZER_PRIORITY_MAX	32767

/* guc.c */
extern int	atomizer_batch_size;
extern void atomizer_guc_init(void);

/* privilege.c */
typedef struct AtomizerPrivState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} AtomizerPrivState;

extern void atomizer_become_owner(AtomizerPrivState *state);
extern void atomizer_restore_caller(AtomizerPrivState *state);
extern bool atomizer_is_admin(Oid roleid);
extern char *atomizer_role_name(Oid roleid);

/* queue.c */
typedef struct AtomizerQueue
{
	char	   *name;
	bool		external;
	bool		paused;
} AtomizerQueue;

extern void atomizer_check_queue_name(const char *name);
extern bool atomizer_lookup_queue(const char *name, AtomizerQueue *queue);
extern void atomizer_require_queue(const char *name, AtomizerQueue *queue);
extern List *atomizer_runnable_queues(void);

/* handler.c */
extern char *atomizer_resolve_handler(const char *handler, Oid roleid);
extern Oid	atomizer_lookup_handler(const char *handler, Oid roleid);

/* dispatch.c */
typedef struct AtomizerJob
{
	int64		id;
	char	   *queue;
	char	   *handler;
	Datum		payload;		/* jsonb */
	int			attempt;		/* this attempt, counted at claim */
	int			max_attempts;	/* effective: the job's or the queue's */
	int64		timeout_ms;		/* effective; 0 means none */
	char	   *owner;
	int			priority;
	TimestampTz run_at;
} AtomizerJob;

typedef struct AtomizerOutcome
{
	bool		ok;
	bool		has_result;
	Datum		result;			/* jsonb, when has_result */
	bool		timed_out;
	char		sqlstate[6];
	char	   *message;
	char	   *detail;
	char	   *hint;
	char	   *context;
} AtomizerOutcome;

extern int	atomizer_claim_jobs(const char *queue, int max_jobs,
								const char *owner_filter, const char *worker,
								AtomizerJob **jobs);
extern void atomizer_run_job(AtomizerJob *job, AtomizerOutcome *outcome);
extern void atomizer_record_outcome(AtomizerJob *job,
									AtomizerOutcome *outcome,
									const Interval *retry_in);

/* jobs.c */
extern int64 atomizer_interval_ms(const Interval *iv);
extern bool atomizer_finish_job(int64 id, const char *state, Datum result,
								bool result_isnull, const char *error);

#endif							/* ATOMIZER_H */
