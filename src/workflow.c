/*-------------------------------------------------------------------------
 *
 * workflow.c
 *	  Jobs that wait for other jobs: enqueue(…, depends_on,
 *	  on_dependency_failure), and the release of a job when its last
 *	  dependency finishes, in the transaction that finishes it.
 *
 *	  What it owns:
 *
 *	  - atomizer.job_dependency (one row per edge: job_id waits for
 *		depends_on) and the columns job.blockers (how many dependencies
 *		are unfinished) and job.on_dependency_failure ('cancel' or 'run';
 *		NULL for a job without dependencies);
 *	  - the moves of the stored state 'blocked': a job with an unfinished
 *		dependency is made blocked; when its last one finishes it becomes
 *		available (the views call it scheduled while its run_at is
 *		ahead); a dependency that ends dead or cancelled cancels it (with
 *		'cancel'; history.cancelled_by names that dependency) or counts as
 *		finished (with 'run');
 *	  - retry() of a job whose dependents it cancelled: they are blocked
 *		again (see atomizer_workflow_retried);
 *	  - dependencies() and dependencies(job_id).
 *
 *	  Why no release is lost or doubled.  An enqueue locks the unfinished
 *	  dependencies it names FOR KEY SHARE before it writes its edges, and
 *	  reads the finished ones from the history in a later statement; a
 *	  finish deletes the dependency's row, which waits for that lock.  So
 *	  either the enqueue sees the dependency finished, or the finish comes
 *	  after the enqueue's commit and sees its edges.  Every job finished
 *	  in a transaction is noted (jobstore.c calls
 *	  atomizer_workflow_note_finished); just before the commit (and
 *	  before PREPARE TRANSACTION), one pass counts their blocked
 *	  dependents down, with a fresh snapshot, locking first, in id order,
 *	  those that wait for more than one job.  Two transactions finishing
 *	  dependencies of the same job lock it in turn, and the second counts
 *	  from the first's result: the job is released once.  The release commits with the finish, or neither
 *	  happens.  While atomizer.job_dependency has no pages (no job has ever
 *	  depended on another, or every edge was purged and vacuumed away), the
 *	  pass costs one relation size look-up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_dependencies);
PG_FUNCTION_INFO_V1(atomizer_jobs_deleted);
PG_FUNCTION_INFO_V1(atomizer_dependencies_of);

/* a job waits for at most this many others (a fan-in callback of a batch) */
#define MAX_DEPENDENCIES	100000

/* The jobs this transaction finished, for the release at pre-commit. */
typedef struct Finished
{
	int64		id;
	bool		failed;			/* dead or cancelled */
	int			level;			/* (sub)transaction nesting level */
} Finished;

static Finished *finished = NULL;	/* in TopTransactionContext */
static int	nfinished = 0;
static int	maxfinished = 0;
static bool callbacks_registered = false;

typedef struct WorkflowCall
{
	AtomizerPrivState priv;
} WorkflowCall;

static void
call_begin(WorkflowCall *call)
{
	atomizer_become_owner(&call->priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
call_end(WorkflowCall *call)
{
	SPI_finish();
	atomizer_restore_caller(&call->priv);
}

static Datum
int8_array(const int64 *values, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(values[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL,
										   TYPALIGN_DOUBLE));
}

static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* ------------------------------------------------------------------------
 * Enqueue with dependencies
 * ------------------------------------------------------------------------ */

/*
 * atomizer_deps_parse
 *		The depends_on (bigint[]) and on_dependency_failure (text) arguments
 *		at deps_arg and deps_arg + 1.  False when the job has no
 *		dependencies (NULL or an empty array); the policy is checked
 *		either way.  The ids come sorted, each once.
 */
bool
atomizer_deps_parse(FunctionCallInfo fcinfo, int deps_arg, AtomizerDeps *deps)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			m = 0;

	memset(deps, 0, sizeof(*deps));
	if (PG_NARGS() <= deps_arg)
		return false;
	if (PG_NARGS() > deps_arg + 1)
	{
		char	   *policy;

		if (PG_ARGISNULL(deps_arg + 1))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("on_dependency_failure must not be null"),
					 errhint("Use 'cancel' (the default) or 'run'.")));
		policy = text_to_cstring(PG_GETARG_TEXT_PP(deps_arg + 1));
		if (strcmp(policy, "run") == 0)
			deps->run = true;
		else if (strcmp(policy, "cancel") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid on_dependency_failure \"%s\"", policy),
					 errhint("Use 'cancel' to cancel the job when a dependency ends dead or cancelled, or 'run' to run it once every dependency has finished, whatever the outcome.")));
	}
	if (PG_ARGISNULL(deps_arg))
		return false;
	arr = PG_GETARG_ARRAYTYPE_P(deps_arg);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("depends_on must be a one-dimensional array")));
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	if (n == 0)
		return false;
	if (n > MAX_DEPENDENCIES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a job depends on at most %d jobs", MAX_DEPENDENCIES),
				 errdetail("%d were given.", n),
				 errhint("Make a job per part that depends on that part, and one that depends on those.")));
	deps->ids = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("depends_on element %d is null", i + 1),
					 errhint("Name existing jobs by their ids.")));
		deps->ids[i] = DatumGetInt64(elems[i]);
	}
	qsort(deps->ids, n, sizeof(int64), compare_int64);
	for (int i = 0; i < n; i++)
		if (m == 0 || deps->ids[m - 1] != deps->ids[i])
			deps->ids[m++] = deps->ids[i];
	deps->n = m;
	return true;
}

