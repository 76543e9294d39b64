/*
 * vec_search.c - libFuzzer harness: a vector search body of POST
 * /data/query (database "vectors") through every step before the
 * database (src/data/vec_query.c, included to reach its statics), the
 * vector check (cdb__vec_check, src/data/vec_common.c), the scoring
 * kernels, and the two text codecs of the candidates' round trips: the
 * PostgreSQL real[] text parser (parse_array) and the text[] literal of
 * ids (array_item).
 *
 * The first byte picks the collection's dimensions (1 + bits 0-2), its
 * metric (bits 3-4: cosine, l2, dot, cosine), the caller's role (bit 5)
 * and the mode (bit 6: the rest is text, else JSON).
 * - JSON: cdb__vec_query with a service without a pool (the whole shape
 *   check, ending at the registry look-up), then parse_request, the
 *   filter's SQL (cdb__doc_where), cdb__vec_check of "vector" against the
 *   dimensions, the scores of that vector against itself, its negation
 *   and a few fixed vectors, and their top k.
 * - text: parse_array of the text as a real[] of the dimensions; the text's
 *   lines as ids through array_item, and as a cached snapshot and the
 *   candidates of a search through map_rows.
 *
 * Oracles: errors are the route's 4xx codes, a filter's errors name
 * "filter"; a vector is accepted exactly when it is an array of dims
 * numbers each finite in float32, and holds those numbers as float32; a
 * parsed real[] has exactly dims finite floats; the bounded heap's k best
 * (the ranking loop of cdb__vec_query over its sift functions, with
 * min_score and equal scores tied by id) are a full sort's first k; every score of accepted
 * vectors is finite (a score is sent as JSON, which has no NaN or
 * infinity), a cosine within [-1, 1]; the ids' literal reads back in
 * PostgreSQL as exactly the ids; map_rows points each candidate at its
 * own id's cached vector exactly when the etags agree (or any_etag) and
 * counts the rest; the filter's SQL passes fuzz_doc.h.
 */
#include <float.h>
#include <stdint.h>

#include "data/vec_query.c"
#include "fuzz_doc.h"

static const cdb_principal users[] = {
    {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_ADMIN},
};

static const float fixed[][8] = {
    {1, 0, 0, 0, 0, 0, 0, 0},
    {-0.5f, 0.25f, 3, -7, 1e-3f, 2, 0, 1},
    {FLT_MAX, FLT_MAX, -FLT_MAX, FLT_MAX, FLT_MAX, -FLT_MAX, FLT_MAX, FLT_MAX},
    {1e-38f, -1e-40f, 1e-45f, 0, 0, 1e-38f, 0, 1e-30f},
    {0, 0, 0, 0, 0, 0, 0, 0},
};

static void die(const char *why)
{
    fprintf(stderr, "vec_search oracle: %s\n", why);
    abort();
}

static void check_code(const char *what, int rc, cdb_error *err, const json_t *r, bool db_reached)
{
    const char *field = json_string_value(json_object_get(err->details, "field"));
    /* "filters" only for a body that sends that (unknown) member */
    if (rc != 0 && field && strcmp(field, "filters") == 0 && !json_object_get(r, "filters"))
        die("an error of the search names \"filters\", not \"filter\"");
    if (rc == CDB_ERR_VALIDATION_FAILED || rc == CDB_ERR_INVALID_FILTER ||
        (db_reached && (rc == CDB_ERR_DATABASE_UNAVAILABLE || rc == CDB_ERR_UNKNOWN_TABLE)) ||
        (!db_reached && rc == 0))
        return;
    fprintf(stderr, "%s: unexpected error code %s\n", what, cdb_err_name((cdb_err)rc));
    abort();
}

/* What a vector must be, said independently of cdb__vec_check. */
static bool vector_valid(const json_t *v, int dims)
{
    size_t i;
    json_t *x;
    if (!json_is_array(v) || json_array_size(v) != (size_t)dims)
        return false;
    json_array_foreach(v, i, x) {
        if (!json_is_number(x))
            return false;
        double d = json_number_value(x);
        if (!(d >= -FLT_MAX && d <= FLT_MAX))
            return false;
    }
    return true;
}

