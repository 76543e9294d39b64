/*
 * doc_query.c - POST /data/query with database "documents" (or "cosmosdb"):
 * path filters, projection and ordering over one collection
 * (coredb/documents.h), through the same gates as tables (query.c): shape
 * validated first, the collection's table from the registry, the result
 * cache (generation counter per collection), then one pipelined round trip
 * under the caller's role, so row-level security decides what is seen.
 *
 * The rows statement is "SELECT row FROM (SELECT * FROM t WHERE filters) d
 * ORDER BY ... LIMIT/OFFSET": the filters' parameters come first, so the
 * count statement (the same FROM and WHERE) binds a prefix of them.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "data/documents.h"
#include "data/data_internal.h"
#include "store/jsonpath.h"
#include "store/qcache.h"

#define SELECT_MAX 64
#define ORDER_MAX 8

static const char ROW_ALL[] =
    "json_build_object('id', d.id, 'partition_key', d.partition_key, 'doc', d.doc, 'etag', d.etag,"
    " 'created_at', d.created_at, 'updated_at', d.updated_at)";

static int invalid(cdb_error *err, const char *field, const char *msg)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s", msg);
}

/* order_by: {path, direction} or a list of them, normalized into *out. */
static int parse_order(const json_t *v, json_t **out, cdb_error *err)
{
    json_t *list = json_is_object(v) ? json_pack("[O]", v) : json_incref((json_t *)v);
    size_t i;
    json_t *o;
    int rc = 0;

    *out = json_array();
    if (!*out || (v && !list)) {
        json_decref(list);
        return cdb_error_oom(err);
    }
    if (!v || json_is_null(v))
        goto out;
    if (!json_is_array(list) || json_array_size(list) > ORDER_MAX) {
        rc = invalid(err, "order_by", "order_by must be a list of at most 8 {path, direction}");
        goto out;
    }
    json_array_foreach(list, i, o) {
        json_t *path = json_object_get(o, "path"), *dir = json_object_get(o, "direction");
        const char *d = dir ? json_string_value(dir) : "asc";
        char *lit = NULL;
        if (!json_is_object(o) || json_object_size(o) != 1u + (dir != NULL) || !d ||
            (strcasecmp(d, "asc") && strcasecmp(d, "desc"))) {
            rc = invalid(err, "order_by", "order_by must be a list of {path, direction: asc|desc}");
            goto out;
        }
        if ((rc = cdb_jsonpath_parse("order_by", path, &lit, err)) < 0)
            goto out;
        free(lit);
        json_array_append_new(*out, json_pack("{s:O, s:s}", "path", path, "direction",
                                              strcasecmp(d, "asc") == 0 ? "asc" : "desc"));
    }
out:
    json_decref(list);
    return rc;
}

static int parse_select(const json_t *v, cdb_error *err)
{
    size_t i;
    json_t *p;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > SELECT_MAX)
        return invalid(err, "select", "select must be a non-empty list of at most 64 paths");
    json_array_foreach(v, i, p) {
        char *lit = NULL;
        int rc = cdb_jsonpath_parse("select", p, &lit, err);
        free(lit);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Appends "$n::text[]" for path (already checked). */
static int bind_path(cdb_sql *q, const json_t *path, cdb_error *err)
{
    char *lit = NULL;
    int rc = cdb_jsonpath_parse("select", path, &lit, err);
    if (rc == 0 && cdb_sql_param(q, lit) < 0)
        rc = q->oom ? cdb_error_oom(err) : invalid(err, "select", "Too many parameters");
    cdb_sql_append(q, "::text[]");
    free(lit);
    return rc;
}

/*
 * The WHERE is built first, on its own, so its parameters are $1..$k: the
 * count statement binds exactly those, and the rows statement puts its
 * projection's and order's parameters after them (PostgreSQL does not mind
 * $5 appearing before $1 in the text).
 */
static int build_sql(const char *qtable, const json_t *filters, const json_t *select, const json_t *order,
                     json_int_t page, json_int_t limit, cdb_sql *q, char **count_sql, int *count_nparams,
                     cdb_error *err)
{
    cdb_sql w;
    size_t i;
    json_t *v;
    char num[24];
    int rc;

    cdb_sql_init(&w);
    if ((rc = cdb__doc_where(&w, filters, err)) < 0)
        goto out;
    *count_nparams = w.nparams;
    cdb_sql_take_params(q, &w);
    if (w.oom || asprintf(count_sql, "SELECT count(*) FROM coredb.%s%s", qtable, w.text ? w.text : "") < 0) {
        *count_sql = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    cdb_sql_append(q, "SELECT ");
    if (select) {
        cdb_sql_append(q, "jsonb_build_object('id', d.id, 'etag', d.etag");
        json_array_foreach(select, i, v) {
            cdb_sql_append(q, ", ");
            if (cdb_sql_param(q, json_string_value(v)) < 0) {
                rc = invalid(err, "select", "Too many parameters");
                goto out;
            }
            cdb_sql_append(q, "::text, d.doc #> ");
            if ((rc = bind_path(q, v, err)) < 0)
                goto out;
        }
        cdb_sql_append(q, ")::text");
    } else {
        cdb_sql_append(q, ROW_ALL);
        cdb_sql_append(q, "::text");
    }
    cdb_sql_append(q, " FROM coredb.");
    cdb_sql_append(q, qtable);
    cdb_sql_append(q, " d");
    if (w.text)
        cdb_sql_append(q, w.text);
    json_array_foreach(order, i, v) {
        cdb_sql_append(q, i ? ", " : " ORDER BY ");
        cdb_sql_append(q, "d.doc #> ");
        if ((rc = bind_path(q, json_object_get(v, "path"), err)) < 0)
            goto out;
        cdb_sql_append(q, strcmp(json_string_value(json_object_get(v, "direction")), "asc") == 0 ? " ASC"
                                                                                                : " DESC");
    }
    cdb_sql_append(q, json_array_size(order) ? ", d.id LIMIT " : " ORDER BY d.id LIMIT ");
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, limit);
    rc = cdb_sql_param(q, num);
    cdb_sql_append(q, "::bigint OFFSET ");
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, (page - 1) * limit);
    if (rc == 0)
        rc = cdb_sql_param(q, num);
    cdb_sql_append(q, "::bigint");
    rc = rc < 0 || q->oom ? cdb_error_oom(err) : 0;
out:
    cdb_sql_destroy(&w);
    return rc;
}

