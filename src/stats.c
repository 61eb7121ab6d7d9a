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
#include "catalog/pg_type.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/float.h"
#include "utils/timestamp.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_metrics);
PG_FUNCTION_INFO_V1(atomizer_gauges);
PG_FUNCTION_INFO_V1(atomizer_stats_unflushed);
PG_FUNCTION_INFO_V1(atomizer_metrics_visible);

#define STATS_SLOTS		512
#define NBUCKETS		ATOMIZER_STATS_BUCKETS

/* Upper bounds of the histograms' buckets, in seconds; the last is +Inf. */
static const double bucket_le[NBUCKETS - 1] = {
	0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600
};

static const char *const outcome_names[ATOMIZER_OUTCOMES] = {
	"succeeded", "failed", "dead", "cancelled"
};

typedef AtomizerStatsCounts StatsCounts;

typedef struct StatsSlot
{
	slock_t		mutex;			/* guards the fields below queue */
	Oid			dboid;			/* InvalidOid: free; set once, then fixed */
	char		queue[NAMEDATALEN];
	StatsCounts counts;
	StatsCounts flushed;		/* the part of counts the rollups hold */
	int64		gauge[ATOMIZER_GAUGES]; /* unfinished jobs, last sample */
	TimestampTz oldest_available;	/* of the last sample; 0: none due */
	TimestampTz sampled_at;		/* 0: never sampled */
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

/* The scheduler's rollup in progress: what it took, per slot. */
static StatsCounts taken[STATS_SLOTS];
static bool taken_set[STATS_SLOTS];

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
 * atomizer_may_read_metrics
 *		Superusers, atomizer_admin, atomizer_worker and pg_monitor: the
 *		shared figures count every role's jobs.
 */
bool
atomizer_may_read_metrics(Oid roleid)
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
 * check_may_read
 *		ERROR unless the caller may read the shared figures.
 */
static void
check_may_read(void)
{
	if (!atomizer_may_read_metrics(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read atomizer's metrics"),
				 errdetail("The metrics count every role's jobs: members of atomizer_admin, atomizer_worker and pg_monitor may read them."),
				 errhint("GRANT pg_monitor TO %s;",
						 quote_identifier(atomizer_role_name(GetUserId())))));
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

	check_may_read();
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

/* ------------------------------------------------------------------------
 * State samples and rollups (the scheduler writes them: rollup.c)
 * ------------------------------------------------------------------------ */

/*
 * atomizer_stats_set_gauges
 *		The scheduler's sample of this database's unfinished jobs: n
 *		queues' counts; every other queue of the database has none.
 */
void
atomizer_stats_set_gauges(const AtomizerGaugeSample *samples, int n,
						  TimestampTz sampled_at)
{
	if (stats == NULL)
		return;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];
		const AtomizerGaugeSample *sample = NULL;

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		for (int k = 0; k < n; k++)
			if (strcmp(samples[k].queue, slot->queue) == 0)
				sample = &samples[k];
		SpinLockAcquire(&slot->mutex);
		for (int g = 0; g < ATOMIZER_GAUGES; g++)
			slot->gauge[g] = sample ? sample->n[g] : 0;
		slot->oldest_available = sample ? sample->oldest_available : 0;
		slot->sampled_at = sampled_at;
		SpinLockRelease(&slot->mutex);
	}
	/* queues counted for the first time take a slot */
	for (int k = 0; k < n; k++)
	{
		StatsSlot  *slot = stats_slot(MyDatabaseId, samples[k].queue);

		if (slot == NULL)
			continue;
		SpinLockAcquire(&slot->mutex);
		if (slot->sampled_at != sampled_at)
		{
			memcpy(slot->gauge, samples[k].n, sizeof(slot->gauge));
			slot->oldest_available = samples[k].oldest_available;
			slot->sampled_at = sampled_at;
		}
		SpinLockRelease(&slot->mutex);
	}
}

static bool
counts_differ(const StatsCounts *a, const StatsCounts *b)
{
	return memcmp(a, b, sizeof(StatsCounts)) != 0;
}

static void
sub_counts(StatsCounts *to, const StatsCounts *a, const StatsCounts *b)
{
	for (int i = 0; i < ATOMIZER_OUTCOMES; i++)
		to->outcome[i] = a->outcome[i] - b->outcome[i];
	for (int k = 0; k < NBUCKETS; k++)
	{
		to->wait[k] = a->wait[k] - b->wait[k];
		to->run[k] = a->run[k] - b->run[k];
	}
	to->wait_sum_us = a->wait_sum_us - b->wait_sum_us;
	to->run_sum_us = a->run_sum_us - b->run_sum_us;
}

/*
 * atomizer_stats_take_unflushed
 *		For the rollup: each queue of this database whose counters moved
 *		since the last rollup, with what they added (palloc'd; the count is
 *		returned).  What was taken becomes "flushed" only when the rollup
 *		committed (atomizer_stats_mark_flushed); a rollup that failed takes
 *		the same again, and more, next time.
 */
int
atomizer_stats_take_unflushed(AtomizerStatsDelta **deltas)
{
	int			n = 0;

	*deltas = palloc(sizeof(AtomizerStatsDelta) * STATS_SLOTS);
	memset(taken_set, 0, sizeof(taken_set));
	if (stats == NULL)
		return 0;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];
		StatsCounts c;
		StatsCounts f;

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		SpinLockAcquire(&slot->mutex);
		c = slot->counts;
		f = slot->flushed;
		SpinLockRelease(&slot->mutex);
		if (!counts_differ(&c, &f))
			continue;
		taken[i] = c;
		taken_set[i] = true;
		strlcpy((*deltas)[n].queue, slot->queue, NAMEDATALEN);
		sub_counts(&(*deltas)[n].counts, &c, &f);
		n++;
	}
	return n;
}

