/*-------------------------------------------------------------------------
 *
 * jobs.c
 *	  The job-producing and job-steering half of the SQL API: enqueue,
 *	  enqueue_many, cancel, retry and purge, and the statement that moves a
 *	  job from the hot table atomizer.job to atomizer.job_history when it
 *	  finishes (shared with dispatch.c).
 *
 *	  Each function validates its arguments and the caller's rights, then
 *	  reads and writes atomizer's tables as the extension owner (see
 *	  privilege.c).  A job's owner is always the calling role.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "access/tupdesc.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_enqueue);
PG_FUNCTION_INFO_V1(atomizer_enqueue_many);
PG_FUNCTION_INFO_V1(atomizer_cancel);
PG_FUNCTION_INFO_V1(atomizer_retry);
PG_FUNCTION_INFO_V1(atomizer_purge);

/* Arguments shared by enqueue and enqueue_many, validated. */
typedef AtomizerNewJobs EnqueueArgs;

/*
 * atomizer_prepare
 *		SPI_prepare + SPI_keepplan of a statement, once per backend: *cache
 *		keeps the plan (the plan cache replans it when the tables change).
 */
SPIPlanPtr
atomizer_prepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

/*
 * atomizer_interval_ms
 *		An interval in milliseconds, with months of 30 days (as EXTRACT(epoch)
 *		counts them).
 */
int64
atomizer_interval_ms(const Interval *iv)
{
	int64		days = (int64) iv->month * DAYS_PER_MONTH + iv->day;
	int64		usecs;

#ifdef INTERVAL_NOT_FINITE
	/* 17 has infinite intervals */
	if (INTERVAL_IS_NOBEGIN(iv))
		return PG_INT64_MIN;
	if (INTERVAL_IS_NOEND(iv))
		return PG_INT64_MAX;
#endif
	/* saturate instead of wrapping around (interval's range is wider) */
	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &usecs) ||
		pg_add_s64_overflow(usecs, iv->time, &usecs))
		return days < 0 ? PG_INT64_MIN : PG_INT64_MAX;
	return usecs / 1000;
}

/*
 * require_arg
 *		ERROR if a required argument is NULL.
 */
static void
require_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/*
 * atomizer_check_payload
 *		A payload is a JSON object or array; a scalar is almost always a
 *		mistake (a forgotten jsonb_build_object) and would surprise a handler.
 */
void
atomizer_check_payload(Jsonb *payload, int index)
{
	if (!JB_ROOT_IS_SCALAR(payload))
		return;
	if (index > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payload %d is not a JSON object or array", index),
				 errhint("Wrap a scalar in an object, e.g. jsonb_build_object('value', ...).")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("payload must be a JSON object or array"),
			 errhint("Wrap a scalar in an object, e.g. jsonb_build_object('value', ...).")));
}

/*
 * atomizer_check_interval
 *		ERROR unless iv is greater than zero (or, with allow_zero, not
 *		negative) and at most max_ms milliseconds, ATOMIZER_MAX_TIMEOUT_MS
 *		or ATOMIZER_MAX_DELAY_MS; the error names the limit.
 */
void
atomizer_check_interval(const Interval *iv, const char *name, bool allow_zero,
						int64 max_ms)
{
	int64		ms = atomizer_interval_ms(iv);
	char	   *given;

	if (ms > 0 && ms <= max_ms)
		return;					/* the common case: no formatting */
	given = DatumGetCString(DirectFunctionCall1(interval_out,
												IntervalPGetDatum(iv)));
	if (ms < 0 || (ms == 0 && !allow_zero))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(allow_zero ? "%s must not be negative" : "%s must be positive",
						name),
				 errdetail("The value given was %s.", given)));
	if (ms > max_ms)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %s", name,
						max_ms == ATOMIZER_MAX_TIMEOUT_MS ? ATOMIZER_MAX_TIMEOUT_TEXT :
						ATOMIZER_MAX_DELAY_TEXT),
				 errdetail("The value given was %s.", given)));
}

/*
 * atomizer_check_job_settings
 *		Validate the per-job settings enqueue and schedule share, by argument
 *		number: priority (required, in range), max_attempts and timeout
 *		(positive, or NULL for the queue's).
 */
