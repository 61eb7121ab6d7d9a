/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  atomizer's shared memory: one slot per database scheduler and one per
 *	  worker process, protected by one LWLock, and the wake-up primitives
 *	  built on them.
 *
 *	  A worker slot is reserved by a scheduler before it registers the
 *	  worker, filled in by the worker when it starts (pid, latch) and freed
 *	  by the worker when it exits, or by the scheduler if the worker never
 *	  started.  Running jobs of in-database workers carry the worker's
 *	  identity ("atomizer:<pid>:<start time>"), so a running job whose
 *	  worker has no slot any more is an orphan (see scheduler.c).  After a
 *	  crash restart shared memory is new, and every running job is one.
 *
 *	  Also here: atomizer.workers, the view of the worker slots.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_workers);

AtomizerShared *atomizer_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * shared_size
 *		Bytes of shared memory atomizer needs.
 */
static Size
shared_size(void)
{
	return add_size(offsetof(AtomizerShared, workers),
					mul_size(sizeof(AtomizerWorkerSlot), atomizer_max_workers));
}

/*
 * shmem_request
 *		PG15's hook for requesting shared memory and LWLocks.
 */
static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestAddinShmemSpace(atomizer_stats_shmem_size());
	RequestAddinShmemSpace(atomizer_wait_shmem_size());
	RequestAddinShmemSpace(atomizer_limits_shmem_size());
	/* the slots' lock, and the limits' reservations' (limits.c) */
	RequestNamedLWLockTranche("atomizer", 2);
}

/*
 * shmem_startup
 *		Create or attach to the shared state.
 */
static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	atomizer_shared = ShmemInitStruct("atomizer", shared_size(), &found);
	if (!found)
	{
		memset(atomizer_shared, 0, shared_size());
		for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
		{
			pg_atomic_init_u32(&atomizer_shared->dbs[i].orphans_pending, 0);
			pg_atomic_init_u32(&atomizer_shared->dbs[i].schedules_changed, 0);
		}
		atomizer_shared->lock = &(GetNamedLWLockTranche("atomizer"))->lock;
		atomizer_shared->max_workers = atomizer_max_workers;
		atomizer_floor_init();
	}
	atomizer_stats_shmem_init();
	atomizer_wait_shmem_init();
	atomizer_limits_shmem_init(&(GetNamedLWLockTranche("atomizer"))[1].lock);
	LWLockRelease(AddinShmemInitLock);
}

/*
 * atomizer_shmem_init
 *		Install the hooks; called from _PG_init when preloaded.
 */
void
atomizer_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

/*
 * atomizer_db_slot
 *		The slot of database dboid, creating it if create; NULL if there is
 *		none (or no room).  Caller holds the lock exclusively when create.
 */
AtomizerDbSlot *
atomizer_db_slot(Oid dboid, bool create)
{
	AtomizerDbSlot *free_slot = NULL;

	for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
	{
		AtomizerDbSlot *db = &atomizer_shared->dbs[i];

		if (db->dboid == dboid)
			return db;
		if (db->dboid == InvalidOid && free_slot == NULL)
			free_slot = db;
	}
	if (create && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(AtomizerDbSlot));
		free_slot->dboid = dboid;
		pg_atomic_init_u32(&free_slot->orphans_pending, 0);
		pg_atomic_init_u32(&free_slot->schedules_changed, 0);
		return free_slot;
	}
	return NULL;
}

/*
 * atomizer_wake_queue
 *		Jobs of queue in database dboid became available: set the latch of
 *		one idle worker of that queue, or, if it has none, the scheduler's so
 *		that it starts one.  Cheap enough for every commit that enqueued.
 */
