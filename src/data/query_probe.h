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
 * The answer (malloc'd; NULL on out of memory) around the cached bytes
 * found for probe (cdb_qcache_probe_hit judged the values read), counted
 * as a cache hit.
 */
char *cdb__data_query_probe_answer(const cdb__query_probe *probe, const char *value, size_t len);
void cdb__data_query_probe_destroy(cdb__query_probe *probe);

#endif
