/*
 * access_grants.c - a role's exact privileges on a schema and its tables
 * (cdb_access_set_schema_permissions, access.h).
 *
 * Exact, not additive: PUT says "this is the state", so everything the
 * role held on the schema, on each table and view of it and in the default
 * privileges of coredb's login there is revoked first and the list granted
 * after, in one transaction. An operator reading the request knows the
 * result without knowing the history.
 *
 * Tables are granted one by one from the catalog rather than with
 * GRANT ... ON ALL TABLES IN SCHEMA, so that coredb's own tables in public
 * (users and the seed tables, access_internal.h) are skipped: a grant here
 * never reaches password hashes or sessions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "management/access_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

#define run(conn, err, ...) cdb__admin_run((conn), "access.statement_failed", (err), __VA_ARGS__)

#define ACTION "schema.permissions"
enum { MAX_PERMISSIONS = 16 };

static const char *const FIELDS[] = {"role", "permissions", NULL};
static const char *const SCHEMA_PRIVS[] = {"USAGE", "CREATE", NULL};
static const char *const TABLE_PRIVS[] = {"SELECT", "INSERT",     "UPDATE",  "DELETE",
                                          "TRUNCATE", "REFERENCES", "TRIGGER", NULL};

/* $1 schema: it, and whether it is coredb's or the system's. */
static const char SCHEMA_SQL[] =
    "SELECT n.oid::text, " CDB__ACCESS_SYSTEM_NS("n") " FROM pg_namespace n WHERE n.nspname = $1";

/* $1 schema oid: two calls on one schema run one after the other (no "tuple concurrently updated"). */
static const char LOCK_SQL[] = "SELECT pg_advisory_xact_lock(hashtextextended('coredb.access.schema:' || $1, 0))";

/* $1 schema oid: its tables and views that are not coredb's own. */
static const char TABLES_SQL[] =
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.oid = $1::oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " AND NOT " CDB__ACCESS_PROTECTED_REL("c", "n") " ORDER BY c.relname COLLATE \"C\"";

/* Which of list (NULL-terminated) word names, case-insensitively; -1 for none. */
static int word_index(const char *const *list, const json_t *word)
{
    for (int i = 0; json_is_string(word) && list[i]; i++)
        if (strcasecmp(list[i], json_string_value(word)) == 0 && strlen(list[i]) == json_string_length(word))
            return i;
    return -1;
}

/* The permissions as two bit sets (bit i: SCHEMA_PRIVS[i] / TABLE_PRIVS[i]). */
static int parse_permissions(const json_t *v, unsigned *schema_bits, unsigned *table_bits, cdb_error *err)
{
    size_t i;
    const json_t *p;
    *schema_bits = *table_bits = 0;
    if (!json_is_array(v) || json_array_size(v) > MAX_PERMISSIONS)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                    "permissions must be a list (at most %d) of USAGE, CREATE, SELECT, "
                                    "INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER",
                                    MAX_PERMISSIONS);
    json_array_foreach(v, i, p) {
        int s = word_index(SCHEMA_PRIVS, p), t = word_index(TABLE_PRIVS, p);
        if (s < 0 && t < 0)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "permissions",
                                        "permissions may name only USAGE, CREATE, SELECT, INSERT, UPDATE, "
                                        "DELETE, TRUNCATE, REFERENCES, TRIGGER");
        if (s >= 0)
            *schema_bits |= 1u << s;
        else
            *table_bits |= 1u << t;
    }
    return 0;
}

/* "A, B" of the words whose bits are set, into to; *arr the same as JSON. */
static int words(const char *const *list, unsigned bits, char *to, size_t tosize, json_t **arr)
{
    size_t used = 0;
    to[0] = '\0';
    if (!(*arr = json_array()))
        return -1;
    for (int i = 0; list[i]; i++) {
        if (!(bits & (1u << i)))
            continue;
        used += (size_t)snprintf(to + used, tosize - used, "%s%s", used ? ", " : "", list[i]);
        if (json_array_append_new(*arr, json_string(list[i])) < 0)
            return -1;
    }
    return 0;
}

typedef struct grants_req {
    const char *schema, *role;
    unsigned schema_bits, table_bits;
    char slist[64], tlist[128];
    json_t *sarr, *tarr;
} grants_req;

