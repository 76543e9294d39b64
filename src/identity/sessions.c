/*
 * sessions.c - login, sessions, access and refresh tokens, and the check every
 * authenticated request makes.
 *
 * PostgreSQL (coredb.sessions, coredb.refresh_tokens) is the authority on
 * whether a session is alive. Redis keeps, per session, a short-lived
 * positive copy (coredb:session:<sid> = user id) so most requests cost one
 * GET. Ending a session overwrites that key with a "revoked" tombstone
 * rather than deleting it: a request that read "alive" from PostgreSQL just
 * before the revocation commits stores its copy with SET NX, which cannot
 * overwrite the tombstone, so no stale "alive" survives a revocation. The
 * positive copy lives at most min(60 s, SESSION_TIMEOUT / 2, the session's
 * remaining lifetime): request hits on it do not move last_seen_at, so the
 * idle timeout is enforced to within that lag.
 *
 * Logins take a per-user advisory lock (shared with user deletion) so the
 * SESSION_MAX_PER_USER eviction sees every concurrent login. Refresh tokens
 * are 256 random bits; only their SHA-256 is stored, and a spent one
 * presented again ends its session (reuse detection). Failed-login counters
 * are checked before any password work and counted per client address and
 * per account.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "identity/identity_internal.h"
#include "coredb/audit.h"
#include "coredb/log.h"
#include "store/pg.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#define REFRESH_BYTES 32
#define REFRESH_TEXT_MAX 256          /* longer input cannot be one of ours */
#define USER_AGENT_MAX 256
#define SESSION_ROW_RETENTION "7 days"

/* ---- tokens ---- */

/* libsodium is initialized by cdb_service_open */
static void random_buf(void *buf, size_t len)
{
    randombytes_buf(buf, len);
}

static void random_hex(char *out, size_t bytes)
{
    unsigned char buf[32];
    random_buf(buf, bytes);
    sodium_bin2hex(out, bytes * 2 + 1, buf, bytes);
}

static void sha256_hex(const char *text, char out[crypto_hash_sha256_BYTES * 2 + 1])
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)text, strlen(text));
    sodium_bin2hex(out, crypto_hash_sha256_BYTES * 2 + 1, digest, sizeof digest);
}

