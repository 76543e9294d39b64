/*
 * users.c - the users of public.users: create, get, update, delete, and the
 * first admin. The body rules live in user_input.c.
 *
 * Who may do what is decided here, before any query, from the caller's
 * principal (the HTTP layer only authenticates): self or admin, and only an
 * admin sets roles. A non-admin looking someone up by email or username can
 * only ever find their own row, so lookups never reveal who exists.
 * Passwords are hashed (argon2id) before a transaction starts, so no row
 * lock is held during the slow part. Changing a password ends the user's
 * other sessions; changing a role or deleting the user ends all of them
 * (tokens carry the role), in the same transaction, and their Redis
 * liveness keys are dropped after commit. An admin updating or deleting
 * someone else's account is recorded in the audit log in the same
 * transaction (user.update / user.role with the names of the fields set,
 * user.delete), failures after the rollback; own edits are not recorded.
 * A creation with an
 * Idempotency-Key (create_keyed) commits the user and the key with its
 * answer in one transaction (coredb.tx_ledger, store/ledger.h).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "identity/identity_internal.h"
#include "store/ledger.h"
#include "identity/user_input.h"
#include "store/outbox.h"
#include "coredb/audit.h"
#include "coredb/log.h"
#include "store/pg.h"


/* Names the field of a unique violation on public.users. */
static int conflict_field(cdb_error *err)
{
    if (err->code != CDB_ERR_CONFLICT)
        return err->code;
    const char *c = json_string_value(json_object_get(err->details, "constraint"));
    const char *field = c && strcmp(c, "users_username_key") == 0 ? "username" : "email";
    return cdb_error_set_detail(err, CDB_ERR_CONFLICT, "field", field, "A user with this %s already exists", field);
}

/* ---- CRUD ---- */

/* What every creation does before the database: who may set a role, the body's rules, the slow hash. */
static int create_prepare(cdb_service *svc, const cdb_principal *caller, json_t *body,
                          cdb_user_input *in, char hash[CDB_PASSWORD_HASH_MAX], cdb_error *err)
{
    json_t *role = json_object_get(body, "role");
    int rc;

    if (role && !cdb_principal_is_admin(caller) &&
        !(json_is_string(role) && strcmp(json_string_value(role), "user") == 0))
        return cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", "role", "Only an admin may set a role");
    if ((rc = cdb_user_input_parse(svc->cfg, body, true, in, err)) < 0)
        return rc;
    return cdb_password_hash(&svc->password, in->password, in->password_len, hash, err);
}

/* An admin giving a new user a role: recorded with the request (coredb/audit.h removes its password). */
static void record_role_given(cdb_service *svc, const cdb_principal *caller, const char *role, json_t *body,
                              const json_t *user)
{
    json_t *given = json_pack("{s:n, s:s, s:O}", "old_role", "new_role", role, "request", body);
    cdb_audit_record(svc, caller, "user.role", json_string_value(json_object_get(user, "user_id")), given, NULL);
    json_decref(given);
}

int cdb_users_create(cdb_service *svc, const cdb_principal *caller, json_t *body,
                     json_t **out, cdb_error *err)
{
    cdb_user_input in;
    char hash[CDB_PASSWORD_HASH_MAX];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    int rc;

    *out = NULL;
    if ((rc = create_prepare(svc, caller, body, &in, hash, err)) < 0)
        return rc;

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *params[] = {in.email, in.username, hash, in.display_name, in.picture_url,
                            in.role ? in.role : "user"};
    rc = cdb_pg_exec(conn,
                     "INSERT INTO public.users AS u (email, username, password_hash, display_name,"
                     " profile_picture_url, role) VALUES ($1, $2, $3, $4, $5, $6)"
                     " RETURNING " CDB__USER_JSON,
                     6, params, &res, err);
    if (rc < 0) {
        rc = conflict_field(err);
        goto out_release;
    }
    /* read-your-writes (docs/replicas.md), before the cache generation bump */
    cdb_commit_lsn_note(svc->commit_lsn, conn, caller ? caller->user_id : NULL);
    rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err);
    if (rc == 0)
        cdb_log_info("users.created", "user %s created with role %s", in.username, params[5]);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0)
        cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, "users");
    if (rc == 0 && in.role && cdb_principal_is_admin(caller))
        record_role_given(svc, caller, in.role, body, *out);
    return rc;
}

