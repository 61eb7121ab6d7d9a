/*-------------------------------------------------------------------------
 *
 * external.c
 *	  The external workers' side of the protocol: claim, heartbeat,
 *	  complete, complete_many, fail and release, for jobs of queues created
 *	  with external => true; and the scheduler's part: expiring leases and
 *	  notifying listeners on atomizer_<queue>.
 *
 *	  A claim marks jobs running with a lease (lease_until) and counts the
 *	  attempt.  Every later call names the job and, preferably, the attempt
 *	  it claimed; acting on a job that is not running under that attempt's
 *	  live lease (it finished, its lease expired, or it was claimed again)
 *	  is an ERROR with SQLSTATE 55000, never a silent double completion.
 *	  A lease that expires is a failed attempt ("lease expired"), retried
 *	  with backoff or dead after max_attempts, like any failure.
 *
 *	  Members of atomizer_worker (and atomizer_admin, and superusers) may
 *	  call these functions; they need no privilege on atomizer's tables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_claim);
PG_FUNCTION_INFO_V1(atomizer_complete);
PG_FUNCTION_INFO_V1(atomizer_complete_many);
PG_FUNCTION_INFO_V1(atomizer_fail);
PG_FUNCTION_INFO_V1(atomizer_heartbeat);
PG_FUNCTION_INFO_V1(atomizer_release);

#define ATOMIZER_WORKER_ROLE	"atomizer_worker"
#define CLAIM_MAX				1000
#define DEFAULT_LEASE_MS		(5 * 60 * 1000)

/* A job being acted on, as check_lease found it. */
typedef struct LeasedJob
{
	int64		id;
	int			attempt;
	int			max_attempts;
	char	   *queue;
} LeasedJob;

/*
 * check_worker_role
 *		ERROR unless the caller may act as an external worker.
 */
static void
check_worker_role(void)
{
	Oid			caller = GetUserId();
	Oid			worker_role = get_role_oid(ATOMIZER_WORKER_ROLE, true);

	if (atomizer_is_admin(caller))
		return;
	if (OidIsValid(worker_role) && has_privs_of_role(caller, worker_role))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to act as an external worker"),
			 errdetail("Only members of atomizer_worker (or atomizer_admin) may claim and finish jobs of external queues, and role %s is not one.",
					   quote_identifier(atomizer_role_name(caller))),
			 errhint("Ask for atomizer_worker: GRANT atomizer_worker TO %s;",
					 quote_identifier(atomizer_role_name(caller)))));
}

/*
 * check_lease
 *		Lock job_id and check that it is running under a live lease of an
 *		external worker (and of attempt, if given).  The caller is connected
 *		to SPI as the owner.
 */
static void
check_lease(int64 job_id, bool attempt_given, int attempt, LeasedJob *job)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr history_plan = NULL;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(job_id);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *state;
	char	   *worker;
	bool		lease_null;
	TimestampTz lease_until;

	atomizer_prepare(&plan,
			"SELECT j.state, j.attempt, coalesce(j.max_attempts, q.max_attempts, 1),"
			" j.lease_until, j.worker, j.queue"
			" FROM atomizer.job j LEFT JOIN atomizer.queue q ON q.name = j.queue"
			" WHERE j.id = $1 FOR UPDATE OF j", 1, types);
	atomizer_prepare(&history_plan,
			"SELECT state FROM atomizer.job_history WHERE id = $1", 1, types);

	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
	if (SPI_processed == 0)
	{
		/* not read-only: a fresh snapshot sees a completion we waited for */
		if (SPI_execute_plan(history_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
		if (SPI_processed == 1)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("job " INT64_FORMAT " is not running", job_id),
					 errdetail("It has finished: %s.",
							   SPI_getvalue(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1))));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " does not exist", job_id)));
	}

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	state = SPI_getvalue(tup, desc, 1);
	job->id = job_id;
	job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	lease_until = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &lease_null));
	worker = SPI_getvalue(tup, desc, 5);
	job->queue = SPI_getvalue(tup, desc, 6);

	if (strcmp(state, "running") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job " INT64_FORMAT " is not running", job_id),
				 errdetail("It is waiting for attempt %d; a lease it had was lost.",
						   job->attempt + 1)));
	if (lease_null || (worker != NULL && strncmp(worker, "atomizer:", 9) == 0))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job " INT64_FORMAT " is not held by an external worker", job_id),
				 errdetail("atomizer's own workers run it.")));
	if (attempt_given && attempt != job->attempt)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job " INT64_FORMAT " was claimed again", job_id),
				 errdetail("The lease was for attempt %d; the job is on attempt %d now.",
						   attempt, job->attempt)));
	if (lease_until < GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the lease of job " INT64_FORMAT " expired at %s",
						job_id, timestamptz_to_str(lease_until)),
				 errhint("Send atomizer.heartbeat() more often than the lease lasts, or claim with a longer lease.")));
}

