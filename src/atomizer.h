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
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "pgtime.h"
#include "postmaster/bgworker.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "port/atomics.h"
#include "utils/array.h"
#include "utils/jsonb.h"

#include "compat.h"

#define ATOMIZER_SCHEMA			"atomizer"
#define ATOMIZER_ADMIN_ROLE		"atomizer_admin"
#define ATOMIZER_QUEUE_NAME_MAX	48
#define ATOMIZER_PRIORITY_MIN	(-32768)
#define ATOMIZER_PRIORITY_MAX	32767

/*
 * The longest delay atomizer schedules (a retry's backoff, retry_in, a
 * lease): interval '1000 years' (12,000 months of 30 days, as intervals
 * compare), in seconds and in milliseconds.  Longer
 * settings are refused; a backoff that would grow past its cap saturates.
 */
#define ATOMIZER_MAX_DELAY_SECS	INT64CONST(31104000000)
#define ATOMIZER_MAX_DELAY_MS	(ATOMIZER_MAX_DELAY_SECS * 1000)
#define ATOMIZER_MAX_DELAY_TEXT	"1000 years"	/* also an interval literal */
/* A job's timeout becomes a statement timeout: an int of milliseconds. */
#define ATOMIZER_MAX_TIMEOUT_MS	INT64CONST(2147483647)
#define ATOMIZER_MAX_TIMEOUT_TEXT "24 days 20:31:23.647"

/* guc.c */
extern int	atomizer_batch_size;
extern bool atomizer_enabled;
extern char *atomizer_databases;
extern int	atomizer_max_workers;
extern int	atomizer_shutdown_timeout;
extern int	atomizer_poll_interval;
extern int	atomizer_vacuum_after_jobs;
extern int	atomizer_cron_lookahead;
extern int	atomizer_worker_idle_timeout;
extern int	atomizer_log_failures;

#define ATOMIZER_LOG_FAILURES_NONE	0
#define ATOMIZER_LOG_FAILURES_DEAD	1
#define ATOMIZER_LOG_FAILURES_ALL	2
extern void atomizer_guc_init(void);

/* shmem.c */
#define ATOMIZER_MAX_DATABASES	64

#define ATOMIZER_WORKER_STARTING	1
#define ATOMIZER_WORKER_IDLE		2
#define ATOMIZER_WORKER_RUNNING		3
#define ATOMIZER_WORKER_STOPPING	4
#define ATOMIZER_WORKER_PAUSED		5	/* idle, its queue paused */

typedef struct AtomizerWorkerSlot
{
	bool		in_use;
	uint32		generation;		/* bumped at each reservation */
	int			state;
	pid_t		pid;			/* 0 until the worker has started */
	pg_time_t	start_time;		/* the worker's MyStartTime */
	Oid			dboid;
	char		queue[NAMEDATALEN];
	int			concurrency;	/* the queue's, when the worker was started */
	Latch	   *latch;
	int64		job_id;			/* job running now, or 0 */
	int64		jobs_succeeded;
	int64		jobs_failed;
	TimestampTz started_at;
	int64		cancel_job_id;	/* cancel() asked: stop this job's handler */
	bool		yield_requested;	/* give the slot up after this batch */
	Oid			yield_to_db;	/* and wake this database's scheduler */
	char		yield_to_queue[NAMEDATALEN];	/* which wants it for this queue */
} AtomizerWorkerSlot;

typedef struct AtomizerDbSlot
{
	Oid			dboid;
	pid_t		scheduler_pid;
	Latch	   *scheduler_latch;
	bool		no_extension;	/* the scheduler found no extension, or
								 * one of another version */
	char		logged_version[NAMEDATALEN];	/* what the log last said was
												 * installed: "" nothing said,
												 * "-" no extension */
	TimestampTz retry_after;	/* launcher: start no scheduler before */
	pg_atomic_uint32 orphans_pending;	/* a worker died with jobs */
	pg_atomic_uint32 schedules_changed; /* a schedule's next run changed */
	TimestampTz last_worker_failure;	/* a worker exited on an error */
	TimestampTz next_wake;		/* when the scheduler means to wake */
	int			nnotify;		/* external queues to NOTIFY ... */
	bool		notify_all;		/* ... or all of them */
	char		notify[8][NAMEDATALEN];
} AtomizerDbSlot;