/* A new opaque refresh token (base64url, no padding) and the hex of its hash. */
static void refresh_new(char token[64], char hash_hex[crypto_hash_sha256_BYTES * 2 + 1])
{
    unsigned char raw[REFRESH_BYTES];
    random_buf(raw, sizeof raw);
    sodium_bin2base64(token, 64, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    sha256_hex(token, hash_hex);
}

/* Stores a refresh token for session_id; it never outlives the session. */
static int refresh_store(cdb_service *svc, PGconn *conn, const char *session_id,
                         const char *hash_hex, cdb_error *err)
{
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", svc->cfg->refresh_token_ttl_s);
    const char *params[] = {hash_hex, session_id, ttl};
    return cdb_pg_exec(conn,
                       "INSERT INTO coredb.refresh_tokens (token_hash, session_id, expires_at)"
                       " SELECT decode($1, 'hex'), s.session_id,"
                       " LEAST(now() + make_interval(secs => $3), s.expires_at)"
                       " FROM coredb.sessions s WHERE s.session_id = $2",
                       3, params, NULL, err);
}

/*
 * Signs an access token and assembles the login/refresh answer around it.
 * Steals user.
 */
static int token_pair(cdb_service *svc, const char *user_id, const char *role, const char *sid,
                      const char *refresh, json_t *user, json_t **out, cdb_error *err)
{
    cdb_token_claims c = {0};
    char *access = NULL;
    int64_t now = cdb_wall_s();

    snprintf(c.sub, sizeof c.sub, "%s", user_id);
    snprintf(c.role, sizeof c.role, "%s", role);
    snprintf(c.sid, sizeof c.sid, "%s", sid);
    random_hex(c.jti, 16);
    c.iat = c.nbf = now;
    c.exp = now + svc->cfg->access_token_ttl_s;
    int rc = cdb_jwt_issue(&svc->jwt, &c, &access, err);
    if (rc == 0) {
        *out = json_pack("{s:s, s:s, s:s, s:i, s:s, s:o}", "access_token", access,
                         "refresh_token", refresh, "token_type", "Bearer",
                         "expires_in", (json_int_t)svc->cfg->access_token_ttl_s,
                         "session_id", sid, "user", user);
        user = NULL;   /* json_pack steals it even when it fails */
        if (!*out)
            rc = cdb_error_oom(err);
    }
    json_decref(user);
    if (access)
        sodium_memzero(access, strlen(access));
    free(access);
    return rc;
}

/* ---- authenticating a request ---- */

int cdb_session_verify_token(cdb_service *svc, const char *token, cdb_principal *out, cdb_error *err)
{
    cdb_token_claims c;

    memset(out, 0, sizeof *out);
    out->role = CDB_ROLE_ANON;
    if (!token || !*token)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Missing bearer token");
    int rc = cdb_jwt_verify(&svc->jwt, token, cdb_wall_s(), &c, err);
    if (rc < 0)
        return rc;
    int role = cdb_role_parse(c.role);
    if (role < 0 || !cdb_uuid_norm(c.sub, out->user_id) || !cdb_uuid_norm(c.sid, out->session_id)) {
        memset(out, 0, sizeof *out);
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid token");
    }
    out->role = (cdb_role)role;
    out->token_exp = c.exp;
    return 0;
}

int cdb_session_authenticate(cdb_service *svc, const char *token, cdb_principal *out, cdb_error *err)
{
    int rc = cdb_session_verify_token(svc, token, out, err);
    return rc < 0 ? rc : cdb_session_check(svc, out, err);
}

int cdb_session_check(cdb_service *svc, cdb_principal *out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    char timeout[16];
    int rc = 0;

    int state = cdb__session_liveness(svc, out);
    if (state == 1)
        return 0;
    if (state == 0) {
        rc = cdb_error_set(err, CDB_ERR_TOKEN_REVOKED, "Session has ended");
        goto out_release;
    }

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn) {
        rc = err->code;
        goto out_release;
    }
    snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);
    const char *params[] = {out->session_id, out->user_id, timeout};
    rc = cdb_pg_exec(conn,
                     "UPDATE coredb.sessions s SET last_seen_at = now()"
                     " WHERE s.session_id = $1 AND s.user_id = $2 AND " CDB__SESSION_LIVE("s", "$3")
                     " RETURNING ceil(extract(epoch FROM s.expires_at - now()))::bigint",
                     3, params, &res, err);
    if (rc < 0)
        goto out_release;
    if (PQntuples(res) == 0) {
        rc = cdb_error_set(err, CDB_ERR_TOKEN_REVOKED, "Session has ended");
        goto out_release;
    }
    cdb__session_remember(svc, out->session_id, out->user_id, strtoll(PQgetvalue(res, 0, 0), NULL, 10));

out_release:
    if (rc < 0)
        memset(out, 0, sizeof *out);   /* role ANON: nobody */
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* ---- login ---- */

/* RATE_LIMITED, before any password work, when either failure counter is full. */
static int login_allowed(cdb_service *svc, const char *addr_key, const char *acct_key, cdb_error *err)
{
    const cdb_config *cfg = svc->cfg;
    double addr_reset = 0, acct_reset = 0, wait = -1;
    int64_t addr = cdb_ratelimit_window_count(svc->ratelimit, addr_key, cfg->login_failure_window_s, &addr_reset);
    int64_t acct = cdb_ratelimit_window_count(svc->ratelimit, acct_key, cfg->login_failure_window_s, &acct_reset);
    if (addr >= cfg->login_max_failures_per_address)
        wait = addr_reset;
    if (acct >= cfg->login_max_failures && acct_reset > wait)
        wait = acct_reset;
    if (wait < 0)
        return 0;
    cdb_error_set(err, CDB_ERR_RATE_LIMITED, "Too many failed logins; try again later");
    cdb_error_detail(err, "retry_after", json_integer(wait < 1 ? 1 : (json_int_t)ceil(wait)));
    return CDB_ERR_RATE_LIMITED;
}

