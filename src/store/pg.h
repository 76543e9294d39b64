/*
 * pg.h - thin helpers over libpq: connecting with coredb's session settings,
 * running one statement with bound parameters, and turning PostgreSQL
 * failures into coredb error codes without leaking SQL text.
 *
 * Client-side deadlines. PostgreSQL's statement_timeout only helps while the
 * server runs: a stopped server, a dead host or a black-holed network would
 * keep a worker waiting in libpq for as long as TCP takes to give up (about
 * 15 minutes). So every wait for the server here has a deadline of its own:
 * a connection opened with a statement timeout T waits at most
 * T + CDB_PG_DEADLINE_MARGIN_MS for each round trip (each result of a
 * pipeline), a connect at most connect_timeout_s. When a deadline expires
 * the connection is closed on the spot (PQstatus turns CONNECTION_BAD, so
 * the pool discards it) and the caller gets DATABASE_TIMEOUT. Connections
 * without a statement timeout (the CLI's migrations) have no round-trip
 * deadline. Use cdb_pg_exec / cdb_pg_query* / cdb_pg_get_result for every
 * wait on a connection from cdb_pg_connect, never PQexec* or a bare
 * PQgetResult on a busy connection.
 */
#ifndef COREDB_PG_H
#define COREDB_PG_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"

/*
 * What the client waits beyond the server's statement_timeout before it
 * gives the server up. The server's timer starts when it starts the
 * statement and ours when we begin to wait, so the margin only has to hold
 * one network round trip and the server getting scheduled to send its
 * 57014 error: that does not grow with the timeout, hence a fixed second
 * rather than a percentage (10% of a 300 ms timeout would be 30 ms, less
 * than one busy scheduler tick on a loaded host).
 */
#define CDB_PG_DEADLINE_MARGIN_MS 1000
#define CDB_PG_NO_TIMEOUT_DEADLINE_MS 300000   /* a job's deadline without a statement timeout */

/* A job's client-side deadline on the event loops (pg_async.c, pg_borrow.c's callers):
 * statement_timeout_ms + CDB_PG_DEADLINE_MARGIN_MS, or 5 minutes without a statement timeout. */
static inline int cdb_pg_job_deadline_ms(int statement_timeout_ms)
{
    return statement_timeout_ms > 0 ? statement_timeout_ms + CDB_PG_DEADLINE_MARGIN_MS
                                    : CDB_PG_NO_TIMEOUT_DEADLINE_MS;
}

typedef struct cdb_pg_settings {
    const char *conninfo;          /* libpq URI or key=value string */
    const char *sslmode;           /* NULL: leave as in conninfo */
    const char *application_name;  /* NULL: "coredb" */
    int connect_timeout_s;         /* 0: 5 s */
    int statement_timeout_ms;      /* 0: no statement_timeout */
    int round_trip_timeout_ms;     /* client deadline per round trip; 0: statement_timeout_ms
                                      + CDB_PG_DEADLINE_MARGIN_MS, none without a statement timeout */
} cdb_pg_settings;

/*
 * Opens a blocking connection with TCP keepalives, tcp_user_timeout, the
 * given sslmode, statement_timeout and application_name, waiting at most
 * connect_timeout_s (the whole startup: TCP, TLS, authentication) or until
 * deadline_ms (cdb_mono_ms() clock; 0 = no earlier limit), whichever comes
 * first. Returns NULL and fills err (DATABASE_UNAVAILABLE, message without
 * the password; details.reason "timeout" when the time ran out) when it
 * fails. Caller owns the connection (PQfinish).
 */
PGconn *cdb_pg_connect_until(const cdb_pg_settings *s, int64_t deadline_ms, cdb_error *err);
/*
 * The same connection opened without blocking, for an event loop
 * (store/pg_async.c): _start begins it (PQconnectStartParams with every
 * setting above; NULL + err on a bad conninfo or out of memory), the
 * caller drives PQconnectPoll on the socket and bounds it by
 * connect_timeout_s itself, then calls _done once it is made (the
 * deadline state and notice logging; < 0 on out of memory).
 * _failure writes why a connect failed, without the password.
 */
