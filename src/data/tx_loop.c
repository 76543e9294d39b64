/*
 * tx_loop.c - a transaction committed on an event loop (tx_loop.h,
 * http/loop_tx.c) gets its outbox applied on that loop: the worker's
 * apply_outbox (tx.c) step by step, driven by the loop's callbacks instead
 * of blocking calls, so no worker, mutex or condition variable is on the
 * path.
 *
 * The steps, as apply_outbox's:
 *   1. BEGIN; SELECT seq ... FOR UPDATE SKIP LOCKED on a claimed connection
 *      (store/pg_async.h: the block stays open across the Redis steps, so
 *      the flush job, which locks the same way, never applies a row this
 *      transaction applies, and the other way round);
 *   2. each locked row in seq order on the loop's asynchronous Redis
 *      (cdb_outbox_apply_async: judged as the cache judges it; a generation
 *      bump's invalidation published and every instance's acknowledgement
 *      awaited without blocking). A row the flush holds stops the run (it
 *      keeps the order from there), as does a row Redis did not take
 *      (DOWN: it and the rest are "pending"); a row Redis refused for good
 *      is consumed and reported "failed";
 *   3. DELETE the applied rows, count the attempt of the row that stopped
 *      the run, keyed: replace the ledger's stored answer with the one
 *      holding the Redis results, COMMIT, in one round trip that ends the
 *      claim (keyed, the answer sent is then the one a retry replays).
 * The caller answers only after step 3, so a caller's next read never
 * sees the cached page from before its own write.
 *
 * Not on the loop (the caller finishes on a worker, counted in
 * coredb_http_loop_transaction_finishes_total{where="worker"}): read
 * replicas configured (the commit's LSN is noted through the blocking
 * pool), Redis Sentinel (the replica wait, cdb_outbox_replicated, is a
 * blocking WAIT), no REDIS_URL (the in-process table is under a mutex), the
 * loop's Redis not connected at that moment, every loop connection held
 * by a transaction or a claim for step 1 (it parks behind misses), or
 * step 1 failing or never sent (nothing applied yet). A Redis failure during
 * step 2 is handled on the loop as the worker handles it: "pending". A
 * failure in step 3 is logged as the worker's (the rows stay and are
 * applied again by the flush job: at least once).
 */
#include "data/tx_internal.h"
#include "data/tx_loop.h"

#include "core/metrics.h"
#include "store/cache.h"
#include "store/redis_async.h"

#define ROWS_MAX (TX_MAX_OPS + TX_MAX_GEN)

static const char LOCK_SQL[] =
    "SELECT seq FROM coredb.redis_outbox WHERE transaction_id = $1 ORDER BY seq FOR UPDATE SKIP LOCKED";
static const char DELETE_SQL[] =
    "DELETE FROM coredb.redis_outbox WHERE transaction_id = $1 AND seq = ANY($2::int[])";
static const char ATTEMPT_SQL[] =
    "UPDATE coredb.redis_outbox SET attempts = attempts + 1, last_error = $3 WHERE transaction_id = $1 AND seq = $2::int";
static const char *const NONE[1] = {NULL};

struct cdb__tx_apply {
    cdb__tx_loop *lt;
    cdb_apg *apg;
    cdb_aredis *a;
    struct event_base *base;
    cdb__tx_loop_done done;
    void *arg;
    cdb_apg_claim claim;
    bool locked[ROWS_MAX + 1];     /* by seq */
    int next;                      /* the row being applied */
    int stop;                      /* rows before it were handled */
    int failed_seq;                /* the row Redis did not take, 0: none */
    char applied[ROWS_MAX * 4 + 3];  /* "{1,2,...}": seqs are at most 3 digits */
    char seq[16];
    char why[256];
    char *final;                   /* keyed: the answer with the Redis results, stored by step 3 */
    const char *lock_params[1];
    const char *delete_params[2];
    const char *attempt_params[3];
    const char *final_params[2];
};

static void next_row(cdb__tx_apply *x);

/* Step 3 did not commit: the rows applied here but not deleted are applied again by the flush (at least once). */
static void book_failed(cdb__tx_apply *x, const char *why)
{
    cdb_log_warn("data.outbox_bookkeeping_failed", "transaction %s: outbox update failed: %s", x->lt->t->id, why);
    free(x->final);                /* not stored: the stored answer stays the one sent */
    x->final = NULL;
    x->done(true, x->arg);
}

static void on_booked(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    cdb__tx_apply *x = arg;
    tx *t = x->lt->t;
    (void)res;
    (void)n;
    if (outcome != CDB_APG_OK) {
        book_failed(x, cdb_apg_timed_out(outcome) ? "timed out" : "the loop's connection failed or was refused");
        return;
    }
    if (x->failed_seq)
        cdb_log_warn("data.outbox_pending", "transaction %s: %d Redis operation(s) left for the retry job: %s",
                     t->id, t->nrows - x->stop, x->why);
    t->final = x->final;           /* committed: it is what a retry replays now */
    x->final = NULL;
    x->done(true, x->arg);
}

/*
 * Step 3: the applied rows deleted, the failed one's attempt counted, keyed
 * the final answer stored, COMMIT; the claim ends with it. Keyed and out of
 * memory for the answer: the stored one ("pending") stays, as the worker's
 * apply_outbox leaves it.
 */
