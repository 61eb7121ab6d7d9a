/*-------------------------------------------------------------------------
 *
 * schedule.c
 *	  Recurring jobs: atomizer.schedule() and its siblings, and the firing
 *	  pass the scheduler runs (atomizer._tick() runs the same pass with a
 *	  clock the caller chooses, for tests).
 *
 *	  A fire enqueues an ordinary job (with schedule_id set) and moves the
 *	  schedule's next_run on, in one transaction, on a row locked with
 *	  FOR UPDATE SKIP LOCKED: a fire happens once per (schedule, fire time)
 *	  whatever crashes, restarts or concurrent schedulers do.  The pass
 *	  fires up to atomizer.cron_lookahead ahead of the fire time: the job
 *	  is enqueued with run_at = the fire time and waits, scheduled, until
 *	  then, so that however many schedules share a fire time their jobs
 *	  are all there when it comes.  A fire decided ahead is undone (its job
 *	  cancelled, cancel_early_fire) by whatever changes the schedule's
 *	  next run before the fire time: schedule() replacing it,
 *	  enable_schedule(), disable_schedule(), unschedule(), the clock
 *	  going back.  Due
 *	  schedules fire in batches of up to FIRE_BATCH per transaction, with a
 *	  handful of statements per batch (the overlap check and the UPDATE of
 *	  the schedules, a HOT update: no index covers next_run; the jobs are
 *	  written by the job store's fast path, store.c); a batch that fails is rolled back
 *	  and its schedules fire one by one, each in a subtransaction, so that
 *	  one bad schedule is found, disabled and logged, and the others fire.
 *
 *	  Policies, per schedule:
 *	  - overlap 'skip' (default): no fire while the previous run's job is
 *		waiting or running; 'allow': fire anyway.  Ahead of the fire time,
 *		a schedule whose previous run is busy is not decided: it is looked
 *		at again at the fire time.
 *	  - misfire 'fire_once' (default): after downtime (more than one fire
 *		time passed), fire once for the whole missed period; 'skip': do not
 *		fire for it.  Either way the next run is the first fire time after
 *		now, so a schedule never fires N times to catch up.
 *	  - a backward clock jump: next_run values beyond the first fire time
 *		after the new "now" are brought back, so nothing stalls until the
 *		clock catches up.
 *	  - a schedule whose spec, time zone, queue, owner or handler has become
 *		unusable is disabled with the reason in last_error; the others go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "atomizer.h"
#include "cron.h"

PG_FUNCTION_INFO_V1(atomizer_schedule);
PG_FUNCTION_INFO_V1(atomizer_unschedule);
PG_FUNCTION_INFO_V1(atomizer_enable_schedule);
PG_FUNCTION_INFO_V1(atomizer_disable_schedule);
PG_FUNCTION_INFO_V1(atomizer_run_schedule);
PG_FUNCTION_INFO_V1(atomizer_tick);

#define SCHEDULE_NAME_MAX	200
StaticAssertDecl(INTERVAL_SPEC_MAX_SECS == ATOMIZER_MAX_DELAY_SECS,
				 "a schedule's longest interval is atomizer's longest delay");
/* first key of the advisory lock schedule() takes on (owner, name) */
#define SCHEDULE_LOCK_CLASS	1635020653
#define FIRE_BATCH			10000

/* The clock of the previous firing pass of this process. */
static TimestampTz last_pass_now = 0;

/*
 * lookup_tz
 *		The time zone "name" of PostgreSQL's tz database; ERROR if unknown.
 */
static pg_tz *
lookup_tz(const char *name)
{
	pg_tz	   *tz = pg_tzset(name);

	if (tz == NULL || !pg_tz_acceptable(tz))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("time zone \"%s\" not recognized", name),
				 errhint("Use a name from pg_timezone_names, such as 'Europe/Berlin' or 'UTC'.")));
	return tz;
}

/*
 * next_after
 *		The first fire time after "after", as a nullable Datum.
 */
static Datum
next_after(const AtomizerCron *cron, TimestampTz after, pg_tz *tz, bool *isnull)
{
	TimestampTz next = atomizer_cron_next(cron, after, tz);

	*isnull = TIMESTAMP_NOT_FINITE(next);
	return TimestampTzGetDatum(next);
}

/*
 * fire_run_at
 *		The run_at of a fire at fire_time decided by a pass at clock "now":
 *		the fire time, also when the pass fires ahead of it; one that a
 *		test's clock, ahead of the real one ("clock"), made due runs now.
 */
static TimestampTz
fire_run_at(TimestampTz fire_time, TimestampTz now, TimestampTz clock)
{
	if (fire_time > now)
		return fire_time;
	return Min(fire_time, clock);
}

/*
 * cancel_early_fire
 *		The schedule's next run has changed (or it is gone): cancel its last
 *		job, tup's columns job_col (last_job_id) and job_col + 1 (last_run),
 *		if a pass enqueued it ahead of a fire time still to come.
 */
static void
cancel_early_fire(HeapTuple tup, TupleDesc desc, int job_col, const char *name,
				  const char *what)
{
	bool		job_null;
	bool		time_null;
	Datum		job = SPI_getbinval(tup, desc, job_col, &job_null);
	Datum		fire_time = SPI_getbinval(tup, desc, job_col + 1, &time_null);

	if (!job_null && !time_null)
		(void) atomizer_store_cancel_early_fire(DatumGetInt64(job),
												DatumGetTimestampTz(fire_time),
												psprintf("schedule \"%s\" was %s before this fire time",
														 name, what));
}

/*
 * text_arg
 *		A required text argument as a C string.
 */
