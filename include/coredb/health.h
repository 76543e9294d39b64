/*
 * health.h - the service's health as the library reports it: UP, DEGRADED
 * (only an optional backend, Redis, is down) or DOWN (PostgreSQL is). How a
 * front end shows it is the front end's business (HTTP: 200 for UP and
 * DEGRADED, 503 for DOWN). The reports themselves are cdb_service_health()
 * and cdb_service_ready() (service.h).
 */
#ifndef COREDB_HEALTH_H
#define COREDB_HEALTH_H

typedef enum cdb_health_status {
    CDB_HEALTH_UP = 0,
    CDB_HEALTH_DEGRADED,
    CDB_HEALTH_DOWN,
} cdb_health_status;

/* "UP" | "DEGRADED" | "DOWN" */
const char *cdb_health_status_name(cdb_health_status s);

#endif
