/*
 * catalog.c - per-role snapshots of the tables and columns of the data
 * schema, and the service's cache of the current one.
 *
 * Loading. One query reads every table (views and materialized views too)
 * of the schema for the three application roles at once: a VALUES list of
 * the roles joined to pg_roles (a role that does not exist drops out instead
 * of making has_table_privilege fail), crossed with pg_class / pg_attribute.
 * Privileges come from has_table_privilege / has_column_privilege, so grants
 * through role membership and column grants count as PostgreSQL counts them.
 * A table is in a role's list when the role holds any privilege on it or on
 * one of its columns; a column is listed when the role holds any privilege
 * on it (one granted for UPDATE only is listed: writable, not readable).
 *
 * Snapshot memory. The snapshot keeps the query's PGresult and points its
 * names and type names into it, so the strings are one allocation freed
 * with the snapshot. Tables are sorted by name (ORDER BY ... COLLATE "C",
 * i.e. strcmp order) and found with bsearch; columns stay in attnum order
 * and are found by a linear scan (tables have tens of columns, and callers
 * may hand cdb_catalog_column a cdb_table of their own).
 *
 * Cache. `cur` is swapped under a mutex; readers take a reference and keep
 * their snapshot however many refreshes follow. Loads are serialized so a
 * slow load can never swap in a snapshot older than the one it replaces.
 * The listener thread has its own connection, LISTENs on coredb_catalog
 * (migration 006's event trigger notifies after DDL and GRANT/REVOKE) and
 * reloads on that connection, so a busy pool never delays a refresh. It also
 * reloads after every reconnect (notifications were possibly missed) and
 * every 30 s (no event trigger without a superuser; role membership changes
 * fire none). A pipe wakes it for shutdown.
 */
#include "store/catalog.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coredb/log.h"
#include "store/pg.h"
#include "store/pool.h"
#include "core/metrics.h"
#include "core/timeutil.h"

enum {
    NROLES = 3,                    /* CDB_ROLE_USER .. CDB_ROLE_ADMIN, index role - 1 */
    FALLBACK_REFRESH_MS = 30000,
    POLL_MS = 1000,
    BACKOFF_MIN_MS = 100,
    BACKOFF_MAX_MS = 5000,
    /* any role may NOTIFY coredb_catalog (a lease holder too): a flood of
     * them reloads at most this often, not back to back */
    NOTIFIED_MIN_GAP_MS = 100,
};

typedef struct role_tables {
    cdb_table *tables;             /* sorted by name (strcmp) */
    size_t ntables;
} role_tables;

struct cdb_catalog {
    atomic_int refs;
    char *schema;
    PGresult *res;                 /* owns every name and type_name string */
    PGresult *cascades;            /* (table, table it cascades into), sorted by the first */
    PGresult *collections;         /* (name, kind, table_name) of coredb.collections by name; NULL before 015 */
    cdb_column *columns;           /* all roles' columns; tables point into it */
    role_tables roles[NROLES];
};

/* Column order of LOAD_SQL. */
enum { L_ROLE, L_TABLE, L_COLUMN, L_TYPE, L_NOTNULL, L_HASDEF, L_CATEGORY, L_BASETYPE,
       L_TSEL, L_TINS, L_TUPD, L_TDEL, L_CSEL, L_CINS, L_CUPD };

/*
 * $1 schema, $2..$4 the database roles of user, premium, admin. Privilege
 * functions take the role's oid and sit in the select list, so they only
 * run for roles that exist. The type category and name are the base type's
 * for a domain, so a domain over jsonb binds as JSON.
 */
static const char LOAD_SQL[] =
    "SELECT r.idx, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),"
    " a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',"
    " bt.typcategory, bt.typname,"
    " has_table_privilege(ro.oid, c.oid, 'SELECT'), has_table_privilege(ro.oid, c.oid, 'INSERT'),"
    " has_table_privilege(ro.oid, c.oid, 'UPDATE'), has_table_privilege(ro.oid, c.oid, 'DELETE'),"
    " has_column_privilege(ro.oid, c.oid, a.attnum, 'SELECT'),"
    " has_column_privilege(ro.oid, c.oid, a.attnum, 'INSERT'),"
    " has_column_privilege(ro.oid, c.oid, a.attnum, 'UPDATE')"
    " FROM (VALUES (1, $2::name), (2, $3::name), (3, $4::name)) AS r(idx, rolname)"
    " JOIN pg_roles ro ON ro.rolname = r.rolname"
    " CROSS JOIN pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " JOIN pg_type t ON t.oid = a.atttypid"
    " JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END"
    " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm')"
    " ORDER BY r.idx, c.relname COLLATE \"C\", a.attnum";

