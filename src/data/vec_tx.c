/*
 * vec_tx.c - the vector operations of POST /data/transaction
 * (coredb/vectors.h): upsert and delete of one point, each one statement
 * run in the transaction's pipeline with the other operations, as the
 * caller's role (RLS). The vector is checked here (dimension, numbers,
 * float32 range) and bound as a real[] literal; the table's CHECK on its
 * length stays the last word.
 */
#include "data/tx_internal.h"
#include "data/vectors.h"
#include "data/documents.h"

#define NEW_ETAG "md5(random()::text || clock_timestamp()::text)"
#define ROW_JSON                                                                                          \
    "json_build_object('id', r.id, 'payload', r.payload, 'etag', r.etag,"                                \
    " 'created_at', r.created_at, 'updated_at', r.updated_at)::text"

/* "{x1,x2,...}" with float32 round-trip precision, malloc'd. */
static char *array_literal(const float *x, int n)
{
    size_t cap = (size_t)n * 18 + 3, len = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    s[len++] = '{';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%.9g", i ? "," : "", (double)x[i]);
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

int cdb__vec_tx_op(tx *t, int i, json_t *o, cdb_error *err)
{
    tx_op *op = &t->ops[i];
    json_t *opname = json_object_get(o, "operation"), *id = json_object_get(o, "id");
    json_t *payload = json_object_get(o, "payload");
    const char *name = json_string_value(opname), *f;
    char *vtext = NULL, *ptext = NULL;
    float *x = NULL;
    cdb_vec_coll c;
    json_t *v;
    int rc = 0, n = 0;
    bool upsert = name && strcmp(name, "upsert") == 0;

    if (!upsert && !(name && strcmp(name, "delete") == 0))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "operation",
                       "operation must be upsert or delete for vectors");
    json_object_foreach(o, f, v) {
        bool ok = !strcmp(f, "database") || !strcmp(f, "operation") || !strcmp(f, "collection") ||
                  !strcmp(f, "id") || (upsert && (!strcmp(f, "vector") || !strcmp(f, "payload")));
        if (!ok)
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, f, "%.64s is not a field of a vector %s", f, name);
    }
    if (id ? !cdb__doc_id_valid(id) : !upsert)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "id", "id must be a string of 1 to %d bytes",
                       CDB_DOC_ID_MAX);
    if (upsert && payload && !json_is_null(payload) && (rc = cdb__doc_check("payload", payload, (size_t)t->svc->cfg->doc_max_bytes, err)) < 0)
        return op_tag(err, i, rc);
    if (upsert && !json_is_array(json_object_get(o, "vector")))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "vector", "vector must be an array of numbers");
    if ((rc = cdb__vec_collection(t->svc, json_object_get(o, "collection"), &c, err)) < 0)
        return op_tag(err, i, rc);
    op->doc = true;
    op->rows = true;
    op->kind = upsert ? OP_UPSERT : OP_DELETE;
    snprintf(op->gen, sizeof op->gen, CDB_VEC_GEN_PREFIX "%s", json_string_value(json_object_get(o, "collection")));
    const char *sid = id ? json_string_value(id) : NULL;
    if (upsert) {
        if (!(x = malloc((size_t)c.dimensions * sizeof *x)))
            return cdb_error_oom(err);
        if ((rc = cdb__vec_check("vector", json_object_get(o, "vector"), c.dimensions, x, err)) < 0) {
            rc = op_tag(err, i, rc);
            goto out;
        }
        if (!(vtext = array_literal(x, c.dimensions)) ||
            !(ptext = payload && !json_is_null(payload) ? json_dumps(payload, JSON_COMPACT) : strdup("{}"))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        /* table from the registry ([a-z0-9_] by its CHECK), quoted */
        n = asprintf(&op->sql,
                     "INSERT INTO coredb.\"%s\" AS r (id, vector, payload) VALUES"
                     " (coalesce($1::text, gen_random_uuid()::text), $2::real[], $3::jsonb)"
                     " ON CONFLICT (id) DO UPDATE SET vector = EXCLUDED.vector, payload = EXCLUDED.payload,"
                     " etag = " NEW_ETAG ", updated_at = now() RETURNING " ROW_JSON,
                     c.table);
        rc = n < 0 ? 0 : cdb__doc_op_params(op, (const char *const[]){sid, vtext, ptext}, 3, err);
    } else {
        /* coredb.doc_written (migration 015) raises CD404 when nothing of that id is visible */
        n = asprintf(&op->sql,
                     "WITH w AS (DELETE FROM coredb.\"%s\" AS r WHERE r.id = $1::text RETURNING r.*)"
                     " SELECT coredb.doc_written((SELECT count(*) FROM w), (SELECT " ROW_JSON " FROM w r))",
                     c.table);
        rc = n < 0 ? 0 : cdb__doc_op_params(op, (const char *const[]){sid}, 1, err);
    }
    if (n < 0) {
        op->sql = NULL; /* asprintf leaves it undefined */
        rc = cdb_error_oom(err);
    }
out:
    free(x);
    free(vtext);
    free(ptext);
    return rc;
}
