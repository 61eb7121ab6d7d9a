/*-------------------------------------------------------------------------
 *
 * dropdb.c
 *	  DROP DATABASE must not fail because atomizer's scheduler and workers
 *	  are connected to the database.  A ProcessUtility hook sees the
 *	  statement first: it tells the launcher to leave the database alone
 *	  for a while, terminates the database's scheduler and workers, and
 *	  waits (a few seconds at most) for them to be gone before the drop
 *	  proceeds.  Their running jobs die with the database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#include "atomizer.h"

/* Keep the launcher away from a database being dropped this long. */
#define DROP_HOLD_OFF_MS	30000
/* Wait at most this long for the processes to exit. */
#define DROP_WAIT_MS		5000

static ProcessUtility_hook_type prev_process_utility = NULL;

/*
 * stop_database_processes
 *		Signal the scheduler and workers of dboid; true while any is left.
 */
static bool
stop_database_processes(Oid dboid, bool signal)
{
	bool		left = false;
	AtomizerDbSlot *db;

	LWLockAcquire(atomizer_shared->lock, LW_EXCLUSIVE);
	db = atomizer_db_slot(dboid, true);
	if (db != NULL)
	{
		db->retry_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  DROP_HOLD_OFF_MS);
		if (db->scheduler_pid > 0 && db->scheduler_latch != NULL)
		{
			left = true;
			if (signal)
				(void) kill(db->scheduler_pid, SIGTERM);
		}
	}
	for (int i = 0; i < atomizer_shared->max_workers; i++)
	{
		AtomizerWorkerSlot *w = &atomizer_shared->workers[i];

		if (w->in_use && w->dboid == dboid && w->pid > 0)
		{
			left = true;
			if (signal)
				(void) kill(w->pid, SIGTERM);
		}
	}
	LWLockRelease(atomizer_shared->lock);
	return left;
}

/*
 * atomizer_process_utility
 *		Clear the way for DROP DATABASE, then run the statement.
 */
static void
atomizer_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (atomizer_shared != NULL && IsA(parsetree, DropdbStmt))
	{
		Oid			dboid = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);

		/* only for whoever may drop it: others must not stop our workers */
		if (OidIsValid(dboid) && object_ownercheck(DatabaseRelationId, dboid, GetUserId()) &&
			stop_database_processes(dboid, true))
		{
			for (int waited = 0; waited < DROP_WAIT_MS; waited += 50)
			{
				CHECK_FOR_INTERRUPTS();
				pg_usleep(50 * 1000L);
				if (!stop_database_processes(dboid, false))
					break;
			}
		}
	}

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/*
 * atomizer_dropdb_init
 *		Install the hook (from _PG_init, when preloaded).
 */
void
atomizer_dropdb_init(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = atomizer_process_utility;
}
