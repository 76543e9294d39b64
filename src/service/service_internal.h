/*
 * service_internal.h - what the front ends (http/, cli/) of the library
 * need of a service beyond the public API: the request quota table and the
 * test hook. Not installed; embedders use coredb/service.h.
 */
#ifndef COREDB_SERVICE_INTERNAL_H
#define COREDB_SERVICE_INTERNAL_H

#include "coredb/service.h"
#include "security/ratelimit.h"

/* The rate limiter of per-caller quotas (not owned). */
cdb_ratelimit *cdb_service_ratelimit(cdb_service *svc);

/*
 * POST /test/sleep (test builds of the HTTP API): holds a pooled connection
 * in pg_sleep(seconds). Blocking.
 */
int cdb_service_test_sleep(cdb_service *svc, double seconds, cdb_error *err);

#endif
