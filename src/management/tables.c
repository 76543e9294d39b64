/*
 * tables.c - exposing an application's own tables to the data API
 * (coredb/tables.h): grants, row-level security and the own-rows policy in
 * one transaction, their removal, and the admin's list of the schema.
 *
 * Identifiers. The caller's table name and owner column are only ever bound
 * parameters of catalog look-ups; what reaches DDL is the catalog's own
 * copy (relname, attname) passed through PQescapeIdentifier. A name with
 * SQL in it therefore finds no table and is answered UNKNOWN_TABLE without
 * anything being executed.
 *
 * Concurrency. The table is locked (SHARE ROW EXCLUSIVE, which conflicts
 * with itself) before its policies are read, so two exposes of one table
 * run one after the other instead of racing on DROP/CREATE POLICY.
 *
 * Whose policies. A table with row-level-security policies other than the
 * three made here (coredb_admin, coredb_rows, coredb_own_<column>) is left
 * alone (CONFLICT): those are coredb's own tables (public.users and the seed
 * tables, secured by migrations 004 and 009) or tables whose migration
 * already says who sees what, and replacing that would silently widen access.
 */
#include "coredb/tables.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "coredb/role.h"
#include "security/service_state.h"
#include "management/admin_sql.h"
#include "store/pg.h"
#include "store/txn.h"

/* One DDL statement (admin_sql.h), failures logged as tables.statement_failed. */
#define run(conn, err, ...) cdb__admin_run((conn), "tables.statement_failed", (err), __VA_ARGS__)

#define OWN_PREFIX "coredb_own_"
/* The SELECT-only counterparts of the three roles (migration 013): read
 * connection leases (coredb/leases.h) log in as members of them. */
#define RO_ROLES "coredb_user_ro, coredb_premium_ro, coredb_admin_ro"
/* NAMEDATALEN - 1: a policy name must hold OWN_PREFIX and the column */
#define IDENT_MAX CDB_ADMIN_IDENT_MAX
#define OWNER_MAX (IDENT_MAX - (int)(sizeof OWN_PREFIX - 1))
#define OWNER_DEFAULT_EXPR "coredb.current_user_id()"

/* The application roles in the order results list them; index = cdb_role - 1. */
static const cdb_role ROLES[] = {CDB_ROLE_USER, CDB_ROLE_PREMIUM, CDB_ROLE_ADMIN};
enum { NROLES = 3 };

/* $1 schema, $2 name: the table, and how many policies it has that are not ours. */
static const char LOOKUP_SQL[] =
    "SELECT c.oid::text, c.relname,"
    " (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid"
    "   AND p.polname NOT IN ('coredb_admin', 'coredb_rows') AND left(p.polname, 11) <> '" OWN_PREFIX "')"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/* $1 table oid, $2 column: whether it is uuid, its type, its default. */
static const char OWNER_SQL[] =
    "SELECT a.attname, a.atttypid = 'uuid'::regtype, format_type(a.atttypid, a.atttypmod),"
    " pg_get_expr(d.adbin, d.adrelid)"
    " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    " WHERE a.attrelid = $1::oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

/* $1 table oid: our own-rows policies (one per owner column ever used). */
static const char OWN_POLICIES_SQL[] =
    "SELECT polname FROM pg_policy WHERE polrelid = $1::oid AND left(polname, 11) = '" OWN_PREFIX "'";

/* $1 table oid: the sequences it owns (serial and identity columns), schema-qualified parts. */
static const char SEQUENCES_SQL[] =
    "SELECT sn.nspname, s.relname FROM pg_depend d"
    " JOIN pg_class s ON s.oid = d.objid JOIN pg_namespace sn ON sn.oid = s.relnamespace"
    " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
    " AND d.refobjid = $1::oid AND s.relkind = 'S' AND d.deptype IN ('a', 'i')";

/* $1 table oid: columns whose default is the one expose sets. */
static const char OWNER_DEFAULTS_SQL[] =
    "SELECT a.attname FROM pg_attribute a"
    " JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped"
    " AND pg_get_expr(d.adbin, d.adrelid) = '" OWNER_DEFAULT_EXPR "'";

