/*
 * invalidation.c - cross-instance invalidation through Redis pub/sub: the
 * striped counters and epoch that first-level caches read, the subscriber
 * thread that keeps them, and publishing (see invalidation.h for the
 * contract and the message format).
 *
 * Memory order: every access to the epoch, the usable flag and the stripes
 * is sequentially consistent. A loss stores usable = false BEFORE bumping
 * the epoch, a confirmation bumps the epoch BEFORE storing usable = true, so
 * whichever order a reader sees them in, a ticket that spans a loss fails:
 * either its epoch is stale or it reads usable == false. (On x86 these loads
 * are plain loads; only the rare stores pay.)
 *
 * The subscriber never blocks in hiredis while subscribed: it polls the
 * socket and a stop pipe (CDB_INVAL_READ_TIMEOUT_MS), reads only what poll
 * said is there (redisBufferRead) and parses whole replies from hiredis's
 * buffer (redisGetReplyFromReader). A read timeout inside hiredis 0.14 on a
 * blocking context would set c->err for good (EAGAIN is an error there), so
 * the loop never relies on one; the handshake (AUTH, SUBSCRIBE) does use a
 * blocking read with the connect timeout, and any failure there, timeout
 * included, drops the context and reconnects.
 */
#include "store/invalidation.h"
#include "core/hash.h"
#include "store/redis_async.h"

#include <event2/event.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#define STRIPE_MASK (CDB_INVAL_STRIPES - 1)
_Static_assert((CDB_INVAL_STRIPES & STRIPE_MASK) == 0, "CDB_INVAL_STRIPES must be a power of two");

/* Delay histogram: values < 16 µs exactly, then 16 sub-buckets per octave. */
#define HIST_SUB 16
#define HIST_OCTAVES 36                      /* up to 2^40 µs: anything later lands in the last */
#define HIST_N (HIST_SUB + HIST_OCTAVES * HIST_SUB)

/* The process-wide Prometheus histogram's bounds (µs and their le text). */
static const int64_t prom_le_us[] = {50,    100,    250,    500,    1000,   2500,    5000,   10000,
                                     25000, 50000, 100000, 250000, 500000, 1000000, 2500000};
static const char *const prom_le[] = {"5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
                                      "0.025", "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5"};
#define PROM_N ((int)(sizeof prom_le_us / sizeof prom_le_us[0]))
_Static_assert(sizeof prom_le_us / sizeof prom_le_us[0] == sizeof prom_le / sizeof prom_le[0], "one le per bound");

static _Atomic uint64_t prom_bucket[PROM_N + 1];   /* not cumulative; last = +Inf */
static _Atomic uint64_t prom_sum_us;
static _Atomic int64_t last_publish_warn_ms;   /* process-wide: one warning per 10 s */
static _Atomic int64_t last_ack_warn_ms;       /* ... and one for missing acknowledgements */
static pthread_once_t prom_once = PTHREAD_ONCE_INIT;

struct cdb_inval {
    cdb_redis *sync;
    _Atomic uint64_t epoch;
    atomic_bool usable;
    _Atomic uint64_t tables[CDB_INVAL_STRIPES];
    _Atomic uint64_t sessions[CDB_INVAL_STRIPES];
    _Atomic uint64_t delay[HIST_N];

    pthread_mutex_t start_lock;     /* cdb_inval_start only: it is idempotent */
    bool started;
    pthread_t thread;
    int stop_pipe[2];               /* a byte written to [1] wakes the thread's polls */
    atomic_bool stopping;
    _Atomic(char *) channel;        /* "coredb:<ns>:inval", set once before the thread starts */

    _Atomic int64_t alive_ms;       /* cdb_mono_ms of the last read whose messages are all applied */

    /* the subscriber thread's own */
    bool outage_logged;
    int64_t last_malformed_warn_ms;
    redisContext *acks;             /* its second connection: acknowledgements, pipelined */
    int nacks;                      /* acknowledgements of the messages of this read, not sent yet */
};

/* ---- names and stripes ---- */

static size_t stripe_of(const char *name, size_t len)
{
    uint64_t h = cdb__hash(name, len);
    return (size_t)(h ^ (h >> 32)) & STRIPE_MASK;
}

static void bump_all(_Atomic uint64_t *stripes)
{
    for (size_t i = 0; i < CDB_INVAL_STRIPES; i++)
        atomic_fetch_add(&stripes[i], 1);
}

static void apply(_Atomic uint64_t *stripes, const char *name, size_t len)
{
    if (len > CDB_INVAL_NAME_MAX)
        bump_all(stripes);
    else
        atomic_fetch_add(&stripes[stripe_of(name, len)], 1);
}

