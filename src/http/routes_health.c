/*
 * routes_health.c - GET /health, /health/live, /health/ready (no auth).
 * /health/live is answered on the loop: it proves the process serves, and
 * must stay cheap (it is the HTTP floor of bench/).
 */
#include "coredb/health.h"
#include "http_internal.h"

static void health_live(cdb_request *r)
{
    cdb_request_reply(r, 200, json_pack("{s:s}", "status", "UP"));
}

static void health_full(cdb_request *r)
{
    json_t *body = NULL;
    cdb_health_status s = cdb_service_health(r->svc, &body);
    cdb_request_reply(r, s == CDB_HEALTH_DOWN ? 503 : 200, body);
}

static void health_ready(cdb_request *r)
{
    json_t *body = NULL;
    cdb_health_status s = cdb_service_ready(r->svc, &body);
    /* stopping (SHUTDOWN_DRAIN_MS): not ready, so the balancer drains us */
    if (cdb_server_draining(r->server)) {
        s = CDB_HEALTH_DOWN;
        json_object_set_new(body, "status", json_string(cdb_health_status_name(s)));
        json_object_set_new(json_object_get(body, "checks"), "shutdown",
                            json_pack("{s:s,s:b}", "status", "DOWN", "draining", 1));
    }
    cdb_request_reply(r, s == CDB_HEALTH_UP ? 200 : 503, body);
}

const cdb_route cdb_routes_health[] = {
    {EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "/health", health_full, CDB_RUN_WORKER, CDB_AUTH_PUBLIC},
    {EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "/health/live", health_live, CDB_RUN_INLINE, CDB_AUTH_PUBLIC},
    {EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "/health/ready", health_ready, CDB_RUN_WORKER, CDB_AUTH_PUBLIC},
    {0},
};