/* floor.c: claim keys and the per-queue claim floor */
typedef struct AtomizerClaimKey
{
	int32		priority;
	TimestampTz run_at;
	int64		id;
} AtomizerClaimKey;

#define ATOMIZER_FLOOR_SLOTS	256
/* lowerings a slot remembers, for the advances of claims they overlapped */
#define ATOMIZER_FLOOR_LOG		32

typedef struct AtomizerFloorSlot
{
	slock_t		mutex;
	uint64		gen;			/* bumped by every lowering */
	Oid			dboid;			/* InvalidOid: no queue holds the slot */
	char		queue[NAMEDATALEN];
	AtomizerClaimKey key;		/* no job of the queue waits below it */
	/* the key each of the last lowerings allows, at generation % LOG */
	AtomizerClaimKey lowered[ATOMIZER_FLOOR_LOG];
	TimestampTz next_full;		/* no look from the front before this */
} AtomizerFloorSlot;

typedef struct AtomizerShared
{
	LWLock	   *lock;
	Latch	   *launcher_latch;
	int			max_workers;
	bool		logged_no_slot;
	AtomizerDbSlot dbs[ATOMIZER_MAX_DATABASES];
	AtomizerFloorSlot floors[ATOMIZER_FLOOR_SLOTS];
	AtomizerWorkerSlot workers[FLEXIBLE_ARRAY_MEMBER];
} AtomizerShared;

extern AtomizerShared *atomizer_shared;
extern void atomizer_shmem_init(void);
extern AtomizerDbSlot *atomizer_db_slot(Oid dboid, bool create);
extern AtomizerWorkerSlot *atomizer_worker_slot_of(int pid, pg_time_t start_time,
												   Oid dboid);
extern void atomizer_wake_queue(Oid dboid, const char *queue);
extern void atomizer_wake_queue_all(Oid dboid, const char *queue);
extern void atomizer_wake_launcher(Oid dboid);
extern void atomizer_wake_scheduler(Oid dboid);
extern void atomizer_schedules_changed(Oid dboid);
extern void atomizer_wake_scheduler_by(Oid dboid, TimestampTz when);
extern void atomizer_request_notify(Oid dboid, const char *queue);
extern List *atomizer_take_notify_requests(bool *all);

extern const AtomizerClaimKey atomizer_key_min;
extern int	atomizer_key_cmp(const AtomizerClaimKey *a, const AtomizerClaimKey *b);
extern uint64 atomizer_floor_get(Oid dboid, const char *queue,
								 AtomizerClaimKey *floor);
extern void atomizer_floor_advance(Oid dboid, const char *queue, uint64 gen,
								   const AtomizerClaimKey *key);
extern void atomizer_floor_lower(Oid dboid, const char *queue,
								 const AtomizerClaimKey *key);
extern void atomizer_floor_reset_db(Oid dboid);
extern bool atomizer_floor_recheck(Oid dboid, const char *queue);
extern void atomizer_floor_rechecked(Oid dboid, const char *queue,
									 TimestampTz started);
extern void atomizer_floor_init(void);

/* launcher.c, scheduler.c, worker.c */
extern void atomizer_launcher_register(void);
extern bool atomizer_database_listed(const char *dbname);
extern bool atomizer_start_scheduler(Oid dboid, BackgroundWorkerHandle **handle);
typedef enum AtomizerStartResult
{
	ATOMIZER_STARTED,
	ATOMIZER_NO_WORKER_SLOT,	/* atomizer.max_workers are all in use */
	ATOMIZER_NO_BGWORKER_SLOT	/* max_worker_processes is exhausted */
} AtomizerStartResult;

extern AtomizerStartResult atomizer_start_worker(Oid dboid, const char *queue,
												 int concurrency, int *slotno,
												 BackgroundWorkerHandle **handle);
extern void atomizer_background_settings(void);
extern PGDLLEXPORT void atomizer_launcher_main(Datum arg);
extern PGDLLEXPORT void atomizer_scheduler_main(Datum arg);
extern PGDLLEXPORT void atomizer_worker_main(Datum arg);

/* dropdb.c */
extern void atomizer_dropdb_init(void);

/*
 * plans.c: a statement whose text starts with ATOMIZER_INDEXED is planned
 * as if atomizer's tables were big, whatever their statistics say when it
 * is planned (see plans.c).
 */