static void check_scores(cdb_vec_metric m, const float *q, int dims)
{
    float qnorm = sqrtf(dot(q, q, dims)), neg[8];
    for (int i = 0; i < dims; i++)
        neg[i] = -q[i];
    /* the search refuses a zero query for cosine */
    if (m == CDB_VEC_COSINE && !(qnorm > 0))
        return;
    const float *xs[8] = {q, neg};
    int n = 2;
    for (size_t f = 0; f < sizeof fixed / sizeof fixed[0]; f++)
        xs[n++] = fixed[f];
    for (int j = 0; j < n; j++) {
        float xnorm = sqrtf(dot(xs[j], xs[j], dims)); /* as snap_set keeps it */
        for (int given = 0; given < 2; given++) {
            float s = score_of(m, xs[j], q, dims, qnorm, given ? xnorm : -1);
            if (!isfinite(s)) {
                fprintf(stderr, "metric %d, dims %d, vector %d: score %g\n", (int)m, dims, j, (double)s);
                die("a score of finite float32 vectors is not finite (no JSON answer can carry it)");
            }
            if (m == CDB_VEC_COSINE && (s < -1.001f || s > 1.001f)) {
                fprintf(stderr, "vector %d: cosine %g\n", j, (double)s);
                die("a cosine outside [-1, 1]");
            }
        }
    }
}

/* Reference order: better score first, ties by smaller id. */
static const PGresult *ref_res;
static int ref_cmp(const void *a, const void *b)
{
    const hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return strcmp(PQgetvalue(ref_res, x->row, 0), PQgetvalue(ref_res, y->row, 0));
}

/*
 * The ranking of cdb__vec_query (its loop, repeated here over its statics
 * worse, sift_up, sift_down) on candidates q, -q and the fixed vectors,
 * each twice under two ids (equal scores: the tie by id decides), against a
 * full sort: the same k best, in the same order.
 */
static void check_top_k(const search_req *s, cdb_vec_metric m, const float *q, int dims)
{
    float qnorm = sqrtf(dot(q, q, dims)), neg[8];
    if (m == CDB_VEC_COSINE && !(qnorm > 0))
        return;
    for (int i = 0; i < dims; i++)
        neg[i] = -q[i];
    const float *xs[8] = {q, neg};
    int nx = 2;
    for (size_t f = 0; f < sizeof fixed / sizeof fixed[0]; f++)
        xs[nx++] = fixed[f];
    PGresAttDesc attr = {.name = (char *)"id", .format = 0, .typid = 25, .typlen = -1, .atttypmod = -1};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    int rows = 2 * nx, n = 0, all = 0;
    hit *heap = malloc((size_t)s->k * sizeof *heap), every[16];
    if (!res || !heap || !PQsetResultAttrs(res, 1, &attr))
        abort();
    for (int i = 0; i < rows; i++) {
        char id[8];
        snprintf(id, sizeof id, "%c%d", 'a' + i % 2, i / 2); /* a0 b0 a1 b1 ...: twins with equal scores */
        if (!PQsetvalue(res, i, 0, id, (int)strlen(id)))
            abort();
    }
    for (int i = 0; i < rows; i++) {
        const float *x = xs[i / 2];
        hit h = {score_of(m, x, q, dims, qnorm, sqrtf(dot(x, x, dims))), i};
        if (s->has_min && (double)h.score < s->min_score)
            continue;
        every[all++] = h;
        if (n < s->k) {
            heap[n] = h;
            sift_up(heap, n++, res);
        } else if (worse(&heap[0], &h, res)) {
            heap[0] = h;
            sift_down(heap, n, 0, res);
        }
    }
    for (int j = n - 1; j > 0; j--) {
        hit t = heap[0];
        heap[0] = heap[j];
        heap[j] = t;
        sift_down(heap, j, 0, res);
    }
    ref_res = res;
    qsort(every, (size_t)all, sizeof *every, ref_cmp);
    if (n != (all < s->k ? all : s->k))
        die("the heap kept a wrong number of hits");
    for (int i = 0; i < n; i++)
        if (heap[i].row != every[i].row) {
            fprintf(stderr, "rank %d: heap %s (%g), reference %s (%g)\n", i, PQgetvalue(res, heap[i].row, 0),
                    (double)heap[i].score, PQgetvalue(res, every[i].row, 0), (double)every[i].score);
            die("the top k differ from a full sort");
        }
    free(heap);
    PQclear(res);
}

