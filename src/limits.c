/*-------------------------------------------------------------------------
 *
 * limits.c
 *	  A queue's rate limit and its handlers' concurrency limits: what a
 *	  claim may take, and the record of what it took.  Owns every statement
 *	  on atomizer.rate_start, atomizer.rate_reserve and
 *	  atomizer.handler_limit, and the counts of atomizer.job's running and
 *	  held jobs they join; the claim itself (the statements that change
 *	  atomizer.job) stays in jobstore.c, which calls these functions.
 *
 *	  Exactness.  Every claim of a queue with limits first takes the
 *	  queue's limit lock (an advisory lock of atomizer's own), then reads
 *	  what the limits leave (running jobs per limited handler, starts in
 *	  the window per rate partition) with a fresh snapshot, adds what
 *	  other claims took and have not committed yet (their reservations,
 *	  below), claims at most what is left, and records its starts at one
 *	  time read under the lock, which the jobs it claims get as their
 *	  started_at.  Claims of the queue are so serialized, each sees every
 *	  earlier claim (committed, or reserved), and the recorded start times
 *	  grow: for any window of rate_period, every start in it was counted by
 *	  the claim of the last start in it, so no window holds more than
 *	  rate_limit, and the starts a user counts are the ones the limit
 *	  counted.  A running job counts against its handler's limit until it
 *	  stops running, whatever ends it (finish, failure, release, lease
 *	  expiry, orphan recovery after a crash): an internal queue's running
 *	  jobs are counted by the holds of the backends that run them (below),
 *	  an external queue's by their leases in atomizer.job.
 *
 *	  Reservations.  A claim does not hold the lock to its commit (which
 *	  would serialize the claimers' commits, and their WAL flushes): once
 *	  it has decided, it writes what it took, per partition and per limited
 *	  handler, into shared memory, lets the lock go, and then writes its
 *	  rows.  A reservation stays until the claim's transaction has ended
 *	  (the commit callback runs after the commit is visible; an abort drops
 *	  it, and so does the abort of the subtransaction it was made in).  The
 *	  next claim copies the reservations when it takes the lock, then takes
 *	  the snapshot it reads the tables with, and counts a copied
 *	  reservation only if that snapshot does not see its claim's
 *	  transaction as ended: so a claim is counted exactly once, in the
 *	  tables or by its reservation (a reservation the copy missed was gone,
 *	  so its claim had ended before the snapshot).
 *
 *	  The claim keeps the lock to its end instead without shared memory
 *	  (atomizer not preloaded), with every reservation slot taken, and when
 *	  it held jobs back or put them off (the queue is at a limit; the times
 *	  it promised are rows of atomizer.rate_reserve that the next claim
 *	  would wait for).  A transaction that has written before its claim
 *	  does not wait for the lock (atomizer_limits_lock says why): its claim
 *	  returns nothing while another is under way.  A transaction that
 *	  claimed from a limited queue cannot be prepared (PREPARE TRANSACTION
 *	  would end the reservation before the commit).

 *	  Bounds.  Reading the rate window costs a statement per claim, so a
 *	  claim first asks shared memory for an upper bound of the starts in
 *	  each partition's window, and reads the window only if the bound
 *	  leaves less room than the claim's whole batch.  The bound of a
 *	  partition is made from a claim's exact read (everything in its window,
 *	  claims in flight too, put in the bucket of that claim's time), and
 *	  every claim then adds the starts it decides, under the queue's limit
 *	  lock, to the bucket of their start time (RATE_BUCKETS buckets, of
 *	  rate_period / (RATE_BUCKETS - 2) each, so they hold the whole window).
 *	  So the bound never counts less than the window holds: a start it
 *	  misses would be one no claim added, and every claim adds its starts
 *	  before it lets the lock go.  A claim that aborts stays counted (on the
 *	  safe side).  There is no bound after a restart (shared memory is
 *	  gone; the first claim of each partition reads the window and makes
 *	  it again), for a rate_period other than the one it was made for, or
 *	  when the clock is behind a start already decided (the bound is made
 *	  again only once no start in the window lies in the future).
 *
 *	  The rate window is a table of starts, one row per claim and
 *	  partition (how many jobs), so a partition's window holds at most
 *	  rate_limit rows whatever the period; the scheduler prunes rows that
 *	  left their window.  A job a rate limit holds back is put off to when
 *	  its partition has room: the first after the last time promised to
 *	  its partition (atomizer.rate_reserve), spaced rate_period /
 *	  rate_limit apart, so a backlog is put off once, not at every claim.
 *
 *	  Claims of a queue with limits must see other sessions' commits: they
 *	  are refused in a REPEATABLE READ or SERIALIZABLE transaction.
 *
 *	  src/limits.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "atomizer.h"

PG_FUNCTION_INFO_V1(atomizer_release_held);

/* locktag_field4 of atomizer's limit locks (user advisory locks use 1, 2) */
#define LIMIT_LOCK_SPACE	0x4174

/* A transaction that has written looks for the limit lock this often. */
#define LIMIT_LOCK_TRIES	40
#define LIMIT_LOCK_NAP_US	50

/* Reservations of claims in flight, in shared memory. */
#define RESERVATIONS	2048

typedef struct Reservation
{
	int			pid;			/* 0: free */
	int			level;			/* the claimer's (sub)transaction level */
	Oid			dboid;
	uint32		queue;			/* hash of the queue's name */
	uint64		key;			/* hash of the kind and partition or handler */
	int32		n;
	TransactionId xid;			/* the claimer's top transaction */
	bool		hold;			/* a hold (see "Holds"): kept past the commit */
	bool		committed;		/* a hold whose claim has committed */
} Reservation;

/* Per database: the trust generation its holds were last found whole at. */
typedef struct TrustedDb
{
	Oid			dboid;			/* InvalidOid: free */
	uint64		gen;
} TrustedDb;

/*
 * Upper bounds of rate windows, in shared memory (see "Bounds" in the
 * header): per queue and partition, the starts claims decided, in
 * RATE_BUCKETS buckets of time.
 */
#define RATE_BOUNDS		512
#define RATE_BUCKETS	16

typedef struct RateBound
{
	Oid			dboid;			/* InvalidOid: free */
	char		queue[NAMEDATALEN];
	uint64		key;			/* hash of the partition */
	Interval	period;			/* the rate_period it was made for */
	int64		width;			/* of a bucket, microseconds */
	TimestampTz last;			/* the latest start added */
	int64		bucket_no[RATE_BUCKETS];	/* time / width */
	int64		count[RATE_BUCKETS];
} RateBound;

typedef struct ReservationsShared
{
	LWLock	   *lock;
	int			high;			/* entries [0, high) may be in use */
	TimestampTz latest_start;	/* the latest start any claim decided */
	uint64		trust_gen;		/* bumped when a backend leaves holds behind */
	TrustedDb	trusted[ATOMIZER_MAX_DATABASES];
	Reservation entries[RESERVATIONS];
	RateBound	bounds[RATE_BOUNDS];
} ReservationsShared;

static ReservationsShared *reservations = NULL;
static int	own_reservations = 0;

