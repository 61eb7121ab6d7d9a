/*-------------------------------------------------------------------------
 *
 * store.c
 *	  Writing new jobs into atomizer.job without a planned statement: the
 *	  heap insert and index insertions an INSERT would do, minus parsing,
 *	  plan-cache revalidation, executor start-up and shutdown, and the
 *	  privilege switch around them.  enqueue() and enqueue_many() (jobs.c)
 *	  use it for jobs without an idempotency key, which need no ON CONFLICT,
 *	  and the cron firing (schedule.c) for a batch's jobs;
 *	  measured, it is what brings a single-row enqueue close to a bare
 *	  INSERT (see the README's performance section).  The claim's mark
 *	  (jobstore.c) is done here the same way: the heap updates (and, when
 *	  an update is not HOT, the index insertions) its UPDATE would do; and
 *	  a batch's finish: the deletes and history inserts of its statement.
 *
 *	  The caller has validated every value.  What an INSERT would still do
 *	  is done here: NOT NULL checks (ExecConstraints), every index including
 *	  the partial ones (ExecInsertIndexTuples evaluates their predicates),
 *	  TOAST (the table AM), read-only and parallel-mode checks.  No user
 *	  code runs: the sequence is advanced without a privilege check, as the
 *	  INSERT the extension owner would run.
 *
 *	  If the table is not what this file knows (a trigger was added to it,
 *	  or a column this file does not fill), atomizer_store_jobs returns
 *	  false and the caller uses the INSERT statement instead, so a later
 *	  version's added column with a default can never be written as NULL;
 *	  so does atomizer_store_mark_claimed, for its UPDATE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/index.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/nodeModifyTable.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "atomizer.h"

/* The columns a new job gets a value in, and their types. */
enum
{
	COL_ID,
	COL_QUEUE,
	COL_HANDLER,
	COL_PAYLOAD,
	COL_STATE,
	COL_PRIORITY,
	COL_RUN_AT,
	COL_ATTEMPT,
	COL_MAX_ATTEMPTS,
	COL_TIMEOUT,
	COL_OWNER,
	COL_CREATED_AT,
	COL_SOLO,
	NCOLS
};

/* A column this file reads or writes, by name and type. */
typedef struct StoreColumn
{
	const char *name;
	Oid			type;
} StoreColumn;

static const StoreColumn columns[NCOLS] = {
	{"id", INT8OID},
	{"queue", TEXTOID},
	{"handler", TEXTOID},
	{"payload", JSONBOID},
	{"state", TEXTOID},
	{"priority", INT2OID},
	{"run_at", TIMESTAMPTZOID},
	{"attempt", INT4OID},
	{"max_attempts", INT4OID},
	{"timeout", INTERVALOID},
	{"owner", NAMEOID},
	{"created_at", TIMESTAMPTZOID},
	{"solo", BOOLOID},
};

/* Columns a new job leaves NULL. */
static const char *const null_columns[] = {
	"idempotency_key", "started_at", "last_error", "worker", "lease_until",
	"schedule_id", "lease", "tags", "blockers", "on_dependency_failure",
	"parked",
};

/*
 * Which indexes a new job goes into.  A new job's state, attempt, solo and
 * NULL columns are the same for every job this file writes, so an index
 * whose predicate reads only those either takes every new job or none:
 * found out once (on the first job written after the table's relcache
 * entry changed) and kept, with the index's key columns, so that each job
 * costs one index_insert per index it belongs in, not an index open,
 * IndexInfo build and predicate evaluation per index per enqueue.
 */
#define MAX_INDEXES 8

typedef struct IndexPlan
{
	bool		valid;			/* computed for relid, still current */
	bool		usable;			/* false: use ExecInsertIndexTuples */
	Oid			relid;
	int			n;				/* indexes a new job goes into */
	Oid			oids[MAX_INDEXES];
	bool		unique[MAX_INDEXES];
	int			natts[MAX_INDEXES];
	AttrNumber	attnums[MAX_INDEXES][INDEX_MAX_KEYS];
} IndexPlan;

static IndexPlan index_plan;
static bool callback_registered = false;

static void
relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == index_plan.relid)
		index_plan.valid = false;
}

/*
 * plan_indexes
 *		Fill index_plan for rel, slot holding a new job.
 */
