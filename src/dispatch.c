/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *	  Claiming jobs, running their handlers, and recording outcomes: the
 *	  three steps every runner of internal jobs shares, and
 *	  atomizer.run_pending(), the in-session runner built from them.
 *
 *	  atomizer_claim_jobs marks up to N due jobs of a queue running, counting
 *	  the attempt, using FOR UPDATE SKIP LOCKED on the claim index.
 *
 *	  atomizer_run_job runs one handler in its own subtransaction, as the
 *	  role that enqueued the job, inside a security-restricted operation (so
 *	  the handler cannot SET ROLE, RESET ROLE or SET SESSION AUTHORIZATION
 *	  its way to the runner's identity, nor leave temporary objects behind
 *	  for the next job), with every setting it changes rolled back, and with
 *	  the job's timeout.  Any error is caught and copied into the outcome.
 *
 *	  atomizer_record_outcome writes the outcome in the current transaction:
 *	  success moves the job to the history with its result; failure records
 *	  the error in atomizer.job_error and either schedules the next attempt
 *	  with exponential backoff and jitter or, after max_attempts, moves the
 *	  job to the history as dead.  Because a handler's subtransaction and
 *	  its outcome are in the same transaction, they commit together.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_run_pending);

/* Timeout of the job running now, registered once per backend. */
static TimeoutId job_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t job_timed_out = false;

/* Guards against run_pending() being called from a handler. */
static bool running_jobs = false;

/*
 * Shutdown of a worker (worker.c sets these): a handler still running at
 * the deadline is cancelled, and its job released.
 */
bool		atomizer_in_worker = false;
volatile sig_atomic_t atomizer_shutdown_pending = false;
volatile TimestampTz atomizer_shutdown_deadline = 0;
static TimeoutId shutdown_poll_id = MAX_TIMEOUTS;
static volatile sig_atomic_t shutdown_cancelled = false;

/*
 * shutdown_poll_handler
 *		SIGALRM-time, every 100 ms while a worker runs a handler: past the
 *		shutdown deadline, cancel the handler.
 */
static void
shutdown_poll_handler(void)
{
	if (atomizer_shutdown_pending &&
		GetCurrentTimestamp() >= atomizer_shutdown_deadline)
	{
		shutdown_cancelled = true;
		QueryCancelPending = true;
		InterruptPending = true;
		SetLatch(MyLatch);
	}
}

/*
 * job_timeout_handler
 *		SIGALRM-time: the job's timeout expired; cancel what it is doing.
 */
