/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Every difference between the PostgreSQL server APIs atomizer builds
 *	  against (15, 16, 17 and 18), in one place.  The rest of the code is
 *	  written against the newest API; the macros and inline functions here
 *	  map it onto the older releases, behind PG_VERSION_NUM guards.
 *
 *	  Tested: 15 and 18.  Built for: 16 and 17 (their headers were read for
 *	  each guard below; the releases are not installed on the test machines).
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_COMPAT_H
#define ATOMIZER_COMPAT_H

#include "postgres.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 190000
#error "atomizer supports PostgreSQL 15, 16, 17 and 18"
#endif

#include "access/tableam.h"
#include "catalog/pg_database_d.h"
#include "catalog/pg_proc_d.h"
#include "executor/executor.h"
#include "utils/acl.h"
#include "utils/varlena.h"

/* 16 moved the varlena macros (VARSIZE_ANY, ...) out of postgres.h. */
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

/*
 * 16 folded the per-catalog ACL and ownership checks into object_aclcheck()
 * and object_ownercheck().
 */
#if PG_VERSION_NUM < 160000
#define object_aclcheck(classid, objectid, roleid, mode) \
	atomizer_compat_object_aclcheck((classid), (objectid), (roleid), (mode))
#define object_ownercheck(classid, objectid, roleid) \
	atomizer_compat_object_ownercheck((classid), (objectid), (roleid))

static inline AclResult
atomizer_compat_object_aclcheck(Oid classid, Oid objectid, Oid roleid,
								AclMode mode)
{
	Assert(classid == ProcedureRelationId);
	return pg_proc_aclcheck(objectid, roleid, mode);
}

static inline bool
atomizer_compat_object_ownercheck(Oid classid, Oid objectid, Oid roleid)
{
	Assert(classid == DatabaseRelationId);
	return pg_database_ownercheck(objectid, roleid);
}
#endif

/*
 * 16 gave stringToQualifiedNameList() a soft-error context; atomizer always
 * wants the hard error.
 */
#if PG_VERSION_NUM < 160000
#define atomizer_qualified_name_list(str) stringToQualifiedNameList(str)
#else
#define atomizer_qualified_name_list(str) stringToQualifiedNameList((str), NULL)
#endif

/*
 * The range table of a one-table executor state.  16 moved the permission
 * fields of a range table entry into RTEPermissionInfo; 18 added the set of
 * unpruned relations.  store.c checks no permissions through the executor
 * (its callers have checked them), so the list of permission infos is empty.
 */
static inline void
atomizer_init_range_table(EState *estate, RangeTblEntry *rte)
{
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, list_make1(rte), NIL,
					   bms_make_singleton(1));
#elif PG_VERSION_NUM >= 160000
	ExecInitRangeTable(estate, list_make1(rte), NIL);
#else
	ExecInitRangeTable(estate, list_make1(rte));
#endif
}

/*
 * The range table of a one-table UPDATE's executor state, with the columns
 * it sets (attribute numbers offset by FirstLowInvalidHeapAttributeNumber):
 * the executor's helpers read them to know which stored generated columns
 * to compute and which indexes the update leaves unchanged (a hint that
 * lets a B-tree delete the old versions' entries before it splits a page).
 * From 16 on they are in the entry's RTEPermissionInfo.
 */
static inline void
atomizer_init_update_range_table(EState *estate, RangeTblEntry *rte,
								 Bitmapset *updated)
{
#if PG_VERSION_NUM >= 160000
	RTEPermissionInfo *perm = makeNode(RTEPermissionInfo);

	perm->relid = rte->relid;
	perm->requiredPerms = ACL_UPDATE;
	perm->updatedCols = updated;
	rte->perminfoindex = 1;
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, list_make1(rte), list_make1(perm),
					   bms_make_singleton(1));
#else
	ExecInitRangeTable(estate, list_make1(rte), list_make1(perm));
#endif
#else
	rte->requiredPerms = ACL_UPDATE;
	rte->updatedCols = updated;
	ExecInitRangeTable(estate, list_make1(rte));
#endif
}

/*
 * What table_tuple_update() says an update's new row needs in the indexes:
 * 15 has a flag (all or none), 16 an enum that adds "only the summarizing
 * ones" (a HOT update that changed a BRIN index's column).
 */
#if PG_VERSION_NUM >= 160000
typedef TU_UpdateIndexes AtomizerUpdateIndexes;
#define atomizer_update_needs_indexes(u) ((u) != TU_None)
#define atomizer_update_index_tuples(rri, slot, estate, u) \
	ExecInsertIndexTuples((rri), (slot), (estate), true, false, NULL, NIL, \
						  (u) == TU_Summarizing)
#else
typedef bool AtomizerUpdateIndexes;
#define atomizer_update_needs_indexes(u) (u)
#define atomizer_update_index_tuples(rri, slot, estate, u) \
	ExecInsertIndexTuples((rri), (slot), (estate), true, false, NULL, NIL)
#endif

/* 18 gave index_beginscan() an instrumentation argument (NULL: none). */
#if PG_VERSION_NUM >= 180000
#define atomizer_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), 0)
#else
#define atomizer_index_beginscan(heap, index, snapshot, nkeys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), 0)
#endif

/*
 * 16 added onlySummarizing to ExecInsertIndexTuples() (HOT updates that
 * touch only summarizing indexes); a new row goes into every index.
 */
#if PG_VERSION_NUM >= 160000
#define atomizer_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define atomizer_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

#endif							/* ATOMIZER_COMPAT_H */
