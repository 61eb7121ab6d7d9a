/*-------------------------------------------------------------------------
 *
 * dashboard_api.c
 *	  The dashboard's JSON API and /metrics: the endpoints, the parameters
 *	  each takes and how they are checked (a bad one is a 400 with a
 *	  sentence saying what is wrong), how a database error becomes an HTTP
 *	  status, and the Prometheus text format.
 *
 *	  Every value from a request goes to PostgreSQL as a parameter of
 *	  PQexecParams; the statements are in dashboard_sql.c.  Actions call
 *	  atomizer's SQL functions, so they pass the same permission checks as
 *	  from SQL (a 403 when PostgreSQL says "permission denied").
 *
 *	  src/cli/dashboard_api.c
 *
 *-------------------------------------------------------------------------
 */
#include "dashboard.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEAD_RETRY_BATCH 1000
#define MAX_PARAMS 15
#define BULK_BATCH 1000

typedef void (*ApiFunc) (DashRequest *r);

typedef struct Route
{
	const char *path;
	bool		writes;			/* POST, refused by --read-only */
	const char *params;			/* the parameters it takes, space-separated */
	ApiFunc		func;
} Route;

static const Route *current;

/* An error answer: {"error": "..."} with the status. */
void
dashboard_error(DashRequest *r, int status, const char *fmt,...)
{
	char		msg[2048];
	va_list		ap;
	size_t		n;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	r->body.len = 0;
	r->status = status;
	r->content_type = "application/json; charset=utf-8";
	buf_append(&r->body, "{\"error\": ", 10);
	json_escape(&r->body, msg);
	buf_append(&r->body, "}\n", 2);
}

