/*
 * loop_lease.c - a data-API read with X-Connection-ID (a connection lease,
 * coredb/leases.h) run on the event loop that admitted it, on the lease's
 * reserved connection borrowed without blocking (store/pg_borrow.h),
 * instead of on a worker thread (issue 8, point 3).
 *
 * loop_admit.c calls it once admission ended on the loop with the session
 * alive, the quota fine and no restore running, in the order the worker
 * path keeps (routes_data.c: the lease first, then the query):
 *
 *   1. the lease's connection is checked out with the worker's rules
 *      (cdb__lease_checkout: unknown, foreign, expired or released id ->
 *      404 NOT_FOUND, another request on it -> 409 CONFLICT), answered on
 *      the loop when refused;
 *   2. a cache hit found by admission is answered (the worker path looks
 *      the cache up on a lease too) and the connection checked in;
 *   3. a miss runs the worker's statements (data/query_probe.h: the read
 *      prelude of role + settings, the page, the count; no BEGIN, so the
 *      Sync ends the implicit transaction, as on a worker; never a replica,
 *      as a bound connection never reads one, so read replicas configured
 *      do not send it to a worker) on the borrowed connection, prepared
 *      under names of the connection's own table (store/pool.h), so a
 *      shape is parsed once per connection whichever path ran it first.
 *      Every result in: 200 on the loop, stored in the cache at the
 *      generation admission read (the rule of loop_query.c: a lease read is
 *      cached as any read); the connection is checked in first.
 *
 * Failures: the server's statement_timeout or the job's deadline (the
 * pool's statement timeout + CDB_PG_DEADLINE_MARGIN_MS) -> 504
 * DATABASE_TIMEOUT on the loop, with the blocking path's message; the
 * connection is then clean (57014) or expired as a blocking deadline
 * leaves it. Any other failure (an error result, the connection lost,
 * shutdown) checks the connection in, clean or broken as pg_borrow.h left
 * it, and then hands the request to a worker, which checks it out again
 * and runs the read the blocking way (idempotent), so errors are mapped
 * exactly as before. A lease released meanwhile (DELETE, the reaper) is
 * handled by the checkin: the connection goes back to the pool then, and
 * a worker that follows answers 404.
 *
 * Jobs in flight are listed on their loop, so its teardown can end them
 * (cdb__loop_lease_abort_all): their connections are broken and their
 * requests go to the workers, or with the workers gone get a 503.
 */
#include "http_internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "data/query_probe.h"
#include "management/leases_internal.h"
#include "service/service_internal.h"
#include "store/pg.h"
#include "store/pg_borrow.h"

struct cdb__loop_lease {
    cdb_request *r;
    char lid[37];                  /* the lease, normalized */
    cdb_pool_conn *pc;             /* checked out; NULL once checked in */
    cdb_pgb *job;                  /* running on pc, or NULL */
    bool store, lead;              /* as loop_query.c's */
    const char *fresh[3];          /* statements prepared by this job, in the order they were named */
    char names[3][16];             /* names of fresh ones (the connection's table: store/pool.h) */
    int64_t generation;
    cdb__query_loop lp;
    cdb__loop_lease *prev, *next;  /* the loop's running jobs (loop->leases) */
};

bool cdb__loop_lease_wanted(const cdb_request *r)
{
    return r->loop->apg && r->route->mode == CDB_RUN_CACHED && r->raw_body_len > 0 &&
           cdb_request_field(r, "X-Connection-ID");
}

int cdb__loop_lease_take(cdb_request *r, cdb__loop_lease **out)
{
    cdb_error err;
    *out = NULL;
    cdb__loop_lease *l = calloc(1, sizeof *l);
    if (!l)
        return -1;
    cdb_error_init(&err);
    l->r = r;
    if (!(l->pc = cdb__lease_checkout(&r->principal, cdb_request_field(r, "X-Connection-ID"), l->lid, &err))) {
        if (err.code == CDB_OK)    /* cannot happen: refused says why */
            cdb_error_set(&err, CDB_ERR_NOT_FOUND, "No such connection lease");
        cdb_request_fail(r, &err);
        cdb_error_destroy(&err);
        free(l);
        cdb__metrics_inc(CDB_M_LOOP_LEASE_REFUSED);
        return 0;
    }
    cdb_error_destroy(&err);
    *out = l;
    return 1;
}

static void end_flight(cdb__loop_lease *l, const char *part, size_t len)
{
    cdb__loop_end_flight(l->r, &l->lead, l->lp.cache_key, l->generation, part, len);
}

void cdb__loop_lease_give_back(cdb__loop_lease *l)
{
    if (!l)
        return;
    end_flight(l, NULL, 0);
    if (l->pc)
        cdb__lease_checkin(l->r->svc, l->lid);
    cdb__data_query_loop_destroy(&l->lp);
    free(l);
}

