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

/* The flag is shared through Redis once the deployment's namespace is known. */
static bool shared(cdb_redis *redis, cdb_qcache *qc)
{
    return redis && qc && cdb_qcache_has_namespace(qc);
}

static bool redis_key(cdb_redis *redis, cdb_qcache *qc, char *buf, size_t len)
{
    if (!shared(redis, qc))
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

bool cdb__maintenance_since_known(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc, int64_t *since)
{
    int64_t last = atomic_load(&m->remote_checked_ms);
    if ((*since = atomic_load(&m->local_since)) || !shared(redis, qc))
        return true;
    *since = atomic_load(&m->remote_since);
    return last && cdb_mono_ms() - last < CDB_MAINTENANCE_POLL_MS;
}

int64_t cdb__maintenance_since(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    int64_t since;
    if (cdb__maintenance_since_known(m, redis, qc, &since))
        return since;
    char key[256];
    redis_key(redis, qc, key, sizeof key);
    int64_t now = cdb_mono_ms();
    atomic_store(&m->remote_checked_ms, now);
    cdb_error err;
    cdb_error_init(&err);
    redisReply *rep = cdb_redis_command(redis, &err, "GET %s", key);
    if (rep) {
        atomic_store(&m->remote_since, rep->type == REDIS_REPLY_STRING ? strtoll(rep->str, NULL, 10) : 0);
        freeReplyObject(rep);
    }
    cdb_error_destroy(&err);
    return atomic_load(&m->remote_since);
}