/*
 * The other claims in flight of the queue whose limit lock this backend
 * took, copied when it took it: no claim of that queue can reserve more
 * while the lock is held, so the copy holds every claim that the tables
 * may not show yet (and some that they show by now: counted twice, which
 * errs on the safe side).
 */
static uint64 *inflight_keys = NULL;
static int32 *inflight_n = NULL;
static TransactionId *inflight_xid = NULL;
static int	ninflight = 0;
static bool callbacks_registered = false;
static LOCKTAG held_tag;		/* the limit lock this backend holds, if any */
static bool holding = false;

/*
 * atomizer_limits_shmem_size / atomizer_limits_shmem_init
 *		Shared memory for the reservations (shmem.c asks for it).
 */
Size
atomizer_limits_shmem_size(void)
{
	return sizeof(ReservationsShared);
}

void
atomizer_limits_shmem_init(LWLock *lock)
{
	bool		found;

	reservations = ShmemInitStruct("atomizer limits", sizeof(ReservationsShared), &found);
	if (!found)
	{
		memset(reservations, 0, sizeof(ReservationsShared));
		reservations->lock = lock;
	}
}

static uint32
queue_hash(const char *queue)
{
	return DatumGetUInt32(hash_any((const unsigned char *) queue, strlen(queue)));
}

static uint64
key_hash(AtomizerLimitKind kind, const char *key)
{
	return DatumGetUInt64(hash_any_extended((const unsigned char *) key,
											strlen(key), (uint64) kind + 1));
}

/*
 * attnum_of
 *		The attribute number of column name in desc (ERROR if none).
 */
static AttrNumber
attnum_of(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	elog(ERROR, "column \"%s\" not found", name);
	return InvalidAttrNumber;	/* keep the compiler quiet */
}

/*
 * Holds: the running jobs of an internal queue's limited handlers.
 *
 * A claim of an internal queue under a handler limit makes one
 * reservation per limited handler (before it decides, so that it never
 * claims what it could not record), and keeps it past its commit as a hold
 * of the jobs it claimed of that handler.  The backend that claimed a job
 * is the one that runs it and records its outcome (a worker, or
 * run_pending()); the commit of that outcome (whatever it is: success,
 * failure, snooze, cancel, release) takes the job off the hold.  So the
 * holds of a handler count exactly the jobs that are running, claimed and
 * not yet recorded, in flight or committed, and a claim needs no statement
 * and no index to count them (an index of the running limited jobs cost
 * every limited claim an index entry and a scan).
 *
 * The holds are whole only while every running job they should count has a
 * live holder.  A backend that exits with holds of committed claims (a
 * worker terminated or failing in the middle of a batch) leaves orphans
 * that still count as running until the scheduler recovers them, and after
 * a restart shared memory is new.  So trust_gen is bumped when holds are
 * left behind, and a database's holds are trusted only at the generation
 * at which its scheduler last finished an orphan recovery that found no
 * orphan left (atomizer_limits_trust); until then a claim counts the
 * running jobs of atomizer.job without a lease (one statement), plus the
 * reservations of claims in flight, as before holds existed.
 */
typedef struct HeldJob
{
	int64		id;				/* the hash key */
	uint32		queue;
	uint64		key;
	int			level;			/* the claim's (sub)transaction level */
	bool		committed;
	int			released;		/* level its outcome was recorded at; 0: not */
} HeldJob;

static HTAB *held_jobs = NULL;

/* How many jobs this backend holds (claimed, outcome not committed). */
static inline long
held_count(void)
{
	return held_jobs ? hash_get_num_entries(held_jobs) : 0;
}
static int	own_committed = 0;	/* this backend's committed holds */
static int *prehold = NULL;		/* entries reserved for the claim under way */
static int	nprehold = 0;
static bool claim_trusted = false;	/* its handler counts came from holds */
static bool exit_registered = false;

/* Free entry e of this backend; under reservations->lock, exclusive. */
static inline void
free_entry(Reservation *r)
{
	if (r->hold && r->committed)
		own_committed--;
	r->pid = 0;
	r->hold = false;
	r->committed = false;
	own_reservations--;
}

static void
shrink_high(void)
{
	while (reservations->high > 0 &&
		   reservations->entries[reservations->high - 1].pid == 0)
		reservations->high--;
}

/*
 * drop_reservations
 *		Free this backend's reservations made at (sub)transaction level
 *		min_level or deeper (all with min_level 0), but not its committed
 *		holds, and forget the jobs claimed at those levels.
 */
static void
drop_reservations(int min_level)
{
	if (held_count() > 0)
	{
		HASH_SEQ_STATUS st;
		HeldJob    *h;

		hash_seq_init(&st, held_jobs);
		while ((h = hash_seq_search(&st)) != NULL)
		{
			if (!h->committed && h->level >= min_level)
			{
				(void) hash_search(held_jobs, &h->id, HASH_REMOVE, NULL);
			}
			else if (h->released >= min_level)
				h->released = 0;	/* its outcome was rolled back */
		}
	}
	if (min_level <= 1)
		nprehold = 0;
	if (own_reservations == own_committed || reservations == NULL)
		return;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	for (int i = 0; i < reservations->high; i++)
	{
		Reservation *r = &reservations->entries[i];

		if (r->pid == MyProcPid && !r->committed && r->level >= min_level)
			free_entry(r);
	}
	shrink_high();
	LWLockRelease(reservations->lock);
}

/*
 * commit_reservations
 *		At commit: free the reservations, make the holds committed, and take
 *		the jobs whose outcome this transaction recorded off them.
 */
static void
commit_reservations(void)
{
	nprehold = 0;
	if (own_reservations == 0 && held_count() == 0)
		return;
	if (reservations == NULL)
	{
		own_reservations = 0;
		return;
	}
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	for (int i = 0; i < reservations->high; i++)
	{
		Reservation *r = &reservations->entries[i];

		if (r->pid != MyProcPid || r->committed)
			continue;
		if (!r->hold || r->n == 0)
			free_entry(r);
		else
		{
			r->committed = true;
			own_committed++;
		}
	}
	if (held_count() > 0)
	{
		HASH_SEQ_STATUS st;
		HeldJob    *h;

		hash_seq_init(&st, held_jobs);
		while ((h = hash_seq_search(&st)) != NULL)
		{
			if (h->released == 0)
			{
				h->committed = true;
				continue;
			}
			for (int i = 0; i < reservations->high; i++)
			{
				Reservation *r = &reservations->entries[i];

				if (r->pid == MyProcPid && r->committed && r->queue == h->queue &&
					r->key == h->key && r->n > 0)
				{
					if (--r->n == 0)
						free_entry(r);
					break;
				}
			}
			(void) hash_search(held_jobs, &h->id, HASH_REMOVE, NULL);
		}
	}
	shrink_high();
	LWLockRelease(reservations->lock);
}

/*
 * limits_exit
 *		before_shmem_exit: free this backend's entries.  Holds of committed
 *		claims left behind are orphans' now: no database's holds are whole
 *		until its scheduler has recovered them.
 */
