/*
 * data_internal.h - what the query path (query.c) and the transaction path
 * (tx.c, tx_parse.c) share: the prelude that opens every data request's
 * transaction under the caller's database role (store/txn.h), reading
 * pipelined results, mapping PostgreSQL failures to the data API's errors,
 * and the caller's Redis namespace. Implemented in common.c.
 *
 * Every request runs on ONE pooled connection in ONE transaction:
 *   BEGIN;
 *   SELECT set_config('role', <db role>, true), set_config('app.current_user_id', ...),
 *          set_config('app.current_role', ...);   -- prepared, = SET LOCAL ROLE + settings
 *   ...statements...; COMMIT
 * (a read drops BEGIN and COMMIT: the pipeline up to its Sync is one
 * implicit transaction), and the SQL of that prelude lives only in store/txn.c.
 */
#ifndef COREDB_DATA_INTERNAL_H
#define COREDB_DATA_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stddef.h>

#include "coredb/principal.h"
#include "coredb/error.h"
#include "store/txn.h"
#include "security/service_state.h"

/* Longest Redis key a caller may name (bytes, before the namespace prefix). */
#define CDB_DATA_REDIS_KEY_MAX 512

/* How many results cdb_data_start_pipeline queues (BEGIN, role + settings). */
#define CDB_DATA_PRELUDE_COUNT CDB_TXN_PRELUDE_COUNT

/* How many results cdb_data_start_read_pipeline queues (role + settings). */
#define CDB_DATA_READ_PRELUDE_COUNT CDB_TXN_READ_PRELUDE_COUNT

/*
 * Enters pipeline mode on pc and queues the prelude: BEGIN, then one
 * statement that switches to the caller's database role (SET LOCAL) and
 * sets app.current_user_id / app.current_role for row-level security;
 * CDB_DATA_PRELUDE_COUNT results follow. The prelude is a prepared
 * statement of the connection (cdb_pool_conn_prepare): prepare the
 * request's own statements BEFORE calling this, pipeline mode forbids it.
 * UNAUTHORIZED for an anonymous caller (cdb_principal_require).
 */
int cdb_data_start_pipeline(cdb_pool_conn *pc, const cdb_principal *p, cdb_error *err);
/*
 * The same with one more statement between BEGIN and the prelude (first,
 * unnamed, its params): it runs as the service's login role, before the
 * caller's role is set (the idempotency claim of store/ledger.h).
 * CDB_DATA_PRELUDE_COUNT + 1 results follow.
 */
int cdb_data_start_pipeline_after(cdb_pool_conn *pc, const cdb_principal *p, const char *first,
                                  int nparams, const char *const *params, cdb_error *err);

/*
 * The prelude of a read (the query path): the role + settings statement
 * without BEGIN; every statement queued after it up to PQpipelineSync is
 * ONE implicit transaction under the caller's role, whose settings end at
 * the Sync (store/txn.h cdb_txn_pipeline_read_as). No COMMIT to queue.
 * CDB_DATA_READ_PRELUDE_COUNT results follow.
 */
int cdb_data_start_read_pipeline(cdb_pool_conn *pc, const cdb_principal *p, cdb_error *err);

/*
 * After PQpipelineSync: reads the results of n queued statements and the
 * sync that ends them. out (may be NULL) receives each statement's result
 * (caller PQclears them; NULL where none). Returns 0 when every statement
 * succeeded (even when the connection died before the sync: the results,
 * a COMMIT's included, stand; the connection is then left in pipeline mode
 * for cdb_txn_release to drop); otherwise the first failure mapped by cdb_data_pg_error (with
 * context_field), *failed (may be NULL) = its 0-based index, the
 * transaction is aborted and the connection has left pipeline mode.
 * *failed = -1 when no statement failed (or the connection was lost).
 */
int cdb_data_pipeline_read(PGconn *conn, PGresult **out, int n, int *failed,
                           const char *context_field, cdb_error *err);


/*
 * cdb_pg_error_from_result with the data API's refinements:
 *  42501 (privilege, or "new row violates row-level security") -> FORBIDDEN;
 *  23505 -> CONFLICT with details.fields (the constraint's columns, array) and
 *           details.field (the first of them) — when PostgreSQL hides the key
 *           (it does under RLS) and conn is a plain (not pipelined) connection
 *           in a failed transaction, this ROLLS BACK and looks the columns up;
 *  23502 -> VALIDATION_FAILED, details.field = the column;
 *  23503 / 23514 -> VALIDATION_FAILED, details.field = the column when known;
 *  22xxx (a value that does not fit its type) -> VALIDATION_FAILED with
 *           details.field = context_field when given.
 * The query path maps 22P02/22007/22008/22003/42883 to INVALID_FILTER itself.
 */
cdb_err cdb_data_pg_error(PGconn *conn, const PGresult *res, const char *context_field,
                          cdb_error *err);

/*
 * The caller's Redis namespace into buf: "app:user:<user_id>:" for user and
 * premium, "app:" for admin. Returns buf, or NULL for an anonymous caller or
 * a too small buf (64 bytes are enough).
 */
const char *cdb_data_redis_prefix(const cdb_principal *p, char *buf, size_t len);

/*
 * Validates a key named by the caller (a non-empty JSON string of at most
 * CDB_DATA_REDIS_KEY_MAX bytes, no NUL) and gives *out = prefix + key
 * (malloc'd). VALIDATION_FAILED with details.field "key" otherwise.
 */
int cdb_data_redis_key(const cdb_principal *p, const json_t *key, char **out, cdb_error *err);

#endif
