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
 *	  Queue settings (with the rate limit, whether handlers are limited,
 *	  and the hooks) are cached per backend: every
 *	  enqueue looks its queue up, and the queue-management functions call
 *	  atomizer._queues_changed(), which invalidates the relcache entry of
 *	  atomizer.queue at commit, so every backend drops its cache then.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "catalog/namespace.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_check_queue_name_sql);
PG_FUNCTION_INFO_V1(atomizer_queues_changed);

/* a hook's name: "schema"."function"(jsonb), quoted */
#define HOOK_NAME_LEN	(2 * (2 * NAMEDATALEN + 2) + 8)

typedef struct QueueCacheEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		external;
	bool		paused;
	int			rate_limit;
	Interval	rate_period;
	bool		has_partition;
	char		rate_partition[NAMEDATALEN];
	bool		handler_limits;
	bool		has_hook[ATOMIZER_HOOKS];
	char		hooks[ATOMIZER_HOOKS][HOOK_NAME_LEN];
} QueueCacheEntry;

static HTAB *queue_cache = NULL;
static bool queue_cache_valid = false;
static bool queue_callback_registered = false;
static Oid	queue_relid = InvalidOid;

/*
 * queue_cache_callback
 *		Relcache invalidation: forget the cached queues when atomizer.queue
 *		(or everything) is invalidated.
 */
static void
queue_cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == queue_relid)
		queue_cache_valid = false;
}

/*
 * queue_table_oid
 *		OID of atomizer.queue.
 */
static Oid
queue_table_oid(void)
{
	return get_relname_relid("queue", get_namespace_oid(ATOMIZER_SCHEMA, false));
}

/*
 * atomizer._queues_changed() RETURNS void
 *		Called by the queue-management functions: every backend's queue
 *		cache is dropped when this transaction commits.
 */
Datum
atomizer_queues_changed(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(queue_table_oid());
	PG_RETURN_VOID();
}

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
 * queue_from_entry
 *		A cached queue's settings as an AtomizerQueue, strings in cxt.
 */
static void
queue_from_entry(const QueueCacheEntry *entry, AtomizerQueue *queue,
				 MemoryContext cxt)
{
	memset(queue, 0, sizeof(AtomizerQueue));
	queue->name = MemoryContextStrdup(cxt, entry->name);
	queue->external = entry->external;
	queue->paused = entry->paused;
	queue->rate_limit = entry->rate_limit;
	queue->rate_period = entry->rate_period;
	if (entry->has_partition)
		queue->rate_partition = MemoryContextStrdup(cxt, entry->rate_partition);
	queue->handler_limits = entry->handler_limits;
	for (int h = 0; h < ATOMIZER_HOOKS; h++)
		if (entry->has_hook[h])
			queue->hooks[h] = MemoryContextStrdup(cxt, entry->hooks[h]);
}

/*
 * atomizer_lookup_queue
 *		Fill *queue with the settings of queue "name"; false if it does not
 *		exist.  Strings are allocated in the caller's memory context.
 */
bool
atomizer_lookup_queue(const char *name, AtomizerQueue *queue)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	static const char *const queries[2] = {
		/* 0.1.0's queue table */
		"SELECT external, paused FROM atomizer.queue WHERE name = $1",
		/* 0.2.0's: limits and hooks */
		"SELECT external, paused, rate_limit, rate_period, rate_partition,"
		" before_run, on_success, on_failure, on_dead,"
		" EXISTS (SELECT 1 FROM atomizer.handler_limit l WHERE l.queue = q.name)"
		" FROM atomizer.queue q WHERE name = $1"
	};
	MemoryContext caller = CurrentMemoryContext;
	AtomizerPrivState priv;
	Datum		arg;
	bool		found;
	QueueCacheEntry *entry;
	QueueCacheEntry fresh;
	char		key[NAMEDATALEN];
	int			gen;

	if (strlen(name) >= NAMEDATALEN)
		return false;
	memset(key, 0, sizeof(key));
	strlcpy(key, name, NAMEDATALEN);

	if (!queue_callback_registered)
	{
		CacheRegisterRelcacheCallback(queue_cache_callback, (Datum) 0);
		queue_callback_registered = true;
	}
	if (!queue_cache_valid || queue_cache == NULL)
	{
		HASHCTL		ctl;

		if (queue_cache != NULL)
			hash_destroy(queue_cache);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(QueueCacheEntry);
		queue_cache = hash_create("atomizer queues", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS);
		queue_relid = queue_table_oid();
		queue_cache_valid = true;
	}
	entry = hash_search(queue_cache, key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		queue_from_entry(entry, queue, caller);
		return true;
	}

	/* 0.2.0's library serves 0.1.0's tables until ALTER EXTENSION UPDATE */
	gen = OidIsValid(queue_relid) &&
		get_attnum(queue_relid, "rate_limit") != InvalidAttrNumber ? 1 : 0;

	arg = CStringGetTextDatum(name);
	atomizer_become_owner(&priv);
	SPI_connect();

	if (plans[gen] == NULL)
	{
		Oid			argtypes[1] = {TEXTOID};

		plans[gen] = SPI_prepare(queries[gen], 1, argtypes);
		if (plans[gen] == NULL)
			elog(ERROR, "SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plans[gen]);
	}

	if (SPI_execute_plan(plans[gen], &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up queue \"%s\"", name);

	found = (SPI_processed == 1);
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		memset(&fresh, 0, sizeof(fresh));
		memcpy(fresh.name, key, NAMEDATALEN);
		fresh.external = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		fresh.paused = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		if (gen == 1)
		{
			Datum		d = SPI_getbinval(tup, desc, 3, &isnull);

			if (!isnull)
			{
				fresh.rate_limit = DatumGetInt32(d);
				fresh.rate_period = *DatumGetIntervalP(SPI_getbinval(tup, desc, 4, &isnull));
			}
			d = SPI_getbinval(tup, desc, 5, &isnull);
			if (!isnull)
			{
				fresh.has_partition = true;
				text_to_cstring_buffer(DatumGetTextPP(d), fresh.rate_partition,
									   NAMEDATALEN);
			}
			for (int h = 0; h < ATOMIZER_HOOKS; h++)
			{
				d = SPI_getbinval(tup, desc, 6 + h, &isnull);
				if (!isnull)
				{
					fresh.has_hook[h] = true;
					text_to_cstring_buffer(DatumGetTextPP(d), fresh.hooks[h],
										   HOOK_NAME_LEN);
				}
			}
			fresh.handler_limits = DatumGetBool(SPI_getbinval(tup, desc, 10, &isnull));
		}
		queue_from_entry(&fresh, queue, caller);
		if (queue_cache_valid)
		{
			entry = hash_search(queue_cache, key, HASH_ENTER, NULL);
			memcpy(entry, &fresh, sizeof(fresh));
		}
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
