/*
 * backup.h - backups of the service's database (API.md "Administration",
 * docs/operations.md "Backups").
 *
 * A backup is BACKUP_DIR/NAME.dump, a pg_dump custom-format archive made by
 * the PG_BINDIR binaries, and BACKUP_DIR/NAME.json, its manifest:
 *   {name, file, size_bytes, sha256 (of the file as stored), created_at,
 *    duration_ms, format: "pg_dump-custom", server_version,
 *    migration_version, encrypted, tables: {"schema.table": rows}}
 * The row counts are taken in the dump's own snapshot (a REPEATABLE READ
 * transaction exports it and pg_dump runs with --snapshot), so they are
 * exactly what the archive holds. NAME is "coredb-YYYYMMDDTHHMMSSmmmZ".
 * With BACKUP_ENCRYPT the stored file is the archive encrypted with
 * libsodium secretstream (key derived from DB_ENCRYPTION_KEY); sha256 is of
 * the stored file. Restore reads it through cdb_backup_decrypt_to_path.
 *
 * Creates are serialized (a process mutex and a PostgreSQL advisory lock,
 * for several instances on one BACKUP_DIR); the archive is written under a
 * temporary name and renamed once complete and checksummed, the manifest
 * last. Passwords reach the PostgreSQL tools only through the child's
 * environment, never its arguments or a log.
 *
 * These calls block for the length of a dump or restore: run them on a
 * worker. Callers decide who may call them (HTTP: admins only).
 */
#ifndef COREDB_BACKUP_H
#define COREDB_BACKUP_H

#include <jansson.h>
#include <stddef.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/*
 * create, verify and cleanup are written to the audit log (backup.create,
 * backup.verify, backup.cleanup; coredb/audit.h) as done by caller, with
 * their outcome. caller may be NULL (the service's own schedule).
 */

/* Makes a backup; *out (caller owns) is its manifest. */
int cdb_backup_create(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

/* {"backups": [manifest + {"size_on_disk"}...]} newest first. */
int cdb_backup_list(cdb_service *svc, json_t **out, cdb_error *err);

/*
 * Checks NAME at three levels, stopping at the first failure: "checksum"
 * (SHA-256 and size of the file against the manifest), "toc"
 * (pg_restore --list reads the archive's table of contents) and "restore"
 * (pg_restore into a scratch database, dropped afterwards, whose per-table
 * row counts must equal the manifest's). 0 with *out = {name, valid: true,
 * checks: {checksum: "passed", toc: "passed", restore: "passed"}}; a failed
 * check is BACKUP_INVALID with details.check naming it and details.checks.
 * Unknown NAME -> NOT_FOUND, malformed NAME -> VALIDATION_FAILED.
 */
int cdb_backup_verify(cdb_service *svc, const cdb_principal *caller, const char *name, json_t **out,
                      cdb_error *err);

/*
 * Retention: keeps the BACKUP_RETENTION_COUNT newest and every backup
 * younger than BACKUP_RETENTION_DAYS; removes the rest, except that the
 * newest backup whose checksum holds is never removed (so the only valid
 * backup stays). *out = {removed: [names], kept: [names]}.
 */
int cdb_backup_cleanup(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

/*
 * For restore: the archive of NAME (validated as above) as a malloc'd
 * path in *path (caller frees), and the parsed manifest in *manifest
 * (caller owns; may be NULL when not wanted).
 */
int cdb_backup_archive_path(cdb_service *svc, const char *name, char **path, json_t **manifest,
                            cdb_error *err);

/*
 * Writes the plain pg_dump archive of the stored file src (e.g. from
 * cdb_backup_archive_path) to dst (created 0600; removed on failure).
 * Unencrypted archives are copied as they are; encrypted ones are
 * decrypted, a damaged, truncated or wrongly keyed one failing with
 * BACKUP_INVALID (CONFIG_INVALID without a usable DB_ENCRYPTION_KEY). Check
 * the checksum first (cdb_backup_verify does all three levels).
 */
int cdb_backup_decrypt_to_path(cdb_service *svc, const char *src, const char *dst, cdb_error *err);

#endif