void
atomizer_wake_queue(Oid dboid, const char *queue)
{
	Latch	   *latch = NULL;
	bool		starting = false;
	int			alive = 0;
	int			concurrency = INT_MAX;

	if (atomizer_shared == NULL)
		return;

	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (!w->in_use || w->dboid != dboid || strcmp(w->queue, queue) != 0)
			continue;
		alive++;
		concurrency = w->concurrency;
		if (w->state == ATOMIZER_WORKER_IDLE && w->latch != NULL)
		{
			latch = w->latch;
			break;
		}
		if (w->state == ATOMIZER_WORKER_STARTING ||
			w->state == ATOMIZER_WORKER_PAUSED)
			starting = true;	/* it looks for work when it starts, or when
								 * its queue is resumed */
	}

	/*
	 * No idle worker: the scheduler may start one, unless one is starting or
	 * the queue already has as many as its concurrency allows (its busy
	 * workers find the jobs when they finish their batches).
	 */
	if (latch == NULL && !starting && alive < concurrency)
	{
		AtomizerDbSlot *db = atomizer_db_slot(dboid, false);

		if (db != NULL && db->scheduler_latch != NULL)
			latch = db->scheduler_latch;
	}
	LWLockRelease(atomizer_shared->lock);

	if (latch != NULL)
		SetLatch(latch);
}

/*
 * atomizer_wake_queue_all
 *		A queue was resumed or altered: wake all its workers, paused ones
 *		too, and the scheduler.
 */
void
atomizer_wake_queue_all(Oid dboid, const char *queue)
{
	Latch	   *latches[64];
	int			n = 0;
	AtomizerDbSlot *db;

	if (atomizer_shared == NULL)
		return;
	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	for (int i = 0; i < atomizer_shared->max_workers && n < lengthof(latches) - 1; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (w->in_use && w->dboid == dboid && strcmp(w->queue, queue) == 0 &&
			w->latch != NULL)
			latches[n++] = w->latch;
	}
	db = atomizer_db_slot(dboid, false);
	if (db != NULL && db->scheduler_latch != NULL)
		latches[n++] = db->scheduler_latch;
	LWLockRelease(atomizer_shared->lock);
	for (int i = 0; i < n; i++)
		SetLatch(latches[i]);
}

/*
 * wake_scheduler
 *		Set the latch of database dboid's scheduler; with schedules, first
 *		tell it that a schedule changed.
 */