static void
limits_exit(int code, Datum arg)
{
	bool		left = false;

	if (reservations == NULL || own_reservations == 0)
		return;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	for (int i = 0; i < reservations->high; i++)
	{
		Reservation *r = &reservations->entries[i];

		if (r->pid != MyProcPid)
			continue;
		if (r->hold && r->committed && r->n > 0)
			left = true;
		free_entry(r);
	}
	if (left)
		reservations->trust_gen++;
	shrink_high();
	LWLockRelease(reservations->lock);
}

/*
 * atomizer_limits_attach
 *		Free this backend's holds when it exits.  A worker calls it before it
 *		registers the release of its worker slot, so that its slot is free
 *		(its jobs orphans to the scheduler) before its holds go.
 */
void
atomizer_limits_attach(void)
{
	if (exit_registered)
		return;
	before_shmem_exit(limits_exit, (Datum) 0);
	exit_registered = true;
}

/* Whether this database's holds are whole; under reservations->lock. */
static bool
trusted_locked(void)
{
	for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
		if (reservations->trusted[i].dboid == MyDatabaseId)
			return reservations->trusted[i].gen == reservations->trust_gen;
	return false;
}

/*
 * atomizer_limits_trust_gen / atomizer_limits_trust
 *		For the scheduler's orphan recovery: the trust generation before a
 *		recovery, and, after one that committed and left no orphan, trust
 *		this database's holds if no backend has left holds behind since.
 */
uint64
atomizer_limits_trust_gen(void)
{
	uint64		gen;

	if (reservations == NULL)
		return 0;
	LWLockAcquire(reservations->lock, LW_SHARED);
	gen = reservations->trust_gen;
	LWLockRelease(reservations->lock);
	return gen;
}

/*
 * atomizer_limits_trusted
 *		Whether this database's holds are whole now (no shared memory: no
 *		holds to trust).
 */
bool
atomizer_limits_trusted(void)
{
	bool		trusted;

	if (reservations == NULL)
		return false;
	LWLockAcquire(reservations->lock, LW_SHARED);
	trusted = trusted_locked();
	LWLockRelease(reservations->lock);
	return trusted;
}

void
atomizer_limits_trust(uint64 gen)
{
	TrustedDb  *spare = NULL;

	if (reservations == NULL)
		return;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	if (reservations->trust_gen == gen)
	{
		for (int i = 0; i < ATOMIZER_MAX_DATABASES; i++)
		{
			TrustedDb  *t = &reservations->trusted[i];

			if (t->dboid == MyDatabaseId)
			{
				spare = t;
				break;
			}
			if (spare == NULL && (t->dboid == InvalidOid || t->gen != gen))
				spare = t;		/* free, or trusted at an older generation */
		}
		if (spare != NULL)
		{
			spare->dboid = MyDatabaseId;
			spare->gen = gen;
		}
	}
	LWLockRelease(reservations->lock);
}

/*
 * sum_holds
 *		Into running[h], the jobs held of handlers[h] (nh) of queue hash qh
 *		in this database, by every backend; under reservations->lock.
 */
static void
sum_holds(uint32 qh, char **handlers, int nh, int64 *running)
{
	for (int h = 0; h < nh; h++)
	{
		uint64		k = key_hash(ATOMIZER_LIMIT_HANDLER, handlers[h]);

		running[h] = 0;
		for (int e = 0; e < reservations->high; e++)
		{
			Reservation *r = &reservations->entries[e];

			if (r->pid != 0 && r->hold && r->dboid == MyDatabaseId &&
				r->queue == qh && r->key == k)
				running[h] += r->n;
		}
	}
}

/*
 * take_holds
 *		Under the queue's limit lock: reserve one entry per limited handler
 *		for the holds of the claim under way, and, if this database's holds
 *		are whole, count each handler's running jobs from them.  Returns -1
 *		if there are not enough free entries (the claim takes no job of a
 *		limited handler), 1 with running[] filled, 0 when the running jobs
 *		must be counted from the table.
 */
static int
take_holds(const char *queue, char **handlers, int nh, int64 *running)
{
	uint32		qh = queue_hash(queue);
	TransactionId xid;
	int			level = GetCurrentTransactionNestLevel();
	int			got = 0;
	int			result;

	if (reservations == NULL)
		return 0;
	if (prehold == NULL)
		prehold = MemoryContextAlloc(TopMemoryContext, sizeof(int) * RESERVATIONS);
	if (held_jobs == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(HeldJob);
		held_jobs = hash_create("atomizer held jobs", 64, &ctl,
								HASH_ELEM | HASH_BLOBS);
	}
	atomizer_limits_attach();
	xid = GetTopTransactionId();
	nprehold = 0;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	for (int e = 0; got < nh && e < RESERVATIONS; e++)
	{
		Reservation *r = &reservations->entries[e];

		if (r->pid != 0)
			continue;
		memset(r, 0, sizeof(Reservation));
		r->pid = MyProcPid;
		r->level = level;
		r->dboid = MyDatabaseId;
		r->queue = qh;
		r->key = key_hash(ATOMIZER_LIMIT_HANDLER, handlers[got]);
		r->xid = xid;
		r->hold = true;
		if (e >= reservations->high)
			reservations->high = e + 1;
		own_reservations++;
		prehold[nprehold++] = e;
		got++;
	}
	if (got < nh)
	{
		for (int i = 0; i < nprehold; i++)
			free_entry(&reservations->entries[prehold[i]]);
		nprehold = 0;
		shrink_high();
		result = -1;
	}
	else if (trusted_locked())
	{
		sum_holds(qh, handlers, nh, running);
		result = 1;
	}
	else
		result = 0;
	LWLockRelease(reservations->lock);
	return result;
}

/*
 * atomizer_limits_fill_holds
 *		The decision of a claim of an internal queue: took[h] jobs of each
 *		limited handler (nh, in the order atomizer_limits_handlers gave),
 *		and the jobs claimed, ids[i] of handler id_h[i] (-1: not limited).
 *		Call before the limit lock goes.
 */
void
atomizer_limits_fill_holds(const char *queue, char **handlers, const int *took,
						   int nh, const Datum *ids, const int *id_h, int nids)
{
	uint32		qh = queue_hash(queue);
	int			level = GetCurrentTransactionNestLevel();

	if (reservations == NULL || nh == 0 || nprehold != nh)
		return;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	for (int h = 0; h < nh; h++)
		reservations->entries[prehold[h]].n = took[h];
	LWLockRelease(reservations->lock);
	nprehold = 0;
	for (int i = 0; i < nids; i++)
	{
		int64		id = DatumGetInt64(ids[i]);
		HeldJob    *j;

		if (id_h[i] < 0)
			continue;
		j = hash_search(held_jobs, &id, HASH_ENTER, NULL);
		j->queue = qh;
		j->key = key_hash(ATOMIZER_LIMIT_HANDLER, handlers[id_h[i]]);
		j->level = level;
		j->committed = false;
		j->released = 0;
	}
}

/*
 * atomizer_limits_job_done
 *		This transaction records the outcome of job id: if this backend
 *		holds it, the hold lets it go when the transaction commits.
 */
