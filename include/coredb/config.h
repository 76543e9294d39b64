/*
 * config.h - the effective configuration, read from the environment.
 *
 * Every variable of API.md's configuration table is honoured with its
 * default. Secrets may come from NAME_FILE instead of NAME. Loading never
 * exits: it returns CDB_ERR_CONFIG_INVALID with a message naming the
 * variable, and the CLI turns that into exit code 2.
 *
 * Ownership: every char * in cdb_config is owned by it and freed by
 * cdb_config_destroy(). A loaded config is read-only and may be shared by
 * every thread.
 */
#ifndef COREDB_CONFIG_H
#define COREDB_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "coredb/log.h"

/* Where a variable's value came from (`coredb config` shows it). */
typedef enum cdb_config_source {
    CDB_CONFIG_DEFAULT = 0,   /* "default": the built-in or derived default */
    CDB_CONFIG_ENV,           /* "env": NAME in the environment (or POSTGRES_* for DATABASE_URL) */
    CDB_CONFIG_FILE,          /* "file": the file NAME_FILE names */
    CDB_CONFIG_SECRETS_FILE,  /* "var/secrets.env": the embedded mode's development secrets */
} cdb_config_source;

/* At least the number of variables of the table in config.c (checked there). */
#define CDB_CONFIG_MAX_VARS 96

typedef struct cdb_config {
    /* HTTP */
    char *host;                    /* HOST, default 0.0.0.0; 127.0.0.1 when embedded */
    int   port;                    /* PORT, 8095 */
    int   http_threads;            /* HTTP_THREADS, default: online cores */
    int   http_idle_timeout_s;     /* HTTP_IDLE_TIMEOUT, 60: idle keep-alive, stalled writes */
    int   http_header_timeout_s;   /* HTTP_HEADER_TIMEOUT, 10: whole request head, absolute */
    int   http_body_timeout_s;     /* HTTP_BODY_TIMEOUT, 30: whole request body, absolute */
    int   http_max_connections_per_ip; /* HTTP_MAX_CONNECTIONS_PER_IP, 256 (0 = no cap) */
    int   doc_max_bytes;           /* DOC_MAX_BYTES, 2097152: a document, patch or vector payload */
    char *trusted_proxies;         /* TRUSTED_PROXIES: peers whose X-Forwarded-For is believed; may be NULL */
    int   shutdown_grace_ms;       /* SHUTDOWN_GRACE_MS, 10000 */
    int   shutdown_drain_ms;       /* SHUTDOWN_DRAIN_MS, 0: /health/ready 503 before closing */

    /* PostgreSQL */
    char *database_url;            /* normalized libpq URI; NULL => embedded */
    char *database_read_urls;      /* normalized, comma-separated; may be NULL */
    char *postgres_schema;         /* POSTGRES_SCHEMA, public */
    bool  embedded;                /* true when no database was configured */
    int   db_pool_min;             /* 5 */
    int   db_pool_max;             /* 20 */
    int   db_loop_connections;     /* 2: PostgreSQL connections of each HTTP loop, out of db_pool_max; 0 = off */
    int   db_pool_idle_timeout_ms; /* 30000 */
    int   db_pool_acquire_timeout_ms; /* 5000 */
    int   db_statement_timeout_ms; /* 30000 */
    int   db_read_pool_max;        /* DB_READ_POOL_MAX per replica; 0 = db_pool_max */
    int   db_replica_max_lag_s;    /* DB_REPLICA_MAX_LAG, 5: further behind = out of rotation */
    int   db_replica_sample_ms;    /* DB_REPLICA_SAMPLE_MS, 1000: replica sampling period */
    char *db_sslmode;              /* prefer */
    int   db_connect_retries;      /* 5 */

    /* Redis */
    char *redis_url;               /* NULL => in-process cache */
    int   redis_pool_size;         /* 10 */
    char *redis_sentinels;         /* REDIS_SENTINELS: host:port,...; NULL => REDIS_URL's host */
    char *redis_master_name;       /* REDIS_MASTER_NAME, "mymaster" */
    char *redis_sentinel_password; /* REDIS_SENTINEL_PASSWORD(_FILE): AUTH to the sentinels */

    /* Secrets (may be NULL until the embedded mode generates them) */
    char *jwt_secret;
    char *db_encryption_key;       /* as given: base64 or hex */
    char *db_encryption_key_previous; /* the former master key: data keys are rewrapped at start */
    char *admin_email;             /* COREDB_ADMIN_EMAIL */
    char *admin_password;          /* COREDB_ADMIN_PASSWORD */

    /* Identity */
    int   access_token_ttl_s;      /* 900 */
    int   refresh_token_ttl_s;     /* 2592000 */
    int   session_timeout_s;       /* 1800 */
    int   session_max_lifetime_s;  /* 2592000 */
    int   session_max_per_user;    /* 5 */
    int   password_min_length;     /* 10 */
    int   login_max_failures;      /* 10 per LOGIN_FAILURE_WINDOW, per account */
    int   login_max_failures_per_address; /* 50 per window, per client address */
    int   login_failure_window_s;  /* 900 */
    int   password_hash_opslimit;  /* argon2id passes, 2 (libsodium INTERACTIVE) */
    int   password_hash_memlimit_kib; /* argon2id memory, 65536 KiB */
    int   auth_threads;            /* AUTH_THREADS: workers for password hashing, cores/2 */
    char *jwt_issuer;              /* JWT_ISSUER, "coredb" */
    char *jwt_audience;            /* JWT_AUDIENCE, "coredb-api" */
    int   jwt_clock_skew_s;        /* JWT_CLOCK_SKEW, 5 (0-60): leeway on exp, nbf, iat */

    /* Data */
    int   lease_ttl_s;             /* 300 */
    int   lease_max_ttl_s;         /* LEASE_MAX_TTL, 3600: cap of a lease's life from its creation */
    int   lease_max_per_user;      /* LEASE_MAX_PER_USER, 4: live leases one user may hold; 0 = no cap */
    int   cache_ttl_s;             /* 300; 0 turns the data API cache off */
    int   cache_l1_mb;             /* 32: the first-level caches of the event loops (all of them), MiB; 0 = off */
    int   rate_limit_anon;         /* 20 req/s */
    int   rate_limit_user;         /* 50 */
    int   rate_limit_premium;      /* 200 */
    int   rate_limit_admin;        /* 0 = off */

    /* Management */
    char *backup_dir;              /* ./var/backups */
    int   backup_retention_count;  /* 7 */
    int   backup_retention_days;   /* 30 */
    int   backup_interval_s;       /* BACKUP_INTERVAL, 0 = off */
    bool  backup_encrypt;          /* BACKUP_ENCRYPT: secretstream with a key from DB_ENCRYPTION_KEY */
    int   prometheus_port;         /* 9090, 0 = off */
    char *prometheus_host;         /* PROMETHEUS_HOST, 127.0.0.1 */
    bool  migrate_on_start;        /* true */
    char *migrations_dir;          /* MIGRATIONS_DIR, default <source>/migrations */
    char *var_dir;                 /* COREDB_VAR_DIR, ./var */
    char *pg_bindir;               /* PG_BINDIR, the installed PostgreSQL 15 binaries */

    /* Logging */
    cdb_log_level log_level;       /* LOG_LEVEL, info (debug when DEBUG=true) */
    bool  debug;                   /* DEBUG, false */

    /* cdb_config_source of each variable, in config.c's table order; read
     * and set through cdb_config_source_of / cdb_config_set_source */
    unsigned char sources[CDB_CONFIG_MAX_VARS];
} cdb_config;

