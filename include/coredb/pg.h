/*
 * pg.h - thin helpers over libpq: connecting with coredb's session settings,
 * running one statement with bound parameters, and turning PostgreSQL
 * failures into coredb error codes without leaking SQL text.
 */
#ifndef COREDB_PG_H
#define COREDB_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"

typedef struct cdb_pg_settings {
    const char *conninfo;          /* libpq URI or key=value string */
    const char *sslmode;           /* NULL: leave as in conninfo */
    const char *application_name;  /* NULL: "coredb" */
    int connect_timeout_s;         /* 0: 5 s */
    int statement_timeout_ms;      /* 0: no statement_timeout */
} cdb_pg_settings;

/*
 * Opens a blocking connection with TCP keepalives, the given sslmode,
 * statement_timeout and application_name. Returns NULL and fills err
 * (DATABASE_UNAVAILABLE, message without the password) when it fails.
 * Caller owns the connection (PQfinish).
 */
PGconn *cdb_pg_connect(const cdb_pg_settings *s, cdb_error *err);

/*
 * Runs one statement (PQexecParams, text parameters, text results).
 * On success returns 0 and, when out is not NULL, gives the caller the
 * PGresult (PQclear it). On failure returns the cdb_err from
 * cdb_pg_error_from_result()/connection state; *out is NULL.
 */
int cdb_pg_exec(PGconn *conn, const char *sql, int nparams,
                const char *const *params, PGresult **out, cdb_error *err);

/*
 * Maps a failed result (or NULL result with a broken connection) to a coredb
 * error: 57014 statement timeout -> DATABASE_TIMEOUT, connection failures and
 * 57P0x -> DATABASE_UNAVAILABLE, 23505 -> CONFLICT, 23502/23514/23503/22xxx ->
 * VALIDATION_FAILED, 42501 -> FORBIDDEN, others -> INTERNAL_ERROR. The message
 * is client-safe; the SQLSTATE goes to details.sqlstate. The full server
 * message is logged at debug level only.
 */
cdb_err cdb_pg_error_from_result(PGconn *conn, const PGresult *res, cdb_error *err);

/* True when the connection is usable (status OK, not in a failed state). */
bool cdb_pg_conn_ok(PGconn *conn);

#endif
