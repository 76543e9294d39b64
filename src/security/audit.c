/*
 * audit.c - the audit log of administrative actions (coredb/audit.h):
 * where a call comes from (a thread-local origin), removing secrets from
 * what is stored, appending entries, listing them and verifying the hash
 * chain (migrations/20261130_012_audit_log.sql defines the table, the
 * canonical form and coredb.audit_append, which computes the hash in SQL
 * under an advisory lock so every instance appends to one chain).
 *
 * Secrets. Members whose name contains password, secret, token or key
 * (any case) are dropped at any depth before params are serialized: they
 * are never stored, not even hashed, and never logged. Nothing else of
 * params is logged either when an append fails (only the action).
 */
#include "coredb/audit.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "coredb/role.h"
#include "security/audit_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

#define APPEND_SQL "SELECT coredb.audit_append($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"

/* A timestamp as the list shows it: UTC, microseconds (the canonical form's). */
#define AUDIT_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

#define LIMIT_DEFAULT 50
#define LIMIT_MAX 500
#define FILTER_MAX 200

/* Where this thread's calls come from (cdb_audit_origin_set); empty = unknown. */
static __thread cdb__audit_origin origin;

void cdb_audit_origin_set(const char *request_id, const char *client_addr, const char *via)
{
    snprintf(origin.request_id, sizeof origin.request_id, "%s", request_id ? request_id : "");
    snprintf(origin.client_addr, sizeof origin.client_addr, "%s", client_addr ? client_addr : "");
    snprintf(origin.via, sizeof origin.via, "%s", via ? via : "");
}

void cdb_audit_origin_clear(void)
{
    cdb_audit_origin_set(NULL, NULL, NULL);
}

void cdb__audit_origin_save(cdb__audit_origin *o)
{
    *o = origin;
}

void cdb__audit_origin_restore(const cdb__audit_origin *o)
{
    origin = *o;
}

/* Whether a member name says its value is a secret. */
static bool secret_name(const char *name)
{
    static const char *const words[] = {"password", "secret", "token", "key"};
    char low[256];
    size_t n = strlen(name);
    if (n >= sizeof low)
        return true;   /* a name this long is not one of ours: keep nothing doubtful */
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)tolower((unsigned char)name[i]);
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(low, words[i]))
            return true;
    return false;
}