/*
 * dep_of_row
 *		The index in deps->ids of the job id in column 1 of SPI_tuptable's
 *		row r, or -1.
 */
static int
dep_of_row(const AtomizerDeps *deps, uint64 r)
{
	bool		isnull;
	int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
												 SPI_tuptable->tupdesc, 1, &isnull));
	int64	   *hit = bsearch(&id, deps->ids, deps->n, sizeof(int64), compare_int64);

	return hit ? (int) (hit - deps->ids) : -1;
}

/*
 * atomizer_deps_lock
 *		Before the job is written: lock the unfinished dependencies (FOR KEY
 *		SHARE, so none of them finishes until this transaction ends) and
 *		read the finished ones.  A dependency must be a job the caller may
 *		see (its own; any, for an admin: owner NULL), unfinished or in the
 *		history; anything else is an ERROR, as for a missing job.  Sets
 *		deps->pending, and deps->failed_id/failed_state to the first one
 *		that ended dead or cancelled, if any.
 */
void
atomizer_deps_lock(AtomizerDeps *deps, const char *owner)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr done_plan = NULL;
	MemoryContext caller_cxt = CurrentMemoryContext;
	WorkflowCall call;
	Oid			types[2] = {INT8ARRAYOID, TEXTOID};
	bool	   *seen = palloc0(sizeof(bool) * deps->n);
	int64	   *left = palloc(sizeof(int64) * deps->n);
	int			nleft = deps->n;

	memcpy(left, deps->ids, sizeof(int64) * deps->n);
	deps->pending = 0;
	deps->failed_id = 0;
	call_begin(&call);
	atomizer_prepare(&lock_plan,
					 ATOMIZER_INDEXED "SELECT id FROM atomizer.job WHERE id = ANY ($1)"
					 " AND ($2::name IS NULL OR owner = $2::name)"
					 " ORDER BY id FOR KEY SHARE", 2, types);
	atomizer_prepare(&done_plan,
					 "SELECT id, state FROM atomizer.job_history WHERE id = ANY ($1)"
					 " AND ($2::name IS NULL OR owner = $2::name)", 2, types);

	/*
	 * Twice at most: a job retried between the two look-ups moved from the
	 * history back to the hot table.
	 */
	for (int round = 0; round < 2 && nleft > 0; round++)
	{
		Datum		values[2];
		char		nulls[2] = {' ', owner ? ' ' : 'n'};

		values[0] = int8_array(left, nleft);
		values[1] = owner ? CStringGetTextDatum(owner) : (Datum) 0;
		if (SPI_execute_plan(lock_plan, values, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not lock the dependencies");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			int			k = dep_of_row(deps, r);

			if (k >= 0 && !seen[k])
			{
				seen[k] = true;
				deps->pending++;
			}
		}
		if (SPI_execute_plan(done_plan, values, nulls, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the dependencies");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			int			k = dep_of_row(deps, r);
			char	   *state = SPI_getvalue(SPI_tuptable->vals[r],
											 SPI_tuptable->tupdesc, 2);

			if (k < 0 || seen[k])
				continue;
			seen[k] = true;
			if (strcmp(state, "succeeded") != 0 &&
				(deps->failed_id == 0 || deps->ids[k] < deps->failed_id))
			{
				deps->failed_id = deps->ids[k];
				deps->failed_state = MemoryContextStrdup(caller_cxt, state);
			}
		}
		nleft = 0;
		for (int i = 0; i < deps->n; i++)
			if (!seen[i])
				left[nleft++] = deps->ids[i];
	}
	call_end(&call);
	if (nleft > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("dependency " INT64_FORMAT " does not exist", left[0]),
				 nleft > 1 ? errdetail("%d of the %d jobs named in depends_on do not exist.",
									   nleft, deps->n) : 0,
				 errhint("A job can depend on jobs of yours that exist: unfinished, or finished and not yet purged.")));
}

