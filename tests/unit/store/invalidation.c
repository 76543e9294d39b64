/*
 * store/invalidation.c - cross-instance invalidation through Redis pub/sub,
 * against a real redis-server this test starts on a free loopback port (with
 * a password, so the subscriber's AUTH is exercised). Two cdb_inval with
 * their own pools stand for two instances. Covered: a publish on A makes
 * B's ticket of that name invalid within a bound while other names stay
 * valid, A's own at once; the whole-kind message for over-long names;
 * malformed messages ignored; the delay histogram (and the p50/p99 over
 * 1,000 publishes, printed); CLIENT KILL TYPE pubsub, Redis killed and
 * restarted, and a paused Redis (no answer to PING) each make every ticket
 * invalid and refuse new ones until resubscribed; free while connected,
 * while Redis is down and while a silent server holds the connect.
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

#include "store/invalidation.c"

#include <event2/event.h>

#define PASSWORD "s3cret-inval"

#include "../redis_server.h"

/* ---- fixture: one Redis, two instances ------------------------------------ */

typedef struct inst {
    cdb_redis *sync;
    cdb_inval *inv;
} inst;

typedef struct fx {
    int port;
    pid_t pid;
    inst a, b;
} fx;

static void inst_open(inst *in, int port, const char *ns, bool start)
{
    char url[200];
    cdb_error err;
    cdb_redis_options opt = {.url = url, .pool_size = 2, .connect_timeout_ms = 500, .command_timeout_ms = 500};

    /* a db other than 0: acknowledgements are lists, read in the publisher's db */
    snprintf(url, sizeof url, "redis://:%s@127.0.0.1:%d/3", PASSWORD, port);
    cdb_error_init(&err);
    in->sync = cdb_redis_new(&opt, &err);
    assert_non_null(in->sync);
    in->inv = cdb_inval_new(in->sync);
    assert_non_null(in->inv);
    if (start)
        assert_int_equal(cdb_inval_start(in->inv, ns, &err), 0);
    cdb_error_destroy(&err);
}

static void inst_close(inst *in)
{
    cdb_inval_free(in->inv);
    cdb_redis_free(in->sync);
}

/* Waits up to ms for cdb_inval_usable(inv) == want; true when it got there. */
static bool wait_usable(cdb_inval *inv, bool want, int ms)
{
    int64_t until = cdb_mono_ms() + ms;
    while (cdb_inval_usable(inv) != want) {
        if (cdb_mono_ms() > until)
            return false;
        usleep(1000);
    }
    return true;
}

static void fx_open(fx *f)
{
    f->port = free_port();
    f->pid = start_redis(f->port, PASSWORD);
    inst_open(&f->a, f->port, "unit", true);
    inst_open(&f->b, f->port, "unit", true);
    assert_true(wait_usable(f->a.inv, true, 3000));
    assert_true(wait_usable(f->b.inv, true, 3000));
}

static void fx_close(fx *f)
{
    inst_close(&f->a);
    inst_close(&f->b);
    if (f->pid > 0)
        stop_redis(f->pid);
}