static char *cache_key(const cdb_principal *p, const char *collection, const json_t *filters,
                       const json_t *select, const json_t *order, json_int_t page, json_int_t limit)
{
    json_t *canon = json_pack("{s:s, s:s, s:O?, s:O?, s:O, s:{s:I, s:I}}", "database", "documents",
                              "collection", collection, "select", select, "filters", filters, "order_by",
                              order, "pagination", "page", page, "limit", limit);
    return cdb__query_cache_key(p, canon);
}

int cdb__doc_query(cdb_service *svc, const cdb_principal *p, json_t *r, int64_t start_us, char **body_out,
                   cdb_error *err)
{
    static const char *const members[] = {"database", "query_type", "collection", "select", "filters",
                                          "order_by", "pagination", NULL};
    json_t *order = NULL, *select = json_object_get(r, "select"), *filters = json_object_get(r, "filters");
    json_t *qt = json_object_get(r, "query_type");
    json_int_t page, limit;
    cdb_qcache_lookup lk = {0};
    char table[64], gen[96], *qtable = NULL, *count_sql = NULL, *key = NULL, *part = NULL;
    size_t len = 0;
    bool cacheable = true;
    int count_nparams = 0, rc;
    const char *k;
    json_t *v;
    cdb_sql q;

    cdb_sql_init(&q);
    json_object_foreach(r, k, v) {
        const char *const *m = members;
        while (*m && strcmp(*m, k))
            m++;
        if (!*m) {
            rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", k, "Unknown field");
            goto out;
        }
    }
    if (qt && !(json_is_string(qt) && strcmp(json_string_value(qt), "select") == 0)) {
        rc = invalid(err, "query_type", "query_type must be \"select\" for documents");
        goto out;
    }
    if (json_is_null(select))
        select = NULL;
    if (json_is_null(filters))
        filters = NULL;
    if ((rc = parse_select(select, err)) < 0 || (rc = parse_order(json_object_get(r, "order_by"), &order, err)) < 0 ||
        (rc = cdb__query_pagination(json_object_get(r, "pagination"), p->role, &page, &limit, err)) < 0)
        goto out;
    /* the WHERE is checked (paths, operators) before anything is looked up */
    {
        cdb_sql probe;
        cdb_sql_init(&probe);
        rc = cdb__doc_where(&probe, filters, err);
        cdb_sql_destroy(&probe);
        if (rc < 0)
            goto out;
    }
    if ((rc = cdb__doc_collection(svc, json_object_get(r, "collection"), table, err)) < 0)
        goto out;
    /* the registry's table name, [a-z0-9_] by its CHECK, quoted all the same */
    if (asprintf(&qtable, "\"%s\"", table) < 0) {
        qtable = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = build_sql(qtable, filters, select, order, page, limit, &q, &count_sql, &count_nparams, err)) < 0 ||
        (rc = cdb_qcache_ensure_namespace(svc->qcache, svc->pool, err)) < 0)
        goto out;
    const char *collection = json_string_value(json_object_get(r, "collection"));
    snprintf(gen, sizeof gen, CDB_DOC_GEN_PREFIX "%s", collection);
    if (cdb_qcache_enabled(svc->qcache)) {
        if (!(key = cache_key(p, collection, filters, select, order, page, limit))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        cdb_qcache_get(svc->qcache, gen, key, &lk);
        if (lk.hit) {
            if (!(*body_out = cdb__query_wrap(lk.value, lk.len, start_us, true)))
                rc = cdb_error_oom(err);
            goto out;
        }
    }
    rc = cdb__query_run(svc, p, &q, count_sql, count_nparams, page, limit, &part, &len,
                        lk.leader ? lk.lsn_seen : UINT64_MAX, &cacheable, err);
    if (lk.leader) {
        if (rc == 0 && cacheable)
            cdb_qcache_store(svc->qcache, gen, key, lk.generation, part, len);
        else
            cdb_qcache_abandon(svc->qcache, key);
    }
    if (rc == 0 && !(*body_out = cdb__query_wrap(part, len, start_us, false)))
        rc = cdb_error_oom(err);
out:
    free(lk.value);
    free(part);
    free(key);
    free(count_sql);
    free(qtable);
    cdb_sql_destroy(&q);
    json_decref(order);
    return rc;
}