/* $1 schema, $2..$4 database roles of user, premium, admin: the admin's list. */
static const char LIST_SQL[] =
    "SELECT coalesce(json_agg(t ORDER BY t.name COLLATE \"C\"), '[]')::text FROM ("
    " SELECT c.relname AS name,"
    "  EXISTS (SELECT 1 FROM unnest(ARRAY[$2, $3, $4]::name[]) r(rolname)"
    "          JOIN pg_roles ro USING (rolname)"
    "          WHERE has_table_privilege(ro.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE')) AS exposed,"
    "  EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'coredb_rows') AS managed,"
    "  c.relrowsecurity AS row_security,"
    "  (SELECT substr(p.polname, 12) FROM pg_policy p WHERE p.polrelid = c.oid"
    "    AND left(p.polname, 11) = '" OWN_PREFIX "' ORDER BY p.polname LIMIT 1) AS owner_column,"
    "  (SELECT coalesce(json_agg(p.polname ORDER BY p.polname), '[]') FROM pg_policy p"
    "    WHERE p.polrelid = c.oid) AS policies,"
    "  (SELECT json_object_agg(r.app, ARRAY(SELECT pr FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) pr"
    "                                      WHERE has_table_privilege(ro.oid, c.oid, pr)))"
    "    FROM (VALUES ('user', $2::name), ('premium', $3::name), ('admin', $4::name)) r(app, rolname)"
    "    JOIN pg_roles ro ON ro.rolname = r.rolname) AS privileges,"
    "  (SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod))"
    "                   ORDER BY a.attnum)"
    "    FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')) t";

/* What one call works on: the table as the catalog names it, quoted for DDL. */
typedef struct table_ref {
    char oid[16];
    char *qschema;                 /* PQescapeIdentifier'd, PQfreemem */
    char *qtable;
    char *qroles[NROLES];          /* the database roles, quoted */
    char *name;                    /* relname, malloc'd */
} table_ref;

static void table_ref_destroy(table_ref *t)
{
    PQfreemem(t->qschema);
    PQfreemem(t->qtable);
    for (int i = 0; i < NROLES; i++)
        PQfreemem(t->qroles[i]);
    free(t->name);
}

/*
 * A name that could be a table: valid UTF-8 (json_string checks it) and no
 * longer than PostgreSQL keeps. Anything else cannot name one.
 */
static int check_name(const char *name, cdb_error *err)
{
    json_t *probe = name ? json_string(name) : NULL;
    if (!probe)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "table",
                                    "The table name must be UTF-8 text");
    json_decref(probe);
    if (!name[0] || strlen(name) > IDENT_MAX)
        return cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "table", name, "Unknown table");
    return 0;
}

/*
 * Inside the transaction: finds the table in the schema, locks it and
 * checks that its policies are ours. Fills t.
 */
static int find_table(PGconn *conn, const char *schema, const char *name, table_ref *t, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {schema, name};
    int rc = cdb_pg_exec(conn, LOOKUP_SQL, 2, params, &res, err);
    if (rc < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "table", name,
                                  "Unknown table: no table of that name in schema %s", schema);
        goto out;
    }
    snprintf(t->oid, sizeof t->oid, "%s", PQgetvalue(res, 0, 0));
    t->name = strdup(PQgetvalue(res, 0, 1));
    t->qschema = cdb__admin_quote(conn, schema);
    t->qtable = cdb__admin_quote(conn, PQgetvalue(res, 0, 1));
    for (int i = 0; i < NROLES; i++)
        t->qroles[i] = cdb__admin_quote(conn, cdb_role_db_name(ROLES[i]));
    if (!t->name || !t->qschema || !t->qtable || !t->qroles[0] || !t->qroles[1] || !t->qroles[2]) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (strtol(PQgetvalue(res, 0, 2), NULL, 10) > 0) {
        rc = cdb_error_set_detail(err, CDB_ERR_CONFLICT, "table", name,
                                  "Table %s has row-level security policies of its own (coredb's own "
                                  "tables, or a migration's): expose manages only tables without them",
                                  name);
        goto out;
    }
    /* conflicts with itself: a concurrent expose/unexpose of this table waits for ours */
    rc = run(conn, err, "LOCK TABLE %s.%s IN SHARE ROW EXCLUSIVE MODE", t->qschema, t->qtable);

out:
    PQclear(res);
    return rc;
}

