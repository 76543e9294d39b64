/*
 * audit_internal.h - carrying a call's audit origin (coredb/audit.h) to
 * another thread: a migration run started over HTTP finishes on a thread
 * of its own, and its entry should still name the request that started it.
 */
#ifndef COREDB_SECURITY_AUDIT_INTERNAL_H
#define COREDB_SECURITY_AUDIT_INTERNAL_H

typedef struct cdb__audit_origin {
    char request_id[129];
    char client_addr[80];
    char via[16];
} cdb__audit_origin;

/* Copies this thread's origin into *o. */
void cdb__audit_origin_save(cdb__audit_origin *o);
/* Makes *o this thread's origin (cdb_audit_origin_clear undoes it). */
void cdb__audit_origin_restore(const cdb__audit_origin *o);

#endif
