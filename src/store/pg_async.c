/*
 * pg_async.c - an event loop's own PostgreSQL connections (see pg_async.h
 * for the contract).
 *
 * States. Each connection is down (no PGconn; the retry timer waits out
 * the backoff), connecting (PQconnectPoll driven by one-shot socket
 * events; the same timer bounds the connect), ready (pipeline mode, the
 * socket watched for reading, and for writing while PQflush says output is
 * left) or closed (cdb_apg_free). set_state is the one place a state
 * changes: a move the table below does not allow is a bug and aborts, as
 * PgBouncer's change_server_state does.
 *
 * Jobs on a connection form a FIFO in the order they were sent; libpq
 * returns their results in that order, so the oldest job owns the next
 * result, and a PGRES_PIPELINE_SYNC ends it. A result with no job waiting
 * means the stream is out of step: the connection is closed.
 *
 * A job whose deadline passes is answered DEADLINE at once but stays in
 * the FIFO, answered (its results are read and dropped when they come):
 * the jobs behind it keep their own deadlines, as requests on the blocking
 * pool do, instead of failing with the connection and being run again from
 * the start by a worker (a second wait). A connection whose oldest job has
 * stayed silent a whole deadline past its own is given up: the server is
 * not answering, and what waits behind it is answered DEADLINE too.
 *
 * Parked jobs. A job submitted while every ready connection is full waits
 * in the cdb_apg's FIFO (at most PARK_PER_CONN jobs per connection) and
 * is sent, in order, by the first connection that has room again (pump,
 * after each read): under a thousand clients the misses stay on the loop
 * instead of spilling to the workers, whose blocking connections add
 * backends for PostgreSQL to schedule on the same cores. A parked job
 * waits while the connections make progress: once no job of the loop has
 * ended for PARK_WAIT_MS (and it has waited that long), the pipelines are
 * held up by slow queries, which must not hold the misses behind them, so
 * it is answered UNSENT (its caller runs it on a worker); so is every
 * parked job once no connection is ready. Not a bound on its age alone: at
 * a thousand clients a moving queue is longer than 250 ms, and sending
 * its tail to the workers (the first measurement, 60 % of the parked)
 * made them compete for the cores again. The FIFO's bound (park_max)
 * bounds the wait of a moving queue. Its deadline counts from when it is
 * sent.
 *
 * Exact jobs and claims (pg_async.h) hold a connection for themselves: a
 * connection an exact job or a claim holds takes no other job (roomiest()
 * skips it, so the parked wait for another, or for its end). They park
 * in the same FIFO as the misses while some connection takes jobs (only
 * full): with 4 jobs in flight per connection a handful of concurrent
 * misses fills every slot, and a transaction refused whenever misses were
 * parked ran on a worker under any read load. With every connection held
 * they are refused, and run on a worker (submit_job says why). A parked
 * job that is never sent ends UNSENT, which tells the caller of an exact
 * job that nothing of it ran. A claim given up outside a read pumps the
 * parked at once.
 *
 * Results are read until libpq would block: PQgetResult gives NULL after
 * each statement's results, and NULL twice in a row (or PQisBusy) means
 * nothing more is buffered, so the loop waits for the socket again.
 */
#include "store/pg_async.h"

#include <event2/event.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/hash.h"
#include "core/timeutil.h"

enum {
    BACKOFF_MIN_MS = 100,
    BACKOFF_MAX_MS = 5000,
    MAX_PREPARED = 64,
    PARK_PER_CONN = 512,           /* parked jobs per connection of the cdb_apg (1,024 a loop by default) */
    PARK_WAIT_MS = 250,            /* no job ended for that long: a parked job goes to a worker */
};

typedef enum conn_state { ST_DOWN, ST_CONNECTING, ST_READY, ST_CLOSED, ST__COUNT } conn_state;

static const char *const STATE_NAMES[ST__COUNT] = {"down", "connecting", "ready", "closed"};

/* allowed[from][to] */
static const bool ALLOWED[ST__COUNT][ST__COUNT] = {
    [ST_DOWN] = {[ST_CONNECTING] = true, [ST_CLOSED] = true},
    [ST_CONNECTING] = {[ST_READY] = true, [ST_DOWN] = true, [ST_CLOSED] = true},
    [ST_READY] = {[ST_DOWN] = true, [ST_CLOSED] = true},
};

/* process-wide, for /metrics: connections by state (closed ones are not counted) */
static atomic_long g_count[ST__COUNT];
static atomic_uint_fast64_t g_failures;
static atomic_uint_fast64_t g_parked, g_park_expired;

