/*
 * commit_lsn.c - each caller's last commit LSN, in Redis and in-process
 * (commit_lsn.h).
 *
 * Redis holds the LSN as 16 hex digits so that the script that keeps the
 * highest one compares strings (Lua numbers are doubles; an LSN is 64 bits).
 *
 * The in-process map has a fixed number of slots, one user each. A user
 * displaced by another raises `floor`, the LSN every user without a slot
 * must wait for: a displaced entry can only make reads more careful, never
 * stale. The floor is an old LSN that replicas pass within their lag.
 */
#include "store/commit_lsn.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOTS = 4096, USER_ID_MAX = 64 };

static const char KEEP_MAX_LUA[] =
    "local c = redis.call('GET', KEYS[1])"
    " if (not c) or c < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"
    " else redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 1";

typedef struct slot {
    char user_id[USER_ID_MAX];
    uint64_t lsn;
} slot;

struct cdb_commit_lsn {
    cdb_redis *redis;              /* not owned */
    int ttl_s;
    pthread_mutex_t mu;
    uint64_t floor;
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
    uint64_t h = 1469598103934665603ULL;
    for (const char *s = user_id; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return &c->slots[h % SLOTS];
}

void cdb_commit_lsn_record(cdb_commit_lsn *c, const char *user_id, uint64_t lsn)
{
    if (!c || !user_id || !*user_id || lsn == 0 || strlen(user_id) >= USER_ID_MAX)
        return;
    pthread_mutex_lock(&c->mu);
    slot *s = slot_of(c, user_id);
    if (strcmp(s->user_id, user_id) != 0) {
        if (s->lsn > c->floor)
            c->floor = s->lsn;     /* the displaced user now waits for the floor */
        snprintf(s->user_id, sizeof s->user_id, "%s", user_id);
        s->lsn = 0;
    }
    if (lsn > s->lsn)
        s->lsn = lsn;
    pthread_mutex_unlock(&c->mu);

    if (!c->redis)
        return;
    char key[USER_ID_MAX + 16], val[17], ttl[16];
    snprintf(key, sizeof key, "coredb:lsn:%s", user_id);
    snprintf(val, sizeof val, "%016" PRIX64, lsn);
    snprintf(ttl, sizeof ttl, "%d", c->ttl_s);
    const char *argv[] = {"EVAL", KEEP_MAX_LUA, "1", key, val, ttl};
    cdb_error err;
    cdb_error_init(&err);
    /* best effort: another instance then reads the primary only if Redis is down (get's UINT64_MAX) */
    redisReply *reply = cdb_redis_command_argv(c->redis, 6, argv, NULL, &err);
    if (reply)
        freeReplyObject(reply);
    cdb_error_destroy(&err);
}

uint64_t cdb_commit_lsn_get(cdb_commit_lsn *c, const char *user_id)
{
    uint64_t lsn = 0;
    if (!c || !user_id || !*user_id || strlen(user_id) >= USER_ID_MAX)
        return c ? UINT64_MAX : 0;
    pthread_mutex_lock(&c->mu);
    slot *s = slot_of(c, user_id);
    lsn = strcmp(s->user_id, user_id) == 0 ? s->lsn : c->floor;
    pthread_mutex_unlock(&c->mu);
    if (!c->redis)
        return lsn;

    char key[USER_ID_MAX + 16];
    snprintf(key, sizeof key, "coredb:lsn:%s", user_id);
    const char *argv[] = {"GET", key};
    cdb_error err;
    cdb_error_init(&err);
    redisReply *reply = cdb_redis_command_argv(c->redis, 2, argv, NULL, &err);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        lsn = UINT64_MAX;
    } else if (reply->type == REDIS_REPLY_STRING) {
        uint64_t remote = strtoull(reply->str, NULL, 16);
        if (remote > lsn)
            lsn = remote;
    }
    if (reply)
        freeReplyObject(reply);
    cdb_error_destroy(&err);
    return lsn;
}