static void
job_timeout_handler(void)
{
	job_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * compare_jobs
 *		Claim order: priority, run_at, id.
 */
static int
compare_jobs(const void *a, const void *b)
{
	const AtomizerJob *x = (const AtomizerJob *) a;
	const AtomizerJob *y = (const AtomizerJob *) b;

	if (x->priority != y->priority)
		return x->priority < y->priority ? -1 : 1;
	if (x->run_at != y->run_at)
		return x->run_at < y->run_at ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * atomizer_floor_check
 *		A claim that started at floor and ended in a higher priority than
 *		floor's passed the lower priorities' delayed jobs (run_at in the
 *		future) without claiming them: the new floor must stay at or below
 *		the first of them.  The range read is the one the claim just read.
 */
void
atomizer_floor_check(const char *queue, const AtomizerClaimKey *floor,
					 AtomizerClaimKey *new_floor)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {TEXTOID, INT4OID, TIMESTAMPTZOID, INT8OID, INT4OID};
	Datum		values[5];
	bool		isnull;

	if (new_floor->priority <= floor->priority)
		return;
	atomizer_prepare(&plan,
					 "SELECT priority::int4 AS prio, run_at, id FROM atomizer.job"
					 " WHERE queue = $1 AND state = 'available'"
					 " AND (priority, run_at, id) >= ($2, $3, $4)"
					 " AND priority < $5 AND run_at > now()"
					 " ORDER BY priority, run_at, id LIMIT 1", 5, types);
	values[0] = CStringGetTextDatum(queue);
	values[1] = Int32GetDatum(floor->priority);
	values[2] = TimestampTzGetDatum(floor->run_at);
	values[3] = Int64GetDatum(floor->id);
	values[4] = Int32GetDatum(new_floor->priority);
	if (SPI_execute_plan(plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look at queue \"%s\"", queue);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		new_floor->priority = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		new_floor->run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		new_floor->id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}
}

/*
 * atomizer_claim_jobs
 *		Mark up to max_jobs due, available jobs of queue running, in claim
 *		order from claim key floor on (NULL: from the front of the queue),
 *		skipping rows another session has locked; jobs of other roles are
 *		skipped when owner_filter is set.  Returns the number claimed and a
 *		palloc'd array (in the caller's memory context) in *jobs.
 *
 *		If new_floor is not NULL, it is set to the floor the queue may have
 *		once this transaction commits (see floor.c): the caller passes it to
 *		atomizer_floor_advance after the commit.
 */
int
atomizer_claim_jobs(const char *queue, int max_jobs, const char *owner_filter,
					const char *worker, const AtomizerClaimKey *floor,
					AtomizerClaimKey *new_floor, AtomizerJob **jobs)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr mark_plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	AtomizerPrivState priv;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	AtomizerJob *result;
	Datum	   *ids;
	int			nids = 0;
	int			n;
	AtomizerClaimKey first_left = {0};	/* first locked row not claimed */
	bool		left = false;

	if (floor == NULL)
		floor = &atomizer_key_min;
	values[0] = CStringGetTextDatum(queue);
	values[1] = Int32GetDatum(max_jobs);
	values[2] = owner_filter ? CStringGetTextDatum(owner_filter) : (Datum) 0;
	nulls[2] = owner_filter ? ' ' : 'n';
	values[3] = Int32GetDatum(floor->priority);
	values[4] = TimestampTzGetDatum(floor->run_at);
	values[5] = Int64GetDatum(floor->id);

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[6] = {TEXTOID, INT4OID, TEXTOID, INT4OID,
		TIMESTAMPTZOID, INT8OID};

		atomizer_prepare(&lock_plan,
						 "SELECT id, solo, priority::int4 AS prio, run_at"
						 " FROM atomizer.job"
						 " WHERE queue = $1 AND state = 'available'"
						 " AND (priority, run_at, id) >= ($4, $5, $6)"
						 " AND run_at <= now()"
						 " AND ($3::name IS NULL OR owner = $3::name)"
						 " AND EXISTS (SELECT 1 FROM atomizer.queue q"
						 "  WHERE q.name = $1 AND NOT q.paused"
						 "  AND NOT q.external)"
						 " ORDER BY priority, run_at, id LIMIT $2"
						 " FOR UPDATE SKIP LOCKED", 6, types);
	}
	{
		Oid			types[2] = {INT8ARRAYOID, TEXTOID};

		atomizer_prepare(&mark_plan,
						 "UPDATE atomizer.job j SET state = 'running',"
						 " attempt = j.attempt + 1,"
						 " started_at = clock_timestamp(), worker = $2 "
						 "FROM atomizer.queue q "
						 "WHERE j.id = ANY($1) AND q.name = j.queue "
						 "RETURNING j.id, j.handler, j.payload, j.attempt,"
						 " coalesce(j.max_attempts, q.max_attempts),"
						 " coalesce(j.timeout, q.timeout), j.owner::text,"
						 " j.priority::int4, j.run_at",
						 2, types);
	}

	/*
	 * Lock the candidates.  A job released after its worker died in the
	 * middle of a batch is "solo": it runs in a batch of its own, so that a
	 * job that kills its worker is found out and charged alone.
	 */
	atomizer_note_job_locks();
	if (SPI_execute_plan(lock_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not claim jobs of queue \"%s\"", queue);
	ids = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	if (new_floor)
		*new_floor = *floor;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		id = SPI_getbinval(tup, desc, 1, &isnull);
		bool		solo = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		AtomizerClaimKey key;

		key.priority = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		key.run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		key.id = DatumGetInt64(id);
		if (solo)
		{
			/*
			 * The other candidates, before it and after it, stay waiting:
			 * they were locked, not claimed.
			 */
			if (SPI_processed > 1)
			{
				HeapTuple	first = SPI_tuptable->vals[i == 0 ? 1 : 0];

				left = true;
				first_left.priority = DatumGetInt32(SPI_getbinval(first, desc, 3, &isnull));
				first_left.run_at = DatumGetTimestampTz(SPI_getbinval(first, desc, 4, &isnull));
				first_left.id = DatumGetInt64(SPI_getbinval(first, desc, 1, &isnull));
			}
			ids[0] = id;
			nids = 1;
			if (new_floor)
				*new_floor = left ? first_left : key;
			break;
		}
		ids[nids++] = id;
		if (new_floor)
			*new_floor = key;
	}
	if (left)
	{
		/* at commit they wait again, below the floor a worker may have raised */
		atomizer_note_waiting(queue, &first_left);
		atomizer_note_enqueue(queue);
	}
	if (new_floor && nids > 0)
		atomizer_floor_check(queue, floor, new_floor);

	n = 0;
	result = MemoryContextAllocZero(caller_cxt, sizeof(AtomizerJob) * Max(nids, 1));
	if (nids > 0)
	{
		Datum		mvalues[2];
		char		mnulls[2] = {' ', ' '};

		mvalues[0] = PointerGetDatum(construct_array(ids, nids, INT8OID, 8,
													 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		/*
		 * A worker's identity carries the batch size, so that the scheduler
		 * knows, if the worker dies, whether a job was alone in its batch.
		 */
		mvalues[1] = worker ? CStringGetTextDatum(psprintf("%s:%d", worker, nids)) : (Datum) 0;
		mnulls[1] = worker ? ' ' : 'n';
		if (SPI_execute_plan(mark_plan, mvalues, mnulls, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not claim jobs of queue \"%s\"", queue);
		n = (int) SPI_processed;
	}

	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerJob *job = &result[i];
		MemoryContext old;
		bool		isnull;

		old = MemoryContextSwitchTo(caller_cxt);
		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		job->queue = pstrdup(queue);
		job->handler = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		job->payload = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false, -1);
		job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		job->timeout_ms =
			atomizer_interval_ms(DatumGetIntervalP(SPI_getbinval(tup, desc, 6, &isnull)));
		job->owner = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));
		job->priority = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		job->run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
		MemoryContextSwitchTo(old);
	}

	SPI_finish();
	atomizer_restore_caller(&priv);

	qsort(result, n, sizeof(AtomizerJob), compare_jobs);
	*jobs = result;
	return n;
}

