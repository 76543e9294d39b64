/*
 * pool.h - the PostgreSQL connection pool.
 *
 * Connections are blocking libpq connections used by worker threads (see
 * docs/architecture.md for why). The pool keeps between min and max
 * connections, closes connections idle for longer than idle_timeout_ms (down
 * to min), validates a connection before handing it out when it has been
 * idle for a while, and reconnects with exponential backoff while the server
 * is down. Every function is thread-safe.
 */
#ifndef COREDB_POOL_H
#define COREDB_POOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"

typedef struct cdb_pool cdb_pool;
typedef struct cdb_pool_conn cdb_pool_conn;

typedef struct cdb_pool_options {
    const char *conninfo;          /* copied */
    const char *sslmode;           /* copied; NULL = libpq default */
    const char *application_name;  /* copied; NULL = "coredb" */
    int min_size;
    int max_size;
    int idle_timeout_ms;
    int acquire_timeout_ms;
    int statement_timeout_ms;
} cdb_pool_options;

typedef struct cdb_pool_stats {
    int active;                    /* handed out */
    int idle;                      /* open and free */
    int waiting;                   /* threads blocked in acquire */
    int total;                     /* active + idle */
    int max;
    bool server_up;                /* false after a failed connect, until one succeeds */
    uint64_t acquired_total;
    uint64_t acquire_timeouts_total;
    uint64_t connects_total;
    uint64_t connect_failures_total;
} cdb_pool_stats;

/*
 * Creates the pool and starts its maintenance thread, which opens min_size
 * connections in the background. Does not fail when the server is down.
 * Returns NULL only on invalid options or out of memory.
 */
cdb_pool *cdb_pool_new(const cdb_pool_options *opt, cdb_error *err);
/* Closes every connection; no connection may be in use. */
void cdb_pool_free(cdb_pool *pool);

/*
 * Hands out a connection, waiting until deadline_ms (cdb_mono_ms() clock;
 * 0 = now + acquire_timeout_ms); a connect or validation it runs ends by
 * then too, though it gets at least one second. Errors: POOL_EXHAUSTED
 * (details.retry_after, details.pool_status "exhausted") when none freed
 * up in time, DATABASE_UNAVAILABLE when no connection can be opened,
 * DATABASE_TIMEOUT when the server did not answer the validation of an
 * idle connection in time.
 */
cdb_pool_conn *cdb_pool_acquire(cdb_pool *pool, int64_t deadline_ms, cdb_error *err);
/* The libpq connection of a handed-out pool connection. */
PGconn *cdb_pool_conn_pg(cdb_pool_conn *conn);

#define CDB_POOL_MAX_STATEMENTS 64

/*
 * Server-side prepared statements, kept per connection for its lifetime, so
 * PostgreSQL parses and plans a statement shape once per connection instead
 * of on every request. *name gets the statement's name for sql, preparing
 * it first (one blocking round trip, outside pipeline mode) when this
 * connection has not seen sql yet; NULL when the connection already holds
 * CDB_POOL_MAX_STATEMENTS (run sql unprepared then). Only the holder of the
 * connection may call it. Errors are those of the PREPARE.
 */
int cdb_pool_conn_prepare(cdb_pool_conn *conn, const char *sql, int nparams, const char **name,
                          cdb_error *err);
/*
 * For a holder that prepares in a pipeline of its own without blocking
 * (http/loop_lease.c over store/pg_borrow.h), from the same table, so the
 * names never collide: the name sql has on this connection (*fresh false),
 * else the name the k-th statement recorded next will get (*fresh true; k
 * counts the fresh ones of one pipeline from 0; written into buf), or NULL
 * when the table would be full (run sql unnamed then). Record each fresh
 * one the server accepted (its prepare answered OK) with
 * cdb_pool_conn_prepared_record, in the order they were numbered: -1 on
 * out of memory (the connection must then not be reused: it holds a name
 * the table does not know).
 */
const char *cdb_pool_conn_prepared_name(cdb_pool_conn *conn, const char *sql, int k, bool *fresh, char *buf,
                                        size_t len);
int cdb_pool_conn_prepared_record(cdb_pool_conn *conn, const char *sql);
/*
 * Gives a connection back. A connection that is broken or inside a
 * transaction is closed instead of being reused; one whose client-side
 * deadline expired (cdb_pg_timed_out) also marks the server down, as a
 * failed connect does. Clears any cdb_pg_set_deadline cap.
 */
void cdb_pool_release(cdb_pool *pool, cdb_pool_conn *conn);

void cdb_pool_get_stats(cdb_pool *pool, cdb_pool_stats *out);
const char *cdb_pool_conninfo(const cdb_pool *pool);
/* The statement timeout its connections run with (0: none). */
int cdb_pool_statement_timeout_ms(const cdb_pool *pool);
/*
 * The connection settings of its connections (store/pg.h), for the event
 * loops' own connections (store/pg_async.h), opened and configured like
 * the pool's. Valid while the pool lives; read-only.
 */
const struct cdb_pg_settings *cdb_pool_pg_settings(const cdb_pool *pool);
/*
 * Someone else (a loop's own connection: store/pg_async.h) just connected
 * to the server while the pool takes it for down: the next acquire may try
 * a connect at once instead of failing until its backoff ends.
 */
void cdb_pool_server_answers(cdb_pool *pool);

#endif
