/*
 * redis_async.c - one event loop's asynchronous Redis connection (see
 * redis_async.h for the contract).
 *
 * hiredis (0.14 in Debian 12) does the protocol and redis_events.c the
 * socket events (in place of hiredis's adapter, which pays four epoll_ctl
 * calls a command); this file adds what 0.14 lacks and the contract needs:
 *
 *  - Exactly one callback per command. Every command has a record on
 *    a->head..a->tail (oldest first) that is hiredis's privdata. A record
 *    leaves the list just before its callback runs, and whatever is left
 *    when the context is gone gets NULL there, so a record hiredis never
 *    answers (it cannot report a failed allocation of its callback entry)
 *    still gets its one call. A reply whose record is not the oldest means
 *    the stream is out of step: the connection is closed rather than a
 *    reply handed to the wrong caller.
 *  - Timeouts (0.14 has neither redisAsyncSetTimeout nor a connect
 *    timeout). Records carry a deadline; one timer fires at the oldest
 *    record's deadline and is re-armed lazily (when it fires early it moves
 *    to the new oldest), so a busy loop does not pay a timer update per
 *    command. The handshake commands are queued at connect time with the
 *    connect timeout as deadline, so a connect that never completes expires
 *    the same way. On expiry the context is freed from the timer (outside
 *    any hiredis callback, where that is allowed) and hiredis runs every
 *    pending callback with NULL.
 *  - Knowing when a context is gone. The event adapter's cleanup hook is
 *    the one call hiredis makes on every way a context ends (lost, refused,
 *    freed, closed gracefully), after the pending callbacks and before the
 *    memory goes; it is wrapped to move the connection back to idle there.
 *    Until then the connection is "closing": sends are refused and no
 *    reconnect starts, even from a callback.
 *  - A reply nobody asked for. hiredis 0.14 aborts the process (assert)
 *    when a server sends a reply while no callback waits. The reply
 *    parser's object constructors are wrapped: a top-level reply while no
 *    record waits is refused there, which hiredis turns into a read error
 *    and a closed connection.
 */
#include "store/redis_async.h"

#include <event2/event.h>
#include <hiredis/async.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "store/redis_events.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

/* One command waiting for its reply. */
typedef struct pending {
    struct pending *next;
    cdb_aredis_cb cb;
    void *arg;
    int64_t deadline_ms;        /* monotonic */
    bool internal;              /* a handshake command: not a caller's failure when NULL */
} pending;

typedef enum ar_state {
    AR_IDLE,        /* no context; a connect may start (after retry_at_ms) */
    AR_CONNECTING,  /* context made, handshake replies outstanding */
    AR_READY,       /* takes commands */
    AR_CLOSING,     /* the context is being torn down; its callbacks may still run */
} ar_state;

struct cdb_aredis {
    struct event_base *base;
    cdb_redis *sync;
    int command_timeout_ms;

    ar_state st;
    redisAsyncContext *ac;      /* non-NULL in CONNECTING, READY and most of CLOSING */
    redisReplyObjectFunctions *reader_fn; /* hiredis's reply constructors, which ours wrap */
    pending *head, *tail;       /* commands sent on ac and not answered, oldest first */
    struct event *timer;        /* when pending, fires at timer_at_ms, never after the oldest deadline */
    int64_t timer_at_ms;
    int handshake_left;         /* handshake replies still expected */
    bool sentinel;              /* the address came from the sentinels */
    uint64_t master_changes;    /* the pool's count when this connection was made */
    int in_callback;            /* depth of callbacks running (cdb_aredis_free guard) */
    bool freeing;

    bool down;                  /* failed since the last handshake: log once per outage */
    int backoff_ms;             /* next interval after a failure */
    int64_t retry_at_ms;        /* no connect before this */
    char why[200];              /* why the current context failed; "" = closed on purpose */

    _Atomic uint64_t connects, failures, timeouts, failed_commands;
};