/* The user agent as printable ASCII, cut short: it is stored and shown back. */
static void clean_user_agent(const char *ua, char out[USER_AGENT_MAX + 1])
{
    size_t n = 0;
    for (; ua && ua[n] && n < USER_AGENT_MAX; n++)
        out[n] = (unsigned char)ua[n] < 0x20 || (unsigned char)ua[n] > 0x7e ? '?' : ua[n];
    out[n] = '\0';
}

/* Argon2id for a bcrypt or outdated hash; a failure only costs the upgrade. */
static void rehash(cdb_service *svc, PGconn *conn, const char *user_id, const char *old_hash,
                   const char *password, size_t len)
{
    char hash[CDB_PASSWORD_HASH_MAX];
    cdb_error e;
    cdb_error_init(&e);
    const char *params[] = {user_id, hash, old_hash};
    if (cdb_password_hash(&svc->password, password, len, hash, &e) < 0 ||
        cdb_pg_exec(conn, "UPDATE public.users SET password_hash = $2"
                          " WHERE user_id = $1 AND password_hash = $3", 3, params, NULL, &e) < 0)
        cdb_log_warn("auth.rehash_failed", "password hash upgrade for %s failed: %s", user_id, e.message);
    else
        cdb_log_info("auth.rehashed", "password hash of %s upgraded to argon2id", user_id);
    cdb_error_destroy(&e);
}

