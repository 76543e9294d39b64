/*
 * redis.c - a bounded pool of blocking hiredis connections (see redis.h).
 *
 * Connections are made lazily, one per concurrent caller, up to pool_size;
 * an idle one is reused last-in first-out so the warmest socket serves next
 * and surplus ones simply stay idle. A command runs outside the pool lock.
 *
 * Failure policy: any I/O failure (NULL reply, c->err, failed connect, AUTH
 * or SELECT refused) drops the failing connection and every idle one (they
 * point at the same server, which probably restarted or died) and marks the
 * pool down for a backoff interval, 100 ms doubling to 2 s. While down no
 * connect is attempted, so callers get CACHE_UNAVAILABLE at once instead of a
 * connect timeout each; when the interval is over one caller probes with a
 * real connect and the others keep failing fast until it answers. A
 * successful command resets the backoff. Only transitions are logged.
 *
 * With Redis Sentinel every new connection first asks the sentinels where
 * the master is (redis_sentinel.c) and then checks with ROLE that the
 * server it reached says "master": a failover is followed on the next
 * reconnect, which the failure that a dead master causes triggers anyway.
 * A demoted master that still answers is caught by its READONLY replies,
 * which count as a broken connection here, and a connection released to
 * the pool after the master moved is closed instead of kept.
 */
#include "store/redis.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "store/redis_sentinel.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

struct cdb_redis {
    char *host;
    int port;
    int db;
    char *user;                  /* NULL: AUTH with the password alone */
    char *password;              /* NULL: no AUTH */
    char *display_url;           /* password redacted; safe to log */
    int pool_size;
    int connect_timeout_ms;
    int command_timeout_ms;

    pthread_mutex_t mu;          /* guards everything below */
    pthread_cond_t cv;           /* signalled when a slot or idle conn frees */
    redisContext **idle;         /* stack of healthy unused connections */
    int nidle;
    int total;                   /* connections existing or being made */
    _Atomic bool down;           /* last outcome was a failure (written under mu, read anywhere) */
    bool probing;                /* a caller is trying to reconnect */
    int backoff_ms;              /* next down interval */
    _Atomic uint64_t recoveries; /* times Redis came back after being down */
    int64_t retry_at_ms;         /* while down, no connect before this */
    char last_why[240];          /* the last failure's reason, log-safe */

    cdb__sentinel_set *sentinels; /* NULL: host and port are the server */
    char master_host[CDB_SENTINEL_HOST_MAX]; /* the last master a connect verified */
    int master_port;
    _Atomic uint64_t master_changes;
    _Atomic int64_t no_replica_until; /* cdb_redis_sync_replica does not wait before this */
    _Atomic int64_t last_ack_ms;      /* when a replica last confirmed; 0: never */
    /* the numeric address a connect to peer_of:peer_port last reached, so that a
     * connection made on an event loop (cdb_redis_endpoint_get) needs no name lookup */
    char peer_addr[INET6_ADDRSTRLEN];
    char peer_of[CDB_SENTINEL_HOST_MAX];
    int peer_port;
};

/* ---- URL parsing --------------------------------------------------------- */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* *out = s[0..n) with %XX escapes decoded. */
static int pct_decode(const char *s, size_t n, char **out, cdb_error *err)
{
    char *d = malloc(n + 1);
    size_t o = 0;
    if (!d)
        return cdb_error_oom(err);
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] != '%') {
            d[o++] = s[i];
            continue;
        }
        hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
        lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(d);
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                 "invalid Redis URL: bad %%-escape in the credentials");
        }
        d[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    d[o] = '\0';
    *out = d;
    return 0;
}

