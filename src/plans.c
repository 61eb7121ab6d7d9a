/*-------------------------------------------------------------------------
 *
 * plans.c
 *	  The plans of atomizer's hot statements.  A statement whose text starts
 *	  with ATOMIZER_INDEXED is planned as if atomizer's tables were big,
 *	  whatever their statistics say at that moment.
 *
 *	  The claim and the statements that act on jobs by id are prepared
 *	  once per backend with a generic plan, and a cached plan is made again
 *	  only when something invalidates it (a VACUUM or ANALYZE of the
 *	  table).  Planned at a moment when atomizer.job holds a row or none (a
 *	  queue that has just drained and been vacuumed, a new install), the
 *	  cheapest plan of a batch's finish is a merge join that walks the
 *	  whole primary key, or a nested loop around a scan of all of it; the
 *	  backend then keeps that plan while the table grows to a backlog of a
 *	  million jobs, and every batch reads all of them, until the next
 *	  VACUUM.  Drains were seen running 10 to 30 times slower for up to a
 *	  minute.  Turning plan types off does not help (the nested loop
 *	  around the whole table is what is left), and neither does
 *	  atomizer_become_owner's enable_seqscan = off, the first defence
 *	  against a claim that reads and sorts every waiting job.
 *
 *	  The right plan of these statements does not depend on the table's
 *	  size: a claim reads the claim index in claim order and stops after a
 *	  batch, the others find their rows through an index, one probe per id.
 *	  That is also the plan for a big table.  So while such a statement is
 *	  planned, a relation of atomizer's schema that looks smaller than
 *	  MIN_TUPLES rows is taken to hold that many (its indexes too), and
 *	  bitmap scans are off: the statistics may say that no job waits (an
 *	  ANALYZE while every job was running), and the claim then became a
 *	  bitmap scan of every entry from the floor on, sorted, for each batch
 *	  (behind a transaction held open, drains fell to 3,200 jobs/s until
 *	  the next ANALYZE).  Any other statement, the handlers' included, is
 *	  planned as usual.
 *
 *	  src/plans.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "nodes/pathnodes.h"
#include "optimizer/cost.h"
#include "optimizer/plancat.h"
#include "optimizer/planner.h"
#include "utils/lsyscache.h"

#include "atomizer.h"

/* What an atomizer table is taken to hold, at least, in a marked plan. */
#define MIN_TUPLES		1000000.0
#define MIN_PAGES		10000

static planner_hook_type prev_planner_hook = NULL;
static get_relation_info_hook_type prev_get_relation_info_hook = NULL;

/* Planning a marked statement; and atomizer's schema, looked up then. */
static int	marked_depth = 0;
static Oid	marked_schema = InvalidOid;
/* enable_bitmapscan as it was outside the outermost marked statement */
static bool user_bitmapscan = true;

/* The planner this hook was installed over. */
static inline PlannedStmt *
next_planner(Query *parse, const char *query_string, int cursorOptions,
			 ParamListInfo boundParams)
{
	return prev_planner_hook ?
		prev_planner_hook(parse, query_string, cursorOptions, boundParams) :
		standard_planner(parse, query_string, cursorOptions, boundParams);
}

static PlannedStmt *
atomizer_planner(Query *parse, const char *query_string, int cursorOptions,
				 ParamListInfo boundParams)
{
	bool		marked = query_string != NULL &&
		strncmp(query_string, ATOMIZER_INDEXED, sizeof(ATOMIZER_INDEXED) - 1) == 0;
	int			depth = marked_depth;
	Oid			schema = marked_schema;
	bool		bitmapscan = enable_bitmapscan;
	PlannedStmt *result;

	/* the common case, every other statement of the server: nothing to undo */
	if (!marked && marked_depth == 0)
		return next_planner(parse, query_string, cursorOptions, boundParams);

	if (marked)
	{
		if (marked_depth == 0)
			user_bitmapscan = enable_bitmapscan;
		marked_schema = get_namespace_oid(ATOMIZER_SCHEMA, true);
		marked_depth++;
		enable_bitmapscan = false;
	}
	else
	{
		marked_depth = 0;		/* a statement planned inside is planned as usual */
		enable_bitmapscan = user_bitmapscan;
	}
	PG_TRY();
	{
		result = next_planner(parse, query_string, cursorOptions, boundParams);
	}
	PG_FINALLY();
	{
		marked_depth = depth;
		marked_schema = schema;
		enable_bitmapscan = bitmapscan;
	}
	PG_END_TRY();
	return result;
}

static void
atomizer_get_relation_info(PlannerInfo *root, Oid relid, bool inhparent,
						   RelOptInfo *rel)
{
	ListCell   *lc;

	if (prev_get_relation_info_hook)
		prev_get_relation_info_hook(root, relid, inhparent, rel);
	if (marked_depth == 0 || !OidIsValid(marked_schema) ||
		get_rel_namespace(relid) != marked_schema)
		return;
	if (rel->tuples < MIN_TUPLES)
		rel->tuples = MIN_TUPLES;
	if (rel->pages < MIN_PAGES)
		rel->pages = MIN_PAGES;
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = (IndexOptInfo *) lfirst(lc);

		if (index->tuples < MIN_TUPLES)
			index->tuples = MIN_TUPLES;
		if (index->pages < MIN_PAGES / 10)
			index->pages = MIN_PAGES / 10;
	}
}

/*
 * atomizer_plans_init
 *		Install the hooks (from _PG_init, preloaded or not).
 */
void
atomizer_plans_init(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = atomizer_planner;
	prev_get_relation_info_hook = get_relation_info_hook;
	get_relation_info_hook = atomizer_get_relation_info;
}
