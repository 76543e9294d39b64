/*
 * sizing.h - how many instances of this configuration the PostgreSQL server
 * has room for (docs/deployment.md, "Sizing"): checked once at start.
 */
#ifndef COREDB_MANAGEMENT_SIZING_H
#define COREDB_MANAGEMENT_SIZING_H

#include <stdbool.h>

typedef struct cdb_service cdb_service;

/* Connections kept free for what is not an instance's pool: operators
 * (psql), `coredb migrate`/`backup` (pg_dump), lease holders' own logins,
 * replication, monitoring. */
#define CDB_SIZING_RESERVE 10

typedef struct cdb_sizing {
    int usable;        /* max_connections - superuser_reserved_connections - CDB_SIZING_RESERVE */
    int fit;           /* instances of DB_POOL_MAX that fit in usable (0: not even one) */
    int free_now;      /* usable - connections open now (all clients, this instance's included) */
    bool pool_too_big; /* DB_POOL_MAX alone exceeds usable */
} cdb_sizing;

/* The arithmetic, given what the server reports (pure: unit-tested). */
void cdb_sizing_eval(int max_connections, int superuser_reserved, int open_now, int pool_max,
                     cdb_sizing *out);

/*
 * Asks the server (SHOW max_connections, superuser_reserved_connections,
 * pg_stat_activity) on a pooled connection, logs the headroom
 * ("serve.sizing") and warns when DB_POOL_MAX alone does not fit. Never
 * fails the start: an unreadable answer is one warning line.
 */
void cdb_sizing_check_start(cdb_service *svc);

#endif