#define ATOMIZER_INDEXED	"/* atomizer: indexed */ "
extern void atomizer_plans_init(void);

/* wakeup.c */
extern void atomizer_note_enqueue(const char *queue);
extern void atomizer_note_schedule_change(void);
extern void atomizer_note_cancel_running(int64 job_id, int pid, pg_time_t start_time);
extern void atomizer_note_external(const char *queue);
extern void atomizer_note_deadline(TimestampTz when);
extern void atomizer_note_resume(const char *queue);
extern void atomizer_note_waiting(const char *queue, const AtomizerClaimKey *key);
extern void atomizer_note_job_locks(void);
extern void atomizer_note_floor_advance(const char *queue, uint64 gen,
										const AtomizerClaimKey *key);

/* external.c */
extern TimestampTz atomizer_expire_leases(void);
extern void atomizer_notify_queue(const char *queue);

/* schedule.c */
extern int	atomizer_fire_schedules(TimestampTz now, int lookahead_ms,
									TimestampTz *next_wake, bool *more);

/* privilege.c */
typedef struct AtomizerPrivState
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} AtomizerPrivState;

extern void atomizer_become_owner(AtomizerPrivState *state);
extern void atomizer_restore_caller(AtomizerPrivState *state);
struct ReturnSetInfo;
extern void atomizer_query_as_owner(struct ReturnSetInfo *rsinfo, const char *query);
extern bool atomizer_is_admin(Oid roleid);
extern char *atomizer_role_name(Oid roleid);

/* queue.c */
/* A queue's lifecycle hooks (atomizer.queue.before_run, ...), src/hooks.c */
typedef enum AtomizerHook
{
	ATOMIZER_HOOK_BEFORE_RUN,
	ATOMIZER_HOOK_ON_SUCCESS,
	ATOMIZER_HOOK_ON_FAILURE,
	ATOMIZER_HOOK_ON_DEAD,
	ATOMIZER_HOOKS
} AtomizerHook;

typedef struct AtomizerQueue
{
	char	   *name;
	bool		external;
	bool		paused;
	int			rate_limit;		/* 0: no rate limit */
	Interval	rate_period;
	char	   *rate_partition; /* NULL: the limit holds for the whole queue */
	bool		handler_limits; /* rows in atomizer.handler_limit */
	char	   *hooks[ATOMIZER_HOOKS];	/* schema-qualified f(jsonb), or NULL */
} AtomizerQueue;

#define atomizer_queue_limited(q) ((q)->rate_limit > 0 || (q)->handler_limits)

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
	TimestampTz lease_until;	/* external workers' claims; else 0 */
} AtomizerJob;

typedef struct AtomizerOutcome
{
	bool		ok;
	bool		has_result;
	Datum		result;			/* jsonb, when has_result */
	bool		timed_out;
	bool		released;		/* not the job's fault: put back uncounted */
	bool		snoozed;		/* snooze(): again after snooze_ms, uncounted */
	int64		snooze_ms;
	bool		discarded;		/* discard(): dead now, no more attempts */
	bool		cancelled;		/* cancel() while it ran: cancelled */
	char		sqlstate[6];
	char	   *message;
	char	   *detail;
	char	   *hint;
	char	   *context;
} AtomizerOutcome;

extern void atomizer_run_job(AtomizerJob *job, AtomizerOutcome *outcome);
extern void atomizer_record_outcome(AtomizerJob *job,
									AtomizerOutcome *outcome,
									const Interval *retry_in);
extern bool atomizer_record_or_set_aside(AtomizerJob *job,
										 AtomizerOutcome *outcome,
										 bool release_solo,
										 const char *duty);
extern bool atomizer_in_worker;
extern int	atomizer_worker_slot;
extern bool atomizer_in_handler(void);
extern int64 atomizer_running_job_id(void);
extern volatile sig_atomic_t atomizer_shutdown_pending;
extern volatile TimestampTz atomizer_shutdown_deadline;

/* subxact.c */
extern ErrorData *atomizer_try(void (*fn) (void *arg), void *arg);

/* hooks.c: a queue's lifecycle hooks */
extern void atomizer_hook_call(AtomizerHook hook, const char *fn,
							   const AtomizerJob *job, Datum result,
							   bool has_result, const AtomizerOutcome *error);