/* Parses a decimal in [lo, hi] from s[0..n); -1 if it is not one. */
static long parse_num(const char *s, size_t n, long lo, long hi)
{
    long v = 0;
    if (n == 0 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi ? v : -1;
}

/*
 * redis://[[user]:password@]host[:port][/db]. The userinfo ends at the last
 * '@' so an unencoded '@' or '/' in a password still parses. Messages never
 * quote the URL: it may hold the password.
 */
static int parse_url(cdb_redis *r, const char *url, cdb_error *err)
{
    static const char scheme[] = "redis://";
    const char *p, *at, *host, *end;
    size_t hostlen;

    if (!url || strncmp(url, scheme, sizeof scheme - 1) != 0)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "invalid Redis URL: expected redis://[[user]:password@]host[:port][/db]");
    p = url + sizeof scheme - 1;
    at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                 "invalid Redis URL: credentials must be [user]:password@");
        int rc = 0;
        if (colon > p)
            rc = pct_decode(p, (size_t)(colon - p), &r->user, err);
        if (rc == 0 && at > colon + 1)
            rc = pct_decode(colon + 1, (size_t)(at - colon - 1), &r->password, err);
        if (rc < 0)
            return rc;
        p = at + 1;
    }

    host = p;
    while (*p && (isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_'))
        p++;
    hostlen = (size_t)(p - host);
    if (hostlen == 0 || hostlen > 253)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "invalid Redis URL: missing or malformed host");
    if (!(r->host = strndup(host, hostlen)))
        return cdb_error_oom(err);

    r->port = 6379;
    if (*p == ':') {
        end = p + 1 + strcspn(p + 1, "/");
        long port = parse_num(p + 1, (size_t)(end - p - 1), 1, 65535);
        if (port < 0)
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "invalid Redis URL: bad port");
        r->port = (int)port;
        p = end;
    }

    r->db = 0;
    if (*p == '/' && p[1] != '\0') {
        long db = parse_num(p + 1, strlen(p + 1), 0, INT_MAX);
        if (db < 0)
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                 "invalid Redis URL: database must be a number");
        r->db = (int)db;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "invalid Redis URL: unexpected text after the host");
    }

    if (asprintf(&r->display_url, "redis://%s%s%s:%d/%d",
                 r->user ? r->user : "", r->user || r->password ? ":[redacted]@" : "",
                 r->host, r->port, r->db) < 0) {
        r->display_url = NULL;
        return cdb_error_oom(err);
    }
    return 0;
}

/* ---- the pool ------------------------------------------------------------ */

#define SENTINEL_TIMEOUT_MS 500

static struct timeval ms_tv(int ms)
{
    struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
    return tv;
}

/*
 * With sentinels: whether c, just connected to host:port, is the master
 * (ROLE), and if so records the address, counting a move. A sentinel that
 * has not yet seen a failover, or a hostile one, can name a replica; it is
 * refused, and the pool backs off and asks again.
 */
static int check_master(cdb_redis *r, redisContext *c, const char *host, int port, char *why,
                        size_t whylen)
{
    redisReply *reply = redisCommand(c, "ROLE");
    char old[CDB_SENTINEL_HOST_MAX + 8] = "";
    bool moved = false;
    int rc = -1;

    if (!reply || c->err) {
        snprintf(why, whylen, "ROLE at %.80s:%d: %.60s", host, port, c->err ? c->errstr : "no reply");
        goto out;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_STRING || strcmp(reply->element[0]->str, "master") != 0) {
        snprintf(why, whylen, "%.80s:%d, named by the sentinels, is not a master", host, port);
        goto out;
    }
    pthread_mutex_lock(&r->mu);
    if (r->master_port != port || strcmp(r->master_host, host) != 0) {
        moved = r->master_port != 0;
        snprintf(old, sizeof old, "%s:%d", r->master_host, r->master_port);
        snprintf(r->master_host, sizeof r->master_host, "%s", host);
        r->master_port = port;
        if (moved)
            atomic_fetch_add(&r->master_changes, 1);
    }
    pthread_mutex_unlock(&r->mu);
    if (moved)
        cdb_log_warn("redis_master_changed", "Redis master \"%s\" moved from %s to %s:%d",
                     cdb__sentinel_master_name(r->sentinels), old, host, port);
    else if (old[0])
        cdb_log_info("redis_master", "Redis master \"%s\" is %s:%d",
                     cdb__sentinel_master_name(r->sentinels), host, port);
    rc = 0;
out:
    freeReplyObject(reply);
    return rc;
}