static void
plan_indexes(Relation rel, ResultRelInfo *rri, EState *estate,
			 TupleTableSlot *slot, const int *attnums)
{
	Bitmapset  *constant = NULL;
	ExprContext *econtext = GetPerTupleExprContext(estate);

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	memset(&index_plan, 0, sizeof(index_plan));
	index_plan.relid = RelationGetRelid(rel);
	index_plan.valid = true;

	/* columns every new job has the same value in (attribute numbers offset as pull_varattnos does) */
	for (int i = 0; i < RelationGetDescr(rel)->natts; i++)
	{
		bool		varies = false;

		for (int c = 0; c < NCOLS; c++)
			if (attnums[c] == i && c != COL_STATE && c != COL_ATTEMPT && c != COL_SOLO)
				varies = true;
		if (!varies)
			constant = bms_add_member(constant,
									  i + 1 - FirstLowInvalidHeapAttributeNumber);
	}

	econtext->ecxt_scantuple = slot;
	for (int i = 0; i < rri->ri_NumIndices; i++)
	{
		Relation	irel = rri->ri_IndexRelationDescs[i];
		IndexInfo  *ii = rri->ri_IndexRelationInfo[i];
		int			k = index_plan.n;

		if (ii->ii_Expressions != NIL || ii->ii_ExclusionOps != NULL ||
			irel->rd_rel->relam != BTREE_AM_OID ||
			!irel->rd_index->indimmediate)
			return;				/* not usable */
		if (ii->ii_Predicate != NIL)
		{
			Bitmapset  *used = NULL;
			ExprState  *pred;

			pull_varattnos((Node *) ii->ii_Predicate, 1, &used);
			if (!bms_is_subset(used, constant))
				return;			/* varies between jobs: not usable */
			pred = ExecPrepareQual(ii->ii_Predicate, estate);
			if (!ExecQual(pred, econtext))
				continue;		/* no new job goes into it */
		}
		if (k == MAX_INDEXES)
			return;
		index_plan.oids[k] = RelationGetRelid(irel);
		index_plan.unique[k] = ii->ii_Unique;
		index_plan.natts[k] = ii->ii_NumIndexAttrs;
		for (int a = 0; a < ii->ii_NumIndexAttrs; a++)
		{
			if (ii->ii_IndexAttrNumbers[a] <= 0)
				return;			/* system column: not usable */
			index_plan.attnums[k][a] = ii->ii_IndexAttrNumbers[a];
		}
		index_plan.n++;
	}
	index_plan.usable = true;
}

/*
 * map_columns
 *		Fill attnums[] (0-based attribute numbers) from the table's
 *		descriptor; false if the table has a column, or a column type, this
 *		file does not know.
 */
static bool
map_columns(TupleDesc desc, int *attnums)
{
	for (int c = 0; c < NCOLS; c++)
		attnums[c] = -1;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		known = false;

		if (att->attisdropped)
			continue;
		for (int c = 0; c < NCOLS && !known; c++)
			if (strcmp(NameStr(att->attname), columns[c].name) == 0)
			{
				if (att->atttypid != columns[c].type)
				{
					elog(DEBUG1, "atomizer: jobs are written with an INSERT: column \"%s\" of atomizer.job has another type",
						 columns[c].name);
					return false;
				}
				attnums[c] = i;
				known = true;
			}
		for (int k = 0; k < lengthof(null_columns) && !known; k++)
			if (strcmp(NameStr(att->attname), null_columns[k]) == 0)
				known = true;
		if (!known)
		{
			elog(DEBUG1, "atomizer: jobs are written with an INSERT: the job store does not know column \"%s\" of atomizer.job",
				 NameStr(att->attname));
			return false;
		}
	}
	for (int c = 0; c < NCOLS; c++)
		if (attnums[c] < 0)
		{
			elog(DEBUG1, "atomizer: jobs are written with an INSERT: atomizer.job has no column \"%s\"",
				 columns[c].name);
			return false;
		}
	return true;
}

/*
 * fill_slot
 *		Store one new job in slot.
 */
static void
fill_slot(TupleTableSlot *slot, const int *attnums, const Datum *fixed,
		  const bool *fixed_null, int64 id, Datum payload)
{
	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
	for (int c = 0; c < NCOLS; c++)
	{
		slot->tts_values[attnums[c]] = fixed[c];
		slot->tts_isnull[attnums[c]] = fixed_null[c];
	}
	slot->tts_values[attnums[COL_ID]] = Int64GetDatum(id);
	slot->tts_values[attnums[COL_PAYLOAD]] = payload;
	slot->tts_isnull[attnums[COL_PAYLOAD]] = (payload == (Datum) 0);
	ExecStoreVirtualTuple(slot);
}

/*
 * result_rel
 *		The ResultRelInfo of rel in estate, whose range table it becomes:
 *		an INSERT's, or with updated set an UPDATE's of those columns.
 */
static ResultRelInfo *
result_rel(EState *estate, Relation rel, Bitmapset *updated)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *rri = makeNode(ResultRelInfo);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	if (updated != NULL)
		atomizer_init_update_range_table(estate, rte, updated);
	else
		atomizer_init_range_table(estate, rte);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	return rri;
}

/* What an insert into atomizer.job needs, opened by store_open. */
typedef struct StoreRel
{
	Relation	rel;
	int			attnums[NCOLS];
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	CommandId	cid;
	Oid			seqid;
} StoreRel;

