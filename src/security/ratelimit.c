/*
 * ratelimit.c - request quotas (GCRA) and login-failure window counters
 * (see ratelimit.h), in Redis when it answers, else in an in-process table.
 *
 * GCRA, the Generic Cell Rate Algorithm, is a token bucket kept as a single
 * number per key: the theoretical arrival time (TAT), the moment the bucket
 * would be full again if no further request came. With emission interval
 * T = 1e6 / rate microseconds (one request's worth of time) and a bucket of
 * `burst` requests, i.e. a tolerance of T * burst:
 *
 *     new_tat = max(tat, now) + T          (this request costs T)
 *     allowed iff new_tat - now <= T*burst (the debt stays within the bucket)
 *
 * When allowed, tat = new_tat, remaining = floor((T*burst - (new_tat-now)) / T)
 * (whole requests still fitting) and reset_after = new_tat - now (until the
 * bucket is full again). When refused, tat is unchanged, remaining = 0,
 * retry_after = new_tat - now - T*burst (until this request would fit) and
 * reset_after = tat - now. A fresh key therefore admits `burst` requests at
 * once, then one every T; traffic at exactly `rate` is always admitted. T is
 * rounded down to whole microseconds (minimum 1), so the quota errs by at
 * most a microsecond per request in the caller's favour.
 *
 * One number per key is what makes the shared version cheap: read TAT, decide,
 * write TAT is one Lua script run atomically by Redis (EVALSHA), so every
 * instance sees the same bucket at the cost of one round trip and with no
 * lock or read-modify-write race. The script takes "now" from Redis's own
 * clock (TIME) so instances with skewed clocks still agree, and lets the key
 * expire once the bucket is full again (a full bucket and no key are the same
 * state), so idle callers cost Redis nothing.
 *
 * Scripts are loaded once with SCRIPT LOAD and their SHA1s cached; a NOSCRIPT
 * reply (Redis restarted or flushed its script cache) reloads and retries once.
 *
 * Fallback: when there is no Redis, or a call fails (CACHE_UNAVAILABLE, or an
 * unexpected reply), the same arithmetic runs on an in-process table keyed
 * the same way, on the monotonic clock. The limiter never fails a request:
 * during an outage each instance enforces the quota alone, and its local
 * state is forgotten once Redis answers again. The tables are bounded: when
 * full, entries that mean nothing any more (a full bucket, an ended window)
 * are swept out, at most once a second since a sweep walks the whole table;
 * if the table is still full an arbitrary entry goes, which at worst forgives
 * one caller's debt.
 *
 * Window counters (login failures) are fixed windows: the first hit creates
 * the key with the window as its TTL, later hits only count. In Redis, INCR
 * and the EXPIRE of a first hit run in one script so a crash between them
 * cannot leave a counter that never expires.
 */
#include "security/ratelimit.h"
#include "core/hash.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/timeutil.h"

#define TABLE_MAX_ENTRIES 100000
#define TABLE_BUCKETS 16384          /* a power of two */
#define SWEEP_EVERY_US 1000000

/* ---- the Lua scripts ----------------------------------------------------- */

enum { SCRIPT_GCRA, SCRIPT_WINDOW_HIT, SCRIPT_WINDOW_COUNT, NSCRIPTS };

/*
 * KEYS[1] the bucket; ARGV[1] T in us, ARGV[2] burst. Returns {allowed,
 * remaining, retry_after_us, reset_after_us}, as cdb_gcra_step. TAT is stored
 * with %.0f: Lua's tostring would round an epoch in microseconds to 14
 * digits. replicate_commands lets Redis < 5 write after reading TIME.
 */