/*
 * lease_ms_arg
 *		A lease argument in ms; NULL gives the default; ERROR unless positive.
 */
static int64
lease_ms_arg(FunctionCallInfo fcinfo, int argno, int64 dflt)
{
	int64		ms;

	if (PG_ARGISNULL(argno))
		return dflt;
	atomizer_check_interval(PG_GETARG_INTERVAL_P(argno), "lease", false,
							ATOMIZER_MAX_DELAY_MS);
	ms = atomizer_interval_ms(PG_GETARG_INTERVAL_P(argno));
	return ms;
}

/*
 * atomizer.claim(queue, max_jobs, lease, worker)
 *		RETURNS TABLE (id, handler, payload, attempt, lease_until)
 */
Datum
atomizer_claim(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AtomizerQueue queue;
	char	   *queue_name;
	int32		max_jobs;
	int64		lease_ms;
	char	   *worker;
	AtomizerPrivState priv;
	Datum		values[7];
	Interval   *lease;
	AtomizerClaimKey floor;
	AtomizerClaimKey new_floor;
	uint64		floor_gen;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue must not be null")));
	queue_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	max_jobs = PG_ARGISNULL(1) ? 1 : PG_GETARG_INT32(1);
	if (max_jobs < 1 || max_jobs > CLAIM_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_jobs must be between 1 and %d", CLAIM_MAX)));
	lease_ms = lease_ms_arg(fcinfo, 2, DEFAULT_LEASE_MS);
	if (PG_ARGISNULL(3))
		worker = psprintf("external:%d", MyProcPid);
	else
	{
		worker = text_to_cstring(PG_GETARG_TEXT_PP(3));
		if (strncmp(worker, "atomizer:", 9) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("worker names starting with \"atomizer:\" are reserved")));
	}
	atomizer_require_queue(queue_name, &queue);
	if (!queue.external)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" is not external", queue_name),
				 errhint("Its jobs are run by atomizer's own workers; create external queues with atomizer.create_queue(name, external => true).")));

	InitMaterializedSRF(fcinfo, 0);

	lease = palloc0(sizeof(Interval));
	lease->time = lease_ms * 1000;
	values[0] = CStringGetTextDatum(queue_name);
	values[1] = Int32GetDatum(max_jobs);
	values[2] = CStringGetTextDatum(worker);
	values[3] = IntervalPGetDatum(lease);

	/*
	 * Start at the queue's claim floor (floor.c), read before the claim's
	 * snapshot.  Only a READ COMMITTED claim, whose statement takes its
	 * snapshot after that read, may raise the floor (at commit); an older
	 * snapshot may not see jobs committed since.
	 */
	floor_gen = atomizer_floor_get(MyDatabaseId, queue_name, &floor);

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[7] = {TEXTOID, INT4OID, TEXTOID, INTERVALOID,
		INT4OID, TIMESTAMPTZOID, INT8OID};

		atomizer_prepare(&plan,
				"WITH c AS (SELECT id FROM atomizer.job"
				" WHERE queue = $1 AND state = 'available' AND run_at <= now()"
				" AND (priority, run_at, id) >= ($5, $6, $7)"
				" AND EXISTS (SELECT 1 FROM atomizer.queue q WHERE q.name = $1"
				"  AND NOT q.paused AND q.external)"
				" ORDER BY priority, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) "
				"UPDATE atomizer.job j SET state = 'running',"
				" attempt = j.attempt + 1, started_at = clock_timestamp(),"
				" worker = $3, lease = $4, lease_until = clock_timestamp() + $4 "
				"FROM c WHERE j.id = c.id "
				"RETURNING j.id, j.handler, j.payload, j.attempt, j.lease_until,"
				" j.priority::int4 AS prio, j.run_at AS key_run_at",
				7, types);
	}
	atomizer_note_job_locks();
	for (int pass = 0; pass < 2; pass++)
	{
		values[4] = Int32GetDatum(floor.priority);
		values[5] = TimestampTzGetDatum(floor.run_at);
		values[6] = Int64GetDatum(floor.id);
		if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not claim jobs of queue \"%s\"", queue_name);
		/* nothing above the floor: now and then, look from the front */
		if (SPI_processed > 0 || pass == 1 ||
			!atomizer_floor_recheck(MyDatabaseId, queue_name))
			break;
		floor = atomizer_key_min;
	}
	new_floor = floor;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		row[7];
		bool		nulls[7];
		AtomizerClaimKey key;

		for (int k = 0; k < 7; k++)
			row[k] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
								   k + 1, &nulls[k]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
		if (!nulls[4])
			atomizer_note_deadline(DatumGetTimestampTz(row[4]));
		key.priority = DatumGetInt32(row[5]);
		key.run_at = DatumGetTimestampTz(row[6]);
		key.id = DatumGetInt64(row[0]);
		if (atomizer_key_cmp(&key, &new_floor) > 0)
			new_floor = key;
	}
	if (SPI_processed > 0 && XactIsoLevel == XACT_READ_COMMITTED)
	{
		atomizer_floor_check(queue_name, &floor, &new_floor);
		atomizer_note_floor_advance(queue_name, floor_gen, &new_floor);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	return (Datum) 0;
}

