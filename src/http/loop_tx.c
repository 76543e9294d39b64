/*
 * loop_tx.c - POST /api/v1/data/transaction run on the event loop that
 * admitted it, on the loop's own PostgreSQL connections (store/pg_async.h),
 * instead of waiting on a worker thread for the database round trip.
 *
 * loop_admit.c calls it once admission ended on the loop with the session
 * alive and the quota fine. The loop takes a transaction (no X-Connection-ID
 * lease) whose tables have no encrypted column and that touches no
 * documents or vectors; the request is validated and its statements built
 * by the worker's own code (data/tx_loop.h over tx_parse.c and tx.c).
 * Anything else, and any request that does not validate (a malformed
 * Idempotency-Key included), goes to a worker at once, which answers
 * exactly as before.
 *
 * Unkeyed, the statements go as one exact pipeline segment
 * (cdb_apg_submit_exact): BEGIN, role + settings, the operations, RESET
 * ROLE, the outbox rows, the ledger row, COMMIT.
 *
 * Keyed (an Idempotency-Key), as the worker's run_pipeline + commit_keyed,
 * in two segments on one claimed connection (cdb_apg_claim_open, then
 * cdb_apg_claim_submit): BEGIN, the key's claim, role + settings, the
 * operations, RESET ROLE, the outbox rows; then, the stored answer built
 * from those results, the ledger row holding it and COMMIT. Any failure of
 * the first segment committed nothing and its block is rolled back before
 * the callback (pg_async.h): a worker runs the request afresh, which
 * answers a claim refusal (409 in progress, 422 reused), a replay of the
 * stored answer, or an operation's error exactly as before. So a replay
 * costs one loop round trip more than it did; a first run costs no hand-off.
 * The second segment refused (the key's unique index met a concurrent
 * twin) rolled back too and goes to a worker the same way; lost or silent
 * after it was sent, 503 TRANSACTION_OUTCOME_UNKNOWN as below.
 *
 * Then, for both:
 *   - every result in: committed. The Redis side (the outbox rows: the
 *     caller's operations and the cache generation bumps, which are the
 *     cache invalidation) is applied on this loop too (cdb__tx_loop_apply,
 *     data/tx_loop.c): the rows locked on a claimed loop connection,
 *     applied in order on the loop's asynchronous Redis, each bump's
 *     invalidation published and every instance's acknowledgement awaited
 *     on the loop's timers (store/invalidation.c, never a blocking BLPOP),
 *     the applied rows deleted, exactly as the worker's apply_outbox does
 *     it. The answer leaves only after that, so the caller's next read can
 *     never be served the cached page from before its own write.
 *     Fallback to a worker (cdb_server_resume_on_worker,
 *     cdb__tx_loop_finish: the worker's own apply_outbox), counted in
 *     coredb_http_loop_transaction_finishes_total{where="worker"}: read
 *     replicas configured (the commit LSN note blocks), Redis Sentinel (the
 *     replica wait blocks), no REDIS_URL (the in-process cache's mutex),
 *     the loop's Redis not connected, every loop connection held (by
 *     transactions or claims) for the lock,
 *     or the lock's job failing (nothing applied yet). Redis failing while
 *     rows are applied is handled on the loop as the worker handles it:
 *     those rows "pending", left to the flush job. With no worker queue
 *     (shutting down) the fallback answers "pending" at once;
 *   - the server refused it (an error result: constraint, bad value,
 *     permission, statement timeout): nothing committed, so the request
 *     goes to a worker, which runs it again from scratch and maps the
 *     error exactly as before (the loop's parse state is freed first; the
 *     callback comes after the block's ROLLBACK ended, so the rerun never
 *     meets its locks);
 *   - the connection lost, or the deadline passed, after the segment was
 *     sent: the COMMIT may have run, so 503 TRANSACTION_OUTCOME_UNKNOWN
 *     with the transaction_id (GET /data/transactions/{id} resolves it);
 *     never run again. The outbox rows, if committed, are the flush job's.
 *   - not sent: refused (no loop connection ready, the parked FIFO full),
 *     or parked behind the loop's misses and never sent (none of the
 *     loop's jobs ended for 250 ms): a worker runs it as before.
 */
#include "http_internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "data/tx_loop.h"

typedef struct loop_tx {
    cdb_request *r;
    cdb__tx_loop *lt;
    cdb_apg_claim claim;           /* keyed: the connection between the two segments */
} loop_tx;

