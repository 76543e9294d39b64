/*
 * collections.c - the registry of document and vector collections
 * (coredb/collections.h): a row of coredb.collections and the table
 * coredb.coll_<name> with its grants and row-level security, created and
 * dropped in one transaction with their audit record.
 *
 * Identifiers. The name is checked to [a-z0-9_] before anything runs, and
 * the table name built from it is quoted with PQescapeIdentifier; the
 * partition key path becomes a text[] literal of checked segments, quoted
 * with PQescapeLiteral (a generated column's expression cannot take a
 * parameter). Drop reads the table name back from the registry.
 */
#include "coredb/collections.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "coredb/role.h"
#include "management/admin_sql.h"
#include "security/service_state.h"
#include "store/jsonpath.h"
#include "store/pg.h"
#include "store/txn.h"

#define run(conn, err, ...) cdb__admin_run((conn), "collections.statement_failed", (err), __VA_ARGS__)

#define TABLE_PREFIX "coll_"
#define APP_ROLES "coredb_admin, coredb_user, coredb_premium"
#define USER_ROLES "coredb_user, coredb_premium, coredb_user_ro, coredb_premium_ro"
#define RO_ROLES "coredb_user_ro, coredb_premium_ro, coredb_admin_ro"

static const char INSERT_SQL[] =
    "INSERT INTO coredb.collections (name, kind, table_name, partition_key, dimensions, metric, created_by,"
    "  vector_index, hnsw_m, hnsw_ef_construction, hnsw_ef_search)"
    " VALUES ($1, $2, $3, $4, $5::integer, $6, $7, $8, $9::integer, $10::integer, $11::integer)"
    " ON CONFLICT (name) DO NOTHING RETURNING name";

/* $1 name (NULL: all) */
static const char LIST_SQL[] =
    "SELECT coalesce(json_agg(json_build_object('name', c.name, 'kind', c.kind, 'table', c.table_name,"
    "  'schema', 'coredb', 'partition_key', c.partition_key, 'dimensions', c.dimensions,"
    "  'metric', c.metric, 'created_at', c.created_at, 'index', c.vector_index,"
    "  'hnsw', CASE WHEN c.vector_index = 'hnsw' THEN json_build_object('m', c.hnsw_m,"
    "    'ef_construction', c.hnsw_ef_construction, 'ef_search', c.hnsw_ef_search) END,"
    "  'version', c.version,"
    "  'count', (SELECT coalesce(s.n_live_tup, 0) FROM pg_stat_user_tables s"
    "            WHERE s.schemaname = 'coredb' AND s.relname = c.table_name))"
    "  ORDER BY c.name COLLATE \"C\"), '[]')::text"
    " FROM coredb.collections c WHERE $1::text IS NULL OR c.name = $1";

static const char DELETE_SQL[] = "DELETE FROM coredb.collections WHERE name = $1 RETURNING table_name";

typedef struct coll_req {
    const char *name;
    const char *kind;
    char *partition;               /* text[] literal, malloc'd; NULL without one */
    const char *partition_path;    /* as given */
    char dims[16];                 /* "" unless vectors */
    const char *metric;            /* NULL unless vectors */
    const char *index;             /* "exact" | "hnsw" for vectors, else NULL */
    char m[16], efc[16], efs[16];  /* hnsw parameters, "" unless hnsw */
} coll_req;

/* The query cache's answers of collection `name` are dropped: its generation
 * counter is "documents:<name>" (the data API's, src/data/documents.h). */
static void announce(cdb_service *svc, const char *name)
{
    char gen[CDB_ADMIN_IDENT_MAX + 16];
    snprintf(gen, sizeof gen, "documents:%s", name);
    cdb__admin_announce(svc, gen);
}

static int field_fail(cdb_error *err, const char *field, const char *msg)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s", msg);
}

static int check_name(const json_t *v, const char **out, cdb_error *err)
{
    int rc = cdb__admin_name_check("name", v, out, err);
    if (rc == 0 && strlen(*out) > CDB_COLLECTION_NAME_MAX)
        rc = field_fail(err, "name", "name must be at most 58 characters");
    return rc;
}

