/*
 * routes_migrations.c - /api/v1/migrations (API.md "Migrations"), admin
 * only, thin adapters over coredb/migrate_runs.h and the service's status:
 *   GET  /api/v1/migrations/status
 *   POST /api/v1/migrations/run             {target_version?, dry_run?} -> 202 run object
 *   GET  /api/v1/migrations/runs/{id}       the run object
 *   POST /api/v1/migrations/rollback        {steps}
 * Run objects are answered as they are (their "status" is the run's), the
 * other two in the result form.
 */
#include "coredb/migrate_runs.h"
#include "coredb/service.h"
#include "http_internal.h"

static void status(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_service_migration(r->svc, CDB_MIGRATION_STATUS, NULL, 0, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

static void run(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_migration_run_start(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish(r, rc, 202, out, &err);
}

static void run_get(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_migration_run_get(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void rollback(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_migration_rollback(r->svc, &r->principal, r->body, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_migrations[] = {
    {EVHTTP_REQ_GET, "/api/v1/migrations/status", status, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/migrations/run", run, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/migrations/runs/{id}", run_get, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_POST, "/api/v1/migrations/rollback", rollback, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
