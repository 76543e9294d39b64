/*
 * service.h - the library's top object: one running coredb with its
 * configuration, PostgreSQL (embedded or external), pool, Redis, cache and
 * migrations. The HTTP server and the CLI both work through it, so a C
 * program can embed coredb the way they do.
 */
#ifndef COREDB_SERVICE_H
#define COREDB_SERVICE_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "coredb/cache.h"
#include "coredb/catalog.h"
#include "coredb/config.h"
#include "coredb/devdb.h"
#include "coredb/error.h"
#include "coredb/migrate.h"
#include "coredb/jwt.h"
#include "coredb/password.h"
#include "coredb/pool.h"
#include "coredb/qcache.h"
#include "coredb/ratelimit.h"
#include "coredb/redis.h"

#define CDB_SERVICE_NAME "core-database-service"
#define CDB_VERSION      "1.0.0"

typedef struct cdb_service {
    const cdb_config *cfg;         /* not owned; outlives the service */
    char *conninfo;                /* primary PostgreSQL, owned */
    cdb_devdb *devdb;              /* embedded cluster or NULL */
    cdb_pool *pool;                /* NULL when opened without a pool */
    cdb_redis *redis;              /* NULL without REDIS_URL */
    cdb_cache *cache;              /* Redis-backed or in-process */
    cdb_migration_set migrations;  /* the files of cfg->migrations_dir */
    cdb_ratelimit *ratelimit;      /* quotas and login-failure counters */
    cdb_catalog_cache *catalog;    /* tables and columns per role (NULL without a pool) */
    cdb_qcache *qcache;            /* data API result cache */
    cdb_jwt_config jwt;            /* from JWT_SECRET / JWT_ISSUER / JWT_AUDIENCE */
    cdb_password_params password;  /* argon2id parameters */
} cdb_service;

typedef struct cdb_service_options {
    bool with_pool;                /* false for one-shot CLI commands */
} cdb_service_options;

/*
 * Starts what the configuration asks for: the embedded PostgreSQL when no
 * database is configured, the pool (opened in the background: a server that
 * is down does not fail this call), Redis and the cache, and loads the
 * migration files. *out is owned by the caller (cdb_service_close).
 */
int  cdb_service_open(cdb_service **out, const cdb_config *cfg,
                      const cdb_service_options *opt, cdb_error *err);
/* Closes the pool and Redis and stops the embedded PostgreSQL. */
void cdb_service_close(cdb_service *svc);

/* A dedicated connection (migrations, maintenance); caller PQfinish()es it. */
PGconn *cdb_service_connect(cdb_service *svc, cdb_error *err);

/*
 * Applies pending migrations on a dedicated connection, retrying the connect
 * DB_CONNECT_RETRIES times with backoff. *out as cdb_migrate_up (may be NULL).
 */
int cdb_service_migrate(cdb_service *svc, const cdb_migrate_options *opt,
                        json_t **out, cdb_error *err);

#endif
