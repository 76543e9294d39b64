/*
 * tx_status.c - GET /data/transactions/{id} (data.h): whether a transaction
 * of the caller committed, read from the ledger (store/ledger.h). Someone
 * else's transaction is as absent as one that never committed.
 */
#include <libpq-fe.h>

#include "coredb/data.h"
#include "security/service_state.h"
#include "store/ledger.h"
#include "store/pg.h"
#include "store/txn.h"

int cdb_data_transaction_status(cdb_service *svc, const cdb_principal *caller, const char *id,
                                json_t **out, cdb_error *err)
{
    char norm[37];
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    PGconn *conn;
    int rc;

    *out = NULL;
    if ((rc = cdb_principal_require(caller, err)) < 0)
        return rc;
    if (!cdb_uuid_norm(id, norm))
        return cdb_error_set(err, CDB_ERR_NOT_FOUND, "Transaction not found");
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err)))
        return err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
    /* someone else's transaction is as absent as one that never committed */
    const char *params[3] = {norm, caller->role == CDB_ROLE_ADMIN ? NULL : caller->user_id, CDB_LEDGER_TTL_PARAM};
    rc = cdb_pg_exec(conn, "SELECT " CDB_SQL_TS("created_at") " FROM coredb.tx_ledger"
                           " WHERE transaction_id = $1 AND ($2::uuid IS NULL OR user_id = $2::uuid)"
                           " AND created_at > clock_timestamp() - make_interval(secs => $3::int)",
                     3, params, &res, err);
    if (rc < 0)
        goto out_release;
    if (PQntuples(res) == 0) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND,
                           "No committed transaction with this id: it did not commit, or its record "
                           "expired (kept 24 h)");
        goto out_release;
    }
    if (!(*out = json_pack("{s:s, s:s, s:s}", "transaction_id", norm, "status", "committed",
                           "committed_at", PQgetvalue(res, 0, 0))))
        rc = cdb_error_oom(err);

out_release:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}