/* Waits up to ms until t (of table, or session when session) is invalid on inv; the wait in µs, or -1. */
static int64_t wait_invalid(cdb_inval *inv, bool session, const char *name, const cdb_inval_ticket *t, int ms)
{
    int64_t start = cdb_mono_us(), until = start + (int64_t)ms * 1000;
    while (session ? cdb_inval_valid_session(inv, name, t) : cdb_inval_valid_table(inv, name, t)) {
        if (cdb_mono_us() > until)
            return -1;
        usleep(100);
    }
    return cdb_mono_us() - start;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_histogram_buckets(void **state)
{
    (void)state;
    /* exact below 16 µs, then every value lands in a bucket whose middle is within 1/16 */
    for (uint64_t v = 0; v < 16; v++)
        assert_int_equal(hist_value(hist_index(v)), (int64_t)v);
    int prev = -1;
    for (uint64_t v = 16; v < 50000000; v += v / 7 + 1) {
        int b = hist_index(v);
        assert_true(b >= prev);
        prev = b;
        int64_t mid = hist_value(b);
        assert_true(llabs(mid - (int64_t)v) <= (int64_t)v / 16 + 1);
    }
    assert_int_equal(hist_index(UINT64_MAX), HIST_N - 1);

    /* quantiles of a known set: 990 at ~100 µs, 10 at ~10 ms */
    cdb_inval *inv = cdb_inval_new(NULL);
    assert_non_null(inv);
    for (int i = 0; i < 990; i++)
        atomic_fetch_add(&inv->delay[hist_index(100)], 1);
    for (int i = 0; i < 10; i++)
        atomic_fetch_add(&inv->delay[hist_index(10000)], 1);
    int64_t p50, p99;
    uint64_t n;
    cdb_inval_delay_quantiles(inv, &p50, &p99, &n);
    assert_int_equal(n, 1000);
    assert_true(p50 >= 96 && p50 <= 104);
    assert_true(p99 >= 96 && p99 <= 104);   /* the 990th of 1000 is still 100 µs */
    atomic_fetch_add(&inv->delay[hist_index(10000)], 1);
    cdb_inval_delay_quantiles(inv, &p50, &p99, &n);
    assert_true(p99 >= 9500 && p99 <= 10500);
    cdb_inval_free(inv);
}

static void test_not_started_and_null(void **state)
{
    (void)state;
    cdb_inval_ticket t;
    cdb_error err;

    /* NULL: refused, no-ops */
    assert_false(cdb_inval_ticket_table(NULL, "x", &t));
    assert_false(cdb_inval_valid_session(NULL, "x", &t));
    cdb_inval_table(NULL, "x");
    cdb_inval_session(NULL, "x");
    cdb_inval_free(NULL);
    assert_int_equal(cdb_inval_epoch(NULL), 0);

    /* never started: no ticket, publishing applies locally without Redis */
    cdb_inval *inv = cdb_inval_new(NULL);
    assert_non_null(inv);
    assert_false(cdb_inval_ticket_table(inv, "orders", &t));
    uint64_t before = atomic_load(&inv->tables[stripe_of("orders", 6)]);
    cdb_inval_table(inv, "orders");
    assert_int_equal(atomic_load(&inv->tables[stripe_of("orders", 6)]), before + 1);
    cdb_error_init(&err);
    assert_int_equal(cdb_inval_start(inv, "", &err), -1);
    assert_int_equal(err.code, CDB_ERR_INTERNAL_ERROR);
    cdb_error_destroy(&err);
    cdb_inval_free(inv);
}

static void test_cross_instance(void **state)
{
    (void)state;
    fx f;
    cdb_inval_ticket b_orders, b_users, b_sid, b_sid2, a_orders, a_sid;
    const char *sid = "5f0c9a7e-1b2d-4c3e-9f80-aa11bb22cc33", *sid2 = "0d7f3c55-8e1a-4b7d-a0c2-1234567890ab";

    assert_int_not_equal(stripe_of("orders", 6), stripe_of("users", 5));
    assert_int_not_equal(stripe_of(sid, strlen(sid)), stripe_of(sid2, strlen(sid2)));
    fx_open(&f);

    assert_true(cdb_inval_ticket_table(f.b.inv, "orders", &b_orders));
    assert_true(cdb_inval_ticket_table(f.b.inv, "users", &b_users));
    assert_true(cdb_inval_ticket_session(f.b.inv, sid, &b_sid));
    assert_true(cdb_inval_ticket_session(f.b.inv, sid2, &b_sid2));
    assert_true(cdb_inval_ticket_table(f.a.inv, "orders", &a_orders));
    assert_true(cdb_inval_ticket_session(f.a.inv, sid, &a_sid));

    int64_t t0 = cdb_mono_ms();
    cdb_inval_table(f.a.inv, "orders");
    /* acknowledged by both subscribers, not given up on after CDB_INVAL_ACK_WAIT_MS */
    assert_true(cdb_mono_ms() - t0 < CDB_INVAL_ACK_WAIT_MS);
    /* the publisher's own ticket is dead when the call returns, and so is every
       other instance's: the call waited for their acknowledgements */
    assert_false(cdb_inval_valid_table(f.a.inv, "orders", &a_orders));
    assert_false(cdb_inval_valid_table(f.b.inv, "orders", &b_orders));
    assert_true(cdb_inval_valid_table(f.b.inv, "users", &b_users));
    assert_true(cdb_inval_valid_session(f.b.inv, sid, &b_sid));
    /* a ticket is bound to its kind: a session named "orders" was not touched */
    cdb_inval_ticket s_orders;
    assert_true(cdb_inval_ticket_session(f.b.inv, "orders", &s_orders));
    assert_true(cdb_inval_ticket_table(f.b.inv, "orders", &b_orders));
    cdb_inval_table(f.a.inv, "orders");
    assert_true(wait_invalid(f.b.inv, false, "orders", &b_orders, 2000) >= 0);
    assert_true(cdb_inval_valid_session(f.b.inv, "orders", &s_orders));

    cdb_inval_session(f.a.inv, sid);
    assert_false(cdb_inval_valid_session(f.a.inv, sid, &a_sid));
    assert_true(wait_invalid(f.b.inv, true, sid, &b_sid, 2000) >= 0);
    assert_true(cdb_inval_valid_session(f.b.inv, sid2, &b_sid2));
    assert_true(cdb_inval_valid_table(f.b.inv, "users", &b_users));

    /* B publishes, A sees it: both directions */
    cdb_inval_ticket a_users;
    assert_true(cdb_inval_ticket_table(f.a.inv, "users", &a_users));
    cdb_inval_table(f.b.inv, "users");
    assert_true(wait_invalid(f.a.inv, false, "users", &a_users, 2000) >= 0);

    /* a message from elsewhere (another instance's build, redis-cli): B applies what Redis brings */
    cdb_inval_ticket b_acc;
    assert_true(cdb_inval_ticket_table(f.b.inv, "accounts", &b_acc));
    assert_true(cdb_inval_ticket_table(f.b.inv, "users", &b_users));
    freeReplyObject(side_command(f.port, PASSWORD, "PUBLISH coredb:unit:inval %s", "t 1 accounts"));
    assert_true(wait_invalid(f.b.inv, false, "accounts", &b_acc, 2000) >= 0);
    assert_true(cdb_inval_valid_table(f.b.inv, "users", &b_users));

    /* garbage on the channel: ignored, the subscription lives on, other tickets intact */
    uint64_t epoch = cdb_inval_epoch(f.b.inv);
    assert_true(cdb_inval_ticket_table(f.b.inv, "users", &b_users));
    const char *junk[] = {"", "x", "t", "t ", "t 12", "t abc users", "q 1 users", "t 1 ", "T 1 users", "t 1users"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        freeReplyObject(side_command(f.port, PASSWORD, "PUBLISH coredb:unit:inval %s", junk[i]));
    char big[CDB_INVAL_NAME_MAX + 200];
    memset(big, 'u', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    memcpy(big, "t 1 ", 4);
    freeReplyObject(side_command(f.port, PASSWORD, "PUBLISH coredb:unit:inval %s", big));
    /* another namespace's channel is not ours */
    freeReplyObject(side_command(f.port, PASSWORD, "PUBLISH coredb:other:inval %s", "t 1 users"));
    usleep(200000);
    assert_true(cdb_inval_usable(f.b.inv));
    assert_int_equal(cdb_inval_epoch(f.b.inv), epoch);
    assert_true(cdb_inval_valid_table(f.b.inv, "users", &b_users));

    /* an over-long name: every table stripe, on every instance */
    char longname[CDB_INVAL_NAME_MAX + 10];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_true(cdb_inval_ticket_table(f.b.inv, "users", &b_users));
    assert_true(cdb_inval_ticket_session(f.b.inv, sid2, &b_sid2));
    cdb_inval_table(f.a.inv, longname);
    assert_true(wait_invalid(f.b.inv, false, "users", &b_users, 2000) >= 0);
    assert_true(cdb_inval_valid_session(f.b.inv, sid2, &b_sid2));

    fx_close(&f);
}

static void test_delay_1000(void **state)
{
    (void)state;
    fx f;
    int64_t p50, p99, ap50, ap99;
    uint64_t n0, n, an;
    char name[32];

    fx_open(&f);
    cdb_inval_delay_quantiles(f.b.inv, NULL, NULL, &n0);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "table_%d", i);
        cdb_inval_table(f.a.inv, name);
        /* one at a time, as writes come: no queue builds up to inflate the figure */
        usleep(200);
    }
    int64_t until = cdb_mono_ms() + 5000;
    do {
        cdb_inval_delay_quantiles(f.b.inv, &p50, &p99, &n);
        if (n - n0 >= 1000)
            break;
        usleep(1000);
    } while (cdb_mono_ms() < until);
    assert_int_equal(n - n0, 1000);
    cdb_inval_delay_quantiles(f.a.inv, &ap50, &ap99, &an);
    print_message("invalidation delay A -> B over %llu publishes (loopback): p50 %lld us, p99 %lld us; "
                  "A's own echo: p50 %lld us, p99 %lld us\n",
                  (unsigned long long)(n - n0), (long long)p50, (long long)p99, (long long)ap50, (long long)ap99);
    assert_true(p50 > 0 && p50 <= p99);
    assert_true(p99 < 1000000);

    /* the counters and the histogram reach the exposition */
    char *text = cdb__metrics_render();
    assert_non_null(text);
    assert_non_null(strstr(text, "coredb_cache_invalidation_delay_seconds_bucket{le=\"+Inf\"}"));
    char *rx = strstr(text, "\ncoredb_cache_invalidation_messages_received_total ");
    assert_non_null(rx);
    assert_true(strtod(rx + strlen("\ncoredb_cache_invalidation_messages_received_total "), NULL) >= 2000);
    free(text);
    fx_close(&f);
}

/* Every ticket of both instances dies with the subscription, none is given
 * until it is back, then tickets work again. kill: what breaks it. */
static void check_loss(fx *f, void (*kill_fn)(fx *), int lost_within_ms, int back_within_ms)
{
    cdb_inval_ticket ta, tb, ts;
    uint64_t ea = cdb_inval_epoch(f->a.inv), eb = cdb_inval_epoch(f->b.inv);

    assert_true(cdb_inval_ticket_table(f->a.inv, "orders", &ta));
    assert_true(cdb_inval_ticket_table(f->b.inv, "orders", &tb));
    assert_true(cdb_inval_ticket_session(f->b.inv, "sid", &ts));
    kill_fn(f);
    assert_true(wait_usable(f->a.inv, false, lost_within_ms));
    assert_true(wait_usable(f->b.inv, false, lost_within_ms));
    /* no invalidation of these names was published: only the loss kills them */
    assert_false(cdb_inval_valid_table(f->a.inv, "orders", &ta));
    assert_false(cdb_inval_valid_table(f->b.inv, "orders", &tb));
    assert_false(cdb_inval_valid_session(f->b.inv, "sid", &ts));
    cdb_inval_ticket t;
    assert_false(cdb_inval_ticket_table(f->b.inv, "orders", &t));
    assert_false(cdb_inval_ticket_session(f->b.inv, "sid", &t));

    assert_true(wait_usable(f->a.inv, true, back_within_ms));
    assert_true(wait_usable(f->b.inv, true, back_within_ms));
    /* lost and confirmed again: at least two bumps; the old tickets stay dead */
    assert_true(cdb_inval_epoch(f->a.inv) >= ea + 2);
    assert_true(cdb_inval_epoch(f->b.inv) >= eb + 2);
    assert_false(cdb_inval_valid_table(f->b.inv, "orders", &tb));
    assert_true(cdb_inval_ticket_table(f->b.inv, "orders", &tb));
    assert_true(cdb_inval_valid_table(f->b.inv, "orders", &tb));
    /* and the new subscription carries invalidations */
    cdb_inval_table(f->a.inv, "orders");
    assert_true(wait_invalid(f->b.inv, false, "orders", &tb, 2000) >= 0);
}

static void kill_pubsub(fx *f)
{
    redisReply *r = side_command(f->port, PASSWORD, "CLIENT KILL TYPE pubsub");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 2);   /* A's and B's subscriptions */
    freeReplyObject(r);
}