static char *
text_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * atomizer.schedule(name, spec, handler, payload, queue, tz, enabled,
 *					 overlap, misfire, priority, max_attempts, timeout)
 *		RETURNS bigint
 *		Create or replace the caller's recurring entry "name" (its jobs run
 *		as the caller).  Every role has its own schedule names.
 */
Datum
atomizer_schedule(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr lock_plan = NULL;
	static SPIPlanPtr upsert_plan = NULL;
	Oid			caller = GetUserId();
	char	   *name = text_arg(fcinfo, 0, "name");
	char	   *spec = text_arg(fcinfo, 1, "spec");
	char	   *handler = text_arg(fcinfo, 2, "handler");
	char	   *queue_name = text_arg(fcinfo, 4, "queue");
	char	   *tz_name = text_arg(fcinfo, 5, "tz");
	char	   *overlap = text_arg(fcinfo, 7, "overlap");
	char	   *misfire = text_arg(fcinfo, 8, "misfire");
	bool		enabled;
	Jsonb	   *payload;
	AtomizerCron cron;
	AtomizerQueue queue;
	pg_tz	   *tz;
	int32		priority;
	AtomizerPrivState priv;
	Datum		values[14];
	char		nulls[14];
	bool		isnull;
	int64		id;

	if (name[0] == '\0' || pg_mbstrlen(name) > SCHEDULE_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid schedule name \"%s\"", name),
				 errdetail("A schedule name has 1 to %d characters.", SCHEDULE_NAME_MAX)));
	atomizer_cron_parse_or_error(spec, &cron);
	tz = lookup_tz(tz_name);
	atomizer_cron_check_fires(spec, &cron, GetCurrentTimestamp(), tz);
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("payload must not be null"),
				 errhint("Pass '{}' when the job needs no payload.")));
	payload = PG_GETARG_JSONB_P(3);
	atomizer_check_payload(payload, 0);
	if (PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("enabled must not be null")));
	enabled = PG_GETARG_BOOL(6);
	if (strcmp(overlap, "skip") != 0 && strcmp(overlap, "allow") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid overlap policy \"%s\"", overlap),
				 errhint("Use 'skip' (do not fire while the previous run waits or runs) or 'allow'.")));
	if (strcmp(misfire, "fire_once") != 0 && strcmp(misfire, "skip") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid misfire policy \"%s\"", misfire),
				 errhint("Use 'fire_once' (fire once for a missed period) or 'skip'.")));
	atomizer_check_job_settings(fcinfo, 9, 10, 11);
	priority = PG_GETARG_INT32(9);
	atomizer_require_queue(queue_name, &queue);
	handler = atomizer_job_handler(handler, &queue, caller);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(spec);
	values[2] = CStringGetTextDatum(handler);
	values[3] = JsonbPGetDatum(payload);
	values[4] = CStringGetTextDatum(queue_name);
	values[5] = CStringGetTextDatum(tz_name);
	values[6] = CStringGetTextDatum(atomizer_role_name(caller));
	values[7] = BoolGetDatum(enabled);
	values[8] = CStringGetTextDatum(overlap);
	values[9] = CStringGetTextDatum(misfire);
	values[10] = Int32GetDatum(priority);
	values[11] = PG_ARGISNULL(10) ? (Datum) 0 : PG_GETARG_DATUM(10);
	nulls[11] = PG_ARGISNULL(10) ? 'n' : ' ';
	values[12] = PG_ARGISNULL(11) ? (Datum) 0 : PG_GETARG_DATUM(11);
	nulls[12] = PG_ARGISNULL(11) ? 'n' : ' ';
	values[13] = next_after(&cron, GetCurrentTimestamp(), tz, &isnull);
	nulls[13] = (isnull || !enabled) ? 'n' : ' ';

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[14] = {TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID,
			TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, INT4OID, INT4OID,
		INTERVALOID, TIMESTAMPTZOID};

		/*
		 * Replace the caller's schedule of that name, or insert it.  Not ON
		 * CONFLICT (owner, name): a database still on 0.1.0's objects (not
		 * yet updated) has its unique constraint on name alone.  The lock
		 * on (owner, name) makes two sessions creating the same schedule
		 * take turns: the second replaces the first's.
		 */
		atomizer_prepare(&lock_plan,
				"SELECT pg_catalog.pg_advisory_xact_lock("
				CppAsString2(SCHEDULE_LOCK_CLASS) ","
				" pg_catalog.hashtext($7 || '/' || $1))", 14, types);
		atomizer_prepare(&upsert_plan,
				"WITH u AS (UPDATE atomizer.schedule SET spec = $2,"
				" handler = $3, payload = $4, queue = $5, tz = $6,"
				" enabled = $8, overlap = $9, misfire = $10, priority = $11,"
				" max_attempts = $12, timeout = $13, next_run = $14,"
				" last_error = NULL, updated_at = now()"
				" WHERE owner = $7::name AND name = $1"
				" RETURNING id, last_job_id, last_run), "
				"i AS (INSERT INTO atomizer.schedule (name, spec, handler, payload,"
				" queue, tz, owner, enabled, overlap, misfire, priority,"
				" max_attempts, timeout, next_run) "
				"SELECT $1, $2, $3, $4, $5, $6, $7::name, $8, $9, $10, $11,"
				" $12, $13, $14 WHERE NOT EXISTS (SELECT FROM u)"
				" RETURNING id, last_job_id, last_run) "
				"SELECT * FROM u UNION ALL SELECT * FROM i", 14, types);
	}
	if (SPI_execute_plan(lock_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not lock schedule \"%s\"", name);
	if (SPI_execute_plan(upsert_plan, values, nulls, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not save schedule \"%s\"", name);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	cancel_early_fire(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, name, "replaced");
	SPI_finish();
	atomizer_restore_caller(&priv);
	atomizer_note_schedule_change();

	PG_RETURN_INT64(id);
}

/*
 * schedule_owner
 *		The owner of the schedule "name" that the caller acts on.  Names
 *		belong to roles: each role has its own namespace of schedule names,
 *		so no role can take a name another will need, or learn that it
 *		exists.  An ordinary role acts on its own schedules.  A member of
 *		atomizer_admin acts on its own schedule of that name if it has one,
 *		otherwise on the one role's that has it; when several roles have
 *		one, it must say whose (SET ROLE to that role).
 */
static Datum
schedule_owner(const char *name)
{
	static SPIPlanPtr plan = NULL;
	Oid			caller = GetUserId();
	char	   *me = atomizer_role_name(caller);
	AtomizerPrivState priv;
	Datum		values[2];
	char	   *owner = me;
	MemoryContext cxt = CurrentMemoryContext;

	if (!atomizer_is_admin(caller))
		return CStringGetTextDatum(me);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(me);
	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[2] = {TEXTOID, TEXTOID};

		atomizer_prepare(&plan,
				"SELECT owner::text FROM atomizer.schedule WHERE name = $1"
				" ORDER BY owner = $2::name DESC, owner LIMIT 2", 2, types);
	}
	if (SPI_execute_plan(plan, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up schedule \"%s\"", name);
	if (SPI_processed > 0)
	{
		char	   *first = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (SPI_processed > 1 && strcmp(first, me) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_AMBIGUOUS_PARAMETER),
					 errmsg("several roles have a schedule named \"%s\"", name),
					 errdetail("Schedule names belong to the role that made them; roles \"%s\" and \"%s\" (at least) each have one.",
							   first,
							   SPI_getvalue(SPI_tuptable->vals[1], SPI_tuptable->tupdesc, 1)),
					 errhint("SET ROLE to the schedule's owner first.")));
		owner = MemoryContextStrdup(cxt, first);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	return CStringGetTextDatum(owner);
}

