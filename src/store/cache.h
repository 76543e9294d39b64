/*
 * cache.h - key/value cache with TTLs, backed by Redis when REDIS_URL is set
 * and by an in-process table otherwise (embedded/development mode).
 *
 * The cache may lose anything at any time: callers treat a miss and a
 * failure alike and recompute. Values are binary-safe byte strings.
 * Every function is thread-safe. Failures: CACHE_UNAVAILABLE when Redis is
 * down or answers with an error a retry may cure (LOADING, BUSY, READONLY,
 * ...), VALIDATION_FAILED with Redis's words when retrying cannot help
 * (WRONGTYPE, not an integer): callers that must retry (the outbox) tell
 * the two apart by the code, whichever backend runs.
 */
#ifndef COREDB_CACHE_H
#define COREDB_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/redis.h"
#include "store/invalidation.h"

typedef struct cdb_cache cdb_cache;

/* redis may be NULL (in-process). The cache does not own redis. */
cdb_cache *cdb_cache_new(cdb_redis *redis, size_t max_entries);
void cdb_cache_free(cdb_cache *c);

/*
 * With Redis: the invalidations of the first-level caches of every instance
 * (store/invalidation.h), owned by the cache; NULL with the in-process table
 * (one instance: nothing to tell). Whoever changes a table generation or
 * ends a session in Redis publishes it there.
 */
cdb_inval *cdb_cache_inval(const cdb_cache *c);
bool cdb_cache_is_redis(const cdb_cache *c);
/* The Redis pool behind the cache, NULL for the in-process table. */
cdb_redis *cdb_cache_redis(const cdb_cache *c);

/*
 * 1 and *value (malloc'd, caller frees) + *len on a hit, 0 on a miss,
 * CACHE_UNAVAILABLE when Redis failed.
 */
int cdb_cache_get(cdb_cache *c, const char *key, char **value, size_t *len, cdb_error *err);
#define CDB_CACHE_GET_MANY_MAX 8

/*
 * Several keys in one round trip (Redis MGET): values[i] (malloc'd, caller
 * frees) and lens[i] for each hit, NULL for each miss. 0, or
 * CACHE_UNAVAILABLE (no values) when Redis failed.
 */
int cdb_cache_get_many(cdb_cache *c, int n, const char *const *keys, char **values, size_t *lens,
                       cdb_error *err);
/* ttl_s <= 0: no expiry. */
int cdb_cache_set(cdb_cache *c, const char *key, const char *value, size_t len, int ttl_s, cdb_error *err);
/* *deleted (may be NULL): 1 when the key existed, else 0 (Redis DEL's count). */
int cdb_cache_del(cdb_cache *c, const char *key, int *deleted, cdb_error *err);
/*
 * Sets a live key's TTL to ttl_s seconds (<= 0 deletes it, as Redis does);
 * *applied (may be NULL): whether the key existed (Redis EXPIRE's 1/0).
 * Atomic in both backends.
 */
int cdb_cache_expire(cdb_cache *c, const char *key, int ttl_s, bool *applied, cdb_error *err);
/*
 * Atomically adds 1 and stores the new value in *out. VALIDATION_FAILED
 * when the value is not an integer or would overflow.
 */
int cdb_cache_incr(cdb_cache *c, const char *key, int64_t *out, cdb_error *err);

/*
 * Whether a Redis error reply's text is one a retry may cure (LOADING,
 * BUSY, READONLY, ...: CACHE_UNAVAILABLE above) rather than final
 * (WRONGTYPE, not an integer: VALIDATION_FAILED), for a caller that sent
 * the command itself (store/outbox.c's loop apply).
 */
bool cdb_cache_reply_transient(const char *s);

#endif