/* ---- the delay histogram ---- */

static int hist_index(uint64_t us)
{
    if (us < HIST_SUB)
        return (int)us;
    int e = 63 - __builtin_clzll(us);         /* >= 4 */
    int sub = (int)((us >> (e - 4)) & (HIST_SUB - 1));
    int b = HIST_SUB + (e - 4) * HIST_SUB + sub;
    return b < HIST_N ? b : HIST_N - 1;
}

/* The middle of bucket b, in µs. */
static int64_t hist_value(int b)
{
    if (b < HIST_SUB)
        return b;
    int e = (b - HIST_SUB) / HIST_SUB + 4, sub = (b - HIST_SUB) % HIST_SUB;
    int64_t lo = (int64_t)(HIST_SUB + sub) << (e - 4), width = (int64_t)1 << (e - 4);
    return lo + width / 2;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void record_delay(cdb_inval *inv, int64_t sent_us)
{
    int64_t d = wall_us() - sent_us;
    if (d < 0)
        d = 0;   /* clocks of two hosts: never a negative delay */
    atomic_fetch_add_explicit(&inv->delay[hist_index((uint64_t)d)], 1, memory_order_relaxed);
    int p = 0;
    while (p < PROM_N && d > prom_le_us[p])
        p++;
    atomic_fetch_add_explicit(&prom_bucket[p], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&prom_sum_us, (uint64_t)d, memory_order_relaxed);
}

static void collect(cdb__metrics_out *out, void *arg)
{
    (void)arg;
    uint64_t cum = 0;
    char labels[32];
    cdb__metrics_family(out, "coredb_cache_invalidation_delay_seconds", "histogram",
                        "Delay from a publisher's clock to this instance applying an invalidation.");
    for (int p = 0; p < PROM_N; p++) {
        cum += atomic_load_explicit(&prom_bucket[p], memory_order_relaxed);
        snprintf(labels, sizeof labels, "le=\"%s\"", prom_le[p]);
        cdb__metrics_sample(out, "coredb_cache_invalidation_delay_seconds_bucket", labels, (double)cum);
    }
    cum += atomic_load_explicit(&prom_bucket[PROM_N], memory_order_relaxed);
    cdb__metrics_sample(out, "coredb_cache_invalidation_delay_seconds_bucket", "le=\"+Inf\"", (double)cum);
    cdb__metrics_sample(out, "coredb_cache_invalidation_delay_seconds_sum", NULL,
                        (double)atomic_load_explicit(&prom_sum_us, memory_order_relaxed) / 1e6);
    cdb__metrics_sample(out, "coredb_cache_invalidation_delay_seconds_count", NULL, (double)cum);
}

static void register_collector(void)
{
    /* process-wide statics: registered once, never removed (nothing to free) */
    if (cdb__metrics_add_collector(collect, NULL) < 0)
        cdb_log_warn("inval_metrics", "no room for the invalidation delay histogram in the metrics registry");
}

void cdb_inval_delay_quantiles(cdb_inval *inv, int64_t *p50_us, int64_t *p99_us, uint64_t *count)
{
    uint64_t h[HIST_N], n = 0;
    int64_t q50 = 0, q99 = 0;

    if (inv) {
        for (int b = 0; b < HIST_N; b++)
            n += h[b] = atomic_load_explicit(&inv->delay[b], memory_order_relaxed);
    }
    if (n) {
        /* the smallest bucket whose cumulative count reaches q * n */
        uint64_t t50 = (n + 1) / 2, t99 = n - n / 100, cum = 0;
        bool got50 = false;
        for (int b = 0; b < HIST_N; b++) {
            cum += h[b];
            if (!got50 && cum >= t50) {
                q50 = hist_value(b);
                got50 = true;
            }
            if (cum >= t99) {
                q99 = hist_value(b);
                break;
            }
        }
    }
    if (p50_us)
        *p50_us = q50;
    if (p99_us)
        *p99_us = q99;
    if (count)
        *count = n;
}

/* ---- tickets ---- */

/*
 * The subscription proved itself within CDB_INVAL_FRESH_MS: every message
 * published before then is applied here. A publisher waits for every
 * subscriber's acknowledgement up to CDB_INVAL_ACK_WAIT_MS, longer than
 * that; so when a writer has its answer, an instance that did not apply its
 * invalidation has not proved itself for that long, and uses no ticket.
 */
static bool fresh(cdb_inval *inv)
{
    return cdb_mono_ms() - atomic_load(&inv->alive_ms) < CDB_INVAL_FRESH_MS;
}

static bool ticket(cdb_inval *inv, _Atomic uint64_t *stripes, const char *name, cdb_inval_ticket *t)
{
    if (!inv || !name || !t)
        return false;
    t->epoch = atomic_load(&inv->epoch);
    if (!atomic_load(&inv->usable) || !fresh(inv))
        return false;
    t->seq = atomic_load(&stripes[stripe_of(name, strlen(name))]);
    return true;
}

static bool valid(cdb_inval *inv, _Atomic uint64_t *stripes, const char *name, const cdb_inval_ticket *t)
{
    if (!inv || !name || !t)
        return false;
    /* stripe first, epoch last: a loss between the two reads still fails */
    if (atomic_load(&stripes[stripe_of(name, strlen(name))]) != t->seq)
        return false;
    if (!atomic_load(&inv->usable) || !fresh(inv))
        return false;
    return atomic_load(&inv->epoch) == t->epoch;
}

bool cdb_inval_ticket_table(cdb_inval *inv, const char *table, cdb_inval_ticket *t)
{
    return inv && ticket(inv, inv->tables, table, t);
}

bool cdb_inval_ticket_session(cdb_inval *inv, const char *session_id, cdb_inval_ticket *t)
{
    return inv && ticket(inv, inv->sessions, session_id, t);
}

bool cdb_inval_valid_table(cdb_inval *inv, const char *table, const cdb_inval_ticket *t)
{
    return inv && valid(inv, inv->tables, table, t);
}

bool cdb_inval_valid_session(cdb_inval *inv, const char *session_id, const cdb_inval_ticket *t)
{
    return inv && valid(inv, inv->sessions, session_id, t);
}

uint64_t cdb_inval_epoch(cdb_inval *inv)
{
    return inv ? atomic_load(&inv->epoch) : 0;
}

bool cdb_inval_usable(cdb_inval *inv)
{
    return inv && atomic_load(&inv->usable) && fresh(inv);
}

/* ---- publishing ---- */

/* The list every subscriber of a message pushes its acknowledgement to. */
static int ack_key(const char *channel, const char *msg, size_t len, char *key, size_t keylen)
{
    return snprintf(key, keylen, "%s:ack:%.*s", channel, (int)len, msg);
}

/* Fewer than n acknowledgements came in time: counted, one warning per 10 s. */
static void acks_missing(long long got, long long n)
{
    if (got >= n)
        return;
    int64_t now = cdb_mono_ms(), last = atomic_load(&last_ack_warn_ms);
    cdb__metrics_inc(CDB_M_INVAL_ACK_TIMEOUTS);
    if ((last == 0 || now - last >= 10000) && atomic_compare_exchange_strong(&last_ack_warn_ms, &last, now))
        cdb_log_warn("inval_ack_timeout", "%lld of %lld instances acknowledged an invalidation within %d ms; "
                     "the others use no first-level cache until their subscription proves itself again",
                     got, n, CDB_INVAL_ACK_WAIT_MS);
}

/*
 * Waits until the n subscribers PUBLISH reached have applied msg (each
 * pushes to its ack list), at most CDB_INVAL_ACK_WAIT_MS: then the writer
 * answers knowing no instance serves what msg voids (see fresh()).
 */
static void await_acks(cdb_inval *inv, const char *channel, const char *msg, size_t len, long long n)
{
    char key[CDB_INVAL_NAME_MAX + 400];
    cdb_error err;
    ack_key(channel, msg, len, key, sizeof key);
    int64_t deadline = cdb_mono_ms() + CDB_INVAL_ACK_WAIT_MS;
    long long got = 0;
    cdb_error_init(&err);
    while (got < n) {
        int64_t left = deadline - cdb_mono_ms();
        if (left <= 0)
            break;
        char timeout[32];
        snprintf(timeout, sizeof timeout, "%.3f", (double)left / 1000.0);
        const char *argv[] = {"BLPOP", key, timeout};
        redisReply *r = cdb_redis_command_argv(inv->sync, 3, argv, NULL, &err);
        bool popped = r && r->type == REDIS_REPLY_ARRAY;
        freeReplyObject(r);
        if (!popped)
            break;        /* timed out, or Redis failed: the laggards' tickets expire on their own */
        got++;
    }
    acks_missing(got, n);
    const char *del[] = {"DEL", key};
    freeReplyObject(cdb_redis_command_argv(inv->sync, 2, del, NULL, &err));
    cdb_error_destroy(&err);
}

/*
 * Applies the invalidation here first (this instance never waits for its
 * own message) and formats its message into msg (CDB_INVAL_NAME_MAX + 64
 * bytes): its length, or 0 when there is nothing to publish (not started:
 * no other instance can be listening on our behalf yet). *channel gets the
 * channel. Shared by the blocking and the loop's publish.
 */
static size_t prepare(cdb_inval *inv, char kind, const char *name, char *msg, const char **channel)
{
    size_t len = strlen(name);
    apply(kind == 't' ? inv->tables : inv->sessions, name, len);
    if (!(*channel = atomic_load(&inv->channel)))
        return 0;
    if (len > CDB_INVAL_NAME_MAX)
        return (size_t)snprintf(msg, CDB_INVAL_NAME_MAX + 64, "%c %lld", kind == 't' ? 'T' : 'S', (long long)wall_us());
    return (size_t)snprintf(msg, CDB_INVAL_NAME_MAX + 64, "%c %lld %s", kind, (long long)wall_us(), name);
}

/* A PUBLISH that failed: counted, and one warning per 10 s (every write fails while Redis is down). */
static void publish_failed(char kind, const char *why)
{
    int64_t now = cdb_mono_ms(), last = atomic_load(&last_publish_warn_ms);
    cdb__metrics_inc(CDB_M_INVAL_PUBLISH_FAILURES);
    /* the name may be a session id: never logged */
    if ((last == 0 || now - last >= 10000) && atomic_compare_exchange_strong(&last_publish_warn_ms, &last, now))
        cdb_log_warn("inval_publish_failed", "could not publish a %s invalidation: %s",
                     kind == 't' ? "table" : "session", why);
}

static void publish(cdb_inval *inv, char kind, const char *name)
{
    char msg[CDB_INVAL_NAME_MAX + 64];
    size_t len;
    cdb_error err;
    redisReply *reply;
    const char *channel;

    if (!inv || !name || !(len = prepare(inv, kind, name, msg, &channel)))
        return;
    cdb_error_init(&err);
    reply = cdb_redis_command(inv->sync, &err, "PUBLISH %s %b", channel, msg, len);
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        publish_failed(kind, reply ? "Redis refused PUBLISH" : err.message);
    else if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        await_acks(inv, channel, msg, len, reply->integer);
    freeReplyObject(reply);
    cdb_error_destroy(&err);
}

void cdb_inval_table(cdb_inval *inv, const char *table)
{
    publish(inv, 't', table);
}

void cdb_inval_session(cdb_inval *inv, const char *session_id)
{
    publish(inv, 's', session_id);
}

/* ---- publishing on an event loop ---- */

/*
 * The loop's publish: PUBLISH on the loop's asynchronous connection, then
 * the acknowledgements counted with LLEN (the subscribers' RPUSH, the same
 * list the blocking path pops) until every one is in or
 * CDB_INVAL_ACK_WAIT_MS passed; then DEL. Never BLPOP: on a connection
 * the loop shares, a blocked command would hold up every command behind
 * it. For ASYNC_POLL_BURST_US after the PUBLISH each reply sends the next
 * LLEN at once (a round trip on loopback is tens of µs, the subscribers'
 * apply and acknowledgement a few hundred); after that a timer of the
 * loop polls, from ASYNC_POLL_FIRST_US doubling up to ASYNC_POLL_MAX_US.
 * Why replies and not a short timer first: libevent's clock on the loops
 * is CLOCK_MONOTONIC_COARSE (a 4 ms tick here), so a 200 µs timer took
 * 4 ms; precise timers (EVENT_BASE_FLAG_PRECISE_TIMER) cost a
 * timerfd_settime(2) with every turn of every loop, about three per
 * data-API miss (strace, bench of 2026-12-01), to serve transactions only.
 */
#define ASYNC_POLL_BURST_US 2000
#define ASYNC_POLL_FIRST_US 1000
#define ASYNC_POLL_MAX_US 20000

typedef struct async_pub {
    cdb_inval *inv;
    cdb_aredis *a;
    struct event *timer;
    char kind;
    long long n;                   /* subscribers PUBLISH reached */
    long long got;
    int wait_us;                   /* the next timed poll's delay */
    int64_t burst_until_us;        /* until then, each reply polls again at once */
    int64_t deadline_ms;
    cdb_inval_done_cb done;
    void *arg;
    size_t keylen;
    char key[];                    /* "<channel>:ack:<msg>" */
} async_pub;

static void on_deleted(redisReply *reply, void *arg)
{
    (void)reply;
    (void)arg;
}

/* The wait is over (all in, timed out, or Redis failed): DEL, count, tell the caller. */
static void async_end(async_pub *p)
{
    const char *del[] = {"DEL", p->key};
    size_t dellen[] = {3, p->keylen};
    cdb_inval_done_cb done = p->done;
    void *arg = p->arg;
    if (p->n > 0) {
        acks_missing(p->got, p->n);
        /* fire and forget, as the blocking path's DEL: the list expires anyway (PEXPIRE by each subscriber) */
        cdb_aredis_send(p->a, on_deleted, NULL, 2, del, dellen);
    }
    if (p->timer)
        event_free(p->timer);
    free(p);
    done(arg);
}

static void on_llen(redisReply *reply, void *arg);

static void on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    async_pub *p = arg;
    const char *argv[] = {"LLEN", p->key};
    size_t argvlen[] = {4, p->keylen};
    (void)fd;
    (void)what;
    if (!cdb_aredis_send(p->a, on_llen, p, 2, argv, argvlen))
        async_end(p);              /* the connection failed: as a failed BLPOP, stop waiting */
}

