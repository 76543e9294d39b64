/*
 * service.c - assembles a running coredb from its configuration.
 *
 * Order matters: the embedded PostgreSQL (if any) must run before the pool
 * and the migrator can connect; the cache needs Redis. Closing undoes it in
 * reverse. Nothing here talks HTTP.
 */
#include <sodium.h>

#include "coredb/log.h"
#include "coredb/principal.h"
#include "core/jobs.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/health.h"
#include "management/migrate_internal.h"
#include "security/colring.h"
#include "security/service_state.h"
#include "data/vectors.h"
#include "service/service_internal.h"
#include "store/devsecrets.h"
#include "store/outbox.h"
#include "store/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    int rc = cdb_outbox_flush(svc->pool, svc->cache, &applied, &pending, &err);
    cdb_error_destroy(&err);
    return rc == 0 && pending == 0 ? 0 : -1;
}

/*
 * One pool per DATABASE_READ_URLS replica, with the primary's settings
 * (DB_READ_POOL_MAX, when set, sizes them). A replica that is down does not
 * fail this: it stays out of rotation until the sampler reaches it.
 */
static int open_replicas(cdb_service *svc, const cdb_config *cfg, cdb_error *err)
{
    int max = cfg->db_read_pool_max > 0 ? cfg->db_read_pool_max : cfg->db_pool_max;
    cdb_replicas_options ro = {
        .urls = cfg->database_read_urls,
        .pool = {
            .sslmode = cfg->db_sslmode,
            .application_name = "coredb-read",
            .min_size = cfg->db_pool_min < max ? cfg->db_pool_min : max,
            .max_size = max,
            .idle_timeout_ms = cfg->db_pool_idle_timeout_ms,
            .acquire_timeout_ms = cfg->db_pool_acquire_timeout_ms,
            .statement_timeout_ms = cfg->db_statement_timeout_ms,
        },
        .primary = svc->pool,
        .max_lag_s = cfg->db_replica_max_lag_s,
        .sample_ms = cfg->db_replica_sample_ms,
    };
    if (!(svc->commit_lsn = cdb_commit_lsn_new(svc->redis, cfg->session_timeout_s)))
        return cdb_error_oom(err);
    if (!(svc->replicas = cdb_replicas_new(&ro, err)))
        return err->code ? err->code : CDB_ERR_INTERNAL_ERROR;
    /* every cache lookup reads the last commit LSN with the generation (docs/replicas.md) */
    if (svc->redis)
        cdb_qcache_track_lsn(svc->qcache, CDB_COMMIT_LSN_LAST_KEY);
    return 0;
}

/*
 * The HTTP loops' share of DB_POOL_MAX (store/pg_async.h): each API loop
 * owns DB_LOOP_CONNECTIONS (the Prometheus listener's loop none), and the
 * blocking pool keeps the rest, returned. When that would leave the pool
 * fewer than max(DB_POOL_MIN, 2) connections (the workers still run every
 * write, every miss the loops hand off, and every admin call), the loops
 * get none and the feature is off, said once in the log.
 */
static int pool_share(const cdb_config *cfg, bool http_loops, int *per_loop)
{
    *per_loop = 0;
    if (!http_loops || cfg->db_loop_connections <= 0)
        return cfg->db_pool_max;
    long share = (long)cfg->http_threads * cfg->db_loop_connections;
    long keep = cfg->db_pool_min > 2 ? cfg->db_pool_min : 2;
    if (cfg->db_pool_max - share < keep) {
        cdb_log_info("pool.loop_share_off", "DB_POOL_MAX %d cannot give %d loops %d connections each and keep "
                     "%ld for the workers: misses run on workers", cfg->db_pool_max, cfg->http_threads,
                     cfg->db_loop_connections, keep);
        return cfg->db_pool_max;
    }
    *per_loop = cfg->db_loop_connections;
    cdb_log_info("pool.loop_share", "%d loops own %d PostgreSQL connections each; the pool keeps %ld",
                 cfg->http_threads, cfg->db_loop_connections, cfg->db_pool_max - share);
    return (int)(cfg->db_pool_max - share);
}

