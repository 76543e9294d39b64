/*
 * qcache.h - the query-result cache of the data API, over cdb_cache (Redis
 * or in-process).
 *
 * Staleness rule: every table has a generation counter (coredb:<ns>:gen:<table>)
 * that every write through coredb bumps after it commits. A cached entry is
 * stored together with the generation read BEFORE its query ran, and is
 * served only while the table's generation still equals it. So once a
 * writer has its answer, no reader anywhere is served a result computed
 * before that write. A failure of the cache is a miss, never an error.
 *
 * After a Redis outage, hits are trusted again only once the generation
 * bumps written meanwhile have been applied (cdb_qcache_set_resync).
 *
 * Single flight: concurrent identical misses in one process run one query;
 * the others wait for its result (bounded wait, then they query themselves).
 * Thread-safe.
 */
#ifndef COREDB_QCACHE_H
#define COREDB_QCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/cache.h"
#include "store/pool.h"

typedef struct cdb_qcache cdb_qcache;

/* Does not own cache. ttl_s: CACHE_TTL; 0 turns caching off (every get misses, nothing stored). */
cdb_qcache *cdb_qcache_new(cdb_cache *cache, int ttl_s);
void cdb_qcache_free(cdb_qcache *qc);
/* False when CACHE_TTL is 0: callers may skip building keys. */
bool cdb_qcache_enabled(const cdb_qcache *qc);

/* What a lookup found, and what the caller must do next. */
typedef struct cdb_qcache_lookup {
    bool hit;              /* value/len hold the cached bytes (caller frees value) */
    char *value;
    size_t len;
    int64_t generation;    /* on a miss: pass to cdb_qcache_store */
    bool leader;           /* on a miss: true = run the query and call cdb_qcache_store
                              or cdb_qcache_abandon; false = the cache is unusable, just query */
    uint64_t lsn_seen;     /* on a miss, with cdb_qcache_track_lsn: that key's hex LSN, read with
                              the generation (0 when unset or untracked); UINT64_MAX when not read */
} cdb_qcache_lookup;

/*
 * Read replicas (docs/replicas.md): key (static, not copied) holds the last
 * commit LSN anyone recorded, as hex; every lookup reads it in the same
 * round trip as the generation, so a miss knows which writes its
 * generation may reflect (lsn_seen). Set once, before lookups.
 */
void cdb_qcache_track_lsn(cdb_qcache *qc, const char *key);

/*
 * Looks up key (the caller's identity + canonical query) for table. On a miss
 * where another thread is already computing the same key, waits for it (up
 * to a few seconds) and returns its result as a hit.
 */
void cdb_qcache_get(cdb_qcache *qc, const char *table, const char *key, cdb_qcache_lookup *out);
/* The leader's result: stores it (tagged with generation) and wakes followers. */
void cdb_qcache_store(cdb_qcache *qc, const char *table, const char *key, int64_t generation,
                      const char *value, size_t len);
/* The leader failed: wakes followers, who then run their own query. */
void cdb_qcache_abandon(cdb_qcache *qc, const char *key);

/*
 * A lookup made elsewhere, without blocking (the event loops ask Redis
 * asynchronously: http/loop_admit.c). _probe_keys gives the two keys to
 * read in one MGET, the table's generation (gen_key, 256 bytes) and the
 * entry (*ekey, malloc'd); false when no lookup can be made now without
 * blocking work (caching off, the namespace not loaded yet, the in-process
 * cache, a resync pending after a Redis outage): the caller then uses
 * cdb_qcache_get. _probe_hit judges the two values read (NULL = unset):
 * *gen_out gets the generation; true when the entry was computed at it,
 * with *value and *len pointing into entry. A miss here joins no flight: the
 * caller then runs cdb_qcache_get, which does.
 */
bool cdb_qcache_probe_keys(cdb_qcache *qc, const char *table, const char *key, char gen_key[256],
                           char **ekey);
bool cdb_qcache_probe_hit(const char *generation, const char *entry, size_t len, int64_t *gen_out,
                          const char **value, size_t *value_len);