/* Polls again (at once during the burst, else after the next delay), or ends the wait at its deadline. */
static void poll_later(async_pub *p)
{
    int64_t left_us = (p->deadline_ms - cdb_mono_ms()) * 1000;
    if (left_us <= 0) {
        async_end(p);
        return;
    }
    if (cdb_mono_us() < p->burst_until_us) {
        on_poll_timer(-1, 0, p);
        return;
    }
    int us = p->wait_us < left_us ? p->wait_us : (int)left_us;
    struct timeval tv = {us / 1000000, us % 1000000};
    p->wait_us = p->wait_us * 2 > ASYNC_POLL_MAX_US ? ASYNC_POLL_MAX_US : p->wait_us * 2;
    if (evtimer_add(p->timer, &tv) != 0)
        async_end(p);
}

static void on_llen(redisReply *reply, void *arg)
{
    async_pub *p = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        async_end(p);              /* Redis failed: the laggards' tickets expire on their own */
        return;
    }
    p->got = reply->integer < p->n ? reply->integer : p->n;
    if (p->got >= p->n)
        async_end(p);
    else
        poll_later(p);
}

static void on_published(redisReply *reply, void *arg)
{
    async_pub *p = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        publish_failed(p->kind, reply ? "Redis refused PUBLISH" : "Redis unavailable");
        async_end(p);
        return;
    }
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer <= 0) {
        async_end(p);              /* nobody listens: nothing to wait for */
        return;
    }
    p->n = reply->integer;
    poll_later(p);
}

