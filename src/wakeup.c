/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *	  Wake-up on commit.  enqueue() notes the queues it wrote to; when the
 *	  transaction commits, a transaction callback sets the latch of an idle
 *	  worker of each queue (or of the database's scheduler): a job starts as
 *	  soon as it can be seen, not a polling interval later, and a producer
 *	  pays a few shared-memory reads, never a lock that serialises commits.
 *	  If the transaction aborts, nothing happens.
 *
 *	  CREATE EXTENSION wakes the launcher the same way, so the new
 *	  database's scheduler starts right after the commit; on a server that
 *	  did not preload atomizer, it says (once, as a WARNING) what to add to
 *	  postgresql.conf for background workers.
 *
 *	  The same callbacks keep the claim floors (floor.c) honest: a commit
 *	  that made jobs wait lowers their queue's floor to their key, and an
 *	  abort of a (sub)transaction that locked waiting jobs resets the
 *	  database's floors.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/timestamp.h"
#include "utils/builtins.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_extension_created);
PG_FUNCTION_INFO_V1(atomizer_wake_at_commit);

#define MAX_PENDING_QUEUES 8

static bool callback_registered = false;
static int	npending = 0;
static bool pending_overflow = false;
static bool pending_launcher = false;
static bool pending_scheduler = false;
static bool pending_schedules = false;	/* a schedule changed */
static int	nexternal = 0;
static TimestampTz pending_deadline = 0;
static int	nresumed = 0;
static char resumed[MAX_PENDING_QUEUES][NAMEDATALEN];
static char external[MAX_PENDING_QUEUES][NAMEDATALEN];
static char pending[MAX_PENDING_QUEUES][NAMEDATALEN];
static int	nwaiting = 0;
static bool waiting_overflow = false;
static char waiting[MAX_PENDING_QUEUES][NAMEDATALEN];
static AtomizerClaimKey waiting_key[MAX_PENDING_QUEUES];

/* A claim floor to raise at commit (external claims, external.c). */
static bool advance_pending = false;
static char advance_queue[NAMEDATALEN];
static uint64 advance_gen;
static AtomizerClaimKey advance_key;

/* Running jobs of atomizer's workers that cancel() asked to stop. */
#define MAX_PENDING_CANCELS 64
typedef struct PendingCancel
{
	int64		job_id;
	int			pid;
	pg_time_t	start_time;
} PendingCancel;
static int	ncancels = 0;
static PendingCancel cancels[MAX_PENDING_CANCELS];

/* Deepest (sub)transaction level that locked waiting jobs; 0: none. */
static int	locked_level = 0;

/*
 * cancel_running
 *		At commit: tell the worker that runs the job to stop its handler.
 */
static void
cancel_running(const PendingCancel *c)
{
	Latch	   *latch = NULL;
	AtomizerWorkerSlot *w;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	w = atomizer_worker_slot_of(c->pid, c->start_time, MyDatabaseId);
	if (w != NULL)
	{
		w->cancel_job_id = c->job_id;
		latch = w->latch;
	}
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * xact_callback
 *		At commit, wake whoever runs the queues written to; forget them at
 *		the end of the transaction either way.
 */
static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* floors first: a worker woken below must find the jobs */
			if (waiting_overflow)
				atomizer_floor_reset_db(MyDatabaseId);
			for (int i = 0; i < nwaiting; i++)
				atomizer_floor_lower(MyDatabaseId, waiting[i], &waiting_key[i]);
			if (pending_overflow)
				atomizer_wake_queue(MyDatabaseId, "");
			for (int i = 0; i < npending; i++)
				atomizer_wake_queue(MyDatabaseId, pending[i]);
			if (pending_launcher)
			{
				/* a new extension: nothing of an old one's floors holds */
				atomizer_floor_reset_db(MyDatabaseId);
				atomizer_wake_launcher(MyDatabaseId);
			}
			if (pending_schedules)
				atomizer_schedules_changed(MyDatabaseId);
			else if (pending_scheduler)
				atomizer_wake_scheduler(MyDatabaseId);
			for (int i = 0; i < nexternal; i++)
				atomizer_request_notify(MyDatabaseId, external[i]);
			if (pending_deadline != 0)
				atomizer_wake_scheduler_by(MyDatabaseId, pending_deadline);
			for (int i = 0; i < nresumed; i++)
				atomizer_wake_queue_all(MyDatabaseId, resumed[i]);
			for (int i = 0; i < ncancels; i++)
				cancel_running(&cancels[i]);
			/* after the lowerings: one of ours makes the advance stand down */
			if (advance_pending)
				atomizer_floor_advance(MyDatabaseId, advance_queue,
									   advance_gen, &advance_key);
			locked_level = 0;
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * Jobs we locked are waiting again, and a claim may have skipped
			 * them.  (A prepared transaction may still roll back: reset now,
			 * and the floor's safety net covers the rest.)
			 */
			if (locked_level > 0)
				atomizer_floor_reset_db(MyDatabaseId);
			locked_level = 0;
			advance_pending = false;
			nwaiting = 0;
			waiting_overflow = false;
			npending = 0;
			pending_overflow = false;
			pending_launcher = false;
			pending_scheduler = false;
			pending_schedules = false;
			nexternal = 0;
			pending_deadline = 0;
			nresumed = 0;
			ncancels = 0;
			break;
		default:
			break;
	}
}

/*
 * subxact_callback
 *		A subtransaction that locked waiting jobs rolled back: as at abort.
 *		One that committed hands its locks to its parent.
 */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (locked_level < level)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		atomizer_floor_reset_db(MyDatabaseId);
		locked_level = level - 1;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		locked_level = level - 1;
}

