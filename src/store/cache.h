/*
 * cache.h - key/value cache with TTLs, backed by Redis when REDIS_URL is set
 * and by an in-process table otherwise (embedded/development mode).
 *
 * The cache may lose anything at any time: callers treat a miss and a
 * failure alike and recompute. Values are binary-safe byte strings.
 * Every function is thread-safe.
 */
#ifndef COREDB_CACHE_H
#define COREDB_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/redis.h"

typedef struct cdb_cache cdb_cache;

/* redis may be NULL (in-process). The cache does not own redis. */
cdb_cache *cdb_cache_new(cdb_redis *redis, size_t max_entries);
void cdb_cache_free(cdb_cache *c);

bool cdb_cache_is_redis(const cdb_cache *c);

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
int cdb_cache_del(cdb_cache *c, const char *key, cdb_error *err);
/* Atomically adds 1 and stores the new value in *out. */
int cdb_cache_incr(cdb_cache *c, const char *key, int64_t *out, cdb_error *err);

#endif