static void book(cdb__tx_apply *x)
{
    tx *t = x->lt->t;
    cdb_apg_stmt stmts[4];
    int n = 0;
    bool maybe_sent;
    if (strcmp(x->applied, "{}") != 0)
        stmts[n++] = (cdb_apg_stmt){DELETE_SQL, 2, x->delete_params, false};
    if (x->failed_seq) {
        snprintf(x->seq, sizeof x->seq, "%d", x->failed_seq);
        stmts[n++] = (cdb_apg_stmt){ATTEMPT_SQL, 3, x->attempt_params, false};
    }
    if (t->key && (x->final = cdb__tx_response_text(t))) {
        x->final_params[1] = x->final;
        stmts[n++] = (cdb_apg_stmt){CDB__TX_LEDGER_FINAL_SQL, 2, x->final_params, false};
    }
    stmts[n++] = (cdb_apg_stmt){"COMMIT", 0, NONE, true};
    if (!cdb_apg_claim_submit(x->apg, &x->claim, stmts, n, 0, false, on_booked, x, &maybe_sent))
        book_failed(x, "the loop's connection was lost");
}

/* Row x->next (seq next + 1) as Redis took it: apply_outbox's loop body. */
static void on_row(cdb_outbox_rc rc, json_t *value, const char *why, void *arg)
{
    cdb__tx_apply *x = arg;
    tx *t = x->lt->t;
    outbox_row *row = &t->rows[x->next];
    if (rc == CDB_OUTBOX_DOWN) {
        snprintf(x->why, sizeof x->why, "%s", why);
        x->stop = x->next;
        x->failed_seq = x->next + 1;
        json_decref(value);
        book(x);
        return;
    }
    cdb_outbox_array_add(x->applied, sizeof x->applied, x->next + 1);
    cdb__tx_row_report(t, row, rc, why, value);
    json_decref(value);
    x->next++;
    next_row(x);
}

/* Step 2: the next locked row, or step 3 when none is left. */
static void next_row(cdb__tx_apply *x)
{
    tx *t = x->lt->t;
    x->stop = x->next;
    if (x->next >= t->nrows || !x->locked[x->next + 1]) {
        /* all done, or the flush has this row: it keeps the order from here */
        book(x);
        return;
    }
    outbox_row *row = &t->rows[x->next];
    if (cdb_outbox_apply_async(x->a, x->base, cdb_cache_inval(t->svc->cache), row->op, row->key, row->value,
                               row->ttl, row->from != NULL, on_row, x))
        return;
    on_row(CDB_OUTBOX_DOWN, NULL, "Redis unavailable", x);
}

/* Step 1's answer: which rows this transaction holds. */
static void on_locked(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    cdb__tx_apply *x = arg;
    tx *t = x->lt->t;
    if (outcome != CDB_APG_OK || n != 2) {
        if (outcome == CDB_APG_OK)
            cdb_apg_claim_release(x->apg, &x->claim);
        x->done(false, x->arg);    /* nothing applied: a worker does it all */
        return;
    }
    for (int k = 0; k < PQntuples(res[1]); k++) {
        int s = atoi(PQgetvalue(res[1], k, 0));
        if (s >= 1 && s <= t->nrows)
            x->locked[s] = true;
    }
    next_row(x);
}

int cdb__tx_loop_apply(cdb__tx_loop *lt, cdb_apg *apg, cdb_aredis *a, struct event_base *base,
                       cdb__tx_loop_done done, void *arg)
{
    tx *t = lt->t;
    cdb_service *svc = t->svc;
    cdb__tx_apply *x;

    /* the commit's LSN goes through the blocking pool and Redis (store/commit_lsn.h) */
    if (svc->commit_lsn)
        return -1;
    if (t->nrows == 0)
        return 0;
    if (!cdb_cache_is_redis(svc->cache) || cdb_redis_uses_sentinels(cdb_cache_redis(svc->cache)) || !a ||
        !cdb_aredis_ready(a) || t->nrows > ROWS_MAX || !(x = calloc(1, sizeof *x)))
        return -1;
    x->lt = lt;
    x->apg = apg;
    x->a = a;
    x->base = base;
    x->done = done;
    x->arg = arg;
    strcpy(x->applied, "{}");
    x->lock_params[0] = t->id;
    x->delete_params[0] = t->id;
    x->delete_params[1] = x->applied;
    x->attempt_params[0] = t->id;
    x->attempt_params[1] = x->seq;
    x->attempt_params[2] = x->why;
    x->final_params[0] = t->id;
    /* what is not applied below stays for the flush job */
    for (int r = 0; r < t->nrows; r++)
        if (t->rows[r].from)
            t->rows[r].from->status = "pending";
    const cdb_apg_stmt stmts[2] = {{"BEGIN", 0, NONE, true}, {LOCK_SQL, 1, x->lock_params, false}};
    if (!cdb_apg_claim_open(apg, stmts, 2, 0, on_locked, x, &x->claim)) {
        free(x);
        return -1;
    }
    lt->apply = x;                 /* freed with lt */
    return 1;
}
