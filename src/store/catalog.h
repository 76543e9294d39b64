/*
 * catalog.h - what each database role may see and write, as PostgreSQL says.
 *
 * For each application role (coredb_admin, coredb_user, coredb_premium) the
 * catalog lists the tables of POSTGRES_SCHEMA the role may SELECT, INSERT,
 * UPDATE or DELETE, and per column its type and column privileges, read from
 * pg_catalog with has_table_privilege / has_column_privilege. Identifiers in
 * requests are looked up here and only ever reach SQL quoted, from the
 * catalog's own copy.
 *
 * The catalog is an immutable snapshot shared by reference; a refresh builds
 * a new snapshot and swaps it in (readers keep theirs until they release it).
 * Refreshed at start, after migrations, on NOTIFY coredb_catalog (an event
 * trigger sends it after DDL and GRANT/REVOKE), and every 30 s as a fallback.
 * Thread-safe.
 */
#ifndef COREDB_CATALOG_H
#define COREDB_CATALOG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"
#include "coredb/role.h"

#include <stdint.h>

struct cdb_pool;

enum {
    CDB_PRIV_SELECT = 1 << 0,
    CDB_PRIV_INSERT = 1 << 1,
    CDB_PRIV_UPDATE = 1 << 2,
    CDB_PRIV_DELETE = 1 << 3,
};

typedef enum cdb_col_kind {         /* how values of the column are bound and compared */
    CDB_COL_TEXT,                   /* text, varchar, char, citext, uuid, enums, others */
    CDB_COL_NUMBER,                 /* int2/4/8, numeric, float4/8 */
    CDB_COL_BOOL,
    CDB_COL_JSON,                   /* json, jsonb */
    CDB_COL_TIME,                   /* date, time, timestamp(tz), interval */
} cdb_col_kind;

typedef struct cdb_column {
    char *name;
    char *type_name;                /* format_type(), e.g. "character varying(255)" */
    cdb_col_kind kind;
    unsigned privs;                 /* CDB_PRIV_SELECT | INSERT | UPDATE for this role */
    bool not_null;
    bool has_default;
} cdb_column;

typedef struct cdb_table {
    char *name;
    unsigned privs;                 /* table-level privileges for this role (any column counts for S/I/U) */
    cdb_column *columns;            /* in attnum order */
    size_t ncolumns;
} cdb_table;

typedef struct cdb_catalog cdb_catalog;

/* Builds a snapshot for the schema on conn (blocking). Caller owns it (refcount 1). */
cdb_catalog *cdb_catalog_load(PGconn *conn, const char *schema, cdb_error *err);
cdb_catalog *cdb_catalog_ref(cdb_catalog *cat);
void cdb_catalog_unref(cdb_catalog *cat);

/* A table as seen by role, or NULL when the role may not use it at all. */
const cdb_table *cdb_catalog_table(const cdb_catalog *cat, cdb_role role, const char *name);
/* How many tables role may use, and the i-th of them (by name, strcmp order; NULL past the end). */
size_t cdb_catalog_table_count(const cdb_catalog *cat, cdb_role role);
const cdb_table *cdb_catalog_table_at(const cdb_catalog *cat, cdb_role role, size_t i);
/* A column of t, or NULL. */
const cdb_column *cdb_catalog_column(const cdb_table *t, const char *name);
const char *cdb_catalog_schema(const cdb_catalog *cat);

/*
 * The table of the document or vector collection `name` (the registry of
 * migration 015, coredb.collections, read with the rest of the snapshot)
 * and its kind ("documents" or "vectors") into *kind; NULL when the
 * snapshot has no such collection. Valid while cat is. The snapshot is
 * refreshed by the same DDL notifications as the tables (creating or
 * dropping a collection creates or drops its table), so a collection made
 * by another instance without the event trigger may be missing for up to
 * 30 s: callers look a miss up in the registry itself.
 */
const char *cdb_catalog_collection(const cdb_catalog *cat, const char *name, const char **kind);

/*
 * The other tables of the schema a write to table can change through
 * cascading foreign keys (ON DELETE/UPDATE CASCADE, SET NULL, SET DEFAULT,
 * transitively): up to max names into out (valid while cat is). Returns the
 * count.
 */
size_t cdb_catalog_cascades(const cdb_catalog *cat, const char *table, const char **out, size_t max);

/* ---- the service's current snapshot ---- */

typedef struct cdb_catalog_cache cdb_catalog_cache;

/* Does not own pool. Nothing is loaded until the first get or refresh. */
cdb_catalog_cache *cdb_catalog_cache_new(struct cdb_pool *pool, const char *schema);
void cdb_catalog_cache_free(cdb_catalog_cache *cc);

/* The current snapshot (ref'd: cdb_catalog_unref it); loads it the first time. */
cdb_catalog *cdb_catalog_cache_get(cdb_catalog_cache *cc, cdb_error *err);
/* The current snapshot (ref'd) or NULL before the first load; never loads (the event loops). */
cdb_catalog *cdb_catalog_cache_peek(cdb_catalog_cache *cc);
/* Changes with every snapshot swapped in (lock-free): a resolution made against one stays right while it does not. */
uint64_t cdb_catalog_cache_version(cdb_catalog_cache *cc);
/* Loads a new snapshot now and swaps it in. */
int cdb_catalog_cache_refresh(cdb_catalog_cache *cc, cdb_error *err);

/*
 * Starts a thread with its own connection (conninfo) that LISTENs on
 * coredb_catalog and refreshes on every notification, reconnecting with
 * backoff. Stopped by cdb_catalog_cache_free.
 */
int cdb_catalog_cache_listen(cdb_catalog_cache *cc, const char *conninfo, cdb_error *err);

#endif
