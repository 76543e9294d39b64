/*
 * encryption.h - application-side column encryption (issue 11,
 * src/management/encryption.c over src/security/colcrypt.c).
 *
 * A chosen text column's values are stored as
 * "cdb1:<key version>:<base64(nonce || ciphertext || tag)>" (XChaCha20-
 * Poly1305), each bound to its table, column and row's primary key; the
 * per-column data keys are stored wrapped by DB_ENCRYPTION_KEY
 * (coredb.encryption_keys, migration 014). Setup and rotation re-encrypt the
 * existing rows in batches of CDB_ENCRYPTION_BATCH, each its own short
 * transaction (FOR UPDATE SKIP LOCKED), recording progress in
 * coredb.encryption_jobs, so a job cut short continues where it stopped.
 * Every setup and rotation is in the audit log (encryption.setup,
 * encryption.rotate). All calls are admin only and answer in the result form.
 */
#ifndef COREDB_ENCRYPTION_H
#define COREDB_ENCRYPTION_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

#define CDB_ENCRYPTION_BATCH 500

/*
 * request {table_name, column_name, searchable?, wait?}: registers the column (a
 * text or varchar column of a table of POSTGRES_SCHEMA with a one-column
 * primary key; varchar is widened to text), creates key version 1, and
 * encrypts the existing rows. *out = {table_name, column_name, key_version,
 * job: {id, kind, state, rows_done}}. VALIDATION_FAILED for another type
 * (naming it) or no usable primary key, UNKNOWN_TABLE / UNKNOWN_COLUMN,
 * CONFLICT when the column is already encrypted, CONFIG_INVALID without a
 * usable DB_ENCRYPTION_KEY. wait (default true) false: answers at once with
 * the job running; the resumer of a serving instance (`coredb serve`) runs it.
 */
int cdb_encryption_setup_column(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                                json_t **out, cdb_error *err);

/*
 * request {table_name, column_name}: the next key version, used by new
 * writes at once; the rows are re-encrypted and the old versions retired
 * once no row uses them. *out as for setup. NOT_FOUND for a column that is
 * not encrypted.
 */
int cdb_encryption_rotate_key(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                              json_t **out, cdb_error *err);

/*
 * Progress of the jobs that setup and rotate run in this process (the CLI's
 * progress line): called after every batch with the rows re-encrypted so far
 * by this run and the rows there were to do when its pass began, pass 0 the
 * main one and 1 the last one (after the other instances' key snapshots have
 * expired: values they wrote meanwhile). fn NULL = none. Not thread safe:
 * set it before the call.
 */
typedef void (*cdb_encryption_progress_fn)(void *arg, long rows_done, long rows_total, int pass);
void cdb_encryption_on_progress(cdb_service *svc, cdb_encryption_progress_fn fn, void *arg);

/*
 * table_name NULL = every encrypted column. Counted from the rows:
 * *out = {columns: [{table_name, column_name, key_version,
 * rows_by_key_version: {"1": n, ...}, plaintext_rows, last_rotated_at, job}]}.
 */
int cdb_encryption_audit(cdb_service *svc, const cdb_principal *caller, const char *table_name,
                         json_t **out, cdb_error *err);

/* GET /admin/encryption/jobs/{id}: {id, kind, table_name, column_name, target_version, state, rows_done, ...}. */
int cdb_encryption_job(cdb_service *svc, const cdb_principal *caller, const char *id, json_t **out,
                       cdb_error *err);

/*
 * After a change of DB_ENCRYPTION_KEY: every data key that
 * DB_ENCRYPTION_KEY_PREVIOUS unwraps is rewrapped with the new key in one
 * transaction (no row is touched); keys already under the new key are left.
 * *out = {rewrapped, keys}. CONFIG_INVALID naming the first key neither
 * unwraps. Audited as encryption.rewrap.
 */
int cdb_encryption_rewrap(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

/*
 * At start (cdb_service_start): rewraps when DB_ENCRYPTION_KEY_PREVIOUS is
 * set, then checks that every live data key unwraps with DB_ENCRYPTION_KEY.
 * CONFIG_INVALID otherwise (`coredb serve` exits 2), nothing changed.
 */
int cdb_encryption_check_start(cdb_service *svc, cdb_error *err);

#endif
