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
 *	    the last key it claimed, but no higher than the key of any lowering
 *	    since the claim began, which its snapshot may not have seen: each
 *	    slot has a generation that every lowering bumps, read with the
 *	    floor before the claim's snapshot is taken, and remembers the keys
 *	    of its last ATOMIZER_FLOOR_LOG lowerings.  (Refusing any advance
 *	    after any lowering would keep the floor where it is for as long as
 *	    jobs are enqueued while claims take longer than the enqueues' pace:
 *	    stuck at the front of a queue whose dead entries a held snapshot
 *	    keeps, every claim would walk all of them.)
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
 *	    from the front of the queue, at most once a second per queue, one
 *	    at a time, and after a look that took long, not before twenty times
 *	    as long has passed (behind a held snapshot such a look walks every
 *	    dead entry since: its cost must stay a small share of the time).
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

/* Look from the front of the queue at most this often (ms)... */
#define FULL_SCAN_INTERVAL_MS	1000
/* ...and at most this share of the time (1 / n) */
#define FULL_SCAN_SHARE			20
/* how long a look in progress keeps others from starting one (ms) */
#define FULL_SCAN_GUARD_MS		10000

const AtomizerClaimKey atomizer_key_min = {PG_INT32_MIN, DT_NOBEGIN, PG_INT64_MIN};
static const AtomizerClaimKey key_max = {PG_INT32_MAX, DT_NOEND, PG_INT64_MAX};

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
 *		After a claim committed: raise the floor to key, or to the lowest
 *		key a lowering since gen was read allows, if lower.  If the slot has
 *		forgotten some of those lowerings, or it changed hands, leave it.
 */
void
atomizer_floor_advance(Oid dboid, const char *queue, uint64 gen,
					   const AtomizerClaimKey *key)
{
	AtomizerFloorSlot *slot;
	AtomizerClaimKey to = *key;

	if (atomizer_shared == NULL)
		return;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	if (slot->gen == gen && !slot_is(slot, dboid, queue))
	{
		/* take the slot over; the previous holder now has no floor */
		slot->dboid = dboid;
		strlcpy(slot->queue, queue, NAMEDATALEN);
		slot->key = to;
		slot->next_full = 0;
	}
	else if (slot_is(slot, dboid, queue) &&
			 slot->gen - gen < ATOMIZER_FLOOR_LOG)
	{
		for (uint64 g = gen + 1; g <= slot->gen; g++)
		{
			const AtomizerClaimKey *low = &slot->lowered[g % ATOMIZER_FLOOR_LOG];

			if (atomizer_key_cmp(low, &to) < 0)
				to = *low;
		}
		if (atomizer_key_cmp(&to, &slot->key) > 0)
			slot->key = to;
	}
	SpinLockRelease(&slot->mutex);
}

/*
 * new_generation
 *		A lowering that allows key (of no concern to the queue holding the
 *		slot: key_max); caller holds the slot's mutex.
 */
static void
new_generation(AtomizerFloorSlot *slot, const AtomizerClaimKey *key)
{
	slot->gen++;
	slot->lowered[slot->gen % ATOMIZER_FLOOR_LOG] = *key;
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
	if (key == NULL)
		key = &atomizer_key_min;
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	if (slot_is(slot, dboid, queue))
	{
		new_generation(slot, key);
		if (atomizer_key_cmp(key, &slot->key) < 0)
			slot->key = *key;
	}
	else
		new_generation(slot, &key_max);
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
		if (slot->dboid == dboid)
		{
			new_generation(slot, &atomizer_key_min);
			slot->key = atomizer_key_min;
		}
		else
			new_generation(slot, &key_max);
		SpinLockRelease(&slot->mutex);
	}
}

/*
 * atomizer_floor_recheck
 *		A look from the floor found nothing: should the caller look again
 *		from the front of the queue?  Yes if the queue has a floor above the
 *		front and the time for the next look has come; then the caller
 *		does, and calls atomizer_floor_rechecked with the time it started
 *		(until then, or for FULL_SCAN_GUARD_MS, no one else looks).
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
		now >= slot->next_full)
	{
		slot->next_full = TimestampTzPlusMilliseconds(now, FULL_SCAN_GUARD_MS);
		recheck = true;
	}
	SpinLockRelease(&slot->mutex);
	return recheck;
}

/*
 * atomizer_floor_rechecked
 *		A look from the front that began at started is over: the next one
 *		may start a second after it began, or, if it took long, once
 *		FULL_SCAN_SHARE times its length has passed since it began.
 */
void
atomizer_floor_rechecked(Oid dboid, const char *queue, TimestampTz started)
{
	AtomizerFloorSlot *slot;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next;

	if (atomizer_shared == NULL)
		return;
	next = started + Max((int64) FULL_SCAN_INTERVAL_MS * 1000,
						 (now - started) * FULL_SCAN_SHARE);
	slot = floor_slot(dboid, queue);
	SpinLockAcquire(&slot->mutex);
	if (slot_is(slot, dboid, queue))
		slot->next_full = next;
	SpinLockRelease(&slot->mutex);
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
		for (int j = 0; j < ATOMIZER_FLOOR_LOG; j++)
			atomizer_shared->floors[i].lowered[j] = atomizer_key_min;
	}
}
