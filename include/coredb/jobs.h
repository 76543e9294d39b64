/*
 * jobs.h - the service's background work: one thread that runs periodic
 * jobs: session reaping (every 60 s) and the Redis outbox (every second);
 * lease expiry and scheduled backups as they land. Each job logs what it did and never takes the
 * service down when it fails.
 */
#ifndef COREDB_JOBS_H
#define COREDB_JOBS_H

#include "coredb/service.h"

typedef struct cdb_jobs cdb_jobs;

/* Starts the thread. NULL on failure (the service can run without it). */
cdb_jobs *cdb_jobs_start(cdb_service *svc);
/* Stops promptly (within a tick) and joins. NULL is a no-op. */
void cdb_jobs_stop(cdb_jobs *jobs);

#endif
