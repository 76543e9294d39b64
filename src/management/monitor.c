/*
 * monitor.c - the monitoring reports (coredb/monitor.h): per-table
 * statistics, database performance, errors and conflicts, read from
 * PostgreSQL's statistics views on a pooled connection.
 *
 * Why PostgreSQL builds the JSON: every report is one statement whose
 * json_build_object / json_agg keeps numbers as numbers, timestamps as
 * ISO strings and NULLs as null, so the C side only parses and nests; no
 * column is ever read as text and converted by hand.
 *
 * Scope: the tables of POSTGRES_SCHEMA and coredb's own schema ("coredb",
 * marked coredb_own), so an operator sees the service's bookkeeping tables
 * (sessions, outbox, ledger) beside the application's; the database-wide
 * counters are those of the current database only.
 *
 * pg_stat_statements is optional: it needs shared_preload_libraries and
 * CREATE EXTENSION in this database (the embedded cluster does both). When
 * it is missing, not loaded or not readable, /performance says
 * "unavailable" with the reason instead of failing.
 */
#include "management/monitor_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/admin_sql.h"
#include "store/pg.h"

#define COREDB_SCHEMA "coredb"

/* The server-side statement_timeout of a monitoring transaction, as a share of the client's budget. */
#define MONITOR_SERVER_TIMEOUT_PCT 80

static const char TABLES_SQL[] =
    "SELECT coalesce(json_agg(t ORDER BY t.schema, t.name), '[]')::text FROM ("
    " SELECT s.schemaname AS schema, s.relname AS name, s.schemaname = '" COREDB_SCHEMA "' AS coredb_own,"
    "  CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS rows_estimate,"
    "  s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,"
    "  pg_total_relation_size(s.relid) AS total_bytes, pg_table_size(s.relid) AS table_bytes,"
    "  pg_indexes_size(s.relid) AS index_bytes,"
    "  s.seq_scan, s.seq_tup_read, coalesce(s.idx_scan, 0) AS idx_scan,"
    "  s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_tup_hot_upd,"
    "  coalesce(io.heap_blks_read, 0) AS heap_blks_read, coalesce(io.heap_blks_hit, 0) AS heap_blks_hit,"
    "  s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,"
    "  s.vacuum_count, s.autovacuum_count, s.analyze_count, s.autoanalyze_count"
    " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " LEFT JOIN pg_statio_user_tables io ON io.relid = s.relid"
    " WHERE s.schemaname IN ($1, '" COREDB_SCHEMA "')) t";

static const char DATABASE_SQL[] =
    "SELECT json_build_object('name', d.datname, 'size_bytes', pg_database_size(d.datid),"
    " 'backends', d.numbackends, 'xact_commit', d.xact_commit, 'xact_rollback', d.xact_rollback,"
    " 'blks_read', d.blks_read, 'blks_hit', d.blks_hit,"
    " 'cache_hit_ratio', CASE WHEN d.blks_hit + d.blks_read > 0"
    "   THEN round(d.blks_hit::numeric / (d.blks_hit + d.blks_read), 6) END,"
    " 'tup_returned', d.tup_returned, 'tup_fetched', d.tup_fetched, 'tup_inserted', d.tup_inserted,"
    " 'tup_updated', d.tup_updated, 'tup_deleted', d.tup_deleted,"
    " 'temp_files', d.temp_files, 'temp_bytes', d.temp_bytes, 'deadlocks', d.deadlocks,"
    " 'conflicts', d.conflicts, 'stats_reset', d.stats_reset)::text"
    " FROM pg_stat_database d WHERE d.datname = current_database()";

static const char ERRORS_SQL[] =
    "SELECT json_build_object('xact_rollback', d.xact_rollback, 'deadlocks', d.deadlocks,"
    " 'conflicts', d.conflicts, 'conflicts_by_type', json_build_object("
    "   'tablespace', coalesce(c.confl_tablespace, 0), 'lock', coalesce(c.confl_lock, 0),"
    "   'snapshot', coalesce(c.confl_snapshot, 0), 'bufferpin', coalesce(c.confl_bufferpin, 0),"
    "   'deadlock', coalesce(c.confl_deadlock, 0)),"
    " 'temp_files', d.temp_files)::text"
    " FROM pg_stat_database d LEFT JOIN pg_stat_database_conflicts c ON c.datid = d.datid"
    " WHERE d.datname = current_database()";

