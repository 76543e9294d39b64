/*
 * sizing.c - the start-up sizing check (sizing.h). coredb cannot know how
 * many instances share the database, so it says how many of its own pool
 * fit and warns only about what it can see for certain: one pool larger
 * than what the server accepts. Every instance's pool can grow to
 * DB_POOL_MAX, so N instances need N x DB_POOL_MAX <= usable; when they do
 * not, requests wait for DB_POOL_ACQUIRE_TIMEOUT and then fail with
 * "too many clients" from PostgreSQL under load, long after the start.
 */
#include "management/sizing.h"

#include <libpq-fe.h>
#include <stdlib.h>

#include "coredb/log.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/txn.h"

/* One round trip; pg_stat_activity counts client backends of every
 * database, since they all draw on the same max_connections. */
#define SIZING_SQL                                                              \
    "SELECT current_setting('max_connections')::int,"                          \
    " current_setting('superuser_reserved_connections')::int,"                 \
    " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"

void cdb_sizing_eval(int max_connections, int superuser_reserved, int open_now, int pool_max,
                     cdb_sizing *out)
{
    out->usable = max_connections - superuser_reserved - CDB_SIZING_RESERVE;
    if (out->usable < 0)
        out->usable = 0;
    out->fit = pool_max > 0 ? out->usable / pool_max : 0;
    out->free_now = out->usable - open_now;
    out->pool_too_big = pool_max > out->usable;
}

void cdb_sizing_check_start(cdb_service *svc)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, &err);
    if (!conn) {
        cdb_log_warn("serve.sizing", "could not read max_connections: %s", err.message);
        goto out;
    }
    res = cdb_pg_query(conn, SIZING_SQL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        /* the server's message only: it names no secret, and this is a log */
        cdb_log_warn("serve.sizing", "could not read max_connections: %s", PQerrorMessage(conn));
        goto out;
    }
    int max_conn = atoi(PQgetvalue(res, 0, 0));
    int su_reserved = atoi(PQgetvalue(res, 0, 1));
    int open_now = atoi(PQgetvalue(res, 0, 2));
    int pool_max = svc->cfg->db_pool_max;
    cdb_sizing s;
    cdb_sizing_eval(max_conn, su_reserved, open_now, pool_max, &s);
    cdb_log_info("serve.sizing",
                 "max_connections %d, superuser_reserved_connections %d, reserve %d: %d usable, %d open now "
                 "(%d free); DB_POOL_MAX %d: room for %d instances (instances x DB_POOL_MAX <= %d)",
                 max_conn, su_reserved, CDB_SIZING_RESERVE, s.usable, open_now, s.free_now, pool_max,
                 s.fit, s.usable);
    if (s.pool_too_big)
        cdb_log_warn("serve.sizing",
                     "DB_POOL_MAX %d exceeds the %d connections PostgreSQL has for applications "
                     "(max_connections %d - superuser_reserved_connections %d - reserve %d): under load "
                     "this instance alone gets \"too many clients\"; lower DB_POOL_MAX or raise max_connections",
                     pool_max, s.usable, max_conn, su_reserved, CDB_SIZING_RESERVE);
    else if (pool_max > s.free_now)
        cdb_log_warn("serve.sizing",
                     "DB_POOL_MAX %d exceeds the %d connections free now (%d open): the instances already "
                     "running leave this one less than its pool",
                     pool_max, s.free_now > 0 ? s.free_now : 0, open_now);

out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    cdb_error_destroy(&err);
}
