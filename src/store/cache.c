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
 * In-process backend (no REDIS_URL): a chained hash table under one mutex,
 * with a fixed bucket array sized from max_entries (0 means 65536) and a
 * list of entries from least to most recently written. Expiry is lazy: an
 * expired entry is dropped when it is read or when room is needed. When the
 * table is full a write first drops the expired entries among the oldest few,
 * else the oldest entry: bounded memory and O(1) work per write, at the price
 * of sometimes evicting a live entry while an expired one sits further on.
 */
#include "store/cache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timeutil.h"

#define DEFAULT_MAX_ENTRIES 65536
#define MAX_BUCKETS (1u << 20)
#define EVICT_SCAN 16            /* oldest entries examined for expiry on a full write */

typedef struct entry {
    struct entry *next;          /* bucket chain */
    struct entry *older, *newer; /* write-order list */
    uint64_t hash;
    int64_t expires_ms;          /* cdb_mono_ms deadline; 0: never */
    char *value;                 /* len bytes plus a NUL */
    size_t len;
    char key[];
} entry;

struct cdb_cache {
    cdb_redis *redis;            /* not owned; NULL: in-process table */
    pthread_mutex_t mu;          /* guards the table below */
    entry **buckets;
    size_t nbuckets;             /* a power of two */
    size_t count;
    size_t max_entries;
    entry *oldest, *newest;      /* every entry, by last write */
};

/* ---- in-process table ---------------------------------------------------- */

