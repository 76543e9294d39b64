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

bool cdb__maintenance_poll_due(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc, int64_t *since, char *key,
                               size_t len)
{
    if ((*since = atomic_load(&m->local_since)) || !shared(redis, qc))
        return false;
    *since = atomic_load(&m->remote_since);
    int64_t now = cdb_mono_ms(), last = atomic_load(&m->remote_checked_ms);
    /* the caller that moves the timestamp polls; the others go by the last value */
    if ((last && now - last < CDB_MAINTENANCE_POLL_MS) ||
        !atomic_compare_exchange_strong(&m->remote_checked_ms, &last, now))
        return false;
    redis_key(redis, qc, key, len);
    return true;
}

void cdb__maintenance_polled(cdb_maintenance *m, const char *value)
{
    atomic_store(&m->remote_since, value ? strtoll(value, NULL, 10) : 0);
}

int64_t cdb__maintenance_since(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc)
{
    int64_t since;
    char key[256];
    if (!cdb__maintenance_poll_due(m, redis, qc, &since, key, sizeof key))
        return since;
    cdb_error err;
    cdb_error_init(&err);
    redisReply *rep = cdb_redis_command(redis, &err, "GET %s", key);
    if (rep) {
        cdb__maintenance_polled(m, rep->type == REDIS_REPLY_STRING ? rep->str : NULL);
        freeReplyObject(rep);
    }
    cdb_error_destroy(&err);
    return atomic_load(&m->remote_since);
}
