/*
 * health.h - the checks behind /health and /health/ready, given what they
 * check (the service passes its pool, Redis and migration files). They
 * block (they talk to PostgreSQL and Redis): run them on a worker.
 */
#ifndef COREDB_MANAGEMENT_HEALTH_H
#define COREDB_MANAGEMENT_HEALTH_H

#include <jansson.h>

#include "coredb/health.h"
#include "coredb/migrate.h"
#include "store/pool.h"
#include "store/redis.h"
#include "store/replicas.h"

typedef struct cdb_health_deps {
    cdb_pool *pool;                          /* may be NULL: DOWN */
    cdb_redis *redis;                        /* NULL without REDIS_URL: not checked */
    int acquire_timeout_ms;                  /* DB_POOL_ACQUIRE_TIMEOUT */
    const cdb_migration_set *migrations;     /* for readiness */
    cdb_replicas *replicas;                  /* NULL without DATABASE_READ_URLS: not reported */
} cdb_health_deps;

/*
 * The full report of API.md: UP, DEGRADED when only an optional backend is
 * down, DOWN when PostgreSQL is. *out (caller owns) is the report object.
 */
cdb_health_status cdb_health_check(const cdb_health_deps *d, json_t **out);

/*
 * Readiness: UP when PostgreSQL answers and no migration is pending, else
 * DOWN. {"status", "checks": {"postgresql": {...}, "migrations": {"pending": n}}}.
 */
cdb_health_status cdb_health_check_ready(const cdb_health_deps *d, json_t **out);

/*
 * The two checks both reports run, for the detailed health
 * (monitor_health.c) to build on: each adds its object ("postgresql":
 * {status, responseTime, connections, error?}, "redis": {status,
 * responseTime?, memory?, error?}) to checks and returns whether the
 * backend answered, within the budgets above. pending and outbox as for
 * the reports (NULL / false: not asked).
 */
bool cdb__health_check_postgresql(const cdb_health_deps *d, json_t *checks, int *pending, bool outbox);
/* detailed (admins): with Sentinel, the master's address and why it is down */
bool cdb__health_check_redis(cdb_redis *redis, bool detailed, json_t *checks);
/*
 * checks.replicas (from the sampler, no query): {status, in_rotation,
 * replicas: [{replica, target, state, lag_seconds, lag_bytes, replay_lsn,
 * reason?}]} (target and reason only when detailed: admins); false when every replica is out of rotation (reads then go
 * to the primary: DEGRADED, not DOWN).
 */
bool cdb__health_check_replicas(cdb_replicas *replicas, bool detailed, json_t *checks);

#endif
