/*
 * vec_query.c - POST /data/query with database "vectors": exact k-NN
 * search over one collection (coredb/vectors.h). The candidates are the
 * points the caller may see, read from PostgreSQL under the caller's role
 * (so row-level security decides visibility), with the payload filter
 * applied there, before ranking: their ids and etags (and payloads), in
 * id order. Their vectors come from the in-memory copy (vec_cache.c) when
 * its etag is the row's; the others (new, changed, or never read) are read
 * in a second round trip, as the caller too, and merged into a new
 * snapshot. The ranking is here, in C: contiguous float32 vectors scored
 * with loops of independent accumulators the compiler can vectorize, and
 * a bounded heap of the k best.
 */
#include <float.h>
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

/* A read: the role + settings, then the candidates, one implicit transaction up to the Sync. */
enum { STMT_ROWS = CDB_DATA_READ_PRELUDE_COUNT, NSTMTS };

typedef struct search_req {
    const json_t *filter;
    int k;
    bool has_min, with_payload, with_vector, exact;
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

/*
 * The score in double, clamped to float32: for components near FLT_MAX,
 * whose float32 sums overflow (an infinite or NaN score has no JSON form).
 */
static float score_wide(cdb_vec_metric m, const float *x, const float *q, int n)
{
    double xy = 0, xx = 0, qq = 0, dd = 0, s;
    for (int i = 0; i < n; i++) {
        double d = (double)x[i] - (double)q[i];
        xy += (double)x[i] * q[i];
        xx += (double)x[i] * x[i];
        qq += (double)q[i] * q[i];
        dd += d * d;
    }
    s = m == CDB_VEC_L2 ? -sqrt(dd) : m == CDB_VEC_DOT ? xy : xx > 0 && qq > 0 ? xy / (sqrt(xx) * sqrt(qq)) : 0;
    return (float)(s > FLT_MAX ? FLT_MAX : s < -FLT_MAX ? -FLT_MAX : s);
}

/*
 * Below this a float32 norm was summed from squares under FLT_MIN
 * (subnormal: a few bits each), so a cosine from it can leave [-1, 1]
 * (fuzz/vec_search found 1.076): such scores are taken in double.
 */
#define COSINE_NORM_MIN 1.1e-19f   /* just above sqrtf(FLT_MIN) */

/* The metric's score (coredb/vectors.h): higher = closer. qnorm, xnorm: |q|, |x| for cosine (xnorm < 0: compute it). */
static float score_of(cdb_vec_metric m, const float *x, const float *q, int n, float qnorm, float xnorm)
{
    float s;
    switch (m) {
    case CDB_VEC_L2: s = -sqrtf(l2sq(x, q, n)); break;
    case CDB_VEC_DOT: s = dot(x, q, n); break;
    default: {
        float xn = xnorm >= 0 ? xnorm : sqrtf(dot(x, x, n));
        s = xn > 0 ? dot(x, q, n) / (xn * qnorm) : 0.0f;
        if (xn > 0 && (isinf(xn * qnorm) || xn < COSINE_NORM_MIN || qnorm < COSINE_NORM_MIN))
            s = NAN; /* x/inf would be a wrong 0; a norm from subnormal squares keeps few bits */
    }
    }
    return isfinite(s) ? s : score_wide(m, x, q, n);
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

/* Appends v to a PostgreSQL text[] literal being built in *buf: "a","b\\"c". */
static bool array_item(char **buf, size_t *len, size_t *cap, const char *v)
{
    size_t need = *len + 2 * strlen(v) + 6; /* ,"..." escaped, then room for "}" and NUL */
    if (need > *cap) {
        size_t ncap = need * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return false;
        *buf = nb;
        *cap = ncap;
    }
    char *p = *buf + *len;
    if (*len > 1)
        *p++ = ',';
    *p++ = '"';
    for (; *v; v++) {
        if (*v == '"' || *v == '\\')
            *p++ = '\\';
        *p++ = *v;
    }
    *p++ = '"';
    *p = '\0';
    *len = (size_t)(p - *buf);
    return true;
}

/*
 * Parses a real[] text "{1,2.5,...}" of dims elements into x; false if it
 * is not one, or not all finite (a real[] written by SQL may hold NaN or
 * Infinity, which no score or JSON answer can carry).
 */
static bool parse_array(const char *s, float *x, int dims)
{
    if (*s++ != '{')
        return false;
    for (int i = 0; i < dims; i++) {
        char *end;
        x[i] = strtof(s, &end);
        if (end == s || !isfinite(x[i]) || (*end != (i + 1 < dims ? ',' : '}')))
            return false;
        s = end + 1;
    }
    return true;
}

static int parse_request(json_t *r, search_req *s, cdb_error *err)
{
    static const char *const members[] = {"database", "query_type", "collection", "vector", "k", "filter",
                                          "min_score", "with_payload", "with_vector", "exact", NULL};
    json_t *qt = json_object_get(r, "query_type"), *jk = json_object_get(r, "k");
    json_t *ms = json_object_get(r, "min_score"), *wp = json_object_get(r, "with_payload");
    json_t *wv = json_object_get(r, "with_vector"), *ex = json_object_get(r, "exact");

    const char *unknown = cdb__query_unknown_member(r, members);
    if (unknown)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", unknown, "Unknown field");
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
    if (ex && !json_is_boolean(ex))
        return invalid(err, "exact", "exact must be true or false");
    s->exact = ex && json_is_true(ex);
    s->filter = json_object_get(r, "filter");
    if (json_is_null(s->filter))
        s->filter = NULL;
    if (!json_is_array(json_object_get(r, "vector")))
        return invalid(err, "vector", "vector must be an array of numbers");
    return 0;
}

/* The candidates: one pipelined round trip under p's role. */
static int fetch(cdb_service *svc, const cdb_principal *p, const char *sql, int nparams,
                 const char *const *params, PGresult **res, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    const char *stmt = NULL;
    int rc;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    if ((rc = cdb_pool_conn_prepare(pc, sql, nparams, &stmt, err)) < 0 ||
        (rc = cdb_data_start_read_pipeline(pc, p, err)) < 0)
        goto out;
    if (!cdb_txn_send(conn, stmt, sql, nparams, params) || !PQpipelineSync(conn)) {
        rc = cdb_data_pg_error(conn, NULL, NULL, err);
        goto out;
    }
    rc = cdb_data_pipeline_read(conn, res, NSTMTS, NULL, NULL, err);
out:
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* The answer's JSON for the ranked hits. */
static json_t *answer(const PGresult *res, const hit *h, int n, const float *const *vecs, int dims,
                      const search_req *s)
{
    json_t *data = json_array(), *out = NULL;
    for (int i = 0; data && i < n; i++) {
        json_t *pt = json_pack("{s:s, s:f}", "id", PQgetvalue(res, h[i].row, 0), "score", (double)h[i].score);
        if (pt && s->with_payload)
            json_object_set_new(pt, "payload", json_loads(PQgetvalue(res, h[i].row, 2), JSON_DECODE_ANY, NULL));
        if (pt && s->with_vector) {
            json_t *vec = json_array();
            for (int d = 0; vec && d < dims; d++)
                json_array_append_new(vec, json_real((double)vecs[h[i].row][d]));
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

/*
 * Points rows (res: id, etag, payload in id order) at their vectors in
 * snap where the etags agree (any_etag: where the id is there at all);
 * NULL elsewhere. Returns how many are NULL.
 */
static int map_rows(const cdb_vec_snap *snap, const PGresult *res, const float **vecs, bool any_etag)
{
    int rows = PQntuples(res), missing = 0, j = 0;
    for (int i = 0; i < rows; i++) {
        const char *id = PQgetvalue(res, i, 0);
        int c = 1;
        while (snap && j < snap->n && (c = strcmp(snap->ids[j], id)) < 0)
            j++;
        vecs[i] = snap && j < snap->n && c == 0 && (any_etag || strcmp(snap->etags[j], PQgetvalue(res, i, 1)) == 0)
                      ? snap->xs + (size_t)j * (size_t)snap->dims
                      : NULL;
        missing += !vecs[i];
    }
    return missing;
}

/* Copies point (id, etag, x) into slot k of s. */
static bool snap_set(cdb_vec_snap *s, int k, const char *id, const char *etag, const float *x)
{
    s->ids[k] = strdup(id);
    s->etags[k] = strdup(etag);
    memcpy(s->xs + (size_t)k * (size_t)s->dims, x, (size_t)s->dims * sizeof *x);
    s->norms[k] = sqrtf(dot(x, x, s->dims)); /* once per point, for cosine */
    s->n = k + 1;
    return s->ids[k] && s->etags[k];
}

/*
 * Reads the vectors of the rows vecs lacks (as the caller) and makes a new
 * snapshot of old's points and them (theirs win), installed in the cache;
 * *out gets it (a ref).
 */
static int load_missing(cdb_service *svc, const cdb_principal *p, const cdb_vec_coll *c, const PGresult *res,
                        const float **vecs, const cdb_vec_snap *old, cdb_vec_snap **out, cdb_error *err)
{
    static const char SQL_FMT[] = "SELECT id, etag, vector::text FROM coredb.\"%s\" WHERE id = ANY($1::text[])"
                                  " ORDER BY id COLLATE \"C\"";
    PGresult *got[NSTMTS] = {0};
    char *list = NULL, *sql = NULL;
    size_t len = 1, cap = 64;
    float *x = NULL;
    cdb_vec_snap *s = NULL;
    int rc = 0, dims = c->dimensions;

    *out = NULL;
    if (!(list = malloc(cap)) || !(x = malloc((size_t)dims * sizeof *x))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    strcpy(list, "{");
    for (int i = 0; i < PQntuples(res); i++)
        if (!vecs[i] && !array_item(&list, &len, &cap, PQgetvalue(res, i, 0))) {
            rc = cdb_error_oom(err);
            goto out;
        }
    strcpy(list + len, "}");
    /* the registry's table name, [a-z0-9_] by its CHECK, quoted */
    if (asprintf(&sql, SQL_FMT, c->table) < 0) {
        sql = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *params[] = {list};
    if ((rc = fetch(svc, p, sql, 1, params, got, err)) < 0)
        goto out;
    const PGresult *g = got[STMT_ROWS];
    int n = PQntuples(g), a = 0, b = 0, k = 0;
    if (!(s = cdb__vec_snap_new((old ? old->n : 0) + n, dims))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* merge by id; a row read now replaces the old copy of its id */
    while ((old && a < old->n) || b < n) {
        int cmp = !(old && a < old->n) ? 1 : b >= n ? -1 : strcmp(old->ids[a], PQgetvalue(g, b, 0));
        bool ok;
        if (cmp < 0) {
            ok = snap_set(s, k++, old->ids[a], old->etags[a], old->xs + (size_t)a * (size_t)dims);
            a++;
        } else {
            if (cmp == 0)
                a++;
            if (!parse_array(PQgetvalue(g, b, 2), x, dims)) {
                b++;
                continue; /* cannot happen: the table's CHECK fixes the length */
            }
            ok = snap_set(s, k++, PQgetvalue(g, b, 0), PQgetvalue(g, b, 1), x);
            b++;
        }
        if (!ok) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
    cdb__vec_cache_put(svc, c->table, s);
    *out = s;
    s = NULL;
out:
    for (int i = 0; i < NSTMTS; i++)
        PQclear(got[i]);
    cdb__vec_snap_unref(s);
    free(sql);
    free(list);
    free(x);
    return rc;
}

/* Adds a hit to the min-heap of the k best (n so far). */
static void heap_push(hit *heap, int *n, int k, hit h, const PGresult *res)
{
    if (*n < k) {
        heap[*n] = h;
        sift_up(heap, (*n)++, res);
    } else if (worse(&heap[0], &h, res)) {
        heap[0] = h;
        sift_down(heap, *n, 0, res);
    }
}

/* Heap sort: the worst goes last each time, leaving the best first. */
static void heap_sort(hit *heap, int n, const PGresult *res)
{
    for (int m = n - 1; m > 0; m--) {
        hit t = heap[0];
        heap[0] = heap[m];
        heap[m] = t;
        sift_down(heap, m, 0, res);
    }
}

/* Retries with 4x the candidates after the first index search, before the exact scan. */
#define HNSW_RETRIES 3
/* Beyond this many candidates a retry costs more than the exact scan (which shares the in-memory copy
 * instead of copying each candidate's vector): the exact path answers. */
#define HNSW_MAX_CANDIDATES 16384

/*
 * The approximate path of an hnsw collection (coredb/vectors.h): the
 * index names its kq nearest points (kq = max(k, ef_search)); PostgreSQL,
 * as the caller and in one statement, says which of them the caller may
 * see and which pass the filter (and hands their payloads, and the vector
 * of any row whose etag is not the indexed one, or of every row with
 * with_vector); each survivor is scored exactly as the exact path scores
 * it, min_score applies, the best k remain. Fewer than k, while the index
 * holds more points: kq x 4, up to HNSW_RETRIES times (and HNSW_MAX_CANDIDATES). Returns 0 with *out
 * the answer, 1 when the exact scan must answer instead, or an error.
 */
static int hnsw_search(cdb_service *svc, const cdb_principal *p, const cdb_vec_coll *c, const search_req *s,
                       const cdb_sql *w, const float *q, float qnorm, json_t **out, double *build_ms,
                       cdb_error *err)
{
    cdb_vec_index *ix = NULL;
    cdb_vec_cands cands = {0};
    PGresult *res[NSTMTS] = {0};
    char *sql = NULL, *ids = NULL, *etags = NULL;
    const float **vecs = NULL;
    float *xbuf = NULL;
    hit *heap = NULL;
    int rc, n = 0, dims = c->dimensions, nw = w->nparams;
    const char *params[CDB_SQL_MAX_PARAMS + 3];

    *out = NULL;
    if ((rc = cdb__vec_index_get(svc, c, &ix, build_ms, err)) != 0)
        goto out; /* an error, or 1: the index is busy, the exact path answers */
    if (!(heap = malloc((size_t)s->k * sizeof *heap)) ||
        asprintf(&sql,
                 "SELECT d.id, d.etag, %s, CASE WHEN $%d::boolean OR d.etag IS DISTINCT FROM hc.etag"
                 " THEN d.vector::text END, hc.ord"
                 " FROM (SELECT id, etag, payload, payload AS doc, vector FROM coredb.\"%s\""
                 " WHERE id = ANY($%d::text[])) d"
                 " JOIN unnest($%d::text[], $%d::text[]) WITH ORDINALITY AS hc(id, etag, ord) ON hc.id = d.id%s",
                 s->with_payload ? "d.payload::text" : "NULL", nw + 3, c->table /* [a-z0-9_], registry CHECK */,
                 nw + 1, nw + 1, nw + 2, w->text ? w->text : "") < 0) {
        sql = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    for (int i = 0; i < nw; i++)
        params[i] = w->params[i];
    params[nw + 2] = s->with_vector ? "true" : "false";
    int kq = s->k > c->ef_search ? s->k : c->ef_search;
    for (int attempt = 0;; attempt++) {
        size_t ilen = 1, icap = 64, elen = 1, ecap = 64;
        bool cut = false;
        cdb__vec_cands_free(&cands);
        for (int i = 0; i < NSTMTS; i++) {
            PQclear(res[i]);
            res[i] = NULL;
        }
        free(ids);
        free(etags);
        ids = etags = NULL;
        if ((rc = cdb__vec_index_search(ix, q, kq, &cands, err)) != 0)
            goto out;
        if (!(ids = malloc(icap)) || !(etags = malloc(ecap))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        strcpy(ids, "{");
        strcpy(etags, "{");
        for (int i = 0; i < cands.n; i++)
            if (!array_item(&ids, &ilen, &icap, cands.ids[i]) || !array_item(&etags, &elen, &ecap, cands.etags[i])) {
                rc = cdb_error_oom(err);
                goto out;
            }
        strcpy(ids + ilen, "}");
        strcpy(etags + elen, "}");
        params[nw] = ids;
        params[nw + 1] = etags;
        if ((rc = fetch(svc, p, sql, nw + 3, params, res, err)) < 0)
            goto out;
        const PGresult *r = res[STMT_ROWS];
        int rows = PQntuples(r), ntext = 0;
        for (int i = 0; i < rows; i++)
            ntext += !PQgetisnull(r, i, 3);
        free(vecs);
        free(xbuf);
        xbuf = NULL;
        if (!(vecs = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *vecs)) ||
            (ntext && !(xbuf = malloc((size_t)ntext * (size_t)dims * sizeof *xbuf)))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        n = 0;
        ntext = 0;
        for (int i = 0; i < rows; i++) {
            long ord = strtol(PQgetvalue(r, i, 4), NULL, 10) - 1;
            float score;
            if (!PQgetisnull(r, i, 3)) {
                /* written since the index read it, or asked for: the row's own vector */
                float *x = xbuf + (size_t)ntext++ * (size_t)dims;
                if (!parse_array(PQgetvalue(r, i, 3), x, dims))
                    continue; /* cannot happen: the table's CHECK fixes the length */
                vecs[i] = x;
                score = score_of(c->metric, x, q, dims, qnorm, -1);
            } else if (ord >= 0 && ord < cands.n) {
                vecs[i] = cands.xs + (size_t)ord * (size_t)dims;
                /* cosine: the index holds x / |x|, so x.q / (|x| |q|) = (x / |x|).q / |q| */
                score = c->metric == CDB_VEC_COSINE && qnorm >= COSINE_NORM_MIN
                            ? dot(vecs[i], q, dims) / qnorm
                            : score_of(c->metric, vecs[i], q, dims, qnorm, -1);
            } else {
                continue;
            }
            if (s->has_min && (double)score < s->min_score) {
                cut = true; /* the index's later candidates are farther still */
                continue;
            }
            heap_push(heap, &n, s->k, (hit){score, i}, r);
        }
        if (n >= s->k || (size_t)cands.n >= cands.live || cut)
            break;
        if (attempt == HNSW_RETRIES || kq > HNSW_MAX_CANDIDATES / 4) {
            rc = 1;
            goto out;
        }
        kq *= 4;
    }
    heap_sort(heap, n, res[STMT_ROWS]);
    if (!(*out = answer(res[STMT_ROWS], heap, n, vecs, dims, s)))
        rc = cdb_error_oom(err);
out:
    for (int i = 0; i < NSTMTS; i++)
        PQclear(res[i]);
    cdb__vec_cands_free(&cands);
    cdb__vec_index_unref(ix);
    free(sql);
    free(ids);
    free(etags);
    free(vecs);
    free(xbuf);
    free(heap);
    return rc;
}

int cdb__vec_query(cdb_service *svc, const cdb_principal *p, json_t *r, int64_t start_us, char **body_out,
                   cdb_error *err)
{
    search_req s = {0};
    PGresult *res[NSTMTS] = {0};
    cdb_vec_coll c;
    cdb_vec_snap *snap = NULL;
    const float **vecs = NULL;
    float *q = NULL;
    hit *heap = NULL;
    json_t *out = NULL;
    char *text = NULL;
    int rc, n = 0;
    cdb_sql sql, w;
    const char *index_name = "exact";
    double build_ms = 0;

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
    if (c.hnsw && !s.exact) {
        if ((rc = hnsw_search(svc, p, &c, &s, &w, q, qnorm, &out, &build_ms, err)) < 0)
            goto out;
        if (rc == 0) {
            index_name = "hnsw";
            goto respond;
        }
        rc = 0; /* too few visible survivors: the exact scan answers */
    }
    /* payload exposed as doc so the documents' filter SQL applies; RLS applies to the table below */
    cdb_sql_append(&sql, "SELECT d.id, d.etag");
    cdb_sql_append(&sql, s.with_payload ? ", d.payload::text" : ", NULL");
    cdb_sql_append(&sql, " FROM (SELECT id, etag, payload, payload AS doc FROM coredb.\"");
    cdb_sql_append(&sql, c.table); /* the registry's name, [a-z0-9_] by its CHECK */
    cdb_sql_append(&sql, "\") d");
    if (w.text)
        cdb_sql_append(&sql, w.text);
    cdb_sql_append(&sql, " ORDER BY d.id COLLATE \"C\"");
    cdb_sql_take_params(&sql, &w);
    if (sql.oom || w.oom) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = fetch(svc, p, sql.text, sql.nparams, (const char *const *)sql.params, res, err)) < 0)
        goto out;

    int rows = PQntuples(res[STMT_ROWS]), dims = c.dimensions;
    if (!(vecs = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *vecs)) ||
        !(heap = malloc((size_t)s.k * sizeof *heap))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    snap = cdb__vec_cache_get(svc, c.table, dims);
    if (map_rows(snap, res[STMT_ROWS], vecs, false) > 0) {
        cdb_vec_snap *fresh = NULL;
        if ((rc = load_missing(svc, p, &c, res[STMT_ROWS], vecs, snap, &fresh, err)) < 0)
            goto out;
        cdb__vec_snap_unref(snap);
        snap = fresh;
        /* a row written between the two reads: its newer vector (the second read, as the caller, saw it);
         * one deleted in between stays out */
        map_rows(snap, res[STMT_ROWS], vecs, true);
    }
    for (int i = 0; i < rows; i++) {
        if (!vecs[i])
            continue;
        /* every vector points into snap now */
        float xnorm = snap->norms[(size_t)(vecs[i] - snap->xs) / (size_t)dims];
        hit h = {score_of(c.metric, vecs[i], q, dims, qnorm, xnorm), i};
        if (s.has_min && (double)h.score < s.min_score)
            continue;
        heap_push(heap, &n, s.k, h, res[STMT_ROWS]);
    }
    heap_sort(heap, n, res[STMT_ROWS]);
    if (!(out = answer(res[STMT_ROWS], heap, n, vecs, dims, &s))) {
        rc = cdb_error_oom(err);
        goto out;
    }
respond:
    if (json_object_set_new(out, "index", json_string(index_name)) < 0 ||
        (build_ms > 0 && json_object_set_new(out, "index_build_ms", json_real(build_ms)) < 0) ||
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
    cdb__vec_snap_unref(snap);
    json_decref(out);
    free(heap);
    free(vecs);
    free(q);
    cdb_sql_destroy(&w);
    cdb_sql_destroy(&sql);
    return rc;
}