extern ErrorData *atomizer_hook_run(AtomizerHook hook, const char *fn,
									const AtomizerJob *job, Datum result,
									bool has_result,
									const AtomizerOutcome *error);
extern void atomizer_hooks_after_failure(const AtomizerJob *job,
										 const AtomizerOutcome *outcome,
										 bool dead);
extern void atomizer_outcome_from_error(AtomizerOutcome *outcome,
										const ErrorData *edata);
extern bool atomizer_in_hook(void);

/* sqlfunc.c */
extern bool atomizer_call_sql_handler(Oid fnoid, Datum payload, Datum *result,
									  bool *isnull);

/* store.c */
typedef struct AtomizerNewJobs
{
	char	   *handler;		/* as stored: qualified for internal queues */
	char	   *queue;
	TimestampTz run_at;
	int			priority;
	bool		max_attempts_null;
	int			max_attempts;
	bool		timeout_null;
	Interval   *timeout;
	char	   *owner;
	bool		external;
	bool		paused;			/* nobody to wake until resume_queue() */
	Datum		tags;			/* text[] (0.2.0), if not tags_null */
	bool		tags_null;
	/* with dependencies (0.2.0; store_insert and store_insert_many only) */
	bool		deps;			/* write the three below */
	bool		blocked;		/* state 'blocked' (else 'available') */
	int			blockers;
	bool		deps_run;		/* on_dependency_failure 'run' (else 'cancel') */
} AtomizerNewJobs;

extern bool atomizer_store_jobs(const AtomizerNewJobs *jobs, Datum *payloads,
								int n, int64 *ids);

/*
 * What a claim writes into each job it claimed, and the queue's settings
 * for jobs without their own (store.c).
 */
typedef struct AtomizerClaimMark
{
	Datum		worker;			/* text: the worker's identity or name */
	bool		worker_null;
	const Interval *lease;		/* an external worker's lease, or NULL */
	TimestampTz started_at;		/* 0: each job at its own clock */
	int			queue_max_attempts;
	const Interval *queue_timeout;	/* or NULL */
} AtomizerClaimMark;

/* A job a batch finish moved to the history, for its counters (store.c). */
typedef struct AtomizerMoved
{
	int64		id;
	char	   *queue;
	TimestampTz run_at;
	TimestampTz started_at;
	bool		started_null;
	TimestampTz finished_at;
} AtomizerMoved;

/* The job of one cron fire, as its schedule set it up (store.c). */
typedef struct AtomizerFireJob
{
	int64		schedule_id;
	const char *queue;
	const char *handler;
	Datum		payload;		/* jsonb */
	int			priority;
	bool		max_attempts_null;
	int			max_attempts;
	bool		timeout_null;
	Interval   *timeout;
	const char *owner;
	TimestampTz run_at;
} AtomizerFireJob;

extern bool atomizer_store_mark_claimed(const AtomizerClaimMark *mark,
										const ItemPointerData *tids,
										const int64 *ids, int n,
										const char *queue, MemoryContext cxt,
										AtomizerJob *jobs);
extern int	atomizer_store_move_succeeded(const int64 *ids, const Datum *results,
										  const bool *result_nulls, int n,
										  AtomizerMoved *moved, int *left,
										  int *nleft);
extern bool atomizer_store_fire_jobs(const AtomizerFireJob *jobs, int n,
									 int64 *ids);

/* workflow.c */
typedef struct AtomizerDeps
{
	int			n;				/* dependencies, sorted, each once */
	int64	   *ids;
	bool		run;			/* on_dependency_failure 'run' (else 'cancel') */
	int			pending;		/* unfinished, locked (atomizer_deps_lock) */
	int64		failed_id;		/* the first dead or cancelled one, or 0 */
	char	   *failed_state;
} AtomizerDeps;

extern bool atomizer_deps_parse(FunctionCallInfo fcinfo, int deps_arg,
								AtomizerDeps *deps);
extern void atomizer_deps_lock(AtomizerDeps *deps, const char *owner);
extern bool atomizer_deps_attach(const AtomizerDeps *deps, const int64 *ids,
								 int n, const char *owner, bool written);
extern void atomizer_deps_preset(const AtomizerDeps *deps, AtomizerNewJobs *args);
extern void atomizer_workflow_note_finished(int64 id, bool failed);
extern void atomizer_workflow_retried(int64 id);

