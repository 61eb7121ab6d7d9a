/*-------------------------------------------------------------------------
 *
 * scheduler.c
 *	  The scheduler: one background worker per database with the extension,
 *	  started by the launcher.  Each pass it
 *
 *	  - recovers orphans: running jobs whose worker process is gone (it was
 *		killed, hit a FATAL error, or the server crashed).  A job that was
 *		alone in its dead worker's batch gets a failed attempt ("worker
 *		process died while running the job") and is retried or dead like any
 *		failure; jobs that shared a batch are released uncounted and run one
 *		at a time ("solo"), so a job that kills its worker is found out and
 *		charged alone;
 *	  - starts a worker for each internal, unpaused queue that has due jobs
 *		and no idle worker, within the queue's concurrency and
 *		atomizer.max_workers; when those slots are all taken, it asks an
 *		idle worker anywhere, or one of the queue that holds the most
 *		slots, to give its slot up (request_slot);
 *	  - fires due schedules (schedule.c), enqueueing their jobs;
 *	  - prunes finished jobs older than their queue's retention (dead jobs
 *		stay until retried or purged);
 *	  - notifies the listeners of external queues and expires their leases;
	  - once a minute writes the counters' rollup, and at most once a second
		samples the unfinished jobs' states for the dashboard (rollup.c);
 *	  - vacuums the hot table itself after every atomizer.vacuum_after_jobs outcomes
 *		(at most every VACUUM_MIN_MS), waking for it at the pace jobs
 *		finish, so that a busy queue's dead row versions are reused within
 *		a second or two rather than at autovacuum's next visit
 *		(run_vacuum);
 *
 *	  each of these duties in a transaction of its own (run_duty), so that
 *	  one that fails is logged and retried with backoff while the others go
 *	  on;
 *
 *	  then sleeps until a commit wakes it, the next delayed job is due, or
 *	  atomizer.poll_interval has passed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/vacuum.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "nodes/value.h"
#include "parser/parser.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "atomizer.h"

/* Seconds between safety-net orphan scans and between prunes. */
#define ORPHAN_SCAN_MS		30000
#define PRUNE_MS			60000
#define PRUNE_BATCH			10000
/* A scheduler pass runs at most this often, however many commits wake it. */
#define MIN_PASS_MS			5
/* batches of due schedules fired in one pass, at most (schedule.c) */
#define FIRE_ROUNDS			20
/* After a worker exits on an error, no new worker before this. */
#define WORKER_FAILURE_PAUSE_MS	5000
/* State samples: at most once a second, at most 2% of the time. */
#define SAMPLE_MIN_MS		1000
#define SAMPLE_COST_FACTOR	50

typedef struct WorkerHandle
{
	BackgroundWorkerHandle *handle;
	uint32		generation;
} WorkerHandle;

static WorkerHandle *worker_handles = NULL;
static bool logged_no_bgworker = false;
static char *my_dbname = NULL;

/* Queues of this database logged as waiting for a slot, this episode. */
static List *logged_full = NIL;

/*
 * When the cron duty runs next (cron_duty_due): at the earliest next_run
 * its last run found (DT_NOEND: none), or at once (0).  Finding the due
 * schedules is a scan of atomizer.schedule, which has no index on next_run
 * so that a fire's update is HOT; a pass that fires nothing does not scan.
 */
static TimestampTz cron_due = 0;
static TimestampTz cron_checked = 0;	/* when the duty last ran */

/*
 * atomizer_start_worker
 *		Reserve a worker slot for queue and register the worker.  Says why
 *		not when atomizer.max_workers or max_worker_processes is exhausted
 *		(the latter with a LOG line, once).
 */
AtomizerStartResult
atomizer_start_worker(Oid dboid, const char *queue, int concurrency,
					  int *slotno, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;
	AtomizerWorkerSlot *slot = NULL;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		if (!atomizer_shared->workers[i].in_use)
		{
			slot = &atomizer_shared->workers[i];
			*slotno = i;
			break;
		}
	}
	if (slot != NULL)
	{
		uint32		generation = slot->generation + 1;

		memset(slot, 0, sizeof(AtomizerWorkerSlot));
		slot->in_use = true;
		slot->generation = generation;
		slot->state = ATOMIZER_WORKER_STARTING;
		slot->dboid = dboid;
		slot->concurrency = concurrency;
		strlcpy(slot->queue, queue, NAMEDATALEN);
	}
	LWLockRelease(atomizer_shared->lock);

	if (slot == NULL)
		return ATOMIZER_NO_WORKER_SLOT;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "atomizer", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "atomizer_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "atomizer worker for queue %s", queue);
	strlcpy(worker.bgw_type, "atomizer worker", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(*slotno);
	worker.bgw_notify_pid = MyProcPid;

	/* the handle outlives the pass's memory context */
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		bool		registered = RegisterDynamicBackgroundWorker(&worker, handle);

		MemoryContextSwitchTo(old);
		if (registered)
		{
			logged_no_bgworker = false;
			return ATOMIZER_STARTED;
		}
	}
	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	slot->in_use = false;
	LWLockRelease(atomizer_shared->lock);
	if (!logged_no_bgworker)
		ereport(LOG,
				(errmsg("atomizer: could not start a worker for queue \"%s\" of database \"%s\": no background worker slot is free",
						queue, my_dbname ? my_dbname : "?"),
				 errhint("Raise max_worker_processes: atomizer needs one for its launcher, one per database and one per worker, beside those PostgreSQL itself uses (see the README).")));
	logged_no_bgworker = true;
	return ATOMIZER_NO_BGWORKER_SLOT;
}