/*
 * $1 schema. Every pair (t, u) of tables of the schema where a write to t
 * can change u through foreign keys with ON DELETE / ON UPDATE CASCADE, SET
 * NULL or SET DEFAULT, followed transitively. The query cache invalidates u
 * along with t.
 */
static const char CASCADES_SQL[] =
    "WITH RECURSIVE fk(parent, child) AS ("
    "  SELECT confrelid, conrelid FROM pg_constraint"
    "  WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))),"
    " reach(root, rel) AS ("
    "  SELECT c.oid, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')"
    "  UNION SELECT r.root, fk.child FROM reach r JOIN fk ON fk.parent = r.rel)"
    " SELECT pc.relname, cc.relname FROM reach r"
    " JOIN pg_class pc ON pc.oid = r.root"
    " JOIN pg_class cc ON cc.oid = r.rel JOIN pg_namespace cn ON cn.oid = cc.relnamespace"
    " WHERE r.root <> r.rel AND cn.nspname = $1"
    " ORDER BY pc.relname COLLATE \"C\", cc.relname COLLATE \"C\"";

static cdb_col_kind kind_of(const char *category, const char *base_type)
{
    if (strcmp(base_type, "json") == 0 || strcmp(base_type, "jsonb") == 0)
        return CDB_COL_JSON;
    switch (category[0]) {
    case 'N': return CDB_COL_NUMBER;
    case 'B': return CDB_COL_BOOL;
    case 'D':                      /* date, time, timestamp(tz) */
    case 'T': return CDB_COL_TIME; /* interval */
    default:  return CDB_COL_TEXT;
    }
}

static bool flag(const PGresult *res, int row, int col)
{
    return PQgetvalue(res, row, col)[0] == 't';
}

static unsigned privs_of(const PGresult *res, int row, int sel, int ins, int upd, int del)
{
    return (flag(res, row, sel) ? CDB_PRIV_SELECT : 0u) | (flag(res, row, ins) ? CDB_PRIV_INSERT : 0u) |
           (flag(res, row, upd) ? CDB_PRIV_UPDATE : 0u) |
           (del >= 0 && flag(res, row, del) ? CDB_PRIV_DELETE : 0u);
}

/* A new table starts where the role or the table name changes. */
static bool starts_table(const PGresult *res, int row)
{
    return row == 0 || strcmp(PQgetvalue(res, row, L_ROLE), PQgetvalue(res, row - 1, L_ROLE)) != 0 ||
           strcmp(PQgetvalue(res, row, L_TABLE), PQgetvalue(res, row - 1, L_TABLE)) != 0;
}

/*
 * The registry of document and vector collections (migration 015), read
 * only when it exists: a service may load its catalog before migrating.
 * Names sort in strcmp order (COLLATE "C") for the binary search.
 */
static const char COLLECTIONS_EXIST_SQL[] = "SELECT to_regclass('coredb.collections') IS NOT NULL";
static const char COLLECTIONS_SQL[] =
    "SELECT name, kind, table_name FROM coredb.collections ORDER BY name COLLATE \"C\"";

static int load_collections(cdb_catalog *cat, PGconn *conn, cdb_error *err)
{
    PGresult *exists = NULL;
    int rc = cdb_pg_exec(conn, COLLECTIONS_EXIST_SQL, 0, NULL, &exists, err);
    if (rc == 0 && PQntuples(exists) == 1 && strcmp(PQgetvalue(exists, 0, 0), "t") == 0)
        rc = cdb_pg_exec(conn, COLLECTIONS_SQL, 0, NULL, &cat->collections, err);
    PQclear(exists);
    return rc;
}

static void catalog_free(cdb_catalog *cat)
{
    for (int i = 0; i < NROLES; i++)
        free(cat->roles[i].tables);
    free(cat->columns);
    PQclear(cat->res);
    PQclear(cat->cascades);
    PQclear(cat->collections);
    free(cat->schema);
    free(cat);
}

