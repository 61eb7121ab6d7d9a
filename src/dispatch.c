/*-------------------------------------------------------------------------
 *
 * dispatch.c
 *	  Running claimed jobs' handlers and deciding what their outcomes mean:
 *	  the steps every runner of internal jobs shares after the job store's
 *	  claim (jobstore.c), and atomizer.run_pending(), the in-session runner
 *	  built from them.
 *
 *	  atomizer_run_job runs one handler in its own subtransaction, as the
 *	  role that enqueued the job, inside a security-restricted operation (so
 *	  the handler cannot SET ROLE, RESET ROLE or SET SESSION AUTHORIZATION
 *	  its way to the runner's identity, nor leave temporary objects behind
 *	  for the next job), with every setting it changes rolled back, and with
 *	  the job's timeout.  Any error is caught and copied into the outcome.
 *
 *	  atomizer_record_outcome has the job store write the outcome in the
 *	  current transaction: success moves the job to the history with its
 *	  result; failure records the error and either schedules the next
 *	  attempt with exponential backoff and jitter or, after max_attempts,
 *	  moves the job to the history as dead.  Because a handler's
 *	  subtransaction and its outcome are in the same transaction, they
 *	  commit together.  atomizer_record_or_set_aside is the scheduler's
 *	  variant that sets aside a job whose outcome cannot be written.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_run_pending);
PG_FUNCTION_INFO_V1(atomizer_current_job);
PG_FUNCTION_INFO_V1(atomizer_snooze);
PG_FUNCTION_INFO_V1(atomizer_discard);

/* Timeout of the job running now, registered once per backend. */
static TimeoutId job_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t job_timed_out = false;

/* Guards against run_pending() being called from a handler. */
static bool running_jobs = false;

/*
 * The job whose handler runs now, for current_job(), snooze() and
 * discard(), and what the handler asked for.
 */
static AtomizerJob *running_job = NULL;
static bool snooze_requested = false;
static int64 snooze_ms = 0;
static bool discard_requested = false;
static char discard_reason[1024];

/* SQLSTATEs with which snooze() and discard() end a handler */
#define ERRCODE_ATOMIZER_SNOOZE		MAKE_SQLSTATE('A','Z','0','0','1')
#define ERRCODE_ATOMIZER_DISCARD	MAKE_SQLSTATE('A','Z','0','0','2')

/*
 * Shutdown of a worker (worker.c sets these): a handler still running at
 * the deadline is cancelled, and its job released.
 */
bool		atomizer_in_worker = false;
volatile sig_atomic_t atomizer_shutdown_pending = false;
volatile TimestampTz atomizer_shutdown_deadline = 0;
static TimeoutId shutdown_poll_id = MAX_TIMEOUTS;
static volatile sig_atomic_t shutdown_cancelled = false;

/* This worker's slot (worker.c sets it), and a cancel() of the running job. */
int			atomizer_worker_slot = -1;
static volatile sig_atomic_t job_cancel_requested = false;

/*
 * shutdown_poll_handler
 *		SIGALRM-time, every 100 ms while a worker runs a handler: past the
 *		shutdown deadline, or when cancel() asked for the running job, cancel
 *		the handler.
 */
static void
shutdown_poll_handler(void)
{
	if (atomizer_shutdown_pending &&
		GetCurrentTimestamp() >= atomizer_shutdown_deadline)
	{
		shutdown_cancelled = true;
		QueryCancelPending = true;
		InterruptPending = true;
		SetLatch(MyLatch);
	}
	/* cancel() of the running job (wakeup.c sets the slot at its commit) */
	if (atomizer_worker_slot >= 0 && running_job != NULL &&
		atomizer_shared->workers[atomizer_worker_slot].cancel_job_id == running_job->id)
	{
		job_cancel_requested = true;
		QueryCancelPending = true;
		InterruptPending = true;
		SetLatch(MyLatch);
	}
}

