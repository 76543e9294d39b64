/*
 * coredb.h - the library's whole public API, for a program linking
 * libcoredb (examples/embed.c). Each header below is one part of it; the
 * naming table in docs/architecture.md maps them to the seed's Python API.
 * The library's own files include the single headers they need, never this.
 */
#ifndef COREDB_COREDB_H
#define COREDB_COREDB_H

#include "coredb/version.h"      /* CDB_SERVICE_NAME, CDB_VERSION */
#include "coredb/error.h"        /* cdb_error, error codes and their HTTP statuses */
#include "coredb/result.h"       /* {status, error, timestamp, ...data}: the result form */
#include "coredb/log.h"          /* JSON-lines logging */
#include "coredb/config.h"       /* cdb_config_load: every variable of API.md */
#include "coredb/role.h"         /* application roles */
#include "coredb/principal.h"    /* who is calling; self or admin */
#include "coredb/audit.h"        /* the tamper-evident log of administrative actions */
#include "coredb/idempotency.h"  /* Idempotency-Key answers */
#include "coredb/service.h"      /* open, start, close; health; migrations */
#include "coredb/health.h"       /* UP / DEGRADED / DOWN; detailed connection, query, resource health */
#include "coredb/migrate.h"      /* the migration engine */
#include "coredb/migrate_runs.h" /* migration runs in the background (HTTP) */
#include "coredb/users.h"        /* UserService */
#include "coredb/sessions.h"     /* login, refresh, logout, sessions */
#include "coredb/data.h"         /* structured queries and transactions (ConnectionAPI data part) */
#include "coredb/tables.h"       /* exposing an application's own tables to the data API */
#include "coredb/access.h"       /* row-level security policies, schema grants, ownership */
#include "coredb/backup.h"       /* backups: create, list, verify, cleanup */
#include "coredb/dbauth.h"       /* database roles and users (DatabaseAuth) */
#include "coredb/restore.h"      /* restoring a backup archive (maintenance mode) */
#include "coredb/monitor.h"      /* monitoring: table, performance and error metrics (DatabaseMonitor) */
#include "coredb/http.h"         /* the HTTP/JSON front end, for a program that serves it itself */
#include "coredb/metrics.h"      /* the Prometheus text of the process's metrics */

#endif
