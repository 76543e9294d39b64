/*
 * migrate.h - the migration engine.
 *
 * Migrations are files migrations/YYYYMMDD_NNN_description.sql with a
 * "-- migrate:up" and a "-- migrate:down" section; "-- migrate:no-transaction"
 * anywhere before "-- migrate:up" runs the file outside a transaction.
 * The version is "YYYYMMDD_NNN"; files apply in version order.
 *
 * History lives in coredb.schema_migrations (version, description, checksum
 * = SHA-256 hex of the whole file, applied_at, duration_ms, applied_by).
 * Before anything runs every applied file's checksum is compared with the
 * file on disk (MIGRATION_CHECKSUM_MISMATCH). A session advisory lock, taken
 * with a timeout, serializes migrators across processes (MIGRATION_LOCKED).
 * A failed migration rolls back and the error names the file and the
 * statement that failed.
 *
 * The engine runs on a dedicated blocking PGconn the caller opens and
 * closes (not a pooled one: the advisory lock is per session).
 */
#ifndef COREDB_MIGRATE_H
#define COREDB_MIGRATE_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"

typedef struct cdb_migration {
    char *version;        /* "20240115_001" */
    char *description;    /* "create users" (underscores become spaces) */
    char *filename;       /* base name */
    char *up_sql;
    char *down_sql;       /* may be empty: irreversible */
    bool  no_transaction;
    char  checksum[65];   /* SHA-256 hex of the file's bytes */
} cdb_migration;

typedef struct cdb_migration_set {
    cdb_migration *items; /* sorted by version */
    size_t count;
} cdb_migration_set;

/*
 * Parses one file's text (pure, no I/O). filename must match the naming
 * rule. Returns 0 or VALIDATION_FAILED with a message saying what is wrong.
 * The migration's strings are owned by out (cdb_migration_destroy).
 */
int  cdb_migration_parse(const char *filename, const char *text, size_t len,
                         cdb_migration *out, cdb_error *err);
void cdb_migration_destroy(cdb_migration *m);

/* Loads and parses every *.sql file of dir; duplicate versions are an error. */
int  cdb_migrations_load(const char *dir, cdb_migration_set *out, cdb_error *err);
void cdb_migrations_free(cdb_migration_set *set);

typedef struct cdb_migrate_options {
    const char *target_version;   /* NULL: latest (up) */
    bool dry_run;                 /* run inside a transaction, then roll back */
    const char *applied_by;       /* recorded in history; NULL: "coredb" */
    int lock_timeout_ms;          /* advisory lock wait; 0: 30000 */
    /* NULL, or called before each file of up/down runs (index from 1 of total), on the caller's thread */
    void (*on_file)(void *arg, size_t index, size_t total, const cdb_migration *m, bool up);
    void *on_file_arg;
} cdb_migrate_options;

/*
 * Creates the coredb schema and history table if needed (idempotent) so the
 * other calls can read history.
 */
int cdb_migrate_ensure_history(PGconn *conn, cdb_error *err);

/*
 * {"current_version": "..."|null,
 *  "pending_migrations": [{"version","description","estimated_duration"}],
 *  "last_migration": {"version","applied_at","duration_ms"}|null,
 *  "applied": [{"version","description","checksum","applied_at","duration_ms","applied_by"}]}
 * Caller owns *out. Checksum mismatches are reported as the error.
 */
int cdb_migrate_status(PGconn *conn, const cdb_migration_set *set, json_t **out, cdb_error *err);

/* Number of pending migrations, or a negative cdb_err. */
int cdb_migrate_pending_count(PGconn *conn, const cdb_migration_set *set, cdb_error *err);

/*
 * Reads what the connection's role may do (superuser, CREATEROLE, CREATE on
 * the database and schemas, membership and admin option on the application
 * roles) and fails with CONFIG_INVALID listing everything the pending
 * migrations up to target (NULL: all) need and the role lacks
 * (details.missing, details.role) and pointing at `coredb setup-sql`. Logs
 * a warning when the catalog event trigger cannot exist (no superuser).
 * cdb_migrate_up calls it first; it changes nothing.
 */
int cdb_migrate_preflight(PGconn *conn, const cdb_migration_set *set, const char *target,
                          cdb_error *err);

typedef struct cdb_setup_sql_options {
    const char *role;       /* login role to create; NULL: "coredb" */
    const char *database;   /* database to create, owned by it; NULL: "coredb" */
    const char *password;   /* one line, set on the role; NULL: a \password hint */
    bool no_event_trigger;  /* leave out the superuser-only catalog event trigger */
    bool administration;    /* also CREATEROLE and pg_signal_backend, for coredb/dbauth.h */
} cdb_setup_sql_options;

/*
 * The SQL a superuser runs once (psql -f) to prepare a database and a login
 * role that may run coredb and its migrations without SUPERUSER or
 * CREATEROLE: what cdb_migrate_preflight checks. Pure: nothing connects.
 * *out is malloc'd text the caller frees. Names that are not lower-case
 * identifiers -> VALIDATION_FAILED (details.field "role" or "database").
 */
int cdb_setup_sql(const cdb_setup_sql_options *opt, char **out, cdb_error *err);

/*
 * Applies pending migrations up to target. *out (caller owns):
 * {"applied": [{"version","description","duration_ms"}], "dry_run": bool,
 *  "would_succeed": bool (dry run only), "current_version"}.
 */
int cdb_migrate_up(PGconn *conn, const cdb_migration_set *set,
                   const cdb_migrate_options *opt, json_t **out, cdb_error *err);

/* Rolls back the last `steps` applied migrations with their down sections. */
int cdb_migrate_down(PGconn *conn, const cdb_migration_set *set, int steps,
                     const cdb_migrate_options *opt, json_t **out, cdb_error *err);

/*
 * Writes dir/<today>_<next NNN>_<name>.sql from a template; *path_out gets
 * the malloc'd path. name is reduced to [a-z0-9_].
 */
int cdb_migrate_new_file(const char *dir, const char *name, char **path_out, cdb_error *err);

#endif
