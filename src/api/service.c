/*
 * service.c - assembles a running coredb from its configuration.
 *
 * Order matters: the embedded PostgreSQL (if any) must run before the pool
 * and the migrator can connect; the cache needs Redis. Closing undoes it in
 * reverse. Nothing here talks HTTP.
 */
#include "coredb/service.h"
#include "coredb/data.h"
#include "coredb/log.h"
#include "coredb/pg.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CACHE_MAX_ENTRIES 100000

/*
 * The query cache's resync after a Redis outage: apply what the outbox
 * holds (generation bumps included). 0 once nothing is pending.
 */
static int resync_outbox(void *arg)
{
    cdb_service *svc = arg;
    int applied = 0, pending = 0;
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb_data_outbox_flush(svc, &applied, &pending, &err);
    cdb_error_destroy(&err);
    return rc == 0 && pending == 0 ? 0 : -1;
}

int cdb_service_open(cdb_service **out, const cdb_config *cfg,
                     const cdb_service_options *opt, cdb_error *err)
{
    cdb_service *svc = calloc(1, sizeof *svc);
    if (!svc)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
    svc->cfg = cfg;
    svc->jwt = (cdb_jwt_config){
        .secret = (const unsigned char *)cfg->jwt_secret,
        .secret_len = cfg->jwt_secret ? strlen(cfg->jwt_secret) : 0,
        .issuer = cfg->jwt_issuer,
        .audience = cfg->jwt_audience,
        .leeway_s = cfg->jwt_clock_skew_s,
    };
    svc->password = (cdb_password_params){
        .opslimit = (unsigned long long)cfg->password_hash_opslimit,
        .memlimit = (size_t)cfg->password_hash_memlimit_kib * 1024,
    };

    if (cfg->embedded) {
        svc->devdb = cdb_devdb_start(cfg->var_dir, cfg->pg_bindir, &svc->conninfo, err);
        if (!svc->devdb)
            goto fail;
    } else {
        svc->conninfo = strdup(cfg->database_url);
        if (!svc->conninfo) {
            cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
            goto fail;
        }
    }

    if (cdb_migrations_load(cfg->migrations_dir, &svc->migrations, err) < 0)
        goto fail;

    if (opt && opt->with_pool) {
        cdb_pool_options po = {
            .conninfo = svc->conninfo,
            .sslmode = cfg->embedded ? NULL : cfg->db_sslmode,
            .application_name = "coredb",
            .min_size = cfg->db_pool_min,
            .max_size = cfg->db_pool_max,
            .idle_timeout_ms = cfg->db_pool_idle_timeout_ms,
            .acquire_timeout_ms = cfg->db_pool_acquire_timeout_ms,
            .statement_timeout_ms = cfg->db_statement_timeout_ms,
        };
        svc->pool = cdb_pool_new(&po, err);
        if (!svc->pool)
            goto fail;
        svc->catalog = cdb_catalog_cache_new(svc->pool, cfg->postgres_schema);
        if (!svc->catalog) {
            cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
            goto fail;
        }
    }

    if (cfg->redis_url) {
        cdb_redis_options ro = {.url = cfg->redis_url, .pool_size = cfg->redis_pool_size};
        svc->redis = cdb_redis_new(&ro, err);
        if (!svc->redis)
            goto fail;
    }
    svc->cache = cdb_cache_new(svc->redis, CACHE_MAX_ENTRIES);
    svc->ratelimit = cdb_ratelimit_new(svc->redis);
    svc->qcache = cdb_qcache_new(svc->cache, cfg->cache_ttl_s);
    if (!svc->cache || !svc->ratelimit || !svc->qcache) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
        goto fail;
    }
    if (svc->pool)
        cdb_qcache_set_resync(svc->qcache, svc->redis, resync_outbox, svc);
    *out = svc;
    return 0;

fail:
    cdb_service_close(svc);
    return err && err->code ? err->code : CDB_ERR_INTERNAL_ERROR;
}

void cdb_service_close(cdb_service *svc)
{
    if (!svc)
        return;
    cdb_qcache_free(svc->qcache);
    cdb_ratelimit_free(svc->ratelimit);
    cdb_catalog_cache_free(svc->catalog);
    cdb_cache_free(svc->cache);
    cdb_redis_free(svc->redis);
    cdb_pool_free(svc->pool);
    cdb_migrations_free(&svc->migrations);
    cdb_devdb_stop(svc->devdb);
    free(svc->conninfo);
    free(svc);
}

PGconn *cdb_service_connect(cdb_service *svc, cdb_error *err)
{
    cdb_pg_settings s = {
        .conninfo = svc->conninfo,
        .sslmode = svc->cfg->embedded ? NULL : svc->cfg->db_sslmode,
        .application_name = "coredb-maintenance",
    };
    return cdb_pg_connect(&s, err);
}

int cdb_service_migrate(cdb_service *svc, const cdb_migrate_options *opt,
                        json_t **out, cdb_error *err)
{
    PGconn *conn = NULL;
    int retries = svc->cfg->db_connect_retries;
    useconds_t backoff_us = 250000;
    for (int attempt = 0;; attempt++) {
        cdb_error_destroy(err);
        conn = cdb_service_connect(svc, err);
        if (conn || attempt >= retries)
            break;
        cdb_log_warn("migrate.connect_retry", "PostgreSQL not reachable, retry %d of %d",
                     attempt + 1, retries);
        usleep(backoff_us);
        if (backoff_us < 4000000)
            backoff_us *= 2;
    }
    if (!conn)
        return err->code;
    json_t *result = NULL;
    int rc = cdb_migrate_up(conn, &svc->migrations, opt, &result, err);
    PQfinish(conn);
    if (out)
        *out = result;
    else
        json_decref(result);
    return rc;
}