typedef struct apg_conn apg_conn;

/* One job: a pipeline segment and what came back of it so far. */
typedef struct job {
    struct job *next;
    cdb_apg *apg;
    apg_conn *conn;                /* NULL while parked */
    cdb_apg_stmt *stmts;           /* the caller's (copied, in the same block), valid until cb: sent from here */
    cdb_apg_cb cb;
    void *arg;
    struct event *timer;
    int expect;                    /* results before the Sync, PQsendPrepare's included */
    int got;
    short *prepare_slot;           /* [result]: the slot result answers a PQsendPrepare of, or -1 */
    int nstmts;                    /* statements (results that are not a prepare's) */
    int seen;                      /* statements' results read so far */
    PGresult **res;                /* nstmts of them */
    int nres;
    bool failed;
    bool cancelled;                /* 57014: the server's statement_timeout (or a cancel) ended it */
    bool exact;                    /* cdb_apg_submit_exact: its connection takes nothing behind it */
    bool keep;                     /* exact, cdb_apg_claim_submit(.., keep): its block stays open, claimed */
    cdb_apg_claim *claim;          /* cdb_apg_claim_open's: filled in when the job is sent */
    int error_at;                  /* exact: the statement of the first error result, -1 none */
    bool server_error;             /* exact: that result carried a SQLSTATE (the server sent it) */
    int64_t answered_ms;           /* its deadline passed: answered DEADLINE then, results dropped */
    int timeout_ms;                /* as asked (0: the default), then as armed when sent; exact: counted
                                      afresh from each result, as the blocking path does */
} job;

/* A statement prepared (or being prepared) on one connection. */
typedef struct prepared {
    uint64_t hash;
    char *sql;                     /* NULL: free slot */
    char name[24];
} prepared;

struct apg_conn {
    cdb_apg *apg;
    int index;
    conn_state state;
    PGconn *pg;
    struct event *io;              /* connecting: one-shot; ready: EV_READ|EV_PERSIST */
    struct event *wr;              /* ready: EV_WRITE while PQflush has output left */
    struct event *retry;           /* down: backoff; connecting: the connect deadline */
    int backoff_ms;
    bool outage_logged;
    job *head, *tail;
    int inflight;
    job *held;                     /* an exact job in flight: no job is sent behind it */
    bool claimed;                  /* between a keep job's end and its claimant's next job */
    uint64_t claim_gen;            /* bumped by every claim and every failure: stale handles refused */
    prepared stmts[MAX_PREPARED];
    unsigned next_name;
};

struct cdb_apg {
    struct event_base *base;
    const cdb_pg_settings *pg;
    int nconns, max_inflight;
    int default_timeout_ms;
    bool freeing;
    apg_conn *conns;
    job *park_head, *park_tail;    /* waiting for room on a ready connection */
    int nparked, park_max;
    int64_t progress_ms;           /* when a job of this cdb_apg last ended (cdb_mono_ms) */
    void (*on_answers)(void *arg); /* cdb_apg_on_server_answers */
    void *on_answers_arg;
    bool silence_seen;             /* a sent job timed out: the next job that ends calls on_answers */
};

static void conn_start(apg_conn *c);
static void pump(cdb_apg *apg);

static void set_state(apg_conn *c, conn_state to)
{
    if (!ALLOWED[c->state][to]) {
        cdb_log_error("pg_async.bad_transition", "loop connection %d: %s -> %s", c->index,
                      STATE_NAMES[c->state], STATE_NAMES[to]);
        abort();
    }
    atomic_fetch_sub(&g_count[c->state], 1);
    if (to != ST_CLOSED)
        atomic_fetch_add(&g_count[to], 1);
    c->state = to;
}

/* The server is seen answering again (cdb_apg_on_server_answers). */
static void server_answers(cdb_apg *apg)
{
    apg->silence_seen = false;
    if (apg->on_answers)
        apg->on_answers(apg->on_answers_arg);
}

static void free_event(struct event **ev)
{
    if (*ev)
        event_free(*ev);
    *ev = NULL;
}

static void forget_statements(apg_conn *c)
{
    for (int i = 0; i < MAX_PREPARED; i++) {
        free(c->stmts[i].sql);
        c->stmts[i].sql = NULL;
    }
}