/*
 * run_on_own_schedule
 *		Run one of the name-keyed statements below (each RETURNING
 *		last_job_id, last_run) on the schedule the caller acts on
 *		(schedule_owner: $2), and cancel the job a pass enqueued ahead of
 *		its next fire time, since the statement changes that time ("what"
 *		says how).  Returns whether there was such a schedule.
 */
static bool
run_on_own_schedule(SPIPlanPtr *cache, const char *sql, const char *name,
					Datum extra, bool extra_null, const char *what)
{
	AtomizerPrivState priv;
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		found;

	values[0] = CStringGetTextDatum(name);
	values[1] = schedule_owner(name);
	values[2] = extra;
	nulls[2] = extra_null ? 'n' : ' ';

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};

		atomizer_prepare(cache, sql, 3, types);
	}
	if (SPI_execute_plan(*cache, values, nulls, false, 0) < 0)
		elog(ERROR, "could not change schedule \"%s\"", name);
	found = SPI_processed == 1;
	if (found)
		cancel_early_fire(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, name, what);
	SPI_finish();
	atomizer_restore_caller(&priv);
	return found;
}

/*
 * atomizer.unschedule(name text) RETURNS boolean
 */
Datum
atomizer_unschedule(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(run_on_own_schedule(&plan,
									   "DELETE FROM atomizer.schedule WHERE name = $1"
									   " AND owner = $2::name"
									   " AND $3 IS NULL RETURNING last_job_id, last_run",
									   text_to_cstring(PG_GETARG_TEXT_PP(0)),
									   (Datum) 0, true, "removed"));
}

/*
 * atomizer.disable_schedule(name text) RETURNS boolean
 */
Datum
atomizer_disable_schedule(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(run_on_own_schedule(&plan,
									   "UPDATE atomizer.schedule SET enabled = false,"
									   " next_run = NULL, updated_at = now()"
									   " WHERE name = $1"
									   " AND owner = $2::name"
									   " AND $3 IS NULL RETURNING last_job_id, last_run",
									   text_to_cstring(PG_GETARG_TEXT_PP(0)),
									   (Datum) 0, true, "disabled"));
}

/*
 * atomizer.enable_schedule(name text) RETURNS boolean
 *		Enable a schedule; its next run is the first fire time after now.
 */
Datum
atomizer_enable_schedule(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr find_plan = NULL;
	static SPIPlanPtr plan = NULL;
	char	   *name;
	char	   *spec;
	char	   *tz_name;
	AtomizerCron cron;
	bool		isnull;
	Datum		next;
	bool		done;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	/* read spec and tz (visible to the caller through row-level security) */
	{
		AtomizerPrivState priv;
		Datum		values[2];
		char		nulls[2] = {' ', ' '};
		MemoryContext cxt = CurrentMemoryContext;

		values[0] = CStringGetTextDatum(name);
		values[1] = schedule_owner(name);
		atomizer_become_owner(&priv);
		SPI_connect();
		{
			Oid			types[2] = {TEXTOID, TEXTOID};

			atomizer_prepare(&find_plan,
					"SELECT spec, tz FROM atomizer.schedule WHERE name = $1"
					" AND owner = $2::name", 2, types);
		}
		if (SPI_execute_plan(find_plan, values, nulls, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look up schedule \"%s\"", name);
		if (SPI_processed != 1)
		{
			SPI_finish();
			atomizer_restore_caller(&priv);
			PG_RETURN_BOOL(false);
		}
		spec = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1));
		tz_name = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 2));
		SPI_finish();
		atomizer_restore_caller(&priv);
	}

	atomizer_cron_parse_or_error(spec, &cron);
	next = next_after(&cron, GetCurrentTimestamp(), lookup_tz(tz_name), &isnull);
	done = run_on_own_schedule(&plan,
							   "UPDATE atomizer.schedule SET enabled = true,"
							   " last_error = NULL, next_run = $3,"
							   " updated_at = now() WHERE name = $1"
							   " AND owner = $2::name RETURNING last_job_id, last_run",
							   name, next, isnull, "enabled");
	atomizer_note_schedule_change();
	PG_RETURN_BOOL(done);
}

