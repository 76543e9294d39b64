/*
 * qcache.c - the data API's result cache (qcache.h) over cdb_cache.
 *
 * Entries live under "coredb:<ns>:q:<table>:<sha256 of the key>" as
 * "<generation>\n<value>", the generation being the table's counter
 * ("coredb:<ns>:gen:<table>", missing = 0) read before the query ran. A lookup
 * reads the counter, then the entry, and serves it only when both agree, so
 * one INCR after a write makes every older entry of the table dead on every
 * instance, with no scan and no delete.
 *
 * Single flight: misses register in a small hash table of flights (at most
 * one per key) under a mutex. The first misser leads (queries and stores);
 * later identical missers wait on the flight's condvar and are handed the
 * leader's bytes in memory. A misser only joins a flight begun at the same
 * generation and the same local epoch (bumped by every cdb_qcache_bump of
 * this process), because a flight begun before a write it has observed may
 * return rows older than that write. When it cannot join (other generation,
 * flight too old, wait timed out, leader abandoned) it just queries
 * (leader = false). A finished flight stays FLIGHT_GRACE_MS with its result:
 * a misser that read the cache just before the leader stored would otherwise
 * start a second query; serving it is the same as a cache hit at that
 * generation. Flights run even while the cache is down, to spare PostgreSQL,
 * but then store nothing and are not kept after they finish. Finished
 * flights are swept a bucket at a time, one bucket per lookup.
 */
#include "store/qcache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/log.h"
#include "store/pg.h"
#include "store/redis.h"
#include "store/txn.h"
#include "core/metrics.h"
#include "core/timeutil.h"

#define FLIGHT_WAIT_MS 5000
#define FLIGHT_GRACE_MS 100
#define NBUCKETS 256
#define HASH_HEX (crypto_hash_sha256_BYTES * 2 + 1)

typedef struct flight {
    struct flight *next;        /* its bucket of qc->flights, while running or kept */
    char id[HASH_HEX];          /* sha256 of the caller's key */
    int64_t generation;
    uint64_t epoch;
    bool cache_ok;              /* the generation was read: the result may be stored */
    int64_t started_ms;
    pthread_cond_t done_cv;
    bool done;                  /* stored or abandoned */
    int64_t done_ms;
    char *value;                /* the leader's result when stored */
    size_t len;
    int refs;                   /* the table's reference + waiting followers */
} flight;

struct cdb_qcache {
    cdb_cache *cache;
    int ttl_s;
    char ns[64];                /* deployment namespace of every key: "coredb:<ns>:" */
    _Atomic bool ns_set;        /* ns was set: keys may be used */
    cdb_redis *redis;           /* watched for recoveries (may be NULL) */
    cdb_qcache_resync_fn resync;
    void *resync_arg;
    _Atomic uint64_t synced_recoveries; /* redis recoveries the cache was resynced after */
    _Atomic uint64_t epoch;
    pthread_mutex_t mu;
    flight *flights[NBUCKETS];  /* running and recently finished flights (mu) */
    unsigned sweep;             /* the next bucket to sweep (mu) */
    const char *lsn_key;        /* cdb_qcache_track_lsn, or NULL */
};

void cdb_qcache_track_lsn(cdb_qcache *qc, const char *key)
{
    if (qc)
        qc->lsn_key = key;
}

cdb_qcache *cdb_qcache_new(cdb_cache *cache, int ttl_s)
{
    cdb_qcache *qc = calloc(1, sizeof *qc);
    if (!qc)
        return NULL;
    qc->cache = cache;
    qc->ttl_s = ttl_s;
    atomic_init(&qc->epoch, 0);
    pthread_mutex_init(&qc->mu, NULL);
    return qc;
}

void cdb_qcache_free(cdb_qcache *qc)
{
    if (!qc)
        return;
    /* callers are gone: no flight is running or waited on, some may be kept */
    for (int b = 0; b < NBUCKETS; b++) {
        for (flight *f = qc->flights[b], *next; f; f = next) {
            next = f->next;
            pthread_cond_destroy(&f->done_cv);
            free(f->value);
            free(f);
        }
    }
    pthread_mutex_destroy(&qc->mu);
    free(qc);
}

