/*
 * leases_internal.h - what the files of connection leases share
 * (leases.c: acquire, renew, list; leases_end.c: release and the reaper).
 */
#ifndef COREDB_MANAGEMENT_LEASES_INTERNAL_H
#define COREDB_MANAGEMENT_LEASES_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>

#include "coredb/leases.h"
#include "store/pool.h"

/* The principal the reaper acts as (no user, no role; its audit actor is "reaper"). */
extern const cdb_principal cdb__lease_reaper;

/* An integer ttl_seconds of request (absent: LEASE_TTL) within 1..LEASE_MAX_TTL, else VALIDATION_FAILED. */
int cdb__lease_ttl(const cdb_service *svc, const json_t *request, int *ttl, cdb_error *err);

/*
 * X-Connection-ID without binding the connection to the thread, for the
 * event loops (http/loop_lease.c): the checkout rules of
 * cdb_lease_use_begin (the same errors), lid gets the normalized id. The
 * caller runs its job on the connection, then gives it back with
 * cdb__lease_checkin (the pool gets it when the lease ended meanwhile).
 */
cdb_pool_conn *cdb__lease_checkout(const cdb_principal *caller, const char *id, char lid[37], cdb_error *err);
void cdb__lease_checkin(cdb_service *svc, const char *lid);

#endif
