/*
 * access_owner.c - handing an object to another owner
 * (cdb_access_transfer_ownership, access.h).
 *
 * Resolution. Relations by exact catalog name (access.c); a function by
 * PostgreSQL's own regprocedure input (to_regprocedure: the text is a
 * bound parameter, the signature syntax is PostgreSQL's), and what reaches
 * ALTER FUNCTION is the catalog's rendering, oid::regprocedure::text;
 * schemas and databases by a strict name matched in the catalog.
 *
 * Membership. PostgreSQL 15 lets a non-superuser run ALTER ... OWNER TO
 * only as a member of the new owner (so that nobody gives objects to a
 * role they could not act as). coredb's login is never a member of an
 * application's role (admin_sql.h refuses those), so for the statement it
 * is granted the membership, and the grant is revoked again before the
 * commit: the transaction either leaves the object with its new owner and
 * the login as it was, or changes nothing. The GRANT needs CREATEROLE or
 * ADMIN OPTION on the role; without it the answer is FORBIDDEN naming that.
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

#define ACTION "ownership.transfer"
#define SIGNATURE_MAX 1024

static const char *const FIELDS[] = {"object_type", "object_name", "new_owner", NULL};

/* $1 signature: the function, as the catalog renders it, its owner, whether it is coredb's or the system's. */
static const char FUNCTION_SQL[] =
    "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner), " CDB__ACCESS_SYSTEM_NS("n")
    " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE p.oid = to_regprocedure($1) AND p.prokind = 'f'";

/* $1 schema: its owner, whether it is coredb's, the system's, or holds coredb's tables. */
static const char SCHEMA_SQL[] =
    "SELECT n.nspname, pg_get_userbyid(n.nspowner), " CDB__ACCESS_SYSTEM_NS("n")
    " OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND n.nspname = 'public'"
    "            AND c.relname IN (" CDB__ACCESS_OWN_TABLES "))"
    " FROM pg_namespace n WHERE n.nspname = $1";

/* $1 database: its owner, whether it is the one coredb runs on (or a template). */
static const char DATABASE_SQL[] =
    "SELECT d.datname, pg_get_userbyid(d.datdba), d.datname = current_database() OR d.datistemplate"
    " FROM pg_database d WHERE d.datname = $1";

/*
 * Transfers run one after the other, across instances: two ALTER ... OWNER
 * of one schema, function or database (or two borrowed memberships of one
 * role) at once would otherwise fail with "tuple concurrently updated".
 * They are rare; a single key is enough.
 */
static const char LOCK_SQL[] = "SELECT pg_advisory_xact_lock(hashtextextended('coredb.access.ownership', 0))";

/* Whether coredb's login may already run ALTER ... OWNER TO $1 without a temporary membership. */
static const char MEMBER_SQL[] =
    "SELECT r.rolsuper OR pg_has_role(current_user, $1, 'MEMBER') FROM pg_roles r WHERE r.rolname = current_user";

typedef enum { OBJ_TABLE, OBJ_VIEW, OBJ_SEQUENCE, OBJ_FUNCTION, OBJ_SCHEMA, OBJ_DATABASE } obj_type;
static const char *const TYPES[] = {"table", "view", "sequence", "function", "schema", "database", NULL};

/* The object as the catalog names it: the SQL that names it, and its name for the answer. */
typedef struct owned_obj {
    char *sql_name;                /* quoted / rendered for the statement, malloc'd */
    char *name;                    /* for the answer and the audit, malloc'd */
    char *owner;                   /* previous owner, malloc'd */
    const char *keyword;           /* TABLE, VIEW, MATERIALIZED VIEW, ... */
    char *table;                   /* relation name for the query cache, or NULL */
} owned_obj;

static void owned_obj_destroy(owned_obj *o)
{
    free(o->sql_name);
    free(o->name);
    free(o->owner);
    free(o->table);
}

