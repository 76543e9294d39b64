/*
 * liveness.c - the Redis copy of "this session is alive" (sessions.h) and
 * ending sessions in PostgreSQL, shared by sessions.c (login, refresh,
 * logout, the per-request check) and users.c (a password or role change,
 * a deletion).
 *
 * Per session, coredb:session:<sid> = user id, for at most
 * min(60 s, SESSION_TIMEOUT / 2, the session's remaining lifetime). Ending a
 * session overwrites it with a "revoked" tombstone rather than deleting it:
 * a request that read "alive" from PostgreSQL just before the revocation
 * commits stores its copy with SET NX, which cannot overwrite the
 * tombstone, so no stale "alive" survives a revocation. A tombstone Redis
 * does not take goes to the outbox (store/outbox.h) and is written as soon
 * as Redis is back, so a stored "alive" copy cannot outlive a revocation
 * made while Redis was unreachable by more than the outbox job's second.
 */
#include <stdio.h>
#include <string.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "identity/identity_internal.h"
#include "identity/liveness.h"
#include "store/outbox.h"
#include "store/pg.h"

#define REVOKED_MARK "revoked"

void cdb__session_forget(cdb_service *svc, PGconn *conn, const char *session_id)
{
    /* every ending of a session passes here: logout, deletion, revocation, eviction, reuse */
    cdb__metrics_inc(CDB_M_SESSION_REVOCATIONS);
    if (!svc->redis)
        return;
    char key[64];
    cdb_error e;
    cdb_error_init(&e);
    snprintf(key, sizeof key, "coredb:session:%s", session_id);
    redisReply *r = cdb_redis_command(svc->redis, &e, "SET %s %s EX %d", key, REVOKED_MARK,
                                      CDB_SESSION_CACHE_TTL_S);
    /* with Redis Sentinel, a tombstone only the dying master had would let a
     * failover bring back an "alive" copy: unconfirmed, it is queued too */
    if (r && r->type != REDIS_REPLY_ERROR && cdb_redis_sync_replica(svc->redis, &e) >= 0) {
        /* every instance's first-level cache forgets it too (a queued one: when applied);
           the channel is named by the namespace, loaded at start or here */
        cdb_error_destroy(&e);
        cdb_error_init(&e);
        if (conn)
            cdb_qcache_ensure_namespace_on(svc->qcache, conn, &e);
        cdb_inval_session(cdb_cache_inval(svc->cache), session_id);
        goto out;
    }
    /*
     * Without the tombstone, a positive copy another request stored earlier
     * (or one that reaches Redis when it returns) would keep the ended session
     * alive for up to CDB_SESSION_CACHE_TTL_S on every instance. The outbox
     * job (every second, on every instance) writes it as soon as any instance
     * reaches Redis: a late tombstone is harmless, the session is dead.
     */
    cdb_error_destroy(&e);
    cdb_error_init(&e);
    if (conn && cdb_outbox_queue(conn, "set", key, REVOKED_MARK, CDB_SESSION_CACHE_TTL_S, &e) == 0)
        cdb_log_warn("auth.session_forget_queued",
                     "could not mark session %s ended in Redis; queued in the outbox", session_id);
    else
        cdb_log_warn("auth.session_forget_failed",
                     "could not mark session %s ended in Redis nor queue it; a cached copy may accept "
                     "it for up to %d s", session_id, CDB_SESSION_CACHE_TTL_S);
out:
    if (r)
        freeReplyObject(r);
    cdb_error_destroy(&e);
}

void cdb__sessions_forget(cdb_service *svc, PGconn *conn, const PGresult *res, int col)
{
    for (int i = 0; res && i < PQntuples(res); i++)
        cdb__session_forget(svc, conn, PQgetvalue(res, i, col));
}

void cdb__session_remember(cdb_service *svc, const char *session_id, const char *user_id,
                             long long remaining_s)
{
    if (!svc->redis)
        return;
    long long ttl = CDB_SESSION_CACHE_TTL_S;
    if (svc->cfg->session_timeout_s / 2 < ttl)
        ttl = svc->cfg->session_timeout_s / 2;
    if (remaining_s < ttl)
        ttl = remaining_s;
    if (ttl < 1)
        ttl = 1;
    cdb_error e;
    cdb_error_init(&e);
    /* NX: never overwrites the tombstone of a revocation that raced with us */
    redisReply *r = cdb_redis_command(svc->redis, &e, "SET coredb:session:%s %s EX %lld NX",
                                      session_id, user_id, ttl);
    if (r)
        freeReplyObject(r);
    cdb_error_destroy(&e);
}

int cdb__end_user_sessions(PGconn *conn, const char *user_id, const char *except_sid,
                           const char *reason, PGresult **ended, cdb_error *err)
{
    const char *params[] = {user_id, except_sid, reason};
    return cdb_pg_exec(conn,
                       "UPDATE coredb.sessions SET revoked_at = now(), revoked_reason = $3"
                       " WHERE user_id = $1 AND revoked_at IS NULL"
                       " AND ($2::uuid IS NULL OR session_id <> $2::uuid)"
                       " RETURNING session_id::text",
                       3, params, ended, err);
}

int cdb__session_liveness(cdb_service *svc, const cdb_principal *p)
{
    cdb_commit_lsn_prefetch_clear();
    /* after a Redis outage, copies are trusted once the outbox's tombstones are applied */
    if (!svc->redis || !cdb_qcache_trusted(svc->qcache))
        return -1;
    cdb_error e;
    cdb_error_init(&e);
    int state = -1;
    redisReply *r, *live;
    char session_key[64];
    cdb__session_liveness_key(p, session_key, sizeof session_key);
    if (svc->commit_lsn && cdb_replicas_any_up(svc->replicas)) {
        /* read-your-writes (docs/replicas.md): the caller's commit LSN in the same round trip */
        char lsn_key[64];
        cdb_commit_lsn_key(p->user_id, lsn_key, sizeof lsn_key);
        const char *argv[] = {"MGET", session_key, lsn_key};
        r = cdb_redis_command_argv(svc->redis, 3, argv, NULL, &e);
        bool two = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2;
        live = two ? r->element[0] : NULL;
        if (two)
            cdb_commit_lsn_prefetched(p->user_id, r->element[1]);
    } else {
        const char *argv[] = {"GET", session_key};
        live = r = cdb_redis_command_argv(svc->redis, 2, argv, NULL, &e);
    }
    if (live && live->type == REDIS_REPLY_STRING)
        state = cdb__session_liveness_of(p, live->str);
    /* the command itself may have found Redis back from an outage (the pool's probe): its copy
     * waits for the resync like any other (an "alive" one may predate a queued tombstone) */
    if (state != -1 && cdb_qcache_resync_pending(svc->qcache))
        state = -1;
    if (r)
        freeReplyObject(r);
    cdb_error_destroy(&e);
    return state;
}

void cdb__session_liveness_key(const cdb_principal *p, char *buf, size_t len)
{
    snprintf(buf, len, "coredb:session:%s", p->session_id);
}

int cdb__session_liveness_of(const cdb_principal *p, const char *value)
{
    if (!value)
        return -1;
    return strcmp(value, p->user_id) == 0 ? 1 : strcmp(value, REVOKED_MARK) == 0 ? 0 : -1;
}