void cdb_qcache_set_namespace(cdb_qcache *qc, const char *ns)
{
    snprintf(qc->ns, sizeof qc->ns, "%s", ns);
    atomic_store(&qc->ns_set, true);
    /* the first-level caches' invalidations are namespaced alike */
    cdb_error err;
    cdb_error_init(&err);
    if (cdb_inval_start(cdb_cache_inval(qc->cache), ns, &err) < 0)
        cdb_log_warn("cache.invalidation_not_started", "first-level caches stay off: %s", err.message);
    cdb_error_destroy(&err);
}

bool cdb_qcache_enabled(const cdb_qcache *qc)
{
    return qc && qc->ttl_s > 0;
}

bool cdb_qcache_has_namespace(cdb_qcache *qc)
{
    return atomic_load(&qc->ns_set);
}

void cdb_qcache_set_resync(cdb_qcache *qc, cdb_redis *redis, cdb_qcache_resync_fn fn, void *arg)
{
    qc->redis = redis;
    qc->resync = fn;
    qc->resync_arg = arg;
    atomic_store(&qc->synced_recoveries, cdb_redis_recoveries(redis));
}

void cdb_qcache_generation_key(const cdb_qcache *qc, const char *table, char *buf, size_t len)
{
    snprintf(buf, len, "coredb:%s:gen:%s", qc->ns, table);
}

void cdb_qcache_key(const cdb_qcache *qc, const char *suffix, char *buf, size_t len)
{
    snprintf(buf, len, "coredb:%s:%s", qc->ns, suffix);
}

/*
 * Redis came back after an outage this process saw: generation bumps of
 * writes committed meanwhile may still wait in the outbox, and Redis may
 * have kept entries those writes made stale. Until the resync hook has
 * applied them, no hit is trusted.
 */
bool cdb_qcache_resync_pending(cdb_qcache *qc)
{
    return qc && qc->resync && cdb_redis_recoveries(qc->redis) != atomic_load(&qc->synced_recoveries);
}

bool cdb_qcache_trusted(cdb_qcache *qc)
{
    if (!cdb_qcache_resync_pending(qc))
        return true;
    uint64_t now = cdb_redis_recoveries(qc->redis);
    if (qc->resync(qc->resync_arg) != 0)
        return false;
    atomic_store(&qc->synced_recoveries, now);
    return true;
}

static void key_id(const char *key, char id[HASH_HEX])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)key, strlen(key));
    sodium_bin2hex(id, HASH_HEX, h, sizeof h);
}

static char *entry_key(const cdb_qcache *qc, const char *table, const char id[HASH_HEX])
{
    char *k = NULL;
    if (asprintf(&k, "coredb:%s:q:%s:%s", qc->ns, table, id) < 0)
        return NULL;
    return k;
}

/* A generation counter's value (NULL: unset); 0 when unset or not a number. */
static int64_t parse_generation(const char *v)
{
    if (!v)
        return 0;
    char *end;
    errno = 0;
    int64_t g = strtoll(v, &end, 10);
    return errno || end == v ? 0 : g;
}

/*
 * An entry is "<generation>\n<bytes>": the offset of the bytes when it was
 * computed at generation, else 0 (a stale or malformed entry is a miss).
 */
static size_t entry_payload(const char *entry, size_t len, int64_t generation)
{
    const char *nl = memchr(entry, '\n', len);
    char *end;
    errno = 0;
    int64_t at = nl ? strtoll(entry, &end, 10) : -1;
    if (!nl || errno || end != nl || at != generation)
        return 0;
    return (size_t)(nl + 1 - entry);
}

/*
 * The table's generation and the entry of ekey in one round trip (MGET: the
 * entry's key does not depend on the generation). out->generation gets the
 * generation (0 when unset); a hit when the entry was computed at that
 * generation. False when the cache failed.
 */
