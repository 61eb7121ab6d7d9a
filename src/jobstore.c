/*-------------------------------------------------------------------------
 *
 * jobstore.c
 *	  The job store: the only code that reads or writes atomizer.job (the
 *	  hot table of waiting and running jobs), atomizer.job_history (finished
 *	  jobs) and atomizer.job_error (every failed attempt).  Every statement
 *	  on those tables is in this file but the workflow moves (workflow.c:
 *	  blocked jobs and their release); the rest of atomizer calls the
 *	  functions below.  (store.c is its fast path for plain inserts, which
 *	  writes heap tuples without a statement.)
 *
 *	  What it owns:
 *
 *	  - the job states and their moves (src/README.md draws them):
 *		insert (available, or scheduled by its run_at), claim (running,
 *		attempt counted), finish (to the history: succeeded, dead,
 *		cancelled), fail an attempt (error recorded; available again after
 *		a backoff, or dead), release (available, attempt given back), retry
 *		(a dead or cancelled job back to available), purge and prune;
 *	  - the one claim path, for atomizer's workers, run_pending() and
 *		external claim() alike (atomizer_store_claim);
 *	  - the history's column list (HISTORY_COLUMNS);
 *	  - the worker identity written into a running job (AtomizerWorkerId,
 *		one format and one parse function);
 *	  - the claim floor's notes: every move that makes a job wait again
 *		tells wakeup.c its claim key, which lowers the floor at commit
 *		(floor.c keeps the floors);
 *	  - the owner/SPI sandwich: every function here may be called anywhere
 *		in a transaction, by any role.  It switches to the extension owner
 *		(privilege.c) and connects to SPI itself, and undoes both before it
 *		returns (store_begin/store_end); an error undoes them by aborting.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

/*
 * The history's columns, in the order every move to the history writes;
 * 0.2.0's objects add tags (TAGS: the column list's end, per generation).
 */
#define HISTORY_COLUMNS \
	"id, queue, handler, payload, state, priority, run_at, attempt," \
	" max_attempts, timeout, owner, idempotency_key, created_at," \
	" started_at, finished_at, result, last_error, schedule_id"

/*
 * schema_gen
 *		1 when this database has 0.2.0's job tables (with tags), 0 while it
 *		still has 0.1.0's (the library of 0.2.0 serves it until ALTER
 *		EXTENSION atomizer UPDATE): statements that move whole rows come in
 *		both forms.  Three syscache lookups.
 */
static int
schema_gen(void)
{
	Oid			ns = get_namespace_oid("atomizer", true);
	Oid			rel = OidIsValid(ns) ? get_relname_relid("job_history", ns) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "tags") != InvalidAttrNumber ? 1 : 0;
}

static const char *const TAGS[2] = {"", ", tags"};

/*
 * The claim index's predicate (0.2.0: parked IS NULL, so that no index
 * reads state and a worker's claim is a HOT update; 0.1.0: state =
 * 'available'), for the statements that scan it, which say state =
 * 'available' too.  parked is held, blocked or leased (running with an
 * external worker's lease).
 */
static const char *const UNPARKED[2] = {"", " AND parked IS NULL"};

/*
 * prepare_unparked
 *		Prepare, once per schema generation, the statement fmt that scans
 *		the claim index, each %s of it (one or two) standing for UNPARKED.
 */
static SPIPlanPtr
prepare_unparked(SPIPlanPtr *plans, const char *fmt, int nargs, Oid *types,
				 int cursor_opts)
{
	int			gen = schema_gen();

	if (plans[gen] == NULL)
		atomizer_prepare_opts(&plans[gen], psprintf(fmt, UNPARKED[gen], UNPARKED[gen]),
							  nargs, types, cursor_opts);
	return plans[gen];
}

/*
 * Purge and prune keep a finished job while an unfinished job depends on it
 * (its dependencies() read it), and take a purged job's own edges along.
 */
#define DEPENDED_ON(alias) \
	"EXISTS (SELECT 1 FROM atomizer.job_dependency x" \
	" JOIN atomizer.job c ON c.id = x.job_id WHERE x.depends_on = " alias ".id"
static const char *const KEEP_DEPENDED[2] = {"", " AND NOT " DEPENDED_ON("h") ")"};
/* the same, for pruning's candidates p: a probe per candidate */
static const char *const PRUNE_KEEP_DEPENDED[2] = {"",
	" WHERE NOT " DEPENDED_ON("p") " OFFSET 0)"};
static const char *const DROP_EDGES[2] = {"",
	", f AS (DELETE FROM atomizer.job_dependency x USING d WHERE x.job_id = d.id)"};

/* The columns every move between atomizer.job and the history copies. */
static const char *const MOVED[2] = {"", ", tags, on_dependency_failure"};

/* What a claim returns, and how a claimed job is read back. */
#define CLAIM_RETURNING \
	"RETURNING j.id, j.handler, j.payload, j.attempt," \
	" coalesce(j.max_attempts, q.max_attempts)," \
	" coalesce(j.timeout, q.timeout), j.owner::text," \
	" j.priority::int4, j.run_at, j.lease_until"

typedef struct StoreCall
{
	AtomizerPrivState priv;
} StoreCall;

/*
 * store_begin / store_end
 *		The owner/SPI sandwich around every statement of this file.
 */
static void
store_begin(StoreCall *call)
{
	atomizer_become_owner(&call->priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
store_end(StoreCall *call)
{
	SPI_finish();
	atomizer_restore_caller(&call->priv);
}

/*
 * run_one
 *		Execute plan, which must return exactly one row (SPI result code
 *		rc), or ERROR "could not <what>"; the row's column col, after.
 */
static Datum
run_one(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
		int rc, const char *what, int col, bool *isnull)
{
	if (SPI_execute_plan(plan, values, nulls, read_only, 0) != rc ||
		SPI_processed != 1)
		elog(ERROR, "could not %s", what);
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull);
}

/* ------------------------------------------------------------------------
 * The worker identity
 * ------------------------------------------------------------------------ */

/*
 * atomizer_worker_id_format
 *		"atomizer:<pid>:<start time>:<batch size>", palloc'd: a worker
 *		process of this server (its pid and start time tell it from a later
 *		process with the same pid) and the size of the batch the job was
 *		claimed in (the scheduler charges a dead worker's job only if it was
 *		alone).
 */
char *
atomizer_worker_id_format(const AtomizerWorkerId *id)
{
	return psprintf(ATOMIZER_WORKER_ID_PREFIX "%d:%ld:%d",
					id->pid, (long) id->start_time, id->batch);
}

/*
 * atomizer_worker_id_parse
 *		The reverse; false for an identity that is not one of our workers'
 *		(an external worker's name).
 */
bool
atomizer_worker_id_parse(const char *text, AtomizerWorkerId *id)
{
	int			pid;
	long		start;
	int			batch = 0;
	int			len = 0;

	if (text == NULL)
		return false;
	/* without the batch size (never written since 0.1.0): 0, unknown */
	if (sscanf(text, ATOMIZER_WORKER_ID_PREFIX "%d:%ld%n", &pid, &start, &len) != 2)
		return false;
	if (text[len] == ':')
	{
		int			more = 0;

		if (sscanf(text + len, ":%d%n", &batch, &more) != 1)
			return false;
		len += more;
	}
	if (text[len] != '\0')
		return false;
	id->pid = pid;
	id->start_time = (pg_time_t) start;
	id->batch = batch;
	return true;
}

/*
 * atomizer_worker_id_reserved
 *		Whether a worker name is in our workers' namespace (external
 *		workers may not use it).
 */
bool
atomizer_worker_id_reserved(const char *text)
{
	return text != NULL &&
		strncmp(text, ATOMIZER_WORKER_ID_PREFIX,
				strlen(ATOMIZER_WORKER_ID_PREFIX)) == 0;
}

/* ------------------------------------------------------------------------
 * Insert
 * ------------------------------------------------------------------------ */

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
 * note_outcome
 *		Count outcome kind of the job of SPI_tuptable's row i, whose columns
 *		from first on are (queue, started_at, run_at, finished): stats.c
 *		adds it up if this transaction commits.
 */
static void
note_outcome(AtomizerOutcomeKind kind, uint64 i, int first)
{
	HeapTuple	tup = SPI_tuptable->vals[i];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		started_null;
	bool		isnull;
	TimestampTz started = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 1,
															&started_null));
	TimestampTz run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 2,
														   &isnull));
	TimestampTz finished = DatumGetTimestampTz(SPI_getbinval(tup, desc, first + 3,
															 &isnull));
	int64		wait_us = -1;
	int64		run_us = -1;

	if (!started_null)
	{
		wait_us = Max(started - run_at, 0);
		run_us = Max(finished - started, 0);
	}
	atomizer_stats_note(SPI_getvalue(tup, desc, first), kind, wait_us, run_us);
}

/*
 * atomizer_store_insert
 *		Insert one job with a statement (the fast path in store.c is for
 *		jobs without a key).  With an idempotency key that an unfinished job
 *		of the same owner and queue already has, return that job's id and
 *		insert nothing; concurrent duplicates wait for each other on the
 *		unique index, so exactly one job is created.  *created says which
 *		happened, and *same_payload whether an existing job's payload is
 *		the one given.  The caller notes the new job for wake-up.
 */
int64
atomizer_store_insert(const AtomizerNewJobs *args, Datum payload,
					  const char *key, bool *created, bool *same_payload)
{
	static SPIPlanPtr insert_plans[3] = {NULL, NULL, NULL};
	static SPIPlanPtr existing_plan = NULL;
	int			tagged = args->deps ? 2 : args->tags_null ? 0 : 1;
	SPIPlanPtr	insert_plan;
	StoreCall	call;
	Datum		values[13];
	char		nulls[13];
	int64		id = 0;
	bool		done = false;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(args->queue);
	values[1] = CStringGetTextDatum(args->handler);
	values[2] = payload;
	values[3] = TimestampTzGetDatum(args->run_at);
	values[4] = Int32GetDatum(args->priority);
	values[5] = Int32GetDatum(args->max_attempts);
	nulls[5] = args->max_attempts_null ? 'n' : ' ';
	values[6] = args->timeout_null ? (Datum) 0 : IntervalPGetDatum(args->timeout);
	nulls[6] = args->timeout_null ? 'n' : ' ';
	values[7] = CStringGetTextDatum(args->owner);
	values[8] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[8] = key ? ' ' : 'n';
	values[9] = args->tags;
	nulls[9] = args->tags_null ? 'n' : ' ';
	values[10] = CStringGetTextDatum(args->blocked ? "blocked" : "available");
	values[11] = Int32GetDatum(args->blockers);
	values[12] = CStringGetTextDatum(args->deps_run ? "run" : "cancel");

	store_begin(&call);
	{
		Oid			types[13] = {TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID,
			INT4OID, INT4OID, INTERVALOID, TEXTOID, TEXTOID, TEXTARRAYOID,
		TEXTOID, INT4OID, TEXTOID};
		Oid			lookup_types[4] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID};

		/*
		 * tags: only 0.2.0's objects have the column, and only they pass
		 * any; nor dependencies (plan 2: with the state they make)
		 */
		if (insert_plans[tagged] == NULL)
			atomizer_prepare(&insert_plans[tagged],
					 psprintf("INSERT INTO atomizer.job "
							  "(queue, handler, payload, run_at, priority, max_attempts,"
							  " timeout, owner, idempotency_key%s) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::name, $9%s) "
							  "ON CONFLICT (queue, owner, idempotency_key) "
							  "WHERE idempotency_key IS NOT NULL DO NOTHING "
							  "RETURNING id",
							  tagged == 2 ? ", tags, state, blockers, on_dependency_failure" :
							  TAGS[tagged],
							  tagged == 2 ? ", $10, $11, $12, $13" : tagged ? ", $10" : ""),
					 tagged == 2 ? 13 : tagged ? 10 : 9, types);
		insert_plan = insert_plans[tagged];
		/* keys are the enqueuing role's own: another role's are not seen */
		atomizer_prepare(&existing_plan,
					 ATOMIZER_INDEXED "SELECT id, payload = $4 FROM atomizer.job "
					 "WHERE queue = $1 AND idempotency_key = $2 "
					 "AND owner = $3::name", 4, lookup_types);
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
			*created = true;
			*same_payload = true;
			done = true;
		}
		else
		{
			Datum		lookup[4] = {values[0], values[8], values[7], values[2]};

			if (SPI_execute_plan(existing_plan, lookup, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not look up job by idempotency key");
			if (SPI_processed == 1)
			{
				id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
				*created = false;
				*same_payload = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 2, &isnull));
				done = true;
			}
		}
	}
	store_end(&call);
	return id;
}

/*
 * atomizer_store_insert_unique
 *		enqueue(…, idempotency_key, unique_for): a job with that key (same
 *		owner and queue) is made at most once per unique_for, counted from
 *		the enqueue that made it, whether it has finished or not.  The key's
 *		window is a row of atomizer.job_unique, taken (or renewed once it has
 *		passed) by INSERT … ON CONFLICT, so concurrent enqueues wait for each
 *		other and one job is made.  *until gets the window's end.
 */
int64
atomizer_store_insert_unique(const AtomizerNewJobs *args, Datum payload,
							 const char *key, const Interval *unique_for,
							 bool *created, bool *same_payload,
							 TimestampTz *until)
{
	static SPIPlanPtr take_plan = NULL;
	static SPIPlanPtr set_plan = NULL;
	static SPIPlanPtr existing_plan = NULL;
	StoreCall	call;
	Datum		values[4];
	bool		isnull;
	bool		taken;
	int64		id = 0;

	values[0] = CStringGetTextDatum(args->queue);
	values[1] = CStringGetTextDatum(args->owner);
	values[2] = CStringGetTextDatum(key);
	values[3] = IntervalPGetDatum(unique_for);

	store_begin(&call);
	{
		Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, INTERVALOID};
		Oid			set_types[4] = {TEXTOID, TEXTOID, TEXTOID, INT8OID};
		Oid			ex_types[4] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID};

		atomizer_prepare(&take_plan,
						 "INSERT INTO atomizer.job_unique AS u (queue, owner, key, until)"
						 " VALUES ($1, $2::name, $3, clock_timestamp() + $4)"
						 " ON CONFLICT (queue, owner, key) DO UPDATE"
						 " SET until = EXCLUDED.until, job_id = NULL"
						 " WHERE u.until <= clock_timestamp()"
						 " RETURNING u.until", 4, types);
		atomizer_prepare(&set_plan,
						 "UPDATE atomizer.job_unique SET job_id = $4"
						 " WHERE queue = $1 AND owner = $2::name AND key = $3",
						 4, set_types);
		atomizer_prepare(&existing_plan,
						 "SELECT u.job_id, u.until, coalesce(j.payload = $4, true)"
						 " FROM atomizer.job_unique u"
						 " LEFT JOIN atomizer.jobs j ON j.id = u.job_id"
						 " WHERE u.queue = $1 AND u.owner = $2::name AND u.key = $3",
						 4, ex_types);
	}
	if (SPI_execute_plan(take_plan, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not take the unique_for window of key \"%s\"", key);
	taken = (SPI_processed == 1);
	if (taken)
		*until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
	store_end(&call);

	if (taken)
	{
		/* the window is ours: make the job (or find an unfinished one) */
		id = atomizer_store_insert(args, payload, key, created, same_payload);
		values[3] = Int64GetDatum(id);
		store_begin(&call);
		if (SPI_execute_plan(set_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not note the job of key \"%s\"", key);
		store_end(&call);
		return id;
	}

	values[3] = payload;
	store_begin(&call);
	if (SPI_execute_plan(existing_plan, values, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not look up the job of key \"%s\"", key);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									 &isnull));
	*until = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 2, &isnull));
	*same_payload = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 3, &isnull));
	store_end(&call);
	*created = false;
	return id;
}

