/*
 * pool.c - the PostgreSQL connection pool behind every data request.
 *
 * Design. Each open connection sits on exactly one list, and the list is its
 * state (as in PgBouncer): `idle` (open, unused, owned by the pool) or
 * `active` (handed out, or being validated just before hand-out). A thread
 * opening a connection outside the lock holds a reserved slot (`opening`) so
 * concurrent acquirers never overshoot max_size. All counts derive from the
 * lists; a move between lists that does not match a connection's recorded
 * list is a bug and aborts.
 *
 * Connections are blocking libpq connections used from worker threads: it is
 * simple, every statement of a request runs on the one connection it
 * acquired, and a slow query only holds its own worker. Whether asynchronous
 * libpq on the event loops would beat it is measured by the data-path
 * benchmark (docs/architecture.md), not assumed.
 *
 * Failure handling. libpq only notices a dead server on I/O, so:
 *  - a connection that comes back broken is closed, and the pool `generation`
 *    is bumped: idle connections older than it are checked before reuse (a
 *    PostgreSQL restart kills all of them at once);
 *  - an idle connection is checked with a non-blocking read (PQconsumeInput,
 *    which sees the server's close) on every hand-out, plus "SELECT 1" when it has
 *    been idle over 5 s; the maintenance thread does the non-blocking read on
 *    every idle connection each tick, so dead ones leave the pool quickly;
 *  - after a failed connect the server is marked down and connects back off
 *    exponentially (100 ms doubling to 5 s); while down, an acquire with
 *    nothing idle fails at once with DATABASE_UNAVAILABLE unless the backoff
 *    lets it make the next attempt itself (or another thread's attempt is
 *    in flight and under 1 s old: it waits for that one's result, once),
 *    so the service recovers on the first request after PostgreSQL is back
 *    without anyone waiting out a timeout meanwhile. The loops' own
 *    connections tell the pool when the server answers again
 *    (cdb_pool_server_answers), which ends the backoff at once.
 *
 * Deadlines (pg.h). Every round trip on a pooled connection has the
 * client-side deadline of its statement timeout (5 minutes when
 * DB_STATEMENT_TIMEOUT is 0: never none), validation and the
 * ROLLBACK of a returned connection included, and connects and validation
 * inside an acquire also end by the acquire's deadline (but get at least
 * CONNECT_MIN_MS, so a caller woken just before its deadline does not
 * mistake its own impatience for a dead server). A connection whose
 * deadline expired comes back closed; the pool then treats the server as
 * down exactly as after a failed connect (backoff, generation bump), so the
 * requests queued behind it fail fast instead of each spending a deadline
 * on a connect or a validation, and an acquire whose validation expires
 * answers DATABASE_TIMEOUT at once rather than trying the next idle
 * connection. Connects are bounded by pg.c (5 s by default), which also
 * covers a stopped server that accepts TCP connections from its backlog but
 * never answers the startup packet.
 *
 * The maintenance thread keeps min_size open, closes connections idle past
 * idle_timeout_ms down to min_size, and ticks every 200 ms.
 */
#include "store/pool.h"
#include "core/hash.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/log.h"
#include "store/pg.h"
#include "core/metrics.h"
#include "core/timeutil.h"

enum {
    VALIDATE_AFTER_IDLE_MS = 5000,
    CONNECT_MIN_MS = 1000,
    /* DB_STATEMENT_TIMEOUT=0 lifts the server's limit, but a silent server
     * must still be given up: no HTTP client waits longer than this. */
    NO_STATEMENT_TIMEOUT_DEADLINE_MS = 300000,
    BACKOFF_MIN_MS = 100,
    BACKOFF_MAX_MS = 5000,
    TICK_MS = 200,
    /* how long after its start a probe connect is waited for by other
       acquirers (a healthy connect takes milliseconds; a stopped server
       holds it for the connect timeout) */
    PROBE_WAIT_MS = 1000,
};

typedef struct conn_list {
    cdb_pool_conn *head;           /* most recently added first */
    int count;
    const char *name;
} conn_list;

/* A server-side prepared statement of one connection. */
typedef struct prepared_stmt {
    uint64_t hash;                 /* of sql, to skip most strcmp */
    char *sql;
    char name[16];                 /* "cdb_s<n>" */
} prepared_stmt;

