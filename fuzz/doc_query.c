/*
 * doc_query.c - libFuzzer harness: a document query body of POST
 * /data/query (database "documents") through every step before the
 * database (src/data/doc_query.c, included to reach its statics), the
 * path filters (cdb__doc_where, src/data/doc_common.c), the document
 * checks (cdb__doc_check) and the JSON path parser (src/store/jsonpath.c).
 *
 * The first byte picks the caller's role and the mode:
 * - bit 0x10: the rest is one JSON path, as raw bytes (NUL included);
 * - else the rest is JSON: cdb__doc_query with a service without a pool
 *   (the whole shape check, ending at the registry look-up:
 *   DATABASE_UNAVAILABLE, or UNKNOWN_TABLE for a name the registry cannot
 *   hold), then, for a body that got that far, build_sql against the
 *   fixture collection and the cache key; then the whole body as filters
 *   and as a document.
 *
 * Oracles (fuzz_doc.h): the statements hold only fragment words, the
 * fixture table, the fragments' literals and $n parameters, each bound to
 * what its cast says (a path literal PostgreSQL reads back as exactly the
 * path's segments, JSON, an integer); the count statement binds a prefix
 * of the rows statement's parameters; the filters' text is the same with
 * every string value "s" and every number 1 (no value is spliced, even one
 * spelling SQL words only); a path is accepted exactly when it
 * is 1..16 segments of [A-Za-z0-9_-]{1,64}, 256 bytes at most; a document
 * is accepted exactly when it is an object nested at most 32 deep; errors
 * are the route's 4xx codes.
 */
#include <stdint.h>

#include "data/doc_query.c"
#include "fuzz_doc.h"

