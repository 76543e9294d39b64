/*
 * outbox.h - the Redis outbox (coredb.redis_outbox, migration 007): Redis
 * operations of committed transactions, and cache generation bumps, that
 * are applied after the commit and retried until Redis takes them. The data
 * API writes the rows inside its transactions and applies its own right
 * after; cdb_outbox_flush (a background job, and the query cache's resync)
 * applies what is left; cdb_outbox_note_write invalidates cached reads of a
 * table written outside the data API (the users module writes public.users).
 */
#ifndef COREDB_STORE_OUTBOX_H
#define COREDB_STORE_OUTBOX_H

#include <jansson.h>
#include <stddef.h>

#include "coredb/error.h"
#include "store/cache.h"
#include "store/catalog.h"
#include "store/pool.h"
#include "store/qcache.h"
#include "store/redis.h"

#define CDB_OUTBOX_MAX_GEN 200      /* tables one write may change, cascades included */
#define CDB_OUTBOX_GEN_KEY_LEN 200  /* a generation key (qcache.h) */

/* How applying one outbox row went. */
typedef enum cdb_outbox_rc {
    CDB_OUTBOX_DONE,               /* applied */
    CDB_OUTBOX_REFUSED,            /* Redis refused it for good: consume it */
    CDB_OUTBOX_DOWN,               /* not applied, retry later */
} cdb_outbox_rc;

/*
 * Applies one row (op "set" | "del" | "expire" | "incr") to the cache (Redis,
 * or the in-process table without REDIS_URL). *result (may be NULL) gets what the
 * command returned (del: count, expire: applied, incr: value); why gets the
 * reason when it is not DONE.
 */
cdb_outbox_rc cdb_outbox_apply(cdb_cache *cache, const char *op, const char *key, const char *value,
                               int ttl, json_t **result, char *why, size_t whylen);

/*
 * cdb_outbox_apply on an event loop (its thread only, data/tx.c's loop
 * path): the command on the loop's asynchronous Redis a, judged as the
 * cache judges it (DONE, REFUSED for good, DOWN: retry later), counted
 * alike, and a table generation bump or a session's end published with
 * cdb_inval_*_async (inv may be NULL): cb runs once, on the loop, after
 * every instance acknowledged it (or the wait ended). result (NULL unless
 * want_result; the callee's, cb takes it) as cdb_outbox_apply's; why: the
 * reason when not DONE. op, key and value must outlive the call back.
 * false (cb never runs): not sent (the connection not ready, or out of
 * memory): the caller takes it as DOWN.
 */
struct cdb_aredis;
struct event_base;
typedef void (*cdb_outbox_async_cb)(cdb_outbox_rc rc, json_t *result, const char *why, void *arg);
bool cdb_outbox_apply_async(struct cdb_aredis *a, struct event_base *base, cdb_inval *inv, const char *op,
                            const char *key, const char *value, int ttl, bool want_result, cdb_outbox_async_cb cb,
                            void *arg);

/*
 * Between applying rows and deleting them: with Redis Sentinel, waits until
 * a replica has the writes (cdb_redis_sync_replica), so a failover keeps
 * what the outbox deleted. < 0 when the connection failed: the master may
 * have died with them, so the caller keeps the rows and they are applied
 * again on the new master (at least once, as always). 0 otherwise.
 */
int cdb_outbox_replicated(cdb_cache *cache);

/* Appends n to the PostgreSQL array literal "{1,2,...}" being built in buf. */
void cdb_outbox_array_add(char *buf, size_t len, long long n);

/*
 * A data transaction's rows belong to the request that committed them for
 * this long after their INSERT: it locks and applies them right after its
 * COMMIT, and a flush that took them in that gap would make it answer
 * "pending" for operations applied a moment later. Rows whose committer
 * already failed to apply them (attempts > 0, and every row queued by
 * cdb_outbox_queue or cdb_outbox_note_write: they are queued because Redis
 * just refused) are the flush's at once.
 */
#define CDB_OUTBOX_COMMITTER_GRACE "5 seconds"

/*
 * Applies pending rows (oldest first, up to 500 a call, each locked FOR
 * UPDATE SKIP LOCKED: a committer applying its own rows, or another
 * instance's flush, is never waited for), leaving fresh rows to their
 * committer (above). *applied / *pending (may be NULL) report counts.
 */
int cdb_outbox_flush(cdb_pool *pool, cdb_cache *cache, int *applied, int *pending, cdb_error *err);

/*
 * Queues one Redis operation on conn (autocommit, or inside the caller's
 * transaction, committing or vanishing with it) for cdb_outbox_flush: for a
 * write outside the data API that Redis did not take and that must not be
 * lost (a session's "ended" mark, identity/liveness.c).
 */
int cdb_outbox_queue(PGconn *conn, const char *op, const char *key, const char *value, int ttl,
                     cdb_error *err);

/*
 * Tells the query cache that table changed outside /data/transaction: bumps
 * its generation and those of the tables its foreign keys cascade into,
 * before the writer answers. A bump Redis does not take is queued in the
 * outbox and applied later. Never fails the caller's write; problems are
 * logged.
 */
void cdb_outbox_note_write(cdb_pool *pool, cdb_qcache *qcache, cdb_catalog_cache *catalog,
                           const char *table);

#endif