/*
 * complete_one
 *		Finish a leased job as succeeded.  Connected to SPI as the owner.
 */
static void
complete_one(int64 job_id, bool attempt_given, int attempt, Datum result,
			 bool result_null)
{
	LeasedJob	job;

	check_lease(job_id, attempt_given, attempt, &job);
	(void) atomizer_finish_job(job_id, "succeeded", result, result_null, NULL);
}

/*
 * atomizer.complete(job_id bigint, result jsonb, attempt int) RETURNS void
 */
Datum
atomizer_complete(PG_FUNCTION_ARGS)
{
	AtomizerPrivState priv;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	atomizer_become_owner(&priv);
	SPI_connect();
	complete_one(PG_GETARG_INT64(0), !PG_ARGISNULL(2),
				 PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2),
				 PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
				 PG_ARGISNULL(1));
	SPI_finish();
	atomizer_restore_caller(&priv);
	PG_RETURN_VOID();
}

/*
 * atomizer.complete_many(job_ids bigint[]) RETURNS integer
 *		All or nothing: one job not under a live lease fails the call.
 */
Datum
atomizer_complete_many(PG_FUNCTION_ARGS)
{
	AtomizerPrivState priv;
	Datum	   *ids;
	bool	   *nulls;
	int			n;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_ids must not be null")));
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &ids, &nulls, &n);
	atomizer_become_owner(&priv);
	SPI_connect();
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("job_ids must not contain nulls")));
		complete_one(DatumGetInt64(ids[i]), false, 0, (Datum) 0, true);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	PG_RETURN_INT32(n);
}

/*
 * atomizer.fail(job_id bigint, error text, retry_in interval, attempt int)
 *		RETURNS void
 */
Datum
atomizer_fail(PG_FUNCTION_ARGS)
{
	AtomizerPrivState priv;
	LeasedJob	leased;
	AtomizerJob job;
	AtomizerOutcome outcome;
	Interval   *retry_in = NULL;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	if (!PG_ARGISNULL(2))
	{
		retry_in = PG_GETARG_INTERVAL_P(2);
		atomizer_check_interval(retry_in, "retry_in", true,
								ATOMIZER_MAX_DELAY_MS);
	}

	memset(&outcome, 0, sizeof(outcome));
	outcome.message = PG_ARGISNULL(1) ? pstrdup("failed (no error given)") :
		text_to_cstring(PG_GETARG_TEXT_PP(1));

	atomizer_become_owner(&priv);
	SPI_connect();
	check_lease(PG_GETARG_INT64(0), !PG_ARGISNULL(3),
				PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3), &leased);
	memset(&job, 0, sizeof(job));
	job.id = leased.id;
	job.attempt = leased.attempt;
	job.max_attempts = leased.max_attempts;
	job.queue = leased.queue;
	atomizer_record_outcome(&job, &outcome, retry_in);
	SPI_finish();
	atomizer_restore_caller(&priv);
	atomizer_note_external(leased.queue);
	PG_RETURN_VOID();
}

/*
 * atomizer.heartbeat(job_id bigint, lease interval, attempt int)
 *		RETURNS timestamptz
 *		Extend the lease by "lease" (NULL: the claim's lease) from now.
 */