static const cdb_principal users[] = {
    {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_PREMIUM, .user_id = "1c8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_ADMIN},
    {.role = CDB_ROLE_USER, .user_id = "2d8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
};

static void check_code(const char *what, int rc, bool db_reached)
{
    if (rc == CDB_ERR_VALIDATION_FAILED || rc == CDB_ERR_INVALID_FILTER ||
        (db_reached && (rc == CDB_ERR_DATABASE_UNAVAILABLE || rc == CDB_ERR_UNKNOWN_TABLE)) ||
        (!db_reached && rc == 0))
        return;
    fprintf(stderr, "%s: unexpected error code %s\n", what, cdb_err_name((cdb_err)rc));
    abort();
}

/* What a path must be, said independently of jsonpath.c. */
static bool path_valid(const char *s, size_t n)
{
    size_t seg = 0;
    int depth = 1;
    if (n == 0 || n > CDB_PATH_LEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (seg == 0 || ++depth > CDB_PATH_DEPTH_MAX)
                return false;
            seg = 0;
        } else if (isalnum((unsigned char)c) || c == '_' || c == '-') {
            if (++seg > CDB_PATH_SEGMENT_MAX)
                return false;
        } else {
            return false;
        }
    }
    return seg > 0;
}

static void fuzz_path(const uint8_t *data, size_t size)
{
    json_t *p = json_stringn_nocheck((const char *)data, size);
    cdb_error err;
    char *lit = NULL;
    if (!p)
        return;
    cdb_error_init(&err);
    int rc = cdb_jsonpath_parse("filters", p, &lit, &err);
    bool valid = path_valid((const char *)data, size);
    if ((rc == 0) != valid) {
        fprintf(stderr, "path %s %s but is %s\n", json_string_value(p), rc == 0 ? "accepted" : "refused",
                valid ? "valid" : "invalid");
        abort();
    }
    if (rc == 0)
        fuzz_doc_path_check(json_string_value(p), lit);
    else if (rc != CDB_ERR_VALIDATION_FAILED || lit ||
             strcmp(json_string_value(json_object_get(err.details, "field")), "filters") != 0)
        abort();
    free(lit);
    cdb_error_destroy(&err);
    json_decref(p);
}

/* v with every string made "s" and every number 1, shapes and booleans kept. */
static json_t *canon_value(const json_t *v)
{
    size_t i;
    const char *k;
    json_t *c, *out;
    if (json_is_string(v))
        return json_string("s");
    if (json_is_number(v))
        return json_integer(1);
    if (json_is_array(v)) {
        out = json_array();
        json_array_foreach(v, i, c) json_array_append_new(out, canon_value(c));
        return out;
    }
    if (json_is_object(v)) {
        out = json_object();
        json_object_foreach((json_t *)v, k, c) json_object_set_new(out, k, canon_value(c));
        return out;
    }
    return json_incref((json_t *)v);
}

/* filters with their values canonical: paths and operators kept. */
static json_t *canon_filters(const json_t *filters)
{
    json_t *out = json_object(), *v, *operand;
    const char *path, *op;
    json_object_foreach((json_t *)filters, path, v) {
        if (!json_is_object(v)) {
            json_object_set_new(out, path, canon_value(v));
            continue;
        }
        json_t *ops = json_object();
        json_object_foreach(v, op, operand) json_object_set_new(ops, op, canon_value(operand));
        json_object_set_new(out, path, ops);
    }
    return out;
}

/*
 * The values of filters never reach the statement's text: the same filters
 * with every string "s" and every number 1 give the same text (a value
 * spliced in, even one spelling only SQL words, would differ).
 */
static void check_values_bound(const json_t *filters, const char *text)
{
    json_t *canon = canon_filters(filters);
    cdb_sql w;
    cdb_error err;
    cdb_sql_init(&w);
    cdb_error_init(&err);
    if (cdb__doc_where(&w, canon, &err) != 0 || strcmp(w.text ? w.text : "", text) != 0) {
        fprintf(stderr, "filters' SQL depends on their values:\n%s\nvs\n%s\n", text, w.text ? w.text : "");
        abort();
    }
    cdb_sql_destroy(&w);
    cdb_error_destroy(&err);
    json_decref(canon);
}

/* The rows and count statements of a body cdb__doc_query let through to the registry. */
static void fuzz_build(const cdb_principal *who, json_t *r)
{
    json_t *select = json_object_get(r, "select"), *filters = json_object_get(r, "filters"), *order = NULL;
    json_int_t page, limit;
    char *count_sql = NULL, *key = NULL;
    int count_nparams = -1, rc;
    cdb_error err;
    cdb_sql q;

    if (json_is_null(select))
        select = NULL;
    if (json_is_null(filters))
        filters = NULL;
    cdb_error_init(&err);
    cdb_sql_init(&q);
    /* each of these passed inside cdb__doc_query already */
    if (parse_select(select, &err) < 0 || parse_order(json_object_get(r, "order_by"), &order, &err) < 0 ||
        cdb__query_pagination(json_object_get(r, "pagination"), who->role, &page, &limit, &err) < 0) {
        fprintf(stderr, "a body cdb__doc_query accepted fails its parts: %s\n", err.message);
        abort();
    }
    rc = build_sql("\"" FUZZ_DOC_TABLE "\"", filters, select, order, page, limit, &q, &count_sql, &count_nparams,
                   &err);
    if (rc == 0) {
        if (q.oom || !count_sql)
            abort();
        fuzz_doc_sql_check(q.text, q.nparams, q.params);
        /* the count statement binds $1..$count_nparams, the rows statement's first ones */
        if (count_nparams < 0 || count_nparams > q.nparams)
            abort();
        fuzz_doc_sql_check(count_sql, count_nparams, q.params);
        if (!strstr(q.text, " FROM coredb.\"" FUZZ_DOC_TABLE "\" d") ||
            strncmp(count_sql, "SELECT count(*) FROM coredb.\"" FUZZ_DOC_TABLE "\"", 39) != 0)
            abort();
        if (!(key = cache_key(who, "fuzz", filters, select, order, page, limit)))
            abort();
    } else {
        /* only the 2048-parameter bound may refuse what the checks accepted */
        check_code("build_sql", rc, false);
    }
    free(key);
    free(count_sql);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
    json_decref(order);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cdb_service svc; /* no pool: the collection look-up answers DATABASE_UNAVAILABLE */
    if (size < 1)
        return 0;
    const cdb_principal *who = &users[data[0] & 3];
    if (data[0] & 0x10) {
        fuzz_path(data + 1, size - 1);
        return 0;
    }
    json_t *r = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (!r)
        return 0;
    cdb_error err;
    char *body = NULL;
    cdb_error_init(&err);

    if (json_is_object(r)) {
        int rc = cdb__doc_query(&svc, who, r, 0, &body, &err);
        check_code("cdb__doc_query", rc, true);
        if (body)
            abort();
        if (rc == CDB_ERR_DATABASE_UNAVAILABLE || rc == CDB_ERR_UNKNOWN_TABLE)
            fuzz_build(who, r);
    }

    /* the whole body as filters: every operator on every path the fuzzer makes */
    cdb_sql w;
    cdb_sql_init(&w);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    int rc = cdb__doc_where(&w, r, &err);
    check_code("cdb__doc_where", rc, false);
    if (rc == 0 && w.text && *w.text) {
        if (w.oom || strncmp(w.text, " WHERE ", 7) != 0)
            abort();
        fuzz_doc_sql_check(w.text, w.nparams, w.params);
        check_values_bound(r, w.text);
    }
    if (rc == 0 && json_object_size(r) > 0 && !(w.text && *w.text))
        abort(); /* filters given, none applied */
    cdb_sql_destroy(&w);

    /* the whole body as a document: accepted exactly when an object at most 32 deep */
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    rc = cdb__doc_check("document", r, CDB_DOC_MAX_BYTES, &err);
    bool ok = json_is_object(r) && fuzz_json_depth(r) <= CDB_DOC_MAX_DEPTH;
    if ((rc == 0) != ok || (rc != 0 && rc != CDB_ERR_VALIDATION_FAILED)) {
        fprintf(stderr, "document of depth %d %s\n", fuzz_json_depth(r), rc == 0 ? "accepted" : "refused");
        abort();
    }
    cdb_error_destroy(&err);
    json_decref(r);
    return 0;
}
