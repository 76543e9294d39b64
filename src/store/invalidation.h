/*
 * invalidation.h - cross-instance invalidation through Redis pub/sub, for
 * the first-level (in-process, per event loop) caches of session liveness,
 * table generations and cached data-API answers.
 *
 * Every instance of one namespace subscribes to the channel
 * "coredb:<ns>:inval" (channels are global to a Redis server, whatever the
 * db: that is why the name carries the namespace). A logout or revocation
 * publishes "s <usec> <session_id>", a table write "t <usec> <table>"
 * (<usec>: the publisher's CLOCK_REALTIME in microseconds, to measure the
 * delay; at most CDB_INVAL_NAME_MAX bytes of name), or for a longer name
 * "T <usec>" / "S <usec>" (every stripe of the kind). Anything else on the
 * channel is ignored with a rate-limited warning. The publisher applies
 * the invalidation to its own process first, so an instance never depends
 * on its own subscription for its own writes; it also sees its own message
 * come back, which only invalidates once more.
 *
 * What a reader holds is not a copy of the state but a ticket:
 *
 *  - Striped counters: CDB_INVAL_STRIPES atomic counters per kind (tables,
 *    sessions), indexed by a hash (core/hash.h) of the name. An invalidation
 *    increments its name's stripe; a collision only invalidates more than
 *    needed, never less.
 *  - An epoch, incremented when the subscription is lost AND again when a
 *    new one is confirmed by SUBSCRIBE's reply; "usable" is true only
 *    between that confirmation and the next loss. Messages published while
 *    no subscription was in place are lost, and the epoch makes every
 *    ticket taken before the loss invalid at once: that is the flush.
 *  - A reader takes a ticket BEFORE it reads the value from Redis (or
 *    PostgreSQL), keeps what it read with the ticket, and may use it only
 *    while cdb_inval_valid_* says the ticket is valid: same epoch, usable,
 *    and that stripe's counter unchanged. Taking a ticket fails (false)
 *    while not usable: the first-level cache must then be bypassed.
 *
 * Acknowledged: every subscriber, once it has applied a message, pushes to
 * the list "<channel>:ack:<message>" (pipelined on its second connection);
 * the publisher waits until as many have as PUBLISH reached, at most
 * CDB_INVAL_ACK_WAIT_MS. A subscription proves itself at least every
 * CDB_INVAL_PING_MS (messages, or a PING) and gives no ticket once it has
 * not for CDB_INVAL_FRESH_MS (< the ack wait): when a publisher returns,
 * every instance applied its message or uses no ticket. So a writer's
 * answer means no instance serves what the write voided.
 *
 * Loss detection: any read/write error, a close by the server (CLIENT KILL
 * TYPE pubsub, a restart), or no answer to a PING (sent every
 * CDB_INVAL_PING_MS while the channel is quiet) within CDB_INVAL_DEAD_MS
 * marks the subscription lost, and so does a Sentinel failover the pool
 * has seen (cdb_redis_master_changes: publishers now reach the new master;
 * a demoted master that replicates from it still relays PUBLISH, so the
 * window is small). A loss is logged once per outage and counted in
 * coredb_cache_invalidation_subscription_losses_total; then the thread
 * reconnects with backoff (100 ms doubling to 2 s). A partition that shows
 * no error is thus noticed within CDB_INVAL_DEAD_MS.
 *
 * Where it connects: the blocking pool's endpoint (cdb_redis_endpoint_get:
 * the URL's address or the sentinels' master the pool verified last, with
 * its credentials). When the pool has no address yet, the thread makes the
 * pool connect (one PING through it) and asks again.
 *
 * Threads: one subscriber thread per cdb_inval (its own blocking hiredis
 * connection, polled with a timeout and a stop pipe, so cdb_inval_free
 * returns at once, or while a connect or handshake is under way after at
 * most the pool's connect timeout plus its command timeout). Ticket functions are lock-free (atomic loads only) and may
 * run on any thread, as may publishing (blocking: one PUBLISH through the
 * pool). Every function accepts a NULL inv: tickets are then refused,
 * publishing does nothing.
 */
#ifndef COREDB_STORE_INVALIDATION_H
#define COREDB_STORE_INVALIDATION_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/redis.h"

