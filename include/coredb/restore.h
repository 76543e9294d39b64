/*
 * restore.h - restoring a backup archive of BACKUP_DIR into the live
 * database (issue 13, "safe restore"). A section the merge can fold into
 * coredb/backup.h.
 *
 * What a restore does, in order:
 *   1. checks the caller (admin), confirm (must be true: VALIDATION_FAILED)
 *      and the name (a plain file name inside BACKUP_DIR: no '/', no "..",
 *      not hidden; VALIDATION_FAILED; a name that is not there: NOT_FOUND);
 *   2. verifies the archive: its table of contents (pg_restore --list),
 *      then a test restore into a new scratch database (pg_restore
 *      --exit-on-error), dropped afterwards. Either failing: BACKUP_INVALID,
 *      and nothing else happened;
 *   3. puts the deployment into maintenance (the data API answers 503
 *      MAINTENANCE with Retry-After on every instance; /health shows it);
 *   4. ends every other session to the database (pg_terminate_backend);
 *   5. restores into the live database in ONE transaction (pg_restore
 *      --single-transaction --clean --if-exists --exit-on-error): it
 *      applies entirely or not at all. A failure here is CONFLICT
 *      (details.check "restore"): rolled back, the database unchanged;
 *   6. bumps the cache generation of every table of POSTGRES_SCHEMA (through
 *      the outbox when Redis does not take it), so no instance serves a
 *      result read before the restore;
 *   7. ends the maintenance, whatever happened from 3 on.
 * One restore at a time per deployment (a session advisory lock: CONFLICT).
 *
 * *out (caller owns) on success: {name, restored: true, duration_ms,
 * sessions_ended, tables_invalidated}. Blocking (minutes for a big
 * archive): call from a worker thread or the CLI.
 */
#ifndef COREDB_RESTORE_H
#define COREDB_RESTORE_H

#include <jansson.h>
#include <stdbool.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

int cdb_backup_restore(cdb_service *svc, const cdb_principal *caller, const char *name, bool confirm,
                       json_t **out, cdb_error *err);

#endif