static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * atomizer_store_insert_many
 *		Insert one job per element of payloads (a jsonb[] of n elements)
 *		with one INSERT ... SELECT; ids[] gets their ids in payload order
 *		(drawn from the sequence in that order, so ascending).
 */
void
atomizer_store_insert_many(const AtomizerNewJobs *args, ArrayType *payloads,
						   int n, int64 *ids)
{
	static SPIPlanPtr plans[3] = {NULL, NULL, NULL};
	int			tagged = args->deps ? 2 : args->tags_null ? 0 : 1;
	StoreCall	call;
	Datum		values[12];
	char		nulls[12];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(args->queue);
	values[1] = CStringGetTextDatum(args->handler);
	values[2] = PointerGetDatum(payloads);
	values[3] = TimestampTzGetDatum(args->run_at);
	values[4] = Int32GetDatum(args->priority);
	values[5] = Int32GetDatum(args->max_attempts);
	nulls[5] = args->max_attempts_null ? 'n' : ' ';
	values[6] = args->timeout_null ? (Datum) 0 : IntervalPGetDatum(args->timeout);
	nulls[6] = args->timeout_null ? 'n' : ' ';
	values[7] = CStringGetTextDatum(args->owner);
	values[8] = args->tags;
	nulls[8] = args->tags_null ? 'n' : ' ';
	values[9] = CStringGetTextDatum(args->blocked ? "blocked" : "available");
	values[10] = Int32GetDatum(args->blockers);
	values[11] = CStringGetTextDatum(args->deps_run ? "run" : "cancel");

	store_begin(&call);
	{
		Oid			types[12] = {TEXTOID, TEXTOID, JSONBARRAYOID, TIMESTAMPTZOID,
			INT4OID, INT4OID, INTERVALOID, TEXTOID, TEXTARRAYOID, TEXTOID, INT4OID,
		TEXTOID};

		if (plans[tagged] == NULL)
			atomizer_prepare(&plans[tagged],
					 psprintf("INSERT INTO atomizer.job "
							  "(id, queue, handler, payload, run_at, priority,"
							  " max_attempts, timeout, owner%s) "
							  "SELECT nextval('atomizer.job_id_seq'), $1, $2, p, $4, $5,"
							  " $6, $7, $8::name%s FROM unnest($3) AS p "
							  "RETURNING id",
							  tagged == 2 ? ", tags, state, blockers, on_dependency_failure" :
							  TAGS[tagged],
							  tagged == 2 ? ", $9, $10, $11, $12" : tagged ? ", $9" : ""),
					 tagged == 2 ? 12 : tagged ? 9 : 8, types);
	}
	if (SPI_execute_plan(plans[tagged], values, nulls, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != (uint64) n)
		elog(ERROR, "could not insert jobs");
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	store_end(&call);
	qsort(ids, n, sizeof(int64), compare_int64);
}

/*
 * atomizer_store_insert_many_keyed
 *		As atomizer_store_insert_many, with an idempotency key per payload
 *		(keys: a text[] of n elements, NULL entries for none): a payload
 *		whose key an unfinished job of the same owner and queue already has
 *		(or an earlier payload of the same call) makes no job, and ids[] has
 *		that job's id in its place.  Returns how many jobs were created;
 *		made[i] (if not NULL, all false on entry) says which.
 */
int
atomizer_store_insert_many_keyed(const AtomizerNewJobs *args, ArrayType *payloads,
								 ArrayType *keys, int n, int64 *ids, bool *made)
{
	static SPIPlanPtr draw_plan = NULL;
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr existing_plan = NULL;
	StoreCall	call;
	Datum	   *key_elems;
	bool	   *key_nulls;
	int			nkeys;
	Datum	   *payload_elems;
	bool	   *payload_nulls;
	int			npayloads;
	bool	   *resolved = palloc0(sizeof(bool) * n);
	int64	   *drawn = palloc(sizeof(int64) * n);
	int			created = 0;
	int			left = n;

	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT,
					  &key_elems, &key_nulls, &nkeys);
	deconstruct_array(payloads, JSONBOID, -1, false, TYPALIGN_INT,
					  &payload_elems, &payload_nulls, &npayloads);
	Assert(nkeys == n && npayloads == n);

	store_begin(&call);
	{
		Oid			draw_types[1] = {INT4OID};
		Oid			types[11] = {TEXTOID, TEXTOID, JSONBARRAYOID, TIMESTAMPTZOID,
			INT4OID, INT4OID, INTERVALOID, TEXTOID, INT8ARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID};
		Oid			lookup_types[3] = {TEXTOID, TEXTOID, TEXTARRAYOID};

		atomizer_prepare(&draw_plan,
					 "SELECT nextval('atomizer.job_id_seq')"
					 " FROM generate_series(1, $1)", 1, draw_types);
		atomizer_prepare(&insert_plan,
					 "INSERT INTO atomizer.job "
					 "(id, queue, handler, payload, run_at, priority,"
					 " max_attempts, timeout, owner, idempotency_key, tags) "
					 "SELECT t.id, $1, $2, t.p, $4, $5, $6, $7, $8::name, t.k, $11"
					 " FROM unnest($9, $3, $10) AS t(id, p, k) ORDER BY t.id "
					 "ON CONFLICT (queue, owner, idempotency_key) "
					 "WHERE idempotency_key IS NOT NULL DO NOTHING "
					 "RETURNING id", 11, types);
		atomizer_prepare(&existing_plan,
					 ATOMIZER_INDEXED "SELECT idempotency_key, id FROM atomizer.job"
					 " WHERE queue = $1 AND owner = $2::name"
					 " AND idempotency_key = ANY ($3)", 3, lookup_types);
	}

	/* ids in payload order, drawn once: a retried row keeps its id */
	{
		Datum		arg = Int32GetDatum(n);
		bool		isnull;

		if (SPI_execute_plan(draw_plan, &arg, NULL, false, 0) != SPI_OK_SELECT ||
			SPI_processed != (uint64) n)
			elog(ERROR, "could not draw job ids");
		for (int i = 0; i < n; i++)
			drawn[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 1, &isnull));
		qsort(drawn, n, sizeof(int64), compare_int64);
	}

	/*
	 * Insert what is left; the rest is another job's, found by key.  A job
	 * found that way may finish (and leave the hot table) before we look it
	 * up: then its key is free again, and we insert once more.
	 */
	while (left > 0)
	{
		Datum	   *id_d = palloc(sizeof(Datum) * left);
		Datum	   *p_d = palloc(sizeof(Datum) * left);
		Datum	   *k_d = palloc(sizeof(Datum) * left);
		bool	   *k_n = palloc(sizeof(bool) * left);
		int			m = 0;
		int			dims[1];
		int			lbs[1] = {1};
		Datum		values[11];
		char		nulls[11];
		uint64		inserted;

		CHECK_FOR_INTERRUPTS();
		for (int i = 0; i < n; i++)
		{
			if (resolved[i])
				continue;
			id_d[m] = Int64GetDatum(drawn[i]);
			p_d[m] = payload_elems[i];
			k_d[m] = key_elems[i];
			k_n[m] = key_nulls[i];
			m++;
		}
		dims[0] = m;
		memset(nulls, ' ', sizeof(nulls));
		values[0] = CStringGetTextDatum(args->queue);
		values[1] = CStringGetTextDatum(args->handler);
		values[2] = PointerGetDatum(construct_array(p_d, m, JSONBOID, -1, false,
													TYPALIGN_INT));
		values[3] = TimestampTzGetDatum(args->run_at);
		values[4] = Int32GetDatum(args->priority);
		values[5] = Int32GetDatum(args->max_attempts);
		nulls[5] = args->max_attempts_null ? 'n' : ' ';
		values[6] = args->timeout_null ? (Datum) 0 : IntervalPGetDatum(args->timeout);
		nulls[6] = args->timeout_null ? 'n' : ' ';
		values[7] = CStringGetTextDatum(args->owner);
		values[8] = PointerGetDatum(construct_array(id_d, m, INT8OID, 8,
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[9] = PointerGetDatum(construct_md_array(k_d, k_n, 1, dims, lbs,
													   TEXTOID, -1, false,
													   TYPALIGN_INT));
		values[10] = args->tags;
		nulls[10] = args->tags_null ? 'n' : ' ';
		if (SPI_execute_plan(insert_plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert jobs");
		inserted = SPI_processed;
		for (uint64 r = 0; r < inserted; r++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														 SPI_tuptable->tupdesc, 1,
														 &isnull));

			for (int i = 0; i < n; i++)
				if (!resolved[i] && drawn[i] == id)
				{
					ids[i] = id;
					resolved[i] = true;
					if (made)
						made[i] = true;
					created++;
					left--;
					break;
				}
		}
		if (left == 0)
			break;

		/* the others' keys belong to unfinished jobs: find them */
		{
			Datum		lvalues[3];
			Datum	   *want = palloc(sizeof(Datum) * left);
			int			nwant = 0;

			for (int i = 0; i < n; i++)
				if (!resolved[i])
				{
					if (key_nulls[i])
						elog(ERROR, "a job without an idempotency key was not inserted");
					want[nwant++] = key_elems[i];
				}
			lvalues[0] = values[0];
			lvalues[1] = values[7];
			lvalues[2] = PointerGetDatum(construct_array(want, nwant, TEXTOID, -1,
														 false, TYPALIGN_INT));
			if (SPI_execute_plan(existing_plan, lvalues, NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not look up jobs by idempotency key");
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				char	   *key = SPI_getvalue(SPI_tuptable->vals[r],
											   SPI_tuptable->tupdesc, 1);
				bool		isnull;
				int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
															 SPI_tuptable->tupdesc, 2,
															 &isnull));

				for (int i = 0; i < n; i++)
					if (!resolved[i] && !key_nulls[i] &&
						strcmp(TextDatumGetCString(key_elems[i]), key) == 0)
					{
						ids[i] = id;
						resolved[i] = true;
						left--;
					}
			}
		}
	}
	store_end(&call);
	return created;
}

/*
 * atomizer_store_insert_fire
 *		Insert the job of one fire of schedule_id, as its owner set it up,
 *		with the run_at the caller chose (schedule.c: the fire time).
 *		Returns the job id; the new job lowers its queue's floor at commit.
 */
int64
atomizer_store_insert_fire(int64 schedule_id, TimestampTz run_at)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		values[2];
	bool		isnull;
	int64		id;

	store_begin(&call);
	atomizer_prepare(&plan,
			"INSERT INTO atomizer.job (queue, handler, payload, run_at, priority,"
			" max_attempts, timeout, owner, schedule_id) "
			"SELECT queue, handler, payload, $2, priority, max_attempts,"
			" timeout, owner, id FROM atomizer.schedule WHERE id = $1 "
			"RETURNING queue, priority::int4, run_at, id", 2, types);
	values[0] = Int64GetDatum(schedule_id);
	values[1] = TimestampTzGetDatum(run_at);
	id = DatumGetInt64(run_one(plan, values, NULL, false, SPI_OK_INSERT_RETURNING,
							   "enqueue the job of a schedule", 4, &isnull));
	note_waiting_rows();
	store_end(&call);
	return id;
}

/*
 * atomizer_store_schedule_busy
 *		Whether a job of schedule_id waits or runs (the overlap policy).
 */
bool
atomizer_store_schedule_busy(int64 schedule_id)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(schedule_id);
	bool		isnull;
	bool		busy;

	store_begin(&call);
	atomizer_prepare(&plan,
			ATOMIZER_INDEXED "SELECT EXISTS (SELECT 1 FROM atomizer.job WHERE schedule_id = $1)",
			1, types);
	busy = DatumGetBool(run_one(plan, &arg, NULL, true, SPI_OK_SELECT,
								"look at the jobs of a schedule", 1, &isnull));
	store_end(&call);
	return busy;
}

/*
 * atomizer_store_insert_fires
 *		Insert the jobs of n fires at once: schedule schedule_ids[i] fires
 *		at run_ats[i], each job as its schedule's owner set it up (as
 *		atomizer_store_insert_fire does for one).  One statement; the jobs
 *		lower their queues' floors at commit.  Fills out_schedules[] and
 *		out_jobs[] (n each) with the schedules and their new jobs, in no
 *		particular order, and returns how many were inserted.
 */
int
atomizer_store_insert_fires(const int64 *schedule_ids, const TimestampTz *run_ats,
							int n, int64 *out_schedules, int64 *out_jobs)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[2];
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *times = palloc(sizeof(Datum) * Max(n, 1));
	int			done;

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(schedule_ids[i]);
		times[i] = TimestampTzGetDatum(run_ats[i]);
	}
	store_begin(&call);
	atomizer_prepare(&plan,
			"INSERT INTO atomizer.job (queue, handler, payload, run_at, priority,"
			" max_attempts, timeout, owner, schedule_id) "
			"SELECT s.queue, s.handler, s.payload, u.t,"
			" s.priority, s.max_attempts, s.timeout, s.owner, s.id"
			" FROM unnest($1::int8[], $2::timestamptz[]) WITH ORDINALITY u(id, t, o)"
			" JOIN atomizer.schedule s ON s.id = u.id ORDER BY u.o "
			"RETURNING queue, priority::int4, run_at, id, schedule_id", 2, types);
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(times, n, TIMESTAMPTZOID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
		SPI_processed > (uint64) n)
		elog(ERROR, "could not enqueue the jobs of schedules");
	done = (int) SPI_processed;
	for (int i = 0; i < done; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;

		out_jobs[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull));
		out_schedules[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 5,
													   &isnull));
	}
	note_waiting_rows();
	store_end(&call);
	return done;
}

