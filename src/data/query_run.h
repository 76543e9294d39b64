/*
 * query_run.h - what the table query (query.c) and the document query
 * (doc_query.c) share, in query_run.c: pagination, the pipelined round
 * trip of a page and its count, the answer's wrapping.
 */
#ifndef COREDB_DATA_QUERY_RUN_H
#define COREDB_DATA_QUERY_RUN_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "coredb/principal.h"
#include "data/sqlbuild.h"
#include "security/service_state.h"

#define DEFAULT_LIMIT 20
#define USER_MAX_LIMIT 100
#define PRIVILEGED_MAX_LIMIT 1000

/* pagination {page, limit}: defaults 1 and DEFAULT_LIMIT, limit capped by role. */
/*
 * The query cache's key of a request: the caller's identity and the
 * canonical request (canon, taken; NULL gives NULL): what a cached answer
 * may be reused for. NULL when out of memory.
 */
char *cdb__query_cache_key(const cdb_principal *p, json_t *canon);
/* The same from the canonical request's text (the part of a key after its first newline). */
char *cdb__query_cache_key_of(const cdb_principal *p, const char *canon_text);

/* The first member of obj not in allowed (NULL-terminated), or NULL. */
const char *cdb__query_unknown_member(const json_t *obj, const char *const *allowed);

int cdb__query_pagination(const json_t *v, cdb_role role, json_int_t *page, json_int_t *limit,
                          cdb_error *err);
/*
 * One round trip under p's role: q (the rows, as JSON text) and count_sql
 * (binding q's first count_nparams parameters); *part gets
 * `"data":[...],"pagination":{...}` (malloc'd, *len bytes). Runs on a
 * replica when one may answer (query_run.c); lsn_seen is the query cache
 * lookup's (cdb_qcache_lookup.lsn_seen; UINT64_MAX when the answer will not
 * be stored anyway); *cacheable is false when the answer must not be
 * stored in the query cache.
 */
int cdb__query_run(cdb_service *svc, const cdb_principal *p, const cdb_sql *q, const char *count_sql,
                   int count_nparams, json_int_t page, json_int_t limit, char **part, size_t *len,
                   uint64_t lsn_seen, bool *cacheable, cdb_error *err);
/*
 * The cacheable part of an answer, `"data":[...],"pagination":{...}`
 * (malloc'd, *len bytes; NULL when out of memory), from the rows statement's
 * result (one JSON text per row) and the count's: for the worker's pipeline
 * and the event loops' (http/loop_query.c) alike.
 */
char *cdb__query_page_body(const PGresult *rows, const PGresult *count, json_int_t page, json_int_t limit,
                           size_t *len);
/* {<part>,"execution_time_ms":..,"cached":..}, malloc'd. */
char *cdb__query_wrap(const char *part, size_t len, int64_t start_us, bool cached);
/*
 * The answer's end alone (what cdb__query_wrap puts after part; the answer
 * is "{" part tail): its length, 0 when it does not fit in size. For an
 * answer sent in pieces, part by reference (http/loop_admit.c).
 */
#define CDB_QUERY_TAIL_MAX 96
size_t cdb__query_wrap_tail(char *tail, size_t size, int64_t start_us, bool cached);

#endif