static bool publish_async(cdb_inval *inv, cdb_aredis *a, struct event_base *base, char kind, const char *name,
                          cdb_inval_done_cb done, void *arg)
{
    char msg[CDB_INVAL_NAME_MAX + 64];
    const char *channel;
    size_t len;
    async_pub *p = NULL;

    if (!inv || !name || !(len = prepare(inv, kind, name, msg, &channel)))
        return false;
    size_t cap = strlen(channel) + len + 8;
    if (!(p = calloc(1, sizeof *p + cap)) || !(p->timer = evtimer_new(base, on_poll_timer, p))) {
        free(p);
        publish_failed(kind, "out of memory");
        return false;
    }
    p->inv = inv;
    p->a = a;
    p->kind = kind;
    p->wait_us = ASYNC_POLL_FIRST_US;
    p->burst_until_us = cdb_mono_us() + ASYNC_POLL_BURST_US;
    p->deadline_ms = cdb_mono_ms() + CDB_INVAL_ACK_WAIT_MS;
    p->done = done;
    p->arg = arg;
    p->keylen = (size_t)ack_key(channel, msg, len, p->key, cap);
    const char *argv[] = {"PUBLISH", channel, msg};
    size_t argvlen[] = {7, strlen(channel), len};
    if (!cdb_aredis_send(a, on_published, p, 3, argv, argvlen)) {
        publish_failed(kind, "Redis unavailable");
        event_free(p->timer);
        free(p);
        return false;
    }
    return true;
}