/*
 * atomizer_stats_finished_total
 *		Outcomes (jobs finished, attempts failed) counted in this database
 *		since the server started, all queues; 0 without shared memory.
 */
uint64
atomizer_stats_finished_total(void)
{
	uint64		n = 0;

	if (stats == NULL)
		return 0;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		SpinLockAcquire(&slot->mutex);
		for (int k = 0; k < ATOMIZER_OUTCOMES; k++)
			n += slot->counts.outcome[k];
		SpinLockRelease(&slot->mutex);
	}
	return n;
}

/*
 * atomizer_stats_mark_flushed
 *		The rollup committed: what it took is in the table now.
 */
void
atomizer_stats_mark_flushed(void)
{
	if (stats == NULL)
		return;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		if (!taken_set[i])
			continue;
		SpinLockAcquire(&stats->slots[i].mutex);
		stats->slots[i].flushed = taken[i];
		SpinLockRelease(&stats->slots[i].mutex);
		taken_set[i] = false;
	}
}

/* A histogram's buckets as a bigint[] (not cumulative). */
static Datum
buckets_array(const uint64 *buckets)
{
	Datum		d[NBUCKETS];

	for (int b = 0; b < NBUCKETS; b++)
		d[b] = Int64GetDatum((int64) buckets[b]);
	return PointerGetDatum(construct_array(d, NBUCKETS, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * atomizer._gauges() RETURNS TABLE (queue text, scheduled bigint,
 *		available bigint, running bigint, retrying bigint,
 *		oldest_available timestamptz, sampled_at timestamptz)
 *		The scheduler's last sample of this database's unfinished jobs, per
 *		queue (every role's: no rows for those who may not read the
 *		metrics).
 */
Datum
atomizer_gauges(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (stats == NULL || !atomizer_may_read_metrics(GetUserId()))
		return (Datum) 0;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];
		Datum		values[8];
		bool		nulls[8] = {0};
		int64		g[ATOMIZER_GAUGES];
		TimestampTz oldest;
		TimestampTz at;

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		SpinLockAcquire(&slot->mutex);
		memcpy(g, slot->gauge, sizeof(g));
		oldest = slot->oldest_available;
		at = slot->sampled_at;
		SpinLockRelease(&slot->mutex);
		if (at == 0)
			continue;			/* never sampled (no scheduler yet) */
		values[0] = CStringGetTextDatum(slot->queue);
		for (int k = 0; k <= ATOMIZER_GAUGE_RETRYING; k++)
			values[1 + k] = Int64GetDatum(g[k]);
		values[5] = TimestampTzGetDatum(oldest);
		nulls[5] = (oldest == 0);
		values[6] = TimestampTzGetDatum(at);
		/* blocked (workflows) came last: the column is the function's last */
		values[7] = Int64GetDatum(g[ATOMIZER_GAUGE_BLOCKED]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * atomizer._stats_unflushed() RETURNS TABLE (queue text, succeeded bigint,
 *		failed bigint, dead bigint, cancelled bigint, wait_buckets bigint[],
 *		wait_sum double precision, run_buckets bigint[], run_sum double
 *		precision)
 *		What finished since the scheduler's last rollup, per queue: the
 *		current minute, which atomizer.stats_minute does not hold yet (no
 *		rows for those who may not read the metrics).
 */
Datum
atomizer_stats_unflushed(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (stats == NULL || !atomizer_may_read_metrics(GetUserId()))
		return (Datum) 0;
	for (int i = 0; i < STATS_SLOTS; i++)
	{
		StatsSlot  *slot = &stats->slots[i];
		StatsCounts c;
		StatsCounts f;
		StatsCounts d;
		Datum		values[9];
		bool		nulls[9] = {0};

		if (slot->dboid != MyDatabaseId)
			continue;
		pg_read_barrier();
		SpinLockAcquire(&slot->mutex);
		c = slot->counts;
		f = slot->flushed;
		SpinLockRelease(&slot->mutex);
		if (!counts_differ(&c, &f))
			continue;
		sub_counts(&d, &c, &f);
		values[0] = CStringGetTextDatum(slot->queue);
		for (int k = 0; k < ATOMIZER_OUTCOMES; k++)
			values[1 + k] = Int64GetDatum((int64) d.outcome[k]);
		values[5] = buckets_array(d.wait);
		values[6] = Float8GetDatum((double) d.wait_sum_us / 1000000.0);
		values[7] = buckets_array(d.run);
		values[8] = Float8GetDatum((double) d.run_sum_us / 1000000.0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * atomizer._metrics_visible() RETURNS boolean
 *		Whether the caller may read the shared figures (the dashboard asks,
 *		to show a role that may not its own unfinished jobs instead).
 */
Datum
atomizer_metrics_visible(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(stats != NULL && atomizer_may_read_metrics(GetUserId()));
}

/*
 * atomizer_stats_bucket_le
 *		The upper bound of bucket b in seconds; +Inf for the last.
 */
double
atomizer_stats_bucket_le(int b)
{
	return b < NBUCKETS - 1 ? bucket_le[b] : get_float8_infinity();
}