/*
 * store_open
 *		Open atomizer.job for inserts, with the executor state an INSERT
 *		into this one table would have; false, with nothing open, if the
 *		table is not one this file knows how to write.
 */
static bool
store_open(StoreRel *s)
{
	Oid			nsp = get_namespace_oid(ATOMIZER_SCHEMA, false);
	Oid			relid = get_relname_relid("job", nsp);

	s->seqid = get_relname_relid("job_id_seq", nsp);
	if (!OidIsValid(relid) || !OidIsValid(s->seqid))
		return false;

	PreventCommandIfReadOnly("atomizer.enqueue()");
	PreventCommandIfParallelMode("atomizer.enqueue()");

	s->rel = table_open(relid, RowExclusiveLock);
	if (s->rel->trigdesc != NULL || s->rel->rd_rel->relkind != RELKIND_RELATION)
		elog(DEBUG1, "atomizer: jobs are written with an INSERT: atomizer.job has triggers or is not a plain table");
	if (s->rel->trigdesc != NULL || s->rel->rd_rel->relkind != RELKIND_RELATION ||
		!map_columns(RelationGetDescr(s->rel), s->attnums))
	{
		table_close(s->rel, RowExclusiveLock);
		return false;
	}

	s->estate = CreateExecutorState();
	s->rri = result_rel(s->estate, s->rel, NULL);
	s->slot = table_slot_create(s->rel, &s->estate->es_tupleTable);
	s->cid = GetCurrentCommandId(true);
	return true;
}

/*
 * store_close
 *		Close what store_open opened (the table stays locked).
 */
static void
store_close(StoreRel *s)
{
	ExecCloseIndices(s->rri);
	ExecResetTupleTable(s->estate->es_tupleTable, false);
	FreeExecutorState(s->estate);
	table_close(s->rel, NoLock);
}

/*
 * atomizer_store_jobs
 *		Insert one available job per payload (n >= 1) with the given
 *		settings into atomizer.job, ids drawn from its sequence in payload
 *		order into ids[].  False, with nothing written, if the table is not
 *		one this file knows how to write (see the header comment).
 */
bool
atomizer_store_jobs(const AtomizerNewJobs *jobs, Datum *payloads, int n,
					int64 *ids)
{
	StoreRel	s;
	Relation	rel;
	int		   *attnums;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	CommandId	cid;
	Datum		fixed[NCOLS];
	bool		fixed_null[NCOLS];
	Relation	irels[MAX_INDEXES];
	Oid			relid;

	if (!store_open(&s))
		return false;
	rel = s.rel;
	attnums = s.attnums;
	estate = s.estate;
	rri = s.rri;
	slot = s.slot;
	cid = s.cid;
	relid = RelationGetRelid(rel);

	/* What every row shares. */
	memset(fixed_null, false, sizeof(fixed_null));
	fixed[COL_QUEUE] = CStringGetTextDatum(jobs->queue);
	fixed[COL_HANDLER] = CStringGetTextDatum(jobs->handler);
	fixed[COL_STATE] = CStringGetTextDatum("available");
	fixed[COL_PRIORITY] = Int16GetDatum((int16) jobs->priority);
	fixed[COL_RUN_AT] = TimestampTzGetDatum(jobs->run_at);
	fixed[COL_ATTEMPT] = Int32GetDatum(0);
	fixed[COL_MAX_ATTEMPTS] = Int32GetDatum(jobs->max_attempts);
	fixed_null[COL_MAX_ATTEMPTS] = jobs->max_attempts_null;
	fixed[COL_TIMEOUT] = jobs->timeout_null ? (Datum) 0 : IntervalPGetDatum(jobs->timeout);
	fixed_null[COL_TIMEOUT] = jobs->timeout_null;
	fixed[COL_OWNER] = DirectFunctionCall1(namein, CStringGetDatum(jobs->owner));
	fixed[COL_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	fixed[COL_SOLO] = BoolGetDatum(false);

	/*
	 * No BulkInsertState: its ring buffer would push the new pages out of
	 * shared buffers, and workers read them right away (an INSERT does not
	 * use one either).
	 */
	if (!index_plan.valid || index_plan.relid != relid)
	{
		fill_slot(slot, attnums, fixed, fixed_null, 0, (Datum) 0);
		ExecOpenIndices(rri, false);
		plan_indexes(rel, rri, estate, slot, attnums);
		ResetPerTupleExprContext(estate);
	}
	if (!index_plan.usable && rri->ri_NumIndices == 0)
		ExecOpenIndices(rri, false);
	else if (index_plan.usable)
	{
		for (int k = 0; k < index_plan.n; k++)
			irels[k] = index_open(index_plan.oids[k], RowExclusiveLock);
	}

	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		ids[i] = nextval_internal(s.seqid, false);
		fill_slot(slot, attnums, fixed, fixed_null, ids[i], payloads[i]);

		if (rel->rd_att->constr)
			ExecConstraints(rri, slot, estate);
		table_tuple_insert(rel, slot, cid, 0, NULL);
		if (index_plan.usable)
		{
			slot_getallattrs(slot);
			for (int k = 0; k < index_plan.n; k++)
			{
				Datum		values[INDEX_MAX_KEYS];
				bool		isnull[INDEX_MAX_KEYS];

				for (int a = 0; a < index_plan.natts[k]; a++)
				{
					values[a] = slot->tts_values[index_plan.attnums[k][a] - 1];
					isnull[a] = slot->tts_isnull[index_plan.attnums[k][a] - 1];
				}
				index_insert(irels[k], values, isnull, &slot->tts_tid, rel,
							 index_plan.unique[k] ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
							 false, NULL);
			}
		}
		else if (rri->ri_NumIndices > 0)
			(void) atomizer_insert_index_tuples(rri, slot, estate);
		ResetPerTupleExprContext(estate);
	}

	if (index_plan.usable)
	{
		for (int k = 0; k < index_plan.n; k++)
			index_close(irels[k], NoLock);
	}
	store_close(&s);
	return true;
}

