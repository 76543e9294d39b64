/*
 * service_internal.h - what the front ends (http/, cli/) of the library
 * need of a service beyond the public API: the request quota table and the
 * test hook. Not installed; embedders use coredb/service.h.
 */
#ifndef COREDB_SERVICE_INTERNAL_H
#define COREDB_SERVICE_INTERNAL_H

#include "coredb/service.h"
#include "security/ratelimit.h"
#include "store/qcache.h"

#include <stdint.h>

/* The rate limiter of per-caller quotas (not owned). */
cdb_ratelimit *cdb_service_ratelimit(cdb_service *svc);
/* The blocking Redis pool (not owned), NULL without Redis: the event loops' asynchronous
 * connections take its address from it (store/redis_async.h). */
cdb_redis *cdb_service_redis(cdb_service *svc);
/* The data API's query cache (not owned). */
cdb_qcache *cdb_service_qcache(cdb_service *svc);
/* The invalidations of the first-level caches (store/invalidation.h); NULL without Redis. */
cdb_inval *cdb_service_inval(cdb_service *svc);
/*
 * The PostgreSQL connections each HTTP loop owns (store/pg_async.h), out of
 * DB_POOL_MAX (0: off); the pool whose settings they copy, NULL without one.
 */
int cdb_service_loop_connections(cdb_service *svc);
cdb_pool *cdb_service_pool(cdb_service *svc);
/* The data API's catalog snapshots swapped in so far (store/catalog.h). */
uint64_t cdb_service_catalog_version(cdb_service *svc);

/*
 * POST /test/sleep (test builds of the HTTP API): holds a pooled connection
 * in pg_sleep(seconds). Blocking.
 */
/* Retry-After of a 503 MAINTENANCE (security/maintenance.h). */
#define CDB_SERVICE_RETRY_AFTER_S 5
/* Since when (Unix seconds) a restore holds this deployment in maintenance; 0 = not. */
int64_t cdb_service_maintenance_since(cdb_service *svc);
/* For the event loops, which read the shared flag themselves (security/maintenance.h). */
bool cdb_service_maintenance_poll_due(cdb_service *svc, int64_t *since, char *key, size_t len);
void cdb_service_maintenance_polled(cdb_service *svc, const char *value);
int cdb_service_test_sleep(cdb_service *svc, double seconds, cdb_error *err);
/*
 * metrics.c: registers the service's scrape-time gauges (pool, Redis,
 * PostgreSQL) with the process's registry; stop unregisters them, before
 * the service is freed and after the last scrape (the HTTP server stopped).
 */
int cdb__service_metrics_start(cdb_service *svc);
void cdb__service_metrics_stop(cdb_service *svc);

#endif
