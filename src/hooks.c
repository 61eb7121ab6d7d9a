/*-------------------------------------------------------------------------
 *
 * hooks.c
 *	  A queue's lifecycle hooks: the functions f(job jsonb) that the queue
 *	  settings before_run, on_success, on_failure and on_dead name
 *	  (atomizer.queue, set through create_queue() and alter_queue(), which
 *	  resolve and check the name with atomizer._hook_arg and store it
 *	  schema-qualified).
 *
 *	  What it owns:
 *
 *	  - resolving a hook by its stored name each time it runs
 *		(to_regprocedure), and checking again what the setting checked: a
 *		function dropped, replaced by a procedure or a set-returning
 *		function, or one the job's owner may not execute since the hook was
 *		set is an ERROR with a hint, recorded on the job like a handler's;
 *	  - the document a hook is called with: the job as recorded now (id,
 *		queue, handler, payload, attempt, max_attempts, priority, owner,
 *		created_at, run_at, started_at, schedule, tags, last_error), the
 *		hook's name, the state the job ends this step in, and result
 *		(on_success) or error (on_failure, on_dead);
 *	  - calling it as the job's owner, like a handler: inside a
 *		security-restricted operation, with every setting it changes rolled
 *		back; run apart from a handler, also under the job's timeout and a
 *		stopping worker's deadline, and, in atomizer's own processes, with
 *		the session-level advisory locks it took released after it.
 *
 *	  Where each hook runs (the README's "Lifecycle hooks" says it for
 *	  users):
 *
 *	  - before_run and on_success of internal queues: in the handler's own
 *		subtransaction, before and after the handler (dispatch.c calls
 *		atomizer_hook_call), under the job's timeout; an error fails the
 *		attempt like the handler's.
 *	  - before_run of external queues in claim(), on_success in complete()
 *		(external.c, through atomizer_hook_run: a subtransaction of the
 *		caller's transaction, with the job's timeout); an error fails the
 *		attempt: claim() does not hand that job out, complete() records the
 *		failure instead of the success and warns.
 *	  - on_failure and on_dead: after the failure is recorded, in the same
 *		transaction, in a subtransaction of their own
 *		(atomizer_hooks_after_failure, called where every failure is
 *		recorded: atomizer_record_outcome and the set-aside in dispatch.c).
 *		Their error is rolled back, logged as a WARNING and recorded in
 *		atomizer.job_errors; the job's outcome stands.
 *
 *	  A queue without hooks pays one lookup in the per-backend queue cache
 *	  (queue.c) per job, and no statement.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "atomizer.h"

/* The settings' names, as atomizer.queue's columns and alter_queue() name them. */
static const char *const hook_names[ATOMIZER_HOOKS] = {
	"before_run", "on_success", "on_failure", "on_dead"
};

/* The state a job ends the step in whose hook runs. */
static const char *const hook_states[ATOMIZER_HOOKS] = {
	"running", "succeeded", "retrying", "dead"
};

/* Depth of hook calls in progress in this backend (atomizer_in_hook). */
static int	hook_depth = 0;

/*
 * A hook run apart from its handler is cancelled after the job's timeout,
 * and in a worker at the shutdown deadline (as dispatch.c cancels a
 * handler); why it was, if it was.
 */
static TimeoutId hook_timeout_id = MAX_TIMEOUTS;
static TimeoutId hook_poll_id = MAX_TIMEOUTS;
static volatile sig_atomic_t hook_timed_out = false;
static volatile sig_atomic_t hook_stopped = false;

/* What a hook call needs, and its error context. */
typedef struct HookCall
{
	AtomizerHook hook;
	const char *fn;				/* the stored name */
	const AtomizerJob *job;
	Datum		result;			/* on_success: the handler's result */
	bool		has_result;
	const AtomizerOutcome *error;	/* on_failure, on_dead: the error */
	int64		timeout_ms;		/* atomizer_hook_run: the job's */
} HookCall;

/*
 * hook_timeout_handler
 *		SIGALRM-time: a hook run apart outlived the job's timeout.
 */
