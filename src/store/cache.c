/*
 * cache.c - the key/value cache of cache.h over Redis or an in-process table.
 *
 * The rule every caller relies on: the cache may lose anything at any time.
 * An entry can expire, be evicted, vanish with a Redis restart or be
 * unreachable while Redis is down, so a value read here is only ever a copy
 * of something recomputable, a miss and a failure mean the same ("compute it
 * again"), and nothing is written only here. That is what lets the service
 * keep serving with Redis gone, and lets the in-process table be a plain
 * bounded table instead of a faithful copy of Redis.
 *
 * Redis backend: GET, SET ... EX, DEL and INCR through the cdb_redis pool;
 * I/O failures come back as CACHE_UNAVAILABLE.
 *
 * In-process backend (no REDIS_URL): a bounded table (core/kvtable.h) under
 * one mutex, max_entries entries (0 means 65536), expiry lazy, the oldest
 * writes evicted first.
 */
#include "store/cache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kvtable.h"
#include "core/timeutil.h"

#define DEFAULT_MAX_ENTRIES 65536

struct cdb_cache {
    cdb_redis *redis;            /* not owned; NULL: in-process table */
    cdb_inval *inval;            /* with Redis: invalidations of first-level caches (owned) */
    pthread_mutex_t mu;          /* guards table */
    cdb_kvtable *table;
};

/* Parses exactly an optional '-' and 1..19 digits into an int64. */
static bool parse_i64(const char *s, size_t len, int64_t *out)
{
    char buf[24];
    char *end;
    long long v;

    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (!(buf[0] == '-' || (buf[0] >= '0' && buf[0] <= '9')))
        return false;
    errno = 0;
    v = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0' || end == buf || (buf[0] == '-' && end == buf + 1))
        return false;
    *out = v;
    return true;
}

/* ---- Redis backend ------------------------------------------------------- */

/* Redis error replies that a retry may cure (the server is busy, loading, failing over). */
static bool transient_reply(const char *s)
{
    static const char *const prefixes[] = {
        "LOADING", "BUSY", "MASTERDOWN", "READONLY", "OOM", "TRYAGAIN", "CLUSTERDOWN",
        "NOREPLICAS", "NOAUTH", "NOPERM",
    };
    for (size_t k = 0; k < sizeof prefixes / sizeof *prefixes; k++)
        if (strncmp(s, prefixes[k], strlen(prefixes[k])) == 0)
            return true;
    return false;
}

bool cdb_cache_reply_transient(const char *s)
{
    return s && transient_reply(s);
}

/*
 * Maps a reply that is not the expected type to a failure: an error reply
 * retrying cannot cure (WRONGTYPE, not an integer) is VALIDATION_FAILED
 * with Redis's own words, anything else CACHE_UNAVAILABLE.
 */
static int unexpected_reply(redisReply *reply, const char *cmd, cdb_error *err)
{
    int rc;
    if (reply->type == REDIS_REPLY_ERROR && reply->str && !transient_reply(reply->str))
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "%s", reply->str);
    else if (reply->type == REDIS_REPLY_ERROR && reply->str)
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "%s", reply->str);
    else
        rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Redis %s failed", cmd);
    freeReplyObject(reply);
    return rc;
}

static int redis_get(cdb_cache *c, const char *key, char **value, size_t *len, cdb_error *err)
{
    const char *argv[] = { "GET", key };
    size_t argvlen[] = { 3, strlen(key) };
    redisReply *reply = cdb_redis_command_argv(c->redis, 2, argv, argvlen, err);
    char *copy;

    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (reply->type == REDIS_REPLY_NIL) {
        freeReplyObject(reply);
        return 0;
    }
    if (reply->type != REDIS_REPLY_STRING)
        return unexpected_reply(reply, "GET", err);
    copy = malloc(reply->len + 1);
    if (!copy) {
        freeReplyObject(reply);
        return cdb_error_oom(err);
    }
    memcpy(copy, reply->str, reply->len);
    copy[reply->len] = '\0';
    *value = copy;
    *len = reply->len;
    freeReplyObject(reply);
    return 1;
}