/*
 * atomizer.run_schedule(name text) RETURNS bigint
 *		Fire now, whatever the spec and the overlap policy say.
 */
Datum
atomizer_run_schedule(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr find_plan = NULL;
	static SPIPlanPtr mark_plan = NULL;
	char	   *name = text_arg(fcinfo, 0, "name");
	AtomizerPrivState priv;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	int64		schedule_id;
	int64		job_id;
	char	   *queue;
	bool		isnull;

	values[0] = CStringGetTextDatum(name);
	values[1] = schedule_owner(name);

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[2] = {TEXTOID, TEXTOID};

		atomizer_prepare(&find_plan,
				"SELECT id, queue FROM atomizer.schedule WHERE name = $1"
				" AND owner = $2::name FOR UPDATE",
				2, types);
		types[0] = INT8OID;
		types[1] = INT8OID;
		atomizer_prepare(&mark_plan,
				"UPDATE atomizer.schedule SET last_run = now(), last_job_id = $2,"
				" fires = fires + 1 WHERE id = $1", 2, types);
	}
	if (SPI_execute_plan(find_plan, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up schedule \"%s\"", name);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("schedule \"%s\" does not exist", name)));
	schedule_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	queue = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	job_id = atomizer_store_insert_fire(schedule_id, GetCurrentTransactionStartTimestamp());
	values[0] = Int64GetDatum(schedule_id);
	values[1] = Int64GetDatum(job_id);
	if (SPI_execute_plan(mark_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update schedule \"%s\"", name);
	SPI_finish();
	atomizer_restore_caller(&priv);
	atomizer_note_enqueue(queue);

	PG_RETURN_INT64(job_id);
}

/*
 * fire_check
 *		Whether the owner may still run the handler (internal queues);
 *		otherwise a palloc'd reason.  Catalog lookups only, in a
 *		subtransaction so that an error is caught, not thrown.
 */
static char *
fire_check(const char *handler, const char *owner, bool external)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char	   *reason = NULL;
	Oid			roleid = get_role_oid(owner, true);

	if (!OidIsValid(roleid))
		return psprintf("role \"%s\" that owns the schedule does not exist", owner);
	if (external)
		return NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		(void) atomizer_lookup_handler(handler, roleid);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = oldowner;
		reason = pstrdup(edata->message);
	}
	PG_END_TRY();
	return reason;
}

/*
 * clock_went_back
 *		The clock is earlier than at the previous pass: bring back next_run
 *		values that lie beyond the first fire time after now.
 */