void
atomizer_limits_job_done(int64 id)
{
	HeldJob    *j;

	if (held_count() == 0)
		return;
	j = hash_search(held_jobs, &id, HASH_FIND, NULL);
	if (j != NULL && j->released == 0)
		j->released = GetCurrentTransactionNestLevel();
}

static void
limits_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (own_reservations > own_committed || holding)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that claimed jobs of a queue with limits"),
						 errhint("Claim and prepare in separate transactions.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* after the commit is visible: counted in the tables now */
			commit_reservations();
			holding = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			drop_reservations(0);
			holding = false;
			break;
		default:
			break;
	}
}

static void
limits_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (own_reservations == own_committed && held_count() == 0)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		drop_reservations(level);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (held_count() > 0)
		{
			HASH_SEQ_STATUS st;
			HeldJob    *h;

			hash_seq_init(&st, held_jobs);
			while ((h = hash_seq_search(&st)) != NULL)
			{
				if (!h->committed && h->level >= level)
					h->level = level - 1;
				if (h->released >= level)
					h->released = level - 1;
			}
		}
		if (own_reservations == own_committed)
			return;
		LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
		for (int i = 0; i < reservations->high; i++)
		{
			Reservation *r = &reservations->entries[i];

			if (r->pid == MyProcPid && !r->committed && r->level >= level)
				r->level = level - 1;
		}
		LWLockRelease(reservations->lock);
	}
}

/*
 * copy_inflight
 *		Copy the reservations of other sessions' claims of queue (hash qh)
 *		into this backend's memory; under the queue's limit lock.
 */
static void
copy_inflight(uint32 qh)
{
	ninflight = 0;
	if (reservations == NULL)
		return;
	if (inflight_keys == NULL)
	{
		inflight_keys = MemoryContextAlloc(TopMemoryContext, sizeof(uint64) * RESERVATIONS);
		inflight_n = MemoryContextAlloc(TopMemoryContext, sizeof(int32) * RESERVATIONS);
		inflight_xid = MemoryContextAlloc(TopMemoryContext, sizeof(TransactionId) * RESERVATIONS);
	}
	LWLockAcquire(reservations->lock, LW_SHARED);
	for (int e = 0; e < reservations->high; e++)
	{
		Reservation *r = &reservations->entries[e];

		if (r->pid == 0 || r->pid == MyProcPid || r->dboid != MyDatabaseId ||
			r->queue != qh)
			continue;
		inflight_keys[ninflight] = r->key;
		inflight_xid[ninflight] = r->xid;
		inflight_n[ninflight++] = r->n;
	}
	LWLockRelease(reservations->lock);
}

/*
 * atomizer_limits_snapshot
 *		The snapshot the claim reads the running jobs and the rate window
 *		with, taken after the reservations were copied (and after this
 *		transaction's own last writes), registered: release it with
 *		UnregisterSnapshot.
 */
Snapshot
atomizer_limits_snapshot(void)
{
	CommandCounterIncrement();
	return RegisterSnapshot(GetLatestSnapshot());
}

/*
 * atomizer_limits_reserved
 *		Add to counts[i] what claims of other sessions in flight took of
 *		keys[i] (nkeys of them, partitions or handlers as kind says) in the
 *		queue whose limit lock this backend holds: those of the copy taken with the
 *		lock whose transaction snap does not see committed (the others are
 *		in the tables snap reads, or rolled back), so none is counted twice.
 */
void
atomizer_limits_reserved(AtomizerLimitKind kind, char **keys, int nkeys,
						 int64 *counts, Snapshot snap)
{
	if (kind == ATOMIZER_LIMIT_HANDLER && claim_trusted)
		return;					/* the holds counted them */
	for (int i = 0; i < nkeys && ninflight > 0; i++)
	{
		uint64		h = key_hash(kind, keys[i]);

		for (int e = 0; e < ninflight; e++)
			if (inflight_keys[e] == h && XidInMVCCSnapshot(inflight_xid[e], snap))
				counts[i] += inflight_n[e];
	}
}

/*
 * floor_div
 *		a / b rounded down (b > 0).
 */
