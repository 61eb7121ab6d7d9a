/*-------------------------------------------------------------------------
 *
 * external.c
 *	  The external workers' side of the protocol: claim, heartbeat,
 *	  complete, complete_many, fail and release, for jobs of queues created
 *	  with external => true; and the scheduler's part: expiring leases and
 *	  notifying listeners on atomizer_<queue>.
 *
 *	  A claim marks jobs running with a lease (lease_until) and counts the
 *	  attempt.  Every later call names the job and, preferably, the attempt
 *	  it claimed; acting on a job that is not running under that attempt's
 *	  live lease (it finished, its lease expired, or it was claimed again)
 *	  is an ERROR with SQLSTATE 55000, never a silent double completion.
 *	  A lease that expires is a failed attempt ("lease expired"), retried
 *	  with backoff or dead after max_attempts, like any failure.
 *
 *	  A queue's lifecycle hooks (hooks.c) run here too: before_run for each
 *	  job claim() claims (a job whose before_run fails is not handed out:
 *	  its attempt failed), on_success in complete() before the job is
 *	  finished (its failure fails the attempt instead), on_failure and
 *	  on_dead where fail() and lease expiry record the failure.
 *
 *	  Members of atomizer_worker (and atomizer_admin, and superusers) may
 *	  call these functions; they need no privilege on atomizer's tables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_claim);
PG_FUNCTION_INFO_V1(atomizer_complete);
PG_FUNCTION_INFO_V1(atomizer_complete_many);
PG_FUNCTION_INFO_V1(atomizer_fail);
PG_FUNCTION_INFO_V1(atomizer_heartbeat);
PG_FUNCTION_INFO_V1(atomizer_release);
PG_FUNCTION_INFO_V1(atomizer_snooze_job);

static int	complete_jobs(int n, int64 *ids, Datum *results, bool *results_null,
						  int32 *attempts, bool *attempts_null);
static int	completions_arg(FunctionCallInfo fcinfo, int ids_arg,
							const char *ids_name, int64 **ids, Datum **results,
							bool **results_null, int32 **attempts,
							bool **attempts_null);

#define ATOMIZER_WORKER_ROLE	"atomizer_worker"
#define CLAIM_MAX				1000
#define DEFAULT_LEASE_MS		(5 * 60 * 1000)

/*
 * check_worker_role
 *		ERROR unless the caller may act as an external worker.
 */
static void
check_worker_role(void)
{
	Oid			caller = GetUserId();
	Oid			worker_role = get_role_oid(ATOMIZER_WORKER_ROLE, true);

	if (atomizer_is_admin(caller))
		return;
	if (OidIsValid(worker_role) && has_privs_of_role(caller, worker_role))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to act as an external worker"),
			 errdetail("Only members of atomizer_worker (or atomizer_admin) may claim and finish jobs of external queues, and role %s is not one.",
					   quote_identifier(atomizer_role_name(caller))),
			 errhint("Ask for atomizer_worker: GRANT atomizer_worker TO %s;",
					 quote_identifier(atomizer_role_name(caller)))));
}

/*
 * lease_ms_arg
 *		A lease argument in ms; NULL gives the default; ERROR unless positive.
 */
static int64
lease_ms_arg(FunctionCallInfo fcinfo, int argno, int64 dflt)
{
	int64		ms;

	if (PG_ARGISNULL(argno))
		return dflt;
	atomizer_check_interval(PG_GETARG_INTERVAL_P(argno), "lease", false,
							ATOMIZER_MAX_DELAY_MS);
	ms = atomizer_interval_ms(PG_GETARG_INTERVAL_P(argno));
	return ms;
}

/*
 * before_run
 *		A claimed job's before_run hook (hooks.c), in a subtransaction of
 *		the claim's transaction, as the job's owner.  Its error fails the
 *		attempt (retried with backoff, or dead, and on_failure or on_dead
 *		run): false, and the job is not handed out.
 */
static bool
before_run(AtomizerJob *job, const char *hook)
{
	ErrorData  *edata = atomizer_hook_run(ATOMIZER_HOOK_BEFORE_RUN, hook, job,
										  (Datum) 0, false, NULL);
	AtomizerOutcome outcome;

	if (edata == NULL)
		return true;
	atomizer_outcome_from_error(&outcome, edata);
	atomizer_record_outcome(job, &outcome, NULL);
	atomizer_note_external(job->queue);
	return false;
}