void
atomizer_check_job_settings(FunctionCallInfo fcinfo, int priority_arg,
							int max_attempts_arg, int timeout_arg)
{
	int32		priority;

	require_arg(fcinfo, priority_arg, "priority");
	priority = PG_GETARG_INT32(priority_arg);
	if (priority < ATOMIZER_PRIORITY_MIN || priority > ATOMIZER_PRIORITY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("priority %d is out of range", priority),
				 errdetail("Priorities run from %d to %d; lower values run first.",
						   ATOMIZER_PRIORITY_MIN, ATOMIZER_PRIORITY_MAX)));
	if (!PG_ARGISNULL(max_attempts_arg) && PG_GETARG_INT32(max_attempts_arg) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be positive"),
				 errdetail("The value given was %d.", PG_GETARG_INT32(max_attempts_arg)),
				 errhint("Pass NULL to use the queue's max_attempts.")));
	if (!PG_ARGISNULL(timeout_arg))
		atomizer_check_interval(PG_GETARG_INTERVAL_P(timeout_arg), "timeout",
								false, ATOMIZER_MAX_TIMEOUT_MS);
}

/*
 * atomizer_job_handler
 *		The handler to store for a job of queue: for an internal queue the
 *		resolved, schema-qualified function (roleid must be able to run it);
 *		for an external queue the task name as given, which must not be empty.
 */
char *
atomizer_job_handler(const char *handler, const AtomizerQueue *queue, Oid roleid)
{
	if (!queue->external)
		return atomizer_resolve_handler(handler, roleid);
	if (handler[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("handler must not be empty")));
	return pstrdup(handler);
}

/*
 * parse_enqueue_args
 *		Validate the arguments enqueue and enqueue_many share: handler (0),
 *		queue (2), run_at (3), priority (4), max_attempts (5), timeout (6).
 *		Nothing is written before all of them are checked.
 */
