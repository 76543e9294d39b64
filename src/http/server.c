/*
 * server.c - event loops, the listening socket, the hand-off to workers and
 * graceful shutdown.
 *
 * Model: HTTP_THREADS loops (libevent) accept on one shared listening
 * socket; each connection stays on the loop that accepted it (conn.c reads
 * and writes it). A route that may block is handed to the worker queue;
 * the worker runs the handler with blocking libpq, then appends the request
 * to its loop's completion list and activates the loop's completion event
 * (event_active is thread-safe once evthread_use_pthreads() ran). The loop
 * sends the answer. Before that hand-off, an authenticated request is
 * admitted on its loop (loop_admit.c: session, quota and a cache hit, with
 * the loop's asynchronous Redis and first-level cache), which answers it
 * there when it can. docs/architecture.md says why the rest runs on workers
 * with blocking libpq.
 *
 * A client may go away while its request is on a worker: its connection
 * drops the socket and stays until the completion, which only logs.
 */
#include "coredb/http.h"
#include "http_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "core/workq.h"
#include "service/service_internal.h"

/* route tables of one listener, the terminating NULL included */
#define CDB_ROUTE_TABLES_MAX 32

/* the main listener's route tables, in matching order */
static const cdb_route *const ROUTE_TABLES[] = {
    cdb_routes_health,  cdb_routes_users,   cdb_routes_auth,    cdb_routes_data,
    cdb_routes_admin,   cdb_routes_migrations, cdb_routes_audit, cdb_routes_dbauth,
    cdb_routes_access,  cdb_routes_monitor, cdb_routes_metrics, cdb_routes_openapi,
    cdb_routes_leases,  cdb_routes_encryption, cdb_routes_collections,
};

struct cdb_http_server {
    cdb_service *svc;
    int listen_fd;
    int prom_fd;                   /* PROMETHEUS_PORT listener or -1; served by the last loop */
    int nloops;
    cdb_loop *loops;
    cdb_workq *workers;            /* blocking work: PostgreSQL, Redis, disk */
    cdb_workq *slow_workers;       /* password hashing (AUTH_THREADS) */
    cdb_client_limit *limit;       /* HTTP_MAX_CONNECTIONS_PER_IP */
    const cdb_route *tables[CDB_ROUTE_TABLES_MAX]; /* NULL-terminated */
    const cdb_route *prom_tables[2]; /* the PROMETHEUS_PORT listener: GET /metrics only */
    int route_base[CDB_ROUTE_TABLES_MAX]; /* index into route_ix of tables[t][0] */
    int route_len[CDB_ROUTE_TABLES_MAX];  /* rows of tables[t] */
    int route_ix[256];             /* metrics index of every row of tables (more rows: "unmatched") */
    atomic_int inflight;           /* requests accepted and not yet answered */
    atomic_int api_socket_loops;   /* loops accepting on listen_fd (the last to stop shuts it) */
    atomic_int prom_socket_loops;  /* ... on prom_fd */
    atomic_int loops_accepting;    /* started loops that have not yet run stop_accepting */
    atomic_bool stopping;
    atomic_bool draining;          /* a stop signal came: /health/ready answers 503 */
};

/*
 * The metrics index of every route (its pattern's, metrics.c), computed
 * once so the hot path finds a route's index from its address: tables[t]
 * is an array, so route - tables[t] is the row.
 */
static void index_routes(cdb_http_server *srv)
{
    int k = 0;
    for (int t = 0; srv->tables[t]; t++) {
        srv->route_base[t] = k;
        for (const cdb_route *rt = srv->tables[t]; rt->pattern; rt++) {
            int ix = cdb__metrics_route_index(rt->pattern);
            if (k < (int)(sizeof srv->route_ix / sizeof srv->route_ix[0]))
                srv->route_ix[k] = ix;
            k++;
        }
        srv->route_len[t] = k - srv->route_base[t];
    }
    /* the metrics listener's one route has the same pattern as the admin one */
    cdb__metrics_route_index(cdb_routes_metrics_public[0].pattern);
}

int cdb_server_route_metric(const cdb_http_server *srv, const cdb_route *route)
{
    if (!route)
        return 0;
    uintptr_t at = (uintptr_t)route;
    for (int t = 0; srv->tables[t]; t++) {
        uintptr_t first = (uintptr_t)srv->tables[t];
        if (at >= first && at < first + (size_t)srv->route_len[t] * sizeof *route) {
            int k = srv->route_base[t] + (int)((at - first) / sizeof *route);
            return k < (int)(sizeof srv->route_ix / sizeof srv->route_ix[0]) ? srv->route_ix[k] : 0;
        }
    }
    /* the metrics listener's table: rare, so the registry's lookup is fine */
    return cdb__metrics_route_index(route->pattern);
}

