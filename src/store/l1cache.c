/*
 * l1cache.c - an event loop's first-level cache (l1cache.h) over one
 * bounded table (core/kvtable.h). A value is a small header (the ticket
 * or generation it is valid under) followed by its bytes.
 */
#include "store/l1cache.h"

#include <stdlib.h>
#include <string.h>

#include "core/kvtable.h"

/* An answer larger than this share of the cache is not kept (it would evict too much). */
#define ANSWER_MAX_SHARE 16

typedef struct header {
    cdb_inval_ticket ticket;       /* sessions and generations */
    int64_t generation;            /* generations and answers */
} header;

struct cdb_l1 {
    cdb_inval *inv;
    cdb_kvtable *table;
    size_t max_bytes;
    int64_t answer_ttl_ms;
};

cdb_l1 *cdb_l1_new(cdb_inval *inv, size_t max_bytes, int64_t answer_ttl_ms)
{
    cdb_l1 *l1 = calloc(1, sizeof *l1);
    if (!l1)
        return NULL;
    l1->inv = inv;
    l1->max_bytes = max_bytes;
    l1->answer_ttl_ms = answer_ttl_ms;
    /* entries: about one per 256 bytes of the bound, so the bucket array stays small */
    if (!(l1->table = cdb_kvtable_new(max_bytes / 256 + 16, max_bytes))) {
        free(l1);
        return NULL;
    }
    return l1;
}

void cdb_l1_free(cdb_l1 *l1)
{
    if (!l1)
        return;
    cdb_kvtable_free(l1->table);
    free(l1);
}

/* The header and bytes stored under key, or NULL. */
static const char *lookup(cdb_l1 *l1, const char *key, header *h, size_t *len, int64_t now_ms)
{
    size_t n;
    const char *v = cdb_kvtable_get(l1->table, key, &n, NULL, now_ms);
    if (!v || n < sizeof *h)
        return NULL;
    memcpy(h, v, sizeof *h);
    *len = n - sizeof *h;
    return v + sizeof *h;
}

/* The header and the bytes, copied once; a failed allocation keeps nothing (a cache that keeps nothing is still right). */
static void store(cdb_l1 *l1, const char *key, const header *h, const char *bytes, size_t len,
                  int64_t expires_ms, int64_t now_ms)
{
    cdb_kvtable_put_ref(l1->table, key, h, sizeof *h, bytes, len, expires_ms, now_ms, NULL);
}

bool cdb_l1_session_alive(cdb_l1 *l1, const char *session_key, const char *session_id, const char *user_id,
                          int64_t now_ms)
{
    header h;
    size_t len;
    const char *user = lookup(l1, session_key, &h, &len, now_ms);
    if (!user)
        return false;
    if (!cdb_inval_valid_session(l1->inv, session_id, &h.ticket)) {
        cdb_kvtable_del(l1->table, session_key, now_ms);
        return false;
    }
    return len == strlen(user_id) && memcmp(user, user_id, len) == 0;
}

void cdb_l1_session_store(cdb_l1 *l1, const char *session_key, const char *session_id, const char *user_id,
                          const cdb_inval_ticket *t, int64_t ttl_ms, int64_t now_ms)
{
    if (ttl_ms <= 0 || !cdb_inval_valid_session(l1->inv, session_id, t))
        return;
    header h = {.ticket = *t};
    int64_t life = ttl_ms < CDB_L1_SESSION_MAX_MS ? ttl_ms : CDB_L1_SESSION_MAX_MS;
    store(l1, session_key, &h, user_id, strlen(user_id), now_ms + life, now_ms);
}

bool cdb_l1_generation(cdb_l1 *l1, const char *gen_key, const char *table, int64_t *generation, int64_t now_ms)
{
    header h;
    size_t len;
    if (!lookup(l1, gen_key, &h, &len, now_ms))
        return false;
    if (!cdb_inval_valid_table(l1->inv, table, &h.ticket)) {
        cdb_kvtable_del(l1->table, gen_key, now_ms);
        return false;
    }
    *generation = h.generation;
    return true;
}

void cdb_l1_generation_store(cdb_l1 *l1, const char *gen_key, const char *table, const cdb_inval_ticket *t,
                             int64_t generation, int64_t now_ms)
{
    if (!cdb_inval_valid_table(l1->inv, table, t))
        return;
    header h = {.ticket = *t, .generation = generation};
    store(l1, gen_key, &h, NULL, 0, now_ms + CDB_L1_GENERATION_MAX_MS, now_ms);
}

const char *cdb_l1_answer(cdb_l1 *l1, const char *entry_key, int64_t generation, size_t *len, int64_t now_ms)
{
    header h;
    const char *v = lookup(l1, entry_key, &h, len, now_ms);
    return v && h.generation == generation ? v : NULL;
}

const char *cdb_l1_answer_ref(cdb_l1 *l1, const char *entry_key, int64_t generation, size_t *len, int64_t now_ms,
                              cdb_kvref **ref)
{
    header h;
    size_t n;
    cdb_kvref *got = NULL;
    const char *v = cdb_kvtable_get_ref(l1->table, entry_key, &n, now_ms, &got);
    if (!v)
        return NULL;
    if (n < sizeof h) {
        cdb_kvref_release(got);
        return NULL;
    }
    memcpy(&h, v, sizeof h);
    if (h.generation != generation) {
        cdb_kvref_release(got);
        return NULL;
    }
    *ref = got;
    *len = n - sizeof h;
    return v + sizeof h;
}

void cdb_l1_answer_store(cdb_l1 *l1, const char *entry_key, int64_t generation, const char *value, size_t len,
                         int64_t now_ms)
{
    if (len > l1->max_bytes / ANSWER_MAX_SHARE)
        return;
    header h = {.generation = generation};
    store(l1, entry_key, &h, value, len, now_ms + l1->answer_ttl_ms, now_ms);
}