/* A job for n statements (its arrays and a copy of stmts in the same block), or NULL. */
static job *job_new(const cdb_apg_stmt *stmts, int n)
{
    job *j = calloc(1, sizeof *j + (size_t)n * sizeof(cdb_apg_stmt) + (size_t)n * sizeof(PGresult *) +
                           (size_t)2 * n * sizeof(short));
    if (!j)
        return NULL;
    j->stmts = (cdb_apg_stmt *)(j + 1);
    j->res = (PGresult **)(j->stmts + n);
    j->prepare_slot = (short *)(j->res + n);
    j->error_at = -1;
    j->nstmts = n;
    memcpy(j->stmts, stmts, (size_t)n * sizeof *stmts);
    return j;
}

static void job_free(job *j)
{
    if (j->timer)
        event_free(j->timer);
    for (int i = 0; i < j->nres; i++)
        PQclear(j->res[i]);
    free(j);
}

/*
 * An exact job that saw an error result: REFUSED when the server sent it
 * (a SQLSTATE) and then either answered the whole segment (synced) or the
 * error was for a statement before the last, which then never ran.
 */
static cdb_apg_outcome exact_failure(const job *j, bool synced)
{
    if (j->error_at >= 0 && j->server_error && (synced || j->error_at < j->nstmts - 1))
        return CDB_APG_REFUSED;
    return CDB_APG_FAILED;
}

/* Runs j's callback unless its deadline answered it already, and frees it; j is off every list. */
static void job_finish(job *j, cdb_apg_outcome outcome)
{
    if (j->exact && j->failed && (outcome == CDB_APG_OK || outcome == CDB_APG_FAILED))
        outcome = exact_failure(j, outcome == CDB_APG_OK);
    else if (outcome == CDB_APG_OK && j->failed)
        outcome = j->cancelled ? CDB_APG_TIMEOUT : CDB_APG_FAILED;
    if (!j->answered_ms)
        j->cb(outcome, outcome == CDB_APG_OK ? j->res : NULL, outcome == CDB_APG_OK ? j->nres : 0, j->arg);
    job_free(j);
}

