/*
 * pg_borrow.c - a job on a borrowed connection, run by an event loop (see
 * pg_borrow.h for the contract).
 *
 * One job per connection at a time, so the stream needs no FIFO: the job
 * owns every result until the Sync. What is sent is a list of items: the
 * prepares first, then the statements. libpq gives each item's results
 * then a NULL; after an error result the items left come back
 * PGRES_PIPELINE_ABORTED, and PGRES_PIPELINE_SYNC ends the segment. A
 * prepare answered OK (while none before it failed) is counted; the first
 * result of statement i is kept as res[i] (a statement of ours gives
 * exactly one), anything else is dropped. Results are read until libpq
 * would block (PQisBusy); then the loop waits for the socket again.
 *
 * Two events: the socket (read, and write while PQflush has output left)
 * and a one-shot timer for the deadline. Both are freed before the
 * callback runs, so nothing of the loop can fire on a freed job.
 */
#include "store/pg_borrow.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "coredb/log.h"
#include "store/pg.h"

struct cdb_pgb {
    PGconn *conn;
    struct event *sock;            /* the connection's socket */
    struct event *timer;           /* the deadline */
    bool want_write;               /* sock also waits for writability (PQflush left output) */
    int n;                         /* statements sent */
    int nprep;                     /* prepares sent ahead of them */
    int prepared;                  /* prepares the server accepted (a prefix of them) */
    int next;                      /* the item whose results come next: prepares, then statements */
    bool in_stmt;                  /* a result of item next came; its NULL has not */
    PGresult *res[CDB_PGB_MAX_STMTS];
    char sqlstate[6];              /* the first error result's */
    cdb_pgb_cb cb;
    void *arg;
};

/*
 * Breaks conn for good without the deadline's mark (which makes the pool
 * take the server for down): the socket is shut, libpq reads end-of-file
 * and says CONNECTION_BAD, and the pool closes it when it is given back.
 */
void cdb_pgb_break(PGconn *conn)
{
    int fd = PQsocket(conn);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    PQconsumeInput(conn);
}

/* The connection back as blocking code expects it: pipeline off, blocking. False: it is broken now. */
static bool restore(PGconn *conn)
{
    if (PQstatus(conn) != CONNECTION_OK)
        return false;
    if ((PQpipelineStatus(conn) != PQ_PIPELINE_OFF && !PQexitPipelineMode(conn)) || PQsetnonblocking(conn, 0) != 0 ||
        PQtransactionStatus(conn) != PQTRANS_IDLE) {
        cdb_log_warn("pg.borrow_state", "a borrowed connection was not left idle after its job; closing it");
        cdb_pgb_break(conn);
        return false;
    }
    return true;
}

/* Reports the outcome once and frees the job (its events first: nothing fires on it after). */
static void finish(cdb_pgb *job, cdb_pgb_outcome outcome)
{
    if (job->sock)
        event_free(job->sock);
    if (job->timer)
        event_free(job->timer);
    job->sock = job->timer = NULL;
    if (outcome == CDB_PGB_OK || outcome == CDB_PGB_ERROR || (outcome == CDB_PGB_TIMEOUT && job->sqlstate[0])) {
        if (!restore(job->conn))
            outcome = CDB_PGB_LOST;
    } else if (outcome == CDB_PGB_TIMEOUT) {
        cdb_pg_expire(job->conn);
    } else if (PQstatus(job->conn) == CONNECTION_OK) {
        cdb_pgb_break(job->conn);     /* aborted, or out of step: never half-read for the next user */
    }
    if (outcome != CDB_PGB_ERROR && !(outcome == CDB_PGB_TIMEOUT && job->sqlstate[0]))
        job->sqlstate[0] = '\0';
    job->cb(outcome, outcome == CDB_PGB_OK ? job->res : NULL, outcome == CDB_PGB_OK ? job->n : 0,
            job->sqlstate, job->prepared, job->arg);
    for (int i = 0; i < job->n; i++)
        PQclear(job->res[i]);
    free(job);
}

/* Arms the socket event for reading, and writing while output is left. False: libpq failed to send. */
static bool watch(cdb_pgb *job)
{
    int f = PQflush(job->conn);
    if (f < 0)
        return false;
    bool want_write = f == 1;
    if (want_write != job->want_write || !event_pending(job->sock, EV_READ, NULL)) {
        event_del(job->sock);
        event_assign(job->sock, event_get_base(job->sock), PQsocket(job->conn),
                     EV_READ | EV_PERSIST | (want_write ? EV_WRITE : 0), event_get_callback(job->sock), job);
        job->want_write = want_write;
        if (event_add(job->sock, NULL) != 0)
            return false;
    }
    return true;
}

/*
 * Takes in what is buffered. 1: the Sync came (the job is done), 0: wait
 * for the socket, -1: the connection is lost or out of step.
 */