/*
 * atomizer_store_fire_jobs
 *		Insert the n jobs of a batch of cron fires (n >= 1), each with its
 *		schedule's settings and schedule_id, ids drawn from the sequence in
 *		the order of jobs[] into ids[].  What an INSERT … SELECT from the
 *		schedules would write, without the statement (its join and executor
 *		were 30 % of firing 10,000 schedules).  The jobs' claim keys are
 *		noted for their queues' floors.  False, with nothing written, if the
 *		table is not one this file knows how to write.
 */
bool
atomizer_store_fire_jobs(const AtomizerFireJob *jobs, int n, int64 *ids)
{
	StoreRel	s;
	TupleDesc	desc;
	int			schedule_col = -1;
	Datum		fixed[NCOLS];
	bool		fixed_null[NCOLS];

	if (!store_open(&s))
		return false;
	desc = RelationGetDescr(s.rel);
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, i)->attname), "schedule_id") == 0 &&
			TupleDescAttr(desc, i)->atttypid == INT8OID)
			schedule_col = i;
	if (schedule_col < 0)
	{
		store_close(&s);
		return false;
	}

	memset(fixed_null, false, sizeof(fixed_null));
	fixed[COL_STATE] = CStringGetTextDatum("available");
	fixed[COL_ATTEMPT] = Int32GetDatum(0);
	fixed[COL_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	fixed[COL_SOLO] = BoolGetDatum(false);

	/* every index, its predicate evaluated per job (schedule_id varies) */
	ExecOpenIndices(s.rri, false);
	for (int i = 0; i < n; i++)
	{
		const AtomizerFireJob *j = &jobs[i];
		AtomizerClaimKey key;

		CHECK_FOR_INTERRUPTS();
		fixed[COL_QUEUE] = CStringGetTextDatum(j->queue);
		fixed[COL_HANDLER] = CStringGetTextDatum(j->handler);
		fixed[COL_PRIORITY] = Int16GetDatum((int16) j->priority);
		fixed[COL_RUN_AT] = TimestampTzGetDatum(j->run_at);
		fixed[COL_MAX_ATTEMPTS] = Int32GetDatum(j->max_attempts);
		fixed_null[COL_MAX_ATTEMPTS] = j->max_attempts_null;
		fixed[COL_TIMEOUT] = j->timeout_null ? (Datum) 0 : IntervalPGetDatum(j->timeout);
		fixed_null[COL_TIMEOUT] = j->timeout_null;
		fixed[COL_OWNER] = DirectFunctionCall1(namein, CStringGetDatum(j->owner));
		ids[i] = nextval_internal(s.seqid, false);
		fill_slot(s.slot, s.attnums, fixed, fixed_null, ids[i], j->payload);
		s.slot->tts_values[schedule_col] = Int64GetDatum(j->schedule_id);
		s.slot->tts_isnull[schedule_col] = false;

		if (s.rel->rd_att->constr)
			ExecConstraints(s.rri, s.slot, s.estate);
		table_tuple_insert(s.rel, s.slot, s.cid, 0, NULL);
		if (s.rri->ri_NumIndices > 0)
			(void) atomizer_insert_index_tuples(s.rri, s.slot, s.estate);
		ResetPerTupleExprContext(s.estate);

		key.priority = j->priority;
		key.run_at = j->run_at;
		key.id = ids[i];
		atomizer_note_waiting(j->queue, &key);
	}
	store_close(&s);
	return true;
}

/* The columns a claim reads or sets. */
enum
{
	MC_ID,
	MC_HANDLER,
	MC_PAYLOAD,
	MC_ATTEMPT,
	MC_MAX_ATTEMPTS,
	MC_TIMEOUT,
	MC_OWNER,
	MC_PRIORITY,
	MC_RUN_AT,
	MC_STATE,					/* from here on: the columns it sets */
	MC_STARTED_AT,
	MC_WORKER,
	MC_LEASE,
	MC_LEASE_UNTIL,
	NMC
};