/* The HTTP status for a failed statement, from its SQLSTATE. */
static int
status_for(const char *sqlstate)
{
	if (sqlstate == NULL)
		return 503;				/* no answer: connection lost */
	if (strncmp(sqlstate, "22", 2) == 0)	/* data exception: bad value */
		return 400;
	if (strcmp(sqlstate, "42501") == 0) /* insufficient privilege */
		return 403;
	if (strcmp(sqlstate, "42704") == 0 || strcmp(sqlstate, "P0002") == 0)
		return 404;
	if (strncmp(sqlstate, "23", 2) == 0 || strncmp(sqlstate, "55", 2) == 0)
		return 409;
	if (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57", 2) == 0)
		return 503;
	if (strncmp(sqlstate, "42", 2) == 0 || strcmp(sqlstate, "P0001") == 0)
		return 400;
	return 500;
}

/*
 * Run one of dashboard_sql.c's statements; on success its one value (JSON
 * text) is the answer.  Returns the result for the caller to clear, or
 * NULL after answering with the error.
 */
static PGresult *
run(DashRequest *r, const char *sql, int n, const char *const *vals)
{
	PGresult   *res = PQexecParams(r->db, sql, n, NULL, vals, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
		int			status = status_for(state);

		if (status == 500 || status == 503)
			logmsg("dashboard: %s: %s", r->url, PQresultErrorMessage(res));
		r->body.len = 0;
		r->status = status;
		buf_append(&r->body, "{\"error\": ", 10);
		json_escape(&r->body, msg ? msg : PQerrorMessage(r->db));
		buf_append(&r->body, ", \"sqlstate\": ", 14);
		json_escape(&r->body, state ? state : "");
		if (hint)
		{
			buf_append(&r->body, ", \"hint\": ", 10);
			json_escape(&r->body, hint);
		}
		buf_append(&r->body, "}\n", 2);
		PQclear(res);
		return NULL;
	}
	return res;
}

/* Run a statement whose one value is the whole answer. */
static void
answer_json(DashRequest *r, const char *sql, int n, const char *const *vals)
{
	PGresult   *res = run(r, sql, n, vals);

	if (res == NULL)
		return;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
		dashboard_error(r, 404, "not found (or not visible to role \"%s\")",
						PQuser(r->db));
	else
	{
		r->status = 200;
		buf_append(&r->body, PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
		buf_append(&r->body, "\n", 1);
	}
	PQclear(res);
}

/* ------------------------------------------------------------ parameters */

/* A query-string parameter; absent and empty are both NULL. */
static const char *
param(DashRequest *r, const char *name)
{
	const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);

	return (v == NULL || v[0] == '\0') ? NULL : v;
}

/* A required parameter, or NULL after a 400. */
static const char *
required(DashRequest *r, const char *name)
{
	const char *v = param(r, name);

	if (v == NULL)
		dashboard_error(r, 400, "parameter \"%s\" is required", name);
	return v;
}

/* An integer parameter within [min, max]; false after a 400. */
static bool
int_param(DashRequest *r, const char *name, long long min, long long max,
		  const char **out)
{
	const char *v = param(r, name);
	char	   *end;
	long long	n;

	*out = v;
	if (v == NULL)
		return true;
	errno = 0;
	n = strtoll(v, &end, 10);
	if (*end != '\0' || errno != 0 || n < min || n > max || v[0] == '+' ||
		v[0] == ' ')
	{
		dashboard_error(r, 400, "parameter \"%s\" must be an integer from %lld to %lld, not \"%s\"",
						name, min, max, v);
		return false;
	}
	return true;
}

/* A JSON parameter (for jsonb @>); false after a 400. */
static bool
json_param(DashRequest *r, const char *name, const char **out)
{
	const char *v = param(r, name);
	bool		container;
	char		err[256];

	*out = v;
	if (v != NULL && !json_check(v, &container, err, sizeof(err)))
	{
		dashboard_error(r, 400, "parameter \"%s\" must be JSON (matched with @>): %s",
						name, err);
		return false;
	}
	return true;
}

/* An enumerated parameter; false after a 400. */
static bool
enum_param(DashRequest *r, const char *name, const char *const *allowed,
		   const char **out)
{
	const char *v = param(r, name);
	Buf			list = {0};
	int			i;

	*out = v;
	if (v == NULL)
		return true;
	for (i = 0; allowed[i]; i++)
		if (strcmp(v, allowed[i]) == 0)
			return true;
	for (i = 0; allowed[i]; i++)
		buf_appendf(&list, "%s%s", i ? ", " : "", allowed[i]);
	dashboard_error(r, 400, "parameter \"%s\" must be one of %s, not \"%s\"",
					name, list.data, v);
	buf_free(&list);
	return false;
}

/* Refuse parameters the endpoint does not take (a typo is not ignored). */
static enum MHD_Result
check_one(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	DashRequest *r = cls;
	const char *p = current->params;
	size_t		kl = strlen(key);

	while (p && *p)
	{
		const char *sp = strchr(p, ' ');
		size_t		l = sp ? (size_t) (sp - p) : strlen(p);

		if (l == kl && strncmp(p, key, l) == 0)
			return MHD_YES;
		p = sp ? sp + 1 : NULL;
	}
	dashboard_error(r, 400, "unknown parameter \"%s\" for %s (it takes: %s)",
					key, current->path,
					current->params && current->params[0] ? current->params : "none");
	(void) kind;
	(void) value;
	return MHD_NO;
}

/* ------------------------------------------------------------- endpoints */

static const char *const job_states[] = {"scheduled", "available", "running",
	"retrying", "succeeded", "dead", "cancelled", "blocked", NULL};

static void
api_overview(DashRequest *r)
{
	answer_json(r, DASHBOARD_SQL_OVERVIEW, 0, NULL);
}

/* The filters' parameters ($3 to $15 of JOBS_FILTER); false after a 400. */
static bool
job_filters(DashRequest *r, const char **v)
{
	if (!enum_param(r, "state", job_states, &v[3]) ||
		!int_param(r, "id", 1, INT64_MAX, &v[5]) ||
		!json_param(r, "payload", &v[8]) ||
		!json_param(r, "result", &v[9]))
		return false;
	v[2] = param(r, "queue");
	v[4] = param(r, "handler");
	v[6] = param(r, "owner");
	v[7] = param(r, "error");
	/* timestamps and the jsonpath: PostgreSQL parses them (bad: a 400) */
	v[10] = param(r, "created_after");
	v[11] = param(r, "created_before");
	v[12] = param(r, "finished_after");
	v[13] = param(r, "finished_before");
	v[14] = param(r, "path");
	return true;
}

static void
api_jobs(DashRequest *r)
{
	const char *v[MAX_PARAMS];

	if (!int_param(r, "before", 1, INT64_MAX, &v[0]) ||
		!int_param(r, "limit", 1, 500, &v[1]) ||
		!job_filters(r, v))
		return;
	if (v[1] == NULL)
		v[1] = "50";
	answer_json(r, DASHBOARD_SQL_JOBS, MAX_PARAMS, v);
}

/* GET /api/jobs/count: how many jobs the filters match */
static void
api_jobs_count(DashRequest *r)
{
	const char *v[MAX_PARAMS];
	char		batch[16];

	if (!job_filters(r, v))
		return;
	snprintf(batch, sizeof(batch), "%d", BULK_BATCH);
	v[0] = NULL;
	v[1] = batch;
	answer_json(r, DASHBOARD_SQL_JOBS_COUNT, MAX_PARAMS, v);
}

/*
 * run_batches
 *		Run a batch statement until a batch sees fewer than batch rows, each
 *		batch its own transaction, walking down the ids: parameter v[last]
 *		is the last id of the batch before (NULL at first).  The statement
 *		answers {"seen" : N, "<done_key>" : M, "last_id" : L}; *seen, *done
 *		and *batches add them up.  False when a batch failed: the answer
 *		says why, and the batches before it are done.
 */
static bool
run_batches(DashRequest *r, const char *sql, int nparams, const char **v,
			int last, int batch, const char *done_key,
			long long *seen, long long *done, int *batches)
{
	char		fmt[96];
	char		last_id[32] = "";

	snprintf(fmt, sizeof(fmt),
			 "{\"seen\" : %%lld, \"%s\" : %%lld, \"last_id\" : %%31[0-9]", done_key);
	for (;;)
	{
		PGresult   *res;
		long long	s,
					d;
		char		lastv[32] = "";

		v[last] = last_id[0] ? last_id : NULL;
		res = run(r, sql, nparams, v);
		if (res == NULL)
			return false;
		if (sscanf(PQgetvalue(res, 0, 0), fmt, &s, &d, lastv) < 2)
		{
			PQclear(res);
			dashboard_error(r, 500, "unexpected answer from a batch");
			return false;
		}
		PQclear(res);
		if (s == 0)
			break;
		(*batches)++;
		*seen += s;
		*done += d;
		snprintf(last_id, sizeof(last_id), "%s", lastv);
		if (s < batch || last_id[0] == '\0')
			break;
	}
	return true;
}

/*
 * POST /api/jobs/bulk: retry or cancel every job the filters match, in
 * batches of BULK_BATCH ids, each batch its own transaction (keyset over
 * id, newest first), through atomizer.retry() and atomizer.cancel().
 * "expected" is the count the person confirmed: more than a batch away
 * from the count now, the matches changed under them and nothing is done
 * (409).  "delete" is refused: atomizer has no per-job delete (purge()
 * deletes a queue's finished jobs by age, POST /api/purge).
 */
static void
api_jobs_bulk(DashRequest *r)
{
	static const char *const actions[] = {"retry", "cancel", "delete", NULL};
	const char *v[MAX_PARAMS];
	const char *action;
	const char *expected;
	const char *sql;
	char		batch[16];
	long long	count,
				seen = 0,
				done = 0;
	int			batches = 0;
	PGresult   *res;

	if (required(r, "action") == NULL || !enum_param(r, "action", actions, &action) ||
		required(r, "expected") == NULL ||
		!int_param(r, "expected", 0, INT64_MAX, &expected) ||
		!job_filters(r, v))
		return;
	if (strcmp(action, "delete") == 0)
	{
		dashboard_error(r, 400, "action \"delete\" is not offered: atomizer has no per-job delete; "
						"finished jobs are deleted by age and queue with POST /api/purge (atomizer.purge)");
		return;
	}
	sql = strcmp(action, "retry") == 0 ?
		DASHBOARD_SQL_JOBS_RETRY_BATCH : DASHBOARD_SQL_JOBS_CANCEL_BATCH;
	snprintf(batch, sizeof(batch), "%d", BULK_BATCH);
	v[0] = NULL;
	v[1] = batch;

	res = run(r, DASHBOARD_SQL_JOBS_COUNT, MAX_PARAMS, v);
	if (res == NULL)
		return;
	if (sscanf(PQgetvalue(res, 0, 0), "{\"count\" : %lld", &count) != 1)
	{
		PQclear(res);
		dashboard_error(r, 500, "unexpected answer from the count");
		return;
	}
	PQclear(res);
	if (llabs(count - atoll(expected)) > BULK_BATCH)
	{
		r->status = 409;
		buf_appendf(&r->body, "{\"error\": \"the filter matches %lld jobs now, not the %s confirmed: count again (GET /api/jobs/count) and confirm that\", \"count\": %lld}\n",
					count, expected, count);
		return;
	}

	if (!run_batches(r, sql, MAX_PARAMS, v, 0, BULK_BATCH, "done",
					 &seen, &done, &batches))
		return;
	r->status = 200;
	buf_appendf(&r->body, "{\"action\": \"%s\", \"matched\": %lld, \"done\": %lld, \"batches\": %d, \"batch_size\": %d}\n",
				action, seen, done, batches, BULK_BATCH);
}

static void
api_job(DashRequest *r)
{
	const char *id;

	if (required(r, "id") == NULL || !int_param(r, "id", 1, INT64_MAX, &id))
		return;
	answer_json(r, DASHBOARD_SQL_JOB, 1, &id);
}

static void
job_action(DashRequest *r, const char *sql)
{
	const char *id;

	if (required(r, "id") == NULL || !int_param(r, "id", 1, INT64_MAX, &id))
		return;
	answer_json(r, sql, 1, &id);
}

static void
api_job_retry(DashRequest *r)
{
	job_action(r, DASHBOARD_SQL_RETRY);
}

static void
api_job_cancel(DashRequest *r)
{
	job_action(r, DASHBOARD_SQL_CANCEL);
}

static void
api_purge(DashRequest *r)
{
	const char *v[2] = {param(r, "older_than"), param(r, "queue")};

	answer_json(r, DASHBOARD_SQL_PURGE, 2, v);
}

static void
api_dead(DashRequest *r)
{
	answer_json(r, DASHBOARD_SQL_DEAD_GROUPS, 0, NULL);
}

/*
 * Retry one dead-letter group in batches of DEAD_RETRY_BATCH, each its own
 * transaction, walking down the ids (keyset): a million dead jobs never
 * hold one long transaction.  The page showed the count and asked first.
 */
static void
api_dead_retry(DashRequest *r)
{
	const char *v[6];
	char		batch[16];
	long long	seen = 0,
				retried = 0;
	int			batches = 0;

	if ((v[0] = required(r, "queue")) == NULL ||
		(v[1] = required(r, "handler")) == NULL)
		return;
	v[2] = param(r, "sqlstate");
	v[3] = param(r, "message");
	snprintf(batch, sizeof(batch), "%d", DEAD_RETRY_BATCH);
	v[5] = batch;
	if (!run_batches(r, DASHBOARD_SQL_DEAD_RETRY_BATCH, 6, v, 4, DEAD_RETRY_BATCH,
					 "retried", &seen, &retried, &batches))
		return;
	r->status = 200;
	buf_appendf(&r->body, "{\"matched\": %lld, \"retried\": %lld, \"batches\": %d, \"batch_size\": %d}\n",
				seen, retried, batches, DEAD_RETRY_BATCH);
}

static void
api_queues(DashRequest *r)
{
	answer_json(r, DASHBOARD_SQL_QUEUES, 0, NULL);
}

static void
queue_action(DashRequest *r, const char *sql)
{
	const char *name = required(r, "name");

	if (name != NULL)
		answer_json(r, sql, 1, &name);
}

static void
api_queue_pause(DashRequest *r)
{
	queue_action(r, DASHBOARD_SQL_PAUSE);
}

static void
api_queue_resume(DashRequest *r)
{
	queue_action(r, DASHBOARD_SQL_RESUME);
}

/*
 * The queue settings the dashboard edits, in the order of the parameters
 * $2, $3, ... of DASHBOARD_SQL_QUEUE_SETTINGS: integers are checked here,
 * the others parsed by PostgreSQL (a bad one is a 400 with its message),
 * and alter_queue() checks them all.  A text setting given empty is passed
 * on empty (alter_queue() then removes the hook or the rate partition);
 * any other given empty, or not given, is NULL (unchanged).
 */
typedef enum SettingKind
{
	SETTING_INT,				/* checked here */
	SETTING_VALUE,				/* parsed by PostgreSQL; empty: not given */
	SETTING_TEXT				/* empty: removed (a hook, the partition) */
} SettingKind;

static const struct
{
	const char *name;
	SettingKind kind;
}			queue_settings[] = {
	{"concurrency", SETTING_INT},
	{"max_attempts", SETTING_INT},
	{"backoff_base", SETTING_VALUE},
	{"backoff_cap", SETTING_VALUE},
	{"backoff_jitter", SETTING_VALUE},
	{"timeout", SETTING_VALUE},
	{"retention", SETTING_VALUE},
	{"rate_limit", SETTING_INT},
	{"rate_period", SETTING_VALUE},
	{"rate_partition", SETTING_TEXT},
	{"before_run", SETTING_TEXT},
	{"on_success", SETTING_TEXT},
	{"on_failure", SETTING_TEXT},
	{"on_dead", SETTING_TEXT},
};

#define NSETTINGS ((int) (sizeof(queue_settings) / sizeof(queue_settings[0])))

/*
 * POST /api/queue/settings: change any of a queue's settings through
 * atomizer.alter_queue() (those not given stay); atomizer_admin only, as
 * from SQL.  /api/queue/concurrency is the same with one setting.
 */
static void
api_queue_settings(DashRequest *r)
{
	const char *v[1 + NSETTINGS];
	int			given = 0;

	if ((v[0] = required(r, "name")) == NULL)
		return;
	for (int i = 0; i < NSETTINGS; i++)
	{
		switch (queue_settings[i].kind)
		{
			case SETTING_INT:
				if (!int_param(r, queue_settings[i].name, INT32_MIN, INT32_MAX, &v[1 + i]))
					return;
				break;
			case SETTING_VALUE:
				v[1 + i] = param(r, queue_settings[i].name);
				break;
			case SETTING_TEXT:
				/* given empty: alter_queue() removes the hook or partition */
				v[1 + i] = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND,
													   queue_settings[i].name);
				break;
		}
		if (v[1 + i] != NULL)
			given++;
	}
	if (given == 0)
	{
		Buf			list = {0};

		for (int i = 0; i < NSETTINGS; i++)
			buf_appendf(&list, "%s%s", i ? ", " : "", queue_settings[i].name);
		dashboard_error(r, 400, "give at least one setting to change: %s", list.data);
		buf_free(&list);
		return;
	}
	answer_json(r, DASHBOARD_SQL_QUEUE_SETTINGS, 1 + NSETTINGS, v);
}