/* A deep copy of v without secret members at any depth; NULL on out of memory. */
static json_t *redact(const json_t *v)
{
    json_t *out = NULL;
    if (json_is_object(v)) {
        const char *key;
        json_t *m;
        if (!(out = json_object()))
            return NULL;
        json_object_foreach((json_t *)v, key, m) {
            if (secret_name(key))
                continue;
            json_t *c = redact(m);
            if (!c || json_object_set_new(out, key, c) < 0) {
                json_decref(out);
                return NULL;
            }
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        if (!(out = json_array()))
            return NULL;
        json_array_foreach((json_t *)v, i, m) {
            json_t *c = redact(m);
            if (!c || json_array_append_new(out, c) < 0) {
                json_decref(out);
                return NULL;
            }
        }
    } else {
        out = json_deep_copy(v);
    }
    return out;
}

/* Who acted: the user id when known, else the origin ("cli"), else the role name. */
static const char *actor_of(const cdb_principal *who)
{
    if (who && who->user_id[0])
        return who->user_id;
    if (origin.via[0] && strcmp(origin.via, "http") != 0)
        return origin.via;
    return cdb_role_name(who ? who->role : CDB_ROLE_ANON);
}

static const char *or_null(const char *s)
{
    return s && s[0] ? s : NULL;
}

/* Appends one entry on conn (autocommit or the caller's transaction). */
static int append(PGconn *conn, const cdb_principal *who, const char *action, const char *target,
                  const json_t *params, const char *outcome, cdb_error *err)
{
    json_t *clean = params ? redact(params) : json_object();
    char *text = clean ? json_dumps(clean, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    int rc;
    if (!text) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* a target that is not UTF-8 (a hostile name) could not be stored: it is left out */
    json_t *probe = target ? json_string(target) : NULL;
    if (!probe)
        target = NULL;
    json_decref(probe);
    const char *args[] = {actor_of(who), who ? cdb_role_name(who->role) : NULL, action, or_null(target),
                          text, outcome, or_null(origin.request_id), or_null(origin.client_addr)};
    rc = cdb_pg_exec(conn, APPEND_SQL, 8, args, NULL, err);
out:
    free(text);
    json_decref(clean);
    return rc;
}

int cdb_audit_record_in(PGconn *conn, const cdb_principal *who, const char *action,
                        const char *target, const json_t *params, cdb_error *err)
{
    if (!action || !action[0])
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "An audit entry needs an action");
    return append(conn, who, action, target, params, "success", err);
}

/* A connection of the pool, or one of its own when the service has no pool (the CLI). */
static PGconn *own_conn(cdb_service *svc, cdb_pool_conn **pc, cdb_error *err)
{
    *pc = NULL;
    if (svc->pool)
        return cdb_txn_acquire(svc->pool, pc, err);
    cdb_pg_settings s = {
        .conninfo = svc->conninfo,
        .sslmode = svc->cfg->embedded ? NULL : svc->cfg->db_sslmode,
        .application_name = "coredb-audit",
    };
    return svc->conninfo ? cdb_pg_connect(&s, err) : NULL;
}

static void own_conn_release(cdb_service *svc, cdb_pool_conn *pc, PGconn *conn)
{
    if (pc)
        cdb_txn_release(svc->pool, pc);
    else if (conn)
        PQfinish(conn);
}

int cdb_audit_record(cdb_service *svc, const cdb_principal *who, const char *action,
                     const char *target, const json_t *params, const cdb_error *outcome)
{
    cdb_error e;
    cdb_error_init(&e);
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    int rc;
    const char *state;   /* declared here: C11 allows no declaration right after a label (clang refuses it) */
    const char *result = outcome && outcome->code != CDB_OK ? cdb_err_name(outcome->code) : "success";

    if (!svc || !action || !action[0]) {
        rc = cdb_error_set(&e, CDB_ERR_INTERNAL_ERROR, "no service or no action");
        goto out;
    }
    if (!(conn = own_conn(svc, &pc, &e))) {
        rc = e.code ? e.code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    rc = append(conn, who, action, target, params, result, &e);
out:
    /* no audit table (yet, or any more): a database before migration 012 or after its down */
    state = json_string_value(json_object_get(e.details, "sqlstate"));
    if (rc < 0 && state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0))
        cdb_log_info("audit.no_table", "%s not recorded: this database has no audit log (migration 012)",
                     action);
    else if (rc < 0)
        cdb_log_error("audit.record_failed", "the audit entry of %s (%s) was not written: %s: %s",
                      action ? action : "?", result, cdb_err_name(e.code), e.message);
    own_conn_release(svc, pc, conn);
    cdb_error_destroy(&e);
    return rc;
}

static int require_admin(const cdb_principal *caller, cdb_error *err)
{
    int rc = cdb_principal_require(caller, err);
    if (rc < 0)
        return rc;
    if (!cdb_principal_is_admin(caller))
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "Only an admin may read the audit log");
    return 0;
}

static bool digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/*
 * An ISO-8601 timestamp: YYYY-MM-DD, optionally followed by T (or a space)
 * HH:MM[:SS[.fraction]] and Z or an offset +HH[:MM] / -HH[:MM]. Checked
 * here, field by field, so a bad one is answered naming its field instead
 * of as whatever PostgreSQL says about it.
 */
static bool iso_timestamp(const char *s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    size_t n = strlen(s);
    if (n < 10 || n > 40 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2))
        return false;
    int y = num(s, 4), m = num(s + 5, 2), d = num(s + 8, 2);
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1] ||
        (m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))))
        return false;
    const char *p = s + 10;
    if (!*p)
        return true;
    if ((*p != 'T' && *p != ' ') || !digits(p + 1, 2) || p[3] != ':' || !digits(p + 4, 2))
        return false;
    if (num(p + 1, 2) > 23 || num(p + 4, 2) > 59)
        return false;
    p += 6;
    if (*p == ':') {
        if (!digits(p + 1, 2) || num(p + 1, 2) > 60)
            return false;
        p += 3;
        if (*p == '.') {
            size_t f = strspn(p + 1, "0123456789");
            if (f < 1 || f > 9)
                return false;
            p += 1 + f;
        }
    }
    if (*p == 'Z')
        return p[1] == '\0';
    if (*p == '+' || *p == '-') {
        if (!digits(p + 1, 2) || num(p + 1, 2) > 15)
            return false;
        p += 3;
        if (*p == ':')
            p++;
        if (!*p)
            return true;
        return strlen(p) == 2 && digits(p, 2) && num(p, 2) < 60;
    }
    return *p == '\0';
}