/*
 * request_slot
 *		Every atomizer.max_workers slot is taken and queue (of this
 *		database, with alive workers) has due jobs: ask a worker to give its
 *		slot up after its current batch, and to wake this scheduler when it
 *		has.  An idle (or paused) worker anywhere is asked first; otherwise
 *		one of the (database, queue) that holds the most slots, if it holds
 *		more than one more than queue, so that busy queues end up sharing
 *		the slots evenly.  Returns false when no worker should give way (the
 *		slots are shared fairly already); true also when one was asked
 *		before and has not yet gone.
 */
static bool
request_slot(const char *queue, int alive)
{
	AtomizerWorkerSlot *victim = NULL;
	Latch	   *latch = NULL;
	bool		pending = false;
	int			most = 0;
	int			n = atomizer_shared->max_workers;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (!w->in_use)
			continue;
		if (w->yield_requested)
		{
			if (w->yield_to_db == MyDatabaseId &&
				strcmp(w->yield_to_queue, queue) == 0)
				pending = true;
			continue;
		}
		if (w->latch != NULL &&
			(w->state == ATOMIZER_WORKER_IDLE || w->state == ATOMIZER_WORKER_PAUSED))
			victim = w;
	}
	if (!pending && victim == NULL)
	{
		for (int i = 0; i < n; i++)
		{
			AtomizerWorkerSlot *w = &atomizer_shared->workers[i];
			int			count = 0;

			if (!w->in_use || w->yield_requested || w->latch == NULL)
				continue;
			for (int k = 0; k < n; k++)
			{
				AtomizerWorkerSlot *o = &atomizer_shared->workers[k];

				if (o->in_use && !o->yield_requested && o->dboid == w->dboid &&
					strcmp(o->queue, w->queue) == 0)
					count++;
			}
			if (count > most)
			{
				most = count;
				victim = w;
			}
		}
		if (most <= alive + 1)
			victim = NULL;
	}
	if (!pending && victim != NULL)
	{
		victim->yield_requested = true;
		victim->yield_to_db = MyDatabaseId;
		strlcpy(victim->yield_to_queue, queue, NAMEDATALEN);
		latch = victim->latch;
	}
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
	return pending || victim != NULL;
}

/*
 * note_full / forget_full
 *		Log once per episode that queue waits for a slot; the episode ends
 *		when the queue has no due job.
 */
static void
note_full(const char *queue)
{
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, logged_full)
		if (strcmp(strVal(lfirst(lc)), queue) == 0)
			return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	logged_full = lappend(logged_full, makeString(pstrdup(queue)));
	MemoryContextSwitchTo(old);
	ereport(LOG,
			(errmsg("atomizer: queue \"%s\" of database \"%s\" has due jobs, but all %d worker slots are busy",
					queue, my_dbname, atomizer_shared->max_workers),
			 errdetail("Its jobs wait until a worker finishes a batch; the queues that hold the most slots give slots up until every queue with due jobs has its share."),
			 errhint("Raise atomizer.max_workers (a restart is needed), or lower the concurrency of other queues.")));
}

static void
forget_full(const char *queue)
{
	ListCell   *lc;

	foreach(lc, logged_full)
	{
		String	   *name = lfirst(lc);

		if (strcmp(strVal(name), queue) == 0)
		{
			logged_full = list_delete_cell(logged_full, lc);
			pfree(strVal(name));
			pfree(name);
			return;
		}
	}
}

/*
 * atomizer_background_settings
 *		Settings for atomizer's own processes: their statements are short,
 *		and JIT-compiling them costs far more than it saves; and they run
 *		in READ COMMITTED whatever default_transaction_isolation says, since
 *		claims (and the limits they keep) must see other sessions' commits.
 */
void
atomizer_background_settings(void)
{
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_SESSION);
}

/*
 * reap_workers
 *		Free the slots of workers that stopped without freeing them (they
 *		failed to start, or died before attaching).
 */