static void restart_redis(fx *f)
{
    stop_redis(f->pid);
    f->pid = -1;
    usleep(300000);   /* down long enough for a reconnect attempt to fail */
    f->pid = start_redis(f->port, PASSWORD);
}

static void pause_redis(fx *f)
{
    /* no error, no close: only the unanswered PING can tell */
    freeReplyObject(side_command(f->port, PASSWORD, "CLIENT PAUSE 6000 ALL"));
}

static void test_client_kill(void **state)
{
    (void)state;
    fx f;
    fx_open(&f);
    check_loss(&f, kill_pubsub, 1000, 3000);
    check_loss(&f, kill_pubsub, 1000, 3000);   /* and again: backoff was reset */

    char *text = cdb__metrics_render();
    assert_non_null(text);
    char *m = strstr(text, "\ncoredb_cache_invalidation_subscription_losses_total ");
    assert_non_null(m);
    assert_true(strtod(m + strlen("\ncoredb_cache_invalidation_subscription_losses_total "), NULL) >= 4);
    free(text);
    fx_close(&f);
}

static void test_redis_restart(void **state)
{
    (void)state;
    fx f;
    fx_open(&f);
    /* the loss is seen before the restart returns; back within the 2 s backoff cap + a connect */
    check_loss(&f, restart_redis, 1000, 5000);
    fx_close(&f);
}