static void on_timer(evutil_socket_t fd, short what, void *arg);
static void recovered(cdb_aredis *a);

/* ---- records ------------------------------------------------------------- */

static void unlink_record(cdb_aredis *a, pending *p)
{
    pending **pp = &a->head, *prev = NULL;
    /* almost always the head: replies come in order */
    while (*pp && *pp != p) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = p->next;
    if (a->tail == p)
        a->tail = prev;
    p->next = NULL;
}

/* Runs p's callback once and frees p; p is already off the list. */
static void run_record(cdb_aredis *a, pending *p, redisReply *reply)
{
    if (!p->internal) {
        if (reply && (a->down || a->backoff_ms != BACKOFF_MIN_MS))
            recovered(a);
        if (!reply) {
            atomic_fetch_add_explicit(&a->failed_commands, 1, memory_order_relaxed);
            cdb__metrics_inc(CDB_M_REDIS_COMMAND_ERRORS);
        } else if (reply->type == REDIS_REPLY_ERROR) {
            cdb__metrics_inc(CDB_M_REDIS_COMMAND_ERRORS);
        }
    }
    a->in_callback++;
    p->cb(reply, p->arg);
    a->in_callback--;
    free(p);
}

static void arm_timer(cdb_aredis *a, int64_t now)
{
    int64_t ms = a->head ? a->head->deadline_ms - now : 0;
    struct timeval tv;
    if (!a->head)
        return;
    if (ms < 0)
        ms = 0;
    a->timer_at_ms = now + ms;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    evtimer_add(a->timer, &tv);
}

/* Starts the teardown of a's context for a reason (log-safe). Not inside
 * a callback of hiredis's, except where hiredis defers the free (a reply
 * callback: redisAsyncFree then only marks the context). */
static void fail_context(cdb_aredis *a, const char *why)
{
    if (!a->why[0])
        snprintf(a->why, sizeof a->why, "%s", why);
    a->st = AR_CLOSING;
    redisAsyncFree(a->ac);
}

/* hiredis's callback of every command: privdata is the record. */
static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    cdb_aredis *a = ac->data;
    pending *p = privdata;
    redisReply *reply = r;

    if (!a)                 /* cannot happen: the cleanup hook runs after every callback */
        return;
    if (reply && p != a->head) {
        /* a reply for another record than the oldest: the stream is out of step */
        reply = NULL;
        fail_context(a, "replies out of order");
    } else if (!reply && a->st != AR_CLOSING) {
        /* hiredis is failing every pending command: the connection is lost */
        a->st = AR_CLOSING;
    }
    unlink_record(a, p);
    run_record(a, p, reply);
}

/* ---- the reply parser's guard --------------------------------------------- */

/* A top-level reply is parsed only after the one before it was handed out, so
 * a record must be waiting for it; when none is, the server sent it unasked. */
static bool unasked(const redisReadTask *t)
{
    cdb_aredis *a = t->privdata;
    if (t->parent || !a || a->head)
        return false;
    if (!a->why[0])
        snprintf(a->why, sizeof a->why, "the server sent a reply no command asked for");
    return true;
}

static void *guard_string(const redisReadTask *t, char *str, size_t len)
{
    cdb_aredis *a = t->privdata;
    return unasked(t) ? NULL : a->reader_fn->createString(t, str, len);
}

static void *guard_array(const redisReadTask *t, int elements)
{
    cdb_aredis *a = t->privdata;
    return unasked(t) ? NULL : a->reader_fn->createArray(t, elements);
}

static void *guard_integer(const redisReadTask *t, long long value)
{
    cdb_aredis *a = t->privdata;
    return unasked(t) ? NULL : a->reader_fn->createInteger(t, value);
}

static void *guard_nil(const redisReadTask *t)
{
    cdb_aredis *a = t->privdata;
    return unasked(t) ? NULL : a->reader_fn->createNil(t);
}

