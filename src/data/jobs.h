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

#endif
