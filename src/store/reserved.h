/*
 * reserved.h - this process's registry of pooled connections reserved by
 * connection leases (coredb/leases.h): lease id -> the cdb_pool_conn it
 * holds out of the pool, so the data API can run a call on it
 * (X-Connection-ID) and a release can give it back.
 *
 * A reserved connection moves RESERVED -> IN_USE (a request runs on it) ->
 * RESERVED, and RESERVED or IN_USE -> RELEASED; one function owns every
 * move and aborts on an impossible one. A request on a lease connection
 * never runs beside another on the same lease: the second one is refused
 * with CONFLICT. Every function is thread-safe.
 */
#ifndef COREDB_STORE_RESERVED_H
#define COREDB_STORE_RESERVED_H

#include <stdbool.h>
#include <stdint.h>

#include "coredb/error.h"
#include "store/pool.h"

#define CDB_RESERVED_MAX 1024

/*
 * Registers pc (held out of pool) for lease id of user_id, usable until
 * expires_s (cdb_wall_s() clock). -1 when the registry is full or the id
 * is known already (pc is then still the caller's).
 */
int cdb_reserved_put(const char *id, const char *user_id, int64_t expires_s, cdb_pool_conn *pc);
/* Moves a live lease's deadline (renew); no-op for an id held elsewhere. */
void cdb_reserved_extend(const char *id, int64_t expires_s);

/*
 * Takes the lease's connection for one request of user_id (NULL: an
 * admin's, any owner): NOT_FOUND for
 * an unknown, foreign, expired or released id (all alike), CONFLICT while
 * another request runs on it. Give it back with cdb_reserved_checkin.
 */
cdb_pool_conn *cdb_reserved_checkout(const char *id, const char *user_id, cdb_error *err);
/* Ends the request on it: the connection is reserved again, or, when the
 * lease was released meanwhile, returned to pool now. */
void cdb_reserved_checkin(cdb_pool *pool, const char *id);

/*
 * Forgets the lease and gives its connection back to pool (rolled back
 * first); when a request is running on it, its checkin does that. Returns
 * whether the id was known here.
 */
bool cdb_reserved_release(cdb_pool *pool, const char *id);

/* The ids held here, up to max, into ids (each 37 bytes); the count. */
int cdb_reserved_ids(char (*ids)[37], int max);
int cdb_reserved_count(void);

/*
 * The connection bound to this thread's next cdb_txn_acquire (NULL =
 * none): the data API sets it around a call with X-Connection-ID.
 */
void cdb_reserved_bind(cdb_pool_conn *pc);
/* For cdb_txn_acquire: the bound connection when it is not in use by an
 * outer acquire of this thread (a nested one gets a pool connection). */
cdb_pool_conn *cdb_reserved_claim_bound(void);
/* True when this thread has a connection bound (a read then stays on it, not on a replica). */
bool cdb_reserved_has_bound(void);
/* For cdb_txn_release: true (and no longer in use) when pc is the bound one. */
bool cdb_reserved_unclaim_bound(cdb_pool_conn *pc);

#endif