#define CDB_INVAL_STRIPES 4096      /* per kind; a power of two */
#define CDB_INVAL_NAME_MAX 512      /* bytes of a table name or session id */
#define CDB_INVAL_READ_TIMEOUT_MS 500
#define CDB_INVAL_PING_MS 100         /* a quiet subscription proves itself this often */
#define CDB_INVAL_FRESH_MS 300        /* ... and gives no ticket when it has not for this long */
#define CDB_INVAL_ACK_WAIT_MS 500     /* a publisher waits this long for every acknowledgement */
#define CDB_INVAL_DEAD_MS 3000
#define CDB_INVAL_BACKOFF_MIN_MS 100
#define CDB_INVAL_BACKOFF_MAX_MS 2000

typedef struct cdb_inval cdb_inval;

/* sync: the blocking pool (must outlive inv). NULL only on out of memory. */
cdb_inval *cdb_inval_new(cdb_redis *sync);
/* Starts the subscriber thread on "coredb:<ns>:inval" (idempotent: a second
 * call, whatever its ns, does nothing). 0, or -1 with err (bad ns, out of
 * memory, thread not started). */
int cdb_inval_start(cdb_inval *inv, const char *ns, cdb_error *err);
/* Stops and joins the thread; NULL is a no-op. */
void cdb_inval_free(cdb_inval *inv);

/* Publishing (any thread, blocking): applies the invalidation here, then one
 * PUBLISH through the pool. Failures are logged (rate-limited), never fatal.
 * A name longer than CDB_INVAL_NAME_MAX (none coredb uses) is published as
 * "T <usec>" / "S <usec>": every stripe of that kind, on every instance. */
void cdb_inval_table(cdb_inval *inv, const char *table);
void cdb_inval_session(cdb_inval *inv, const char *session_id);

/*
 * The same on an event loop (its thread only), never blocking it: applies
 * the invalidation here, PUBLISHes on the loop's asynchronous Redis a, and
 * waits for the acknowledgements by polling their list (LLEN, on timers of
 * base backing off from 200 us) at most CDB_INVAL_ACK_WAIT_MS, with the
 * blocking path's failure handling, counters and warnings; the wire
 * protocol between instances is the same. true: done(arg) runs once, on
 * the loop, when the wait is over. false: nothing to wait for (applied
 * here; not started, or the PUBLISH could not be sent: counted and logged
 * as a failed one); done never runs.
 */
struct event_base;
struct cdb_aredis;
typedef void (*cdb_inval_done_cb)(void *arg);
bool cdb_inval_table_async(cdb_inval *inv, struct cdb_aredis *a, struct event_base *base, const char *table,
                           cdb_inval_done_cb done, void *arg);
bool cdb_inval_session_async(cdb_inval *inv, struct cdb_aredis *a, struct event_base *base,
                             const char *session_id, cdb_inval_done_cb done, void *arg);

typedef struct cdb_inval_ticket {
    uint64_t epoch;
    uint64_t seq;
} cdb_inval_ticket;

/* Takes a ticket (before reading the value); false when the first-level
 * cache must not be used now (not subscribed yet, subscription lost,
 * resubscribed but not yet confirmed). */
bool cdb_inval_ticket_table(cdb_inval *inv, const char *table, cdb_inval_ticket *t);
bool cdb_inval_ticket_session(cdb_inval *inv, const char *session_id, cdb_inval_ticket *t);
/* Still valid: same epoch, usable now, and no invalidation of that name (or
 * of anything in its stripe) since the ticket was taken. */
bool cdb_inval_valid_table(cdb_inval *inv, const char *table, const cdb_inval_ticket *t);
bool cdb_inval_valid_session(cdb_inval *inv, const char *session_id, const cdb_inval_ticket *t);

/* The epoch now (a per-loop cache may flush itself when it changed); 0 for NULL. */
uint64_t cdb_inval_epoch(cdb_inval *inv);
/* True while subscribed and confirmed. */
bool cdb_inval_usable(cdb_inval *inv);

/* Delay between a publisher's clock and this instance applying a message
 * (every message received, own ones included), estimated from a histogram
 * with 1/16-octave buckets (about 6 % precision). Zeros before any. */
void cdb_inval_delay_quantiles(cdb_inval *inv, int64_t *p50_us, int64_t *p99_us, uint64_t *count);

#endif
