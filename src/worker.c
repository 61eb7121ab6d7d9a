/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  A worker process: runs the jobs of one queue of one database, started
 *	  by that database's scheduler.
 *
 *	  Loop: claim a batch (marked running, attempts counted, committed), run
 *	  each job's handler in its own subtransaction and record every outcome
 *	  in a second transaction (the successes with one statement at its end),
 *	  so a handler's effects commit with its job's completion.  After a full
 *	  batch, that second transaction also claims the next batch (at its
 *	  end; for a queue with limits, only if the queue's limit lock comes
 *	  free within about 2 ms, limits.c), so a busy worker commits (and
 *	  waits for a WAL flush) once per batch.  The batch
 *	  size adapts: it starts at 1, doubles while
 *	  batches are full and quick, and halves when a batch takes long, so
 *	  slow jobs spread over the queue's workers and fast ones are claimed
 *	  atomizer.batch_size at a time.  With nothing to do the worker sleeps on
 *	  its latch, set by the commit of an enqueue (wakeup.c), until the next
 *	  delayed job is due or atomizer.poll_interval passes; after
 *	  atomizer.worker_idle_timeout with no work it exits, and so it does
 *	  after its batch when a scheduler asks for its slot (another queue, of
 *	  this database or another, has due jobs and every slot is taken).
 *
 *	  SIGTERM from the postmaster (fast shutdown) stops claiming and lets
 *	  the batch run until atomizer.shutdown_timeout; then the running
 *	  handler is cancelled, and it and the batch's remaining jobs are
 *	  released uncounted.  SIGTERM from any other process (pg_terminate_
 *	  backend) ends the worker at once, like any backend: its jobs are
 *	  orphans, recovered by the scheduler.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "atomizer.h"

/* A batch faster than this may grow; slower than SLOW_BATCH_MS shrinks. */
#define FAST_BATCH_MS	20
#define SLOW_BATCH_MS	200

static int	my_slot = -1;
static char my_queue[NAMEDATALEN];
static char *my_dbname = NULL;
static bool jobs_in_flight = false;

/*
 * worker_sigterm
 *		SIGTERM.  From the postmaster it means shutdown: finish gracefully.
 *		From anyone else (pg_terminate_backend) it means die now.
 */
static void
worker_sigterm(int signo, siginfo_t *info, void *context)
{
	int			save_errno = errno;

	if (info != NULL && info->si_pid != PostmasterPid && info->si_pid != 0)
	{
		die(signo);
		errno = save_errno;
		return;
	}
	if (!atomizer_shutdown_pending)
	{
		atomizer_shutdown_deadline =
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										atomizer_shutdown_timeout);
		atomizer_shutdown_pending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * set_slot
 *		Update this worker's slot: state and current job.
 */
static void
set_slot(int state, int64 job_id)
{
	AtomizerWorkerSlot *w = &atomizer_shared->workers[my_slot];

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	w->state = state;
	w->job_id = job_id;
	LWLockRelease(atomizer_shared->lock);
}

/*
 * worker_detach
 *		before_shmem_exit: free the slot; if jobs were in flight, tell the
 *		scheduler to recover them now.
 */
static void
worker_detach(int code, Datum arg)
{
	AtomizerWorkerSlot *w = &atomizer_shared->workers[my_slot];
	AtomizerDbSlot *db;
	Latch	   *latch = NULL;
	Latch	   *wants_slot = NULL;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	w->in_use = false;
	if (w->yield_requested)
	{
		AtomizerDbSlot *to = atomizer_db_slot(w->yield_to_db, false);

		if (to != NULL)
			wants_slot = to->scheduler_latch;
	}
	db = atomizer_db_slot(MyDatabaseId, false);
	/* an error of the worker itself, not of a job: no restart loop */
	if (db != NULL && code != 0 && !jobs_in_flight)
		db->last_worker_failure = GetCurrentTimestamp();
	if (db != NULL && jobs_in_flight)
	{
		pg_atomic_write_u32(&db->orphans_pending, 1);
		latch = db->scheduler_latch;
	}
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
	if (wants_slot != NULL)
		SetLatch(wants_slot);
}

/*
 * next_due_ms
 *		Milliseconds until the next job of our queue is due: 0 if one is due
 *		now (committed after our claim looked), -1 if none waits.
 */
static long
next_due_ms(void)
{
	TimestampTz next;
	bool		due = atomizer_queue_due(my_queue, &next);

	if (due)
		return 0;
	if (TIMESTAMP_NOT_FINITE(next))
		return -1;
	return Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next), 1);
}

