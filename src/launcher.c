/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one background worker per server, registered by
 *	  _PG_init, that starts one scheduler per database listed in
 *	  atomizer.databases ("*": every database that allows connections).
 *
 *	  The launcher connects to no database.  It cannot see which databases
 *	  have the extension, so it starts a scheduler in each candidate; a
 *	  scheduler that finds no extension says so in its database slot and
 *	  exits, and the launcher tries that database again after a while, or at
 *	  once when CREATE EXTENSION commits there (see wakeup.c).
 *
 *	  The launcher starts only after recovery has finished: on a standby
 *	  nothing runs, and after promotion the launcher starts the schedulers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "atomizer.h"

/* How long before a database without the extension is looked at again. */
#define NO_EXTENSION_RETRY_MS	10000
/* How long before a scheduler that failed is started again. */
#define FAILED_RETRY_MS			5000

typedef struct SchedulerHandle
{
	Oid			dboid;
	BackgroundWorkerHandle *handle;
} SchedulerHandle;

static SchedulerHandle schedulers[ATOMIZER_MAX_DATABASES];

/*
 * atomizer_launcher_register
 *		Register the launcher with the postmaster (from _PG_init).
 */
void
atomizer_launcher_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "atomizer", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "atomizer_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "atomizer launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "atomizer launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * atomizer_start_scheduler
 *		Register a dynamic scheduler for database dboid.
 */
bool
atomizer_start_scheduler(Oid dboid, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "atomizer", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "atomizer_scheduler_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "atomizer scheduler for database %u", dboid);
	strlcpy(worker.bgw_type, "atomizer scheduler", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		bool		registered = RegisterDynamicBackgroundWorker(&worker, handle);

		MemoryContextSwitchTo(old);
		return registered;
	}
}

/*
 * atomizer_database_listed
 *		Whether atomizer.databases names dbname ("*" names every one).
 */
bool
atomizer_database_listed(const char *dbname)
{
	char	   *raw = pstrdup(atomizer_databases);
	List	   *names;
	ListCell   *lc;
	bool		listed = false;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		list_free(names);
		pfree(raw);
		ereport(LOG,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in parameter \"atomizer.databases\"")));
		return false;
	}
	foreach(lc, names)
	{
		char	   *name = (char *) lfirst(lc);

		if (strcmp(name, "*") == 0 || strcmp(name, dbname) == 0)
		{
			listed = true;
			break;
		}
	}
	/* called once per pass of long-lived loops: leave nothing behind */
	list_free(names);
	pfree(raw);
	return listed;
}

/*
 * candidate_databases
 *		OIDs of the databases that allow connections, are not templates, and
 *		are listed in atomizer.databases.
 */
static List *
candidate_databases(MemoryContext cxt)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn || db->datistemplate)
			continue;
		if (!atomizer_database_listed(NameStr(db->datname)))
			continue;
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			result = lappend_oid(result, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/*
 * find_scheduler
 *		This launcher's handle entry for dboid, or a free one if create.
 */
static SchedulerHandle *
find_scheduler(Oid dboid, bool create)
{
	SchedulerHandle *free_entry = NULL;

	for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
	{
		if (schedulers[i].dboid == dboid)
			return &schedulers[i];
		if (schedulers[i].dboid == InvalidOid && free_entry == NULL)
			free_entry = &schedulers[i];
	}
	if (create && free_entry != NULL)
	{
		free_entry->dboid = dboid;
		free_entry->handle = NULL;
		return free_entry;
	}
	return NULL;
}

/*
 * scheduler_running
 *		Whether the scheduler we started for an entry is still alive.
 */
static bool
scheduler_running(SchedulerHandle *entry)
{
	pid_t		pid;

	if (entry->handle == NULL)
		return false;
	if (GetBackgroundWorkerPid(entry->handle, &pid) == BGWH_STOPPED)
	{
		pfree(entry->handle);
		entry->handle = NULL;
		return false;
	}
	return true;
}

/*
 * launcher_pass
 *		Start a scheduler for every candidate database that has none and is
 *		not waiting out a retry delay.  Returns ms until the next retry.
 */
static long
launcher_pass(MemoryContext cxt)
{
	List	   *dbs = candidate_databases(cxt);
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	long		sleep_ms = atomizer_poll_interval;

	/* forget databases that are gone (or no longer listed) */
	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
	{
		AtomizerDbSlot *db = &atomizer_shared->dbs[i];
		SchedulerHandle *entry;

		if (db->dboid == InvalidOid || list_member_oid(dbs, db->dboid))
			continue;
		entry = find_scheduler(db->dboid, false);
		if (entry != NULL && scheduler_running(entry))
			continue;
		if (db->retry_after > now)
			continue;			/* being dropped: keep the hold-off */
		if (entry != NULL)
			entry->dboid = InvalidOid;
		db->dboid = InvalidOid;
	}
	LWLockRelease(atomizer_shared->lock);

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		SchedulerHandle *entry = find_scheduler(dboid, true);
		AtomizerDbSlot *db;
		bool		start = false;

		if (entry == NULL || scheduler_running(entry))
			continue;

		LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
		db = atomizer_db_slot(dboid, true);
		if (db != NULL)
		{
			if (db->scheduler_pid != 0)
			{
				/* it stopped: decide when to try again */
				db->scheduler_pid = 0;
				db->scheduler_latch = NULL;
				db->retry_after = TimestampTzPlusMilliseconds(now,
															  db->no_extension ? NO_EXTENSION_RETRY_MS : FAILED_RETRY_MS);
			}
			if (db->retry_after <= now)
				start = true;
			else
				sleep_ms = Min(sleep_ms,
							   TimestampDifferenceMilliseconds(now, db->retry_after));
		}
		LWLockRelease(atomizer_shared->lock);

		if (db == NULL)
		{
			if (!atomizer_shared->logged_no_slot)
				ereport(LOG,
						(errmsg("atomizer: more than %d databases, database %u is skipped",
								ATOMIZER_MAX_DATABASES, dboid)));
			atomizer_shared->logged_no_slot = true;
			continue;
		}
		if (!start)
			continue;

		if (!atomizer_start_scheduler(dboid, &entry->handle))
		{
			entry->handle = NULL;
			ereport(LOG,
					(errmsg("atomizer: could not start a scheduler for database %u", dboid),
					 errhint("Raise max_worker_processes; atomizer needs one process for its launcher, one per database and one per worker.")));
			sleep_ms = Min(sleep_ms, FAILED_RETRY_MS);
		}
		else
		{
			LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
			db->no_extension = false;
			db->retry_after = TimestampTzPlusMilliseconds(now, FAILED_RETRY_MS);
			db->scheduler_pid = -1; /* started, pid not known yet */
			LWLockRelease(atomizer_shared->lock);
		}
	}
	return Max(sleep_ms, 10);
}

/*
 * atomizer_launcher_main
 *		Entry point of the launcher background worker.
 */
void
atomizer_launcher_main(Datum arg)
{
	MemoryContext pass_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("atomizer launcher");

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	atomizer_shared->launcher_latch = MyLatch;
	LWLockRelease(atomizer_shared->lock);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "atomizer launcher",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		long		sleep_ms = atomizer_poll_interval;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (atomizer_enabled)
		{
			sleep_ms = launcher_pass(pass_cxt);
			MemoryContextReset(pass_cxt);
		}

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