/*
 * call_handler
 *		Look the handler up again, check the owner may still execute it, and
 *		call it.  Runs inside the job's subtransaction, as the job's owner.
 */
static void
call_handler(AtomizerJob *job, Oid roleid, AtomizerOutcome *outcome)
{
	Oid			fnoid = atomizer_lookup_handler(job->handler, roleid);
	Oid			rettype = get_func_rettype(fnoid);
	Datum		result;
	bool		isnull;

	/* simple SQL handlers keep their plan from job to job (sqlfunc.c) */
	if (!atomizer_call_sql_handler(fnoid, job->payload, &result, &isnull))
	{
		FmgrInfo	flinfo;
		LOCAL_FCINFO(fcinfo, 1);

		fmgr_info(fnoid, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = job->payload;
		fcinfo->args[0].isnull = false;
		result = FunctionCallInvoke(fcinfo);
		isnull = fcinfo->isnull;
	}

	if (!isnull && rettype == JSONBOID)
	{
		outcome->result = datumCopy(result, false, -1);
		outcome->has_result = true;
	}
	else if (!isnull && rettype == JSONOID)
	{
		char	   *json = TextDatumGetCString(result);

		outcome->result = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
		outcome->has_result = true;
	}
}

/*
 * release_session_state
 *		Give up what a handler can leave on a worker's session beyond its
 *		subtransaction: session-level advisory locks (pg_advisory_lock), which
 *		neither commit nor abort releases, and which the next job, perhaps of
 *		another role, would otherwise run holding.  The rest of a session's
 *		state is out of a handler's reach: settings are rolled back, and the
 *		security-restricted operation refuses PREPARE, LISTEN, cursors WITH
 *		HOLD, DISCARD and temporary tables.  Only in workers: a session that
 *		calls run_pending() may hold advisory locks of its own.
 */
static void
release_session_state(void)
{
	if (atomizer_in_worker)
		LockReleaseSession(USER_LOCKMETHOD);
}

/*
 * atomizer_run_job
 *		Run one claimed job's handler and fill *outcome.  Never throws for an
 *		error of the handler; the current transaction stays usable.
 */
void
atomizer_run_job(AtomizerJob *job, AtomizerOutcome *outcome)
{
	MemoryContext job_cxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;

	memset(outcome, 0, sizeof(AtomizerOutcome));

	if (job_timeout_id == MAX_TIMEOUTS)
		job_timeout_id = RegisterTimeout(USER_TIMEOUT, job_timeout_handler);
	if (atomizer_in_worker && shutdown_poll_id == MAX_TIMEOUTS)
		shutdown_poll_id = RegisterTimeout(USER_TIMEOUT, shutdown_poll_handler);
	job_timed_out = false;
	shutdown_cancelled = false;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(job_cxt);

	PG_TRY();
	{
		Oid			roleid = get_role_oid(job->owner, true);
		int			nestlevel;

		if (!OidIsValid(roleid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("role \"%s\" that enqueued the job does not exist",
							job->owner)));

		SetUserIdAndSecContext(roleid,
							   save_sec_context |
							   SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		nestlevel = NewGUCNestLevel();

		if (job->timeout_ms > 0)
			enable_timeout_after(job_timeout_id,
								 (int) Min(job->timeout_ms, INT_MAX));
		if (atomizer_in_worker)
			enable_timeout_every(shutdown_poll_id,
								 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 100),
								 100);

		call_handler(job, roleid, outcome);

		if (job->timeout_ms > 0)
			disable_timeout(job_timeout_id, false);
		if (atomizer_in_worker)
			disable_timeout(shutdown_poll_id, false);
		/* The handler finished first: a cancel we raised is not pending. */
		if (job_timed_out || shutdown_cancelled)
		{
			QueryCancelPending = false;
			job_timed_out = false;
			shutdown_cancelled = false;
		}

		/* Discard every setting the handler changed, SET or SET LOCAL. */
		AtEOXact_GUC(false, nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec_context);

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
		release_session_state();
		outcome->ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (job->timeout_ms > 0)
			disable_timeout(job_timeout_id, false);
		if (atomizer_in_worker)
			disable_timeout(shutdown_poll_id, false);

		MemoryContextSwitchTo(job_cxt);
		edata = CopyErrorData();
		FlushErrorState();

		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec_context);
		release_session_state();

		outcome->ok = false;
		outcome->has_result = false;
		if (shutdown_cancelled && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			/* not the job's fault: release it, attempt not counted */
			outcome->released = true;
			outcome->message = pstrdup("worker was stopped while running the job");
		}
		else if (job_timed_out && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			outcome->timed_out = true;
			outcome->message = psprintf("job exceeded its timeout of " INT64_FORMAT " ms",
										job->timeout_ms);
			outcome->detail = NULL;
		}
		else
		{
			outcome->message = edata->message ? pstrdup(edata->message) : pstrdup("unknown error");
			outcome->detail = edata->detail;
		}
		strlcpy(outcome->sqlstate, unpack_sql_state(edata->sqlerrcode),
				sizeof(outcome->sqlstate));
		outcome->hint = edata->hint;
		outcome->context = edata->context;
		job_timed_out = false;
		shutdown_cancelled = false;
	}
	PG_END_TRY();
}