int cdb_session_login(cdb_service *svc, const char *email, const char *password,
                   const cdb_client_info *client, json_t **out, cdb_error *err)
{
    const cdb_config *cfg = svc->cfg;
    char addr_key[128], acct_key[300], user_id[37], role[16], ua[USER_AGENT_MAX + 1];
    char lifetime[16], timeout[16], keep_others[16];
    char refresh[64], refresh_hash[crypto_hash_sha256_BYTES * 2 + 1];
    cdb_pool_conn *pc = NULL;
    PGresult *user = NULL, *sess = NULL, *evicted = NULL;
    json_t *user_json = NULL;
    bool needs_rehash = false;
    int rc;

    *out = NULL;
    if (!email || !*email || !password)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", email && *email ? "password" : "email",
                                    "email and password are required");
    const char *address = client && client->address ? client->address : "unknown";
    snprintf(addr_key, sizeof addr_key, "coredb:login:addr:%.64s", address);
    int n = snprintf(acct_key, sizeof acct_key, "coredb:login:acct:%.255s", email);
    for (int i = (int)strlen("coredb:login:acct:"); i < n && acct_key[i]; i++)
        acct_key[i] = (char)tolower((unsigned char)acct_key[i]);
    if ((rc = login_allowed(svc, addr_key, acct_key, err)) < 0) {
        cdb__metrics_inc(rc == CDB_ERR_RATE_LIMITED ? CDB_M_LOGIN_LOCKED : CDB_M_LOGIN_ERROR);
        return rc;
    }

    /* the connection is not held while argon2id runs */
    size_t len = strlen(password);
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *by_email[] = {email};
    rc = cdb_pg_exec(conn,
                     "SELECT u.user_id::text, u.password_hash, u.role, " CDB__USER_JSON
                     " FROM public.users u WHERE lower(u.email) = lower($1) AND u.is_active",
                     1, by_email, &user, err);
    cdb_txn_release(svc->pool, pc);
    pc = NULL;
    if (rc < 0)
        goto out_release;
    bool found = PQntuples(user) == 1, ok = false;
    if (found && len <= CDB_PASSWORD_MAX_BYTES)
        ok = cdb_password_verify(&svc->password, PQgetvalue(user, 0, 1), password, len, &needs_rehash);
    else if (len <= CDB_PASSWORD_MAX_BYTES)
        cdb_password_burn(&svc->password, password, len);
    if (!ok) {
        cdb_ratelimit_window_hit(svc->ratelimit, addr_key, cfg->login_failure_window_s);
        cdb_ratelimit_window_hit(svc->ratelimit, acct_key, cfg->login_failure_window_s);
        rc = cdb_error_set(err, CDB_ERR_INVALID_CREDENTIALS, "Invalid email or password");
        goto out_release;
    }
    cdb_ratelimit_window_clear(svc->ratelimit, acct_key);
    snprintf(user_id, sizeof user_id, "%s", PQgetvalue(user, 0, 0));
    snprintf(role, sizeof role, "%s", PQgetvalue(user, 0, 2));
    if ((rc = cdb_pg_json_parse(PQgetvalue(user, 0, 3), &user_json, err)) < 0)
        goto out_release;

    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err->code;
        goto out_release;
    }
    if (needs_rehash)
        rehash(svc, conn, user_id, PQgetvalue(user, 0, 1), password, len);

    clean_user_agent(client ? client->user_agent : NULL, ua);
    snprintf(lifetime, sizeof lifetime, "%d", cfg->session_max_lifetime_s);
    snprintf(timeout, sizeof timeout, "%d", cfg->session_timeout_s);
    snprintf(keep_others, sizeof keep_others, "%d", cfg->session_max_per_user - 1);
    const char *ins[] = {user_id, lifetime, client && client->address ? client->address : NULL,
                         client && client->user_agent ? ua : NULL};
    const char *lock[] = {user_id};
    /* serialized per user, so concurrent logins cannot both skip the eviction */
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb_pg_exec(conn, CDB__USER_LOCK_SQL, 1, lock,
                          NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn,
                          "INSERT INTO coredb.sessions (user_id, expires_at, ip_address, user_agent)"
                          " SELECT u.user_id, now() + make_interval(secs => $2), $3, $4"
                          " FROM public.users u WHERE u.user_id = $1 AND u.is_active"
                          " RETURNING session_id::text, ceil(extract(epoch FROM expires_at - now()))::bigint",
                          4, ins, &sess, err)) < 0)
        goto out_release;
    if (PQntuples(sess) == 0) {   /* deleted or deactivated since the lookup */
        rc = cdb_error_set(err, CDB_ERR_INVALID_CREDENTIALS, "Invalid email or password");
        goto out_release;
    }
    const char *sid = PQgetvalue(sess, 0, 0);
    /* the new session always stays; of the others, the newest max - 1 live ones do */
    const char *evict[] = {user_id, sid, timeout, keep_others};
    refresh_new(refresh, refresh_hash);
    if ((rc = cdb_pg_exec(conn,
                          "UPDATE coredb.sessions SET revoked_at = now(), revoked_reason = 'evicted'"
                          " WHERE session_id IN (SELECT s.session_id FROM coredb.sessions s"
                          " WHERE s.user_id = $1 AND s.session_id <> $2 AND " CDB__SESSION_LIVE("s", "$3")
                          " ORDER BY s.created_at DESC, s.session_id OFFSET $4)"
                          " RETURNING session_id::text",
                          4, evict, &evicted, err)) < 0 ||
        (rc = refresh_store(svc, conn, sid, refresh_hash, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out_release;
    cdb__sessions_forget(svc, conn, evicted, 0);
    cdb__session_remember(svc, sid, user_id, strtoll(PQgetvalue(sess, 0, 1), NULL, 10));
    rc = token_pair(svc, user_id, role, sid, refresh, user_json, out, err);
    user_json = NULL;
    if (rc == 0)
        cdb_log_info("auth.login", "user %s logged in, session %s (%d evicted)", user_id, sid,
                     PQntuples(evicted));

out_release:
    cdb__metrics_inc(rc == 0 ? CDB_M_LOGIN_SUCCESS
                     : rc == CDB_ERR_INVALID_CREDENTIALS ? CDB_M_LOGIN_FAILURE : CDB_M_LOGIN_ERROR);
    sodium_memzero(refresh, sizeof refresh);
    json_decref(user_json);
    PQclear(user);
    PQclear(sess);
    PQclear(evicted);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* ---- refresh ---- */

int cdb_session_refresh(cdb_service *svc, const char *refresh_token, json_t **out, cdb_error *err)
{
    char hash[crypto_hash_sha256_BYTES * 2 + 1], timeout[16];
    char refresh[64] = "", refresh_hash[crypto_hash_sha256_BYTES * 2 + 1];
    cdb_pool_conn *pc = NULL;
    PGresult *row = NULL, *sess = NULL;
    json_t *user_json = NULL;
    int rc;

    *out = NULL;
    if (!refresh_token || !*refresh_token || strlen(refresh_token) > REFRESH_TEXT_MAX)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid refresh token");
    sha256_hex(refresh_token, hash);
    snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);

    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *find[] = {hash, timeout};
    /* FOR UPDATE: two refreshes with one token are serialized; the second is a reuse */
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb_pg_exec(conn,
                          "SELECT r.session_id::text, r.used_at IS NOT NULL, r.expires_at > now(),"
                          " " CDB__SESSION_LIVE("s", "$2") " AND u.is_active,"
                          " s.user_id::text, u.role, " CDB__USER_JSON
                          " FROM coredb.refresh_tokens r"
                          " JOIN coredb.sessions s ON s.session_id = r.session_id"
                          " JOIN public.users u ON u.user_id = s.user_id"
                          " WHERE r.token_hash = decode($1, 'hex') FOR UPDATE OF r",
                          2, find, &row, err)) < 0)
        goto out_release;
    if (PQntuples(row) == 0) {
        rc = cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Invalid refresh token");
        goto out_release;
    }
    const char *sid = PQgetvalue(row, 0, 0), *user_id = PQgetvalue(row, 0, 4);
    const char *by_sid[] = {sid};
    if (PQgetvalue(row, 0, 1)[0] == 't') {
        /* a spent token again: one of its holders is not the user, so the session goes */
        if ((rc = cdb_pg_exec(conn, "UPDATE coredb.sessions SET revoked_at = now(),"
                                    " revoked_reason = 'refresh_reuse'"
                                    " WHERE session_id = $1 AND revoked_at IS NULL",
                              1, by_sid, NULL, err)) < 0 ||
            (rc = cdb_txn_commit(conn, err)) < 0)
            goto out_release;
        cdb__session_forget(svc, conn, sid);
        cdb__metrics_inc(CDB_M_SESSION_REUSE_DETECTIONS);
        cdb_log_warn("auth.refresh_reuse", "reused refresh token: session %s of user %s ended", sid, user_id);
        rc = cdb_error_set(err, CDB_ERR_TOKEN_REVOKED, "Refresh token reuse detected; the session has ended");
        goto out_release;
    }
    if (PQgetvalue(row, 0, 2)[0] != 't' || PQgetvalue(row, 0, 3)[0] != 't') {
        rc = cdb_error_set(err, CDB_ERR_TOKEN_REVOKED, "Session has ended");
        goto out_release;
    }
    if ((rc = cdb_pg_json_parse(PQgetvalue(row, 0, 6), &user_json, err)) < 0)
        goto out_release;
    refresh_new(refresh, refresh_hash);
    if ((rc = cdb_pg_exec(conn, "UPDATE coredb.refresh_tokens SET used_at = now()"
                                " WHERE token_hash = decode($1, 'hex')", 1, find, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "UPDATE coredb.sessions SET last_seen_at = now() WHERE session_id = $1"
                                " RETURNING ceil(extract(epoch FROM expires_at - now()))::bigint",
                          1, by_sid, &sess, err)) < 0 ||
        (rc = refresh_store(svc, conn, sid, refresh_hash, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out_release;
    cdb__session_remember(svc, sid, user_id, strtoll(PQgetvalue(sess, 0, 0), NULL, 10));
    rc = token_pair(svc, user_id, PQgetvalue(row, 0, 5), sid, refresh, user_json, out, err);
    user_json = NULL;
    if (rc == 0)
        cdb__metrics_inc(CDB_M_SESSION_REFRESHES);

out_release:
    sodium_memzero(refresh, sizeof refresh);
    json_decref(user_json);
    PQclear(row);
    PQclear(sess);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* ---- ending sessions ---- */

int cdb_session_logout(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    int rc;

    *out = NULL;
    if (!caller || caller->role == CDB_ROLE_ANON || !*caller->session_id)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Authentication required");
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    const char *params[] = {caller->session_id, caller->user_id};
    rc = cdb_pg_exec(conn, "UPDATE coredb.sessions SET revoked_at = now(), revoked_reason = 'logout'"
                           " WHERE session_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                     2, params, NULL, err);
    if (rc < 0)
        goto out_release;
    cdb__session_forget(svc, conn, caller->session_id);
    *out = json_pack("{s:s, s:s}", "status", "logged_out", "session_id", caller->session_id);
    if (!*out)
        rc = cdb_error_oom(err);

out_release:
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb_session_revoke_user(cdb_service *svc, const cdb_principal *caller, const char *user_id,
                         json_t **out, cdb_error *err)
{
    char id[37];
    cdb_pool_conn *pc = NULL;
    PGresult *ended = NULL, *exists = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb_principal_authorize_target(caller, user_id, id, err)) < 0)
        return rc;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    if ((rc = cdb__end_user_sessions(conn, id, NULL, "revoked", &ended, err)) < 0)
        goto out_release;
    cdb__sessions_forget(svc, conn, ended, 0);
    if (PQntuples(ended) == 0) {
        const char *params[] = {id};
        if ((rc = cdb_pg_exec(conn, "SELECT 1 FROM public.users WHERE user_id = $1", 1, params,
                              &exists, err)) < 0)
            goto out_release;
        if (PQntuples(exists) == 0) {
            rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "User not found");
            goto out_release;
        }
    }
    *out = json_pack("{s:s, s:i}", "user_id", id, "revoked_sessions", (json_int_t)PQntuples(ended));
    if (!*out)
        rc = cdb_error_oom(err);
    else
        cdb_log_info("auth.revoked", "%d sessions of user %s revoked by %s", PQntuples(ended), id,
                     caller->user_id);

out_release:
    cdb_txn_release(svc->pool, pc);
    /* an admin ending someone else's sessions is recorded (coredb/audit.h), failures too */
    if (strcmp(caller->user_id, id) != 0) {
        cdb_error outcome = {.code = (cdb_err)rc};
        json_t *params = rc == 0 ? json_pack("{s:i}", "revoked_sessions", (json_int_t)PQntuples(ended)) : NULL;
        cdb_audit_record(svc, caller, "session.revoke", id, params, &outcome);
        json_decref(params);
    }
    PQclear(ended);
    PQclear(exists);
    return rc;
}

int cdb_session_list(cdb_service *svc, const cdb_principal *caller, json_t **out,
                           cdb_error *err)
{
    char timeout[16];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    json_t *list = NULL;
    int rc;

    *out = NULL;
    if (!caller || caller->role == CDB_ROLE_ANON)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Authentication required");
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);
    const char *params[] = {caller->user_id, *caller->session_id ? caller->session_id : NULL, timeout};
    rc = cdb_pg_exec(conn,
                     "SELECT coalesce(json_agg(json_build_object('session_id', s.session_id,"
                     " 'created_at', " CDB_SQL_TS("s.created_at") ","
                     " 'last_seen_at', " CDB_SQL_TS("s.last_seen_at") ","
                     " 'expires_at', " CDB_SQL_TS("s.expires_at") ","
                     " 'ip_address', s.ip_address, 'user_agent', s.user_agent,"
                     " 'current', s.session_id IS NOT DISTINCT FROM $2::uuid)"
                     " ORDER BY s.created_at DESC, s.session_id), '[]')::text"
                     " FROM coredb.sessions s WHERE s.user_id = $1 AND " CDB__SESSION_LIVE("s", "$3"),
                     3, params, &res, err);
    if (rc < 0 || (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &list, err)) < 0)
        goto out_release;
    *out = json_pack("{s:o}", "sessions", list);
    if (!*out)
        rc = cdb_error_oom(err);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb_session_delete(cdb_service *svc, const cdb_principal *caller,
                            const char *session_id, cdb_error *err)
{
    char sid[37], timeout[16];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    int rc;

    if (!caller || caller->role == CDB_ROLE_ANON)
        return cdb_error_set(err, CDB_ERR_UNAUTHORIZED, "Authentication required");
    if (!cdb_uuid_norm(session_id, sid))
        return cdb_error_set(err, CDB_ERR_NOT_FOUND, "Session not found");
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);
    /* someone else's session is as absent as a missing one, unless the caller is admin */
    const char *params[] = {sid, caller->user_id, caller->role == CDB_ROLE_ADMIN ? "true" : "false",
                            timeout};
    rc = cdb_pg_exec(conn,
                     "UPDATE coredb.sessions s SET revoked_at = now(), revoked_reason = 'deleted'"
                     " WHERE s.session_id = $1 AND (s.user_id = $2::uuid OR $3::boolean)"
                     " AND " CDB__SESSION_LIVE("s", "$4") " RETURNING s.user_id::text",
                     4, params, &res, err);
    if (rc < 0)
        goto out_release;
    if (PQntuples(res) == 0) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "Session not found");
        goto out_release;
    }
    cdb__session_forget(svc, conn, sid);
    if (strcmp(PQgetvalue(res, 0, 0), caller->user_id) != 0) {
        /* an admin ending someone else's session is recorded (coredb/audit.h) */
        json_t *owner = json_pack("{s:s}", "user_id", PQgetvalue(res, 0, 0));
        cdb_audit_record(svc, caller, "session.revoke", sid, owner, NULL);
        json_decref(owner);
    }

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* ---- the reaper ---- */