void cdb_server_finish(cdb_request *r)
{
    cdb_http_server *srv = r->server;
    cdb_request_send(r, atomic_load(&srv->stopping));
    cdb_request_free(r);
    atomic_fetch_sub(&srv->inflight, 1);
    cdb__metrics_inflight_add(-1);
}

/* Loop side of the worker hand-off: send every completed request. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    cdb_loop *loop = arg;
    pthread_mutex_lock(&loop->done_lock);
    cdb_request *list = loop->done_head;
    loop->done_head = NULL;
    pthread_mutex_unlock(&loop->done_lock);
    while (list) {
        cdb_request *next = list->next;
        cdb_server_finish(list);
        list = next;
    }
}

/*
 * Admission and the handler, with the audit origin of this thread set to
 * the request (its id, the client's address) for whatever they record
 * (admit.c records refused admin calls), and cleared after.
 */
static void admit_and_run(cdb_request *r)
{
    cdb_audit_origin_set(r->request_id, r->client_addr, "http");
    if (cdb_request_admit(r))
        r->route->handler(r);
    cdb_audit_origin_clear();
}

/* The worker is done with r: its loop sends the answer. */
static void back_to_loop(cdb_request *r)
{
    cdb_loop *loop = r->loop;
    pthread_mutex_lock(&loop->done_lock);
    r->next = loop->done_head;
    loop->done_head = r;
    pthread_mutex_unlock(&loop->done_lock);
    event_active(loop->done_ev, EV_READ, 0);
}

static void run_on_worker(void *arg)
{
    cdb_request *r = arg;
    admit_and_run(r);
    back_to_loop(r);
}

static void resume_on_worker(void *arg)
{
    cdb_request *r = arg;
    cdb_audit_origin_set(r->request_id, r->client_addr, "http");
    r->resume(r);
    cdb_audit_origin_clear();
    back_to_loop(r);
}

bool cdb_server_resume_on_worker(cdb_request *r, cdb_route_fn fn)
{
    cdb_workq *queue = r->server->workers;
    r->resume = fn;
    return queue && cdb_workq_submit(queue, resume_on_worker, r) == 0;
}

void cdb_server_hand_off(cdb_request *r)
{
    cdb_http_server *srv = r->server;
    cdb_workq *queue = r->route->mode == CDB_RUN_SLOW ? srv->slow_workers : srv->workers;
    /* no queue: the loops stopped and the workers are gone (loop_admit.c's
       replies that arrive while a loop is freed) */
    if (!queue || cdb_workq_submit(queue, run_on_worker, r) != 0) {
        cdb_request_failf(r, CDB_ERR_DATABASE_UNAVAILABLE, "Service is shutting down");
        cdb_server_finish(r);
    }
}

void cdb_server_dispatch(cdb_request *r)
{
    cdb_http_server *srv = r->server;
    atomic_fetch_add(&srv->inflight, 1);
    cdb__metrics_inflight_add(1);
    if (!cdb_request_prepare(r, r->loop->tables) || r->route->mode == CDB_RUN_INLINE) {
        /* inline routes are public: admission only parses the body */
        if (r->status == 0)
            admit_and_run(r);
        cdb_server_finish(r);
        return;
    }
    if (!cdb__loop_admit(r))
        cdb_server_hand_off(r);
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    cdb_conn_accept(arg, fd, sa, salen, false);
}

enum { ACCEPT_PAUSE_MS = 100, LISTEN_BACKLOG = 1024 };
/* jobs in flight per loop connection: a backend runs its pipeline in order, so more only queue
   in its socket behind a slow one; beyond these, misses park on the loop's one FIFO
   (store/pg_async.c) and go to whichever connection frees a slot first. 4, not 32: p99 of a miss
   at c64 about 31 ms instead of 50-60, and at c1000 a third more misses a second for a third
   less CPU each (docs/architecture.md, "The connections") */
enum { LOOP_PG_INFLIGHT = 4 };
/* a loop's Redis command with no reply by then fails, and the request takes
   the blocking path (the same bound as the blocking pool's commands) */
