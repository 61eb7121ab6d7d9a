/*-------------------------------------------------------------------------
 *
 * rollup.c
 *	  What the dashboard and atomizer.metrics read instead of counting the
 *	  job tables, kept by the scheduler (two of its duties):
 *
 *	  - the per-minute rollups: once a minute, what the shared counters of
 *		stats.c added since the last rollup, per queue (jobs succeeded,
 *		attempts failed, jobs dead and cancelled, the wait and run
 *		histograms' buckets and sums), is written to atomizer.stats_minute,
 *		one row per queue and minute with activity, and added to the row of
 *		its hour in atomizer.stats_hour (a day's figures read 24 rows per
 *		queue, not 1,440); rows older than ROLLUP_RETENTION are deleted by
 *		the same duty.  The minute not yet
 *		written is in shared memory (atomizer._stats_unflushed()), and is
 *		lost if the server crashes;
 *	  - the state samples: the counts of unfinished jobs per queue and state
 *		(one scan of the hot table atomizer.job, never of the history),
 *		put in shared memory (atomizer._gauges()).  The scheduler samples
 *		at most once a second, and stretches the interval to 50 times the
 *		last sample's duration, so that sampling costs at most 2% of its
 *		time whatever the backlog (scheduler.c).
 *
 *	  Also the SQL helpers that read the rollups' histograms:
 *	  atomizer._bucket_add(), the aggregate atomizer._sum_buckets() and
 *	  atomizer._histogram_quantile().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_bucket_add);
PG_FUNCTION_INFO_V1(atomizer_histogram_quantile);
PG_FUNCTION_INFO_V1(atomizer_buckets_accum);
PG_FUNCTION_INFO_V1(atomizer_buckets_final);

/* How long atomizer.stats_minute keeps a minute: 8 days. */
#define ROLLUP_RETENTION	"8 days"

/* A histogram's buckets as a bigint[] (not cumulative). */
static Datum
buckets_datum(const uint64 *buckets)
{
	Datum		d[ATOMIZER_STATS_BUCKETS];

	for (int b = 0; b < ATOMIZER_STATS_BUCKETS; b++)
		d[b] = Int64GetDatum((int64) buckets[b]);
	return PointerGetDatum(construct_array(d, ATOMIZER_STATS_BUCKETS, INT8OID,
										   sizeof(int64), FLOAT8PASSBYVAL,
										   TYPALIGN_DOUBLE));
}

/*
 * rollups_present
 *		Whether this database has atomizer.stats_minute (a database still
 *		on 0.1.0's objects has not).
 */
static bool
rollups_present(void)
{
	Oid			ns = get_namespace_oid("atomizer", true);

	return OidIsValid(ns) && OidIsValid(get_relname_relid("stats_minute", ns));
}

/*
 * atomizer_rollup_flush
 *		Write what finished since the last rollup into the row of minute
 *		(added to it, if a rollup of the same minute ran before) and into
 *		the row of its hour, and delete the rows past the retention.  In the caller's transaction; the
 *		caller marks the counters flushed after it committed.
 */
