/*
 * store/redis_async.c - an event loop's asynchronous Redis connection,
 * against a real redis-server this test starts on a free loopback port
 * (and kills: mid-flight, to check that every pending command gets NULL
 * exactly once, then restarts on the same port). Covered: replies in order,
 * a thousand commands pipelined before the loop runs, AUTH (password alone
 * and user + password) with SELECT, a wrong password and an out-of-range db
 * (never ready, backing off, no busy loop), a refused and a silent server
 * (connect timeout), a command timeout (CLIENT PAUSE), free with commands
 * pending, commands that would break one-reply-per-command, and sends from
 * inside callbacks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/redis_async.c"

#include "../redis_server.h"

/* ---- fixture: one loop, one pool, one async connection ------------------- */

typedef struct fx {
    int port;
    pid_t pid;
    const char *password;
    struct event_base *base;
    cdb_redis *sync;
    cdb_aredis *a;
} fx;

/* cred: "" or "[user]:password@"; db: "" or "/N" */
static void fx_open(fx *f, const char *cred, const char *db, int command_timeout_ms, int connect_timeout_ms)
{
    char url[200];
    cdb_error err;
    cdb_redis_options opt = {.url = url, .pool_size = 2, .connect_timeout_ms = connect_timeout_ms};

    snprintf(url, sizeof url, "redis://%s127.0.0.1:%d%s", cred, f->port, db);
    cdb_error_init(&err);
    f->base = event_base_new();
    assert_non_null(f->base);
    f->sync = cdb_redis_new(&opt, &err);
    assert_non_null(f->sync);
    cdb_error_destroy(&err);
    f->a = cdb_aredis_new(f->base, f->sync, command_timeout_ms);
    assert_non_null(f->a);
}

static void fx_close(fx *f)
{
    cdb_aredis_free(f->a);
    cdb_redis_free(f->sync);
    event_base_free(f->base);
    if (f->pid > 0)
        stop_redis(f->pid);
}

static void wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop for about ms milliseconds or until *until becomes true (until may be NULL). */
static void run_for(struct event_base *base, int ms, const int *until, int until_value)
{
    int64_t end = cdb_mono_ms() + ms;
    struct event *tick = event_new(base, -1, EV_PERSIST, wake, NULL);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 5000};
    evtimer_add(tick, &tv);
    while (cdb_mono_ms() < end && !(until && *until >= until_value))
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
}

/* Calls cdb_aredis_ready while running the loop until it says yes (or ms pass). */
static bool wait_ready(fx *f, int ms)
{
    int64_t end = cdb_mono_ms() + ms;
    while (cdb_mono_ms() < end) {
        if (cdb_aredis_ready(f->a))
            return true;
        run_for(f->base, 10, NULL, 0);
    }
    return cdb_aredis_ready(f->a);
}

/* What one command's callback saw. */
typedef struct seen {
    int calls;
    bool null;
    int type;
    long long integer;
    char str[64];
    int order;              /* position among all callbacks of the test */
    int *counter;           /* shared count of callbacks run */
} seen;

static void record(redisReply *reply, void *arg)
{
    seen *s = arg;
    s->calls++;
    s->order = (*s->counter)++;
    s->null = reply == NULL;
    if (reply) {
        s->type = reply->type;
        s->integer = reply->integer;
        if (reply->str)
            snprintf(s->str, sizeof s->str, "%s", reply->str);
    }
}

static bool send_cmd(fx *f, seen *s, int *counter, int argc, const char **argv)
{
    memset(s, 0, sizeof *s);
    s->counter = counter;
    return cdb_aredis_send(f->a, record, s, argc, argv, NULL);
}

/* ---- tests --------------------------------------------------------------- */

