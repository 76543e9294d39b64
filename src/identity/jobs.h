/*
 * jobs.h - the identity module's background jobs, registered by the
 * service (service/start.c) on the service's job thread (core/jobs.h).
 */
#ifndef COREDB_IDENTITY_JOBS_H
#define COREDB_IDENTITY_JOBS_H

#include "core/jobs.h"

typedef struct cdb_service cdb_service;

/* Session reaping, every 60 s. -1 when the job table is full. */
int cdb_identity_register_jobs(cdb_service *svc, cdb_jobs *jobs);

#endif
