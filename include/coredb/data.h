/*
 * data.h - the data API (API.md "Data"): structured reads and
 * multi-database transactions on behalf of a caller.
 *
 * Every PostgreSQL statement runs inside a transaction that first switches
 * to the caller's database role (coredb_user|coredb_premium|coredb_admin, as
 * SET LOCAL ROLE does) and sets app.current_user_id / app.current_role as
 * transaction-local settings, so the row-level-security policies of the
 * migrations decide what is visible. Identifiers come from the catalog
 * (catalog.h) and are quoted; values are always bound parameters; the
 * statements of one request are pipelined in one round trip.
 *
 * Blocking: call from worker threads.
 */
#ifndef COREDB_DATA_H
#define COREDB_DATA_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/idempotency.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/*
 * POST /data/query. *body_out receives the serialized response body
 * (malloc'd; rows are JSON built by PostgreSQL and never re-parsed):
 *   {"data": [...], "pagination": {"page","limit","total","pages"},
 *    "execution_time_ms": n, "cached": bool}
 * or for database "redis": {"data": {"key": "...", "value": "..."|null}}.
 * Errors: VALIDATION_FAILED (details.field), UNKNOWN_TABLE, UNKNOWN_COLUMN,
 * INVALID_FILTER, FORBIDDEN, DATABASE_* ; UNAUTHORIZED for an anonymous caller
 * (here and in every function below).
 */
int cdb_data_query(cdb_service *svc, const cdb_principal *caller, json_t *request,
                   char **body_out, cdb_error *err);

/*
 * POST /data/transaction. *out (caller owns):
 *   {"transaction_id", "status": "committed", "results": [{"operation": i,
 *    "status": "success"|"pending", "data": ...}], "execution_time_ms"}
 * On failure nothing is written and err->details.operation is the 1-based
 * index of the failing operation.
 */
int cdb_data_transaction(cdb_service *svc, const cdb_principal *caller, json_t *request,
                         json_t **out, cdb_error *err);

/*
 * POST /data/transaction as the HTTP route runs it: idem->key is the
 * Idempotency-Key (NULL for none); on success idem->status and idem->body
 * (serialized, the caller frees with cdb_idempotency_destroy) are the
 * answer, idem->replayed when it is the stored answer of an earlier request
 * with that key. Every committed transaction records its transaction_id in
 * coredb.tx_ledger, inside the transaction. Besides the errors above:
 *   TRANSACTION_OUTCOME_UNKNOWN (details.transaction_id): the connection was
 *     lost after COMMIT was sent; the Redis operations are then left to the
 *     outbox job, which applies them iff it committed;
 *   VALIDATION_FAILED (details.field "Idempotency-Key"), IDEMPOTENCY_KEY_REUSED,
 *   IDEMPOTENCY_KEY_IN_PROGRESS (idempotency.h).
 */
int cdb_data_transaction_idem(cdb_service *svc, const cdb_principal *caller, json_t *request,
                              cdb_idempotency *idem, cdb_error *err);

/*
 * GET /data/transactions/{id}: {"transaction_id", "status": "committed",
 * "committed_at"} (caller owns) for a committed transaction of the caller
 * (any, for an admin) recorded in the last 24 h; NOT_FOUND otherwise, and
 * for an id that is not a UUID or is someone else's.
 */
int cdb_data_transaction_status(cdb_service *svc, const cdb_principal *caller, const char *id,
                                json_t **out, cdb_error *err);

/*
 * GET /data/tables: the tables and columns the caller may use, from the
 * catalog snapshot of its database role. *out (caller owns):
 *   {"schema", "role", "tables": [{"name", "read", "insert", "update", "delete",
 *    "columns": [{"name", "type", "read", "insert", "update", "required"}]}]}
 * A table appears once it is granted (e.g. `coredb table expose`, tables.h).
 */
int cdb_data_tables(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

#endif