/*
 * atomizer_store_schedules_busy
 *		Which of the n schedules schedule_ids[] have a job waiting or
 *		running (the overlap policy), in one statement: sets busy[i].
 */
void
atomizer_store_schedules_busy(const int64 *schedule_ids, int n, bool *busy)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[1] = {INT8ARRAYOID};
	Datum		arg;
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	int64	   *sorted = palloc(sizeof(int64) * Max(n, 1));

	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(schedule_ids[i]);
		busy[i] = false;
	}
	store_begin(&call);
	atomizer_prepare(&plan,
			ATOMIZER_INDEXED "SELECT DISTINCT schedule_id FROM atomizer.job"
			" WHERE schedule_id = ANY($1)", 1, types);
	arg = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look at the jobs of schedules");
	if (SPI_processed > 0)
	{
		/* the busy ones, sorted, looked up for each schedule */
		int			nbusy = (int) SPI_processed;

		for (int i = 0; i < nbusy; i++)
		{
			bool		isnull;

			sorted[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 1, &isnull));
		}
		qsort(sorted, nbusy, sizeof(int64), compare_int64);
		for (int i = 0; i < n; i++)
			busy[i] = bsearch(&schedule_ids[i], sorted, nbusy, sizeof(int64),
							  compare_int64) != NULL;
	}
	store_end(&call);
}

/*
 * atomizer_store_cancel_early_fire
 *		Cancel job_id if it is a schedule's job that a firing pass enqueued
 *		ahead of its fire time fire_time (atomizer.cron_lookahead) and it
 *		is not due yet: the schedule was replaced, enabled, disabled or
 *		removed, or its next run brought back, before that time, so the
 *		fire it had decided is no longer the one it makes.  A job whose
 *		fire time has come has fired, and stays; so does one a handler
 *		snoozed (its run_at is no longer its fire time).  To the history as
 *		cancelled, with "why" as its last error.
 */
static bool finish_one(int64 id, const char *state, Datum result,
					   bool result_isnull, const char *error);

bool
atomizer_store_cancel_early_fire(int64 job_id, TimestampTz fire_time, const char *why)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		values[2] = {Int64GetDatum(job_id), TimestampTzGetDatum(fire_time)};
	bool		cancelled = false;

	store_begin(&call);
	atomizer_prepare(&plan,
			ATOMIZER_INDEXED "SELECT FROM atomizer.job WHERE id = $1 AND run_at = $2"
			" AND state = 'available' AND attempt = 0"
			" AND run_at > clock_timestamp() FOR UPDATE",
			2, types);
	atomizer_note_job_locks();
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
	if (SPI_processed == 1)
		cancelled = finish_one(job_id, "cancelled", (Datum) 0, true, why);
	store_end(&call);
	return cancelled;
}

/* ------------------------------------------------------------------------
 * Claim
 * ------------------------------------------------------------------------ */

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
 * floor_check
 *		A claim that started at floor and ended in a higher priority than
 *		floor's passed the lower priorities' delayed jobs (run_at in the
 *		future) without claiming them: the new floor must stay at or below
 *		the first of them.  The range read is the one the claim just read.
 *		Connected to SPI.
 */
static void
floor_check(const char *queue, const AtomizerClaimKey *floor,
			AtomizerClaimKey *new_floor)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	SPIPlanPtr	plan;
	Oid			types[5] = {TEXTOID, INT4OID, TIMESTAMPTZOID, INT8OID, INT4OID};
	Datum		values[5];
	bool		isnull;

	if (new_floor->priority <= floor->priority)
		return;
	plan = prepare_unparked(plans,
							ATOMIZER_INDEXED "SELECT priority::int4 AS prio, run_at, id"
							" FROM atomizer.job"
							" WHERE queue = $1 AND state = 'available'%s"
							" AND (priority, run_at, id) >= ($2, $3, $4)"
							" AND priority < $5 AND run_at > now()"
							" ORDER BY priority, run_at, id LIMIT 1", 5, types, 0);
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
 * atomizer_store_claim
 *		The claim: mark up to spec->max_jobs due, available jobs of
 *		spec->queue running, attempt counted, in claim order from the claim
 *		key spec->floor on (NULL: from the front of the queue), skipping
 *		rows another session has locked and, with spec->owner_filter, other
 *		roles' jobs.  For atomizer's workers (spec->worker_id set) the
 *		queue must be internal and the job gets the worker's identity with
 *		the batch size; for external workers (spec->lease_ms > 0) the queue
 *		must be external and the job gets the worker's name and a lease.
 *		Returns the number claimed and, in *jobs, a palloc'd array (in the
 *		caller's memory context) in claim order.
 *
 *		If spec->new_floor is set, it gets the floor the queue may have once
 *		this transaction commits (floor.c): the caller passes it to
 *		atomizer_floor_advance after the commit, or to
 *		atomizer_note_floor_advance before.
 */
/* The queue's settings a claim's candidates came with. */
typedef struct ClaimDefaults
{
	bool		known;			/* read from a candidate row */
	int			max_attempts;
	Interval	timeout;
	bool		timeout_null;
} ClaimDefaults;

/*
 * read_claim_defaults
 *		Fill *qd from SPI's candidate rows, unless already known or there
 *		are none.
 */
static void
read_claim_defaults(ClaimDefaults *qd)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (qd->known || SPI_processed == 0)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	d = SPI_getbinval(tup, desc, 8, &isnull);
	if (isnull)
		return;					/* the queue is gone: the UPDATE finds out */
	qd->max_attempts = DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	qd->timeout_null = isnull;
	if (!isnull)
		qd->timeout = *DatumGetIntervalP(d);
	qd->known = true;
}

/* A candidate row's place (its ctid). */
static ItemPointerData
candidate_tid(HeapTuple tup, TupleDesc desc)
{
	bool		isnull;

	return *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 7, &isnull));
}

/*
 * mark_claimed
 *		The claim's second step: mark the nids locked jobs ids[] (at
 *		tids[]) running, attempt counted, with the worker's identity or
 *		name and an external worker's lease, started at started_at (0: now,
 *		each at its own clock), and read them back into a palloc'd array
 *		in caller_cxt, in claim order.  The job store writes the rows
 *		itself (atomizer_store_mark_claimed); if it does not know the
 *		table, or the queue's settings were not read, an UPDATE statement
 *		does.  Connected to SPI.
 */
static int
mark_claimed(const AtomizerClaimSpec *spec, Datum *ids, ItemPointerData *tids,
			 int nids, TimestampTz started_at, const ClaimDefaults *qd,
			 MemoryContext caller_cxt, AtomizerJob **jobs)
{
	static SPIPlanPtr mark_plan = NULL;
	bool		external = spec->lease_ms > 0;
	AtomizerJob *result;
	int			n = 0;
	Datum		worker = (Datum) 0;
	bool		worker_null = false;
	Interval   *lease = NULL;

	result = MemoryContextAllocZero(caller_cxt, sizeof(AtomizerJob) * Max(nids, 1));
	if (spec->worker_id != NULL)
	{
		/* the batch size, for the scheduler if the worker dies */
		AtomizerWorkerId wid = *spec->worker_id;

		wid.batch = nids;
		worker = CStringGetTextDatum(atomizer_worker_id_format(&wid));
	}
	else if (spec->worker_name != NULL)
		worker = CStringGetTextDatum(spec->worker_name);
	else
		worker_null = true;
	if (external)
	{
		lease = palloc0(sizeof(Interval));
		lease->time = spec->lease_ms * 1000;
	}
	if (nids > 0 && qd->known)
	{
		AtomizerClaimMark mark;
		int64	   *id64 = palloc(sizeof(int64) * nids);

		mark.worker = worker;
		mark.worker_null = worker_null;
		mark.lease = lease;
		mark.started_at = started_at;
		mark.queue_max_attempts = qd->max_attempts;
		mark.queue_timeout = qd->timeout_null ? NULL : &qd->timeout;
		for (int i = 0; i < nids; i++)
			id64[i] = DatumGetInt64(ids[i]);
		if (atomizer_store_mark_claimed(&mark, tids, id64, nids, spec->queue,
										caller_cxt, result))
		{
			qsort(result, nids, sizeof(AtomizerJob), compare_jobs);
			*jobs = result;
			return nids;
		}
	}
	if (nids > 0)
	{
		Oid			types[4] = {INT8ARRAYOID, TEXTOID, INTERVALOID, TIMESTAMPTZOID};
		Datum		mvalues[4];
		char		mnulls[4] = {' ', ' ', ' ', ' '};

		atomizer_prepare_opts(&mark_plan,
							  ATOMIZER_INDEXED "UPDATE atomizer.job j SET state = 'running',"
							  " attempt = j.attempt + 1,"
							  " started_at = coalesce($4, clock_timestamp()), worker = $2,"
							  " lease = $3,"
							  " lease_until = coalesce($4, clock_timestamp()) + nullif($3, interval '0') "
							  "FROM atomizer.queue q "
							  "WHERE j.id = ANY($1) AND q.name = j.queue "
							  CLAIM_RETURNING, 4, types,
							  CURSOR_OPT_GENERIC_PLAN);
		mvalues[0] = PointerGetDatum(construct_array(ids, nids, INT8OID, 8,
													 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		mvalues[1] = worker;
		mnulls[1] = worker_null ? 'n' : ' ';
		mvalues[2] = IntervalPGetDatum(lease);
		mnulls[2] = lease ? ' ' : 'n';
		mvalues[3] = TimestampTzGetDatum(started_at);
		mnulls[3] = started_at != 0 ? ' ' : 'n';
		if (SPI_execute_plan(mark_plan, mvalues, mnulls, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not claim jobs of queue \"%s\"", spec->queue);
		n = (int) SPI_processed;
	}

	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerJob *job = &result[i];
		MemoryContext old;
		bool		isnull;
		Datum		d;

		old = MemoryContextSwitchTo(caller_cxt);
		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		job->queue = pstrdup(spec->queue);
		job->handler = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		job->payload = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false, -1);
		job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		d = SPI_getbinval(tup, desc, 6, &isnull);
		job->timeout_ms = isnull ? 0 : atomizer_interval_ms(DatumGetIntervalP(d));
		job->owner = TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull));
		job->priority = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		job->run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
		d = SPI_getbinval(tup, desc, 10, &isnull);
		job->lease_until = isnull ? 0 : DatumGetTimestampTz(d);
		MemoryContextSwitchTo(old);
	}
	qsort(result, n, sizeof(AtomizerJob), compare_jobs);
	*jobs = result;
	return n;
}

/*
 * The candidates' columns, for both claims' first statements: with where
 * each row is (the mark updates it there) and the queue's settings for
 * jobs without their own (read once, as init plans).
 */
#define CLAIM_CANDIDATE_COLUMNS \
	ATOMIZER_INDEXED "SELECT id, solo, priority::int4 AS prio, run_at, handler," \
	" coalesce(payload ->> $8::text, '') AS part, ctid," \
	" (SELECT q.max_attempts FROM atomizer.queue q WHERE q.name = $1)," \
	" (SELECT q.timeout FROM atomizer.queue q WHERE q.name = $1)"

/* The candidates: due, available, in claim order from the floor on. */
#define CLAIM_CANDIDATES \
	CLAIM_CANDIDATE_COLUMNS \
	" FROM atomizer.job" \
	" WHERE queue = $1 AND state = 'available'%s" \
	" AND (priority, run_at, id) >= ($4, $5, $6)" \
	" AND run_at <= now()" \
	" AND ($3::name IS NULL OR owner = $3::name)" \
	" AND EXISTS (SELECT 1 FROM atomizer.queue q" \
	"  WHERE q.name = $1 AND NOT q.paused" \
	"  AND q.external = $7)" \
	" ORDER BY priority, run_at, id LIMIT $2" \
	" FOR UPDATE SKIP LOCKED"

/*
 * lock_candidates
 *		Run the claim's first statement, CLAIM_CANDIDATES from claim key
 *		floor on, up to max_jobs rows (with held set: the jobs a handler
 *		limit held back, of the handlers held[], instead), and leave its
 *		result in SPI_tuptable.  Connected to SPI.
 */
static void
lock_candidates(const AtomizerClaimSpec *spec, const AtomizerClaimKey *floor,
				int max_jobs, const char *partition, ArrayType *held)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	static SPIPlanPtr held_plan = NULL;
	Oid			types[9] = {TEXTOID, INT4OID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, INT8OID, BOOLOID, TEXTOID, TEXTARRAYOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(spec->queue);
	values[1] = Int32GetDatum(max_jobs);
	values[2] = spec->owner_filter ? CStringGetTextDatum(spec->owner_filter) : (Datum) 0;
	nulls[2] = spec->owner_filter ? ' ' : 'n';
	values[3] = Int32GetDatum(floor->priority);
	values[4] = TimestampTzGetDatum(floor->run_at);
	values[5] = Int64GetDatum(floor->id);
	values[6] = BoolGetDatum(spec->lease_ms > 0);
	values[7] = partition ? CStringGetTextDatum(partition) : (Datum) 0;
	nulls[7] = partition ? ' ' : 'n';
	values[8] = PointerGetDatum(held);
	nulls[8] = held ? ' ' : 'n';

	atomizer_note_job_locks();
	if (held == NULL)
	{
		SPIPlanPtr	plan = prepare_unparked(plans, CLAIM_CANDIDATES, 8, types,
											CURSOR_OPT_GENERIC_PLAN);

		if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not claim jobs of queue \"%s\"", spec->queue);
		return;
	}
	atomizer_prepare_opts(&held_plan,
						  CLAIM_CANDIDATE_COLUMNS
						  " FROM atomizer.job"
						  " WHERE queue = $1 AND state = 'held' AND parked = 'held'"
						  " AND handler = ANY($9)"
						  " AND ($3::name IS NULL OR owner = $3::name)"
						  " AND EXISTS (SELECT 1 FROM atomizer.queue q"
						  "  WHERE q.name = $1 AND NOT q.paused"
						  "  AND q.external = $7)"
						  " ORDER BY priority, run_at, id LIMIT $2"
						  " FOR UPDATE SKIP LOCKED", 9, types,
						  CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_plan(held_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not claim jobs of queue \"%s\"", spec->queue);
}

/* A locked candidate of a limited claim. */
typedef struct Candidate
{
	AtomizerClaimKey key;
	bool		solo;
	bool		held;			/* a handler limit held it back before */
	int			handler;		/* index into the limited handlers, or -1 */
	int			part;			/* index into the partitions */
	ItemPointerData tid;		/* where it is */
} Candidate;