/*
 * atomizer.claim(queue, max_jobs, lease, worker, completed, results,
 *				  completed_attempts)
 *		RETURNS TABLE (id, handler, payload, attempt, lease_until)
 *		With completed (0.2.0), first completes those jobs, as
 *		complete_many(completed, results, completed_attempts) does.
 */
Datum
atomizer_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AtomizerQueue queue;
	char	   *queue_name;
	int32		max_jobs;
	int64		lease_ms;
	char	   *worker;
	AtomizerClaimSpec spec = {0};
	AtomizerJob *jobs;
	int			n;
	AtomizerClaimKey floor;
	AtomizerClaimKey new_floor;
	uint64		floor_gen;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("queue must not be null")));
	queue_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	max_jobs = PG_ARGISNULL(1) ? 1 : PG_GETARG_INT32(1);
	if (max_jobs < 1 || max_jobs > CLAIM_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_jobs must be between 1 and %d", CLAIM_MAX)));
	lease_ms = lease_ms_arg(fcinfo, 2, DEFAULT_LEASE_MS);
	if (PG_ARGISNULL(3))
		worker = psprintf("external:%d", MyProcPid);
	else
	{
		worker = text_to_cstring(PG_GETARG_TEXT_PP(3));
		if (atomizer_worker_id_reserved(worker))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("worker names starting with \"%s\" are reserved",
							ATOMIZER_WORKER_ID_PREFIX)));
	}
	atomizer_require_queue(queue_name, &queue);
	if (!queue.external)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("queue \"%s\" is not external", queue_name),
				 errhint("Its jobs are run by atomizer's own workers; create external queues with atomizer.create_queue(name, external => true).")));

	/*
	 * completed => (0.2.0): finish the jobs a worker has done first, in this
	 * transaction, so that a worker reports a batch and claims the next one
	 * in one round trip and one commit.
	 */
	if (PG_NARGS() > 4)
	{
		int64	   *ids;
		Datum	   *results;
		bool	   *results_null;
		int32	   *attempts;
		bool	   *attempts_null;
		int			ndone;

		ndone = completions_arg(fcinfo, 4, "completed", &ids, &results,
								&results_null, &attempts, &attempts_null);
		(void) complete_jobs(ndone, ids, results, results_null, attempts,
							 attempts_null);
	}

	InitMaterializedSRF(fcinfo, 0);

	/*
	 * Start at the queue's claim floor (floor.c), read before the claim's
	 * snapshot.  Only a READ COMMITTED claim, whose statement takes its
	 * snapshot after that read, may raise the floor (at commit); an older
	 * snapshot may not see jobs committed since.
	 */
	floor_gen = atomizer_floor_get(MyDatabaseId, queue_name, &floor);
	spec.queue = queue_name;
	spec.max_jobs = max_jobs;
	spec.worker_name = worker;
	spec.lease_ms = lease_ms;
	spec.floor = &floor;
	spec.new_floor = &new_floor;
	n = atomizer_store_claim(&spec, &jobs);
	/* nothing above the floor: now and then, look from the front */
	if (n == 0 && atomizer_floor_recheck(MyDatabaseId, queue_name))
	{
		TimestampTz started = GetCurrentTimestamp();

		floor = atomizer_key_min;
		n = atomizer_store_claim(&spec, &jobs);
		atomizer_floor_rechecked(MyDatabaseId, queue_name, started);
	}
	for (int i = 0; i < n; i++)
	{
		Datum		row[5];
		bool		nulls[5] = {false, false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		if (queue.hooks[ATOMIZER_HOOK_BEFORE_RUN] != NULL &&
			!before_run(&jobs[i], queue.hooks[ATOMIZER_HOOK_BEFORE_RUN]))
			continue;			/* its attempt failed: not handed out */
		row[0] = Int64GetDatum(jobs[i].id);
		row[1] = CStringGetTextDatum(jobs[i].handler);
		row[2] = jobs[i].payload;
		row[3] = Int32GetDatum(jobs[i].attempt);
		row[4] = TimestampTzGetDatum(jobs[i].lease_until);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
		atomizer_note_deadline(jobs[i].lease_until);
	}
	if (n > 0 && XactIsoLevel == XACT_READ_COMMITTED)
		atomizer_note_floor_advance(queue_name, floor_gen, &new_floor);
	return (Datum) 0;
}