static void loop_tx_free(loop_tx *x)
{
    cdb__tx_loop_free(x->lt);
    free(x);
}

/* Whether r is the transaction route (one pattern, one method). */
static bool is_transaction(const cdb_request *r)
{
    return r->route->mode == CDB_RUN_WORKER && (r->route->methods & EVHTTP_REQ_POST) &&
           strcmp(r->route->pattern, "/api/v1/data/transaction") == 0;
}

/* On a worker: the outbox and the answer, as the worker path does them after its commit. */
static void finish_on_worker(cdb_request *r)
{
    loop_tx *x = r->resume_arg;
    cdb_idempotency idem = {.key = NULL};
    cdb_error err;
    cdb_error_init(&err);
    r->resume_arg = NULL;
    int rc = cdb__tx_loop_finish(x->lt, &idem, &err);
    loop_tx_free(x);
    cdb_request_finish_idem(r, rc, &idem, &err);
}

/* Answers r on the loop with x's answer (pending: its Redis operations left to the flush job), and frees x. */
static void answer(loop_tx *x, bool pending)
{
    cdb_request *r = x->r;
    cdb_idempotency idem = {.key = NULL};
    cdb_error err;
    cdb_error_init(&err);
    int rc = pending ? cdb__tx_loop_pending_answer(x->lt, &idem, &err) : cdb__tx_loop_answer(x->lt, &idem, &err);
    cdb_request_finish_idem(r, rc, &idem, &err);
    cdb_error_destroy(&err);
    loop_tx_free(x);
    cdb_server_finish(r);
}

/* The loop cannot apply the outbox: a worker does (no worker queue: "pending", the flush job applies it). */
static void finish_elsewhere(loop_tx *x)
{
    cdb_request *r = x->r;
    cdb__metrics_inc(CDB_M_LOOP_TX_FINISH_WORKER);
    r->resume_arg = x;
    if (cdb_server_resume_on_worker(r, finish_on_worker))
        return;
    r->resume_arg = NULL;
    answer(x, true);
}

/* cdb__tx_loop_apply is done: applied on the loop, or nothing applied and a worker takes over. */
static void on_applied(bool applied, void *arg)
{
    loop_tx *x = arg;
    if (!applied) {
        finish_elsewhere(x);
        return;
    }
    cdb__metrics_inc(CDB_M_LOOP_TX_FINISH_LOOP);
    answer(x, false);
}

/* Nothing committed (refused: by the server, counted): a worker runs it afresh and reports any error. */
static void rerun_on_worker(loop_tx *x, bool refused)
{
    cdb_request *r = x->r;
    if (refused)
        cdb__metrics_inc(CDB_M_LOOP_TX_REFUSED);
    loop_tx_free(x);
    cdb_server_hand_off(r);
}

/* err is the answer (destroyed here), and frees x. */
static void answer_error(loop_tx *x, cdb_error *err)
{
    cdb_request *r = x->r;
    cdb_request_fail(r, err);
    cdb_error_destroy(err);
    loop_tx_free(x);
    cdb_server_finish(r);
}

/* The COMMIT may have run: 503 TRANSACTION_OUTCOME_UNKNOWN with the transaction id, never run again. */
static void answer_unknown(loop_tx *x)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb__metrics_inc(CDB_M_LOOP_TX_UNKNOWN);
    cdb__tx_loop_unknown(x->lt, &err);
    answer_error(x, &err);
}

/* Committed: the outbox applied (on this loop, or a worker), then the answer. */
static void after_commit(loop_tx *x)
{
    cdb_request *r = x->r;
    cdb__metrics_inc(CDB_M_LOOP_TX_COMMITTED);
    int rc = cdb__tx_loop_apply(x->lt, r->loop->apg, r->loop->aredis, r->loop->base, on_applied, x);
    if (rc > 0)
        return;                    /* on_applied answers */
    if (rc < 0) {
        finish_elsewhere(x);
        return;
    }
    cdb__metrics_inc(CDB_M_LOOP_TX_FINISH_LOOP);
    answer(x, false);              /* no outbox row: nothing to apply */
}

