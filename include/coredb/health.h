/*
 * health.h - health checks behind GET /health, /health/live, /health/ready.
 * They block (they talk to PostgreSQL and Redis): run them on a worker.
 */
#ifndef COREDB_HEALTH_H
#define COREDB_HEALTH_H

#include <jansson.h>

#include "coredb/service.h"

/*
 * The full report of API.md ("UP", "DEGRADED" when only an optional backend
 * is down, "DOWN" when PostgreSQL is). Returns the HTTP status (200 or 503);
 * *out is owned by the caller.
 */
int cdb_health_report(cdb_service *svc, json_t **out);

/*
 * Readiness: 200 when PostgreSQL answers and no migration is pending, else
 * 503. {"status", "checks": {"postgresql": {...}, "migrations": {"pending": n}}}.
 */
int cdb_health_ready(cdb_service *svc, json_t **out);

#endif