static inline int64
floor_div(int64 a, int64 b)
{
	return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/*
 * find_bound
 *		The bound of partition key (hashed) of queue, or NULL; with
 *		create, a free or idle slot made into an empty one (or NULL if there
 *		is none).  Under reservations->lock, exclusive with create.
 */
static RateBound *
find_bound(const char *queue, uint64 key, bool create, TimestampTz now)
{
	RateBound  *spare = NULL;

	for (int i = 0; i < RATE_BOUNDS; i++)
	{
		RateBound  *b = &reservations->bounds[i];

		if (b->dboid == MyDatabaseId && b->key == key &&
			strcmp(b->queue, queue) == 0)
			return b;
		if (spare == NULL &&
			(b->dboid == InvalidOid ||
			 now - b->last > (int64) RATE_BUCKETS * b->width || now < b->last))
			spare = b;			/* free, or nothing in any window of it */
	}
	if (!create || spare == NULL)
		return NULL;
	memset(spare, 0, sizeof(RateBound));
	spare->dboid = MyDatabaseId;
	strlcpy(spare->queue, queue, NAMEDATALEN);
	spare->key = key;
	return spare;
}

/*
 * atomizer_limits_rate_bound
 *		An upper bound of the starts in partition part's window of queue q
 *		that ends at now (started_at > window_start), counting claims in
 *		flight, into *bound; false if there is none to be had (no shared
 *		memory, no bound kept for the partition yet, or one made for
 *		another rate_period, or the clock went back).  Under the queue's
 *		limit lock.
 */
bool
atomizer_limits_rate_bound(const AtomizerQueue *q, TimestampTz now,
						   TimestampTz window_start, const char *part,
						   int64 *bound)
{
	RateBound  *b;
	bool		ok = false;

	if (reservations == NULL || !holding)
		return false;
	LWLockAcquire(reservations->lock, LW_SHARED);
	b = find_bound(q->name, key_hash(ATOMIZER_LIMIT_RATE, part), false, now);
	if (b != NULL && b->width > 0 &&
		memcmp(&b->period, &q->rate_period, sizeof(Interval)) == 0 &&
		now >= reservations->latest_start && now >= b->last)
	{
		int64		lo = floor_div(window_start, b->width);
		int64		hi = floor_div(now, b->width);

		/* the buckets must hold the whole window */
		if (hi - lo < RATE_BUCKETS)
		{
			*bound = 0;
			for (int i = 0; i < RATE_BUCKETS; i++)
				if (b->bucket_no[i] >= lo)
					*bound += b->count[i];
			ok = true;
		}
	}
	LWLockRelease(reservations->lock);
	return ok;
}

/*
 * atomizer_limits_rate_note
 *		Add what this claim started at now (started[i] jobs of partition
 *		parts[i], nparts) to the bounds, under the queue's limit lock,
 *		before the lock goes.  A partition whose window was read exactly
 *		(exact[i] >= 0: the starts in it, in flight ones too; seedable[i]:
 *		none of them later than now) gets its bound made again from that
 *		count, the tightest bound there is.
 */
void
atomizer_limits_rate_note(const AtomizerQueue *q, TimestampTz now,
						  TimestampTz window_start, char **parts,
						  const int64 *exact, const bool *seedable,
						  const int *started, int nparts)
{
	int64		width;

	if (reservations == NULL || !holding)
		return;
	width = Max((now - window_start) / (RATE_BUCKETS - 2), 1);
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	if (now > reservations->latest_start)
		reservations->latest_start = now;
	for (int i = 0; i < nparts; i++)
	{
		uint64		key = key_hash(ATOMIZER_LIMIT_RATE, parts[i]);
		bool		reseed = exact[i] >= 0 && seedable[i] &&
			now >= reservations->latest_start;
		RateBound  *b = find_bound(q->name, key, reseed, now);
		int64		no;
		int			slot;

		if (b == NULL)
			continue;
		if (reseed)
		{
			/* everything in the window so far, as if started now */
			memset(b->bucket_no, 0, sizeof(b->bucket_no));
			memset(b->count, 0, sizeof(b->count));
			b->period = q->rate_period;
			b->width = width;
			b->last = now;
			no = floor_div(now, width);
			slot = (int) (no - floor_div(no, RATE_BUCKETS) * RATE_BUCKETS);
			b->bucket_no[slot] = no;
			b->count[slot] = exact[i];
		}
		else if (b->width == 0 || now < b->last ||
				 memcmp(&b->period, &q->rate_period, sizeof(Interval)) != 0)
		{
			/* not a bound any more: made again at the next exact read */
			b->dboid = InvalidOid;
			continue;
		}
		if (started[i] == 0)
			continue;
		no = floor_div(now, b->width);
		slot = (int) (no - floor_div(no, RATE_BUCKETS) * RATE_BUCKETS);
		if (b->bucket_no[slot] != no)
		{
			b->bucket_no[slot] = no;
			b->count[slot] = 0;
		}
		b->count[slot] += started[i];
		b->last = now;
	}
	LWLockRelease(reservations->lock);
}

/*
 * atomizer_limits_reserve_and_unlock
 *		Record what this claim took (n[i] of keys[i], kinds[i]; nkeys) as
 *		reservations until its transaction ends, and let the queue's limit
 *		lock go.  Without room for them (or shared memory), or when the
 *		claim held jobs back or put them off (keep: a queue at its limit;
 *		the promised times it wrote are rows the next claim would wait
 *		for), the lock is kept to the end of the transaction instead.
 */
void
atomizer_limits_reserve_and_unlock(const char *queue, const AtomizerLimitKind *kinds,
								   char **keys, const int *n, int nkeys, bool keep)
{
	uint32		qh = queue_hash(queue);
	int			level = GetCurrentTransactionNestLevel();
	TransactionId xid;
	int			need = 0;
	int			done = 0;

	if (!holding || keep || reservations == NULL)
		return;					/* keep the lock */
	xid = GetTopTransactionId();
	for (int i = 0; i < nkeys; i++)
		if (n[i] > 0)
			need++;
	LWLockAcquire(reservations->lock, LW_EXCLUSIVE);
	{
		int			free_slots = RESERVATIONS - reservations->high;

		for (int e = 0; e < reservations->high; e++)
			if (reservations->entries[e].pid == 0)
				free_slots++;
		if (free_slots < need)
		{
			LWLockRelease(reservations->lock);
			return;				/* keep the lock */
		}
	}
	for (int e = 0; done < nkeys && e < RESERVATIONS; e++)
	{
		Reservation *r = &reservations->entries[e];

		if (r->pid != 0)
			continue;
		while (done < nkeys && n[done] == 0)
			done++;
		if (done == nkeys)
			break;
		r->pid = MyProcPid;
		r->level = level;
		r->dboid = MyDatabaseId;
		r->queue = qh;
		r->key = key_hash(kinds[done], keys[done]);
		r->n = n[done];
		r->xid = xid;
		r->hold = false;
		r->committed = false;
		if (e >= reservations->high)
			reservations->high = e + 1;
		own_reservations++;
		done++;
	}
	LWLockRelease(reservations->lock);
	(void) LockRelease(&held_tag, ExclusiveLock, false);
	holding = false;
}

/*
 * atomizer_limits_lock
 *		Take queue's limit lock (to the end of the transaction, unless
 *		atomizer_limits_reserve_and_unlock lets it go sooner).  Refuses a
 *		transaction whose snapshot would hide other claims' commits.
 *
 *		A transaction that has written already does not wait for the lock:
 *		false when another claim holds it.  The holder's claim may have to
 *		wait for rows that transaction changed (PostgreSQL's SKIP LOCKED
 *		still waits for a row's newer version when the claim that made it
 *		commits in the middle of the lock attempt), and a wait the other
 *		way round would be a deadlock.
 */
bool
atomizer_limits_lock(const char *queue)
{
	LOCKTAG		tag;
	uint32		h = queue_hash(queue);

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot claim jobs of queue \"%s\" in a %s transaction",
						queue, IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errdetail("The queue has a rate limit or a handler limit, and a claim must see every other claim's commit to keep it."),
				 errhint("Claim in a READ COMMITTED transaction.")));
	if (!callbacks_registered)
	{
		RegisterXactCallback(limits_xact_callback, NULL);
		RegisterSubXactCallback(limits_subxact_callback, NULL);
		callbacks_registered = true;
	}
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, h, (uint32) strlen(queue),
						 LIMIT_LOCK_SPACE);
	if (!TransactionIdIsValid(GetTopTransactionIdIfAny()))
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
	else
	{
		/*
		 * No waiting in the lock manager; but a claim holds the lock for a
		 * fraction of a millisecond, so look again a few times first
		 * (atomizer's workers claim the next batch at the end of the
		 * batch's transaction, and an empty claim would cost them a
		 * transaction of its own).
		 */
		int			tries = 0;

		while (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		{
			if (++tries > LIMIT_LOCK_TRIES)
				return false;
			CHECK_FOR_INTERRUPTS();
			pg_usleep(LIMIT_LOCK_NAP_US);
		}
	}
	held_tag = tag;
	holding = true;
	copy_inflight(h);
	return true;
}

/*
 * How many jobs of handler h of queue q are running, counted in the table:
 * an internal queue's, which have no lease (without an index: this count
 * is only made while the holds are not whole, see "Holds"), an external
 * queue's under a lease (job_lease_idx).
 */
#define HANDLER_RUNNING_LEASED(q, h) \
	"(SELECT count(*) FROM atomizer.job j" \
	"  WHERE j.queue = " q " AND j.handler = " h \
	"  AND j.state = 'running' AND j.lease_until IS NOT NULL)"

/*
 * count_running_rows
 *		Into running[h], the running jobs of handlers[h] (nh) of internal
 *		queue (whoever claimed them), visible to snap
 *		(InvalidSnapshot: the current one).  Connected to SPI.
 */
