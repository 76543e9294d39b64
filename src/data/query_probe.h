/*
 * query_probe.h - a data-API cache lookup that never blocks, for the event
 * loops (http/loop_admit.c): they read the two keys it names in their own
 * asynchronous Redis round trip and answer a hit without a worker. A miss,
 * or any request it cannot judge from memory alone, goes the blocking way
 * (cdb_data_query), which also reports every error.
 */
#ifndef COREDB_DATA_QUERY_PROBE_H
#define COREDB_DATA_QUERY_PROBE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "coredb/principal.h"
#include "core/arena.h"
#include "data/sqlbuild.h"
#include <libpq-fe.h>

typedef struct cdb_service cdb_service;

typedef struct cdb__query_probe {
    char table[128];               /* the table's name (NAMEDATALEN is 64) */
    char gen_key[256];             /* the table's generation counter */
    char *entry_key;               /* the cached answer (owned) */
    int64_t start_us;              /* for execution_time_ms */
} cdb__query_probe;

/*
 * 1 with probe's keys set (MGET them, then _answer); 0 when request is not a
 * table query the cache may answer without blocking work (caching off, a
 * snapshot or the namespace not loaded yet, encrypted columns, invalid
 * input, another database). Nothing to destroy after 0.
 */
int cdb__data_query_probe(cdb_service *svc, const cdb_principal *p, json_t *request, cdb__query_probe *probe);
/*
 * The answer around the cached bytes found for probe (cdb_qcache_probe_hit
 * judged the values read), in pieces, for sending them without a copy:
 * "{", the value, then the tail written here (its length; 0 when it does
 * not fit: size CDB_QUERY_TAIL_MAX of data/query_run.h fits), counted as a
 * cache hit.
 */
size_t cdb__data_query_probe_tail(const cdb__query_probe *probe, char *tail, size_t size);
void cdb__data_query_probe_destroy(cdb__query_probe *probe);

/*
 * A miss the event loop runs itself on its own connections (http/
 * loop_query.c, store/pg_async.h): the statements the worker would run,
 * from the same planner (query.c's plan, query_run.c's page body, the read
 * prelude of store/txn.h), so the two paths cannot drift apart.
 */
typedef struct cdb__query_loop {
    char table[128];
    cdb_sql rows;                  /* the page: text and params */
    char *count_sql;               /* the total: rows' first count_nparams params */
    int count_nparams;
    json_int_t page, limit;
    const char *prelude_sql;       /* role + settings, run first (store/txn.h) */
    const char *settings[3];       /* its params: database role, user id, role name (point into p) */
    char gen_key[256];             /* with entry_key: where the answer is stored */
    char *entry_key;               /* NULL: not stored (caching off, or no lookup possible now) */
    char *cache_key;               /* with entry_key: its flight's key (cdb_qcache_probe_lead) */
    bool borrowed;                 /* rows' text and params and count_sql are not lp's (unpacked) */
} cdb__query_loop;

/*
 * 1 with lp set when request is a table query the loop may run: valid, the
 * catalog snapshot and namespace in memory, no encrypted columns, no read
 * replicas (their choice blocks), a database role for the caller. 0
 * otherwise (nothing to destroy): the worker runs it and reports errors.
 */
int cdb__data_query_loop_plan(cdb_service *svc, const cdb_principal *p, json_t *request, cdb__query_loop *lp);
/*
 * The same for a read on a lease's connection (http/loop_lease.c): read
 * replicas configured do not refuse it, as such a read never goes to one.
 */
int cdb__data_query_loop_plan_bound(cdb_service *svc, const cdb_principal *p, json_t *request,
                                    cdb__query_loop *lp);
void cdb__data_query_loop_destroy(cdb__query_loop *lp);
/*
 * A plan's part that does not depend on the caller beyond their role (the
 * statements, their params, page, limit, table, and the canonical request
 * the cache key is made of), in one malloc'd block of *len bytes, for a
 * loop's memo keyed by the role and the request's exact bytes
 * (http/loop_query.c). catalog_version: cdb_service_catalog_version read
 * BEFORE lp was planned. NULL on out of memory.
 */
char *cdb__data_query_loop_pack(const cdb__query_loop *lp, uint64_t catalog_version, size_t *len);
/*
 * lp for the caller p from a packed plan of a caller with p's role and the
 * same request: 1, or 0 when it may not be used now (nothing to destroy):
 * the catalog snapshot swapped since it was packed, or a check the planner
 * makes per caller and per moment fails (p known with a database role, no
 * read replicas, the table without encrypted columns in the current
 * snapshot, the cache namespace loaded). The statements are copied into
 * arena (lp->borrowed), the caller's settings and cache keys made afresh.
 */
int cdb__data_query_loop_unpack(cdb_service *svc, const cdb_principal *p, cdb_arena *arena, const char *packed,
                                size_t len, cdb__query_loop *lp);
/*
 * The answer (malloc'd; NULL on out of memory) from the rows and count
 * results, `cached:false`, counted as a miss; *part and *part_len get the
 * cacheable part (malloc'd), for the store.
 */
char *cdb__data_query_loop_answer(const cdb__query_loop *lp, const PGresult *rows, const PGresult *count,
                                  int64_t start_us, char **part, size_t *part_len);

#endif
