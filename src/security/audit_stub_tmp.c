/*
 * audit_stub_tmp.c - TEMPORARY, branch i10-access only: link stand-ins for
 * coredb/audit.h until branch i10-audit (the real audit.c) is merged; this
 * file is deleted by that merge. Records nothing.
 */
#include "coredb/audit.h"

void cdb_audit_origin_set(const char *request_id, const char *client_addr, const char *via) {}
void cdb_audit_origin_clear(void) {}
int cdb_audit_record(cdb_service *svc, const cdb_principal *who, const char *action, const char *target,
                     const json_t *params, const cdb_error *outcome)
{
    return 0;
}
int cdb_audit_record_in(PGconn *conn, const cdb_principal *who, const char *action, const char *target,
                        const json_t *params, cdb_error *err)
{
    return 0;
}