bool cdb_inval_table_async(cdb_inval *inv, cdb_aredis *a, struct event_base *base, const char *table,
                           cdb_inval_done_cb done, void *arg)
{
    return publish_async(inv, a, base, 't', table, done, arg);
}

bool cdb_inval_session_async(cdb_inval *inv, cdb_aredis *a, struct event_base *base, const char *session_id,
                             cdb_inval_done_cb done, void *arg)
{
    return publish_async(inv, a, base, 's', session_id, done, arg);
}

/* ---- the subscriber thread ---- */

/* Sleeps ms, or less when asked to stop; true when stopping. */
static bool nap(cdb_inval *inv, int ms)
{
    struct pollfd p = {.fd = inv->stop_pipe[0], .events = POLLIN};
    if (atomic_load(&inv->stopping))
        return true;
    if (poll(&p, 1, ms) < 0 && errno != EINTR)
        usleep((useconds_t)ms * 1000);
    return atomic_load(&inv->stopping);
}

static void mark_lost(cdb_inval *inv, const char *why)
{
    bool was = atomic_exchange(&inv->usable, false);
    atomic_fetch_add(&inv->epoch, 1);     /* after usable = false: see the header comment */
    if (was)
        cdb__metrics_inc(CDB_M_INVAL_SUBSCRIPTION_LOSSES);
    if (!inv->outage_logged) {
        cdb_log_warn("inval_subscription_lost",
                     "cache invalidation subscription unavailable (%s): first-level caches bypassed", why);
        inv->outage_logged = true;
    }
}