static void fuzz_json(const uint8_t *data, size_t size, int dims, cdb_vec_metric m, const cdb_principal *who)
{
    static struct cdb_service svc; /* no pool: the collection look-up answers DATABASE_UNAVAILABLE */
    json_t *r = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    cdb_error err;
    char *body = NULL;
    if (!r || !json_is_object(r)) {
        json_decref(r);
        return;
    }
    cdb_error_init(&err);
    int rc = cdb__vec_query(&svc, who, r, 0, &body, &err);
    check_code("cdb__vec_query", rc, &err, r, true);
    if (body)
        die("an answer without a database");
    cdb_error_destroy(&err);

    search_req s = {0};
    cdb_error_init(&err);
    rc = parse_request(r, &s, &err);
    check_code("parse_request", rc, &err, r, false);
    if (rc == 0) {
        json_t *jk = json_object_get(r, "k");
        if (s.k < 1 || s.k > CDB_VECTOR_K_MAX || (jk && s.k != json_integer_value(jk)) || (!jk && s.k != 10))
            die("k is not the one sent (or 10)");
        cdb_sql w;
        cdb_sql_init(&w);
        cdb_error_destroy(&err);
        cdb_error_init(&err);
        rc = cdb__doc_where(&w, s.filter, &err);
        if (rc == 0 && w.text && *w.text)
            fuzz_doc_sql_check(w.text, w.nparams, w.params);
        cdb_sql_destroy(&w);
    }
    cdb_error_destroy(&err);

    /* the vector against the collection's dimensions, then scores and the top k of a valid request */
    json_t *v = json_object_get(r, "vector");
    float q[8];
    cdb_error_init(&err);
    rc = cdb__vec_check("vector", v, dims, q, &err);
    if ((rc == 0) != vector_valid(v, dims))
        die(rc == 0 ? "an invalid vector accepted" : "a valid vector refused");
    if (rc != 0 && (rc != CDB_ERR_VALIDATION_FAILED ||
                    strcmp(json_string_value(json_object_get(err.details, "field")), "vector") != 0))
        die("a vector refusal that is not VALIDATION_FAILED naming \"vector\"");
    if (rc == 0) {
        for (int i = 0; i < dims; i++)
            if (!isfinite(q[i]) || q[i] != (float)json_number_value(json_array_get(v, (size_t)i)))
                die("an accepted vector does not hold the numbers sent as float32");
        check_scores(m, q, dims);
        if (parse_request(r, &s, &err) == 0)
            check_top_k(&s, m, q, dims);
    }
    cdb_error_destroy(&err);
    json_decref(r);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts ids (strcmp order, PostgreSQL's COLLATE "C") and drops repeats; returns how many are left. */
static int sort_unique(char **ids, int n)
{
    int m = 0;
    qsort(ids, (size_t)n, sizeof *ids, str_cmp);
    for (int i = 0; i < n; i++)
        if (m == 0 || strcmp(ids[m - 1], ids[i]) != 0)
            ids[m++] = ids[i];
    return m;
}

/*
 * map_rows on lines as ids: the even ones a cached snapshot, the odd ones
 * the candidates PostgreSQL answered (both in id order, unique, as the
 * primary key and ORDER BY make them), etags by the id's first byte so
 * some agree and some do not. Each candidate must point at its own id's
 * vector in the snapshot exactly when the etags agree (or any_etag), and
 * the count of the others be returned.
 */
static void check_map_rows(char **lines, int n, int dims)
{
    char **a = malloc((size_t)(n + 1) * sizeof *a), **b = malloc((size_t)(n + 1) * sizeof *b);
    int na = 0, nb = 0;
    if (!a || !b)
        abort();
    for (int i = 0; i < n; i++) {
        if (i % 2)
            b[nb++] = lines[i];
        else
            a[na++] = lines[i];
    }
    na = sort_unique(a, na);
    nb = sort_unique(b, nb);
    cdb_vec_snap *snap = cdb__vec_snap_new(na, dims);
    PGresAttDesc attrs[2] = {{.name = (char *)"id", .typid = 25, .typlen = -1, .atttypmod = -1},
                             {.name = (char *)"etag", .typid = 25, .typlen = -1, .atttypmod = -1}};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    const float **vecs = malloc((size_t)(nb + 1) * sizeof *vecs);
    float x[8] = {0};
    if (!snap || !res || !vecs || !PQsetResultAttrs(res, 2, attrs))
        abort();
    for (int j = 0; j < na; j++) {
        x[0] = (float)j;
        if (!snap_set(snap, j, a[j], (unsigned char)a[j][0] % 2 ? "e1" : "e0", x))
            abort();
    }
    for (int i = 0; i < nb; i++)
        if (!PQsetvalue(res, i, 0, b[i], (int)strlen(b[i])) ||
            !PQsetvalue(res, i, 1, (unsigned char)b[i][0] % 3 ? "e1" : "e0", 2))
            abort();
    for (int any = 0; any < 2; any++) {
        int missing = map_rows(snap, res, vecs, any), want_missing = 0;
        for (int i = 0; i < nb; i++) {
            char **found = bsearch(&b[i], a, (size_t)na, sizeof *a, str_cmp);
            int j = found ? (int)(found - a) : -1;
            bool same = j >= 0 && (any || strcmp(snap->etags[j], PQgetvalue(res, i, 1)) == 0);
            const float *want = same ? snap->xs + (size_t)j * (size_t)dims : NULL;
            want_missing += !want;
            if (vecs[i] != want) {
                fprintf(stderr, "candidate %s: vector of %s, want %s\n", b[i],
                        vecs[i] ? snap->ids[(vecs[i] - snap->xs) / dims] : "none", want ? a[j] : "none");
                die("map_rows pointed a candidate at the wrong cached vector");
            }
        }
        if (missing != want_missing)
            die("map_rows miscounted the candidates it lacks");
    }
    PQclear(res);
    cdb__vec_snap_unref(snap);
    free(vecs);
    free(a);
    free(b);
}

static void fuzz_text(const uint8_t *data, size_t size, int dims, cdb_vec_metric m)
{
    char *text = malloc(size + 1);
    float x[8];
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';
    if (parse_array(text, x, dims)) {
        for (int i = 0; i < dims; i++)
            if (!isfinite(x[i])) {
                fprintf(stderr, "%s -> element %d = %g\n", text, i, (double)x[i]);
                die("parse_array took a non-finite float");
            }
        check_scores(m, x, dims);
    }

    /* the text's lines as candidate ids: their text[] literal reads back as exactly them */
    size_t len = 1, cap = 8;
    char *lit = malloc(cap), **lines = malloc((size + 1) * sizeof *lines);
    json_t *want = json_array();
    int nlines = 0;
    if (!lit || !want || !lines)
        abort();
    strcpy(lit, "{");
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!array_item(&lit, &len, &cap, line))
            abort();
        json_array_append_new(want, json_string_nocheck(line));
        lines[nlines++] = line;
    }
    check_map_rows(lines, nlines, dims);
    free(lines);
    strcpy(lit + len, "}");
    json_t *got = fuzz_pg_array_read(lit);
    if (!got || !json_equal(got, want)) {
        fprintf(stderr, "ids literal %s\n", lit);
        die("the ids' text[] literal does not read back as the ids");
    }
    json_decref(got);
    json_decref(want);
    free(lit);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const cdb_vec_metric metrics[] = {CDB_VEC_COSINE, CDB_VEC_L2, CDB_VEC_DOT, CDB_VEC_COSINE};
    if (size < 1)
        return 0;
    int dims = 1 + (data[0] & 7);
    cdb_vec_metric m = metrics[(data[0] >> 3) & 3];
    const cdb_principal *who = &users[(data[0] >> 5) & 1];
    if (data[0] & 0x40)
        fuzz_text(data + 1, size - 1, dims, m);
    else
        fuzz_json(data + 1, size - 1, dims, m, who);
    return 0;
}