static void
reap_workers(void)
{
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		WorkerHandle *wh = &worker_handles[i];
		pid_t		pid;

		if (wh->handle == NULL)
			continue;
		if (GetBackgroundWorkerPid(wh->handle, &pid) != BGWH_STOPPED)
			continue;
		LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
		if (atomizer_shared->workers[i].in_use &&
			atomizer_shared->workers[i].generation == wh->generation)
			atomizer_shared->workers[i].in_use = false;
		LWLockRelease(atomizer_shared->lock);
		pfree(wh->handle);
		wh->handle = NULL;
	}
}

/*
 * worker_alive
 *		Whether the worker of identity id is a live worker of this database.
 */
static bool
worker_alive(const AtomizerWorkerId *id)
{
	bool		alive;

	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	alive = atomizer_worker_slot_of(id->pid, id->start_time, MyDatabaseId) != NULL;
	LWLockRelease(atomizer_shared->lock);
	return alive;
}

/*
 * recover_orphans
 *		Find running jobs of dead workers and release or fail them.  The
 *		rows are locked first (SKIP LOCKED) and the worker slots read after,
 *		so a worker that claimed after our snapshot is seen alive.  A dying
 *		worker still holds locks on the jobs whose outcomes it recorded until
 *		its transaction has aborted; those are skipped now and recovered on
 *		the next pass, and the batch size in the worker identity keeps them
 *		from being taken for jobs that were alone.  Returns true if rows of
 *		a dead worker were still locked (look again soon).
 */
static bool
recover_orphans(void)
{
	AtomizerJob *jobs;
	char	  **workers;
	int			n = atomizer_store_running_internal(&jobs, &workers);
	int			recovered = 0;
	bool		locked_left = false;

	for (int i = 0; i < n; i++)
	{
		AtomizerWorkerId id;
		int			seen = 0;
		int			batch;

		if (!atomizer_worker_id_parse(workers[i], &id) || worker_alive(&id))
			continue;
		for (int k = 0; k < n; k++)
			if (workers[k] && strcmp(workers[k], workers[i]) == 0)
				seen++;
		batch = id.batch > 0 ? id.batch : seen;

		/* rows of this batch that someone (the dying worker) still locks */
		if (atomizer_store_count_running(workers[i]) > seen)
			locked_left = true;

		{
			AtomizerOutcome outcome;

			memset(&outcome, 0, sizeof(outcome));
			strlcpy(outcome.sqlstate, "57P01", sizeof(outcome.sqlstate));
			outcome.message = psprintf("worker process died while running the job (%s)",
									   workers[i]);
			outcome.hint = "A job whose handler kills its worker is retried like any failure and is dead after max_attempts.";
			(void) atomizer_record_or_set_aside(&jobs[i], &outcome, batch > 1,
												"orphan recovery");
		}
		recovered++;
	}

	if (recovered > 0)
		ereport(LOG,
				(errmsg("atomizer: recovered %d job(s) of workers that died", recovered)));

	/*
	 * While the limits' holds are not trusted (a worker died with jobs, or
	 * a restart), look at every running job's worker, locked rows too: a
	 * dead worker whose rows are all still locked left orphans that the
	 * scan above could not see, and the holds must wait for them.
	 */
	if (!locked_left && !atomizer_limits_trusted())
	{
		char	  **running;
		int			nrunning = atomizer_store_running_workers(&running);

		for (int i = 0; i < nrunning && !locked_left; i++)
		{
			AtomizerWorkerId id;

			if (atomizer_worker_id_parse(running[i], &id) && !worker_alive(&id))
				locked_left = true;
		}
	}
	return locked_left;
}

/*
 * prune
 *		Delete finished jobs (not dead ones) older than their queue's
 *		retention, a bounded number per pass.
 */
static void
prune(void)
{
	(void) atomizer_store_prune(PRUNE_BATCH);
	(void) atomizer_limits_prune();
}

/*
 * queue_workers
 *		Count this database's live workers of queue, and the idle or
 *		starting ones among them.
 */
static void
queue_workers(const char *queue, int *alive, int *ready)
{
	*alive = 0;
	*ready = 0;
	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (!w->in_use || w->dboid != MyDatabaseId || strcmp(w->queue, queue) != 0)
			continue;
		(*alive)++;
		if (w->state == ATOMIZER_WORKER_STARTING || w->state == ATOMIZER_WORKER_IDLE)
			(*ready)++;
	}
	LWLockRelease(atomizer_shared->lock);
}

/*
 * start_workers
 *		Start a worker for each queue with due jobs and none ready for them.
 *		Returns ms until the earliest delayed job is due (or the poll
 *		interval).
 */