/*
 * With an Idempotency-Key: BEGIN; the key's claim (store/ledger.h); one
 * statement that inserts the user and the ledger row holding the answer,
 * PostgreSQL's JSON text of the user, which is sent as it is stored; COMMIT.
 * Round trips are not counted here: the argon2id hash dominates. The hash
 * runs before the claim, so no lock waits on it; a replay pays it too.
 */
static int create_keyed(cdb_service *svc, const cdb_principal *caller, json_t *body,
                        cdb_idempotency *idem, cdb_error *err)
{
    static const char insert_sql[] =
        "WITH created AS (INSERT INTO public.users AS u (email, username, password_hash, display_name,"
        " profile_picture_url, role) VALUES ($1, $2, $3, $4, $5, $6) RETURNING " CDB__USER_JSON " AS j)"
        " INSERT INTO coredb.tx_ledger (transaction_id, user_id, scope, idempotency_key, request_hash,"
        " status_code, response) SELECT $7::uuid, $8::uuid, $9, $10, $11::bytea, 201, j FROM created"
        " RETURNING response";
    bool anon = !caller || caller->role == CDB_ROLE_ANON;
    const char *scope = anon ? CDB_LEDGER_ANON_SCOPE : caller->user_id;
    cdb_user_input in;
    char hash[CDB_PASSWORD_HASH_MAX], rhash[CDB_LEDGER_HASH_LEN], tx_id[37];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    PGconn *conn;
    int rc;

    if ((rc = cdb_ledger_check_key(idem->key, err)) < 0 ||
        (rc = cdb_ledger_request_hash(svc->jwt.secret, svc->jwt.secret_len, "users.create", body, rhash, err)) < 0 ||
        (rc = create_prepare(svc, caller, body, &in, hash, err)) < 0)
        return rc;
    cdb_ledger_new_id(tx_id);
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err)))
        return err->code;
    const char *claim[3] = {scope, idem->key, rhash};
    const char *params[] = {in.email, in.username, hash, in.display_name, in.picture_url,
                            in.role ? in.role : "user", tx_id, anon ? NULL : caller->user_id,
                            scope, idem->key, rhash};
    if ((rc = cdb_txn_begin(conn, err)) < 0)
        goto out_release;
    if ((rc = cdb_pg_exec(conn, CDB_LEDGER_CLAIM_SQL, 3, claim, NULL, err)) < 0) {
        if (cdb_ledger_claim_error(err))
            rc = cdb_ledger_claim_refused(conn, scope, idem->key, idem, err);
        goto out_release;
    }
    if ((rc = cdb_pg_exec(conn, insert_sql, 11, params, &res, err)) < 0) {
        rc = conflict_field(err);
        goto out_release;
    }
    if ((rc = cdb_txn_commit(conn, err)) < 0) {
        if (cdb_ledger_outcome_unknown(conn, false, err))
            rc = cdb_ledger_fail_unknown(err, tx_id);
        goto out_release;
    }
    cdb_commit_lsn_note(svc->commit_lsn, conn, anon ? NULL : caller->user_id);
    idem->status = 201;
    if (!(idem->body = strdup(PQgetvalue(res, 0, 0))))
        rc = cdb_error_oom(err);
    else
        cdb_log_info("users.created", "user %s created with role %s", in.username, params[5]);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0 && !idem->replayed)
        cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, "users");
    if (rc == 0 && !idem->replayed && in.role && cdb_principal_is_admin(caller)) {
        json_t *user = json_loads(idem->body, 0, NULL);
        record_role_given(svc, caller, in.role, body, user);
        json_decref(user);
    }
    return rc;
}

int cdb_users_create_idem(cdb_service *svc, const cdb_principal *caller, json_t *body,
                          cdb_idempotency *idem, cdb_error *err)
{
    json_t *user = NULL;
    int rc;

    idem->status = 0;
    idem->body = NULL;
    idem->replayed = false;
    if (idem->key)
        return create_keyed(svc, caller, body, idem, err);
    if ((rc = cdb_users_create(svc, caller, body, &user, err)) < 0)
        return rc;
    idem->status = 201;
    if (!(idem->body = json_dumps(user, JSON_COMPACT)))
        rc = cdb_error_oom(err);
    json_decref(user);
    return rc;
}

