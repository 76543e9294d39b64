/*
 * kvtable.c - the bounded key/value table of kvtable.h: a chained hash
 * table with a fixed bucket array sized from max_entries, and a list of the
 * entries from least to most recently written.
 */
#include "core/kvtable.h"
#include "core/hash.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS (1u << 20)
#define EVICT_SCAN 16            /* oldest entries examined for expiry when room is needed */

/* A value: its bytes (len plus a NUL) after a reference count; the table's entry holds one. */
struct cdb_kvref {
    atomic_long refs;
    size_t len;
    _Alignas(16) char bytes[];     /* aligned for callers that cast (loop_admit.c's memo) */
};

typedef struct entry {
    struct entry *next;          /* bucket chain */
    struct entry *older, *newer; /* write-order list */
    uint64_t hash;
    int64_t expires_ms;          /* deadline; 0: never */
    cdb_kvref *value;            /* its len bytes plus a NUL */
    char key[];
} entry;

struct cdb_kvtable {
    entry **buckets;
    size_t nbuckets;             /* a power of two */
    size_t count, max_entries;
    size_t bytes, max_bytes;     /* keys and values; max 0: unbounded */
    entry *oldest, *newest;
};

static uint64_t hash_key(const char *key)
{
    return cdb__hash_str(key);
}

static bool expired(const entry *e, int64_t now)
{
    return e->expires_ms != 0 && now >= e->expires_ms;
}

static size_t entry_bytes(const entry *e)
{
    return strlen(e->key) + e->value->len;
}

static void list_unlink(cdb_kvtable *t, entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        t->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        t->newest = e->older;
    e->older = e->newer = NULL;
}

static void list_append(cdb_kvtable *t, entry *e)
{
    e->older = t->newest;
    e->newer = NULL;
    if (t->newest)
        t->newest->newer = e;
    else
        t->oldest = e;
    t->newest = e;
}