/* Remembers the numeric address c reached for host:port (see peer_addr). */
static void record_peer(cdb_redis *r, const redisContext *c, const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char addr[INET6_ADDRSTRLEN] = "";

    if (getpeername(c->fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof addr);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof addr);
    if (!addr[0])
        return;
    pthread_mutex_lock(&r->mu);
    snprintf(r->peer_addr, sizeof r->peer_addr, "%s", addr);
    snprintf(r->peer_of, sizeof r->peer_of, "%s", host);
    r->peer_port = port;
    pthread_mutex_unlock(&r->mu);
}

/*
 * A new connection, authenticated and on the right database, or NULL with a
 * log-safe reason in why. AUTH's error text is not copied: the reason is
 * logged and must never be able to echo a credential.
 */
static redisContext *connect_one(cdb_redis *r, char *why, size_t whylen)
{
    char host[CDB_SENTINEL_HOST_MAX];
    int port = r->port;
    redisContext *c;
    redisReply *reply = NULL;

    if (r->sentinels) {
        /* a sentinel that does not answer must not cost the full connect timeout */
        int t = r->connect_timeout_ms < SENTINEL_TIMEOUT_MS ? r->connect_timeout_ms : SENTINEL_TIMEOUT_MS;
        if (cdb__sentinel_master(r->sentinels, t, host, &port, why, whylen) < 0)
            return NULL;
    } else {
        snprintf(host, sizeof host, "%s", r->host);
    }
    c = redisConnectWithTimeout(host, port, ms_tv(r->connect_timeout_ms));
    if (!c) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (c->err || redisSetTimeout(c, ms_tv(r->command_timeout_ms)) != REDIS_OK) {
        snprintf(why, whylen, "connect: %s", c->errstr);
        goto fail_free_ctx;
    }
    if (r->password) {
        if (r->user)
            reply = redisCommand(c, "AUTH %s %s", r->user, r->password);
        else
            reply = redisCommand(c, "AUTH %s", r->password);
        if (!reply || c->err || reply->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "AUTH: %s", c->err ? c->errstr : "authentication failed");
            goto fail_free_ctx;
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    if (r->db != 0) {
        reply = redisCommand(c, "SELECT %d", r->db);
        if (!reply || c->err || reply->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "SELECT %d: %s", r->db,
                     c->err ? c->errstr : reply ? reply->str : "no reply");
            goto fail_free_ctx;
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    if (r->sentinels && check_master(r, c, host, port, why, whylen) < 0)
        goto fail_free_ctx;
    record_peer(r, c, host, port);
    return c;

fail_free_ctx:
    freeReplyObject(reply);
    redisFree(c);
    return NULL;
}

/* Caller holds r->mu. */
static void mark_down_locked(cdb_redis *r, const char *why)
{
    while (r->nidle > 0) {
        redisFree(r->idle[--r->nidle]);
        r->total--;
    }
    if (!r->down)
        cdb_log_warn("redis_unavailable", "Redis %s unavailable (%s); retrying in %d ms",
                     r->display_url, why, r->backoff_ms);
    else
        cdb_log_debug("redis_unavailable", "Redis %s still unavailable (%s); retrying in %d ms",
                      r->display_url, why, r->backoff_ms);
    r->down = true;
    snprintf(r->last_why, sizeof r->last_why, "%s", why);
    r->retry_at_ms = cdb_mono_ms() + r->backoff_ms;
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
    pthread_cond_broadcast(&r->cv);
}

/* Caller holds r->mu. */
static void mark_up_locked(cdb_redis *r)
{
    if (r->down) {
        cdb_log_info("redis_recovered", "Redis %s available again", r->display_url);
        atomic_fetch_add(&r->recoveries, 1);
    }
    r->down = false;
    r->last_why[0] = '\0';
    r->backoff_ms = BACKOFF_MIN_MS;
}

/*
 * A connection for one command: an idle one, else a new one if the pool has
 * room and is not backing off, else wait up to command_timeout for one.
 */
static redisContext *acquire(cdb_redis *r, cdb_error *err)
{
    int64_t deadline = cdb_mono_ms() + r->command_timeout_ms;
    struct timespec ts = { .tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000 };
    redisContext *c = NULL;

    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->nidle > 0) {
            c = r->idle[--r->nidle];
            break;
        }
        if (r->total < r->pool_size) {
            char why[240];
            bool probe = r->down;
            if (r->down && (r->probing || cdb_mono_ms() < r->retry_at_ms))
                break;
            r->total++;
            r->probing = probe;
            pthread_mutex_unlock(&r->mu);
            c = connect_one(r, why, sizeof why);
            pthread_mutex_lock(&r->mu);
            if (probe)
                r->probing = false;
            if (!c) {
                r->total--;
                mark_down_locked(r, why);
            }
            break;
        }
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0 && r->nidle == 0 &&
            r->total >= r->pool_size) {
            pthread_mutex_unlock(&r->mu);
            cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis pool exhausted");
            return NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!c)
        cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis unavailable");
    return c;
}