int cdb_users_get(cdb_service *svc, const cdb_principal *caller, const char *by,
                  const char *value, json_t **out, cdb_error *err)
{
    static const char *const by_id =
        "SELECT " CDB__USER_JSON " FROM public.users u WHERE u.user_id = $1";
    static const char *const by_email =
        "SELECT " CDB__USER_JSON " FROM public.users u"
        " WHERE lower(u.email) = lower($1) AND ($2::uuid IS NULL OR u.user_id = $2::uuid)";
    static const char *const by_username =
        "SELECT " CDB__USER_JSON " FROM public.users u"
        " WHERE u.username = $1 AND ($2::uuid IS NULL OR u.user_id = $2::uuid)";
    char id[37];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    const char *sql;
    int rc;

    *out = NULL;
    if (!caller || caller->role == CDB_ROLE_ANON)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Authentication required");
    if (!by || !value)
        return cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
    if (strcmp(by, "id") == 0) {
        if ((rc = cdb_principal_authorize_target(caller, value, id, err)) < 0)
            return rc;
        value = id;
        sql = by_id;
    } else if (strcmp(by, "email") == 0) {
        sql = by_email;
    } else if (strcmp(by, "username") == 0) {
        sql = by_username;
    } else {
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "by", "Users are found by id, email or username");
    }

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    /* a non-admin can only ever find their own row: nothing leaks about others */
    const char *params[] = {value, cdb_principal_is_admin(caller) ? NULL : caller->user_id};
    if ((rc = cdb_pg_exec(conn, sql, sql == by_id ? 1 : 2, params, &res, err)) < 0)
        goto out_release;
    if (PQntuples(res) == 0)
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
    else
        rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/*
 * The names of the fields a PUT body sets, never their values: what an
 * update's audit entry says was changed (the password only as "password").
 */
static json_t *body_fields(const json_t *body)
{
    static const char *const names[] = {"email", "username", "password", "display_name",
                                        "profile_picture_url", "role"};
    json_t *fields = json_array();
    for (size_t i = 0; fields && i < sizeof names / sizeof names[0]; i++)
        if (json_object_get(body, names[i]) && json_array_append_new(fields, json_string(names[i])) < 0) {
            json_decref(fields);
            fields = NULL;
        }
    return fields;
}

/*
 * An admin acting on someone else's account is an administrative action
 * (coredb/audit.h); a user editing their own account, an admin included,
 * is not. A role change is recorded whoever makes it (only an admin can).
 */
static bool admin_on_other(const cdb_principal *caller, const char *id)
{
    return cdb_principal_is_admin(caller) && strcmp(caller->user_id, id) != 0;
}

/* A failed or refused action of an admin on someone else's account, recorded after the rollback. */
static void record_failure(cdb_service *svc, const cdb_principal *caller, const char *action,
                           const char *id, json_t *params, int rc, const cdb_error *err)
{
    if (rc >= 0 || !admin_on_other(caller, id))
        return;
    cdb_error fallback;
    cdb_error_init(&fallback);
    if (!err || err->code == CDB_OK) {
        cdb_error_set(&fallback, (cdb_err)rc, "failed");
        err = &fallback;
    }
    cdb_audit_record(svc, caller, action, id, params, err);
    cdb_error_destroy(&fallback);
}