static void test_silent_redis(void **state)
{
    (void)state;
    fx f;
    fx_open(&f);
    /* PING every CDB_INVAL_PING_MS, dead after CDB_INVAL_DEAD_MS without an answer */
    int64_t t0 = cdb_mono_ms();
    cdb_inval_ticket t;
    assert_true(cdb_inval_ticket_table(f.b.inv, "orders", &t));
    pause_redis(&f);
    assert_true(wait_usable(f.b.inv, false, CDB_INVAL_PING_MS + CDB_INVAL_DEAD_MS + 1500));
    print_message("a silent Redis noticed after %lld ms\n", (long long)(cdb_mono_ms() - t0));
    assert_false(cdb_inval_valid_table(f.b.inv, "orders", &t));
    /* the pause ends (6 s): subscribed again */
    assert_true(wait_usable(f.b.inv, true, 10000));
    assert_true(wait_usable(f.a.inv, true, 10000));
    fx_close(&f);
}

static void test_free_bounded(void **state)
{
    (void)state;
    fx f;
    int64_t t0;
    inst down, silent;

    /* connected */
    fx_open(&f);
    t0 = cdb_mono_ms();
    inst_close(&f.a);
    assert_true(cdb_mono_ms() - t0 < 300);
    inst_open(&f.a, f.port, "unit", true);
    assert_true(wait_usable(f.a.inv, true, 3000));

    /* Redis down (refused), the thread in its backoff */
    stop_redis(f.pid);
    f.pid = -1;
    assert_true(wait_usable(f.a.inv, false, 1000));
    usleep(500000);
    t0 = cdb_mono_ms();
    fx_close(&f);
    assert_true(cdb_mono_ms() - t0 < 300);

    /* never up: the port refuses */
    int port = free_port();
    inst_open(&down, port, "unit", true);
    usleep(300000);
    assert_false(cdb_inval_usable(down.inv));
    t0 = cdb_mono_ms();
    inst_close(&down);
    assert_true(cdb_mono_ms() - t0 < 600);   /* at most one pool connect under way */

    /* a server that accepts the connection and never answers */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    inst_open(&silent, ntohs(sa.sin_port), "unit", true);
    usleep(300000);
    assert_false(cdb_inval_usable(silent.inv));
    t0 = cdb_mono_ms();
    inst_close(&silent);
    /* bounded by the pool's command timeout (500 ms here) and the connect timeout */
    print_message("free against a silent server took %lld ms\n", (long long)(cdb_mono_ms() - t0));
    assert_true(cdb_mono_ms() - t0 < 1200);
    close(lfd);
}