/*
 * register_callback
 *		Once per backend.
 */
static void
register_callback(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(xact_callback, NULL);
		RegisterSubXactCallback(subxact_callback, NULL);
		callback_registered = true;
	}
}

/*
 * atomizer_note_waiting
 *		This transaction made a job of queue wait (inserted it, or set it
 *		available) with claim key key, or with any key if key is NULL: at
 *		commit, lower the queue's claim floor to it.  Paused and external
 *		queues too: their floor must hold when they are resumed or claimed.
 */
void
atomizer_note_waiting(const char *queue, const AtomizerClaimKey *key)
{
	const AtomizerClaimKey *k = key ? key : &atomizer_key_min;

	if (atomizer_shared == NULL)
		return;
	register_callback();
	for (int i = 0; i < nwaiting; i++)
		if (strcmp(waiting[i], queue) == 0)
		{
			if (atomizer_key_cmp(k, &waiting_key[i]) < 0)
				waiting_key[i] = *k;
			return;
		}
	if (nwaiting < MAX_PENDING_QUEUES)
	{
		strlcpy(waiting[nwaiting], queue, NAMEDATALEN);
		waiting_key[nwaiting++] = *k;
	}
	else
		waiting_overflow = true;
}

/*
 * atomizer_note_floor_advance
 *		An external claim in this transaction may raise queue's floor to key
 *		once it commits, if the floor's generation is still gen (read
 *		before the claim's snapshot).  The last claim of the transaction
 *		wins; an earlier one's floor is at most as high, so that is safe.
 */
void
atomizer_note_floor_advance(const char *queue, uint64 gen,
							const AtomizerClaimKey *key)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	if (advance_pending && strcmp(advance_queue, queue) != 0)
	{
		/* claims from two queues in one transaction: raise neither */
		advance_gen = PG_UINT64_MAX;
		return;
	}
	strlcpy(advance_queue, queue, NAMEDATALEN);
	advance_gen = advance_pending ? Min(advance_gen, gen) : gen;
	advance_key = *key;
	advance_pending = true;
}

/*
 * atomizer_note_job_locks
 *		This (sub)transaction locks waiting jobs (to claim or cancel them):
 *		if it rolls back, they wait again below the floor a concurrent claim
 *		may have raised past them.
 */
void
atomizer_note_job_locks(void)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	locked_level = Max(locked_level, GetCurrentTransactionNestLevel());
}