static long
start_workers(void)
{
	static SPIPlanPtr plan = NULL;
	AtomizerPrivState priv;
	long		sleep_ms = atomizer_poll_interval;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz last_failure;
	uint64		n;

	/* a worker that failed (not a job: the worker itself) is not restarted in a loop */
	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	last_failure = atomizer_db_slot(MyDatabaseId, false)->last_worker_failure;
	LWLockRelease(atomizer_shared->lock);
	if (last_failure != 0 &&
		!TimestampDifferenceExceeds(last_failure, now, WORKER_FAILURE_PAUSE_MS))
		return Max(TimestampDifferenceMilliseconds(now,
												   TimestampTzPlusMilliseconds(last_failure, WORKER_FAILURE_PAUSE_MS)), 1);

	atomizer_become_owner(&priv);
	SPI_connect();
	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT name, concurrency FROM atomizer.queue"
						   " WHERE NOT external AND NOT paused", 0, NULL);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list queues");

	{
		SPITupleTable *queues = SPI_tuptable;

		n = SPI_processed;
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	tup = queues->vals[i];
			char	   *queue = SPI_getvalue(tup, queues->tupdesc, 1);
			bool		isnull;
			int			concurrency = DatumGetInt32(SPI_getbinval(tup, queues->tupdesc,
																  2, &isnull));
			TimestampTz next;
			int			alive;
			int			ready;

			if (!atomizer_queue_due(queue, &next))
			{
				forget_full(queue);
				if (!TIMESTAMP_NOT_FINITE(next))
					sleep_ms = Min(sleep_ms,
								   Max(TimestampDifferenceMilliseconds(now, next), 1));
				continue;
			}
			queue_workers(queue, &alive, &ready);
			if (ready == 0 && alive < concurrency)
			{
				int			slotno;
				BackgroundWorkerHandle *handle;

				switch (atomizer_start_worker(MyDatabaseId, queue, concurrency,
											  &slotno, &handle))
				{
					case ATOMIZER_STARTED:
						worker_handles[slotno].handle = handle;
						worker_handles[slotno].generation =
							atomizer_shared->workers[slotno].generation;
						break;
					case ATOMIZER_NO_WORKER_SLOT:
						if (!request_slot(queue, alive))
							note_full(queue);
						break;
					case ATOMIZER_NO_BGWORKER_SLOT:
						break;
				}
			}
		}
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	return sleep_ms;
}

/*
 * notify_external
 *		NOTIFY the listeners of external queues: those whose jobs a commit
 *		made available (wakeup.c asked), and those whose delayed jobs came
 *		due: a queue that had no due job at the previous pass and has one
 *		now.  Both checks go through the claim index; the time of the next
 *		delayed job is looked up only for queues with nothing due.  Sent
 *		when this pass commits.  Returns ms until the next delayed job of
 *		an external queue is due (or the poll interval).
 */
static long
notify_external(bool redo_all)
{
	static SPIPlanPtr plan = NULL;
	static List *due_before = NIL;	/* external queues that had due jobs */
	AtomizerPrivState priv;
	bool		all;
	List	   *queues;
	List	   *due_now = NIL;
	ListCell   *lc;
	long		sleep_ms = atomizer_poll_interval;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext old;

	queues = atomizer_take_notify_requests(&all);
	all = all || redo_all;
	atomizer_become_owner(&priv);
	SPI_connect();
	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT name FROM atomizer.queue"
						   " WHERE external AND NOT paused", 0, NULL);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list external queues");
	{
		SPITupleTable *ext = SPI_tuptable;
		uint64		n = SPI_processed;

		for (uint64 i = 0; i < n; i++)
		{
			char	   *name = SPI_getvalue(ext->vals[i], ext->tupdesc, 1);
			TimestampTz next;
			bool		due = atomizer_queue_due(name, &next);
			String	   *node;

			old = MemoryContextSwitchTo(outer);
			node = makeString(pstrdup(name));
			if (due)
			{
				due_now = lappend(due_now, node);
				if (all || !list_member(due_before, node))
					queues = list_append_unique(queues, node);
			}
			MemoryContextSwitchTo(old);

			if (!due && !TIMESTAMP_NOT_FINITE(next))
				sleep_ms = Min(sleep_ms,
							   Max(TimestampDifferenceMilliseconds(now, next), 1));
		}
	}
	SPI_finish();
	atomizer_restore_caller(&priv);

	foreach(lc, queues)
		atomizer_notify_queue(strVal(lfirst(lc)));

	/* remember which queues had due jobs, across passes */
	old = MemoryContextSwitchTo(TopMemoryContext);
	foreach(lc, due_before)
		pfree(strVal(lfirst(lc)));
	list_free_deep(due_before);
	due_before = NIL;
	foreach(lc, due_now)
		due_before = lappend(due_before, makeString(pstrdup(strVal(lfirst(lc)))));
	MemoryContextSwitchTo(old);
	return sleep_ms;
}

/*
 * The scheduler's duties.  Each runs in a transaction of its own, so that
 * one that fails (a faulty row, a trigger, a setting that cannot be
 * applied) neither rolls back nor stops the others: its error is logged
 * with the duty's name and the database's, and it is tried again after a
 * pause that doubles with each failure in a row, from 1 s up to 1 min.
 * Duties that work row by row (orphans, cron fires, lease expiry) also set
 * aside a row that fails, so the duty itself goes on.
 */
