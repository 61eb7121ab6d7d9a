/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Running counters of finished work, per queue, in shared memory: jobs
 *	  that succeeded, attempts that failed (and will be retried), jobs that
 *	  ended dead or cancelled, and histograms of the wait (from run_at to
 *	  the claim) and the run (from the claim to the finish) of every job
 *	  that ran.  The dashboard's figures and atomizer.metrics read them:
 *	  what a read costs grows with the number of queues, never with the
 *	  number of jobs.
 *
 *	  The job store notes each outcome in the transaction that writes it
 *	  (atomizer_stats_note).  The notes are added to the shared counters
 *	  when that transaction commits, and dropped if it, or the
 *	  subtransaction they were made in, rolls back: the counters count what
 *	  committed, once.  They start at zero when the server starts (as
 *	  Prometheus counters may), and need shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_metrics);

#define STATS_SLOTS		512
#define NBUCKETS		15

/* Upper bounds of the histograms' buckets, in seconds; the last is +Inf. */
static const double bucket_le[NBUCKETS - 1] = {
	0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600
};

static const char *const outcome_names[ATOMIZER_OUTCOMES] = {
	"succeeded", "failed", "dead", "cancelled"
};

typedef struct StatsCounts
{
	uint64		outcome[ATOMIZER_OUTCOMES];
	uint64		wait[NBUCKETS];
	uint64		wait_sum_us;
	uint64		run[NBUCKETS];
	uint64		run_sum_us;
} StatsCounts;

typedef struct StatsSlot
{
	slock_t		mutex;			/* guards counts */
	Oid			dboid;			/* InvalidOid: free; set once, then fixed */
	char		queue[NAMEDATALEN];
	StatsCounts counts;
} StatsSlot;

typedef struct StatsShared
{
	slock_t		assign;			/* taking a free slot */
	StatsSlot	slots[STATS_SLOTS];
} StatsShared;

static StatsShared *stats = NULL;

/* This transaction's notes, per queue and (sub)transaction level. */
typedef struct StatsNote
{
	char		queue[NAMEDATALEN];
	int			level;
	StatsCounts counts;
} StatsNote;

#define MAX_NOTES	16

static StatsNote notes[MAX_NOTES];
static int	nnotes = 0;
static bool callbacks_registered = false;

/*
 * atomizer_stats_shmem_size / atomizer_stats_shmem_init
 *		Shared memory for the counters (shmem.c asks for it).
 */
Size
atomizer_stats_shmem_size(void)
{
	return sizeof(StatsShared);
}

void
atomizer_stats_shmem_init(void)
{
	bool		found;

	stats = ShmemInitStruct("atomizer stats", sizeof(StatsShared), &found);
	if (!found)
	{
		memset(stats, 0, sizeof(StatsShared));
		SpinLockInit(&stats->assign);
		for (int i = 0; i < STATS_SLOTS; i++)
		{
			SpinLockInit(&stats->slots[i].mutex);
			stats->slots[i].dboid = InvalidOid;
		}
	}
}

/*
 * stats_slot
 *		The slot of (dboid, queue), taken if free; NULL when every slot is
 *		taken (the queue is not counted: the README states the limit).
 */
static StatsSlot *
stats_slot(Oid dboid, const char *queue)
{
	uint32		h = (hash_bytes((const unsigned char *) queue, strlen(queue)) ^ dboid);

	for (int probe = 0; probe < STATS_SLOTS; probe++)
	{
		StatsSlot  *slot = &stats->slots[(h + probe) % STATS_SLOTS];
		Oid			owner = slot->dboid;

		pg_read_barrier();
		if (owner == dboid && strcmp(slot->queue, queue) == 0)
			return slot;
		if (owner != InvalidOid)
			continue;
		SpinLockAcquire(&stats->assign);
		if (slot->dboid == InvalidOid)
		{
			strlcpy(slot->queue, queue, NAMEDATALEN);
			pg_write_barrier();
			slot->dboid = dboid;
			SpinLockRelease(&stats->assign);
			return slot;
		}
		SpinLockRelease(&stats->assign);
		if (slot->dboid == dboid && strcmp(slot->queue, queue) == 0)
			return slot;
	}
	return NULL;
}