static const StoreColumn claim_columns[NMC] = {
	{"id", INT8OID},
	{"handler", TEXTOID},
	{"payload", JSONBOID},
	{"attempt", INT4OID},
	{"max_attempts", INT4OID},
	{"timeout", INTERVALOID},
	{"owner", NAMEOID},
	{"priority", INT2OID},
	{"run_at", TIMESTAMPTZOID},
	{"state", TEXTOID},
	{"started_at", TIMESTAMPTZOID},
	{"worker", TEXTOID},
	{"lease", INTERVALOID},
	{"lease_until", TIMESTAMPTZOID},
};

/* The 0-based number of column name of desc, or -1. */
static int
find_column(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return i;
	}
	return -1;
}

/*
 * map_claim_columns
 *		Fill attnums[] (0-based) with the claim's columns; false if one is
 *		missing, of another type or generated.  The table's other columns
 *		are copied as they are, its stored generated ones computed.
 */
static bool
map_claim_columns(TupleDesc desc, int *attnums)
{
	for (int c = 0; c < NMC; c++)
	{
		attnums[c] = find_column(desc, claim_columns[c].name);
		if (attnums[c] < 0 ||
			TupleDescAttr(desc, attnums[c])->atttypid != claim_columns[c].type ||
			TupleDescAttr(desc, attnums[c])->attgenerated)
			return false;
	}
	return true;
}

/*
 * atomizer_store_mark_claimed
 *		The claim's mark, without its UPDATE statement: the n jobs ids[],
 *		which this transaction has locked (FOR UPDATE) at tids[], become
 *		running with their attempt counted, mark's worker, start time and
 *		lease; jobs[] (allocated by the caller) gets what each job runs
 *		with, strings and payloads in cxt.  What the UPDATE would still do
 *		is done: stored generated columns, NOT NULL and CHECK constraints,
 *		the index entries of an update that is not HOT, statistics.  False,
 *		with nothing written, if the table is not one this file knows (a
 *		trigger, row security forced on its owner, a column it does not
 *		know as it is): the caller runs the UPDATE.
 *
 *		It saves what the executor costs per batch and per row: the primary
 *		key's descent per job to find a row whose place the lock already
 *		gave, the statement's start-up, projection and result copy (about
 *		half of the UPDATE's time, measured with perf).
 */
