/*
 * pg_async.h - one event loop's own PostgreSQL connections: non-blocking
 * libpq in pipeline mode, the socket watched by the loop, so a data-API
 * read runs without handing its request to a worker thread (the miss path
 * of http/loop_query.c).
 *
 * Connections are opened and configured like the blocking pool's
 * (store/pg.h: the same settings, application_name, TimeZone, statement
 * timeout), without blocking the loop: PQconnectStartParams, then
 * PQconnectPoll driven by the socket's events, bounded by the pool's
 * connect timeout. A job is a short list of statements sent as one
 * pipeline segment ending with a Sync: its callback gets the results in
 * order, or a failure, exactly once. Each statement is prepared once per
 * connection (PQsendPrepare in the same pipeline, before its first use),
 * unless it is marked unnamed (a text that varies per request). A
 * transaction is an exact job (cdb_apg_submit_exact, http/loop_tx.c): it
 * claims its connection until it ends and its outcome tells a refusal by
 * the server from "it may have committed".
 *
 * Failures: a connection that is lost (server restart, reset) or refused
 * is closed; every job it carries fails (CDB_APG_FAILED) and it reconnects
 * after a backoff (100 ms doubling to 5 s, reset by a connect). A job whose
 * deadline passes is answered CDB_APG_DEADLINE then; the jobs behind it keep
 * their own deadlines (its late results are dropped), unless the oldest job
 * stays silent a whole deadline past its own: then the server is taken as
 * not answering, the connection is closed and every job it carries is
 * answered CDB_APG_DEADLINE. A statement the server's statement_timeout
 * cancelled (57014) is answered CDB_APG_TIMEOUT: the caller's words differ
 * ("statement timed out" against "did not answer in time", as on the
 * blocking path: store/pg.c).
 * An error result of any statement (a bad filter value, a permission)
 * fails only its job. Callers treat a failure as "run it the blocking way":
 * a read is idempotent, so this layer never maps PostgreSQL errors.
 *
 * Name lookups: with a host name in DATABASE_URL, libpq resolves it when a
 * connect starts (getaddrinfo, the system resolver: it may block the loop
 * for as long as the resolver takes, once per connect, as for the loops'
 * Redis: docs/architecture.md); an address or a Unix socket never waits.
 *
 * Threads: everything runs on the loop's thread (cdb_apg_new and
 * cdb_apg_free also before the loop runs or after it stopped); only
 * cdb_apg_counts_get may be called from any thread.
 */
#ifndef COREDB_STORE_PG_ASYNC_H
#define COREDB_STORE_PG_ASYNC_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/pg.h"

struct event_base;

typedef struct cdb_apg cdb_apg;

/* Statements of one job: a data-API transaction needs its prelude, 100 operations and 5 more. */
enum { CDB_APG_MAX_STMTS = 128 };

/*
 * One statement of a job: its text and text parameters. Prepared under a
 * name of the connection (once, before its first use), unless unnamed: a
 * text that varies per request (a transaction's operations) is sent with
 * PQsendQueryParams, so the connection's prepared set does not grow with
 * every distinct text.
 */
typedef struct cdb_apg_stmt {
    const char *sql;
    int nparams;
    const char *const *params;     /* copied into libpq's buffer when sent */
    bool unnamed;
} cdb_apg_stmt;

typedef enum cdb_apg_outcome {
    CDB_APG_OK,                    /* every statement succeeded: res holds their results */
    CDB_APG_FAILED,                /* an error result, the connection lost, or cdb_apg_free */
    CDB_APG_TIMEOUT,               /* the server's statement_timeout cancelled it (57014): waiting
                                      twice, on a worker, would not help */
    CDB_APG_DEADLINE,              /* the job's own deadline passed, or its connection's server
                                      stopped answering: nor would it here */
    CDB_APG_REFUSED,               /* exact jobs only (cdb_apg_submit_exact): the server answered
                                      an error result (57014 included) for a statement, and so
                                      never ran the last one (see there) */
    CDB_APG_UNSENT,                /* parked, and never sent: nothing of it ran (no job ended for
                                      pg_async.c's PARK_WAIT_MS, no connection left ready, or
                                      cdb_apg_free) */
} cdb_apg_outcome;

/* TIMEOUT or DEADLINE: the job took too long, by the server's clock or by ours */
static inline bool cdb_apg_timed_out(cdb_apg_outcome outcome)
{
    return outcome == CDB_APG_TIMEOUT || outcome == CDB_APG_DEADLINE;
}

/*
 * res: the n results in statement order with CDB_APG_OK (owned by cdb_apg,
 * valid during the call), NULL otherwise. Runs on the loop, never inside
 * cdb_apg_submit. It may call cdb_apg_submit, never cdb_apg_free.
 */
typedef void (*cdb_apg_cb)(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg);

/*
 * nconns connections to the server of pg (copied by reference: it must
 * outlive the cdb_apg; the blocking pool's settings, cdb_pool_pg_settings),
 * each taking at most max_inflight jobs at once. Starts connecting at once
 * (events on base). NULL on out of memory or nconns/max_inflight < 1.
 */
cdb_apg *cdb_apg_new(struct event_base *base, const cdb_pg_settings *pg, int nconns, int max_inflight);
/*
 * fn(arg) runs on the loop whenever the server is seen answering again:
 * after each connect that succeeded, and when a job ends after one of the
 * loop's jobs timed out (a server paused, then continued, whose connections
 * survived). The HTTP server tells the blocking pool, which may be waiting
 * out a backoff (cdb_pool_server_answers).
 */
