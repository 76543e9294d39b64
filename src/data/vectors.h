/*
 * vectors.h - what the vector store's search (vec_query.c) and transaction
 * operations (vec_tx.c) share (vec_common.c): the registry look-up of a
 * vector collection and the check of a vector.
 */
#ifndef COREDB_DATA_VECTORS_H
#define COREDB_DATA_VECTORS_H

#include <jansson.h>
#include <stdint.h>

#include "coredb/vectors.h"
#include "coredb/error.h"
#include "coredb/principal.h"
#include "data/sqlbuild.h"
#include "security/service_state.h"

/* The prefix of a vector collection's query-cache generation counter. */
#define CDB_VEC_GEN_PREFIX "vectors:"

typedef enum cdb_vec_metric { CDB_VEC_COSINE, CDB_VEC_L2, CDB_VEC_DOT } cdb_vec_metric;

/* The registry's row of a vector collection. */
typedef struct cdb_vec_coll {
    char table[64];
    int dimensions;
    cdb_vec_metric metric;
    bool hnsw;                         /* index "hnsw" (else "exact") */
    int m, ef_construction, ef_search; /* hnsw parameters */
    long long version;                 /* write statements so far (hnsw collections' trigger) */
    char incarnation[64];              /* created_at: tells a collection from one dropped and made again */
} cdb_vec_coll;

/* True for "vectors". */
bool cdb__vec_database(const json_t *db);

/*
 * Vector collection `name` (a JSON string) from the registry into *c.
 * UNKNOWN_TABLE naming details.collection when there is none or it is not
 * of kind vectors; VALIDATION_FAILED (field "collection") for a bad name.
 */
int cdb__vec_collection(cdb_service *svc, const json_t *name, cdb_vec_coll *c, cdb_error *err);

/*
 * Checks v (field `field`): an array of exactly dims numbers, each finite
 * in float32. out (dims floats) gets them when not NULL.
 */
int cdb__vec_check(const char *field, const json_t *v, int dims, float *out, cdb_error *err);

/*
 * The in-memory copy (vec_cache.c): an immutable snapshot of points sorted
 * by id (strcmp order), n of them, vector i at xs + i * dims, its
 * Euclidean norm at norms[i].
 */
typedef struct cdb_vec_snap {
    int refs;
    int n, dims;
    char **ids, **etags;
    float *xs;
    float *norms;
} cdb_vec_snap;

/* A snapshot with room for n points (n is set by the caller as it fills), 1 ref. */
cdb_vec_snap *cdb__vec_snap_new(int n, int dims);
void cdb__vec_snap_unref(cdb_vec_snap *s);
/* The current snapshot of (svc, table) with a ref, or NULL. */
cdb_vec_snap *cdb__vec_cache_get(const void *svc, const char *table, int dims);
/* Makes s (the cache takes its own ref) the current snapshot of (svc, table). */
void cdb__vec_cache_put(const void *svc, const char *table, cdb_vec_snap *s);
/* Drops every snapshot of svc (at its destruction). */
void cdb__vec_cache_forget(const void *svc);

/*
 * The approximate index (vec_index.c over the hnswlib shim vec_hnsw.h): one
 * per service and hnsw collection, holding every point of the collection.
 */
typedef struct cdb_vec_index cdb_vec_index;

/* The candidates of one index search, nearest first. */
typedef struct cdb_vec_cands {
    int n;
    char **ids, **etags;  /* the index's etag of each: its vector is that row version's */
    float *xs;            /* n x dims: the indexed vectors (normalized for cosine) */
    size_t live;          /* points in the index: a search of at least this many saw them all */
} cdb_vec_cands;

/*
 * The index of c (built, or brought up to date when the registry's version
 * moved: read with the service's own connection, every row), with a ref.
 * *ms_built: milliseconds spent building/updating (0 when already fresh).
 * 1 (no index) when another request is building or updating it: the
 * caller answers with the exact path instead of waiting.
 */
int cdb__vec_index_get(cdb_service *svc, const cdb_vec_coll *c, cdb_vec_index **out, double *ms_built,
                       cdb_error *err);
void cdb__vec_index_unref(cdb_vec_index *ix);
/* The kq nearest points to q (normalized for cosine by the callee) into *out (free with cdb__vec_cands_free);
 * 1 when another request is updating the index (as cdb__vec_index_get). */
int cdb__vec_index_search(cdb_vec_index *ix, const float *q, int kq, cdb_vec_cands *out, cdb_error *err);
void cdb__vec_cands_free(cdb_vec_cands *c);
/* Drops every index of svc (at its destruction). */
void cdb__vec_index_forget(const void *svc);
/* Drops the index of (svc, table) (its collection is gone). */
void cdb__vec_index_drop(const void *svc, const char *table);

/* POST /data/query with database "vectors" (vec_query.c). */
int cdb__vec_query(cdb_service *svc, const cdb_principal *p, json_t *request, int64_t start_us,
                   char **body_out, cdb_error *err);

#endif