/* The extension's schema, when it is installed in this database. */
static const char STATEMENTS_EXT_SQL[] =
    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    " WHERE e.extname = 'pg_stat_statements'";

/* %1$s: the extension's schema, quoted. Only this database's statements. */
#define STATEMENTS_TOP(order)                                                                   \
    "(SELECT coalesce(json_agg(s), '[]') FROM (SELECT queryid::text AS queryid, "              \
    CDB__MONITOR_QUERY_TEXT("query") " AS query, calls,"                                        \
    " round(total_exec_time::numeric, 3) AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms," \
    " round(max_exec_time::numeric, 3) AS max_ms, rows"                                         \
    " FROM %1$s.pg_stat_statements"                                                             \
    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"            \
    " ORDER BY " order " DESC LIMIT " CDB__MONITOR_STR(CDB_MONITOR_TOP_STATEMENTS) ") s)"

static const char STATEMENTS_FMT[] =
    "SELECT json_build_object('status', 'available',"
    " 'by_total_time', " STATEMENTS_TOP("total_exec_time") ","
    " 'by_mean_time', " STATEMENTS_TOP("mean_exec_time") ")::text";

int cdb__monitor_require_admin(const cdb_principal *caller, cdb_error *err)
{
    return cdb__admin_require(caller, "read monitoring data", err);
}

cdb_pool_conn *cdb__monitor_acquire(cdb_service *svc, int acquire_ms, int query_ms, cdb_error *err)
{
    if (!svc->pool) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
        return NULL;
    }
    cdb_pool_conn *conn = cdb_pool_acquire(svc->pool, cdb_mono_ms() + acquire_ms, err);
    if (!conn)
        return NULL;
    PGconn *pg = cdb_pool_conn_pg(conn);
    cdb_pg_set_deadline(pg, cdb_mono_ms() + query_ms);
    /* The server's own timeout, inside the client's deadline: a slow
     * statistics query (pg_total_relation_size over many tables, a large
     * pg_stat_statements) is then cancelled by PostgreSQL (504
     * DATABASE_TIMEOUT) on a connection that stays usable, instead of
     * tripping the client deadline, which closes the connection and marks
     * the server down for every request. */
    char sql[96];
    snprintf(sql, sizeof sql, "BEGIN READ ONLY; SET LOCAL statement_timeout = %d",
             query_ms * MONITOR_SERVER_TIMEOUT_PCT / 100);
    PGresult *res = cdb_pg_query(pg, sql);   /* simple protocol: both statements, one round trip */
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        cdb_pg_error_from_result(pg, res, err);
        PQclear(res);
        cdb_pool_release(svc->pool, conn);
        return NULL;
    }
    PQclear(res);
    return conn;
}

void cdb__monitor_release(cdb_service *svc, cdb_pool_conn *conn)
{
    /* COMMIT, not ROLLBACK: the transaction only read, and a rollback would
     * count in pg_stat_database.xact_rollback, which the reports show. A
     * failed COMMIT leaves the connection in a transaction, and the pool
     * closes such a connection. */
    cdb_pg_exec(cdb_pool_conn_pg(conn), "COMMIT", 0, NULL, NULL, NULL);
    cdb_pool_release(svc->pool, conn);
}

int cdb__monitor_json(PGconn *conn, const char *sql, int nparams, const char *const *params,
                      json_t **out, cdb_error *err)
{
    PGresult *res = NULL;
    *out = NULL;
    int rc = cdb_pg_exec(conn, sql, nparams, params, &res, err);
    if (rc < 0)
        goto out;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        *out = json_null();
        goto out;
    }
    rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err);
out:
    PQclear(res);
    return rc;
}

static json_t *unavailable(const char *reason)
{
    return json_pack("{s:s,s:s}", "status", "unavailable", "reason", reason);
}