/*
 * job_timeout_handler
 *		SIGALRM-time: the job's timeout expired; cancel what it is doing.
 */
static void
job_timeout_handler(void)
{
	job_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * call_handler
 *		Look the handler up again, check the owner may still execute it, and
 *		call it.  Runs inside the job's subtransaction, as the job's owner.
 */
static void
call_handler(AtomizerJob *job, Oid roleid, AtomizerOutcome *outcome)
{
	Oid			fnoid = atomizer_lookup_handler(job->handler, roleid);
	Oid			rettype = get_func_rettype(fnoid);
	Datum		result;
	bool		isnull;

	/* simple SQL handlers keep their plan from job to job (sqlfunc.c) */
	if (!atomizer_call_sql_handler(fnoid, job->payload, &result, &isnull))
	{
		FmgrInfo	flinfo;
		LOCAL_FCINFO(fcinfo, 1);

		fmgr_info(fnoid, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = job->payload;
		fcinfo->args[0].isnull = false;
		result = FunctionCallInvoke(fcinfo);
		isnull = fcinfo->isnull;
	}

	if (!isnull && rettype == JSONBOID)
	{
		outcome->result = datumCopy(result, false, -1);
		outcome->has_result = true;
	}
	else if (!isnull && rettype == JSONOID)
	{
		char	   *json = TextDatumGetCString(result);

		outcome->result = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
		outcome->has_result = true;
	}
}

/*
 * release_session_state
 *		Give up what a handler can leave on a worker's session beyond its
 *		subtransaction: session-level advisory locks (pg_advisory_lock), which
 *		neither commit nor abort releases, and which the next job, perhaps of
 *		another role, would otherwise run holding.  The rest of a session's
 *		state is out of a handler's reach: settings are rolled back, and the
 *		security-restricted operation refuses PREPARE, LISTEN, cursors WITH
 *		HOLD, DISCARD and temporary tables.  Only in workers: a session that
 *		calls run_pending() may hold advisory locks of its own.
 */
static void
release_session_state(void)
{
	if (atomizer_in_worker)
		LockReleaseSession(USER_LOCKMETHOD);
}

/*
 * handler_requests
 *		What the handler asked for by snooze() or discard() decides its
 *		outcome, whether it then ended with their error or caught it.
 */
static void
handler_requests(AtomizerOutcome *outcome)
{
	if (snooze_requested)
	{
		memset(outcome, 0, sizeof(AtomizerOutcome));
		outcome->snoozed = true;
		outcome->snooze_ms = snooze_ms;
	}
	else if (discard_requested)
	{
		memset(outcome, 0, sizeof(AtomizerOutcome));
		outcome->discarded = true;
		strlcpy(outcome->sqlstate, unpack_sql_state(ERRCODE_ATOMIZER_DISCARD),
				sizeof(outcome->sqlstate));
		outcome->message = psprintf("discarded: %s", discard_reason);
	}
	snooze_requested = false;
	discard_requested = false;
}

/*
 * atomizer_run_job
 *		Run one claimed job's handler and fill *outcome.  Never throws for an
 *		error of the handler; the current transaction stays usable.
 */
void
atomizer_run_job(AtomizerJob *job, AtomizerOutcome *outcome)
{
	MemoryContext job_cxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;

	memset(outcome, 0, sizeof(AtomizerOutcome));

	if (job_timeout_id == MAX_TIMEOUTS)
		job_timeout_id = RegisterTimeout(USER_TIMEOUT, job_timeout_handler);
	if (atomizer_in_worker && shutdown_poll_id == MAX_TIMEOUTS)
		shutdown_poll_id = RegisterTimeout(USER_TIMEOUT, shutdown_poll_handler);
	job_timed_out = false;
	shutdown_cancelled = false;
	job_cancel_requested = false;
	snooze_requested = false;
	discard_requested = false;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(job_cxt);

	PG_TRY();
	{
		Oid			roleid = get_role_oid(job->owner, true);
		int			nestlevel;
		AtomizerQueue queue;
		char	   *before_run = NULL;
		char	   *on_success = NULL;

		/* the queue's hooks (hooks.c): from the per-backend queue cache */
		if (atomizer_lookup_queue(job->queue, &queue))
		{
			before_run = queue.hooks[ATOMIZER_HOOK_BEFORE_RUN];
			on_success = queue.hooks[ATOMIZER_HOOK_ON_SUCCESS];
		}

		if (!OidIsValid(roleid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("role \"%s\" that enqueued the job does not exist",
							job->owner)));

		SetUserIdAndSecContext(roleid,
							   save_sec_context |
							   SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		nestlevel = NewGUCNestLevel();

		if (job->timeout_ms > 0)
			enable_timeout_after(job_timeout_id,
								 (int) Min(job->timeout_ms, INT_MAX));
		if (atomizer_in_worker)
			enable_timeout_every(shutdown_poll_id,
								 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 100),
								 100);

		/*
		 * before_run, the handler and on_success are one attempt: one
		 * subtransaction, one timeout, and current_job(), snooze() and
		 * discard() work in all three.
		 */
		running_job = job;
		if (before_run != NULL)
			atomizer_hook_call(ATOMIZER_HOOK_BEFORE_RUN, before_run, job,
							   (Datum) 0, false, NULL);
		call_handler(job, roleid, outcome);
		if (on_success != NULL)
			atomizer_hook_call(ATOMIZER_HOOK_ON_SUCCESS, on_success, job,
							   outcome->result, outcome->has_result, NULL);
		running_job = NULL;

		if (job->timeout_ms > 0)
			disable_timeout(job_timeout_id, false);
		if (atomizer_in_worker)
			disable_timeout(shutdown_poll_id, false);
		/* The handler finished first: a cancel we raised is not pending. */
		if (job_timed_out || shutdown_cancelled || job_cancel_requested)
		{
			QueryCancelPending = false;
			job_timed_out = false;
			shutdown_cancelled = false;
			job_cancel_requested = false;
		}

		/* Discard every setting the handler changed, SET or SET LOCAL. */
		AtEOXact_GUC(false, nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec_context);

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
		release_session_state();
		outcome->ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		running_job = NULL;
		if (job->timeout_ms > 0)
			disable_timeout(job_timeout_id, false);
		if (atomizer_in_worker)
			disable_timeout(shutdown_poll_id, false);

		MemoryContextSwitchTo(job_cxt);
		edata = CopyErrorData();
		FlushErrorState();

		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(job_cxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec_context);
		release_session_state();

		outcome->ok = false;
		outcome->has_result = false;
		if (shutdown_cancelled && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			/* not the job's fault: release it, attempt not counted */
			outcome->released = true;
			outcome->message = pstrdup("worker was stopped while running the job");
		}
		else if (job_cancel_requested && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			/* atomizer.cancel() while it ran: it ends cancelled */
			outcome->cancelled = true;
			outcome->message = pstrdup("cancelled while running");
		}
		else if (job_timed_out && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			outcome->timed_out = true;
			outcome->message = psprintf("job exceeded its timeout of " INT64_FORMAT " ms",
										job->timeout_ms);
			outcome->detail = NULL;
		}
		else
		{
			outcome->message = edata->message ? pstrdup(edata->message) : pstrdup("unknown error");
			outcome->detail = edata->detail;
		}
		strlcpy(outcome->sqlstate, unpack_sql_state(edata->sqlerrcode),
				sizeof(outcome->sqlstate));
		outcome->hint = edata->hint;
		outcome->context = edata->context;
		job_timed_out = false;
		shutdown_cancelled = false;
		job_cancel_requested = false;
	}
	PG_END_TRY();
	handler_requests(outcome);
}

/*
 * atomizer_record_outcome
 *		Write a job's outcome in the current transaction.  retry_in, if not
 *		NULL, replaces the queue's backoff for the next attempt.
 */
void
atomizer_record_outcome(AtomizerJob *job, AtomizerOutcome *outcome,
						const Interval *retry_in)
{
	if (outcome->cancelled)
		(void) atomizer_finish_job(job->id, "cancelled", (Datum) 0, true,
								   outcome->message);
	else if (outcome->snoozed)
		(void) atomizer_store_snooze(job->id, outcome->snooze_ms);
	else if (outcome->discarded)
	{
		AtomizerJob last = *job;

		last.max_attempts = last.attempt;	/* no attempt after this one */
		atomizer_store_fail_attempt(&last, outcome, NULL);
		atomizer_hooks_after_failure(&last, outcome, true);
	}
	else if (outcome->ok)
		(void) atomizer_finish_job(job->id, "succeeded", outcome->result,
								   !outcome->has_result, NULL);
	else if (outcome->released)
		atomizer_release_job(job->id, false);
	else
	{
		atomizer_store_fail_attempt(job, outcome, retry_in);
		/* on_failure or on_dead, after the failure is written (hooks.c) */
		atomizer_hooks_after_failure(job, outcome,
									 job->attempt >= job->max_attempts);
	}
}

typedef struct RecordArgs
{
	AtomizerJob *job;
	AtomizerOutcome *outcome;
	bool		release_solo;
} RecordArgs;

static void
record_cb(void *arg)
{
	RecordArgs *a = (RecordArgs *) arg;

	if (a->release_solo)
		atomizer_release_job(a->job->id, true);
	else
		atomizer_record_outcome(a->job, a->outcome, NULL);
}

static void
set_aside_cb(void *arg)
{
	RecordArgs *a = (RecordArgs *) arg;

	if (!atomizer_finish_job(a->job->id, "dead", (Datum) 0, true,
							 a->outcome->message))
		elog(ERROR, "job " INT64_FORMAT " is gone", a->job->id);
	atomizer_hooks_after_failure(a->job, a->outcome, true);
}

/*
 * atomizer_record_or_set_aside
 *		For the scheduler's duties: record a job's outcome (or, with
 *		release_solo, put it back to run alone) in a subtransaction.  If
 *		that fails (a trigger raises, a setting cannot be applied), the job
 *		is set aside instead: dead, its last error saying what could not be
 *		written and why, and a LOG line naming the duty, so that the row is
 *		not tried again at every pass.  If even that fails, the error is
 *		thrown: the duty as a whole fails and is retried with backoff.
 *		Returns false when the job was set aside.
 */
bool
atomizer_record_or_set_aside(AtomizerJob *job, AtomizerOutcome *outcome,
							 bool release_solo, const char *duty)
{
	RecordArgs	args = {job, outcome, release_solo};
	AtomizerOutcome dead;
	ErrorData  *edata;
	ErrorData  *again;

	edata = atomizer_try(record_cb, &args);
	if (edata == NULL)
		return true;

	memset(&dead, 0, sizeof(dead));
	dead.message = psprintf("set aside by the scheduler's %s: %s%s%s",
							duty, edata->message,
							outcome && outcome->message ? "; while recording: " : "",
							outcome && outcome->message ? outcome->message : "");
	args.outcome = &dead;
	again = atomizer_try(set_aside_cb, &args);
	if (again != NULL)
		ReThrowError(again);
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("atomizer: job " INT64_FORMAT " of queue \"%s\" set aside as dead: its outcome could not be recorded: %s",
					job->id, job->queue ? job->queue : "?", edata->message),
			 edata->context ? errcontext_msg("%s", edata->context) : 0,
			 errhint("The job's last_error in atomizer.dead_jobs has the reason; atomizer.retry(" INT64_FORMAT ") runs it again once the cause is fixed.",
					 job->id)));
	FreeErrorData(edata);
	return false;
}