static bool read_cached(cdb_qcache *qc, const char *table, const char *ekey, cdb_qcache_lookup *out)
{
    char gkey[256];
    char *v[3];
    size_t len[3];
    cdb_error err;

    cdb_error_init(&err);
    cdb_qcache_generation_key(qc, table, gkey, sizeof gkey);
    const char *keys[3] = {gkey, ekey, qc->lsn_key};
    int nkeys = qc->lsn_key ? 3 : 2;
    int rc = cdb_cache_get_many(qc->cache, nkeys, keys, v, len, &err);
    cdb_error_destroy(&err);
    out->generation = 0;
    out->lsn_seen = qc->lsn_key ? UINT64_MAX : 0;   /* untracked: nothing to wait for */
    if (rc < 0)
        return false;
    if (nkeys == 3) {
        out->lsn_seen = v[2] ? strtoull(v[2], NULL, 16) : 0;
        free(v[2]);
    }
    out->generation = parse_generation(v[0]);
    free(v[0]);
    if (!v[1])
        return true;
    size_t skip = entry_payload(v[1], len[1], out->generation);
    if (!skip) {
        free(v[1]);
        return true;
    }
    /* hand the bytes after the tag over in place of a copy */
    memmove(v[1], v[1] + skip, len[1] - skip + 1);
    out->hit = true;
    out->value = v[1];
    out->len = len[1] - skip;
    return true;
}

bool cdb_qcache_probe_keys(cdb_qcache *qc, const char *table, const char *key, char gen_key[256],
                           char **ekey)
{
    *ekey = NULL;
    if (!cdb_qcache_enabled(qc) || !table || !key || !atomic_load(&qc->ns_set) ||
        !cdb_cache_is_redis(qc->cache))
        return false;
    /* a resync is pending (cdb_qcache_trusted would run it): that is blocking work */
    if (cdb_qcache_resync_pending(qc))
        return false;
    char id[HASH_HEX];
    key_id(key, id);
    cdb_qcache_generation_key(qc, table, gen_key, 256);
    return (*ekey = entry_key(qc, table, id)) != NULL;
}

bool cdb_qcache_probe_hit(const char *generation, const char *entry, size_t len, int64_t *gen_out,
                          const char **value, size_t *value_len)
{
    *gen_out = parse_generation(generation);
    size_t skip = entry ? entry_payload(entry, len, *gen_out) : 0;
    if (!skip)
        return false;
    *value = entry + skip;
    *value_len = len - skip;
    return true;
}

/* ids are SHA-256 hex: their first byte spreads flights evenly */
static flight **bucket(cdb_qcache *qc, const char *id)
{
    char byte[3] = {id[0], id[1], '\0'};
    return &qc->flights[strtoul(byte, NULL, 16) % NBUCKETS];
}

static flight *find_locked(cdb_qcache *qc, const char *id)
{
    for (flight *f = *bucket(qc, id); f; f = f->next)
        if (strcmp(f->id, id) == 0)
            return f;
    return NULL;
}

static void flight_unref_locked(flight *f)
{
    if (--f->refs > 0)
        return;
    pthread_cond_destroy(&f->done_cv);
    free(f->value);
    free(f);
}

/* Takes f out of the table (waiters still hold theirs). */
static void drop_locked(cdb_qcache *qc, flight *f)
{
    for (flight **p = bucket(qc, f->id); *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            flight_unref_locked(f);
            return;
        }
    }
}

/* Drops the finished flights of one bucket whose grace is over. */
static void sweep_locked(cdb_qcache *qc, int64_t now)
{
    flight **p = &qc->flights[qc->sweep++ % NBUCKETS];
    while (*p) {
        flight *f = *p;
        if (f->done && now - f->done_ms >= FLIGHT_GRACE_MS) {
            *p = f->next;
            flight_unref_locked(f);
        } else {
            p = &f->next;
        }
    }
}

