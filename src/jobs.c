/*-------------------------------------------------------------------------
 *
 * jobs.c
 *	  The job-producing and job-steering half of the SQL API: enqueue,
 *	  enqueue_many, cancel, retry and purge; and the argument checks they
 *	  share with schedule() and the external workers' functions.
 *
 *	  Each function validates its arguments and the caller's rights, then
 *	  has the job store (jobstore.c) write, as the extension owner.  A job's
 *	  owner is always the calling role.
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

static char *caller_filter(void);

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
	return atomizer_prepare_opts(cache, sql, nargs, argtypes, 0);
}

/*
 * atomizer_prepare_opts
 *		atomizer_prepare with cursor options: CURSOR_OPT_GENERIC_PLAN for a
 *		statement whose custom plans cost more to make than they save (the
 *		plan cache would otherwise plan it again at every call while it
 *		judges custom plans cheaper).
 */
SPIPlanPtr
atomizer_prepare_opts(SPIPlanPtr *cache, const char *sql, int nargs,
					  Oid *argtypes, int cursor_options)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, cursor_options);

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
 * atomizer_delay_arg
 *		A snooze's delay argument in ms: not null, 0 to 1000 years.
 */
int64
atomizer_delay_arg(FunctionCallInfo fcinfo, int argno)
{
	Interval   *delay;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("delay must not be null"),
				 errhint("Use interval '0' for as soon as possible.")));
	delay = PG_GETARG_INTERVAL_P(argno);
	atomizer_check_interval(delay, "delay", true, ATOMIZER_MAX_DELAY_MS);
	return atomizer_interval_ms(delay);
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
	args->tags = (Datum) 0;
	args->tags_null = true;
	args->deps = false;
	args->blocked = false;
	args->blockers = 0;
	args->deps_run = false;
}

/*
 * parse_tags
 *		The tags argument (0.2.0's enqueue and enqueue_many): a
 *		one-dimensional text[] of non-empty tags, or NULL for none.
 */
static void
parse_tags(FunctionCallInfo fcinfo, int argno, EnqueueArgs *args)
{
	ArrayType  *tags;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return;
	tags = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(tags) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("tags must be a one-dimensional array")));
	deconstruct_array(tags, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	if (n > 100)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a job has at most 100 tags"),
				 errdetail("%d were given.", n)));
	for (int i = 0; i < n; i++)
		if (nulls[i] || VARSIZE_ANY_EXHDR(DatumGetPointer(elems[i])) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("tag %d is %s", i + 1, nulls[i] ? "null" : "empty"),
					 errhint("Leave it out, or pass NULL for no tags.")));
	if (n == 0)
		return;
	args->tags = PointerGetDatum(tags);
	args->tags_null = false;
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
 * notice_not_enqueued
 *		Tell the caller that its enqueue made no job: the key's job id is
 *		returned instead (and whether its payload differs), and when the
 *		key makes a job again.
 */
static void
notice_not_enqueued(int64 id, const char *queue, const char *key,
					bool same_payload, const char *again)
{
	ereport(NOTICE,
			(errmsg("no job was enqueued: job " INT64_FORMAT " of queue \"%s\" already has idempotency key \"%s\"",
					id, queue, key),
			 same_payload ? 0 :
			 errdetail("That job's payload differs from the one given, which was dropped."),
			 errhint("Its id is returned; %s.", again)));
}

/*
 * atomizer.enqueue(handler, payload, queue, run_at, priority, max_attempts,
 *					timeout, idempotency_key) RETURNS bigint
 *		Insert one job in the caller's transaction.  With an idempotency key
 *		that an unfinished job of the same queue already has, return that
 *		job's id, insert nothing, and say so in a NOTICE (with whether the
 *		payloads differ); concurrent duplicates wait for each other on the
 *		unique index, so exactly one job is created.
 */
Datum
atomizer_enqueue(PG_FUNCTION_ARGS)
{
	EnqueueArgs args;
	Jsonb	   *payload;
	char	   *key = NULL;
	int64		id = 0;
	AtomizerDeps deps;
	bool		has_deps;

	parse_enqueue_args(fcinfo, &args);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}' when the job needs no payload.")));
	payload = PG_GETARG_JSONB_P(1);
	atomizer_check_payload(payload, 0);
	parse_tags(fcinfo, 9, &args);
	has_deps = atomizer_deps_parse(fcinfo, 10, &deps);
	if (!PG_ARGISNULL(7))
	{
		key = text_to_cstring(PG_GETARG_TEXT_PP(7));
		if (key[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("idempotency_key must not be empty"),
					 errhint("Pass NULL for a job without an idempotency key.")));
	}

	/* dependencies (0.2.0): locked before the job is written */
	if (has_deps)
		atomizer_deps_lock(&deps, caller_filter());

	/* unique_for (0.2.0): the key makes one job per window */
	if (PG_NARGS() > 8 && !PG_ARGISNULL(8))
	{
		Interval   *unique_for = PG_GETARG_INTERVAL_P(8);
		bool		created;
		bool		same_payload;
		TimestampTz until;

		atomizer_check_interval(unique_for, "unique_for", false,
								ATOMIZER_MAX_DELAY_MS);
		if (key == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unique_for needs an idempotency_key"),
					 errhint("The key names what must not be enqueued twice within unique_for, e.g. idempotency_key => 'report:' || customer_id.")));
		id = atomizer_store_insert_unique(&args, JsonbPGetDatum(payload), key,
										  unique_for, &created, &same_payload,
										  &until);
		if (!created)
			notice_not_enqueued(id, args.queue, key, same_payload,
								psprintf("the key makes a new job after %s",
										 timestamptz_to_str(until)));
		if (!(created && has_deps && atomizer_deps_attach(&deps, &id, 1, args.owner, false)))
			note_enqueued(&args, id);
		PG_RETURN_INT64(id);
	}

	/* Without a key (or tags) there is no conflict to handle: write directly. */
	if (key == NULL && args.tags_null && !has_deps)
	{
		Datum		payload_datum = JsonbPGetDatum(payload);

		if (atomizer_store_jobs(&args, &payload_datum, 1, &id))
		{
			note_enqueued(&args, id);
			PG_RETURN_INT64(id);
		}
	}

	{
		bool		created;
		bool		same_payload;

		if (has_deps)
			atomizer_deps_preset(&deps, &args);
		id = atomizer_store_insert(&args, JsonbPGetDatum(payload), key,
								   &created, &same_payload);
		if (!created)
			notice_not_enqueued(id, args.queue, key, same_payload,
								"the key is free again once that job has finished");
		if (created && has_deps && atomizer_deps_attach(&deps, &id, 1, args.owner, true))
			PG_RETURN_INT64(id);	/* blocked: nothing to wake */
	}
	note_enqueued(&args, id);

	PG_RETURN_INT64(id);
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
 *						 max_attempts, timeout, idempotency_keys)
 *		RETURNS SETOF bigint
 *		Insert one job per payload with a single INSERT ... SELECT; the ids
 *		come back in the order of payloads (they are drawn from the sequence
 *		in that order, so ascending order is payload order).
 */
