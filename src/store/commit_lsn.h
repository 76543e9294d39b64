/*
 * commit_lsn.h - read-your-writes: the WAL position of each caller's last
 * committed write, so that a read goes to a replica only once that replica
 * has replayed it.
 *
 * Kept in Redis (key coredb:lsn:<user id>, the highest LSN wins, expiring
 * after SESSION_TIMEOUT like an idle session) so every instance sees it,
 * and in a small in-process map so it also works without Redis. Next to it,
 * the highest commit LSN of anyone (coredb:lsn:_last, read by the query
 * cache with each table generation: store/qcache.h): an answer from a
 * replica that has not replayed it may miss a write whose cache generation
 * bump the reader already saw, so it must not be cached (query_run.c).
 * Every function is thread-safe.
 */
#ifndef COREDB_STORE_COMMIT_LSN_H
#define COREDB_STORE_COMMIT_LSN_H

#include <libpq-fe.h>
#include <stdint.h>

#include "store/redis.h"

typedef struct cdb_commit_lsn cdb_commit_lsn;

/* redis may be NULL (in-process only); ttl_s: how long a recorded LSN lives in Redis. */
cdb_commit_lsn *cdb_commit_lsn_new(cdb_redis *redis, int ttl_s);
void cdb_commit_lsn_free(cdb_commit_lsn *c);

/*
 * user_id committed a write at lsn (best effort in Redis; the local map
 * always). Call it before the write's cache generations are bumped.
 * user_id NULL (an anonymous or bootstrap write): only the last-commit LSN.
 */
void cdb_commit_lsn_record(cdb_commit_lsn *c, const char *user_id, uint64_t lsn);
/*
 * Records, for user_id (may be NULL), the commit just made on conn (out of
 * any transaction): pg_current_wal_insert_lsn(), at or past the end of the
 * commit record. Not pg_current_wal_lsn(): with synchronous_commit off the
 * commit record may not be written yet and the write position would come
 * before it. One round trip; c NULL (no replicas) costs nothing. A failed
 * read records a far LSN: that caller reads from the primary for a while,
 * which is safe.
 */
void cdb_commit_lsn_note(cdb_commit_lsn *c, PGconn *conn, const char *user_id);
/*
 * The LSN a replica must have replayed before it may answer user_id: 0 when
 * the caller wrote nothing recently, UINT64_MAX when Redis could not be
 * asked (the primary then answers: never a stale read for want of Redis).
 * One Redis GET, none when this request's session check prefetched it.
 * *last (may be NULL) gets the highest commit LSN recorded in this process
 * (the query cache reads the shared one: CDB_COMMIT_LSN_LAST_KEY).
 */
uint64_t cdb_commit_lsn_get(cdb_commit_lsn *c, const char *user_id, uint64_t *last);

/*
 * Piggybacking on the session check (identity/liveness.c), which already
 * asks Redis once per authenticated request: it calls _clear first, then,
 * when it fetched the caller's key (cdb_commit_lsn_key) in its own MGET,
 * _prefetched with that reply. The next cdb_commit_lsn_get for that user on
 * this thread takes it instead of asking Redis again, once. Per thread: a
 * request's session check and its query run on the same worker; a value
 * read at the start of the request is recent enough, since the caller's
 * own writes were answered before the request was sent.
 */
#define CDB_COMMIT_LSN_LAST_KEY "coredb:lsn:_last"
void cdb_commit_lsn_key(const char *user_id, char *buf, size_t len);
void cdb_commit_lsn_prefetch_clear(void);
void cdb_commit_lsn_prefetched(const char *user_id, const redisReply *mine);

#endif