struct cdb_pool_conn {
    PGconn *pg;
    conn_list *on;                 /* the list holding it, i.e. its state; NULL in transit */
    cdb_pool_conn *prev, *next;
    int64_t last_used_ms;          /* when it last went idle */
    uint64_t generation;           /* pool generation when it last went idle */
    /* Statements prepared on this connection; touched only by its holder. */
    prepared_stmt stmts[CDB_POOL_MAX_STATEMENTS];
    int nstmts;
};

struct cdb_pool {
    cdb_pool_options opt;          /* string fields point at the owned copies below */
    char *conninfo, *sslmode, *application_name;
    cdb_pg_settings pg;

    pthread_mutex_t mu;            /* guards everything below */
    pthread_cond_t freed;          /* a connection went idle or a slot opened */
    pthread_cond_t tick;           /* wakes the maintenance thread */
    pthread_t thread;

    conn_list idle;                /* open and free; head is the most recently used (LIFO) */
    conn_list active;              /* handed out to callers */
    int opening;                   /* slots reserved by threads connecting without the lock */
    int waiting;                   /* acquirers blocked on `freed` */

    bool server_up;                /* false after a failed connect, until one succeeds */
    int backoff_ms;                /* delay after the last failed connect; 0 while up */
    int64_t next_connect_ms;       /* while down: no connect attempt before this */
    int64_t probe_started_ms;      /* while down: when the last connect attempt was claimed */
    uint64_t generation;           /* bumped whenever a connection is found broken */
    bool stopping;

    uint64_t acquired_total, acquire_timeouts_total, connects_total, connect_failures_total;
};

static void list_add(conn_list *l, cdb_pool_conn *c)
{
    if (c->on) {
        cdb_log_error("pool.bad_transition", "connection added to %s while on %s", l->name, c->on->name);
        abort();
    }
    c->prev = NULL;
    c->next = l->head;
    if (l->head)
        l->head->prev = c;
    l->head = c;
    c->on = l;
    l->count++;
}

static void list_remove(conn_list *l, cdb_pool_conn *c)
{
    if (c->on != l) {
        cdb_log_error("pool.bad_transition", "connection removed from %s while on %s", l->name,
                      c->on ? c->on->name : "no list");
        abort();
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->on = NULL;
    l->count--;
}

static void conn_close(cdb_pool_conn *c)
{
    PQfinish(c->pg);
    for (int i = 0; i < c->nstmts; i++)
        free(c->stmts[i].sql);
    free(c);
}

/* Statements are compared by hash first, then by text. */
static uint64_t sql_hash(const char *s)
{
    return cdb__hash_str(s);
}

int cdb_pool_conn_prepare(cdb_pool_conn *c, const char *sql, int nparams, const char **name,
                          cdb_error *err)
{
    uint64_t h = sql_hash(sql);
    *name = NULL;
    for (int i = 0; i < c->nstmts; i++) {
        if (c->stmts[i].hash == h && strcmp(c->stmts[i].sql, sql) == 0) {
            *name = c->stmts[i].name;
            return 0;
        }
    }
    if (c->nstmts == CDB_POOL_MAX_STATEMENTS)
        return 0; /* full: this shape runs unprepared */
    prepared_stmt *st = &c->stmts[c->nstmts];
    snprintf(st->name, sizeof st->name, "cdb_s%d", c->nstmts);
    if (!(st->sql = strdup(sql)))
        return cdb_error_oom(err);
    PGresult *res = cdb_pg_prepare(c->pg, st->name, sql, nparams);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        int rc = cdb_pg_error_from_result(c->pg, res, err);
        PQclear(res);
        free(st->sql);
        st->sql = NULL;
        return rc;
    }
    PQclear(res);
    st->hash = h;
    c->nstmts++;
    *name = st->name;
    return 0;
}

const char *cdb_pool_conn_prepared_name(cdb_pool_conn *c, const char *sql, int k, bool *fresh, char *buf,
                                        size_t len)
{
    uint64_t h = sql_hash(sql);
    *fresh = false;
    for (int i = 0; i < c->nstmts; i++) {
        if (c->stmts[i].hash == h && strcmp(c->stmts[i].sql, sql) == 0)
            return c->stmts[i].name;
    }
    if (c->nstmts + k >= CDB_POOL_MAX_STATEMENTS)
        return NULL;
    *fresh = true;
    snprintf(buf, len, "cdb_s%d", c->nstmts + k);
    return buf;
}