static void mark_confirmed(cdb_inval *inv)
{
    atomic_fetch_add(&inv->epoch, 1);     /* before usable = true: see the header comment */
    atomic_store(&inv->usable, true);
    if (inv->outage_logged) {
        cdb_log_info("inval_subscription_recovered", "cache invalidation subscription back");
        inv->outage_logged = false;
    }
}

static void malformed(cdb_inval *inv)
{
    int64_t now = cdb_mono_ms();
    if (now - inv->last_malformed_warn_ms >= 10000 || !inv->last_malformed_warn_ms) {
        cdb_log_warn("inval_malformed", "ignored a malformed message on the invalidation channel");
        inv->last_malformed_warn_ms = now;
    }
}

/* The acknowledgement of an applied message, sent with the others of its read (send_acks). */
static void queue_ack(cdb_inval *inv, const char *msg, size_t len)
{
    char key[CDB_INVAL_NAME_MAX + 400];
    if (!inv->acks)
        return;
    ack_key(atomic_load(&inv->channel), msg, len, key, sizeof key);
    if (redisAppendCommand(inv->acks, "RPUSH %s 1", key) == REDIS_OK &&
        redisAppendCommand(inv->acks, "PEXPIRE %s %d", key, CDB_INVAL_ACK_WAIT_MS * 4) == REDIS_OK)
        inv->nacks += 2;
}

/* Sends the queued acknowledgements and reads their replies; false when that connection failed. */
static bool send_acks(cdb_inval *inv)
{
    bool ok = true;
    for (; inv->nacks > 0; inv->nacks--) {
        void *r = NULL;
        if (ok && (redisGetReply(inv->acks, &r) != REDIS_OK || !r))
            ok = false;
        freeReplyObject(r);
    }
    return ok;
}

/* One message's payload: "t|s <usec> <name>" or "T|S <usec>". */
static void on_message(cdb_inval *inv, const char *p, size_t len)
{
    char kind;
    long long sent = 0;
    size_t i = 2, digits = 0;
    _Atomic uint64_t *stripes;

    if (len < 3 || len > CDB_INVAL_NAME_MAX + 64 || p[1] != ' ')
        goto bad;
    kind = p[0];
    if (kind != 't' && kind != 's' && kind != 'T' && kind != 'S')
        goto bad;
    for (; i < len && p[i] >= '0' && p[i] <= '9' && digits < 18; i++, digits++)
        sent = sent * 10 + (p[i] - '0');
    if (!digits)
        goto bad;
    stripes = (kind == 't' || kind == 'T') ? inv->tables : inv->sessions;
    if (kind == 'T' || kind == 'S') {
        if (i != len)
            goto bad;
        bump_all(stripes);
    } else {
        if (i >= len || p[i] != ' ' || len - i - 1 == 0 || len - i - 1 > CDB_INVAL_NAME_MAX)
            goto bad;
        apply(stripes, p + i + 1, len - i - 1);
    }
    cdb__metrics_inc(CDB_M_INVAL_RECEIVED);
    record_delay(inv, sent);
    queue_ack(inv, p, len);
    return;
bad:
    malformed(inv);
}

/*
 * One reply in subscribed mode. 1: the SUBSCRIBE confirmation, 0: anything
 * else fine (a message, PING's pong), -1: a reply that cannot be (an error).
 */
static int on_reply(cdb_inval *inv, redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const char *what = r->element[0]->str;
    if (!strcmp(what, "subscribe"))
        return 1;
    if (!strcmp(what, "message") && r->elements == 3 && r->element[2]->type == REDIS_REPLY_STRING)
        on_message(inv, r->element[2]->str, r->element[2]->len);
    return 0;
}

