/*-------------------------------------------------------------------------
 *
 * subxact.c
 *	  Running a piece of atomizer's own work so that its error is caught,
 *	  not thrown: atomizer_try runs a function in an internal subtransaction
 *	  and, on error, rolls back only what that function did and hands the
 *	  error to the caller.  The scheduler uses it to keep one faulty row (a
 *	  job whose outcome cannot be written, a schedule whose job cannot be
 *	  inserted) from stopping the rest of its duty, and a duty's failure
 *	  from stopping the others.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "atomizer.h"

/*
 * atomizer_try
 *		Run fn(arg) in an internal subtransaction of the current transaction.
 *		Returns NULL if it succeeded (its work stays), or a copy of its error,
 *		allocated in the caller's memory context, after rolling back its
 *		work.  The caller's SPI connection, if any, stays usable; its memory
 *		context and resource owner are restored in both cases.
 */
ErrorData *
atomizer_try(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_END_TRY();
	return edata;
}