/*
 * atomizer_deps_preset
 *		For a job store insert that writes the dependency columns itself:
 *		the state, count and policy atomizer_deps_attach would set.
 */
void
atomizer_deps_preset(const AtomizerDeps *deps, AtomizerNewJobs *args)
{
	args->deps = true;
	args->blocked = deps->pending > 0 || (deps->failed_id != 0 && !deps->run);
	args->blockers = deps->pending;
	args->deps_run = deps->run;
}

/*
 * atomizer_deps_attach
 *		After the jobs ids[] (n of them, all new) are written: their edges,
 *		and (unless written, by an insert atomizer_deps_preset set up)
 *		their policy and count of unfinished dependencies, and the state
 *		blocked if one is unfinished.  A job whose dependency already ended
 *		dead or cancelled, under 'cancel', is cancelled now.  Returns
 *		whether the jobs wait (blocked or cancelled) rather than being
 *		available.
 */
bool
atomizer_deps_attach(const AtomizerDeps *deps, const int64 *ids, int n,
					 const char *owner, bool written)
{
	static SPIPlanPtr edge_plan = NULL;
	static SPIPlanPtr set_plan = NULL;
	WorkflowCall call;
	bool		cancel = deps->failed_id != 0 && !deps->run;
	bool		waits = deps->pending > 0 || cancel;
	Datum		values[4];

	if (n == 0)
		return waits;
	call_begin(&call);
	{
		Oid			edge_types[3] = {INT8ARRAYOID, INT8ARRAYOID, TEXTOID};
		Oid			set_types[4] = {INT8ARRAYOID, TEXTOID, INT4OID, BOOLOID};

		atomizer_prepare(&edge_plan,
						 "INSERT INTO atomizer.job_dependency (job_id, depends_on, owner)"
						 " SELECT j, d, $3::name FROM unnest($1) AS j, unnest($2) AS d",
						 3, edge_types);
		atomizer_prepare(&set_plan,
						 ATOMIZER_INDEXED "UPDATE atomizer.job SET on_dependency_failure = $2,"
						 " blockers = $3,"
						 " state = CASE WHEN $4 THEN 'blocked' ELSE state END"
						 " WHERE id = ANY ($1)", 4, set_types);
	}
	values[0] = int8_array(ids, n);
	values[1] = int8_array(deps->ids, deps->n);
	values[2] = CStringGetTextDatum(owner);
	if (SPI_execute_plan(edge_plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write the dependencies");
	values[1] = CStringGetTextDatum(deps->run ? "run" : "cancel");
	values[2] = Int32GetDatum(deps->pending);
	values[3] = BoolGetDatum(waits);
	if (!written &&
		SPI_execute_plan(set_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not block the dependent jobs");
	call_end(&call);

	if (cancel)
	{
		int64	   *by = palloc(sizeof(int64) * n);
		char	  **states = palloc(sizeof(char *) * n);

		for (int i = 0; i < n; i++)
		{
			by[i] = deps->failed_id;
			states[i] = deps->failed_state;
		}
		(void) atomizer_store_cancel_dependents((int64 *) ids, by, states, n);
	}
	return waits;
}

/* ------------------------------------------------------------------------
 * The release, just before the commit
 * ------------------------------------------------------------------------ */

/*
 * edges_exist
 *		Whether atomizer.job_dependency has a page: with none, no finished
 *		job has a dependent.  A dependent's edges are written (extending the
 *		relation) before its enqueue commits, and a finish of a dependency
 *		it locked waits for that commit, so a finish that looks after its
 *		delete sees every page that matters.
 */
static bool
edges_exist(void)
{
	Oid			ns = get_namespace_oid("atomizer", true);
	Oid			relid = OidIsValid(ns) ? get_relname_relid("job_dependency", ns) : InvalidOid;
	Relation	rel;
	BlockNumber nblocks;

	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, AccessShareLock);
	nblocks = RelationGetNumberOfBlocks(rel);
	table_close(rel, AccessShareLock);
	return nblocks > 0;
}

/*
 * run_latest
 *		Execute plan with a snapshot taken now (not the transaction's, which
 *		in REPEATABLE READ is older than the commits we must see).
 */
static int
run_latest(SPIPlanPtr plan, Datum *values, const char *nulls)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	int			rc;

	rc = SPI_execute_snapshot(plan, values, nulls, snap, InvalidSnapshot,
							  false, false, 0);
	UnregisterSnapshot(snap);
	return rc;
}

/*
 * The dependents of the jobs finished so far ($1: their ids, $2: whether
 * each failed), with how many of those each one waits for and the first
 * that failed; a job that is back in the hot table (retried in the same
 * transaction) is not counted.  The edges are read through their index.
 */
#define FINISHED_EDGES \
	"WITH f AS MATERIALIZED (SELECT * FROM unnest($1, $2) AS f(id, failed)" \
	"  WHERE NOT EXISTS (SELECT 1 FROM atomizer.job p WHERE p.id = f.id))," \
	" e AS (SELECT d.job_id, count(*)::int4 AS n," \
	"  min(f.id) FILTER (WHERE f.failed) AS failed_by" \
	"  FROM atomizer.job_dependency d JOIN f ON f.id = d.depends_on" \
	"  WHERE d.depends_on = ANY ($1)" \
	"  GROUP BY d.job_id) "

/*
 * release_once
 *		One pass over the jobs finished so far (ids[], failed[]): count
 *		their blocked dependents down, make those whose last dependency
 *		finished available (and wake whoever runs their queue at commit),
 *		and cancel those a failure cancels (which notes them finished, for
 *		the next pass).
 *
 *		A dependent that waits for more than one job may be counted down by
 *		other transactions at the same time: those are locked first, in id
 *		order, so that two passes never wait for each other in a cycle.  One
 *		that waits for one job only (a fan-out's parts) can be counted down
 *		by no one else, and is not locked separately: the update locks it.
 *		Every statement reads with a snapshot taken now; in READ COMMITTED a
 *		row updated meanwhile is counted from its latest version.
 */
static void
release_once(const int64 *ids, const bool *failed, int n)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr cancel_plan = NULL;
	static SPIPlanPtr release_plan = NULL;
	WorkflowCall call;
	Datum		values[2];
	Datum	   *failed_d = palloc(sizeof(Datum) * n);
	bool		any_failed = false;
	int64	   *cancel_ids = NULL;
	int64	   *cancel_by = NULL;
	char	  **cancel_states = NULL;
	int			ncancel = 0;

	for (int i = 0; i < n; i++)
	{
		failed_d[i] = BoolGetDatum(failed[i]);
		any_failed |= failed[i];
	}
	values[0] = int8_array(ids, n);
	values[1] = PointerGetDatum(construct_array(failed_d, n, BOOLOID, 1, true,
												TYPALIGN_CHAR));

	call_begin(&call);
	{
		Oid			lock_types[1] = {INT8ARRAYOID};
		Oid			types[2] = {INT8ARRAYOID, BOOLARRAYOID};

		atomizer_prepare(&lock_plan,
						 ATOMIZER_INDEXED "SELECT c.id FROM atomizer.job c"
						 " WHERE c.state = 'blocked' AND c.blockers > 1 AND c.id IN"
						 " (SELECT d.job_id FROM atomizer.job_dependency d"
						 "  WHERE d.depends_on = ANY ($1))"
						 " ORDER BY c.id FOR NO KEY UPDATE OF c", 1, lock_types);
		atomizer_prepare(&cancel_plan,
						 FINISHED_EDGES
						 ATOMIZER_INDEXED "SELECT c.id, e.failed_by,"
						 "  (SELECT h.state FROM atomizer.job_history h"
						 "   WHERE h.id = e.failed_by)"
						 " FROM atomizer.job c JOIN e ON e.job_id = c.id"
						 " WHERE c.state = 'blocked' AND e.failed_by IS NOT NULL"
						 " AND c.on_dependency_failure = 'cancel' ORDER BY c.id",
						 2, types);
		atomizer_prepare(&release_plan,
						 FINISHED_EDGES
						 ATOMIZER_INDEXED "UPDATE atomizer.job c SET blockers = c.blockers - e.n,"
						 " state = CASE WHEN c.blockers - e.n > 0 THEN 'blocked'"
						 "  ELSE 'available' END"
						 " FROM e WHERE c.id = e.job_id AND c.state = 'blocked'"
						 " AND (e.failed_by IS NULL OR c.on_dependency_failure = 'run')"
						 " RETURNING c.queue, c.priority::int4, c.run_at, c.id, c.state",
						 2, types);
	}
	if (run_latest(lock_plan, values, NULL) != SPI_OK_SELECT)
		elog(ERROR, "could not lock the dependent jobs");

	if (any_failed)
	{
		if (run_latest(cancel_plan, values, NULL) != SPI_OK_SELECT)
			elog(ERROR, "could not read the dependents of failed jobs");
		ncancel = (int) SPI_processed;
		cancel_ids = palloc(sizeof(int64) * Max(ncancel, 1));
		cancel_by = palloc(sizeof(int64) * Max(ncancel, 1));
		cancel_states = palloc(sizeof(char *) * Max(ncancel, 1));
		for (int r = 0; r < ncancel; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *state = SPI_getvalue(tup, desc, 3);

			cancel_ids[r] = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			cancel_by[r] = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			/* not in the history: deleted by drop_queue(force => true) */
			cancel_states[r] = state ? state : "deleted";
		}
	}

	if (run_latest(release_plan, values, NULL) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not release the dependent jobs");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *state = SPI_getvalue(tup, desc, 5);
		char	   *queue = SPI_getvalue(tup, desc, 1);
		AtomizerClaimKey key;
		AtomizerQueue q;
		bool		isnull;

		if (strcmp(state, "available") != 0)
			continue;
		key.priority = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		key.run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		key.id = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		atomizer_note_waiting(queue, &key);
		if (!atomizer_lookup_queue(queue, &q) || q.paused)
			continue;
		if (q.external)
			atomizer_note_external(queue);
		else
			atomizer_note_enqueue(queue);
	}
	call_end(&call);

	if (ncancel > 0)
		(void) atomizer_store_cancel_dependents(cancel_ids, cancel_by,
												cancel_states, ncancel);
}

/*
 * release_all
 *		Pre-commit: release the dependents of every job this transaction
 *		finished, pass after pass while cancellations finish more.
 */
static void
release_all(void)
{
	/* no portal is left at pre-commit: the statements need a snapshot */
	PushActiveSnapshot(GetLatestSnapshot());
	while (nfinished > 0)
	{
		int			n = nfinished;
		int64	   *ids = palloc(sizeof(int64) * n);
		bool	   *failed = palloc(sizeof(bool) * n);

		for (int i = 0; i < n; i++)
		{
			ids[i] = finished[i].id;
			failed[i] = finished[i].failed;
		}
		nfinished = 0;
		if (!edges_exist())
			break;
		release_once(ids, failed, n);
		CHECK_FOR_INTERRUPTS();
	}
	PopActiveSnapshot();
}

static void
workflow_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (nfinished > 0)
				release_all();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			finished = NULL;	/* TopTransactionContext goes */
			nfinished = 0;
			maxfinished = 0;
			break;
		default:
			break;
	}
}

