/*
 * dbauth_users.c - database logins (coredb/dbauth.h): create one, change
 * its password. Revoking access is dbauth_revoke.c.
 *
 * Passwords travel to PostgreSQL only as the SCRAM-SHA-256 verifier libpq
 * computes on this side (dbauth_internal.h), so neither the server's
 * statement log nor pg_stat_activity ever holds one in clear; they are not
 * logged or audited here either (the audit library also drops members
 * named *password*).
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

#define CONN_LIMIT_MAX 10000
#define CONN_LIMIT_DEFAULT 5

/* ---- create_user ---- */

static int create_user_in_tx(PGconn *conn, const char *user, const char *password, const json_t *roles,
                             int limit, cdb_error *err)
{
    char *quser = cdb__admin_quote(conn, user), *verifier = NULL, *qrole = NULL;
    int rc = 0;
    if (!quser) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb__admin_role_check(conn, "username", user, false, err)) < 0 ||
        (rc = cdb__dbauth_absent(conn, "username", user, err)) < 0)
        goto out;
    size_t i;
    json_t *r;
    json_array_foreach(roles, i, r) {
        if ((rc = cdb__admin_role_check(conn, "roles", json_string_value(r), true, err)) < 0)
            goto out;
    }
    if ((rc = cdb__dbauth_verifier(conn, user, password, &verifier, err)) < 0 ||
        (rc = cdb__dbauth_run(conn, "create roles (CREATE ROLE)", err,
                              "CREATE ROLE %s LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE CONNECTION LIMIT %d "
                              "PASSWORD %s",
                              quser, limit, verifier)) < 0)
        goto out;
    json_array_foreach(roles, i, r) {
        PQfreemem(qrole);
        if (!(qrole = cdb__admin_quote(conn, json_string_value(r)))) {
            rc = cdb_error_oom(err);
            goto out;
        }
        if ((rc = cdb__dbauth_run(conn, "grant role memberships", err, "GRANT %s TO %s", qrole, quser)) < 0)
            goto out;
    }
out:
    PQfreemem(quser);
    PQfreemem(verifier);
    PQfreemem(qrole);
    return rc;
}

int cdb_dbauth_create_user(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err)
{
    static const char *const fields[] = {"username", "password", "roles", "connection_limit", NULL};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    json_t *name = json_is_object(request) ? json_object_get(request, "username") : NULL;
    const char *target = json_is_string(name) ? json_string_value(name) : NULL;
    const char *user = NULL, *password = NULL;
    json_t *roles = NULL, *empty = json_array();
    int rc;

    *out = NULL;
    if (!empty) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb__admin_require(caller, "create database users", err)) < 0 ||
        (rc = cdb__dbauth_body(request, false, fields, err)) < 0 ||
        (rc = cdb__admin_name_check("username", name, &user, err)) < 0 ||
        (rc = cdb__dbauth_password(request, "password", svc->cfg->password_min_length, &password, err)) < 0 ||
        (rc = cdb__dbauth_role_list(request, false, &roles, err)) < 0)
        goto out;
    if (!roles)
        roles = empty;
    json_t *lv = json_object_get(request, "connection_limit");
    json_int_t limit = CONN_LIMIT_DEFAULT;
    if (lv && !json_is_null(lv)) {
        if (!json_is_integer(lv) || json_integer_value(lv) < -1 || json_integer_value(lv) > CONN_LIMIT_MAX) {
            rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "connection_limit",
                                      "connection_limit must be an integer from -1 (no limit) to %d",
                                      CONN_LIMIT_MAX);
            goto out;
        }
        limit = json_integer_value(lv);
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = create_user_in_tx(conn, user, password, roles, (int)limit, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:{s:s, s:b, s:O, s:I}}", "db_user", "username", user, "login", 1, "roles", roles,
                           "connection_limit", limit))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_audit_record_in(conn, caller, "db_user.create", user, json_object_get(*out, "db_user"),
                                  err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_log_info("dbauth.user_created", "database user %s created (%zu roles, connection limit %d)", user,
                 json_array_size(roles), (int)limit);

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);
    cdb__admin_audit_failure(svc, caller, "db_user.create", target, request, rc, err);
    json_decref(empty);
    return rc;
}

/* ---- update_user_password ---- */

int cdb_dbauth_update_user_password(cdb_service *svc, const cdb_principal *caller,
                                    const char *username, const json_t *request, json_t **out,
                                    cdb_error *err)
{
    static const char *const fields[] = {"new_password", NULL};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    json_t *holder = NULL;
    const char *user = NULL, *password = NULL;
    char *quser = NULL, *verifier = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "change database users' passwords", err)) < 0 ||
        (rc = cdb__dbauth_path_name(username, &holder, &user, err)) < 0 ||
        (rc = cdb__dbauth_body(request, false, fields, err)) < 0 ||
        (rc = cdb__dbauth_password(request, "new_password", svc->cfg->password_min_length, &password, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if (!(quser = cdb__admin_quote(conn, user))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb__admin_role_check(conn, "username", user, true, err)) < 0 ||
        (rc = cdb__dbauth_verifier(conn, user, password, &verifier, err)) < 0 ||
        (rc = cdb__dbauth_run(conn, "change passwords (ALTER ROLE)", err, "ALTER ROLE %s PASSWORD %s", quser,
                              verifier)) < 0)
        goto out;
    if (!(*out = json_pack("{s:{s:s, s:b}}", "db_user", "username", user, "password_changed", 1))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_audit_record_in(conn, caller, "db_user.password", user, NULL, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_log_info("dbauth.password_changed", "database user %s: password changed", user);

out:
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
    }
    cdb_txn_release(svc->pool, pc);
    cdb__admin_audit_failure(svc, caller, "db_user.password", username && holder ? username : NULL, NULL,
                             rc, err);
    PQfreemem(quser);
    PQfreemem(verifier);
    json_decref(holder);
    return rc;
}
