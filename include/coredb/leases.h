/*
 * leases.h - connection leases (docs/http.md "Connection leases"; issue 9):
 * a pooled connection reserved for a caller plus a short-lived PostgreSQL
 * login a driver can use directly, revoked for good on release or expiry.
 *
 * The login is a role coredb_lease_<32 hex> with a random 32-byte
 * password (sent as a SCRAM verifier), VALID UNTIL the lease's end, a
 * CONNECTION LIMIT of CDB_LEASE_CONNECTION_LIMIT, member of the caller's
 * database role (write) or of its SELECT-only counterpart coredb_<role>_ro
 * (read). Row-level security binds it to the caller's user id on the
 * server side (migration 013: coredb.current_user_id() reads the lease
 * table for a lease login's session_user), so nothing the holder sets
 * widens it.
 *
 * Leases are rows of coredb.leases: any instance's reaper ends expired
 * ones, and ones whose reserved connection's backend is gone (the instance
 * that held it crashed). The reserved connection itself lives in the
 * process that acquired it: X-Connection-ID works there only (elsewhere
 * NOT_FOUND). Each acquire, release and renew is audited (lease.acquire,
 * lease.release, lease.renew; never the password) and counted in metrics.
 *
 * coredb's login needs CREATEROLE and pg_signal_backend (`coredb setup-sql
 * --administration`), else DATABASE_PRIVILEGE_MISSING.
 *
 * Blocking: call from worker threads. *out is owned by the caller.
 */
#ifndef COREDB_LEASES_H
#define COREDB_LEASES_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

#define CDB_LEASE_ROLE_PREFIX "coredb_lease_"
#define CDB_LEASE_SERVICE_NAME_MAX 128
#define CDB_LEASE_CONNECTION_LIMIT 5

/*
 * request {service_name, database_type: "postgresql", operation_type:
 * "read"|"write", ttl_seconds?} by any known caller. *out: {connection_id,
 * database_url, expires_at, service_name, operation_type, pool_stats:
 * {active, idle, waiting}}. POOL_EXHAUSTED (details.retry_after) when no
 * pooled connection is free within DB_POOL_ACQUIRE_TIMEOUT. RATE_LIMITED
 * (details {limit, retry_after}: seconds until the caller's earliest live
 * lease ends, at least 1) when the caller already holds LEASE_MAX_PER_USER
 * live leases, counted on coredb.leases so across instances.
 */
int cdb_lease_acquire(cdb_service *svc, const cdb_principal *caller, const json_t *request, json_t **out,
                      cdb_error *err);

/*
 * request {connection_id, service_name} (service_name optional for an
 * admin, who may release any lease). NOT_FOUND for an unknown, foreign,
 * expired or already released lease. In order: NOLOGIN, end its sessions,
 * REASSIGN/DROP OWNED, DROP ROLE, the pooled connection back to the pool.
 * *out: {status: "released", connection_id, duration_ms}.
 */
int cdb_lease_release(cdb_service *svc, const cdb_principal *caller, const json_t *request, json_t **out,
                      cdb_error *err);

/*
 * request NULL or {ttl_seconds?}: the live lease id (the caller's) now
 * ends ttl_seconds (default LEASE_TTL) from now, but never later than
 * LEASE_MAX_TTL after its creation. *out: {connection_id, expires_at}.
 */
int cdb_lease_renew(cdb_service *svc, const cdb_principal *caller, const char *id, const json_t *request,
                    json_t **out, cdb_error *err);

/*
 * Admin only: the live leases (service_name NULL = all) and this
 * instance's pool. *out: {leases: [{connection_id, service_name, user_id,
 * mode, created_at, expires_at, state}], pool_stats: {active, idle,
 * waiting, max}}.
 */
int cdb_lease_list(cdb_service *svc, const cdb_principal *caller, const char *service_name, json_t **out,
                   cdb_error *err);

/*
 * X-Connection-ID: binds lease id's reserved connection to this thread, so
 * the data calls it makes next (coredb/data.h) run on it, until
 * cdb_lease_use_end. NOT_FOUND for an unknown, foreign, expired or
 * released lease or one held by another instance (all alike), CONFLICT
 * while another call runs on it.
 */
int cdb_lease_use_begin(cdb_service *svc, const cdb_principal *caller, const char *id, cdb_error *err);
void cdb_lease_use_end(cdb_service *svc, const char *id);

/*
 * The reaper (every second on the job thread): ends expired leases and
 * leases whose instance is gone, and gives back this process's reserved
 * connections of leases ended elsewhere. *ended: how many it ended.
 */
int cdb_lease_reap(cdb_service *svc, int *ended, cdb_error *err);

#endif
