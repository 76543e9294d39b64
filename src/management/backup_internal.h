/*
 * backup_internal.h - what the backup files of management/ share: running
 * the PostgreSQL tools (backup_proc.c) and the files of BACKUP_DIR
 * (backup_files.c). backup.c and backup_verify.c use both; neither of
 * those two calls the other.
 */
#ifndef COREDB_MANAGEMENT_BACKUP_INTERNAL_H
#define COREDB_MANAGEMENT_BACKUP_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/backup.h"
#include "security/service_state.h"

#define CDB_BACKUP_FORMAT "pg_dump-custom"

/*
 * Runs PG_BINDIR/prog with args (NULL-terminated, no program name) and no
 * shell. The connection settings of conninfo reach it as PG* environment
 * variables (the password as PGPASSWORD), never as arguments. stdout goes
 * to out_path when given, else /dev/null; the tail of stderr becomes the
 * error message. Killed after timeout_s. 0, or INTERNAL_ERROR saying what
 * failed (the program's exit status and message).
 */
int cdb__backup_run(const cdb_service *svc, const char *prog, const char *const *args,
                    const char *out_path, int timeout_s, cdb_error *err);

/* ^coredb-[0-9]{8}T[0-9]{9}Z$ */
bool cdb__backup_name_ok(const char *name);
/* BACKUP_DIR/NAME + suffix, malloc'd; NULL when out of memory. */
char *cdb__backup_path(const cdb_service *svc, const char *name, const char *suffix);
/* SHA-256 hex of a file and its size. -1 + errno when unreadable. */
int cdb__backup_sha256(const char *path, char hex[65], long long *size);
/* The manifest of NAME: NOT_FOUND without one, VALIDATION_FAILED for a bad name. */
int cdb__backup_manifest(const cdb_service *svc, const char *name, json_t **out, cdb_error *err);
/* Every backup's manifest, newest first (by name, which is its creation time). */
int cdb__backup_manifests(const cdb_service *svc, json_t **out, cdb_error *err);
/* Whether the file of a manifest has its size and checksum. */
bool cdb__backup_intact(const cdb_service *svc, json_t *manifest);
/*
 * tables[schema.table] = row count for every table of the connection's
 * database (system schemas aside), in the snapshot of its transaction.
 */
int cdb__backup_count_rows(PGconn *conn, json_t *tables, cdb_error *err);
/*
 * Encrypts the archive src into dst (0600) with the backup key derived from
 * DB_ENCRYPTION_KEY (backup_crypt.c describes the format). CONFIG_INVALID
 * without a usable key.
 */
int cdb__backup_encrypt(const cdb_service *svc, const char *src, const char *dst, cdb_error *err);
/* BACKUP_DIR, created (0700) when missing. */
int cdb__backup_dir(const cdb_service *svc, cdb_error *err);
/*
 * A file of BACKUP_DIR that cannot be read or written (missing, read-only,
 * full, a file where the directory should be): logged with its path and
 * errno, answered BACKUP_STORAGE_UNAVAILABLE (503) without the path.
 * what: the step, as "writing the manifest". Returns the code.
 */
int cdb__backup_storage_error(cdb_error *err, const char *what, const char *path, int errnum);

#endif
