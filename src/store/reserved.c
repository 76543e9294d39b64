/*
 * reserved.c - the registry of lease-reserved pooled connections
 * (reserved.h). A small array under one mutex: leases are few and long
 * lived next to requests, and a lookup is a string compare per slot.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/timeutil.h"
#include "store/reserved.h"
#include "store/pg.h"

typedef enum { SLOT_FREE = 0, SLOT_RESERVED, SLOT_IN_USE, SLOT_RELEASED } slot_state;

typedef struct slot {
    slot_state state;
    char id[37];
    char user_id[37];
    int64_t expires_s;
    cdb_pool_conn *pc;
} slot;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static slot slots[CDB_RESERVED_MAX];
static _Thread_local cdb_pool_conn *bound;
static _Thread_local bool bound_taken;

/*
 * The one place a slot changes state (under mu). Allowed: FREE->RESERVED
 * (put), RESERVED->IN_USE (checkout), IN_USE->RESERVED (checkin),
 * RESERVED|IN_USE->RELEASED (release), RELEASED->FREE (its connection is
 * back in the pool). Anything else is a bug in this file: abort.
 */
static void move(slot *s, slot_state to)
{
    slot_state from = s->state;
    bool ok = (from == SLOT_FREE && to == SLOT_RESERVED) || (from == SLOT_RESERVED && to == SLOT_IN_USE) ||
              (from == SLOT_IN_USE && to == SLOT_RESERVED) ||
              ((from == SLOT_RESERVED || from == SLOT_IN_USE) && to == SLOT_RELEASED) ||
              (from == SLOT_RELEASED && to == SLOT_FREE);
    if (!ok) {
        cdb_log_error("lease.state", "impossible lease connection move %d -> %d", (int)from, (int)to);
        abort();
    }
    s->state = to;
    if (to == SLOT_FREE)
        memset(s, 0, sizeof *s);
}

static slot *find(const char *id)
{
    for (int i = 0; i < CDB_RESERVED_MAX; i++) {
        if (slots[i].state != SLOT_FREE && strcmp(slots[i].id, id) == 0)
            return &slots[i];
    }
    return NULL;
}

int cdb_reserved_put(const char *id, const char *user_id, int64_t expires_s, cdb_pool_conn *pc)
{
    int rc = -1;
    pthread_mutex_lock(&mu);
    if (strlen(id) >= sizeof slots[0].id || strlen(user_id) >= sizeof slots[0].user_id || find(id))
        goto out;
    for (int i = 0; i < CDB_RESERVED_MAX; i++) {
        slot *s = &slots[i];
        if (s->state != SLOT_FREE)
            continue;
        strcpy(s->id, id);
        strcpy(s->user_id, user_id);
        s->expires_s = expires_s;
        s->pc = pc;
        move(s, SLOT_RESERVED);
        rc = 0;
        break;
    }
out:
    pthread_mutex_unlock(&mu);
    return rc;
}

void cdb_reserved_extend(const char *id, int64_t expires_s)
{
    pthread_mutex_lock(&mu);
    slot *s = find(id);
    if (s && s->state != SLOT_RELEASED)
        s->expires_s = expires_s;
    pthread_mutex_unlock(&mu);
}

cdb_pool_conn *cdb_reserved_checkout(const char *id, const char *user_id, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    pthread_mutex_lock(&mu);
    slot *s = id ? find(id) : NULL;
    if (!s || s->state == SLOT_RELEASED || (user_id && strcmp(s->user_id, user_id) != 0) || cdb_wall_s() >= s->expires_s) {
        cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
    } else if (s->state == SLOT_IN_USE) {
        cdb_error_set(err, CDB_ERR_CONFLICT, "Another request is running on this connection lease");
    } else {
        move(s, SLOT_IN_USE);
        pc = s->pc;
    }
    pthread_mutex_unlock(&mu);
    return pc;
}

/*
 * Rolls back what a request left open and gives the connection to the
 * pool (what cdb_txn_release does; txn.c calls this file, so not it).
 */
static void give_back(cdb_pool *pool, cdb_pool_conn *pc)
{
    PGconn *conn = cdb_pool_conn_pg(pc);
    if (PQstatus(conn) == CONNECTION_OK && PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        (void)PQexitPipelineMode(conn);
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(cdb_pg_query(conn, "ROLLBACK"));
    cdb_pool_release(pool, pc);
}

void cdb_reserved_checkin(cdb_pool *pool, const char *id)
{
    cdb_pool_conn *back = NULL;
    pthread_mutex_lock(&mu);
    slot *s = find(id);
    if (s && s->state == SLOT_IN_USE) {
        move(s, SLOT_RESERVED);
    } else if (s && s->state == SLOT_RELEASED) {
        back = s->pc;
        move(s, SLOT_FREE);
    }
    pthread_mutex_unlock(&mu);
    if (back)
        give_back(pool, back);
}

bool cdb_reserved_release(cdb_pool *pool, const char *id)
{
    cdb_pool_conn *back = NULL;
    bool known = false;
    pthread_mutex_lock(&mu);
    slot *s = find(id);
    if (s && s->state != SLOT_RELEASED) {
        known = true;
        slot_state was = s->state;
        move(s, SLOT_RELEASED);
        if (was == SLOT_RESERVED) {
            back = s->pc;
            move(s, SLOT_FREE);
        }
    }
    pthread_mutex_unlock(&mu);
    if (back)
        give_back(pool, back);
    return known;
}

int cdb_reserved_ids(char (*ids)[37], int max)
{
    int n = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < CDB_RESERVED_MAX && n < max; i++) {
        if (slots[i].state == SLOT_RESERVED || slots[i].state == SLOT_IN_USE)
            memcpy(ids[n++], slots[i].id, 37);
    }
    pthread_mutex_unlock(&mu);
    return n;
}

int cdb_reserved_count(void)
{
    int n = 0;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < CDB_RESERVED_MAX; i++)
        n += slots[i].state == SLOT_RESERVED || slots[i].state == SLOT_IN_USE;
    pthread_mutex_unlock(&mu);
    return n;
}

void cdb_reserved_bind(cdb_pool_conn *pc)
{
    bound = pc;
    bound_taken = false;
}

cdb_pool_conn *cdb_reserved_claim_bound(void)
{
    if (!bound || bound_taken)
        return NULL;
    bound_taken = true;
    return bound;
}

bool cdb_reserved_has_bound(void)
{
    return bound && !bound_taken;
}

bool cdb_reserved_unclaim_bound(cdb_pool_conn *pc)
{
    if (!pc || pc != bound || !bound_taken)
        return false;
    bound_taken = false;
    return true;
}