/*
 * The worker's per-pass memory: reset at the top of every pass of its loop
 * and current between transactions, so that nothing allocated outside a
 * transaction accumulates in TopMemoryContext.
 */
static MemoryContext loop_cxt = NULL;

/*
 * A claim made in the transaction that records a batch's outcomes: the
 * next batch, when the last one was full.  One commit (one WAL flush) per
 * batch instead of two; the claim is as durable as before, since it
 * commits before any of its handlers runs.
 */
typedef struct NextClaim
{
	int			want;			/* 0: do not claim */
	MemoryContext cxt;			/* where the claimed jobs go */
	AtomizerJob *jobs;
	int			n;
	AtomizerClaimKey new_floor;
	uint64		floor_gen;
} NextClaim;

/* This worker's identity, written into the jobs it claims (jobstore.c). */
static AtomizerWorkerId my_id;

/*
 * claim
 *		Claim up to want jobs of our queue from its claim floor (floor.c),
 *		in the current transaction; the floor's generation is read before
 *		the claim's snapshot is taken.  If nothing waits above the floor,
 *		now and then look from the front of the queue.  The caller passes
 *		*new_floor and *gen to atomizer_floor_advance after the commit.
 */
static int
claim(int want, AtomizerJob **jobs, AtomizerClaimKey *new_floor, uint64 *gen)
{
	AtomizerClaimKey floor;
	AtomizerClaimSpec spec = {0};
	int			n;

	*gen = atomizer_floor_get(MyDatabaseId, my_queue, &floor);
	spec.queue = my_queue;
	spec.max_jobs = want;
	spec.worker_id = &my_id;
	spec.floor = &floor;
	spec.new_floor = new_floor;
	PushActiveSnapshot(GetTransactionSnapshot());
	n = atomizer_store_claim(&spec, jobs);
	PopActiveSnapshot();
	if (n == 0 && atomizer_floor_recheck(MyDatabaseId, my_queue))
	{
		TimestampTz started = GetCurrentTimestamp();

		floor = atomizer_key_min;
		PushActiveSnapshot(GetTransactionSnapshot());
		n = atomizer_store_claim(&spec, jobs);
		PopActiveSnapshot();
		atomizer_floor_rechecked(MyDatabaseId, my_queue, started);
	}
	return n;
}

/*
 * run_batch
 *		Run claimed jobs and record their outcomes in one transaction, and
 *		claim the next batch at its end if next->want > 0.  Returns the number of
 *		jobs run (the rest were released on shutdown).
 */
