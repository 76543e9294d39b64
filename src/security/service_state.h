/*
 * service_state.h - the library's own view of a cdb_service: the handles
 * every module below service/ works with (configuration, pool, Redis,
 * caches, catalog, rate limits, token and password settings).
 *
 * The struct is opaque to embedders (include/coredb/service.h declares only
 * its name). It is defined here, at the top of the shared layers, so that
 * identity/, data/ and management/ can read their handles without an
 * upward include into service/; only service/service.c creates, fills and
 * frees it, and nothing below service/ writes its fields (except the
 * atomic maintenance flag, which a restore sets: security/maintenance.h).
 */
#ifndef COREDB_SECURITY_SERVICE_STATE_H
#define COREDB_SECURITY_SERVICE_STATE_H

#include "coredb/config.h"
#include "security/jwt.h"
#include "security/maintenance.h"
#include "security/password.h"
#include "security/ratelimit.h"
#include "store/cache.h"
#include "store/catalog.h"
#include "store/commit_lsn.h"
#include "store/devdb.h"
#include "store/pool.h"
#include "store/qcache.h"
#include "store/redis.h"
#include "store/replicas.h"

struct cdb_jobs;
struct cdb_migration_set;

typedef struct cdb_service cdb_service;

struct cdb_service {
    cdb_config *cfg;               /* not owned; outlives the service */
    char *conninfo;                /* primary PostgreSQL, owned */
    cdb_devdb *devdb;              /* embedded cluster or NULL */
    cdb_pool *pool;                /* NULL when opened without a pool */
    cdb_redis *redis;              /* NULL without REDIS_URL */
    cdb_cache *cache;              /* Redis-backed or in-process */
    struct cdb_migration_set *migrations; /* the files of cfg->migrations_dir, owned */
    cdb_ratelimit *ratelimit;      /* quotas and login-failure counters */
    cdb_catalog_cache *catalog;    /* tables and columns per role (NULL without a pool) */
    cdb_qcache *qcache;            /* data API result cache */
    cdb_jwt_config jwt;            /* from JWT_SECRET / JWT_ISSUER / JWT_AUDIENCE */
    cdb_password_params password;  /* argon2id parameters */
    struct cdb_jobs *jobs;         /* background jobs once started, else NULL */
    struct cdb_jobs *snapshot_jobs; /* the encrypted columns' snapshot refresh (data/jobs.h), idem */
    cdb_maintenance maintenance;   /* set by a restore (management/restore.c), atomic */
    struct cdb_colring *colring;   /* encrypted columns and their keys (security/colring.h) */
    cdb_replicas *replicas;        /* DATABASE_READ_URLS, or NULL (store/replicas.h) */
    cdb_commit_lsn *commit_lsn;    /* callers' last commit LSNs, with replicas only */
    /* cdb_encryption_on_progress (the CLI's progress line), or NULL */
    void (*encryption_progress)(void *arg, long rows_done, long rows_total, int pass);
    void *encryption_progress_arg;
    int loop_connections;          /* PostgreSQL connections of each HTTP loop (0: off) */
};

#endif