int cdb_users_update(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                     json_t *body, json_t **out, cdb_error *err)
{
    cdb_user_input in;
    char id[37], hash[CDB_PASSWORD_HASH_MAX];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL, *ended = NULL;
    json_t *fields = NULL, *entry = NULL;
    PGconn *conn = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb_principal_authorize_target(caller, user_id, id, err)) < 0)
        return rc;
    if (!(fields = body_fields(body)))
        return cdb_error_oom(err);
    if (json_object_get(body, "role") && !cdb_principal_is_admin(caller)) {
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", "role", "Only an admin may change a role");
        goto out_release;
    }
    if ((rc = cdb_user_input_parse(svc->cfg, body, false, &in, err)) < 0)
        goto out_release;

    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err->code;
        goto out_release;
    }
    if (in.password) {
        if (!in.has_email) {
            /* the new password must differ from the address that stays */
            const char *p[] = {id};
            rc = cdb_pg_exec(conn, "SELECT email FROM public.users WHERE user_id = $1", 1, p, &res, err);
            if (rc < 0)
                goto out_release;
            if (PQntuples(res) == 0) {
                rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
                goto out_release;
            }
            if ((rc = cdb_user_check_password(svc->cfg, in.password, in.password_len, PQgetvalue(res, 0, 0), err)) < 0)
                goto out_release;
            PQclear(res);
            res = NULL;
        }
        if ((rc = cdb_password_hash(&svc->password, in.password, in.password_len, hash, err)) < 0)
            goto out_release;
    }

    if ((rc = cdb_txn_begin(conn, err)) < 0)
        goto out_release;
    const char *params[] = {
        id, in.has_email ? in.email : NULL, in.username, in.password ? hash : NULL,
        in.has_display_name ? "true" : "false", in.display_name,
        in.has_picture_url ? "true" : "false", in.picture_url, in.role,
    };
    rc = cdb_pg_exec(conn,
                     "WITH old AS (SELECT user_id, role FROM public.users WHERE user_id = $1 FOR UPDATE)"
                     " UPDATE public.users u SET email = COALESCE($2, u.email),"
                     " username = COALESCE($3, u.username),"
                     " password_hash = COALESCE($4, u.password_hash),"
                     " display_name = CASE WHEN $5::boolean THEN $6 ELSE u.display_name END,"
                     " profile_picture_url = CASE WHEN $7::boolean THEN $8 ELSE u.profile_picture_url END,"
                     " role = COALESCE($9, u.role), updated_at = now()"
                     " FROM old WHERE u.user_id = old.user_id"
                     " RETURNING " CDB__USER_JSON ", u.role <> old.role, old.role::text, u.role::text",
                     9, params, &res, err);
    if (rc < 0) {
        rc = conflict_field(err);
        goto out_release;
    }
    if (PQntuples(res) == 0) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
        goto out_release;
    }
    bool role_changed = PQgetvalue(res, 0, 1)[0] == 't';
    if (role_changed || in.password) {
        /* tokens carry the role: all go; a new password keeps only the caller's session */
        const char *keep = !role_changed && strcmp(caller->user_id, id) == 0 ? caller->session_id : NULL;
        rc = cdb__end_user_sessions(conn, id, keep && *keep ? keep : NULL,
                                    role_changed ? "role_changed" : "password_changed", &ended, err);
        if (rc < 0)
            goto out_release;
    }
    if (role_changed || admin_on_other(caller, id)) {
        /* recorded with the change itself, one entry per update: user.role when the role changed */
        entry = role_changed ? json_pack("{s:s, s:s, s:O}", "old_role", PQgetvalue(res, 0, 2),
                                         "new_role", PQgetvalue(res, 0, 3), "fields", fields)
                             : json_pack("{s:O}", "fields", fields);
        rc = entry ? cdb_audit_record_in(conn, caller, role_changed ? "user.role" : "user.update", id, entry, err)
                   : cdb_error_oom(err);
        if (rc < 0)
            goto out_release;
    }
    if ((rc = cdb_txn_commit(conn, err)) < 0)
        goto out_release;
    cdb_commit_lsn_note(svc->commit_lsn, conn, caller->user_id);
    cdb__sessions_forget(svc, conn, ended, 0);
    rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err);

out_release:
    PQclear(res);
    PQclear(ended);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0)
        cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, "users");
    if (rc < 0) {
        /* a failed attempt: user.update with the fields asked for, the role among them */
        json_decref(entry);
        entry = json_pack("{s:O}", "fields", fields);
        record_failure(svc, caller, "user.update", id, entry, rc, err);
    }
    json_decref(entry);
    json_decref(fields);
    return rc;
}

int cdb_users_delete(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                     cdb_error *err)
{
    char id[37];
    cdb_pool_conn *pc = NULL;
    PGresult *sessions = NULL, *res = NULL;
    json_t *entry = NULL;
    int rc;

    if ((rc = cdb_principal_authorize_target(caller, user_id, id, err)) < 0)
        return rc;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn) {
        rc = err->code;
        goto out_release;
    }
    const char *params[] = {id};
    /* the lock logins take: no session can appear between the list and the delete */
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb_pg_exec(conn, CDB__USER_LOCK_SQL, 1, params,
                          NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT session_id::text FROM coredb.sessions"
                                " WHERE user_id = $1 AND revoked_at IS NULL", 1, params,
                          &sessions, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "DELETE FROM public.users WHERE user_id = $1 RETURNING username", 1, params,
                          &res, err)) < 0)
        goto out_release;
    if (PQntuples(res) == 0) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
        goto out_release;
    }
    if (admin_on_other(caller, id)) {
        /* the name too: the id alone points at nothing once the row is gone */
        entry = json_pack("{s:s, s:i}", "username", PQgetvalue(res, 0, 0),
                          "sessions_ended", (json_int_t)PQntuples(sessions));
        if ((rc = entry ? cdb_audit_record_in(conn, caller, "user.delete", id, entry, err) : cdb_error_oom(err)) < 0)
            goto out_release;
    }
    if ((rc = cdb_txn_commit(conn, err)) < 0)
        goto out_release;
    cdb_commit_lsn_note(svc->commit_lsn, conn, caller->user_id);
    cdb__sessions_forget(svc, conn, sessions, 0);
    cdb_log_info("users.deleted", "user %s deleted, %d sessions ended", id, PQntuples(sessions));

