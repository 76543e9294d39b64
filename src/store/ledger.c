/*
 * ledger.c - coredb.tx_ledger (migration 010): the record, written inside
 * each committed data transaction (and each keyed user creation), that lets
 * a client learn the outcome of a transaction whose answer it lost, and the
 * Idempotency-Key bookkeeping that makes retrying a write safe.
 *
 * Why a row inside the transaction: it commits or vanishes with the writes,
 * so its presence IS the outcome. GET /data/transactions/{id}
 * (data/tx_status.c) only reads it. Rows live 24 h
 * (CDB_IDEMPOTENCY_TTL_S); cdb_ledger_expire deletes older ones in
 * bounded batches from the background job, and readers ignore rows past
 * the limit, so expiry is exact whenever the job runs.
 *
 * Keys: the claim (CDB_LEDGER_CLAIM_SQL) is the first statement of the
 * keyed transaction, so the check and the write are one atomic unit; see
 * the migration for its non-blocking try-lock. This file maps its refusals
 * and replays stored answers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "coredb/log.h"
#include "store/ledger.h"
#include "store/pg.h"
#include "store/txn.h"

#define EXPIRE_BATCH 1000          /* rows per DELETE: short transactions, short locks */
#define EXPIRE_BATCH_SQL "1000"    /* the same, spelled for the SQL */
#define EXPIRE_MAX_BATCHES 20      /* per run; the job comes back in a minute */
#define TTL_PARAM CDB_LEDGER_TTL_PARAM
_Static_assert(CDB_IDEMPOTENCY_TTL_S == 86400, "TTL_PARAM spells CDB_IDEMPOTENCY_TTL_S");

void cdb_idempotency_destroy(cdb_idempotency *idem)
{
    if (!idem)
        return;
    free(idem->body);
    idem->body = NULL;
}

void cdb_ledger_new_id(char out[37])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

int cdb_ledger_check_key(const char *key, cdb_error *err)
{
    size_t n = key ? strlen(key) : 0;
    bool ok = n >= 1 && n <= CDB_IDEMPOTENCY_KEY_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = key[i] > 0x20 && key[i] < 0x7f;
    if (ok)
        return 0;
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "Idempotency-Key",
                                "Idempotency-Key must be 1 to %d visible ASCII characters",
                                CDB_IDEMPOTENCY_KEY_MAX);
}

int cdb_ledger_request_hash(const unsigned char *secret, size_t secret_len, const char *what,
                            const json_t *body,
                             char out[CDB_LEDGER_HASH_LEN], cdb_error *err)
{
    static const char domain[] = "coredb idempotency v1";
    crypto_auth_hmacsha256_state st;
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);

    if (!canon)
        return cdb_error_oom(err);
    crypto_auth_hmacsha256_init(&st, secret, secret_len);
    /* NUL separators: no (what, body) pair can spell another */
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)domain, sizeof domain);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)what, strlen(what) + 1);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)canon, strlen(canon));
    crypto_auth_hmacsha256_final(&st, mac);
    free(canon);
    out[0] = '\\';
    out[1] = 'x';
    sodium_bin2hex(out + 2, CDB_LEDGER_HASH_LEN - 2, mac, sizeof mac);
    return 0;
}

static const char *sqlstate_of(const cdb_error *err)
{
    return err ? json_string_value(json_object_get(err->details, "sqlstate")) : NULL;
}

bool cdb_ledger_claim_error(const cdb_error *err)
{
    const char *s = sqlstate_of(err);
    return s && (!strcmp(s, "CDB00") || !strcmp(s, "CDB09") || !strcmp(s, "CDB22"));
}