/*
 * Runs a look-up whose parameter PostgreSQL parses itself (a function
 * signature): its syntax errors are the request's fault, VALIDATION_FAILED.
 */
static int lookup(PGconn *conn, const char *sql, const char *param, PGresult **out, cdb_error *err)
{
    const char *params[] = {param};
    PGresult *res = cdb_pg_query_params(conn, sql, 1, params);
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
        *out = res;
        return 0;
    }
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int rc;
    if (state && (strncmp(state, "42", 2) == 0 || strncmp(state, "22", 2) == 0))
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "object_name",
                                  "object_name is not a function signature such as schema.name(integer, text)");
    else
        rc = cdb_pg_error_from_result(conn, res, err);
    PQclear(res);
    return rc;
}

static int protected_error(const char *name, cdb_error *err)
{
    return cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", "object_name",
                                "object_name: %s belongs to coredb itself (or the system) and cannot be "
                                "given away through the administration API",
                                name);
}

/* Finds the object of type t named by value (inside the transaction). */
static int resolve(cdb_service *svc, PGconn *conn, obj_type t, const json_t *value, owned_obj *o, cdb_error *err)
{
    PGresult *res = NULL;
    cdb__access_rel rel = {0};
    int rc = 0;
    if (t == OBJ_TABLE || t == OBJ_VIEW || t == OBJ_SEQUENCE) {
        static const char *const kinds[] = {"rp", "vm", "S"};
        if ((rc = cdb__access_rel_find(conn, "object_name", value, svc->cfg->postgres_schema, kinds[t], TYPES[t],
                                       &rel, err)) < 0)
            goto out;
        o->keyword = t == OBJ_TABLE ? "TABLE" : t == OBJ_SEQUENCE ? "SEQUENCE" : rel.kind == 'm' ? "MATERIALIZED VIEW" : "VIEW";
        if (asprintf(&o->sql_name, "%s.%s", rel.qschema, rel.qname) < 0)
            o->sql_name = NULL;
        if (asprintf(&o->name, "%s.%s", rel.schema, rel.name) < 0)
            o->name = NULL;
        o->owner = strdup(rel.owner);
        o->table = t != OBJ_SEQUENCE ? strdup(rel.name) : NULL;
        if (!o->sql_name || !o->name || !o->owner || (t != OBJ_SEQUENCE && !o->table))
            rc = cdb_error_oom(err);
        goto out;
    }
    const char *s = json_is_string(value) ? json_string_value(value) : NULL;
    if (t == OBJ_FUNCTION) {
        if (!s || strlen(s) != json_string_length(value) || !s[0] || strlen(s) > SIGNATURE_MAX) {
            rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "object_name",
                                      "object_name must be a function signature of 1 to %d bytes, such as "
                                      "schema.name(integer, text)",
                                      SIGNATURE_MAX);
            goto out;
        }
        if ((rc = lookup(conn, FUNCTION_SQL, s, &res, err)) < 0)
            goto out;
        o->keyword = "FUNCTION";
    } else {
        if ((rc = cdb__admin_name_check("object_name", value, &s, err)) < 0)
            goto out;
        const char *params[] = {s};
        if ((rc = cdb_pg_exec(conn, t == OBJ_SCHEMA ? SCHEMA_SQL : DATABASE_SQL, 1, params, &res, err)) < 0)
            goto out;
        o->keyword = t == OBJ_SCHEMA ? "SCHEMA" : "DATABASE";
    }
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "object_name", "object_name: no %s named %s",
                                  TYPES[t], strlen(s) > 200 ? "(too long to show)" : s);
        goto out;
    }
    if (PQgetvalue(res, 0, 2)[0] == 't') {
        rc = protected_error(PQgetvalue(res, 0, 0), err);
        goto out;
    }
    o->name = strdup(PQgetvalue(res, 0, 0));
    o->owner = strdup(PQgetvalue(res, 0, 1));
    o->sql_name = t == OBJ_FUNCTION ? strdup(PQgetvalue(res, 0, 0)) : NULL;
    if (t != OBJ_FUNCTION) {
        char *q = cdb__admin_quote(conn, PQgetvalue(res, 0, 0));
        o->sql_name = q ? strdup(q) : NULL;
        PQfreemem(q);
    }
    if (!o->name || !o->owner || !o->sql_name)
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    cdb__access_rel_destroy(&rel);
    return rc;
}

