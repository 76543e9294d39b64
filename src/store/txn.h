/*
 * txn.h - the one way the library takes a pooled connection and runs a
 * transaction on it: acquire, begin (plainly, or pipelined as a database
 * role with the settings row-level security reads), commit, release. Users,
 * sessions, the data API, the ledger and the outbox all go through it, so
 * every path fails the same way when there is no pool and gives connections
 * back in the same state.
 */
#ifndef COREDB_STORE_TXN_H
#define COREDB_STORE_TXN_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/error.h"
#include "store/pool.h"

/* An ISO 8601 UTC rendering of a timestamptz column, "2024-01-15T10:30:00Z". */
#define CDB_SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* How many results cdb_txn_pipeline_begin_as queues (BEGIN, role + settings). */
#define CDB_TXN_PRELUDE_COUNT 2

/* How many results cdb_txn_pipeline_read_as queues (role + settings). */
#define CDB_TXN_READ_PRELUDE_COUNT 1

/* A pooled connection; NULL + DATABASE_UNAVAILABLE without a pool, or the pool's error. */
PGconn *cdb_txn_acquire(cdb_pool *pool, cdb_pool_conn **pc, cdb_error *err);
/*
 * Gives a connection back clean: leaves pipeline mode (draining what is
 * pending), rolls back an open transaction; anything doubtful is left to
 * cdb_pool_release, which closes the connection. pc may be NULL.
 */
void cdb_txn_release(cdb_pool *pool, cdb_pool_conn *pc);
int cdb_txn_begin(PGconn *conn, cdb_error *err);
int cdb_txn_commit(PGconn *conn, cdb_error *err);

/* Queues sql, as the prepared statement name when not NULL. False when sending failed. */
bool cdb_txn_send(PGconn *conn, const char *name, const char *sql, int nparams,
                  const char *const *params);

/*
 * Enters pipeline mode on pc and queues: BEGIN, then `first` (when not NULL,
 * unnamed, with its params: it runs as the service's login role), then one
 * prepared statement that switches to db_role (SET LOCAL ROLE) and sets
 * app.current_user_id / app.current_role. CDB_TXN_PRELUDE_COUNT results
 * follow (one more with `first`). The prelude is prepared on the
 * connection: prepare the request's own statements BEFORE calling this.
 */
int cdb_txn_pipeline_begin_as(cdb_pool_conn *pc, const char *db_role, const char *user_id,
                              const char *app_role, const char *first, int nparams,
                              const char *const *params, cdb_error *err);

/*
 * The same for a read that needs no transaction block: enters pipeline
 * mode and queues the prepared role + settings statement alone (no BEGIN).
 * Everything queued after it up to PQpipelineSync runs in ONE implicit
 * transaction (the extended query protocol closes a transaction at Sync,
 * PostgreSQL 15 docs 55.2.4 "Pipelining"), so the transaction-local role
 * and settings hold for exactly those statements and are undone at the
 * Sync, committed or failed. Only on an idle connection: inside an open
 * transaction they would outlive the request (INTERNAL_ERROR then).
 * CDB_TXN_READ_PRELUDE_COUNT results follow.
 */
int cdb_txn_pipeline_read_as(cdb_pool_conn *pc, const char *db_role, const char *user_id,
                             const char *app_role, cdb_error *err);

/*
 * The text of that role + settings statement ($1 database role, $2 user id,
 * $3 application role), for a pipeline built elsewhere (the event loops'
 * connections, store/pg_async.h): run it first, up to one Sync.
 */
const char *cdb_txn_read_prelude_sql(void);

#endif
