/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  Waiting for a job's outcome: atomizer.wait(job_id, timeout) and
 *	  atomizer.wait_all(job_ids, timeout) return as soon as the jobs have
 *	  finished, or when the timeout has passed.
 *
 *	  No polling loop: every commit that finishes jobs (stats.c sees them)
 *	  broadcasts a condition variable in shared memory, and a waiting
 *	  session looks at its jobs again when it wakes.  Without preloading
 *	  (no shared memory) a wait looks every 100 ms instead.
 *
 *	  A wait reads with a fresh snapshot for each look, so it runs outside
 *	  any transaction block, in READ COMMITTED, and never in a handler (the
 *	  job it waits for could be waiting for the handler's own commit).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_wait);
PG_FUNCTION_INFO_V1(atomizer_wait_all);

#define POLL_MS		100
#define DEFAULT_TIMEOUT_MS	30000

typedef struct WaitShared
{
	ConditionVariable finished;	/* broadcast by commits that finish jobs */
} WaitShared;

static WaitShared *wait_shared = NULL;

Size
atomizer_wait_shmem_size(void)
{
	return sizeof(WaitShared);
}

void
atomizer_wait_shmem_init(void)
{
	bool		found;

	wait_shared = ShmemInitStruct("atomizer wait", sizeof(WaitShared), &found);
	if (!found)
		ConditionVariableInit(&wait_shared->finished);
}

/*
 * atomizer_wake_waiters
 *		A transaction that finished jobs committed (stats.c's commit
 *		callback calls it): the waiting sessions look again.
 */
void
atomizer_wake_waiters(void)
{
	if (wait_shared != NULL)
		ConditionVariableBroadcast(&wait_shared->finished);
}

/*
 * check_wait_allowed
 *		A wait needs a fresh snapshot for each look and must not hold up the
 *		job it waits for.
 */
static void
check_wait_allowed(const char *fname)
{
	if (atomizer_in_handler())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot be called from a job's handler", fname),
				 errdetail("A handler that waits for another job could wait for a job that waits for it.")));
	if (IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s cannot run inside a transaction block", fname),
				 errhint("Commit first: a job enqueued in this transaction cannot run before it commits, and a wait must see other transactions' commits.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s needs the READ COMMITTED isolation level", fname)));
}

static int64
timeout_arg(FunctionCallInfo fcinfo, int argno)
{
	Interval   *iv;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return DEFAULT_TIMEOUT_MS;
	iv = PG_GETARG_INTERVAL_P(argno);
	atomizer_check_interval(iv, "timeout", true, ATOMIZER_MAX_TIMEOUT_MS);
	return atomizer_interval_ms(iv);
}

/*
 * wait_for
 *		Look at jobs ids[0..n) until every one has finished or timeout_ms has
 *		passed; out[i] gets each one's last look.
 */
static void
wait_for(const int64 *ids, int n, int64 timeout_ms, const char *owner,
		 AtomizerJobOutcome *out)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);
	bool	   *done = palloc0(sizeof(bool) * n);
	int			left = n;

	if (wait_shared != NULL)
		ConditionVariablePrepareToSleep(&wait_shared->finished);
	for (;;)
	{
		long		remaining;

		CHECK_FOR_INTERRUPTS();
		for (int i = 0; i < n; i++)
		{
			if (done[i])
				continue;
			if (!atomizer_store_job_outcome(ids[i], owner, &out[i]))
			{
				if (wait_shared != NULL)
					ConditionVariableCancelSleep();
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("job " INT64_FORMAT " does not exist", ids[i]),
						 errhint("A role waits for its own jobs only (members of atomizer_admin for any).")));
			}
			if (out[i].finished)
			{
				done[i] = true;
				left--;
			}
		}
		if (left == 0)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		if (wait_shared != NULL)
			(void) ConditionVariableTimedSleep(&wait_shared->finished, remaining,
											   PG_WAIT_EXTENSION);
		else
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(remaining, POLL_MS), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (wait_shared != NULL)
		ConditionVariableCancelSleep();
}

static char *
owner_filter(void)
{
	Oid			caller = GetUserId();

	return atomizer_is_admin(caller) ? NULL : atomizer_role_name(caller);
}

/*
 * atomizer.wait(job_id bigint, timeout interval) RETURNS TABLE (state text,
 *		result jsonb, last_error text)
 *		The job's state, result and last error as soon as it has finished
 *		(succeeded, dead or cancelled), or its state when timeout passed.
 */
Datum
atomizer_wait(PG_FUNCTION_ARGS)
{
	int64		id;
	int64		timeout_ms;
	AtomizerJobOutcome out;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3];

	check_wait_allowed("atomizer.wait()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	id = PG_GETARG_INT64(0);
	timeout_ms = timeout_arg(fcinfo, 1);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);

	wait_for(&id, 1, timeout_ms, owner_filter(), &out);
	values[0] = CStringGetTextDatum(out.state);
	nulls[0] = false;
	values[1] = out.result;
	nulls[1] = out.result_null;
	values[2] = out.last_error ? CStringGetTextDatum(out.last_error) : (Datum) 0;
	nulls[2] = (out.last_error == NULL);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * atomizer.wait_all(job_ids bigint[], timeout interval) RETURNS TABLE
 *		(job_id bigint, state text, result jsonb, last_error text)
 *		The same for many jobs: returns when all have finished, or when
 *		timeout passed, one row per job in the order given.
 */
Datum
atomizer_wait_all(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	int64	   *ids;
	AtomizerJobOutcome *out;
	int64		timeout_ms;

	check_wait_allowed("atomizer.wait_all()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_ids must not be null")));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &elem_nulls, &n);
	timeout_ms = timeout_arg(fcinfo, 1);
	ids = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("job_ids must not contain nulls")));
		ids[i] = DatumGetInt64(elems[i]);
	}
	InitMaterializedSRF(fcinfo, 0);
	out = palloc0(sizeof(AtomizerJobOutcome) * Max(n, 1));
	if (n > 0)
		wait_for(ids, n, timeout_ms, owner_filter(), out);
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, out[i].result_null, out[i].last_error == NULL};

		values[0] = Int64GetDatum(ids[i]);
		values[1] = CStringGetTextDatum(out[i].state);
		values[2] = out[i].result;
		values[3] = out[i].last_error ? CStringGetTextDatum(out[i].last_error) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