static const char gcra_lua[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local t = tonumber(ARGV[1])\n"
    "local tol = t * tonumber(ARGV[2])\n"
    "local clock = redis.call('TIME')\n"
    "local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or now\n"
    "if tat < now then tat = now end\n"
    "local new_tat = tat + t\n"
    "local diff = new_tat - now\n"
    "if diff > tol then return {0, 0, diff - tol, tat - now} end\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', new_tat),\n"
    "           'PX', math.ceil(diff / 1000) + 1)\n"
    "return {1, math.floor((tol - diff) / t), 0, diff}\n";

/* KEYS[1] the counter; ARGV[1] the window in seconds. Returns the new count. */
static const char window_hit_lua[] =
    "local n = redis.call('INCR', KEYS[1])\n"
    "if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
    "end\n"
    "return n\n";

/* KEYS[1] the counter. Returns {count, ms left} ({0, 0} when absent). */
static const char window_count_lua[] =
    "local n = tonumber(redis.call('GET', KEYS[1]))\n"
    "if not n then return {0, 0} end\n"
    "return {n, redis.call('PTTL', KEYS[1])}\n";

static const char *const script_src[NSCRIPTS] = {
    [SCRIPT_GCRA] = gcra_lua,
    [SCRIPT_WINDOW_HIT] = window_hit_lua,
    [SCRIPT_WINDOW_COUNT] = window_count_lua,
};

/* ---- in-process table ---------------------------------------------------- */

typedef struct rl_entry {
    struct rl_entry *next;           /* bucket chain */
    uint64_t hash;
    int64_t value;                   /* TAT (GCRA) or count (window) */
    int64_t expires_us;              /* cdb_mono_us from which it means nothing */
    char key[];
} rl_entry;

typedef struct rl_table {
    rl_entry **buckets;              /* TABLE_BUCKETS chains */
    size_t count;
    size_t cursor;                   /* where arbitrary eviction looks next */
    int64_t last_sweep_us;
} rl_table;

struct cdb_ratelimit {
    cdb_redis *redis;                /* not owned; NULL: in-process only */
    pthread_mutex_t mu;              /* guards sha and the tables */
    char sha[NSCRIPTS][41];          /* "" until SCRIPT LOAD answered */
    atomic_bool script_failing;      /* last script reply was an error: log once */
    rl_table gcra;                   /* key -> TAT, expires at TAT */
    rl_table windows;                /* key -> count, expires at window end */
};

static uint64_t hash_key(const char *key)
{
    return cdb__hash_str(key);
}

static int table_init(rl_table *t)
{
    memset(t, 0, sizeof *t);
    t->buckets = calloc(TABLE_BUCKETS, sizeof *t->buckets);
    return t->buckets ? 0 : CDB_ERR_INTERNAL_ERROR;
}

static void table_destroy(rl_table *t)
{
    if (!t->buckets)
        return;
    for (size_t i = 0; i < TABLE_BUCKETS; i++) {
        rl_entry *e = t->buckets[i];
        while (e) {
            rl_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(t->buckets);
    t->buckets = NULL;
}

/* The link pointing at key's entry, or at the end of its chain. */
static rl_entry **table_link(rl_table *t, const char *key, uint64_t h)
{
    rl_entry **pp = &t->buckets[h & (TABLE_BUCKETS - 1)];
    while (*pp && !((*pp)->hash == h && strcmp((*pp)->key, key) == 0))
        pp = &(*pp)->next;
    return pp;
}

static void table_unlink(rl_table *t, rl_entry **pp)
{
    rl_entry *e = *pp;
    *pp = e->next;
    free(e);
    t->count--;
}

/* key's entry if it still means something; a dead one is dropped. */
static rl_entry *table_get(rl_table *t, const char *key, int64_t now)
{
    rl_entry **pp = table_link(t, key, hash_key(key));
    if (*pp && (*pp)->expires_us <= now) {
        table_unlink(t, pp);
        return NULL;
    }
    return *pp;
}

static void table_del(rl_table *t, const char *key)
{
    rl_entry **pp = table_link(t, key, hash_key(key));
    if (*pp)
        table_unlink(t, pp);
}

/* Brings the table below its bound (see the file comment). */
static void table_make_room(rl_table *t, int64_t now)
{
    if (now - t->last_sweep_us >= SWEEP_EVERY_US) {
        t->last_sweep_us = now;
        for (size_t i = 0; i < TABLE_BUCKETS; i++) {
            rl_entry **pp = &t->buckets[i];
            while (*pp) {
                if ((*pp)->expires_us <= now)
                    table_unlink(t, pp);
                else
                    pp = &(*pp)->next;
            }
        }
    }
    for (size_t i = 0; t->count >= TABLE_MAX_ENTRIES && i < TABLE_BUCKETS; i++) {
        size_t b = (t->cursor + i) & (TABLE_BUCKETS - 1);
        if (t->buckets[b]) {
            table_unlink(t, &t->buckets[b]);
            t->cursor = b + 1;
        }
    }
}

/*
 * Sets key to (value, expires_us). Out of memory only loses this update:
 * the limiter then forgets one caller, which is no reason to fail a request.
 */
static void table_put(rl_table *t, const char *key, int64_t value, int64_t expires_us,
                      int64_t now)
{
    uint64_t h = hash_key(key);
    rl_entry *e = *table_link(t, key, h);
    size_t klen;

    if (!e) {
        if (t->count >= TABLE_MAX_ENTRIES)
            table_make_room(t, now);
        klen = strlen(key);
        e = malloc(sizeof *e + klen + 1);
        if (!e)
            return;
        memcpy(e->key, key, klen + 1);
        e->hash = h;
        /* Making room may have rewired the chain: insert at its head. */
        e->next = t->buckets[h & (TABLE_BUCKETS - 1)];
        t->buckets[h & (TABLE_BUCKETS - 1)] = e;
        t->count++;
    }
    e->value = value;
    e->expires_us = expires_us;
}

/* ---- GCRA ---------------------------------------------------------------- */

static int64_t emission_interval_us(int rate)
{
    int64_t t = 1000000 / rate;
    return t > 0 ? t : 1;
}

/*
 * rate <= 0 means no quota: always allowed, every other field 0 (callers
 * send no X-RateLimit-* headers then). `limit` is the rate in requests per
 * second, which is what X-RateLimit-Limit shows; the burst only shapes how
 * many of them may come at once.
 */
void cdb_gcra_step(int64_t now_us, int64_t *tat_us, int rate, int burst, cdb_rl_result *out)
{
    int64_t t, tol, base, diff;

    memset(out, 0, sizeof *out);
    out->allowed = true;
    out->limit = rate > 0 ? rate : 0;
    if (rate <= 0)
        return;
    t = emission_interval_us(rate);
    tol = t * (burst > 1 ? burst : 1);
    base = *tat_us > now_us ? *tat_us : now_us;
    diff = base + t - now_us;
    if (diff > tol) {
        out->allowed = false;
        out->retry_after_s = (double)(diff - tol) / 1e6;
        out->reset_after_s = (double)(base - now_us) / 1e6;
        return;
    }
    *tat_us = base + t;
    out->remaining = (int)((tol - diff) / t);
    out->reset_after_s = (double)diff / 1e6;
}

/* ---- Redis --------------------------------------------------------------- */

/* Logs a script error reply once, until a script succeeds again. */
static void note_script_result(cdb_ratelimit *rl, const redisReply *error_reply)
{
    bool was = atomic_exchange(&rl->script_failing, error_reply != NULL);
    if (error_reply && !was)
        cdb_log_warn("ratelimit_redis_error",
                     "rate-limit script failed in Redis (%.200s); using the in-process table",
                     error_reply->str);
    else if (!error_reply && was)
        cdb_log_info("ratelimit_redis_recovered", "rate-limit scripts run in Redis again");
}

/* Copies script `which`'s SHA1 into sha, loading it first if needed or forced. */
static int load_sha(cdb_ratelimit *rl, int which, bool force, char sha[41])
{
    cdb_error err;
    redisReply *reply;
    int rc = 0;

    pthread_mutex_lock(&rl->mu);
    memcpy(sha, rl->sha[which], 41);
    pthread_mutex_unlock(&rl->mu);
    if (sha[0] && !force)
        return 0;

    /* Loaded outside the lock: racing loaders get the same SHA1. */
    cdb_error_init(&err);
    reply = cdb_redis_command(rl->redis, &err, "SCRIPT LOAD %s", script_src[which]);
    if (!reply || reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            note_script_result(rl, reply);
        rc = CDB_ERR_CACHE_UNAVAILABLE;
        goto out;
    }
    memcpy(sha, reply->str, 40);
    sha[40] = '\0';
    pthread_mutex_lock(&rl->mu);
    memcpy(rl->sha[which], sha, 41);
    pthread_mutex_unlock(&rl->mu);

out:
    freeReplyObject(reply);
    cdb_error_destroy(&err);
    return rc;
}

/*
 * EVALSHA of script `which` on key with up to two arguments (NULL: none).
 * The reply, never an error one, or NULL when the caller must fall back.
 */
static redisReply *run_script(cdb_ratelimit *rl, int which, const char *key,
                              const char *arg1, const char *arg2)
{
    const char *argv[6] = { "EVALSHA", NULL, "1", key, arg1, arg2 };
    int argc = arg1 ? (arg2 ? 6 : 5) : 4;
    char sha[41];
    redisReply *reply = NULL;
    cdb_error err;

    cdb_error_init(&err);
    for (int attempt = 0; attempt < 2 && !reply; attempt++) {
        bool retry;
        if (load_sha(rl, which, attempt > 0, sha) < 0)
            break;
        argv[1] = sha;
        reply = cdb_redis_command_argv(rl->redis, argc, argv, NULL, &err);
        if (!reply)
            break;
        if (reply->type != REDIS_REPLY_ERROR) {
            note_script_result(rl, NULL);
            break;
        }
        retry = attempt == 0 && strncmp(reply->str, "NOSCRIPT", 8) == 0;
        if (!retry)
            note_script_result(rl, reply);
        freeReplyObject(reply);
        reply = NULL;
        if (!retry)
            break;
    }
    cdb_error_destroy(&err);
    return reply;
}

/* An array reply of n integers, copied into v. */
static bool int_array(const redisReply *reply, size_t n, int64_t *v)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
        v[i] = reply->element[i]->integer;
    }
    return true;
}

/* The GCRA script's reply [allowed, remaining, retry_after_us, reset_after_us] into out. */
static bool gcra_result(const redisReply *reply, int rate, cdb_rl_result *out)
{
    int64_t v[4];
    if (!int_array(reply, 4, v))
        return false;
    memset(out, 0, sizeof *out);
    out->allowed = v[0] != 0;
    out->limit = rate;
    out->remaining = (int)v[1];
    out->retry_after_s = (double)v[2] / 1e6;
    out->reset_after_s = (double)v[3] / 1e6;
    return true;
}

static bool redis_gcra(cdb_ratelimit *rl, const char *key, int rate, int burst,
                       cdb_rl_result *out)
{
    char t[24], b[16];
    redisReply *reply;
    bool ok;

    snprintf(t, sizeof t, "%lld", (long long)emission_interval_us(rate));
    snprintf(b, sizeof b, "%d", burst);
    reply = run_script(rl, SCRIPT_GCRA, key, t, b);
    if (!reply)
        return false;
    ok = gcra_result(reply, rate, out);
    freeReplyObject(reply);
    return ok;
}

bool cdb_ratelimit_gcra_command(cdb_ratelimit *rl, const char *key, int rate, int burst,
                                cdb_rl_command *cmd)
{
    if (!rl->redis || rate <= 0)
        return false;
    pthread_mutex_lock(&rl->mu);
    memcpy(cmd->sha, rl->sha[SCRIPT_GCRA], sizeof cmd->sha);
    pthread_mutex_unlock(&rl->mu);
    if (!cmd->sha[0])
        return false;
    snprintf(cmd->interval, sizeof cmd->interval, "%lld", (long long)emission_interval_us(rate));
    snprintf(cmd->burst, sizeof cmd->burst, "%d", burst < 1 ? 1 : burst);
    cmd->argv[0] = "EVALSHA";
    cmd->argv[1] = cmd->sha;
    cmd->argv[2] = "1";
    cmd->argv[3] = key;
    cmd->argv[4] = cmd->interval;
    cmd->argv[5] = cmd->burst;
    cmd->argc = 6;
    return true;
}

bool cdb_ratelimit_gcra_reply(cdb_ratelimit *rl, const redisReply *reply, int rate, cdb_rl_result *out)
{
    if (!reply)
        return false;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* NOSCRIPT included: the blocking path reloads the script */
        if (strncmp(reply->str, "NOSCRIPT", 8) != 0)
            note_script_result(rl, reply);
        return false;
    }
    note_script_result(rl, NULL);
    return gcra_result(reply, rate, out);
}