static int owner_in_tx(cdb_service *svc, PGconn *conn, const cdb_principal *caller, const json_t *request,
                       obj_type t, const char *new_owner, owned_obj *o, json_t **out, cdb_error *err)
{
    PGresult *res = NULL;
    char *qo = NULL;
    const char *params[] = {new_owner};
    int rc;
    if ((rc = cdb_pg_exec(conn, LOCK_SQL, 0, NULL, NULL, err)) < 0 ||
        (rc = cdb__admin_role_check(conn, "new_owner", new_owner, true, err)) < 0 ||
        (rc = resolve(svc, conn, t, json_object_get(request, "object_name"), o, err)) < 0 ||
        (rc = cdb_pg_exec(conn, MEMBER_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (!(qo = cdb__admin_quote(conn, new_owner))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    bool borrow = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] != 't';
    /* PostgreSQL 15: ALTER ... OWNER TO needs membership in the new owner */
    if (borrow && (rc = run(conn, err, "GRANT %s TO CURRENT_USER", qo)) < 0) {
        rc = cdb__admin_privilege_error(rc, "become a member of the new owner for the transfer", err);
        goto out;
    }
    if ((rc = run(conn, err, "ALTER %s %s OWNER TO %s", o->keyword, o->sql_name, qo)) < 0 ||
        (borrow && (rc = run(conn, err, "REVOKE %s FROM CURRENT_USER", qo)) < 0) ||
        (rc = cdb_audit_record_in(conn, caller, ACTION, o->name, request, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:s, s:s, s:s, s:s}", "object_type", TYPES[t], "object_name", o->name,
                           "previous_owner", o->owner, "new_owner", new_owner)))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    PQfreemem(qo);
    return rc;
}

int cdb_access_transfer_ownership(cdb_service *svc, const cdb_principal *caller,
                                  const json_t *request, json_t **out, cdb_error *err)
{
    owned_obj o = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    const char *new_owner = NULL;
    int rc, t = 0;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "transfer ownership", err)) < 0 ||
        (rc = cdb__access_fields(request, FIELDS, err)) < 0)
        goto out;
    const json_t *jt = json_object_get(request, "object_type");
    while (TYPES[t] && !(json_is_string(jt) && strcmp(TYPES[t], json_string_value(jt)) == 0 &&
                         strlen(TYPES[t]) == json_string_length(jt)))
        t++;
    if (!TYPES[t]) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "object_type",
                                  "object_type must be one of table, view, sequence, function, schema, database");
        goto out;
    }
    if ((rc = cdb__admin_name_check("new_owner", json_object_get(request, "new_owner"), &new_owner, err)) < 0)
        goto out;
    if (!json_is_string(json_object_get(request, "object_name"))) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "object_name", "object_name must be a string");
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = owner_in_tx(svc, conn, caller, request, (obj_type)t, new_owner, &o, out, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* the connection goes back first: the catalog reload takes one of its own */
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    cdb__admin_announce(svc, o.table);
    cdb_log_info("access.ownership_transferred", "%s %s: owner %s -> %s", TYPES[t], o.name, o.owner, new_owner);

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);
    const json_t *jn = json_is_object(request) ? json_object_get(request, "object_name") : NULL;
    rc = cdb__admin_audit_failure(svc, caller, ACTION, o.name ? o.name : json_string_value(jn), request, rc, err);
    owned_obj_destroy(&o);
    return rc;
}