typedef enum SchedulerDutyId
{
	DUTY_ORPHANS,
	DUTY_NOTIFY,
	DUTY_SCHEDULES,
	DUTY_LEASES,
	DUTY_WORKERS,
	DUTY_PRUNE,
	DUTY_ROLLUP,
	DUTY_GAUGES,
	NUM_DUTIES
} SchedulerDutyId;

typedef struct SchedulerDuty
{
	const char *name;			/* for the log and pg_stat_activity */
	int			failures;		/* in a row */
	TimestampTz retry_at;		/* after a failure: not before */
} SchedulerDuty;

static SchedulerDuty duties[NUM_DUTIES] = {
	[DUTY_ORPHANS] = {"orphan recovery"},
	[DUTY_NOTIFY] = {"notifications"},
	[DUTY_SCHEDULES] = {"cron fires"},
	[DUTY_LEASES] = {"lease expiry"},
	[DUTY_WORKERS] = {"worker starts"},
	[DUTY_PRUNE] = {"pruning"},
	[DUTY_ROLLUP] = {"stats rollup"},
	[DUTY_GAUGES] = {"state sampling"},
};

/*
 * The scheduler's own vacuum of the hot table (run_vacuum): after
 * atomizer.vacuum_after_jobs outcomes, at most this often, and never sooner
 * than VACUUM_COST_FACTOR times the last one's duration after it.
 */
#define VACUUM_MIN_MS		500
#define VACUUM_COST_FACTOR	10
/* and the scheduler, while jobs finish, looks again at most this often */
#define VACUUM_POLL_MS		250

#define DUTY_BACKOFF_MIN_MS	1000
#define DUTY_BACKOFF_MAX_MS	60000

/*
 * run_duty
 *		Run fn(arg) as duty "which" in a transaction of its own, unless the
 *		duty is pausing after a failure.  Returns whether it ran and
 *		committed.  Memory stays in the caller's context.
 */
static bool
run_duty(SchedulerDutyId which, const char *dbname,
		 void (*fn) (void *arg), void *arg)
{
	SchedulerDuty *duty = &duties[which];
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = false;

	if (duty->retry_at != 0 && GetCurrentTimestamp() < duty->retry_at)
		return false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, duty->name);
		fn(arg);
		PopActiveSnapshot();
		CommitTransactionCommand();
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		long		pause;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);

		duty->failures++;
		pause = Min((long) DUTY_BACKOFF_MIN_MS << Min(duty->failures - 1, 10),
					DUTY_BACKOFF_MAX_MS);
		duty->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), pause);
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("atomizer: the scheduler's %s failed in database \"%s\": %s",
						duty->name, dbname, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 edata->context ? errcontext_msg("%s", edata->context) : 0,
				 errhint("Its other duties go on; this one is tried again in %ld ms (failure %d in a row).",
						 pause, duty->failures)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	if (ok && duty->failures > 0)
	{
		ereport(LOG,
				(errmsg("atomizer: the scheduler's %s works again in database \"%s\" after %d failure(s)",
						duty->name, dbname, duty->failures)));
		duty->failures = 0;
		duty->retry_at = 0;
	}
	return ok;
}

/*
 * duty_pause_ms
 *		Ms until the first pausing duty may run again, or max_ms.
 */
static long
duty_pause_ms(long max_ms)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < NUM_DUTIES; i++)
		if (duties[i].retry_at != 0)
			max_ms = Min(max_ms,
						 Max(TimestampDifferenceMilliseconds(now, duties[i].retry_at), 1));
	return max_ms;
}

/* What the duties report back to the pass. */
typedef struct PassState
{
	bool		orphans_again;	/* a dead worker's rows were still locked */
	bool		notify_all;		/* the last notification duty failed */
	bool		more_fires;		/* the cron duty fired a full batch */
	long		sleep_ms;		/* until something is due */
} PassState;

static void
sleep_until(PassState *ps, TimestampTz t)
{
	if (!TIMESTAMP_NOT_FINITE(t))
		ps->sleep_ms = Min(ps->sleep_ms,
						   Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), t), 1));
}

static void
duty_orphans(void *arg)
{
	((PassState *) arg)->orphans_again = recover_orphans();
}

static void
duty_notify(void *arg)
{
	PassState  *ps = (PassState *) arg;

	ps->sleep_ms = Min(ps->sleep_ms, notify_external(ps->notify_all));
}

static void
duty_schedules(void *arg)
{
	PassState  *ps = (PassState *) arg;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next_fire;

	cron_due = 0;				/* again at once if this fails */
	(void) atomizer_fire_schedules(now, atomizer_cron_lookahead, &next_fire,
								   &ps->more_fires);
	cron_due = ps->more_fires ? 0 : next_fire;
	cron_checked = now;
}