/* Puts j at the end of the FIFO head..tail (a connection's jobs, or the parked). */
static void append(job **head, job **tail, job *j)
{
    if (*tail)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

/* Answers every job of list (linked by next) with outcome. */
static void finish_all(job *list, cdb_apg_outcome outcome)
{
    while (list) {
        job *next = list->next;
        job_finish(list, outcome);
        list = next;
    }
}

/* Ready, and held by no exact job or claim: it takes jobs when it has room. */
static bool takes_jobs(const apg_conn *k)
{
    return k->state == ST_READY && !k->held && !k->claimed;
}

/* The connection taking jobs with the fewest in flight that has room for one more, or NULL. */
static apg_conn *roomiest(cdb_apg *apg)
{
    apg_conn *c = NULL;
    for (int i = 0; i < apg->nconns; i++) {
        apg_conn *k = &apg->conns[i];
        if (takes_jobs(k) && k->inflight < apg->max_inflight && (!c || k->inflight < c->inflight))
            c = k;
    }
    return c;
}

static bool any_ready(const cdb_apg *apg)
{
    for (int i = 0; i < apg->nconns; i++)
        if (apg->conns[i].state == ST_READY)
            return true;
    return false;
}

/* Whether a parked job would be sent within a moment: a connection is ready (for an exact job: takes jobs). */
static bool worth_parking(const cdb_apg *apg, bool exact)
{
    if (!exact)
        return any_ready(apg);
    for (int i = 0; i < apg->nconns; i++)
        if (takes_jobs(&apg->conns[i]))
            return true;
    return false;
}

/* Takes the parked job j out of the FIFO. */
static void unpark(cdb_apg *apg, job *j)
{
    job **at = &apg->park_head, *prev = NULL;
    while (*at != j) {
        prev = *at;
        at = &(*at)->next;
    }
    *at = j->next;
    if (apg->park_tail == j)
        apg->park_tail = prev;
    j->next = NULL;
    apg->nparked--;
    evtimer_del(j->timer);
}

/* No connection is ready: every parked job goes to its caller's blocking path. */
static void fail_parked(cdb_apg *apg)
{
    job *list = apg->park_head;
    apg->park_head = apg->park_tail = NULL;
    apg->nparked = 0;
    finish_all(list, CDB_APG_UNSENT);
}

static void on_retry(evutil_socket_t fd, short what, void *arg);

/* Closes c's socket side and PGconn (no callbacks). */
static void conn_close(apg_conn *c)
{
    free_event(&c->io);
    free_event(&c->wr);
    if (c->retry)
        evtimer_del(c->retry);
    PQfinish(c->pg);
    c->pg = NULL;
    forget_statements(c);
}

/*
 * c failed (connect refused, lost, out of step, silent past a deadline):
 * closed, every job it carries is answered once (outcome: FAILED, or
 * DEADLINE when the server stopped answering), and a reconnect waits out the
 * backoff.
 */
static void conn_fail_as(apg_conn *c, const char *why, cdb_apg_outcome outcome)
{
    job *list = c->head;
    c->head = c->tail = NULL;
    c->inflight = 0;
    c->held = NULL;
    c->claimed = false;
    c->claim_gen++;
    conn_close(c);
    atomic_fetch_add(&g_failures, 1);
    if (!c->outage_logged) {
        /* never the conninfo: it may hold the password */
        cdb_log_warn("pg_async.unavailable", "a loop's PostgreSQL connection failed (%s); its requests run on "
                     "workers until it reconnects", why);
        c->outage_logged = true;
    }
    set_state(c, ST_DOWN);
    c->backoff_ms = c->backoff_ms ? (c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2)
                                  : BACKOFF_MIN_MS;
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    evtimer_add(c->retry, &tv);
    finish_all(list, outcome);
    if (!any_ready(c->apg))
        fail_parked(c->apg);
}

static void conn_fail(apg_conn *c, const char *why)
{
    conn_fail_as(c, why, CDB_APG_FAILED);
}

static bool release_held(apg_conn *c, job *j);

/* One result for the oldest job; false when the stream is out of step. */
static bool take_result(apg_conn *c, PGresult *res)
{
    job *j = c->head;
    ExecStatusType st = PQresultStatus(res);
    if (!j) {
        PQclear(res);
        return false;
    }
    if (st == PGRES_PIPELINE_SYNC) {
        PQclear(res);
        if (j->got != j->expect)
            return false;
        c->head = j->next;
        if (!c->head)
            c->tail = NULL;
        c->inflight--;
        c->apg->progress_ms = cdb_mono_ms();
        if (c->apg->silence_seen)
            server_answers(c->apg);
        if (c->held != j || !release_held(c, j))
            job_finish(j, CDB_APG_OK);
        return true;
    }
    if (j->got == j->expect) {
        PQclear(res);
        return false;
    }
    int i = j->got++;
    if (j->exact && !j->answered_ms) {
        /* a long transaction whose statements each answer in time is not cut short */
        struct timeval tv = {j->timeout_ms / 1000, (j->timeout_ms % 1000) * 1000};
        evtimer_add(j->timer, &tv);
    }
    if (j->prepare_slot[i] >= 0) {
        if (st != PGRES_COMMAND_OK) {
            /* not prepared after all: the next job prepares it again */
            int slot = j->prepare_slot[i];
            free(c->stmts[slot].sql);
            c->stmts[slot].sql = NULL;
            if (!j->failed) {      /* the statement it prepares fails with it */
                const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                j->error_at = j->seen;
                j->server_error = state && *state;
            }
            j->failed = true;
        }
        PQclear(res);
        return true;
    }
    int stmt = j->seen++;
    if ((st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) || j->failed || j->nres == j->nstmts) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (!j->failed && state && strcmp(state, "57014") == 0)
            j->cancelled = true;
        if (!j->failed && st == PGRES_FATAL_ERROR) {
            j->error_at = stmt;
            j->server_error = state && *state;
        }
        j->failed = true;
        PQclear(res);
        return true;
    }
    j->res[j->nres++] = res;
    return true;
}

/* Reads every result libpq has buffered; false when c failed (already handled). */
static bool drain(apg_conn *c)
{
    int nulls = 0;
    while (c->pg && !PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            if (++nulls >= 2)
                break;
            continue;
        }
        nulls = 0;
        if (!take_result(c, res)) {
            conn_fail(c, "a result out of step");
            return false;
        }
    }
    if (c->pg && PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, "connection lost");
        return false;
    }
    return c->pg != NULL;
}

/* Sends what libpq holds; waits for writability while output is left. */
static bool flush(apg_conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) {
        conn_fail(c, "write failed");
        return false;
    }
    if (r == 1 && !event_pending(c->wr, EV_WRITE, NULL))
        event_add(c->wr, NULL);
    return true;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    apg_conn *c = arg;
    (void)fd;
    (void)what;
    if (!PQconsumeInput(c->pg))
        conn_fail(c, "connection lost");
    else if (drain(c) && event_pending(c->wr, EV_WRITE, NULL))
        flush(c);
    pump(c->apg);    /* the jobs that ended made room */
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush(arg);
}

