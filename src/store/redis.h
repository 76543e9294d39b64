/*
 * redis.h - a small pool of hiredis connections with timeouts and reconnect.
 *
 * Redis is a cache and a broadcast channel, never the only copy of anything:
 * every caller must keep working (more slowly) when a command fails with
 * CACHE_UNAVAILABLE. A connection that fails is dropped; the next command
 * reconnects, but not more often than a backoff allows, so a dead Redis
 * costs callers a fast failure, not a connect timeout each.
 * Every function is thread-safe.
 */
#ifndef COREDB_REDIS_H
#define COREDB_REDIS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"

typedef struct cdb_redis cdb_redis;

typedef struct cdb_redis_options {
    const char *url;               /* redis://[:password@]host:port[/db]; copied; may be
                                    * NULL with sentinels (no password, db 0) */
    int pool_size;                 /* connections kept, >= 1 */
    int connect_timeout_ms;        /* 0: 1000 */
    int command_timeout_ms;        /* 0: 1000 */
    /* Redis Sentinel: "host:port,..." or NULL. With it the master's address
     * comes from the sentinels before every new connection (url's host and
     * port are ignored, its credentials and db still apply). */
    const char *sentinels;
    const char *master_name;       /* the sentinels' name of the master; needed with sentinels */
    const char *sentinel_password; /* AUTH to the sentinels, or NULL */
} cdb_redis_options;

/* Parses the URL and creates the pool; connects lazily. NULL + err on a bad URL. */
cdb_redis *cdb_redis_new(const cdb_redis_options *opt, cdb_error *err);
void cdb_redis_free(cdb_redis *r);

/*
 * Runs one command (hiredis argv form, binary safe). Returns the reply (the
 * caller frees it with freeReplyObject) or NULL with err CACHE_UNAVAILABLE.
 * A REDIS_REPLY_ERROR reply is returned as a reply, not as a failure.
 */
redisReply *cdb_redis_command_argv(cdb_redis *r, int argc, const char **argv,
                                   const size_t *argvlen, cdb_error *err);
/* printf-style convenience (hiredis format: %s %b %d ...). */
redisReply *cdb_redis_command(cdb_redis *r, cdb_error *err, const char *fmt, ...);

/*
 * PING with its round-trip time in microseconds and used_memory_human from
 * INFO memory (memory may be NULL). 0 or CACHE_UNAVAILABLE.
 */
int cdb_redis_ping(cdb_redis *r, int64_t *rtt_us, char *memory, size_t memory_len, cdb_error *err);

/*
 * How many times Redis came back after this process saw it down. A change
 * tells a caller that writes it could not make meanwhile may be missing
 * (the query cache flushes pending generation bumps before trusting hits).
 * NULL gives 0.
 */
uint64_t cdb_redis_recoveries(cdb_redis *r);
/*
 * Another connection to the same Redis (an event loop's: redis_async.h)
 * reached it again after losing it: counted as a recovery, so its copies
 * wait for the resync even when no command of the pool met the outage.
 */
void cdb_redis_note_return(cdb_redis *r);
/* False while the last connection attempt or command failed (backing off); NULL gives false. */
bool cdb_redis_up(cdb_redis *r);

/*
 * With sentinels: waits (up to CDB_REDIS_REPLICA_WAIT_MS) until a replica
 * has every write any connection made so far, so a failover cannot drop
 * them. 1 when one has, 0 when none did in time or there are no sentinels
 * (after a 0 it does not wait again for CDB_REDIS_REPLICA_PAUSE_MS: a
 * master without replicas must not slow every write). CACHE_UNAVAILABLE
 * when the writes may be lost with the master: the connection failed, the
 * sentinels name another master, or no replica confirmed although one did
 * less than CDB_REDIS_REPLICA_GRACE_MS ago (a promotion the sentinels have
 * not published yet looks like that).
 */
#define CDB_REDIS_REPLICA_WAIT_MS 250
#define CDB_REDIS_REPLICA_PAUSE_MS 5000
#define CDB_REDIS_REPLICA_GRACE_MS 3000
int cdb_redis_sync_replica(cdb_redis *r, cdb_error *err);

/* Where the pool's connections go, for /health and metrics. */
typedef struct cdb_redis_topology {
    bool sentinel;              /* addresses come from Redis Sentinel */
    char master_name[80];       /* with sentinel */
    char master[280];           /* host:port of the current master; "" before the first connect */
    uint64_t master_changes;    /* times a connect found a master at another address */
    char problem[240];          /* why the last connect or command failed, while down; log-safe */
} cdb_redis_topology;
/* Whether addresses come from Redis Sentinel (lock-free: fixed when r is made); false for NULL. */
bool cdb_redis_uses_sentinels(const cdb_redis *r);
/* Fills *t; a NULL r gives zeros. */
void cdb_redis_topology_get(cdb_redis *r, cdb_redis_topology *t);

/*
 * Where the pool's connections go now, for a connection made outside the
 * pool (store/redis_async.c): the URL's host and port, or with sentinels
 * the master the pool last verified, plus the URL's credentials and db.
 * It never blocks: no sentinel is asked and no name looked up, only the
 * pool's lock taken; a host name is given as the numeric address the
 * pool's last connect to it reached. The strings are copies owned by *ep;
 * cdb_redis_endpoint_destroy wipes the password and frees them. 0, or -1
 * when there is no address yet (sentinels not asked or the name not
 * resolved yet: the pool's next connect does it) or on out of memory (*ep
 * then holds nothing to free).
 */
typedef struct cdb_redis_endpoint {
    char *host;                 /* a numeric IPv4 or IPv6 address */
    int port;
    char *user;                 /* NULL: AUTH with the password alone */
    char *password;             /* NULL: no AUTH; a secret, never log it */
    int db;
    bool sentinel;              /* the address came from the sentinels */
    int connect_timeout_ms;     /* the pool's connect timeout */
} cdb_redis_endpoint;
int cdb_redis_endpoint_get(cdb_redis *r, cdb_redis_endpoint *ep);
void cdb_redis_endpoint_destroy(cdb_redis_endpoint *ep);
/* Times a connect found the sentinels' master at a new address (lock-free); NULL gives 0. */
uint64_t cdb_redis_master_changes(cdb_redis *r);

/* The URL with the password redacted (owned by r). */
const char *cdb_redis_display_url(const cdb_redis *r);

#endif