/*
 * Single flight for a miss run elsewhere (the event loops: http/
 * loop_query.c), without waiting. After a miss read at generation,
 * _probe_lead makes the caller the leader of key's flight and returns true;
 * false when another flight of key runs (or just ended with a result) at
 * that generation, or one begun at another is still running: the caller
 * then gives the request to a worker, whose cdb_qcache_get follows the
 * flight. The leader ends it with _probe_finish: value (the stored bytes)
 * hands them to the followers; NULL abandons it (they query themselves).
 */
bool cdb_qcache_probe_lead(cdb_qcache *qc, const char *key, int64_t generation);
void cdb_qcache_probe_finish(cdb_qcache *qc, const char *key, int64_t generation, const char *value, size_t len);

/*
 * A stored entry's bytes, "<generation>\n<value>" (malloc'd, *out_len; NULL
 * when out of memory): the one format cdb_qcache_store writes and
 * cdb_qcache_probe_hit reads, for a store made elsewhere (the event loops'
 * asynchronous SET of a miss they ran: http/loop_query.c), with EX
 * cdb_qcache_ttl_s (CACHE_TTL).
 */
char *cdb_qcache_entry_encode(int64_t generation, const char *value, size_t len, size_t *out_len);
int cdb_qcache_ttl_s(const cdb_qcache *qc);

/*
 * Every key lives under "coredb:<ns>:", ns being the deployment's id (the
 * coredb.deployment row of its database), so deployments sharing one Redis
 * never read each other's results. Set once, before any key is used (the
 * data API loads it on first use: cdb_qcache_ensure_namespace).
 */
void cdb_qcache_set_namespace(cdb_qcache *qc, const char *ns);
/*
 * Loads the deployment id (coredb.deployment) that namespaces the keys the
 * first time it is needed; every data request and write note calls it
 * before touching a key. DATABASE_UNAVAILABLE while the database cannot
 * tell (down, or migrations pending).
 */
int cdb_qcache_ensure_namespace(cdb_qcache *qc, cdb_pool *pool, cdb_error *err);
/* The same on a connection the caller holds (outside a failed transaction). */
int cdb_qcache_ensure_namespace_on(cdb_qcache *qc, PGconn *conn, cdb_error *err);
bool cdb_qcache_has_namespace(cdb_qcache *qc);

/*
 * Returns 0 once no generation bump is left unapplied (the outbox is
 * flushed), else nonzero. Called before the first lookup after Redis came
 * back from an outage (cdb_redis_recoveries changed); until it succeeds,
 * lookups miss without being stored.
 */
typedef int (*cdb_qcache_resync_fn)(void *arg);
void cdb_qcache_set_resync(cdb_qcache *qc, cdb_redis *redis, cdb_qcache_resync_fn fn, void *arg);
/*
 * Whether what Redis holds may be trusted: false until the resync after its
 * last recovery has succeeded (_trusted runs it, blocking; _resync_pending
 * only tells). Session liveness copies follow the same rule: a Redis back
 * from an old snapshot may hold an "alive" copy of a session ended while it
 * was down, whose tombstone still waits in the outbox.
 */
bool cdb_qcache_trusted(cdb_qcache *qc);
bool cdb_qcache_resync_pending(cdb_qcache *qc);

/* Redis key of a table's generation counter ("coredb:<ns>:gen:<table>"); buf >= 200. */
void cdb_qcache_generation_key(const cdb_qcache *qc, const char *table, char *buf, size_t len);
/* Any other key of this deployment: "coredb:<ns>:<suffix>" (the maintenance flag). */
void cdb_qcache_key(const cdb_qcache *qc, const char *suffix, char *buf, size_t len);

/* Bumps a table's generation now (returns -1 when the cache is unavailable). */
int cdb_qcache_bump(cdb_qcache *qc, const char *table);

/*
 * Deletes a table's entries from Redis (SCAN + UNLINK of
 * "coredb:<ns>:q:<table>:*"), live or dead: a bump only makes them
 * unreachable, and they would keep their bytes until CACHE_TTL (encryption
 * clears the plaintext pages cached before and during its job). *deleted =
 * how many. 0 with nothing done without Redis; CACHE_UNAVAILABLE.
 */
int cdb_qcache_purge(cdb_qcache *qc, const char *table, long *deleted, cdb_error *err);

#endif