static void
wake_scheduler(Oid dboid, bool schedules)
{
	Latch	   *latch = NULL;
	AtomizerDbSlot *db;

	if (atomizer_shared == NULL)
		return;
	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	db = atomizer_db_slot(dboid, false);
	if (db != NULL)
	{
		if (schedules)
			pg_atomic_write_u32(&db->schedules_changed, 1);
		latch = db->scheduler_latch;
	}
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * atomizer_wake_scheduler
 *		Set the latch of database dboid's scheduler.
 */
void
atomizer_wake_scheduler(Oid dboid)
{
	wake_scheduler(dboid, false);
}

/*
 * atomizer_schedules_changed
 *		A committed transaction changed a schedule of database dboid (made
 *		one, enabled one, moved its next run): its scheduler looks at the
 *		due schedules again, now.
 */
void
atomizer_schedules_changed(Oid dboid)
{
	wake_scheduler(dboid, true);
}

/*
 * atomizer_wake_scheduler_by
 *		Make sure database dboid's scheduler is awake at "when" (a lease
 *		end): wake it now if it means to sleep past that.
 */
void
atomizer_wake_scheduler_by(Oid dboid, TimestampTz when)
{
	Latch	   *latch = NULL;
	AtomizerDbSlot *db;

	if (atomizer_shared == NULL)
		return;
	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	db = atomizer_db_slot(dboid, false);
	if (db != NULL && db->next_wake > when)
		latch = db->scheduler_latch;
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * atomizer_request_notify
 *		Ask database dboid's scheduler to NOTIFY the listeners of external
 *		queue "queue" (a commit made jobs of it available).
 */
void
atomizer_request_notify(Oid dboid, const char *queue)
{
	Latch	   *latch = NULL;
	AtomizerDbSlot *db;

	if (atomizer_shared == NULL)
		return;
	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	db = atomizer_db_slot(dboid, false);
	if (db != NULL)
	{
		bool		known = db->notify_all;

		for (int i = 0; !known && i < db->nnotify; i++)
			known = (strcmp(db->notify[i], queue) == 0);
		if (!known)
		{
			if (db->nnotify < lengthof(db->notify))
				strlcpy(db->notify[db->nnotify++], queue, NAMEDATALEN);
			else
				db->notify_all = true;
		}
		latch = db->scheduler_latch;
	}
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * atomizer_take_notify_requests
 *		The scheduler takes the queues to NOTIFY (a List of String nodes),
 *		or *all if there were too many to list.
 */
List *
atomizer_take_notify_requests(bool *all)
{
	List	   *result = NIL;
	AtomizerDbSlot *db;

	*all = false;
	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	db = atomizer_db_slot(MyDatabaseId, false);
	if (db != NULL)
	{
		for (int i = 0; i < db->nnotify; i++)
			result = lappend(result, makeString(pstrdup(db->notify[i])));
		*all = db->notify_all;
		db->nnotify = 0;
		db->notify_all = false;
	}
	LWLockRelease(atomizer_shared->lock);
	return result;
}

/*
 * atomizer_wake_launcher
 *		Ask the launcher to look at the databases again now (CREATE
 *		EXTENSION, a reload).
 */
void
atomizer_wake_launcher(Oid dboid)
{
	Latch	   *latch;

	if (atomizer_shared == NULL)
		return;
	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	if (OidIsValid(dboid))
	{
		AtomizerDbSlot *db = atomizer_db_slot(dboid, false);

		if (db != NULL)
			db->retry_after = 0;
	}
	latch = atomizer_shared->launcher_latch;
	LWLockRelease(atomizer_shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * worker_state_name
 *		The state of a worker slot as shown in atomizer.workers.
 */
static const char *
worker_state_name(int state)
{
	switch (state)
	{
		case ATOMIZER_WORKER_STARTING:
			return "starting";
		case ATOMIZER_WORKER_IDLE:
			return "idle";
		case ATOMIZER_WORKER_RUNNING:
			return "running";
		case ATOMIZER_WORKER_STOPPING:
			return "stopping";
		case ATOMIZER_WORKER_PAUSED:
			return "paused";
	}
	return "unknown";
}

/*
 * atomizer._workers() RETURNS SETOF record
 *		The worker slots, for the view atomizer.workers.  Workers belong to
 *		no role, so every role sees them; the jobs they run stay behind
 *		row-level security.
 */
Datum
atomizer_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (atomizer_shared == NULL)
		return (Datum) 0;

	LWLockAcquire(atomizer_shared->lock, LW_SHARED);
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];
		Datum		values[8];
		bool		nulls[8];

		if (!w->in_use)
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(w->pid);
		nulls[0] = (w->pid == 0);
		values[1] = ObjectIdGetDatum(w->dboid);
		values[2] = CStringGetTextDatum(w->queue);
		values[3] = CStringGetTextDatum(worker_state_name(w->state));
		values[4] = Int64GetDatum(w->job_id);
		nulls[4] = (w->job_id == 0);
		values[5] = Int64GetDatum(w->jobs_succeeded);
		values[6] = Int64GetDatum(w->jobs_failed);
		values[7] = TimestampTzGetDatum(w->started_at);
		nulls[7] = (w->started_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(atomizer_shared->lock);
	return (Datum) 0;
}

/*
 * atomizer_worker_slot_of
 *		The slot of the live worker (pid, start time) of database dboid, or
 *		NULL.  The caller holds atomizer_shared->lock.
 */
AtomizerWorkerSlot *
atomizer_worker_slot_of(int pid, pg_time_t start_time, Oid dboid)
{
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (w->in_use && w->pid == pid && w->start_time == start_time &&
			w->dboid == dboid)
			return w;
	}
	return NULL;
}