/*
 * Fills the snapshot from its result: counts tables per role, then fills
 * tables and columns, keeping only what the role holds some privilege on.
 * A table's columns are a slice of `columns` starting at its first row;
 * skipped columns leave the slice packed, with unused room at its end.
 * A table without columns has no rows, so it is never listed.
 */
static int build(cdb_catalog *cat, cdb_error *err)
{
    const PGresult *res = cat->res;
    int nrows = PQntuples(res);
    size_t counts[NROLES] = {0};

    for (int row = 0; row < nrows; row++) {
        int idx = atoi(PQgetvalue(res, row, L_ROLE)) - 1;
        if (idx < 0 || idx >= NROLES)
            return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Unexpected catalog row");
        counts[idx] += starts_table(res, row);
    }
    cat->columns = calloc(nrows > 0 ? (size_t)nrows : 1, sizeof *cat->columns);
    if (!cat->columns)
        return cdb_error_oom(err);
    for (int i = 0; i < NROLES; i++)
        if (counts[i] && !(cat->roles[i].tables = calloc(counts[i], sizeof(cdb_table))))
            return cdb_error_oom(err);

    cdb_table *t = NULL;
    for (int row = 0; row < nrows; row++) {
        role_tables *rt = &cat->roles[atoi(PQgetvalue(res, row, L_ROLE)) - 1];
        if (starts_table(res, row)) {
            t = &rt->tables[rt->ntables++];
            t->name = PQgetvalue(res, row, L_TABLE);
            t->columns = &cat->columns[row];
            t->privs = privs_of(res, row, L_TSEL, L_TINS, L_TUPD, L_TDEL);
        }
        unsigned cp = privs_of(res, row, L_CSEL, L_CINS, L_CUPD, -1);
        if (!cp)
            continue;
        cdb_column *c = &t->columns[t->ncolumns++];
        c->name = PQgetvalue(res, row, L_COLUMN);
        c->type_name = PQgetvalue(res, row, L_TYPE);
        c->kind = kind_of(PQgetvalue(res, row, L_CATEGORY), PQgetvalue(res, row, L_BASETYPE));
        c->privs = cp;
        c->not_null = flag(res, row, L_NOTNULL);
        c->has_default = flag(res, row, L_HASDEF);
        t->privs |= cp;
    }

    /* Drop the tables the role holds nothing on; order is kept. */
    for (int i = 0; i < NROLES; i++) {
        role_tables *rt = &cat->roles[i];
        size_t kept = 0;
        for (size_t j = 0; j < rt->ntables; j++)
            if (rt->tables[j].privs)
                rt->tables[kept++] = rt->tables[j];
        rt->ntables = kept;
    }
    return 0;
}

cdb_catalog *cdb_catalog_load(PGconn *conn, const char *schema, cdb_error *err)
{
    cdb_catalog *cat = calloc(1, sizeof *cat);
    if (!cat || !(cat->schema = strdup(schema))) {
        cdb_error_oom(err);
        goto fail_free_catalog;
    }
    atomic_init(&cat->refs, 1);
    const char *params[] = {
        schema, cdb_role_db_name(CDB_ROLE_USER), cdb_role_db_name(CDB_ROLE_PREMIUM),
        cdb_role_db_name(CDB_ROLE_ADMIN),
    };
    if (cdb_pg_exec(conn, LOAD_SQL, 4, params, &cat->res, err) < 0 || build(cat, err) < 0 ||
        cdb_pg_exec(conn, CASCADES_SQL, 1, params, &cat->cascades, err) < 0 ||
        load_collections(cat, conn, err) < 0)
        goto fail_free_catalog;
    return cat;

fail_free_catalog:
    if (cat)
        catalog_free(cat);
    return NULL;
}

cdb_catalog *cdb_catalog_ref(cdb_catalog *cat)
{
    if (cat)
        atomic_fetch_add_explicit(&cat->refs, 1, memory_order_relaxed);
    return cat;
}

void cdb_catalog_unref(cdb_catalog *cat)
{
    if (cat && atomic_fetch_sub_explicit(&cat->refs, 1, memory_order_acq_rel) == 1)
        catalog_free(cat);
}

static int table_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const cdb_table *)elem)->name);
}

const cdb_table *cdb_catalog_table(const cdb_catalog *cat, cdb_role role, const char *name)
{
    if (!cat || !name || role < CDB_ROLE_USER || role > CDB_ROLE_ADMIN)
        return NULL;
    const role_tables *rt = &cat->roles[role - 1];
    return rt->ntables ? bsearch(name, rt->tables, rt->ntables, sizeof *rt->tables, table_cmp) : NULL;
}