int cdb_pool_conn_prepared_record(cdb_pool_conn *c, const char *sql)
{
    if (c->nstmts == CDB_POOL_MAX_STATEMENTS)
        return -1;
    prepared_stmt *st = &c->stmts[c->nstmts];
    if (!(st->sql = strdup(sql)))
        return -1;
    snprintf(st->name, sizeof st->name, "cdb_s%d", c->nstmts);
    st->hash = sql_hash(sql);
    c->nstmts++;
    return 0;
}

static int total_locked(const cdb_pool *p)
{
    return p->idle.count + p->active.count + p->opening;
}

static void wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ms)
{
    struct timespec ts = { .tv_sec = deadline_ms / 1000, .tv_nsec = (deadline_ms % 1000) * 1000000L };
    pthread_cond_timedwait(cv, mu, &ts);
}

/*
 * Whether a connect may be attempted now. While the server is down this
 * claims the attempt (pushing next_connect_ms out) so that only one thread
 * probes per backoff step.
 */
static bool connect_allowed_locked(cdb_pool *p, int64_t now)
{
    if (p->server_up)
        return true;
    if (now < p->next_connect_ms)
        return false;
    p->next_connect_ms = now + p->backoff_ms;
    p->probe_started_ms = now;
    return true;
}

/*
 * A round trip outlived its deadline: the server is not answering, so treat
 * it as down (as after a failed connect, without counting a connect) and
 * have the idle connections checked before reuse.
 */
static void server_silent_locked(cdb_pool *p)
{
    if (p->server_up)
        cdb_log_warn("pool.server_silent", "PostgreSQL did not answer in time; reconnecting with backoff");
    p->server_up = false;
    if (!p->backoff_ms)
        p->backoff_ms = BACKOFF_MIN_MS;
    p->next_connect_ms = cdb_mono_ms() + p->backoff_ms;
    p->generation++;
}

static void connect_result_locked(cdb_pool *p, bool ok)
{
    if (!p->server_up)
        pthread_cond_broadcast(&p->freed);   /* acquirers waiting for this probe's result */
    if (ok) {
        p->connects_total++;
        if (!p->server_up)
            cdb_log_info("pool.server_up", "PostgreSQL reachable again");
        p->server_up = true;
        p->backoff_ms = 0;
        return;
    }
    p->connect_failures_total++;
    if (p->server_up)
        cdb_log_warn("pool.server_down", "PostgreSQL unreachable; reconnecting with backoff");
    p->server_up = false;
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (p->backoff_ms > BACKOFF_MAX_MS)
        p->backoff_ms = BACKOFF_MAX_MS;
    p->next_connect_ms = cdb_mono_ms() + p->backoff_ms;
    /* A server we cannot reach has probably dropped the open connections too. */
    p->generation++;
}

/*
 * Opens a connection without the lock held, giving up at deadline_ms (0:
 * the connect timeout alone); NULL when it fails (logged by cdb_pg_connect).
 */
static cdb_pool_conn *conn_open(cdb_pool *p, int64_t deadline_ms)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_pool_conn *c = NULL;
    PGconn *pg = cdb_pg_connect_until(&p->pg, deadline_ms, &err);
    cdb_error_destroy(&err);
    if (!pg)
        return NULL;
    if (!(c = calloc(1, sizeof *c))) {
        cdb_log_error("pool.oom", "out of memory for a pool connection");
        PQfinish(pg);
        return NULL;
    }
    c->pg = pg;
    return c;
}

/* Sees a server-side close without blocking: libpq sockets are non-blocking underneath. */
static bool conn_alive(PGconn *pg)
{
    /* Twice: a session the server ended sends its FATAL message and then
     * closes; one read may take the message and only the next sees the close. */
    return PQconsumeInput(pg) && PQconsumeInput(pg) && cdb_pg_conn_ok(pg);
}

/* With query, a round trip bounded by the connection's deadline and the cap the caller set. */
static bool conn_validate(PGconn *pg, bool query)
{
    if (!conn_alive(pg))
        return false;
    if (!query)
        return true;
    PGresult *res = cdb_pg_query(pg, "SELECT 1");
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    PQclear(res);
    return ok && cdb_pg_conn_ok(pg);
}