static void
api_schedules(DashRequest *r)
{
	answer_json(r, DASHBOARD_SQL_SCHEDULES, 0, NULL);
}

static void
api_schedule_run(DashRequest *r)
{
	queue_action(r, DASHBOARD_SQL_RUN_SCHEDULE);
}

static void
api_schedule_enable(DashRequest *r)
{
	queue_action(r, DASHBOARD_SQL_ENABLE_SCHEDULE);
}

static void
api_schedule_disable(DashRequest *r)
{
	queue_action(r, DASHBOARD_SQL_DISABLE_SCHEDULE);
}

static void
api_workers(DashRequest *r)
{
	answer_json(r, DASHBOARD_SQL_WORKERS, 0, NULL);
}

/* A Prometheus label value: backslash, double quote and newline escaped. */
static void
label_value(Buf *b, const char *s)
{
	for (; *s; s++)
	{
		if (*s == '\\' || *s == '"')
			buf_appendf(b, "\\%c", *s);
		else if (*s == '\n')
			buf_append(b, "\\n", 2);
		else
			buf_append(b, s, 1);
	}
}

/*
 * metrics_counters
 *		/metrics' counters and histograms, from atomizer.metrics; a role that
 *		may not read it gets a comment saying so instead.
 */
static void
metrics_counters(DashRequest *r)
{
	static const struct
	{
		const char *family;
		const char *type;
		const char *help;
	}			helps[] = {
		{"atomizer_jobs_finished_total", "counter", "Jobs that succeeded, attempts that failed (to be retried), jobs that ended dead or cancelled, since the server started."},
		{"atomizer_job_wait_seconds", "histogram", "Wait of each job that ran, from run_at to its claim."},
		{"atomizer_job_run_seconds", "histogram", "Run of each job, from its claim to its outcome."},
		{"atomizer_cron_fires_total", "counter", "Fires of the schedules the role sees, per queue."},
		{"atomizer_cron_skips_total", "counter", "Skipped fires (overlap or misfire policy) of the schedules the role sees, per queue."},
	};
	PGresult   *res = PQexecParams(r->db, DASHBOARD_SQL_COUNTERS, 0, NULL, NULL,
								   NULL, NULL, 0);
	const char *family = "";

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		buf_appendf(&r->body, "# atomizer.metrics not shown: %s\n",
					msg ? msg : "error");
		PQclear(res);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++)
	{
		const char *fam = PQgetvalue(res, i, 0);

		if (strcmp(fam, family) != 0)
		{
			const char *type = "untyped";
			const char *help = "";

			for (int h = 0; h < (int) (sizeof(helps) / sizeof(helps[0])); h++)
				if (strcmp(helps[h].family, fam) == 0)
				{
					type = helps[h].type;
					help = helps[h].help;
				}
			buf_appendf(&r->body, "# HELP %s %s\n# TYPE %s %s\n", fam, help, fam, type);
			family = fam;
		}
		buf_appendf(&r->body, "%s{queue=\"", PQgetvalue(res, i, 1));
		label_value(&r->body, PQgetvalue(res, i, 2));
		buf_appendf(&r->body, "\"");
		if (!PQgetisnull(res, i, 3))
		{
			buf_appendf(&r->body, ",outcome=\"");
			label_value(&r->body, PQgetvalue(res, i, 3));
			buf_appendf(&r->body, "\"");
		}
		if (!PQgetisnull(res, i, 4))
		{
			buf_appendf(&r->body, ",le=\"");
			label_value(&r->body, PQgetvalue(res, i, 4));
			buf_appendf(&r->body, "\"");
		}
		buf_appendf(&r->body, "} %s\n", PQgetvalue(res, i, 5));
	}
	PQclear(res);
}

