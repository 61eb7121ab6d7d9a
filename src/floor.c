/*-------------------------------------------------------------------------
 *
 * floor.c
 *	  The claim floor: per queue, in shared memory, a claim key (priority,
 *	  run_at, id) below which no job of the queue is waiting, so that a
 *	  claim can start its index scan there instead of at the queue's first
 *	  index entry.
 *
 *	  Why: every claimed job leaves a dead entry in the claim index at the
 *	  front of the queue.  Until VACUUM removes it (and, while any session
 *	  holds a snapshot older than the claim, it cannot), a scan from the
 *	  front walks all of them, and the cost of a claim grows with the number
 *	  of jobs run since the last vacuum.  Starting at the floor, a claim
 *	  reads only entries after the last claimed job.
 *
 *	  The rule that keeps it safe: every waiting job's key is at least the
 *	  floor, except jobs locked by a claim in progress.
 *
 *	  - A worker (or an external claim() in READ COMMITTED, from its
 *	    commit callback) advances the floor, after its claim commits, to
 *	    the last key it claimed, but only if no one lowered it meanwhile:
 *	    each slot has a generation that every lowering bumps, read with the
 *	    floor before the claim's snapshot is taken.
 *	  - Every commit that makes a job wait (enqueue, retry, release, a cron
 *	    fire) lowers the floor to that job's key, or resets it, from its
 *	    commit callback (wakeup.c), so after the procarray shows the job.
 *	  - A transaction that locked waiting jobs and aborts (a claim, a
 *	    cancel) resets its database's floors: a concurrent claim may have
 *	    skipped those jobs and advanced past them.
 *	  - A claim that crosses into a higher priority checks that the lower
 *	    priorities it passed hold no delayed job (run_at in the future),
 *	    which it skipped without claiming (see dispatch.c).
 *	  - Safety net for what no commit callback sees (rows written by hand by
 *	    the extension owner, a prepared transaction rolled back later): a
 *	    claim or due check that finds nothing from the floor looks again
 *	    from the front of the queue, at most once a second per queue.
 *
 *	  Slots are hashed by (database, queue); a queue whose slot another
 *	  queue holds simply has no floor (claims start at the front).  After a
 *	  restart every floor starts at the front.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "atomizer.h"

/* Look from the front of the queue at most this often (ms). */
#define FULL_SCAN_INTERVAL_MS	1000

const AtomizerClaimKey atomizer_key_min = {PG_INT32_MIN, DT_NOBEGIN, PG_INT64_MIN};

/*
 * atomizer_key_cmp
 *		Claim order: priority, run_at, id.
 */
int
atomizer_key_cmp(const AtomizerClaimKey *a, const AtomizerClaimKey *b)
{
	if (a->priority != b->priority)
		return a->priority < b->priority ? -1 : 1;
	if (a->run_at != b->run_at)
		return a->run_at < b->run_at ? -1 : 1;
	return (a->id > b->id) - (a->id < b->id);
}

/*
 * floor_slot
 *		The slot (database, queue) hashes to.
 */
static AtomizerFloorSlot *
floor_slot(Oid dboid, const char *queue)
{
	uint32		h = hash_bytes((const unsigned char *) queue, strlen(queue));

	h = hash_combine(h, murmurhash32((uint32) dboid));
	return &atomizer_shared->floors[h % ATOMIZER_FLOOR_SLOTS];
}

static inline bool
slot_is(AtomizerFloorSlot *slot, Oid dboid, const char *queue)
{
	return slot->dboid == dboid && strcmp(slot->queue, queue) == 0;
}

/*
 * atomizer_floor_get
 *		The queue's floor (atomizer_key_min if it has none) and the slot's
 *		generation, to be passed to atomizer_floor_advance.  Read it before
 *		the claim's snapshot is taken.
 */
uint64
atomizer_floor_get(Oid dboid, const char *queue, AtomizerClaimKey *floor)
{
	AtomizerFloorSlot *slot;
	uint64		gen;

	*floor = atomizer_key_min;
	if (atomizer_shared == NULL)
		return 0;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	gen = slot->gen;
	if (slot_is(slot, dboid, queue))
		*floor = slot->key;
	SpinLockRelease(&slot->mutex);
	return gen;
}

/*
 * atomizer_floor_advance
 *		After a claim committed: raise the floor to key, unless a lowering
 *		came in since gen was read.
 */
void
atomizer_floor_advance(Oid dboid, const char *queue, uint64 gen,
					   const AtomizerClaimKey *key)
{
	AtomizerFloorSlot *slot;

	if (atomizer_shared == NULL)
		return;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	if (slot->gen == gen)
	{
		if (!slot_is(slot, dboid, queue))
		{
			/* take the slot over; the previous holder now has no floor */
			slot->dboid = dboid;
			strlcpy(slot->queue, queue, NAMEDATALEN);
			slot->key = *key;
			slot->last_full = 0;
		}
		else if (atomizer_key_cmp(key, &slot->key) > 0)
			slot->key = *key;
	}
	SpinLockRelease(&slot->mutex);
}

/*
 * atomizer_floor_lower
 *		A job of queue with claim key key (NULL: any key) waits, committed:
 *		lower the floor to it.  Called from the commit callback.
 */
void
atomizer_floor_lower(Oid dboid, const char *queue, const AtomizerClaimKey *key)
{
	AtomizerFloorSlot *slot;

	if (atomizer_shared == NULL)
		return;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	slot->gen++;
	if (slot_is(slot, dboid, queue))
	{
		if (key == NULL)
			slot->key = atomizer_key_min;
		else if (atomizer_key_cmp(key, &slot->key) < 0)
			slot->key = *key;
	}
	SpinLockRelease(&slot->mutex);
}

/*
 * atomizer_floor_reset_db
 *		Every queue of database dboid starts from the front again.
 */
void
atomizer_floor_reset_db(Oid dboid)
{
	if (atomizer_shared == NULL)
		return;
	for (int i = 0; i < ATOMIZER_FLOOR_SLOTS; i++)
	{
		AtomizerFloorSlot *slot = &atomizer_shared->floors[i];

		SpinLockAcquire(&slot->mutex);
		slot->gen++;
		if (slot->dboid == dboid)
			slot->key = atomizer_key_min;
		SpinLockRelease(&slot->mutex);
	}
}

/*
 * atomizer_floor_recheck
 *		A look from the floor found nothing: should the caller look again
 *		from the front of the queue?  Yes if the queue has a floor above the
 *		front and no one looked from the front in the last second (then the
 *		caller does, and this notes it).
 */
bool
atomizer_floor_recheck(Oid dboid, const char *queue)
{
	AtomizerFloorSlot *slot;
	bool		recheck = false;
	TimestampTz now = GetCurrentTimestamp();

	if (atomizer_shared == NULL)
		return false;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	if (slot_is(slot, dboid, queue) &&
		atomizer_key_cmp(&slot->key, &atomizer_key_min) != 0 &&
		TimestampDifferenceExceeds(slot->last_full, now, FULL_SCAN_INTERVAL_MS))
	{
		slot->last_full = now;
		recheck = true;
	}
	SpinLockRelease(&slot->mutex);
	return recheck;
}

/*
 * atomizer_floor_init
 *		At shared memory creation.
 */
void
atomizer_floor_init(void)
{
	for (int i = 0; i < ATOMIZER_FLOOR_SLOTS; i++)
	{
		SpinLockInit(&atomizer_shared->floors[i].mutex);
		atomizer_shared->floors[i].dboid = InvalidOid;
		atomizer_shared->floors[i].key = atomizer_key_min;
	}
}