int cdb_service_open(cdb_service **out, cdb_config *cfg,
                     const cdb_service_options *opt, cdb_error *err)
{
    /* The one call of the library: idempotent and thread-safe, so a second
     * service in the same process costs nothing. Everything that draws
     * random bytes or hashes runs after an open. */
    if (sodium_init() < 0)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "libsodium failed to initialize");
    if (cfg->embedded && cdb_devsecrets_load(cfg, cfg->var_dir, err) < 0)
        return err->code;
    cdb_service *svc = calloc(1, sizeof *svc);
    if (!svc)
        return cdb_error_oom(err);
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
            cdb_error_oom(err);
            goto fail;
        }
    }

    if (!(svc->migrations = calloc(1, sizeof *svc->migrations))) {
        cdb_error_oom(err);
        goto fail;
    }
    if (cdb_migrations_load(cfg->migrations_dir, svc->migrations, err) < 0)
        goto fail;

    if (opt && opt->with_pool) {
        int blocking_max = pool_share(cfg, opt->http_loops, &svc->loop_connections);
        cdb_pool_options po = {
            .conninfo = svc->conninfo,
            .sslmode = cfg->embedded ? NULL : cfg->db_sslmode,
            .application_name = "coredb",
            .min_size = cfg->db_pool_min,
            .max_size = blocking_max,
            .idle_timeout_ms = cfg->db_pool_idle_timeout_ms,
            .acquire_timeout_ms = cfg->db_pool_acquire_timeout_ms,
            .statement_timeout_ms = cfg->db_statement_timeout_ms,
        };
        svc->pool = cdb_pool_new(&po, err);
        if (!svc->pool)
            goto fail;
        svc->catalog = cdb_catalog_cache_new(svc->pool, cfg->postgres_schema);
        if (!svc->catalog) {
            cdb_error_oom(err);
            goto fail;
        }
    }

    if (cfg->redis_url || cfg->redis_sentinels) {
        cdb_redis_options ro = {.url = cfg->redis_url, .pool_size = cfg->redis_pool_size,
                                .sentinels = cfg->redis_sentinels,
                                .master_name = cfg->redis_master_name,
                                .sentinel_password = cfg->redis_sentinel_password};
        svc->redis = cdb_redis_new(&ro, err);
        if (!svc->redis)
            goto fail;
    }
    svc->cache = cdb_cache_new(svc->redis, CACHE_MAX_ENTRIES);
    svc->ratelimit = cdb_ratelimit_new(svc->redis);
    svc->qcache = cdb_qcache_new(svc->cache, cfg->cache_ttl_s);
    svc->colring = cdb__colring_new();
    if (!svc->cache || !svc->ratelimit || !svc->qcache || !svc->colring) {
        cdb_error_oom(err);
        goto fail;
    }
    if (svc->pool && cfg->database_read_urls && *cfg->database_read_urls &&
        open_replicas(svc, cfg, err) < 0)
        goto fail;
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
    cdb__service_metrics_stop(svc);  /* scrapes read the pool and Redis */
    cdb__migration_runs_stop(svc);   /* a run thread uses the catalog, cache and files */
    cdb_jobs_free(svc->jobs);      /* first: the jobs use everything below */
    cdb_jobs_free(svc->snapshot_jobs);
    cdb_qcache_free(svc->qcache);
    cdb__vec_cache_forget(svc);     /* the vector store's in-memory copy */
    cdb__colring_free(svc->colring);
    cdb_ratelimit_free(svc->ratelimit);
    cdb_catalog_cache_free(svc->catalog);
    cdb_cache_free(svc->cache);
    cdb_replicas_free(svc->replicas);  /* its sampler reads the primary pool */
    cdb_commit_lsn_free(svc->commit_lsn);
    cdb_redis_free(svc->redis);
    cdb_pool_free(svc->pool);
    if (svc->migrations)
        cdb_migrations_free(svc->migrations);
    free(svc->migrations);
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
    int64_t started_us = cdb_mono_us();
    int rc = cdb_migrate_up(conn, svc->migrations, opt, &result, err);
    if (!opt || !opt->dry_run)
        cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    PQfinish(conn);
    if (out)
        *out = result;
    else
        json_decref(result);
    return rc;
}

