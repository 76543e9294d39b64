/*
 * vec_common.c - the vector store's shared pieces (data/vectors.h): the
 * registry look-up of a vector collection and the check of a vector.
 */
#include "data/vectors.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/pg.h"
#include "store/txn.h"

static const char LOOKUP_SQL[] =
    "SELECT table_name, kind, dimensions, metric, vector_index, hnsw_m, hnsw_ef_construction,"
    " hnsw_ef_search, version, created_at::text FROM coredb.collections WHERE name = $1";

bool cdb__vec_database(const json_t *db)
{
    const char *s = json_string_value(db);
    return s && strcmp(s, "vectors") == 0;
}

int cdb__vec_collection(cdb_service *svc, const json_t *name, cdb_vec_coll *c, cdb_error *err)
{
    const char *s = json_string_value(name);
    size_t n = s ? strlen(s) : 0;
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    int rc;

    if (!s || n == 0 || n != json_string_length(name))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "collection",
                                    "collection must be a non-empty string");
    /* a name the registry cannot hold is no collection: answered without a query */
    if (n > 58 /* CDB_COLLECTION_NAME_MAX */ || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != n)
        goto unknown;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *params[] = {s};
    rc = cdb_pg_exec(conn, LOOKUP_SQL, 1, params, &res, err);
    cdb_txn_release(svc->pool, pc);
    if (rc < 0)
        goto out;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 1), "vectors") != 0) {
        PQclear(res);
        /* a dropped collection's index goes with it (management cannot call the data layer) */
        char table[64];
        snprintf(table, sizeof table, "coll_%s", s);
        cdb__vec_index_drop(svc, table);
        goto unknown;
    }
    snprintf(c->table, sizeof c->table, "%s", PQgetvalue(res, 0, 0));
    c->dimensions = atoi(PQgetvalue(res, 0, 2));
    const char *m = PQgetvalue(res, 0, 3);
    c->metric = strcmp(m, "l2") == 0 ? CDB_VEC_L2 : strcmp(m, "dot") == 0 ? CDB_VEC_DOT : CDB_VEC_COSINE;
    c->hnsw = strcmp(PQgetvalue(res, 0, 4), "hnsw") == 0;
    c->m = atoi(PQgetvalue(res, 0, 5));
    c->ef_construction = atoi(PQgetvalue(res, 0, 6));
    c->ef_search = atoi(PQgetvalue(res, 0, 7));
    c->version = strtoll(PQgetvalue(res, 0, 8), NULL, 10);
    snprintf(c->incarnation, sizeof c->incarnation, "%s", PQgetvalue(res, 0, 9));
    if (!c->hnsw)
        cdb__vec_index_drop(svc, c->table); /* one left by an hnsw collection of this name, dropped since */
out:
    PQclear(res);
    return rc;
unknown:
    return cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "collection", s, "Unknown vector collection");
}

int cdb__vec_check(const char *field, const json_t *v, int dims, float *out, cdb_error *err)
{
    size_t i;
    json_t *x;
    if (!json_is_array(v))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be an array of %d numbers", field, dims);
    if (json_array_size(v) != (size_t)dims)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s has %zu dimensions, the collection %d", field, json_array_size(v), dims);
    json_array_foreach(v, i, x) {
        double d = json_number_value(x);
        if (!json_is_number(x))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                        "%s[%zu] is not a number", field, i);
        /* jansson refuses NaN and overflowing literals; float32 is narrower than double */
        if (!isfinite(d) || fabs(d) > FLT_MAX)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                        "%s[%zu] is not a finite float32", field, i);
        if (out)
            out[i] = (float)d;
    }
    return 0;
}