void
atomizer_rollup_flush(TimestampTz minute)
{
	static SPIPlanPtr upsert[2] = {NULL, NULL};
	static SPIPlanPtr prune = NULL;
	AtomizerStatsDelta *deltas;
	int			n = atomizer_stats_take_unflushed(&deltas);
	AtomizerPrivState priv;

	if (!rollups_present())
		return;
	atomizer_become_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (n > 0)
	{
		Oid			types[10] = {TIMESTAMPTZOID, TEXTOID, INT8OID, INT8OID,
		INT8OID, INT8OID, INT8ARRAYOID, FLOAT8OID, INT8ARRAYOID, FLOAT8OID};

		for (int t = 0; t < 2; t++)
			if (upsert[t] == NULL)
				atomizer_prepare(&upsert[t], psprintf(
							   "INSERT INTO atomizer.%s AS s (%s, queue,"
							   " succeeded, failed, dead, cancelled,"
							   " wait_buckets, wait_sum, run_buckets, run_sum)"
							   " VALUES (%s, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
							   " ON CONFLICT (%s, queue) DO UPDATE SET"
							   " succeeded = s.succeeded + excluded.succeeded,"
							   " failed = s.failed + excluded.failed,"
							   " dead = s.dead + excluded.dead,"
							   " cancelled = s.cancelled + excluded.cancelled,"
							   " wait_buckets = atomizer._bucket_add(s.wait_buckets, excluded.wait_buckets),"
							   " wait_sum = s.wait_sum + excluded.wait_sum,"
							   " run_buckets = atomizer._bucket_add(s.run_buckets, excluded.run_buckets),"
							   " run_sum = s.run_sum + excluded.run_sum",
							   t == 0 ? "stats_minute" : "stats_hour",
							   t == 0 ? "minute" : "hour",
							   t == 0 ? "$1" : "date_trunc('hour', $1)",
							   t == 0 ? "minute" : "hour"),
								 10, types);
		for (int i = 0; i < n; i++)
		{
			AtomizerStatsCounts *c = &deltas[i].counts;
			Datum		values[10];

			values[0] = TimestampTzGetDatum(minute);
			values[1] = CStringGetTextDatum(deltas[i].queue);
			for (int k = 0; k < ATOMIZER_OUTCOMES; k++)
				values[2 + k] = Int64GetDatum((int64) c->outcome[k]);
			values[6] = buckets_datum(c->wait);
			values[7] = Float8GetDatum((double) c->wait_sum_us / 1000000.0);
			values[8] = buckets_datum(c->run);
			values[9] = Float8GetDatum((double) c->run_sum_us / 1000000.0);
			for (int t = 0; t < 2; t++)
				if (SPI_execute_plan(upsert[t], values, NULL, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "could not write the rollup of queue \"%s\"",
						 deltas[i].queue);
		}
	}
	atomizer_prepare(&prune,
					 "WITH m AS (DELETE FROM atomizer.stats_minute"
					 "            WHERE minute < now() - interval '" ROLLUP_RETENTION "')"
					 " DELETE FROM atomizer.stats_hour"
					 "  WHERE hour < now() - interval '" ROLLUP_RETENTION "'",
					 0, NULL);
	if (SPI_execute_plan(prune, NULL, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the rollups");
	SPI_finish();
	atomizer_restore_caller(&priv);
}

/*
 * atomizer_sample_gauges
 *		Count this database's unfinished jobs per queue and state into
 *		shared memory.  In the caller's transaction.
 */
void
atomizer_sample_gauges(void)
{
	AtomizerGaugeSample *samples;
	int			n = atomizer_store_sample_unfinished(&samples);

	atomizer_stats_set_gauges(samples, n, GetCurrentTimestamp());
}

/*
 * bucket_values
 *		The ATOMIZER_STATS_BUCKETS counts of a histogram array (NULL
 *		elements count 0), or ERROR naming what is wrong with it.
 */
static void
bucket_values(ArrayType *a, int64 *out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (ARR_NDIM(a) != 1 || ARR_ELEMTYPE(a) != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("a histogram must be a one-dimensional bigint array")));
	/* the usual case, without a copy of each element */
	if (!ARR_HASNULL(a) && ARR_DIMS(a)[0] == ATOMIZER_STATS_BUCKETS)
	{
		memcpy(out, ARR_DATA_PTR(a), sizeof(int64) * ATOMIZER_STATS_BUCKETS);
		return;
	}
	deconstruct_array(a, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &n);
	if (n != ATOMIZER_STATS_BUCKETS)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("a histogram must have %d buckets, not %d",
						ATOMIZER_STATS_BUCKETS, n),
				 errhint("Pass the wait_buckets or run_buckets of atomizer.stats_minute.")));
	for (int b = 0; b < n; b++)
		out[b] = nulls[b] ? 0 : DatumGetInt64(elems[b]);
}

/*
 * atomizer._bucket_add(a bigint[], b bigint[]) RETURNS bigint[]
 *		The buckets of two histograms added (a rollup written twice in the
 *		same minute).  Strict: a NULL is no histogram.
 */
