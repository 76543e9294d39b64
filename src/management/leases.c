/*
 * leases.c - acquiring, renewing and listing connection leases
 * (coredb/leases.h). Releasing them and the reaper are leases_end.c; the
 * reserved connections themselves are kept by store/reserved.c.
 *
 * The acquire's DDL runs on the very connection it reserves: a lease then
 * needs one pooled connection, not two, so a pool of DB_POOL_MAX leases
 * fills exactly and the next acquire waits, then answers POOL_EXHAUSTED.
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/dbauth_internal.h"
#include "management/leases_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/reserved.h"
#include "store/txn.h"

const cdb_principal cdb__lease_reaper = {.role = CDB_ROLE_ANON};

int cdb__lease_ttl(const cdb_service *svc, const json_t *request, int *ttl, cdb_error *err)
{
    json_t *v = json_is_object(request) ? json_object_get(request, "ttl_seconds") : NULL;
    *ttl = svc->cfg->lease_ttl_s;
    if (*ttl > svc->cfg->lease_max_ttl_s)
        *ttl = svc->cfg->lease_max_ttl_s;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > svc->cfg->lease_max_ttl_s)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "ttl_seconds",
                                    "ttl_seconds must be an integer from 1 to %d (LEASE_MAX_TTL)",
                                    svc->cfg->lease_max_ttl_s);
    *ttl = (int)json_integer_value(v);
    return 0;
}

/* A string field that is required, 1..max bytes of [A-Za-z0-9._-]. */
static int name_field(const json_t *request, const char *field, size_t max, const char **out, cdb_error *err)
{
    json_t *v = json_object_get(request, field);
    if (!v)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s is required", field);
    if (!json_is_string(v))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s must be a string", field);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || n > max || strlen(s) != n ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be 1 to %zu characters of letters, digits, '.', '_' and '-'", field,
                                    max);
    *out = s;
    return 0;
}

static int choice_field(const json_t *request, const char *field, const char *const *allowed, const char **out,
                        cdb_error *err)
{
    json_t *v = json_object_get(request, field);
    if (!v)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s is required", field);
    for (const char *const *a = allowed; json_is_string(v) && *a; a++) {
        if (strcmp(json_string_value(v), *a) == 0 && strlen(*a) == json_string_length(v)) {
            *out = *a;
            return 0;
        }
    }
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s is not one of the accepted values",
                                field);
}

