/*
 * leases_internal.h - what the files of connection leases share
 * (leases.c: acquire, renew, list; leases_end.c: release and the reaper).
 */
#ifndef COREDB_MANAGEMENT_LEASES_INTERNAL_H
#define COREDB_MANAGEMENT_LEASES_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>

#include "coredb/leases.h"

/* The principal the reaper acts as (no user, no role; its audit actor is "reaper"). */
extern const cdb_principal cdb__lease_reaper;

/* An integer ttl_seconds of request (absent: LEASE_TTL) within 1..LEASE_MAX_TTL, else VALIDATION_FAILED. */
int cdb__lease_ttl(const cdb_service *svc, const json_t *request, int *ttl, cdb_error *err);

#endif