/* A connected, authenticated context (blocking, with the connect timeout on
 * reads and writes), or NULL with why filled. */
static redisContext *connect_redis(cdb_inval *inv, char *why, size_t whylen)
{
    cdb_redis_endpoint ep;
    redisContext *c = NULL;
    redisReply *r = NULL;

    if (cdb_redis_endpoint_get(inv->sync, &ep) < 0) {
        /* no address yet: let the pool connect (it asks the sentinels or resolves the name) */
        cdb_error err;
        cdb_error_init(&err);
        freeReplyObject(cdb_redis_command(inv->sync, &err, "PING"));
        cdb_error_destroy(&err);
        if (cdb_redis_endpoint_get(inv->sync, &ep) < 0) {
            snprintf(why, whylen, "no Redis address known yet");
            return NULL;
        }
    }
    int ms = ep.connect_timeout_ms > 0 ? ep.connect_timeout_ms : 1000;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    c = redisConnectWithTimeout(ep.host, ep.port, tv);
    if (!c || c->err) {
        snprintf(why, whylen, "connect to %s:%d: %s", ep.host, ep.port, c ? c->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        snprintf(why, whylen, "setting the timeout: %s", c->errstr);
        goto fail;
    }
    if (ep.password) {
        if (ep.user)
            r = redisCommand(c, "AUTH %s %s", ep.user, ep.password);
        else
            r = redisCommand(c, "AUTH %s", ep.password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "AUTH %s", r ? "refused" : "failed");   /* never the reply: no secret */
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    /* channels ignore the db, but acknowledgements are lists the publisher reads in its own */
    if (ep.db != 0) {
        r = redisCommand(c, "SELECT %d", ep.db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "SELECT %d %s", ep.db, r ? "refused" : "failed");
            goto fail;
        }
        freeReplyObject(r);
        r = NULL;
    }
    cdb_redis_endpoint_destroy(&ep);
    return c;
fail:
    freeReplyObject(r);
    redisFree(c);
    cdb_redis_endpoint_destroy(&ep);
    return NULL;
}

static bool flush_out(redisContext *c)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK)
            return false;
    return true;
}

/*
 * Subscribes and applies messages until the connection fails (returns with
 * why filled) or a stop is asked (returns with why empty).
 */
static void subscribed(cdb_inval *inv, redisContext *c, const char *channel, char *why, size_t whylen)
{
    int64_t last_rx = cdb_mono_ms(), last_ping = last_rx, read_ms = last_rx;
    bool confirmed = false;
    uint64_t master_changes = cdb_redis_master_changes(inv->sync);

    why[0] = '\0';
    if (redisAppendCommand(c, "SUBSCRIBE %s", channel) != REDIS_OK || !flush_out(c)) {
        snprintf(why, whylen, "SUBSCRIBE: %s", c->errstr);
        return;
    }
    while (!atomic_load(&inv->stopping)) {
        void *reply;
        for (;;) {
            if (redisGetReplyFromReader(c, &reply) != REDIS_OK) {
                snprintf(why, whylen, "protocol: %s", c->errstr);
                return;
            }
            if (!reply)
                break;
            int k = on_reply(inv, reply);
            freeReplyObject(reply);
            if (k < 0) {
                snprintf(why, whylen, "error reply on the subscription");
                return;
            }
            if (k == 1 && !confirmed) {
                confirmed = true;
                atomic_store(&inv->alive_ms, read_ms);
                mark_confirmed(inv);
            }
        }
        if (!send_acks(inv)) {
            snprintf(why, whylen, "acknowledgements: %s", inv->acks->errstr);
            return;
        }
        /* everything read so far is applied (and acknowledged) */
        if (confirmed)
            atomic_store(&inv->alive_ms, read_ms);
        if (cdb_redis_master_changes(inv->sync) != master_changes) {
            /* a Sentinel failover the pool has seen: publishers now reach the new master */
            snprintf(why, whylen, "the Redis master moved");
            return;
        }
        int64_t now = cdb_mono_ms();
        if (now - last_rx > (confirmed ? CDB_INVAL_DEAD_MS : CDB_INVAL_DEAD_MS / 3)) {
            snprintf(why, whylen, "no answer from Redis for %lld ms", (long long)(now - last_rx));
            return;
        }
        if (confirmed && now - last_ping >= CDB_INVAL_PING_MS && now - last_rx >= CDB_INVAL_PING_MS) {
            /* a quiet channel: PING proves the subscription still reaches Redis */
            if (redisAppendCommand(c, "PING") != REDIS_OK || !flush_out(c)) {
                snprintf(why, whylen, "PING: %s", c->errstr);
                return;
            }
            last_ping = now;
        }
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = inv->stop_pipe[0], .events = POLLIN}};
        int n = poll(p, 2, confirmed ? CDB_INVAL_PING_MS : CDB_INVAL_READ_TIMEOUT_MS);
        if (n < 0 && errno != EINTR) {
            snprintf(why, whylen, "poll: %s", strerror(errno));
            return;
        }
        if (n > 0 && p[0].revents) {
            /* poll said there is data (or EOF, an error): this read does not block */
            read_ms = cdb_mono_ms();
            if (redisBufferRead(c) != REDIS_OK) {
                snprintf(why, whylen, "%s", c->errstr[0] ? c->errstr : "connection lost");
                return;
            }
            last_rx = read_ms;
        }
    }
}

