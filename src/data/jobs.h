/*
 * jobs.h - the data module's background jobs, registered by the service
 * (service/start.c) on the service's job thread (core/jobs.h).
 */
#ifndef COREDB_DATA_JOBS_H
#define COREDB_DATA_JOBS_H

#include "core/jobs.h"

typedef struct cdb_service cdb_service;

/* Outbox flushing (every second) and ledger expiry (every 60 s). -1 when the table is full. */
int cdb_data_register_jobs(cdb_service *svc, cdb_jobs *jobs);
/*
 * The encrypted columns' snapshot refresh (every 500 ms, first at once), on
 * a job thread of its own (svc->snapshot_jobs): the loops use the snapshot
 * only while it is younger than CDB_COLRING_TTL_MS (2 s), and on the shared
 * thread the other jobs' database round trips, slow when the loops keep the
 * cores busy, held it past that (bench/RESULTS.md: hit p99).
 */
int cdb_data_register_snapshot_jobs(cdb_service *svc, cdb_jobs *jobs);

#endif
