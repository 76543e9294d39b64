/*
 * health.h - the service's health as the library reports it: UP, DEGRADED
 * (only an optional backend, Redis, is down) or DOWN (PostgreSQL is). How a
 * front end shows it is the front end's business (HTTP: 200 for UP and
 * DEGRADED, 503 for DOWN). The reports themselves are cdb_service_health()
 * and cdb_service_ready() (service.h).
 */
#ifndef COREDB_HEALTH_H
#define COREDB_HEALTH_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

typedef enum cdb_health_status {
    CDB_HEALTH_UP = 0,
    CDB_HEALTH_DEGRADED,
    CDB_HEALTH_DOWN,
} cdb_health_status;

/* "UP" | "DEGRADED" | "DOWN" */
const char *cdb_health_status_name(cdb_health_status s);

/*
 * Detailed health for operators (issue 12; the seed's
 * check_connection_health / check_query_health / check_resource_health),
 * served as GET /api/v1/admin/health/connection | query | resource and
 * `coredb health [connection | query | resource]`.
 *
 * Each answers in the seed's words: "health" is "healthy", "degraded" or
 * "unhealthy", "reasons" names every check that made it so ([] when
 * healthy) and "reason" is the first of them (null when healthy). A
 * backend that is down is a report, not an error: these calls fail only
 * for a caller who is not an admin (UNAUTHORIZED / FORBIDDEN) or out of
 * memory. Every wait is bounded (pool CDB_HEALTH_DETAIL_ACQUIRE_MS, queries
 * CDB_HEALTH_DETAIL_QUERY_MS, Redis its 1 s command timeout), so a stopped
 * PostgreSQL answers "unhealthy" in about 3 s. *out (caller owns) is the
 * data of the result form. They block: run them on a worker.
 */
#define CDB_HEALTH_DETAIL_ACQUIRE_MS 2000
#define CDB_HEALTH_DETAIL_QUERY_MS   1000

/* Thresholds (documented in docs/operations.md, "Monitoring"). */
#define CDB_HEALTH_SLOW_MS              500   /* a probe slower than this: degraded */
#define CDB_HEALTH_BACKENDS_DEGRADED    0.80  /* backends / max_connections */
#define CDB_HEALTH_LONG_STATEMENT_MS    60000 /* a statement running longer: degraded */
#define CDB_HEALTH_DISK_FREE_DEGRADED   0.10  /* free / total under ./var or BACKUP_DIR */
#define CDB_HEALTH_DISK_FREE_UNHEALTHY  0.02
#define CDB_HEALTH_FDS_DEGRADED         0.80  /* open fds / RLIMIT_NOFILE */
#define CDB_HEALTH_FDS_UNHEALTHY        0.95

/*
 * Pool and backends: {health, reason, reasons, postgresql: {reachable,
 * latency_ms, error?, server_version, backends, max_connections},
 * pool: {active, idle, waiting, total, max, server_up, acquired_total,
 * acquire_timeouts_total, connects_total, connect_failures_total},
 * redis: {configured, reachable?, latency_ms?, error?}}.
 * Unhealthy: PostgreSQL does not answer. Degraded: Redis does not, the
 * probe is slow, threads wait for the pool, or backends are near
 * max_connections.
 */
int cdb_health_connection(cdb_service *svc, const cdb_principal *caller, json_t **out,
                          cdb_error *err);

/*
 * A timed probe and the longest-running statements of this database:
 * {health, reason, reasons, probe: {ok, latency_ms, error?},
 * longest_running: [{pid, user, application_name, state, wait_event_type,
 * wait_event, backend_type, duration_ms, transaction_ms, query}]} (at most
 * 10, longest first; query text cut to CDB_MONITOR_QUERY_TEXT_MAX
 * characters, replaced when it mentions a password; other roles' text
 * reads "<insufficient privilege>" unless coredb's role has
 * pg_read_all_stats). Unhealthy: the probe fails. Degraded: the probe is
 * slow or a statement runs longer than CDB_HEALTH_LONG_STATEMENT_MS.
 */
int cdb_health_query(cdb_service *svc, const cdb_principal *caller, json_t **out,
                     cdb_error *err);

/*
 * This process and its disks: {health, reason, reasons, process: {pid,
 * rss_bytes, rss_peak_bytes, threads, fds_open, fds_limit, fds_ratio},
 * disks: [{name: "var_dir" | "backup_dir", path, exists, free_bytes,
 * total_bytes, free_ratio}], database: {size_bytes | null, error?}}.
 * Unhealthy / degraded by the disk and fd thresholds above; a database
 * size that cannot be read is degraded.
 */
int cdb_health_resource(cdb_service *svc, const cdb_principal *caller, json_t **out,
                        cdb_error *err);

/*
 * The three at once: {health (the worst), reason, reasons (each prefixed
 * with its part), connection: {...}, query: {...}, resource: {...}}.
 */
int cdb_health_detailed(cdb_service *svc, const cdb_principal *caller, json_t **out,
                        cdb_error *err);

#endif
