/*-------------------------------------------------------------------------
 *
 * handler.c
 *	  Handler functions: resolving the name given to enqueue() into the
 *	  function that will run the job, and finding it again when the job runs.
 *
 *	  A handler is a function taking exactly one jsonb argument.  At enqueue
 *	  it is looked up in the enqueuing role's search_path and stored
 *	  schema-qualified, so that the job later runs the function the user
 *	  meant, whatever search_path the worker has.  Every way a handler can be
 *	  unsuitable is an ERROR at enqueue, with a hint; at run time the same
 *	  checks run again (the function may have been dropped or its EXECUTE
 *	  privilege revoked since) and their errors are recorded on the job.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "atomizer.h"

/* At most this many functions are named in a missing handler's detail. */
#define MAX_NAMED_CANDIDATES	10

/*
 * argument_list_start
 *		Where handler's argument list begins ("send_welcome()",
 *		"send_welcome(jsonb)"): the first '(' outside double quotes, or NULL.
 */
static const char *
argument_list_start(const char *handler)
{
	bool		quoted = false;

	for (const char *p = handler; *p != '\0'; p++)
	{
		if (*p == '"')
			quoted = !quoted;
		else if (*p == '(' && !quoted)
			return p;
	}
	return NULL;
}

/*
 * report_missing_handler
 *		ERROR: no function names(jsonb).  Says which functions of that name
 *		do exist: with other arguments where the handler is looked up (its
 *		schema, or search_path), or else in schemas not in search_path.
 */
static void
report_missing_handler(List *names)
{
	char	   *schemaname;
	char	   *funcname;
	Oid			nspid = InvalidOid;
	List	   *path = NIL;
	CatCList   *catlist;
	StringInfoData here;
	StringInfoData elsewhere;
	int			nhere = 0;
	int			nelsewhere = 0;
	Oid			first_elsewhere = InvalidOid;
	char	   *name = NameListToString(names);

	DeconstructQualifiedName(names, &schemaname, &funcname);
	if (schemaname != NULL)
		nspid = LookupExplicitNamespace(schemaname, true);
	else
		path = fetch_search_path(false);

	initStringInfo(&here);
	initStringInfo(&elsewhere);
	catlist = SearchSysCacheList1(PROCNAMEARGSNSP, CStringGetDatum(funcname));
	for (int i = 0; i < catlist->n_members; i++)
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(&catlist->members[i]->tuple);
		bool		in_path;

		if (schemaname != NULL)
			in_path = (proc->pronamespace == nspid);
		else
			in_path = list_member_oid(path, proc->pronamespace);

		if (in_path && nhere < MAX_NAMED_CANDIDATES)
		{
			appendStringInfo(&here, "%s%s", nhere > 0 ? ", " : "",
							 format_procedure(proc->oid));
			nhere++;
		}
		else if (!in_path && schemaname == NULL &&
				 proc->pronamespace != PG_CATALOG_NAMESPACE &&
				 !isAnyTempNamespace(proc->pronamespace) &&
				 nelsewhere < MAX_NAMED_CANDIDATES)
		{
			appendStringInfo(&elsewhere, "%s%s", nelsewhere > 0 ? ", " : "",
							 format_procedure(proc->oid));
			if (nelsewhere == 0)
				first_elsewhere = proc->pronamespace;
			nelsewhere++;
		}
	}
	ReleaseSysCacheList(catlist);

	if (nhere > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function %s(jsonb) does not exist", name),
				 errdetail_plural("Function %s exists, but a handler takes exactly one argument, of type jsonb.",
								  "Functions %s exist, but a handler takes exactly one argument, of type jsonb.",
								  nhere, here.data),
				 errhint("Declare the handler as %s(payload jsonb); it may return any type but a set (a jsonb it returns is stored as the job's result).",
						 name)));
	if (nelsewhere > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function %s(jsonb) does not exist", name),
				 errdetail_plural("Function %s exists, in a schema that is not in search_path.",
								  "Functions %s exist, in schemas that are not in search_path.",
								  nelsewhere, elsewhere.data),
				 errhint("Qualify the handler's name with its schema, e.g. '%s'.",
						 quote_qualified_identifier(get_namespace_name(first_elsewhere),
													funcname))));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_FUNCTION),
			 errmsg("handler function %s(jsonb) does not exist", name),
			 errhint("A handler is a function taking one jsonb argument, e.g. CREATE FUNCTION %s(payload jsonb) RETURNS void ...; qualify its name with its schema if that schema is not in search_path.",
					 name)));
}

