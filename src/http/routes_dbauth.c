/*
 * routes_dbauth.c - database roles and users (docs/http.md "Database roles
 * and users"), thin adapters over coredb/dbauth.h:
 *   POST /api/v1/admin/roles                          {role_name, permissions, description?}  201
 *   POST /api/v1/admin/db-users                       {username, password, roles, connection_limit?}  201
 *   PUT  /api/v1/admin/db-users/{username}/password   {new_password}
 *   POST /api/v1/admin/db-users/{username}/revoke     {roles?}
 * Admin only (the route says so, and the library checks again); blocking
 * DDL, so on a worker. Success bodies are the library's result form.
 */
#include "coredb/dbauth.h"
#include "http_internal.h"

static void role_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_dbauth_create_role(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 201, out, &err);
}

static void user_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_dbauth_create_user(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 201, out, &err);
}

static void user_password(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_dbauth_update_user_password(r->svc, &r->principal, r->params[0], r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void user_revoke(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_dbauth_revoke_user_access(r->svc, &r->principal, r->params[0], r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_dbauth[] = {
    {EVHTTP_REQ_POST, "/api/v1/admin/roles", role_create, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/db-users", user_create, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_PUT, "/api/v1/admin/db-users/{username}/password", user_password, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/db-users/{username}/revoke", user_revoke, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
