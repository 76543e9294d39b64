/*
 * routes_admin.c - /api/v1/admin (API.md "Administration"): the routes
 * served so far, thin adapters over the library's management calls:
 *   POST /api/v1/admin/tables/{name}/expose    {owner_column?, read_only_for?}
 *   POST /api/v1/admin/tables/{name}/unexpose
 *   GET  /api/v1/admin/tables
 *   POST /api/v1/admin/backups                 (201)
 *   GET  /api/v1/admin/backups
 *   POST /api/v1/admin/backups/{name}/verify
 *   POST /api/v1/admin/backups/cleanup
 *   POST /api/v1/admin/backups/{name}/restore  {confirm: true}
 * Admin only (the route says so, and the library checks again). Success
 * bodies are the library's result form, as API.md asks for this section.
 */
#include "coredb/backup.h"
#include "coredb/restore.h"
#include "coredb/tables.h"
#include "http_internal.h"

static void tables_expose(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_tables_expose(r->svc, &r->principal, r->params[0], r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void tables_unexpose(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_tables_unexpose(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void tables_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_tables_list(r->svc, &r->principal, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

/* ---- backups (issue 13): blocking calls, on a worker ---- */

static void backups_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_backup_create(r->svc, &r->principal, &out, &err);
    cdb_request_finish_result(r, rc, 201, out, &err);
}

static void backups_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_backup_list(r->svc, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void backups_verify(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_backup_verify(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void backups_cleanup(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_backup_cleanup(r->svc, &r->principal, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

/* {confirm: true} exactly: anything else (absent, false, "yes") is refused by the library. */
static void backup_restore(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc;
    json_t *confirm = json_is_object(r->body) ? json_object_get(r->body, "confirm") : NULL;
    if (r->body && !json_is_object(r->body))
        rc = cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    else if (confirm && !json_is_boolean(confirm))
        rc = cdb_error_set_detail(&err, CDB_ERR_VALIDATION_FAILED, "field", "confirm",
                                  "confirm must be a boolean");
    else
        rc = cdb_backup_restore(r->svc, &r->principal, r->params[0], json_is_true(confirm), &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_admin[] = {
    {EVHTTP_REQ_GET, "/api/v1/admin/tables", tables_list, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/tables/{name}/expose", tables_expose, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/tables/{name}/unexpose", tables_unexpose, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    /* backups */
    {EVHTTP_REQ_POST, "/api/v1/admin/backups", backups_create, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/backups", backups_list, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/backups/cleanup", backups_cleanup, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/backups/{name}/verify", backups_verify, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/backups/{name}/restore", backup_restore, CDB_RUN_WORKER,
     CDB_AUTH_ADMIN},
    {0},
};