static void test_order(void **state)
{
    fx f = {.port = free_port()};
    seen s[5];
    int n = 0;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 1000, 0);
    assert_false(cdb_aredis_ready(f.a));    /* lazily: the first call starts the connect */
    assert_true(wait_ready(&f, 2000));
    assert_true(send_cmd(&f, &s[0], &n, 3, (const char *[]){"SET", "k", "v1"}));
    assert_true(send_cmd(&f, &s[1], &n, 2, (const char *[]){"GET", "k"}));
    assert_true(send_cmd(&f, &s[2], &n, 2, (const char *[]){"INCR", "k"}));   /* error reply */
    assert_true(send_cmd(&f, &s[3], &n, 2, (const char *[]){"INCR", "n"}));
    assert_true(send_cmd(&f, &s[4], &n, 2, (const char *[]){"GET", "missing"}));
    assert_int_equal(n, 0);                 /* never called back from inside send */
    run_for(f.base, 2000, &n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].order, i);
        assert_false(s[i].null);
    }
    assert_int_equal(s[0].type, REDIS_REPLY_STATUS);
    assert_string_equal(s[1].str, "v1");
    assert_int_equal(s[2].type, REDIS_REPLY_ERROR);   /* passed on, the caller decides */
    assert_int_equal(s[3].integer, 1);
    assert_int_equal(s[4].type, REDIS_REPLY_NIL);
    assert_true(cdb_aredis_ready(f.a));     /* an error reply does not drop the connection */

    /* binary-safe arguments with explicit lengths */
    {
        const char *argv[3] = {"SET", "bin", "a\0b"};
        size_t lens[3] = {3, 3, 3};
        seen b;
        redisReply *r;
        memset(&b, 0, sizeof b);
        b.counter = &n;
        assert_true(cdb_aredis_send(f.a, record, &b, 3, argv, lens));
        run_for(f.base, 2000, &b.calls, 1);
        assert_int_equal(b.calls, 1);
        r = side_command(f.port, NULL, "GET bin");
        assert_int_equal(r->len, 3);
        assert_memory_equal(r->str, "a\0b", 3);
        freeReplyObject(r);
    }
    cdb_aredis_stats st;
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.failures, 0);
    fx_close(&f);
}

static void test_pipeline_before_loop(void **state)
{
    enum { N = 1000 };
    fx f = {.port = free_port()};
    seen *s = calloc(N + 1, sizeof *s);
    int n = 0;
    char num[16];
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 1000, 0);
    assert_true(wait_ready(&f, 2000));
    for (int i = 0; i < N; i++) {
        snprintf(num, sizeof num, "%d", i);
        assert_true(send_cmd(&f, &s[i], &n, 3, (const char *[]){"RPUSH", "list", num}));
    }
    assert_true(send_cmd(&f, &s[N], &n, 2, (const char *[]){"LLEN", "list"}));
    assert_int_equal(n, 0);
    run_for(f.base, 5000, &n, N + 1);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].order, i);
        assert_int_equal(s[i].integer, i + 1);   /* RPUSH answers the new length: in order */
    }
    assert_int_equal(s[N].integer, N);
    free(s);
    fx_close(&f);
}

static void test_auth_and_select(void **state)
{
    static const char *creds[] = {":s3cret@", "default:s3cret@"};
    static const char *dbpaths[] = {"/2", "/5"};
    static const int dbs[] = {2, 5};
    (void)state;

    for (int u = 0; u < 2; u++) {
        fx f = {.port = free_port(), .password = "s3cret"};
        seen s;
        int n = 0;
        redisReply *r;

        f.pid = start_redis(f.port, f.password);
        fx_open(&f, creds[u], dbpaths[u], 1000, 0);
        {
            cdb_redis_endpoint ep;
            assert_int_equal(cdb_redis_endpoint_get(f.sync, &ep), 0);
            assert_string_equal(ep.host, "127.0.0.1");
            assert_int_equal(ep.port, f.port);
            assert_string_equal(ep.password, "s3cret");
            if (u == 0)
                assert_null(ep.user);
            else
                assert_string_equal(ep.user, "default");
            assert_int_equal(ep.db, dbs[u]);
            assert_false(ep.sentinel);
            cdb_redis_endpoint_destroy(&ep);
            assert_null(ep.password);
        }
        assert_true(wait_ready(&f, 2000));
        assert_true(send_cmd(&f, &s, &n, 3, (const char *[]){"SET", "where", "here"}));
        run_for(f.base, 2000, &n, 1);
        assert_int_equal(s.calls, 1);
        assert_int_equal(s.type, REDIS_REPLY_STATUS);
        /* the key landed in the URL's database, not in 0 */
        r = side_command(f.port, f.password, "SELECT %d", dbs[u]);
        freeReplyObject(r);
        {
            struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
            redisContext *c = redisConnectWithTimeout("127.0.0.1", f.port, tv);
            freeReplyObject(redisCommand(c, "AUTH s3cret"));
            freeReplyObject(redisCommand(c, "SELECT %d", dbs[u]));
            r = redisCommand(c, "GET where");
            assert_int_equal(r->type, REDIS_REPLY_STRING);
            assert_string_equal(r->str, "here");
            freeReplyObject(r);
            freeReplyObject(redisCommand(c, "SELECT 0"));
            r = redisCommand(c, "EXISTS where");
            assert_int_equal(r->integer, 0);
            freeReplyObject(r);
            redisFree(c);
        }
        fx_close(&f);
    }
}