static int
run_batch(AtomizerJob *jobs, int n, int64 *succeeded, int64 *failed,
		  NextClaim *next)
{
	int			ran = 0;
	int64	   *ok_ids = palloc(sizeof(int64) * n);
	Datum	   *ok_results = palloc(sizeof(Datum) * n);
	bool	   *ok_nulls = palloc(sizeof(bool) * n);
	int			nok = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());

	next->n = 0;
	for (int i = 0; i < n; i++)
	{
		AtomizerOutcome outcome;
		char		activity[NAMEDATALEN * 2 + 64];

		CHECK_FOR_INTERRUPTS();
		if (atomizer_shutdown_pending &&
			GetCurrentTimestamp() >= atomizer_shutdown_deadline)
		{
			/* out of time: release what has not run, uncounted */
			for (int k = i; k < n; k++)
				atomizer_release_job(jobs[k].id, false);
			break;
		}

		set_slot(ATOMIZER_WORKER_RUNNING, jobs[i].id);
		snprintf(activity, sizeof(activity), "atomizer job " INT64_FORMAT ": %s",
				 jobs[i].id, jobs[i].handler);
		pgstat_report_activity(STATE_RUNNING, activity);

		if (atomizer_shared->workers[my_slot].cancel_job_id == jobs[i].id)
		{
			/* cancelled before its turn in the batch: it does not run */
			memset(&outcome, 0, sizeof(outcome));
			outcome.cancelled = true;
			outcome.message = "cancelled before it ran";
		}
		else
			atomizer_run_job(&jobs[i], &outcome);
		if (outcome.ok)
		{
			/* recorded together with the batch's other successes below */
			ok_ids[nok] = jobs[i].id;
			ok_results[nok] = outcome.result;
			ok_nulls[nok] = !outcome.has_result;
			nok++;
			(*succeeded)++;
		}
		else
		{
			atomizer_record_outcome(&jobs[i], &outcome, NULL);
			if (!outcome.released && !outcome.snoozed && !outcome.cancelled)
				(*failed)++;
		}
		ran++;
	}
	atomizer_finish_succeeded(ok_ids, ok_results, ok_nulls, nok);
	PopActiveSnapshot();

	if (next->want > 0 && ran == n && !atomizer_shutdown_pending)
	{
		MemoryContext old = MemoryContextSwitchTo(next->cxt);

		next->n = claim(next->want, &next->jobs, &next->new_floor,
						&next->floor_gen);
		MemoryContextSwitchTo(old);
	}

	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);
	/* table statistics for autovacuum: at most once a second (pgstat.c) */
	pgstat_report_stat(false);
	if (next->n > 0)
		atomizer_floor_advance(MyDatabaseId, my_queue, next->floor_gen,
							   &next->new_floor);
	pgstat_report_activity(STATE_IDLE, NULL);
	return ran;
}

/* What the worker's loop carries from one pass to the next. */
typedef struct WorkerLoop
{
	AtomizerWorkerSlot *slot;
	MemoryContext batch_cxt;	/* the claimed batch's memory */
	NextClaim	next;			/* a batch claimed with the last one */
	int			batch;			/* the batch size to claim */
	int			missed;			/* looks that found due jobs we could not claim */
	TimestampTz idle_since;
} WorkerLoop;

/*
 * worker_start
 *		Signals, connection, slot, identity and memory of a new worker.
 */
static void
worker_start(Datum arg, WorkerLoop *wl)
{
	struct sigaction act;
	Oid			dboid;
	char		appname[NAMEDATALEN + 32];

	my_slot = DatumGetInt32(arg);
	atomizer_worker_slot = my_slot;
	wl->slot = &atomizer_shared->workers[my_slot];

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = worker_sigterm;
	act.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&act.sa_mask);
	sigaction(SIGTERM, &act, NULL);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGINT, StatementCancelHandler);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	dboid = wl->slot->dboid;
	strlcpy(my_queue, wl->slot->queue, NAMEDATALEN);
	LWLockRelease(atomizer_shared->lock);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	atomizer_background_settings();
	atomizer_in_worker = true;

	StartTransactionCommand();
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	wl->slot->pid = MyProcPid;
	wl->slot->start_time = MyStartTime;
	wl->slot->latch = MyLatch;
	wl->slot->state = ATOMIZER_WORKER_IDLE;
	wl->slot->started_at = GetCurrentTimestamp();
	LWLockRelease(atomizer_shared->lock);
	/* holds go after the slot (limits.c): registered first, run last */
	atomizer_limits_attach();
	before_shmem_exit(worker_detach, (Datum) 0);

	my_id.pid = MyProcPid;
	my_id.start_time = MyStartTime;
	my_id.batch = 0;
	snprintf(appname, sizeof(appname), "atomizer worker %s", my_queue);
	pgstat_report_appname(appname);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "atomizer worker pass",
									 ALLOCSET_SMALL_SIZES);
	wl->batch_cxt = AllocSetContextCreate(TopMemoryContext, "atomizer worker batch",
										  ALLOCSET_DEFAULT_SIZES);
	memset(&wl->next, 0, sizeof(wl->next));
	wl->next.cxt = AllocSetContextCreate(TopMemoryContext, "atomizer worker next batch",
										 ALLOCSET_DEFAULT_SIZES);
	wl->batch = 1;
	wl->missed = 0;
	wl->idle_since = GetCurrentTimestamp();
}