static int redis_set(cdb_cache *c, const char *key, const char *value, size_t len, int ttl_s,
                     cdb_error *err)
{
    char ttl[16];
    const char *argv[] = { "SET", key, value, "EX", ttl };
    size_t argvlen[] = { 3, strlen(key), len, 2, 0 };
    redisReply *reply;

    argvlen[4] = (size_t)snprintf(ttl, sizeof ttl, "%d", ttl_s);
    reply = cdb_redis_command_argv(c->redis, ttl_s > 0 ? 5 : 3, argv, argvlen, err);
    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_STATUS)
        return unexpected_reply(reply, "SET", err);
    freeReplyObject(reply);
    return 0;
}

static int redis_del(cdb_cache *c, const char *key, int *deleted, cdb_error *err)
{
    const char *argv[] = { "DEL", key };
    size_t argvlen[] = { 3, strlen(key) };
    redisReply *reply = cdb_redis_command_argv(c->redis, 2, argv, argvlen, err);

    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_INTEGER)
        return unexpected_reply(reply, "DEL", err);
    if (deleted)
        *deleted = (int)reply->integer;
    freeReplyObject(reply);
    return 0;
}

static int redis_expire(cdb_cache *c, const char *key, int ttl_s, bool *applied, cdb_error *err)
{
    char ttl[16];
    const char *argv[] = { "EXPIRE", key, ttl };
    size_t argvlen[] = { 6, strlen(key), 0 };
    argvlen[2] = (size_t)snprintf(ttl, sizeof ttl, "%d", ttl_s);
    redisReply *reply = cdb_redis_command_argv(c->redis, 3, argv, argvlen, err);

    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_INTEGER)
        return unexpected_reply(reply, "EXPIRE", err);
    if (applied)
        *applied = reply->integer == 1;
    freeReplyObject(reply);
    return 0;
}

static int redis_incr(cdb_cache *c, const char *key, int64_t *out, cdb_error *err)
{
    const char *argv[] = { "INCR", key };
    size_t argvlen[] = { 4, strlen(key) };
    redisReply *reply = cdb_redis_command_argv(c->redis, 2, argv, argvlen, err);

    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    /* "ERR value is not an integer or out of range": VALIDATION_FAILED, as in the in-process table */
    if (reply->type != REDIS_REPLY_INTEGER)
        return unexpected_reply(reply, "INCR", err);
    *out = reply->integer;
    freeReplyObject(reply);
    return 0;
}

/* ---- public API ---------------------------------------------------------- */