/*
 * cron_duty_due
 *		Whether this pass runs the cron duty: a schedule is due, a committed
 *		change to one woke us (atomizer_schedules_changed), the last run
 *		failed, the clock went back, or atomizer.poll_interval passed (the
 *		safety net for changes made without atomizer's functions, such as a
 *		restore).
 */
static bool
cron_duty_due(AtomizerDbSlot *db, TimestampTz now)
{
	if (pg_atomic_exchange_u32(&db->schedules_changed, 0) != 0)
		return true;
	return cron_due == 0 || now >= cron_due || now < cron_checked ||
		TimestampDifferenceExceeds(cron_checked, now, atomizer_poll_interval);
}

static void
duty_leases(void *arg)
{
	sleep_until((PassState *) arg, atomizer_expire_leases());
}

static void
duty_workers(void *arg)
{
	PassState  *ps = (PassState *) arg;

	ps->sleep_ms = Min(ps->sleep_ms, start_workers());
}

static void
duty_prune(void *arg)
{
	prune();
}

static void
duty_rollup(void *arg)
{
	atomizer_rollup_flush(*(TimestampTz *) arg);
}

static void
duty_gauges(void *arg)
{
	atomizer_sample_gauges();
}

/*
 * run_rollup
 *		Once a minute (when the wall clock's minute changed since the last
 *		rollup), write the counters' increase into atomizer.stats_minute,
 *		under the minute it was counted in (the previous one, or the
 *		current one at the first rollup of this scheduler).  Only a rollup
 *		that committed marks the counters flushed.
 */
static void
run_rollup(const char *dbname, PassState *ps)
{
	static TimestampTz last_minute = 0;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz minute = now - now % USECS_PER_MINUTE;

	if (minute != last_minute)
	{
		TimestampTz label = last_minute == 0 ? minute :
			Max(last_minute, minute - USECS_PER_MINUTE);

		if (run_duty(DUTY_ROLLUP, dbname, duty_rollup, &label))
		{
			atomizer_stats_mark_flushed();
			last_minute = minute;
		}
	}
	sleep_until(ps, minute + USECS_PER_MINUTE);
}

/*
 * run_sampling
 *		Sample the unfinished jobs' states when due: at most once a
 *		SAMPLE_MIN_MS, and never sooner than SAMPLE_COST_FACTOR times the
 *		last sample's duration after it (sampling a huge backlog costs the
 *		scheduler at most 1/SAMPLE_COST_FACTOR of its time).
 */
static void
run_sampling(const char *dbname, PassState *ps)
{
	static TimestampTz next_sample = 0;
	TimestampTz start = GetCurrentTimestamp();

	if (start >= next_sample)
	{
		long		took_us;

		(void) run_duty(DUTY_GAUGES, dbname, duty_gauges, NULL);
		took_us = (long) (GetCurrentTimestamp() - start);
		next_sample = start + Max((int64) SAMPLE_MIN_MS * 1000,
								  (int64) took_us * SAMPLE_COST_FACTOR);
	}
	sleep_until(ps, next_sample);
}

/*
 * run_vacuum
 *		VACUUM (SKIP_LOCKED, TRUNCATE false) atomizer.job after every
 *		atomizer.vacuum_after_jobs outcomes counted in this database (never
 *		with 0), at most every VACUUM_MIN_MS and VACUUM_COST_FACTOR times
 *		its last duration (a vacuum that cannot remove much, behind a
 *		transaction held open, still reads the whole table: it takes the
 *		scheduler at most a tenth of its time).  Every finished job leaves
 *		dead row versions behind (its claim is an update, its finish a
 *		delete), and the space they take is reused only once a vacuum has
 *		recorded it: autovacuum visits a database once a naptime (a minute
 *		by default), in which time a busy queue leaves a million of them
 *		and the table grows to hold them.  VACUUM runs in transactions of
 *		its own, as at the top level; an error (or a table autovacuum is
 *		working on: skipped) is logged and the next one comes after the
 *		same interval.
 *
 *		Returns the ms until the next vacuum is expected while jobs are
 *		finishing (from their pace since the last one, and the bounds; after
 *		a vacuum, when the next may run), so that the scheduler wakes for it
 *		rather than at its next pass; -1 when no job finished since the
 *		last vacuum.
 */