/* Unkeyed: the one segment, BEGIN ... COMMIT, ended. */
static void on_results(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    loop_tx *x = arg;
    cdb_error err;

    if (outcome == CDB_APG_REFUSED || outcome == CDB_APG_UNSENT) {
        rerun_on_worker(x, outcome == CDB_APG_REFUSED);   /* rolled back by the server, or parked and never sent */
        return;
    }
    if (outcome != CDB_APG_OK) {
        answer_unknown(x);             /* lost or silent after COMMIT may have been sent */
        return;
    }
    cdb_error_init(&err);
    if (cdb__tx_loop_collect(x->lt, res, n, &err) < 0) {
        cdb__metrics_inc(CDB_M_LOOP_TX_COMMITTED);   /* committed, its result unreadable */
        answer_error(x, &err);
        return;
    }
    cdb_error_destroy(&err);
    after_commit(x);
}

/* Keyed, second segment (the ledger row with the stored answer, COMMIT) ended; the claim with it. */
static void on_keyed_commit(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    loop_tx *x = arg;
    (void)res;
    (void)n;
    if (outcome == CDB_APG_OK)
        after_commit(x);
    else if (outcome == CDB_APG_REFUSED || outcome == CDB_APG_UNSENT)
        /* rolled back: the key's row met another (the worker's claim replays it, or says in progress) */
        rerun_on_worker(x, outcome == CDB_APG_REFUSED);
    else
        answer_unknown(x);
}

/*
 * Keyed, first segment (BEGIN, the claim, ..., the outbox rows) ended. Any
 * failure means nothing committed (no COMMIT was in it) and the block is
 * rolled back: a worker runs it afresh, and answers the claim's refusal
 * (409 in progress, 422 reused), the stored answer's replay, or the
 * operation's error exactly as before. OK: the connection stays claimed
 * for the second segment, built from these results.
 */
static void on_claimed(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    loop_tx *x = arg;
    cdb_apg_stmt stmts[2];
    bool maybe_sent = false;
    cdb_error err;

    if (outcome != CDB_APG_OK) {
        rerun_on_worker(x, outcome == CDB_APG_REFUSED);
        return;
    }
    cdb_error_init(&err);
    bool built = cdb__tx_loop_collect(x->lt, res, n, &err) == 0;
    if (built && cdb__tx_loop_commit_statements(x->lt, stmts) < 0) {
        cdb_error_oom(&err);
        built = false;
    }
    if (!built) {
        cdb_apg_claim_release(x->r->loop->apg, &x->claim);   /* ROLLBACK: nothing committed */
        answer_error(x, &err);
        return;
    }
    cdb_error_destroy(&err);
    if (cdb_apg_claim_submit(x->r->loop->apg, &x->claim, stmts, 2, 0, false, on_keyed_commit, x, &maybe_sent))
        return;
    if (maybe_sent)
        answer_unknown(x);         /* the COMMIT was queued when the connection failed */
    else
        rerun_on_worker(x, false);   /* the claimed connection failed meanwhile: rolled back */
}

bool cdb__loop_tx(cdb_request *r)
{
    cdb_apg_stmt stmts[CDB_APG_MAX_STMTS];
    bool maybe_sent = false, sent;
    loop_tx *x = NULL;

    if (!r->loop->apg || !is_transaction(r) || r->raw_body_len == 0 || cdb_request_field(r, "X-Connection-ID"))
        return false;
    if (!r->body && !(r->body = json_loadb(r->raw_body, r->raw_body_len, JSON_REJECT_DUPLICATES, NULL)))
        return false;
    if (!(x = calloc(1, sizeof *x)))
        return false;
    x->r = r;
    if (!cdb__tx_loop_plan(r->svc, &r->principal, r->body, cdb_request_field(r, "Idempotency-Key"), &x->lt)) {
        free(x);
        return false;
    }
    int n = cdb__tx_loop_statements(x->lt, stmts);
    if (cdb__tx_loop_keyed(x->lt))
        /* no COMMIT in it: not sent, or sent and failed, nothing committed */
        sent = cdb_apg_claim_open(r->loop->apg, stmts, n, 0, on_claimed, x, &x->claim);
    else
        sent = cdb_apg_submit_exact(r->loop->apg, stmts, n, 0, on_results, x, &maybe_sent);
    if (sent)
        return true;
    if (maybe_sent) {
        answer_unknown(x);         /* every statement was queued when sending failed: the COMMIT may have left */
        return true;
    }
    loop_tx_free(x);
    return false;
}