/* GET /metrics: the Prometheus text format (version 0.0.4) */
static void
api_metrics(DashRequest *r)
{
	static const struct
	{
		const char *kind;
		const char *name;
		const char *help;
		const char *label;
	}			families[] = {
		{"jobs", "atomizer_jobs", "Jobs visible to the dashboard's role, per queue and state (succeeded, cancelled and dead: until pruned).", "state"},
		{"oldest", "atomizer_oldest_available_seconds", "Seconds since the oldest available job of the queue became due (0: none waiting).", NULL},
		{"workers", "atomizer_workers", "atomizer's worker processes in this database, per queue and state (idle, running, ...).", "state"},
	};
	PGresult   *res = run(r, DASHBOARD_SQL_METRICS, 0, NULL);
	int			f,
				i;

	if (res == NULL)
		return;
	r->status = 200;
	r->content_type = "text/plain; version=0.0.4; charset=utf-8";
	for (f = 0; f < (int) (sizeof(families) / sizeof(families[0])); f++)
	{
		buf_appendf(&r->body, "# HELP %s %s\n# TYPE %s gauge\n",
					families[f].name, families[f].help, families[f].name);
		for (i = 0; i < PQntuples(res); i++)
		{
			if (strcmp(PQgetvalue(res, i, 0), families[f].kind) != 0)
				continue;
			buf_appendf(&r->body, "%s{queue=\"", families[f].name);
			label_value(&r->body, PQgetvalue(res, i, 1));
			if (families[f].label)
			{
				buf_appendf(&r->body, "\",%s=\"", families[f].label);
				label_value(&r->body, PQgetvalue(res, i, 2));
			}
			buf_appendf(&r->body, "\"} %s\n", PQgetvalue(res, i, 3));
		}
	}
	PQclear(res);
	metrics_counters(r);
}