static int
compare_candidates(const void *a, const void *b)
{
	const Candidate *x = (const Candidate *) a;
	const Candidate *y = (const Candidate *) b;

	if (x->key.priority != y->key.priority)
		return x->key.priority < y->key.priority ? -1 : 1;
	if (x->key.run_at != y->key.run_at)
		return x->key.run_at < y->key.run_at ? -1 : 1;
	return (x->key.id > y->key.id) - (x->key.id < y->key.id);
}

/*
 * read_candidates
 *		Append SPI's candidate rows to cands[*n], finding each one's limited
 *		handler (handlers[], nh) and partition (added to parts[] as seen).
 */
static void
read_candidates(Candidate *cands, int *n, bool held, char **handlers, int nh,
				char **parts, int *nparts)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Candidate  *c = &cands[(*n)++];
		char	   *handler = SPI_getvalue(tup, desc, 5);
		char	   *part = SPI_getvalue(tup, desc, 6);
		bool		isnull;

		c->key.id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		c->solo = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		c->key.priority = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		c->key.run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		c->held = held;
		c->tid = candidate_tid(tup, desc);
		c->handler = -1;
		for (int h = 0; h < nh; h++)
			if (strcmp(handlers[h], handler) == 0)
				c->handler = h;
		c->part = -1;
		for (int p = 0; p < *nparts; p++)
			if (strcmp(parts[p], part) == 0)
				c->part = p;
		if (c->part < 0)
		{
			parts[*nparts] = part;
			c->part = (*nparts)++;
		}
	}
}

/*
 * set_aside_candidates
 *		Hold back the jobs ids[] (a handler limit: state 'held'), or put them
 *		off to when[] (a rate limit: run_at moved).  Either way they wait
 *		again: their queue's claim floor is lowered at commit to reach the
 *		put-off ones.  Connected to SPI.
 */