/* One hnsw option: absent -> def; else an integer in [lo, hi]. */
static int hnsw_option(const json_t *opts, const char *key, int lo, int hi, int def, char *out, size_t outlen,
                       cdb_error *err)
{
    json_t *v = json_object_get(opts, key);
    char field[32];
    snprintf(field, sizeof field, "hnsw.%s", key);
    if (v && !(json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be an integer from %d to %d", field, lo, hi);
    snprintf(out, outlen, "%d", v ? (int)json_integer_value(v) : def);
    return 0;
}

/* index and hnsw of a vector collection (collections.h). */
static int parse_index(const json_t *r, coll_req *c, cdb_error *err)
{
    json_t *index = json_object_get(r, "index"), *opts = json_object_get(r, "hnsw");
    const char *key;
    json_t *v;
    char field[80];
    c->index = "exact";
    if (index && !json_is_null(index)) {
        const char *ix = json_is_string(index) ? json_string_value(index) : "";
        if (strcmp(ix, "exact") && strcmp(ix, "hnsw"))
            return field_fail(err, "index", "index must be \"exact\" or \"hnsw\"");
        c->index = ix;
    }
    if (opts && !json_is_null(opts) && strcmp(c->index, "hnsw"))
        return field_fail(err, "hnsw", "hnsw options need index \"hnsw\"");
    if (strcmp(c->index, "hnsw"))
        return 0;
    if (opts && !json_is_null(opts) && !json_is_object(opts))
        return field_fail(err, "hnsw", "hnsw must be an object {m, ef_construction, ef_search}");
    json_object_foreach((json_t *)opts, key, v) {
        if (strcmp(key, "m") && strcmp(key, "ef_construction") && strcmp(key, "ef_search")) {
            snprintf(field, sizeof field, "hnsw.%.64s", key);
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                        "Unknown field %s (expected m, ef_construction, ef_search)", field);
        }
    }
    static const struct { const char *key; int lo, hi, def; } o[] = {
        {"m", 4, 64, 16}, {"ef_construction", 8, 1000, 200}, {"ef_search", 10, 2000, 100}};
    char *outs[] = {c->m, c->efc, c->efs};
    for (int i = 0; i < 3; i++)
        if (hnsw_option(opts, o[i].key, o[i].lo, o[i].hi, o[i].def, outs[i], sizeof c->m, err) < 0)
            return err->code;
    return 0;
}

static int parse_request(const json_t *r, coll_req *c, cdb_error *err)
{
    if (!json_is_object(r))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)r, key, v) {
        if (strcmp(key, "name") && strcmp(key, "kind") && strcmp(key, "partition_key") &&
            strcmp(key, "dimensions") && strcmp(key, "metric") && strcmp(key, "index") && strcmp(key, "hnsw"))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key,
                                        "Unknown field %s (expected name, kind, partition_key, dimensions, metric,"
                                        " index, hnsw)",
                                        key);
    }
    int rc = check_name(json_object_get(r, "name"), &c->name, err);
    if (rc < 0)
        return rc;
    json_t *kind = json_object_get(r, "kind");
    c->kind = json_is_string(kind) ? json_string_value(kind) : NULL;
    if (!c->kind || (strcmp(c->kind, "documents") && strcmp(c->kind, "vectors")))
        return field_fail(err, "kind", "kind must be \"documents\" or \"vectors\"");
    bool vectors = strcmp(c->kind, "vectors") == 0;
    json_t *pk = json_object_get(r, "partition_key"), *dims = json_object_get(r, "dimensions"),
           *metric = json_object_get(r, "metric");
    if (pk && !json_is_null(pk)) {
        if (vectors)
            return field_fail(err, "partition_key", "partition_key is for document collections");
        if ((rc = cdb_jsonpath_parse("partition_key", pk, &c->partition, err)) < 0)
            return rc;
        c->partition_path = json_string_value(pk);
    }
    if (!vectors) {
        if (dims || metric)
            return field_fail(err, dims ? "dimensions" : "metric",
                              "dimensions and metric are for vector collections");
        if (json_object_get(r, "index") || json_object_get(r, "hnsw"))
            return field_fail(err, json_object_get(r, "index") ? "index" : "hnsw",
                              "index and hnsw are for vector collections");
        return 0;
    }
    if (!json_is_integer(dims) || json_integer_value(dims) < 1 ||
        json_integer_value(dims) > CDB_VECTOR_DIMENSIONS_MAX)
        return field_fail(err, "dimensions", "dimensions must be an integer from 1 to 4096");
    snprintf(c->dims, sizeof c->dims, "%d", (int)json_integer_value(dims));
    c->metric = "cosine";
    if (metric) {
        const char *m = json_is_string(metric) ? json_string_value(metric) : "";
        if (strcmp(m, "cosine") && strcmp(m, "l2") && strcmp(m, "dot"))
            return field_fail(err, "metric", "metric must be \"cosine\", \"l2\" or \"dot\"");
        c->metric = m;
    }
    return parse_index(r, c, err);
}