/*
 * lookup_checked
 *		Find handler(jsonb) and check that roleid may use it as a handler.
 *		On success returns the function's OID and, if qualified is not NULL,
 *		sets it to the schema-qualified, quoted name.
 */
static Oid
lookup_checked(const char *handler, Oid roleid, char **qualified)
{
	List	   *names;
	Oid			argtypes[1] = {JSONBOID};
	Oid			fnoid;
	HeapTuple	tuple;
	Form_pg_proc proc;
	AclResult	aclresult;

	if (handler[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("handler must not be empty")));
	if (argument_list_start(handler) != NULL)
	{
		const char *args = argument_list_start(handler);
		char	   *bare = pnstrdup(handler, args - handler);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid handler name \"%s\"", handler),
				 errdetail("A handler is named without an argument list: it always takes one jsonb argument."),
				 errhint("Write the function's name only: '%s'.",
						 bare[0] != '\0' ? bare : "my_handler")));
	}

	names = atomizer_qualified_name_list(handler);
	fnoid = LookupFuncName(names, 1, argtypes, true);
	if (!OidIsValid(fnoid))
	{
		/* Not a function: perhaps a procedure, reported below. */
		char	   *signature = psprintf("%s(pg_catalog.jsonb)",
										 NameListToQuotedString(names));
		LOCAL_FCINFO(fc, 1);
		Datum		proc;

		InitFunctionCallInfoData(*fc, NULL, 1, InvalidOid, NULL, NULL);
		fc->args[0].value = CStringGetTextDatum(signature);
		fc->args[0].isnull = false;
		proc = to_regprocedure(fc);
		if (!fc->isnull)
			fnoid = DatumGetObjectId(proc);
	}
	if (!OidIsValid(fnoid))
		report_missing_handler(names);

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", fnoid);
	proc = (Form_pg_proc) GETSTRUCT(tuple);

	if (proc->prokind == PROKIND_PROCEDURE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("handler %s(jsonb) is a procedure",
						NameListToString(names)),
				 errhint("A handler must be a function; wrap the procedure's work in a function taking one jsonb argument.")));
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("handler %s(jsonb) is an aggregate or window function",
						NameListToString(names)),
				 errhint("A handler must be a plain function taking one jsonb argument.")));
	if (proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("handler function %s(jsonb) returns a set",
						NameListToString(names)),
				 errhint("A handler returns one value; return jsonb to store a result on the job.")));

	if (qualified != NULL)
		*qualified = quote_qualified_identifier(get_namespace_name(proc->pronamespace),
												NameStr(proc->proname));
	ReleaseSysCache(tuple);

	aclresult = object_aclcheck(ProcedureRelationId, fnoid, roleid, ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for handler function %s(jsonb)",
						NameListToString(names)),
				 errdetail("Jobs run as the role that enqueued them, and role \"%s\" may not execute this function.",
						   GetUserNameFromId(roleid, false)),
				 errhint("GRANT EXECUTE ON FUNCTION %s(jsonb) TO %s;",
						 NameListToString(names),
						 quote_identifier(GetUserNameFromId(roleid, false)))));

	return fnoid;
}

/*
 * atomizer_resolve_handler
 *		At enqueue: the schema-qualified name to store for handler, which
 *		roleid must be able to execute.  ERROR if it is unsuitable.
 */
char *
atomizer_resolve_handler(const char *handler, Oid roleid)
{
	char	   *qualified;

	(void) lookup_checked(handler, roleid, &qualified);
	return qualified;
}

/*
 * atomizer_lookup_handler
 *		At run time: the OID of a stored handler, rechecked for roleid.
 */
Oid
atomizer_lookup_handler(const char *handler, Oid roleid)
{
	return lookup_checked(handler, roleid, NULL);
}