static void
clock_went_back(TimestampTz now)
{
	static SPIPlanPtr list_plan = NULL;
	static SPIPlanPtr set_plan = NULL;
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		arg = TimestampTzGetDatum(now);
	SPITupleTable *tuptable;
	uint64		n;

	atomizer_prepare(&list_plan,
			"SELECT id, spec, tz, next_run, name, last_job_id, last_run"
			" FROM atomizer.schedule"
			" WHERE enabled AND next_run > $1 FOR UPDATE SKIP LOCKED",
			1, &types[1]);
	atomizer_prepare(&set_plan,
			"UPDATE atomizer.schedule SET next_run = $2 WHERE id = $1",
			2, types);
	if (SPI_execute_plan(list_plan, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list schedules");
	tuptable = SPI_tuptable;
	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		AtomizerCron cron;
		char	   *error;
		pg_tz	   *tz;
		bool		isnull;
		TimestampTz stored;
		TimestampTz next;
		Datum		values[2];

		if (!atomizer_cron_parse(SPI_getvalue(tup, tuptable->tupdesc, 2), &cron, &error))
			continue;			/* the firing pass disables it */
		tz = pg_tzset(SPI_getvalue(tup, tuptable->tupdesc, 3));
		if (tz == NULL)
			continue;
		stored = DatumGetTimestampTz(SPI_getbinval(tup, tuptable->tupdesc, 4, &isnull));
		next = atomizer_cron_next(&cron, now, tz);
		if (TIMESTAMP_NOT_FINITE(next) || next >= stored)
			continue;
		values[0] = SPI_getbinval(tup, tuptable->tupdesc, 1, &isnull);
		values[1] = TimestampTzGetDatum(next);
		if (SPI_execute_plan(set_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update schedule");
		cancel_early_fire(tup, tuptable->tupdesc, 6,
						  SPI_getvalue(tup, tuptable->tupdesc, 5),
						  "rescheduled (the clock went back)");
	}
}

/* One due schedule, for fire_one. */
typedef struct FireArgs
{
	HeapTuple	tup;
	TupleDesc	desc;
	TimestampTz now;
	int			fired;
} FireArgs;

/*
 * fire_one
 *		Fire (or skip, or disable) one due schedule, the row a->tup of the
 *		due list; the caller is connected to SPI as the owner.
 */
static void
fire_one(void *arg)
{
	static SPIPlanPtr update_plan = NULL;
	static SPIPlanPtr disable_plan = NULL;
	FireArgs   *a = (FireArgs *) arg;
	HeapTuple	tup = a->tup;
	TupleDesc	desc = a->desc;
	bool		isnull;
	Datum		id = SPI_getbinval(tup, desc, 1, &isnull);
	char	   *name = SPI_getvalue(tup, desc, 2);
	char	   *spec = SPI_getvalue(tup, desc, 3);
	char	   *handler = SPI_getvalue(tup, desc, 4);
	char	   *queue = SPI_getvalue(tup, desc, 5);
	char	   *tz_name = SPI_getvalue(tup, desc, 6);
	char	   *owner = SPI_getvalue(tup, desc, 7);
	bool		skip_overlap = strcmp(SPI_getvalue(tup, desc, 8), "skip") == 0;
	bool		skip_misfire = strcmp(SPI_getvalue(tup, desc, 9), "skip") == 0;
	TimestampTz fire_time = DatumGetTimestampTz(SPI_getbinval(tup, desc, 10, &isnull));
	Datum		external_d = SPI_getbinval(tup, desc, 11, &isnull);
	bool		queue_missing = isnull;
	AtomizerCron cron;
	char	   *reason = NULL;
	pg_tz	   *tz = NULL;
	TimestampTz following;
	TimestampTz next;
	bool		fire = true;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', 'n', 'n', ' ', ' '};

	{
		Oid			types[6] = {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		INT8OID, INT4OID, INT4OID};

		atomizer_prepare(&update_plan,
				"UPDATE atomizer.schedule SET next_run = $2,"
				" last_run = coalesce($3, last_run),"
				" last_job_id = coalesce($4, last_job_id),"
				" fires = fires + $5, skipped = skipped + $6 WHERE id = $1",
				6, types);
		types[1] = TEXTOID;
		atomizer_prepare(&disable_plan,
				"UPDATE atomizer.schedule SET enabled = false, next_run = NULL,"
				" last_error = $2 WHERE id = $1", 2, types);
	}

	if (!atomizer_cron_parse(spec, &cron, &reason))
		;
	else if ((tz = pg_tzset(tz_name)) == NULL || !pg_tz_acceptable(tz))
		reason = psprintf("time zone \"%s\" not recognized", tz_name);
	else if (queue_missing)
		reason = psprintf("queue \"%s\" does not exist", queue);
	else
		reason = fire_check(handler, owner, DatumGetBool(external_d));

	if (reason != NULL)
	{
		Datum		dvalues[2] = {id, CStringGetTextDatum(reason)};

		if (SPI_execute_plan(disable_plan, dvalues, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not disable schedule \"%s\"", name);
		ereport(LOG,
				(errmsg("atomizer: schedule \"%s\" disabled: %s", name, reason)));
		return;
	}

	/* downtime: more than one fire time has passed */
	following = atomizer_cron_next(&cron, fire_time, tz);
	if (!TIMESTAMP_NOT_FINITE(following) && following <= a->now && skip_misfire)
		fire = false;
	if (fire && skip_overlap && atomizer_store_schedule_busy(DatumGetInt64(id)))
	{
		if (fire_time > a->now)
			return;				/* ahead of time: decided at the fire time */
		fire = false;
	}

	if (fire)
	{
		values[2] = TimestampTzGetDatum(fire_time);
		nulls[2] = ' ';
		values[3] = Int64GetDatum(atomizer_store_insert_fire(DatumGetInt64(id),
															 fire_run_at(fire_time, a->now,
																		 GetCurrentTimestamp())));
		nulls[3] = ' ';
		atomizer_note_enqueue(queue);
		a->fired++;
	}

	/* never fire N times to catch up: the next run is after now */
	next = atomizer_cron_next(&cron, Max(fire_time, a->now), tz);
	values[0] = id;
	values[1] = TimestampTzGetDatum(next);
	nulls[1] = TIMESTAMP_NOT_FINITE(next) ? 'n' : ' ';
	values[4] = Int32GetDatum(fire ? 1 : 0);
	values[5] = Int32GetDatum(fire ? 0 : 1);
	if (SPI_execute_plan(update_plan, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update schedule \"%s\"", name);
}

/* The schedule whose fire failed, and why, for disable_failed. */
typedef struct DisableArgs
{
	Datum		id;
	char	   *error;
} DisableArgs;

static void
disable_failed(void *arg)
{
	static SPIPlanPtr plan = NULL;
	DisableArgs *a = (DisableArgs *) arg;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {a->id, CStringGetTextDatum(a->error)};

	atomizer_prepare(&plan,
			"UPDATE atomizer.schedule SET enabled = false, next_run = NULL,"
			" last_error = $2 WHERE id = $1", 2, types);
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not disable a schedule");
}

/*
 * The fire checks of one firing pass, cached: many schedules share a
 * handler and an owner, and a check is a subtransaction.
 */
typedef struct FireCheckEntry
{
	char		key[3 * NAMEDATALEN + 8];	/* external, owner, handler */
	char	   *reason;			/* NULL: may fire */
} FireCheckEntry;

static char *
fire_check_cached(HTAB *cache, const char *handler, const char *owner,
				  bool external)
{
	char		key[3 * NAMEDATALEN + 8];
	FireCheckEntry *entry;
	bool		found;

	if (snprintf(key, sizeof(key), "%d|%s|%s", external, owner, handler) >= (int) sizeof(key))
		return fire_check(handler, owner, external);	/* too long to cache */
	entry = hash_search(cache, key, HASH_ENTER, &found);
	if (!found)
		entry->reason = fire_check(handler, owner, external);
	return entry->reason;
}

/*
 * One due schedule of a batch, decided before the batch's statements: the
 * same decisions fire_one makes, in the same order.
 */
typedef struct DueFire
{
	int64		id;
	char	   *queue;
	AtomizerFireJob job;		/* its job, if it fires */
	TimestampTz fire_time;
	TimestampTz next;			/* not finite: never again */
	bool		skip_overlap;
	bool		fire;
	bool		deferred;		/* ahead of time and busy: not decided yet */
	bool		alone;			/* to be fired (or disabled) by fire_one */
	int64		job_id;
} DueFire;

/*
 * decide_fire
 *		Fill *d from the due row tup: whether its spec, time zone, queue,
 *		owner and handler are still usable (if not, it is left to fire_one,
 *		which disables it), whether the misfire policy skips it, and its
 *		next run.  The overlap policy is looked up for the whole batch.
 */
static void
decide_fire(HeapTuple tup, TupleDesc desc, TimestampTz now, HTAB *checks,
			DueFire *d)
{
	bool		isnull;
	char	   *spec = SPI_getvalue(tup, desc, 3);
	char	   *tz_name = SPI_getvalue(tup, desc, 6);
	Datum		external_d = SPI_getbinval(tup, desc, 11, &isnull);
	bool		queue_missing = isnull;
	bool		skip_misfire = strcmp(SPI_getvalue(tup, desc, 9), "skip") == 0;
	AtomizerCron cron;
	char	   *reason = NULL;
	pg_tz	   *tz = NULL;
	TimestampTz following;

	memset(d, 0, sizeof(DueFire));
	d->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	d->queue = SPI_getvalue(tup, desc, 5);
	d->fire_time = DatumGetTimestampTz(SPI_getbinval(tup, desc, 10, &isnull));
	d->skip_overlap = strcmp(SPI_getvalue(tup, desc, 8), "skip") == 0;
	d->job.schedule_id = d->id;
	d->job.queue = d->queue;
	d->job.handler = SPI_getvalue(tup, desc, 4);
	d->job.owner = SPI_getvalue(tup, desc, 7);
	d->job.payload = SPI_getbinval(tup, desc, 12, &isnull);
	d->job.priority = DatumGetInt32(SPI_getbinval(tup, desc, 13, &isnull));
	d->job.max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 14,
													  &d->job.max_attempts_null));
	d->job.timeout = DatumGetIntervalP(SPI_getbinval(tup, desc, 15,
													 &d->job.timeout_null));
	if (!atomizer_cron_parse(spec, &cron, &reason) ||
		(tz = pg_tzset(tz_name)) == NULL || !pg_tz_acceptable(tz) ||
		queue_missing ||
		fire_check_cached(checks, d->job.handler, d->job.owner,
						  DatumGetBool(external_d)) != NULL)
	{
		d->alone = true;
		return;
	}
	d->fire = true;
	following = atomizer_cron_next(&cron, d->fire_time, tz);
	if (!TIMESTAMP_NOT_FINITE(following) && following <= now && skip_misfire)
		d->fire = false;
	d->next = atomizer_cron_next(&cron, Max(d->fire_time, now), tz);
}

/* A batch of due schedules, for fire_batch. */
typedef struct FireBatch
{
	DueFire    *due;
	int			n;
	TimestampTz now;			/* the pass's clock */
	int			fired;
	int			deferred;		/* left undecided until their fire time */
} FireBatch;

static int
compare_due_id(const void *a, const void *b)
{
	int64		x = (*(DueFire *const *) a)->id;
	int64		y = (*(DueFire *const *) b)->id;

	return (x > y) - (x < y);
}

/*
 * fire_batch
 *		Fire the due schedules of b that fire_one need not take alone, with
 *		a handful of statements for all of them: which are busy (overlap
 *		'skip'), the jobs of those that fire, and every schedule's next run
 *		and counters.  The caller is connected to SPI as the owner, and
 *		runs this in a subtransaction: if any of it fails, none of it stays.
 */
static void
fire_batch(void *arg)
{
	static SPIPlanPtr update_plan = NULL;
	FireBatch  *b = (FireBatch *) arg;
	int			n = 0;
	int			nlook = 0;
	int			nfire = 0;
	DueFire   **mine = palloc(sizeof(DueFire *) * Max(b->n, 1));
	int64	   *ids = palloc(sizeof(int64) * Max(b->n, 1));
	TimestampTz *times = palloc(sizeof(TimestampTz) * Max(b->n, 1));
	bool	   *busy = palloc(sizeof(bool) * Max(b->n, 1));
	int64	   *out_schedules = palloc(sizeof(int64) * Max(b->n, 1));
	int64	   *out_jobs = palloc(sizeof(int64) * Max(b->n, 1));
	AtomizerFireJob *jobs = palloc(sizeof(AtomizerFireJob) * Max(b->n, 1));
	TimestampTz clock;
	int			inserted;

	b->fired = 0;
	b->deferred = 0;
	for (int i = 0; i < b->n; i++)
		if (!b->due[i].alone)
			mine[n++] = &b->due[i];
	if (n == 0)
		return;

	/*
	 * The overlap policy: no fire while a job of the schedule waits or
	 * runs.  Ahead of the fire time, a busy schedule is left for the pass
	 * at its fire time (its previous run may be over by then): not fired,
	 * not skipped, its row not written.
	 */
	for (int i = 0; i < n; i++)
		if (mine[i]->fire && mine[i]->skip_overlap)
			ids[nlook++] = mine[i]->id;
	if (nlook > 0)
	{
		int			k = 0;
		int			left = 0;

		atomizer_store_schedules_busy(ids, nlook, busy);
		for (int i = 0; i < n; i++)
			if (mine[i]->fire && mine[i]->skip_overlap && busy[k++])
			{
				mine[i]->fire = false;
				mine[i]->deferred = mine[i]->fire_time > b->now;
				if (mine[i]->deferred)
					b->deferred++;
			}
		for (int i = 0; i < n; i++)
			if (!mine[i]->deferred)
				mine[left++] = mine[i];
		n = left;
		if (n == 0)
			return;
	}

	/* the jobs, in the order the schedules came due */
	clock = GetCurrentTimestamp();
	for (int i = 0; i < n; i++)
	{
		if (!mine[i]->fire)
			continue;
		mine[i]->job.run_at = fire_run_at(mine[i]->fire_time, b->now, clock);
		jobs[nfire] = mine[i]->job;
		ids[nfire] = mine[i]->id;
		times[nfire++] = mine[i]->job.run_at;
		atomizer_note_enqueue(mine[i]->queue);
	}
	if (nfire > 0 && atomizer_store_fire_jobs(jobs, nfire, out_jobs))
	{
		/* written without a statement, in the order of jobs[] */
		for (int i = 0, k = 0; i < n; i++)
			if (mine[i]->fire)
				mine[i]->job_id = out_jobs[k++];
	}
	else if (nfire > 0)
	{
		inserted = atomizer_store_insert_fires(ids, times, nfire, out_schedules, out_jobs);
		if (inserted != nfire)
			elog(ERROR, "could not enqueue the jobs of %d schedules (%d enqueued)",
				 nfire, inserted);
		qsort(mine, n, sizeof(DueFire *), compare_due_id);
		for (int i = 0; i < inserted; i++)
		{
			DueFire		key = {.id = out_schedules[i]};
			DueFire    *keyp = &key;
			DueFire   **d = bsearch(&keyp, mine, n, sizeof(DueFire *), compare_due_id);

			if (d == NULL)
				elog(ERROR, "a job was enqueued for a schedule that was not due");
			(*d)->job_id = out_jobs[i];
		}
	}

	/* every schedule's next run and counters, in one statement */
	{
		Oid			types[6] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID,
		INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID};
		Datum		values[6];
		Datum	   *cols[6];
		bool	   *nulls[3];
		int			dims[1] = {n};
		int			lbs[1] = {1};

		for (int c = 0; c < 6; c++)
			cols[c] = palloc(sizeof(Datum) * n);
		for (int c = 0; c < 3; c++)
			nulls[c] = palloc0(sizeof(bool) * n);
		for (int i = 0; i < n; i++)
		{
			DueFire    *d = mine[i];

			cols[0][i] = Int64GetDatum(d->id);
			cols[1][i] = TimestampTzGetDatum(d->next);
			nulls[0][i] = TIMESTAMP_NOT_FINITE(d->next);
			cols[2][i] = TimestampTzGetDatum(d->fire_time);
			nulls[1][i] = !d->fire;
			cols[3][i] = Int64GetDatum(d->job_id);
			nulls[2][i] = !d->fire;
			cols[4][i] = Int32GetDatum(d->fire ? 1 : 0);
			cols[5][i] = Int32GetDatum(d->fire ? 0 : 1);
			if (d->fire)
				b->fired++;
		}
		values[0] = PointerGetDatum(construct_array(cols[0], n, INT8OID, 8,
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[1] = PointerGetDatum(construct_md_array(cols[1], nulls[0], 1, dims, lbs,
													   TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
		values[2] = PointerGetDatum(construct_md_array(cols[2], nulls[1], 1, dims, lbs,
													   TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
		values[3] = PointerGetDatum(construct_md_array(cols[3], nulls[2], 1, dims, lbs,
													   INT8OID, 8, FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
		values[4] = PointerGetDatum(construct_array(cols[4], n, INT4OID, 4, true,
													TYPALIGN_INT));
		values[5] = PointerGetDatum(construct_array(cols[5], n, INT4OID, 4, true,
													TYPALIGN_INT));
		/*
		 * A generic plan: a nested loop over the primary key, whatever the
		 * batch's size (a custom plan hashes the whole table to join a big
		 * batch, however few of its schedules are due).
		 */
		atomizer_prepare_opts(&update_plan,
				"UPDATE atomizer.schedule s SET next_run = u.next_run,"
				" last_run = coalesce(u.last_run, s.last_run),"
				" last_job_id = coalesce(u.job_id, s.last_job_id),"
				" fires = s.fires + u.fired, skipped = s.skipped + u.skipped"
				" FROM unnest($1::int8[], $2::timestamptz[], $3::timestamptz[],"
				"  $4::int8[], $5::int4[], $6::int4[])"
				"  u(id, next_run, last_run, job_id, fired, skipped)"
				" WHERE s.id = u.id", 6, types, CURSOR_OPT_GENERIC_PLAN);
		if (SPI_execute_plan(update_plan, values, NULL, false, 0) != SPI_OK_UPDATE ||
			SPI_processed != (uint64) n)
			elog(ERROR, "could not update %d schedules", n);
	}
}

/*
 * fire_alone
 *		Fire (or skip, or disable) the due row tup by itself, in a
 *		subtransaction of its own: one whose job cannot be inserted (a
 *		trigger raises, its queue's settings fail) is disabled with the
 *		error as its last_error.  Returns 1 if it fired.
 */
static int
fire_alone(HeapTuple tup, TupleDesc desc, TimestampTz now)
{
	FireArgs	args;
	ErrorData  *edata;
	bool		isnull;

	args.tup = tup;
	args.desc = desc;
	args.now = now;
	args.fired = 0;
	edata = atomizer_try(fire_one, &args);
	if (edata != NULL)
	{
		char	   *name = SPI_getvalue(tup, desc, 2);
		DisableArgs dargs;
		ErrorData  *again;

		dargs.id = SPI_getbinval(tup, desc, 1, &isnull);
		dargs.error = psprintf("could not fire: %s", edata->message);
		again = atomizer_try(disable_failed, &dargs);
		if (again != NULL)
			ReThrowError(again);
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("atomizer: schedule \"%s\" disabled: it could not fire: %s",
						name, edata->message),
				 edata->context ? errcontext_msg("%s", edata->context) : 0,
				 errhint("Fix the cause, then run atomizer.enable_schedule('%s').",
						 name)));
		FreeErrorData(edata);
	}
	return args.fired;
}

/*
 * atomizer_fire_schedules
 *		One firing pass at clock "now", in the current transaction, of up
 *		to FIRE_BATCH schedules due by now + lookahead_ms (*more: there may
 *		be more due); those due after now fire ahead, their jobs run at the
 *		fire time.  They
 *		fire as a batch, with a handful of statements for all of them, in a
 *		subtransaction; if the batch fails, each fires again alone, in a
 *		subtransaction of its own, so that one whose job cannot be inserted
 *		(a trigger raises, its queue's settings fail) is disabled with the
 *		error as its last_error, and the others fire.  A schedule whose
 *		spec, time zone, queue, owner or handler is unusable is disabled
 *		alone too.  Returns the number of jobs enqueued; *next_wake is when
 *		the next pass is due (DT_NOEND if never): lookahead_ms before the
 *		earliest next_run left, or at it for one already in the lookahead
 *		(left undecided, or due again soon).
 */
int
atomizer_fire_schedules(TimestampTz now, int lookahead_ms,
						TimestampTz *next_wake, bool *more)
{
	static SPIPlanPtr due_plan = NULL;
	static SPIPlanPtr wake_plan = NULL;
	AtomizerPrivState priv;
	SPITupleTable *due;
	uint64		n;
	FireBatch	batch;
	ErrorData  *edata;
	HTAB	   *checks;
	HASHCTL		ctl;
	int			fired = 0;
	bool		isnull;
	Datum		horizon = TimestampTzGetDatum(TimestampTzPlusMilliseconds(now, lookahead_ms));
	Datum		wake_args[2];
	Interval	lookahead = {.time = (int64) lookahead_ms * 1000};

	atomizer_become_owner(&priv);
	SPI_connect();
	{
		Oid			types[1] = {TIMESTAMPTZOID};
		Oid			wake_types[2] = {TIMESTAMPTZOID, INTERVALOID};

		atomizer_prepare(&due_plan,
				"SELECT s.id, s.name, s.spec, s.handler, s.queue, s.tz,"
				" s.owner::text, s.overlap, s.misfire, s.next_run, q.external,"
				" s.payload, s.priority::int4, s.max_attempts, s.timeout"
				" FROM atomizer.schedule s"
				" LEFT JOIN atomizer.queue q ON q.name = s.queue"
				" WHERE s.enabled AND s.next_run <= $1"
				" ORDER BY s.next_run LIMIT " CppAsString2(FIRE_BATCH)
				" FOR UPDATE OF s SKIP LOCKED", 1, types);
		atomizer_prepare(&wake_plan,
				"SELECT min(CASE WHEN next_run - $2 > $1 THEN next_run - $2"
				" ELSE next_run END) FROM atomizer.schedule WHERE enabled",
				2, wake_types);
	}

	if (last_pass_now != 0 && now < last_pass_now - USECS_PER_SEC)
		clock_went_back(now);
	last_pass_now = now;

	if (SPI_execute_plan(due_plan, &horizon, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not list due schedules");
	due = SPI_tuptable;
	n = SPI_processed;
	if (more)
		*more = n == FIRE_BATCH;

	/* decide each one; the usable ones fire together */
	ctl.keysize = 3 * NAMEDATALEN + 8;
	ctl.entrysize = sizeof(FireCheckEntry);
	ctl.hcxt = CurrentMemoryContext;
	checks = hash_create("atomizer fire checks", 16, &ctl,
						 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	batch.due = palloc(sizeof(DueFire) * Max(n, 1));
	batch.n = (int) n;
	batch.now = now;
	batch.fired = 0;
	batch.deferred = 0;
	for (uint64 i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		decide_fire(due->vals[i], due->tupdesc, now, checks, &batch.due[i]);
	}
	edata = atomizer_try(fire_batch, &batch);
	if (edata == NULL)
		fired = batch.fired;
	else
	{
		ereport(DEBUG1,
				(errmsg_internal("atomizer: a batch of %d schedules could not fire together, firing each alone: %s",
								 batch.n, edata->message)));
		FreeErrorData(edata);
	}

	/*
	 * A full batch with schedules left undecided (busy, ahead of their
	 * fire time) would be read again at once, and again, until that time:
	 * the next pass is at the wake time below instead, their fire time.
	 */
	if (more && batch.deferred > 0)
		*more = false;
	for (uint64 i = 0; i < n; i++)
	{
		if (edata == NULL && !batch.due[i].alone)
			continue;
		CHECK_FOR_INTERRUPTS();
		fired += fire_alone(due->vals[i], due->tupdesc, now);
	}

	*next_wake = DT_NOEND;
	wake_args[0] = TimestampTzGetDatum(now);
	wake_args[1] = IntervalPGetDatum(&lookahead);
	if (SPI_execute_plan(wake_plan, wake_args, NULL, true, 0) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		Datum		w = SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			*next_wake = DatumGetTimestampTz(w);
	}
	SPI_finish();
	atomizer_restore_caller(&priv);
	return fired;
}

/*
 * atomizer._tick(now timestamptz) RETURNS integer
 *		One firing pass with the caller's clock.
 */
Datum
atomizer_tick(PG_FUNCTION_ARGS)
{
	TimestampTz next_wake;
	int64		lookahead_ms = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("now must not be null")));
	/* 0.1.0's objects have no lookahead argument */
	if (PG_NARGS() > 1)
	{
		Interval   *ahead;

		if (PG_ARGISNULL(1))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("lookahead must not be null")));
		ahead = PG_GETARG_INTERVAL_P(1);
		lookahead_ms = atomizer_interval_ms(ahead);
		if (ahead->month != 0 || ahead->day != 0 || lookahead_ms < 0 ||
			lookahead_ms > 60 * 1000)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lookahead must be between 0 and 1 minute")));
	}
	PG_RETURN_INT32(atomizer_fire_schedules(PG_GETARG_TIMESTAMPTZ(0), (int) lookahead_ms,
											&next_wake, NULL));
}