/* Returns c to the pool; broken (a reason) drops it and backs off. */
static void release(cdb_redis *r, redisContext *c, const char *broken)
{
    pthread_mutex_lock(&r->mu);
    if (broken) {
        mark_down_locked(r, broken);
        redisFree(c);
        r->total--;
    } else if (r->sentinels && (c->tcp.port != r->master_port || !c->tcp.host ||
                                strcmp(c->tcp.host, r->master_host) != 0)) {
        /* made before the master moved: it still works, but at the wrong server */
        redisFree(c);
        r->total--;
    } else {
        r->idle[r->nidle++] = c;
        mark_up_locked(r);
    }
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* A connection is broken when a command got no reply or left c->err set. */
static const char *broken_reason(const cdb_redis *r, const redisContext *c, const redisReply *reply)
{
    /* a demoted master: reconnect, which asks the sentinels again */
    if (r->sentinels && reply && !c->err && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "READONLY", 8) == 0)
        return "the server is no longer the master (READONLY)";
    if (reply && !c->err)
        return NULL;
    return c->errstr[0] ? c->errstr : "no reply";
}

static const char *master_moved(cdb_redis *r, char *buf, size_t len);

/* Releases c after a command and turns an I/O failure into CACHE_UNAVAILABLE. */
static redisReply *finish(cdb_redis *r, redisContext *c, redisReply *reply, cdb_error *err)
{
    char moved[CDB_SENTINEL_HOST_MAX + 64];
    const char *broken = broken_reason(r, c, reply);
    /* a master with min-replicas-to-write whose replica left: maybe because
     * it was promoted (a planned failover); if so, follow it */
    if (!broken && r->sentinels && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "NOREPLICAS", 10) == 0)
        broken = master_moved(r, moved, sizeof moved);
    if (broken || reply->type == REDIS_REPLY_ERROR)
        cdb__metrics_inc(CDB_M_REDIS_COMMAND_ERRORS);
    if (broken) {
        freeReplyObject(reply);
        reply = NULL;
        cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis unavailable");
    }
    release(r, c, broken);
    return reply;
}

/* ---- public API ---------------------------------------------------------- */

/* The logged name of a pool behind sentinels: no host of its own, the URL's credentials redacted. */
static int set_sentinel_display(cdb_redis *r)
{
    free(r->display_url);
    if (asprintf(&r->display_url, "master \"%s\" via sentinels %s (%s%sdb %d)",
                 cdb__sentinel_master_name(r->sentinels), cdb__sentinel_list(r->sentinels),
                 r->user ? r->user : "", r->user || r->password ? ":[redacted], " : "", r->db) < 0) {
        r->display_url = NULL;
        return -1;
    }
    return 0;
}

