/*
 * jobs.h - the management module's background jobs, registered by the
 * service (service/start.c) on the service's job thread (core/jobs.h).
 */
#ifndef COREDB_MANAGEMENT_JOBS_H
#define COREDB_MANAGEMENT_JOBS_H

#include "core/jobs.h"

typedef struct cdb_service cdb_service;

/*
 * Scheduled backups every BACKUP_INTERVAL (nothing when it is 0):
 * create, verify, cleanup. -1 when the job table is full.
 */
int cdb_management_register_jobs(cdb_service *svc, cdb_jobs *jobs);

/*
 * The connection lease reaper (cdb_lease_reap) every second: expired
 * leases, and at start-up those a crashed instance left. -1 when the job
 * table is full.
 */
int cdb_lease_register_jobs(cdb_service *svc, cdb_jobs *jobs);

/*
 * Column encryption jobs left running by a crash or restart (untouched for
 * 3 s) are taken up again every 2 s (coredb/encryption.h).
 */
int cdb_encryption_register_jobs(cdb_service *svc, cdb_jobs *jobs);

#endif