/* Brings a returned connection back to an idle session; false when it must be closed. */
static bool conn_reset(PGconn *pg)
{
    if (PQstatus(pg) != CONNECTION_OK)
        return false;
    switch (PQtransactionStatus(pg)) {
    case PQTRANS_IDLE:
        return true;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR: {
        PGresult *res = cdb_pg_query(pg, "ROLLBACK");
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        return ok && cdb_pg_conn_ok(pg);
    }
    default:
        /* A command still in flight or an unknown state cannot be trusted. */
        return false;
    }
}

/*
 * Takes expired and dead connections off the idle list into *doomed
 * (chained through next) for closing outside the lock.
 */
static void sweep_idle_locked(cdb_pool *p, int64_t now, cdb_pool_conn **doomed)
{
    int excess = total_locked(p) - p->opt.min_size;
    cdb_pool_conn *next;
    for (cdb_pool_conn *c = p->idle.head; c; c = next) {
        next = c->next;
        bool expired = p->opt.idle_timeout_ms > 0 && excess > 0 &&
                       now - c->last_used_ms > p->opt.idle_timeout_ms;
        bool dead = !expired && !conn_alive(c->pg);
        if (!expired && !dead)
            continue;
        list_remove(&p->idle, c);
        c->next = *doomed;
        *doomed = c;
        if (expired)
            excess--;
        else
            p->generation++;
    }
}

static void *maintain(void *arg)
{
    cdb_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        int64_t now = cdb_mono_ms();
        cdb_pool_conn *doomed = NULL, *opened = NULL;
        sweep_idle_locked(p, now, &doomed);
        bool want = total_locked(p) < p->opt.min_size && connect_allowed_locked(p, now);
        if (doomed || want) {
            if (want)
                p->opening++;
            pthread_mutex_unlock(&p->mu);
            for (cdb_pool_conn *next; doomed; doomed = next) {
                next = doomed->next;
                conn_close(doomed);
            }
            if (want)
                opened = conn_open(p, 0);
            pthread_mutex_lock(&p->mu);
            if (want) {
                p->opening--;
                connect_result_locked(p, opened != NULL);
            }
            if (opened) {
                opened->last_used_ms = cdb_mono_ms();
                opened->generation = p->generation;
                list_add(&p->idle, opened);
                pthread_cond_signal(&p->freed);
                continue; /* keep filling up to min_size without waiting a tick */
            }
        }
        if (p->stopping)
            break;
        int64_t wake = cdb_mono_ms() + TICK_MS;
        if (!p->server_up && p->next_connect_ms > now && p->next_connect_ms < wake)
            wake = p->next_connect_ms;
        wait_until(&p->tick, &p->mu, wake);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

cdb_pool *cdb_pool_new(const cdb_pool_options *opt, cdb_error *err)
{
    if (!opt || opt->max_size < 1 || opt->min_size < 0 || opt->min_size > opt->max_size ||
        opt->idle_timeout_ms < 0 || opt->acquire_timeout_ms < 0 || opt->statement_timeout_ms < 0) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "Invalid pool options");
        return NULL;
    }
    cdb_pool *p = calloc(1, sizeof *p);
    if (!p) {
        cdb_error_oom(err);
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines are cdb_mono_ms() */
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->freed, &ca);
    pthread_cond_init(&p->tick, &ca);
    pthread_condattr_destroy(&ca);

    p->opt = *opt;
    p->conninfo = strdup(opt->conninfo ? opt->conninfo : "");
    p->sslmode = opt->sslmode ? strdup(opt->sslmode) : NULL;
    p->application_name = strdup(opt->application_name ? opt->application_name : "coredb");
    if (!p->conninfo || (opt->sslmode && !p->sslmode) || !p->application_name) {
        cdb_error_oom(err);
        goto fail_free_pool;
    }
    p->opt.conninfo = p->conninfo;
    p->opt.sslmode = p->sslmode;
    p->opt.application_name = p->application_name;
    p->pg = (cdb_pg_settings){
        .conninfo = p->conninfo,
        .sslmode = p->sslmode,
        .application_name = p->application_name,
        .statement_timeout_ms = opt->statement_timeout_ms,
        .round_trip_timeout_ms = opt->statement_timeout_ms > 0 ? 0 : NO_STATEMENT_TIMEOUT_DEADLINE_MS,
    };
    p->idle.name = "idle";
    p->active.name = "active";
    p->server_up = true; /* optimistic until a connect says otherwise */

    if (pthread_create(&p->thread, NULL, maintain, p) != 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Unable to start the pool thread");
        goto fail_free_pool;
    }
    return p;

