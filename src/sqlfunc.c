/*-------------------------------------------------------------------------
 *
 * sqlfunc.c
 *	  Running SQL-language handlers with their plan kept from job to job.
 *
 *	  PostgreSQL 15 plans an SQL function's statements again in every
 *	  subtransaction it is called in (fmgr_sql keeps its plans only while
 *	  the subtransaction that made them is alive), and every job runs in a
 *	  subtransaction of its own: measured, planning was the largest cost of
 *	  a no-op SQL handler.  PL/pgSQL keeps its plans across subtransactions;
 *	  this file gives simple SQL handlers the same, by preparing the body
 *	  once through SPI with the function's own parameter names
 *	  (sql_fn_parser_setup, as fmgr_sql parses it) and keeping the plan,
 *	  which the plan cache revalidates when the tables, the search_path or
 *	  the role change.  A replaced function (new pg_proc row version) is
 *	  prepared again.
 *
 *	  Only handlers whose semantics this reproduces exactly take this path:
 *	  LANGUAGE sql with a string body of one statement, not SECURITY
 *	  DEFINER, no SET clauses, returning void, json or jsonb (then the
 *	  statement's one column has that very type, no coercion).  Volatile
 *	  functions run with a fresh snapshot and see earlier jobs' effects, the
 *	  others read-only, as fmgr_sql does; an error carries the same context
 *	  line (after SPI's, which quotes the statement).  Everything else goes
 *	  through fmgr as before.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language_d.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/functions.h"
#include "executor/spi.h"
#include "nodes/params.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/syscache.h"

#include "atomizer.h"

#define MAX_CACHED 64

typedef struct SqlHandler
{
	Oid			fnoid;
	TransactionId fn_xmin;		/* the pg_proc row version prepared */
	ItemPointerData fn_tid;
	bool		usable;			/* false: call it through fmgr */
	bool		read_only;		/* not volatile */
	Oid			rettype;
	char	   *name;
	SPIPlanPtr	plan;
} SqlHandler;

static SqlHandler cache[MAX_CACHED];
static int	ncached = 0;
static MemoryContext cache_cxt = NULL;

static void
sql_handler_context(void *arg)
{
	errcontext("SQL function \"%s\" statement 1", (const char *) arg);
}

/*
 * forget
 *		Drop entry e's plan; the slot can be reused.
 */
static void
forget(SqlHandler *e)
{
	if (e->plan)
		SPI_freeplan(e->plan);
	e->plan = NULL;
	e->usable = false;
	e->fnoid = InvalidOid;
}

/*
 * prepare
 *		Fill e for the function in procTup.  The caller is connected to SPI.
 */
static void
prepare(SqlHandler *e, Oid fnoid, HeapTuple procTup)
{
	Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(procTup);
	bool		isnull;
	Datum		src;
	SQLFunctionParseInfoPtr pinfo;
	MemoryContext old;
	SPIPlanPtr	plan;
	List	   *sources;

	/* until it is known usable or not, the entry stays free (an error here) */
	e->fnoid = InvalidOid;
	e->fn_xmin = HeapTupleHeaderGetRawXmin(procTup->t_data);
	e->fn_tid = procTup->t_self;
	e->usable = false;
	e->plan = NULL;
	e->rettype = proc->prorettype;
	e->read_only = (proc->provolatile != PROVOLATILE_VOLATILE);

	if (proc->prolang != SQLlanguageId || proc->prosecdef || proc->proretset ||
		proc->pronargs != 1 ||
		!(proc->prorettype == VOIDOID || proc->prorettype == JSONBOID ||
		  proc->prorettype == JSONOID) ||
		!heap_attisnull(procTup, Anum_pg_proc_proconfig, NULL) ||
		!heap_attisnull(procTup, Anum_pg_proc_prosqlbody, NULL))
	{
		e->fnoid = fnoid;		/* known: not one for this path */
		return;
	}
	src = SysCacheGetAttr(PROCOID, procTup, Anum_pg_proc_prosrc, &isnull);
	if (isnull)
	{
		e->fnoid = fnoid;
		return;
	}

	/* the parser hook's data lives as long as the plan (it replans with it) */
	old = MemoryContextSwitchTo(cache_cxt);
	e->name = pstrdup(NameStr(proc->proname));
	pinfo = prepare_sql_fn_parse_info(procTup, NULL, InvalidOid);
	MemoryContextSwitchTo(old);

	plan = SPI_prepare_params(TextDatumGetCString(src),
							  (ParserSetupHook) sql_fn_parser_setup, pinfo, 0);
	if (plan == NULL)
		elog(ERROR, "could not prepare SQL function \"%s\": %s",
			 e->name, SPI_result_code_string(SPI_result));
	sources = SPI_plan_get_plan_sources(plan);
	e->fnoid = fnoid;
	if (list_length(sources) != 1)
	{
		SPI_freeplan(plan);
		return;
	}
	if (e->rettype != VOIDOID)
	{
		CachedPlanSource *ps = (CachedPlanSource *) linitial(sources);

		if (ps->resultDesc == NULL || ps->resultDesc->natts != 1 ||
			TupleDescAttr(ps->resultDesc, 0)->atttypid != e->rettype)
		{
			SPI_freeplan(plan);
			return;
		}
	}
	SPI_keepplan(plan);
	e->plan = plan;
	e->usable = true;
}