/*
 * worker_should_stop
 *		At the top of a pass: reset its memory, reload the configuration,
 *		and say whether to stop (shutdown, atomizer turned off or the
 *		database left out, a scheduler wants our slot).
 */
static bool
worker_should_stop(WorkerLoop *wl)
{
	if (atomizer_shutdown_pending)
		return true;
	CHECK_FOR_INTERRUPTS();
	/* whatever a pass allocates outside a transaction goes here */
	MemoryContextSwitchTo(loop_cxt);
	MemoryContextReset(loop_cxt);
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (!atomizer_enabled || !atomizer_database_listed(my_dbname))
		return true;
	/* a scheduler needs our slot for a queue with due jobs */
	if (wl->slot->yield_requested)
		return true;
	wl->batch = Min(wl->batch, atomizer_batch_size);
	return false;
}

/*
 * take_batch
 *		The next batch: the one claimed with the last batch's outcomes, or a
 *		new claim, committed (the jobs are running, attempts counted).
 */
static int
take_batch(WorkerLoop *wl, AtomizerJob **jobs)
{
	AtomizerClaimKey new_floor;
	uint64		floor_gen;
	int			n;

	if (wl->next.n > 0)
	{
		MemoryContext t = wl->batch_cxt;

		/* the claimed jobs live in next.cxt: swap the contexts */
		wl->batch_cxt = wl->next.cxt;
		wl->next.cxt = t;
		*jobs = wl->next.jobs;
		n = wl->next.n;
		wl->next.n = 0;
		return n;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(wl->batch_cxt);
	n = claim(wl->batch, jobs, &new_floor, &floor_gen);
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_stat(false);
	if (n > 0)
		atomizer_floor_advance(MyDatabaseId, my_queue, floor_gen, &new_floor);
	return n;
}

/*
 * run_claimed
 *		Run a claimed batch, count its outcomes in our slot, and adapt the
 *		batch size: it doubles while batches are full and quick, and halves
 *		when one takes long.
 */
static void
run_claimed(WorkerLoop *wl, AtomizerJob *jobs, int n)
{
	TimestampTz started = GetCurrentTimestamp();
	int64		succeeded = 0;
	int64		failed = 0;
	long		elapsed;

	wl->missed = 0;
	jobs_in_flight = true;
	set_slot(ATOMIZER_WORKER_RUNNING, 0);
	if (n == wl->batch)
		atomizer_wake_queue(MyDatabaseId, my_queue);	/* more to do */

	MemoryContextSwitchTo(wl->batch_cxt);

	/*
	 * A full batch of more than one job: the queue is busy, and the next
	 * batch is claimed as this one commits.  (Single jobs arriving one at a
	 * time would only pay for a claim that finds nothing.)
	 */
	wl->next.want = (n == wl->batch && n > 1) ? wl->batch : 0;
	(void) run_batch(jobs, n, &succeeded, &failed, &wl->next);
	jobs_in_flight = (wl->next.n > 0);

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	wl->slot->jobs_succeeded += succeeded;
	wl->slot->jobs_failed += failed;
	wl->slot->job_id = 0;
	LWLockRelease(atomizer_shared->lock);

	elapsed = TimestampDifferenceMilliseconds(started, GetCurrentTimestamp());
	if (n == wl->batch && elapsed < FAST_BATCH_MS)
		wl->batch = Min(wl->batch * 2, atomizer_batch_size);
	else if (elapsed > SLOW_BATCH_MS)
		wl->batch = Max(wl->batch / 2, 1);
	MemoryContextReset(wl->batch_cxt);
	wl->idle_since = GetCurrentTimestamp();
}

/*
 * wait_for_work
 *		Nothing was claimed: sleep until woken, the next delayed job is due,
 *		or a poll.  Returns false when the worker should exit instead (idle
 *		for atomizer.worker_idle_timeout, or its queue was dropped).
 */
static bool
wait_for_work(WorkerLoop *wl)
{
	long		idle_ms;
	long		sleep_ms = atomizer_poll_interval;
	long		due_ms;
	AtomizerQueue queue;
	bool		exists;

	MemoryContextReset(wl->batch_cxt);
	idle_ms = TimestampDifferenceMilliseconds(wl->idle_since, GetCurrentTimestamp());
	if (idle_ms >= atomizer_worker_idle_timeout)
		return false;
	sleep_ms = Min(sleep_ms, atomizer_worker_idle_timeout - idle_ms);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	exists = atomizer_lookup_queue(my_queue, &queue);
	if (exists && queue.paused)
	{
		/* commits do not wake a paused worker; resume_queue does */
		set_slot(ATOMIZER_WORKER_PAUSED, 0);
		due_ms = -1;
	}
	else
	{
		/*
		 * Idle first, then look again: a commit after our claim either sees
		 * us idle and sets our latch, or committed before this look and is
		 * found by it.
		 */
		set_slot(ATOMIZER_WORKER_IDLE, 0);
		due_ms = exists ? next_due_ms() : -1;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);
	if (!exists)
		return false;			/* the queue was dropped */
	if (due_ms == 0 && wl->missed == 0)
	{
		wl->missed++;
		return true;			/* claim again at once */
	}
	if (due_ms == 0)
	{
		/*
		 * Due jobs we cannot claim: someone holds their rows (a run_pending()
		 * or cancel() in a long transaction).  Back off.
		 */
		sleep_ms = Min(sleep_ms, 10L << Min(wl->missed, 7));
		wl->missed++;
	}
	else
		wl->missed = 0;
	if (due_ms > 0)
		sleep_ms = Min(sleep_ms, due_ms);

	/* about to sleep: flush what the last batches did */
	if (due_ms != 0)
		pgstat_report_stat(true);
	(void) WaitLatch(MyLatch,
					 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 sleep_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	return true;
}

/*
 * give_back_next
 *		A batch claimed with the last one's outcomes, never started: give it
 *		back, attempts not counted.
 */
static void
give_back_next(WorkerLoop *wl)
{
	if (wl->next.n == 0)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	for (int k = 0; k < wl->next.n; k++)
		atomizer_release_job(wl->next.jobs[k].id, false);
	PopActiveSnapshot();
	CommitTransactionCommand();
	wl->next.n = 0;
	jobs_in_flight = false;
}

/*
 * atomizer_worker_main
 *		Entry point of a worker; the argument is its slot number.  src/
 *		README.md draws the states it goes through.
 */
void
atomizer_worker_main(Datum arg)
{
	WorkerLoop	wl;

	worker_start(arg, &wl);
	while (!worker_should_stop(&wl))
	{
		AtomizerJob *jobs;
		int			n = take_batch(&wl, &jobs);

		if (n > 0)
			run_claimed(&wl, jobs, n);
		else if (!wait_for_work(&wl))
			break;
	}
	give_back_next(&wl);
	set_slot(ATOMIZER_WORKER_STOPPING, 0);
	proc_exit(0);
}