Datum
atomizer_bucket_add(PG_FUNCTION_ARGS)
{
	int64		a[ATOMIZER_STATS_BUCKETS];
	int64		b[ATOMIZER_STATS_BUCKETS];
	uint64		sum[ATOMIZER_STATS_BUCKETS];

	bucket_values(PG_GETARG_ARRAYTYPE_P(0), a);
	bucket_values(PG_GETARG_ARRAYTYPE_P(1), b);
	for (int k = 0; k < ATOMIZER_STATS_BUCKETS; k++)
		sum[k] = (uint64) a[k] + (uint64) b[k];
	PG_RETURN_DATUM(buckets_datum(sum));
}

/*
 * atomizer._buckets_accum(state internal, buckets bigint[]) RETURNS internal
 * atomizer._buckets_final(state internal) RETURNS bigint[]
 *		The aggregate atomizer._sum_buckets(bigint[]): histograms added
 *		bucket by bucket into one array of counts kept in the aggregate's
 *		memory (the overview adds a day of minutes per queue on every
 *		refresh: no array is built per row).  NULL when no row had one.
 */
Datum
atomizer_buckets_accum(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	int64	   *state = PG_ARGISNULL(0) ? NULL : (int64 *) PG_GETARG_POINTER(0);
	int64		add[ATOMIZER_STATS_BUCKETS];

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "atomizer._buckets_accum called in a non-aggregate context");
	if (PG_ARGISNULL(1))
	{
		if (state == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(state);
	}
	bucket_values(PG_GETARG_ARRAYTYPE_P(1), add);
	if (state == NULL)
		state = MemoryContextAllocZero(aggcxt, sizeof(int64) * ATOMIZER_STATS_BUCKETS);
	for (int k = 0; k < ATOMIZER_STATS_BUCKETS; k++)
		state[k] += add[k];
	PG_RETURN_POINTER(state);
}

Datum
atomizer_buckets_final(PG_FUNCTION_ARGS)
{
	int64	   *state;
	uint64		sum[ATOMIZER_STATS_BUCKETS];

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (int64 *) PG_GETARG_POINTER(0);
	for (int k = 0; k < ATOMIZER_STATS_BUCKETS; k++)
		sum[k] = (uint64) state[k];
	PG_RETURN_DATUM(buckets_datum(sum));
}

/*
 * atomizer._histogram_quantile(buckets bigint[], q double precision)
 *		RETURNS double precision
 *		The q-quantile (0 to 1) of a wait or run histogram, in seconds, as
 *		Prometheus' histogram_quantile() estimates it: linear within the
 *		bucket the rank falls in (the first bucket from 0); in the last,
 *		unbounded bucket, its lower bound (600 s).  NULL for an empty
 *		histogram.
 */
Datum
atomizer_histogram_quantile(PG_FUNCTION_ARGS)
{
	int64		buckets[ATOMIZER_STATS_BUCKETS];
	double		q = PG_GETARG_FLOAT8(1);
	double		total = 0;
	double		rank;
	double		below = 0;

	if (isnan(q) || q < 0 || q > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantile must be between 0 and 1, not %g", q)));
	bucket_values(PG_GETARG_ARRAYTYPE_P(0), buckets);
	for (int b = 0; b < ATOMIZER_STATS_BUCKETS; b++)
		total += (double) buckets[b];
	if (total <= 0)
		PG_RETURN_NULL();
	rank = q * total;
	for (int b = 0; b < ATOMIZER_STATS_BUCKETS; b++)
	{
		double		lo = b == 0 ? 0 : atomizer_stats_bucket_le(b - 1);

		if (buckets[b] > 0 && below + (double) buckets[b] >= rank)
		{
			if (b == ATOMIZER_STATS_BUCKETS - 1)
				PG_RETURN_FLOAT8(lo);
			PG_RETURN_FLOAT8(lo + (atomizer_stats_bucket_le(b) - lo) *
							 (rank - below) / (double) buckets[b]);
		}
		below += (double) buckets[b];
	}
	PG_RETURN_FLOAT8(atomizer_stats_bucket_le(ATOMIZER_STATS_BUCKETS - 2));
}