static void
hook_timeout_handler(void)
{
	hook_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * hook_poll_handler
 *		SIGALRM-time, every 100 ms while a worker runs a hook apart: past
 *		the shutdown deadline, cancel it.
 */
static void
hook_poll_handler(void)
{
	if (atomizer_shutdown_pending &&
		GetCurrentTimestamp() >= atomizer_shutdown_deadline)
	{
		hook_stopped = true;
		QueryCancelPending = true;
		InterruptPending = true;
		SetLatch(MyLatch);
	}
}

/*
 * hook_error_context
 *		CONTEXT line of an error raised while a hook runs.
 */
static void
hook_error_context(void *arg)
{
	HookCall   *call = (HookCall *) arg;

	errcontext("%s hook %s of queue \"%s\", job " INT64_FORMAT,
			   hook_names[call->hook], call->fn,
			   call->job->queue ? call->job->queue : "?", call->job->id);
}

/*
 * resolve_hook
 *		The OID of the function a hook's stored name names, checked again
 *		for the current user (the job's owner).  Every way it is no longer
 *		usable is an ERROR naming the queue's setting, with a hint.
 */
static Oid
resolve_hook(const HookCall *call)
{
	LOCAL_FCINFO(fc, 1);
	const char *setting = hook_names[call->hook];
	const char *queue = call->job->queue;
	Oid			roleid = GetUserId();
	HeapTuple	tuple;
	Form_pg_proc proc;
	Oid			fnoid;
	AclResult	aclresult;
	Datum		d;

	InitFunctionCallInfoData(*fc, NULL, 1, InvalidOid, NULL, NULL);
	fc->args[0].value = CStringGetTextDatum(call->fn);
	fc->args[0].isnull = false;
	d = to_regprocedure(fc);
	if (fc->isnull)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("%s hook function %s does not exist", setting, call->fn),
				 errdetail("Queue \"%s\" names it as its %s hook; it was dropped or renamed after the hook was set.",
						   queue, setting),
				 errhint("Create the function again, or remove the hook: SELECT atomizer.alter_queue('%s', %s => '');",
						 queue, setting)));
	fnoid = DatumGetObjectId(d);

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fnoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", fnoid);
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->prokind != PROKIND_FUNCTION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s hook %s is not a plain function", setting, call->fn),
				 errdetail("Queue \"%s\" names it as its %s hook.", queue, setting),
				 errhint("A hook is a function f(job jsonb), not a procedure or an aggregate.")));
	if (proc->proretset)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("%s hook function %s returns a set", setting, call->fn),
				 errdetail("Queue \"%s\" names it as its %s hook.", queue, setting),
				 errhint("A hook returns one value (or void); what it returns is ignored.")));
	ReleaseSysCache(tuple);

	aclresult = object_aclcheck(ProcedureRelationId, fnoid, roleid, ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for %s hook function %s", setting, call->fn),
				 errdetail("Jobs and their hooks run as the role that enqueued them, and role \"%s\" may not execute this function.",
						   GetUserNameFromId(roleid, false)),
				 errhint("GRANT EXECUTE ON FUNCTION %s TO %s;",
						 call->fn, quote_identifier(GetUserNameFromId(roleid, false)))));
	return fnoid;
}

/* ------------------------------------------------------------------------
 * The document
 * ------------------------------------------------------------------------ */

/*
 * add_key, add_text, add_int, add_time, add_jsonb, add_text_array
 *		Append "key": value to the JSON object being written in buf (its
 *		opening brace first: a comma goes before every key but the first).
 */
static void
add_key(StringInfo buf, const char *key)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
add_text(StringInfo buf, const char *key, const char *value)
{
	add_key(buf, key);
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

static void
add_int(StringInfo buf, const char *key, int64 value)
{
	add_key(buf, key);
	appendStringInfo(buf, INT64_FORMAT, value);
}

/* A timestamp as to_jsonb() writes it. */
static void
add_time(StringInfo buf, const char *key, TimestampTz value, bool isnull)
{
	add_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, JsonEncodeDateTime(NULL, TimestampTzGetDatum(value),
											TIMESTAMPTZOID, NULL));
}

static void
add_jsonb(StringInfo buf, const char *key, Datum value, bool isnull)
{
	add_key(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
	{
		Jsonb	   *jb = DatumGetJsonbP(value);

		(void) JsonbToCString(buf, &jb->root, VARSIZE(jb));
	}
}

static void
add_text_array(StringInfo buf, const char *key, Datum value, bool isnull)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	add_key(buf, key);
	if (isnull)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	deconstruct_array(DatumGetArrayTypeP(value), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, &nulls, &n);
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		if (nulls[i])
			appendStringInfoString(buf, "null");
		else
			escape_json(buf, TextDatumGetCString(elems[i]));
	}
	appendStringInfoChar(buf, ']');
}

/*
 * job_document
 *		The jsonb a hook is called with: the job as recorded now, the hook,
 *		the state the job ends this step in, and result or error.
 */