/* jobs.c */
struct _SPI_plan;
extern struct _SPI_plan *atomizer_prepare(struct _SPI_plan **cache,
										  const char *sql, int nargs,
										  Oid *argtypes);
extern struct _SPI_plan *atomizer_prepare_opts(struct _SPI_plan **cache,
											   const char *sql, int nargs,
											   Oid *argtypes, int cursor_options);
extern int64 atomizer_interval_ms(const Interval *iv);
extern void atomizer_check_interval(const Interval *iv, const char *name,
									bool allow_zero, int64 max_ms);
extern void atomizer_check_payload(Jsonb *payload, int index);
extern int64 atomizer_delay_arg(FunctionCallInfo fcinfo, int argno);
extern void atomizer_check_job_settings(FunctionCallInfo fcinfo, int priority_arg,
										int max_attempts_arg, int timeout_arg);
extern char *atomizer_job_handler(const char *handler,
								  const AtomizerQueue *queue, Oid roleid);

/* stats.c: counters of finished work, per queue */
typedef enum AtomizerOutcomeKind
{
	ATOMIZER_OUTCOME_SUCCEEDED,
	ATOMIZER_OUTCOME_FAILED,	/* an attempt failed; the job will retry */
	ATOMIZER_OUTCOME_DEAD,
	ATOMIZER_OUTCOME_CANCELLED
} AtomizerOutcomeKind;

#define ATOMIZER_OUTCOMES	4

extern Size atomizer_stats_shmem_size(void);
extern void atomizer_stats_shmem_init(void);
extern void atomizer_stats_note(const char *queue, AtomizerOutcomeKind kind,
								int64 wait_us, int64 run_us);

/* buckets of the wait and run histograms (the last is +Inf) */
#define ATOMIZER_STATS_BUCKETS	15

/* counts of finished work of one queue */
typedef struct AtomizerStatsCounts
{
	uint64		outcome[ATOMIZER_OUTCOMES];
	uint64		wait[ATOMIZER_STATS_BUCKETS];
	uint64		wait_sum_us;
	uint64		run[ATOMIZER_STATS_BUCKETS];
	uint64		run_sum_us;
} AtomizerStatsCounts;

/* the sampled states of unfinished jobs (the order of atomizer._gauges()) */
typedef enum AtomizerGauge
{
	ATOMIZER_GAUGE_SCHEDULED,
	ATOMIZER_GAUGE_AVAILABLE,
	ATOMIZER_GAUGE_RUNNING,
	ATOMIZER_GAUGE_RETRYING,
	ATOMIZER_GAUGE_BLOCKED
} AtomizerGauge;

#define ATOMIZER_GAUGES	5

/* one queue's unfinished jobs, as the scheduler samples them */
typedef struct AtomizerGaugeSample
{
	char		queue[NAMEDATALEN];
	int64		n[ATOMIZER_GAUGES];
	TimestampTz oldest_available;	/* 0: none due */
} AtomizerGaugeSample;

/* what a rollup writes: a queue's counts since the last rollup */
typedef struct AtomizerStatsDelta
{
	char		queue[NAMEDATALEN];
	AtomizerStatsCounts counts;
} AtomizerStatsDelta;

extern void atomizer_stats_set_gauges(const AtomizerGaugeSample *samples, int n,
									  TimestampTz sampled_at);
extern int	atomizer_stats_take_unflushed(AtomizerStatsDelta **deltas);
extern void atomizer_stats_mark_flushed(void);
extern uint64 atomizer_stats_finished_total(void);
extern bool atomizer_may_read_metrics(Oid roleid);
extern double atomizer_stats_bucket_le(int b);

/* rollup.c: the scheduler's per-minute rollups and state samples */
extern void atomizer_rollup_flush(TimestampTz minute);
extern void atomizer_sample_gauges(void);

/* wait.c */
extern Size atomizer_wait_shmem_size(void);
extern void atomizer_wait_shmem_init(void);
extern void atomizer_wake_waiters(void);

/* jobstore.c: every statement on atomizer.job, job_history, job_error */
#define ATOMIZER_WORKER_ID_PREFIX	"atomizer:"

/* SQLSTATE of an external worker's call on a job that was cancelled */
#define ERRCODE_ATOMIZER_CANCELLED	MAKE_SQLSTATE('A','Z','0','0','3')