/*
 * run_queue
 *		Claim and run up to max_jobs (-1: no limit) due jobs of one queue in
 *		batches of atomizer.batch_size.  Returns the number of jobs run.
 */
static int
run_queue(const char *queue, int max_jobs, const char *owner_filter)
{
	MemoryContext batch_cxt;
	MemoryContext old;
	int			total = 0;

	batch_cxt = AllocSetContextCreate(CurrentMemoryContext,
									  "atomizer batch",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		AtomizerJob *jobs;
		int			want = atomizer_batch_size;
		int			n;

		if (max_jobs >= 0)
			want = Min(want, max_jobs - total);
		if (want <= 0)
			break;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(batch_cxt);
		{
			AtomizerClaimSpec spec = {0};

			spec.queue = queue;
			spec.max_jobs = want;
			spec.owner_filter = owner_filter;
			n = atomizer_store_claim(&spec, &jobs);
		}
		for (int i = 0; i < n; i++)
		{
			AtomizerOutcome outcome;

			CHECK_FOR_INTERRUPTS();
			pgstat_report_activity(STATE_RUNNING, psprintf("atomizer job " INT64_FORMAT ": %s", jobs[i].id, jobs[i].handler));
			atomizer_run_job(&jobs[i], &outcome);
			atomizer_record_outcome(&jobs[i], &outcome, NULL);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		total += n;
		if (n < want)
			break;
	}
	MemoryContextDelete(batch_cxt);
	return total;
}

/*
 * atomizer.run_pending(queue text, max_jobs int) RETURNS int
 *		Run due jobs of one queue (or of every internal queue that is not
 *		paused) now, in this session and transaction.  A non-admin runs only
 *		the jobs it enqueued: other roles' handlers must never run with this
 *		session's settings.  Returns the number of jobs run.
 */
Datum
atomizer_run_pending(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	char	   *owner_filter = NULL;
	int			max_jobs = -1;
	int			total = 0;
	List	   *queues;
	ListCell   *lc;
	char	   *save_activity = NULL;

	if (!PG_ARGISNULL(1))
	{
		max_jobs = PG_GETARG_INT32(1);
		if (max_jobs < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_jobs must not be negative")));
	}
	if (atomizer_in_handler())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("atomizer.run_pending() cannot be called from a job handler")));
	if (!atomizer_is_admin(caller))
		owner_filter = atomizer_role_name(caller);

	if (!PG_ARGISNULL(0))
	{
		AtomizerQueue queue;

		atomizer_require_queue(text_to_cstring(PG_GETARG_TEXT_PP(0)), &queue);
		if (queue.external)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("queue \"%s\" is external", queue.name),
					 errhint("Jobs of external queues are claimed by external workers with atomizer.claim().")));
		if (queue.paused)
		{
			ereport(NOTICE,
					(errmsg("queue \"%s\" is paused", queue.name),
					 errhint("Resume it with atomizer.resume_queue('%s').", queue.name)));
			PG_RETURN_INT32(0);
		}
		queues = list_make1(queue.name);
	}
	else
		queues = atomizer_runnable_queues();

	if (debug_query_string)
		save_activity = pstrdup(debug_query_string);
	running_jobs = true;
	PG_TRY();
	{
		foreach(lc, queues)
		{
			int			remaining = max_jobs < 0 ? -1 : max_jobs - total;

			if (remaining == 0)
				break;
			total += run_queue((char *) lfirst(lc), remaining, owner_filter);
		}
	}
	PG_FINALLY();
	{
		running_jobs = false;
	}
	PG_END_TRY();
	if (save_activity)
		pgstat_report_activity(STATE_RUNNING, save_activity);

	PG_RETURN_INT32(total);
}