/* Never ready, no crash, and the backoff keeps attempts few: 100, 200, 400, 800 ms ... */
static void assert_never_ready(fx *f, int ms)
{
    cdb_aredis_stats st;
    seen s;
    int n = 0;

    assert_false(wait_ready(f, ms));
    assert_false(send_cmd(f, &s, &n, 2, (const char *[]){"GET", "k"}));
    run_for(f->base, 50, NULL, 0);
    assert_int_equal(n, 0);
    cdb_aredis_stats_get(f->a, &st);
    assert_int_equal(st.connects, 0);
    assert_true(st.failures >= 2);          /* it did retry ... */
    assert_true(st.failures <= 6);          /* ... but not in a busy loop (1.5 s: at most 5) */
    assert_int_equal(st.failed_commands, 0);
}

static void test_wrong_password(void **state)
{
    fx f = {.port = free_port(), .password = "s3cret"};
    char logname[] = "/tmp/aredis-log-XXXXXX", logbuf[8192];
    int logfd = mkstemp(logname), saved = dup(2);
    ssize_t got;
    (void)state;

    assert_true(logfd >= 0 && saved >= 0);
    f.pid = start_redis(f.port, f.password);
    fx_open(&f, ":wrongpw@", "", 1000, 0);
    dup2(logfd, 2);                         /* what the log says about it */
    assert_never_ready(&f, 1500);
    dup2(saved, 2);
    close(saved);
    got = pread(logfd, logbuf, sizeof logbuf - 1, 0);
    close(logfd);
    unlink(logname);
    assert_true(got > 0);
    logbuf[got] = '\0';
    assert_non_null(strstr(logbuf, "AUTH refused"));
    assert_non_null(strstr(logbuf, "redis_async_unavailable"));
    assert_null(strstr(logbuf, "wrongpw"));   /* neither password, nor Redis's answer to it */
    assert_null(strstr(logbuf, "s3cret"));
    assert_null(strstr(logbuf, "WRONGPASS"));
    /* logged once for the outage, not per attempt (the retries are debug lines) */
    {
        int warns = 0;
        for (const char *p = logbuf; (p = strstr(p, "\"level\":\"warn\"")); p++)
            warns++;
        assert_int_equal(warns, 1);
    }
    fx_close(&f);

    /* no password at all against a server that wants one: PING answers NOAUTH */
    fx g = {.port = free_port(), .password = "s3cret"};
    g.pid = start_redis(g.port, g.password);
    fx_open(&g, "", "", 1000, 0);
    assert_never_ready(&g, 1500);
    fx_close(&g);
}

static void test_bad_db(void **state)
{
    fx f = {.port = free_port()};
    (void)state;
    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "/999", 1000, 0);   /* redis-server has 16 */
    assert_never_ready(&f, 1500);
    fx_close(&f);
}

static void test_refused_and_silent_server(void **state)
{
    (void)state;
    /* nothing listens */
    fx f = {.port = free_port()};
    fx_open(&f, "", "", 1000, 0);
    assert_never_ready(&f, 1500);
    fx_close(&f);

    /* a listener that never answers: the connect completes, the handshake does not */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    fx g = {.port = ntohs(sa.sin_port)};
    fx_open(&g, "", "", 1000, 200);
    int64_t t0 = cdb_mono_ms();
    assert_false(cdb_aredis_ready(g.a));
    while (cdb_mono_ms() - t0 < 1000) {
        cdb_aredis_stats st;
        run_for(g.base, 10, NULL, 0);
        cdb_aredis_stats_get(g.a, &st);
        if (st.timeouts > 0)
            break;
    }
    int64_t took = cdb_mono_ms() - t0;
    cdb_aredis_stats st;
    cdb_aredis_stats_get(g.a, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.failures, 1);
    assert_true(took >= 190 && took < 600);   /* the pool's connect timeout, 200 ms */
    assert_false(cdb_aredis_ready(g.a));      /* backing off */
    fx_close(&g);
    close(lfd);
}