/* The connect is made: pipeline mode, the socket watched. */
static void conn_ready(apg_conn *c)
{
    cdb_error err;
    cdb_error_init(&err);
    int fd = PQsocket(c->pg);
    evtimer_del(c->retry);
    free_event(&c->io);
    if (cdb_pg_connect_done(c->pg, c->apg->pg, &err) < 0 || PQsetnonblocking(c->pg, 1) != 0 ||
        !PQenterPipelineMode(c->pg) ||
        !(c->io = event_new(c->apg->base, fd, EV_READ | EV_PERSIST, on_readable, c)) ||
        !(c->wr = event_new(c->apg->base, fd, EV_WRITE, on_writable, c)) || event_add(c->io, NULL) != 0) {
        cdb_error_destroy(&err);
        set_state(c, ST_READY);    /* conn_fail moves ready -> down */
        conn_fail(c, "setting up the connection failed");
        return;
    }
    cdb_error_destroy(&err);
    set_state(c, ST_READY);
    c->backoff_ms = 0;
    if (c->outage_logged)
        cdb_log_info("pg_async.recovered", "a loop's PostgreSQL connection is back");
    c->outage_logged = false;
    server_answers(c->apg);
    pump(c->apg);
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg);

/* One step of PQconnectPoll, then wait for what it asks for. */
static void connect_step(apg_conn *c, PostgresPollingStatusType st)
{
    char why[256];
    if (st == PGRES_POLLING_OK) {
        conn_ready(c);
        return;
    }
    if (st == PGRES_POLLING_FAILED || PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        cdb_pg_connect_failure(c->pg, why, sizeof why);
        conn_fail(c, why);
        return;
    }
    /* the socket may change between steps (another address of the host) */
    free_event(&c->io);
    c->io = event_new(c->apg->base, PQsocket(c->pg), st == PGRES_POLLING_READING ? EV_READ : EV_WRITE,
                      on_connect_io, c);
    if (!c->io || event_add(c->io, NULL) != 0)
        conn_fail(c, "out of memory");
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
    apg_conn *c = arg;
    (void)fd;
    (void)what;
    connect_step(c, PQconnectPoll(c->pg));
}

/* down -> connecting; the retry timer bounds the connect. */
static void conn_start(apg_conn *c)
{
    cdb_error err;
    cdb_error_init(&err);
    set_state(c, ST_CONNECTING);
    c->pg = cdb_pg_connect_start(c->apg->pg, &err);
    cdb_error_destroy(&err);
    if (!c->pg) {
        conn_fail(c, "cannot start a connect");
        return;
    }
    int ms = (c->apg->pg->connect_timeout_s > 0 ? c->apg->pg->connect_timeout_s : 5) * 1000;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->retry, &tv);
    connect_step(c, PGRES_POLLING_WRITING);   /* what libpq's docs start from */
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    apg_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == ST_CONNECTING)
        conn_fail(c, "connect timed out");
    else if (c->state == ST_DOWN && !c->apg->freeing)
        conn_start(c);
}

static void on_job_deadline(evutil_socket_t fd, short what, void *arg)
{
    job *j = arg;
    apg_conn *c = j->conn;
    int64_t now = cdb_mono_ms();
    (void)fd;
    (void)what;
    if (!c) {
        int64_t still = j->apg->progress_ms + PARK_WAIT_MS - now;
        if (still > 0) {
            /* a job ended meanwhile: the queue moves, wait for it */
            struct timeval tv = {still / 1000, (still % 1000) * 1000};
            evtimer_add(j->timer, &tv);
            return;
        }
        /* no job ended for PARK_WAIT_MS: the connections are held up, a worker runs it */
        unpark(j->apg, j);
        atomic_fetch_add(&g_park_expired, 1);
        job_finish(j, CDB_APG_UNSENT);
        return;
    }
    j->cb(CDB_APG_DEADLINE, NULL, 0, j->arg);
    j->answered_ms = now;
    c->apg->silence_seen = true;
    /* the oldest job silent a whole deadline past its own: the server is not answering */
    if (c->head && c->head->answered_ms && now - c->head->answered_ms >= c->apg->default_timeout_ms)
        conn_fail_as(c, "the server stopped answering", CDB_APG_DEADLINE);
}

