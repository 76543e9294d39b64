/*
 * dbauth_revoke.c - taking a database login's access away
 * (cdb_dbauth_revoke_user_access, coredb/dbauth.h): some role memberships,
 * or everything.
 *
 * Everything is read from the catalogs of this database (the ACLs of
 * relations and their columns, sequences, routines, types, languages,
 * schemas, the database, default privileges) and revoked with one REVOKE
 * per object, the catalog's names quoted, each inside a savepoint. Grants
 * made by another grantor than coredb's login survive a non-superuser's
 * REVOKE (or make it fail with 42501, which is rolled back to the
 * savepoint alone); they are read back and reported as
 * remaining_privileges rather than hidden or failing the whole revoke.
 * Its sessions are ended inside the transaction (so a login that may not
 * signal them fails before anything commits) and once more after the
 * commit, for a session opened in between.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "management/dbauth_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

static const char OID_SQL[] = "SELECT oid::text FROM pg_roles WHERE rolname = $1";

/* $1 member oid, $2 role: whether it holds that membership. */
static const char MEMBER_SQL[] =
    "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
    " WHERE m.member = $1::oid AND r.rolname = $2";

/* $1 oid: the roles it is a member of. */
static const char MEMBERSHIPS_SQL[] =
    "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
    " WHERE m.member = $1::oid ORDER BY r.rolname";

/*
 * $1 oid: every object of this database (and the database) on which it was
 * granted something: kind, schema (or NULL), name; for routines the name
 * is regprocedure's own quoted signature; for DEFAULT the owner role,
 * schema or NULL, and the object type letter.
 */
static const char GRANTS_SQL[] =
    "SELECT 'TABLE', n.nspname, c.relname, NULL FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND (EXISTS (SELECT 1 FROM aclexplode(c.relacl) a"
    "  WHERE a.grantee = $1::oid) OR EXISTS (SELECT 1 FROM pg_attribute t, aclexplode(t.attacl) a"
    "  WHERE t.attrelid = c.oid AND a.grantee = $1::oid))"
    " UNION ALL SELECT 'SEQUENCE', n.nspname, c.relname, NULL FROM pg_class c"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S'"
    "  AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, NULL,"
    "  p.oid::regprocedure::text, NULL FROM pg_proc p"
    "  WHERE EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT 'TYPE', n.nspname, t.typname, NULL FROM pg_type t"
    "  JOIN pg_namespace n ON n.oid = t.typnamespace"
    "  WHERE EXISTS (SELECT 1 FROM aclexplode(t.typacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT 'LANGUAGE', NULL, l.lanname, NULL FROM pg_language l"
    "  WHERE EXISTS (SELECT 1 FROM aclexplode(l.lanacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT 'SCHEMA', NULL, n.nspname, NULL FROM pg_namespace n"
    "  WHERE EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT 'DATABASE', NULL, d.datname, NULL FROM pg_database d"
    "  WHERE d.datname = current_database()"
    "  AND EXISTS (SELECT 1 FROM aclexplode(d.datacl) a WHERE a.grantee = $1::oid)"
    " UNION ALL SELECT 'DEFAULT', n.nspname, o.rolname, d.defaclobjtype::text FROM pg_default_acl d"
    "  JOIN pg_roles o ON o.oid = d.defaclrole LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace"
    "  WHERE EXISTS (SELECT 1 FROM aclexplode(d.defaclacl) a WHERE a.grantee = $1::oid)"
    " ORDER BY 1, 2, 3";

/*
 * $1 oid: objects of this database it owns (relations, schemas, routines),
 * which keep their owner's rights whatever is revoked: reported, not
 * reassigned (REASSIGN OWNED is the DBA's decision).
 */
static const char OWNED_SQL[] =
    "SELECT (SELECT count(*) FROM pg_class WHERE relowner = $1::oid AND relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))"
    " + (SELECT count(*) FROM pg_namespace WHERE nspowner = $1::oid)"
    " + (SELECT count(*) FROM pg_proc WHERE proowner = $1::oid)";

/* $1 oid: ends its sessions (every database), how many. */
static const char TERMINATE_SQL[] =
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE usesysid = $1::oid AND pid <> pg_backend_pid()";

/* ---- revoke_user_access ---- */

/* What a revoke did, for the answer. */
typedef struct revoked {
    json_t *roles;                 /* names */
    int privileges;                /* objects whose grants were revoked */
    json_t *remaining;             /* "KIND name" of grants still there */
    long long sessions;
    long long owned;               /* objects it owns (see OWNED_SQL) */
} revoked;