out_release:
    PQclear(sessions);
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0)
        cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, "users"); /* and the tables the delete cascaded into */
    record_failure(svc, caller, "user.delete", id, NULL, rc, err);
    json_decref(entry);
    return rc;
}

/* ---- the first admin ---- */

/* A username from the email's local part: [a-z0-9_.-] only, 3 to 50 long. */
static void derive_username(const char *email, char out[USERNAME_MAX + 1])
{
    size_t n = 0;
    for (const char *p = email; *p && *p != '@' && n < USERNAME_MAX; p++) {
        char c = (char)tolower((unsigned char)*p);
        out[n++] = strchr("abcdefghijklmnopqrstuvwxyz0123456789_.-", c) ? c : '_';
    }
    out[n] = '\0';
    if (n < USERNAME_MIN)
        strcpy(out, "admin");
}

int cdb_users_ensure_admin(cdb_service *svc, const char *email, const char *username,
                           const char *password, bool *created, cdb_error *err)
{
    static const char *const admin_exists =
        "SELECT EXISTS (SELECT 1 FROM public.users WHERE role = 'admin')";
    char mail[EMAIL_MAX + 1], name[USERNAME_MAX + 1], hash[CDB_PASSWORD_HASH_MAX];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    int rc;

    *created = false;
    if (!email || !password)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", email ? "password" : "email",
                                    "The admin needs an email and a password");
    if ((rc = cdb_user_check_email(email, mail, err)) < 0 ||
        (rc = cdb_user_check_password(svc->cfg, password, strlen(password), mail, err)) < 0 ||
        (username && (rc = cdb_user_check_username(username, err)) < 0))
        return rc;
    if (username)
        snprintf(name, sizeof name, "%s", username);
    else
        derive_username(mail, name);

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    /* cheap check first: most starts find an admin and need no hashing */
    if ((rc = cdb_pg_exec(conn, admin_exists, 0, NULL, &res, err)) < 0 ||
        PQgetvalue(res, 0, 0)[0] == 't')
        goto out_release;
    PQclear(res);
    res = NULL;
    if ((rc = cdb_password_hash(&svc->password, password, strlen(password), hash, err)) < 0)
        goto out_release;

    /* serializes instances starting together: exactly one creates the admin */
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT pg_advisory_xact_lock(20261123, 0)", 0, NULL, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, admin_exists, 0, NULL, &res, err)) < 0 ||
        PQgetvalue(res, 0, 0)[0] == 't')
        goto out_release;
    PQclear(res);
    res = NULL;
    if (!username) {
        const char *p[] = {name};
        if ((rc = cdb_pg_exec(conn, "SELECT 1 FROM public.users WHERE username = $1", 1, p, &res, err)) < 0)
            goto out_release;
        if (PQntuples(res) > 0) {
            /* a derived name that is taken gets a random suffix */
            unsigned char rnd[3];
            char hex[7];
            randombytes_buf(rnd, sizeof rnd);
            sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
            name[USERNAME_MAX - 7] = '\0';
            strcat(name, "_");
            strcat(name, hex);
        }
        PQclear(res);
        res = NULL;
    }
    const char *params[] = {mail, name, hash};
    rc = cdb_pg_exec(conn, "INSERT INTO public.users (email, username, password_hash, role)"
                           " VALUES ($1, $2, $3, 'admin')", 3, params, NULL, err);
    if (rc < 0) {
        rc = conflict_field(err);
        goto out_release;
    }
    if ((rc = cdb_txn_commit(conn, err)) < 0)
        goto out_release;
    *created = true;
    cdb_commit_lsn_note(svc->commit_lsn, conn, NULL);
    cdb_log_info("users.admin_created", "first admin '%s' created", name);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    if (rc == 0 && *created)
        cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, "users");
    return rc;
}