static void
workflow_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			kept = 0;

	if (nfinished == 0)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (int i = 0; i < nfinished; i++)
			if (finished[i].level < level)
				finished[kept++] = finished[i];
		nfinished = kept;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < nfinished; i++)
			if (finished[i].level >= level)
				finished[i].level = level - 1;
	}
}

/*
 * atomizer_workflow_note_finished
 *		Job id has just left the hot table (succeeded, or failed: dead or
 *		cancelled) in this transaction: its dependents are looked at just
 *		before the commit.
 */
void
atomizer_workflow_note_finished(int64 id, bool failed)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(workflow_xact_callback, NULL);
		RegisterSubXactCallback(workflow_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (nfinished == maxfinished)
	{
		int			grow = maxfinished == 0 ? 64 : maxfinished * 2;

		if (finished == NULL)
			finished = MemoryContextAlloc(TopTransactionContext,
										  sizeof(Finished) * grow);
		else
			finished = repalloc(finished, sizeof(Finished) * grow);
		maxfinished = grow;
	}
	finished[nfinished].id = id;
	finished[nfinished].failed = failed;
	finished[nfinished].level = GetCurrentTransactionNestLevel();
	nfinished++;
}

/* ------------------------------------------------------------------------
 * Retry
 * ------------------------------------------------------------------------ */

