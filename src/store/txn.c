/*
 * txn.c - pooled connections and their transactions (txn.h). The SQL of the
 * role prelude every data request runs under lives only here.
 */
#include "store/txn.h"
#include "coredb/log.h"
#include "store/pg.h"
#include "store/reserved.h"

PGconn *cdb_txn_acquire(cdb_pool *pool, cdb_pool_conn **pc, cdb_error *err)
{
    *pc = NULL;
    /* a data call with X-Connection-ID runs on its lease's connection */
    if ((*pc = cdb_reserved_claim_bound()))
        return cdb_pool_conn_pg(*pc);
    if (!pool) {
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
        return NULL;
    }
    *pc = cdb_pool_acquire(pool, 0, err);
    return *pc ? cdb_pool_conn_pg(*pc) : NULL;
}

void cdb_txn_release(cdb_pool *pool, cdb_pool_conn *pc)
{
    if (!pc)
        return;
    PGconn *conn = cdb_pool_conn_pg(pc);
    /* Every pipeline is read through its sync, so leaving it only fails on a
     * connection in an unknown state; the pool closes such a one (not idle).
     * A connection lost or closed on a deadline is closed by the pool too. */
    if (PQstatus(conn) == CONNECTION_OK && PQpipelineStatus(conn) != PQ_PIPELINE_OFF &&
        !PQexitPipelineMode(conn))
        cdb_log_warn("data.pipeline", "connection left in pipeline mode; closing it");
    /* a rolled-back connection goes back to the pool instead of being closed */
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(cdb_pg_query(conn, "ROLLBACK"));
    if (cdb_reserved_unclaim_bound(pc))
        return;                    /* stays with its lease (reserved.h) */
    cdb_pool_release(pool, pc);
}

int cdb_txn_begin(PGconn *conn, cdb_error *err)
{
    return cdb_pg_exec(conn, "BEGIN", 0, NULL, NULL, err);
}

int cdb_txn_commit(PGconn *conn, cdb_error *err)
{
    return cdb_pg_exec(conn, "COMMIT", 0, NULL, NULL, err);
}

/*
 * The caller's database role and the settings row-level security reads, as
 * one statement: set_config('role', ..., true) is SET LOCAL ROLE, and as a
 * parameter the role needs no quoting.
 */
static const char PRELUDE_SQL[] =
    "SELECT set_config('role', $1, true), set_config('app.current_user_id', $2, true),"
    " set_config('app.current_role', $3, true)";

const char *cdb_txn_read_prelude_sql(void)
{
    return PRELUDE_SQL;
}

bool cdb_txn_send(PGconn *conn, const char *name, const char *sql, int nparams,
                  const char *const *params)
{
    return name ? PQsendQueryPrepared(conn, name, nparams, params, NULL, NULL, 0) == 1
                : PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1;
}

/* The pipeline's start: [BEGIN, [first,]] role + settings. */
static int pipeline_start(cdb_pool_conn *pc, bool begin, const char *db_role, const char *user_id,
                          const char *app_role, const char *first, int nparams,
                          const char *const *params, cdb_error *err)
{
    PGconn *conn = cdb_pool_conn_pg(pc);
    const char *prelude = NULL;
    int rc;

    if ((rc = cdb_pool_conn_prepare(pc, PRELUDE_SQL, 3, &prelude, err)) < 0)
        return rc;
    const char *settings[3] = {db_role, user_id, app_role};
    if (!PQenterPipelineMode(conn) || (begin && !cdb_txn_send(conn, NULL, "BEGIN", 0, NULL)) ||
        (first && !cdb_txn_send(conn, NULL, first, nparams, params)) ||
        !cdb_txn_send(conn, prelude, PRELUDE_SQL, 3, settings))
        return cdb_pg_error_from_result(conn, NULL, err);
    return 0;
}

int cdb_txn_pipeline_begin_as(cdb_pool_conn *pc, const char *db_role, const char *user_id,
                              const char *app_role, const char *first, int nparams,
                              const char *const *params, cdb_error *err)
{
    return pipeline_start(pc, true, db_role, user_id, app_role, first, nparams, params, err);
}

int cdb_txn_pipeline_read_as(cdb_pool_conn *pc, const char *db_role, const char *user_id,
                             const char *app_role, cdb_error *err)
{
    /* libpq knows the state from the last ReadyForQuery: no round trip. A
     * pooled or lease connection is always given back idle (cdb_txn_release),
     * so this only trips on a bug, which must not widen a caller's rights.
     * A lost connection (a lease's backend terminated: its status is
     * unknown) is the database's failure, not a bug: 503 as any loss. */
    if (PQstatus(cdb_pool_conn_pg(pc)) != CONNECTION_OK)
        return cdb_pg_error_from_result(cdb_pool_conn_pg(pc), NULL, err);
    if (PQtransactionStatus(cdb_pool_conn_pg(pc)) != PQTRANS_IDLE)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Internal error");
    return pipeline_start(pc, false, db_role, user_id, app_role, NULL, 0, NULL, err);
}