/* The entry for key, or NULL; *slot is the link pointing at it (or the end). */
static entry *find(cdb_kvtable *t, const char *key, uint64_t h, entry ***slot)
{
    entry **pp = &t->buckets[h & (t->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            break;
    *slot = pp;
    return *pp;
}

static void remove_entry(cdb_kvtable *t, entry *e)
{
    entry **pp;
    find(t, e->key, e->hash, &pp);
    *pp = e->next;
    list_unlink(t, e);
    t->count--;
    t->bytes -= entry_bytes(e);
    cdb_kvref_release(e->value);
    free(e);
}

/* A live entry for key, dropping it if it has expired. */
static entry *lookup_live(cdb_kvtable *t, const char *key, int64_t now)
{
    entry **pp;
    entry *e = find(t, key, hash_key(key), &pp);
    if (e && expired(e, now)) {
        remove_entry(t, e);
        e = NULL;
    }
    return e;
}

static bool over(const cdb_kvtable *t, size_t more_entries, size_t more_bytes)
{
    return t->count + more_entries > t->max_entries ||
           (t->max_bytes && t->bytes + more_bytes > t->max_bytes);
}

/* Drops the expired entries among the oldest EVICT_SCAN. */
static void drop_expired(cdb_kvtable *t, int64_t now)
{
    entry *e = t->oldest;
    for (int i = 0; e && i < EVICT_SCAN; i++) {
        entry *newer = e->newer;
        if (expired(e, now))
            remove_entry(t, e);
        e = newer;
    }
}

/* Makes room for an entry of `bytes` more: expired ones among the oldest first, then the oldest. */
static void make_room(cdb_kvtable *t, size_t bytes, int64_t now)
{
    drop_expired(t, now);
    while (t->oldest && over(t, 1, bytes))
        remove_entry(t, t->oldest);
}

cdb_kvtable *cdb_kvtable_new(size_t max_entries, size_t max_bytes)
{
    cdb_kvtable *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->max_entries = max_entries ? max_entries : 1;
    t->max_bytes = max_bytes;
    /* load factor <= 1 up to MAX_BUCKETS; the chains grow past that */
    t->nbuckets = 16;
    while (t->nbuckets < t->max_entries && t->nbuckets < MAX_BUCKETS)
        t->nbuckets *= 2;
    if (!(t->buckets = calloc(t->nbuckets, sizeof *t->buckets))) {
        free(t);
        return NULL;
    }
    return t;
}

void cdb_kvtable_clear(cdb_kvtable *t)
{
    while (t->oldest)
        remove_entry(t, t->oldest);
}

void cdb_kvtable_free(cdb_kvtable *t)
{
    if (!t)
        return;
    cdb_kvtable_clear(t);
    free(t->buckets);
    free(t);
}

const char *cdb_kvtable_get(cdb_kvtable *t, const char *key, size_t *len, int64_t *expires_ms, int64_t now_ms)
{
    entry *e = lookup_live(t, key, now_ms);
    if (!e)
        return NULL;
    *len = e->value->len;
    if (expires_ms)
        *expires_ms = e->expires_ms;
    return e->value->bytes;
}

const char *cdb_kvtable_get_ref(cdb_kvtable *t, const char *key, size_t *len, int64_t now_ms, cdb_kvref **ref)
{
    entry *e = lookup_live(t, key, now_ms);
    if (!e)
        return NULL;
    /* relaxed: taking a reference orders nothing; the release below does */
    atomic_fetch_add_explicit(&e->value->refs, 1, memory_order_relaxed);
    *ref = e->value;
    *len = e->value->len;
    return e->value->bytes;
}

void cdb_kvref_release(cdb_kvref *ref)
{
    if (ref && atomic_fetch_sub_explicit(&ref->refs, 1, memory_order_acq_rel) == 1)
        free(ref);
}

const char *cdb_kvref_bytes(const cdb_kvref *ref, size_t *len)
{
    *len = ref->len;
    return ref->bytes;
}

int cdb_kvtable_put(cdb_kvtable *t, const char *key, const char *value, size_t len, int64_t expires_ms,
                    int64_t now_ms)
{
    return cdb_kvtable_put_ref(t, key, NULL, 0, value, len, expires_ms, now_ms, NULL);
}

int cdb_kvtable_put_ref(cdb_kvtable *t, const char *key, const void *head, size_t head_len, const char *value,
                        size_t len, int64_t expires_ms, int64_t now_ms, cdb_kvref **ref)
{
    size_t klen = strlen(key), total = head_len + len;
    cdb_kvref *copy = total >= head_len ? malloc(sizeof *copy + total + 1) : NULL;
    entry *e = copy ? malloc(sizeof *e + klen + 1) : NULL;
    if (!e) {
        free(copy);
        return -1;
    }
    atomic_init(&copy->refs, ref ? 2 : 1);
    copy->len = total;
    if (head_len > 0)
        memcpy(copy->bytes, head, head_len);
    if (len > 0)
        memcpy(copy->bytes + head_len, value, len);
    copy->bytes[total] = '\0';
    if (ref)
        *ref = copy;
    memcpy(e->key, key, klen + 1);
    e->hash = hash_key(key);
    e->value = copy;
    e->expires_ms = expires_ms;

    entry **pp, *old = find(t, key, e->hash, &pp);
    if (old)
        remove_entry(t, old);
    /* every write also drops what expired among the oldest, so a table of
       short-lived entries stays as small as what is live, not its bound */
    if (over(t, 1, klen + total))
        make_room(t, klen + total, now_ms);
    else
        drop_expired(t, now_ms);
    /* eviction may have rewired the chains: insert at the head of the bucket */
    entry **bucket = &t->buckets[e->hash & (t->nbuckets - 1)];
    e->next = *bucket;
    *bucket = e;
    t->count++;
    t->bytes += klen + total;
    list_append(t, e);
    return 0;
}

bool cdb_kvtable_del(cdb_kvtable *t, const char *key, int64_t now_ms)
{
    entry **pp;
    entry *e = find(t, key, hash_key(key), &pp);
    if (!e)
        return false;
    bool live = !expired(e, now_ms);
    remove_entry(t, e);
    return live;
}

bool cdb_kvtable_expire(cdb_kvtable *t, const char *key, int64_t expires_ms, int64_t now_ms)
{
    entry *e = lookup_live(t, key, now_ms);
    if (e)
        e->expires_ms = expires_ms;
    return e != NULL;
}

size_t cdb_kvtable_count(const cdb_kvtable *t)
{
    return t->count;
}

size_t cdb_kvtable_bytes(const cdb_kvtable *t)
{
    return t->bytes;
}