cdb_apg *cdb_apg_new(struct event_base *base, const cdb_pg_settings *pg, int nconns, int max_inflight)
{
    if (nconns < 1 || max_inflight < 1)
        return NULL;
    cdb_apg *apg = calloc(1, sizeof *apg);
    if (!apg || !(apg->conns = calloc((size_t)nconns, sizeof *apg->conns))) {
        free(apg);
        return NULL;
    }
    apg->base = base;
    apg->pg = pg;
    apg->nconns = nconns;
    apg->max_inflight = max_inflight;
    apg->park_max = PARK_PER_CONN * nconns;
    apg->default_timeout_ms = cdb_pg_job_deadline_ms(pg->statement_timeout_ms);
    for (int i = 0; i < nconns; i++) {
        apg_conn *c = &apg->conns[i];
        c->apg = apg;
        c->index = i;
        c->state = ST_DOWN;
        atomic_fetch_add(&g_count[ST_DOWN], 1);
        if (!(c->retry = evtimer_new(base, on_retry, c))) {
            cdb_apg_free(apg);
            return NULL;
        }
    }
    for (int i = 0; i < nconns; i++)
        conn_start(&apg->conns[i]);
    return apg;
}

void cdb_apg_on_server_answers(cdb_apg *apg, void (*fn)(void *arg), void *arg)
{
    apg->on_answers = fn;
    apg->on_answers_arg = arg;
}

void cdb_apg_free(cdb_apg *apg)
{
    if (!apg)
        return;
    apg->freeing = true;
    fail_parked(apg);
    for (int i = 0; i < apg->nconns; i++) {
        apg_conn *c = &apg->conns[i];
        job *list = c->head;
        c->head = c->tail = NULL;
        c->inflight = 0;
        if (c->retry || c->pg)
            conn_close(c);
        if (c->state != ST_CLOSED)
            set_state(c, ST_CLOSED);
        free_event(&c->retry);
        finish_all(list, CDB_APG_FAILED);
    }
    free(apg->conns);
    free(apg);
}

/* The slot of sql on c, or -1; *fresh: a free slot taken for it (prepare it now). */
static int statement_slot(apg_conn *c, const char *sql, bool *fresh)
{
    uint64_t h = cdb__hash_str(sql);
    int free_slot = -1;
    *fresh = false;
    for (int i = 0; i < MAX_PREPARED; i++) {
        if (!c->stmts[i].sql) {
            if (free_slot < 0)
                free_slot = i;
        } else if (c->stmts[i].hash == h && strcmp(c->stmts[i].sql, sql) == 0) {
            return i;
        }
    }
    if (free_slot < 0 || !(c->stmts[free_slot].sql = strdup(sql)))
        return -1;                 /* full: this shape runs unprepared */
    c->stmts[free_slot].hash = h;
    snprintf(c->stmts[free_slot].name, sizeof c->stmts[free_slot].name, "cdb_a%u", c->next_name++);
    *fresh = true;
    return free_slot;
}

/*
 * Queues j's statements and Sync on c (c->pg in pipeline mode); *all_queued
 * tells whether every statement was queued. false when libpq refused: part
 * of the segment may be queued, so the caller fails the connection.
 */
static bool send_job(apg_conn *c, job *j, bool *all_queued)
{
    *all_queued = false;
    for (int i = 0; i < j->nstmts; i++) {
        const cdb_apg_stmt *st = &j->stmts[i];
        bool fresh = false;
        int slot = st->unnamed ? -1 : statement_slot(c, st->sql, &fresh);
        if (fresh) {
            if (!PQsendPrepare(c->pg, c->stmts[slot].name, st->sql, st->nparams, NULL))
                return false;
            j->prepare_slot[j->expect++] = (short)slot;
        }
        int ok = slot >= 0 ? PQsendQueryPrepared(c->pg, c->stmts[slot].name, st->nparams, st->params, NULL, NULL, 0)
                           : PQsendQueryParams(c->pg, st->sql, st->nparams, NULL, st->params, NULL, NULL, 0);
        if (!ok)
            return false;
        j->prepare_slot[j->expect++] = -1;
    }
    *all_queued = true;
    return PQpipelineSync(c->pg) == 1;
}

/* Puts j, sent on c, at the end of c's FIFO with its deadline (from now), and has the segment written. */
static void enqueue(apg_conn *c, job *j)
{
    int ms = j->timeout_ms > 0 ? j->timeout_ms : c->apg->default_timeout_ms;
    j->conn = c;
    j->timeout_ms = ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(j->timer, &tv);
    append(&c->head, &c->tail, j);
    c->inflight++;
    /*
     * Sent when this turn of the loop has run its callbacks (on_writable):
     * the jobs submitted meanwhile leave in one write, and a write that
     * fails fails j later, never inside cdb_apg_submit.
     */
    event_active(c->wr, EV_WRITE, 0);
}

/* The ROLLBACK behind a refused job ended (or its connection failed): the refused job is answered now. */
static void on_rollback(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    job *refused = arg;
    (void)outcome;
    (void)res;
    (void)n;
    if (refused)
        job_finish(refused, CDB_APG_OK);   /* REFUSED: its error result and Sync were read */
}