fail_free_pool:
    pthread_cond_destroy(&p->tick);
    pthread_cond_destroy(&p->freed);
    pthread_mutex_destroy(&p->mu);
    free(p->conninfo);
    free(p->sslmode);
    free(p->application_name);
    free(p);
    return NULL;
}

void cdb_pool_free(cdb_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_signal(&p->tick);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);

    if (p->active.count)
        cdb_log_error("pool.free_in_use", "%d connections still handed out at pool free", p->active.count);
    conn_list *lists[] = { &p->idle, &p->active };
    for (size_t i = 0; i < 2; i++) {
        while (lists[i]->head) {
            cdb_pool_conn *c = lists[i]->head;
            list_remove(lists[i], c);
            conn_close(c);
        }
    }
    pthread_cond_destroy(&p->tick);
    pthread_cond_destroy(&p->freed);
    pthread_mutex_destroy(&p->mu);
    free(p->conninfo);
    free(p->sslmode);
    free(p->application_name);
    free(p);
}

/* When a connect or validation inside an acquire with this deadline must end. */
static int64_t budget_end(int64_t deadline_ms)
{
    int64_t floor = cdb_mono_ms() + CONNECT_MIN_MS;
    return deadline_ms > floor ? deadline_ms : floor;
}

cdb_pool_conn *cdb_pool_acquire(cdb_pool *p, int64_t deadline_ms, cdb_error *err)
{
    cdb_pool_conn *c = NULL;
    cdb_err code = CDB_OK;
    int64_t started_us = cdb_mono_us();
    bool probe_waited = false;     /* waited once for another thread's probe connect */
    if (deadline_ms == 0)
        deadline_ms = cdb_mono_ms() + p->opt.acquire_timeout_ms;

    pthread_mutex_lock(&p->mu);
    for (;;) {
        int64_t now = cdb_mono_ms();
        if ((c = p->idle.head)) {
            /* On `active` while being checked, so its slot stays counted. */
            list_remove(&p->idle, c);
            list_add(&p->active, c);
            bool long_idle = now - c->last_used_ms > VALIDATE_AFTER_IDLE_MS;
            /* conn_alive is one non-blocking read: it sees a session the
             * server ended (pg_terminate_backend, as a restore does) before
             * a request is handed a connection that can only fail */
            if (!long_idle && c->generation == p->generation && conn_alive(c->pg))
                break;
            pthread_mutex_unlock(&p->mu);
            cdb_pg_set_deadline(c->pg, budget_end(deadline_ms));
            bool ok = conn_validate(c->pg, long_idle);
            bool silent = !ok && cdb_pg_timed_out(c->pg);
            cdb_pg_set_deadline(c->pg, 0);
            pthread_mutex_lock(&p->mu);
            if (ok)
                break;
            list_remove(&p->active, c);
            if (silent)
                server_silent_locked(p);
            else
                p->generation++;
            pthread_mutex_unlock(&p->mu);
            conn_close(c);
            c = NULL;
            pthread_mutex_lock(&p->mu);
            if (silent) {
                /* the deadline is spent: trying the next one would spend another */
                code = CDB_ERR_DATABASE_TIMEOUT;
                break;
            }
            continue;
        }
        if (total_locked(p) < p->opt.max_size) {
            if (!connect_allowed_locked(p, now)) {
                /* A connect in flight while the server is down is the probe
                 * that says whether it is back: wait for its result, so that
                 * requests arriving together the moment it returns are not
                 * all but one refused. Once, and only while the probe is
                 * young: a server that accepts TCP but never answers
                 * (stopped) holds a probe for the whole connect timeout, and
                 * then failing fast is the point. */
                int64_t until = p->probe_started_ms + PROBE_WAIT_MS;
                if (until > deadline_ms)
                    until = deadline_ms;
                if (p->opening == 0 || probe_waited || now >= until) {
                    code = CDB_ERR_DATABASE_UNAVAILABLE;
                    break;
                }
                probe_waited = true;
                p->waiting++;
                wait_until(&p->freed, &p->mu, until);
                p->waiting--;
                continue;
            }
            p->opening++;
            pthread_mutex_unlock(&p->mu);
            c = conn_open(p, budget_end(deadline_ms));
            pthread_mutex_lock(&p->mu);
            p->opening--;
            connect_result_locked(p, c != NULL);
            if (c) {
                list_add(&p->active, c);
                break;
            }
            pthread_cond_signal(&p->freed); /* our reserved slot is free again */
            if (p->idle.head)
                continue; /* released while we were connecting: use it */
            code = CDB_ERR_DATABASE_UNAVAILABLE;
            break;
        }
        if (now >= deadline_ms) {
            p->acquire_timeouts_total++;
            code = CDB_ERR_POOL_EXHAUSTED;
            break;
        }
        p->waiting++;
        wait_until(&p->freed, &p->mu, deadline_ms);
        p->waiting--;
    }
    if (code == CDB_OK)
        p->acquired_total++;
    pthread_mutex_unlock(&p->mu);

    if (code == CDB_ERR_POOL_EXHAUSTED) {
        int retry_after = (p->opt.acquire_timeout_ms + 999) / 1000;
        cdb_error_set(err, code, "Unable to acquire database connection");
        cdb_error_detail(err, "database", json_string("postgresql"));
        cdb_error_detail(err, "pool_status", json_string("exhausted"));
        cdb_error_detail(err, "retry_after", json_integer(retry_after > 0 ? retry_after : 1));
    } else if (code == CDB_ERR_DATABASE_UNAVAILABLE) {
        cdb_error_set(err, code, "Unable to connect to PostgreSQL");
        cdb_error_detail(err, "database", json_string("postgresql"));
    } else if (code == CDB_ERR_DATABASE_TIMEOUT) {
        cdb_error_set(err, code, "Database did not answer in time");
        cdb_error_detail(err, "database", json_string("postgresql"));
    }
    cdb__metrics_pool_wait(cdb_mono_us() - started_us);
    return code == CDB_OK ? c : NULL;
}