static int
bucket_of(int64 us)
{
	double		secs = (double) us / 1000000.0;

	for (int b = 0; b < NBUCKETS - 1; b++)
		if (secs <= bucket_le[b])
			return b;
	return NBUCKETS - 1;
}

static void
add_counts(StatsCounts *to, const StatsCounts *from)
{
	for (int i = 0; i < ATOMIZER_OUTCOMES; i++)
		to->outcome[i] += from->outcome[i];
	for (int b = 0; b < NBUCKETS; b++)
	{
		to->wait[b] += from->wait[b];
		to->run[b] += from->run[b];
	}
	to->wait_sum_us += from->wait_sum_us;
	to->run_sum_us += from->run_sum_us;
}

/*
 * stats_xact_callback / stats_subxact_callback
 *		At commit, add the notes to the shared counters; drop them on abort,
 *		and a subtransaction's on its rollback.
 */
static void
stats_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int i = 0; i < nnotes; i++)
			{
				StatsSlot  *slot = stats_slot(MyDatabaseId, notes[i].queue);

				if (slot == NULL)
					continue;
				SpinLockAcquire(&slot->mutex);
				add_counts(&slot->counts, &notes[i].counts);
				SpinLockRelease(&slot->mutex);
			}
			/* jobs finished: sessions in atomizer.wait() look again */
			if (nnotes > 0)
				atomizer_wake_waiters();
			nnotes = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			nnotes = 0;
			break;
		default:
			break;
	}
}

static void
stats_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			kept = 0;

	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (int i = 0; i < nnotes; i++)
	{
		StatsNote  *note = &notes[i];

		if (note->level < level)
		{
			notes[kept++] = *note;
			continue;
		}
		if (event == SUBXACT_EVENT_ABORT_SUB)
			continue;			/* rolled back: never happened */
		/* committed: the parent's now, merged into its note of the queue */
		{
			bool		merged = false;

			for (int k = 0; k < kept; k++)
				if (notes[k].level == level - 1 &&
					strcmp(notes[k].queue, note->queue) == 0)
				{
					add_counts(&notes[k].counts, &note->counts);
					merged = true;
					break;
				}
			if (!merged)
			{
				notes[kept] = *note;
				notes[kept++].level = level - 1;
			}
		}
	}
	nnotes = kept;
}

/*
 * atomizer_stats_note
 *		This transaction wrote outcome "kind" of a job of queue; wait_us and
 *		run_us are its wait and run times (negative: it did not run).
 */
void
atomizer_stats_note(const char *queue, AtomizerOutcomeKind kind,
					int64 wait_us, int64 run_us)
{
	int			level;
	StatsNote  *note = NULL;

	if (stats == NULL)
		return;					/* not preloaded */
	if (!callbacks_registered)
	{
		RegisterXactCallback(stats_xact_callback, NULL);
		RegisterSubXactCallback(stats_subxact_callback, NULL);
		callbacks_registered = true;
	}
	level = GetCurrentTransactionNestLevel();
	for (int i = 0; i < nnotes; i++)
		if (notes[i].level == level && strcmp(notes[i].queue, queue) == 0)
		{
			note = &notes[i];
			break;
		}
	if (note == NULL)
	{
		if (nnotes == MAX_NOTES)
			return;				/* more queues in one transaction: not counted */
		note = &notes[nnotes++];
		memset(note, 0, sizeof(StatsNote));
		strlcpy(note->queue, queue, NAMEDATALEN);
		note->level = level;
	}
	note->counts.outcome[kind]++;
	if (wait_us >= 0)
	{
		note->counts.wait[bucket_of(wait_us)]++;
		note->counts.wait_sum_us += wait_us;
	}
	if (run_us >= 0)
	{
		note->counts.run[bucket_of(run_us)]++;
		note->counts.run_sum_us += run_us;
	}
}