/*
 * pg_stat_statements, or why not. Never fails the report: a statement that
 * fails here is an answer ("unavailable"), undone to a savepoint so the
 * monitoring transaction carries on.
 */
static json_t *statements_report(PGconn *conn)
{
    cdb_error err;
    cdb_error_init(&err);
    PGresult *res = NULL;
    char *schema = NULL, *sql = NULL;
    json_t *out = NULL;

    if (cdb_pg_exec(conn, STATEMENTS_EXT_SQL, 0, NULL, &res, &err) < 0) {
        out = unavailable("the extension catalog could not be read");
        goto out;
    }
    if (PQntuples(res) == 0) {
        out = unavailable("the pg_stat_statements extension is not installed in this database"
                          " (it needs shared_preload_libraries = 'pg_stat_statements' and"
                          " CREATE EXTENSION pg_stat_statements)");
        goto out;
    }
    if (!(schema = cdb__admin_quote(conn, PQgetvalue(res, 0, 0))) ||
        !(sql = cdb_xasprintf(STATEMENTS_FMT, schema)))
        goto out;
    /* in a savepoint: a failure (not loaded, not readable) is then undone
     * without aborting the transaction or counting as a rollback */
    if (cdb_pg_exec(conn, "SAVEPOINT monitor_statements", 0, NULL, NULL, &err) < 0) {
        out = unavailable("the monitoring transaction failed");
        goto out;
    }
    if (cdb__monitor_json(conn, sql, 0, NULL, &out, &err) == 0)
        goto out;
    cdb_error stmt_err = err;   /* the statement's error, kept for the reason below */
    cdb_error_init(&err);
    cdb_pg_exec(conn, "ROLLBACK TO SAVEPOINT monitor_statements", 0, NULL, NULL, &err);
    cdb_error_destroy(&err);
    err = stmt_err;
    const char *state = err.details ? json_string_value(json_object_get(err.details, "sqlstate")) : NULL;
    if (state && strcmp(state, "55000") == 0)
        out = unavailable("pg_stat_statements is installed but not loaded"
                          " (add it to shared_preload_libraries and restart PostgreSQL)");
    else if (state && strcmp(state, "42501") == 0)
        out = unavailable("pg_stat_statements is not readable by coredb's role");
    else
        out = unavailable(err.code == CDB_ERR_DATABASE_TIMEOUT ? "reading pg_stat_statements timed out"
                                                               : "reading pg_stat_statements failed");
out:
    if (schema)
        PQfreemem(schema);
    free(sql);
    PQclear(res);
    cdb_error_destroy(&err);
    return out;
}

static json_t *pool_json(cdb_pool *pool)
{
    cdb_pool_stats st = {0};
    if (pool)
        cdb_pool_get_stats(pool, &st);
    return json_pack("{s:i,s:i,s:i,s:i,s:i,s:I}", "active", st.active, "idle", st.idle, "waiting",
                     st.waiting, "total", st.total, "max", st.max, "acquired_total",
                     (json_int_t)st.acquired_total);
}

static json_t *pool_errors_json(cdb_pool *pool)
{
    cdb_pool_stats st = {0};
    if (pool)
        cdb_pool_get_stats(pool, &st);
    return json_pack("{s:I,s:I,s:b}", "acquire_timeouts_total", (json_int_t)st.acquire_timeouts_total,
                     "connect_failures_total", (json_int_t)st.connect_failures_total, "server_up",
                     pool ? st.server_up : 0);
}

/* Sets key to value (taken) in obj; OOM when either is missing. */
static int put(json_t *obj, const char *key, json_t *value, cdb_error *err)
{
    if (!value || json_object_set_new(obj, key, value) < 0)
        return cdb_error_oom(err);
    return 0;
}

/* ---- the three collections, on a connection already held ---- */

