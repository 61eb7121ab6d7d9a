/*-------------------------------------------------------------------------
 *
 * visibility.c
 *	  What roles may see beyond row-level security, to operate atomizer:
 *
 *	  - members of atomizer_worker see how many jobs every role has waiting,
 *		running and finished in the external queues (the queues they may
 *		claim from), and how old the oldest available one is, so that they
 *		can scale on queue depth: counts and times only, never a payload,
 *		a handler, an owner or a job id (atomizer._worker_queue_counts(),
 *		used by the view atomizer.queue_stats);
 *	  - members of atomizer_admin see what pg_stat_activity says about
 *		atomizer's worker processes (its details need pg_read_all_stats):
 *		the transaction and statement start, the wait event and the activity
 *		("atomizer job <id>: <handler>"), through atomizer._worker_activity(),
 *		used by the view atomizer.workers.
 *
 *	  Both are plain functions, executable by every role, that check the
 *	  caller (GetUserId(): they are not SECURITY DEFINER) and return no rows
 *	  to any other role; then they read as the extension's owner (the
 *	  counts through the job store, jobstore.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_worker_queue_counts);
PG_FUNCTION_INFO_V1(atomizer_worker_activity);

#define ATOMIZER_WORKER_ROLE_NAME	"atomizer_worker"

/*
 * atomizer._worker_queue_counts() RETURNS TABLE (queue, scheduled,
 *		available, running, retrying, succeeded, cancelled, dead,
 *		oldest_available)
 *		For a member of atomizer_worker that is not an admin (admins see
 *		every job anyway): one row per external queue, counting every
 *		role's jobs.  No rows for anyone else.
 */
Datum
atomizer_worker_queue_counts(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Oid			worker_role = get_role_oid(ATOMIZER_WORKER_ROLE_NAME, true);

	InitMaterializedSRF(fcinfo, 0);
	if (atomizer_is_admin(caller) || !OidIsValid(worker_role) ||
		!has_privs_of_role(caller, worker_role))
		return (Datum) 0;

	atomizer_store_external_queue_counts((ReturnSetInfo *) fcinfo->resultinfo);
	return (Datum) 0;
}

/*
 * atomizer._worker_activity() RETURNS TABLE (pid, xact_start, query_start,
 *		activity_state, wait_event_type, wait_event, activity)
 *		For members of atomizer_admin: pg_stat_activity's row of every
 *		atomizer worker process (all databases), as the extension's owner
 *		sees it.  No rows for anyone else.
 */
Datum
atomizer_worker_activity(PG_FUNCTION_ARGS)
{
	InitMaterializedSRF(fcinfo, 0);
	if (!atomizer_is_admin(GetUserId()))
		return (Datum) 0;

	atomizer_query_as_owner((ReturnSetInfo *) fcinfo->resultinfo,
			"SELECT a.pid, a.xact_start, a.query_start, a.state,"
			" a.wait_event_type, a.wait_event, a.query"
			" FROM pg_catalog.pg_stat_activity a"
			" WHERE a.pid IN (SELECT w.pid FROM atomizer._workers() w)");
	return (Datum) 0;
}