/* Revokes the listed memberships (each must be held). */
static int revoke_roles(PGconn *conn, const char *oid, const char *quser, const json_t *roles, revoked *rv,
                        cdb_error *err)
{
    PGresult *res = NULL;
    char *qrole = NULL;
    int rc = 0;
    size_t i;
    json_t *r;
    json_array_foreach(roles, i, r) {
        const char *role = json_string_value(r);
        const char *params[] = {oid, role};
        PQclear(res);
        PQfreemem(qrole);
        qrole = NULL;
        if ((rc = cdb_pg_exec(conn, MEMBER_SQL, 2, params, &res, err)) < 0)
            goto out;
        if (PQntuples(res) == 0) {
            rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "roles",
                                      "roles: the user is not a member of role %s", role);
            cdb_error_detail(err, "role", json_string(role));
            goto out;
        }
        if (!(qrole = cdb__admin_quote(conn, role))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        if ((rc = cdb__dbauth_run(conn, "revoke role memberships", err, "REVOKE %s FROM %s", qrole, quser)) < 0)
            goto out;
        if (json_array_append_new(rv->roles, json_string(role)) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
out:
    PQclear(res);
    PQfreemem(qrole);
    return rc;
}

/* The object-type keyword of ALTER DEFAULT PRIVILEGES for pg_default_acl.defaclobjtype. */
static const char *default_kind(char t)
{
    switch (t) {
    case 'r': return "TABLES";
    case 'S': return "SEQUENCES";
    case 'f': return "FUNCTIONS";
    case 'T': return "TYPES";
    case 'n': return "SCHEMAS";
    default: return NULL;
    }
}

/*
 * One REVOKE inside a savepoint: one coredb's login may not make (42501: a
 * non-superuser login revoking on an object it neither owns nor granted,
 * or another role's default privileges) is undone alone, and the grant is
 * then reported by the read-back as remaining instead of failing the whole
 * revoke. Any other failure fails it.
 */
static int revoke_guarded(PGconn *conn, const char *sql, cdb_error *err)
{
    cdb_error e;
    cdb_error_init(&e);
    int rc = cdb_pg_exec(conn, "SAVEPOINT dbauth_revoke", 0, NULL, NULL, &e);
    if (rc == 0 && (rc = cdb_pg_exec(conn, sql, 0, NULL, NULL, &e)) < 0 &&
        strcmp(cdb__admin_sqlstate(&e), "42501") == 0) {
        cdb_log_warn("dbauth.revoke_not_permitted",
                     "a privilege coredb's login may not revoke is left in place (reported as remaining)");
        cdb_error_destroy(&e);
        rc = cdb_pg_exec(conn, "ROLLBACK TO SAVEPOINT dbauth_revoke", 0, NULL, NULL, &e);
    } else if (rc == 0) {
        rc = cdb_pg_exec(conn, "RELEASE SAVEPOINT dbauth_revoke", 0, NULL, NULL, &e);
    }
    if (rc < 0 && err)
        cdb_error_move(err, &e);
    cdb_error_destroy(&e);
    return rc;
}

/* One REVOKE ALL for a row of GRANTS_SQL; 0 without a statement for a kind it does not know. */
static int revoke_object(PGconn *conn, PGresult *g, int row, const char *quser, cdb_error *err)
{
    const char *kind = PQgetvalue(g, row, 0);
    char *qschema = PQgetisnull(g, row, 1) ? NULL : cdb__admin_quote(conn, PQgetvalue(g, row, 1));
    char *qname = NULL, *sql = NULL;
    int n = 0, rc = 0;
    if (!PQgetisnull(g, row, 1) && !qschema) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (strcmp(kind, "FUNCTION") == 0 || strcmp(kind, "PROCEDURE") == 0) {
        /* regprocedure's text is the catalog's own, already quoted, signature */
        n = asprintf(&sql, "REVOKE ALL ON %s %s FROM %s", kind, PQgetvalue(g, row, 2), quser);
    } else if (!(qname = cdb__admin_quote(conn, PQgetvalue(g, row, 2)))) {
        rc = cdb_error_oom(err);
        goto out;
    } else if (strcmp(kind, "DEFAULT") == 0) {
        const char *what = default_kind(PQgetvalue(g, row, 3)[0]);
        if (!what)
            goto out;    /* a kind this PostgreSQL has and we do not know: reported as remaining */
        n = asprintf(&sql, "ALTER DEFAULT PRIVILEGES FOR ROLE %s%s%s REVOKE ALL ON %s FROM %s", qname,
                     qschema ? " IN SCHEMA " : "", qschema ? qschema : "", what, quser);
    } else if (qschema) {
        n = asprintf(&sql, "REVOKE ALL ON %s %s.%s FROM %s", kind, qschema, qname, quser);
    } else {
        n = asprintf(&sql, "REVOKE ALL ON %s %s FROM %s", kind, qname, quser);
    }
    rc = n < 0 ? cdb_error_oom(err) : revoke_guarded(conn, sql, err);
    if (n < 0)
        sql = NULL;
out:
    free(sql);
    PQfreemem(qschema);
    PQfreemem(qname);
    return rc;
}

/* Everything: memberships, privileges, LOGIN, sessions (see the header comment). */
static int revoke_all(PGconn *conn, const char *oid, const char *quser, revoked *rv, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {oid};
    json_t *held = NULL;
    int rc;
    if ((rc = cdb_pg_exec(conn, MEMBERSHIPS_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (!(held = json_array())) {
        rc = cdb_error_oom(err);
        goto out;
    }
    for (int i = 0; i < PQntuples(res); i++)
        if (json_array_append_new(held, json_string(PQgetvalue(res, i, 0))) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
    if ((rc = revoke_roles(conn, oid, quser, held, rv, err)) < 0)
        goto out;
    PQclear(res);
    if ((rc = cdb_pg_exec(conn, GRANTS_SQL, 1, params, &res, err)) < 0)
        goto out;
    int objects = PQntuples(res);
    for (int i = 0; i < objects; i++)
        if ((rc = revoke_object(conn, res, i, quser, err)) < 0)
            goto out;
    PQclear(res);
    /* read back: what another grantor gave survives a non-superuser's REVOKE */
    if ((rc = cdb_pg_exec(conn, GRANTS_SQL, 1, params, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        json_t *s = json_sprintf("%s %s%s%s", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                                 PQgetisnull(res, i, 1) ? "" : ".", PQgetvalue(res, i, 2));
        if (json_array_append_new(rv->remaining, s) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
    rv->privileges = objects - PQntuples(res) > 0 ? objects - PQntuples(res) : 0;
    PQclear(res);
    if ((rc = cdb_pg_exec(conn, OWNED_SQL, 1, params, &res, err)) < 0)
        goto out;
    rv->owned = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    res = NULL;
    if ((rc = cdb__dbauth_run(conn, "change roles (ALTER ROLE)", err, "ALTER ROLE %s NOLOGIN", quser)) < 0)
        goto out;
    rc = cdb__dbauth_privilege_error(cdb_pg_exec(conn, TERMINATE_SQL, 1, params, &res, err),
                                     "end the user's sessions (pg_signal_backend)", err);
    if (rc == 0)
        rv->sessions = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
out:
    PQclear(res);
    json_decref(held);
    return rc;
}

/* After the commit: sessions opened between the in-transaction end and NOLOGIN taking effect. */
static long long terminate_again(cdb_service *svc, const char *oid)
{
    cdb_error e;
    cdb_error_init(&e);
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    long long n = 0;
    const char *params[] = {oid};
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, &e);
    if (conn && cdb_pg_exec(conn, TERMINATE_SQL, 1, params, &res, &e) == 0)
        n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    else
        cdb_log_warn("dbauth.terminate_failed", "%s", e.message);
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    cdb_error_destroy(&e);
    return n;
}

int cdb_dbauth_revoke_user_access(cdb_service *svc, const cdb_principal *caller,
                                  const char *username, const json_t *request, json_t **out,
                                  cdb_error *err)
{
    static const char *const fields[] = {"roles", NULL};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *holder = NULL, *roles = NULL, *params = NULL;
    const char *user = NULL;
    char *quser = NULL;
    char oid[16] = "";
    revoked rv = {.roles = json_array(), .remaining = json_array()};
    int rc;

    *out = NULL;
    if (!rv.roles || !rv.remaining) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb__admin_require(caller, "revoke database users' access", err)) < 0 ||
        (rc = cdb__dbauth_path_name(username, &holder, &user, err)) < 0 ||
        (rc = cdb__dbauth_body(request, true, fields, err)) < 0 ||
        (rc = cdb__dbauth_role_list(request, true, &roles, err)) < 0)
        goto out;
    params = roles ? json_pack("{s:O}", "roles", roles) : json_pack("{s:b}", "all", 1);
    if (!params) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if (!(quser = cdb__admin_quote(conn, user))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *p[] = {user};
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb__admin_role_check(conn, "username", user, true, err)) < 0 ||
        (rc = cdb_pg_exec(conn, OID_SQL, 1, p, &res, err)) < 0)
        goto out;
    snprintf(oid, sizeof oid, "%s", PQgetvalue(res, 0, 0));
    if ((rc = roles ? revoke_roles(conn, oid, quser, roles, &rv, err) : revoke_all(conn, oid, quser, &rv, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:{s:s, s:{s:O, s:i}, s:O, s:I}}", "db_user", "username", user, "revoked", "roles",
                           rv.roles, "privileges", rv.privileges, "remaining_privileges", rv.remaining,
                           "sessions_ended", (json_int_t)rv.sessions))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (!roles && (json_object_set_new(json_object_get(*out, "db_user"), "login", json_false()) < 0 ||
                   json_object_set_new(json_object_get(*out, "db_user"), "owned_objects",
                                       json_integer((json_int_t)rv.owned)) < 0)) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_audit_record_in(conn, caller, "db_user.revoke", user, params, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    if (!roles) {
        long long more = terminate_again(svc, oid);
        if (more > 0)
            json_object_set_new(json_object_get(*out, "db_user"), "sessions_ended",
                                json_integer((json_int_t)(rv.sessions + more)));
    }
    cdb_log_info("dbauth.access_revoked", "database user %s: %s revoked", user,
                 roles ? "role memberships" : "all access");

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    cdb__admin_audit_failure(svc, caller, "db_user.revoke", holder ? username : NULL,
                             params ? params : request, rc, err);
    PQfreemem(quser);
    json_decref(holder);
    json_decref(params);
    json_decref(rv.roles);
    json_decref(rv.remaining);
    return rc;
}