/* The table, its indexes, grants and policies: the caller's transaction is open. */
static int create_table(PGconn *conn, const coll_req *c, const char *qt, cdb_error *err)
{
    char *qpart = NULL;
    int rc;
    if (c->partition && !(qpart = PQescapeLiteral(conn, c->partition, strlen(c->partition))))
        return cdb_error_oom(err);
    if (c->metric)
        rc = run(conn, err,
                 "CREATE TABLE coredb.%s ("
                 " id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),"
                 " user_id uuid NOT NULL DEFAULT coredb.current_user_id(),"
                 " vector real[] NOT NULL CHECK (array_ndims(vector) = 1 AND cardinality(vector) = %s),"
                 " payload jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),"
                 " etag text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),"
                 " created_at timestamptz NOT NULL DEFAULT now(),"
                 " updated_at timestamptz NOT NULL DEFAULT now())",
                 qt, c->dims);
    else if (qpart)
        rc = run(conn, err,
                 "CREATE TABLE coredb.%s ("
                 " id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),"
                 " user_id uuid NOT NULL DEFAULT coredb.current_user_id(),"
                 " partition_key text GENERATED ALWAYS AS (doc #>> %s::text[]) STORED,"
                 " doc jsonb NOT NULL CHECK (jsonb_typeof(doc) = 'object'),"
                 " etag text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),"
                 " created_at timestamptz NOT NULL DEFAULT now(),"
                 " updated_at timestamptz NOT NULL DEFAULT now())",
                 qt, qpart);
    else
        rc = run(conn, err,
                 "CREATE TABLE coredb.%s ("
                 " id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),"
                 " user_id uuid NOT NULL DEFAULT coredb.current_user_id(),"
                 " partition_key text,"
                 " doc jsonb NOT NULL CHECK (jsonb_typeof(doc) = 'object'),"
                 " etag text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text),"
                 " created_at timestamptz NOT NULL DEFAULT now(),"
                 " updated_at timestamptz NOT NULL DEFAULT now())",
                 qt);
    if (rc < 0)
        goto out;
    const char *json_col = c->metric ? "payload" : "doc";
    if ((rc = run(conn, err, "CREATE INDEX ON coredb.%s USING gin (%s jsonb_path_ops)", qt, json_col)) < 0 ||
        (rc = run(conn, err, "CREATE INDEX ON coredb.%s (user_id)", qt)) < 0 ||
        (!c->metric && (rc = run(conn, err, "CREATE INDEX ON coredb.%s (partition_key)", qt)) < 0) ||
        (rc = run(conn, err, "GRANT SELECT, INSERT, UPDATE, DELETE ON coredb.%s TO " APP_ROLES, qt)) < 0 ||
        (rc = run(conn, err, "GRANT SELECT ON coredb.%s TO " RO_ROLES, qt)) < 0 ||
        (rc = run(conn, err, "ALTER TABLE coredb.%s ENABLE ROW LEVEL SECURITY", qt)) < 0 ||
        (rc = run(conn, err,
                  "CREATE POLICY coredb_admin ON coredb.%s TO coredb_admin, coredb_admin_ro"
                  " USING (true) WITH CHECK (true)", qt)) < 0 ||
        (rc = run(conn, err, "CREATE POLICY coredb_rows ON coredb.%s TO " USER_ROLES " USING (true) WITH CHECK (true)",
                  qt)) < 0 ||
        (rc = run(conn, err,
                  "CREATE POLICY coredb_own_user_id ON coredb.%s AS RESTRICTIVE TO " USER_ROLES
                  " USING (user_id = coredb.current_user_id()) WITH CHECK (user_id = coredb.current_user_id())",
                  qt)) < 0)
        goto out;
    /* hnsw: every write statement bumps the registry's version, which the index follows */
    if (c->index && strcmp(c->index, "hnsw") == 0 &&
        (rc = run(conn, err,
                  "CREATE TRIGGER coredb_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON coredb.%s"
                  " FOR EACH STATEMENT EXECUTE FUNCTION coredb.collection_version_bump()", qt)) < 0)
        goto out;
out:
    PQfreemem(qpart);
    return rc;
}