int cdb_service_migration(cdb_service *svc, cdb_migration_command command,
                          const cdb_migrate_options *opt, int steps, json_t **out, cdb_error *err)
{
    int rc;
    /* the operator's command (`coredb migrate`), recorded in the audit log */
    const cdb_principal operator = {.role = CDB_ROLE_ADMIN};
    PGconn *conn = cdb_service_connect(svc, err);
    if (!conn)
        return err->code;
    int64_t started_us = cdb_mono_us();
    switch (command) {
    case CDB_MIGRATION_STATUS:
        rc = cdb_migrate_ensure_history(conn, err);
        if (rc == 0)
            rc = cdb_migrate_status(conn, svc->migrations, out, err);
        break;
    case CDB_MIGRATION_UP:
        rc = cdb_migrate_up(conn, svc->migrations, opt, out, err);
        cdb__migrate_audit(svc, &operator, true,
                           json_pack("{s:s?, s:b}", "target_version", opt ? opt->target_version : NULL,
                                     "dry_run", opt && opt->dry_run),
                           rc == 0 ? *out : NULL, rc);
        break;
    case CDB_MIGRATION_DOWN:
    default:
        rc = cdb_migrate_down(conn, svc->migrations, steps, opt, out, err);
        cdb__migrate_audit(svc, &operator, false, json_pack("{s:i, s:b}", "steps", steps, "dry_run", opt && opt->dry_run),
                           rc == 0 ? *out : NULL, rc);
        break;
    }
    if (command != CDB_MIGRATION_STATUS && (!opt || !opt->dry_run))
        cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    PQfinish(conn);
    return rc;
}

const cdb_config *cdb_service_config(const cdb_service *svc)
{
    return svc->cfg;
}

const cdb_migration_set *cdb_service_migrations(const cdb_service *svc)
{
    return svc->migrations;
}

cdb_ratelimit *cdb_service_ratelimit(cdb_service *svc)
{
    return svc->ratelimit;
}

int cdb_service_loop_connections(cdb_service *svc)
{
    return svc->loop_connections;
}

cdb_pool *cdb_service_pool(cdb_service *svc)
{
    return svc->pool;
}

cdb_redis *cdb_service_redis(cdb_service *svc)
{
    return svc->redis;
}

cdb_qcache *cdb_service_qcache(cdb_service *svc)
{
    return svc->qcache;
}

cdb_inval *cdb_service_inval(cdb_service *svc)
{
    return cdb_cache_inval(svc->cache);
}

uint64_t cdb_service_catalog_version(cdb_service *svc)
{
    return cdb_catalog_cache_version(svc->catalog);
}

static cdb_health_deps health_deps(const cdb_service *svc)
{
    return (cdb_health_deps){
        .pool = svc->pool,
        .redis = svc->redis,
        .acquire_timeout_ms = svc->cfg->db_pool_acquire_timeout_ms,
        .migrations = svc->migrations,
        .replicas = svc->replicas,
    };
}

int64_t cdb_service_maintenance_since(cdb_service *svc)
{
    return cdb__maintenance_since(&svc->maintenance, svc->redis, svc->qcache);
}

bool cdb_service_maintenance_poll_due(cdb_service *svc, int64_t *since, char *key, size_t len)
{
    return cdb__maintenance_poll_due(&svc->maintenance, svc->redis, svc->qcache, since, key, len);
}

void cdb_service_maintenance_polled(cdb_service *svc, const char *value)
{
    cdb__maintenance_polled(&svc->maintenance, value);
}

/* checks.maintenance: {status: "ACTIVE", since} while a restore runs, else {status: "OFF"}. */
static void add_maintenance(cdb_service *svc, json_t *report)
{
    json_t *checks = json_object_get(report, "checks");
    int64_t since = cdb_service_maintenance_since(svc);
    json_t *m = json_object();
    json_object_set_new(m, "status", json_string(since ? "ACTIVE" : "OFF"));
    if (since) {
        char ts[32];
        time_t t = (time_t)since;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(m, "since", json_string(ts));
    }
    json_object_set_new(checks, "maintenance", m);
}

cdb_health_status cdb_service_health(cdb_service *svc, json_t **out)
{
    cdb_health_deps d = health_deps(svc);
    cdb_health_status s = cdb_health_check(&d, out);
    if (*out)
        add_maintenance(svc, *out);
    return s;
}

cdb_health_status cdb_service_ready(cdb_service *svc, json_t **out)
{
    cdb_health_deps d = health_deps(svc);
    return cdb_health_check_ready(&d, out);
}

int cdb_service_test_sleep(cdb_service *svc, double seconds, cdb_error *err)
{
    char arg[32];
    snprintf(arg, sizeof arg, "%.3f", seconds);
    const char *params[1] = {arg};
    cdb_pool_conn *conn = svc->pool ? cdb_pool_acquire(svc->pool, 0, err) : NULL;
    if (!conn)
        return svc->pool ? err->code
                         : cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
    int rc = cdb_pg_exec(cdb_pool_conn_pg(conn), "SELECT pg_sleep($1::float8)", 1, params, NULL, err);
    cdb_pool_release(svc->pool, conn);
    return rc;
}