size_t cdb_catalog_table_count(const cdb_catalog *cat, cdb_role role)
{
    if (!cat || role < CDB_ROLE_USER || role > CDB_ROLE_ADMIN)
        return 0;
    return cat->roles[role - 1].ntables;
}

const cdb_table *cdb_catalog_table_at(const cdb_catalog *cat, cdb_role role, size_t i)
{
    return i < cdb_catalog_table_count(cat, role) ? &cat->roles[role - 1].tables[i] : NULL;
}

const cdb_column *cdb_catalog_column(const cdb_table *t, const char *name)
{
    for (size_t i = 0; t && name && i < t->ncolumns; i++)
        if (strcmp(t->columns[i].name, name) == 0)
            return &t->columns[i];
    return NULL;
}

const char *cdb_catalog_collection(const cdb_catalog *cat, const char *name, const char **kind)
{
    int lo = 0, hi = cat->collections ? PQntuples(cat->collections) : 0;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(name, PQgetvalue(cat->collections, mid, 0));
        if (c == 0) {
            *kind = PQgetvalue(cat->collections, mid, 1);
            return PQgetvalue(cat->collections, mid, 2);
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *cdb_catalog_schema(const cdb_catalog *cat)
{
    return cat->schema;
}

/* ---------- the service's current snapshot ---------- */

struct cdb_catalog_cache {
    cdb_pool *pool;                /* not owned */
    char *schema;

    pthread_mutex_t mu;            /* guards cur */
    cdb_catalog *cur;              /* NULL until the first load */
    pthread_mutex_t load_mu;       /* one load at a time, so swaps follow load order */
    _Atomic uint64_t version;      /* swaps so far: what was resolved against cur may be kept while it holds */

    bool listening;                /* thread, conninfo and wake pipe are set up */
    pthread_t thread;
    char *conninfo;
    int wake[2];                   /* free writes to wake[1]; the thread polls wake[0] */
    atomic_bool stop;
};

cdb_catalog_cache *cdb_catalog_cache_new(cdb_pool *pool, const char *schema)
{
    cdb_catalog_cache *cc = calloc(1, sizeof *cc);
    if (!cc)
        return NULL;
    if (!(cc->schema = strdup(schema))) {
        free(cc);
        return NULL;
    }
    cc->pool = pool;
    pthread_mutex_init(&cc->mu, NULL);
    pthread_mutex_init(&cc->load_mu, NULL);
    cc->wake[0] = cc->wake[1] = -1;
    atomic_init(&cc->stop, false);
    return cc;
}

void cdb_catalog_cache_free(cdb_catalog_cache *cc)
{
    if (!cc)
        return;
    if (cc->listening) {
        atomic_store(&cc->stop, true);
        ssize_t w = write(cc->wake[1], "x", 1);
        (void)w; /* the pipe is empty until now; the flag alone still stops it within POLL_MS */
        pthread_join(cc->thread, NULL);
        close(cc->wake[0]);
        close(cc->wake[1]);
        free(cc->conninfo);
    }
    cdb_catalog_unref(cc->cur);
    pthread_mutex_destroy(&cc->load_mu);
    pthread_mutex_destroy(&cc->mu);
    free(cc->schema);
    free(cc);
}

static void swap_in(cdb_catalog_cache *cc, cdb_catalog *cat)
{
    pthread_mutex_lock(&cc->mu);
    cdb_catalog *old = cc->cur;
    cc->cur = cat;
    atomic_fetch_add(&cc->version, 1);
    pthread_mutex_unlock(&cc->mu);
    cdb_catalog_unref(old);
}

/* The coredb_catalog_reloads_total sample a load counts in: why is one of this file's own strings. */
static cdb__metric reload_metric(const char *why)
{
    if (strcmp(why, "notified") == 0)
        return CDB_M_CATALOG_RELOAD_NOTIFIED;
    if (strcmp(why, "periodic") == 0)
        return CDB_M_CATALOG_RELOAD_PERIODIC;
    if (strcmp(why, "listener connected") == 0)
        return CDB_M_CATALOG_RELOAD_CONNECTED;
    return CDB_M_CATALOG_RELOAD_REQUESTED;
}

/* Loads on conn and swaps in; the caller holds load_mu. */
static int load_locked(cdb_catalog_cache *cc, PGconn *conn, const char *why, cdb_error *err)
{
    int64_t t0 = cdb_mono_ms();
    cdb_catalog *cat = cdb_catalog_load(conn, cc->schema, err);
    if (!cat) {
        cdb_log_warn("catalog.refresh_failed", "%s: %s", why, err ? err->message : "load failed");
        return err ? err->code : CDB_ERR_INTERNAL_ERROR;
    }
    cdb_log_fields(CDB_LOG_DEBUG, "catalog.refreshed",
                   json_pack("{s:s, s:I, s:I, s:I, s:I}", "reason", why,
                             "user_tables", (json_int_t)cat->roles[CDB_ROLE_USER - 1].ntables,
                             "premium_tables", (json_int_t)cat->roles[CDB_ROLE_PREMIUM - 1].ntables,
                             "admin_tables", (json_int_t)cat->roles[CDB_ROLE_ADMIN - 1].ntables,
                             "duration_ms", (json_int_t)(cdb_mono_ms() - t0)));
    swap_in(cc, cat);
    cdb__metrics_inc(reload_metric(why));
    return 0;
}

/* Loads on a pooled connection; with only_if_empty, skips when another thread loaded first. */
static int load_from_pool(cdb_catalog_cache *cc, bool only_if_empty, const char *why, cdb_error *err)
{
    int rc = 0;
    pthread_mutex_lock(&cc->load_mu);
    pthread_mutex_lock(&cc->mu);
    bool loaded = cc->cur != NULL;
    pthread_mutex_unlock(&cc->mu);
    if (only_if_empty && loaded)
        goto out_unlock;

    cdb_pool_conn *pc = cdb_pool_acquire(cc->pool, 0, err);
    if (!pc) {
        cdb_log_warn("catalog.refresh_failed", "%s: %s", why, err ? err->message : "no connection");
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out_unlock;
    }
    rc = load_locked(cc, cdb_pool_conn_pg(pc), why, err);
    cdb_pool_release(cc->pool, pc);
out_unlock:
    pthread_mutex_unlock(&cc->load_mu);
    return rc;
}

static cdb_catalog *current(cdb_catalog_cache *cc)
{
    pthread_mutex_lock(&cc->mu);
    cdb_catalog *cat = cdb_catalog_ref(cc->cur);
    pthread_mutex_unlock(&cc->mu);
    return cat;
}

uint64_t cdb_catalog_cache_version(cdb_catalog_cache *cc)
{
    return cc ? atomic_load(&cc->version) : 0;
}

cdb_catalog *cdb_catalog_cache_peek(cdb_catalog_cache *cc)
{
    return current(cc);
}

cdb_catalog *cdb_catalog_cache_get(cdb_catalog_cache *cc, cdb_error *err)
{
    cdb_catalog *cat = current(cc);
    if (cat || load_from_pool(cc, true, "first use", err) < 0)
        return cat;
    return current(cc);
}

int cdb_catalog_cache_refresh(cdb_catalog_cache *cc, cdb_error *err)
{
    return load_from_pool(cc, false, "requested", err);
}

/* ---------- the listener thread ---------- */

/*
 * Waits up to timeout_ms for conn's socket (when conn is not NULL) or the
 * wake pipe. Returns 1 when the socket is readable, 0 otherwise.
 */
static int wait_for(cdb_catalog_cache *cc, PGconn *conn, int timeout_ms)
{
    struct pollfd fds[2] = {
        {.fd = cc->wake[0], .events = POLLIN},
        {.fd = conn ? PQsocket(conn) : -1, .events = POLLIN},
    };
    int n = poll(fds, 2, timeout_ms);
    return n > 0 && (fds[1].revents & (POLLIN | POLLERR | POLLHUP)) ? 1 : 0;
}

static PGconn *listen_connect(cdb_catalog_cache *cc, cdb_error *err)
{
    /* The pool's statement timeout, and so its client deadline (pg.h; 5 min
     * without one, as the pool's): a load on a silent server must not hold
     * load_mu, which refreshes wait for. */
    int statement_ms = cc->pool ? cdb_pool_statement_timeout_ms(cc->pool) : 0;
    cdb_pg_settings s = {.conninfo = cc->conninfo, .application_name = "coredb-catalog",
                         .statement_timeout_ms = statement_ms,
                         .round_trip_timeout_ms = statement_ms > 0 ? 0 : 300000};
    PGconn *conn = cdb_pg_connect(&s, err);
    if (conn && cdb_pg_exec(conn, "LISTEN coredb_catalog", 0, NULL, NULL, err) < 0) {
        PQfinish(conn);
        conn = NULL;
    }
    return conn;
}

/* Reloads on the listener's own connection. */
static int listener_load(cdb_catalog_cache *cc, PGconn *conn, const char *why)
{
    cdb_error err;
    cdb_error_init(&err);
    pthread_mutex_lock(&cc->load_mu);
    int rc = load_locked(cc, conn, why, &err);
    pthread_mutex_unlock(&cc->load_mu);
    cdb_error_destroy(&err);
    return rc;
}

static void *listen_main(void *arg)
{
    cdb_catalog_cache *cc = arg;
    PGconn *conn = NULL;
    int backoff = BACKOFF_MIN_MS;
    int64_t last_load = 0;

    while (!atomic_load(&cc->stop)) {
        if (!conn) {
            cdb_error err;
            cdb_error_init(&err);
            conn = listen_connect(cc, &err);
            if (!conn) {
                cdb_log_warn("catalog.listen_failed", "%s; retrying in %d ms", err.message, backoff);
                cdb_error_destroy(&err);
                wait_for(cc, NULL, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            cdb_error_destroy(&err);
            backoff = BACKOFF_MIN_MS;
            listener_load(cc, conn, "listener connected");
            last_load = cdb_mono_ms();
        }

        /*
         * Drain before waiting: a burst of DDL (a migration) becomes one
         * reload, and notifications libpq queued while a load ran (it parses
         * them with the query's results, so the socket shows nothing) are
         * handled by the next pass instead of waiting out the poll.
         */
        int notes = 0;
        for (PGnotify *n; (n = PQnotifies(conn)); notes++)
            PQfreemem(n);
        if (notes || cdb_mono_ms() - last_load >= FALLBACK_REFRESH_MS) {
            int64_t gap = last_load + NOTIFIED_MIN_GAP_MS - cdb_mono_ms();
            if (notes && gap > 0)
                wait_for(cc, NULL, (int)gap);   /* the notes are drained: the reload below still runs */
            int rc = listener_load(cc, conn, notes ? "notified" : "periodic");
            last_load = cdb_mono_ms();
            if (rc < 0 && PQstatus(conn) != CONNECTION_OK) {
                PQfinish(conn);
                conn = NULL;
            }
            continue;
        }

        int64_t left = last_load + FALLBACK_REFRESH_MS - cdb_mono_ms();
        int readable = wait_for(cc, conn, left < 0 ? 0 : left < POLL_MS ? (int)left : POLL_MS);
        if (readable && (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK)) {
            cdb_log_warn("catalog.listen_lost", "connection lost; reconnecting");
            PQfinish(conn);
            conn = NULL;
        }
    }
    PQfinish(conn);
    return NULL;
}

int cdb_catalog_cache_listen(cdb_catalog_cache *cc, const char *conninfo, cdb_error *err)
{
    int rc;
    if (cc->listening)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Catalog listener already started");
    if (!(cc->conninfo = strdup(conninfo))) {
        rc = cdb_error_oom(err);
        goto fail_undo_setup;
    }
    if (pipe2(cc->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Cannot create the catalog listener's pipe");
        goto fail_undo_setup;
    }
    if (pthread_create(&cc->thread, NULL, listen_main, cc) != 0) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Cannot start the catalog listener");
        goto fail_undo_setup;
    }
    cc->listening = true;
    return 0;

fail_undo_setup:
    for (int i = 0; i < 2; i++) {
        if (cc->wake[i] >= 0)
            close(cc->wake[i]);
        cc->wake[i] = -1;
    }
    free(cc->conninfo);
    cc->conninfo = NULL;
    return rc;
}

size_t cdb_catalog_cascades(const cdb_catalog *cat, const char *table, const char **out, size_t max)
{
    size_t n = 0;
    int rows = cat && cat->cascades ? PQntuples(cat->cascades) : 0;
    for (int row = 0; row < rows && n < max; row++)
        if (strcmp(PQgetvalue(cat->cascades, row, 0), table) == 0)
            out[n++] = PQgetvalue(cat->cascades, row, 1);
    return n;
}