/* the settings of /api/queue/settings (queue_settings[]) */
#define QUEUE_SETTINGS "concurrency max_attempts backoff_base backoff_cap " \
	"backoff_jitter timeout retention rate_limit rate_period rate_partition " \
	"before_run on_success on_failure on_dead"

/* the filters of /api/jobs, its count and its bulk actions */
#define JOB_FILTERS "queue state handler id owner error payload result " \
	"created_after created_before finished_after finished_before path"

static const Route routes[] = {
	{"/api/overview", false, "", api_overview},
	{"/api/jobs", false, "before limit " JOB_FILTERS, api_jobs},
	{"/api/jobs/count", false, JOB_FILTERS, api_jobs_count},
	{"/api/jobs/bulk", true, "action expected " JOB_FILTERS, api_jobs_bulk},
	{"/api/job", false, "id", api_job},
	{"/api/job/retry", true, "id", api_job_retry},
	{"/api/job/cancel", true, "id", api_job_cancel},
	{"/api/purge", true, "older_than queue", api_purge},
	{"/api/dead", false, "", api_dead},
	{"/api/dead/retry", true, "queue handler sqlstate message", api_dead_retry},
	{"/api/queues", false, "", api_queues},
	{"/api/queue/pause", true, "name", api_queue_pause},
	{"/api/queue/resume", true, "name", api_queue_resume},
	{"/api/queue/concurrency", true, "name concurrency", api_queue_settings},
	{"/api/queue/settings", true, "name " QUEUE_SETTINGS, api_queue_settings},
	{"/api/schedules", false, "", api_schedules},
	{"/api/schedule/run", true, "name", api_schedule_run},
	{"/api/schedule/enable", true, "name", api_schedule_enable},
	{"/api/schedule/disable", true, "name", api_schedule_disable},
	{"/api/workers", false, "", api_workers},
	{"/metrics", false, "", api_metrics},
	{NULL, false, NULL, NULL}
};

/* Find the endpoint of r->url; false if there is none. */
bool
dashboard_api_route(DashRequest *r, bool *writes)
{
	for (current = routes; current->path != NULL; current++)
	{
		if (strcmp(current->path, r->url) == 0)
		{
			*writes = current->writes;
			return true;
		}
	}
	current = NULL;
	return false;
}

/* Answer the endpoint found by dashboard_api_route. */
void
dashboard_api_answer(DashRequest *r)
{
	r->status = 0;
	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, check_one, r);
	if (r->status != 0)
		return;					/* an unknown parameter */
	r->status = 200;
	current->func(r);
}
