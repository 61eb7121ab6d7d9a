/*-------------------------------------------------------------------------
 *
 * atomizer.c
 *	  Module entry point.  _PG_init only calls each module's init function;
 *	  everything else lives in the file that owns its concern.
 *
 *	  atomizer is meant to be loaded through shared_preload_libraries (the
 *	  background workers need it), but the SQL API also works when the
 *	  library is loaded on first use, so that atomizer.run_pending() can be
 *	  used on a server that has not been restarted yet.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "atomizer.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * _PG_init
 *		Define GUCs and install the planner hook; when preloaded, request
 *		shared memory and register the launcher.
 */
void
_PG_init(void)
{
	atomizer_guc_init();
	atomizer_plans_init();

	/* shared memory and the launcher need shared_preload_libraries */
	if (!process_shared_preload_libraries_in_progress)
		return;

	/*
	 * pg_upgrade starts both servers in binary-upgrade mode: no job may run
	 * and no scheduler may connect while it moves the databases.
	 */
	if (IsBinaryUpgrade)
		return;
	atomizer_shmem_init();
	atomizer_launcher_register();
	atomizer_dropdb_init();
}