static void
parse_enqueue_args(FunctionCallInfo fcinfo, EnqueueArgs *args)
{
	Oid			caller = GetUserId();
	AtomizerQueue queue;

	require_arg(fcinfo, 0, "handler");
	require_arg(fcinfo, 2, "queue");
	require_arg(fcinfo, 3, "run_at");

	args->queue = text_to_cstring(PG_GETARG_TEXT_PP(2));
	args->run_at = PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(args->run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite timestamp")));

	atomizer_check_job_settings(fcinfo, 4, 5, 6);
	args->priority = PG_GETARG_INT32(4);
	args->max_attempts_null = PG_ARGISNULL(5);
	args->max_attempts = args->max_attempts_null ? 0 : PG_GETARG_INT32(5);
	args->timeout_null = PG_ARGISNULL(6);
	args->timeout = args->timeout_null ? NULL : PG_GETARG_INTERVAL_P(6);

	atomizer_require_queue(args->queue, &queue);
	args->external = queue.external;
	args->paused = queue.paused;
	args->handler = atomizer_job_handler(text_to_cstring(PG_GETARG_TEXT_PP(0)),
										 &queue, caller);

	args->owner = atomizer_role_name(caller);
}

/*
 * note_enqueued
 *		At commit: lower the queue's claim floor to the first new job (all
 *		new jobs share priority and run_at, and ids grow), and wake whoever
 *		runs the queue.  A job found by its idempotency key is not new, but
 *		noting it is harmless.
 */
static void
note_enqueued(const EnqueueArgs *args, int64 first_id)
{
	AtomizerClaimKey key;

	key.priority = args->priority;
	key.run_at = args->run_at;
	key.id = first_id;
	atomizer_note_waiting(args->queue, &key);
	if (args->paused)
		;						/* resume_queue() wakes whoever runs it */
	else if (args->external)
		atomizer_note_external(args->queue);
	else
		atomizer_note_enqueue(args->queue);
}

/*
 * atomizer.enqueue(handler, payload, queue, run_at, priority, max_attempts,
 *					timeout, idempotency_key) RETURNS bigint
 *		Insert one job in the caller's transaction.  With an idempotency key
 *		that an unfinished job of the same queue already has, return that
 *		job's id and insert nothing; concurrent duplicates wait for each other
 *		on the unique index, so exactly one job is created.
 */
Datum
atomizer_enqueue(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr existing_plan = NULL;
	EnqueueArgs args;
	Jsonb	   *payload;
	char	   *key = NULL;
	AtomizerPrivState priv;
	Datum		values[9];
	char		nulls[9];
	int64		id = 0;
	bool		done = false;

	parse_enqueue_args(fcinfo, &args);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}' when the job needs no payload.")));
	payload = PG_GETARG_JSONB_P(1);
	atomizer_check_payload(payload, 0);
	if (!PG_ARGISNULL(7))
	{
		key = text_to_cstring(PG_GETARG_TEXT_PP(7));
		if (key[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency_key must not be empty"),
					 errhint("Pass NULL for a job without an idempotency key.")));
	}

	/* Without a key there is no conflict to handle: write the row directly. */
	if (key == NULL)
	{
		Datum		payload_datum = JsonbPGetDatum(payload);

		if (atomizer_store_jobs(&args, &payload_datum, 1, &id))
		{
			note_enqueued(&args, id);
			PG_RETURN_INT64(id);
		}
	}

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(args.queue);
	values[1] = CStringGetTextDatum(args.handler);
	values[2] = JsonbPGetDatum(payload);
	values[3] = TimestampTzGetDatum(args.run_at);
	values[4] = Int32GetDatum(args.priority);
	values[5] = Int32GetDatum(args.max_attempts);
	nulls[5] = args.max_attempts_null ? 'n' : ' ';
	values[6] = args.timeout_null ? (Datum) 0 : IntervalPGetDatum(args.timeout);
	nulls[6] = args.timeout_null ? 'n' : ' ';
	values[7] = CStringGetTextDatum(args.owner);
	values[8] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[8] = key ? ' ' : 'n';

	atomizer_become_owner(&priv);
	SPI_connect();

	{
		Oid			types[9] = {TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID,
		INT4OID, INT4OID, INTERVALOID, TEXTOID, TEXTOID};
		Oid			lookup_types[3] = {TEXTOID, TEXTOID, TEXTOID};

		atomizer_prepare(&insert_plan,
					 "INSERT INTO atomizer.job "
					 "(queue, handler, payload, run_at, priority, max_attempts,"
					 " timeout, owner, idempotency_key) "
					 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::name, $9) "
					 "ON CONFLICT (queue, owner, idempotency_key) "
					 "WHERE idempotency_key IS NOT NULL DO NOTHING "
					 "RETURNING id", 9, types);
		/* keys are the enqueuing role's own: another role's are not seen */
		atomizer_prepare(&existing_plan,
					 "SELECT id FROM atomizer.job "
					 "WHERE queue = $1 AND idempotency_key = $2 "
					 "AND owner = $3::name", 3, lookup_types);
	}

	/*
	 * The conflicting job may finish (and leave the hot table) between our
	 * insert and our look-up; then the key is free again and we retry.
	 */
	while (!done)
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		if (SPI_execute_plan(insert_plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert job");
		if (SPI_processed == 1)
		{
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
			done = true;
		}
		else
		{
			Datum		lookup[3] = {values[0], values[8], values[7]};

			if (SPI_execute_plan(existing_plan, lookup, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not look up job by idempotency key");
			if (SPI_processed == 1)
			{
				id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
				done = true;
			}
		}
	}

	SPI_finish();
	atomizer_restore_caller(&priv);
	note_enqueued(&args, id);

	PG_RETURN_INT64(id);
}

/*
 * compare_int64
 *		qsort comparator for job ids.
 */
static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * materialize_ids
 *		Return ids as the result set of a SETOF bigint function.
 */
static void
materialize_ids(ReturnSetInfo *rsinfo, int64 *ids, uint64 nids)
{
	MemoryContext old;
	TupleDesc	desc;
	Tuplestorestate *store;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));

	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	desc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(desc, (AttrNumber) 1, "id", INT8OID, -1, 0);
	store = tuplestore_begin_heap(true, false, work_mem);
	for (uint64 i = 0; i < nids; i++)
	{
		Datum		value = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(store, desc, &value, &isnull);
	}
	MemoryContextSwitchTo(old);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = desc;
}

/*
 * atomizer.enqueue_many(handler, payloads, queue, run_at, priority,
 *						 max_attempts, timeout) RETURNS SETOF bigint
 *		Insert one job per payload with a single INSERT ... SELECT; the ids
 *		come back in the order of payloads (they are drawn from the sequence
 *		in that order, so ascending order is payload order).
 */