/*
 * complete_one
 *		Finish a leased job as succeeded, after its queue's on_success hook
 *		(hooks.c), run in a subtransaction as the job's owner.  If the hook
 *		fails, the attempt fails with its error instead (retried or dead,
 *		on_failure or on_dead run), with a WARNING: false.
 */
static bool
complete_one(int64 job_id, bool attempt_given, int attempt, Datum result,
			 bool result_null)
{
	AtomizerJob job;
	AtomizerQueue queue;

	atomizer_store_lock_leased(job_id, attempt_given, attempt, &job);
	if (atomizer_lookup_queue(job.queue, &queue) &&
		queue.hooks[ATOMIZER_HOOK_ON_SUCCESS] != NULL)
	{
		const char *hook = queue.hooks[ATOMIZER_HOOK_ON_SUCCESS];
		ErrorData  *edata = atomizer_hook_run(ATOMIZER_HOOK_ON_SUCCESS, hook,
											  &job, result, !result_null, NULL);

		if (edata != NULL)
		{
			AtomizerOutcome outcome;

			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("job " INT64_FORMAT " did not complete: its on_success hook %s failed: %s",
							job_id, hook, edata->message),
					 errdetail("The attempt is recorded as failed with the hook's error, and the job is retried or dead as for any failure."),
					 edata->context ? errcontext_msg("%s", edata->context) : 0));
			atomizer_outcome_from_error(&outcome, edata);
			atomizer_record_outcome(&job, &outcome, NULL);
			atomizer_note_external(job.queue);
			return false;
		}
	}
	(void) atomizer_finish_job(job_id, "succeeded", result, result_null, NULL);
	return true;
}

/*
 * atomizer.complete(job_id bigint, result jsonb, attempt int) RETURNS void
 */
Datum
atomizer_complete(PG_FUNCTION_ARGS)
{
	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	(void) complete_one(PG_GETARG_INT64(0), !PG_ARGISNULL(2),
						PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2),
						PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1),
						PG_ARGISNULL(1));
	PG_RETURN_VOID();
}

/* qsort comparator of int64 */
static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * complete_jobs
 *		Complete n leased jobs, all or nothing, with their results
 *		(results NULL: none) and attempts (attempts NULL: not checked);
 *		the number completed, less those whose on_success hook failed.
 *
 *		The common case costs two statements for the whole batch: one locks
 *		and checks every job (jobstore.c), one moves them to the history.
 *		Jobs of a queue with an on_success hook, a repeated id, or any job
 *		not under its live lease take the path of complete(), job by job:
 *		it runs the hooks, and raises the exact error of the first job that
 *		is wrong (which rolls back the whole call).
 */
static int
complete_jobs(int n, int64 *ids, Datum *results, bool *results_null,
			  int32 *attempts, bool *attempts_null)
{
	int64	   *sorted;
	bool		one_by_one = false;
	int			completed = 0;

	if (n == 0)
		return 0;
	sorted = palloc(sizeof(int64) * n);
	memcpy(sorted, ids, sizeof(int64) * n);
	qsort(sorted, n, sizeof(int64), compare_int64);
	for (int i = 1; i < n && !one_by_one; i++)
		if (sorted[i] == sorted[i - 1])
			one_by_one = true;
	if (!one_by_one)
	{
		char	  **queues;
		int			nqueues;

		if (!atomizer_store_lock_leased_many(ids, attempts, attempts_null, n,
											 &queues, &nqueues))
			one_by_one = true;
		for (int q = 0; q < nqueues && !one_by_one; q++)
		{
			AtomizerQueue queue;

			if (atomizer_lookup_queue(queues[q], &queue) &&
				queue.hooks[ATOMIZER_HOOK_ON_SUCCESS] != NULL)
				one_by_one = true;
		}
	}
	if (!one_by_one)
	{
		bool	   *nulls = results_null;

		if (results == NULL)
		{
			results = palloc0(sizeof(Datum) * n);
			nulls = palloc(sizeof(bool) * n);
			memset(nulls, true, sizeof(bool) * n);
		}
		atomizer_finish_succeeded(ids, results, nulls, n);
		return n;
	}
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (complete_one(ids[i], attempts != NULL && !attempts_null[i],
						 attempts != NULL ? attempts[i] : 0,
						 results != NULL ? results[i] : (Datum) 0,
						 results == NULL || results_null[i]))
			completed++;
	}
	return completed;
}