PGconn *cdb_pg_connect_start(const cdb_pg_settings *s, cdb_error *err);
int cdb_pg_connect_done(PGconn *conn, const cdb_pg_settings *s, cdb_error *err);
void cdb_pg_connect_failure(PGconn *conn, char *buf, size_t len);
/* cdb_pg_connect_until with no earlier limit than connect_timeout_s. */
PGconn *cdb_pg_connect(const cdb_pg_settings *s, cdb_error *err);

/*
 * Caps every later round trip on conn at deadline_ms (cdb_mono_ms() clock)
 * on top of its own per-round-trip deadline, for a caller with a budget of
 * its own (/health); 0 removes the cap. Only the holder of conn may call it.
 */
void cdb_pg_set_deadline(PGconn *conn, int64_t deadline_ms);

/* True once a client-side deadline expired on conn (it is then closed). */
bool cdb_pg_timed_out(PGconn *conn);
/*
 * Closes conn as an expired deadline does (marked timed out, CONNECTION_BAD),
 * for a deadline kept by an event loop instead (store/pg_borrow.c).
 */
void cdb_pg_expire(PGconn *conn);

/*
 * PQgetResult with the connection's deadline, counted from now: 0 and *out
 * = the next result (NULL when there is none left); on expiry the
 * connection is closed, *out is NULL and DATABASE_TIMEOUT is returned.
 */
int cdb_pg_get_result(PGconn *conn, PGresult **out, cdb_error *err);

/*
 * PQexec / PQexecParams / PQprepare with the connection's deadline: the
 * same result (status to be checked by the caller), or NULL when the query
 * could not be sent or the deadline expired (cdb_pg_timed_out tells which;
 * cdb_pg_error_from_result(conn, NULL, ...) maps either). cdb_pg_query may
 * hold several statements (simple protocol); the result is the last one, or
 * the first error. Caller PQclears the result.
 */
PGresult *cdb_pg_query(PGconn *conn, const char *sql);
PGresult *cdb_pg_query_params(PGconn *conn, const char *sql, int nparams, const char *const *params);
PGresult *cdb_pg_prepare(PGconn *conn, const char *name, const char *sql, int nparams);

/*
 * Runs one statement (PQexecParams, text parameters, text results) within
 * the connection's deadline.
 * On success returns 0 and, when out is not NULL, gives the caller the
 * PGresult (PQclear it). On failure returns the cdb_err from
 * cdb_pg_error_from_result()/connection state; *out is NULL.
 */
int cdb_pg_exec(PGconn *conn, const char *sql, int nparams,
                const char *const *params, PGresult **out, cdb_error *err);

/*
 * Maps a failed result (or NULL result with a broken connection) to a coredb
 * error: 57014 statement timeout or an expired client deadline (see
 * cdb_pg_timed_out) -> DATABASE_TIMEOUT, connection failures and
 * 57P0x -> DATABASE_UNAVAILABLE, 23505 -> CONFLICT, 23502/23514/23503/22xxx ->
 * VALIDATION_FAILED, 42501 -> FORBIDDEN, others -> INTERNAL_ERROR. The message
 * is client-safe; the SQLSTATE goes to details.sqlstate. The full server
 * message is logged at debug level only.
 */
cdb_err cdb_pg_error_from_result(PGconn *conn, const PGresult *res, cdb_error *err);

/* True when the connection is usable (status OK, idle, no deadline expired). */
bool cdb_pg_conn_ok(PGconn *conn);

/* Parses JSON text produced by PostgreSQL (json_build_object(...)::text) into *out (caller owns). */
int cdb_pg_json_parse(const char *text, json_t **out, cdb_error *err);

#endif