cdb_redis *cdb_redis_new(const cdb_redis_options *opt, cdb_error *err)
{
    cdb_redis *r;
    pthread_condattr_t ca;

    if (opt->pool_size < 1 || opt->connect_timeout_ms < 0 || opt->command_timeout_ms < 0) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                      "Redis pool size must be >= 1 and timeouts >= 0");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        cdb_error_oom(err);
        return NULL;
    }
    r->pool_size = opt->pool_size;
    r->connect_timeout_ms = opt->connect_timeout_ms ? opt->connect_timeout_ms : 1000;
    r->command_timeout_ms = opt->command_timeout_ms ? opt->command_timeout_ms : 1000;
    r->backoff_ms = BACKOFF_MIN_MS;
    if (opt->sentinels) {
        if (!opt->master_name || !*opt->master_name) {
            cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "REDIS_MASTER_NAME: required with REDIS_SENTINELS");
            goto fail_free_fields;
        }
        r->sentinels = cdb__sentinel_set_new(opt->sentinels, opt->master_name, opt->sentinel_password, err);
        if (!r->sentinels)
            goto fail_free_fields;
    }
    if (opt->url && parse_url(r, opt->url, err) < 0)
        goto fail_free_fields;
    if (!opt->url && !r->sentinels) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "Redis needs a URL or sentinels");
        goto fail_free_fields;
    }
    if (r->sentinels && set_sentinel_display(r) < 0) {
        cdb_error_oom(err);
        goto fail_free_fields;
    }
    r->idle = calloc((size_t)r->pool_size, sizeof *r->idle);
    if (!r->idle) {
        cdb_error_oom(err);
        goto fail_free_fields;
    }
    /* Waits are measured on the monotonic clock, like every deadline here. */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&r->mu, NULL);
    return r;

fail_free_fields:
    cdb__sentinel_set_free(r->sentinels);
    if (r->password)
        explicit_bzero(r->password, strlen(r->password));
    free(r->password);
    free(r->user);
    free(r->host);
    free(r->display_url);
    free(r->idle);
    free(r);
    return NULL;
}

/* Every connection must have been released: the pool cannot free a borrowed one. */
void cdb_redis_free(cdb_redis *r)
{
    if (!r)
        return;
    while (r->nidle > 0)
        redisFree(r->idle[--r->nidle]);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    cdb__sentinel_set_free(r->sentinels);
    if (r->password)
        explicit_bzero(r->password, strlen(r->password));
    free(r->password);
    free(r->user);
    free(r->host);
    free(r->display_url);
    free(r->idle);
    free(r);
}

redisReply *cdb_redis_command_argv(cdb_redis *r, int argc, const char **argv,
                                   const size_t *argvlen, cdb_error *err)
{
    redisContext *c = acquire(r, err);
    if (!c) {
        cdb__metrics_inc(CDB_M_REDIS_COMMAND_ERRORS);
        return NULL;
    }
    return finish(r, c, redisCommandArgv(c, argc, argv, argvlen), err);
}

redisReply *cdb_redis_command(cdb_redis *r, cdb_error *err, const char *fmt, ...)
{
    redisContext *c = acquire(r, err);
    redisReply *reply;
    va_list ap;

    if (!c) {
        cdb__metrics_inc(CDB_M_REDIS_COMMAND_ERRORS);
        return NULL;
    }
    va_start(ap, fmt);
    reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    return finish(r, c, reply, err);
}

/* Copies the used_memory_human field of an INFO reply into out. */
static void copy_used_memory(const redisReply *info, char *out, size_t len)
{
    static const char field[] = "used_memory_human:";
    const char *p = info->type == REDIS_REPLY_STRING ? strstr(info->str, field) : NULL;
    size_t n;

    out[0] = '\0';
    if (!p)
        return;
    p += sizeof field - 1;
    n = strcspn(p, "\r\n");
    snprintf(out, len, "%.*s", (int)n, p);
}