/* Drops every policy expose may have made (any owner column's). */
static int drop_policies(PGconn *conn, const table_ref *t, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {t->oid};
    int rc;
    if ((rc = run(conn, err, "DROP POLICY IF EXISTS coredb_admin ON %s.%s", t->qschema, t->qtable)) < 0 ||
        (rc = run(conn, err, "DROP POLICY IF EXISTS coredb_rows ON %s.%s", t->qschema, t->qtable)) < 0 ||
        (rc = cdb_pg_exec(conn, OWN_POLICIES_SQL, 1, params, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        char *qp = cdb__admin_quote(conn, PQgetvalue(res, i, 0));
        rc = qp ? run(conn, err, "DROP POLICY %s ON %s.%s", qp, t->qschema, t->qtable) : cdb_error_oom(err);
        PQfreemem(qp);
    }
out:
    PQclear(res);
    return rc;
}

/* grant: true for GRANT USAGE, SELECT on the table's sequences, false for REVOKE ALL. */
static int sequences(PGconn *conn, const table_ref *t, bool grant, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {t->oid};
    int rc = cdb_pg_exec(conn, SEQUENCES_SQL, 1, params, &res, err);
    for (int i = 0; rc == 0 && i < PQntuples(res); i++) {
        char *qs = cdb__admin_quote(conn, PQgetvalue(res, i, 0)), *qn = cdb__admin_quote(conn, PQgetvalue(res, i, 1));
        if (!qs || !qn)
            rc = cdb_error_oom(err);
        else if (grant)
            rc = run(conn, err, "GRANT USAGE, SELECT ON SEQUENCE %s.%s TO %s, %s, %s", qs, qn,
                     t->qroles[0], t->qroles[1], t->qroles[2]);
        else
            rc = run(conn, err, "REVOKE ALL ON SEQUENCE %s.%s FROM %s, %s, %s", qs, qn,
                     t->qroles[0], t->qroles[1], t->qroles[2]);
        PQfreemem(qs);
        PQfreemem(qn);
    }
    PQclear(res);
    return rc;
}

/* The request's options: owner column and which of user/premium only read. */
typedef struct expose_opts {
    const char *owner_column;
    bool read_only[NROLES];
} expose_opts;

static int parse_opts(json_t *request, expose_opts *o, cdb_error *err)
{
    *o = (expose_opts){.owner_column = "user_id"};
    if (!request || json_is_null(request))
        return 0;
    if (!json_is_object(request))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach(request, key, v) {
        if (strcmp(key, "owner_column") == 0) {
            if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > OWNER_MAX ||
                strlen(json_string_value(v)) != json_string_length(v))
                return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "owner_column",
                                            "owner_column must be a column name of 1 to %d bytes",
                                            OWNER_MAX);
            o->owner_column = json_string_value(v);
        } else if (strcmp(key, "read_only_for") == 0) {
            if (!json_is_array(v))
                return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "read_only_for",
                                            "read_only_for must be a list of roles (user, premium)");
            size_t i;
            json_t *r;
            json_array_foreach(v, i, r) {
                int role = json_is_string(r) ? cdb_role_parse(json_string_value(r)) : -1;
                if (role != CDB_ROLE_USER && role != CDB_ROLE_PREMIUM)
                    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "read_only_for",
                                                "read_only_for may name only user and premium");
                o->read_only[role - 1] = true;
            }
        } else {
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key,
                                        "Unknown field %s (expected owner_column, read_only_for)", key);
        }
    }
    return 0;
}

/*
 * Checks the owner column (exists, uuid) and sets its default when it has
 * none. *quoted gets the catalog's name quoted (PQfreemem); *default_set
 * whether the default is ours now.
 */
static int owner_column(PGconn *conn, const table_ref *t, const char *column, char **quoted,
                        const char **default_state, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {t->oid, column};
    int rc = cdb_pg_exec(conn, OWNER_SQL, 2, params, &res, err);
    if (rc < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "owner_column",
                                  "owner_column %s is not a column of table %s", column, t->name);
        cdb_error_detail(err, "column", json_string(column));
        goto out;
    }
    if (PQgetvalue(res, 0, 1)[0] != 't') {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "owner_column",
                                  "owner_column %s must be uuid (it is %s)", column, PQgetvalue(res, 0, 2));
        cdb_error_detail(err, "column", json_string(column));
        goto out;
    }
    if (!(*quoted = cdb__admin_quote(conn, PQgetvalue(res, 0, 0)))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (PQgetisnull(res, 0, 3)) {
        rc = run(conn, err, "ALTER TABLE %s.%s ALTER COLUMN %s SET DEFAULT " OWNER_DEFAULT_EXPR,
                 t->qschema, t->qtable, *quoted);
        *default_state = "set";
    } else {
        /* a default of the application's own (or ours from before) stays */
        *default_state = strcmp(PQgetvalue(res, 0, 3), OWNER_DEFAULT_EXPR) == 0 ? "set" : "kept";
    }
out:
    PQclear(res);
    return rc;
}