/* FNV-1a: short keys, no adversarial input worth a keyed hash here. */
static uint64_t hash_key(const char *key)
{
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static bool expired(const entry *e, int64_t now)
{
    return e->expires_ms != 0 && now >= e->expires_ms;
}

static void list_unlink(cdb_cache *c, entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    e->older = e->newer = NULL;
}

static void list_append(cdb_cache *c, entry *e)
{
    e->older = c->newest;
    e->newer = NULL;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
}

/* The entry for key, or NULL; *slot is the link pointing at it (or the end). */
static entry *find(cdb_cache *c, const char *key, uint64_t h, entry ***slot)
{
    entry **pp = &c->buckets[h & (c->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            break;
    *slot = pp;
    return *pp;
}

static void remove_entry(cdb_cache *c, entry *e)
{
    entry **pp;
    find(c, e->key, e->hash, &pp);
    *pp = e->next;
    list_unlink(c, e);
    c->count--;
    free(e->value);
    free(e);
}

/* Makes room for one more entry; caller holds c->mu. */
static void evict_for_insert(cdb_cache *c, int64_t now)
{
    entry *e = c->oldest;
    for (int i = 0; e && i < EVICT_SCAN; i++) {
        entry *newer = e->newer;
        if (expired(e, now))
            remove_entry(c, e);
        e = newer;
    }
    if (c->count >= c->max_entries && c->oldest)
        remove_entry(c, c->oldest);
}

/* A live entry for key, dropping it if it has expired; caller holds c->mu. */
static entry *lookup_live(cdb_cache *c, const char *key, uint64_t h, int64_t now)
{
    entry **pp;
    entry *e = find(c, key, h, &pp);
    if (e && expired(e, now)) {
        remove_entry(c, e);
        e = NULL;
    }
    return e;
}

/* Stores a copy of value under key as the newest entry; caller holds c->mu. */
static int put_locked(cdb_cache *c, const char *key, const char *value, size_t len,
                      int64_t expires_ms, int64_t now, cdb_error *err)
{
    uint64_t h = hash_key(key);
    entry **pp;
    entry *e = find(c, key, h, &pp);
    char *copy = malloc(len + 1);

    if (!copy)
        return cdb_error_oom(err);
    if (len > 0)
        memcpy(copy, value, len);
    copy[len] = '\0';

    if (e) {
        list_unlink(c, e);
        free(e->value);
    } else {
        size_t klen = strlen(key);
        if (c->count >= c->max_entries)
            evict_for_insert(c, now);
        e = malloc(sizeof *e + klen + 1);
        if (!e) {
            free(copy);
            return cdb_error_oom(err);
        }
        memcpy(e->key, key, klen + 1);
        e->hash = h;
        /* Eviction may have rewired the chain under pp: insert at the head. */
        e->next = c->buckets[h & (c->nbuckets - 1)];
        c->buckets[h & (c->nbuckets - 1)] = e;
        c->count++;
    }
    e->value = copy;
    e->len = len;
    e->expires_ms = expires_ms;
    list_append(c, e);
    return 0;
}

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
    c->max_entries = max_entries ? max_entries : DEFAULT_MAX_ENTRIES;
    if (!redis) {
        /* Load factor <= 1 up to MAX_BUCKETS; the chains grow past that. */
        c->nbuckets = 16;
        while (c->nbuckets < c->max_entries && c->nbuckets < MAX_BUCKETS)
            c->nbuckets *= 2;
        c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
        if (!c->buckets) {
            free(c);
            return NULL;
        }
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void cdb_cache_free(cdb_cache *c)
{
    if (!c)
        return;
    for (entry *e = c->oldest, *newer; e; e = newer) {
        newer = e->newer;
        free(e->value);
        free(e);
    }
    free(c->buckets);
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

int cdb_cache_get(cdb_cache *c, const char *key, char **value, size_t *len, cdb_error *err)
{
    entry *e;
    char *copy = NULL;
    int rc = 0;

    if (c->redis)
        return redis_get(c, key, value, len, err);
    pthread_mutex_lock(&c->mu);
    e = lookup_live(c, key, hash_key(key), cdb_mono_ms());
    if (!e)
        goto out_unlock;
    copy = malloc(e->len + 1);
    if (!copy) {
        rc = cdb_error_oom(err);
        goto out_unlock;
    }
    memcpy(copy, e->value, e->len + 1);
    *value = copy;
    *len = e->len;
    rc = 1;

out_unlock:
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
    int64_t now;
    int rc;

    if (c->redis)
        return redis_set(c, key, value, len, ttl_s, err);
    pthread_mutex_lock(&c->mu);
    now = cdb_mono_ms();
    rc = put_locked(c, key, value, len, ttl_s > 0 ? now + (int64_t)ttl_s * 1000 : 0, now, err);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int cdb_cache_del(cdb_cache *c, const char *key, int *deleted, cdb_error *err)
{
    entry **pp;
    entry *e;

    if (c->redis)
        return redis_del(c, key, deleted, err);
    pthread_mutex_lock(&c->mu);
    e = find(c, key, hash_key(key), &pp);
    if (deleted)
        *deleted = e && !expired(e, cdb_mono_ms());
    if (e)
        remove_entry(c, e);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int cdb_cache_expire(cdb_cache *c, const char *key, int ttl_s, bool *applied, cdb_error *err)
{
    int64_t now;
    entry *e;

    if (c->redis)
        return redis_expire(c, key, ttl_s, applied, err);
    pthread_mutex_lock(&c->mu);
    now = cdb_mono_ms();
    e = lookup_live(c, key, hash_key(key), now);
    if (e && ttl_s <= 0)
        remove_entry(c, e);        /* as Redis: a TTL in the past deletes */
    else if (e)
        e->expires_ms = now + (int64_t)ttl_s * 1000;
    if (applied)
        *applied = e != NULL;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Like Redis INCR: a missing key counts from 0 and an existing TTL is kept. */
int cdb_cache_incr(cdb_cache *c, const char *key, int64_t *out, cdb_error *err)
{
    char buf[24];
    int64_t now, v = 0, expires_ms = 0;
    entry *e;
    int rc;

    if (c->redis)
        return redis_incr(c, key, out, err);
    pthread_mutex_lock(&c->mu);
    now = cdb_mono_ms();
    e = lookup_live(c, key, hash_key(key), now);
    if (e) {
        if (!parse_i64(e->value, e->len, &v) || v == INT64_MAX) {
            rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED,
                               "cached value is not an integer or would overflow");
            goto out_unlock;
        }
        expires_ms = e->expires_ms;
    }
    v++;
    rc = put_locked(c, key, buf, (size_t)snprintf(buf, sizeof buf, "%" PRId64, v),
                    expires_ms, now, err);
    if (rc == 0)
        *out = v;

out_unlock:
    pthread_mutex_unlock(&c->mu);
    return rc;
}