int cdb_redis_ping(cdb_redis *r, int64_t *rtt_us, char *memory, size_t memory_len, cdb_error *err)
{
    redisContext *c = acquire(r, err);
    redisReply *reply;
    const char *broken;
    int64_t t0;
    int rc = 0;

    if (memory && memory_len > 0)
        memory[0] = '\0';
    if (!c)
        return CDB_ERR_CACHE_UNAVAILABLE;
    t0 = cdb_mono_us();
    reply = redisCommand(c, "PING");
    if (rtt_us)
        *rtt_us = cdb_mono_us() - t0;
    broken = broken_reason(r, c, reply);
    if (broken)
        goto out_release;
    if (reply->type == REDIS_REPLY_ERROR) {
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis refused PING");
        goto out_release;
    }
    if (memory && memory_len > 0) {
        freeReplyObject(reply);
        reply = redisCommand(c, "INFO memory");
        broken = broken_reason(r, c, reply);
        if (!broken)
            copy_used_memory(reply, memory, memory_len);
    }

out_release:
    if (broken)
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis unavailable");
    freeReplyObject(reply);
    release(r, c, broken);
    return rc;
}

const char *cdb_redis_display_url(const cdb_redis *r)
{
    return r->display_url;
}

void cdb_redis_note_return(cdb_redis *r)
{
    if (r)
        atomic_fetch_add(&r->recoveries, 1);
}

bool cdb_redis_up(cdb_redis *r)
{
    if (!r)
        return false;
    /* lock-free: the event loops ask on every request (http/loop_admit.c) */
    return !atomic_load(&r->down);
}

uint64_t cdb_redis_recoveries(cdb_redis *r)
{
    return r ? atomic_load(&r->recoveries) : 0;
}

bool cdb_redis_uses_sentinels(const cdb_redis *r)
{
    return r && r->sentinels != NULL;   /* set when the pool is made, never changed: no lock */
}

void cdb_redis_topology_get(cdb_redis *r, cdb_redis_topology *t)
{
    memset(t, 0, sizeof *t);
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    t->sentinel = r->sentinels != NULL;
    if (r->sentinels) {
        snprintf(t->master_name, sizeof t->master_name, "%s", cdb__sentinel_master_name(r->sentinels));
        if (r->master_port)
            snprintf(t->master, sizeof t->master, "%s:%d", r->master_host, r->master_port);
    } else {
        snprintf(t->master, sizeof t->master, "%s:%d", r->host, r->port);
    }
    if (r->down)
        snprintf(t->problem, sizeof t->problem, "%s", r->last_why);
    pthread_mutex_unlock(&r->mu);
    t->master_changes = atomic_load(&r->master_changes);
}

