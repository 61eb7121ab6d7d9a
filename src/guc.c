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

#include "utils/guc.h"

#include "atomizer.h"

/* Jobs claimed per scan by run_pending() and the workers. */
int			atomizer_batch_size = 16;

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
							"keep it at or below 64 so that the batch's "
							"subtransactions never overflow the per-backend cache.",
							&atomizer_batch_size,
							16, 1, 1000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("atomizer");
}
