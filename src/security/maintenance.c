/*
 * maintenance.c - the maintenance flag, local and in Redis (see
 * maintenance.h for why both and why a TTL). A Redis failure never fails
 * the caller: the local flag still holds, and a reader that cannot reach
 * Redis keeps its last answer until the next poll.
 */
#include "security/maintenance.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/timeutil.h"

static bool redis_key(cdb_redis *redis, cdb_qcache *qc, char *buf, size_t len)
{
    if (!redis || !qc || !cdb_qcache_has_namespace(qc))
        return false;
    cdb_qcache_key(qc, "maintenance", buf, len);
    return true;
}

static void redis_set(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    char key[256];
    if (!redis_key(redis, qc, key, sizeof key))
        return;
    cdb_error err;
    cdb_error_init(&err);
    char val[32];
    snprintf(val, sizeof val, "%lld", (long long)atomic_load(&m->local_since));
    redisReply *rep = cdb_redis_command(redis, &err, "SET %s %s EX %d", key, val, CDB_MAINTENANCE_TTL_S);
    if (rep)
        freeReplyObject(rep);
    cdb_error_destroy(&err);
}

void cdb__maintenance_begin(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    atomic_store(&m->local_since, (int64_t)time(NULL));
    redis_set(m, redis, qc);
}

void cdb__maintenance_refresh(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    if (atomic_load(&m->local_since))
        redis_set(m, redis, qc);
}

void cdb__maintenance_end(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    atomic_store(&m->local_since, 0);
    atomic_store(&m->remote_since, 0);
    char key[256];
    if (!redis_key(redis, qc, key, sizeof key))
        return;
    cdb_error err;
    cdb_error_init(&err);
    redisReply *rep = cdb_redis_command(redis, &err, "DEL %s", key);
    if (rep)
        freeReplyObject(rep);
    cdb_error_destroy(&err);
}

int64_t cdb__maintenance_since(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    int64_t local = atomic_load(&m->local_since);
    if (local)
        return local;
    char key[256];
    if (!redis_key(redis, qc, key, sizeof key))
        return 0;
    int64_t now = cdb_mono_ms();
    int64_t last = atomic_load(&m->remote_checked_ms);
    if (last && now - last < CDB_MAINTENANCE_POLL_MS)
        return atomic_load(&m->remote_since);
    atomic_store(&m->remote_checked_ms, now);
    cdb_error err;
    cdb_error_init(&err);
    redisReply *rep = cdb_redis_command(redis, &err, "GET %s", key);
    if (rep) {
        int64_t since = 0;
        if (rep->type == REDIS_REPLY_STRING)
            since = strtoll(rep->str, NULL, 10);
        atomic_store(&m->remote_since, since);
        freeReplyObject(rep);
    }
    cdb_error_destroy(&err);
    return atomic_load(&m->remote_since);
}