static void *subscriber(void *arg)
{
    cdb_inval *inv = arg;
    const char *channel = atomic_load(&inv->channel);
    int backoff = CDB_INVAL_BACKOFF_MIN_MS;
    char why[256];

    while (!atomic_load(&inv->stopping)) {
        redisContext *c = connect_redis(inv, why, sizeof why);
        inv->acks = c ? connect_redis(inv, why, sizeof why) : NULL;
        if (c && inv->acks) {
            subscribed(inv, c, channel, why, sizeof why);
            if (atomic_load(&inv->usable))
                backoff = CDB_INVAL_BACKOFF_MIN_MS;   /* it worked for a while: retry soon */
        }
        if (inv->acks)
            redisFree(inv->acks);
        inv->acks = NULL;
        inv->nacks = 0;
        if (c)
            redisFree(c);
        if (c && atomic_load(&inv->stopping))
            break;
        mark_lost(inv, why);
        if (nap(inv, backoff))
            break;
        backoff = backoff * 2 > CDB_INVAL_BACKOFF_MAX_MS ? CDB_INVAL_BACKOFF_MAX_MS : backoff * 2;
    }
    /* stopped: nothing keeps the counters exact any more */
    atomic_store(&inv->usable, false);
    atomic_fetch_add(&inv->epoch, 1);
    return NULL;
}

/* ---- life ---- */

cdb_inval *cdb_inval_new(cdb_redis *sync)
{
    cdb_inval *inv = calloc(1, sizeof *inv);
    if (!inv)
        return NULL;
    inv->sync = sync;
    inv->stop_pipe[0] = inv->stop_pipe[1] = -1;
    pthread_mutex_init(&inv->start_lock, NULL);
    return inv;
}

int cdb_inval_start(cdb_inval *inv, const char *ns, cdb_error *err)
{
    int rc = -1;
    char *channel = NULL;

    if (!inv || !ns || !*ns || strlen(ns) > 200) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Invalid invalidation namespace");
        return -1;
    }
    pthread_mutex_lock(&inv->start_lock);
    if (inv->started) {
        rc = 0;
        goto out;
    }
    size_t n = strlen(ns) + sizeof "coredb::inval";
    channel = malloc(n);
    if (!channel) {
        cdb_error_oom(err);
        goto out;
    }
    snprintf(channel, n, "coredb:%s:inval", ns);
    if (pipe(inv->stop_pipe) < 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Could not start the invalidation subscriber");
        goto out;
    }
    fcntl(inv->stop_pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(inv->stop_pipe[1], F_SETFD, FD_CLOEXEC);
    atomic_store(&inv->channel, channel);
    if (pthread_create(&inv->thread, NULL, subscriber, inv) != 0) {
        atomic_store(&inv->channel, NULL);
        close(inv->stop_pipe[0]);
        close(inv->stop_pipe[1]);
        inv->stop_pipe[0] = inv->stop_pipe[1] = -1;
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Could not start the invalidation subscriber");
        goto out;
    }
    channel = NULL;   /* owned by inv now */
    inv->started = true;
    pthread_once(&prom_once, register_collector);
    rc = 0;
out:
    pthread_mutex_unlock(&inv->start_lock);
    free(channel);
    return rc;
}

void cdb_inval_free(cdb_inval *inv)
{
    if (!inv)
        return;
    if (inv->started) {
        atomic_store(&inv->stopping, true);
        while (write(inv->stop_pipe[1], "x", 1) < 0 && errno == EINTR)
            ;
        pthread_join(inv->thread, NULL);
        close(inv->stop_pipe[0]);
        close(inv->stop_pipe[1]);
    }
    free(atomic_load(&inv->channel));
    pthread_mutex_destroy(&inv->start_lock);
    free(inv);
}
