/*
 * outbox.c - coredb.redis_outbox: Redis operations (and cache generation
 * bumps) committed in PostgreSQL that Redis has not taken yet (outbox.h).
 *
 * Rows are applied in order with at-least-once delivery: a crash between
 * applying a row and deleting it applies it again. A Redis error reply that
 * retrying cannot fix (WRONGTYPE, INCR of a non-integer) consumes the row,
 * so one bad row never blocks the queue; a transient one (LOADING, BUSY,
 * ...) or a lost connection stops the batch there, keeping the order.
 *
 * Rows are applied through cdb_cache (cache.h): to Redis, or to the
 * in-process table without REDIS_URL, with the same results and the same
 * retry rule either way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "store/ledger.h"
#include "store/outbox.h"
#include "store/redis_async.h"
#include "store/pg.h"
#include "store/txn.h"

#define OUTBOX_BATCH "500"        /* rows per flush, spelled for the SQL */

/* ---- applying one row ---- */

/*
 * What an applied row changed that first-level caches may hold: a query
 * cache generation ("coredb:<ns>:gen:<table>", qcache.c) or a session's
 * liveness copy ("coredb:session:<sid>", a tombstone: identity/liveness.c).
 * Applications' keys live under "app:" and cannot look like either.
 */
static char invalidation_of(const char *op, const char *key, const char **name)
{
    const char *gen = strncmp(key, "coredb:", 7) == 0 ? strstr(key, ":gen:") : NULL;
    if (strcmp(op, "incr") == 0 && gen) {
        *name = gen + 5;
        return 't';
    }
    if (strcmp(op, "set") == 0 && strncmp(key, "coredb:session:", 15) == 0) {
        *name = key + 15;
        return 's';
    }
    return 0;
}

static void publish_invalidation(cdb_cache *cache, const char *op, const char *key)
{
    const char *name = NULL;
    char kind = invalidation_of(op, key, &name);
    if (kind == 't') {
        cdb__metrics_inc(CDB_M_CACHE_INVALIDATIONS);
        cdb_inval_table(cdb_cache_inval(cache), name);
    } else if (kind == 's') {
        cdb_inval_session(cdb_cache_inval(cache), name);
    }
}

/*
 * Through cdb_cache, so Redis and the in-process table (no REDIS_URL) are
 * one path: the cache says whether a failure is worth retrying
 * (CACHE_UNAVAILABLE: Redis down, LOADING, BUSY, ...) or final
 * (VALIDATION_FAILED: WRONGTYPE, not an integer).
 */
cdb_outbox_rc cdb_outbox_apply(cdb_cache *cache, const char *op, const char *key, const char *value,
                               int ttl, json_t **result, char *why, size_t whylen)
{
    cdb_error e;
    int64_t n = 0;
    int deleted = 0, rc;
    bool applied = false;

    if (!cache) {
        snprintf(why, whylen, "no cache");
        return CDB_OUTBOX_DOWN;
    }
    cdb_error_init(&e);
    if (strcmp(op, "set") == 0) {
        rc = cdb_cache_set(cache, key, value ? value : "", value ? strlen(value) : 0, ttl, &e);
    } else if (strcmp(op, "incr") == 0) {
        if ((rc = cdb_cache_incr(cache, key, &n, &e)) == 0 && result)
            *result = json_integer(n);
    } else if (strcmp(op, "del") == 0) {
        if ((rc = cdb_cache_del(cache, key, &deleted, &e)) == 0 && result)
            *result = json_integer(deleted);
    } else {
        if ((rc = cdb_cache_expire(cache, key, ttl, &applied, &e)) == 0 && result)
            *result = json_boolean(applied);
    }
    if (rc < 0) {
        snprintf(why, whylen, "%s", e.message);
    } else {
        cdb__metrics_inc(CDB_M_OUTBOX_APPLIED);
        publish_invalidation(cache, op, key);
    }
    cdb_error_destroy(&e);
    return rc == 0 ? CDB_OUTBOX_DONE : rc == CDB_ERR_VALIDATION_FAILED ? CDB_OUTBOX_REFUSED : CDB_OUTBOX_DOWN;
}

/* ---- applying one row on an event loop ---- */