/* ---- readers racing a writer on one instance ----------------------------- */

typedef struct race {
    cdb_inval *inv;
    _Atomic uint64_t value;       /* the "Redis value" a reader caches */
    _Atomic uint64_t committed;   /* writes whose cdb_inval_table has returned */
    atomic_bool done;
    uint64_t kept, refused;       /* per reader: tickets still valid / refused after the read */
} race;

static void *race_writer(void *arg)
{
    race *r = arg;
    for (uint64_t i = 1; i <= 200000; i++) {
        atomic_fetch_add(&r->value, 1);
        cdb_inval_table(r->inv, "orders");     /* not started: the local apply only */
        atomic_store(&r->committed, i);
    }
    atomic_store(&r->done, true);
    return NULL;
}

typedef struct reader_out {
    race *r;
    uint64_t kept, dropped, violations;
} reader_out;

static void *race_reader(void *arg)
{
    reader_out *o = arg;
    race *r = o->r;
    while (!atomic_load(&r->done)) {
        cdb_inval_ticket t;
        /* usable forced on below: the test is about the stripes, not the subscription */
        if (!cdb_inval_ticket_table(r->inv, "orders", &t))
            continue;
        uint64_t v = atomic_load(&r->value);
        /* hold the value a moment, as a real reader does while it answers: writes land meanwhile */
        for (volatile int spin = 0; spin < 2000; spin++)
            ;
        uint64_t c = atomic_load(&r->committed);
        if (cdb_inval_valid_table(r->inv, "orders", &t)) {
            /* a valid ticket must never hide a write that completed before the check */
            if (v < c)
                o->violations++;
            o->kept++;
        } else {
            o->dropped++;
        }
    }
    return NULL;
}

