/*-------------------------------------------------------------------------
 *
 * privilege.c
 *	  Who may do what.  atomizer's tables are owned by the extension's owner
 *	  and no other role may write them; the C functions of the SQL API check
 *	  the caller's rights themselves, then switch to the owner for the table
 *	  access, with search_path pinned so that nothing the caller defines can
 *	  be reached while running with the owner's privileges.
 *
 *	  The caller is GetUserId() on entry: the role that enqueues a job is the
 *	  role the job later runs as, so a job's owner can never be forged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

/*
 * extension_owner
 *		The owner of atomizer's tables: the role CREATE EXTENSION ran as.
 */
static Oid
extension_owner(void)
{
	Oid			nspid;
	Oid			relid;
	HeapTuple	tuple;
	Oid			owner;

	nspid = get_namespace_oid(ATOMIZER_SCHEMA, false);
	relid = get_relname_relid("job", nspid);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"atomizer\" is not installed correctly"),
				 errdetail("Table \"atomizer.job\" is missing."),
				 errhint("Run DROP EXTENSION atomizer; CREATE EXTENSION atomizer;")));

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);

	return owner;
}

/*
 * atomizer_become_owner
 *		Switch to the extension owner with search_path pinned to pg_catalog
 *		(and sequential scans discouraged, see below), saving what is needed
 *		to switch back.  Both are also undone by a
 *		transaction or subtransaction abort.
 */
void
atomizer_become_owner(AtomizerPrivState *state)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&state->save_userid, &state->save_sec_context);
	SetUserIdAndSecContext(owner,
						   state->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE);
	state->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Every statement of atomizer's is written for an index.  The job
	 * table's statistics swing from empty to a million rows within seconds:
	 * right after a VACUUM that found it empty the planner would choose a
	 * sequential scan (and keep it in the cached plan) of a table that is
	 * being refilled.  Measured: claims fell from 40,000 to 3,000 jobs/s
	 * until the next ANALYZE.  Where no index serves, a sequential scan is
	 * still chosen.
	 */
	(void) set_config_option("enable_seqscan", "off",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * atomizer_restore_caller
 *		Undo atomizer_become_owner.
 */
void
atomizer_restore_caller(AtomizerPrivState *state)
{
	AtEOXact_GUC(true, state->save_nestlevel);
	SetUserIdAndSecContext(state->save_userid, state->save_sec_context);
}

/*
 * atomizer_is_admin
 *		True for superusers and for roles with the privileges of
 *		atomizer_admin: they see and steer every role's jobs.
 */
bool
atomizer_is_admin(Oid roleid)
{
	Oid			admin;

	if (superuser_arg(roleid))
		return true;
	admin = get_role_oid(ATOMIZER_ADMIN_ROLE, true);
	return OidIsValid(admin) && has_privs_of_role(roleid, admin);
}

/*
 * atomizer_role_name
 *		Name of a role, palloc'd; an error if it does not exist.
 */
char *
atomizer_role_name(Oid roleid)
{
	return GetUserNameFromId(roleid, false);
}

/*
 * atomizer_query_as_owner
 *		Run a read-only query as the extension's owner and put its rows into
 *		rsinfo's tuplestore (InitMaterializedSRF has made it); the query's
 *		columns are the function's OUT columns, in order and type.
 */
void
atomizer_query_as_owner(ReturnSetInfo *rsinfo, const char *query)
{
	int			natts = rsinfo->setDesc->natts;
	Datum	   *values = palloc(natts * sizeof(Datum));
	bool	   *nulls = palloc(natts * sizeof(bool));
	AtomizerPrivState priv;

	atomizer_become_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(query, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run query: %s", query);
	if (SPI_tuptable->tupdesc->natts != natts)
		elog(ERROR, "query returns %d columns, function %d",
			 SPI_tuptable->tupdesc->natts, natts);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		for (int c = 0; c < natts; c++)
			values[c] = SPI_getbinval(SPI_tuptable->vals[i],
									  SPI_tuptable->tupdesc, c + 1, &nulls[c]);
		/* copied into the tuplestore's own memory */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
}