static void
set_aside_candidates(Datum *ids, int n, TimestampTz *when)
{
	static SPIPlanPtr hold_plan = NULL;
	static SPIPlanPtr put_off_plan = NULL;
	Datum		values[2];

	if (n == 0)
		return;
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (when == NULL)
	{
		Oid			types[1] = {INT8ARRAYOID};

		atomizer_prepare(&hold_plan,
						 ATOMIZER_INDEXED "UPDATE atomizer.job SET state = 'held'"
						 " WHERE id = ANY($1) AND state = 'available'", 1, types);
		if (SPI_execute_plan(hold_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not hold jobs back");
	}
	else
	{
		Oid			types[2] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID};
		Datum	   *times = palloc(sizeof(Datum) * n);

		for (int i = 0; i < n; i++)
			times[i] = TimestampTzGetDatum(when[i]);
		values[1] = PointerGetDatum(construct_array(times, n, TIMESTAMPTZOID, 8,
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		atomizer_prepare(&put_off_plan,
						 ATOMIZER_INDEXED "UPDATE atomizer.job j SET state = 'available', run_at = u.t"
						 " FROM unnest($1::int8[], $2::timestamptz[]) u(id, t)"
						 " WHERE j.id = u.id"
						 " RETURNING j.queue, j.priority::int4, j.run_at, j.id",
						 2, types);
		if (SPI_execute_plan(put_off_plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not put jobs off");
		note_waiting_rows();
		{
			TimestampTz first = when[0];

			for (int i = 1; i < n; i++)
				first = Min(first, when[i]);
			/* whoever sleeps until the next due job must wake by then */
			atomizer_note_deadline(first);
		}
	}
}

/*
 * rate_room
 *		The starts in the rate windows of the nparts partitions parts[] that
 *		end at now (window_start), counting other claims in flight, into
 *		used[], and when each window frees room into free_at[].  A partition
 *		whose bound in shared memory leaves room for max_jobs more gets the
 *		bound (exact[] -1: no job of it can be put off); the others are read
 *		from the reservations and the window (exact[] the count, seedable[]
 *		whether it may make the partition's bound again).
 */
static void
rate_room(const AtomizerQueue *q, int max_jobs, Snapshot snap, TimestampTz now,
		  TimestampTz window_start, char **parts, int nparts, int64 *used,
		  int64 *exact, TimestampTz *free_at, bool *seedable)
{
	char	  **xparts = palloc(sizeof(char *) * nparts);
	int		   *xidx = palloc(sizeof(int) * nparts);
	int64	   *xused = palloc0(sizeof(int64) * nparts);
	TimestampTz *xfree = palloc(sizeof(TimestampTz) * nparts);
	bool	   *xseed = palloc(sizeof(bool) * nparts);
	int			nx = 0;

	for (int p = 0; p < nparts; p++)
	{
		int64		bound;

		exact[p] = -1;
		seedable[p] = false;
		if (atomizer_limits_rate_bound(q, now, window_start, parts[p], &bound) &&
			bound + max_jobs <= q->rate_limit)
		{
			used[p] = bound;
			free_at[p] = now;	/* not read: nothing of it is put off */
			continue;
		}
		xidx[nx] = p;
		xparts[nx++] = parts[p];
	}
	if (nx == 0)
		return;
	/* what other claims in flight started, and the window */
	atomizer_limits_reserved(ATOMIZER_LIMIT_RATE, xparts, nx, xused, snap);
	atomizer_limits_rate_used(q, snap, now, xparts, nx, xused, xfree, xseed);
	for (int k = 0; k < nx; k++)
	{
		used[xidx[k]] = xused[k];
		exact[xidx[k]] = xused[k];
		free_at[xidx[k]] = xfree[k];
		seedable[xidx[k]] = xseed[k];
	}
}

/* Rounds of candidates a limited claim reads, at most, to fill a batch. */
#define LIMITED_ROUNDS	8

/*
 * claim_limited
 *		atomizer_store_claim for a queue with a rate limit or handler limits
 *		(limits.c says why it is exact).  Under the queue's limit lock: read
 *		the room each limited handler has, lock the due candidates (and the
 *		held-back jobs of handlers with room), and walk them in claim order:
 *		a job whose handler has no room is held back, one whose rate
 *		partition has no room is put off, the others are claimed, all
 *		started at the same time, which the rate window records.  Neither
 *		kind of job set aside stays in front of the claim, so the jobs of
 *		other handlers and partitions behind them are claimed: when a round
 *		of candidates set some aside, the claim reads the next round behind
 *		it (up to LIMITED_ROUNDS rounds), so a batch fills past a backlog
 *		that a limit holds back.
 */
static int
claim_limited(const AtomizerClaimSpec *spec, const AtomizerQueue *q,
			  MemoryContext caller_cxt, AtomizerJob **jobs)
{
	const AtomizerClaimKey *floor = spec->floor ? spec->floor : &atomizer_key_min;
	AtomizerClaimKey *new_floor = spec->new_floor;
	AtomizerClaimKey from = *floor;
	bool		external = spec->lease_ms > 0;
	bool		rate = q->rate_limit > 0;
	int			cap = Max(spec->max_jobs, 1) * (LIMITED_ROUNDS + 1);
	char	  **handlers = NULL;
	int		   *room = NULL;
	bool	   *has_held = NULL;
	int			nh = 0;
	int		   *took;			/* jobs claimed per limited handler */
	Snapshot	snap;
	Datum	   *with_room;
	int			nwith = 0;
	Candidate  *cands = palloc(sizeof(Candidate) * cap);
	char	  **parts = palloc(sizeof(char *) * cap);
	int			nparts = 0;
	int			nparts_read = 0;	/* partitions whose window was read */
	int64	   *used = palloc0(sizeof(int64) * cap);
	int64	   *exact = palloc(sizeof(int64) * cap);
	bool	   *seedable = palloc0(sizeof(bool) * cap);
	TimestampTz wstart = 0;
	TimestampTz *free_at = palloc0(sizeof(TimestampTz) * cap);
	int		   *started = palloc0(sizeof(int) * cap);
	int		   *noff = palloc0(sizeof(int) * cap);
	Datum	   *ids = palloc(sizeof(Datum) * cap);
	ItemPointerData *tids = palloc(sizeof(ItemPointerData) * cap);
	ClaimDefaults qd = {0};
	int		   *id_h = palloc(sizeof(int) * cap);	/* their limited handler */
	Datum	   *hold_ids = palloc(sizeof(Datum) * cap);
	Datum	   *off_ids = palloc(sizeof(Datum) * cap);
	int		   *off_parts = palloc(sizeof(int) * cap);
	int			nids = 0,
				nhold = 0,
				noff_total = 0;
	TimestampTz now;
	bool		stopped = false;
	AtomizerClaimKey first_left = {0};
	bool		left = false;

	if (!atomizer_limits_lock(spec->queue))
	{
		/* another claim is under way and this transaction may not wait */
		*jobs = MemoryContextAllocZero(caller_cxt, sizeof(AtomizerJob));
		return 0;
	}
	snap = atomizer_limits_snapshot();
	if (q->handler_limits)
		nh = atomizer_limits_handlers(spec->queue, q->external, snap, &handlers,
									  &room, &has_held);

	/*
	 * The claim's time, read after the running jobs were counted: a job that
	 * finished (committed) before that count was stamped finished before
	 * this time, so a job's started_at and finished_at never show more
	 * running at once than the limit allowed.
	 */
	now = GetCurrentTimestamp();
	if (rate)
		wstart = atomizer_limits_window_start(q, now);
	took = palloc0(sizeof(int) * Max(nh, 1));
	if (nh > 0)
	{
		/* what other claims in flight took counts as running */
		int64	   *reserved = palloc0(sizeof(int64) * nh);

		atomizer_limits_reserved(ATOMIZER_LIMIT_HANDLER, handlers, nh, reserved, snap);
		for (int h = 0; h < nh; h++)
			room[h] = (int) Max(room[h] - reserved[h], 0);
	}
	with_room = palloc(sizeof(Datum) * Max(nh, 1));
	for (int h = 0; h < nh; h++)
		if (room[h] > 0 && has_held[h])
			with_room[nwith++] = CStringGetTextDatum(handlers[h]);
	if (new_floor)
		*new_floor = *floor;

	for (int round = 0; round < LIMITED_ROUNDS && !stopped; round++)
	{
		int			want = spec->max_jobs - nids;
		int			ncands = 0;
		int			nread;
		int			set_aside = 0;

		lock_candidates(spec, &from, want, q->rate_partition, NULL);
		nread = (int) SPI_processed;
		read_claim_defaults(&qd);
		read_candidates(cands, &ncands, false, handlers, nh, parts, &nparts);
		if (ncands > 0)
		{
			from = cands[ncands - 1].key;
			from.id++;			/* the next round starts behind this one */
		}
		if (round == 0 && nwith > 0)
		{
			lock_candidates(spec, &from, spec->max_jobs, q->rate_partition,
							construct_array(with_room, nwith, TEXTOID, -1,
											false, TYPALIGN_INT));
			read_claim_defaults(&qd);
			read_candidates(cands, &ncands, true, handlers, nh, parts, &nparts);
			qsort(cands, ncands, sizeof(Candidate), compare_candidates);
		}
		if (rate && nparts > nparts_read)
			rate_room(q, spec->max_jobs, snap, now, wstart, parts + nparts_read,
					  nparts - nparts_read, used + nparts_read, exact + nparts_read,
					  free_at + nparts_read, seedable + nparts_read);
		nparts_read = nparts;

		/*
		 * Walk in claim order.  The floor may pass a job this claim claimed,
		 * held back or put off; it stops at the first due job the claim
		 * leaves as it was (a solo job behind a batch, or one past
		 * max_jobs).
		 */
		for (int i = 0; i < ncands; i++)
		{
			Candidate  *c = &cands[i];
			bool		handler_full = c->handler >= 0 && room[c->handler] == 0;
			bool		rate_full = rate &&
				used[c->part] + started[c->part] >= q->rate_limit;

			if (stopped || (c->solo && !external && nids > 0))
			{
				if (!c->held && !left)
				{
					left = true;
					first_left = c->key;
				}
				stopped = true;
				continue;
			}
			if (handler_full)
			{
				if (!c->held)
					hold_ids[nhold++] = Int64GetDatum(c->key.id);
				set_aside++;
			}
			else if (rate_full)
			{
				/* put off, in claim order per partition: counted, then timed */
				noff[c->part]++;
				off_parts[noff_total] = c->part;
				off_ids[noff_total++] = Int64GetDatum(c->key.id);
				set_aside++;
			}
			else
			{
				id_h[nids] = c->handler;
				tids[nids] = c->tid;
				ids[nids++] = Int64GetDatum(c->key.id);
				started[c->part]++;
				if (c->handler >= 0)
				{
					room[c->handler]--;
					took[c->handler]++;
				}
				if ((c->solo && !external) || nids == spec->max_jobs)
					stopped = true;
			}
			if (new_floor && !c->held && !left)
				*new_floor = c->key;
		}
		/* a short round read the whole queue; one that set none aside, the batch */
		if (nread < want || set_aside == 0)
			break;
	}

	/*
	 * The decision is made: what it took is reserved, and unless the queue
	 * is at a limit (jobs held back or put off) the lock goes now, before
	 * the claim's writes, which only touch rows this claim has locked and
	 * the rate window other claims read through the reservation.
	 */
	{
		int			nkeys = 0;
		AtomizerLimitKind *kinds = palloc(sizeof(AtomizerLimitKind) * (nparts + nh + 1));
		char	  **keys = palloc(sizeof(char *) * (nparts + nh + 1));
		int		   *counts = palloc(sizeof(int) * (nparts + nh + 1));

		for (int p = 0; rate && p < nparts; p++)
		{
			kinds[nkeys] = ATOMIZER_LIMIT_RATE;
			keys[nkeys] = parts[p];
			counts[nkeys++] = started[p];
		}
		/* an internal queue's handlers: held until their outcomes commit */
		if (!q->external)
			atomizer_limits_fill_holds(spec->queue, handlers, took, nh, ids,
									   id_h, nids);
		for (int h = 0; q->external && h < nh; h++)
		{
			kinds[nkeys] = ATOMIZER_LIMIT_HANDLER;
			keys[nkeys] = handlers[h];
			counts[nkeys++] = took[h];
		}
		if (rate)
			atomizer_limits_rate_note(q, now, wstart, parts, exact, seedable,
									  started, nparts);
		atomizer_limits_reserve_and_unlock(spec->queue, kinds, keys, counts, nkeys,
										   noff_total > 0 || nhold > 0);
	}
	UnregisterSnapshot(snap);

	if (left)
	{
		/* at commit they wait again, below the floor a worker may have raised */
		atomizer_note_waiting(spec->queue, &first_left);
		atomizer_note_enqueue(spec->queue);
	}
	set_aside_candidates(hold_ids, nhold, NULL);
	if (noff_total > 0)
	{
		TimestampTz *by_part = palloc(sizeof(TimestampTz) * noff_total);
		TimestampTz *when = palloc(sizeof(TimestampTz) * noff_total);
		int		   *next = palloc0(sizeof(int) * nparts);
		int			k = 0;

		/* times come partition after partition; hand them out in claim order */
		atomizer_limits_put_off(q, now, parts, noff, free_at, nparts, by_part);
		for (int p = 0; p < nparts; p++)
		{
			next[p] = k;
			k += noff[p];
		}
		for (int j = 0; j < noff_total; j++)
			when[j] = by_part[next[off_parts[j]]++];
		set_aside_candidates(off_ids, noff_total, when);
	}
	if (rate)
		atomizer_limits_record_starts(q, now, parts, started, nparts);
	if (new_floor && nids > 0)
		floor_check(spec->queue, floor, new_floor);

	return mark_claimed(spec, ids, tids, nids, now, &qd, caller_cxt, jobs);
}

/*
 * claim_plain
 *		atomizer_store_claim for a queue without limits: the due candidates
 *		in claim order, all claimed (a solo job alone).
 */
static int
claim_plain(const AtomizerClaimSpec *spec, MemoryContext caller_cxt,
			AtomizerJob **jobs)
{
	const AtomizerClaimKey *floor = spec->floor ? spec->floor : &atomizer_key_min;
	AtomizerClaimKey *new_floor = spec->new_floor;
	bool		external = spec->lease_ms > 0;
	Datum	   *ids;
	ItemPointerData *tids;
	ClaimDefaults qd = {0};
	int			nids = 0;
	AtomizerClaimKey first_left = {0};	/* first locked row not claimed */
	bool		left = false;

	/*
	 * Lock the candidates.  A job released after its worker died in the
	 * middle of a batch is "solo": it runs in a batch of its own, so that a
	 * job that kills its worker is found out and charged alone.
	 */
	lock_candidates(spec, floor, spec->max_jobs, NULL, NULL);
	read_claim_defaults(&qd);
	ids = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	tids = palloc(sizeof(ItemPointerData) * Max(SPI_processed, 1));
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
		if (solo && !external)
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
			tids[0] = candidate_tid(tup, desc);
			ids[0] = id;
			nids = 1;
			if (new_floor)
				*new_floor = left ? first_left : key;
			break;
		}
		tids[nids] = candidate_tid(tup, desc);
		ids[nids++] = id;
		if (new_floor)
			*new_floor = key;
	}
	if (left)
	{
		/* at commit they wait again, below the floor a worker may have raised */
		atomizer_note_waiting(spec->queue, &first_left);
		atomizer_note_enqueue(spec->queue);
	}
	if (new_floor && nids > 0)
		floor_check(spec->queue, floor, new_floor);

	return mark_claimed(spec, ids, tids, nids, 0, &qd, caller_cxt, jobs);
}

int
atomizer_store_claim(const AtomizerClaimSpec *spec, AtomizerJob **jobs)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	AtomizerQueue q;
	StoreCall	call;
	int			n;

	/* the queue's limits (cached per backend; 0.1.0's tables have none) */
	if (!atomizer_lookup_queue(spec->queue, &q))
		memset(&q, 0, sizeof(q));
	store_begin(&call);
	if (atomizer_queue_limited(&q) && q.external == (spec->lease_ms > 0))
		n = claim_limited(spec, &q, caller_cxt, jobs);
	else
		n = claim_plain(spec, caller_cxt, jobs);
	store_end(&call);
	return n;
}

/*
 * queue_due_from
 *		atomizer_queue_due's two looks, from claim key floor on; the first
 *		due job's key goes to *first.  Connected to SPI.
 */
static bool
queue_due_from(const char *queue, const AtomizerClaimKey *floor,
			   TimestampTz *next, AtomizerClaimKey *first)
{
	static SPIPlanPtr due_plans[2] = {NULL, NULL};
	static SPIPlanPtr next_plans[2] = {NULL, NULL};
	SPIPlanPtr	due_plan;
	SPIPlanPtr	next_plan;
	Oid			types[4] = {TEXTOID, INT4OID, TIMESTAMPTZOID, INT8OID};
	Datum		args[4];
	bool		isnull;

	due_plan = prepare_unparked(due_plans,
								ATOMIZER_INDEXED "SELECT priority, run_at, id FROM atomizer.job"
								" WHERE queue = $1 AND state = 'available'%s"
								" AND (priority, run_at, id) >= ($2, $3, $4)"
								" AND run_at <= now()"
								" ORDER BY priority, run_at, id LIMIT 1", 4, types, 0);
	/*
	 * The earliest run_at is the least of each priority's first: one index
	 * descent per priority that has waiting jobs (a loose index scan), not a
	 * read of every delayed job.
	 */
	next_plan = prepare_unparked(next_plans,
								 ATOMIZER_INDEXED "WITH RECURSIVE p(prio, run_at) AS ("
								 " (SELECT j.priority, j.run_at FROM atomizer.job j"
								 "  WHERE j.queue = $1 AND j.state = 'available'%s"
								 "  AND (j.priority, j.run_at, j.id) >= ($2, $3, $4)"
								 "  ORDER BY j.priority, j.run_at, j.id LIMIT 1)"
								 " UNION ALL"
								 " SELECT n.priority, n.run_at FROM p, LATERAL"
								 " (SELECT j.priority, j.run_at FROM atomizer.job j"
								 "  WHERE j.queue = $1 AND j.state = 'available'%s"
								 "  AND j.priority > p.prio"
								 "  ORDER BY j.priority, j.run_at, j.id LIMIT 1) n)"
								 " SELECT min(run_at) FROM p", 4, types, 0);
	args[0] = CStringGetTextDatum(queue);
	args[1] = Int32GetDatum(floor->priority);
	args[2] = TimestampTzGetDatum(floor->run_at);
	args[3] = Int64GetDatum(floor->id);
	*next = DT_NOEND;
	if (SPI_execute_plan(due_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look at queue \"%s\"", queue);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		first->priority = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		first->run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		first->id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		return true;
	}
	if (SPI_execute_plan(next_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look at queue \"%s\"", queue);
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			*next = DatumGetTimestampTz(d);
	}
	return false;
}

/*
 * atomizer_queue_due
 *		Whether queue has a due job, and if not, when its next delayed job
 *		is due (*next, DT_NOEND if none).  Two small queries per queue, both
 *		served by the claim index from the queue's claim floor (floor.c) on:
 *		a plan over all queues at once may turn the due test into a hashed
 *		subplan that reads every waiting job.
 */
bool
atomizer_queue_due(const char *queue, TimestampTz *next)
{
	AtomizerClaimKey floor;
	AtomizerClaimKey first;
	StoreCall	call;
	bool		due;

	AtomizerQueue q;

	(void) atomizer_floor_get(MyDatabaseId, queue, &floor);
	if (!atomizer_lookup_queue(queue, &q))
		memset(&q, 0, sizeof(q));
	store_begin(&call);
	due = queue_due_from(queue, &floor, next, &first);
	if (!due && atomizer_floor_recheck(MyDatabaseId, queue))
	{
		TimestampTz started = GetCurrentTimestamp();

		if (queue_due_from(queue, &atomizer_key_min, next, &first))
		{
			/*
			 * A due job below the floor, written where no callback saw it
			 * (or locked by a claim in progress): lower the floor to it.
			 * Lowering never hides a job, so any below it still waiting
			 * (delayed ones) are found by a later look.
			 */
			atomizer_floor_lower(MyDatabaseId, queue, &first);
			due = true;
		}
		atomizer_floor_rechecked(MyDatabaseId, queue, started);
	}
	if (!due && q.handler_limits)
		due = atomizer_limits_held_with_room(queue, q.external);
	store_end(&call);
	return due;
}

/* ------------------------------------------------------------------------
 * Finish, fail, release
 * ------------------------------------------------------------------------ */

/*
 * finish_one
 *		atomizer_finish_job's statement; connected to SPI.
 */
static bool
finish_one(int64 id, const char *state, Datum result, bool result_isnull,
		   const char *error)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	int			gen = schema_gen();
	Oid			types[4] = {INT8OID, TEXTOID, JSONBOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	SPIPlanPtr	plan;

	if (plans[gen] == NULL)
		atomizer_prepare_opts(&plans[gen],
							  psprintf(ATOMIZER_INDEXED "WITH d AS (DELETE FROM atomizer.job WHERE id = $1 RETURNING *) "
									   "INSERT INTO atomizer.job_history (" HISTORY_COLUMNS "%s) "
									   "SELECT id, queue, handler, payload, $2, priority, run_at, attempt,"
									   " max_attempts, timeout, owner, idempotency_key, created_at,"
									   " started_at, clock_timestamp(), $3, coalesce($4, last_error),"
									   " schedule_id%s "
									   "FROM d RETURNING queue, started_at, run_at, finished_at, id",
									   MOVED[gen], MOVED[gen]), 4, types,
							  CURSOR_OPT_GENERIC_PLAN);
	plan = plans[gen];

	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(state);
	values[2] = result;
	nulls[2] = result_isnull ? 'n' : ' ';
	values[3] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[3] = error ? ' ' : 'n';

	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not finish job " INT64_FORMAT, id);
	if (SPI_processed != 1)
		return false;
	note_outcome(strcmp(state, "succeeded") == 0 ? ATOMIZER_OUTCOME_SUCCEEDED :
				 strcmp(state, "dead") == 0 ? ATOMIZER_OUTCOME_DEAD :
				 ATOMIZER_OUTCOME_CANCELLED, 0, 1);
	if (gen > 0)
		atomizer_workflow_note_finished(id, strcmp(state, "succeeded") != 0);
	return true;
}

/*
 * atomizer_finish_job
 *		Move job id from atomizer.job to atomizer.job_history in final state
 *		"state" ('succeeded', 'dead' or 'cancelled'), with its result and
 *		last error.  Returns false if the job was not in the hot table.
 */
bool
atomizer_finish_job(int64 id, const char *state, Datum result,
					bool result_isnull, const char *error)
{
	StoreCall	call;
	bool		done;

	atomizer_limits_job_done(id);

	store_begin(&call);
	done = finish_one(id, state, result, result_isnull, error);
	store_end(&call);
	return done;
}

/*
 * atomizer_finish_succeeded
 *		Move n succeeded jobs to the history at once, with their results
 *		(results[i] NULL for none): the workers call it just before they
 *		commit the batch.  The job store writes the moves itself
 *		(atomizer_store_move_succeeded); one statement does for a table it
 *		does not know, 0.1.0's, or a job another transaction changed
 *		meanwhile.  The rows are deleted in id order, the order in which an
 *		enqueue locks the dependencies it names (workflow.c), so that the
 *		two do not wait for each other in a cycle.
 */
/*
 * finish_succeeded_sql
 *		atomizer_finish_succeeded's statement, for the n jobs ids[] with
 *		results[]; and its counters.  Connected to SPI.
 */
static void
finish_succeeded_sql(int gen, int64 *ids, Datum *results, bool *result_nulls,
					 int n)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	Datum	   *id_datums;
	Datum		values[2];
	int			dims[1];
	int			lbs[1] = {1};
	Oid			types[2] = {INT8ARRAYOID, JSONBARRAYOID};

	id_datums = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		id_datums[i] = Int64GetDatum(ids[i]);
	dims[0] = n;
	values[0] = PointerGetDatum(construct_array(id_datums, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_md_array(results, result_nulls, 1, dims,
												   lbs, JSONBOID, -1, false,
												   TYPALIGN_INT));
	if (plans[gen] == NULL)
		atomizer_prepare_opts(&plans[gen],
							  psprintf(ATOMIZER_INDEXED "WITH r AS (SELECT * FROM unnest($1, $2) AS r(id, result)"
									   " ORDER BY id), "
									   "d AS (DELETE FROM atomizer.job j USING r WHERE j.id = r.id"
									   " RETURNING j.*, r.result AS new_result) "
									   "INSERT INTO atomizer.job_history (" HISTORY_COLUMNS "%s) "
									   "SELECT id, queue, handler, payload, 'succeeded', priority,"
									   " run_at, attempt, max_attempts, timeout, owner,"
									   " idempotency_key, created_at, started_at, clock_timestamp(),"
									   " new_result, last_error, schedule_id%s FROM d"
									   " RETURNING queue, started_at, run_at, finished_at, id",
									   MOVED[gen], MOVED[gen]), 2, types,
							  CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_plan(plans[gen], values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not record %d succeeded jobs", n);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		note_outcome(ATOMIZER_OUTCOME_SUCCEEDED, i, 1);
		if (gen > 0)
		{
			bool		isnull;

			atomizer_workflow_note_finished(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																		SPI_tuptable->tupdesc,
																		5, &isnull)),
											false);
		}
	}
}

/* A finished job and its result, to sort by id. */
typedef struct FinishedJob
{
	int64		id;
	Datum		result;
	bool		result_null;
} FinishedJob;

static int
compare_finished(const void *a, const void *b)
{
	int64		x = ((const FinishedJob *) a)->id;
	int64		y = ((const FinishedJob *) b)->id;

	return (x > y) - (x < y);
}

void
atomizer_finish_succeeded(int64 *ids, Datum *results, bool *result_nulls, int n)
{
	int			gen = schema_gen();
	StoreCall	call;
	FinishedJob *sorted;
	int64	   *sorted_ids;
	Datum	   *sorted_results;
	bool	   *sorted_nulls;
	AtomizerMoved *moved;
	int		   *left;
	int			nleft = 0;
	int			nmoved;

	if (n == 0)
		return;
	for (int i = 0; i < n; i++)
		atomizer_limits_job_done(ids[i]);

	store_begin(&call);
	if (gen == 0)
	{
		/* 0.1.0's tables: the statement */
		finish_succeeded_sql(gen, ids, results, result_nulls, n);
		store_end(&call);
		return;
	}

	/* the job store moves them itself, in id order */
	sorted = palloc(sizeof(FinishedJob) * n);
	for (int i = 0; i < n; i++)
	{
		sorted[i].id = ids[i];
		sorted[i].result = results[i];
		sorted[i].result_null = result_nulls[i];
	}
	qsort(sorted, n, sizeof(FinishedJob), compare_finished);
	sorted_ids = palloc(sizeof(int64) * n);
	sorted_results = palloc(sizeof(Datum) * n);
	sorted_nulls = palloc(sizeof(bool) * n);
	for (int i = 0; i < n; i++)
	{
		sorted_ids[i] = sorted[i].id;
		sorted_results[i] = sorted[i].result;
		sorted_nulls[i] = sorted[i].result_null;
	}
	moved = palloc(sizeof(AtomizerMoved) * n);
	left = palloc(sizeof(int) * n);
	nmoved = atomizer_store_move_succeeded(sorted_ids, sorted_results, sorted_nulls,
										   n, moved, left, &nleft);
	if (nmoved < 0)
	{
		finish_succeeded_sql(gen, ids, results, result_nulls, n);
		store_end(&call);
		return;
	}
	for (int i = 0; i < nmoved; i++)
	{
		int64		wait_us = -1;
		int64		run_us = -1;

		if (!moved[i].started_null)
		{
			wait_us = Max(moved[i].started_at - moved[i].run_at, 0);
			run_us = Max(moved[i].finished_at - moved[i].started_at, 0);
		}
		atomizer_stats_note(moved[i].queue, ATOMIZER_OUTCOME_SUCCEEDED, wait_us, run_us);
		atomizer_workflow_note_finished(moved[i].id, false);
	}
	if (nleft > 0)
	{
		/* changed by another transaction meanwhile: the statement follows it */
		int64	   *lids = palloc(sizeof(int64) * nleft);
		Datum	   *lres = palloc(sizeof(Datum) * nleft);
		bool	   *lnull = palloc(sizeof(bool) * nleft);

		for (int k = 0; k < nleft; k++)
		{
			lids[k] = sorted_ids[left[k]];
			lres[k] = sorted_results[left[k]];
			lnull[k] = sorted_nulls[left[k]];
		}
		finish_succeeded_sql(gen, lids, lres, lnull, nleft);
	}
	store_end(&call);
}

/*
 * atomizer_store_cancel_dependents
 *		Cancel the n blocked jobs ids[], each because its dependency by[i]
 *		ended in state states[i] (dead or cancelled): to the history, with
 *		cancelled_by and a last error that say so.  workflow.c calls it at
 *		pre-commit; the jobs cancelled are noted finished in turn, so their
 *		own dependents follow.  Returns how many were cancelled.
 */
int
atomizer_store_cancel_dependents(int64 *ids, int64 *by, char **states, int n)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Datum	   *id_d = palloc(sizeof(Datum) * n);
	Datum	   *by_d = palloc(sizeof(Datum) * n);
	Datum	   *st_d = palloc(sizeof(Datum) * n);
	Datum		values[3];
	Oid			types[3] = {INT8ARRAYOID, INT8ARRAYOID, TEXTARRAYOID};
	int			done;

	for (int i = 0; i < n; i++)
	{
		id_d[i] = Int64GetDatum(ids[i]);
		by_d[i] = Int64GetDatum(by[i]);
		st_d[i] = CStringGetTextDatum(states[i]);
	}
	values[0] = PointerGetDatum(construct_array(id_d, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(by_d, n, INT8OID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(st_d, n, TEXTOID, -1, false,
												TYPALIGN_INT));
	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "WITH c AS (SELECT * FROM unnest($1, $2, $3) AS c(id, by, st)), "
					 "d AS (DELETE FROM atomizer.job j USING c"
					 " WHERE j.id = c.id AND j.state = 'blocked'"
					 " RETURNING j.*, c.by, c.st) "
					 "INSERT INTO atomizer.job_history (" HISTORY_COLUMNS ", tags,"
					 " on_dependency_failure, cancelled_by) "
					 "SELECT id, queue, handler, payload, 'cancelled', priority, run_at,"
					 " attempt, max_attempts, timeout, owner, idempotency_key,"
					 " created_at, started_at, clock_timestamp(), NULL,"
					 " CASE WHEN st = 'deleted'"
					 "  THEN format('dependency %s was deleted with its queue', by)"
					 "  ELSE format('dependency %s ended %s', by, st) END, schedule_id, tags,"
					 " on_dependency_failure, by FROM d"
					 " RETURNING queue, started_at, run_at, finished_at, id",
					 3, types);
	/* with a snapshot taken now: see atomizer_workflow_note_finished */
	{
		Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
		int			rc = SPI_execute_snapshot(plan, values, NULL, snap,
											  InvalidSnapshot, false, false, 0);

		UnregisterSnapshot(snap);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not cancel the dependents of failed jobs");
	}
	done = (int) SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		note_outcome(ATOMIZER_OUTCOME_CANCELLED, i, 1);
		atomizer_workflow_note_finished(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc,
																	5, &isnull)),
										true);
	}
	store_end(&call);
	return done;
}