static bool is_numeric_host(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

int cdb_redis_endpoint_get(cdb_redis *r, cdb_redis_endpoint *ep)
{
    const char *host;
    int port, rc = -1;

    memset(ep, 0, sizeof *ep);
    pthread_mutex_lock(&r->mu);
    if (r->sentinels && r->master_port == 0)
        goto out_unlock;
    host = r->sentinels ? r->master_host : r->host;
    port = r->sentinels ? r->master_port : r->port;
    if (!is_numeric_host(host)) {
        /* a name: the address a pool connect found for it, never a lookup here */
        if (!r->peer_addr[0] || r->peer_port != port || strcmp(r->peer_of, host) != 0)
            goto out_unlock;
        host = r->peer_addr;
    }
    ep->host = strdup(host);
    ep->port = port;
    ep->user = r->user ? strdup(r->user) : NULL;
    ep->password = r->password ? strdup(r->password) : NULL;
    ep->db = r->db;
    ep->sentinel = r->sentinels != NULL;
    ep->connect_timeout_ms = r->connect_timeout_ms;
    if (!ep->host || (r->user && !ep->user) || (r->password && !ep->password))
        goto out_unlock;
    rc = 0;
out_unlock:
    pthread_mutex_unlock(&r->mu);
    if (rc < 0)
        cdb_redis_endpoint_destroy(ep);
    return rc;
}

void cdb_redis_endpoint_destroy(cdb_redis_endpoint *ep)
{
    if (ep->password)
        explicit_bzero(ep->password, strlen(ep->password));
    free(ep->password);
    free(ep->user);
    free(ep->host);
    memset(ep, 0, sizeof *ep);
}

uint64_t cdb_redis_master_changes(cdb_redis *r)
{
    return r ? atomic_load(&r->master_changes) : 0;
}

/*
 * No replica confirmed a write: either the master has none, or one of them
 * was just promoted and this server is a master about to be demoted. The
 * sentinels tell which. A reason (in buf) when they name another master;
 * NULL when they confirm this one or cannot be asked.
 */
static const char *master_moved(cdb_redis *r, char *buf, size_t len)
{
    char host[CDB_SENTINEL_HOST_MAX], why[240], cur[CDB_SENTINEL_HOST_MAX];
    int port = 0, cur_port;
    int t = r->connect_timeout_ms < SENTINEL_TIMEOUT_MS ? r->connect_timeout_ms : SENTINEL_TIMEOUT_MS;

    if (cdb__sentinel_master(r->sentinels, t, host, &port, why, sizeof why) < 0)
        return NULL;
    pthread_mutex_lock(&r->mu);
    snprintf(cur, sizeof cur, "%s", r->master_host);
    cur_port = r->master_port;
    pthread_mutex_unlock(&r->mu);
    if (port == cur_port && strcmp(host, cur) == 0)
        return NULL;
    snprintf(buf, len, "the sentinels moved the master to %.80s:%d", host, port);
    return buf;
}

/*
 * WAIT counts what the calling connection wrote, and the writes to protect
 * were made on others: a PUBLISH (replicated, touches no key) on this one
 * puts a mark in the replication stream after all of them, and a replica
 * that acknowledged the mark has everything before it.
 */
int cdb_redis_sync_replica(cdb_redis *r, cdb_error *err)
{
    redisReply *mark = NULL, *acked = NULL;
    const char *broken = NULL;
    char moved[CDB_SENTINEL_HOST_MAX + 64];
    redisContext *c;
    int rc = 0;

    if (!r || !r->sentinels || cdb_mono_ms() < atomic_load(&r->no_replica_until))
        return 0;
    if (!(c = acquire(r, err)))
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (redisAppendCommand(c, "PUBLISH coredb:replication-mark 1") != REDIS_OK ||
        redisAppendCommand(c, "WAIT 1 %d", CDB_REDIS_REPLICA_WAIT_MS) != REDIS_OK ||
        redisGetReply(c, (void **)&mark) != REDIS_OK || (broken = broken_reason(r, c, mark)) ||
        redisGetReply(c, (void **)&acked) != REDIS_OK || (broken = broken_reason(r, c, acked))) {
        if (!broken)
            broken = c->errstr[0] ? c->errstr : "no reply";
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis unavailable");
        goto out_release;
    }
    if (acked->type == REDIS_REPLY_INTEGER && acked->integer >= 1) {
        rc = 1;
        atomic_store(&r->last_ack_ms, cdb_mono_ms());
    } else if ((broken = master_moved(r, moved, sizeof moved))) {
        /* the replica was promoted while this server still takes writes
         * (a planned failover): what it took dies with its demotion */
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis master moved");
    } else if (atomic_load(&r->last_ack_ms) &&
               cdb_mono_ms() - atomic_load(&r->last_ack_ms) < CDB_REDIS_REPLICA_GRACE_MS) {
        /* a replica confirmed a moment ago: it may be being promoted and the
         * sentinels not say so yet. Unconfirmed writes are kept (applied
         * again, at least once) rather than risked, for a short while only:
         * a replica that simply died must not repeat them for long. */
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "no replica confirmed the writes");
    } else {
        atomic_store(&r->no_replica_until, cdb_mono_ms() + CDB_REDIS_REPLICA_PAUSE_MS);
        cdb_log_warn("redis_no_replica", "no Redis replica acknowledged writes within %d ms; "
                     "a failover now may lose the latest ones (not waiting again for %d s)",
                     CDB_REDIS_REPLICA_WAIT_MS, CDB_REDIS_REPLICA_PAUSE_MS / 1000);
    }
out_release:
    freeReplyObject(mark);
    freeReplyObject(acked);
    release(r, c, broken);
    return rc;
}
