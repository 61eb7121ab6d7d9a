/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  Queue names and queue lookups.  The name rule lives here alone: the
 *	  C API and the SQL queue-management functions (through
 *	  atomizer._check_queue_name) both call atomizer_check_queue_name.
 *
 *	  A queue name becomes part of a NOTIFY channel name (atomizer_<queue>),
 *	  so it is restricted to lower-case identifiers: [a-z][a-z0-9_]{0,47}.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_check_queue_name_sql);

/*
 * atomizer_check_queue_name
 *		ERROR unless name is a valid queue name.
 */
void
atomizer_check_queue_name(const char *name)
{
	size_t		len = strlen(name);
	bool		valid = (len >= 1 && len <= ATOMIZER_QUEUE_NAME_MAX &&
						 name[0] >= 'a' && name[0] <= 'z');

	for (size_t i = 1; valid && i < len; i++)
	{
		char		c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			valid = false;
	}

	if (!valid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid queue name \"%s\"", name),
				 errdetail("A queue name starts with a lower-case letter and has at most %d lower-case letters, digits and underscores.",
						   ATOMIZER_QUEUE_NAME_MAX)));
}

/*
 * atomizer._check_queue_name(name text) RETURNS void
 *		SQL access to the name rule, for the queue-management functions.
 */
Datum
atomizer_check_queue_name_sql(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue name must not be null")));
	atomizer_check_queue_name(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * atomizer_lookup_queue
 *		Fill *queue with the settings of queue "name"; false if it does not
 *		exist.  Strings are allocated in the caller's memory context.
 */
bool
atomizer_lookup_queue(const char *name, AtomizerQueue *queue)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller = CurrentMemoryContext;
	AtomizerPrivState priv;
	Datum		arg = CStringGetTextDatum(name);
	bool		found;

	atomizer_become_owner(&priv);
	SPI_connect();

	if (plan == NULL)
	{
		Oid			argtypes[1] = {TEXTOID};

		plan = SPI_prepare("SELECT external, paused FROM atomizer.queue "
						   "WHERE name = $1", 1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}

	if (SPI_execute_plan(plan, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up queue \"%s\"", name);

	found = (SPI_processed == 1);
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		queue->external = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		queue->paused = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		queue->name = MemoryContextStrdup(caller, name);
	}

	SPI_finish();
	atomizer_restore_caller(&priv);
	return found;
}

/*
 * atomizer_require_queue
 *		As atomizer_lookup_queue, but an unknown or misnamed queue is an ERROR.
 */
void
atomizer_require_queue(const char *name, AtomizerQueue *queue)
{
	atomizer_check_queue_name(name);
	if (!atomizer_lookup_queue(name, queue))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue \"%s\" does not exist", name),
				 errhint("Create it with atomizer.create_queue('%s').", name)));
}

/*
 * atomizer_runnable_queues
 *		Names of the queues atomizer's own workers run: internal and not
 *		paused, in name order.  A List of palloc'd strings.
 */
List *
atomizer_runnable_queues(void)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller = CurrentMemoryContext;
	AtomizerPrivState priv;
	List	   *result = NIL;

	atomizer_become_owner(&priv);
	SPI_connect();

	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT name FROM atomizer.queue "
						   "WHERE NOT external AND NOT paused ORDER BY name",
						   0, NULL);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}

	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list queues");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i],
										SPI_tuptable->tupdesc, 1);

		MemoryContext old = MemoryContextSwitchTo(caller);

		result = lappend(result, pstrdup(name));
		MemoryContextSwitchTo(old);
	}

	SPI_finish();
	atomizer_restore_caller(&priv);
	return result;
}