static long
run_vacuum(const char *dbname)
{
	static uint64 last_total = 0;
	static TimestampTz last_at = 0;
	static TimestampTz next_at = 0;
	MemoryContext cxt = CurrentMemoryContext;	/* the pass's, reset each pass */
	MemoryContext saved_portal_cxt;
	uint64		total = atomizer_stats_finished_total();
	TimestampTz now = GetCurrentTimestamp();

	if (total < last_total)
		last_total = total;		/* counters start again at a restart */
	if (last_at == 0)
		last_at = now;
	if (atomizer_vacuum_after_jobs <= 0 || total == last_total)
		return -1;
	if (total - last_total < (uint64) atomizer_vacuum_after_jobs || now < next_at)
	{
		uint64		done = total - last_total;
		long		elapsed_ms = Max(TimestampDifferenceMilliseconds(last_at, now), 1);
		long		wait_ms = TimestampDifferenceMilliseconds(now, next_at);

		/* when the jobs left to count will have finished at this pace */
		if (done < (uint64) atomizer_vacuum_after_jobs)
			wait_ms = Max(wait_ms,
						  (long) Min((double) (atomizer_vacuum_after_jobs - done) *
									 elapsed_ms / done, (double) LONG_MAX / 2));
		return Max(wait_ms, VACUUM_POLL_MS);
	}
	last_total = total;
	last_at = now;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(cxt);
	/* vacuum keeps its cross-transaction memory under PortalContext */
	saved_portal_cxt = PortalContext;
	PortalContext = cxt;
	PG_TRY();
	{
		List	   *parsed = raw_parser("VACUUM (SKIP_LOCKED, TRUNCATE false) atomizer.job",
										RAW_PARSE_DEFAULT);
		RawStmt    *raw = linitial_node(RawStmt, parsed);

		pgstat_report_activity(STATE_RUNNING, "vacuum of atomizer.job");
		ExecVacuum(make_parsestate(NULL), (VacuumStmt *) raw->stmt, true);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("atomizer: the scheduler's vacuum of atomizer.job failed in database \"%s\": %s",
						dbname, edata->message),
				 errhint("Autovacuum still vacuums it; the scheduler tries again after %d jobs.",
						 atomizer_vacuum_after_jobs)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	PortalContext = saved_portal_cxt;
	MemoryContextSwitchTo(cxt);
	next_at = now + Max((int64) VACUUM_MIN_MS * 1000,
						(int64) (GetCurrentTimestamp() - now) * VACUUM_COST_FACTOR);
	/* jobs were finishing: look again when the next one may run */
	return Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_at),
			   VACUUM_POLL_MS);
}

/*
 * scheduler_detach
 *		before_shmem_exit: this database has no scheduler any more.
 */
static void
scheduler_detach(int code, Datum arg)
{
	AtomizerDbSlot *db;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	db = atomizer_db_slot(MyDatabaseId, false);
	if (db != NULL && db->scheduler_pid == MyProcPid)
		db->scheduler_latch = NULL;
	LWLockRelease(atomizer_shared->lock);
}

/*
 * installed_version
 *		The version of the atomizer extension installed in this database, or
 *		NULL when it is not installed (in a transaction).
 */