/* Waits for f's leader; a hit when it stored a value in time. */
static void follow_locked(cdb_qcache *qc, flight *f, cdb_qcache_lookup *out)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    int64_t ns = deadline.tv_nsec + (int64_t)FLIGHT_WAIT_MS * 1000000;
    deadline.tv_sec += ns / 1000000000;
    deadline.tv_nsec = ns % 1000000000;

    f->refs++;
    while (!f->done) {
        if (pthread_cond_timedwait(&f->done_cv, &qc->mu, &deadline) == ETIMEDOUT)
            break;
    }
    if (f->done && f->value && (out->value = malloc(f->len + 1))) {
        memcpy(out->value, f->value, f->len + 1);
        out->len = f->len;
        out->hit = true;
    }
    flight_unref_locked(f);
}

static void finish(cdb_qcache *qc, const char *id, bool match_gen, int64_t gen, const char *value, size_t len);

/* A new flight of id, led by the caller; false when out of memory. */
static bool lead_locked(cdb_qcache *qc, const char *id, int64_t generation, uint64_t epoch, bool cache_ok)
{
    flight *f = calloc(1, sizeof *f);
    if (!f)
        return false;
    memcpy(f->id, id, HASH_HEX);
    f->generation = generation;
    f->epoch = epoch;
    f->cache_ok = cache_ok;
    f->started_ms = cdb_mono_ms();
    f->refs = 1;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* follow_locked's deadline */
    pthread_cond_init(&f->done_cv, &attr);
    pthread_condattr_destroy(&attr);
    flight **head = bucket(qc, id);
    f->next = *head;
    *head = f;
    return true;
}

bool cdb_qcache_probe_lead(cdb_qcache *qc, const char *key, int64_t generation)
{
    char id[HASH_HEX];
    if (!qc || !key)
        return false;
    key_id(key, id);
    uint64_t epoch = atomic_load(&qc->epoch);
    int64_t now = cdb_mono_ms();
    bool led = false;
    pthread_mutex_lock(&qc->mu);
    sweep_locked(qc, now);
    flight *f = find_locked(qc, id);
    bool same = f && f->generation == generation && f->epoch == epoch && f->cache_ok;
    /* another runs it, or just ran it at this generation: a worker follows it (never the loop: it waits) */
    if (f && ((!f->done && same && now - f->started_ms < FLIGHT_WAIT_MS) ||
              (f->done && same && f->value && now - f->done_ms < FLIGHT_GRACE_MS)))
        goto out;
    if (f && f->done)
        drop_locked(qc, f);
    else if (f)
        goto out;                  /* a stale flight still running: leave it, run unregistered */
    led = lead_locked(qc, id, generation, epoch, true);
out:
    pthread_mutex_unlock(&qc->mu);
    return led;
}

void cdb_qcache_probe_finish(cdb_qcache *qc, const char *key, int64_t generation, const char *value, size_t len)
{
    char id[HASH_HEX];
    if (!qc || !key)
        return;
    key_id(key, id);
    finish(qc, id, value != NULL, generation, value, len);
}

void cdb_qcache_get(cdb_qcache *qc, const char *table, const char *key, cdb_qcache_lookup *out)
{
    char id[HASH_HEX];

    *out = (cdb_qcache_lookup){0};
    if (!qc || !table || !key || qc->ttl_s <= 0) /* CACHE_TTL=0: caching is off */
        return;
    if (!cdb_qcache_trusted(qc))
        return;
    uint64_t epoch = atomic_load(&qc->epoch);
    key_id(key, id);
    char *ekey = entry_key(qc, table, id);
    if (!ekey)
        return;
    bool cache_ok = read_cached(qc, table, ekey, out);
    free(ekey);
    /* the read itself may have found Redis back from an outage (the pool's probe): nothing it
     * read is trusted before the resync, and nothing is stored (not a leader) */
    if (cdb_qcache_resync_pending(qc)) {
        free(out->value);
        *out = (cdb_qcache_lookup){0};
        return;
    }
    if (out->hit) {
        cdb__metrics_inc(CDB_M_CACHE_HITS);
        return;
    }

    int64_t now = cdb_mono_ms();
    pthread_mutex_lock(&qc->mu);
    sweep_locked(qc, now);
    flight *f = find_locked(qc, id);
    /* a flight begun before a write this caller may have seen is no use */
    bool same = f && f->generation == out->generation && f->epoch == epoch &&
                f->cache_ok == cache_ok;
    if (f && !f->done) {
        if (same && now - f->started_ms < FLIGHT_WAIT_MS)
            follow_locked(qc, f, out);
        goto out_unlock;
    }
    if (f && same && f->value && now - f->done_ms < FLIGHT_GRACE_MS) {
        follow_locked(qc, f, out);
        goto out_unlock;
    }
    if (f)
        drop_locked(qc, f);
    out->leader = lead_locked(qc, id, out->generation, epoch, cache_ok);

out_unlock:
    pthread_mutex_unlock(&qc->mu);
    /* a follower handed the leader's bytes was served without a query: a hit */
    cdb__metrics_inc(out->hit ? CDB_M_CACHE_HITS : CDB_M_CACHE_MISSES);
}

