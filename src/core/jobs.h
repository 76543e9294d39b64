/*
 * jobs.h - one thread that runs periodic background jobs (session reaping,
 * the Redis outbox, ledger expiry; lease expiry and scheduled backups as
 * they land). It knows nothing of what the jobs do: the module that owns a
 * job registers it (cdb_jobs_add) before cdb_jobs_start. Each run's failure
 * is logged and never takes the service down.
 */
#ifndef COREDB_CORE_JOBS_H
#define COREDB_CORE_JOBS_H

#include "coredb/error.h"

typedef struct cdb_jobs cdb_jobs;

/* One run of a job; arg as registered. 0 or a negative cdb_err with err filled. */
typedef int (*cdb_job_fn)(void *arg, cdb_error *err);

#define CDB_JOBS_MAX 16
#define CDB_JOBS_FIRST_MS 5000     /* cdb_jobs_add's first run after start */

/* An empty set of jobs, not running. NULL when out of memory. Free with cdb_jobs_free. */
cdb_jobs *cdb_jobs_new(void);
/*
 * Registers a job run every interval_s seconds (first run CDB_JOBS_FIRST_MS after start).
 * name must outlive the set. Only before cdb_jobs_start. -1 when full.
 */
int cdb_jobs_add(cdb_jobs *jobs, const char *name, int interval_s, cdb_job_fn fn, void *arg);
/* The same every interval_ms milliseconds, the first run first_ms after start (0: at once). */
int cdb_jobs_add_ms(cdb_jobs *jobs, const char *name, int interval_ms, int first_ms, cdb_job_fn fn, void *arg);
/* Starts the thread. -1 when it could not be created (the jobs then do not run). */
int cdb_jobs_start(cdb_jobs *jobs);
/* Stops the thread promptly (within a tick) when running, joins it and frees. NULL is a no-op. */
void cdb_jobs_free(cdb_jobs *jobs);

#endif