static char *
installed_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("atomizer"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * schema_matches
 *		Whether the extension's SQL objects in this database are those of the
 *		version this library was built for.  A server restarted on a newer
 *		library keeps the old objects until ALTER EXTENSION atomizer UPDATE
 *		runs; until then the scheduler leaves the database alone.
 */
static bool
schema_matches(const char *version)
{
	return version != NULL && strcmp(version, ATOMIZER_VERSION) == 0;
}

/*
 * atomizer_scheduler_main
 *		Entry point of a database's scheduler.
 */
void
atomizer_scheduler_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	AtomizerDbSlot *db;
	bool		present;
	char	   *version;
	char	   *dbname;
	TimestampTz last_orphan_scan = 0;
	bool		orphans_again = false;
	int			orphan_retries = 0;
	TimestampTz last_prune = 0;
	MemoryContext pass_cxt;
	PassState	ps = {0};

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	atomizer_background_settings();
	pgstat_report_appname("atomizer scheduler");

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	version = installed_version();
	if (version != NULL)
		version = MemoryContextStrdup(TopMemoryContext, version);
	present = schema_matches(version);
	dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	my_dbname = dbname;
	CommitTransactionCommand();

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	db = atomizer_db_slot(dboid, true);
	if (db == NULL)
	{
		LWLockRelease(atomizer_shared->lock);
		proc_exit(1);
	}
	if (!present)
	{
		const char *seen = version != NULL ? version : "-";
		bool		log_it = strcmp(db->logged_version, seen) != 0;

		db->no_extension = true;
		strlcpy(db->logged_version, seen, NAMEDATALEN);
		LWLockRelease(atomizer_shared->lock);
		if (log_it && version == NULL)
			ereport(LOG,
					(errmsg("atomizer: database \"%s\" does not have the extension, skipping it",
							dbname),
					 errhint("Run CREATE EXTENSION atomizer there, or leave it out of atomizer.databases.")));
		else if (log_it)
			ereport(LOG,
					(errmsg("atomizer: database \"%s\" has version %s of the extension, but the server runs version %s; no jobs run there until it is updated",
							dbname, version, ATOMIZER_VERSION),
					 errhint("Run ALTER EXTENSION atomizer UPDATE in database \"%s\".",
							 dbname)));
		proc_exit(0);
	}
	db->no_extension = false;
	db->logged_version[0] = '\0';
	db->scheduler_pid = MyProcPid;
	db->scheduler_latch = MyLatch;
	LWLockRelease(atomizer_shared->lock);
	before_shmem_exit(scheduler_detach, (Datum) 0);

	worker_handles = MemoryContextAllocZero(TopMemoryContext,
											sizeof(WorkerHandle) * atomizer_shared->max_workers);
	pass_cxt = AllocSetContextCreate(TopMemoryContext, "atomizer scheduler",
									 ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("atomizer: scheduler started for database \"%s\"", dbname)));

	for (;;)
	{
		long		sleep_ms;
		long		vacuum_ms;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		/* the pass's memory, outside its transaction too */
		MemoryContextSwitchTo(pass_cxt);
		MemoryContextReset(pass_cxt);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!atomizer_enabled || !atomizer_database_listed(dbname))
			proc_exit(0);		/* its workers see the same and stop too */

		reap_workers();
		now = GetCurrentTimestamp();

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		MemoryContextSwitchTo(pass_cxt);
		version = installed_version();
		CommitTransactionCommand();
		MemoryContextSwitchTo(pass_cxt);
		if (!schema_matches(version))
		{
			if (version == NULL)
				ereport(LOG,
						(errmsg("atomizer: extension dropped in database \"%s\", scheduler exiting",
								dbname)));
			proc_exit(0);		/* the next scheduler says why */
		}

		ps.orphans_again = false;
		ps.sleep_ms = atomizer_poll_interval;
		if (last_orphan_scan == 0 ||
			TimestampDifferenceExceeds(last_orphan_scan, now, ORPHAN_SCAN_MS) ||
			pg_atomic_exchange_u32(&db->orphans_pending, 0) != 0)
		{
			/* the limits' holds are whole once no orphan is left (limits.c) */
			uint64		trust_gen = atomizer_limits_trust_gen();

			if (run_duty(DUTY_ORPHANS, dbname, duty_orphans, &ps))
			{
				last_orphan_scan = now;
				if (!ps.orphans_again)
					atomizer_limits_trust(trust_gen);
			}
			else
				pg_atomic_write_u32(&db->orphans_pending, 1);
		}
		ps.notify_all = !run_duty(DUTY_NOTIFY, dbname, duty_notify, &ps);
		/* due schedules fire a batch per transaction, up to FIRE_ROUNDS */
		ps.more_fires = false;
		for (int round = 0; round < FIRE_ROUNDS && cron_duty_due(db, now); round++)
		{
			ps.more_fires = false;
			if (!run_duty(DUTY_SCHEDULES, dbname, duty_schedules, &ps))
			{
				cron_due = 0;
				break;
			}
			if (!ps.more_fires)
				break;
			CHECK_FOR_INTERRUPTS();
		}
		if (cron_due != 0 || ps.more_fires)
			sleep_until(&ps, cron_due); /* (a failure: duty_pause_ms) */
		(void) run_duty(DUTY_LEASES, dbname, duty_leases, &ps);
		(void) run_duty(DUTY_WORKERS, dbname, duty_workers, &ps);
		if (last_prune == 0 || TimestampDifferenceExceeds(last_prune, now, PRUNE_MS))
		{
			if (run_duty(DUTY_PRUNE, dbname, duty_prune, &ps))
				last_prune = now;
		}
		run_rollup(dbname, &ps);
		run_sampling(dbname, &ps);
		vacuum_ms = run_vacuum(dbname);
		if (vacuum_ms >= 0)
			ps.sleep_ms = Min(ps.sleep_ms, vacuum_ms);
		orphans_again = ps.orphans_again;
		sleep_ms = duty_pause_ms(ps.sleep_ms);

		/* table statistics (pruning deletes, fired jobs) for autovacuum */
		pgstat_report_stat(true);
		pgstat_report_activity(STATE_IDLE, NULL);

		/* a dying worker still held some of its rows: look again soon */
		if (orphans_again && orphan_retries++ < 100)
		{
			pg_atomic_write_u32(&db->orphans_pending, 1);
			sleep_ms = Min(sleep_ms, 50);
		}
		else if (!orphans_again)
			orphan_retries = 0;

		LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
		db->next_wake = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), sleep_ms);
		LWLockRelease(atomizer_shared->lock);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		/* coalesce bursts of wake-ups: at most one pass per MIN_PASS_MS */
		{
			long		since = TimestampDifferenceMilliseconds(now, GetCurrentTimestamp());

			if (since < MIN_PASS_MS)
				pg_usleep((MIN_PASS_MS - since) * 1000L);
		}
	}
}