static void test_readers_race_writer(void **state)
{
    (void)state;
    race r = {.inv = cdb_inval_new(NULL)};
    reader_out out[2] = {{.r = &r}, {.r = &r}};
    pthread_t w, rd[2];

    assert_non_null(r.inv);
    atomic_store(&r.inv->usable, true);
    /* no subscriber thread proves the subscription fresh here: proved for the next hour */
    atomic_store(&r.inv->alive_ms, cdb_mono_ms() + 3600 * 1000);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&rd[i], NULL, race_reader, &out[i]), 0);
    assert_int_equal(pthread_create(&w, NULL, race_writer, &r), 0);
    pthread_join(w, NULL);
    for (int i = 0; i < 2; i++) {
        pthread_join(rd[i], NULL);
        print_message("reader %d: %llu kept, %llu dropped, %llu violations\n", i,
                      (unsigned long long)out[i].kept, (unsigned long long)out[i].dropped,
                      (unsigned long long)out[i].violations);
        assert_int_equal(out[i].violations, 0);
    }
    assert_true(out[0].dropped + out[1].dropped > 0);   /* the writer did invalidate under them */

    /* the cost of a ticket and its check, uncontended */
    cdb_inval_ticket t;
    uint64_t ok = 0;
    int64_t t0 = cdb_mono_us();
    for (int i = 0; i < 1000000; i++) {
        ok += cdb_inval_ticket_session(r.inv, "5f0c9a7e-1b2d-4c3e-9f80-aa11bb22cc33", &t);
        ok += cdb_inval_valid_session(r.inv, "5f0c9a7e-1b2d-4c3e-9f80-aa11bb22cc33", &t);
    }
    int64_t el = cdb_mono_us() - t0;
    assert_int_equal(ok, 2000000);
    print_message("ticket + check of a 36-byte session id: %.1f ns\n", (double)el * 1000.0 / 1e6);
    cdb_inval_free(r.inv);
}


/* ---- publishing on an event loop (cdb_inval_table_async) ---- */

typedef struct loop_fx {
    struct event_base *base;
    cdb_aredis *a;
    int done;
    int ticks;                     /* a 5 ms timer of the same loop: proves it never blocks */
    struct event *tick;
} loop_fx;

