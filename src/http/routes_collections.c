/*
 * routes_collections.c - /api/v1/admin/collections (issue 15), thin
 * adapters over coredb/collections.h:
 *   POST   /api/v1/admin/collections          {name, kind, partition_key?, dimensions?, metric?} (201)
 *   GET    /api/v1/admin/collections
 *   DELETE /api/v1/admin/collections/{name}
 * Admin only (the route says so, and the library checks again).
 */
#include "coredb/collections.h"
#include "http_internal.h"

static void collections_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_collections_create(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 201, out, &err);
}

static void collections_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_collections_list(r->svc, &r->principal, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void collections_drop(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_collections_drop(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_collections[] = {
    {EVHTTP_REQ_POST, "/api/v1/admin/collections", collections_create, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/collections", collections_list, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_DELETE, "/api/v1/admin/collections/{name}", collections_drop, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
