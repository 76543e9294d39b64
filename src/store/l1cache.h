/*
 * l1cache.h - an event loop's first-level cache: what its requests last read
 * from Redis about sessions, table generations and cached data-API answers,
 * kept in the process so a repeat needs no round trip at all.
 *
 * Exactness comes from store/invalidation.h: a session's liveness and a
 * table's generation are stored with the ticket taken BEFORE they were read
 * from Redis, and are used only while that ticket is valid (no logout,
 * revocation or write of that name published since, on any instance, and
 * the subscription never lost meanwhile). Answers are stored under their
 * generation and used only at that generation. With the subscription down,
 * no ticket is given: every lookup misses and nothing is stored, so the
 * loop goes to Redis as if there were no first-level cache.
 *
 * Deadlines: a session's entry lives no longer than its Redis copy (its
 * PTTL when read) nor CDB_L1_SESSION_MAX_MS, so the idle-timeout and
 * absolute-lifetime checks that run when the Redis copy expires still run;
 * a generation at most CDB_L1_GENERATION_MAX_MS (a bound for anything
 * unforeseen, not needed for exactness); an answer at most CACHE_TTL.
 *
 * One thread (the loop's): no lock. Bounded by max_bytes (keys and values).
 */
#ifndef COREDB_STORE_L1CACHE_H
#define COREDB_STORE_L1CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/kvtable.h"
#include "store/invalidation.h"

#define CDB_L1_SESSION_MAX_MS 5000
#define CDB_L1_GENERATION_MAX_MS 10000

typedef struct cdb_l1 cdb_l1;

/* inv (not owned) validates tickets; answer_ttl_ms: CACHE_TTL. NULL on out of memory. */
cdb_l1 *cdb_l1_new(cdb_inval *inv, size_t max_bytes, int64_t answer_ttl_ms);
void cdb_l1_free(cdb_l1 *l1);

/* True when session_id is known alive for user_id (session_key: its Redis key). */
bool cdb_l1_session_alive(cdb_l1 *l1, const char *session_key, const char *session_id, const char *user_id,
                          int64_t now_ms);
/* The session was read alive from Redis with ttl_ms left, under ticket t (taken before the read). */
void cdb_l1_session_store(cdb_l1 *l1, const char *session_key, const char *session_id, const char *user_id,
                          const cdb_inval_ticket *t, int64_t ttl_ms, int64_t now_ms);

/* The generation of table (gen_key: its Redis key) when known; false otherwise. */
bool cdb_l1_generation(cdb_l1 *l1, const char *gen_key, const char *table, int64_t *generation, int64_t now_ms);
/* table's generation was read from Redis under ticket t (taken before the read). */
void cdb_l1_generation_store(cdb_l1 *l1, const char *gen_key, const char *table, const cdb_inval_ticket *t,
                             int64_t generation, int64_t now_ms);

/* The answer cached under entry_key at generation (pointer valid until the next store), or NULL. */
const char *cdb_l1_answer(cdb_l1 *l1, const char *entry_key, int64_t generation, size_t *len, int64_t now_ms);
/*
 * The same, for handing the bytes on without a copy (an answer's body to
 * the socket): *ref holds them valid whatever the cache does meanwhile
 * (replaced, evicted, freed) until cdb_kvref_release(*ref), on any thread.
 */
const char *cdb_l1_answer_ref(cdb_l1 *l1, const char *entry_key, int64_t generation, size_t *len, int64_t now_ms,
                              cdb_kvref **ref);
void cdb_l1_answer_store(cdb_l1 *l1, const char *entry_key, int64_t generation, const char *value, size_t len,
                         int64_t now_ms);

#endif