static void on_async_done(void *arg)
{
    loop_fx *l = arg;
    l->done++;
    event_base_loopbreak(l->base);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    loop_fx *l = arg;
    (void)fd;
    (void)what;
    l->ticks++;
}

static void loop_open(loop_fx *l, cdb_redis *sync)
{
    memset(l, 0, sizeof *l);
    l->base = event_base_new();   /* as the HTTP loops' (http/server.c): the coarse clock */
    assert_non_null(l->base);
    l->a = cdb_aredis_new(l->base, sync, 1000);
    assert_non_null(l->a);
    /* connect: run the loop until the handshake answered */
    int64_t until = cdb_mono_ms() + 3000;
    while (!cdb_aredis_ready(l->a) && cdb_mono_ms() < until) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(l->base, &tv);
        event_base_dispatch(l->base);
    }
    assert_true(cdb_aredis_ready(l->a));
    l->tick = event_new(l->base, -1, EV_PERSIST, on_tick, l);
    struct timeval five = {0, 5000};
    event_add(l->tick, &five);
}

static void loop_close(loop_fx *l)
{
    event_free(l->tick);
    cdb_aredis_free(l->a);
    event_base_free(l->base);
}

/* Runs the loop until done was called (or 3 s); the time it took, in ms. */
static int64_t run_until_done(loop_fx *l)
{
    int64_t t0 = cdb_mono_ms();
    struct timeval cap = {3, 0};
    event_base_loopexit(l->base, &cap);
    event_base_dispatch(l->base);
    return cdb_mono_ms() - t0;
}

/* A counter's value in the exposition text (name with its labels, as printed); 0 when absent. */
static double counter(const char *sample)
{
    char *text = cdb__metrics_render(), *at;
    double v = 0;
    size_t n = strlen(sample);
    assert_non_null(text);
    for (at = text; (at = strstr(at, sample)); at += n)
        if ((at == text || at[-1] == '\n') && at[n] == ' ') {
            v = strtod(at + n + 1, NULL);
            break;
        }
    free(text);
    return v;
}

static int ack_lists(int port)
{
    redisReply *r = side_command(port, PASSWORD, "EVAL %s 0", "redis.call('SELECT', 3) return #redis.call('KEYS', 'coredb:unit:inval:ack:*')");
    int n = r && r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    freeReplyObject(r);
    return n;
}