Datum
atomizer_enqueue_many(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext caller_cxt = CurrentMemoryContext;
	EnqueueArgs args;
	ArrayType  *payloads;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int64	   *ids;
	uint64		nids;
	AtomizerPrivState priv;
	Datum		values[8];
	char		nulls[8];

	parse_enqueue_args(fcinfo, &args);
	require_arg(fcinfo, 1, "payloads");

	payloads = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(payloads) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("payloads must be a one-dimensional array")));
	deconstruct_array(payloads, JSONBOID, -1, false, TYPALIGN_INT,
					  &elems, &elem_nulls, &nelems);
	for (int i = 0; i < nelems; i++)
	{
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("payload %d is null", i + 1),
					 errhint("Pass '{}' for a job that needs no payload.")));
		atomizer_check_payload(DatumGetJsonbP(elems[i]), i + 1);
	}
	if (nelems == 0)
	{
		materialize_ids(rsinfo, NULL, 0);
		return (Datum) 0;
	}

	ids = MemoryContextAlloc(caller_cxt, sizeof(int64) * nelems);
	if (atomizer_store_jobs(&args, elems, nelems, ids))
	{
		/* ids ascend: drawn in payload order */
		note_enqueued(&args, ids[0]);
		materialize_ids(rsinfo, ids, nelems);
		return (Datum) 0;
	}

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(args.queue);
	values[1] = CStringGetTextDatum(args.handler);
	values[2] = PointerGetDatum(payloads);
	values[3] = TimestampTzGetDatum(args.run_at);
	values[4] = Int32GetDatum(args.priority);
	values[5] = Int32GetDatum(args.max_attempts);
	nulls[5] = args.max_attempts_null ? 'n' : ' ';
	values[6] = args.timeout_null ? (Datum) 0 : IntervalPGetDatum(args.timeout);
	nulls[6] = args.timeout_null ? 'n' : ' ';
	values[7] = CStringGetTextDatum(args.owner);

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[8] = {TEXTOID, TEXTOID, JSONBARRAYOID, TIMESTAMPTZOID,
		INT4OID, INT4OID, INTERVALOID, TEXTOID};

		atomizer_prepare(&plan,
					 "INSERT INTO atomizer.job "
					 "(id, queue, handler, payload, run_at, priority,"
					 " max_attempts, timeout, owner) "
					 "SELECT nextval('atomizer.job_id_seq'), $1, $2, p, $4, $5,"
					 " $6, $7, $8::name FROM unnest($3) AS p "
					 "RETURNING id", 8, types);
	}
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert jobs");

	nids = SPI_processed;
	Assert(nids == nelems);
	for (uint64 i = 0; i < nids; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	qsort(ids, nids, sizeof(int64), compare_int64);
	note_enqueued(&args, ids[0]);

	materialize_ids(rsinfo, ids, nids);
	return (Datum) 0;
}

/*
 * atomizer_finish_job
 *		Move job id from atomizer.job to atomizer.job_history in final state
 *		"state" ('succeeded', 'dead' or 'cancelled'), with its result and last
 *		error.  The caller is connected to SPI and runs as the owner.
 *		Returns false if the job was not in the hot table.
 */
bool
atomizer_finish_job(int64 id, const char *state, Datum result,
					bool result_isnull, const char *error)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {INT8OID, TEXTOID, JSONBOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	atomizer_prepare(&plan,
				 "WITH d AS (DELETE FROM atomizer.job WHERE id = $1 RETURNING *) "
				 "INSERT INTO atomizer.job_history "
				 "(id, queue, handler, payload, state, priority, run_at, attempt,"
				 " max_attempts, timeout, owner, idempotency_key, created_at,"
				 " started_at, finished_at, result, last_error, schedule_id) "
				 "SELECT id, queue, handler, payload, $2, priority, run_at, attempt,"
				 " max_attempts, timeout, owner, idempotency_key, created_at,"
				 " started_at, clock_timestamp(), $3, coalesce($4, last_error),"
				 " schedule_id "
				 "FROM d", 4, types);

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(state);
	values[2] = result;
	nulls[2] = result_isnull ? 'n' : ' ';
	values[3] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[3] = error ? ' ' : 'n';

	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not finish job " INT64_FORMAT, id);
	return SPI_processed == 1;
}