static int collect_tables(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err)
{
    const char *schema = svc->cfg->postgres_schema;
    json_t *tables = NULL;
    int rc = cdb__monitor_json(conn, TABLES_SQL, 1, &schema, &tables, err);
    if (rc < 0)
        return rc;
    json_t *o = json_object();
    if (!o) {
        json_decref(tables);
        return cdb_error_oom(err);
    }
    size_t n = json_array_size(tables);
    if ((rc = put(o, "schema", json_string(schema), err)) < 0 ||
        (rc = put(o, "coredb_schema", json_string(COREDB_SCHEMA), err)) < 0 ||
        (rc = put(o, "count", json_integer((json_int_t)n), err)) < 0 ||
        (rc = put(o, "tables", tables, err)) < 0) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return 0;
}

static int collect_performance(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err)
{
    json_t *db = NULL;
    int rc = cdb__monitor_json(conn, DATABASE_SQL, 0, NULL, &db, err);
    if (rc < 0)
        return rc;
    json_t *o = json_object();
    if (!o) {
        json_decref(db);
        return cdb_error_oom(err);
    }
    /* coredb's own request latency: this process's metrics registry (the
     * same histograms GET /metrics exposes), per route with requests. */
    json_t *latency = cdb__metrics_latency_json();
    json_t *coredb = latency ? json_pack("{s:o}", "latency", latency) : NULL;
    if ((rc = put(o, "database", db, err)) < 0 || (rc = put(o, "pool", pool_json(svc->pool), err)) < 0 ||
        (rc = put(o, "statements", statements_report(conn), err)) < 0 ||
        (rc = put(o, "coredb", coredb, err)) < 0) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return 0;
}

static int collect_errors(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err)
{
    json_t *pg = NULL;
    int rc = cdb__monitor_json(conn, ERRORS_SQL, 0, NULL, &pg, err);
    if (rc < 0)
        return rc;
    json_t *o = json_object();
    if (!o) {
        json_decref(pg);
        return cdb_error_oom(err);
    }
    /* coredb's error answers by code and route and the recent ones: this
     * process's metrics registry (what GET /metrics counts). */
    if ((rc = put(o, "postgresql", pg, err)) < 0 ||
        (rc = put(o, "pool", pool_errors_json(svc->pool), err)) < 0 ||
        (rc = put(o, "coredb", cdb__metrics_errors_json(), err)) < 0) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return 0;
}

typedef int (*collect_fn)(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err);

/* The admin check, a connection, the collection, the release. */
static int run_collect(cdb_service *svc, const cdb_principal *caller, collect_fn fn, json_t **out,
                       cdb_error *err)
{
    *out = NULL;
    int rc = cdb__monitor_require_admin(caller, err);
    if (rc < 0)
        return rc;
    cdb_pool_conn *conn = cdb__monitor_acquire(svc, svc->cfg->db_pool_acquire_timeout_ms,
                                               CDB_MONITOR_QUERY_BUDGET_MS, err);
    if (!conn)
        return err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
    rc = fn(svc, cdb_pool_conn_pg(conn), out, err);
    cdb__monitor_release(svc, conn);
    return rc;
}

int cdb_monitor_tables(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return run_collect(svc, caller, collect_tables, out, err);
}

int cdb_monitor_performance(cdb_service *svc, const cdb_principal *caller, json_t **out,
                            cdb_error *err)
{
    return run_collect(svc, caller, collect_performance, out, err);
}

int cdb_monitor_errors(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return run_collect(svc, caller, collect_errors, out, err);
}

/* The three on one connection, pg_stat_statements (the only statement that may time out) last. */
static int collect_all(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err)
{
    json_t *tables = NULL, *errors = NULL, *perf = NULL, *o = NULL;
    int rc;
    if ((rc = collect_tables(svc, conn, &tables, err)) < 0 ||
        (rc = collect_errors(svc, conn, &errors, err)) < 0 ||
        (rc = collect_performance(svc, conn, &perf, err)) < 0)
        goto out;
    if (!(o = json_pack("{s:O,s:O,s:O}", "tables", tables, "performance", perf, "errors", errors))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    *out = o;
out:
    json_decref(tables);
    json_decref(errors);
    json_decref(perf);
    return rc;
}

int cdb_monitor_all(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return run_collect(svc, caller, collect_all, out, err);
}