/*
 * log_failure
 *		One server log line for a failed attempt, as atomizer.log_failures
 *		says: queue, job id, handler, attempt, SQLSTATE and message.
 */
static void
log_failure(const AtomizerJob *job, const AtomizerOutcome *outcome,
			const char *queue, const char *handler)
{
	bool		dead = job->attempt >= job->max_attempts;
	const char *sqlstate = outcome->sqlstate[0] ? outcome->sqlstate : "-";

	if (atomizer_log_failures == ATOMIZER_LOG_FAILURES_NONE ||
		(!dead && atomizer_log_failures != ATOMIZER_LOG_FAILURES_ALL))
		return;
	if (dead)
		ereport(LOG,
				(errmsg("atomizer: job " INT64_FORMAT " of queue \"%s\" (%s) is dead after %d attempt(s): SQLSTATE %s: %s",
						job->id, queue, handler, job->attempt, sqlstate,
						outcome->message),
				 errhidestmt(true)));
	else
		ereport(LOG,
				(errmsg("atomizer: job " INT64_FORMAT " of queue \"%s\" (%s) failed attempt %d of %d, to be retried: SQLSTATE %s: %s",
						job->id, queue, handler, job->attempt, job->max_attempts,
						sqlstate, outcome->message),
				 errhidestmt(true)));
}

/*
 * atomizer_store_fail_attempt
 *		A failed attempt of a running job: the error goes to atomizer.
 *		job_error, and the job is dead after max_attempts or waits for its
 *		next attempt, after retry_in if not NULL, else after the queue's
 *		backoff (exponential, with jitter, saturating at backoff_cap and at
 *		1000 years for every attempt number).
 */
void
atomizer_store_fail_attempt(const AtomizerJob *job, const AtomizerOutcome *outcome,
							const Interval *retry_in)
{
	static SPIPlanPtr error_plan = NULL;
	static SPIPlanPtr retry_plan = NULL;
	StoreCall	call;
	Datum		values[6];
	char		nulls[6];

	atomizer_limits_job_done(job->id);

	store_begin(&call);
	{
		Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID};

		atomizer_prepare(&error_plan,
						 ATOMIZER_INDEXED "WITH j AS (SELECT id, attempt, owner, queue, started_at,"
						 " run_at, handler FROM atomizer.job WHERE id = $1), "
						 "e AS (INSERT INTO atomizer.job_error "
						 "(job_id, attempt, owner, queue, sqlstate,"
						 " message, detail, hint, context) "
						 "SELECT id, attempt, owner, queue, $2, $3,"
						 " $4, $5, $6 FROM j) "
						 "SELECT queue, started_at, run_at, clock_timestamp(), handler"
						 " FROM j",
						 6, types);
	}
	{
		Oid			types[3] = {INT8OID, TEXTOID, INTERVALOID};

		atomizer_prepare(&retry_plan,
						 ATOMIZER_INDEXED "UPDATE atomizer.job j SET"
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
	if (SPI_execute_plan(error_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record error of job " INT64_FORMAT, job->id);
	/* a dead job is counted as dead (by finish_one), not as a failed attempt */
	if (SPI_processed == 1 && job->attempt < job->max_attempts)
		note_outcome(ATOMIZER_OUTCOME_FAILED, 0, 1);
	if (SPI_processed == 1)
		log_failure(job, outcome,
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
					SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5));

	if (job->attempt >= job->max_attempts)
		(void) finish_one(job->id, "dead", (Datum) 0, true, outcome->message);
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
	store_end(&call);
}

/*
 * atomizer_release_job
 *		Put a running job back, available now, its attempt not counted; solo
 *		makes it run in a batch of its own next time.
 */
void
atomizer_release_job(int64 id, bool solo)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, BOOLOID};
	Datum		values[2];

	atomizer_limits_job_done(id);

	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "UPDATE atomizer.job SET state = 'available',"
					 " attempt = greatest(attempt - 1, 0), worker = NULL,"
					 " started_at = NULL, lease_until = NULL,"
					 " solo = solo OR $2 "
					 "WHERE id = $1 AND state = 'running' "
					 "RETURNING queue, priority::int4, run_at, id", 2, types);
	values[0] = Int64GetDatum(id);
	values[1] = BoolGetDatum(solo);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not release job " INT64_FORMAT, id);
	note_waiting_rows();
	store_end(&call);
}

/*
 * atomizer_store_release_held
 *		Make the jobs of queue that a handler limit held back (state 'held')
 *		available again: of one handler, or with handler NULL of all.  For
 *		limit_handler() when a limit is raised or removed; the next claim
 *		holds back again what it must.  Returns how many.
 */
int64
atomizer_store_release_held(const char *queue, const char *handler)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	int64		n;

	values[0] = CStringGetTextDatum(queue);
	values[1] = handler ? CStringGetTextDatum(handler) : (Datum) 0;
	nulls[1] = handler ? ' ' : 'n';
	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "UPDATE atomizer.job SET state = 'available'"
					 " WHERE queue = $1 AND state = 'held' AND parked = 'held'"
					 " AND ($2::text IS NULL OR handler = $2::text)"
					 " RETURNING queue, priority::int4, run_at, id", 2, types);
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not release the held jobs of queue \"%s\"", queue);
	n = (int64) SPI_processed;
	note_waiting_rows();
	store_end(&call);
	return n;
}

/*
 * atomizer_store_snooze
 *		Put a running job back, its attempt not counted, to run again
 *		delay_ms from now (snooze()).  Returns when.
 */
TimestampTz
atomizer_store_snooze(int64 id, int64 delay_ms)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, FLOAT8OID};
	Datum		values[2];
	bool		isnull;
	TimestampTz when;

	atomizer_limits_job_done(id);

	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "UPDATE atomizer.job SET state = 'available',"
					 " attempt = greatest(attempt - 1, 0), worker = NULL,"
					 " started_at = NULL, lease_until = NULL,"
					 " run_at = clock_timestamp() + make_interval(secs => $2) "
					 "WHERE id = $1 AND state = 'running' "
					 "RETURNING queue, priority::int4, run_at, id", 2, types);
	values[0] = Int64GetDatum(id);
	values[1] = Float8GetDatum((double) delay_ms / 1000.0);
	when = DatumGetTimestampTz(run_one(plan, values, NULL, false,
									   SPI_OK_UPDATE_RETURNING, "snooze a job",
									   3, &isnull));
	note_waiting_rows();
	store_end(&call);
	/* whoever sleeps until the next due job must wake by then */
	atomizer_note_deadline(when);
	return when;
}

/*
 * atomizer_store_job_origin
 *		When job id was enqueued, and the name of the schedule that fired it
 *		(NULL if none), for current_job().
 */
void
atomizer_store_job_origin(int64 id, TimestampTz *created_at, char **schedule,
						  Datum *tags, bool *tags_null)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(id);
	bool		isnull;

	*created_at = 0;
	*schedule = NULL;
	*tags_null = true;
	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "SELECT j.created_at, s.name, j.tags FROM atomizer.job j"
					 " LEFT JOIN atomizer.schedule s ON s.id = j.schedule_id"
					 " WHERE j.id = $1", 1, types);
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, id);
	if (SPI_processed == 1)
	{
		*created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1,
														&isnull));
		(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
			*schedule = MemoryContextStrdup(caller_cxt,
											SPI_getvalue(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 2));
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 3, tags_null);
			MemoryContext old = MemoryContextSwitchTo(caller_cxt);

			*tags = *tags_null ? (Datum) 0 : datumCopy(d, false, -1);
			MemoryContextSwitchTo(old);
		}
	}
	store_end(&call);
}

/*
 * atomizer_store_job_facts
 *		Job id as it is recorded now, waiting, running or finished, for the
 *		document a lifecycle hook is called with (hooks.c): false if there is
 *		no such job.  Read with a fresh snapshot, after this transaction's
 *		own changes (a failure just recorded).  Strings and datums are
 *		allocated in the caller's memory context.  Only queues with hooks
 *		pay for it.
 */
bool
atomizer_store_job_facts(int64 id, AtomizerJobFacts *facts)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	static const char *const tags[2] = {", NULL::text[]", ", tags"};
	int			gen = schema_gen();
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(id);
	bool		found = false;

	memset(facts, 0, sizeof(AtomizerJobFacts));
	store_begin(&call);
	if (plans[gen] == NULL)
	{
		const char *cols = "id, queue, handler, payload, state, priority, run_at,"
		" attempt, max_attempts, timeout, owner, created_at, started_at,"
		" schedule_id, last_error";

		atomizer_prepare(&plans[gen],
						 psprintf(ATOMIZER_INDEXED "SELECT j.queue, j.handler, j.payload, j.state,"
								  " j.priority::int4, j.run_at, j.attempt,"
								  " coalesce(j.max_attempts, q.max_attempts, 1),"
								  " j.owner::text, j.created_at, j.started_at,"
								  " (extract(epoch FROM coalesce(j.timeout, q.timeout,"
								  "  interval '0')) * 1000)::int8,"
								  " s.name, j.tags, j.last_error "
								  "FROM (SELECT %s%s FROM atomizer.job WHERE id = $1"
								  " UNION ALL"
								  " SELECT %s%s FROM atomizer.job_history WHERE id = $1)"
								  " AS j (%s, tags)"
								  " LEFT JOIN atomizer.queue q ON q.name = j.queue"
								  " LEFT JOIN atomizer.schedule s ON s.id = j.schedule_id"
								  " LIMIT 1",
								  cols, tags[gen], cols, tags[gen], cols),
						 1, types);
	}
	/* not read-only: a new snapshot, after what this transaction wrote */
	if (SPI_execute_plan(plans[gen], &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, id);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);
		bool		isnull;
		Datum		d;

		found = true;
		facts->queue = SPI_getvalue(tup, desc, 1);
		facts->handler = SPI_getvalue(tup, desc, 2);
		facts->payload = datumCopy(SPI_getbinval(tup, desc, 3, &isnull), false, -1);
		facts->state = SPI_getvalue(tup, desc, 4);
		facts->priority = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		facts->run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
		facts->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		facts->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		facts->owner = SPI_getvalue(tup, desc, 9);
		facts->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 10, &isnull));
		d = SPI_getbinval(tup, desc, 11, &facts->started_null);
		facts->started_at = facts->started_null ? 0 : DatumGetTimestampTz(d);
		facts->timeout_ms = DatumGetInt64(SPI_getbinval(tup, desc, 12, &isnull));
		facts->schedule = SPI_getvalue(tup, desc, 13);
		d = SPI_getbinval(tup, desc, 14, &facts->tags_null);
		facts->tags = facts->tags_null ? (Datum) 0 : datumCopy(d, false, -1);
		facts->last_error = SPI_getvalue(tup, desc, 15);
		MemoryContextSwitchTo(old);
	}
	store_end(&call);
	return found;
}

