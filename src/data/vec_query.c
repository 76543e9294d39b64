/*
 * vec_query.c - POST /data/query with database "vectors": exact k-NN
 * search over one collection (coredb/vectors.h). The candidates are the
 * points the caller may see, read from PostgreSQL under the caller's role
 * in one pipelined round trip (so row-level security decides visibility),
 * with the payload filter applied there, before ranking. The ranking is
 * here, in C: the candidates' vectors are parsed into one contiguous
 * float32 array, scored with loops of independent accumulators the
 * compiler can vectorize, and kept in a bounded heap of the k best.
 *
 * Not done (issue 15's design): an in-memory copy of each collection's
 * vectors kept fresh by the cache generation counters; every search
 * reads its candidates from PostgreSQL.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/vectors.h"
#include "data/documents.h"
#include "data/data_internal.h"
#include "data/query_run.h"
#include "core/timeutil.h"
#include "store/pg.h"

enum { STMT_ROWS = CDB_DATA_PRELUDE_COUNT, STMT_COMMIT, NSTMTS };

typedef struct search_req {
    const json_t *filter;
    int k;
    bool has_min, with_payload, with_vector;
    double min_score;
} search_req;

typedef struct hit {
    float score;
    int row;
} hit;

static int invalid(cdb_error *err, const char *field, const char *msg)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s", msg);
}

/* Dot product with 8 independent accumulators (vectorizable without -ffast-math). */
static float dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++)
        s += a[i] * b[i];
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

static float l2sq(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            float d = a[i + j] - b[i + j];
            acc[j] += d * d;
        }
    float s = 0;
    for (; i < n; i++)
        s += (a[i] - b[i]) * (a[i] - b[i]);
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return s;
}

/* The metric's score (coredb/vectors.h): higher = closer. qnorm: |q| for cosine. */
static float score_of(cdb_vec_metric m, const float *x, const float *q, int n, float qnorm)
{
    switch (m) {
    case CDB_VEC_L2: return -sqrtf(l2sq(x, q, n));
    case CDB_VEC_DOT: return dot(x, q, n);
    default: {
        float xn = sqrtf(dot(x, x, n));
        return xn > 0 ? dot(x, q, n) / (xn * qnorm) : 0.0f;
    }
    }
}

/* a ranks below b: lower score, or the same score and a larger id. */
static bool worse(const hit *a, const hit *b, const PGresult *res)
{
    if (a->score != b->score)
        return a->score < b->score;
    return strcmp(PQgetvalue(res, a->row, 0), PQgetvalue(res, b->row, 0)) > 0;
}