/* One collection as the list shows it, read inside the transaction. */
static int read_one(PGconn *conn, const char *name, json_t **out, cdb_error *err)
{
    PGresult *res = NULL;
    json_t *all = NULL;
    const char *params[] = {name};
    int rc = cdb_pg_exec(conn, LIST_SQL, 1, params, &res, err);
    if (rc == 0 && (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &all, err)) == 0) {
        *out = json_incref(json_array_get(all, 0));
        if (!*out)
            rc = cdb_error_oom(err);
    }
    json_decref(all);
    PQclear(res);
    return rc;
}

int cdb_collections_create(cdb_service *svc, const cdb_principal *caller, json_t *request,
                           json_t **out, cdb_error *err)
{
    coll_req c = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    char *qt = NULL;
    char table[CDB_ADMIN_IDENT_MAX + 1];
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "create collections", err)) < 0 ||
        (rc = parse_request(request, &c, err)) < 0)
        goto out;
    snprintf(table, sizeof table, TABLE_PREFIX "%s", c.name);
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if (!(qt = cdb__admin_quote(conn, table))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    bool hnsw = c.index && strcmp(c.index, "hnsw") == 0;
    const char *params[] = {c.name, c.kind, table, c.partition_path, c.metric ? c.dims : NULL, c.metric,
                            caller->user_id[0] ? caller->user_id : "cli", c.index, hnsw ? c.m : NULL,
                            hnsw ? c.efc : NULL, hnsw ? c.efs : NULL};
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = cdb_pg_exec(conn, INSERT_SQL, 11, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_CONFLICT, "field", "name", "Collection %s exists already",
                                  c.name);
        goto out;
    }
    if ((rc = create_table(conn, &c, qt, err)) < 0 || (rc = read_one(conn, c.name, out, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "collection.create", c.name, request, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    announce(svc, c.name);
    cdb_log_info("collections.created", "collection %s (%s) created", c.name, c.kind);

out:
    PQclear(res);
    PQfreemem(qt);
    cdb_txn_release(svc->pool, pc);
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
        cdb__admin_audit_failure(svc, caller, "collection.create", c.name, request, rc, err);
    }
    free(c.partition);
    return rc;
}

int cdb_collections_list(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *list = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "list collections", err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *params[] = {NULL};
    if ((rc = cdb_pg_exec(conn, LIST_SQL, 1, params, &res, err)) < 0 ||
        (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &list, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:o}", "collections", list)))
        rc = cdb_error_oom(err);
    list = NULL;
out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb_collections_drop(cdb_service *svc, const cdb_principal *caller, const char *name,
                         json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    char *qt = NULL;
    char table[CDB_ADMIN_IDENT_MAX + 1] = "";
    json_t *jname = name ? json_string(name) : NULL;
    const char *checked;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "drop collections", err)) < 0)
        goto out;
    if (!jname || check_name(jname, &checked, err) < 0) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "name", "Unknown collection");
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *params[] = {name};
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = cdb_pg_exec(conn, DELETE_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "name", "Unknown collection %s", name);
        goto out;
    }
    snprintf(table, sizeof table, "%s", PQgetvalue(res, 0, 0));
    if (!(qt = cdb__admin_quote(conn, table))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = run(conn, err, "DROP TABLE IF EXISTS coredb.%s", qt)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "collection.drop", name, NULL, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    announce(svc, name);
    if (!(*out = json_pack("{s:s, s:b}", "name", name, "dropped", 1)))
        rc = cdb_error_oom(err);
    cdb_log_info("collections.dropped", "collection %s dropped", name);
out:
    PQclear(res);
    PQfreemem(qt);
    cdb_txn_release(svc->pool, pc);
    if (rc < 0)
        cdb__admin_audit_failure(svc, caller, "collection.drop", name, NULL, rc, err);
    json_decref(jname);
    return rc;
}