bool
atomizer_store_mark_claimed(const AtomizerClaimMark *mark,
							const ItemPointerData *tids, const int64 *ids,
							int n, const char *queue, MemoryContext cxt,
							AtomizerJob *jobs)
{
	Oid			relid = get_relname_relid("job",
										  get_namespace_oid(ATOMIZER_SCHEMA, false));
	Relation	rel;
	TupleDesc	desc;
	int			att[NMC];
	Bitmapset  *updated = NULL;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	CommandId	cid;
	Snapshot	snapshot;
	bool		generated;
	bool		indexes_open = false;
	Datum		running;
	Datum		lease = mark->lease ? IntervalPGetDatum(mark->lease) : (Datum) 0;

	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	if (rel->trigdesc != NULL || rel->rd_rel->relkind != RELKIND_RELATION ||
		rel->rd_rel->relforcerowsecurity || !map_claim_columns(desc, att))
	{
		elog(DEBUG1, "atomizer: jobs are claimed with an UPDATE: atomizer.job is not the table the job store knows");
		table_close(rel, RowExclusiveLock);
		return false;
	}
	PreventCommandIfReadOnly("UPDATE");
	PreventCommandIfParallelMode("UPDATE");

	for (int c = MC_STATE; c < NMC; c++)
		updated = bms_add_member(updated,
								 att[c] + 1 - FirstLowInvalidHeapAttributeNumber);
	estate = CreateExecutorState();
	rri = result_rel(estate, rel, updated);
	oldslot = table_slot_create(rel, &estate->es_tupleTable);
	newslot = table_slot_create(rel, &estate->es_tupleTable);
	cid = GetCurrentCommandId(true);
	snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : InvalidSnapshot;
	generated = desc->constr != NULL && desc->constr->has_generated_stored;
	running = CStringGetTextDatum("running");

	for (int i = 0; i < n; i++)
	{
		ItemPointerData tid = tids[i];
		TimestampTz started = mark->started_at != 0 ? mark->started_at :
			GetCurrentTimestamp();
		AtomizerJob *job = &jobs[i];
		Datum	   *v;
		bool	   *null;
		TM_Result	result;
		TM_FailureData tmfd;
		LockTupleMode lockmode;
		AtomizerUpdateIndexes update_indexes;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (!table_tuple_fetch_row_version(rel, &tid, SnapshotAny, oldslot))
			elog(ERROR, "could not find job %lld to claim", (long long) ids[i]);
		slot_getallattrs(oldslot);
		if (oldslot->tts_isnull[att[MC_ID]] ||
			DatumGetInt64(oldslot->tts_values[att[MC_ID]]) != ids[i] ||
			oldslot->tts_isnull[att[MC_ATTEMPT]])
			elog(ERROR, "job %lld is not where its claim locked it", (long long) ids[i]);

		/* the row, with what the claim sets */
		ExecClearTuple(newslot);
		v = newslot->tts_values;
		null = newslot->tts_isnull;
		memcpy(v, oldslot->tts_values, sizeof(Datum) * desc->natts);
		memcpy(null, oldslot->tts_isnull, sizeof(bool) * desc->natts);
		v[att[MC_STATE]] = running;
		null[att[MC_STATE]] = false;
		v[att[MC_ATTEMPT]] = Int32GetDatum(DatumGetInt32(v[att[MC_ATTEMPT]]) + 1);
		v[att[MC_STARTED_AT]] = TimestampTzGetDatum(started);
		null[att[MC_STARTED_AT]] = false;
		v[att[MC_WORKER]] = mark->worker;
		null[att[MC_WORKER]] = mark->worker_null;
		v[att[MC_LEASE]] = lease;
		null[att[MC_LEASE]] = mark->lease == NULL;
		if (mark->lease != NULL)
			v[att[MC_LEASE_UNTIL]] =
				DirectFunctionCall2(timestamptz_pl_interval,
									TimestampTzGetDatum(started), lease);
		null[att[MC_LEASE_UNTIL]] = mark->lease == NULL;
		ExecStoreVirtualTuple(newslot);
		if (generated)
			ExecComputeStoredGenerated(rri, estate, newslot, CMD_UPDATE);
		if (desc->constr != NULL)
			ExecConstraints(rri, newslot, estate);

		result = table_tuple_update(rel, &tid, newslot, cid, snapshot,
									InvalidSnapshot, true, &tmfd, &lockmode,
									&update_indexes);
		if (result != TM_Ok)
			elog(ERROR, "job %lld changed while it was claimed", (long long) ids[i]);
		if (atomizer_update_needs_indexes(update_indexes))
		{
			if (!indexes_open)
			{
				ExecOpenIndices(rri, false);
				indexes_open = true;
			}
			if (rri->ri_NumIndices > 0)
				(void) atomizer_update_index_tuples(rri, newslot, estate,
													update_indexes);
		}

		/* what the job runs with (the UPDATE's RETURNING) */
		slot_getallattrs(newslot);
		v = newslot->tts_values;
		null = newslot->tts_isnull;
		old = MemoryContextSwitchTo(cxt);
		job->id = ids[i];
		job->queue = pstrdup(queue);
		job->handler = TextDatumGetCString(v[att[MC_HANDLER]]);
		job->payload = null[att[MC_PAYLOAD]] ? (Datum) 0 :
			datumCopy(v[att[MC_PAYLOAD]], false, -1);
		job->attempt = DatumGetInt32(v[att[MC_ATTEMPT]]);
		job->max_attempts = null[att[MC_MAX_ATTEMPTS]] ? mark->queue_max_attempts :
			DatumGetInt32(v[att[MC_MAX_ATTEMPTS]]);
		if (!null[att[MC_TIMEOUT]])
			job->timeout_ms = atomizer_interval_ms(DatumGetIntervalP(v[att[MC_TIMEOUT]]));
		else
			job->timeout_ms = mark->queue_timeout ?
				atomizer_interval_ms(mark->queue_timeout) : 0;
		job->owner = pstrdup(NameStr(*DatumGetName(v[att[MC_OWNER]])));
		job->priority = DatumGetInt16(v[att[MC_PRIORITY]]);
		job->run_at = DatumGetTimestampTz(v[att[MC_RUN_AT]]);
		job->lease_until = null[att[MC_LEASE_UNTIL]] ? 0 :
			DatumGetTimestampTz(v[att[MC_LEASE_UNTIL]]);
		MemoryContextSwitchTo(old);
		ExecClearTuple(oldslot);
		ResetPerTupleExprContext(estate);
	}

	if (indexes_open)
		ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	/* the statements after it see the claimed rows, as after the UPDATE */
	CommandCounterIncrement();
	return true;
}

/* The job's columns a finished job's history row gets, as they are. */
static const char *const moved_columns[] = {
	"id", "queue", "handler", "payload", "priority", "run_at", "attempt",
	"max_attempts", "timeout", "owner", "idempotency_key", "created_at",
	"started_at", "last_error", "schedule_id", "tags", "on_dependency_failure",
};

/* The history's columns the finish sets. */
enum
{
	HC_STATE,
	HC_FINISHED_AT,
	HC_RESULT,
	NHC
};