static int grants_in_tx(PGconn *conn, const cdb_principal *caller, const json_t *request, grants_req *q,
                        json_t **out, cdb_error *err)
{
    PGresult *res = NULL;
    char *qs = NULL, *qr = NULL, *qt = NULL;
    json_t *tables = NULL;
    const char *params[] = {q->schema};
    int rc;

    if ((rc = cdb__admin_role_check(conn, "role", q->role, true, err)) < 0 ||
        (rc = cdb_pg_exec(conn, SCHEMA_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "schema_name", "No schema named %s",
                                  q->schema);
        goto out;
    }
    if (PQgetvalue(res, 0, 1)[0] == 't') {
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", "schema_name",
                                  "Schema %s belongs to coredb itself (or the system) and cannot be "
                                  "granted through the administration API",
                                  q->schema);
        goto out;
    }
    char oid[16];
    snprintf(oid, sizeof oid, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    res = NULL;
    const char *oparams[] = {oid};
    if (!(qs = cdb__admin_quote(conn, q->schema)) || !(qr = cdb__admin_quote(conn, q->role)) ||
        !(tables = json_array())) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, LOCK_SQL, 1, oparams, NULL, err)) < 0 ||
        (rc = run(conn, err, "REVOKE ALL ON SCHEMA %s FROM %s", qs, qr)) < 0 ||
        (q->schema_bits && (rc = run(conn, err, "GRANT %s ON SCHEMA %s TO %s", q->slist, qs, qr)) < 0) ||
        (rc = cdb_pg_exec(conn, TABLES_SQL, 1, oparams, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        if (!(qt = cdb__admin_quote(conn, PQgetvalue(res, i, 0))) ||
            json_array_append_new(tables, json_string(PQgetvalue(res, i, 0))) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
        if ((rc = run(conn, err, "REVOKE ALL ON TABLE %s.%s FROM %s", qs, qt, qr)) < 0 ||
            (q->table_bits && (rc = run(conn, err, "GRANT %s ON TABLE %s.%s TO %s", q->tlist, qs, qt, qr)) < 0))
            goto out;
        PQfreemem(qt);
        qt = NULL;
    }
    /* tables coredb's login creates here later follow the same list */
    if ((rc = run(conn, err, "ALTER DEFAULT PRIVILEGES IN SCHEMA %s REVOKE ALL ON TABLES FROM %s", qs, qr)) < 0 ||
        (q->table_bits &&
         (rc = run(conn, err, "ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT %s ON TABLES TO %s", qs, q->tlist,
                   qr)) < 0) ||
        (rc = cdb_audit_record_in(conn, caller, ACTION, q->schema, request, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:s, s:s, s:O, s:O, s:O, s:O}", "schema", q->schema, "role", q->role,
                           "schema_privileges", q->sarr, "table_privileges", q->tarr, "tables", tables,
                           "default_privileges", q->tarr)))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    PQfreemem(qs);
    PQfreemem(qr);
    PQfreemem(qt);
    json_decref(tables);
    return rc;
}

int cdb_access_set_schema_permissions(cdb_service *svc, const cdb_principal *caller,
                                      const char *schema, const json_t *request, json_t **out,
                                      cdb_error *err)
{
    grants_req q = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    json_t *jschema = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "change schema permissions", err)) < 0)
        goto out;
    if (!schema || !(jschema = json_string(schema))) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "schema_name",
                                  "schema_name must be UTF-8 text");
        goto out;
    }
    if ((rc = cdb__admin_name_check("schema_name", jschema, &q.schema, err)) < 0 ||
        (rc = cdb__access_fields(request, FIELDS, err)) < 0 ||
        (rc = cdb__admin_name_check("role", json_object_get(request, "role"), &q.role, err)) < 0 ||
        (rc = parse_permissions(json_object_get(request, "permissions"), &q.schema_bits, &q.table_bits, err)) < 0)
        goto out;
    if (words(SCHEMA_PRIVS, q.schema_bits, q.slist, sizeof q.slist, &q.sarr) < 0 ||
        words(TABLE_PRIVS, q.table_bits, q.tlist, sizeof q.tlist, &q.tarr) < 0) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = grants_in_tx(conn, caller, request, &q, out, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* the connection goes back first: the catalog reload takes one of its own */
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    cdb__admin_announce(svc, NULL);
    cdb_log_info("access.schema_permissions", "role %s on schema %s: %s; tables: %s", q.role, q.schema,
                 q.slist[0] ? q.slist : "-", q.tlist[0] ? q.tlist : "-");

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);
    rc = cdb__admin_audit_failure(svc, caller, ACTION, schema, request, rc, err);
    json_decref(q.sarr);
    json_decref(q.tarr);
    json_decref(jschema);
    return rc;
}
