/*
 * doc_common.c - the document store's shared pieces (data/documents.h):
 * the registry look-up, path filters and document checks.
 *
 * Paths never reach SQL as text: each is checked (store/jsonpath.h) and
 * bound as a text[] parameter (doc #> $n::text[]); values are bound as
 * jsonb text. Only fixed SQL fragments chosen here are appended.
 */
#include "data/documents.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "data/tx_internal.h"
#include "store/catalog.h"
#include "store/jsonpath.h"
#include "store/pg.h"
#include "store/txn.h"

static const char LOOKUP_SQL[] = "SELECT table_name, kind FROM coredb.collections WHERE name = $1";

bool cdb__doc_database(const json_t *db)
{
    const char *s = json_string_value(db);
    return s && (strcmp(s, "documents") == 0 || strcmp(s, "cosmosdb") == 0);
}

/* The registry's row of `name`, read now: a collection the catalog snapshot does not know yet. */
static int lookup_registry(cdb_service *svc, const char *name, char table[64], cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *params[] = {name};
    int rc = cdb_pg_exec(conn, LOOKUP_SQL, 1, params, &res, err);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0 && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 1), "documents") == 0)
        snprintf(table, 64, "%s", PQgetvalue(res, 0, 0));
    else if (rc == 0)
        rc = 1;
    PQclear(res);
    return rc;
}

int cdb__doc_collection(cdb_service *svc, const json_t *name, char table[64], cdb_error *err)
{
    const char *s = json_string_value(name), *kind = NULL, *known = NULL;
    size_t n = s ? strlen(s) : 0;
    int rc = 1;

    if (!s || n == 0 || n != json_string_length(name))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "collection",
                                    "collection must be a non-empty string");
    /* a name the registry cannot hold is no collection: answered without a query */
    if (n > CDB_DOC_COLLECTION_NAME_MAX || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != n)
        goto unknown;
    /* the catalog snapshot holds the registry: no round trip for a known collection */
    cdb_catalog *cat = svc->catalog ? cdb_catalog_cache_get(svc->catalog, err) : NULL;
    if (svc->catalog && !cat)
        return err->code;
    if (cat && (known = cdb_catalog_collection(cat, s, &kind)) != NULL && strcmp(kind, "documents") == 0) {
        snprintf(table, 64, "%s", known);
        rc = 0;
    }
    cdb_catalog_unref(cat);
    if (!known && (rc = lookup_registry(svc, s, table, err)) < 0)
        return rc;
    if (rc == 0)
        return 0;
unknown:
    return cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "collection", s, "Unknown document collection");
}

static int bad_filter(cdb_error *err, const char *path, const char *op, const char *msg)
{
    cdb_error_set(err, CDB_ERR_INVALID_FILTER, "%s", msg);
    cdb_error_detail(err, "field", json_string(path));
    if (op)
        cdb_error_detail(err, "operator", json_string(op));
    return CDB_ERR_INVALID_FILTER;
}

/* Appends "(doc #> $n::text[])". */
static int append_path(cdb_sql *q, const char *lit)
{
    cdb_sql_append(q, "(doc #> ");
    int rc = cdb_sql_param(q, lit);
    cdb_sql_append(q, "::text[])");
    return rc;
}

/* Appends "$n::jsonb" for value v. */
static int append_value(cdb_sql *q, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        q->oom = true;
        return -1;
    }
    int rc = cdb_sql_param(q, text);
    free(text);
    cdb_sql_append(q, "::jsonb");
    return rc;
}

/*
 * eq on a scalar: "doc @> {a:{b:v}} AND (doc #> path) = v". The containment
 * lets PostgreSQL use the collection's GIN index (jsonb_path_ops); the
 * equality keeps eq exact (containment alone would also match v inside an
 * array). Not for paths with a numeric segment (#> reads those as array
 * indexes, which containment cannot express). Appends "doc @> $n::jsonb AND "
 * or nothing; < 0 on failure.
 */
static int append_containment(cdb_sql *q, const char *path, const json_t *v)
{
    if (!json_is_string(v) && !json_is_number(v) && !json_is_boolean(v))
        return 0;
    for (const char *seg = path; seg; seg = strchr(seg, '.') ? strchr(seg, '.') + 1 : NULL) {
        size_t n = strcspn(seg, ".");
        if (strspn(seg, "-0123456789") >= n)
            return 0;
    }
    char *copy = strdup(path);
    json_t *nested = json_deep_copy(v);
    for (char *dot; copy && nested && (dot = strrchr(copy, '.')) != NULL; *dot = '\0') {
        json_t *up = json_object();
        if (!up || json_object_set_new(up, dot + 1, nested) < 0) {
            json_decref(up);
            nested = NULL;
            break;
        }
        nested = up;
    }
    json_t *top = copy && nested ? json_object() : NULL;
    if (top && json_object_set_new(top, copy, nested) < 0) {
        json_decref(top);
        top = NULL;
    } else if (!top) {
        json_decref(nested);
    }
    free(copy);
    if (!top) {
        q->oom = true;
        return -1;
    }
    cdb_sql_append(q, "doc @> ");
    int rc = append_value(q, top);
    cdb_sql_append(q, " AND ");
    json_decref(top);
    return rc < 0 ? -1 : 0;
}

