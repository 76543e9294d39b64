/*
 * routes_metrics.c - GET /metrics, the Prometheus exposition (text format
 * 0.0.4, core/metrics.c renders it): with an admin token on the main port,
 * without one on the PROMETHEUS_PORT listener, which serves nothing else
 * (any other path there is a 404). Runs on a worker: the collectors ask
 * PostgreSQL for its statistics, with a short deadline.
 */
#include "core/metrics.h"
#include "http_internal.h"

static void metrics(cdb_request *r)
{
    char *text = cdb__metrics_render();
    if (text)
        r->media_type = CDB_METRICS_MEDIA_TYPE;
    cdb_request_reply_text(r, 200, text);  /* NULL: the out-of-memory answer */
}

const cdb_route cdb_routes_metrics[] = {
    {EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "/metrics", metrics, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};

const cdb_route cdb_routes_metrics_public[] = {
    {EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, "/metrics", metrics, CDB_RUN_WORKER, CDB_AUTH_PUBLIC},
    {0},
};