/* The filters checked; each problem is VALIDATION_FAILED naming its field. */
static int check_query(const cdb_audit_query *q, cdb_error *err)
{
    if (q->limit < 0 || q->limit > LIMIT_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "limit",
                                    "limit must be an integer from 1 to %d", LIMIT_MAX);
    if (q->since && !iso_timestamp(q->since))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "since",
                                    "since must be an ISO-8601 timestamp (2026-01-15T10:30:00Z)");
    if (q->until && !iso_timestamp(q->until))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "until",
                                    "until must be an ISO-8601 timestamp (2026-01-15T10:30:00Z)");
    if (q->cursor && (!q->cursor[0] || strlen(q->cursor) > 18 || !digits(q->cursor, strlen(q->cursor))))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "cursor",
                                    "cursor must be the next_cursor of a previous page");
    if (q->actor && strlen(q->actor) > FILTER_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "actor",
                                    "actor must be at most %d bytes", FILTER_MAX);
    if (q->action && strlen(q->action) > FILTER_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "action",
                                    "action must be at most %d bytes", FILTER_MAX);
    return 0;
}

/*
 * The list's statement: the filters that are set become bound parameters
 * ($1.. in the order below); one row more than the page is asked for, to
 * know whether there is a next page.
 */
static int build_list(const cdb_audit_query *q, char *sql, size_t len, const char **params,
                      char *limit_buf, size_t limit_len)
{
    int n = 0;
    char where[512] = "";
    size_t w = 0;
#define COND(fmt, value)                                                              \
    do {                                                                              \
        params[n++] = (value);                                                        \
        w += (size_t)snprintf(where + w, sizeof where - w, "%s" fmt, w ? " AND " : " WHERE ", n); \
    } while (0)
    if (q->actor)
        COND("actor = $%d", q->actor);
    if (q->action && q->action[0] && q->action[strlen(q->action) - 1] == '.')
        COND("starts_with(action, $%d)", q->action);
    else if (q->action)
        COND("action = $%d", q->action);
    if (q->since)
        COND("at >= $%d::timestamptz", q->since);
    if (q->until)
        COND("at < $%d::timestamptz", q->until);
    if (q->cursor)
        COND("id < $%d::bigint", q->cursor);
#undef COND
    snprintf(limit_buf, limit_len, "%d", (q->limit ? q->limit : LIMIT_DEFAULT) + 1);
    params[n++] = limit_buf;
    snprintf(sql, len,
             "SELECT coalesce(json_agg(json_build_object('id', id, 'at', " AUDIT_TS("at") ","
             " 'actor', actor, 'actor_role', actor_role, 'action', action, 'target', target,"
             " 'params', params, 'outcome', outcome, 'request_id', request_id,"
             " 'client_addr', client_addr) ORDER BY id DESC), '[]')::text"
             " FROM (SELECT * FROM coredb.audit_log%s ORDER BY id DESC LIMIT $%d::int) e",
             where, n);
    return n;
}

int cdb_audit_list(cdb_service *svc, const cdb_principal *caller, const cdb_audit_query *q,
                   json_t **out, cdb_error *err)
{
    static const cdb_audit_query none = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *entries = NULL;
    const char *params[8];
    char sql[2048], limit_buf[16];
    int rc;

    *out = NULL;
    if (!q)
        q = &none;
    if ((rc = require_admin(caller, err)) < 0 || (rc = check_query(q, err)) < 0)
        goto out;
    int nparams = build_list(q, sql, sizeof sql, params, limit_buf, sizeof limit_buf);
    if (!(conn = own_conn(svc, &pc, err))) {
        rc = err && err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, sql, nparams, params, &res, err)) < 0 ||
        (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &entries, err)) < 0)
        goto out;
    int limit = q->limit ? q->limit : LIMIT_DEFAULT;
    json_t *next = json_null();
    if ((int)json_array_size(entries) > limit) {
        json_array_remove(entries, (size_t)limit);
        json_t *last = json_object_get(json_array_get(entries, (size_t)limit - 1), "id");
        char buf[32];
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(last));
        next = json_string(buf);
    }
    if (!next || !(*out = json_pack("{s:o, s:o}", "entries", entries, "next_cursor", next))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    entries = NULL;
out:
    json_decref(entries);
    PQclear(res);
    own_conn_release(svc, pc, conn);
    return rc;
}

