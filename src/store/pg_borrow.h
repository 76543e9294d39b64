/*
 * pg_borrow.h - one short job run without blocking on a PostgreSQL
 * connection the caller borrowed from elsewhere (a connection lease's
 * reserved connection, store/reserved.h), watched by an event loop: the
 * data API's read with X-Connection-ID runs on the loop that admitted it
 * (http/loop_lease.c) instead of on a worker thread.
 *
 * The connection belongs to blocking code before and after the job
 * (store/txn.c, the worker path). So the job puts it in non-blocking
 * pipeline mode, sends its statements as one pipeline segment ending with
 * a Sync — each unnamed (PQsendQueryParams), or under a name the caller
 * took from the connection's own table of prepared statements
 * (cdb_pool_conn_prepared_name, store/pool.h, so names never collide),
 * prepared first in the same segment (PQsendPrepare) when it is new — watches the socket with a libevent
 * event on the loop, collects the results, and hands the connection back
 * as the blocking code expects it: blocking mode, pipeline off, nothing
 * pending, idle (the Sync closes the implicit transaction, committed or
 * failed). When that cannot be had, the connection is left broken
 * (CONNECTION_BAD: the pool closes it when it is given back), never
 * half-read.
 *
 * Outcomes, each reported exactly once through the callback, on the loop,
 * never inside cdb_pgb_start:
 *   - CDB_PGB_OK: every statement's first result, in order; connection clean;
 *   - CDB_PGB_ERROR: an error result (sqlstate tells which); connection clean;
 *   - CDB_PGB_TIMEOUT: the server's statement_timeout (57014; connection
 *     clean), or the job's deadline passed: the connection is then expired
 *     exactly as a blocking wait's deadline does (store/pg.h
 *     cdb_pg_expire: closed, marked timed out);
 *   - CDB_PGB_LOST: the connection failed or answered out of step (broken);
 *   - CDB_PGB_ABORTED: cdb_pgb_abort (shutdown); the connection is broken.
 *
 * Threads: everything on the thread of the event base, which the
 * connection's borrower must not touch until the callback ran.
 */
#ifndef COREDB_STORE_PG_BORROW_H
#define COREDB_STORE_PG_BORROW_H

#include <libpq-fe.h>
#include <stdbool.h>

struct event_base;

typedef struct cdb_pgb cdb_pgb;

enum { CDB_PGB_MAX_STMTS = 4 };

/*
 * One statement: its text and text parameters (copied by libpq when sent);
 * name NULL: sent unnamed; else run as that prepared statement, prepared
 * first in the same segment when prepare (the prepares go ahead of every
 * statement, in the order of stmts).
 */
typedef struct cdb_pgb_stmt {
    const char *sql;
    int nparams;
    const char *const *params;
    const char *name;
    bool prepare;
} cdb_pgb_stmt;

typedef enum cdb_pgb_outcome {
    CDB_PGB_OK,
    CDB_PGB_ERROR,
    CDB_PGB_TIMEOUT,
    CDB_PGB_LOST,
    CDB_PGB_ABORTED,
} cdb_pgb_outcome;

/*
 * res: the n results in statement order with CDB_PGB_OK (owned by the job,
 * valid during the call), NULL otherwise; sqlstate: the error's with
 * CDB_PGB_ERROR and CDB_PGB_TIMEOUT from the server, "" otherwise;
 * prepared: how many of the statements to prepare (the first ones, in
 * order) the server accepted, whatever the outcome (a prepared statement
 * outlives a failed transaction): the caller records them. The job is
 * freed when the callback returns; the connection is the borrower's again.
 */
typedef void (*cdb_pgb_cb)(cdb_pgb_outcome outcome, PGresult *const *res, int n, const char *sqlstate,
                           int prepared, void *arg);

/*
 * Starts stmts (1..CDB_PGB_MAX_STMTS) on conn, which must be usable and
 * idle (status OK, not in a transaction, pipeline off, blocking), with a
 * deadline of timeout_ms (> 0) from now. NULL when it could not start
 * (conn not in that state: left untouched; sending failed or out of
 * memory: conn left broken); cb never runs then.
 */
cdb_pgb *cdb_pgb_start(struct event_base *base, PGconn *conn, const cdb_pgb_stmt *stmts, int n, int timeout_ms,
                       cdb_pgb_cb cb, void *arg);

/*
 * Breaks conn for good (CONNECTION_BAD, so the pool closes it when it is
 * given back), without the deadline's mark: for a borrower that cannot
 * vouch for its state.
 */
void cdb_pgb_break(PGconn *conn);

/* Ends a running job now (shutdown): cb runs with CDB_PGB_ABORTED before this returns. */
void cdb_pgb_abort(cdb_pgb *job);

#endif