static void unlist(cdb__loop_lease *l)
{
    cdb_loop *loop = l->r->loop;
    if (l->prev)
        l->prev->next = l->next;
    else if (loop->leases == l)
        loop->leases = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

static void on_results(cdb_pgb_outcome outcome, PGresult *const *res, int n, const char *sqlstate, int prepared,
                       void *arg)
{
    cdb__loop_lease *l = arg;
    cdb_request *r = l->r;
    char *part = NULL, *body = NULL;
    size_t len = 0;

    l->job = NULL;
    unlist(l);
    /* what the server prepared is the connection's now, whatever the outcome: into its table */
    for (int i = 0; i < prepared; i++) {
        if (cdb_pool_conn_prepared_record(l->pc, l->fresh[i]) < 0) {
            cdb_pgb_break(cdb_pool_conn_pg(l->pc));    /* a name its table does not know: not reusable */
            break;
        }
    }
    if (outcome == CDB_PGB_TIMEOUT) {
        cdb__loop_fail_timeout(r, sqlstate[0] != '\0');
        cdb__metrics_inc(CDB_M_LOOP_LEASE_TIMEOUT);
        cdb__loop_lease_give_back(l);
        cdb_server_finish(r);
        return;
    }
    /* [prelude, rows, count] */
    if (outcome == CDB_PGB_OK && n == 3)
        body = cdb__data_query_loop_answer(&l->lp, res[1], res[2], r->start_us, &part, &len);
    if (!body) {
        /* checked in (clean or broken) before the worker checks it out again */
        cdb__metrics_inc(CDB_M_LOOP_LEASE_HANDED_OFF);
        free(part);
        cdb__loop_lease_give_back(l);
        cdb_server_hand_off(r);
        return;
    }
    if (l->store && l->lp.entry_key && r->loop->aredis)
        cdb__loop_store_answer(r, l->lp.entry_key, l->generation, part, len);
    end_flight(l, part, len);
    free(part);
    cdb__loop_lease_give_back(l);
    cdb_request_reply_text(r, 200, body);
    cdb__metrics_inc(CDB_M_LOOP_LEASE_ANSWERED);
    cdb_server_finish(r);
}

bool cdb__loop_lease_query(cdb__loop_lease *l, bool generation_read, int64_t generation)
{
    cdb_request *r = l->r;
    cdb_loop *loop = r->loop;
    if (!r->body && !(r->body = json_loadb(r->raw_body, r->raw_body_len, JSON_REJECT_DUPLICATES, NULL)))
        return false;
    l->store = generation_read;
    l->generation = generation;
    if (!cdb__data_query_loop_plan_bound(r->svc, &r->principal, r->body, &l->lp))
        return false;
    /* identical misses run once (store/qcache.h single flight): another running it, a worker follows */
    if (l->store && l->lp.cache_key) {
        if (!cdb_qcache_probe_lead(cdb_service_qcache(r->svc), l->lp.cache_key, generation))
            return false;
        l->lead = true;
    }
    cdb_pool *pool = cdb_service_pool(r->svc);
    int timeout_ms = cdb_pg_job_deadline_ms(pool ? cdb_pool_statement_timeout_ms(pool) : 0);
    const cdb__query_loop *lp = &l->lp;
    cdb_pgb_stmt stmts[] = {
        {lp->prelude_sql, 3, lp->settings, NULL, false},
        {lp->rows.text, lp->rows.nparams, (const char *const *)lp->rows.params, NULL, false},
        {lp->count_sql, lp->count_nparams, (const char *const *)lp->rows.params, NULL, false},
    };
    /*
     * Prepared as the worker prepares them, under the names of the connection's own table
     * (store/pool.h): parsed and planned once per connection, whichever path ran a shape first.
     */
    int nfresh = 0;
    for (int i = 0; i < 3; i++) {
        bool fresh = false;
        stmts[i].name = cdb_pool_conn_prepared_name(l->pc, stmts[i].sql, nfresh, &fresh, l->names[i],
                                                    sizeof l->names[i]);
        stmts[i].prepare = fresh;
        if (fresh)
            l->fresh[nfresh++] = stmts[i].sql;
    }
    if (!(l->job = cdb_pgb_start(loop->base, cdb_pool_conn_pg(l->pc), stmts, 3, timeout_ms, on_results, l)))
        return false;              /* the caller gives it back (end_flight first) and a worker runs it */
    l->next = loop->leases;
    if (loop->leases)
        loop->leases->prev = l;
    loop->leases = l;
    return true;
}

void cdb__loop_lease_abort_all(cdb_loop *loop)
{
    /* each abort's callback unlists its job and hands its request on */
    while (loop->leases)
        cdb_pgb_abort(loop->leases->job);
}