/*
 * atomizer_finish_succeeded
 *		Move n succeeded jobs to the history at once, with their results
 *		(results[i] NULL for none).  One statement for a whole batch: the
 *		workers call it just before they commit the batch.
 */
void
atomizer_finish_succeeded(int64 *ids, Datum *results, bool *result_nulls, int n)
{
	static SPIPlanPtr plan = NULL;
	AtomizerPrivState priv;
	Datum	   *id_datums;
	Datum		values[2];
	int			dims[1];
	int			lbs[1] = {1};

	if (n == 0)
		return;
	id_datums = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		id_datums[i] = Int64GetDatum(ids[i]);
	dims[0] = n;
	values[0] = PointerGetDatum(construct_array(id_datums, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_md_array(results, result_nulls, 1, dims,
												   lbs, JSONBOID, -1, false,
												   TYPALIGN_INT));

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[2] = {INT8ARRAYOID, JSONBARRAYOID};

		atomizer_prepare(&plan,
					 "WITH r AS (SELECT * FROM unnest($1, $2) AS r(id, result)), "
					 "d AS (DELETE FROM atomizer.job j USING r WHERE j.id = r.id"
					 " RETURNING j.*, r.result AS new_result) "
					 "INSERT INTO atomizer.job_history "
					 "(id, queue, handler, payload, state, priority, run_at, attempt,"
					 " max_attempts, timeout, owner, idempotency_key, created_at,"
					 " started_at, finished_at, result, last_error, schedule_id) "
					 "SELECT id, queue, handler, payload, 'succeeded', priority,"
					 " run_at, attempt, max_attempts, timeout, owner,"
					 " idempotency_key, created_at, started_at, clock_timestamp(),"
					 " new_result, last_error, schedule_id FROM d", 2, types);
	}
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record %d succeeded jobs", n);
	SPI_finish();
	atomizer_restore_caller(&priv);
}

/*
 * caller_filter
 *		The owner a non-admin caller is restricted to, as a text Datum, or
 *		NULL (no restriction) for admins.
 */
static char *
caller_filter(void)
{
	Oid			caller = GetUserId();

	return atomizer_is_admin(caller) ? NULL : atomizer_role_name(caller);
}

/*
 * atomizer.cancel(job_id bigint) RETURNS boolean
 *		Cancel a job that is waiting (scheduled, available or retrying).
 *		False if it is running, finished, or not one the caller may see.
 *		A job being claimed right now is waited for, then found running.
 */
Datum
atomizer_cancel(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	char	   *owner;
	AtomizerPrivState priv;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		cancelled = false;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	owner = caller_filter();
	values[0] = Int64GetDatum(PG_GETARG_INT64(0));
	values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[1] = owner ? ' ' : 'n';

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[2] = {INT8OID, TEXTOID};

		atomizer_prepare(&plan,
					 "SELECT 1 FROM atomizer.job WHERE id = $1 "
					 "AND state = 'available' "
					 "AND ($2::name IS NULL OR owner = $2::name) FOR UPDATE",
					 2, types);
	}
	atomizer_note_job_locks();
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job");
	if (SPI_processed == 1)
		cancelled = atomizer_finish_job(PG_GETARG_INT64(0), "cancelled",
										(Datum) 0, true, NULL);
	SPI_finish();
	atomizer_restore_caller(&priv);

	PG_RETURN_BOOL(cancelled);
}

/*
 * atomizer.retry(job_id bigint) RETURNS boolean
 *		Send a dead (or cancelled) job back to its queue, available now, with
 *		its attempts counted from zero again.  False if the job is not dead or
 *		cancelled or not one the caller may see.
 */