void cdb_apg_on_server_answers(cdb_apg *apg, void (*fn)(void *arg), void *arg);
/* Ends every job still parked (CDB_APG_UNSENT) and every job sent (CDB_APG_FAILED), exactly once, and
   closes. NULL is a no-op. */
void cdb_apg_free(cdb_apg *apg);

/*
 * Sends stmts (1..CDB_APG_MAX_STMTS) as one pipeline segment on the ready
 * connection with the fewest jobs in flight (never one an exact job or a
 * claim holds); cb runs later, once. When every ready connection is full
 * the job is parked and sent, in order, by the first that has room; one
 * parked too long (pg_async.c's PARK_WAIT_MS) or left with no ready
 * connection ends CDB_APG_UNSENT. So stmts[] is copied, but its texts
 * and parameters must stay valid until cb runs. The job ends by timeout_ms
 * from when it is sent (0: the pool's statement timeout plus
 * CDB_PG_DEADLINE_MARGIN_MS, 5 minutes without one). false (cb never runs)
 * when no connection is ready, the parking FIFO is full, or sending
 * failed: the caller takes the blocking path. Exact jobs and claims park
 * in the same FIFO.
 */
bool cdb_apg_submit(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg);

/*
 * An exact job: a transaction (BEGIN ... COMMIT) whose caller must tell "the
 * server refused it" from "it may have committed". Its statements may be
 * unnamed; it is sent on a ready connection that carries no other exact
 * job, and no job is sent behind it until it ends (a failed transaction
 * block would make every statement behind it fail): the connection is
 * claimed by the transaction. When it ends with its block still open or
 * aborted (an error result), a ROLLBACK is sent before the connection takes
 * jobs again. Its outcomes:
 *   CDB_APG_OK       every result in, none an error;
 *   CDB_APG_REFUSED  the server sent an error result (one with a SQLSTATE)
 *                    and then either the Sync (the server answered the whole
 *                    segment) or, the connection lost after, the error was
 *                    for a statement before the last: in a pipeline nothing
 *                    runs after an error, so the last statement (COMMIT)
 *                    never ran. Answered once the ROLLBACK sent behind it
 *                    has ended (or its connection failed), so its locks
 *                    are gone: the caller may run it again elsewhere at
 *                    once without meeting them;
 *   CDB_APG_FAILED   the connection was lost (or cdb_apg_free) otherwise,
 *                    or sending it from the FIFO failed with every
 *                    statement queued: the last statement may have run;
 *   CDB_APG_DEADLINE the deadline passed (or the server stopped answering):
 *                    it may have run too. An exact job's deadline counts
 *                    afresh from each result (as the blocking path reads a
 *                    pipeline: store/pg.h), so a long transaction whose
 *                    statements each answer in time is not cut short;
 *   CDB_APG_UNSENT   parked and never sent (see cdb_apg_submit): nothing ran.
 * Returns false (cb never runs) when it was not sent; *maybe_sent then says
 * whether every statement was already queued when sending failed (the
 * last one may have reached the server: treat as FAILED), else nothing ran.
 */
bool cdb_apg_submit_exact(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg,
                          bool *maybe_sent);

/*
 * A claimed connection: a transaction block kept open across jobs, for a
 * caller that must do other work (Redis, on the loop) between its
 * statements and its COMMIT: data/tx.c's outbox rows locked FOR UPDATE,
 * applied, deleted. cdb_apg_claim_open sends an exact job (typically
 * BEGIN; SELECT ... FOR UPDATE) and, when it ends CDB_APG_OK, its
 * connection stays claimed (it takes no other job) until the claimant
 * sends the next job on it (cdb_apg_claim_submit: keep = true claims it
 * again after that one, false ends the claim with that job, whose last
 * statement is then COMMIT) or gives it up (cdb_apg_claim_release: a
 * ROLLBACK is sent). Any other outcome ends the claim by itself (a ROLLBACK
 * is sent when the block may be open), as does a connection failure: the
 * handle is then stale, and cdb_apg_claim_submit refuses it. A claimant
 * must end every claim it got (a kept connection takes nothing else).
 */
typedef struct cdb_apg_claim {
    void *conn;                    /* opaque */
    uint64_t gen;
} cdb_apg_claim;
/* false (cb never runs, nothing claimed) when neither sent nor parked; a parked one's claim is filled in when sent. */
bool cdb_apg_claim_open(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg,
                        cdb_apg_claim *claim);
/* false (cb never runs) when the claim is stale or sending failed; *maybe_sent as cdb_apg_submit_exact's. */
bool cdb_apg_claim_submit(cdb_apg *apg, cdb_apg_claim *claim, const cdb_apg_stmt *stmts, int n, int timeout_ms,
                          bool keep, cdb_apg_cb cb, void *arg, bool *maybe_sent);
/* Ends a live claim with a ROLLBACK; a stale one is a no-op. */
void cdb_apg_claim_release(cdb_apg *apg, cdb_apg_claim *claim);

/* Process-wide counts of the loops' connections by state, for /metrics (any thread). */
typedef struct cdb_apg_counts {
    long down;                     /* closed, waiting for the backoff */
    long connecting;
    long ready;
    uint64_t failures;             /* connections that failed (connect, lost, deadline) */
    uint64_t parked;               /* jobs that waited for room on a connection */
    uint64_t park_expired;         /* of those, the ones that waited too long and failed */
} cdb_apg_counts;
void cdb_apg_counts_get(cdb_apg_counts *out);

#endif
