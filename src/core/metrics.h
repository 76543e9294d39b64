/*
 * metrics.h - the process's Prometheus registry (internal API, cdb__ names).
 *
 * One registry per process (statics in metrics.c): two services opened by
 * one embedding program add into the same counters. Two kinds of numbers:
 *
 *  - counters and histograms that the hot path bumps (HTTP requests, cache
 *    hits, pool waits). They never take a lock: each thread gets a shard
 *    (a thread-local index into a fixed array of cache-line-aligned shards)
 *    and adds with relaxed atomics, which stay uncontended while threads
 *    do not outnumber the shards; a scrape sums the shards.
 *  - gauges that reflect state (pool connections, active sessions, the
 *    PostgreSQL statistics) are not kept here at all: their owners register
 *    a collector that reads them at scrape time (cdb__metrics_add_collector).
 *
 * Rare events (background job runs, backups, migrations) take a mutex:
 * they are not on the hot path. The ring of the last error answers only
 * tries it, and skips an entry rather than wait.
 *
 * Build with -DCDB_NO_METRICS to compile every recording call out (the
 * benchmark's baseline); the scrape then shows zeros.
 *
 * Every function here may be called from any thread.
 */
#ifndef COREDB_CORE_METRICS_H
#define COREDB_CORE_METRICS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coredb/error.h"

/* Counters without a per-request label: the families and label sets are in metrics.c. */
typedef enum cdb__metric {
    CDB_M_CACHE_HITS,
    CDB_M_CACHE_MISSES,
    CDB_M_CACHE_STORES,
    CDB_M_CACHE_INVALIDATIONS,
    CDB_M_REDIS_COMMAND_ERRORS,
    CDB_M_LOGIN_SUCCESS,
    CDB_M_LOGIN_FAILURE,
    CDB_M_LOGIN_LOCKED,
    CDB_M_LOGIN_ERROR,             /* validation, database unavailable ... */
    CDB_M_SESSION_REFRESHES,
    CDB_M_SESSION_REUSE_DETECTIONS,
    CDB_M_SESSION_REVOCATIONS,
    CDB_M_RATELIMIT_ANON,          /* refusals by the caller's role, in cdb_role order */
    CDB_M_RATELIMIT_USER,
    CDB_M_RATELIMIT_PREMIUM,
    CDB_M_RATELIMIT_ADMIN,
    CDB_M_OUTBOX_APPLIED,
    CDB_M_OUTBOX_RETRIES,
    CDB_M_LEASE_ACQUIRES,          /* connection leases (coredb/leases.h) */
    CDB_M_LEASE_RELEASES,
    CDB_M_LEASE_EXPIRIES,
    CDB_M_ENCRYPTION_FAILURES,     /* column encryption (issue 11) */
    CDB_M_ENCRYPTION_ROWS,
    CDB_M_LOG_DROPPED,             /* core/log.c: lines a stalled destination could not take */
    CDB_M_LOOP_ANSWERED,           /* http/loop_admit.c: admitted on a loop and answered there */
    CDB_M_LOOP_HANDED_OFF,         /* ... admitted on a loop, then run on a worker */
    CDB_M_LOOP_FALLBACK,           /* ... the loop's Redis was not ready: admitted on a worker */
    CDB_M_LOOP_QUERY,              /* http/loop_admit.c: admitted on a loop, its miss run on the loop's connections */
    CDB_M_LOOP_TRANSACTION,        /* ... admitted on a loop, its transaction sent on the loop's connections */
    CDB_M_INVAL_RECEIVED,          /* store/invalidation.c: pub/sub messages applied */
    CDB_M_INVAL_SUBSCRIPTION_LOSSES,
    CDB_M_INVAL_PUBLISH_FAILURES,
    CDB_M_INVAL_ACK_TIMEOUTS,
    CDB_M_L1_ANSWER_HITS,          /* store/l1cache.c via http/loop_admit.c: answers from a loop's L1 */
    CDB_M_L1_SESSION_HITS,         /* ... session liveness from a loop's L1 */
    CDB_M_CATALOG_RELOAD_NOTIFIED, /* store/catalog.c: catalog loads, by reason (NOTIFY coredb_catalog) */
    CDB_M_CATALOG_RELOAD_PERIODIC, /* ... the listener's fallback refresh */
    CDB_M_CATALOG_RELOAD_CONNECTED, /* ... the listener (re)connected */
    CDB_M_CATALOG_RELOAD_REQUESTED, /* ... first use, or asked for after DDL */
    CDB_M_LOOP_QUERY_ANSWERED,     /* http/loop_query.c: a miss answered on the loop */
    CDB_M_LOOP_QUERY_HANDED_OFF,   /* ... the loop's run failed: a worker ran it */
    CDB_M_LOOP_QUERY_TIMEOUT,      /* ... the loop's run passed its deadline: 504 on the loop */
    CDB_M_LOOP_PLAN_MEMO_HITS,     /* ... its plan came from the loop's memo (no JSON parse, no planning) */
    CDB_M_LOOP_LEASE,              /* http/loop_admit.c: admitted on a loop, its read run on the lease's connection */
    CDB_M_LOOP_LEASE_ANSWERED,     /* http/loop_lease.c: a read with X-Connection-ID answered on the loop */
    CDB_M_LOOP_LEASE_HANDED_OFF,   /* ... the loop's run failed: a worker ran it */
    CDB_M_LOOP_LEASE_TIMEOUT,      /* ... statement timeout or deadline: 504 on the loop */
    CDB_M_LOOP_LEASE_REFUSED,      /* ... the lease refused on the loop (404, 409) */
    CDB_M_LOOP_TX_COMMITTED,       /* http/loop_tx.c: a transaction committed on the loop's connection */
    CDB_M_LOOP_TX_REFUSED,         /* ... the server refused it (rolled back): a worker ran it again */
    CDB_M_LOOP_TX_UNKNOWN,         /* ... lost or past its deadline after sending: 503 OUTCOME_UNKNOWN */
    CDB_M_LOOP_TX_FINISH_LOOP,     /* ... committed: its outbox applied and answer sent on the loop */
    CDB_M_LOOP_TX_FINISH_WORKER,   /* ... committed: finished on a worker (replicas, Sentinel, no Redis, ...) */
    CDB_M__COUNT
} cdb__metric;

