/*
 * routes_encryption.c - column encryption (coredb/encryption.h, docs/http.md
 * "Column encryption"), thin adapters over the library:
 *   POST /api/v1/admin/encryption/columns          {table_name, column_name, searchable?}
 *   POST /api/v1/admin/encryption/columns/rotate   {table_name, column_name}
 *   GET  /api/v1/admin/encryption/audit?table_name=
 *   GET  /api/v1/admin/encryption/jobs/{id}
 * Admin only; bodies in the result form. The jobs run to their end within
 * the request (200), or with wait: false are left to the serving instances'
 * resumer (202 with the running job; GET .../jobs/{id} follows it).
 */
#include <stdlib.h>
#include <string.h>

#include "coredb/encryption.h"
#include "http_internal.h"

/* 202 while the job still runs (wait: false), 200 when it finished within the request. */
static int job_status(const json_t *out)
{
    const char *state = json_string_value(json_object_get(json_object_get(out, "job"), "state"));
    return state && strcmp(state, "running") == 0 ? 202 : 200;
}

static void setup_column(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_encryption_setup_column(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, job_status(out), out, &err);
}

static void rotate_key(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_encryption_rotate_key(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, job_status(out), out, &err);
}

static void audit(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    char *table = cdb_request_query_param(r, "table_name");
    int rc = cdb_encryption_audit(r->svc, &r->principal, table, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
    free(table);
}

static void job(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_encryption_job(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_encryption[] = {
    {EVHTTP_REQ_POST, "/api/v1/admin/encryption/columns", setup_column, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/admin/encryption/columns/rotate", rotate_key, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/encryption/audit", audit, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/encryption/jobs/{id}", job, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