/*
 * atomizer_note_cancel_running
 *		This transaction cancelled job_id, which the worker (pid, start_time)
 *		runs: at commit, ask that worker to stop the job's handler.
 */
void
atomizer_note_cancel_running(int64 job_id, int pid, pg_time_t start_time)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	if (ncancels < MAX_PENDING_CANCELS)
	{
		cancels[ncancels].job_id = job_id;
		cancels[ncancels].pid = pid;
		cancels[ncancels].start_time = start_time;
		ncancels++;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot cancel more than %d running jobs in one transaction",
						MAX_PENDING_CANCELS)));
}

/*
 * atomizer_note_enqueue
 *		Remember that this transaction made jobs of queue available.
 */
void
atomizer_note_enqueue(const char *queue)
{
	if (atomizer_shared == NULL)
		return;					/* not preloaded: no workers to wake */
	register_callback();

	for (int i = 0; i < npending; i++)
		if (strcmp(pending[i], queue) == 0)
			return;
	if (npending < MAX_PENDING_QUEUES)
		strlcpy(pending[npending++], queue, NAMEDATALEN);
	else
		pending_overflow = true;
}

/*
 * atomizer_note_external
 *		This transaction made jobs of external queue "queue" available: at
 *		commit the scheduler NOTIFYs its listeners (one NOTIFY per queue from
 *		the scheduler, so producers never take the global notify lock).
 */
void
atomizer_note_external(const char *queue)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	for (int i = 0; i < nexternal; i++)
		if (strcmp(external[i], queue) == 0)
			return;
	if (nexternal < MAX_PENDING_QUEUES)
		strlcpy(external[nexternal++], queue, NAMEDATALEN);
	else
		atomizer_request_notify(MyDatabaseId, queue);	/* rare: ask now */
}

/*
 * atomizer_note_resume
 *		A queue was resumed or its settings changed: at commit wake all its
 *		workers (paused ones too) and the scheduler.
 */
void
atomizer_note_resume(const char *queue)
{
	if (atomizer_shared == NULL)
		return;
	/* an external queue made internal has no floor kept for it */
	atomizer_note_waiting(queue, NULL);
	for (int i = 0; i < nresumed; i++)
		if (strcmp(resumed[i], queue) == 0)
			return;
	if (nresumed < MAX_PENDING_QUEUES)
		strlcpy(resumed[nresumed++], queue, NAMEDATALEN);
	else
		pending_scheduler = true;
}

/*
 * atomizer_note_deadline
 *		This transaction set a lease ending at "when": at commit, make sure
 *		the scheduler wakes by then to expire it.
 */
void
atomizer_note_deadline(TimestampTz when)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	if (pending_deadline == 0 || when < pending_deadline)
		pending_deadline = when;
}

/*
 * atomizer_note_schedule_change
 *		A schedule changed: the scheduler recomputes its sleep at commit.
 */
void
atomizer_note_schedule_change(void)
{
	if (atomizer_shared == NULL)
		return;
	register_callback();
	pending_schedules = true;
}

/*
 * atomizer._extension_created() RETURNS void
 *		Called by the install script: wake the launcher at commit.
 */
Datum
atomizer_extension_created(PG_FUNCTION_ARGS)
{
	if (atomizer_shared != NULL)
	{
		register_callback();
		pending_launcher = true;
	}
	else
		ereport(WARNING,
				(errmsg("atomizer is not in shared_preload_libraries: no background worker will run jobs"),
				 errdetail("Jobs run only when a session calls atomizer.run_pending(); external workers can claim them as usual."),
				 errhint("Add this line to postgresql.conf and restart the server: shared_preload_libraries = 'atomizer'   (keep any other libraries already listed there, comma-separated)")));
	PG_RETURN_VOID();
}

/*
 * atomizer._wake_at_commit(queue text) RETURNS void
 *		Wake queue's workers (or the scheduler) when the transaction commits:
 *		for resume_queue and alter_queue, whose changes can make jobs
 *		runnable without an enqueue.
 */
Datum
atomizer_wake_at_commit(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
		atomizer_note_resume(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}
