/*
 * audit_internal.h - carrying a call's audit origin (coredb/audit.h) to
 * another thread: a migration run started over HTTP finishes on a thread
 * of its own, and its entry should still name the request that started it;
 * and keeping the log across a restore.
 */
#ifndef COREDB_SECURITY_AUDIT_INTERNAL_H
#define COREDB_SECURITY_AUDIT_INTERNAL_H

#include <libpq-fe.h>

#include "coredb/error.h"

typedef struct cdb__audit_origin {
    char request_id[129];
    char client_addr[80];
    char via[16];
} cdb__audit_origin;

/* Copies this thread's origin into *o. */
void cdb__audit_origin_save(cdb__audit_origin *o);
/* Makes *o this thread's origin (cdb_audit_origin_clear undoes it). */
void cdb__audit_origin_restore(const cdb__audit_origin *o);

/*
 * A restore (management/restore.c) replaces the whole database with a
 * backup's, audit log included; the entries made since that backup must
 * not go with it. Before the live restore, cdb__audit_carry_begin copies
 * the log into a schema of its own (coredb_audit_carry), which the archive
 * does not hold, so pg_restore --clean leaves it alone. After it (whether
 * it succeeded or rolled back), cdb__audit_carry_end appends the copied
 * entries that the restored log lacks (ids above its last), with their own
 * hashes, so the chain runs on unbroken when the backup was of this log,
 * moves the id sequence past them, and drops the copy. If they cannot be
 * put back (a backup older than the log's table), the copy is kept for the
 * operator and the error logged. A copy left by a crash is replaced by
 * the next restore. Both run on conn outside any transaction.
 */
int cdb__audit_carry_begin(PGconn *conn, cdb_error *err);
void cdb__audit_carry_end(PGconn *conn);

#endif