Datum
atomizer_retry(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr find_plan = NULL;
	static SPIPlanPtr dup_plan = NULL;
	static SPIPlanPtr move_plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	char	   *owner;
	AtomizerPrivState priv;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	char	   *queue = NULL;
	bool		retried = false;
	int64		job_id;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	job_id = PG_GETARG_INT64(0);
	owner = caller_filter();
	values[0] = Int64GetDatum(job_id);
	values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[1] = owner ? ' ' : 'n';

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[2] = {INT8OID, TEXTOID};

		atomizer_prepare(&find_plan,
					 "SELECT queue, idempotency_key, owner::text FROM atomizer.job_history "
					 "WHERE id = $1 AND state IN ('dead', 'cancelled') "
					 "AND ($2::name IS NULL OR owner = $2::name) FOR UPDATE",
					 2, types);
		{
			Oid			dup_types[3] = {TEXTOID, TEXTOID, TEXTOID};

			atomizer_prepare(&dup_plan,
						 "SELECT id FROM atomizer.job "
						 "WHERE queue = $1 AND idempotency_key = $2 "
						 "AND owner = $3::name", 3, dup_types);
		}
		types[0] = INT8OID;
		atomizer_prepare(&move_plan,
					 "WITH d AS (DELETE FROM atomizer.job_history WHERE id = $1"
					 " RETURNING *) "
					 "INSERT INTO atomizer.job "
					 "(id, queue, handler, payload, state, priority, run_at,"
					 " attempt, max_attempts, timeout, owner, idempotency_key,"
					 " created_at, last_error, schedule_id) "
					 "SELECT id, queue, handler, payload, 'available', priority,"
					 " now(), 0, max_attempts, timeout, owner, idempotency_key,"
					 " created_at, last_error, schedule_id FROM d", 1, types);
	}
	if (SPI_execute_plan(find_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job");
	if (SPI_processed == 1)
	{
		bool		key_isnull;
		Datum		key;
		AtomizerQueue q;

		queue = MemoryContextStrdup(caller_cxt,
									SPI_getvalue(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1));
		key = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							&key_isnull);

		if (!atomizer_lookup_queue(queue, &q))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot retry job " INT64_FORMAT ": queue \"%s\" no longer exists",
							job_id, queue),
					 errhint("Create the queue again with atomizer.create_queue('%s').",
							 queue)));
		if (!key_isnull)
		{
			bool		owner_isnull;
			Datum		dup[3] = {CStringGetTextDatum(queue), key,
			SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
						  &owner_isnull)};

			if (SPI_execute_plan(dup_plan, dup, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not look up job by idempotency key");
			if (SPI_processed == 1)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("cannot retry job " INT64_FORMAT ": another unfinished job of its owner in queue \"%s\" has the same idempotency key",
								job_id, queue)));
		}
		if (SPI_execute_plan(move_plan, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not retry job " INT64_FORMAT, job_id);
		retried = (SPI_processed == 1);
		if (retried)
			atomizer_note_waiting(queue, NULL);
		if (retried && q.external)
			atomizer_note_external(queue);
		else if (retried)
			atomizer_note_enqueue(queue);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);

	PG_RETURN_BOOL(retried);
}

/*
 * atomizer.purge(older_than interval, queue text) RETURNS bigint
 *		Delete finished jobs (succeeded, dead, cancelled) that finished at
 *		least older_than ago (NULL: all of them), of one queue or of all, with
 *		their error history.  Non-admins purge only their own jobs.
 */
Datum
atomizer_purge(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	char	   *owner;
	AtomizerPrivState priv;
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int64		count;
	bool		isnull;

	if (!PG_ARGISNULL(0))
	{
		atomizer_check_interval(PG_GETARG_INTERVAL_P(0), "older_than", true,
								ATOMIZER_MAX_DELAY_MS);
		values[0] = PG_GETARG_DATUM(0);
	}
	else
		nulls[0] = 'n';
	if (!PG_ARGISNULL(1))
	{
		atomizer_check_queue_name(text_to_cstring(PG_GETARG_TEXT_PP(1)));
		values[1] = PG_GETARG_DATUM(1);
	}
	else
		nulls[1] = 'n';
	owner = caller_filter();
	values[2] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[2] = owner ? ' ' : 'n';

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[3] = {INTERVALOID, TEXTOID, TEXTOID};

		atomizer_prepare(&plan,
					 "WITH d AS (DELETE FROM atomizer.job_history"
					 " WHERE finished_at <= now() - coalesce($1, interval '0')"
					 " AND ($2::text IS NULL OR queue = $2)"
					 " AND ($3::name IS NULL OR owner = $3::name) RETURNING id), "
					 "e AS (DELETE FROM atomizer.job_error e USING d"
					 " WHERE e.job_id = d.id) "
					 "SELECT count(*) FROM d", 3, types);
	}
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not purge jobs");
	count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	atomizer_restore_caller(&priv);

	PG_RETURN_INT64(count);
}
