/*
 * routes_monitor.c - monitoring and detailed health (issue 12), thin
 * adapters over coredb/monitor.h and coredb/health.h:
 *   GET /api/v1/admin/metrics/tables | performance | errors | all
 *   GET /api/v1/admin/health                      (the three below at once)
 *   GET /api/v1/admin/health/connection | query | resource
 * Admin only (the route says so and the library checks again); blocking
 * PostgreSQL reads, so on a worker. Bodies are the library's result form.
 * A detailed health report answers 200 whatever it finds ("health":
 * "healthy" | "degraded" | "unhealthy"): the request worked, the finding is
 * in the body. Probes that act on a status code use /health.
 */
#include "coredb/health.h"
#include "coredb/monitor.h"
#include "http_internal.h"

typedef int (*monitor_fn)(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

static void answer(cdb_request *r, monitor_fn fn)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *data = NULL;
    int rc = fn(r->svc, &r->principal, &data, &err);
    cdb_request_finish_result(r, rc, 200, data, &err);
}

static void metrics_tables(cdb_request *r) { answer(r, cdb_monitor_tables); }
static void metrics_performance(cdb_request *r) { answer(r, cdb_monitor_performance); }
static void metrics_errors(cdb_request *r) { answer(r, cdb_monitor_errors); }
static void metrics_all(cdb_request *r) { answer(r, cdb_monitor_all); }
static void health_detailed(cdb_request *r) { answer(r, cdb_health_detailed); }
static void health_connection(cdb_request *r) { answer(r, cdb_health_connection); }
static void health_query(cdb_request *r) { answer(r, cdb_health_query); }
static void health_resource(cdb_request *r) { answer(r, cdb_health_resource); }

const cdb_route cdb_routes_monitor[] = {
    {EVHTTP_REQ_GET, "/api/v1/admin/metrics/tables", metrics_tables, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/metrics/performance", metrics_performance, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/metrics/errors", metrics_errors, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/metrics/all", metrics_all, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/health", health_detailed, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/health/connection", health_connection, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/health/query", health_query, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/health/resource", health_resource, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