/*
 * note_waiting_rows
 *		The rows SPI_tuptable holds, (queue, priority, run_at, id), are jobs
 *		waiting again: lower their queue's claim floor at commit.
 */
static void
note_waiting_rows(void)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerClaimKey key;
		bool		isnull;

		key.priority = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		key.run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		key.id = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		atomizer_note_waiting(SPI_getvalue(tup, desc, 1), &key);
	}
}

/*
 * atomizer_record_outcome
 *		Write a job's outcome in the current transaction.  retry_in, if not
 *		NULL, replaces the queue's backoff for the next attempt.
 */
void
atomizer_record_outcome(AtomizerJob *job, AtomizerOutcome *outcome,
						const Interval *retry_in)
{
	static SPIPlanPtr error_plan = NULL;
	static SPIPlanPtr retry_plan = NULL;
	AtomizerPrivState priv;

	atomizer_become_owner(&priv);
	SPI_connect();

	if (outcome->ok)
	{
		(void) atomizer_finish_job(job->id, "succeeded", outcome->result,
								   !outcome->has_result, NULL);
	}
	else if (outcome->released)
		atomizer_release_job(job->id, false);
	else
	{
		Datum		values[7];
		char		nulls[7];

		if (error_plan == NULL)
		{
			Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID,
			TEXTOID, TEXTOID};

			error_plan = SPI_prepare("INSERT INTO atomizer.job_error "
									 "(job_id, attempt, owner, queue, sqlstate,"
									 " message, detail, hint, context) "
									 "SELECT id, attempt, owner, queue, $2, $3,"
									 " $4, $5, $6 FROM atomizer.job WHERE id = $1",
									 6, types);
			if (error_plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s",
					 SPI_result_code_string(SPI_result));
			SPI_keepplan(error_plan);
		}
		if (retry_plan == NULL)
		{
			Oid			types[3] = {INT8OID, TEXTOID, INTERVALOID};

			retry_plan = SPI_prepare("UPDATE atomizer.job j SET"
									 " state = 'available', worker = NULL,"
									 " lease_until = NULL, last_error = $2,"
									 " run_at = clock_timestamp() + make_interval(secs =>"
									 "  least(coalesce(extract(epoch FROM $3)::float8,"
									 "   least(extract(epoch FROM q.backoff_cap)::float8,"
									 "    extract(epoch FROM q.backoff_base)::float8"
									 "    * power(2::float8, least(j.attempt - 1, 60)))"
									 "   * (1 - q.backoff_jitter * random())), "
									 "extract(epoch FROM interval '" ATOMIZER_MAX_DELAY_TEXT "')::float8)) "
									 "FROM atomizer.queue q "
									 "WHERE j.id = $1 AND q.name = j.queue "
									 "RETURNING j.queue, j.priority::int4, j.run_at, j.id",
									 3, types);
			if (retry_plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s",
					 SPI_result_code_string(SPI_result));
			SPI_keepplan(retry_plan);
		}

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(job->id);
		values[1] = CStringGetTextDatum(outcome->sqlstate);
		nulls[1] = outcome->sqlstate[0] ? ' ' : 'n';
		values[2] = CStringGetTextDatum(outcome->message);
		values[3] = outcome->detail ? CStringGetTextDatum(outcome->detail) : (Datum) 0;
		nulls[3] = outcome->detail ? ' ' : 'n';
		values[4] = outcome->hint ? CStringGetTextDatum(outcome->hint) : (Datum) 0;
		nulls[4] = outcome->hint ? ' ' : 'n';
		values[5] = outcome->context ? CStringGetTextDatum(outcome->context) : (Datum) 0;
		nulls[5] = outcome->context ? ' ' : 'n';
		if (SPI_execute_plan(error_plan, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record error of job " INT64_FORMAT, job->id);

		if (job->attempt >= job->max_attempts)
			(void) atomizer_finish_job(job->id, "dead", (Datum) 0, true,
									   outcome->message);
		else
		{
			Datum		rvalues[3];
			char		rnulls[3] = {' ', ' ', ' '};

			rvalues[0] = Int64GetDatum(job->id);
			rvalues[1] = CStringGetTextDatum(outcome->message);
			rvalues[2] = retry_in ? IntervalPGetDatum(retry_in) : (Datum) 0;
			rnulls[2] = retry_in ? ' ' : 'n';
			if (SPI_execute_plan(retry_plan, rvalues, rnulls, false, 0) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "could not schedule retry of job " INT64_FORMAT, job->id);
			note_waiting_rows();
		}
	}

	SPI_finish();
	atomizer_restore_caller(&priv);
}

/*
 * atomizer_release_job
 *		Put a running job back, available now, its attempt not counted; solo
 *		makes it run in a batch of its own next time.  The caller is
 *		connected to SPI and runs as the owner.
 */
void
atomizer_release_job(int64 id, bool solo)
{
	static SPIPlanPtr plan = NULL;
	Datum		values[2];

	if (plan == NULL)
	{
		Oid			types[2] = {INT8OID, BOOLOID};

		plan = SPI_prepare("UPDATE atomizer.job SET state = 'available',"
						   " attempt = greatest(attempt - 1, 0), worker = NULL,"
						   " started_at = NULL, lease_until = NULL,"
						   " solo = solo OR $2 "
						   "WHERE id = $1 AND state = 'running' "
						   "RETURNING queue, priority::int4, run_at, id", 2, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	values[0] = Int64GetDatum(id);
	values[1] = BoolGetDatum(solo);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not release job " INT64_FORMAT, id);
	note_waiting_rows();
}

typedef struct RecordArgs
{
	AtomizerJob *job;
	AtomizerOutcome *outcome;
	bool		release_solo;
} RecordArgs;

static void
record_cb(void *arg)
{
	RecordArgs *a = (RecordArgs *) arg;

	if (a->release_solo)
	{
		AtomizerPrivState priv;

		atomizer_become_owner(&priv);
		SPI_connect();
		atomizer_release_job(a->job->id, true);
		SPI_finish();
		atomizer_restore_caller(&priv);
	}
	else
		atomizer_record_outcome(a->job, a->outcome, NULL);
}

static void
set_aside_cb(void *arg)
{
	RecordArgs *a = (RecordArgs *) arg;
	AtomizerPrivState priv;

	atomizer_become_owner(&priv);
	SPI_connect();
	if (!atomizer_finish_job(a->job->id, "dead", (Datum) 0, true,
							 a->outcome->message))
		elog(ERROR, "job " INT64_FORMAT " is gone", a->job->id);
	SPI_finish();
	atomizer_restore_caller(&priv);
}

/*
 * atomizer_record_or_set_aside
 *		For the scheduler's duties: record a job's outcome (or, with
 *		release_solo, put it back to run alone) in a subtransaction.  If
 *		that fails (a trigger raises, a setting cannot be applied), the job
 *		is set aside instead: dead, its last error saying what could not be
 *		written and why, and a LOG line naming the duty, so that the row is
 *		not tried again at every pass.  If even that fails, the error is
 *		thrown: the duty as a whole fails and is retried with backoff.
 *		Returns false when the job was set aside.
 */
bool
atomizer_record_or_set_aside(AtomizerJob *job, AtomizerOutcome *outcome,
							 bool release_solo, const char *duty)
{
	RecordArgs	args = {job, outcome, release_solo};
	AtomizerOutcome dead;
	ErrorData  *edata;
	ErrorData  *again;

	edata = atomizer_try(record_cb, &args);
	if (edata == NULL)
		return true;

	memset(&dead, 0, sizeof(dead));
	dead.message = psprintf("set aside by the scheduler's %s: %s%s%s",
							duty, edata->message,
							outcome && outcome->message ? "; while recording: " : "",
							outcome && outcome->message ? outcome->message : "");
	args.outcome = &dead;
	again = atomizer_try(set_aside_cb, &args);
	if (again != NULL)
		ReThrowError(again);
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("atomizer: job " INT64_FORMAT " of queue \"%s\" set aside as dead: its outcome could not be recorded: %s",
					job->id, job->queue ? job->queue : "?", edata->message),
			 edata->context ? errcontext_msg("%s", edata->context) : 0,
			 errhint("The job's last_error in atomizer.dead_jobs has the reason; atomizer.retry(" INT64_FORMAT ") runs it again once the cause is fixed.",
					 job->id)));
	FreeErrorData(edata);
	return false;
}

/*
 * run_queue
 *		Claim and run up to max_jobs (-1: no limit) due jobs of one queue in
 *		batches of atomizer.batch_size.  Returns the number of jobs run.
 */
static int
run_queue(const char *queue, int max_jobs, const char *owner_filter,
		  const char *worker)
{
	MemoryContext batch_cxt;
	MemoryContext old;
	int			total = 0;

	batch_cxt = AllocSetContextCreate(CurrentMemoryContext,
									  "atomizer batch",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		AtomizerJob *jobs;
		int			want = atomizer_batch_size;
		int			n;

		if (max_jobs >= 0)
			want = Min(want, max_jobs - total);
		if (want <= 0)
			break;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(batch_cxt);
		n = atomizer_claim_jobs(queue, want, owner_filter, worker, NULL, NULL,
								&jobs);
		for (int i = 0; i < n; i++)
		{
			AtomizerOutcome outcome;

			CHECK_FOR_INTERRUPTS();
			pgstat_report_activity(STATE_RUNNING, psprintf("atomizer job " INT64_FORMAT ": %s", jobs[i].id, jobs[i].handler));
			atomizer_run_job(&jobs[i], &outcome);
			atomizer_record_outcome(&jobs[i], &outcome, NULL);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		total += n;
		if (n < want)
			break;
	}
	MemoryContextDelete(batch_cxt);
	return total;
}

/*
 * atomizer.run_pending(queue text, max_jobs int) RETURNS int
 *		Run due jobs of one queue (or of every internal queue that is not
 *		paused) now, in this session and transaction.  A non-admin runs only
 *		the jobs it enqueued: other roles' handlers must never run with this
 *		session's settings.  Returns the number of jobs run.
 */
Datum
atomizer_run_pending(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	char	   *owner_filter = NULL;
	int			max_jobs = -1;
	int			total = 0;
	List	   *queues;
	ListCell   *lc;
	char	   *save_activity = NULL;

	if (!PG_ARGISNULL(1))
	{
		max_jobs = PG_GETARG_INT32(1);
		if (max_jobs < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_jobs must not be negative")));
	}
	if (running_jobs)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("atomizer.run_pending() cannot be called from a job handler")));
	if (!atomizer_is_admin(caller))
		owner_filter = atomizer_role_name(caller);

	if (!PG_ARGISNULL(0))
	{
		AtomizerQueue queue;

		atomizer_require_queue(text_to_cstring(PG_GETARG_TEXT_PP(0)), &queue);
		if (queue.external)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("queue \"%s\" is external", queue.name),
					 errhint("Jobs of external queues are claimed by external workers with atomizer.claim().")));
		if (queue.paused)
		{
			ereport(NOTICE,
					(errmsg("queue \"%s\" is paused", queue.name),
					 errhint("Resume it with atomizer.resume_queue('%s').", queue.name)));
			PG_RETURN_INT32(0);
		}
		queues = list_make1(queue.name);
	}
	else
		queues = atomizer_runnable_queues();

	if (debug_query_string)
		save_activity = pstrdup(debug_query_string);
	running_jobs = true;
	PG_TRY();
	{
		foreach(lc, queues)
		{
			int			remaining = max_jobs < 0 ? -1 : max_jobs - total;

			if (remaining == 0)
				break;
			total += run_queue((char *) lfirst(lc), remaining, owner_filter,
							   NULL);
		}
	}
	PG_FINALLY();
	{
		running_jobs = false;
	}
	PG_END_TRY();
	if (save_activity)
		pgstat_report_activity(STATE_RUNNING, save_activity);

	PG_RETURN_INT32(total);
}