static Datum
job_document(const HookCall *call)
{
	AtomizerJobFacts facts;
	StringInfoData buf;

	if (!atomizer_store_job_facts(call->job->id, &facts))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job " INT64_FORMAT " does not exist", call->job->id),
				 errdetail("Its %s hook cannot run.", hook_names[call->hook])));

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	add_text(&buf, "hook", hook_names[call->hook]);
	add_int(&buf, "id", call->job->id);
	add_text(&buf, "queue", facts.queue);
	add_text(&buf, "handler", facts.handler);
	add_jsonb(&buf, "payload", facts.payload, false);
	add_text(&buf, "state", hook_states[call->hook]);
	add_int(&buf, "attempt", facts.attempt);
	add_int(&buf, "max_attempts", facts.max_attempts);
	add_int(&buf, "priority", facts.priority);
	add_text(&buf, "owner", facts.owner);
	add_time(&buf, "created_at", facts.created_at, false);
	add_time(&buf, "run_at", facts.run_at, false);
	add_time(&buf, "started_at", facts.started_at, facts.started_null);
	add_text(&buf, "schedule", facts.schedule);
	add_text_array(&buf, "tags", facts.tags, facts.tags_null);
	add_text(&buf, "last_error", facts.last_error);
	if (call->hook == ATOMIZER_HOOK_ON_SUCCESS)
		add_jsonb(&buf, "result", call->result, !call->has_result);
	if (call->error != NULL)
	{
		const AtomizerOutcome *e = call->error;
		StringInfoData error;

		initStringInfo(&error);
		appendStringInfoChar(&error, '{');
		add_text(&error, "sqlstate", e->sqlstate[0] ? e->sqlstate : NULL);
		add_text(&error, "message", e->message);
		add_text(&error, "detail", e->detail);
		add_text(&error, "hint", e->hint);
		add_text(&error, "context", e->context);
		appendStringInfoChar(&error, '}');
		add_key(&buf, "error");
		appendStringInfoString(&buf, error.data);
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/* ------------------------------------------------------------------------
 * Calling hooks
 * ------------------------------------------------------------------------ */

/*
 * call_hook
 *		Resolve, check and call the hook as the current user; its result is
 *		ignored.  Errors propagate, with a CONTEXT line naming the hook.
 */
static void
call_hook(HookCall *call)
{
	LOCAL_FCINFO(fcinfo, 1);
	ErrorContextCallback errcb;
	FmgrInfo	flinfo;
	Oid			fnoid;
	Datum		doc;
	bool		pushed = false;

	errcb.callback = hook_error_context;
	errcb.arg = call;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	/* scheduler duties and claim() run with one; a hook's statements need it */
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	fnoid = resolve_hook(call);
	doc = job_document(call);

	fmgr_info(fnoid, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = doc;
	fcinfo->args[0].isnull = false;
	hook_depth++;
	PG_TRY();
	{
		(void) FunctionCallInvoke(fcinfo);
	}
	PG_FINALLY();
	{
		hook_depth--;
	}
	PG_END_TRY();
	if (pushed)
		PopActiveSnapshot();
	error_context_stack = errcb.previous;
}

/*
 * atomizer_hook_call
 *		Run hook fn for job in the current (sub)transaction, as the current
 *		user: dispatch.c calls it for before_run and on_success inside the
 *		handler's subtransaction, where the job's owner, the security
 *		restriction and the timeout are in force already.  Throws.
 */
void
atomizer_hook_call(AtomizerHook hook, const char *fn, const AtomizerJob *job,
				   Datum result, bool has_result, const AtomizerOutcome *error)
{
	HookCall	call = {0};

	call.hook = hook;
	call.fn = fn;
	call.job = job;
	call.result = result;
	call.has_result = has_result;
	call.error = error;
	call_hook(&call);
}

/*
 * disable_hook_timeouts
 *		Stop the timers of a hook run apart (whichever are running).
 */
static void
disable_hook_timeouts(void)
{
	if (hook_timeout_id != MAX_TIMEOUTS)
		disable_timeout(hook_timeout_id, false);
	if (hook_poll_id != MAX_TIMEOUTS)
		disable_timeout(hook_poll_id, false);
}

/*
 * run_apart_cb
 *		atomizer_hook_run's subtransaction: become the job's owner, in a
 *		security-restricted operation with a GUC nest level of its own (so
 *		nothing the hook sets outlives it), under the job's timeout, and
 *		call the hook.  An error is undone by the subtransaction's abort.
 */
static void
run_apart_cb(void *arg)
{
	HookCall   *call = (HookCall *) arg;
	AtomizerJobFacts facts;
	Oid			roleid;
	Oid			save_userid;
	int			save_sec_context;
	int			nestlevel;

	if (!atomizer_store_job_facts(call->job->id, &facts))
		return;					/* gone (purged): nothing to tell */
	roleid = get_role_oid(facts.owner, true);
	if (!OidIsValid(roleid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" that enqueued the job does not exist",
						facts.owner)));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(roleid,
						   save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nestlevel = NewGUCNestLevel();

	call->timeout_ms = facts.timeout_ms;
	if (call->timeout_ms > 0)
	{
		if (hook_timeout_id == MAX_TIMEOUTS)
			hook_timeout_id = RegisterTimeout(USER_TIMEOUT, hook_timeout_handler);
		enable_timeout_after(hook_timeout_id,
							 (int) Min(call->timeout_ms, INT_MAX));
	}
	if (atomizer_in_worker)
	{
		if (hook_poll_id == MAX_TIMEOUTS)
			hook_poll_id = RegisterTimeout(USER_TIMEOUT, hook_poll_handler);
		enable_timeout_every(hook_poll_id,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 100),
							 100);
	}
	call_hook(call);
	disable_hook_timeouts();

	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * atomizer_hook_run
 *		Run hook fn for job apart from any handler: in a subtransaction of
 *		the current transaction, as the job's owner, with the job's timeout
 *		(and, in a worker, until the shutdown deadline).  Returns NULL when
 *		it succeeded (its writes stay in the transaction), or its error,
 *		its writes rolled back.
 */
ErrorData *
atomizer_hook_run(AtomizerHook hook, const char *fn, const AtomizerJob *job,
				  Datum result, bool has_result, const AtomizerOutcome *error)
{
	HookCall	call = {0};
	ErrorData  *edata;

	call.hook = hook;
	call.fn = fn;
	call.job = job;
	call.result = result;
	call.has_result = has_result;
	call.error = error;
	hook_timed_out = false;
	hook_stopped = false;
	edata = atomizer_try(run_apart_cb, &call);
	disable_hook_timeouts();

	/*
	 * In atomizer's own processes (a worker after the batch's handlers, the
	 * scheduler), drop the session-level advisory locks the hook took, as
	 * dispatch.c does after a handler: the process runs other roles' work
	 * next.  A client session's (claim(), fail()) are its own business.
	 */
	if (MyBackendType == B_BG_WORKER)
		LockReleaseSession(USER_LOCKMETHOD);

	if (hook_timed_out || hook_stopped)
	{
		/* the hook finished first: our cancel is not pending */
		if (edata == NULL)
			QueryCancelPending = false;
		else if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && hook_stopped)
			edata->message = psprintf("%s hook was cancelled: the worker was stopped",
									  hook_names[hook]);
		else if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			edata->message = psprintf("%s hook exceeded the job's timeout of " INT64_FORMAT " ms",
									  hook_names[hook], call.timeout_ms);
		hook_timed_out = false;
		hook_stopped = false;
	}
	return edata;
}

/*
 * atomizer_hooks_after_failure
 *		After a failed attempt of job was recorded (dead: it ended dead),
 *		run its queue's on_failure or on_dead hook, if it has one, apart:
 *		an error of the hook is rolled back, logged as a WARNING and
 *		recorded in atomizer.job_errors, and changes nothing else.
 */
void
atomizer_hooks_after_failure(const AtomizerJob *job,
							 const AtomizerOutcome *outcome, bool dead)
{
	AtomizerHook hook = dead ? ATOMIZER_HOOK_ON_DEAD : ATOMIZER_HOOK_ON_FAILURE;
	AtomizerQueue queue;
	ErrorData  *edata;
	AtomizerOutcome failure;

	/* every caller's job knows its queue; without one there is no hook */
	if (job->queue == NULL || !atomizer_lookup_queue(job->queue, &queue) ||
		queue.hooks[hook] == NULL)
		return;

	edata = atomizer_hook_run(hook, queue.hooks[hook], job, (Datum) 0, false,
							  outcome);
	if (edata == NULL)
		return;

	ereport(WARNING,
			(errcode(edata->sqlerrcode),
			 errmsg("%s hook %s failed for job " INT64_FORMAT " of queue \"%s\": %s",
					hook_names[hook], queue.hooks[hook], job->id, job->queue,
					edata->message),
			 errdetail("The job's outcome is recorded all the same; the hook's error is in atomizer.job_errors."),
			 edata->context ? errcontext_msg("%s", edata->context) : 0));

	atomizer_outcome_from_error(&failure, edata);
	failure.message = psprintf("%s hook failed: %s", hook_names[hook],
							   edata->message);
	atomizer_store_hook_error(job->id, job->attempt, &failure);
	FreeErrorData(edata);
}

/*
 * atomizer_outcome_from_error
 *		A failed outcome carrying edata's fields (strings shared with it).
 */
void
atomizer_outcome_from_error(AtomizerOutcome *outcome, const ErrorData *edata)
{
	memset(outcome, 0, sizeof(AtomizerOutcome));
	strlcpy(outcome->sqlstate, unpack_sql_state(edata->sqlerrcode),
			sizeof(outcome->sqlstate));
	outcome->message = edata->message ? edata->message : "unknown error";
	outcome->detail = edata->detail;
	outcome->hint = edata->hint;
	outcome->context = edata->context;
}

/*
 * atomizer_in_hook
 *		Whether a lifecycle hook is running in this backend.
 */
bool
atomizer_in_hook(void)
{
	return hook_depth > 0;
}