/*
 * The exact job j that held c ended (its Sync read): c takes jobs again.
 * After an error result its transaction block is aborted (or still open),
 * and every statement sent behind it would fail: a ROLLBACK goes first.
 * true when j's answer waits for that ROLLBACK (on_rollback gives it):
 * a refused transaction's caller may run it again elsewhere at once, and
 * must not meet its row locks or its Idempotency-Key's try-lock still
 * held by the block being rolled back. false: the caller answers j now.
 */
static bool release_held(apg_conn *c, job *j)
{
    static const char *const none[1] = {NULL};
    const cdb_apg_stmt rollback = {.sql = "ROLLBACK", .nparams = 0, .params = none, .unnamed = true};
    bool all_queued;
    c->held = NULL;
    if (j->keep && !j->failed && !j->answered_ms) {
        c->claimed = true;         /* its claimant sends the next job (cdb_apg_claim_submit) */
        return false;
    }
    if (!j->failed && !j->keep)
        return false;              /* COMMIT's result came: the block is closed */
    job *r = job_new(&rollback, 1);
    if (!r || !(r->timer = evtimer_new(c->apg->base, on_job_deadline, r))) {
        free(r);
        conn_fail(c, "out of memory");
        return false;
    }
    r->apg = c->apg;
    r->cb = on_rollback;
    if (j->failed && !j->answered_ms) {
        evtimer_del(j->timer);     /* off every list now: only the ROLLBACK's end answers it */
        r->arg = j;
    }
    if (!send_job(c, r, &all_queued)) {
        job_free(r);
        conn_fail(c, "sending failed");
        return false;
    }
    enqueue(c, r);
    return r->arg != NULL;
}

/* A claim given up with its block open: ROLLBACK, then c takes jobs again. */
static void release_claim(apg_conn *c)
{
    job fake = {.keep = true, .failed = true, .answered_ms = 1};   /* nobody to answer */
    c->claimed = false;
    c->claim_gen++;
    release_held(c, &fake);
}

/*
 * Sends j on c (roomiest()'s, or the claimed one): an exact job holds c,
 * a claim's handle is filled in. false when libpq refused: c failed, j is
 * on no list, and *all_queued says whether every statement was queued
 * (the last may have reached the server).
 */
static bool send_on(apg_conn *c, job *j, bool *all_queued)
{
    if (!send_job(c, j, all_queued)) {
        /* part of a segment may be queued: the connection's stream is unknown now */
        conn_fail(c, "sending failed");
        return false;
    }
    if (j->exact)
        c->held = j;
    if (j->claim) {
        j->claim->conn = c;
        j->claim->gen = ++c->claim_gen;
    }
    enqueue(c, j);
    return true;
}

/* Sends parked jobs, oldest first, while a ready connection has room. */
static void pump(cdb_apg *apg)
{
    apg_conn *c;
    bool all_queued;
    while (apg->park_head && (c = roomiest(apg))) {
        job *j = apg->park_head;
        unpark(apg, j);
        if (!send_on(c, j, &all_queued))
            job_finish(j, all_queued ? CDB_APG_FAILED : CDB_APG_UNSENT);
    }
}

/* A job of n statements with its timer, or NULL. */
static job *job_make(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg)
{
    job *j = job_new(stmts, n);
    if (!j || !(j->timer = evtimer_new(apg->base, on_job_deadline, j))) {
        free(j);
        return NULL;
    }
    j->apg = apg;
    j->cb = cb;
    j->arg = arg;
    j->timeout_ms = timeout_ms;
    return j;
}

/* Parks j at the end of the FIFO, its timer armed for PARK_WAIT_MS. */
static void park(cdb_apg *apg, job *j)
{
    struct timeval tv = {PARK_WAIT_MS / 1000, (PARK_WAIT_MS % 1000) * 1000};
    append(&apg->park_head, &apg->park_tail, j);
    apg->nparked++;
    atomic_fetch_add(&g_parked, 1);
    evtimer_add(j->timer, &tv);
}

/*
 * Sends j on c; when libpq refused (c failed), frees j (its cb never runs)
 * and says in *maybe_sent whether every statement was queued.
 */
static bool send_or_drop(apg_conn *c, job *j, bool *maybe_sent)
{
    bool all_queued = false;
    if (send_on(c, j, &all_queued))
        return true;
    *maybe_sent = all_queued;
    job_free(j);
    return false;
}