static const StoreColumn history_set[NHC] = {
	{"state", TEXTOID},
	{"finished_at", TIMESTAMPTZOID},
	{"result", JSONBOID},
};

/* How a history row is made from a job's (map_history). */
typedef struct HistoryMap
{
	int			from_job[MaxHeapAttributeNumber];	/* job attno (0-based), or -1 */
	int			set[NHC];		/* history attnos of what the finish sets */
	int			job_id;			/* the job's id, queue, run_at, started_at */
	int			job_queue;
	int			job_run_at;
	int			job_started_at;
} HistoryMap;

/*
 * map_history
 *		Fill *m for moving rows of job (jdesc) into history (hdesc) as the
 *		finish's INSERT would; false if a column is missing or of another
 *		type, or the history has a column the INSERT would give a default
 *		(or a generated value) rather than NULL.
 */
static bool
map_history(TupleDesc jdesc, TupleDesc hdesc, HistoryMap *m)
{
	int			found = 0;

	for (int c = 0; c < NHC; c++)
		m->set[c] = -1;
	for (int i = 0; i < hdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(hdesc, i);
		const char *name = NameStr(att->attname);
		bool		known = false;

		m->from_job[i] = -1;
		if (att->attisdropped)
			continue;
		if (att->attgenerated)
			return false;
		for (int k = 0; k < lengthof(moved_columns) && !known; k++)
			if (strcmp(name, moved_columns[k]) == 0)
			{
				int			j = find_column(jdesc, name);

				if (j < 0 || TupleDescAttr(jdesc, j)->atttypid != att->atttypid)
					return false;
				m->from_job[i] = j;
				known = true;
				found++;
			}
		for (int c = 0; c < NHC && !known; c++)
			if (strcmp(name, history_set[c].name) == 0)
			{
				if (att->atttypid != history_set[c].type)
					return false;
				m->set[c] = i;
				known = true;
			}
		/* any other column: NULL, as the INSERT that does not name it */
		if (!known && (att->atthasdef || att->attnotnull))
			return false;
	}
	for (int c = 0; c < NHC; c++)
		if (m->set[c] < 0)
			return false;
	m->job_id = find_column(jdesc, "id");
	m->job_queue = find_column(jdesc, "queue");
	m->job_run_at = find_column(jdesc, "run_at");
	m->job_started_at = find_column(jdesc, "started_at");
	return found == lengthof(moved_columns) && m->job_id >= 0 &&
		TupleDescAttr(jdesc, m->job_id)->atttypid == INT8OID;
}

/* A table this file may write directly: a plain table, no trigger. */
static bool
plain_table(Relation rel)
{
	return rel->trigdesc == NULL && rel->rd_rel->relkind == RELKIND_RELATION &&
		!rel->rd_rel->relforcerowsecurity;
}

/*
 * atomizer_store_move_succeeded
 *		A batch's finish without its statement: the jobs ids[] (n, in id
 *		order, the order the statement deletes them in) are deleted from
 *		atomizer.job and each inserted into atomizer.job_history as
 *		succeeded with results[i] (NULL where result_nulls[i]), finished at
 *		its own clock, with what the INSERT does besides (constraints,
 *		every index, statistics).  moved[] gets what the counters need of
 *		each job moved; a job no longer in the table is skipped, as the
 *		statement's join skips it.  A job another transaction changed since
 *		this one's snapshot is left to the statement, which follows the
 *		change: its index in ids[] goes into left[] (*nleft of them).  Returns how many
 *		were moved, or -1, with nothing written, if either table is not one
 *		this file knows (a trigger, forced row security, a column it does
 *		not know as it is): the caller runs the statement.
 */