static json_t *grants_json(const expose_opts *o)
{
    json_t *g = json_object();
    for (int i = 0; g && i < NROLES; i++) {
        json_t *a = o->read_only[i] ? json_pack("[s]", "SELECT")
                                    : json_pack("[ssss]", "SELECT", "INSERT", "UPDATE", "DELETE");
        if (!a || json_object_set_new(g, cdb_role_name(ROLES[i]), a) < 0) {
            json_decref(g);
            return NULL;
        }
    }
    return g;
}

static int expose_in_tx(PGconn *conn, const table_ref *t, const expose_opts *o, char **qowner,
                        const char **default_state, cdb_error *err)
{
    int rc;
    char policy[IDENT_MAX + 1];
    snprintf(policy, sizeof policy, OWN_PREFIX "%s", o->owner_column);
    char *qpolicy = cdb__admin_quote(conn, policy);
    if (!qpolicy)
        return cdb_error_oom(err);

    if ((rc = owner_column(conn, t, o->owner_column, qowner, default_state, err)) < 0 ||
        (rc = run(conn, err, "REVOKE ALL ON %s.%s FROM %s, %s, %s, " RO_ROLES, t->qschema, t->qtable,
                  t->qroles[0], t->qroles[1], t->qroles[2])) < 0 ||
        (rc = run(conn, err, "GRANT SELECT ON %s.%s TO " RO_ROLES, t->qschema, t->qtable)) < 0)
        goto out;
    for (int i = 0; i < NROLES; i++) {
        rc = run(conn, err, "GRANT %s ON %s.%s TO %s",
                 o->read_only[i] ? "SELECT" : "SELECT, INSERT, UPDATE, DELETE", t->qschema, t->qtable,
                 t->qroles[i]);
        if (rc < 0)
            goto out;
    }
    const char *own = *qowner;
    if ((rc = sequences(conn, t, true, err)) < 0 ||
        (rc = run(conn, err, "ALTER TABLE %s.%s ENABLE ROW LEVEL SECURITY", t->qschema, t->qtable)) < 0 ||
        (rc = drop_policies(conn, t, err)) < 0 ||
        (rc = run(conn, err,
                  "CREATE POLICY coredb_admin ON %s.%s TO %s, coredb_admin_ro USING (true) WITH CHECK (true)",
                  t->qschema, t->qtable, t->qroles[2])) < 0 ||
        (rc = run(conn, err,
                  "CREATE POLICY coredb_rows ON %s.%s TO %s, %s, coredb_user_ro, coredb_premium_ro"
                  " USING (true) WITH CHECK (true)",
                  t->qschema, t->qtable, t->qroles[0], t->qroles[1])) < 0 ||
        (rc = run(conn, err,
                  "CREATE POLICY %s ON %s.%s AS RESTRICTIVE TO %s, %s, coredb_user_ro, coredb_premium_ro"
                  " USING (%s = " OWNER_DEFAULT_EXPR ") WITH CHECK (%s = " OWNER_DEFAULT_EXPR ")",
                  qpolicy, t->qschema, t->qtable, t->qroles[0], t->qroles[1], own, own)) < 0)
        goto out;
out:
    PQfreemem(qpolicy);
    return rc;
}

