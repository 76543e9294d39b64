/*
 * jobs.c - the data module's background jobs: the Redis outbox of committed
 * transactions (store/outbox.h), expiry of the transaction ledger
 * (store/ledger.h) and the encrypted columns' snapshot the loops read.
 */
#include "data/jobs.h"
#include "coredb/log.h"
#include "security/colring.h"
#include "security/service_state.h"
#include "store/ledger.h"
#include "store/outbox.h"

/* Redis operations of committed transactions that Redis did not take yet. */
static int flush_outbox(void *arg, cdb_error *err)
{
    cdb_service *svc = arg;
    int applied = 0, pending = 0;
    int rc = cdb_outbox_flush(svc->pool, svc->cache, &applied, &pending, err);
    if (rc == 0 && applied > 0)
        cdb_log_info("jobs.outbox_flushed", "applied %d pending Redis operations, %d left",
                     applied, pending);
    return rc;
}

/* Ledger rows past 24 h: their keys have expired, their outcomes are no longer answered. */
static int expire_ledger(void *arg, cdb_error *err)
{
    cdb_service *svc = arg;
    int deleted = 0;
    int rc = cdb_ledger_expire(svc->pool, &deleted, err);
    if (rc == 0 && deleted > 0)
        cdb_log_info("jobs.ledger_expired", "deleted %d transaction ledger rows older than 24 h", deleted);
    return rc;
}

/*
 * Keeps the encrypted columns' snapshot (security/colring.h) fresh, so the
 * event loops, which never load it, find it usable: a cache hit on a loop
 * needs to know that its table has no encrypted column.
 */
static int refresh_encryption_snapshot(void *arg, cdb_error *err)
{
    cdb_service *svc = arg;
    /* every tick, not only past the TTL: the loops use it only while it is younger than that */
    cdb_colset *cs = cdb__colring_refresh(svc, err);
    if (!cs)
        return err->code;
    cdb__colring_put(svc, cs);
    return 0;
}

int cdb_data_register_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    if (cdb_jobs_add(jobs, "flush_outbox", 1, flush_outbox, svc) < 0)
        return -1;
    return cdb_jobs_add(jobs, "expire_ledger", 60, expire_ledger, svc);
}

int cdb_data_register_snapshot_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    /* at once: until it has run, the loops hand every request they would plan to a worker; every
       500 ms: a reload must then stall 1.5 s, not 1 s, before the loops find it past 2 s */
    return cdb_jobs_add_ms(jobs, "refresh_encryption_snapshot", 500, 0, refresh_encryption_snapshot, svc);
}
