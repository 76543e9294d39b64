/*
 * migrate_internal.h - what the two halves of the migration engine share
 * (files: migrate_files.c, runner: migrate.c) beyond the public contract,
 * and pieces worth unit-testing on their own.
 */
#ifndef COREDB_MIGRATE_INTERNAL_H
#define COREDB_MIGRATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "coredb/migrate.h"

/* The session advisory lock that serializes migrators (migrate.c, migrate_runs.c). */
#define CDB__MIGRATE_LOCK_KEY "6155020977930761511"

/*
 * Splits a migration section into statements on ';' outside quotes ('...',
 * E'...', "..."), dollar-quoted bodies ($$...$$, $tag$...$tag$), -- line
 * comments and (nested) block comments. Each statement starts at its first
 * token (leading comments and blanks dropped) and is trimmed at the end;
 * statements holding nothing but comments and blanks are dropped.
 * Returns 0 or CDB_ERR_INTERNAL_ERROR (out of memory). *stmts is malloc'd,
 * free it with cdb_migration_split_free (also fine when *n is 0).
 */
int  cdb_migration_split(const char *sql, char ***stmts, size_t *n);
void cdb_migration_split_free(char **stmts, size_t n);

/* true when name follows ^[0-9]{8}_[0-9]{3}_[a-z0-9_]+\.sql$ */
bool cdb_migration_name_valid(const char *name);

/* The migration of set with this version (binary search; items are sorted), or NULL. */
const cdb_migration *cdb__migration_find(const cdb_migration_set *set, const char *version);

/*
 * Closing a service (cdb_service_close, first): cancels the statement each
 * of its background runs is executing and waits until they have ended, so
 * no run thread outlives what it uses. Idle when none is active.
 */
struct cdb_service;
void cdb__migration_runs_stop(struct cdb_service *svc);

/*
 * Writes a migration up or down to the audit log (migration.up,
 * migration.down) as done by who, with params (taken; may be NULL) plus the
 * versions result applied or rolled back, and rc as the outcome. For the
 * HTTP runs (migrate_runs.c) and `coredb migrate` (service.c).
 */
struct cdb_principal;
void cdb__migrate_audit(struct cdb_service *svc, const struct cdb_principal *who, bool up, json_t *params,
                        const json_t *result, int rc);

#endif