/*
 * atomizer_call_sql_handler
 *		If function fnoid is a simple SQL handler (see above), run it on
 *		payload and return true, with its result (for json and jsonb
 *		handlers) in *result / *isnull, allocated in the caller's context.
 *		False: the caller calls it through fmgr.
 */
bool
atomizer_call_sql_handler(Oid fnoid, Datum payload, Datum *result, bool *isnull)
{
	HeapTuple	procTup;
	SqlHandler *e = NULL;
	ParamListInfo params;
	ErrorContextCallback errcallback;
	int			rc;

	*result = (Datum) 0;
	*isnull = true;
#ifdef ATOMIZER_NO_SQLFUNC
	return false;				/* measuring fmgr's own SQL functions */
#endif
	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext,
										  "atomizer SQL handlers",
										  ALLOCSET_SMALL_SIZES);

	procTup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	if (!HeapTupleIsValid(procTup))
		return false;
	for (int i = 0; i < ncached; i++)
		if (cache[i].fnoid == fnoid)
		{
			e = &cache[i];
			break;
		}
	if (e != NULL &&
		(e->fn_xmin != HeapTupleHeaderGetRawXmin(procTup->t_data) ||
		 !ItemPointerEquals(&e->fn_tid, &procTup->t_self)))
		forget(e);				/* replaced: prepare it again */
	else if (e != NULL && !e->usable)
	{
		ReleaseSysCache(procTup);
		return false;
	}
	for (int i = 0; e == NULL && i < ncached; i++)
		if (cache[i].fnoid == InvalidOid)
			e = &cache[i];		/* a free entry */
	if (e == NULL)
	{
		if (ncached == MAX_CACHED)
		{
			for (int i = 0; i < ncached; i++)
				forget(&cache[i]);
			ncached = 0;
			MemoryContextReset(cache_cxt);
		}
		e = &cache[ncached++];
		e->fnoid = InvalidOid;
		e->plan = NULL;
	}

	SPI_connect();
	if (e->plan == NULL)
	{
		prepare(e, fnoid, procTup);
		if (!e->usable)
		{
			SPI_finish();
			ReleaseSysCache(procTup);
			return false;
		}
	}
	ReleaseSysCache(procTup);

	params = makeParamList(1);
	params->params[0].value = payload;
	params->params[0].isnull = false;
	params->params[0].pflags = PARAM_FLAG_CONST;
	params->params[0].ptype = JSONBOID;

	errcallback.callback = sql_handler_context;
	errcallback.arg = e->name;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	rc = SPI_execute_plan_with_paramlist(e->plan, params, e->read_only, 0);
	if (rc < 0)
		elog(ERROR, "SQL function \"%s\" failed: %s", e->name,
			 SPI_result_code_string(rc));
	if (e->rettype != VOIDOID && SPI_tuptable != NULL && SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, isnull);

		if (!*isnull)
			*result = SPI_datumTransfer(d, false, -1);
	}

	error_context_stack = errcallback.previous;
	SPI_finish();
	return true;
}