int cdb_session_reap(cdb_service *svc, int *reaped, cdb_error *err)
{
    char timeout[16];
    cdb_pool_conn *pc = NULL;
    PGresult *ended = NULL;
    int rc;

    *reaped = 0;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    if (!conn)
        return err->code;
    snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);
    const char *params[] = {timeout};
    /* each statement commits on its own: a crash between them loses nothing */
    if ((rc = cdb_pg_exec(conn,
                          "UPDATE coredb.sessions SET revoked_at = now(), revoked_reason ="
                          " CASE WHEN expires_at <= now() THEN 'expired' ELSE 'idle' END"
                          " WHERE revoked_at IS NULL AND (expires_at <= now()"
                          " OR last_seen_at <= now() - make_interval(secs => $1))"
                          " RETURNING session_id::text",
                          1, params, &ended, err)) < 0)
        goto out_release;
    cdb__sessions_forget(svc, conn, ended, 0);
    *reaped = PQntuples(ended);
    /* refresh tokens of deleted sessions go by cascade; expired ones are useless */
    if ((rc = cdb_pg_exec(conn, "DELETE FROM coredb.sessions"
                                " WHERE revoked_at < now() - interval '" SESSION_ROW_RETENTION "'",
                          0, NULL, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "DELETE FROM coredb.refresh_tokens"
                                " WHERE expires_at < now() - interval '" SESSION_ROW_RETENTION "'",
                          0, NULL, NULL, err)) < 0)
        goto out_release;
    if (*reaped > 0)
        cdb_log_info("auth.reaped", "%d idle or expired sessions ended", *reaped);

out_release:
    PQclear(ended);
    cdb_txn_release(svc->pool, pc);
    return rc;
}