typedef struct AtomizerWorkerId
{
	int			pid;
	pg_time_t	start_time;		/* the process's MyStartTime */
	int			batch;			/* size of the batch the job was claimed in */
} AtomizerWorkerId;

extern char *atomizer_worker_id_format(const AtomizerWorkerId *id);
extern bool atomizer_worker_id_parse(const char *text, AtomizerWorkerId *id);
extern bool atomizer_worker_id_reserved(const char *text);

/* What a claim takes: see atomizer_store_claim. */
typedef struct AtomizerClaimSpec
{
	const char *queue;
	int			max_jobs;
	const char *owner_filter;	/* only this role's jobs, or NULL */
	const AtomizerWorkerId *worker_id;	/* atomizer's worker, or NULL */
	const char *worker_name;	/* else: an external worker's name */
	int64		lease_ms;		/* > 0: an external worker's claim */
	const AtomizerClaimKey *floor;	/* where to start, NULL: the front */
	AtomizerClaimKey *new_floor;	/* out, if not NULL */
} AtomizerClaimSpec;

extern int64 atomizer_store_insert(const AtomizerNewJobs *args, Datum payload,
								   const char *key, bool *created,
								   bool *same_payload);
extern int	atomizer_store_insert_many_keyed(const AtomizerNewJobs *args,
											 ArrayType *payloads, ArrayType *keys,
											 int n, int64 *ids, bool *made);
extern int64 atomizer_store_insert_unique(const AtomizerNewJobs *args,
										  Datum payload, const char *key,
										  const Interval *unique_for,
										  bool *created, bool *same_payload,
										  TimestampTz *until);
extern void atomizer_store_insert_many(const AtomizerNewJobs *args,
									   ArrayType *payloads, int n, int64 *ids);
extern int64 atomizer_store_insert_fire(int64 schedule_id, TimestampTz run_at);
extern bool atomizer_store_schedule_busy(int64 schedule_id);
extern int	atomizer_store_insert_fires(const int64 *schedule_ids,
										const TimestampTz *run_ats, int n,
										int64 *out_schedules, int64 *out_jobs);
extern void atomizer_store_schedules_busy(const int64 *schedule_ids, int n,
										  bool *busy);
extern bool atomizer_store_cancel_early_fire(int64 job_id, TimestampTz fire_time,
											 const char *why);
extern int	atomizer_store_claim(const AtomizerClaimSpec *spec, AtomizerJob **jobs);
extern bool atomizer_queue_due(const char *queue, TimestampTz *next);
extern int64 atomizer_store_release_held(const char *queue, const char *handler);
extern bool atomizer_finish_job(int64 id, const char *state, Datum result,
								bool result_isnull, const char *error);
extern void atomizer_finish_succeeded(int64 *ids, Datum *results,
									  bool *result_nulls, int n);
extern void atomizer_store_fail_attempt(const AtomizerJob *job,
										const AtomizerOutcome *outcome,
										const Interval *retry_in);
extern void atomizer_release_job(int64 id, bool solo);
extern TimestampTz atomizer_store_snooze(int64 id, int64 delay_ms);
extern void atomizer_store_job_origin(int64 id, TimestampTz *created_at,
									  char **schedule, Datum *tags,
									  bool *tags_null);

/* A job as recorded now, for a lifecycle hook's document (hooks.c). */
typedef struct AtomizerJobFacts
{
	char	   *queue;
	char	   *handler;
	Datum		payload;		/* jsonb */
	char	   *state;			/* as stored: available, running, held, dead... */
	int			priority;
	TimestampTz run_at;
	int			attempt;
	int			max_attempts;	/* effective */
	char	   *owner;
	TimestampTz created_at;
	TimestampTz started_at;
	bool		started_null;
	int64		timeout_ms;		/* effective; 0 means none */
	char	   *schedule;		/* the schedule that fired it, or NULL */
	Datum		tags;			/* text[], if not tags_null */
	bool		tags_null;
	char	   *last_error;		/* or NULL */
} AtomizerJobFacts;

extern bool atomizer_store_job_facts(int64 id, AtomizerJobFacts *facts);
extern void atomizer_store_hook_error(int64 id, int attempt,
									  const AtomizerOutcome *error);

/* A job's outcome as atomizer.wait() reports it. */
typedef struct AtomizerJobOutcome
{
	char		state[16];		/* as atomizer.jobs names it */
	bool		finished;
	Datum		result;			/* jsonb */
	bool		result_null;
	char	   *last_error;
} AtomizerJobOutcome;

