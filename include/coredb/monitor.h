/*
 * monitor.h - database monitoring as JSON (issue 12; the seed's
 * DatabaseMonitor.collect_table_metrics / collect_performance_metrics /
 * collect_error_metrics / collect_all_metrics). Served as
 * GET /api/v1/admin/metrics/tables | performance | errors | all and
 * `coredb monitor tables | performance | errors | all`.
 *
 * Every number comes from PostgreSQL's statistics views at the moment of
 * the call (pg_stat_user_tables, pg_statio_user_tables, pg_class,
 * pg_stat_database, pg_stat_database_conflicts, pg_stat_statements) or from
 * this process; nothing is cached. PostgreSQL's cumulative statistics are
 * flushed by each backend at the end of a transaction, at most once a
 * second, so work done an instant ago may not show yet.
 *
 * Each call checks that caller is an admin (UNAUTHORIZED without one,
 * FORBIDDEN for anyone else), borrows one pooled connection (pool wait
 * bounded by DB_POOL_ACQUIRE_TIMEOUT) and runs its queries with a budget of
 * CDB_MONITOR_QUERY_BUDGET_MS in all; PostgreSQL unreachable ->
 * DATABASE_UNAVAILABLE / DATABASE_TIMEOUT. On success *out (caller owns,
 * json_decref) is the data of the result form (coredb/result.h): the caller
 * wraps it in {status, error, timestamp, ...}. They block: run them on a
 * worker. Thread-safe.
 */
#ifndef COREDB_MONITOR_H
#define COREDB_MONITOR_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* What all the queries of one call may take together, pool wait excluded. */
#define CDB_MONITOR_QUERY_BUDGET_MS 5000

/* How many statements /performance lists from pg_stat_statements, per order. */
#define CDB_MONITOR_TOP_STATEMENTS 10

/* Statement text is cut to this many characters wherever it is shown. */
#define CDB_MONITOR_QUERY_TEXT_MAX 200

/*
 * {schema, coredb_schema: "coredb", count, tables: [{schema, name,
 * coredb_own (true for coredb's own tables), rows_estimate (null before the
 * first ANALYZE), live_rows, dead_rows, total_bytes, table_bytes,
 * index_bytes, seq_scan, seq_tup_read, idx_scan, n_tup_ins, n_tup_upd,
 * n_tup_del, n_tup_hot_upd, heap_blks_read, heap_blks_hit, last_vacuum,
 * last_autovacuum, last_analyze, last_autoanalyze, vacuum_count,
 * autovacuum_count, analyze_count, autoanalyze_count}]} for the tables of
 * POSTGRES_SCHEMA and coredb's schema, ordered by schema and name.
 */
int cdb_monitor_tables(cdb_service *svc, const cdb_principal *caller, json_t **out,
                       cdb_error *err);

/*
 * {database: {name, size_bytes, backends, xact_commit, xact_rollback,
 * blks_read, blks_hit, cache_hit_ratio (0..1, null before any block was
 * read), tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted,
 * temp_files, temp_bytes, deadlocks, conflicts, stats_reset},
 * pool: {active, idle, waiting, total, max, acquired_total},
 * statements: {status: "available", by_total_time: [...], by_mean_time: [...]}
 *   each {queryid (string), query (normalized, cut), calls, total_ms,
 *   mean_ms, max_ms, rows} -- or {status: "unavailable", reason} when the
 *   pg_stat_statements extension is not installed in this database, not
 *   loaded, or not readable,
 * coredb: {latency: {route: {count, p50_ms, p90_ms, p99_ms}}}} -- this
 * process's own answers since it started, routes with requests only.
 */
int cdb_monitor_performance(cdb_service *svc, const cdb_principal *caller, json_t **out,
                            cdb_error *err);

/*
 * {postgresql: {xact_rollback, deadlocks, conflicts, conflicts_by_type:
 * {tablespace, lock, snapshot, bufferpin, deadlock}, temp_files},
 * pool: {acquire_timeouts_total, connect_failures_total, server_up},
 * coredb: {by_code: [{code, route, count}], recent: [{at, request_id, method,
 * route, status, code}] (the last 50 error answers of this process, newest
 * first)}}.
 */
int cdb_monitor_errors(cdb_service *svc, const cdb_principal *caller, json_t **out,
                       cdb_error *err);

/* {tables: <tables>, performance: <performance>, errors: <errors>} as above. */
int cdb_monitor_all(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

#endif