cdb_cache *cdb_cache_new(cdb_redis *redis, size_t max_entries)
{
    cdb_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->redis = redis;
    if ((!redis && !(c->table = cdb_kvtable_new(max_entries ? max_entries : DEFAULT_MAX_ENTRIES, 0))) ||
        (redis && !(c->inval = cdb_inval_new(redis)))) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void cdb_cache_free(cdb_cache *c)
{
    if (!c)
        return;
    cdb_inval_free(c->inval);
    cdb_kvtable_free(c->table);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

bool cdb_cache_is_redis(const cdb_cache *c)
{
    return c->redis != NULL;
}

cdb_redis *cdb_cache_redis(const cdb_cache *c)
{
    return c->redis;
}

cdb_inval *cdb_cache_inval(const cdb_cache *c)
{
    return c ? c->inval : NULL;
}

int cdb_cache_get(cdb_cache *c, const char *key, char **value, size_t *len, cdb_error *err)
{
    int rc = 0;

    if (c->redis)
        return redis_get(c, key, value, len, err);
    pthread_mutex_lock(&c->mu);
    const char *v = cdb_kvtable_get(c->table, key, len, NULL, cdb_mono_ms());
    if (v && !(*value = malloc(*len + 1)))
        rc = cdb_error_oom(err);
    else if (v) {
        memcpy(*value, v, *len + 1);
        rc = 1;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* MGET: one round trip for several keys. */
static int redis_get_many(cdb_cache *c, int n, const char *const *keys, char **values, size_t *lens,
                          cdb_error *err)
{
    const char *argv[1 + CDB_CACHE_GET_MANY_MAX] = {"MGET"};
    size_t argvlen[1 + CDB_CACHE_GET_MANY_MAX] = {4};
    for (int i = 0; i < n; i++) {
        argv[i + 1] = keys[i];
        argvlen[i + 1] = strlen(keys[i]);
    }
    redisReply *reply = cdb_redis_command_argv(c->redis, n + 1, argv, argvlen, err);
    if (!reply)
        return CDB_ERR_CACHE_UNAVAILABLE;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != (size_t)n)
        return unexpected_reply(reply, "MGET", err);
    for (int i = 0; i < n; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue; /* nil: a miss */
        if (!(values[i] = malloc(e->len + 1))) {
            freeReplyObject(reply);
            return cdb_error_oom(err);
        }
        memcpy(values[i], e->str, e->len);
        values[i][e->len] = '\0';
        lens[i] = e->len;
    }
    freeReplyObject(reply);
    return 0;
}

int cdb_cache_get_many(cdb_cache *c, int n, const char *const *keys, char **values, size_t *lens,
                       cdb_error *err)
{
    int rc = 0;
    for (int i = 0; i < n; i++)
        values[i] = NULL, lens[i] = 0;
    if (n < 1 || n > CDB_CACHE_GET_MANY_MAX)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "bad key count");
    if (c->redis)
        rc = redis_get_many(c, n, keys, values, lens, err);
    else
        for (int i = 0; i < n && rc >= 0; i++)
            rc = cdb_cache_get(c, keys[i], &values[i], &lens[i], err);
    if (rc < 0) {
        for (int i = 0; i < n; i++) {
            free(values[i]);
            values[i] = NULL;
        }
        return rc;
    }
    return 0;
}

int cdb_cache_set(cdb_cache *c, const char *key, const char *value, size_t len, int ttl_s,
                  cdb_error *err)
{
    int rc = 0;

    if (c->redis)
        return redis_set(c, key, value, len, ttl_s, err);
    pthread_mutex_lock(&c->mu);
    int64_t now = cdb_mono_ms();
    if (cdb_kvtable_put(c->table, key, value, len, ttl_s > 0 ? now + (int64_t)ttl_s * 1000 : 0, now) < 0)
        rc = cdb_error_oom(err);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int cdb_cache_del(cdb_cache *c, const char *key, int *deleted, cdb_error *err)
{
    if (c->redis)
        return redis_del(c, key, deleted, err);
    pthread_mutex_lock(&c->mu);
    bool live = cdb_kvtable_del(c->table, key, cdb_mono_ms());
    pthread_mutex_unlock(&c->mu);
    if (deleted)
        *deleted = live;
    return 0;
}

int cdb_cache_expire(cdb_cache *c, const char *key, int ttl_s, bool *applied, cdb_error *err)
{
    if (c->redis)
        return redis_expire(c, key, ttl_s, applied, err);
    pthread_mutex_lock(&c->mu);
    int64_t now = cdb_mono_ms();
    /* as Redis: a TTL in the past deletes */
    bool found = ttl_s <= 0 ? cdb_kvtable_del(c->table, key, now)
                            : cdb_kvtable_expire(c->table, key, now + (int64_t)ttl_s * 1000, now);
    pthread_mutex_unlock(&c->mu);
    if (applied)
        *applied = found;
    return 0;
}

/* Like Redis INCR: a missing key counts from 0 and an existing TTL is kept. */
int cdb_cache_incr(cdb_cache *c, const char *key, int64_t *out, cdb_error *err)
{
    char buf[24];
    int64_t v = 0, expires_ms = 0;
    size_t len;
    int rc = 0;

    if (c->redis)
        return redis_incr(c, key, out, err);
    pthread_mutex_lock(&c->mu);
    int64_t now = cdb_mono_ms();
    const char *cur = cdb_kvtable_get(c->table, key, &len, &expires_ms, now);
    if (cur && (!parse_i64(cur, len, &v) || v == INT64_MAX)) {
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cached value is not an integer or would overflow");
        goto out_unlock;
    }
    v++;
    if (cdb_kvtable_put(c->table, key, buf, (size_t)snprintf(buf, sizeof buf, "%" PRId64, v), expires_ms, now) < 0)
        rc = cdb_error_oom(err);
    else
        *out = v;
out_unlock:
    pthread_mutex_unlock(&c->mu);
    return rc;
}