extern bool atomizer_store_job_outcome(int64 id, const char *owner,
									   AtomizerJobOutcome *out);
extern bool atomizer_store_cancel(int64 job_id, const char *owner);
extern int	atomizer_store_cancel_dependents(int64 *ids, int64 *by, char **states,
											 int n);
extern bool atomizer_store_job_owner(int64 id, char **owner, char **queue);
extern bool atomizer_store_retry(int64 job_id, const char *owner);
extern int64 atomizer_store_purge(const Interval *older_than, const char *queue,
								  const char *owner);
extern int64 atomizer_store_prune(int limit);
extern void atomizer_store_lock_leased(int64 job_id, bool attempt_given,
									   int attempt, AtomizerJob *job);
extern bool atomizer_store_lock_leased_many(const int64 *ids,
											const int32 *attempts,
											const bool *attempts_null, int n,
											char ***queues, int *nqueues);
extern TimestampTz atomizer_store_extend_lease(int64 job_id, const Interval *lease);
extern int	atomizer_store_expired_leases(AtomizerJob **jobs, char ***reasons,
										  TimestampTz *next_end);
extern int	atomizer_store_running_internal(AtomizerJob **jobs, char ***workers);
extern int64 atomizer_store_count_running(const char *worker);
extern int	atomizer_store_running_workers(char ***workers);
extern int	atomizer_store_sample_unfinished(AtomizerGaugeSample **samples);
struct ReturnSetInfo;
extern void atomizer_store_external_queue_counts(struct ReturnSetInfo *rsinfo);

/* limits.c */
typedef enum AtomizerLimitKind
{
	ATOMIZER_LIMIT_RATE,		/* a rate partition's starts */
	ATOMIZER_LIMIT_HANDLER		/* a limited handler's running jobs */
} AtomizerLimitKind;

extern Size atomizer_limits_shmem_size(void);
extern void atomizer_limits_shmem_init(LWLock *lock);
extern bool atomizer_limits_lock(const char *queue);
extern struct SnapshotData *atomizer_limits_snapshot(void);
extern void atomizer_limits_reserved(AtomizerLimitKind kind, char **keys, int nkeys,
									 int64 *counts, struct SnapshotData *snap);
extern void atomizer_limits_reserve_and_unlock(const char *queue,
											   const AtomizerLimitKind *kinds,
											   char **keys, const int *n, int nkeys,
											   bool keep);
extern int	atomizer_limits_handlers(const char *queue, bool external,
									 struct SnapshotData *snap, char ***handlers,
									 int **room, bool **held);
extern void atomizer_limits_rate_used(const AtomizerQueue *q, struct SnapshotData *snap,
									  TimestampTz now, char **parts, int nparts,
									  int64 *used, TimestampTz *free_at,
									  bool *seedable);
extern TimestampTz atomizer_limits_window_start(const AtomizerQueue *q, TimestampTz now);
extern bool atomizer_limits_rate_bound(const AtomizerQueue *q, TimestampTz now,
									   TimestampTz window_start, const char *part,
									   int64 *bound);
extern void atomizer_limits_rate_note(const AtomizerQueue *q, TimestampTz now,
									  TimestampTz window_start, char **parts,
									  const int64 *exact, const bool *seedable,
									  const int *started, int nparts);
extern void atomizer_limits_put_off(const AtomizerQueue *q, TimestampTz now,
									char **parts, const int *noff,
									const TimestampTz *free_at, int nparts,
									TimestampTz *when);
extern void atomizer_limits_record_starts(const AtomizerQueue *q, TimestampTz now,
										  char **parts, const int *counts, int nparts);
extern bool atomizer_limits_held_with_room(const char *queue, bool external);
extern void atomizer_limits_attach(void);
extern uint64 atomizer_limits_trust_gen(void);
extern void atomizer_limits_trust(uint64 gen);
extern bool atomizer_limits_trusted(void);
extern void atomizer_limits_fill_holds(const char *queue, char **handlers,
									   const int *took, int nh, const Datum *ids,
									   const int *id_h, int nids);
extern void atomizer_limits_job_done(int64 id);
extern int64 atomizer_limits_prune(void);

#endif							/* ATOMIZER_H */