typedef struct async_apply {
    cdb_inval *inv;
    cdb_aredis *a;
    struct event_base *base;
    const char *op, *key;          /* the caller's: they outlive the apply */
    bool want;                     /* the caller wants the command's result */
    cdb_outbox_async_cb cb;
    void *arg;
    cdb_outbox_rc rc;
    json_t *result;
    char why[256];
} async_apply;

static void async_done(void *arg)
{
    async_apply *x = arg;
    x->cb(x->rc, x->result, x->why, x->arg);
    free(x);
}

/* The reply as cdb_outbox_apply's cache call would have judged it (cache.c's rules). */
static cdb_outbox_rc judge(async_apply *x, const redisReply *reply)
{
    bool is_set = strcmp(x->op, "set") == 0;
    if (!reply) {
        snprintf(x->why, sizeof x->why, "Redis unavailable");
        return CDB_OUTBOX_DOWN;
    }
    if (reply->type == REDIS_REPLY_ERROR && reply->str) {
        snprintf(x->why, sizeof x->why, "%s", reply->str);
        return cdb_cache_reply_transient(reply->str) ? CDB_OUTBOX_DOWN : CDB_OUTBOX_REFUSED;
    }
    if (reply->type != (is_set ? REDIS_REPLY_STATUS : REDIS_REPLY_INTEGER)) {
        snprintf(x->why, sizeof x->why, "Redis %s failed", x->op);
        return CDB_OUTBOX_DOWN;
    }
    if (x->want && !is_set)
        x->result = strcmp(x->op, "expire") == 0 ? json_boolean(reply->integer == 1) : json_integer(reply->integer);
    return CDB_OUTBOX_DONE;
}

static void on_applied(redisReply *reply, void *arg)
{
    async_apply *x = arg;
    const char *name = NULL;
    char kind;
    if ((x->rc = judge(x, reply)) != CDB_OUTBOX_DONE) {
        async_done(x);
        return;
    }
    cdb__metrics_inc(CDB_M_OUTBOX_APPLIED);
    /* as publish_invalidation: the answer waits for every instance's acknowledgement */
    kind = invalidation_of(x->op, x->key, &name);
    if (kind == 't')
        cdb__metrics_inc(CDB_M_CACHE_INVALIDATIONS);
    if (kind == 't' && cdb_inval_table_async(x->inv, x->a, x->base, name, async_done, x))
        return;
    if (kind == 's' && cdb_inval_session_async(x->inv, x->a, x->base, name, async_done, x))
        return;
    async_done(x);
}

bool cdb_outbox_apply_async(cdb_aredis *a, struct event_base *base, cdb_inval *inv, const char *op, const char *key,
                            const char *value, int ttl, bool want_result, cdb_outbox_async_cb cb, void *arg)
{
    char ttl_text[16];
    const char *argv[5] = {NULL, key, NULL, NULL, NULL};
    size_t argvlen[5] = {0, strlen(key), 0, 0, 0};
    int argc = 2;
    async_apply *x;

    if (strcmp(op, "set") == 0) {
        argv[0] = "SET";
        argv[2] = value ? value : "";
        argvlen[2] = strlen(argv[2]);
        argc = 3;
        if (ttl > 0) {
            argv[3] = "EX";
            argvlen[3] = 2;
            argvlen[4] = (size_t)snprintf(ttl_text, sizeof ttl_text, "%d", ttl);
            argv[4] = ttl_text;
            argc = 5;
        }
    } else if (strcmp(op, "incr") == 0) {
        argv[0] = "INCR";
    } else if (strcmp(op, "del") == 0) {
        argv[0] = "DEL";
    } else {
        argv[0] = "EXPIRE";
        argvlen[2] = (size_t)snprintf(ttl_text, sizeof ttl_text, "%d", ttl);
        argv[2] = ttl_text;
        argc = 3;
    }
    argvlen[0] = strlen(argv[0]);
    if (!(x = calloc(1, sizeof *x)))
        return false;
    *x = (async_apply){.inv = inv, .a = a, .base = base, .op = op, .key = key, .want = want_result, .cb = cb,
                       .arg = arg};
    if (!cdb_aredis_send(a, on_applied, x, argc, argv, argvlen)) {
        free(x);
        return false;
    }
    return true;
}