/*
 * Every entry point but cdb_apg_claim_submit: a job of stmts (exact, keep
 * and claim as job's fields) sent on the ready connection with the most
 * room, or parked behind the jobs already parked (they go first: a free
 * slot while some wait is the pump's, at the end of this turn). false (cb
 * never runs) when neither can be done, decided before anything is
 * allocated; *maybe_sent as cdb_apg_submit_exact's.
 *
 * An exact job parks only while some connection takes jobs (full of
 * misses, which end within moments), not when every one is held by a
 * transaction or a claim: a transaction holds its connection to the end
 * (and a claim through its Redis phase), so behind the others on a loop's
 * two connections the transactions would run one after another, where
 * the workers' pool runs them side by side (bench/tx_loop.sh, 16 clients
 * of transactions: 509 tx/s parked that way, 641 before).
 */
static bool submit_job(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg,
                       bool exact, bool keep, cdb_apg_claim *claim, bool *maybe_sent)
{
    *maybe_sent = false;
    if (!apg || apg->freeing || n < 1 || n > CDB_APG_MAX_STMTS)
        return false;
    apg_conn *c = apg->park_head ? NULL : roomiest(apg);
    if (!c && (apg->nparked >= apg->park_max || !worth_parking(apg, exact)))
        return false;
    job *j = job_make(apg, stmts, n, timeout_ms, cb, arg);
    if (!j)
        return false;
    j->exact = exact;
    j->keep = keep;
    j->claim = claim;
    if (c)
        return send_or_drop(c, j, maybe_sent);
    park(apg, j);
    return true;
}

bool cdb_apg_submit(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg)
{
    bool maybe_sent;
    return submit_job(apg, stmts, n, timeout_ms, cb, arg, false, false, NULL, &maybe_sent);
}

bool cdb_apg_submit_exact(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg,
                          bool *maybe_sent)
{
    return submit_job(apg, stmts, n, timeout_ms, cb, arg, true, false, NULL, maybe_sent);
}

bool cdb_apg_claim_open(cdb_apg *apg, const cdb_apg_stmt *stmts, int n, int timeout_ms, cdb_apg_cb cb, void *arg,
                        cdb_apg_claim *claim)
{
    bool maybe_sent;
    claim->conn = NULL;
    claim->gen = 0;
    return submit_job(apg, stmts, n, timeout_ms, cb, arg, true, true, claim, &maybe_sent);
}

/* The claimed connection of a live claim, or NULL (failed since, or never claimed). */
static apg_conn *claimed_conn(cdb_apg *apg, const cdb_apg_claim *claim)
{
    apg_conn *c = claim->conn;
    if (!apg || apg->freeing || !c || c->apg != apg || c->claim_gen != claim->gen || !c->claimed ||
        c->state != ST_READY)
        return NULL;
    return c;
}

bool cdb_apg_claim_submit(cdb_apg *apg, cdb_apg_claim *claim, const cdb_apg_stmt *stmts, int n, int timeout_ms,
                          bool keep, cdb_apg_cb cb, void *arg, bool *maybe_sent)
{
    *maybe_sent = false;
    apg_conn *c = n >= 1 && n <= CDB_APG_MAX_STMTS ? claimed_conn(apg, claim) : NULL;
    if (!c)
        return false;
    c->claimed = false;            /* the job holds it now (c->held), and keeps it or not */
    job *j = job_make(apg, stmts, n, timeout_ms, cb, arg);
    if (!j) {                      /* nothing sent: the block is still open */
        release_claim(c);
        pump(apg);
        return false;
    }
    j->exact = true;
    j->keep = keep;
    return send_or_drop(c, j, maybe_sent);
}

void cdb_apg_claim_release(cdb_apg *apg, cdb_apg_claim *claim)
{
    apg_conn *c = claimed_conn(apg, claim);
    claim->conn = NULL;
    if (c) {
        release_claim(c);
        pump(apg);                 /* c has room again */
    }
}

void cdb_apg_counts_get(cdb_apg_counts *out)
{
    out->down = atomic_load_explicit(&g_count[ST_DOWN], memory_order_relaxed);
    out->connecting = atomic_load_explicit(&g_count[ST_CONNECTING], memory_order_relaxed);
    out->ready = atomic_load_explicit(&g_count[ST_READY], memory_order_relaxed);
    out->failures = atomic_load_explicit(&g_failures, memory_order_relaxed);
    out->parked = atomic_load_explicit(&g_parked, memory_order_relaxed);
    out->park_expired = atomic_load_explicit(&g_park_expired, memory_order_relaxed);
}