Datum
atomizer_enqueue_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext caller_cxt = CurrentMemoryContext;
	EnqueueArgs args;
	ArrayType  *payloads;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int64	   *ids;
	ArrayType  *keys = NULL;
	AtomizerDeps deps;
	bool		has_deps;

	parse_enqueue_args(fcinfo, &args);
	require_arg(fcinfo, 1, "payloads");
	parse_tags(fcinfo, 8, &args);
	has_deps = atomizer_deps_parse(fcinfo, 9, &deps);

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
	/* idempotency_keys (0.2.0): one per payload, NULL for none */
	if (PG_NARGS() > 7 && !PG_ARGISNULL(7))
	{
		Datum	   *kelems;
		bool	   *knulls;
		int			nkeys;
		bool		any = false;

		keys = PG_GETARG_ARRAYTYPE_P(7);
		if (ARR_NDIM(keys) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("idempotency_keys must be a one-dimensional array")));
		deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT,
						  &kelems, &knulls, &nkeys);
		if (nkeys != nelems)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("idempotency_keys must have one element per payload"),
					 errdetail("There are %d payloads and %d keys.", nelems, nkeys),
					 errhint("Use NULL for a payload without a key.")));
		for (int i = 0; i < nkeys; i++)
		{
			if (knulls[i])
				continue;
			if (VARSIZE_ANY_EXHDR(DatumGetPointer(kelems[i])) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("idempotency key %d is empty", i + 1),
						 errhint("Use NULL for a payload without a key.")));
			any = true;
		}
		if (!any)
			keys = NULL;
	}
	if (nelems == 0)
	{
		materialize_ids(rsinfo, NULL, 0);
		return (Datum) 0;
	}
	if (has_deps)
		atomizer_deps_lock(&deps, caller_filter());

	ids = MemoryContextAlloc(caller_cxt, sizeof(int64) * nelems);
	if (keys != NULL)
	{
		int			created;
		bool	   *made = palloc0(sizeof(bool) * nelems);
		bool		waits = false;

		/* ids in payload order, a key's existing job's id in its place */
		created = atomizer_store_insert_many_keyed(&args, payloads, keys,
												   nelems, ids, made);
		if (has_deps && created > 0)
		{
			int64	   *new_ids = palloc(sizeof(int64) * created);
			int			m = 0;

			for (int i = 0; i < nelems; i++)
				if (made[i])
					new_ids[m++] = ids[i];
			waits = atomizer_deps_attach(&deps, new_ids, m, args.owner, false);
		}
		if (created < nelems)
			ereport(NOTICE,
					(errmsg("%d of the %d jobs were not enqueued: jobs of queue \"%s\" already have their idempotency keys",
							nelems - created, nelems, args.queue),
					 errhint("Those jobs' ids are returned in their places.")));
		if (created > 0 && !waits)
			note_enqueued(&args, ids[0]);
		materialize_ids(rsinfo, ids, nelems);
		return (Datum) 0;
	}
	if (args.tags_null && !has_deps &&
		atomizer_store_jobs(&args, elems, nelems, ids))
	{
		/* ids ascend: drawn in payload order */
		note_enqueued(&args, ids[0]);
		materialize_ids(rsinfo, ids, nelems);
		return (Datum) 0;
	}

	if (has_deps)
		atomizer_deps_preset(&deps, &args);
	atomizer_store_insert_many(&args, payloads, nelems, ids);
	if (!(has_deps && atomizer_deps_attach(&deps, ids, nelems, args.owner, true)))
		note_enqueued(&args, ids[0]);

	materialize_ids(rsinfo, ids, nelems);
	return (Datum) 0;
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
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(atomizer_store_cancel(PG_GETARG_INT64(0), caller_filter()));
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
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(atomizer_store_retry(PG_GETARG_INT64(0), caller_filter()));
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
	Interval   *older_than = NULL;
	char	   *queue = NULL;

	if (!PG_ARGISNULL(0))
	{
		older_than = PG_GETARG_INTERVAL_P(0);
		atomizer_check_interval(older_than, "older_than", true,
								ATOMIZER_MAX_DELAY_MS);
	}
	if (!PG_ARGISNULL(1))
	{
		queue = text_to_cstring(PG_GETARG_TEXT_PP(1));
		atomizer_check_queue_name(queue);
	}
	PG_RETURN_INT64(atomizer_store_purge(older_than, queue, caller_filter()));
}