PGconn *cdb_pool_conn_pg(cdb_pool_conn *conn)
{
    return conn->pg;
}

void cdb_pool_release(cdb_pool *p, cdb_pool_conn *c)
{
    if (!c)
        return;
    cdb_pg_set_deadline(c->pg, 0);
    /* after an expired deadline the connection is closed already: nothing to reset */
    bool silent = cdb_pg_timed_out(c->pg);
    bool keep = !silent && conn_reset(c->pg);
    bool broken = PQstatus(c->pg) != CONNECTION_OK;

    pthread_mutex_lock(&p->mu);
    list_remove(&p->active, c);
    if (silent) {
        server_silent_locked(p);
        pthread_cond_signal(&p->tick);
    } else if (keep) {
        c->last_used_ms = cdb_mono_ms();
        c->generation = p->generation;
        list_add(&p->idle, c);
    } else {
        if (broken)
            p->generation++;
        pthread_cond_signal(&p->tick); /* refill towards min_size */
    }
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->mu);

    if (!keep)
        conn_close(c);
}

void cdb_pool_get_stats(cdb_pool *p, cdb_pool_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = (cdb_pool_stats){
        .active = p->active.count,
        .idle = p->idle.count,
        .waiting = p->waiting,
        .total = p->active.count + p->idle.count,
        .max = p->opt.max_size,
        .server_up = p->server_up,
        .acquired_total = p->acquired_total,
        .acquire_timeouts_total = p->acquire_timeouts_total,
        .connects_total = p->connects_total,
        .connect_failures_total = p->connect_failures_total,
    };
    pthread_mutex_unlock(&p->mu);
}

const char *cdb_pool_conninfo(const cdb_pool *pool)
{
    return pool->conninfo;
}

int cdb_pool_statement_timeout_ms(const cdb_pool *pool)
{
    return pool->opt.statement_timeout_ms;
}

const struct cdb_pg_settings *cdb_pool_pg_settings(const cdb_pool *pool)
{
    return &pool->pg;
}

void cdb_pool_server_answers(cdb_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->mu);
    if (!pool->server_up)
        pool->next_connect_ms = cdb_mono_ms();
    pthread_mutex_unlock(&pool->mu);
}
