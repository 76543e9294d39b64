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

/* POST /data/query with database "vectors" (vec_query.c). */
int cdb__vec_query(cdb_service *svc, const cdb_principal *p, json_t *request, int64_t start_us,
                   char **body_out, cdb_error *err);

#endif