/* ---- public API ---------------------------------------------------------- */

cdb_ratelimit *cdb_ratelimit_new(cdb_redis *redis)
{
    cdb_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    if (table_init(&rl->gcra) < 0 || table_init(&rl->windows) < 0)
        goto fail_free_tables;
    rl->redis = redis;
    pthread_mutex_init(&rl->mu, NULL);
    return rl;

fail_free_tables:
    table_destroy(&rl->gcra);
    table_destroy(&rl->windows);
    free(rl);
    return NULL;
}

void cdb_ratelimit_free(cdb_ratelimit *rl)
{
    if (!rl)
        return;
    table_destroy(&rl->gcra);
    table_destroy(&rl->windows);
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

void cdb_ratelimit_check(cdb_ratelimit *rl, const char *key, int rate, int burst,
                         cdb_rl_result *out)
{
    int64_t now, tat = 0;
    rl_entry *e;

    if (burst < 1)
        burst = 1;
    if (rate <= 0) {
        cdb_gcra_step(0, &tat, rate, burst, out);
        return;
    }
    if (rl->redis && redis_gcra(rl, key, rate, burst, out))
        return;

    pthread_mutex_lock(&rl->mu);
    now = cdb_mono_us();
    e = table_get(&rl->gcra, key, now);
    tat = e ? e->value : 0;
    cdb_gcra_step(now, &tat, rate, burst, out);
    /* A full bucket and no entry are the same state: the entry lives until TAT. */
    if (out->allowed)
        table_put(&rl->gcra, key, tat, tat, now);
    pthread_mutex_unlock(&rl->mu);
}

int64_t cdb_ratelimit_window_count(cdb_ratelimit *rl, const char *key, int window_s,
                                   double *reset_after_s)
{
    int64_t v[2], count = 0, now;
    double reset = 0;
    redisReply *reply = rl->redis ? run_script(rl, SCRIPT_WINDOW_COUNT, key, NULL, NULL) : NULL;
    bool ok = reply && int_array(reply, 2, v);
    rl_entry *e;

    (void)window_s;              /* the window was fixed by the first hit */
    freeReplyObject(reply);
    if (ok) {
        count = v[0];
        reset = v[1] > 0 ? (double)v[1] / 1e3 : 0;
    } else {
        pthread_mutex_lock(&rl->mu);
        now = cdb_mono_us();
        e = table_get(&rl->windows, key, now);
        if (e) {
            count = e->value;
            reset = (double)(e->expires_us - now) / 1e6;
        }
        pthread_mutex_unlock(&rl->mu);
    }
    if (reset_after_s)
        *reset_after_s = reset;
    return count;
}

int64_t cdb_ratelimit_window_hit(cdb_ratelimit *rl, const char *key, int window_s)
{
    char w[16];
    redisReply *reply = NULL;
    int64_t count, now;
    rl_entry *e;

    if (window_s < 1)
        window_s = 1;
    if (rl->redis) {
        snprintf(w, sizeof w, "%d", window_s);
        reply = run_script(rl, SCRIPT_WINDOW_HIT, key, w, NULL);
    }
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        count = reply->integer;
        freeReplyObject(reply);
        return count;
    }
    freeReplyObject(reply);

    pthread_mutex_lock(&rl->mu);
    now = cdb_mono_us();
    e = table_get(&rl->windows, key, now);
    if (e) {
        count = ++e->value;
    } else {
        count = 1;
        table_put(&rl->windows, key, 1, now + (int64_t)window_s * 1000000, now);
    }
    pthread_mutex_unlock(&rl->mu);
    return count;
}

/* Clears both places: the local table may hold hits from a Redis outage. */
void cdb_ratelimit_window_clear(cdb_ratelimit *rl, const char *key)
{
    if (rl->redis) {
        const char *argv[2] = { "DEL", key };
        cdb_error err;
        cdb_error_init(&err);
        freeReplyObject(cdb_redis_command_argv(rl->redis, 2, argv, NULL, &err));
        cdb_error_destroy(&err);
    }
    pthread_mutex_lock(&rl->mu);
    table_del(&rl->windows, key);
    pthread_mutex_unlock(&rl->mu);
}