static void test_async_publish(void **state)
{
    (void)state;
    fx f;
    loop_fx l;
    cdb_inval_ticket b_orders, b_users, a_orders, b_sid;
    const char *sid = "5f0c9a7e-1b2d-4c3e-9f80-aa11bb22cc33";

    fx_open(&f);
    loop_open(&l, f.a.sync);
    assert_true(cdb_inval_ticket_table(f.b.inv, "orders", &b_orders));
    assert_true(cdb_inval_ticket_table(f.b.inv, "users", &b_users));
    assert_true(cdb_inval_ticket_table(f.a.inv, "orders", &a_orders));
    assert_true(cdb_inval_ticket_session(f.b.inv, sid, &b_sid));

    double timeouts0 = counter("coredb_cache_invalidation_ack_timeouts_total");
    assert_true(cdb_inval_table_async(f.a.inv, l.a, l.base, "orders", on_async_done, &l));
    /* applied here at once, before any wait; done never runs inside the call */
    assert_false(cdb_inval_valid_table(f.a.inv, "orders", &a_orders));
    assert_int_equal(l.done, 0);
    int64_t ms = run_until_done(&l);
    assert_int_equal(l.done, 1);
    assert_true(ms < CDB_INVAL_ACK_WAIT_MS);
    /* both subscribers acknowledged: B's ticket is dead when done runs, others live */
    assert_false(cdb_inval_valid_table(f.b.inv, "orders", &b_orders));
    assert_true(cdb_inval_valid_table(f.b.inv, "users", &b_users));
    assert_true(counter("coredb_cache_invalidation_ack_timeouts_total") == timeouts0);
    /* the DEL leaves with the loop's next turn (fire and forget) */
    struct timeval spin = {0, 50000};
    event_base_loopexit(l.base, &spin);
    event_base_dispatch(l.base);
    assert_int_equal(ack_lists(f.port), 0);   /* the list was deleted */

    /* the cost of the wait on loopback, two subscribers */
    int64_t sum = 0, worst = 0;
    for (int i = 0; i < 50; i++) {
        int64_t t0 = cdb_mono_us();
        assert_true(cdb_inval_table_async(f.a.inv, l.a, l.base, "orders", on_async_done, &l));
        run_until_done(&l);
        int64_t us = cdb_mono_us() - t0;
        sum += us;
        worst = us > worst ? us : worst;
    }
    print_message("async publish + acknowledgements, 2 subscribers: %.0f us on average, %lld us at worst (50 runs)\n",
                  (double)sum / 50, (long long)worst);
    l.done -= 50;

    /* a session, through the same path */
    assert_true(cdb_inval_session_async(f.a.inv, l.a, l.base, sid, on_async_done, &l));
    run_until_done(&l);
    assert_int_equal(l.done, 2);
    assert_false(cdb_inval_valid_session(f.b.inv, sid, &b_sid));

    /* a subscriber that never acknowledges: done after CDB_INVAL_ACK_WAIT_MS, counted, and the
       loop ran its other events all along */
    redisContext *mute = redisConnect("127.0.0.1", f.port);
    assert_non_null(mute);
    freeReplyObject(redisCommand(mute, "AUTH %s", PASSWORD));
    freeReplyObject(redisCommand(mute, "SUBSCRIBE coredb:unit:inval"));
    l.ticks = 0;
    assert_true(cdb_inval_table_async(f.a.inv, l.a, l.base, "orders", on_async_done, &l));
    ms = run_until_done(&l);
    assert_int_equal(l.done, 3);
    assert_true(ms >= CDB_INVAL_ACK_WAIT_MS - 5 && ms < CDB_INVAL_ACK_WAIT_MS + 300);
    assert_true(l.ticks >= 40);
    assert_true(counter("coredb_cache_invalidation_ack_timeouts_total") == timeouts0 + 1);
    print_message("async publish with a mute subscriber: done after %lld ms, %d ticks of a 5 ms timer meanwhile\n",
                  (long long)ms, l.ticks);
    redisFree(mute);

    /* not started: applied here, nothing to wait for */
    inst c;
    inst_open(&c, f.port, "unit", false);
    cdb_inval_ticket c_t;
    assert_false(cdb_inval_ticket_table(c.inv, "orders", &c_t));
    assert_false(cdb_inval_table_async(c.inv, l.a, l.base, "orders", on_async_done, &l));
    assert_false(cdb_inval_table_async(NULL, l.a, l.base, "orders", on_async_done, &l));
    inst_close(&c);

    /* Redis gone: the PUBLISH fails, counted; done still runs once (or the call says false) */
    double failures0 = counter("coredb_cache_invalidation_publish_failures_total");
    stop_redis(f.pid);
    f.pid = -1;
    int before = l.done;
    if (cdb_inval_table_async(f.a.inv, l.a, l.base, "orders", on_async_done, &l))
        run_until_done(&l);
    assert_true(l.done - before <= 1);
    assert_true(counter("coredb_cache_invalidation_publish_failures_total") == failures0 + 1);
    assert_false(cdb_inval_table_async(f.a.inv, l.a, l.base, "orders", on_async_done, &l));

    loop_close(&l);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_not_started_and_null),
        cmocka_unit_test(test_readers_race_writer),
        cmocka_unit_test(test_cross_instance),
        cmocka_unit_test(test_async_publish),
        cmocka_unit_test(test_delay_1000),
        cmocka_unit_test(test_client_kill),
        cmocka_unit_test(test_redis_restart),
        cmocka_unit_test(test_silent_redis),
        cmocka_unit_test(test_free_bounded),
    };
    signal(SIGPIPE, SIG_IGN);
    if (!redis_scratch_make("inval-unit"))
        return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    redis_scratch_remove();
    return rc;
}
