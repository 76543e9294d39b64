/*
 * routes_access.c - row-level security, schema grants and ownership
 * (docs/http.md "Row-level security, schema grants, ownership"), thin
 * adapters over coredb/access.h:
 *   POST /api/v1/admin/rls                                 {table_name, policy_name, policy, ...}
 *   PUT  /api/v1/admin/schemas/{schema_name}/permissions   {role, permissions}
 *   POST /api/v1/admin/ownership                           {object_type, object_name, new_owner}
 * Admin only (the route says so, and the library checks again); success
 * bodies are the library's result form.
 */
#include "coredb/access.h"
#include "http_internal.h"

static void rls_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_access_enable_row_level_security(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void schema_permissions(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_access_set_schema_permissions(r->svc, &r->principal, r->params[0], r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void ownership(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_access_transfer_ownership(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_access[] = {
    {EVHTTP_REQ_POST, "/api/v1/admin/rls", rls_create, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_PUT, "/api/v1/admin/schemas/{schema_name}/permissions", schema_permissions, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/ownership", ownership, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
