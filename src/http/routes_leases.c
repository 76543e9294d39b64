/*
 * routes_leases.c - connection leases (docs/http.md "Connection leases"),
 * thin adapters over coredb/leases.h:
 *   POST /api/v1/connections/acquire                   any caller, 201
 *   POST /api/v1/connections/release                   any caller (own leases; an admin any)
 *   POST /api/v1/connections/{connection_id}/renew     any caller (own leases)
 *   GET  /api/v1/connections[?service_name=]           admin
 * Blocking DDL, so on a worker. Success bodies are the library's result form.
 */
#include <stdlib.h>

#include "coredb/leases.h"
#include "coredb/result.h"
#include "http_internal.h"

static void lease_acquire(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_lease_acquire(r->svc, &r->principal, r->body, &out, &err);
    if (rc < 0 && err.code == CDB_ERR_RATE_LIMITED) {   /* LEASE_MAX_PER_USER: details carry the seconds */
        json_t *ra = err.details ? json_object_get(err.details, "retry_after") : NULL;
        cdb_request_header(r, "Retry-After", "%lld", json_is_integer(ra) ? (long long)json_integer_value(ra) : 1);
    }
    cdb_request_finish_result(r, rc, 201, out, &err);
}

static void lease_release(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_lease_release(r->svc, &r->principal, r->body, &out, &err);
    json_t *body = NULL;
    /* API.md: this answer's status says what happened to the lease */
    if (rc == 0 && (!(body = cdb_result_object(NULL, out)) ||
                    json_object_set_new(body, "status", json_string("released")) < 0))
        rc = cdb_error_oom(&err);
    json_decref(out);
    cdb_request_finish(r, rc, 200, body, &err);
}

static void lease_renew(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_lease_renew(r->svc, &r->principal, r->params[0], r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void lease_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    char *service = cdb_request_query_param(r, "service_name");
    int rc = cdb_lease_list(r->svc, &r->principal, service, &out, &err);
    free(service);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_leases[] = {
    {EVHTTP_REQ_GET, "/api/v1/connections", lease_list, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/connections/acquire", lease_acquire, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_POST, "/api/v1/connections/release", lease_release, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_POST, "/api/v1/connections/{connection_id}/renew", lease_renew, CDB_RUN_WORKER, CDB_AUTH_USER},
    {0},
};
