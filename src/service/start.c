/*
 * start.c - cdb_service_start(): everything `coredb serve` does before it
 * listens, so an embedder starts the service the way the CLI does. The
 * order is the one serving needs: the schema first (migrations), then what
 * reads it (the first admin, the catalog), then what runs beside requests
 * (the background jobs, each registered by the module that owns it).
 */
#include <stdbool.h>
#include <string.h>

#include "coredb/users.h"
#include "coredb/encryption.h"
#include "coredb/log.h"
#include "coredb/service.h"
#include "core/jobs.h"
#include "data/jobs.h"
#include "identity/jobs.h"
#include "management/jobs.h"
#include "management/sizing.h"
#include "security/service_state.h"
#include "service/service_internal.h"

int cdb_service_migrate_on_start(cdb_service *svc, const char *applied_by, cdb_error *err)
{
    if (!svc->cfg->migrate_on_start)
        return 0;
    json_t *result = NULL;
    cdb_migrate_options mo = {.applied_by = applied_by};
    int rc = cdb_service_migrate(svc, &mo, &result, err);
    json_decref(result);
    return rc;
}

int cdb_service_start(cdb_service *svc, cdb_error *err)
{
    const cdb_config *cfg = svc->cfg;

    if (!svc->pool)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cdb_service_start needs a service opened with a pool");
    if (svc->jobs || svc->snapshot_jobs)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "The service is already started");
    if (cdb_service_migrate_on_start(svc, "coredb serve", err) < 0)
        return err->code;
    if (cdb_encryption_check_start(svc, err) < 0)
        return err->code;
    /* how many instances of this pool the server has room for (docs/deployment.md) */
    cdb_sizing_check_start(svc);
    if (cfg->admin_email && cfg->admin_password) {
        bool created = false;
        if (cdb_users_ensure_admin(svc, cfg->admin_email, NULL, cfg->admin_password, &created, err) < 0)
            return err->code;
        if (created && cfg->embedded)
            cdb_log_info("serve.admin_created",
                         "created the first admin %s; its password is COREDB_ADMIN_PASSWORD in %s/secrets.env",
                         cfg->admin_email, cfg->var_dir);
        else if (created)
            cdb_log_info("serve.admin_created", "created the first admin %s", cfg->admin_email);
    }
    /* The catalog follows DDL and grants through NOTIFY from here on; load it
     * now so the first data request does not pay for it. */
    if (cdb_catalog_cache_refresh(svc->catalog, err) < 0) {
        cdb_log_warn("serve.catalog", "catalog not loaded yet (%s); retried on first use",
                     err->message);
        cdb_error_destroy(err);
    }
    if (cdb_catalog_cache_listen(svc->catalog, svc->conninfo, err) < 0)
        return err->code;
    /* The loops' Redis connections go where the pool's last connect went (a
     * Sentinel master, a name resolved): connect it once now. */
    if (svc->redis) {
        int64_t rtt;
        cdb_error ping_err;
        cdb_error_init(&ping_err);
        if (cdb_redis_ping(svc->redis, &rtt, NULL, 0, &ping_err) < 0)
            cdb_log_warn("serve.redis", "Redis not reachable yet (%s); the loops wait for it", ping_err.message);
        cdb_error_destroy(&ping_err);
    }
    /* The deployment's namespace names the cache keys and the channel of the
     * first-level caches' invalidations: known now, this instance hears (and
     * tells) every write and ended session from its first request on. */
    if (cdb_qcache_ensure_namespace(svc->qcache, svc->pool, err) < 0) {
        cdb_log_warn("serve.namespace", "deployment namespace not loaded yet (%s); retried on first use",
                     err->message);
        cdb_error_destroy(err);
    }
    /* Builds the dummy hash unknown emails are checked against, so the first
     * such login costs what every later one does. */
    cdb_password_burn(&svc->password, "", 0);

    if (cfg->embedded && cfg->host && strcmp(cfg->host, "127.0.0.1") == 0)
        cdb_log_info("serve.loopback_only",
                     "listening on 127.0.0.1 only (development database: trust auth, generated admin); "
                     "set HOST=0.0.0.0 to accept other machines");

    if (cdb__service_metrics_start(svc) < 0)
        cdb_log_warn("serve.metrics", "too many metrics collectors: the service's gauges are not scraped");

    cdb_jobs *snapshot = cdb_jobs_new();
    if (!snapshot || cdb_data_register_snapshot_jobs(svc, snapshot) < 0 || cdb_jobs_start(snapshot) < 0) {
        /* the loops then hand what they would plan to the workers, which load the snapshot themselves */
        cdb_log_warn("serve.jobs", "the encrypted columns' snapshot refresh not started");
        cdb_jobs_free(snapshot);
        snapshot = NULL;
    }
    svc->snapshot_jobs = snapshot;
    cdb_jobs *jobs = cdb_jobs_new();
    if (!jobs || cdb_identity_register_jobs(svc, jobs) < 0 || cdb_data_register_jobs(svc, jobs) < 0 ||
        cdb_management_register_jobs(svc, jobs) < 0 || cdb_lease_register_jobs(svc, jobs) < 0 ||
        cdb_encryption_register_jobs(svc, jobs) < 0 ||
        cdb_jobs_start(jobs) < 0) {
        /* as before: the service runs without its jobs rather than not at all */
        cdb_log_warn("serve.jobs", "background jobs not started");
        cdb_jobs_free(jobs);
        return 0;
    }
    svc->jobs = jobs;
    return 0;
}
