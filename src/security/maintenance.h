/*
 * maintenance.h - the maintenance flag of a restore (coredb/restore.h):
 * while it is set the data API answers 503 MAINTENANCE with Retry-After and
 * /health reports it.
 *
 * Two places hold it. The local flag (this process) is set and cleared by
 * the restore that runs here. The shared flag is a Redis key of the
 * deployment ("coredb:<ns>:maintenance", value = since, in Unix seconds)
 * with a short TTL that the running restore refreshes, so a restore whose
 * process dies cannot leave every instance in maintenance for longer than
 * the TTL. Other instances read the key at most every
 * CDB_MAINTENANCE_POLL_MS, so a data request costs no Redis round trip
 * most of the time. Without Redis (or before this instance knows its
 * deployment id) only the local flag exists: other instances do not see
 * the maintenance.
 *
 * The fields live in cdb_service (security/service_state.h), zero = off;
 * all access is atomic, so any thread may call these.
 */
#ifndef COREDB_SECURITY_MAINTENANCE_H
#define COREDB_SECURITY_MAINTENANCE_H

#include <stdatomic.h>
#include <stdint.h>

#include "store/qcache.h"
#include "store/redis.h"

#define CDB_MAINTENANCE_TTL_S 30          /* the Redis key's TTL, refreshed while running */
#define CDB_MAINTENANCE_POLL_MS 500       /* how often another instance re-reads the key */
#define CDB_MAINTENANCE_RETRY_AFTER_S 5   /* the Retry-After of a 503 MAINTENANCE */

typedef struct cdb_maintenance {
    _Atomic int64_t local_since;          /* Unix seconds, 0 = off */
    _Atomic int64_t remote_since;         /* last value read from Redis, 0 = off */
    _Atomic int64_t remote_checked_ms;    /* cdb_mono_ms() of that read */
} cdb_maintenance;

/* Sets the local flag and the Redis key (redis/qc may be NULL: local only). */
void cdb__maintenance_begin(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc);
/* Re-arms the Redis key's TTL during a long restore. */
void cdb__maintenance_refresh(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc);
/* Clears both. */
void cdb__maintenance_end(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc);
/* Since when (Unix seconds) this or another instance is in maintenance; 0 = not. */
int64_t cdb__maintenance_since(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc);
/*
 * The same for a caller that reads the key itself (the event loops'
 * asynchronous Redis): *since as known now, and true when a re-read is due,
 * with the key (len >= 256) in key and the poll claimed (other callers go
 * by the last value meanwhile); give what GET returned (NULL: nil) to
 * _polled. A poll that gets no answer is retried after CDB_MAINTENANCE_POLL_MS.
 */
bool cdb__maintenance_poll_due(cdb_maintenance *m, cdb_redis *redis, cdb_qcache *qc, int64_t *since, char *key,
                               size_t len);
void cdb__maintenance_polled(cdb_maintenance *m, const char *value);

#endif