/* Operations counted with runs, failures, duration and last success. */
typedef enum cdb__metrics_op_kind {
    CDB_MOP_JOB,                   /* background job, labelled by the job's name */
    CDB_MOP_BACKUP,
    CDB_MOP_MIGRATION,
    CDB_MOP__COUNT
} cdb__metrics_op_kind;

#define CDB_METRICS_MAX_ROUTES 128     /* route templates; index 0 is "unmatched" */
#define CDB_METRICS_MAX_CLIENT_VERSIONS 100
#define CDB_METRICS_RECENT_ERRORS 50

#ifndef CDB_NO_METRICS
void cdb__metrics_inc(cdb__metric m);
void cdb__metrics_add(cdb__metric m, uint64_t n);
/* One HTTP answer: route index from cdb__metrics_route_index (0 = unmatched),
 * method as sent (NULL or unknown -> "other"), status, time taken. */
void cdb__metrics_http(int route, const char *method, int status, int64_t elapsed_us);
/* One error answer (status >= 400): by code and route, and into the ring of recent ones
 * (unless another thread is writing it at that moment: the ring is a sample, the counts exact). */
void cdb__metrics_http_error(int route, const char *method, int status, cdb_err code, const char *request_id);
/* The X-Client-Version of a request (at most 100 distinct values, the rest "other"). */
void cdb__metrics_client_version(const char *value);
/* Time a thread waited for a pooled connection (successful or not). */
void cdb__metrics_pool_wait(int64_t waited_us);
/* One finished operation; name is the job's name (ignored for backups and migrations). */
void cdb__metrics_op(cdb__metrics_op_kind kind, const char *name, bool ok, int64_t elapsed_us);
#else
static inline void cdb__metrics_inc(cdb__metric m) { (void)m; }
static inline void cdb__metrics_add(cdb__metric m, uint64_t n) { (void)m; (void)n; }
static inline void cdb__metrics_http(int route, const char *method, int status, int64_t elapsed_us)
{ (void)route; (void)method; (void)status; (void)elapsed_us; }
static inline void cdb__metrics_http_error(int route, const char *method, int status, cdb_err code,
                                           const char *request_id)
{ (void)route; (void)method; (void)status; (void)code; (void)request_id; }
static inline void cdb__metrics_client_version(const char *value) { (void)value; }
static inline void cdb__metrics_pool_wait(int64_t waited_us) { (void)waited_us; }
static inline void cdb__metrics_op(cdb__metrics_op_kind kind, const char *name, bool ok, int64_t elapsed_us)
{ (void)kind; (void)name; (void)ok; (void)elapsed_us; }
#endif

/*
 * Registers a route template (the router's pattern, never a raw path) and
 * returns its index, the same for the same text; 0 ("unmatched") when the
 * table is full. pattern must outlive the process's metrics (route tables
 * are static).
 */
int cdb__metrics_route_index(const char *pattern);

/* In-flight HTTP requests (the server's own count), added by the HTTP layer. */
void cdb__metrics_inflight_add(int delta);

/* ---- the exposition text ---- */

/* A growing text buffer a collector writes into. */
typedef struct cdb__metrics_out cdb__metrics_out;
/* The # HELP and # TYPE lines of a family (type: counter, gauge, histogram, summary). */
void cdb__metrics_family(cdb__metrics_out *out, const char *name, const char *type, const char *help);
/* One sample; labels is the text inside {} ("" or NULL for none), already escaped. */
void cdb__metrics_sample(cdb__metrics_out *out, const char *name, const char *labels, double value);
/* Escapes a label value (\\, \", \n) into buf. */
void cdb__metrics_escape(const char *value, char *buf, size_t len);

/*
 * A collector writes the gauges its owner knows at scrape time (pool
 * state, PostgreSQL statistics). It runs on the scraping thread (a worker:
 * it may block briefly, with a short deadline). Up to 8; the same (fn,
 * arg) twice is registered once. remove before arg is freed.
 */
typedef void (*cdb__metrics_collector_fn)(cdb__metrics_out *out, void *arg);
int cdb__metrics_add_collector(cdb__metrics_collector_fn fn, void *arg);
void cdb__metrics_remove_collector(cdb__metrics_collector_fn fn, void *arg);

/*
 * The whole exposition (text format 0.0.4): every family of the registry,
 * then the process's own (/proc/self), then each collector's. malloc'd
 * text, NULL on out of memory. Media type: CDB_METRICS_MEDIA_TYPE.
 */
#define CDB_METRICS_MEDIA_TYPE "text/plain; version=0.0.4; charset=utf-8"  /* = CDB_METRICS_CONTENT_TYPE */
char *cdb__metrics_render(void);

/* ---- for GET /api/v1/admin/metrics/performance and /errors ---- */

/* {route: {count, p50_ms, p90_ms, p99_ms}} from the duration histograms (routes with requests only).
 * New reference; NULL on out of memory. */
json_t *cdb__metrics_latency_json(void);
/* {by_code: [{code, route, count}], recent: [{at, request_id, method, route, status, code}]}
 * (recent: the last 50 error answers, newest first). New reference; NULL on out of memory. */
json_t *cdb__metrics_errors_json(void);

#endif