static void
count_running_rows(const char *queue, Snapshot snap, char **handlers, int nh,
			 int64 *running)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(queue);

	atomizer_prepare_opts(&plan,
						  "SELECT j.handler, count(*)::int8 FROM atomizer.job j"
						  " WHERE j.queue = $1 AND j.state = 'running'"
						  " AND j.lease_until IS NULL GROUP BY j.handler",
						  1, types, CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_snapshot(plan, &arg, NULL, snap, InvalidSnapshot, true,
							 false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not count the running jobs of queue \"%s\"", queue);
	for (int h = 0; h < nh; h++)
		running[h] = 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		char	   *handler = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
		bool		isnull;

		for (int h = 0; h < nh; h++)
			if (handler != NULL && strcmp(handlers[h], handler) == 0)
				running[h] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc,
														 2, &isnull));
	}
}

/*
 * atomizer_limits_held_with_room
 *		Whether queue has jobs a handler limit held back whose handler has
 *		room again (a job of it stopped running).  Connected to SPI.
 */
#define HELD_HANDLERS \
	"SELECT l.handler, l.concurrency FROM atomizer.handler_limit l" \
	" WHERE l.queue = $1" \
	" AND EXISTS (SELECT 1 FROM atomizer.job j WHERE j.queue = $1" \
	"  AND j.handler = l.handler AND j.parked = 'held')"
#define HELD_WITH_ROOM_LEASED \
	HELD_HANDLERS " AND l.concurrency > " HANDLER_RUNNING_LEASED("l.queue", "l.handler") \
	" LIMIT 1"

bool
atomizer_limits_held_with_room(const char *queue, bool external)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	static const char *const queries[2] = {HELD_HANDLERS, HELD_WITH_ROOM_LEASED};
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(queue);
	SPIPlanPtr	plan;
	int			n;
	char	  **handlers;
	int64	   *running;
	bool		trusted = false;
	bool		room = false;

	plan = atomizer_prepare_opts(&plans[external], queries[external], 1, types,
								 CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_plan(plan, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look at queue \"%s\"", queue);
	if (external || SPI_processed == 0)
		return SPI_processed > 0;

	/* an internal queue's limited handlers with held jobs: count them */
	n = (int) SPI_processed;
	handlers = palloc(sizeof(char *) * n);
	running = palloc0(sizeof(int64) * n);
	{
		SPITupleTable *tt = SPI_tuptable;
		int		   *conc = palloc(sizeof(int) * n);

		for (int h = 0; h < n; h++)
		{
			bool		isnull;

			handlers[h] = SPI_getvalue(tt->vals[h], tt->tupdesc, 1);
			conc[h] = DatumGetInt32(SPI_getbinval(tt->vals[h], tt->tupdesc, 2, &isnull));
		}
		if (reservations != NULL)
		{
			LWLockAcquire(reservations->lock, LW_SHARED);
			trusted = trusted_locked();
			if (trusted)
				sum_holds(queue_hash(queue), handlers, n, running);
			LWLockRelease(reservations->lock);
		}
		if (!trusted)
			count_running_rows(queue, InvalidSnapshot, handlers, n, running);
		for (int h = 0; h < n; h++)
			if (running[h] < conc[h])
				room = true;
	}
	return room;
}

/*
 * atomizer_limits_handlers
 *		The handler limits of queue: their handlers, how many more of each
 *		may start now (concurrency less running, at least 0), and whether
 *		each has jobs held back.  Returns
 *		the number of limited handlers; *handlers and *room palloc'd in the
 *		current memory context.  Connected to SPI, as the owner.  Under the
 *		queue's limit lock; for an internal queue it also reserves the
 *		entries of the claim's holds (atomizer_limits_fill_holds fills them).
 */
#define HANDLER_ROOM_LEASED \
	"SELECT l.handler, greatest(l.concurrency - " HANDLER_RUNNING_LEASED("l.queue", "l.handler") \
	", 0)::int4," \
	" EXISTS (SELECT 1 FROM atomizer.job j WHERE j.queue = l.queue" \
	"  AND j.handler = l.handler AND j.parked = 'held')" \
	" FROM atomizer.handler_limit l WHERE l.queue = $1" \
	" ORDER BY l.handler"
#define HANDLER_LIST \
	"SELECT l.handler, l.concurrency," \
	" EXISTS (SELECT 1 FROM atomizer.job j WHERE j.queue = l.queue" \
	"  AND j.handler = l.handler AND j.parked = 'held')" \
	" FROM atomizer.handler_limit l WHERE l.queue = $1" \
	" ORDER BY l.handler"

/*
 * text_keys
 *		Scan keys for the first nkeys columns of index idx equal to the
 *		texts vals[] (heap attribute numbers, as systable_beginscan wants
 *		them; the index's own collations).
 */
static void
text_keys(Relation idx, const char *const *vals, int nkeys, ScanKeyData *keys)
{
	for (int k = 0; k < nkeys; k++)
		ScanKeyEntryInitialize(&keys[k], 0, idx->rd_index->indkey.values[k],
							   BTEqualStrategyNumber, InvalidOid,
							   idx->rd_indcollation[k], F_TEXTEQ,
							   CStringGetTextDatum(vals[k]));
}

/* A text column of a heap tuple as a C string, or NULL. */
static char *
text_attr(HeapTuple tup, TupleDesc desc, AttrNumber attno)
{
	bool		isnull;
	Datum		d = heap_getattr(tup, attno, desc, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * any_held
 *		Whether the index scan of job_held_idx finds a job of handler of
 *		queue visible to snap that is held.
 */
static bool
any_held(Relation job, Relation idx, Snapshot snap, const char *queue,
		 const char *handler)
{
	const char *vals[2] = {queue, handler};
	ScanKeyData keys[2];
	TupleDesc	desc = RelationGetDescr(job);
	AttrNumber	state_att = attnum_of(desc, "state");
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	text_keys(idx, vals, 2, keys);
	scan = systable_beginscan(job, RelationGetRelid(idx), true, snap, 2, keys);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		char	   *st = text_attr(tup, desc, state_att);

		/* the index's predicate, checked again on the row seen */
		found = st != NULL && strcmp(st, "held") == 0;
	}
	systable_endscan(scan);
	return found;
}

/*
 * handlers_by_scan
 *		The handler limits of an internal queue without the executor: the
 *		queue's rows of atomizer.handler_limit (its primary key), with each
 *		handler's concurrency in *conc and whether it has held jobs
 *		(job_held_idx), read with index scans under snap.  False (nothing
 *		done) if one of these is missing.
 */
static bool
handlers_by_scan(const char *queue, Snapshot snap, int *nout, char ***handlers,
				 int **conc, bool **held)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			ns = get_namespace_oid(ATOMIZER_SCHEMA, true);
	Oid			limit_relid,
				limit_pkey,
				job_relid,
				held_idx;
	Relation	limit_rel,
				job_rel,
				idx_pkey,
				idx_held;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	int			n = 0;
	int			cap = 8;

	if (!OidIsValid(ns) ||
		!OidIsValid(limit_relid = get_relname_relid("handler_limit", ns)) ||
		!OidIsValid(limit_pkey = get_relname_relid("handler_limit_pkey", ns)) ||
		!OidIsValid(job_relid = get_relname_relid("job", ns)) ||
		!OidIsValid(held_idx = get_relname_relid("job_held_idx", ns)))
		return false;

	limit_rel = table_open(limit_relid, AccessShareLock);
	job_rel = table_open(job_relid, AccessShareLock);
	idx_pkey = index_open(limit_pkey, AccessShareLock);
	idx_held = index_open(held_idx, AccessShareLock);

	*handlers = MemoryContextAlloc(cxt, sizeof(char *) * cap);
	*conc = MemoryContextAlloc(cxt, sizeof(int) * cap);
	*held = MemoryContextAlloc(cxt, sizeof(bool) * cap);
	text_keys(idx_pkey, &queue, 1, &key);
	scan = systable_beginscan(limit_rel, limit_pkey, true, snap, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(limit_rel);
		bool		isnull;
		char	   *handler = text_attr(tup, desc, attnum_of(desc, "handler"));
		int			concurrency = DatumGetInt32(heap_getattr(tup, attnum_of(desc, "concurrency"),
															 desc, &isnull));

		CHECK_FOR_INTERRUPTS();
		if (handler == NULL || isnull)
			continue;
		if (n == cap)
		{
			cap *= 2;
			*handlers = repalloc(*handlers, sizeof(char *) * cap);
			*conc = repalloc(*conc, sizeof(int) * cap);
			*held = repalloc(*held, sizeof(bool) * cap);
		}
		(*handlers)[n] = MemoryContextStrdup(cxt, handler);
		(*conc)[n] = concurrency;
		(*held)[n] = any_held(job_rel, idx_held, snap, queue, handler);
		n++;
	}
	systable_endscan(scan);

	index_close(idx_held, NoLock);
	index_close(idx_pkey, NoLock);
	table_close(job_rel, NoLock);
	table_close(limit_rel, NoLock);
	*nout = n;
	return true;
}

