/*
 * service.h - the library's top object: one running coredb with its
 * configuration, PostgreSQL (embedded or external), pool, Redis, cache,
 * migrations and background jobs. The HTTP server and the CLI both work
 * through it, and so can any C program (examples/embed.c):
 *
 *     cdb_config cfg;                     cdb_config_load(&cfg, cdb_env_process, NULL, &err);
 *     cdb_service *svc;                   cdb_service_open(&svc, &cfg, &(cdb_service_options){.with_pool = true}, &err);
 *     cdb_service_start(svc, &err);       ... cdb_users_create(svc, ...), cdb_data_query(svc, ...) ...
 *     cdb_service_close(svc);             cdb_config_destroy(&cfg);
 *
 * The struct is opaque: what a program needs of it has a function here.
 */
#ifndef COREDB_SERVICE_H
#define COREDB_SERVICE_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/config.h"
#include "coredb/error.h"
#include "coredb/health.h"
#include "coredb/migrate.h"
#include "coredb/version.h"

typedef struct cdb_service cdb_service;

typedef struct cdb_service_options {
    bool with_pool;                /* false for one-shot CLI commands */
    bool http_loops;               /* coredb serve: the HTTP loops take DB_LOOP_CONNECTIONS each of the pool */
} cdb_service_options;

/*
 * Starts what the configuration asks for: the embedded PostgreSQL when no
 * database is configured (then cfg's missing secrets are filled from the
 * development secrets file, <var_dir>/secrets.env, generated on first use),
 * the pool (opened in the background: a server that is down does not fail
 * this call), Redis and the cache, and loads the migration files. Also
 * initializes libsodium, once per process. cfg is not copied: it must
 * outlive the service. *out is owned by the caller (cdb_service_close).
 */
int  cdb_service_open(cdb_service **out, cdb_config *cfg,
                      const cdb_service_options *opt, cdb_error *err);

/*
 * Everything `coredb serve` does before it listens, on a service opened
 * with a pool: pending migrations (when MIGRATE_ON_START), the first admin
 * (COREDB_ADMIN_EMAIL / COREDB_ADMIN_PASSWORD, or the development secrets),
 * the catalog loaded and its LISTEN started, the password hash warmed up,
 * and the background jobs started (session reaping, the Redis outbox,
 * ledger expiry). Blocking. Call once, before serving requests.
 *
 * Signals: cdb_service_open (the pool) and this call start threads, which
 * inherit the signal mask of the thread that calls them. A process-directed
 * signal goes to any thread that does not block it, and with its default
 * action (SIGTERM, SIGINT, SIGHUP) it ends the process without
 * cdb_service_close: an embedded PostgreSQL is then left running until the
 * next coredb on the same var_dir adopts it (and stops it at its exit). A
 * program that wants to stop cleanly on a signal blocks it in main() before
 * cdb_service_open (cdb_http_block_stop_signals does it for the signals
 * cdb_http_server_run waits for) and waits for it in one thread (sigwait),
 * then calls cdb_service_close. The service changes no signal's
 * disposition and no mask of the caller's threads.
 */
int  cdb_service_start(cdb_service *svc, cdb_error *err);

/*
 * The migrations part of cdb_service_start alone, for a one-shot command
 * that needs the schema (`coredb user create`): applies pending migrations
 * when MIGRATE_ON_START (recorded as applied_by), else does nothing.
 */
int  cdb_service_migrate_on_start(cdb_service *svc, const char *applied_by, cdb_error *err);

/*
 * Stops the background jobs, closes the pool and Redis and leaves the
 * embedded PostgreSQL, stopping it unless another live coredb on the same
 * var_dir still uses it (the last one out stops it). NULL is a no-op.
 */
void cdb_service_close(cdb_service *svc);

/* The configuration the service was opened with (not owned). */
const cdb_config *cdb_service_config(const cdb_service *svc);
/* The migration files loaded at open (not owned), for cdb_migrate_* on cdb_service_connect(). */
const cdb_migration_set *cdb_service_migrations(const cdb_service *svc);

/* A dedicated connection (migrations, maintenance); caller PQfinish()es it. */
PGconn *cdb_service_connect(cdb_service *svc, cdb_error *err);

/*
 * Applies pending migrations on a dedicated connection, retrying the connect
 * DB_CONNECT_RETRIES times with backoff. *out as cdb_migrate_up (may be NULL).
 */
int cdb_service_migrate(cdb_service *svc, const cdb_migrate_options *opt,
                        json_t **out, cdb_error *err);

/* What `coredb migrate` asks of the service (the CLI holds no connection). */
typedef enum cdb_migration_command {
    CDB_MIGRATION_STATUS,          /* history, pending files, current version */
    CDB_MIGRATION_UP,              /* opt: target, dry run, applied_by */
    CDB_MIGRATION_DOWN,            /* the last `steps` applied migrations */
} cdb_migration_command;

/*
 * Runs one migration command on a dedicated connection (no retry: a
 * command line answers at once). *out as cdb_migrate_status/up/down.
 */
int cdb_service_migration(cdb_service *svc, cdb_migration_command command,
                          const cdb_migrate_options *opt, int steps, json_t **out, cdb_error *err);

/* The full health report of API.md into *out (caller owns). Blocking. */
cdb_health_status cdb_service_health(cdb_service *svc, json_t **out);
/* Readiness: UP when PostgreSQL answers and no migration is pending, else DOWN. Blocking. */
cdb_health_status cdb_service_ready(cdb_service *svc, json_t **out);

#endif