/*
 * atomizer_in_handler
 *		Whether a job's handler, a lifecycle hook, or run_pending() is
 *		running in this backend.
 */
bool
atomizer_in_handler(void)
{
	return running_jobs || running_job != NULL || atomizer_in_hook();
}

/*
 * running_job_or_error
 *		The job whose handler calls fname, or an ERROR.
 */
static AtomizerJob *
running_job_or_error(const char *fname)
{
	if (running_job == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s can only be called from a job's handler", fname),
				 errhint("External workers name the job: atomizer.snooze(job_id, delay, attempt), atomizer.fail(job_id, error, retry => false).")));
	return running_job;
}

/*
 * atomizer_running_job_id
 *		The id of the job whose handler is running, or 0 outside one.
 */
int64
atomizer_running_job_id(void)
{
	return running_job ? running_job->id : 0;
}

/*
 * atomizer.current_job() RETURNS TABLE (id, queue, handler, attempt,
 *		max_attempts, owner, created_at, run_at, schedule, tags)
 *		The job whose handler is running.
 */
Datum
atomizer_current_job(PG_FUNCTION_ARGS)
{
	AtomizerJob *job = running_job_or_error("atomizer.current_job()");
	TupleDesc	desc;
	Datum		values[10];
	bool		nulls[10] = {false};
	TimestampTz created_at;
	char	   *schedule;
	Datum		tags;
	bool		tags_null;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	desc = BlessTupleDesc(desc);
	atomizer_store_job_origin(job->id, &created_at, &schedule, &tags, &tags_null);
	values[0] = Int64GetDatum(job->id);
	values[1] = CStringGetTextDatum(job->queue);
	values[2] = CStringGetTextDatum(job->handler);
	values[3] = Int32GetDatum(job->attempt);
	values[4] = Int32GetDatum(job->max_attempts);
	values[5] = CStringGetTextDatum(job->owner);
	values[6] = TimestampTzGetDatum(created_at);
	nulls[6] = (created_at == 0);
	values[7] = TimestampTzGetDatum(job->run_at);
	values[8] = schedule ? CStringGetTextDatum(schedule) : (Datum) 0;
	nulls[8] = (schedule == NULL);
	values[9] = tags;
	nulls[9] = tags_null;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/*
 * atomizer.snooze(delay interval) RETURNS void
 *		From a handler: end this attempt without counting it, and run the
 *		job again after delay.  Ends the handler with an error (SQLSTATE
 *		AZ001), so its writes are rolled back; a handler that catches it is
 *		snoozed all the same.
 */
Datum
atomizer_snooze(PG_FUNCTION_ARGS)
{
	AtomizerJob *job = running_job_or_error("atomizer.snooze()");

	snooze_ms = atomizer_delay_arg(fcinfo, 0);
	snooze_requested = true;
	ereport(ERROR,
			(errcode(ERRCODE_ATOMIZER_SNOOZE),
			 errmsg("job " INT64_FORMAT " snoozed", job->id),
			 errdetail("atomizer.snooze() ends the handler; the job runs again later, this attempt not counted.")));
	PG_RETURN_VOID();
}

/*
 * atomizer.discard(reason text) RETURNS void
 *		From a handler: the job is dead now, whatever attempts are left; its
 *		last error is "discarded: <reason>" (SQLSTATE AZ002).  Ends the
 *		handler with that error.
 */
Datum
atomizer_discard(PG_FUNCTION_ARGS)
{
	AtomizerJob *job = running_job_or_error("atomizer.discard()");
	char	   *reason = PG_ARGISNULL(0) ? "no reason given" :
		text_to_cstring(PG_GETARG_TEXT_PP(0));

	strlcpy(discard_reason, reason, sizeof(discard_reason));
	discard_requested = true;
	ereport(ERROR,
			(errcode(ERRCODE_ATOMIZER_DISCARD),
			 errmsg("job " INT64_FORMAT " discarded: %s", job->id, reason)));
	PG_RETURN_VOID();
}
