/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  atomizer's configuration parameters.  Every parameter is named
 *	  atomizer.<name>, described by one sentence, and the prefix is reserved
 *	  so that a misspelt atomizer.* setting is reported.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "atomizer.h"

/* Jobs claimed per scan by run_pending() and the workers. */
int			atomizer_batch_size = 64;

/* Whether the launcher runs schedulers and workers at all. */
bool		atomizer_enabled = true;

/* Databases to run jobs in: "*" or a comma-separated list. */
char	   *atomizer_databases = NULL;

/* Worker processes across all databases (sizes shared memory). */
int			atomizer_max_workers = 8;

/* Milliseconds a stopping worker lets its running job finish. */
int			atomizer_shutdown_timeout = 5000;

/* Milliseconds between safety-net polls of schedulers and idle workers. */
int			atomizer_poll_interval = 10000;

/* Milliseconds an idle worker waits for work before it exits. */
int			atomizer_worker_idle_timeout = 60000;

/* Outcomes after which the scheduler vacuums atomizer.job (0: never). */
int			atomizer_vacuum_after_jobs = 20000;
int			atomizer_cron_lookahead = 2000;

/* atomizer.log_failures: which failures get a line in the server log */
int			atomizer_log_failures = ATOMIZER_LOG_FAILURES_DEAD;

static const struct config_enum_entry log_failures_options[] = {
	{"none", ATOMIZER_LOG_FAILURES_NONE, false},
	{"dead", ATOMIZER_LOG_FAILURES_DEAD, false},
	{"all", ATOMIZER_LOG_FAILURES_ALL, false},
	{NULL, 0, false}
};

/*
 * atomizer_guc_init
 *		Define the GUCs and reserve the "atomizer" prefix.
 */
void
atomizer_guc_init(void)
{
	DefineCustomIntVariable("atomizer.batch_size",
							"Number of jobs claimed in one scan of a queue.",
							"Each job of a batch runs in its own subtransaction; "
							"at most 64, so that a batch's subtransactions never "
							"overflow the per-backend subtransaction cache.",
							&atomizer_batch_size,
							64, 1, 64,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("atomizer.enabled",
							 "Whether atomizer's background workers run jobs.",
							 "When off, schedulers and workers exit and jobs wait "
							 "until it is on again (or run with atomizer.run_pending()).",
							 &atomizer_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("atomizer.databases",
							   "Databases in which atomizer's workers run jobs.",
							   "\"*\" means every database that has the extension; "
							   "otherwise a comma-separated list of database names.",
							   &atomizer_databases,
							   "*",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   NULL, NULL, NULL);

	/*
	 * A PGC_POSTMASTER setting can only be defined while the postmaster
	 * loads the library; loaded later (CREATE EXTENSION or LOAD without
	 * shared_preload_libraries), defining it would be a FATAL error, and it
	 * would mean nothing: there are no background workers then.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("atomizer.max_workers",
								"Maximum number of atomizer worker processes, over all databases.",
								"Each also needs a slot of max_worker_processes.",
								&atomizer_max_workers,
								8, 1, 1024,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	DefineCustomIntVariable("atomizer.vacuum_after_jobs",
							"Jobs finished (or attempts failed) in a database after which its scheduler vacuums atomizer.job.",
							"At most every half second and a tenth of the scheduler's time; 0 leaves the table to autovacuum alone.",
							&atomizer_vacuum_after_jobs,
							20000, 0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("atomizer.cron_lookahead",
							"How long before its fire time a schedule's job is enqueued.",
							"The job waits, scheduled, until its fire time; 0 enqueues at the fire time.",
							&atomizer_cron_lookahead,
							2000, 0, 60 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("atomizer.shutdown_timeout",
							"Time a stopping worker gives its running job to finish.",
							"After it the job is cancelled and released, its attempt not counted.",
							&atomizer_shutdown_timeout,
							5000, 0, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("atomizer.poll_interval",
							"Longest time a scheduler or idle worker sleeps without looking for work.",
							"Commits wake workers at once; this is only the safety net.",
							&atomizer_poll_interval,
							10000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("atomizer.worker_idle_timeout",
							"Time an idle worker waits for work before it exits.",
							NULL,
							&atomizer_worker_idle_timeout,
							60000, 100, 24 * 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("atomizer.log_failures",
							 "Which failed jobs get a line in the server log.",
							 "dead: each job that ends dead; all: also each failed attempt that will be retried; none.",
							 &atomizer_log_failures,
							 ATOMIZER_LOG_FAILURES_DEAD,
							 log_failures_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("atomizer");
}