/*
 * completions_arg
 *		Read the arguments (job_ids bigint[], results jsonb[], attempts
 *		int[]) at argument numbers ids_arg, ids_arg + 1, ids_arg + 2 (each
 *		may be absent, for 0.1.0's signatures, or NULL): the number of jobs,
 *		and the arrays complete_jobs() takes.  ERROR on nulls among the ids
 *		or arrays of different lengths.
 */
static int
completions_arg(FunctionCallInfo fcinfo, int ids_arg, const char *ids_name,
				int64 **ids, Datum **results, bool **results_null,
				int32 **attempts, bool **attempts_null)
{
	Datum	   *datums;
	bool	   *nulls;
	int			n;
	int			nres;
	int			natt;

	*ids = NULL;
	*results = NULL;
	*results_null = NULL;
	*attempts = NULL;
	*attempts_null = NULL;
	if (PG_ARGISNULL(ids_arg))
		return 0;
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(ids_arg), INT8OID, 8, FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &datums, &nulls, &n);
	*ids = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", ids_name)));
		(*ids)[i] = DatumGetInt64(datums[i]);
	}
	if (PG_NARGS() > ids_arg + 1 && !PG_ARGISNULL(ids_arg + 1))
	{
		deconstruct_array(PG_GETARG_ARRAYTYPE_P(ids_arg + 1), JSONBOID, -1, false,
						  TYPALIGN_INT, results, results_null, &nres);
		if (nres != n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("results must have one element per job"),
					 errdetail("%d jobs were given, and %d results.", n, nres),
					 errhint("Pass NULL as the result of a job that has none.")));
	}
	if (PG_NARGS() > ids_arg + 2 && !PG_ARGISNULL(ids_arg + 2))
	{
		Datum	   *att;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(ids_arg + 2), INT4OID, 4, true,
						  TYPALIGN_INT, &att, attempts_null, &natt);
		if (natt != n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("attempts must have one element per job"),
					 errdetail("%d jobs were given, and %d attempts.", n, natt),
					 errhint("Pass the attempts claim() returned, in the order of the jobs, or NULL for one not to check.")));
		*attempts = palloc(sizeof(int32) * Max(n, 1));
		for (int i = 0; i < n; i++)
			(*attempts)[i] = (*attempts_null)[i] ? 0 : DatumGetInt32(att[i]);
	}
	return n;
}

/*
 * atomizer.complete_many(job_ids bigint[], results jsonb[], attempts int[])
 *		RETURNS integer
 *		All or nothing: one job not under a live lease (of its attempt, if
 *		given) fails the call.  Returns the number of jobs completed: all of
 *		them, less those whose on_success hook failed (their attempts
 *		failed instead).
 */
Datum
atomizer_complete_many(PG_FUNCTION_ARGS)
{
	int64	   *ids;
	Datum	   *results;
	bool	   *results_null;
	int32	   *attempts;
	bool	   *attempts_null;
	int			n;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_ids must not be null")));
	n = completions_arg(fcinfo, 0, "job_ids", &ids, &results, &results_null,
						&attempts, &attempts_null);
	PG_RETURN_INT32(complete_jobs(n, ids, results, results_null, attempts,
								  attempts_null));
}

/*
 * atomizer.fail(job_id bigint, error text, retry_in interval, attempt int)
 *		RETURNS void
 */