static void test_command_timeout(void **state)
{
    fx f = {.port = free_port()};
    seen s[3], after;
    int n = 0;
    cdb_aredis_stats st;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 200, 0);
    assert_true(wait_ready(&f, 2000));
    freeReplyObject(side_command(f.port, NULL, "CLIENT PAUSE 1000 ALL"));
    int64_t t0 = cdb_mono_ms();
    for (int i = 0; i < 3; i++)
        assert_true(send_cmd(&f, &s[i], &n, 2, (const char *[]){"GET", "k"}));
    run_for(f.base, 2000, &n, 3);
    int64_t took = cdb_mono_ms() - t0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_true(s[i].null);
        assert_int_equal(s[i].order, i);
    }
    assert_true(took >= 190 && took < 700);
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.failed_commands, 3);
    assert_false(cdb_aredis_ready(f.a));      /* dropped, backing off */
    uint64_t recoveries = cdb_redis_recoveries(f.sync);
    /* once the pause is over it reconnects and answers */
    assert_true(wait_ready(&f, 3000));
    /* and the return counts as a recovery of the process's Redis (its copies wait for a resync) */
    assert_int_equal(cdb_redis_recoveries(f.sync), recoveries + 1);
    assert_true(send_cmd(&f, &after, &n, 1, (const char *[]){"PING"}));
    run_for(f.base, 2000, &after.calls, 1);
    assert_int_equal(after.calls, 1);
    assert_false(after.null);
    assert_string_equal(after.str, "PONG");
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.connects, 2);
    run_for(f.base, 300, NULL, 0);     /* the lazily re-armed timer finds nothing late */
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.timeouts, 1);
    fx_close(&f);
}

static void test_killed_mid_flight(void **state)
{
    enum { N = 50 };
    fx f = {.port = free_port()};
    seen s[N], after;
    int n = 0;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 5000, 0);
    assert_true(wait_ready(&f, 2000));
    /* commands written and waiting in the server (paused), then the server dies */
    freeReplyObject(side_command(f.port, NULL, "CLIENT PAUSE 5000 ALL"));
    for (int i = 0; i < N; i++)
        assert_true(send_cmd(&f, &s[i], &n, 2, (const char *[]){"INCR", "c"}));
    run_for(f.base, 100, NULL, 0);
    assert_int_equal(n, 0);
    stop_redis(f.pid);
    f.pid = -1;
    run_for(f.base, 2000, &n, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_true(s[i].null);
    }
    run_for(f.base, 100, NULL, 0);
    assert_int_equal(n, N);                   /* nothing called twice */
    assert_false(cdb_aredis_ready(f.a));
    /* restart on the same port: ready again after the backoff */
    f.pid = start_redis(f.port, NULL);
    assert_true(wait_ready(&f, 3000));
    assert_true(send_cmd(&f, &after, &n, 2, (const char *[]){"INCR", "c"}));
    run_for(f.base, 2000, &after.calls, 1);
    assert_false(after.null);
    assert_int_equal(after.integer, 1);

    /* an idle connection whose server restarts: noticed, then reconnected */
    stop_redis(f.pid);
    run_for(f.base, 100, NULL, 0);
    assert_false(cdb_aredis_ready(f.a));
    f.pid = start_redis(f.port, NULL);
    assert_true(wait_ready(&f, 3000));
    cdb_aredis_stats st;
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.connects, 3);
    fx_close(&f);
}