enum { LOOP_REDIS_TIMEOUT_MS = 1000 };

/*
 * accept() failed. Out of descriptors (or memory) the pending connection
 * stays in the backlog and the socket stays readable, so accepting again
 * at once would spin the loop: pause this loop's listener for a moment
 * instead (nginx does the same). Other errors concern one connection only.
 */
static void on_accept_error(struct evconnlistener *listener, void *arg)
{
    cdb_loop *loop = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
        return;
    cdb_log_warn("http.accept_paused", "accept failed (%s): pausing for %d ms", strerror(e), ACCEPT_PAUSE_MS);
    evconnlistener_disable(listener);
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    evtimer_add(loop->accept_pause, &tv);
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    cdb_loop *loop = arg;
    if (!atomic_load(&loop->server->stopping))
        evconnlistener_enable(loop->listener);
}

/*
 * Every connection is a descriptor: take the hard limit the system allows
 * rather than a soft default (often 1,024) that a few idle clients exhaust.
 */
static void raise_descriptor_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        cdb_log_info("http.descriptors", "open file limit raised from %llu to %llu",
                     (unsigned long long)was, (unsigned long long)rl.rlim_max);
}

static void *loop_main(void *arg)
{
    cdb_loop *loop = arg;
    /* connect now rather than on the first request (a no-op without Redis) */
    if (loop->aredis)
        cdb_aredis_ready(loop->aredis);
    event_base_loop(loop->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* var: the setting named in errors ("" for HOST/PORT, "PROMETHEUS_" for the metrics listener) */
static int open_listener(const char *var, const char *host, int port, cdb_error *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int fd = -1;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%sHOST: cannot resolve %s: %s", var, host, gai_strerror(rc));
        goto out;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%sPORT: cannot listen on %s:%d: %s", var, host, port,
                      strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
out:
    if (res)
        freeaddrinfo(res);
    return fd;
}

/* A loop's own connection reached PostgreSQL: the blocking pool need not wait out its backoff. */
static void pool_server_answers(void *pool)
{
    cdb_pool_server_answers(pool);
}

static int loop_init(cdb_loop *loop, cdb_http_server *srv, int fd, atomic_int *loops_on_socket,
                     const cdb_route *const *tables, cdb_error *err)
{
    loop->server = srv;
    loop->loops_on_socket = loops_on_socket;
    atomic_fetch_add(loops_on_socket, 1);
    loop->tables = tables;
    loop->svc = srv->svc;
    loop->cfg = cdb_service_config(srv->svc);
    loop->limit = srv->limit;
    pthread_mutex_init(&loop->done_lock, NULL);
    loop->base = event_base_new();
    loop->done_ev = loop->base ? event_new(loop->base, -1, 0, on_done, loop) : NULL;
    if (!loop->done_ev)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot create event loop");
    /* every loop accepts on the one socket; the kernel hands each connection to one */
    loop->listener = evconnlistener_new(loop->base, on_accept, loop, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    loop->accept_pause = evtimer_new(loop->base, resume_accepting, loop);
    if (!loop->listener || !loop->accept_pause)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot accept on the listening socket");
    evconnlistener_set_error_cb(loop->listener, on_accept_error);
    cdb_redis *redis = cdb_service_redis(srv->svc);
    if (redis && !(loop->aredis = cdb_aredis_new(loop->base, redis, LOOP_REDIS_TIMEOUT_MS)))
        return cdb_error_oom(err);
    /* CACHE_L1_MB is shared by the API's loops; an eighth of a loop's share
       bounds each of its two memos (at least CDB_LOOP_TABLE_MIN_BYTES) */
    size_t l1_bytes = (size_t)loop->cfg->cache_l1_mb * 1024 * 1024 / (size_t)loop->cfg->http_threads;
    size_t memo_bytes = l1_bytes / 8 > CDB_LOOP_TABLE_MIN_BYTES ? l1_bytes / 8 : CDB_LOOP_TABLE_MIN_BYTES;
    if (!(loop->verified = cdb_kvtable_new(CDB_VERIFIED_TOKENS, memo_bytes)) ||
        !(loop->memo = cdb_kvtable_new(CDB_LOOP_MEMO_ENTRIES, memo_bytes)) ||
        !(loop->arenas = cdb_arena_pool_new(CDB_LOOP_SPARE_ARENAS)))
        return cdb_error_oom(err);
    cdb_inval *inval = cdb_service_inval(srv->svc);
    if (loop->aredis && inval && l1_bytes &&
        !(loop->l1 = cdb_l1_new(inval, l1_bytes, (int64_t)loop->cfg->cache_ttl_s * 1000)))
        return cdb_error_oom(err);
    return 0;
}

static void loop_destroy(cdb_loop *loop)
{
    /* requests waiting for its replies are answered first (their callbacks
       run with no reply), while their connections still exist */
    cdb_aredis_free(loop->aredis);
    /* misses parked on its connections: each fails once, so a worker (or, with
       the workers gone, a 503) answers it */
    cdb_apg_free(loop->apg);
    /* reads parked on lease connections likewise (loop_lease.c) */
    cdb__loop_lease_abort_all(loop);
    cdb_l1_free(loop->l1);
    cdb_kvtable_free(loop->verified);
    cdb_kvtable_free(loop->memo);
    if (loop->listener)
        evconnlistener_free(loop->listener);
    if (loop->accept_pause)
        event_free(loop->accept_pause);
    /* requests completed after the loops stopped: their answers are never flushed */
    cdb_request *r = loop->done_head;
    while (r) {
        cdb_request *next = r->next;
        cdb_request_send(r, true);
        cdb_request_free(r);
        r = next;
    }
    cdb_conn_free_all(loop);
    if (loop->done_ev)
        event_free(loop->done_ev);
    if (loop->base)
        event_base_free(loop->base);
    /* last: every request's arena (freed above, or by the base's finalizers) gives its block back here */
    cdb_arena_pool_free(loop->arenas);
    pthread_mutex_destroy(&loop->done_lock);
}

/* Scrape time (metrics.c's collectors): the API loops' open connections, to see how they are split. */
static void collect_loops(cdb__metrics_out *out, void *arg)
{
    cdb_http_server *srv = arg;
    char label[24];
    cdb__metrics_family(out, "coredb_http_loop_connections", "gauge",
                        "Open client connections by API event loop "
                        "(how the kernel split them: each stays on its loop).");
    for (int i = 0; i < cdb_service_config(srv->svc)->http_threads; i++) {
        snprintf(label, sizeof label, "loop=\"%d\"", i);
        cdb__metrics_sample(out, "coredb_http_loop_connections", label,
                            atomic_load_explicit(&srv->loops[i].open_conns, memory_order_relaxed));
    }
}

cdb_http_server *cdb_http_server_new(cdb_service *svc, cdb_error *err)
{
    const cdb_config *cfg = cdb_service_config(svc);
    cdb_http_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        cdb_error_oom(err);
        return NULL;
    }
    srv->svc = svc;
    srv->listen_fd = -1;
    srv->prom_fd = -1;
    /* the test routes and the terminating NULL come on top */
    _Static_assert(sizeof ROUTE_TABLES / sizeof *ROUTE_TABLES + 2 <= CDB_ROUTE_TABLES_MAX, "room for the route tables");
    size_t t = 0;
    for (; t < sizeof ROUTE_TABLES / sizeof *ROUTE_TABLES; t++)
        srv->tables[t] = ROUTE_TABLES[t];
    if (getenv("COREDB_TEST_ROUTES") && strcmp(getenv("COREDB_TEST_ROUTES"), "1") == 0)
        srv->tables[t++] = cdb_routes_test;
    srv->tables[t] = NULL;
    srv->prom_tables[0] = cdb_routes_metrics_public;
    index_routes(srv);

    evthread_use_pthreads();
    raise_descriptor_limit();
    srv->listen_fd = open_listener("", cfg->host, cfg->port, err);
    if (srv->listen_fd < 0)
        goto fail;
    if (cfg->prometheus_port > 0) {
        srv->prom_fd = open_listener("PROMETHEUS_", cfg->prometheus_host, cfg->prometheus_port, err);
        if (srv->prom_fd < 0)
            goto fail;
    }
    /* One worker per pooled connection plus headroom, so a request waiting
     * for a connection never keeps another from reaching the pool. */
    srv->workers = cdb_workq_new(cfg->db_pool_max + 4);
    srv->slow_workers = cdb_workq_new(cfg->auth_threads);
    srv->limit = cdb_client_limit_new(cfg->http_max_connections_per_ip);
    srv->nloops = cfg->http_threads + (srv->prom_fd >= 0);
    srv->loops = calloc((size_t)srv->nloops, sizeof *srv->loops);
    if (!srv->workers || !srv->slow_workers || !srv->limit || !srv->loops) {
        cdb_error_oom(err);
        goto fail;
    }
    /* the API's loops own their share of the pool (DB_LOOP_CONNECTIONS: service.c) */
    int loop_conns = cdb_service_loop_connections(svc);
    cdb_pool *pool = cdb_service_pool(svc);
    for (int i = 0; i < cfg->http_threads; i++) {
        if (loop_init(&srv->loops[i], srv, srv->listen_fd, &srv->api_socket_loops, srv->tables, err) < 0)
            goto fail;
        if (loop_conns > 0 && pool &&
            !(srv->loops[i].apg = cdb_apg_new(srv->loops[i].base, cdb_pool_pg_settings(pool), loop_conns,
                                              LOOP_PG_INFLIGHT))) {
            cdb_error_oom(err);
            goto fail;
        }
        if (srv->loops[i].apg)
            cdb_apg_on_server_answers(srv->loops[i].apg, pool_server_answers, pool);
    }
    /* the metrics listener has a loop of its own, so the API's connections
     * cannot crowd out a scrape's (the rendering runs on the workers) */
    if (srv->prom_fd >= 0 &&
        loop_init(&srv->loops[srv->nloops - 1], srv, srv->prom_fd, &srv->prom_socket_loops, srv->prom_tables,
                  err) < 0)
        goto fail;
    if (cdb__metrics_add_collector(collect_loops, srv) < 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "too many metrics collectors");
        goto fail;
    }
    return srv;

fail:
    cdb_http_server_free(srv);
    return NULL;
}

/*
 * Clients that connected while the service still served, queued on the
 * socket and not yet taken by a loop: they are served like the others.
 * Bounded by what the backlog holds.
 */
static void accept_backlog(cdb_loop *loop, int socket_fd)
{
    for (int n = 0; n < LISTEN_BACKLOG; n++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(socket_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        cdb_conn_accept(loop, fd, (struct sockaddr *)&ss, (int)len, true);
    }
}

/*
 * The stop (after SHUTDOWN_DRAIN_MS), on each loop: it stops watching its
 * listening socket and closes its idle connections. The last loop on a
 * socket then takes what is still queued on it and shuts it, so that a
 * client connecting from now on is refused at once: left listening until
 * the process exits, the kernel would complete its connection, queue it
 * through the whole grace period and then reset it. (shutdown, not close:
 * the other loops' listeners still hold the descriptor's number.)
 */
static void stop_accepting(evutil_socket_t fd, short what, void *arg)
{
    cdb_loop *loop = arg;
    evconnlistener_disable(loop->listener);
    evtimer_del(loop->accept_pause);
    cdb_conn_close_idle(loop);
    if (atomic_fetch_sub(loop->loops_on_socket, 1) == 1) {
        int socket_fd = evconnlistener_get_fd(loop->listener);
        accept_backlog(loop, socket_fd);
        shutdown(socket_fd, SHUT_RDWR);
    }
    atomic_fetch_sub(&loop->server->loops_accepting, 1);
}

/*
 * The signals that stop the server: SIGTERM, SIGINT, and SIGHUP (a closed
 * terminal) unless the process was started with it ignored (nohup), when
 * it must stay ignored.
 */
static void stop_signal_set(sigset_t *set)
{
    struct sigaction hup;
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler != SIG_IGN)
        sigaddset(set, SIGHUP);
}

int cdb_http_block_stop_signals(void)
{
    sigset_t set;
    stop_signal_set(&set);
    return pthread_sigmask(SIG_BLOCK, &set, NULL) == 0 ? 0 : -1;
}

/*
 * The grace period: until every loop has stopped accepting (the requests of
 * the clients it took from the backlog then count as in flight) and no
 * request is in flight, or the deadline. Another stop signal now (GNU make
 * forwards SIGTERM to a child that got its own, an impatient second Ctrl-C)
 * ends the wait at once; the cleanup after it (loops, workers, pool, the
 * embedded PostgreSQL) still runs. sigtimedwait doubles as the 10 ms sleep.
 */
static void wait_for_inflight(cdb_http_server *srv, const sigset_t *stop_signals, int64_t grace_ms)
{
    int64_t deadline = cdb_mono_ms() + grace_ms;
    const struct timespec tick = {0, 10 * 1000 * 1000};
    while ((atomic_load(&srv->loops_accepting) > 0 || atomic_load(&srv->inflight) > 0) &&
           cdb_mono_ms() < deadline) {
        int sig = sigtimedwait(stop_signals, NULL, &tick);
        if (sig > 0) {
            cdb_log_warn("http.stopping", "signal %d again: ending the grace period with %d "
                         "requests in flight; cleaning up", sig, atomic_load(&srv->inflight));
            return;
        }
    }
    int left = atomic_load(&srv->inflight);
    if (left > 0)
        cdb_log_warn("http.stopping", "%d requests still running at the deadline", left);
}

bool cdb_server_draining(const cdb_http_server *srv)
{
    return atomic_load(&srv->draining);
}

/*
 * SHUTDOWN_DRAIN_MS: after the stop signal and before the listener closes,
 * every request is still served but /health/ready answers 503, so a load
 * balancer that checks it takes the instance out of rotation while it still
 * answers whatever the balancer sends meanwhile (closing first would make
 * those requests fail). Another stop signal ends the drain at once.
 */
static void drain(cdb_http_server *srv, const sigset_t *stop_signals, int64_t drain_ms)
{
    atomic_store(&srv->draining, true);
    if (drain_ms <= 0)
        return;
    cdb_log_info("http.draining", "/health/ready answers 503 for %lld ms before the listener closes",
                 (long long)drain_ms);
    int64_t deadline = cdb_mono_ms() + drain_ms;
    for (int64_t left = drain_ms; left > 0; left = deadline - cdb_mono_ms()) {
        int64_t step = left < 100 ? left : 100;
        const struct timespec tick = {0, (long)step * 1000 * 1000};
        int sig = sigtimedwait(stop_signals, NULL, &tick);
        if (sig > 0) {
            cdb_log_warn("http.draining", "signal %d again: ending the drain", sig);
            return;
        }
    }
}

int cdb_http_server_run(cdb_http_server *srv)
{
    const cdb_config *cfg = cdb_service_config(srv->svc);
    sigset_t stop_signals;
    stop_signal_set(&stop_signals);
    /* Already blocked when the caller followed http.h; if not, at least the
     * loops started below inherit the mask. */
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    int started = 0;
    for (; started < srv->nloops; started++)
        if (pthread_create(&srv->loops[started].thread, NULL, loop_main, &srv->loops[started]) != 0)
            break;
    cdb_log_info("http.listening", "serving on %s:%d with %d loops", cfg->host, cfg->port,
                 started - (srv->prom_fd >= 0));
    if (srv->prom_fd >= 0)
        cdb_log_info("http.metrics_listening", "serving /metrics on %s:%d", cfg->prometheus_host,
                     cfg->prometheus_port);

    int sig = 0;
    if (started == srv->nloops) {
        sigwait(&stop_signals, &sig);
        drain(srv, &stop_signals, cfg->shutdown_drain_ms);
    }
    cdb_log_info("http.stopping", "signal %d: stop accepting, finishing in-flight requests", sig);
    atomic_store(&srv->stopping, true);
    atomic_store(&srv->loops_accepting, started);
    struct timeval now = {0, 0};
    for (int i = 0; i < started; i++)
        if (event_base_once(srv->loops[i].base, -1, EV_TIMEOUT, stop_accepting, &srv->loops[i], &now) != 0)
            atomic_fetch_sub(&srv->loops_accepting, 1); /* not waited for: it keeps its listener to the end */

    wait_for_inflight(srv, &stop_signals, cfg->shutdown_grace_ms);

    for (int i = 0; i < started; i++)
        event_base_loopexit(srv->loops[i].base, NULL);
    for (int i = 0; i < started; i++)
        pthread_join(srv->loops[i].thread, NULL);
    /* Let jobs still on workers finish before their loops are freed. */
    cdb_workq_free(srv->slow_workers);
    cdb_workq_free(srv->workers);
    srv->slow_workers = srv->workers = NULL;
    return started == srv->nloops ? 0 : -1;
}

void cdb_http_server_free(cdb_http_server *srv)
{
    if (!srv)
        return;
    cdb__metrics_remove_collector(collect_loops, srv);
    cdb_workq_free(srv->slow_workers);
    cdb_workq_free(srv->workers);
    for (int i = 0; srv->loops && i < srv->nloops; i++)
        loop_destroy(&srv->loops[i]);
    free(srv->loops);
    cdb_client_limit_free(srv->limit);
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    if (srv->prom_fd >= 0)
        close(srv->prom_fd);
    free(srv);
}