/* Ends the flight of id (if it is the one at generation gen), handing value over. */
static void finish(cdb_qcache *qc, const char *id, bool match_gen, int64_t gen,
                   const char *value, size_t len)
{
    pthread_mutex_lock(&qc->mu);
    flight *f = find_locked(qc, id);
    if (f && !f->done && (!match_gen || f->generation == gen)) {
        if (value && (f->value = malloc(len + 1))) {
            memcpy(f->value, value, len);
            f->value[len] = '\0';
            f->len = len;
        }
        f->done = true;
        f->done_ms = cdb_mono_ms();
        pthread_cond_broadcast(&f->done_cv);
        if (!f->value || !f->cache_ok)
            drop_locked(qc, f);
    }
    pthread_mutex_unlock(&qc->mu);
}

char *cdb_qcache_entry_encode(int64_t generation, const char *value, size_t len, size_t *out_len)
{
    char tag[24];
    int n = snprintf(tag, sizeof tag, "%" PRId64 "\n", generation);
    char *buf = malloc((size_t)n + len);
    if (!buf)
        return NULL;
    memcpy(buf, tag, (size_t)n);
    memcpy(buf + n, value, len);
    *out_len = (size_t)n + len;
    return buf;
}

int cdb_qcache_ttl_s(const cdb_qcache *qc)
{
    return qc ? qc->ttl_s : 0;
}

void cdb_qcache_store(cdb_qcache *qc, const char *table, const char *key, int64_t generation,
                      const char *value, size_t len)
{
    char id[HASH_HEX];

    if (!qc || !table || !key || !value)
        return;
    key_id(key, id);
    pthread_mutex_lock(&qc->mu);
    flight *f = find_locked(qc, id);
    bool cache_ok = f && !f->done && f->generation == generation && f->cache_ok;
    pthread_mutex_unlock(&qc->mu);

    /* stored before the flight ends, so a late misser finds either it or the flight */
    char *ekey = cache_ok ? entry_key(qc, table, id) : NULL;
    size_t n;
    char *buf = ekey ? cdb_qcache_entry_encode(generation, value, len, &n) : NULL;
    if (buf) {
        cdb_error err;
        cdb_error_init(&err);
        if (cdb_cache_set(qc->cache, ekey, buf, n, qc->ttl_s, &err) < 0)
            cdb_log_debug("qcache.store", "result not cached: %s", err.message);
        else
            cdb__metrics_inc(CDB_M_CACHE_STORES);
        cdb_error_destroy(&err);
    }
    free(buf);
    free(ekey);
    finish(qc, id, true, generation, value, len);
}

void cdb_qcache_abandon(cdb_qcache *qc, const char *key)
{
    char id[HASH_HEX];
    if (!qc || !key)
        return;
    key_id(key, id);
    finish(qc, id, false, 0, NULL, 0);
}