static int read_results(cdb_pgb *job)
{
    PGconn *conn = job->conn;
    for (;;) {
        if (PQisBusy(conn))
            return PQstatus(conn) == CONNECTION_BAD ? -1 : 0;
        PGresult *res = PQgetResult(conn);
        if (!res) {
            if (!job->in_stmt)     /* nothing buffered: a broken connection says so, else wait */
                return PQstatus(conn) == CONNECTION_BAD ? -1 : 0;
            job->in_stmt = false;
            job->next++;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        int items = job->nprep + job->n;
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            return job->next == items && !job->in_stmt ? 1 : -1;
        }
        if (job->next >= items) {  /* a result nobody asked for */
            PQclear(res);
            return -1;
        }
        if (st == PGRES_FATAL_ERROR && !job->sqlstate[0]) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            snprintf(job->sqlstate, sizeof job->sqlstate, "%s", state && *state ? state : "XX000");
        }
        int stmt = job->next - job->nprep;
        if (stmt < 0) {            /* a prepare's answer */
            if (!job->in_stmt && st == PGRES_COMMAND_OK && job->prepared == job->next)
                job->prepared++;
            PQclear(res);
        } else if (!job->in_stmt && !job->res[stmt]) {
            job->res[stmt] = res;
        } else {
            PQclear(res);
        }
        job->in_stmt = true;
        if (PQstatus(conn) == CONNECTION_BAD)
            return -1;
    }
}

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    cdb_pgb *job = arg;
    int rc = 0;
    if ((what & EV_READ) && !PQconsumeInput(job->conn))
        rc = -1;
    if (rc == 0)
        rc = read_results(job);
    if (rc == 0 && !watch(job))
        rc = -1;
    if (rc == 0)
        return;
    if (rc < 0) {
        finish(job, CDB_PGB_LOST);
        return;
    }
    /* 57014: the server's statement_timeout cancelled it (as the blocking path maps it) */
    finish(job, strcmp(job->sqlstate, "57014") == 0 ? CDB_PGB_TIMEOUT : job->sqlstate[0] ? CDB_PGB_ERROR : CDB_PGB_OK);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    cdb_pgb *job = arg;
    job->sqlstate[0] = '\0';
    finish(job, CDB_PGB_TIMEOUT);
}

cdb_pgb *cdb_pgb_start(struct event_base *base, PGconn *conn, const cdb_pgb_stmt *stmts, int n, int timeout_ms,
                       cdb_pgb_cb cb, void *arg)
{
    cdb_pgb *job = NULL;
    if (!base || !conn || n < 1 || n > CDB_PGB_MAX_STMTS || timeout_ms <= 0 || PQstatus(conn) != CONNECTION_OK ||
        PQtransactionStatus(conn) != PQTRANS_IDLE || PQpipelineStatus(conn) != PQ_PIPELINE_OFF ||
        PQisnonblocking(conn) || PQsocket(conn) < 0)
        return NULL;
    if (!(job = calloc(1, sizeof *job)))
        return NULL;
    job->conn = conn;
    job->cb = cb;
    job->arg = arg;
    job->n = n;
    bool touched = false;
    if (!(job->sock = event_new(base, PQsocket(conn), EV_READ | EV_PERSIST, on_socket, job)) ||
        !(job->timer = evtimer_new(base, on_deadline, job)))
        goto out_free;
    touched = true;
    if (PQsetnonblocking(conn, 1) != 0 || !PQenterPipelineMode(conn))
        goto out_free;
    for (int i = 0; i < n; i++) {
        if (stmts[i].name && stmts[i].prepare) {
            if (PQsendPrepare(conn, stmts[i].name, stmts[i].sql, stmts[i].nparams, NULL) != 1)
                goto out_free;
            job->nprep++;
        }
    }
    for (int i = 0; i < n; i++) {
        int sent = stmts[i].name ? PQsendQueryPrepared(conn, stmts[i].name, stmts[i].nparams, stmts[i].params, NULL,
                                                       NULL, 0)
                                 : PQsendQueryParams(conn, stmts[i].sql, stmts[i].nparams, NULL, stmts[i].params,
                                                     NULL, NULL, 0);
        if (sent != 1)
            goto out_free;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (!PQpipelineSync(conn) || !watch(job) || evtimer_add(job->timer, &tv) != 0)
        goto out_free;
    return job;

out_free:
    if (touched) {
        /* something may have been queued or sent: nobody can read it back in step */
        cdb_log_warn("pg.borrow_failed", "a job could not be sent on a borrowed connection; closing it");
        cdb_pgb_break(conn);
    }
    if (job->sock)
        event_free(job->sock);
    if (job->timer)
        event_free(job->timer);
    free(job);
    return NULL;
}

void cdb_pgb_abort(cdb_pgb *job)
{
    if (job)
        finish(job, CDB_PGB_ABORTED);
}
