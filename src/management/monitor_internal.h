/*
 * monitor_internal.h - what the monitoring (monitor.c) and the detailed
 * health (monitor_health.c) share: the admin check with a pooled connection
 * under a budget, and one statement answering one JSON document.
 */
#ifndef COREDB_MANAGEMENT_MONITOR_INTERNAL_H
#define COREDB_MANAGEMENT_MONITOR_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>

#include "coredb/error.h"
#include "coredb/monitor.h"
#include "coredb/principal.h"
#include "security/service_state.h"

/*
 * Statement text as the reports show it (column expression over `col`):
 * runs of white space made one space (one line per statement), cut to
 * CDB_MONITOR_QUERY_TEXT_MAX characters, and replaced as a whole
 * when it mentions a password, since the text of a statement can hold
 * literals (ALTER ROLE ... PASSWORD '...').
 */
#define CDB__MONITOR_STR_(x) #x
#define CDB__MONITOR_STR(x) CDB__MONITOR_STR_(x)
#define CDB__MONITOR_QUERY_TEXT(col)                                               \
    "CASE WHEN " col " ~* 'passw(or)?d' THEN '<redacted: mentions a password>'" \
    " ELSE left(regexp_replace(" col ", '\\s+', ' ', 'g'), "                    \
    CDB__MONITOR_STR(CDB_MONITOR_QUERY_TEXT_MAX) ") END"

/* 0 for an admin; UNAUTHORIZED / FORBIDDEN ("read monitoring data") otherwise. */
int cdb__monitor_require_admin(const cdb_principal *caller, cdb_error *err);

/*
 * A pooled connection of svc within acquire_ms, whose round trips end within
 * query_ms after it is handed out (cdb_pg_set_deadline; the release clears
 * it), inside a READ ONLY transaction whose statements PostgreSQL itself
 * cancels after 80 % of query_ms. NULL with err set (DATABASE_UNAVAILABLE
 * without a pool, or the pool's error). Give it back with
 * cdb__monitor_release.
 */
cdb_pool_conn *cdb__monitor_acquire(cdb_service *svc, int acquire_ms, int query_ms, cdb_error *err);
/* Ends the transaction and gives conn back to svc's pool. */
void cdb__monitor_release(cdb_service *svc, cdb_pool_conn *conn);

/*
 * Runs sql (one row, one column of JSON text, built by PostgreSQL so that
 * numbers stay numbers) with text parameters; *out (caller owns) is the
 * parsed value. Errors as cdb_pg_exec maps them.
 */
int cdb__monitor_json(PGconn *conn, const char *sql, int nparams, const char *const *params,
                      json_t **out, cdb_error *err);

#endif