static void hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* A random version 4 UUID. */
static void new_uuid(char out[37])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void iso_utc(int64_t s, char out[32])
{
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Appends s to buf percent-encoded except unreserved characters. */
static void url_part(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    for (; *s && n + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~", c))
            buf[n++] = (char)c;
        else
            n += (size_t)snprintf(buf + n, cap - n, "%%%02X", c);
    }
    buf[n] = '\0';
}

/*
 * postgresql://role:password@host:port/db (a socket directory goes in
 * ?host=, as libpq reads it).
 */
static char *lease_url(const char *host, const char *port, const char *db, const char *role, const char *password)
{
    size_t cap = 1024 + 3 * (strlen(host ? host : "") + strlen(db ? db : ""));
    char *url = malloc(cap);
    if (!url)
        return NULL;
    snprintf(url, cap, "postgresql://%s:%s@", role, password);
    bool socket_dir = host && host[0] == '/';
    if (host && *host && !socket_dir)
        url_part(url, cap, host);
    if (port && *port && !socket_dir)
        snprintf(url + strlen(url), cap - strlen(url), ":%s", port);
    strncat(url, "/", cap - strlen(url) - 1);
    url_part(url, cap, db ? db : "");
    if (socket_dir) {
        strncat(url, "?host=", cap - strlen(url) - 1);
        url_part(url, cap, host);
        if (port && *port)
            snprintf(url + strlen(url), cap - strlen(url), "&port=%s", port);
    }
    return url;
}

enum { REPLICA_CATCH_UP_MS = 2000, REPLICA_POLL_MS = 10 };

/*
 * Whether replica i has replayed what conn (the lease's connection, its
 * role committed) has written, waiting up to REPLICA_CATCH_UP_MS: a client
 * handed the replica's URL at once could otherwise find no such role
 * there for as long as the replica lags.
 */
static bool replica_has_lease(cdb_replicas *rs, int i, PGconn *conn)
{
    PGresult *res = cdb_pg_query(conn, "SELECT pg_current_wal_insert_lsn()::text");
    char lsn[32] = "";
    bool ok = false;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(lsn, sizeof lsn, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!*lsn)
        return false;
    cdb_pool *pool = cdb_replicas_pool(rs, i);
    cdb_error e;
    cdb_error_init(&e);
    int64_t deadline = cdb_mono_ms() + REPLICA_CATCH_UP_MS;
    cdb_pool_conn *held = cdb_pool_acquire(pool, deadline, &e);
    if (held) {
        PGconn *rconn = cdb_pool_conn_pg(held);
        const char *params[] = {lsn};
        /* the loop ends by the clock; the cap only bounds a silent replica (an expired
         * cap would mark the replica's pool down) */
        cdb_pg_set_deadline(rconn, deadline + REPLICA_CATCH_UP_MS);
        while (!ok && cdb_mono_ms() < deadline) {
            res = cdb_pg_query_params(rconn, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", 1, params);
            bool answered = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
            ok = answered && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
            PQclear(res);
            if (!answered)
                break;
            if (!ok)
                nanosleep(&(struct timespec){.tv_nsec = REPLICA_POLL_MS * 1000000L}, NULL);
        }
        cdb_pool_release(pool, held);
    }
    cdb_error_destroy(&e);
    return ok;
}

/*
 * Where the lease's login connects: for read with DATABASE_READ_URLS, a
 * replica in rotation (store/replicas.h, round robin) once it has replayed
 * the lease's role, or the server the reserved connection reached when
 * none is in rotation or it did not catch up in time (reads then go to the
 * primary, as the data API's do).
 */
static char *lease_target_url(cdb_service *svc, PGconn *conn, const char *mode, const char *role,
                              const char *password)
{
    int pick = strcmp(mode, "read") == 0 ? cdb_replicas_pick(svc->replicas, 0, 0, NULL, NULL) : -1;
    if (pick >= 0 && !replica_has_lease(svc->replicas, pick, conn)) {
        cdb_log_warn("lease.replica_behind", "the replica has not replayed the lease's role; the lease reads the primary");
        pick = -1;
    }
    const char *target = pick >= 0 ? cdb_pool_conninfo(cdb_replicas_pool(svc->replicas, pick)) : NULL;
    PQconninfoOption *opts = target ? PQconninfoParse(target, NULL) : NULL;
    char *url = NULL;
    if (opts) {
        const char *host = NULL, *port = NULL, *db = NULL;
        for (PQconninfoOption *o = opts; o->keyword; o++) {
            if (strcmp(o->keyword, "host") == 0)
                host = o->val;
            else if (strcmp(o->keyword, "port") == 0)
                port = o->val;
            else if (strcmp(o->keyword, "dbname") == 0)
                db = o->val;
        }
        url = lease_url(host, port, db ? db : PQdb(conn), role, password);
        PQconninfoFree(opts);
    } else {
        url = lease_url(PQhost(conn), PQport(conn), PQdb(conn), role, password);
    }
    return url;
}

static int pool_stats_json(cdb_service *svc, json_t **out, cdb_error *err)
{
    cdb_pool_stats st;
    cdb_pool_get_stats(svc->pool, &st);
    *out = json_pack("{s:i, s:i, s:i, s:i}", "active", st.active, "idle", st.idle, "waiting", st.waiting, "max",
                     st.max);
    return *out ? 0 : cdb_error_oom(err);
}

static const char INSERT_SQL[] =
    "INSERT INTO coredb.leases (id, role_name, user_id, app_role, service_name, mode, backend_pid,"
    " backend_start, expires_at)"
    " SELECT $1, $2, $3, $4, $5, $6, pg_backend_pid(), a.backend_start, to_timestamp($7::bigint)"
    " FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()";

/*
 * LEASE_MAX_PER_USER is counted on the rows, so across instances. The
 * advisory lock (per user, held to the end of the acquire's transaction)
 * makes two concurrent acquires of one user count one after the other:
 * without it both could see cap - 1 live rows and both insert. The first
 * key, 20261209, keeps it apart from identity's per-user lock (20261122).
 */
static const char CAP_LOCK_SQL[] = "SELECT pg_advisory_xact_lock(20261209, hashtext($1))";
static const char CAP_COUNT_SQL[] =
    "SELECT count(*), coalesce(ceil(extract(epoch FROM min(expires_at) - now())), 0)::bigint"
    " FROM coredb.leases WHERE user_id::text = $1 AND state = 'active' AND expires_at > now()";

/* RATE_LIMITED when the caller already holds cap live leases (cap 0: no cap). */
static int check_cap(PGconn *conn, const cdb_principal *caller, int cap, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {caller->user_id};
    int rc;
    if (cap <= 0)
        return 0;
    if ((rc = cdb_pg_exec(conn, CAP_LOCK_SQL, 1, params, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, CAP_COUNT_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) == 1 && strtoll(PQgetvalue(res, 0, 0), NULL, 10) >= cap) {
        long long retry = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        if (retry < 1)
            retry = 1;
        rc = cdb_error_set(err, CDB_ERR_RATE_LIMITED,
                           "At most %d live connection leases per user (LEASE_MAX_PER_USER); release one or retry "
                           "after %lld s",
                           cap, retry);
        cdb_error_detail(err, "limit", json_integer(cap));
        cdb_error_detail(err, "retry_after", json_integer(retry));
    }
out:
    PQclear(res);
    return rc;
}

typedef struct acquire_req {
    const char *service_name, *mode;
    int ttl;
} acquire_req;

static int parse_acquire(cdb_service *svc, const json_t *request, acquire_req *a, cdb_error *err)
{
    static const char *const fields[] = {"service_name", "database_type", "operation_type", "ttl_seconds", NULL};
    static const char *const types[] = {"postgresql", NULL};
    static const char *const modes[] = {"read", "write", NULL};
    const char *type = NULL;
    int rc;
    if ((rc = cdb__dbauth_body(request, false, fields, err)) < 0 ||
        (rc = name_field(request, "service_name", CDB_LEASE_SERVICE_NAME_MAX, &a->service_name, err)) < 0 ||
        (rc = choice_field(request, "database_type", types, &type, err)) < 0 ||
        (rc = choice_field(request, "operation_type", modes, &a->mode, err)) < 0)
        return rc;
    return cdb__lease_ttl(svc, request, &a->ttl, err);
}

/* The role, its rights and its lease row, on the reserved connection, in one transaction. */
static int create_in_tx(PGconn *conn, const cdb_principal *caller, const acquire_req *a, int cap, const char *id,
                        const char *role, const char *password, int64_t expires_s, cdb_error *err)
{
    char *verifier = NULL, *group = NULL;
    char grp[64], until[32], exp_s[24];
    int rc;
    snprintf(grp, sizeof grp, "%s%s", cdb_principal_db_role(caller), strcmp(a->mode, "read") == 0 ? "_ro" : "");
    iso_utc(expires_s, until);
    snprintf(exp_s, sizeof exp_s, "%lld", (long long)expires_s);
    if (!(group = cdb__admin_quote(conn, grp))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* the role name and the timestamp are ours: hex and digits, quoted anyway by construction */
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = check_cap(conn, caller, cap, err)) < 0 ||
        (rc = cdb__dbauth_verifier(conn, role, password, &verifier, err)) < 0 ||
        (rc = cdb__dbauth_run(conn, "create roles (CREATE ROLE)", err,
                              "CREATE ROLE \"%s\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                              "NOBYPASSRLS INHERIT CONNECTION LIMIT %d VALID UNTIL '%s' PASSWORD %s",
                              role, CDB_LEASE_CONNECTION_LIMIT, until, verifier)) < 0 ||
        (rc = cdb__dbauth_run(conn, "grant role memberships", err, "GRANT %s TO \"%s\"", group, role)) < 0 ||
        /* REASSIGN / DROP OWNED at release need coredb's login to have the
         * lease role's privileges; PostgreSQL 15 gives a CREATEROLE creator none */
        (rc = cdb__dbauth_run(conn, "grant role memberships", err, "GRANT \"%s\" TO CURRENT_USER", role)) < 0)
        goto out;
    const char *params[] = {id, role, caller->user_id, cdb_role_name(caller->role), a->service_name, a->mode, exp_s};
    if ((rc = cdb_pg_exec(conn, INSERT_SQL, 7, params, NULL, err)) < 0)
        goto out;
    json_t *audit = json_pack("{s:s, s:s, s:i, s:s, s:s}", "service_name", a->service_name, "operation_type",
                              a->mode, "ttl_seconds", a->ttl, "role_name", role, "expires_at", until);
    if (!audit) {
        rc = cdb_error_oom(err);
        goto out;
    }
    rc = cdb_audit_record_in(conn, caller, "lease.acquire", id, audit, err);
    json_decref(audit);
    if (rc < 0 || (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
out:
    PQfreemem(verifier);
    PQfreemem(group);
    return rc;
}

int cdb_lease_acquire(cdb_service *svc, const cdb_principal *caller, const json_t *request, json_t **out,
                      cdb_error *err)
{
    acquire_req a = {0};
    cdb_pool_conn *pc = NULL;
    char id[37], role[sizeof CDB_LEASE_ROLE_PREFIX + 32], password[65], until[32];
    unsigned char rnd[32];
    char *url = NULL;
    json_t *stats = NULL;
    bool reserved = false;
    int rc;

    *out = NULL;
    if ((rc = cdb_principal_require(caller, err)) < 0 || (rc = parse_acquire(svc, request, &a, err)) < 0)
        goto out;
    if (!svc->pool) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
        goto out;
    }
    if (!(pc = cdb_pool_acquire(svc->pool, 0, err))) {
        rc = err ? err->code : CDB_ERR_POOL_EXHAUSTED;
        goto out;
    }
    new_uuid(id);
    randombytes_buf(rnd, 16);
    memcpy(role, CDB_LEASE_ROLE_PREFIX, sizeof CDB_LEASE_ROLE_PREFIX - 1);
    hex(rnd, 16, role + sizeof CDB_LEASE_ROLE_PREFIX - 1);
    randombytes_buf(rnd, sizeof rnd);
    hex(rnd, sizeof rnd, password);
    sodium_memzero(rnd, sizeof rnd);
    int64_t expires_s = cdb_wall_s() + a.ttl;
    iso_utc(expires_s, until);

    PGconn *conn = cdb_pool_conn_pg(pc);
    if ((rc = create_in_tx(conn, caller, &a, svc->cfg->lease_max_per_user, id, role, password, expires_s, err)) < 0)
        goto out;
    if (cdb_reserved_put(id, caller->user_id, expires_s, pc) < 0) {
        /* the role exists with its row: the reaper ends it at its expiry */
        rc = cdb_error_set(err, CDB_ERR_POOL_EXHAUSTED, "Too many connection leases in this instance");
        cdb_error_detail(err, "retry_after", json_integer(1));
        goto out;
    }
    reserved = true;
    cdb__metrics_inc(CDB_M_LEASE_ACQUIRES);
    if (!(url = lease_target_url(svc, conn, a.mode, role, password)) || pool_stats_json(svc, &stats, err) < 0) {
        rc = cdb_error_oom(err);
        goto out;
    }
    json_object_del(stats, "max");
    if (!(*out = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O}", "connection_id", id, "database_url", url, "expires_at",
                           until, "service_name", a.service_name, "operation_type", a.mode, "pool_stats", stats))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    cdb_log_info("lease.acquired", "lease %s (%s, %s) for %s as %s until %s", id, a.service_name, a.mode,
                 caller->user_id, role, until);
out:
    if (pc && !reserved)
        cdb_txn_release(svc->pool, pc);   /* rolls back what did not commit */
    if (rc < 0) {
        json_decref(*out);
        *out = NULL;
        cdb__admin_audit_failure(svc, caller, "lease.acquire", NULL, request, rc, err);
    }
    sodium_memzero(password, sizeof password);
    if (url)
        sodium_memzero(url, strlen(url));
    free(url);
    json_decref(stats);
    return rc;
}

/* ---- renew ---- */

static const char RENEW_SQL[] =
    "UPDATE coredb.leases SET expires_at = least(created_at + make_interval(secs => $3::int),"
    " now() + make_interval(secs => $4::int))"
    " WHERE id::text = $1 AND user_id::text = $2 AND state = 'active' AND expires_at > now()"
    " RETURNING role_name, extract(epoch FROM expires_at)::bigint";

int cdb_lease_renew(cdb_service *svc, const cdb_principal *caller, const char *id, const json_t *request,
                    json_t **out, cdb_error *err)
{
    static const char *const fields[] = {"ttl_seconds", NULL};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    char lid[37], max_s[16], ttl_s[16], until[32];
    int ttl = 0, rc;

    *out = NULL;
    if ((rc = cdb_principal_require(caller, err)) < 0 || (rc = cdb__dbauth_body(request, true, fields, err)) < 0 ||
        (rc = cdb__lease_ttl(svc, request, &ttl, err)) < 0)
        goto out;
    if (!id || !cdb_uuid_norm(id, lid)) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
        goto out;
    }
    snprintf(max_s, sizeof max_s, "%d", svc->cfg->lease_max_ttl_s);
    snprintf(ttl_s, sizeof ttl_s, "%d", ttl);
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *params[] = {lid, caller->user_id, max_s, ttl_s};
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = cdb_pg_exec(conn, RENEW_SQL, 4, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
        goto out;
    }
    int64_t expires_s = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    iso_utc(expires_s, until);
    if ((rc = cdb__dbauth_run(conn, "change roles (ALTER ROLE)", err, "ALTER ROLE \"%s\" VALID UNTIL '%s'",
                              PQgetvalue(res, 0, 0), until)) < 0)
        goto out;
    json_t *audit = json_pack("{s:i, s:s}", "ttl_seconds", ttl, "expires_at", until);
    if (!audit) {
        rc = cdb_error_oom(err);
        goto out;
    }
    rc = cdb_audit_record_in(conn, caller, "lease.renew", lid, audit, err);
    json_decref(audit);
    if (rc < 0 || (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_reserved_extend(lid, expires_s);
    if (!(*out = json_pack("{s:s, s:s}", "connection_id", lid, "expires_at", until)))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    cdb__admin_audit_failure(svc, caller, "lease.renew", id && strlen(id) < 64 ? id : NULL, request, rc, err);
    return rc;
}

/* ---- list ---- */

static const char LIST_SQL[] =
    "SELECT id::text, service_name, user_id::text, mode, " CDB_SQL_TS("created_at") ", " CDB_SQL_TS("expires_at")
    ", CASE WHEN state = 'active' AND expires_at <= now() THEN 'expired' ELSE state END"
    " FROM coredb.leases WHERE state IN ('active', 'releasing') AND ($1::text IS NULL OR service_name = $1)"
    " ORDER BY created_at DESC, id LIMIT 1000";

int cdb_lease_list(cdb_service *svc, const cdb_principal *caller, const char *service_name, json_t **out,
                   cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *leases = NULL, *stats = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "list connection leases", err)) < 0)
        goto out;
    if (service_name && (strlen(service_name) > CDB_LEASE_SERVICE_NAME_MAX || !*service_name)) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "service_name",
                                  "service_name must be 1 to %d characters", CDB_LEASE_SERVICE_NAME_MAX);
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *params[] = {service_name};
    if ((rc = cdb_pg_exec(conn, LIST_SQL, 1, params, &res, err)) < 0)
        goto out;
    if (!(leases = json_array())) {
        rc = cdb_error_oom(err);
        goto out;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        if (json_array_append_new(leases, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "connection_id",
                                                    PQgetvalue(res, i, 0), "service_name", PQgetvalue(res, i, 1),
                                                    "user_id", PQgetvalue(res, i, 2), "mode", PQgetvalue(res, i, 3),
                                                    "created_at", PQgetvalue(res, i, 4), "expires_at",
                                                    PQgetvalue(res, i, 5), "state", PQgetvalue(res, i, 6))) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
    cdb_txn_release(svc->pool, pc);    /* first, so the stats do not count this call */
    pc = NULL;
    if ((rc = pool_stats_json(svc, &stats, err)) < 0)
        goto out;
    if (!(*out = json_pack("{s:O, s:i, s:O}", "leases", leases, "total", (int)json_array_size(leases), "pool_stats",
                           stats)))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    json_decref(leases);
    json_decref(stats);
    return rc;
}

/* ---- X-Connection-ID ---- */

cdb_pool_conn *cdb__lease_checkout(const cdb_principal *caller, const char *id, char lid[37], cdb_error *err)
{
    if (cdb_principal_require(caller, err) < 0)
        return NULL;
    if (!id || !cdb_uuid_norm(id, lid)) {
        cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
        return NULL;
    }
    return cdb_reserved_checkout(lid, caller->user_id, err);
}

void cdb__lease_checkin(cdb_service *svc, const char *lid)
{
    cdb_reserved_checkin(svc->pool, lid);
}

int cdb_lease_use_begin(cdb_service *svc, const cdb_principal *caller, const char *id, cdb_error *err)
{
    (void)svc;
    char lid[37];
    cdb_pool_conn *pc = cdb__lease_checkout(caller, id, lid, err);
    if (!pc)
        return err && err->code ? err->code : CDB_ERR_NOT_FOUND;
    cdb_reserved_bind(pc);
    return 0;
}

void cdb_lease_use_end(cdb_service *svc, const char *id)
{
    char lid[37];
    cdb_reserved_bind(NULL);
    if (id && cdb_uuid_norm(id, lid))
        cdb__lease_checkin(svc, lid);
}