static int condition(cdb_sql *q, const char *path, const char *lit, const char *op, const json_t *v,
                     cdb_error *err)
{
    static const struct { const char *name, *sql; } cmp[] = {
        {"gt", " > "}, {"gte", " >= "}, {"lt", " < "}, {"lte", " <= "},
    };
    int rc = 0;

    if (strcmp(op, "eq") == 0 && append_containment(q, path, v) < 0)
        return -1;
    if (strcmp(op, "eq") == 0 || strcmp(op, "neq") == 0 || strcmp(op, "contains") == 0) {
        rc = append_path(q, lit);
        cdb_sql_append(q, op[0] == 'e' ? " = " : op[0] == 'n' ? " IS DISTINCT FROM " : " @> ");
        return rc < 0 ? rc : append_value(q, v);
    }
    if (strcmp(op, "exists") == 0) {
        if (!json_is_boolean(v))
            return bad_filter(err, path, op, "exists takes true or false");
        rc = append_path(q, lit);
        cdb_sql_append(q, json_is_true(v) ? " IS NOT NULL" : " IS NULL");
        return rc;
    }
    if (strcmp(op, "in") == 0) {
        if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > CDB_SQL_MAX_IN)
            return bad_filter(err, path, op, "in takes a non-empty array of at most 1000 values");
        cdb_sql_append(q, "EXISTS (SELECT 1 FROM jsonb_array_elements(");
        rc = append_value(q, v);
        cdb_sql_append(q, ") e(v) WHERE e.v = ");
        if (rc == 0)
            rc = append_path(q, lit);
        cdb_sql_append(q, ")");
        return rc;
    }
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
        if (strcmp(op, cmp[i].name) != 0)
            continue;
        if (!json_is_number(v) && !json_is_string(v))
            return bad_filter(err, path, op, "gt, gte, lt and lte take a number or a string");
        /* only values of the operand's JSON type: jsonb orders types before values */
        cdb_sql_append(q, "(jsonb_typeof");
        rc = append_path(q, lit);
        cdb_sql_append(q, json_is_number(v) ? " = 'number' AND " : " = 'string' AND ");
        if (rc == 0)
            rc = append_path(q, lit);
        cdb_sql_append(q, cmp[i].sql);
        if (rc == 0)
            rc = append_value(q, v);
        cdb_sql_append(q, ")");
        return rc;
    }
    return bad_filter(err, path, op, "Unknown filter operator (eq neq gt gte lt lte in exists contains)");
}

int cdb__doc_where(cdb_sql *q, const json_t *filters, cdb_error *err)
{
    const char *path, *op;
    json_t *value, *operand;
    int n = 0, rc = 0;

    if (!filters || json_is_null(filters))
        return 0;
    if (!json_is_object(filters))
        return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, "field", "filters",
                                    "filters must be an object of JSON paths");
    json_object_foreach((json_t *)filters, path, value) {
        char *lit = NULL;
        json_t *jpath = json_string(path);
        rc = jpath ? cdb_jsonpath_parse("filters", jpath, &lit, err) : cdb_error_oom(err);
        json_decref(jpath);
        if (rc < 0)
            return rc;
        if (!json_is_object(value)) {
            cdb_sql_append(q, n++ ? " AND " : " WHERE ");
            rc = condition(q, path, lit, "eq", value, err);
        } else if (json_object_size(value) == 0) {
            rc = bad_filter(err, path, NULL, "A filter object needs an operator");
        } else {
            json_object_foreach(value, op, operand) {
                cdb_sql_append(q, n++ ? " AND " : " WHERE ");
                if ((rc = condition(q, path, lit, op, operand, err)) < 0)
                    break;
            }
        }
        free(lit);
        if (rc == -1 && !q->oom)
            return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, "field", "filters",
                                        "Too many filter values");
        if (rc < 0)
            return q->oom ? cdb_error_oom(err) : rc;
    }
    return q->oom ? cdb_error_oom(err) : 0;
}

/* Depth of v's nesting, stopping past limit. */
static int depth_of(const json_t *v, int limit)
{
    int deepest = 0;
    size_t i;
    const char *k;
    json_t *c;
    if (limit < 0)
        return 1;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, c) {
            int d = depth_of(c, limit - 1);
            if (d > deepest)
                deepest = d;
            if (deepest > limit)
                break;
        }
        return deepest + 1;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, c) {
            int d = depth_of(c, limit - 1);
            if (d > deepest)
                deepest = d;
            if (deepest > limit)
                break;
        }
        return deepest + 1;
    }
    return 0;
}

typedef struct size_count {
    size_t total, max;
} size_count;

/* Stops the dump as soon as it passes the limit. */
static int count_size(const char *buffer, size_t size, void *data)
{
    (void)buffer;
    size_count *c = data;
    c->total += size;
    return c->total > c->max ? -1 : 0;
}

int cdb__doc_check(const char *field, const json_t *doc, size_t max_bytes, cdb_error *err)
{
    size_count size = {0, max_bytes};
    if (!json_is_object(doc))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s must be a JSON object",
                                    field);
    if (depth_of(doc, CDB_DOC_MAX_DEPTH) > CDB_DOC_MAX_DEPTH)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s is nested deeper than %d levels", field, CDB_DOC_MAX_DEPTH);
    if (json_dump_callback(doc, count_size, &size, JSON_COMPACT) < 0 || size.total > max_bytes)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s is larger than %zu bytes (DOC_MAX_BYTES)", field, max_bytes);
    return 0;
}

bool cdb__doc_id_valid(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= CDB_DOC_ID_MAX &&
           strlen(json_string_value(v)) == json_string_length(v);
}

int cdb__doc_op_params(tx_op *op, const char *const *values, int n, cdb_error *err)
{
    if (!(op->params = calloc((size_t)n + 1, sizeof *op->params)))
        return cdb_error_oom(err);
    op->nparams = n;
    for (int k = 0; k < n; k++)
        if (values[k] && !(op->params[k] = strdup(values[k])))
            return cdb_error_oom(err);
    return 0;
}