int cdb_tables_expose(cdb_service *svc, const cdb_principal *caller, const char *name,
                      json_t *request, json_t **out, cdb_error *err)
{
    table_ref t = {0};
    expose_opts o;
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    char *qowner = NULL;
    const char *default_state = "kept";
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "change which tables are exposed", err)) < 0 || (rc = check_name(name, err)) < 0 ||
        (rc = parse_opts(request, &o, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *schema = svc->cfg->postgres_schema;
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = find_table(conn, schema, name, &t, err)) < 0 ||
        (rc = expose_in_tx(conn, &t, &o, &qowner, &default_state, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "table.expose", t.name, request, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* given back before the catalog reload, which takes a connection of its own: holding
       both, a few concurrent calls starved the pool (each waited for the acquire timeout) */
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    cdb__admin_announce(svc, t.name);

    json_t *ro = json_array(), *grants = grants_json(&o);
    for (int i = 0; ro && i < NROLES; i++)
        if (o.read_only[i])
            json_array_append_new(ro, json_string(cdb_role_name(ROLES[i])));
    char policy[IDENT_MAX + 1];
    snprintf(policy, sizeof policy, OWN_PREFIX "%s", o.owner_column);
    *out = ro && grants ? json_pack("{s:s, s:s, s:b, s:s, s:s, s:o, s:o, s:[sss]}", "table", t.name,
                                    "schema", schema, "exposed", 1, "owner_column", o.owner_column,
                                    "owner_default", default_state, "read_only_for", ro, "grants", grants,
                                    "policies", "coredb_admin", "coredb_rows", policy)
                        : NULL;
    if (!*out) {
        if (!ro || !grants) {
            json_decref(ro);
            json_decref(grants);
        }
        rc = cdb_error_oom(err);
        goto out;
    }
    cdb_log_info("tables.exposed", "table %s.%s exposed (owner column %s)", schema, t.name, o.owner_column);

out:
    cdb_txn_release(svc->pool, pc);
    if (rc < 0 && cdb_principal_is_admin(caller)) {
        cdb_error failed = {.code = rc};
        cdb_audit_record(svc, caller, "table.expose", name, request, &failed);
    }
    PQfreemem(qowner);
    table_ref_destroy(&t);
    return rc;
}

static int unexpose_in_tx(PGconn *conn, const table_ref *t, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {t->oid};
    int rc;
    if ((rc = drop_policies(conn, t, err)) < 0 ||
        (rc = run(conn, err, "ALTER TABLE %s.%s DISABLE ROW LEVEL SECURITY", t->qschema, t->qtable)) < 0 ||
        (rc = run(conn, err, "REVOKE ALL ON %s.%s FROM %s, %s, %s, " RO_ROLES, t->qschema, t->qtable,
                  t->qroles[0], t->qroles[1], t->qroles[2])) < 0 ||
        (rc = sequences(conn, t, false, err)) < 0 ||
        (rc = cdb_pg_exec(conn, OWNER_DEFAULTS_SQL, 1, params, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        char *qc = cdb__admin_quote(conn, PQgetvalue(res, i, 0));
        rc = qc ? run(conn, err, "ALTER TABLE %s.%s ALTER COLUMN %s DROP DEFAULT", t->qschema, t->qtable, qc)
                : cdb_error_oom(err);
        PQfreemem(qc);
    }
out:
    PQclear(res);
    return rc;
}

int cdb_tables_unexpose(cdb_service *svc, const cdb_principal *caller, const char *name,
                        json_t **out, cdb_error *err)
{
    table_ref t = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "change which tables are exposed", err)) < 0 || (rc = check_name(name, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *schema = svc->cfg->postgres_schema;
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = find_table(conn, schema, name, &t, err)) < 0 ||
        (rc = unexpose_in_tx(conn, &t, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "table.unexpose", t.name, NULL, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* given back before the catalog reload, which takes a connection of its own: holding
       both, a few concurrent calls starved the pool (each waited for the acquire timeout) */
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    cdb__admin_announce(svc, t.name);
    if (!(*out = json_pack("{s:s, s:s, s:b}", "table", t.name, "schema", schema, "exposed", 0))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    cdb_log_info("tables.unexposed", "table %s.%s unexposed", schema, t.name);

out:
    cdb_txn_release(svc->pool, pc);
    if (rc < 0 && cdb_principal_is_admin(caller)) {
        cdb_error failed = {.code = rc};
        cdb_audit_record(svc, caller, "table.unexpose", name, NULL, &failed);
    }
    table_ref_destroy(&t);
    return rc;
}

int cdb_tables_list(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *tables = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "change which tables are exposed", err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *params[] = {svc->cfg->postgres_schema, cdb_role_db_name(CDB_ROLE_USER),
                            cdb_role_db_name(CDB_ROLE_PREMIUM), cdb_role_db_name(CDB_ROLE_ADMIN)};
    if ((rc = cdb_pg_exec(conn, LIST_SQL, 4, params, &res, err)) < 0 ||
        (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &tables, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:s, s:o}", "schema", svc->cfg->postgres_schema, "tables", tables)))
        rc = cdb_error_oom(err);
    tables = NULL;

out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}
