/*
 * tx_loop.h - POST /data/transaction run on an event loop's own PostgreSQL
 * connection (http/loop_tx.c, store/pg_async.h) instead of a worker: the
 * same validation and statements as the worker's (tx_parse.c, tx.c), so
 * the two paths cannot drift apart.
 *
 * The loop sends the statements as one exact pipeline segment (BEGIN ...
 * COMMIT). After the commit, the Redis side (the outbox rows: the caller's
 * operations and the cache generation bumps) is applied on the loop too
 * (cdb__tx_loop_apply, tx_loop.c), with the worker's apply_outbox
 * semantics; where the loop cannot, it is finished on a worker
 * (cdb__tx_loop_finish) exactly as the worker's own transaction does it.
 */
#ifndef COREDB_DATA_TX_LOOP_H
#define COREDB_DATA_TX_LOOP_H

#include <jansson.h>
#include <libpq-fe.h>

#include "coredb/data.h"
#include "coredb/error.h"
#include "coredb/principal.h"
#include "store/pg_async.h"

typedef struct cdb_service cdb_service;
typedef struct cdb__tx_loop cdb__tx_loop;

/*
 * 1 with *out set when request is a transaction the loop may run without
 * blocking: valid, only PostgreSQL tables (no documents or vectors) and
 * Redis operations, no encrypted column in a written table, the catalog
 * and encryption snapshots and the cache namespace in memory, and key (its
 * Idempotency-Key, or NULL) well formed. 0 otherwise (nothing to free): a
 * worker runs it and reports any error, so bad input is answered exactly
 * as before. p and key must outlive *out.
 */
int cdb__tx_loop_plan(cdb_service *svc, const cdb_principal *p, json_t *request, const char *key,
                      cdb__tx_loop **out);
/* Whether it carries an Idempotency-Key: two segments on a claimed connection (loop_tx.c). */
bool cdb__tx_loop_keyed(const cdb__tx_loop *t);
/*
 * Its statements into stmts (CDB_APG_MAX_STMTS), valid while t lives; their
 * count. Unkeyed: BEGIN ... COMMIT, one exact job. Keyed: BEGIN, the key's
 * claim, ... the outbox rows, and no COMMIT: the first segment of a claim
 * (cdb_apg_claim_open), whose results build the stored answer.
 */
int cdb__tx_loop_statements(cdb__tx_loop *t, cdb_apg_stmt *stmts);
/*
 * Keyed, after cdb__tx_loop_collect: the second segment (the ledger row
 * holding the stored answer, COMMIT) into stmts; its count, -1 when out of
 * memory.
 */
int cdb__tx_loop_commit_statements(cdb__tx_loop *t, cdb_apg_stmt *stmts);
/* The operations' results (n of them, the first segment's): 0, or < 0 with err set. */
int cdb__tx_loop_collect(cdb__tx_loop *t, PGresult *const *res, int n, cdb_error *err);
/* The commit may or may not have happened: 503 TRANSACTION_OUTCOME_UNKNOWN with t's id into err. */
int cdb__tx_loop_unknown(cdb__tx_loop *t, cdb_error *err);
/*
 * On a worker, after the commit: notes the commit's LSN, applies the outbox
 * rows (apply_outbox) and sets idem->body/status to the answer. < 0 only
 * when out of memory.
 */
int cdb__tx_loop_finish(cdb__tx_loop *t, cdb_idempotency *idem, cdb_error *err);
/* The answer without the outbox applied: its Redis operations "pending" (no worker to finish it). */
int cdb__tx_loop_pending_answer(cdb__tx_loop *t, cdb_idempotency *idem, cdb_error *err);
/*
 * The answer as it stands (after cdb__tx_loop_apply's done): idem->body/status;
 * keyed, the one stored in the ledger (with the Redis results once they
 * replaced the "pending" ones there). < 0 only when out of memory.
 */
int cdb__tx_loop_answer(cdb__tx_loop *t, cdb_idempotency *idem, cdb_error *err);

/*
 * On the loop, after the commit (tx_loop.c): applies the outbox rows with
 * apply_outbox's semantics, never blocking: the rows locked FOR UPDATE
 * SKIP LOCKED on a claimed connection of apg, each applied in order on the
 * loop's asynchronous Redis a (a generation bump's invalidation published
 * and every instance's acknowledgement awaited on timers of base), the
 * applied ones deleted, the first that Redis did not take counted, all in
 * one transaction. 1: done(applied, arg) runs later, once, on the loop:
 * applied true, the answer is ready (cdb__tx_loop_answer: Redis results,
 * or "pending" for rows left to the flush job); false, nothing was applied
 * (the lock could not be taken): finish on a worker (cdb__tx_loop_finish).
 * 0: nothing to apply, answer now. -1: the loop cannot finish it (commit
 * LSNs to note with replicas, Redis Sentinel's replica wait, the
 * in-process cache, the loop's Redis not ready, every loop connection held):
 * finish on a worker.
 */
struct cdb_aredis;
struct event_base;
typedef void (*cdb__tx_loop_done)(bool applied, void *arg);
int cdb__tx_loop_apply(cdb__tx_loop *t, cdb_apg *apg, struct cdb_aredis *a, struct event_base *base,
                       cdb__tx_loop_done done, void *arg);
void cdb__tx_loop_free(cdb__tx_loop *t);

#endif
