/*
 * migrate_runs.h - migration runs in the background (API.md "Migrations"):
 * what POST /api/v1/migrations/run, GET /runs/{id} and POST /rollback do.
 *
 * A run takes the migration engine's advisory lock on a dedicated
 * connection before it answers (another run, from any instance or the CLI
 * -> MIGRATION_LOCKED 409), records itself in coredb.migration_runs and is
 * applied by a detached thread, one file at a time, updating its row after
 * each file, so any instance can answer GET /runs/{id}. A dry run applies
 * everything pending in one transaction and rolls it back. After a run that
 * applied something the local catalog is reloaded, NOTIFY coredb_catalog
 * tells the other instances to reload theirs, and the cache generation of
 * every table of the catalog is bumped (all tables: simple and safe).
 *
 * estimated_remaining (seconds) is the engine's heuristic of status'
 * estimated_duration summed over the files still to run (~20 statements a
 * second, at least 1 s a file).
 *
 * Run object: {migration_id, status: "running"|"completed"|"failed", kind:
 * "up"|"down", dry_run, target_version, progress: {current_step,
 * total_steps, estimated_remaining}, started_at, finished_at, result
 * (the engine's result) | null, migration_error: {code, message, file,
 * version, statement} | null}. Admin only (FORBIDDEN otherwise).
 */
#ifndef COREDB_MIGRATE_RUNS_H
#define COREDB_MIGRATE_RUNS_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* request: NULL or {target_version?: "YYYYMMDD_NNN", dry_run?: bool}. *out: the run object. */
int cdb_migration_run_start(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                            json_t **out, cdb_error *err);

/* The run object of id; NOT_FOUND when id is no UUID or no run has it. */
int cdb_migration_run_get(cdb_service *svc, const cdb_principal *caller, const char *id,
                          json_t **out, cdb_error *err);

/*
 * request: {steps: 1..100}. Rolls back synchronously (MIGRATION_LOCKED when
 * a run holds the lock), then refreshes catalogs and caches as a run does.
 * *out: the engine's result of cdb_migrate_down.
 */
int cdb_migration_rollback(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err);

#endif