/*
 * atomizer_store_hook_error
 *		Record a lifecycle hook's error on job id, beside the errors of its
 *		attempts (atomizer.job_errors, the attempt it failed after), for an
 *		error that does not change the job's outcome (on_failure, on_dead).
 *		Nothing is recorded if the job is gone.
 */
void
atomizer_store_hook_error(int64 id, int attempt, const AtomizerOutcome *error)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[7] = {INT8OID, INT4OID, TEXTOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[7];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum(attempt);
	values[2] = CStringGetTextDatum(error->sqlstate);
	nulls[2] = error->sqlstate[0] ? ' ' : 'n';
	values[3] = CStringGetTextDatum(error->message);
	values[4] = error->detail ? CStringGetTextDatum(error->detail) : (Datum) 0;
	nulls[4] = error->detail ? ' ' : 'n';
	values[5] = error->hint ? CStringGetTextDatum(error->hint) : (Datum) 0;
	nulls[5] = error->hint ? ' ' : 'n';
	values[6] = error->context ? CStringGetTextDatum(error->context) : (Datum) 0;
	nulls[6] = error->context ? ' ' : 'n';

	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "INSERT INTO atomizer.job_error (job_id, attempt, owner, queue,"
					 " sqlstate, message, detail, hint, context) "
					 "SELECT id, $2, owner, queue, $3, $4, $5, $6, $7"
					 " FROM (SELECT id, owner, queue FROM atomizer.job WHERE id = $1"
					 " UNION ALL"
					 " SELECT id, owner, queue FROM atomizer.job_history WHERE id = $1) j"
					 " LIMIT 1", 7, types);
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record a hook's error on job " INT64_FORMAT, id);
	store_end(&call);
}

/*
 * atomizer_store_job_outcome
 *		A job's state as atomizer.jobs shows it, with its result and last
 *		error (owner's, unless owner is NULL), read with a fresh snapshot;
 *		false if there is no such job.  For atomizer.wait().
 */
bool
atomizer_store_job_outcome(int64 id, const char *owner, AtomizerJobOutcome *out)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		found = false;

	values[0] = Int64GetDatum(id);
	values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[1] = owner ? ' ' : 'n';
	store_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT state, result, last_error, finished_at IS NOT NULL"
					 " FROM atomizer.jobs WHERE id = $1"
					 " AND ($2::name IS NULL OR owner = $2::name)", 2, types);
	/* not read-only: each look takes a new snapshot */
	if (SPI_execute_plan(plan, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, id);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		found = true;
		strlcpy(out->state, SPI_getvalue(tup, desc, 1), sizeof(out->state));
		d = SPI_getbinval(tup, desc, 2, &out->result_null);
		out->result = out->result_null ? (Datum) 0 : datumCopy(d, false, -1);
		(void) SPI_getbinval(tup, desc, 3, &isnull);
		out->last_error = isnull ? NULL : SPI_getvalue(tup, desc, 3);
		out->finished = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		MemoryContextSwitchTo(old);
	}
	store_end(&call);
	return found;
}

/* ------------------------------------------------------------------------
 * Steering: cancel, retry, purge, prune
 * ------------------------------------------------------------------------ */

/*
 * atomizer_store_cancel
 *		Cancel a job (owner's, unless owner is NULL): a waiting one is
 *		cancelled now; an external worker's running one too (its worker
 *		learns it from its next call); one that atomizer's worker runs is
 *		asked, at commit, to stop.  False if it is finished or not there.
 */
bool
atomizer_store_cancel(int64 job_id, const char *owner)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		cancelled = false;

	values[0] = Int64GetDatum(job_id);
	values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[1] = owner ? ' ' : 'n';

	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "SELECT state, worker, lease_until IS NOT NULL FROM atomizer.job"
					 " WHERE id = $1 AND state IN ('available', 'held', 'blocked', 'running')"
					 " AND ($2::name IS NULL OR owner = $2::name) FOR UPDATE",
					 2, types);
	atomizer_note_job_locks();
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *state = SPI_getvalue(tup, desc, 1);
		char	   *worker = SPI_getvalue(tup, desc, 2);
		bool		isnull;
		bool		leased = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		AtomizerWorkerId wid;

		if (strcmp(state, "running") != 0)
			cancelled = finish_one(job_id, "cancelled", (Datum) 0, true, NULL);
		else if (leased)
		{
			/*
			 * An external worker's: it ends now, and the worker's next
			 * heartbeat, complete or fail says so (SQLSTATE AZ003).
			 */
			cancelled = finish_one(job_id, "cancelled", (Datum) 0, true,
								   "cancelled while running");
		}
		else if (atomizer_worker_id_parse(worker, &wid))
		{
			/*
			 * One of our workers runs it: at commit the worker is asked to
			 * stop its handler (its batch-mates go on), and records the job
			 * cancelled, or succeeded if the handler finished first.
			 */
			atomizer_note_cancel_running(job_id, wid.pid, wid.start_time);
			cancelled = true;
		}
	}
	store_end(&call);
	return cancelled;
}

/*
 * atomizer_store_job_owner
 *		The owner and queue of job id, unfinished or in the history; false
 *		if there is no such job.
 */
bool
atomizer_store_job_owner(int64 id, char **owner, char **queue)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(id);
	bool		found;

	store_begin(&call);
	atomizer_prepare(&plan,
					 ATOMIZER_INDEXED "SELECT owner::text, queue FROM atomizer.job WHERE id = $1"
					 " UNION ALL "
					 "SELECT owner::text, queue FROM atomizer.job_history WHERE id = $1",
					 1, types);
	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, id);
	found = SPI_processed == 1;
	if (found)
	{
		*owner = MemoryContextStrdup(caller_cxt,
									 SPI_getvalue(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1));
		*queue = MemoryContextStrdup(caller_cxt,
									 SPI_getvalue(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 2));
	}
	store_end(&call);
	return found;
}

/*
 * atomizer_store_retry
 *		Send a dead or cancelled job (owner's, unless owner is NULL) back to
 *		its queue, available now (blocked, if a dependency is unfinished:
 *		workflow.c), attempts counted from zero again.  False if
 *		there is no such job; an ERROR if its queue is gone or another
 *		unfinished job of its owner has its idempotency key.
 */
bool
atomizer_store_retry(int64 job_id, const char *owner)
{
	static SPIPlanPtr find_plan = NULL;
	static SPIPlanPtr dup_plan = NULL;
	static SPIPlanPtr move_plans[2] = {NULL, NULL};
	int			gen = schema_gen();
	SPIPlanPtr	move_plan;
	StoreCall	call;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		retried = false;

	values[0] = Int64GetDatum(job_id);
	values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[1] = owner ? ' ' : 'n';

	store_begin(&call);
	{
		Oid			types[2] = {INT8OID, TEXTOID};
		Oid			dup_types[3] = {TEXTOID, TEXTOID, TEXTOID};

		atomizer_prepare(&find_plan,
					 "SELECT queue, idempotency_key, owner::text FROM atomizer.job_history "
					 "WHERE id = $1 AND state IN ('dead', 'cancelled') "
					 "AND ($2::name IS NULL OR owner = $2::name) FOR UPDATE",
					 2, types);
		atomizer_prepare(&dup_plan,
					 ATOMIZER_INDEXED "SELECT id FROM atomizer.job "
					 "WHERE queue = $1 AND idempotency_key = $2 "
					 "AND owner = $3::name", 3, dup_types);
		if (move_plans[gen] == NULL)
			atomizer_prepare(&move_plans[gen],
					 psprintf("WITH d AS (DELETE FROM atomizer.job_history WHERE id = $1"
							  " RETURNING *) "
							  "INSERT INTO atomizer.job "
							  "(id, queue, handler, payload, state, priority, run_at,"
							  " attempt, max_attempts, timeout, owner, idempotency_key,"
							  " created_at, last_error, schedule_id%s) "
							  "SELECT id, queue, handler, payload, 'available', priority,"
							  " now(), 0, max_attempts, timeout, owner, idempotency_key,"
							  " created_at, last_error, schedule_id%s FROM d"
							  " RETURNING queue, priority::int4, run_at, id",
							  MOVED[gen], MOVED[gen]), 1, types);
		move_plan = move_plans[gen];
	}
	if (SPI_execute_plan(find_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job");
	if (SPI_processed == 1)
	{
		bool		key_isnull;
		bool		owner_isnull;
		Datum		key;
		Datum		job_owner;
		AtomizerQueue q;
		char	   *queue;

		queue = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		key = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
							&key_isnull);
		job_owner = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
								  &owner_isnull);

		if (!atomizer_lookup_queue(queue, &q))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot retry job " INT64_FORMAT ": queue \"%s\" no longer exists",
							job_id, queue),
					 errhint("Create the queue again with atomizer.create_queue('%s').",
							 queue)));
		if (!key_isnull)
		{
			Datum		dup[3] = {CStringGetTextDatum(queue), key, job_owner};

			if (SPI_execute_plan(dup_plan, dup, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not look up job by idempotency key");
			if (SPI_processed == 1)
				ereport(ERROR,
						(errcode(ERRCODE_UNIQUE_VIOLATION),
						 errmsg("cannot retry job " INT64_FORMAT ": another unfinished job of its owner in queue \"%s\" has the same idempotency key",
								job_id, queue)));
		}
		if (SPI_execute_plan(move_plan, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not retry job " INT64_FORMAT, job_id);
		retried = (SPI_processed == 1);
		if (retried)
		{
			note_waiting_rows();
			if (gen > 0)
				atomizer_workflow_retried(job_id);
			if (q.external)
				atomizer_note_external(queue);
			else
				atomizer_note_enqueue(queue);
		}
	}
	store_end(&call);
	return retried;
}

/*
 * atomizer_store_purge
 *		Delete finished jobs (succeeded, dead, cancelled) that finished at
 *		least older_than ago (NULL: any), of queue (NULL: all), of owner
 *		(NULL: every role's), with their error history.  Returns how many.
 *		A job an unfinished job still depends on is kept.
 */
int64
atomizer_store_purge(const Interval *older_than, const char *queue,
					 const char *owner)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	int			gen = schema_gen();
	StoreCall	call;
	Oid			types[3] = {INTERVALOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int64		count;
	bool		isnull;

	values[0] = older_than ? IntervalPGetDatum(older_than) : (Datum) 0;
	nulls[0] = older_than ? ' ' : 'n';
	values[1] = queue ? CStringGetTextDatum(queue) : (Datum) 0;
	nulls[1] = queue ? ' ' : 'n';
	values[2] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
	nulls[2] = owner ? ' ' : 'n';

	store_begin(&call);
	if (plans[gen] == NULL)
		atomizer_prepare(&plans[gen],
				 psprintf("WITH d AS (DELETE FROM atomizer.job_history h"
						  " WHERE finished_at <= now() - coalesce($1, interval '0')"
						  " AND ($2::text IS NULL OR queue = $2)"
						  " AND ($3::name IS NULL OR owner = $3::name)%s RETURNING id), "
						  "e AS (DELETE FROM atomizer.job_error e USING d"
						  " WHERE e.job_id = d.id)%s "
						  "SELECT count(*) FROM d", KEEP_DEPENDED[gen],
						  DROP_EDGES[gen]), 3, types);
	count = DatumGetInt64(run_one(plans[gen], values, nulls, false, SPI_OK_SELECT,
								  "purge jobs", 1, &isnull));
	store_end(&call);
	return count;
}

/*
 * atomizer_store_prune
 *		The scheduler's pruning: delete up to limit finished jobs (not dead
 *		ones) older than their queue's retention, with their errors; not
 *		one an unfinished job still depends on.
 */
int64
atomizer_store_prune(int limit)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	int			gen = schema_gen();
	StoreCall	call;
	Oid			types[1] = {INT4OID};
	Datum		arg = Int32GetDatum(limit);
	bool		isnull;
	int64		count;

	/*
	 * One read of the history, as far as it takes to find limit jobs, and
	 * a probe of the primary key per job deleted, whatever the statistics
	 * say when the plan is made: planned while the history looked empty
	 * (after a purge and a vacuum), the plain statement became a nested
	 * loop that read the whole history again for every row (a pass over
	 * 10,000,000 rows took about ten minutes, and the scheduler started no
	 * worker meanwhile).  The OFFSET 0s keep the dependency test a probe
	 * per candidate, after the retention test.
	 */
	store_begin(&call);
	if (plans[gen] == NULL)
		atomizer_prepare(&plans[gen],
					 psprintf(ATOMIZER_INDEXED "WITH d AS (DELETE FROM atomizer.job_history h"
							  " WHERE h.id = ANY (ARRAY(SELECT p.id FROM"
							  " (SELECT h.id FROM atomizer.job_history h"
							  "  JOIN atomizer.queue q ON q.name = h.queue"
							  "  WHERE h.state <> 'dead'"
							  "  AND h.finished_at < now() - q.retention OFFSET 0) p%s"
							  " LIMIT $1)) RETURNING h.id), "
							  "e AS (DELETE FROM atomizer.job_error e USING d"
							  " WHERE e.job_id = d.id)%s "
							  "SELECT count(*) FROM d", PRUNE_KEEP_DEPENDED[gen],
							  DROP_EDGES[gen]), 1, types);
	count = DatumGetInt64(run_one(plans[gen], &arg, NULL, false, SPI_OK_SELECT,
								  "prune finished jobs", 1, &isnull));

	/* unique_for windows that have passed (0.2.0's objects only) */
	if (OidIsValid(get_relname_relid("job_unique", get_namespace_oid("atomizer", false))))
	{
		static SPIPlanPtr windows_plan = NULL;

		atomizer_prepare(&windows_plan,
						 "DELETE FROM atomizer.job_unique WHERE ctid = ANY (ARRAY("
						 "SELECT ctid FROM atomizer.job_unique"
						 " WHERE until < clock_timestamp() LIMIT $1))", 1, types);
		if (SPI_execute_plan(windows_plan, &arg, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not prune passed unique_for windows");
	}
	store_end(&call);
	return count;
}

/* ------------------------------------------------------------------------
 * Running jobs: leases of external workers, orphans of dead workers
 * ------------------------------------------------------------------------ */

/*
 * atomizer_store_lock_leased
 *		Lock job_id and check that it is running under a live lease of an
 *		external worker (and of attempt, if given); *job gets its id,
 *		attempt, max_attempts and queue.  Every way it is not is an ERROR
 *		with SQLSTATE 55000 (or 42704: no such job).
 */
void
atomizer_store_lock_leased(int64 job_id, bool attempt_given, int attempt,
						   AtomizerJob *job)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr history_plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(job_id);
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *state;
	char	   *worker;
	bool		lease_null;
	TimestampTz lease_until;

	store_begin(&call);
	atomizer_prepare_opts(&plan,
						  ATOMIZER_INDEXED "SELECT j.state, j.attempt, coalesce(j.max_attempts, q.max_attempts, 1),"
						  " j.lease_until, j.worker, j.queue"
						  " FROM atomizer.job j LEFT JOIN atomizer.queue q ON q.name = j.queue"
						  " WHERE j.id = $1 FOR UPDATE OF j", 1, types,
						  CURSOR_OPT_GENERIC_PLAN);
	atomizer_prepare(&history_plan,
			"SELECT state FROM atomizer.job_history WHERE id = $1", 1, types);

	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
	if (SPI_processed == 0)
	{
		/* not read-only: a fresh snapshot sees a completion we waited for */
		if (SPI_execute_plan(history_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look up job " INT64_FORMAT, job_id);
		if (SPI_processed == 1 &&
			strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				   "cancelled") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_ATOMIZER_CANCELLED),
					 errmsg("job " INT64_FORMAT " was cancelled", job_id),
					 errdetail("atomizer.cancel() ended it; nothing its worker reports about it is recorded."),
					 errhint("Stop working on the job.")));
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
	memset(job, 0, sizeof(AtomizerJob));
	job->id = job_id;
	job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	lease_until = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &lease_null));
	worker = SPI_getvalue(tup, desc, 5);
	job->queue = MemoryContextStrdup(caller_cxt, SPI_getvalue(tup, desc, 6));

	if (strcmp(state, "running") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job " INT64_FORMAT " is not running", job_id),
				 errdetail("It is waiting for attempt %d; a lease it had was lost.",
						   job->attempt + 1)));
	if (lease_null || atomizer_worker_id_reserved(worker))
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
	store_end(&call);
}