/*
 * may_read_metrics
 *		Superusers, atomizer_admin, atomizer_worker and pg_monitor.
 */
static bool
may_read_metrics(Oid roleid)
{
	Oid			worker = get_role_oid("atomizer_worker", true);

	return atomizer_is_admin(roleid) ||
		has_privs_of_role(roleid, ROLE_PG_MONITOR) ||
		(OidIsValid(worker) && has_privs_of_role(roleid, worker));
}

static void
put_row(ReturnSetInfo *rsinfo, const char *metric, const char *queue,
		const char *outcome, const char *le, double value)
{
	Datum		values[5];
	bool		nulls[5] = {false, false, outcome == NULL, le == NULL, false};

	values[0] = CStringGetTextDatum(metric);
	values[1] = CStringGetTextDatum(queue);
	values[2] = outcome ? CStringGetTextDatum(outcome) : (Datum) 0;
	values[3] = le ? CStringGetTextDatum(le) : (Datum) 0;
	values[4] = Float8GetDatum(value);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

static void
put_histogram(ReturnSetInfo *rsinfo, const char *name, const char *queue,
			  const uint64 *buckets, uint64 sum_us)
{
	char		metric[64];
	uint64		cumulative = 0;

	snprintf(metric, sizeof(metric), "%s_bucket", name);
	for (int b = 0; b < NBUCKETS; b++)
	{
		char		le[32];

		cumulative += buckets[b];
		if (b < NBUCKETS - 1)
			snprintf(le, sizeof(le), "%g", bucket_le[b]);
		else
			strlcpy(le, "+Inf", sizeof(le));
		put_row(rsinfo, metric, queue, NULL, le, (double) cumulative);
	}
	snprintf(metric, sizeof(metric), "%s_sum", name);
	put_row(rsinfo, metric, queue, NULL, NULL, (double) sum_us / 1000000.0);
	snprintf(metric, sizeof(metric), "%s_count", name);
	put_row(rsinfo, metric, queue, NULL, NULL, (double) cumulative);
}

/*
 * atomizer._metrics() RETURNS TABLE (metric text, queue text, outcome text,
 *		le text, value double precision)
 *		The counters of this database's queues, in Prometheus' names:
 *		atomizer_jobs_finished_total (per outcome), and the histograms
 *		atomizer_job_wait_seconds and atomizer_job_run_seconds (_bucket per
 *		le, cumulative; _sum; _count).  Since the server started.
 */
Datum
atomizer_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	if (!may_read_metrics(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read atomizer's metrics"),
				 errdetail("The metrics count every role's jobs: members of atomizer_admin, atomizer_worker and pg_monitor may read them."),
				 errhint("GRANT pg_monitor TO %s;",
						 quote_identifier(atomizer_role_name(GetUserId())))));
	InitMaterializedSRF(fcinfo, 0);
	if (stats == NULL)
		return (Datum) 0;

	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];
		StatsCounts c;
		char		queue[NAMEDATALEN];

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		strlcpy(queue, slot->queue, NAMEDATALEN);
		SpinLockAcquire(&slot->mutex);
		c = slot->counts;
		SpinLockRelease(&slot->mutex);

		for (int k = 0; k < ATOMIZER_OUTCOMES; k++)
			put_row(rsinfo, "atomizer_jobs_finished_total", queue,
					outcome_names[k], NULL, (double) c.outcome[k]);
		put_histogram(rsinfo, "atomizer_job_wait_seconds", queue, c.wait,
					  c.wait_sum_us);
		put_histogram(rsinfo, "atomizer_job_run_seconds", queue, c.run,
					  c.run_sum_us);
	}
	return (Datum) 0;
}