/* Min-heap of the k best so far, the worst at the root. */
static void sift_down(hit *h, int n, int i, const PGresult *res)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(&h[l], &h[m], res))
            m = l;
        if (r < n && worse(&h[r], &h[m], res))
            m = r;
        if (m == i)
            return;
        hit t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void sift_up(hit *h, int i, const PGresult *res)
{
    while (i > 0 && worse(&h[i], &h[(i - 1) / 2], res)) {
        hit t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

/* Parses a real[] text "{1,2.5,...}" of dims elements into x; false if it is not one. */
static bool parse_array(const char *s, float *x, int dims)
{
    if (*s++ != '{')
        return false;
    for (int i = 0; i < dims; i++) {
        char *end;
        x[i] = strtof(s, &end);
        if (end == s || (*end != (i + 1 < dims ? ',' : '}')))
            return false;
        s = end + 1;
    }
    return true;
}

static int parse_request(json_t *r, search_req *s, cdb_error *err)
{
    static const char *const members[] = {"database", "query_type", "collection", "vector", "k", "filter",
                                          "min_score", "with_payload", "with_vector", NULL};
    const char *k;
    json_t *v, *qt = json_object_get(r, "query_type"), *jk = json_object_get(r, "k");
    json_t *ms = json_object_get(r, "min_score"), *wp = json_object_get(r, "with_payload");
    json_t *wv = json_object_get(r, "with_vector");

    json_object_foreach(r, k, v) {
        const char *const *m = members;
        while (*m && strcmp(*m, k))
            m++;
        if (!*m)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", k, "Unknown field");
    }
    if (!json_is_string(qt) || strcmp(json_string_value(qt), "search") != 0)
        return invalid(err, "query_type", "query_type must be \"search\" for vectors");
    if (jk && !(json_is_integer(jk) && json_integer_value(jk) >= 1 &&
                json_integer_value(jk) <= CDB_VECTOR_K_MAX))
        return invalid(err, "k", "k must be an integer from 1 to 1000");
    s->k = jk ? (int)json_integer_value(jk) : 10;
    if (ms && !json_is_null(ms) && !json_is_number(ms))
        return invalid(err, "min_score", "min_score must be a number");
    s->has_min = ms && !json_is_null(ms);
    s->min_score = json_number_value(ms);
    if ((wp && !json_is_boolean(wp)) || (wv && !json_is_boolean(wv)))
        return invalid(err, wp && !json_is_boolean(wp) ? "with_payload" : "with_vector",
                       "with_payload and with_vector must be true or false");
    s->with_payload = !wp || json_is_true(wp);
    s->with_vector = wv && json_is_true(wv);
    s->filter = json_object_get(r, "filter");
    if (json_is_null(s->filter))
        s->filter = NULL;
    if (!json_is_array(json_object_get(r, "vector")))
        return invalid(err, "vector", "vector must be an array of numbers");
    return 0;
}

/* The candidates: one pipelined round trip under p's role. */
static int fetch(cdb_service *svc, const cdb_principal *p, const cdb_sql *q, PGresult **res, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    const char *stmt = NULL;
    int rc;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    if ((rc = cdb_pool_conn_prepare(pc, q->text, q->nparams, &stmt, err)) < 0 ||
        (rc = cdb_data_start_pipeline(pc, p, err)) < 0)
        goto out;
    if (!cdb_txn_send(conn, stmt, q->text, q->nparams, (const char *const *)q->params) ||
        !cdb_txn_send(conn, NULL, "COMMIT", 0, NULL) || !PQpipelineSync(conn)) {
        rc = cdb_data_pg_error(conn, NULL, NULL, err);
        goto out;
    }
    rc = cdb_data_pipeline_read(conn, res, NSTMTS, NULL, NULL, err);
out:
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* The answer's JSON for the ranked hits. */
static json_t *answer(const PGresult *res, const hit *h, int n, const float *xs, int dims, const search_req *s)
{
    json_t *data = json_array(), *out = NULL;
    for (int i = 0; data && i < n; i++) {
        json_t *pt = json_pack("{s:s, s:f}", "id", PQgetvalue(res, h[i].row, 0), "score", (double)h[i].score);
        if (pt && s->with_payload)
            json_object_set_new(pt, "payload", json_loads(PQgetvalue(res, h[i].row, 2), JSON_DECODE_ANY, NULL));
        if (pt && s->with_vector) {
            json_t *vec = json_array();
            for (int d = 0; vec && d < dims; d++)
                json_array_append_new(vec, json_real((double)xs[(size_t)h[i].row * (size_t)dims + (size_t)d]));
            json_object_set_new(pt, "vector", vec);
        }
        if (!pt || json_array_append_new(data, pt) < 0) {
            json_decref(data);
            return NULL;
        }
    }
    if (data)
        out = json_pack("{s:o, s:i}", "data", data, "count", n);
    return out;
}

int cdb__vec_query(cdb_service *svc, const cdb_principal *p, json_t *r, int64_t start_us, char **body_out,
                   cdb_error *err)
{
    search_req s = {0};
    PGresult *res[NSTMTS] = {0};
    cdb_vec_coll c;
    float *q = NULL, *xs = NULL;
    hit *heap = NULL;
    json_t *out = NULL;
    char *text = NULL;
    int rc, n = 0;
    cdb_sql sql, w;

    cdb_sql_init(&sql);
    cdb_sql_init(&w);
    if ((rc = parse_request(r, &s, err)) < 0)
        goto out;
    /* the filter is checked (paths, operators) before anything is looked up */
    if ((rc = cdb__doc_where(&w, s.filter, err)) < 0) {
        if (json_is_string(json_object_get(err->details, "field")) &&
            strcmp(json_string_value(json_object_get(err->details, "field")), "filters") == 0)
            cdb_error_detail(err, "field", json_string("filter"));
        goto out;
    }
    if ((rc = cdb__vec_collection(svc, json_object_get(r, "collection"), &c, err)) < 0)
        goto out;
    if (!(q = malloc((size_t)c.dimensions * sizeof *q))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb__vec_check("vector", json_object_get(r, "vector"), c.dimensions, q, err)) < 0)
        goto out;
    float qnorm = sqrtf(dot(q, q, c.dimensions));
    if (c.metric == CDB_VEC_COSINE && !(qnorm > 0)) {
        rc = invalid(err, "vector", "A cosine search needs a non-zero vector");
        goto out;
    }
    /* payload exposed as doc so the documents' filter SQL applies; RLS applies to the table below */
    cdb_sql_append(&sql, "SELECT d.id, d.vector::text");
    cdb_sql_append(&sql, s.with_payload ? ", d.payload::text" : ", NULL");
    cdb_sql_append(&sql, " FROM (SELECT id, vector, payload, payload AS doc FROM coredb.\"");
    cdb_sql_append(&sql, c.table); /* the registry's name, [a-z0-9_] by its CHECK */
    cdb_sql_append(&sql, "\") d");
    if (w.text)
        cdb_sql_append(&sql, w.text);
    for (int k = 0; k < w.nparams; k++) {
        sql.params[k] = w.params[k];
        w.params[k] = NULL;
    }
    sql.nparams = w.nparams;
    if (sql.oom || w.oom) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = fetch(svc, p, &sql, res, err)) < 0)
        goto out;

    int rows = PQntuples(res[STMT_ROWS]), dims = c.dimensions;
    if (!(xs = malloc((size_t)(rows ? rows : 1) * (size_t)dims * sizeof *xs)) ||
        !(heap = malloc((size_t)s.k * sizeof *heap))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    for (int i = 0; i < rows; i++) {
        float *x = xs + (size_t)i * (size_t)dims;
        if (!parse_array(PQgetvalue(res[STMT_ROWS], i, 1), x, dims))
            continue; /* cannot happen: the table's CHECK fixes the length */
        hit h = {score_of(c.metric, x, q, dims, qnorm), i};
        if (s.has_min && (double)h.score < s.min_score)
            continue;
        if (n < s.k) {
            heap[n] = h;
            sift_up(heap, n++, res[STMT_ROWS]);
        } else if (worse(&heap[0], &h, res[STMT_ROWS])) {
            heap[0] = h;
            sift_down(heap, n, 0, res[STMT_ROWS]);
        }
    }
    /* heap sort: the worst goes last each time, leaving the best first */
    for (int m = n - 1; m > 0; m--) {
        hit t = heap[0];
        heap[0] = heap[m];
        heap[m] = t;
        sift_down(heap, m, 0, res[STMT_ROWS]);
    }
    if (!(out = answer(res[STMT_ROWS], heap, n, xs, dims, &s)) ||
        json_object_set_new(out, "execution_time_ms",
                            json_real((double)(cdb_mono_us() - start_us) / 1000.0)) < 0 ||
        json_object_set_new(out, "cached", json_false()) < 0 || !(text = json_dumps(out, JSON_COMPACT))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    *body_out = text;
out:
    for (int i = 0; i < NSTMTS; i++)
        PQclear(res[i]);
    json_decref(out);
    free(heap);
    free(xs);
    free(q);
    cdb_sql_destroy(&w);
    cdb_sql_destroy(&sql);
    return rc;
}