/*
 * read_limits
 *		Run one of the statements above for queue with snap and copy its
 *		rows (handler, an int4, a bool) into the current memory context.
 */
static int
read_limits(SPIPlanPtr *plan, const char *query, const char *queue, Snapshot snap,
			char ***handlers, int **ints, bool **held)
{
	Oid			types[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(queue);
	MemoryContext cxt = CurrentMemoryContext;
	int			n;

	atomizer_prepare_opts(plan, query, 1, types, CURSOR_OPT_GENERIC_PLAN);
	if (SPI_execute_snapshot(*plan, &arg, NULL, snap, InvalidSnapshot, false,
							 false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the handler limits of queue \"%s\"", queue);
	n = (int) SPI_processed;
	*handlers = MemoryContextAlloc(cxt, sizeof(char *) * Max(n, 1));
	*ints = MemoryContextAlloc(cxt, sizeof(int) * Max(n, 1));
	*held = MemoryContextAlloc(cxt, sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;

		(*handlers)[i] = MemoryContextStrdup(cxt, SPI_getvalue(tup, SPI_tuptable->tupdesc, 1));
		(*ints)[i] = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		(*held)[i] = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
	}
	return n;
}

int
atomizer_limits_handlers(const char *queue, bool external, Snapshot snap,
						 char ***handlers, int **room, bool **held)
{
	static SPIPlanPtr plans[2] = {NULL, NULL};
	int			n;
	int64	   *running;
	int			holds;

	claim_trusted = false;
	if (external)
		return read_limits(&plans[1], HANDLER_ROOM_LEASED, queue, snap,
						   handlers, room, held);

	/* an internal queue: concurrency less the holds, or the running rows */
	if (!handlers_by_scan(queue, snap, &n, handlers, room, held))
		n = read_limits(&plans[0], HANDLER_LIST, queue, snap, handlers, room, held);
	if (n == 0)
		return 0;
	running = palloc0(sizeof(int64) * n);
	holds = take_holds(queue, *handlers, n, running);
	if (holds == 0)
		count_running_rows(queue, snap, *handlers, n, running);
	claim_trusted = holds > 0;
	for (int h = 0; h < n; h++)
		(*room)[h] = holds < 0 ? 0 : (int) Max((*room)[h] - running[h], 0);
	return n;
}

/*
 * window_start
 *		The start of the rate window that ends at now: now - rate_period.
 */
TimestampTz
atomizer_limits_window_start(const AtomizerQueue *q, TimestampTz now)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
												   TimestampTzGetDatum(now),
												   IntervalPGetDatum(&q->rate_period)));
}

/*
 * atomizer_limits_rate_used
 *		For each of the nparts partitions parts[] of queue q: add the starts
 *		in the window that ends at now to used[], and say when the window frees room
 *		(free_at[]: the oldest start in it plus rate_period, or now plus
 *		rate_period when the window is empty).  Connected to SPI, as the owner.
 */
void
atomizer_limits_rate_used(const AtomizerQueue *q, Snapshot snap, TimestampTz now,
						  char **parts, int nparts, int64 *used,
						  TimestampTz *free_at, bool *seedable)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[4];
	Datum	   *elems = palloc(sizeof(Datum) * Max(nparts, 1));

	/* an empty window is full, if at all, of this claim's starts */
	TimestampTz after_now = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
																	TimestampTzGetDatum(now),
																	IntervalPGetDatum(&q->rate_period)));

	for (int i = 0; i < nparts; i++)
	{
		elems[i] = CStringGetTextDatum(parts[i]);
		free_at[i] = after_now;
		seedable[i] = true;
	}
	atomizer_prepare_opts(&plan,
					 ATOMIZER_INDEXED "SELECT part, sum(n)::int8, min(started_at), max(started_at) <= $4"
					 " FROM atomizer.rate_start"
					 " WHERE queue = $1 AND part = ANY($2) AND started_at > $3"
					 " GROUP BY part", 4, types,
						  CURSOR_OPT_GENERIC_PLAN);
	values[0] = CStringGetTextDatum(q->name);
	values[1] = PointerGetDatum(construct_array(elems, nparts, TEXTOID, -1,
												false, TYPALIGN_INT));
	values[2] = TimestampTzGetDatum(atomizer_limits_window_start(q, now));
	values[3] = TimestampTzGetDatum(now);
	if (SPI_execute_snapshot(plan, values, NULL, snap, InvalidSnapshot, false,
							 false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the rate window of queue \"%s\"", q->name);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *part = SPI_getvalue(tup, desc, 1);
		bool		isnull;

		for (int i = 0; i < nparts; i++)
		{
			if (strcmp(parts[i], part) != 0)
				continue;
			used[i] += DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			free_at[i] = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
																 SPI_getbinval(tup, desc, 3, &isnull),
																 IntervalPGetDatum(&q->rate_period)));
			seedable[i] = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
			break;
		}
	}
}

/*
 * rate_spacing_us
 *		rate_period / rate_limit in microseconds (months as 30 days): the
 *		time between two put-off jobs of a partition.
 */
static int64
rate_spacing_us(const AtomizerQueue *q)
{
	double		us = (double) q->rate_period.time +
		(double) q->rate_period.day * USECS_PER_DAY +
		(double) q->rate_period.month * DAYS_PER_MONTH * USECS_PER_DAY;

	return (int64) Max(us / q->rate_limit, 1.0);
}