/* NULL from a constructor is a parse error to hiredis: the connection closes. The objects
 * are hiredis's own, so they are freed with its function (no reader context there). */
static redisReplyObjectFunctions guard_fn = {guard_string, guard_array, guard_integer, guard_nil,
                                             freeReplyObject};

/* ---- connection life ----------------------------------------------------- */

static void note_failure(cdb_aredis *a)
{
    int retry = a->backoff_ms;
    atomic_fetch_add_explicit(&a->failures, 1, memory_order_relaxed);
    a->retry_at_ms = cdb_mono_ms() + retry;
    a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
    if (!a->down)
        cdb_log_warn("redis_async_unavailable",
                     "Redis %s unavailable to the event loop (%s); retrying in %d ms",
                     cdb_redis_display_url(a->sync), a->why, retry);
    else
        cdb_log_debug("redis_async_unavailable", "Redis %s still unavailable to the event loop (%s)",
                      cdb_redis_display_url(a->sync), a->why);
    a->down = true;
}

/* The context is gone (called from its cleanup hook, before hiredis frees it). */
static void context_gone(cdb_aredis *a, redisAsyncContext *ac)
{
    pending *p;

    a->st = AR_CLOSING;
    a->ac = NULL;
    if (!a->why[0] && ac->c.err)
        snprintf(a->why, sizeof a->why, "%s", ac->c.errstr[0] ? ac->c.errstr : "connection lost");
    /* records hiredis did not know: each still gets its one call */
    while ((p = a->head)) {
        unlink_record(a, p);
        run_record(a, p, NULL);
    }
    if (a->why[0] && !a->freeing)
        note_failure(a);
    a->why[0] = '\0';
    a->handshake_left = 0;
    a->st = AR_IDLE;
}

/* Wraps the event adapter's cleanup: the adapter's events go, then we learn the context is gone. */
static void on_cleanup(void *privdata)
{
    redisAsyncContext *ac = cdb__redis_events_context(privdata);
    cdb_aredis *a = ac->data;

    cdb__redis_events_cleanup(privdata);
    ac->data = NULL;
    if (a)
        context_gone(a, ac);
}

static void handshake_step(cdb_aredis *a)
{
    if (--a->handshake_left > 0 || a->st != AR_CONNECTING)
        return;
    a->st = AR_READY;
    /* back after a failure the blocking pool may not have met: what Redis holds waits for the
     * resync (the loop trusts it no sooner: cdb_qcache_resync_pending), as after the pool's own */
    if (a->down)
        cdb_redis_note_return(a->sync);
    atomic_fetch_add_explicit(&a->connects, 1, memory_order_relaxed);
}

/* The first reply to a caller's command after a failure: Redis works again. Not at the
 * handshake: a server that fails right after it would reconnect every 100 ms and log twice each. */
static void recovered(cdb_aredis *a)
{
    a->backoff_ms = BACKOFF_MIN_MS;
    if (a->down)
        cdb_log_info("redis_async_recovered", "Redis %s available to the event loop again",
                     cdb_redis_display_url(a->sync));
    a->down = false;
}

/* The handshake's replies. NULL: the connection is failing already (context_gone says why). */
static void on_auth(redisReply *reply, void *arg)
{
    cdb_aredis *a = arg;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Redis's text is not copied: a reason is logged and must never echo a credential */
        fail_context(a, "AUTH refused");
        return;
    }
    handshake_step(a);
}

static void on_select(redisReply *reply, void *arg)
{
    cdb_aredis *a = arg;
    char why[160];
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "SELECT refused: %.120s", reply->str);
        fail_context(a, why);
        return;
    }
    handshake_step(a);
}

/* With sentinels: the address the pool verified may have been demoted since. */
static void on_role(redisReply *reply, void *arg)
{
    cdb_aredis *a = arg;
    if (!reply)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_STRING || strcmp(reply->element[0]->str, "master") != 0) {
        fail_context(a, "the server is not the master (ROLE)");
        return;
    }
    handshake_step(a);
}

