/*
 * metrics.h - the process's Prometheus metrics, for a program that embeds
 * coredb and serves or pushes them itself (coredb serve answers GET
 * /metrics with the same text). One registry per process: every service
 * opened by the program adds into it. docs/operations.md "Metrics" lists
 * the families.
 */
#ifndef COREDB_METRICS_H
#define COREDB_METRICS_H

/* The Content-Type of cdb_metrics_render's text. */
#define CDB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * Every metric in the Prometheus text exposition format 0.0.4. Reads the
 * gauges of started services (pool, Redis, PostgreSQL statistics, the
 * latter with a 2 s deadline), so it may block: call it from a thread
 * that may. Any thread. A malloc'd string the caller frees; NULL when out
 * of memory.
 */
char *cdb_metrics_render(void);

#endif
