/*
 * redis_async.h - one asynchronous hiredis connection owned by one libevent
 * event loop, for the commands of the hot path (session liveness, rate
 * limit, cache lookup) that a loop sends without handing the request to a
 * worker.
 *
 * Where it connects: wherever the process's blocking pool (store/redis.h)
 * sends its connections now — the URL's address, or with Redis Sentinel the
 * master the pool last verified — with the URL's credentials and database.
 * It never asks the sentinels itself (that would block); it follows a
 * failover when the pool has seen the master move (it then closes
 * gracefully and reconnects to the new address).
 *
 * Life of the connection: idle -> connecting (TCP connect, then AUTH when
 * there is a password, SELECT when the db is not 0, ROLE with sentinels, or
 * a PING, all pipelined) -> ready (every handshake reply was OK) -> closing
 * -> idle. Only a ready connection takes commands; callers that find it not
 * ready take the slow (blocking, worker) path. cdb_aredis_ready starts a
 * connect when the connection is idle and the backoff allows it (100 ms
 * after a failure, doubling to 2 s, reset by the first reply to a command): no
 * timer, no busy loop, and a dead Redis costs each caller one branch.
 *
 * Failures: a lost connection, a refused connect or handshake, a reply out
 * of order, or a command (handshake included) with no reply after its
 * timeout close the connection; every command still pending then gets a
 * NULL reply, exactly once, and the connection backs off. The first
 * failure of an outage is logged (warn, redis_async_unavailable, never a
 * credential), the recovery once (info, redis_async_recovered).
 *
 * Threads: every function, and every callback, runs on the loop's thread
 * (cdb_aredis_new and cdb_aredis_free also before the loop runs or after it
 * stopped); only cdb_aredis_stats_get may be called from any thread.
 */
#ifndef COREDB_STORE_REDIS_ASYNC_H
#define COREDB_STORE_REDIS_ASYNC_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/redis.h"

struct event_base;

typedef struct cdb_aredis cdb_aredis;

/*
 * reply: the reply (owned by hiredis, valid only during the call), or NULL
 * when the command failed: connection lost, timed out, or the connection is
 * being freed. A Redis error reply (REDIS_REPLY_ERROR: READONLY after a
 * failover, NOSCRIPT, ...) is a reply: the caller decides. A callback may
 * call cdb_aredis_ready and cdb_aredis_send (refused while the connection is
 * closing) but never cdb_aredis_free.
 */
typedef void (*cdb_aredis_cb)(redisReply *reply, void *arg);

/*
 * sync: the process's blocking pool, read (never blocking the loop) for the
 * address, credentials and db; it must outlive the connection.
 * command_timeout_ms (> 0): a command with no reply by then fails (NULL to
 * its callback) and the connection is dropped; the handshake gets the
 * pool's connect timeout instead. Connects lazily. NULL on out of memory
 * or a timeout <= 0.
 */
cdb_aredis *cdb_aredis_new(struct event_base *base, cdb_redis *sync, int command_timeout_ms);
/* Every pending callback runs with NULL before it returns. NULL is a no-op.
 * Never from inside one of this connection's callbacks (aborts). */
void cdb_aredis_free(cdb_aredis *a);

/*
 * True when connected and ready (the handshake answered). When not, starts
 * a (re)connect if the backoff allows and returns false. Never blocks
 * (with a host name instead of an address in REDIS_URL, the connect's name
 * lookup is the system resolver's: see docs/architecture.md).
 */
bool cdb_aredis_ready(cdb_aredis *a);

/*
 * Queues one command (hiredis argv form, binary safe; argvlen may be NULL)
 * behind the ones already queued: commands sent in one loop iteration go
 * out in one write and are answered in order. cb runs exactly once, on the
 * loop, later (never inside this call). false (cb never runs) when not
 * ready, out of memory, or for a command that does not answer once
 * ((P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, MONITOR, RESET, QUIT).
 */
bool cdb_aredis_send(cdb_aredis *a, cdb_aredis_cb cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen);

/* Counters for an operator (monotonic since cdb_aredis_new). */
typedef struct cdb_aredis_stats {
    uint64_t connects;          /* handshakes completed (reconnects = connects - 1) */
    uint64_t failures;          /* connections that failed: connect, handshake, lost, timed out */
    uint64_t timeouts;          /* of those: a command (or the handshake) had no reply in time */
    uint64_t failed_commands;   /* callbacks that got NULL */
} cdb_aredis_stats;
/* Any thread (relaxed reads). A NULL a gives zeros. */
void cdb_aredis_stats_get(cdb_aredis *a, cdb_aredis_stats *st);

#endif