static void on_ping(redisReply *reply, void *arg)
{
    cdb_aredis *a = arg;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof why, "PING refused: %.120s", reply->str);
        fail_context(a, why);
        return;
    }
    handshake_step(a);
}

/* Appends a record and its command to the context. -1: nothing queued. */
static int enqueue(cdb_aredis *a, cdb_aredis_cb cb, void *arg, bool internal, int64_t now,
                   int64_t deadline_ms, int argc, const char **argv, const size_t *argvlen)
{
    pending *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->cb = cb;
    p->arg = arg;
    p->internal = internal;
    p->deadline_ms = deadline_ms;
    if (redisAsyncCommandArgv(a->ac, on_reply, p, argc, argv, argvlen) != REDIS_OK) {
        free(p);
        return -1;
    }
    /* hiredis never calls back from inside redisAsyncCommandArgv, so the record can follow */
    if (a->tail)
        a->tail->next = p;
    else
        a->head = p;
    a->tail = p;
    /* the timer may already fire before this deadline (commands' deadlines only grow;
     * the handshake's, the connect timeout, may be later) */
    if (!evtimer_pending(a->timer, NULL) || a->timer_at_ms > deadline_ms)
        arm_timer(a, now);
    return 0;
}

/* Queues the handshake: AUTH, SELECT, ROLE as needed, else a PING; -1 on out of memory. */
static int queue_handshake(cdb_aredis *a, const cdb_redis_endpoint *ep, int64_t now, int64_t deadline)
{
    char db[16];
    int n = 0;

    if (ep->password) {
        const char *argv[3] = {"AUTH", ep->user ? ep->user : ep->password, ep->password};
        if (enqueue(a, on_auth, a, true, now, deadline, ep->user ? 3 : 2, argv, NULL) < 0)
            return -1;
        n++;
    }
    if (ep->db != 0) {
        const char *argv[2] = {"SELECT", db};
        snprintf(db, sizeof db, "%d", ep->db);
        if (enqueue(a, on_select, a, true, now, deadline, 2, argv, NULL) < 0)
            return -1;
        n++;
    }
    if (ep->sentinel) {
        const char *argv[1] = {"ROLE"};
        if (enqueue(a, on_role, a, true, now, deadline, 1, argv, NULL) < 0)
            return -1;
        n++;
    }
    if (n == 0) {
        /* nothing else would tell that the connect completed */
        const char *argv[1] = {"PING"};
        if (enqueue(a, on_ping, a, true, now, deadline, 1, argv, NULL) < 0)
            return -1;
        n++;
    }
    a->handshake_left = n;
    return 0;
}

static void start_connect(cdb_aredis *a)
{
    cdb_redis_endpoint ep;
    redisAsyncContext *ac;
    int64_t now = cdb_mono_ms();

    a->master_changes = cdb_redis_master_changes(a->sync);
    if (cdb_redis_endpoint_get(a->sync, &ep) < 0) {
        /* no master known yet (the pool asks the sentinels on its next command),
         * or out of memory: look again a little later, quietly */
        a->retry_at_ms = now + BACKOFF_MIN_MS;
        return;
    }
    a->sentinel = ep.sentinel;
    a->why[0] = '\0';
    ac = redisAsyncConnect(ep.host, ep.port);
    if (!ac || ac->err || cdb__redis_events_attach(ac, a->base) < 0) {
        snprintf(a->why, sizeof a->why, "connect: %s", ac && ac->err ? ac->c.errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);     /* not attached: no callbacks, no cleanup hook */
        note_failure(a);
        a->why[0] = '\0';
        goto out;
    }
    ac->data = a;
    a->reader_fn = ac->c.reader->fn;
    ac->c.reader->fn = &guard_fn;
    ac->c.reader->privdata = a;
    ac->ev.cleanup = on_cleanup;
    a->ac = ac;
    a->st = AR_CONNECTING;
    if (queue_handshake(a, &ep, now, now + ep.connect_timeout_ms) < 0)
        fail_context(a, "out of memory");
out:
    cdb_redis_endpoint_destroy(&ep);
}