/* Returns the value of an environment variable or NULL; ud is opaque. */
typedef const char *(*cdb_env_lookup)(const char *name, void *ud);

/* A lookup over the process environment (getenv). */
const char *cdb_env_process(const char *name, void *ud);

/*
 * Loads the configuration from lookup (cdb_env_process for the real
 * environment). On failure cfg is left destroyed and err names the variable.
 */
int  cdb_config_load(cdb_config *cfg, cdb_env_lookup lookup, void *ud, cdb_error *err);
void cdb_config_destroy(cdb_config *cfg);

/*
 * Normalizes a database URL: accepts postgresql://, postgres:// and
 * postgresql+asyncpg:// (and other "+driver" suffixes), returns a malloc'd
 * postgresql:// URI or NULL (err filled) when it cannot be parsed.
 */
char *cdb_config_normalize_database_url(const char *url, cdb_error *err);

/*
 * The effective configuration as a JSON object, variable name -> value, with
 * every secret (and the password inside any URL) replaced by "[redacted]",
 * then "embedded" and "sources" (variable name -> cdb_config_source_name).
 * Caller owns the result.
 */
json_t *cdb_config_to_json(const cdb_config *cfg);

/* Where variable name's value came from; CDB_CONFIG_DEFAULT for an unknown name. */
cdb_config_source cdb_config_source_of(const cdb_config *cfg, const char *name);
/* Records where name's value came from (the embedded mode's secrets file fills some). */
void cdb_config_set_source(cdb_config *cfg, const char *name, cdb_config_source src);
/* "default", "env", "file" or "var/secrets.env". */
const char *cdb_config_source_name(cdb_config_source src);

/* A copy of url with its password replaced by "[redacted]"; caller frees. */
char *cdb_config_redact_url(const char *url);

#endif