int cdb_outbox_replicated(cdb_cache *cache)
{
    cdb_error e;
    cdb_error_init(&e);
    int rc = cache ? cdb_redis_sync_replica(cdb_cache_redis(cache), &e) : 0;
    if (rc < 0)
        cdb_log_warn("data.outbox_unconfirmed", "Redis failed before a replica confirmed the applied "
                     "outbox rows; they stay and are applied again");
    cdb_error_destroy(&e);
    return rc < 0 ? rc : 0;
}

/* Appends n to the array literal "{1,2,...}" being built in buf. */
void cdb_outbox_array_add(char *buf, size_t len, long long n)
{
    size_t used = strlen(buf);
    snprintf(buf + used - 1, len - used + 1, "%s%lld}", used > 2 ? "," : "", n);
}

/* ---- the background flush ---- */

int cdb_outbox_flush(cdb_pool *pool, cdb_cache *cache, int *applied, int *pending, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn;
    PGresult *res = NULL, *count = NULL;
    char *done = NULL, why[256] = "", id[24];
    const char *params[2];
    int napplied = 0, rc;

    if (applied)
        *applied = 0;
    if (pending)
        *pending = 0;
    if (!(conn = cdb_txn_acquire(pool, &pc, err)))
        return err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
    if ((rc = cdb_pg_exec(conn, "BEGIN", 0, NULL, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT id, op, key, value, ttl FROM coredb.redis_outbox WHERE attempts > 0"
                                " OR created_at < now() - interval '" CDB_OUTBOX_COMMITTER_GRACE "'"
                                " ORDER BY id LIMIT " OUTBOX_BATCH " FOR UPDATE SKIP LOCKED",
                          0, NULL, &res, err)) < 0)
        goto out_release;
    /* "{id,id,...}": ids are at most 20 digits */
    if (!(done = malloc((size_t)PQntuples(res) * 21 + 3))) {
        rc = cdb_error_oom(err);
        goto out_release;
    }
    strcpy(done, "{}");
    for (int r = 0; r < PQntuples(res); r++) {
        const char *op = PQgetvalue(res, r, 1), *key = PQgetvalue(res, r, 2);
        const char *value = PQgetisnull(res, r, 3) ? NULL : PQgetvalue(res, r, 3);
        int ttl = PQgetisnull(res, r, 4) ? 0 : atoi(PQgetvalue(res, r, 4));
        cdb_outbox_rc ar = cdb_outbox_apply(cache, op, key, value, ttl, NULL, why, sizeof why);
        if (ar == CDB_OUTBOX_DOWN) {
            /* keep the order: nothing after a row that did not apply */
            cdb__metrics_inc(CDB_M_OUTBOX_RETRIES);
            params[0] = PQgetvalue(res, r, 0);
            params[1] = why;
            if ((rc = cdb_pg_exec(conn, "UPDATE coredb.redis_outbox SET attempts = attempts + 1, "
                                        "last_error = $2 WHERE id = $1::bigint", 2, params, NULL, err)) < 0)
                goto out_release;
            break;
        }
        if (ar == CDB_OUTBOX_REFUSED)
            cdb_log_warn("data.outbox_refused", "Redis refused outbox row %s (%s): %s",
                         PQgetvalue(res, r, 0), op, why);
        else
            napplied++;
        snprintf(id, sizeof id, "%s", PQgetvalue(res, r, 0));
        cdb_outbox_array_add(done, (size_t)PQntuples(res) * 21 + 3, strtoll(id, NULL, 10));
    }
    /* kept, not deleted, when the master may have died before a replica had them */
    if (napplied > 0 && cdb_outbox_replicated(cache) < 0)
        strcpy(done, "{}");
    params[0] = done;
    if ((strcmp(done, "{}") != 0 &&
         (rc = cdb_pg_exec(conn, "DELETE FROM coredb.redis_outbox WHERE id = ANY($1::bigint[])",
                           1, params, NULL, err)) < 0) ||
        (rc = cdb_pg_exec(conn, "COMMIT", 0, NULL, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT count(*) FROM coredb.redis_outbox", 0, NULL, &count, err)) < 0)
        goto out_release;
    if (applied)
        *applied = napplied;
    if (pending)
        *pending = atoi(PQgetvalue(count, 0, 0));
    if (napplied || *why)
        cdb_log_info("data.outbox_flushed", "applied %d outbox row(s)%s%s", napplied,
                     *why ? "; stopped: " : "", why);

out_release:
    PQclear(res);
    PQclear(count);
    free(done);
    cdb_txn_release(pool, pc);
    return rc;
}

/* ---- writes made outside /data/transaction ---- */

int cdb_outbox_queue(PGconn *conn, const char *op, const char *key, const char *value, int ttl,
                     cdb_error *err)
{
    char id[37], ttl_text[12];
    cdb_ledger_new_id(id);
    snprintf(ttl_text, sizeof ttl_text, "%d", ttl);
    const char *params[] = {id, op, key, value, ttl > 0 ? ttl_text : NULL};
    /* attempts 1: Redis was just tried (the flush takes it at once, outbox.h) */
    return cdb_pg_exec(conn, "INSERT INTO coredb.redis_outbox (transaction_id, seq, op, key, value, ttl, attempts)"
                             " VALUES ($1::uuid, 1, $2, $3, $4, $5::int, 1)",
                       5, params, NULL, err);
}

void cdb_outbox_note_write(cdb_pool *pool, cdb_qcache *qcache, cdb_catalog_cache *catalog,
                           const char *table)
{
    const char *names[1 + CDB_OUTBOX_MAX_GEN];
    char keys[1 + CDB_OUTBOX_MAX_GEN][CDB_OUTBOX_GEN_KEY_LEN];
    char seqs[1 + CDB_OUTBOX_MAX_GEN][12];
    const char *params[1 + 2 * (1 + CDB_OUTBOX_MAX_GEN)];
    size_t n = 1, queued = 0, used = 0;
    /* ", ($1::uuid, $NNN::int, 'incr', $NNN, 1)" is at most 40 bytes a row */
    char *sql = NULL;
    cdb_catalog *cat = NULL;
    cdb_pool_conn *pc = NULL;
    cdb_error err;

    cdb_error_init(&err);
    names[0] = table;
    if (cdb_qcache_ensure_namespace(qcache, pool, &err) < 0)
        goto out_log; /* the database is unreachable: no reader can be served anything either */
    if ((cat = cdb_catalog_cache_get(catalog, &err)))
        n += cdb_catalog_cascades(cat, table, names + 1, CDB_OUTBOX_MAX_GEN);
    cdb_error_destroy(&err);

    /* bumps Redis did not take go to the outbox, like a transaction's */
    size_t cap = 96 + n * 40;
    if (!(sql = malloc(cap))) {
        cdb_error_oom(&err);
        goto out_log;
    }
    used = (size_t)snprintf(sql, cap, "INSERT INTO coredb.redis_outbox (transaction_id, seq, op, key, attempts) VALUES ");
    char id[37];
    cdb_ledger_new_id(id);
    params[0] = id;
    for (size_t i = 0; i < n; i++) {
        if (cdb_qcache_bump(qcache, names[i]) == 0)
            continue;
        cdb_qcache_generation_key(qcache, names[i], keys[queued], CDB_OUTBOX_GEN_KEY_LEN);
        snprintf(seqs[queued], sizeof seqs[queued], "%zu", queued + 1);
        params[1 + 2 * queued] = seqs[queued];
        params[2 + 2 * queued] = keys[queued];
        used += (size_t)snprintf(sql + used, cap - used, "%s($1::uuid, $%zu::int, 'incr', $%zu, 1)",
                                 queued ? ", " : "", 2 + 2 * queued, 3 + 2 * queued);
        queued++;
    }
    if (queued == 0)
        goto out;
    PGconn *conn = cdb_txn_acquire(pool, &pc, &err);
    if (!conn || cdb_pg_exec(conn, sql, (int)(1 + 2 * queued), params, NULL, &err) < 0)
        goto out_log;
    cdb_log_info("data.bump_queued", "Redis down: %zu cache generation bumps for %s queued", queued, table);
    goto out;

out_log:
    cdb_log_warn("data.bump_lost", "could not invalidate cached reads of %s: %s", table, err.message);
out:
    cdb_txn_release(pool, pc);
    cdb_catalog_unref(cat);
    free(sql);
    cdb_error_destroy(&err);
}