/* The oldest record's deadline passed: fail the connection (outside any hiredis callback). */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    cdb_aredis *a = arg;
    int64_t now = cdb_mono_ms();
    char why[80];

    (void)fd;
    (void)what;
    if (!a->head || !a->ac)
        return;
    if (a->head->deadline_ms > now) {
        arm_timer(a, now);
        return;
    }
    atomic_fetch_add_explicit(&a->timeouts, 1, memory_order_relaxed);
    if (a->st == AR_CONNECTING)
        snprintf(why, sizeof why, "no answer to the connect or handshake in time");
    else
        snprintf(why, sizeof why, "a command had no reply within %d ms", a->command_timeout_ms);
    fail_context(a, why);
}

/* ---- public API ---------------------------------------------------------- */

cdb_aredis *cdb_aredis_new(struct event_base *base, cdb_redis *sync, int command_timeout_ms)
{
    cdb_aredis *a;

    if (!base || !sync || command_timeout_ms <= 0)
        return NULL;
    a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->base = base;
    a->sync = sync;
    a->command_timeout_ms = command_timeout_ms;
    a->backoff_ms = BACKOFF_MIN_MS;
    a->st = AR_IDLE;
    a->timer = evtimer_new(base, on_timer, a);
    if (!a->timer) {
        free(a);
        return NULL;
    }
    return a;
}

void cdb_aredis_free(cdb_aredis *a)
{
    if (!a)
        return;
    if (a->in_callback) {
        /* the callback's caller would touch freed memory when it returns */
        cdb_log_error("redis_async_misuse", "cdb_aredis_free called from one of its callbacks");
        abort();
    }
    a->freeing = true;
    if (a->ac)
        fail_context(a, "closing");   /* every pending callback runs with NULL now */
    event_free(a->timer);
    free(a);
}

bool cdb_aredis_ready(cdb_aredis *a)
{
    if (a->st == AR_READY) {
        if (!a->sentinel || cdb_redis_master_changes(a->sync) == a->master_changes)
            return true;
        /* the pool followed a failover: finish what is pending, then go to the new master */
        a->st = AR_CLOSING;
        redisAsyncDisconnect(a->ac);
        return false;
    }
    if (a->st == AR_IDLE && !a->freeing && cdb_mono_ms() >= a->retry_at_ms)
        start_connect(a);
    return false;
}

/* Commands after which a connection no longer answers once per command, or is in another state. */
static bool refused_command(const char *name, size_t len)
{
    static const char *const refused[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                          "PUNSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR", "RESET",
                                          "QUIT", "HELLO", "AUTH", "SELECT", "CLIENT"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        if (len == strlen(refused[i]) && strncasecmp(name, refused[i], len) == 0)
            return true;
    return false;
}

bool cdb_aredis_send(cdb_aredis *a, cdb_aredis_cb cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen)
{
    if (a->st != AR_READY || !cb || argc < 1 || !argv || !argv[0])
        return false;
    if (refused_command(argv[0], argvlen ? argvlen[0] : strlen(argv[0])))
        return false;
    int64_t now = cdb_mono_ms();
    return enqueue(a, cb, arg, false, now, now + a->command_timeout_ms, argc, argv, argvlen) == 0;
}

void cdb_aredis_stats_get(cdb_aredis *a, cdb_aredis_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!a)
        return;
    st->connects = atomic_load_explicit(&a->connects, memory_order_relaxed);
    st->failures = atomic_load_explicit(&a->failures, memory_order_relaxed);
    st->timeouts = atomic_load_explicit(&a->timeouts, memory_order_relaxed);
    st->failed_commands = atomic_load_explicit(&a->failed_commands, memory_order_relaxed);
}