static void test_free_with_pending(void **state)
{
    enum { N = 20 };
    fx f = {.port = free_port()};
    seen s[N];
    int n = 0;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 5000, 0);
    assert_true(wait_ready(&f, 2000));
    freeReplyObject(side_command(f.port, NULL, "CLIENT PAUSE 2000 ALL"));
    for (int i = 0; i < N / 2; i++)
        assert_true(send_cmd(&f, &s[i], &n, 2, (const char *[]){"GET", "k"}));
    run_for(f.base, 50, NULL, 0);               /* the first half is written ... */
    for (int i = N / 2; i < N; i++)            /* ... the second still in the buffer */
        assert_true(send_cmd(&f, &s[i], &n, 2, (const char *[]){"GET", "k"}));
    assert_int_equal(n, 0);
    cdb_aredis_free(f.a);
    f.a = NULL;
    assert_int_equal(n, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_true(s[i].null);
        assert_int_equal(s[i].order, i);
    }
    run_for(f.base, 50, NULL, 0);               /* no event of the freed connection fires */
    assert_int_equal(n, N);
    fx_close(&f);

    /* freed while still connecting: no callback, nothing left behind */
    fx g = {.port = free_port()};
    g.pid = start_redis(g.port, NULL);
    fx_open(&g, "", "", 1000, 0);
    assert_false(cdb_aredis_ready(g.a));
    fx_close(&g);
}

/* A callback that sends again: allowed on a reply, refused while the connection fails. */
typedef struct chain {
    cdb_aredis *a;
    int calls, nulls, resent, refused;
} chain;

static void chained(redisReply *reply, void *arg)
{
    chain *c = arg;
    const char *argv[2] = {"INCR", "chain"};
    c->calls++;
    if (!reply) {
        c->nulls++;
        if (cdb_aredis_ready(c->a) || cdb_aredis_send(c->a, chained, c, 2, argv, NULL))
            c->resent++;        /* must not happen: the connection is closing */
        else
            c->refused++;
        return;
    }
    if (reply->integer < 5 && cdb_aredis_send(c->a, chained, c, 2, argv, NULL))
        c->resent++;
}

static void test_send_from_callback(void **state)
{
    fx f = {.port = free_port()};
    chain c = {0};
    const char *argv[2] = {"INCR", "chain"};
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 200, 0);
    c.a = f.a;
    assert_true(wait_ready(&f, 2000));
    assert_true(cdb_aredis_send(f.a, chained, &c, 2, argv, NULL));
    run_for(f.base, 2000, &c.calls, 5);
    assert_int_equal(c.calls, 5);
    assert_int_equal(c.resent, 4);
    assert_int_equal(c.nulls, 0);

    memset(&c, 0, sizeof c);
    c.a = f.a;
    freeReplyObject(side_command(f.port, NULL, "CLIENT PAUSE 1000 ALL"));
    assert_true(cdb_aredis_send(f.a, chained, &c, 2, argv, NULL));
    assert_true(cdb_aredis_send(f.a, chained, &c, 2, argv, NULL));
    run_for(f.base, 1000, &c.calls, 2);
    assert_int_equal(c.calls, 2);
    assert_int_equal(c.nulls, 2);
    assert_int_equal(c.refused, 2);
    assert_int_equal(c.resent, 0);
    fx_close(&f);
}

static void test_refused_commands(void **state)
{
    static const char *bad[] = {"SUBSCRIBE", "psubscribe", "SSUBSCRIBE", "UNSUBSCRIBE", "MONITOR",
                                "RESET", "QUIT", "HELLO", "AUTH", "select", "CLIENT"};
    fx f = {.port = free_port()};
    seen s;
    int n = 0;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 1000, 0);
    assert_true(wait_ready(&f, 2000));
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(send_cmd(&f, &s, &n, 2, (const char *[]){bad[i], "x"}));
    assert_false(cdb_aredis_send(f.a, record, &s, 0, (const char *[]){"GET"}, NULL));
    assert_false(cdb_aredis_send(f.a, NULL, &s, 1, (const char *[]){"PING"}, NULL));
    /* a name that only starts like one is an ordinary command */
    assert_true(send_cmd(&f, &s, &n, 1, (const char *[]){"CLIENTX"}));
    run_for(f.base, 2000, &n, 1);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.type, REDIS_REPLY_ERROR);
    assert_true(cdb_aredis_ready(f.a));
    fx_close(&f);

    assert_null(cdb_aredis_new(NULL, NULL, 100));
}

/*
 * hiredis 0.14 cannot report a failed allocation of a callback entry: the
 * command goes out without one. Simulated by a record hiredis never heard
 * of at the head of the list: the next reply is not for the oldest record,
 * so the connection is closed and both records get NULL, once each.
 */
