/*
 * admin_sql.c - the helpers the administration operations share
 * (admin_sql.h): quoted DDL, name checks, the service's own roles.
 */
#include "management/admin_sql.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "security/service_state.h"
#include "store/pg.h"

int cdb__admin_run(PGconn *conn, const char *event, cdb_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = cdb__admin_runv(conn, event, err, fmt, ap);
    va_end(ap);
    return rc;
}

int cdb__admin_runv(PGconn *conn, const char *event, cdb_error *err, const char *fmt, va_list ap)
{
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        return cdb_error_oom(err);
    int rc = cdb_pg_exec(conn, sql, 0, NULL, NULL, err);
    if (rc < 0)
        cdb_log_warn(event, "%s", err ? err->message : "failed");
    free(sql);
    return rc;
}

const char *cdb__admin_sqlstate(const cdb_error *err)
{
    json_t *s = err && err->details ? json_object_get(err->details, "sqlstate") : NULL;
    return json_is_string(s) ? json_string_value(s) : "";
}

int cdb__admin_privilege_error(int rc, const char *what, cdb_error *err)
{
    if (rc < 0 && strcmp(cdb__admin_sqlstate(err), "42501") == 0)
        rc = cdb_error_set_detail(err, CDB_ERR_DATABASE_PRIVILEGE_MISSING, "statement", what,
                                  "coredb's database login may not %s: it needs CREATEROLE and "
                                  "pg_signal_backend; run the SQL of `coredb setup-sql --administration` "
                                  "as a superuser (docs/production.md)",
                                  what);
    return rc;
}

int cdb__admin_audit_failure(cdb_service *svc, const cdb_principal *caller, const char *action,
                             const char *target, const json_t *request, int rc, const cdb_error *err)
{
    if (rc >= 0)
        return rc;
    cdb_error fallback;
    cdb_error_init(&fallback);
    if (!err) {
        cdb_error_set(&fallback, (cdb_err)rc, "failed");
        err = &fallback;
    }
    cdb_audit_record(svc, caller, action, target, json_is_object(request) ? request : NULL, err);
    cdb_error_destroy(&fallback);
    return rc;
}

void cdb__admin_announce(cdb_service *svc, const char *table)
{
    if (svc->catalog) {
        cdb_error e;
        cdb_error_init(&e);
        if (cdb_catalog_cache_refresh(svc->catalog, &e) < 0)
            cdb_log_warn("admin.catalog_refresh_failed", "%s (the listener reloads it)", e.message);
        cdb_error_destroy(&e);
    }
    if (svc->qcache && table)
        cdb_qcache_bump(svc->qcache, table);
}

char *cdb__admin_quote(PGconn *conn, const char *ident)
{
    return PQescapeIdentifier(conn, ident, strlen(ident));
}

int cdb__admin_require(const cdb_principal *caller, const char *what, cdb_error *err)
{
    if (cdb_principal_require(caller, err) < 0)
        return err ? err->code : CDB_ERR_UNAUTHORIZED;
    if (!cdb_principal_is_admin(caller))
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "Only an admin may %s", what);
    return 0;
}

int cdb__admin_name_check(const char *field, const json_t *value, const char **out, cdb_error *err)
{
    const char *s = json_is_string(value) ? json_string_value(value) : NULL;
    size_t n = s ? strlen(s) : 0;
    bool ok = s && n == json_string_length(value) && n > 0 && n <= CDB_ADMIN_IDENT_MAX &&
              ((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_') &&
              strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == n && strncmp(s, "pg_", 3) != 0;
    if (!ok)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be 1 to %d characters of a-z, 0-9 and '_', not starting "
                                    "with a digit or pg_",
                                    field, CDB_ADMIN_IDENT_MAX);
    *out = s;
    return 0;
}

/* $1 role: whether it exists, and whether coredb depends on it (see admin_sql.h). */
static const char ROLE_SQL[] =
    "SELECT r.oid IS NOT NULL,"
    " $1 LIKE 'coredb%' OR $1 LIKE 'pg\\_%' OR $1 = current_user OR $1 = session_user"
    " OR COALESCE(r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls, false)"
    /* the login's memberships from pg_auth_members: pg_has_role is true for every role when the login is a superuser */
    " OR r.oid IN (WITH RECURSIVE m(oid) AS (SELECT oid FROM pg_roles WHERE rolname IN (current_user, session_user)"
    "   UNION SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.oid) SELECT oid FROM m)"
    " FROM (SELECT $1::text AS name) w LEFT JOIN pg_roles r ON r.rolname = w.name";

int cdb__admin_role_check(PGconn *conn, const char *field, const char *role, bool must_exist,
                          cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {role};
    int rc = cdb_pg_exec(conn, ROLE_SQL, 1, params, &res, err);
    if (rc < 0)
        goto out;
    bool exists = PQgetvalue(res, 0, 0)[0] == 't';
    bool protected = PQgetvalue(res, 0, 1)[0] == 't';
    if (protected)
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", field,
                                  "%s: role %s belongs to coredb itself and cannot be changed, granted "
                                  "or given objects through the administration API",
                                  field, role);
    else if (must_exist && !exists)
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", field, "%s: no role named %s", field,
                                  role);

out:
    PQclear(res);
    return rc;
}