Datum
atomizer_heartbeat(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	AtomizerPrivState priv;
	LeasedJob	job;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;
	TimestampTz until;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	if (!PG_ARGISNULL(1))
	{
		Interval   *lease = palloc0(sizeof(Interval));

		lease->time = lease_ms_arg(fcinfo, 1, DEFAULT_LEASE_MS) * 1000;
		values[1] = IntervalPGetDatum(lease);
	}
	else
		nulls[1] = 'n';

	atomizer_become_owner(&priv);
	SPI_connect();
	check_lease(PG_GETARG_INT64(0), !PG_ARGISNULL(2),
				PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2), &job);
	{
		Oid			types[2] = {INT8OID, INTERVALOID};

		atomizer_prepare(&plan,
				"UPDATE atomizer.job SET lease = coalesce($2, lease),"
				" lease_until = clock_timestamp() + coalesce($2, lease,"
				"  interval '5 minutes') WHERE id = $1 RETURNING lease_until",
				2, types);
	}
	values[0] = Int64GetDatum(job.id);
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not extend the lease of job " INT64_FORMAT, job.id);
	until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	atomizer_note_deadline(until);
	SPI_finish();
	atomizer_restore_caller(&priv);
	PG_RETURN_TIMESTAMPTZ(until);
}

/*
 * atomizer.release(job_id bigint, attempt int) RETURNS void
 *		Give a leased job back, available now, its attempt not counted.
 */
Datum
atomizer_release(PG_FUNCTION_ARGS)
{
	AtomizerPrivState priv;
	LeasedJob	job;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	atomizer_become_owner(&priv);
	SPI_connect();
	check_lease(PG_GETARG_INT64(0), !PG_ARGISNULL(1),
				PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1), &job);
	atomizer_release_job(job.id, false);
	SPI_finish();
	atomizer_restore_caller(&priv);
	atomizer_note_external(job.queue);
	PG_RETURN_VOID();
}

/*
 * atomizer_expire_leases
 *		Scheduler: fail the running jobs of external workers whose lease has
 *		passed.  Returns the earliest lease end left (DT_NOEND if none).
 */
TimestampTz
atomizer_expire_leases(void)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	AtomizerPrivState priv;
	SPITupleTable *tuptable;
	uint64		n;
	TimestampTz next = DT_NOEND;
	bool		isnull;

	atomizer_become_owner(&priv);
	SPI_connect();
	atomizer_prepare(&plan,
			"SELECT j.id, j.attempt, coalesce(j.max_attempts, q.max_attempts, 1),"
			" j.queue, j.worker, j.lease_until"
			" FROM atomizer.job j LEFT JOIN atomizer.queue q ON q.name = j.queue"
			" WHERE j.state = 'running' AND j.lease_until < clock_timestamp()"
			" FOR UPDATE OF j SKIP LOCKED", 0, NULL);
	atomizer_prepare(&next_plan,
			"SELECT min(lease_until) FROM atomizer.job"
			" WHERE state = 'running' AND lease_until IS NOT NULL", 0, NULL);

	if (SPI_execute_plan(plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for expired leases");
	tuptable = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		AtomizerJob job;
		AtomizerOutcome outcome;

		memset(&job, 0, sizeof(job));
		memset(&outcome, 0, sizeof(outcome));
		job.id = DatumGetInt64(SPI_getbinval(tup, tuptable->tupdesc, 1, &isnull));
		job.attempt = DatumGetInt32(SPI_getbinval(tup, tuptable->tupdesc, 2, &isnull));
		job.max_attempts = DatumGetInt32(SPI_getbinval(tup, tuptable->tupdesc, 3, &isnull));
		job.queue = SPI_getvalue(tup, tuptable->tupdesc, 4);
		outcome.message = psprintf("lease of worker \"%s\" expired at %s",
								   SPI_getvalue(tup, tuptable->tupdesc, 5),
								   SPI_getvalue(tup, tuptable->tupdesc, 6));
		(void) atomizer_record_or_set_aside(&job, &outcome, false, "lease expiry");
		atomizer_note_external(job.queue);
	}

	if (SPI_execute_plan(next_plan, NULL, NULL, true, 0) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			next = DatumGetTimestampTz(d);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	return next;
}

/*
 * atomizer_notify_queue
 *		NOTIFY atomizer_<queue>, payload the queue name; delivered when the
 *		current transaction commits.  Queue names are checked identifiers,
 *		so the channel name needs no quoting.
 */
void
atomizer_notify_queue(const char *queue)
{
	char		channel[NAMEDATALEN];

	atomizer_check_queue_name(queue);
	snprintf(channel, sizeof(channel), "atomizer_%s", queue);
	Async_Notify(channel, queue);
}