static void test_reply_out_of_order(void **state)
{
    fx f = {.port = free_port()};
    seen lost, s, after;
    int n = 0;
    cdb_aredis_stats st;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    fx_open(&f, "", "", 1000, 0);
    assert_true(wait_ready(&f, 2000));
    memset(&lost, 0, sizeof lost);
    lost.counter = &n;
    pending *p = calloc(1, sizeof *p);
    p->cb = record;
    p->arg = &lost;
    p->deadline_ms = cdb_mono_ms() + 1000;
    f.a->head = f.a->tail = p;
    assert_true(send_cmd(&f, &s, &n, 1, (const char *[]){"PING"}));
    run_for(f.base, 1000, &n, 2);
    assert_int_equal(s.calls, 1);
    assert_true(s.null);
    assert_int_equal(lost.calls, 1);
    assert_true(lost.null);
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.failures, 1);
    assert_int_equal(st.failed_commands, 2);
    assert_true(wait_ready(&f, 2000));
    assert_true(send_cmd(&f, &after, &n, 1, (const char *[]){"PING"}));
    run_for(f.base, 1000, &after.calls, 1);
    assert_string_equal(after.str, "PONG");
    fx_close(&f);
}

/* A host name in the URL: no lookup on the loop; the address the pool's connect reached is used. */
static void test_host_name(void **state)
{
    fx f = {.port = free_port()};
    char url[80];
    cdb_error err;
    cdb_redis_endpoint ep;
    cdb_aredis_stats st;
    seen s;
    int n = 0;
    (void)state;

    f.pid = start_redis(f.port, NULL);
    snprintf(url, sizeof url, "redis://localhost:%d", f.port);
    cdb_redis_options opt = {.url = url, .pool_size = 1};
    cdb_error_init(&err);
    f.base = event_base_new();
    f.sync = cdb_redis_new(&opt, &err);
    assert_non_null(f.sync);
    f.a = cdb_aredis_new(f.base, f.sync, 1000);
    assert_int_equal(cdb_redis_endpoint_get(f.sync, &ep), -1);   /* not resolved yet */
    assert_false(wait_ready(&f, 300));
    cdb_aredis_stats_get(f.a, &st);
    assert_int_equal(st.failures, 0);
    freeReplyObject(cdb_redis_command(f.sync, &err, "PING"));
    assert_int_equal(cdb_redis_endpoint_get(f.sync, &ep), 0);
    assert_string_equal(ep.host, "127.0.0.1");
    assert_int_equal(ep.port, f.port);
    assert_null(ep.password);
    cdb_redis_endpoint_destroy(&ep);
    assert_true(wait_ready(&f, 2000));
    assert_true(send_cmd(&f, &s, &n, 1, (const char *[]){"PING"}));
    run_for(f.base, 2000, &n, 1);
    assert_string_equal(s.str, "PONG");
    cdb_error_destroy(&err);
    fx_close(&f);
}

/* A server that answers every read with canned bytes (and keeps the connection open). */
static pid_t fake_server(int *port, const char *answer)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    pid_t pid;

    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        for (;;) {
            int c = accept(lfd, NULL, NULL);
            char buf[4096];
            if (c < 0)
                _exit(0);
            if (fork() == 0) {
                while (read(c, buf, sizeof buf) > 0)
                    if (write(c, answer, strlen(answer)) < 0)
                        break;
                _exit(0);
            }
            close(c);
        }
    }
    close(lfd);
    track(pid, true);
    return pid;
}

/*
 * Servers that break the protocol: a reply no command asked for (hiredis
 * 0.14 would abort the process on it), a reply that is not RESP, an error
 * sent unasked. Each is a failed connection, backing off, never a crash.
 */
static void test_hostile_server(void **state)
{
    static const char *answers[] = {"+PONG\r\n+EXTRA\r\n:5\r\n", "HTTP/1.1 400 Bad Request\r\n\r\n",
                                    "-ERR max number of clients reached\r\n", "*2\r\n$1\r\na\r\n"};
    (void)state;

    for (size_t i = 0; i < sizeof answers / sizeof *answers; i++) {
        fx f = {0};
        cdb_aredis_stats st;
        pid_t server = fake_server(&f.port, answers[i]);
        fx_open(&f, "", "", 300, 300);
        assert_false(wait_ready(&f, 700));
        cdb_aredis_stats_get(f.a, &st);
        /* the first one completes its handshake and fails at the extra reply: the backoff
         * still grows (it is reset by a reply to a caller's command, not by a handshake) */
        assert_true(st.connects <= (i == 0 ? 4u : 0u));
        assert_true(st.failures >= 1 && st.failures <= 4);
        fx_close(&f);
        stop_redis(server);
    }
}