/* qsort comparator of indexes into lock_many_ids, by id */
static const int64 *lock_many_ids;

static int
compare_by_id(const void *a, const void *b)
{
	int64		x = lock_many_ids[*(const int *) a];
	int64		y = lock_many_ids[*(const int *) b];

	return (x > y) - (x < y);
}

/*
 * atomizer_store_lock_leased_many
 *		The set-based atomizer_store_lock_leased, for complete_many() and
 *		claim(completed => ...): lock the n distinct jobs ids in one
 *		statement, in id order.  True when every one of them is running
 *		under a live lease of an external worker (and of attempts[i], where
 *		attempts is not NULL and attempts_null[i] is false); *queues and
 *		*nqueues get the distinct queues of the jobs.  False when any is
 *		not: the caller then locks them one by one, which says exactly what
 *		is wrong (an ERROR) with the first such job.
 */
bool
atomizer_store_lock_leased_many(const int64 *ids, const int32 *attempts,
								const bool *attempts_null, int n,
								char ***queues, int *nqueues)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	Oid			types[1] = {INT8ARRAYOID};
	Datum	   *id_datums;
	Datum		arg;
	TimestampTz now = GetCurrentTimestamp();
	bool		ok = true;
	int			nq = 0;
	char	  **qs;
	int		   *order;

	id_datums = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		id_datums[i] = Int64GetDatum(ids[i]);
	arg = PointerGetDatum(construct_array(id_datums, n, INT8OID, 8,
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	qs = palloc(sizeof(char *) * n);
	order = palloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
		order[i] = i;
	lock_many_ids = ids;
	qsort(order, n, sizeof(int), compare_by_id);

	store_begin(&call);
	atomizer_prepare_opts(&plan,
						  ATOMIZER_INDEXED "SELECT j.id, j.state = 'running', j.attempt, j.lease_until, j.worker,"
						  " j.queue FROM atomizer.job j WHERE j.id = ANY($1)"
						  " ORDER BY j.id FOR UPDATE OF j", 1, types,
						  CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_plan(plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up %d jobs", n);
	if (SPI_processed != (uint64) n)
		ok = false;
	for (uint64 r = 0; ok && r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		lease_null;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		bool		running = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		int32		attempt = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		TimestampTz lease_until = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4,
																	&lease_null));
		char	   *worker = SPI_getvalue(tup, desc, 5);
		char	   *queue = SPI_getvalue(tup, desc, 6);
		int			i;

		if (!running || lease_null || lease_until < now ||
			atomizer_worker_id_reserved(worker))
		{
			ok = false;
			break;
		}
		/* rows come in id order, as order[] has the arguments */
		i = order[r];
		if (ids[i] != id ||
			(attempts != NULL && !attempts_null[i] && attempts[i] != attempt))
		{
			ok = false;
			break;
		}
		for (i = 0; i < nq && strcmp(qs[i], queue) != 0; i++)
			;
		if (i == nq)
			qs[nq++] = MemoryContextStrdup(caller_cxt, queue);
	}
	store_end(&call);
	*queues = qs;
	*nqueues = nq;
	return ok;
}

/*
 * atomizer_store_extend_lease
 *		A heartbeat: the lease of a running job ends "lease" from now (NULL:
 *		the claim's lease).  Returns the new end.
 */
TimestampTz
atomizer_store_extend_lease(int64 job_id, const Interval *lease)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[2] = {INT8OID, INTERVALOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;
	TimestampTz until;

	values[0] = Int64GetDatum(job_id);
	values[1] = lease ? IntervalPGetDatum(lease) : (Datum) 0;
	nulls[1] = lease ? ' ' : 'n';
	store_begin(&call);
	atomizer_prepare(&plan,
			ATOMIZER_INDEXED "UPDATE atomizer.job SET lease = coalesce($2, lease),"
			" lease_until = clock_timestamp() + coalesce($2, lease,"
			"  interval '5 minutes') WHERE id = $1 RETURNING lease_until",
			2, types);
	until = DatumGetTimestampTz(run_one(plan, values, nulls, false,
										SPI_OK_UPDATE_RETURNING,
										"extend a job's lease", 1, &isnull));
	store_end(&call);
	return until;
}

/*
 * atomizer_store_expired_leases
 *		Lock (SKIP LOCKED) the running jobs of external workers whose lease
 *		has passed; *jobs gets them (id, attempt, max_attempts, queue), and
 *		*reasons the failure message of each.  *next_end is the earliest
 *		lease end of the others (DT_NOEND if none).
 */
int
atomizer_store_expired_leases(AtomizerJob **jobs, char ***reasons,
							  TimestampTz *next_end)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr next_plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	uint64		n;
	bool		isnull;

	store_begin(&call);
	atomizer_prepare(&plan,
			ATOMIZER_INDEXED "SELECT j.id, j.attempt, coalesce(j.max_attempts, q.max_attempts, 1),"
			" j.queue, j.worker, j.lease_until"
			" FROM atomizer.job j LEFT JOIN atomizer.queue q ON q.name = j.queue"
			" WHERE j.state = 'running' AND j.lease_until < clock_timestamp()"
			" FOR UPDATE OF j SKIP LOCKED", 0, NULL);
	atomizer_prepare(&next_plan,
			ATOMIZER_INDEXED "SELECT min(lease_until) FROM atomizer.job"
			" WHERE state = 'running' AND lease_until >= clock_timestamp()", 0, NULL);

	if (SPI_execute_plan(plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for expired leases");
	n = SPI_processed;
	*jobs = MemoryContextAllocZero(caller_cxt, sizeof(AtomizerJob) * Max(n, 1));
	*reasons = MemoryContextAllocZero(caller_cxt, sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerJob *job = &(*jobs)[i];
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);

		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		job->queue = SPI_getvalue(tup, desc, 4);
		(*reasons)[i] = psprintf("lease of worker \"%s\" expired at %s",
								 SPI_getvalue(tup, desc, 5),
								 SPI_getvalue(tup, desc, 6));
		MemoryContextSwitchTo(old);
	}

	*next_end = DT_NOEND;
	if (SPI_execute_plan(next_plan, NULL, NULL, true, 0) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			*next_end = DatumGetTimestampTz(d);
	}
	store_end(&call);
	return (int) n;
}

/*
 * atomizer_store_running_internal
 *		Lock (SKIP LOCKED) the running jobs of atomizer's own workers, for
 *		orphan recovery: *jobs gets them (id, attempt, max_attempts, queue),
 *		*workers their worker identities.  Rows locked first, worker slots
 *		read after (by the caller): a worker that claimed after our
 *		snapshot is then seen alive.
 */
int
atomizer_store_running_internal(AtomizerJob **jobs, char ***workers)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	uint64		n;

	store_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT j.id, j.worker, j.attempt,"
					 " coalesce(j.max_attempts, q.max_attempts, 1), j.queue"
					 " FROM atomizer.job j"
					 " LEFT JOIN atomizer.queue q ON q.name = j.queue"
					 " WHERE j.state = 'running' AND j.worker LIKE '"
					 ATOMIZER_WORKER_ID_PREFIX "%'"
					 " FOR UPDATE OF j SKIP LOCKED", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for orphaned jobs");

	n = SPI_processed;
	*jobs = MemoryContextAllocZero(caller_cxt, sizeof(AtomizerJob) * Max(n, 1));
	*workers = MemoryContextAllocZero(caller_cxt, sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerJob *job = &(*jobs)[i];
		MemoryContext old = MemoryContextSwitchTo(caller_cxt);
		bool		isnull;

		job->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		(*workers)[i] = SPI_getvalue(tup, desc, 2);
		job->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		job->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		job->queue = SPI_getvalue(tup, desc, 5);
		MemoryContextSwitchTo(old);
	}
	store_end(&call);
	return (int) n;
}

/*
 * atomizer_store_count_running
 *		How many jobs run under worker identity worker (locked or not).
 */
int64
atomizer_store_count_running(const char *worker)
{
	static SPIPlanPtr plan = NULL;
	StoreCall	call;
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(worker);
	bool		isnull;
	int64		n = 0;

	store_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT count(*) FROM atomizer.job"
					 " WHERE state = 'running' AND worker = $1", 1, types);
	n = DatumGetInt64(run_one(plan, &arg, NULL, true, SPI_OK_SELECT,
							  "count a worker's running jobs", 1, &isnull));
	store_end(&call);
	return n;
}

/*
 * atomizer_store_running_workers
 *		The distinct worker identities of atomizer's workers' running jobs,
 *		read without locking them (rows a dying worker still locks too),
 *		palloc'd in the caller's context.
 */
int
atomizer_store_running_workers(char ***workers)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StoreCall	call;
	uint64		n;

	store_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT DISTINCT worker FROM atomizer.job"
					 " WHERE state = 'running' AND worker LIKE '"
					 ATOMIZER_WORKER_ID_PREFIX "%'", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the running jobs' workers");
	n = SPI_processed;
	*workers = MemoryContextAllocZero(caller_cxt, sizeof(char *) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		char	   *w = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		(*workers)[i] = MemoryContextStrdup(caller_cxt, w);
	}
	store_end(&call);
	return (int) n;
}

/*
 * atomizer_store_sample_unfinished
 *		Every role's unfinished jobs per queue and state, and the run_at of
 *		each queue's oldest due job: the scheduler's sample for the
 *		dashboard's gauges (rollup.c).  One scan of the hot table, which
 *		holds unfinished jobs only: the history is never counted.  The
 *		states are those of atomizer.jobs: every stored state but 'running'
 *		waits, and is scheduled, retrying or available by its run_at.
 *		Returns how many queues have unfinished jobs; *samples is palloc'd.
 */
int
atomizer_store_sample_unfinished(AtomizerGaugeSample **samples)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext cxt = CurrentMemoryContext;	/* outlives SPI's */
	StoreCall	call;
	int			n;

	store_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT queue,"
					 " count(*) FILTER (WHERE w AND run_at > now() AND attempt = 0),"
					 " count(*) FILTER (WHERE w AND run_at <= now()),"
					 " count(*) FILTER (WHERE state = 'running'),"
					 " count(*) FILTER (WHERE w AND run_at > now() AND attempt > 0),"
					 " count(*) FILTER (WHERE state = 'blocked'),"
					 " min(run_at) FILTER (WHERE w AND run_at <= now())"
					 " FROM (SELECT queue, state, run_at, attempt,"
					 "  state NOT IN ('running', 'blocked') AS w FROM atomizer.job) j"
					 " GROUP BY queue", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not count unfinished jobs");
	n = (int) SPI_processed;
	*samples = MemoryContextAllocZero(cxt, sizeof(AtomizerGaugeSample) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		AtomizerGaugeSample *sample = &(*samples)[i];
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(tup, desc, 1, &isnull);
		text_to_cstring_buffer(DatumGetTextPP(d), sample->queue, NAMEDATALEN);
		for (int g = 0; g < ATOMIZER_GAUGES; g++)
			sample->n[g] = DatumGetInt64(SPI_getbinval(tup, desc, 2 + g, &isnull));
		d = SPI_getbinval(tup, desc, 2 + ATOMIZER_GAUGES, &isnull);
		sample->oldest_available = isnull ? 0 : DatumGetTimestampTz(d);
	}
	store_end(&call);
	return n;
}

/*
 * atomizer_store_external_queue_counts
 *		Every role's jobs per state, and the oldest available one's run_at,
 *		of each external queue, into rsinfo's tuplestore (columns: queue,
 *		scheduled, available, running, retrying, succeeded, cancelled, dead,
 *		oldest_available).  For visibility.c: counts and times only.
 */
void
atomizer_store_external_queue_counts(ReturnSetInfo *rsinfo)
{
	atomizer_query_as_owner(rsinfo,
							"SELECT q.name,"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'scheduled'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'available'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'running'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'retrying'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'succeeded'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'cancelled'),"
							" pg_catalog.count(j.id) FILTER (WHERE j.state = 'dead'),"
							" pg_catalog.min(j.run_at) FILTER (WHERE j.state = 'available')"
							" FROM atomizer.queue q"
							" LEFT JOIN atomizer.jobs j ON j.queue = q.name"
							" WHERE q.external"
							" GROUP BY q.name");
}
