/*
 * commit_lsn.c - each caller's last commit LSN, in Redis and in-process
 * (commit_lsn.h).
 *
 * Redis holds the LSN as 16 hex digits so that the script that keeps the
 * highest one compares strings (Lua numbers are doubles; an LSN is 64 bits).
 *
 * Recorded for /data/transaction (data/tx.c) and the users API
 * (identity/users.c): every write through coredb that a routed read can see.
 *
 * The in-process map has a fixed number of slots, one user each. A user
 * displaced by another raises `floor`, the LSN every user without a slot
 * must wait for: a displaced entry can only make reads more careful, never
 * stale. The floor is an old LSN that replicas pass within their lag.
 */
#include "store/commit_lsn.h"
#include "core/hash.h"

#include "store/pg.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOTS = 4096, USER_ID_MAX = 64 };

/* KEYS: the caller's key, the last-commit key; each keeps the highest LSN. */
static const char KEEP_MAX_LUA[] =
    "for _, k in ipairs(KEYS) do local c = redis.call('GET', k)"
    " if (not c) or c < ARGV[1] then redis.call('SET', k, ARGV[1], 'EX', ARGV[2])"
    " else redis.call('EXPIRE', k, ARGV[2]) end end return 1";
static const char LAST_KEY[] = CDB_COMMIT_LSN_LAST_KEY;

/* What this thread's last session check fetched (commit_lsn.h). */
static _Thread_local struct {
    bool set;
    char user_id[USER_ID_MAX];
    uint64_t mine;
} prefetch;

typedef struct slot {
    char user_id[USER_ID_MAX];
    uint64_t lsn;
} slot;

struct cdb_commit_lsn {
    cdb_redis *redis;              /* not owned */
    int ttl_s;
    pthread_mutex_t mu;
    uint64_t floor;
    uint64_t last;                 /* highest LSN recorded in this process */
    slot slots[SLOTS];
};

cdb_commit_lsn *cdb_commit_lsn_new(cdb_redis *redis, int ttl_s)
{
    cdb_commit_lsn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->redis = redis;
    c->ttl_s = ttl_s > 0 ? ttl_s : 1800;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void cdb_commit_lsn_free(cdb_commit_lsn *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static slot *slot_of(cdb_commit_lsn *c, const char *user_id)
{
    return &c->slots[cdb__hash_str(user_id) % SLOTS];
}

void cdb_commit_lsn_record(cdb_commit_lsn *c, const char *user_id, uint64_t lsn)
{
    if (user_id && (!*user_id || strlen(user_id) >= USER_ID_MAX))
        user_id = NULL;
    if (!c || lsn == 0)
        return;
    pthread_mutex_lock(&c->mu);
    slot *s = user_id ? slot_of(c, user_id) : NULL;
    if (!s) {
        /* anonymous: only the last-commit LSN below */
    } else if (strcmp(s->user_id, user_id) != 0) {
        if (s->lsn > c->floor)
            c->floor = s->lsn;     /* the displaced user now waits for the floor */
        snprintf(s->user_id, sizeof s->user_id, "%s", user_id);
        s->lsn = 0;
    }
    if (s && lsn > s->lsn)
        s->lsn = lsn;
    if (lsn > c->last)
        c->last = lsn;
    pthread_mutex_unlock(&c->mu);

    if (!c->redis)
        return;
    char key[USER_ID_MAX + 16], val[17], ttl[16];
    snprintf(key, sizeof key, "coredb:lsn:%s", user_id ? user_id : "");
    snprintf(val, sizeof val, "%016" PRIX64, lsn);
    snprintf(ttl, sizeof ttl, "%d", c->ttl_s);
    const char *with_user[] = {"EVAL", KEEP_MAX_LUA, "2", key, LAST_KEY, val, ttl};
    const char *last_only[] = {"EVAL", KEEP_MAX_LUA, "1", LAST_KEY, val, ttl};
    cdb_error err;
    cdb_error_init(&err);
    /* best effort: another instance then reads the primary only if Redis is down (get's UINT64_MAX) */
    redisReply *reply = user_id ? cdb_redis_command_argv(c->redis, 7, with_user, NULL, &err)
                                : cdb_redis_command_argv(c->redis, 6, last_only, NULL, &err);
    if (reply)
        freeReplyObject(reply);
    cdb_error_destroy(&err);
}

void cdb_commit_lsn_note(cdb_commit_lsn *c, PGconn *conn, const char *user_id)
{
    if (!c || !conn)
        return;
    uint64_t lsn = UINT64_MAX >> 1;
    PGresult *res = cdb_pg_query(conn, "SELECT pg_current_wal_insert_lsn()");
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        unsigned int hi, lo;
        if (sscanf(PQgetvalue(res, 0, 0), "%X/%X", &hi, &lo) == 2)
            lsn = ((uint64_t)hi << 32) | lo;
    }
    PQclear(res);
    cdb_commit_lsn_record(c, user_id, lsn);
}

static uint64_t hex_lsn(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? strtoull(r->str, NULL, 16) : 0;
}

void cdb_commit_lsn_key(const char *user_id, char *buf, size_t len)
{
    snprintf(buf, len, "coredb:lsn:%s", user_id ? user_id : "");
}

void cdb_commit_lsn_prefetch_clear(void)
{
    prefetch.set = false;
}

void cdb_commit_lsn_prefetched(const char *user_id, const redisReply *mine)
{
    prefetch.set = false;
    if (!user_id || strlen(user_id) >= USER_ID_MAX || !mine ||
        (mine->type != REDIS_REPLY_STRING && mine->type != REDIS_REPLY_NIL))
        return;
    snprintf(prefetch.user_id, sizeof prefetch.user_id, "%s", user_id);
    prefetch.mine = hex_lsn(mine);
    prefetch.set = true;
}

uint64_t cdb_commit_lsn_get(cdb_commit_lsn *c, const char *user_id, uint64_t *last)
{
    uint64_t lsn = 0, all = 0;
    if (!c || !user_id || !*user_id || strlen(user_id) >= USER_ID_MAX) {
        if (last)
            *last = c ? UINT64_MAX : 0;
        return c ? UINT64_MAX : 0;
    }
    pthread_mutex_lock(&c->mu);
    slot *s = slot_of(c, user_id);
    lsn = strcmp(s->user_id, user_id) == 0 ? s->lsn : c->floor;
    all = c->last;
    pthread_mutex_unlock(&c->mu);

    if (c->redis && prefetch.set && strcmp(prefetch.user_id, user_id) == 0) {
        /* this request's session check brought it: no second round trip */
        if (prefetch.mine > lsn)
            lsn = prefetch.mine;
    } else if (c->redis) {
        char key[USER_ID_MAX + 16];
        cdb_commit_lsn_key(user_id, key, sizeof key);
        const char *argv[] = {"GET", key};
        cdb_error err;
        cdb_error_init(&err);
        redisReply *reply = cdb_redis_command_argv(c->redis, 2, argv, NULL, &err);
        if (!reply || (reply->type != REDIS_REPLY_STRING && reply->type != REDIS_REPLY_NIL))
            lsn = UINT64_MAX;
        else if (hex_lsn(reply) > lsn)
            lsn = hex_lsn(reply);
        if (reply)
            freeReplyObject(reply);
        cdb_error_destroy(&err);
    }
    prefetch.set = false;
    if (last)
        *last = all;
    return lsn;
}