int cdb_ledger_claim_refused(PGconn *conn, const char *scope, const char *key,
                              cdb_idempotency *idem, cdb_error *err)
{
    const char *s = sqlstate_of(err);
    PGresult *res = NULL;
    int rc;

    if (s && !strcmp(s, "CDB09"))
        return cdb_error_set_detail(err, CDB_ERR_IDEMPOTENCY_KEY_IN_PROGRESS, "field", "Idempotency-Key",
                                    "A request with this Idempotency-Key is still running; retry later");
    if (s && !strcmp(s, "CDB22"))
        return cdb_error_set_detail(err, CDB_ERR_IDEMPOTENCY_KEY_REUSED, "field", "Idempotency-Key",
                                    "This Idempotency-Key was used for a different request");
    /* CDB00: the request already committed; its answer is in the ledger */
    const char *params[2] = {scope, key};
    cdb_error_destroy(err);
    PQclear(PQexec(conn, "ROLLBACK"));
    if ((rc = cdb_pg_exec(conn, "SELECT status_code, response FROM coredb.tx_ledger"
                                " WHERE scope = $1 AND idempotency_key = $2", 2, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 1)) {
        /* expired and deleted in between: the client may simply retry */
        rc = cdb_error_set_detail(err, CDB_ERR_IDEMPOTENCY_KEY_IN_PROGRESS, "field", "Idempotency-Key",
                                  "The request with this Idempotency-Key changed state; retry");
        goto out;
    }
    idem->status = atoi(PQgetvalue(res, 0, 0));
    idem->replayed = true;
    if (!(idem->body = strdup(PQgetvalue(res, 0, 1))))
        rc = cdb_error_oom(err);
out:
    PQclear(res);
    return rc;
}

bool cdb_ledger_outcome_unknown(PGconn *conn, bool before_commit, const cdb_error *err)
{
    const char *s = sqlstate_of(err);
    if (conn && cdb_pg_timed_out(conn))
        return true;               /* silent past the deadline: it may have run the COMMIT */
    if (conn && PQstatus(conn) == CONNECTION_OK)
        return false;              /* the server answered through the sync: it said no */
    return !(before_commit && s && *s);
}

int cdb_ledger_fail_unknown(cdb_error *err, const char *transaction_id)
{
    cdb_error_set(err, CDB_ERR_TRANSACTION_OUTCOME_UNKNOWN,
                  "The database connection was lost after COMMIT was sent: the transaction may or "
                  "may not have committed; ask GET /api/v1/data/transactions/{transaction_id}, or "
                  "retry with the same Idempotency-Key");
    cdb_error_detail(err, "transaction_id", json_string(transaction_id));
    cdb_error_detail(err, "database", json_string("postgresql"));
    cdb_log_warn("data.tx_outcome_unknown", "transaction %s: connection lost after COMMIT was sent",
                 transaction_id);
    return CDB_ERR_TRANSACTION_OUTCOME_UNKNOWN;
}

int cdb_ledger_expire(cdb_pool *pool, int *deleted, cdb_error *err)
{
    static const char sql[] =
        "DELETE FROM coredb.tx_ledger WHERE transaction_id IN (SELECT transaction_id"
        " FROM coredb.tx_ledger WHERE created_at < clock_timestamp() - make_interval(secs => $1::int)"
        " ORDER BY created_at LIMIT " EXPIRE_BATCH_SQL ")";
    const char *params[1] = {TTL_PARAM};
    cdb_pool_conn *pc = NULL;
    PGconn *conn;
    int rc = 0, total = 0;

    if (deleted)
        *deleted = 0;
    if (!(conn = cdb_txn_acquire(pool, &pc, err)))
        return err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
    for (int b = 0; b < EXPIRE_MAX_BATCHES; b++) {
        PGresult *res = NULL;
        if ((rc = cdb_pg_exec(conn, sql, 1, params, &res, err)) < 0)
            break;
        int n = atoi(PQcmdTuples(res));
        PQclear(res);
        total += n;
        if (n < EXPIRE_BATCH)
            break;
    }
    if (deleted)
        *deleted = total;
    cdb_txn_release(pool, pc);
    return rc;
}