int cdb_qcache_bump(cdb_qcache *qc, const char *table)
{
    char key[256];
    int64_t v;
    cdb_error err;

    if (!qc || !table)
        return -1;
    /* first locally: flights of this process begun before now are not joined */
    atomic_fetch_add(&qc->epoch, 1);
    cdb_error_init(&err);
    cdb_qcache_generation_key(qc, table, key, sizeof key);
    int rc = cdb_cache_incr(qc->cache, key, &v, &err);
    cdb_error_destroy(&err);
    if (rc == 0) { /* one that failed is queued in the outbox, counted and published when applied there */
        cdb__metrics_inc(CDB_M_CACHE_INVALIDATIONS);
        cdb_inval_table(cdb_cache_inval(qc->cache), table);
    }
    return rc < 0 ? -1 : 0;
}

/* s with Redis glob's special characters escaped, appended to out (size len). */
static bool glob_escape(const char *s, char *out, size_t len)
{
    size_t o = strlen(out);
    for (; *s; s++) {
        if (strchr("*?[]\\", *s) && o + 1 < len)
            out[o++] = '\\';
        if (o + 1 >= len)
            return false;
        out[o++] = *s;
    }
    out[o] = '\0';
    return true;
}

int cdb_qcache_purge(cdb_qcache *qc, const char *table, long *deleted, cdb_error *err)
{
    char pattern[512] = "coredb:", cursor[32] = "0";
    redisReply *r = NULL;
    int rc = 0;

    *deleted = 0;
    if (!qc || !table || !cdb_qcache_has_namespace(qc) || !cdb_cache_is_redis(qc->cache))
        return 0;
    if (!glob_escape(qc->ns, pattern, sizeof pattern) || !glob_escape(":q:", pattern, sizeof pattern) ||
        !glob_escape(table, pattern, sizeof pattern) || !glob_escape(":", pattern, sizeof pattern) ||
        strlen(pattern) + 2 > sizeof pattern)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "Table name too long");
    strcat(pattern, "*");
    cdb_redis *redis = cdb_cache_redis(qc->cache);
    do {
        if (!(r = cdb_redis_command(redis, err, "SCAN %s MATCH %s COUNT 1000", cursor, pattern))) {
            rc = err ? err->code : CDB_ERR_CACHE_UNAVAILABLE;
            goto out;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            rc = cdb_error_set(err, CDB_ERR_CACHE_UNAVAILABLE, "Unexpected reply to SCAN");
            goto out;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            if (keys->element[i]->type != REDIS_REPLY_STRING)
                continue;
            redisReply *d = cdb_redis_command(redis, err, "UNLINK %b", keys->element[i]->str,
                                              (size_t)keys->element[i]->len);
            if (!d) {
                rc = err ? err->code : CDB_ERR_CACHE_UNAVAILABLE;
                goto out;
            }
            if (d->type == REDIS_REPLY_INTEGER)
                *deleted += (long)d->integer;
            freeReplyObject(d);
        }
        freeReplyObject(r);
        r = NULL;
    } while (strcmp(cursor, "0") != 0);
out:
    if (r)
        freeReplyObject(r);
    return rc;
}

int cdb_qcache_ensure_namespace_on(cdb_qcache *qc, PGconn *conn, cdb_error *err)
{
    PGresult *res = NULL;
    if (cdb_qcache_has_namespace(qc))
        return 0;
    int rc = cdb_pg_exec(conn, "SELECT id::text FROM coredb.deployment", 0, NULL, &res, err);
    if (rc == 0 && PQntuples(res) == 1)
        cdb_qcache_set_namespace(qc, PQgetvalue(res, 0, 0));
    else if (rc == 0)
        rc = cdb_error_set_detail(err, CDB_ERR_DATABASE_UNAVAILABLE, NULL, NULL,
                                  "Database not ready: migrations pending");
    PQclear(res);
    return rc;
}

int cdb_qcache_ensure_namespace(cdb_qcache *qc, cdb_pool *pool, cdb_error *err)
{
    if (cdb_qcache_has_namespace(qc))
        return 0;
    cdb_pool_conn *pc = NULL;
    PGconn *conn = cdb_txn_acquire(pool, &pc, err);
    if (!conn)
        return err->code;
    int rc = cdb_qcache_ensure_namespace_on(qc, conn, err);
    cdb_txn_release(pool, pc);
    return rc;
}