Datum
atomizer_fail(PG_FUNCTION_ARGS)
{
	AtomizerJob job;
	AtomizerOutcome outcome;
	Interval   *retry_in = NULL;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	if (!PG_ARGISNULL(2))
	{
		retry_in = PG_GETARG_INTERVAL_P(2);
		atomizer_check_interval(retry_in, "retry_in", true,
								ATOMIZER_MAX_DELAY_MS);
	}

	memset(&outcome, 0, sizeof(outcome));
	outcome.message = PG_ARGISNULL(1) ? pstrdup("failed (no error given)") :
		text_to_cstring(PG_GETARG_TEXT_PP(1));

	atomizer_store_lock_leased(PG_GETARG_INT64(0), !PG_ARGISNULL(3),
							   PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3), &job);
	/* retry => false (0.2.0): this failure is final */
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4) && !PG_GETARG_BOOL(4))
		job.max_attempts = job.attempt;
	atomizer_record_outcome(&job, &outcome, retry_in);
	atomizer_note_external(job.queue);
	PG_RETURN_VOID();
}

/*
 * atomizer.heartbeat(job_id bigint, lease interval, attempt int)
 *		RETURNS timestamptz
 *		Extend the lease by "lease" (NULL: the claim's lease) from now.
 */
Datum
atomizer_heartbeat(PG_FUNCTION_ARGS)
{
	AtomizerJob job;
	Interval   *lease = NULL;
	TimestampTz until;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	if (!PG_ARGISNULL(1))
	{
		lease = palloc0(sizeof(Interval));
		lease->time = lease_ms_arg(fcinfo, 1, DEFAULT_LEASE_MS) * 1000;
	}

	atomizer_store_lock_leased(PG_GETARG_INT64(0), !PG_ARGISNULL(2),
							   PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2), &job);
	until = atomizer_store_extend_lease(job.id, lease);
	atomizer_note_deadline(until);
	PG_RETURN_TIMESTAMPTZ(until);
}

/*
 * atomizer.release(job_id bigint, attempt int) RETURNS void
 *		Give a leased job back, available now, its attempt not counted.
 */
Datum
atomizer_release(PG_FUNCTION_ARGS)
{
	AtomizerJob job;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	atomizer_store_lock_leased(PG_GETARG_INT64(0), !PG_ARGISNULL(1),
							   PG_ARGISNULL(1) ? 0 : PG_GETARG_INT32(1), &job);
	atomizer_release_job(job.id, false);
	atomizer_note_external(job.queue);
	PG_RETURN_VOID();
}

/*
 * atomizer.snooze(job_id bigint, delay interval, attempt int) RETURNS
 *		timestamptz
 *		An external worker puts a leased job off: available again after
 *		delay, this attempt not counted.  Returns when it is due.
 */
Datum
atomizer_snooze_job(PG_FUNCTION_ARGS)
{
	AtomizerJob job;
	int64		delay_ms;
	TimestampTz when;

	check_worker_role();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("job_id must not be null")));
	delay_ms = atomizer_delay_arg(fcinfo, 1);
	atomizer_store_lock_leased(PG_GETARG_INT64(0), !PG_ARGISNULL(2),
							   PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2), &job);
	when = atomizer_store_snooze(job.id, delay_ms);
	atomizer_note_external(job.queue);
	PG_RETURN_TIMESTAMPTZ(when);
}

/*
 * atomizer_expire_leases
 *		Scheduler: fail the running jobs of external workers whose lease has
 *		passed (a job whose failure cannot be written is set aside).
 *		Returns the earliest lease end left (DT_NOEND if none).
 */
TimestampTz
atomizer_expire_leases(void)
{
	AtomizerJob *jobs;
	char	  **reasons;
	TimestampTz next;
	int			n = atomizer_store_expired_leases(&jobs, &reasons, &next);

	for (int i = 0; i < n; i++)
	{
		AtomizerOutcome outcome;

		memset(&outcome, 0, sizeof(outcome));
		outcome.message = reasons[i];
		(void) atomizer_record_or_set_aside(&jobs[i], &outcome, false, "lease expiry");
		atomizer_note_external(jobs[i].queue);
	}
	return next;
}

/*
 * atomizer_notify_queue
 *		NOTIFY atomizer_<queue>, payload the queue name; delivered when the
 *		current transaction commits.  Queue names are checked identifiers,
 *		so the channel name needs no quoting.
 */
void
atomizer_notify_queue(const char *queue)
{
	char		channel[NAMEDATALEN];

	atomizer_check_queue_name(queue);
	snprintf(channel, sizeof(channel), "atomizer_%s", queue);
	Async_Notify(channel, queue);
}