/* ---- Redis Sentinel ------------------------------------------------------ */

/* Debian's redis-sentinel watching 127.0.0.1:master_port as "mymaster" (quorum 1). */
static pid_t start_sentinel(int port, int master_port, char *dir, size_t dirlen)
{
    char conf[300];
    FILE *f;
    pid_t pid;

    snprintf(dir, dirlen, "%s/sentinel-XXXXXX", scratch);   /* removed with scratch, even after a failure */
    assert_non_null(mkdtemp(dir));
    snprintf(conf, sizeof conf, "%s/sentinel.conf", dir);
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n"
               "sentinel down-after-milliseconds mymaster 5000\nsentinel failover-timeout mymaster 3000\n",
            port, dir, master_port);
    fclose(f);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("redis-sentinel", "redis-sentinel", conf, (char *)NULL);
        _exit(127);
    }
    track(pid, true);
    for (int i = 0; i < 500; i++) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
        bool up = c && !c->err;
        redisFree(c);
        if (up)
            return pid;
        usleep(10000);
    }
    fail_msg("redis-sentinel did not start");
    return -1;
}

/* The sentinel lists the replica, and the replica is in sync: a failover can happen. */
static bool replica_known(int sentinel_port, int replica_port)
{
    redisReply *r = side_command(replica_port, NULL, "INFO replication");
    bool up = strstr(r->str, "master_link_status:up") != NULL;
    char want[32];
    freeReplyObject(r);
    if (!up)
        return false;
    r = side_command(sentinel_port, NULL, "SENTINEL replicas mymaster");
    snprintf(want, sizeof want, "%d", replica_port);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && !up; i++) {
        redisReply *fields = r->element[i];
        bool port_ok = false, connected = true;
        for (size_t j = 0; j + 1 < fields->elements; j += 2) {
            if (strcmp(fields->element[j]->str, "port") == 0)
                port_ok = strcmp(fields->element[j + 1]->str, want) == 0;
            if (strcmp(fields->element[j]->str, "flags") == 0)
                connected = strstr(fields->element[j + 1]->str, "disconnected") == NULL;
        }
        up = port_ok && connected;
    }
    freeReplyObject(r);
    return up;
}

static int sentinel_master_port(int sentinel_port)
{
    redisReply *r = side_command(sentinel_port, NULL, "SENTINEL get-master-addr-by-name mymaster");
    int port = r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? atoi(r->element[1]->str) : 0;
    freeReplyObject(r);
    return port;
}

/*
 * With sentinels: no address until the pool has asked them (quietly not
 * ready); the handshake's ROLE refuses a server demoted since the pool
 * verified it; and after a failover the pool follows, the connection
 * notices the move, closes gracefully and reconnects to the new master.
 */