/*
 * atomizer_limits_put_off
 *		Times for the jobs a rate limit holds back, npartsoff[i] of them in
 *		partition parts[i] (nparts partitions), in claim order: each after
 *		the last time promised to its partition, and not before the window
 *		frees room (free_at[i]), spaced rate_period / rate_limit apart.
 *		Fills when[] (one per job, partition after partition, in the order
 *		of parts[]) and records the last promise.  Connected to SPI, as the
 *		owner, under the queue's limit lock.
 */
void
atomizer_limits_put_off(const AtomizerQueue *q, TimestampTz now,
						char **parts, const int *noff,
						const TimestampTz *free_at, int nparts,
						TimestampTz *when)
{
	static SPIPlanPtr read_plan = NULL;
	static SPIPlanPtr write_plan = NULL;
	Oid			rtypes[2] = {TEXTOID, TEXTARRAYOID};
	Oid			wtypes[3] = {TEXTOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[3];
	Datum	   *names = palloc(sizeof(Datum) * Max(nparts, 1));
	Datum	   *lasts = palloc(sizeof(Datum) * Max(nparts, 1));
	TimestampTz *promised = palloc(sizeof(TimestampTz) * Max(nparts, 1));
	int64		spacing = rate_spacing_us(q);
	int			k = 0;
	int			nwrite = 0;

	for (int i = 0; i < nparts; i++)
	{
		names[i] = CStringGetTextDatum(parts[i]);
		promised[i] = DT_NOBEGIN;
	}
	atomizer_prepare_opts(&read_plan,
					 "SELECT part, reserved_until FROM atomizer.rate_reserve"
					 " WHERE queue = $1 AND part = ANY($2)", 2, rtypes,
						  CURSOR_OPT_GENERIC_PLAN);
	values[0] = CStringGetTextDatum(q->name);
	values[1] = PointerGetDatum(construct_array(names, nparts, TEXTOID, -1,
												false, TYPALIGN_INT));
	if (SPI_execute_plan(read_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the rate reservations of queue \"%s\"", q->name);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		char	   *part = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
		bool		isnull;

		for (int i = 0; i < nparts; i++)
			if (strcmp(parts[i], part) == 0)
				promised[i] = DatumGetTimestampTz(SPI_getbinval(tup, SPI_tuptable->tupdesc,
																2, &isnull));
	}

	for (int i = 0; i < nparts; i++)
	{
		TimestampTz t = Max(free_at[i], now);

		if (noff[i] == 0)
			continue;
		for (int j = 0; j < noff[i]; j++)
		{
			if (promised[i] != DT_NOBEGIN && promised[i] + spacing > t)
				t = promised[i] + spacing;
			when[k++] = t;
			promised[i] = t;
		}
		names[nwrite] = CStringGetTextDatum(parts[i]);
		lasts[nwrite] = TimestampTzGetDatum(promised[i]);
		nwrite++;
	}
	if (nwrite == 0)
		return;
	atomizer_prepare_opts(&write_plan,
					 "INSERT INTO atomizer.rate_reserve (queue, part, reserved_until)"
					 " SELECT $1, p, t FROM unnest($2::text[], $3::timestamptz[]) u(p, t)"
					 " ON CONFLICT (queue, part) DO UPDATE"
					 " SET reserved_until = excluded.reserved_until", 3, wtypes,
						  CURSOR_OPT_GENERIC_PLAN);
	values[1] = PointerGetDatum(construct_array(names, nwrite, TEXTOID, -1,
												false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(lasts, nwrite, TIMESTAMPTZOID, 8,
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_plan(write_plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the rate reservations of queue \"%s\"", q->name);
}

/*
 * atomizer_limits_record_starts
 *		Record that a claim at now started counts[i] jobs of partition
 *		parts[i].  Connected to SPI, as the owner, under the limit lock.
 */
void
atomizer_limits_record_starts(const AtomizerQueue *q, TimestampTz now,
							  char **parts, const int *counts, int nparts)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID, INT4ARRAYOID};
	Datum		values[4];
	Datum	   *names = palloc(sizeof(Datum) * Max(nparts, 1));
	Datum	   *ns = palloc(sizeof(Datum) * Max(nparts, 1));
	int			m = 0;

	for (int i = 0; i < nparts; i++)
	{
		if (counts[i] == 0)
			continue;
		names[m] = CStringGetTextDatum(parts[i]);
		ns[m] = Int32GetDatum(counts[i]);
		m++;
	}
	if (m == 0)
		return;
	atomizer_prepare_opts(&plan,
					 "INSERT INTO atomizer.rate_start (queue, part, started_at, n)"
					 " SELECT $1, p, $3, n FROM unnest($2::text[], $4::int4[]) u(p, n)",
					 4, types,
						  CURSOR_OPT_GENERIC_PLAN);
	values[0] = CStringGetTextDatum(q->name);
	values[1] = PointerGetDatum(construct_array(names, m, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[2] = TimestampTzGetDatum(now);
	values[3] = PointerGetDatum(construct_array(ns, m, INT4OID, 4, true,
												TYPALIGN_INT));
	if (SPI_execute_plan(plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record the starts of queue \"%s\"", q->name);
}

/*
 * atomizer_limits_prune
 *		Delete the starts that left their window, and the promises that are
 *		past, of every queue (and all of them of queues without a rate
 *		limit).  For the scheduler's pruning, in a transaction.  Returns the
 *		rows deleted (0 with 0.1.0's tables, which have no rate windows).
 */
int64
atomizer_limits_prune(void)
{
	Oid			ns = get_namespace_oid("atomizer", true);
	AtomizerPrivState priv;
	int64		n = 0;

	if (!OidIsValid(ns) || !OidIsValid(get_relname_relid("rate_start", ns)))
		return 0;
	atomizer_become_owner(&priv);
	SPI_connect();

	if (SPI_execute("DELETE FROM atomizer.rate_start r"
					" WHERE NOT EXISTS (SELECT 1 FROM atomizer.queue q"
					"  WHERE q.name = r.queue AND q.rate_limit IS NOT NULL"
					"  AND r.started_at > clock_timestamp() - q.rate_period)",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the rate windows");
	n += SPI_processed;
	if (SPI_execute("DELETE FROM atomizer.rate_reserve r"
					" WHERE r.reserved_until < clock_timestamp()"
					" OR NOT EXISTS (SELECT 1 FROM atomizer.queue q"
					"  WHERE q.name = r.queue AND q.rate_limit IS NOT NULL)",
					false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune the rate reservations");
	n += SPI_processed;
	SPI_finish();
	atomizer_restore_caller(&priv);
	return n;
}

/*
 * atomizer._release_held(queue text, handler text) RETURNS bigint
 *		For _limit_handler(), run as the extension's owner (EXECUTE is not
 *		granted to anyone else).
 */
Datum
atomizer_release_held(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_INT64(0);
	PG_RETURN_INT64(atomizer_store_release_held(text_to_cstring(PG_GETARG_TEXT_PP(0)),
												PG_ARGISNULL(1) ? NULL :
												text_to_cstring(PG_GETARG_TEXT_PP(1))));
}