int
atomizer_store_move_succeeded(const int64 *ids, const Datum *results,
							  const bool *result_nulls, int n,
							  AtomizerMoved *moved, int *left, int *nleft)
{
	Oid			nsp = get_namespace_oid(ATOMIZER_SCHEMA, false);
	Oid			jrelid = get_relname_relid("job", nsp);
	Oid			hrelid = get_relname_relid("job_history", nsp);
	Oid			pkid = get_relname_relid("job_pkey", nsp);
	Relation	jrel;
	Relation	hrel;
	Relation	pkrel;
	HistoryMap	map;
	EState	   *estate;
	ResultRelInfo *hrri;
	TupleTableSlot *jslot;
	TupleTableSlot *hslot;
	IndexScanDesc scan;
	ScanKeyData key;
	TupleDesc	hdesc;
	Snapshot	snap;
	CommandId	cid;
	Datum		succeeded;
	int			nmoved = 0;

	*nleft = 0;
	if (!OidIsValid(jrelid) || !OidIsValid(hrelid) || !OidIsValid(pkid))
		return -1;
	jrel = table_open(jrelid, RowExclusiveLock);
	hrel = table_open(hrelid, RowExclusiveLock);
	pkrel = index_open(pkid, AccessShareLock);
	hdesc = RelationGetDescr(hrel);
	if (!plain_table(jrel) || !plain_table(hrel) ||
		!map_history(RelationGetDescr(jrel), RelationGetDescr(hrel), &map) ||
		pkrel->rd_index->indrelid != jrelid || pkrel->rd_index->indnkeyatts != 1 ||
		pkrel->rd_index->indkey.values[0] != map.job_id + 1 ||
		pkrel->rd_rel->relam != BTREE_AM_OID)
	{
		elog(DEBUG1, "atomizer: finished jobs are moved with a statement: atomizer.job or atomizer.job_history is not the table the job store knows");
		index_close(pkrel, AccessShareLock);
		table_close(hrel, RowExclusiveLock);
		table_close(jrel, RowExclusiveLock);
		return -1;
	}
	PreventCommandIfReadOnly("DELETE");
	PreventCommandIfParallelMode("DELETE");

	/* what the statement would see: this transaction's changes so far */
	CommandCounterIncrement();
	PushCopiedSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	snap = GetActiveSnapshot();
	cid = GetCurrentCommandId(true);

	estate = CreateExecutorState();
	hrri = result_rel(estate, hrel, NULL);
	ExecOpenIndices(hrri, false);
	jslot = table_slot_create(jrel, &estate->es_tupleTable);
	hslot = table_slot_create(hrel, &estate->es_tupleTable);
	succeeded = CStringGetTextDatum("succeeded");
	scan = atomizer_index_beginscan(jrel, pkrel, snap, 1);

	for (int i = 0; i < n; i++)
	{
		TM_Result	result;
		TM_FailureData tmfd;
		ItemPointerData tid;
		TimestampTz finished;
		AtomizerMoved *mv;

		CHECK_FOR_INTERRUPTS();
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(ids[i]));
		index_rescan(scan, &key, 1, NULL, 0);
		if (!index_getnext_slot(scan, ForwardScanDirection, jslot))
			continue;			/* gone: the statement's join would skip it */
		tid = jslot->tts_tid;
		result = table_tuple_delete(jrel, &tid, cid, snap, InvalidSnapshot, true,
									&tmfd, false);
		if (result == TM_Updated)
		{
			/* changed since the snapshot: the statement follows the change */
			left[(*nleft)++] = i;
			ExecClearTuple(jslot);
			continue;
		}
		if (result == TM_Deleted)
		{
			ExecClearTuple(jslot);
			continue;			/* moved by another transaction meanwhile */
		}
		if (result != TM_Ok)
			elog(ERROR, "could not move finished job %lld to the history",
				 (long long) ids[i]);

		/* the history row: the job's, and what the finish sets */
		slot_getallattrs(jslot);
		ExecClearTuple(hslot);
		for (int a = 0; a < hdesc->natts; a++)
		{
			int			j = map.from_job[a];

			hslot->tts_values[a] = j >= 0 ? jslot->tts_values[j] : (Datum) 0;
			hslot->tts_isnull[a] = j >= 0 ? jslot->tts_isnull[j] : true;
		}
		hslot->tts_values[map.set[HC_STATE]] = succeeded;
		hslot->tts_isnull[map.set[HC_STATE]] = false;
		finished = GetCurrentTimestamp();
		hslot->tts_values[map.set[HC_FINISHED_AT]] = TimestampTzGetDatum(finished);
		hslot->tts_isnull[map.set[HC_FINISHED_AT]] = false;
		hslot->tts_values[map.set[HC_RESULT]] = result_nulls[i] ? (Datum) 0 : results[i];
		hslot->tts_isnull[map.set[HC_RESULT]] = result_nulls[i];
		ExecStoreVirtualTuple(hslot);
		if (hdesc->constr != NULL)
			ExecConstraints(hrri, hslot, estate);
		table_tuple_insert(hrel, hslot, cid, 0, NULL);
		if (hrri->ri_NumIndices > 0)
			(void) atomizer_insert_index_tuples(hrri, hslot, estate);

		mv = &moved[nmoved++];
		mv->id = ids[i];
		mv->queue = TextDatumGetCString(jslot->tts_values[map.job_queue]);
		mv->run_at = DatumGetTimestampTz(jslot->tts_values[map.job_run_at]);
		mv->started_null = jslot->tts_isnull[map.job_started_at];
		mv->started_at = mv->started_null ? 0 :
			DatumGetTimestampTz(jslot->tts_values[map.job_started_at]);
		mv->finished_at = finished;
		ExecClearTuple(jslot);
		ExecClearTuple(hslot);
		ResetPerTupleExprContext(estate);
	}

	index_endscan(scan);
	ExecCloseIndices(hrri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	PopActiveSnapshot();
	index_close(pkrel, NoLock);
	table_close(hrel, NoLock);
	table_close(jrel, NoLock);
	CommandCounterIncrement();
	return nmoved;
}