static void test_sentinel(void **state)
{
    int mport = free_port(), rport = free_port(), sport = free_port();
    pid_t master = start_redis(mport, NULL), replica = start_redis(rport, NULL), sentinel;
    char dir[96], list[64], cmd[300];
    cdb_error err;
    cdb_redis *sync;
    cdb_aredis *a, *b;
    cdb_aredis_stats st;
    struct event_base *base = event_base_new();
    seen s;
    int n = 0;
    redisReply *r;
    (void)state;

    freeReplyObject(side_command(rport, NULL, "REPLICAOF 127.0.0.1 %d", mport));
    sentinel = start_sentinel(sport, mport, dir, sizeof dir);
    snprintf(list, sizeof list, "127.0.0.1:%d", sport);
    cdb_redis_options opt = {.pool_size = 2, .sentinels = list, .master_name = "mymaster"};
    cdb_error_init(&err);
    sync = cdb_redis_new(&opt, &err);
    assert_non_null(sync);
    a = cdb_aredis_new(base, sync, 1000);
    assert_non_null(a);
    fx f = {.base = base, .sync = sync, .a = a};

    /* the pool has not asked the sentinels yet: no address, no failure */
    assert_false(wait_ready(&f, 300));
    cdb_aredis_stats_get(a, &st);
    assert_int_equal(st.failures, 0);
    r = cdb_redis_command(sync, &err, "PING");   /* the pool learns the master */
    assert_non_null(r);
    freeReplyObject(r);
    assert_true(wait_ready(&f, 2000));
    assert_true(send_cmd(&f, &s, &n, 3, (const char *[]){"SET", "before", "1"}));
    run_for(base, 2000, &s.calls, 1);
    assert_int_equal(s.type, REDIS_REPLY_STATUS);

    /* a server demoted behind the pool's back: ROLE refuses it */
    freeReplyObject(side_command(mport, NULL, "REPLICAOF 127.0.0.1 %d", free_port()));
    b = cdb_aredis_new(base, sync, 1000);
    f.a = b;
    assert_false(wait_ready(&f, 500));
    cdb_aredis_stats_get(b, &st);
    assert_true(st.failures >= 1);
    assert_int_equal(st.connects, 0);
    freeReplyObject(side_command(mport, NULL, "REPLICAOF NO ONE"));
    freeReplyObject(side_command(rport, NULL, "REPLICAOF 127.0.0.1 %d", mport));
    assert_true(wait_ready(&f, 3000));
    cdb_aredis_free(b);
    f.a = a;

    /* a failover: the pool follows it, and so does the connection */
    for (int i = 0; i < 200 && !replica_known(sport, rport); i++)
        usleep(100000);
    assert_true(replica_known(sport, rport));
    /* the sentinel may not find the replica good enough yet (NOGOODSLAVE right after
     * it resynced): ask again until it starts the failover */
    for (int i = 0; i < 100; i++) {
        r = side_command(sport, NULL, "SENTINEL FAILOVER mymaster");
        bool started = r->type == REDIS_REPLY_STATUS;
        if (!started && i % 10 == 9)
            fprintf(stderr, "SENTINEL FAILOVER: %s\n", r->str ? r->str : "?");
        freeReplyObject(r);
        if (started)
            break;
        usleep(200000);
    }
    for (int i = 0; i < 200 && sentinel_master_port(sport) != rport; i++)
        usleep(100000);
    assert_int_equal(sentinel_master_port(sport), rport);
    for (int i = 0; i < 200 && cdb_redis_master_changes(sync) == 0; i++) {
        /* READONLY (once the old master is demoted) or a refused ROLE makes the pool ask again */
        freeReplyObject(cdb_redis_command(sync, &err, "SET probe 1"));
        usleep(100000);
    }
    assert_int_equal(cdb_redis_master_changes(sync), 1);
    assert_false(cdb_aredis_ready(a));          /* noticed: closing gracefully */
    assert_true(wait_ready(&f, 3000));
    assert_true(send_cmd(&f, &s, &n, 3, (const char *[]){"SET", "after", "2"}));
    run_for(base, 2000, &s.calls, 1);
    assert_int_equal(s.type, REDIS_REPLY_STATUS);
    r = side_command(rport, NULL, "GET after");  /* on the new master */
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "2");
    freeReplyObject(r);
    cdb_aredis_stats_get(a, &st);
    assert_int_equal(st.connects, 2);
    /* a move is not a failure (the sentinel killed the old connection too, but the
     * loop did not run before cdb_aredis_ready saw the move and closed it itself) */
    assert_int_equal(st.failures, 0);

    cdb_aredis_free(a);
    cdb_redis_free(sync);
    event_base_free(base);
    cdb_error_destroy(&err);
    stop_redis(sentinel);
    stop_redis(replica);
    stop_redis(master);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_pipeline_before_loop),
        cmocka_unit_test(test_auth_and_select),
        cmocka_unit_test(test_wrong_password),
        cmocka_unit_test(test_bad_db),
        cmocka_unit_test(test_refused_and_silent_server),
        cmocka_unit_test(test_command_timeout),
        cmocka_unit_test(test_killed_mid_flight),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_send_from_callback),
        cmocka_unit_test(test_refused_commands),
        cmocka_unit_test(test_reply_out_of_order),
        cmocka_unit_test(test_host_name),
        cmocka_unit_test(test_hostile_server),
        cmocka_unit_test(test_sentinel),
    };
    signal(SIGPIPE, SIG_IGN);
    if (!redis_scratch_make("aredis-unit"))
        return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    redis_scratch_remove();
    return rc;
}