/*
 * atomizer_workflow_retried
 *		Job id has just been sent back from the history (retry()); called
 *		connected to SPI as the owner.  It is blocked if one of its
 *		dependencies is unfinished.  Its blocked dependents count it as
 *		unfinished again.  The jobs it cancelled (cancelled_by = id), and
 *		transitively the jobs those cancelled, are blocked again, unless
 *		another of their dependencies ended dead or cancelled too: they
 *		keep their ids, their attempts start from zero.
 */
void
atomizer_workflow_retried(int64 id)
{
	static SPIPlanPtr self_plan = NULL;
	static SPIPlanPtr up_plan = NULL;
	static SPIPlanPtr reblock_plan = NULL;
	Oid			types[1] = {INT8OID};
	Oid			arr_types[1] = {INT8ARRAYOID};
	Datum		arg = Int64GetDatum(id);
	int64	   *frontier = palloc(sizeof(int64));
	int			nfrontier = 1;
	bool		pending = false;

	/*
	 * Finished earlier in this transaction: its dependents have not been
	 * counted down for it yet, and will not be while it is unfinished at
	 * the commit (the release skips a job that is back in the hot table).
	 */
	for (int i = 0; i < nfinished && !pending; i++)
		pending = (finished[i].id == id);

	atomizer_prepare(&self_plan,
					 "UPDATE atomizer.job j SET state = 'blocked', blockers = b.n"
					 " FROM (SELECT count(*)::int4 AS n FROM atomizer.job_dependency d"
					 "  JOIN atomizer.job p ON p.id = d.depends_on"
					 "  WHERE d.job_id = $1) b"
					 " WHERE j.id = $1 AND j.on_dependency_failure IS NOT NULL AND b.n > 0",
					 1, types);
	atomizer_prepare(&up_plan,
					 "UPDATE atomizer.job SET blockers = blockers + 1"
					 " WHERE state = 'blocked' AND id IN"
					 " (SELECT job_id FROM atomizer.job_dependency WHERE depends_on = $1)",
					 1, types);
	atomizer_prepare(&reblock_plan,
					 "WITH c AS (SELECT h.id FROM atomizer.job_history h"
					 "  WHERE h.cancelled_by = ANY ($1) AND h.state = 'cancelled'),"
					 " ok AS (SELECT c.id FROM c WHERE NOT EXISTS"
					 "  (SELECT 1 FROM atomizer.job_dependency d"
					 "   JOIN atomizer.job_history p ON p.id = d.depends_on"
					 "   WHERE d.job_id = c.id AND p.state IN ('dead', 'cancelled')"
					 "   AND p.id NOT IN (SELECT id FROM c))),"
					 " m AS (DELETE FROM atomizer.job_history h USING ok"
					 "  WHERE h.id = ok.id RETURNING h.*) "
					 "INSERT INTO atomizer.job (id, queue, handler, payload, state,"
					 " priority, run_at, attempt, max_attempts, timeout, owner,"
					 " idempotency_key, created_at, schedule_id, tags,"
					 " on_dependency_failure, blockers) "
					 "SELECT id, queue, handler, payload, 'blocked', priority, run_at, 0,"
					 " max_attempts, timeout, owner, idempotency_key, created_at,"
					 " schedule_id, tags, on_dependency_failure,"
					 " (SELECT count(*) FROM atomizer.job_dependency d"
					 "  WHERE d.job_id = m.id AND (d.depends_on IN (SELECT id FROM ok)"
					 "  OR EXISTS (SELECT 1 FROM atomizer.job p WHERE p.id = d.depends_on)))::int4"
					 " FROM m RETURNING id", 1, arr_types);

	if (SPI_execute_plan(self_plan, &arg, NULL, false, 0) != SPI_OK_UPDATE ||
		(!pending &&
		 SPI_execute_plan(up_plan, &arg, NULL, false, 0) != SPI_OK_UPDATE))
		elog(ERROR, "could not retry the dependencies of job " INT64_FORMAT, id);
	frontier[0] = id;
	while (nfrontier > 0)
	{
		Datum		a = int8_array(frontier, nfrontier);

		CHECK_FOR_INTERRUPTS();
		if (SPI_execute_plan(reblock_plan, &a, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not block the dependents of job " INT64_FORMAT " again", id);
		nfrontier = (int) SPI_processed;
		frontier = palloc(sizeof(int64) * Max(nfrontier, 1));
		for (int i = 0; i < nfrontier; i++)
		{
			bool		isnull;

			frontier[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1,
													  &isnull));
		}
	}
}

/*
 * atomizer._jobs_deleted(job_ids bigint[]) RETURNS void
 *		drop_queue(force => true) deletes these unfinished jobs: for the jobs
 *		that depend on them they count as failed, at this commit.  Only the
 *		extension's owner may call it (EXECUTE is revoked from PUBLIC).
 */
Datum
atomizer_jobs_deleted(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			atomizer_workflow_note_finished(DatumGetInt64(elems[i]), true);
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * dependencies(), dependencies(job_id)
 * ------------------------------------------------------------------------ */

/*
 * return_dependencies
 *		Materialize the dependencies of job id: (job_id, state, result,
 *		last_error) in id order; a purged one has only its id.
 */
static Datum
return_dependencies(FunctionCallInfo fcinfo, int64 id)
{
	static SPIPlanPtr plan = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			types[1] = {INT8OID};
	Datum		arg = Int64GetDatum(id);
	WorkflowCall call;

	InitMaterializedSRF(fcinfo, 0);
	call_begin(&call);
	atomizer_prepare(&plan,
					 "SELECT d.depends_on, p.state, p.result, p.last_error"
					 " FROM atomizer.job_dependency d"
					 " LEFT JOIN atomizer.jobs p ON p.id = d.depends_on"
					 " WHERE d.job_id = $1 ORDER BY d.depends_on", 1, types);
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dependencies of job " INT64_FORMAT, id);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		Datum		values[4];
		bool		nulls[4];

		for (int c = 0; c < 4; c++)
			values[c] = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
									  c + 1, &nulls[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	call_end(&call);
	return (Datum) 0;
}

/*
 * atomizer.dependencies() RETURNS SETOF (job_id, state, result, last_error)
 *		In a handler: the dependencies of the job it runs.
 */
Datum
atomizer_dependencies(PG_FUNCTION_ARGS)
{
	int64		id = atomizer_running_job_id();

	if (id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("atomizer.dependencies() can only be called from a job's handler"),
				 errhint("External workers name the job: atomizer.dependencies(job_id).")));
	return return_dependencies(fcinfo, id);
}

/*
 * atomizer.dependencies(job_id) RETURNS SETOF (job_id, state, result,
 *		last_error)
 *		The dependencies of a job the caller may see: its own, any for an
 *		admin, and for a member of atomizer_worker any job of an external
 *		queue (the jobs it claims).  Else an ERROR, as for a missing job.
 */
Datum
atomizer_dependencies_of(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	Oid			caller = GetUserId();
	char	   *owner;
	char	   *queue;
	AtomizerQueue q;
	bool		visible;

	if (!atomizer_store_job_owner(id, &owner, &queue))
		visible = false;
	else if (atomizer_is_admin(caller) ||
			 strcmp(owner, atomizer_role_name(caller)) == 0)
		visible = true;
	else
	{
		Oid			worker = get_role_oid("atomizer_worker", true);

		visible = OidIsValid(worker) && has_privs_of_role(caller, worker) &&
			atomizer_lookup_queue(queue, &q) && q.external;
	}
	if (!visible)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " does not exist", id),
				 errhint("A role sees its own jobs; members of atomizer_worker also those of external queues.")));
	return return_dependencies(fcinfo, id);
}