/*
 * One pass over the table in id order: each row's link (prev_hash is the
 * hash of the row before it, 32 zero bytes for the first) and its own hash
 * (sha256 of that link and its canonical form). The first row failing
 * either is named: "row_changed" when its own content no longer matches its
 * hash, "chain_broken" when its link does not match the row before it (a
 * row in between deleted, or the previous row's hash rewritten).
 */
static const char VERIFY_SQL[] =
    "WITH c AS MATERIALIZED (SELECT id, at, action, prev_hash, hash,"
    "  lag(id) OVER w AS prev_id,"
    "  coalesce(lag(hash) OVER w, decode(repeat('00', 32), 'hex')) AS expect_prev,"
    "  coredb.audit_canonical(id, at, actor, actor_role, action, target, params, outcome,"
    "                         request_id, client_addr) AS canon"
    "  FROM coredb.audit_log WINDOW w AS (ORDER BY id)),"
    " b AS (SELECT id, at, action, prev_id,"
    "  CASE WHEN prev_hash <> expect_prev THEN 'chain_broken' ELSE 'row_changed' END AS reason"
    "  FROM c WHERE prev_hash <> expect_prev OR hash <> sha256(expect_prev || canon)"
    "  ORDER BY id LIMIT 1)"
    " SELECT json_build_object("
    "  'valid', NOT EXISTS (SELECT 1 FROM b),"
    "  'rows_checked', (SELECT count(*) FROM c),"
    "  'first_broken', (SELECT json_build_object('id', id, 'at', " AUDIT_TS("at") ", 'action', action,"
    "                   'reason', reason, 'previous_id', prev_id) FROM b),"
    "  'head', (SELECT json_build_object('id', id, 'at', " AUDIT_TS("at") ", 'hash', encode(hash, 'hex'))"
    "           FROM c ORDER BY id DESC LIMIT 1))::text";

int cdb_audit_verify(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    int rc;

    *out = NULL;
    if ((rc = require_admin(caller, err)) < 0)
        goto out;
    if (!(conn = own_conn(svc, &pc, err))) {
        rc = err && err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, VERIFY_SQL, 0, NULL, &res, err)) < 0 ||
        (rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err)) < 0)
        goto out;
    if (!json_is_true(json_object_get(*out, "valid")))
        cdb_log_warn("audit.chain_broken", "the audit log's hash chain is broken at entry %" JSON_INTEGER_FORMAT,
                     json_integer_value(json_object_get(json_object_get(*out, "first_broken"), "id")));
out:
    PQclear(res);
    own_conn_release(svc, pc, conn);
    return rc;
}

/* ---- across a restore (audit_internal.h) ---- */

static const char CARRY_BEGIN_SQL[] =
    "DROP SCHEMA IF EXISTS coredb_audit_carry CASCADE;"
    "CREATE SCHEMA coredb_audit_carry;"
    "CREATE TABLE coredb_audit_carry.audit_log AS SELECT * FROM coredb.audit_log";

/* One transaction (a multi-statement simple query): all of it or nothing. */
static const char CARRY_END_SQL[] =
    "INSERT INTO coredb.audit_log OVERRIDING SYSTEM VALUE"
    " SELECT * FROM coredb_audit_carry.audit_log"
    " WHERE id > (SELECT coalesce(max(id), 0) FROM coredb.audit_log) ORDER BY id;"
    "SELECT setval(pg_get_serial_sequence('coredb.audit_log', 'id'),"
    " greatest((SELECT max(id) FROM coredb.audit_log), 1));"
    "DROP SCHEMA coredb_audit_carry CASCADE";

/* Several statements in one simple query: PostgreSQL runs them as one transaction. */
static int run_script(PGconn *conn, const char *sql, cdb_error *err)
{
    PGresult *res = cdb_pg_query(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : cdb_pg_error_from_result(conn, res, err);
    PQclear(res);
    return rc;
}

int cdb__audit_carry_begin(PGconn *conn, cdb_error *err)
{
    return run_script(conn, CARRY_BEGIN_SQL, err);
}

void cdb__audit_carry_end(PGconn *conn)
{
    cdb_error e;
    cdb_error_init(&e);
    if (run_script(conn, CARRY_END_SQL, &e) < 0)
        cdb_log_error("audit.carry_failed",
                      "the audit entries made since the restored backup could not be put back (%s); "
                      "they are kept in coredb_audit_carry.audit_log", e.message);
    cdb_error_destroy(&e);
}
