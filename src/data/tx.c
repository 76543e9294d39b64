/*
 * tx.c - POST /data/transaction (data.h): running a validated request
 * (tx_parse.c) and applying its Redis operations (store/outbox.h).
 *
 * A request is validated whole and turned into its statements before a
 * connection is taken, so a bad operation costs no database work. Then one
 * pipeline, one round trip, runs on one pooled connection:
 *   BEGIN; role + settings (store/txn.c) ; op 1 ; ... ; op n ;
 *   RESET ROLE ; INSERT INTO coredb.redis_outbox ... ;
 *   INSERT INTO coredb.tx_ledger (transaction_id, user_id) ; COMMIT
 * The first failing statement aborts the rest and the transaction, and its
 * error names the operation. RESET ROLE is needed because the outbox and
 * the ledger belong to the service's login role, which the app roles have
 * no rights on.
 *
 * The ledger row (store/ledger.c) commits iff the transaction does, which is how
 * a lost answer is recovered: when the connection dies after COMMIT was
 * sent and before any server error for an earlier statement was read, the
 * outcome is unknown -> 503 TRANSACTION_OUTCOME_UNKNOWN with the
 * transaction_id (decided before anything runs), which
 * GET /data/transactions/{id} later resolves. This request then applies no
 * outbox row: if it committed, the rows did too and the flush job applies
 * them. A server error (constraint, statement timeout 57014, a FATAL
 * before COMMIT) is a known rollback and keeps its own code.
 *
 * With an Idempotency-Key, the key's claim runs right after BEGIN (as the
 * login role: it may refuse, 409/422, or find the answer to replay, and
 * never waits), the first round trip stops before COMMIT, and a second one
 * sends the ledger row with the key, the request hash and the answer built
 * from the results, with COMMIT (commit_keyed: the answer needs the
 * results, and one pipelined statement cannot read another's). Redis
 * results are only known after the commit, so the stored answer says
 * "pending" for them until the outbox bookkeeping transaction replaces it
 * with the final one; whichever is stored last is the one sent.
 *
 * The outbox rows are the request's Redis operations and one "incr" of the
 * cache generation key (qcache.h) per table written: that incr IS the cache
 * invalidation, so it survives a Redis outage like the caller's own ops.
 * Generation bumps come first, so a partial apply still invalidates.
 * Right after the commit the rows are applied in seq order and deleted. They
 * are locked (FOR UPDATE SKIP LOCKED) while being applied, as the background
 * flush does, so a row is never applied by both at once; what could not be
 * applied stays for cdb_outbox_flush (the background job) and is reported "pending". Delivery
 * is at least once: a crash between applying a row and deleting it applies
 * it again. A Redis error reply that retrying cannot fix (WRONGTYPE, INCR of
 * a non-integer) consumes the row and is reported "failed", so one bad row
 * never blocks the queue.
 *
 * Rows are applied through cdb_cache (store/outbox.c): to Redis, or to the
 * in-process table without REDIS_URL, with the same results either way.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tx_internal.h"
#include "data/tx_loop.h"
#include "data/documents.h"
#include "data/vectors.h"

/* ---- running the transaction ---- */

/* One multi-row INSERT of the outbox rows: 6 parameters a row. created_at is
 * the clock at the INSERT, the transaction's last statement before COMMIT,
 * not now() (its start): the flush job leaves a row to its committer for
 * CDB_OUTBOX_COMMITTER_GRACE after that (store/outbox.h). */
_Static_assert(6 * (TX_MAX_OPS + TX_MAX_GEN) <= CDB_SQL_MAX_PARAMS, "outbox insert fits one statement");
static int build_outbox_insert(tx *t, cdb_sql *q)
{
    char seq[16], ttl[16];
    int bad = 0;

    cdb_sql_append(q, "INSERT INTO coredb.redis_outbox (transaction_id, seq, op, key, value, ttl, created_at) VALUES ");
    for (int r = 0; r < t->nrows && !bad; r++) {
        const outbox_row *row = &t->rows[r];
        snprintf(seq, sizeof seq, "%d", r + 1);
        snprintf(ttl, sizeof ttl, "%d", row->ttl);
        cdb_sql_append(q, r ? ", (" : "(");
        bad |= cdb_sql_param(q, t->id) < 0;
        cdb_sql_append(q, "::uuid, ");
        bad |= cdb_sql_param(q, seq) < 0;
        cdb_sql_append(q, "::int, ");
        bad |= cdb_sql_param(q, row->op) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->key) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->value) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->ttl ? ttl : NULL) < 0;
        cdb_sql_append(q, "::int, clock_timestamp())");
    }
    return bad || q->oom ? -1 : 0;
}

/* The JSON rows of a RETURNING result, or the count of a command without one. */
static int collect_result(tx *t, tx_op *op, PGresult *res, int i, cdb_error *err)
{
    json_t *rows = NULL;
    long count = op->rows ? PQntuples(res) : strtol(PQcmdTuples(res), NULL, 10);

    if (op->rows) {
        if (!(rows = json_array()))
            return cdb_error_oom(err);
        for (int r = 0; r < PQntuples(res); r++) {
            json_t *row = json_loads(PQgetvalue(res, r, 0), JSON_DECODE_ANY, NULL);
            if (json_is_object(row) && t->cs && op->table && cdb__colset_has_table(t->cs, op->table->name))
                cdb__crypt_row(t->cs, op->table->name, row, op->values);
            if (!row || json_array_append_new(rows, row) < 0) {
                json_decref(rows);
                return op_fail(err, i, CDB_ERR_INTERNAL_ERROR, NULL, "Malformed database result");
            }
        }
        op->data = json_pack("{s:o, s:I}", "rows", rows, "count", (json_int_t)count);
    } else {
        op->data = json_pack("{s:I}", "count", (json_int_t)count);
    }
    return op->data ? 0 : cdb_error_oom(err);
}

/*
 * PostgreSQL names no column when a value does not fit its type (SQLSTATE
 * class 22): after the rollback, cast each value of the failed operation
 * alone to its column's type, and name the first that PostgreSQL refuses.
 * Only on this error path, so its extra round trips cost nothing normally.
 */
/*
 * An explicit cast to character(n) / character varying(n) truncates instead
 * of failing, so the length limit is checked here: n from format_type's
 * "(n)", counted in characters (UTF-8 code points) as PostgreSQL does.
 */
static bool too_long_for(const cdb_column *c, const char *text)
{
    const char *paren = strchr(c->type_name, '(');
    if (strncmp(c->type_name, "character", 9) != 0 || !paren)
        return false;
    long limit = strtol(paren + 1, NULL, 10);
    long chars = 0;
    for (const char *p = text; *p; p++)
        chars += ((unsigned char)*p & 0xC0) != 0x80;
    return limit > 0 && chars > limit;
}

static void name_bad_value(PGconn *conn, const tx_op *op, cdb_error *err)
{
    const char *state = json_string_value(json_object_get(err->details, "sqlstate"));
    if (!state || strncmp(state, "22", 2) != 0 || !json_is_object(op->values))
        return;
    PQclear(cdb_pg_query(conn, "ROLLBACK"));
    const char *name;
    json_t *v;
    /* the values as sent: ciphertext for encrypted columns, never their plaintext */
    json_object_foreach(op->enc_values ? op->enc_values : op->values, name, v) {
        const cdb_column *c = cdb_catalog_column(op->table, name);
        char *text = NULL;
        cdb_error ignored;
        cdb_error_init(&ignored);
        if (!c || cdb_sql_value_text(v, c, name, &text, &ignored) < 0 || !text) {
            cdb_error_destroy(&ignored);
            free(text);
            continue;
        }
        bool refused = too_long_for(c, text);
        /* type_name comes from the catalog (format_type), never from the request */
        size_t len = strlen(c->type_name) + 16;
        char *sql = refused ? NULL : malloc(len);
        if (sql) {
            snprintf(sql, len, "SELECT $1::%s", c->type_name);
            const char *params[1] = {text};
            PGresult *res = cdb_pg_query_params(conn, sql, 1, params);
            refused = res && PQresultStatus(res) == PGRES_FATAL_ERROR;
            PQclear(res);
        }
        free(sql);
        free(text);
        if (refused) {
            cdb_error_detail(err, "field", json_string(name));
            return;
        }
    }
}

/* The ledger row of an unkeyed transaction: its id and owner, nothing to replay. */
static const char LEDGER_SQL[] =
    "INSERT INTO coredb.tx_ledger (transaction_id, user_id) VALUES ($1::uuid, $2::uuid)";
/* ... of a keyed one: with the key, the request hash and the answer. */
static const char LEDGER_KEYED_SQL[] =
    "INSERT INTO coredb.tx_ledger (transaction_id, user_id, scope, idempotency_key, request_hash,"
    " status_code, response) VALUES ($1::uuid, $2::uuid, $3, $4, $5::bytea, 200, $6)";

/*
 * After a failed read of the pipeline whose statement commit_at is its
 * COMMIT: TRANSACTION_OUTCOME_UNKNOWN when the COMMIT may have run (the
 * connection died and no server error for an earlier statement was read).
 * The outbox is then left alone: the flush job applies its rows iff the
 * transaction committed, since they commit with it.
 */
static int check_outcome(tx *t, PGconn *conn, int rc, int failed, int commit_at, cdb_error *err)
{
    if (commit_at >= 0 && cdb_ledger_outcome_unknown(conn, failed >= 0 && failed < commit_at, err))
        return cdb_ledger_fail_unknown(err, t->id);
    return rc;
}

/*
 * Keyed, before the commit: t->stored, the answer with its Redis operations
 * "pending", and into params the LEDGER_KEYED_SQL row holding it; false when
 * out of memory.
 */
static bool keyed_stored_answer(tx *t, const char *params[6])
{
    for (int i = 0; i < t->nops; i++)
        if (t->ops[i].kind >= OP_SET)
            t->ops[i].status = "pending";
    if (!(t->stored = cdb__tx_response_text(t)))
        return false;
    const char *row[6] = {t->id, t->caller->user_id, t->scope, t->key, t->hash, t->stored};
    memcpy(params, row, sizeof row);
    return true;
}

/*
 * Keyed: the answer depends on the operations' results, and PostgreSQL
 * cannot hand one pipelined statement's results to the next, so the first
 * round trip stops before COMMIT; the answer is built here (Redis
 * operations "pending": they are only applied after the commit) and a
 * second round trip sends the ledger row holding it together with COMMIT.
 * One extra round trip, for keyed requests only.
 */
static int commit_keyed(tx *t, PGconn *conn, cdb_error *err)
{
    PGresult *res[2] = { NULL, NULL };
    int failed = -1, rc;

    const char *params[6];
    if (!keyed_stored_answer(t, params))
        return cdb_error_oom(err);
    bool sent = PQsendQueryParams(conn, LEDGER_KEYED_SQL, 6, NULL, params, NULL, NULL, 0) == 1;
    bool commit_tried = sent;
    sent = sent && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
    if (!sent || PQpipelineSync(conn) != 1) {
        rc = cdb_pg_error_from_result(conn, NULL, err);
        return commit_tried ? check_outcome(t, conn, rc, -1, 1, err) : rc;
    }
    rc = cdb_data_pipeline_read(conn, res, 2, &failed, NULL, err);
    PQclear(res[0]);
    PQclear(res[1]);
    if (rc < 0 && (rc = check_outcome(t, conn, rc, failed, 1, err)) == CDB_ERR_CONFLICT)
        /* the unique index behind the claim's lock: the same key, concurrently */
        rc = cdb_error_set_detail(err, CDB_ERR_IDEMPOTENCY_KEY_IN_PROGRESS, "field", "Idempotency-Key",
                                  "A request with this Idempotency-Key is still running; retry later");
    return rc;
}

/*
 * The pipeline: BEGIN, [the key's claim], the caller's role, the PostgreSQL
 * ops, RESET ROLE, the outbox rows, and (unkeyed) the ledger row and COMMIT
 * in the same round trip, or (keyed) commit_keyed's round trip. A claim
 * that finds the request already committed fills idem with the stored
 * answer and returns 0 without running anything. On success the
 * connection is out of pipeline mode again.
 */
static int run_pipeline(tx *t, cdb_pool_conn *pc, cdb_idempotency *idem, cdb_error *err)
{
    PGconn *conn = cdb_pool_conn_pg(pc);
    PGresult *res[CDB_DATA_PRELUDE_COUNT + 1 + TX_MAX_OPS + 4] = { 0 };
    const int claim_at = 1;                              /* right after BEGIN */
    const int first_op = CDB_DATA_PRELUDE_COUNT + (t->key ? 1 : 0);
    const int first_after_ops = first_op + t->npg;
    int n = first_op, failed = -1, commit_at = -1, rc;
    const char *claim[3] = {t->scope, t->key, t->hash};
    const char *ledger[2] = {t->id, t->caller->user_id};
    cdb_sql q;
    bool sent = true;

    cdb_sql_init(&q);
    if (t->nrows && build_outbox_insert(t, &q) < 0) {
        rc = cdb_error_oom(err);
        goto out_clear;
    }
    rc = t->key ? cdb_data_start_pipeline_after(pc, t->caller, CDB_LEDGER_CLAIM_SQL, 3, claim, err)
                : cdb_data_start_pipeline(pc, t->caller, err);
    if (rc < 0)
        goto out_clear;
    for (int k = 0; k < t->npg; k++, n++) {
        tx_op *op = &t->ops[t->pg_ops[k]];
        sent = sent && PQsendQueryParams(conn, op->sql, op->nparams, NULL,
                                         (const char *const *)op->params, NULL, NULL, 0);
    }
    /* the service's own tables belong to the login role */
    sent = sent && PQsendQueryParams(conn, "RESET ROLE", 0, NULL, NULL, NULL, NULL, 0);
    n++;
    if (t->nrows) {
        sent = sent && PQsendQueryParams(conn, q.text, q.nparams, NULL,
                                         (const char *const *)q.params, NULL, NULL, 0);
        n++;
    }
    if (!t->key) {
        sent = sent && PQsendQueryParams(conn, LEDGER_SQL, 2, NULL, ledger, NULL, NULL, 0);
        n++;
        if (sent)
            commit_at = n;         /* from here the COMMIT may reach the server */
        sent = sent && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        n++;
    }
    if (!sent || PQpipelineSync(conn) != 1) {
        rc = check_outcome(t, conn, cdb_pg_error_from_result(conn, NULL, err), -1, commit_at, err);
        goto out_clear;
    }
    rc = cdb_data_pipeline_read(conn, res, n, &failed, "data", err);
    if (rc < 0) {
        if ((rc = check_outcome(t, conn, rc, failed, commit_at, err)) == CDB_ERR_TRANSACTION_OUTCOME_UNKNOWN)
            goto out_clear;
        if (t->key && failed == claim_at && cdb_ledger_claim_error(err)) {
            rc = cdb_ledger_claim_refused(conn, t->scope, t->key, idem, err);
        } else if (failed >= first_op && failed < first_after_ops) {
            int i = t->pg_ops[failed - first_op];
            const char *state = json_string_value(json_object_get(err->details, "sqlstate"));
            if (state && strcmp(state, "42P10") == 0) { /* no unique index matches */
                rc = op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "conflict_columns",
                             "conflict_columns must match a unique constraint of the table");
            } else {
                op_tag(err, i, rc);
                if (PQstatus(conn) == CONNECTION_OK && !PQpipelineStatus(conn))
                    name_bad_value(conn, &t->ops[i], err);
            }
        }
        goto out_clear;
    }
    for (int k = 0; k < t->npg && rc == 0; k++)
        rc = collect_result(t, &t->ops[t->pg_ops[k]], res[first_op + k], t->pg_ops[k], err);
    if (rc < 0) {
        /* Unkeyed, it has committed: only a result we cannot read remains.
         * Keyed, nothing is committed yet and the release rolls it back. */
        if (!t->key)
            cdb_log_error("data.tx_result_unreadable", "transaction %s committed but its result could not be read", t->id);
        goto out_clear;
    }
    if (t->key && (rc = commit_keyed(t, conn, err)) < 0)
        goto out_clear;
    if (PQexitPipelineMode(conn) != 1)
        cdb_log_warn("data.pipeline_exit_failed", "connection left in pipeline mode");

out_clear:
    for (int k = 0; k < n; k++)
        PQclear(res[k]);
    cdb_sql_destroy(&q);
    return rc;
}

/*
 * Applies this transaction's outbox rows right after its commit (see the top
 * of the file); results of rows left behind say "pending". Keyed, the
 * answer with the Redis results replaces the stored one in the same
 * bookkeeping transaction, and t->final is set once that has committed: the
 * answer sent is always the one a retry would replay.
 */
static void apply_outbox(tx *t, PGconn *conn)
{
    char *final = NULL;
    PGresult *res = NULL;
    bool locked[TX_MAX_OPS + 1] = { false };
    char done[TX_MAX_OPS * 5 + 3] = "{}", seq[16], why[256] = "";
    int stop = t->nrows, failed_seq = 0;
    cdb_error e;
    const char *params[3] = { t->id, done, why };

    cdb_error_init(&e);
    for (int r = 0; r < t->nrows; r++)
        if (t->rows[r].from)
            t->rows[r].from->status = "pending";
    if (cdb_pg_exec(conn, "BEGIN", 0, NULL, NULL, &e) < 0 ||
        cdb_pg_exec(conn, "SELECT seq FROM coredb.redis_outbox WHERE transaction_id = $1 "
                          "ORDER BY seq FOR UPDATE SKIP LOCKED", 1, params, &res, &e) < 0)
        goto out_log;
    for (int k = 0; k < PQntuples(res); k++) {
        int s = atoi(PQgetvalue(res, k, 0));
        if (s >= 1 && s <= t->nrows)
            locked[s] = true;
    }
    for (int r = 0; r < t->nrows; r++) {
        outbox_row *row = &t->rows[r];
        json_t *value = NULL;
        if (!locked[r + 1]) {      /* the flush has it: it keeps the order from here */
            stop = r;
            break;
        }
        cdb_outbox_rc ar = cdb_outbox_apply(t->svc->cache, row->op, row->key, row->value, row->ttl,
                                row->from ? &value : NULL, why, sizeof why);
        if (ar == CDB_OUTBOX_DOWN) {
            stop = r;
            failed_seq = r + 1;
            break;
        }
        cdb_outbox_array_add(done, sizeof done, r + 1);
        cdb__tx_row_report(t, row, ar, why, value);
        json_decref(value);
    }
    /* kept, not deleted, when the master may have died before a replica had them */
    if (strcmp(done, "{}") != 0 && cdb_outbox_replicated(t->svc->cache) < 0)
        strcpy(done, "{}");
    if (strcmp(done, "{}") != 0 &&
        cdb_pg_exec(conn, "DELETE FROM coredb.redis_outbox WHERE transaction_id = $1 AND seq = ANY($2::int[])",
                    2, params, NULL, &e) < 0)
        goto out_log;
    if (failed_seq) {
        snprintf(seq, sizeof seq, "%d", failed_seq);
        params[1] = seq;
        if (cdb_pg_exec(conn, "UPDATE coredb.redis_outbox SET attempts = attempts + 1, last_error = $3 "
                              "WHERE transaction_id = $1 AND seq = $2::int", 3, params, NULL, &e) < 0)
            goto out_log;
    }
    if (t->key) {
        if (!(final = cdb__tx_response_text(t)))
            goto out_log;
        const char *answer[2] = {t->id, final};
        if (cdb_pg_exec(conn, CDB__TX_LEDGER_FINAL_SQL, 2, answer, NULL, &e) < 0)
            goto out_log;
    }
    if (cdb_pg_exec(conn, "COMMIT", 0, NULL, NULL, &e) < 0)
        goto out_log;
    t->final = final;
    final = NULL;
    if (failed_seq)
        cdb_log_warn("data.outbox_pending", "transaction %s: %d Redis operation(s) left for the retry job: %s",
                     t->id, t->nrows - stop, why);
    goto out;

out_log:
    /* Rows applied here but not deleted are applied again by the flush: at least once. */
    cdb_log_warn("data.outbox_bookkeeping_failed", "transaction %s: outbox update failed: %s", t->id, e.message);
out:
    free(final);
    PQclear(res);
    cdb_error_destroy(&e);
}

/*
 * Right after the commit, on the connection that committed or any other of
 * the primary: the commit's LSN noted before the generation bumps (a reader
 * who sees a bump sees this LSN, query_run.c), then the outbox rows.
 */
static void after_commit(tx *t, PGconn *conn)
{
    cdb_commit_lsn_note(t->svc->commit_lsn, conn, t->caller->user_id);
    if (t->nrows)
        apply_outbox(t, conn);
}

static json_t *build_response(const tx *t, int64_t started_ms)
{
    json_t *results = json_array();
    json_t *out = json_pack("{s:s, s:s, s:o, s:I}", "transaction_id", t->id, "status", "committed",
                            "results", results, "execution_time_ms",
                            (json_int_t)(cdb_mono_ms() - started_ms));
    for (int i = 0; out && results && i < t->nops; i++) {
        const tx_op *op = &t->ops[i];
        json_t *r = json_pack("{s:i, s:s, s:O}", "operation", i + 1, "status", op->status, "data", op->data);
        if (r && op->refusal)
            json_object_set_new(r, "error", json_pack("{s:s, s:s}", "code", "VALIDATION_FAILED",
                                                      "message", op->refusal));
        if (!r || json_array_append_new(results, r) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

char *cdb__tx_response_text(tx *t)
{
    json_t *body = build_response(t, t->started_ms);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

static void tx_free(tx *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        for (int k = 0; op->params && k < op->nparams; k++)
            free(op->params[k]);
        free(op->params);
        free(op->sql);
        free(op->full_key);
        free(op->refusal);
        json_decref(op->data);
        json_decref(op->enc_values);
        json_decref(op->enc_filters);
    }
    if (t->cs)
        cdb__colring_put(t->svc, t->cs);
    if (t->cat)
        cdb_catalog_unref(t->cat);
    free(t->stored);
    free(t->final);
    free(t);
}

/*
 * The committed transaction's answer, malloc'd (NULL when out of memory):
 * keyed, the one stored in the ledger, which a retry replays (the one with
 * the Redis results once the outbox step replaced it, else "pending").
 */
static char *take_answer(tx *t)
{
    if (!t->key)
        return cdb__tx_response_text(t);
    char **owner = t->final ? &t->final : &t->stored;
    char *body = *owner;
    *owner = NULL;
    return body;
}

/* An Idempotency-Key for t (borrowed): checked, the request's keyed hash computed, scoped to the caller. */
static int take_key(tx *t, const char *key, const json_t *request, cdb_error *err)
{
    int rc;
    if ((rc = cdb_ledger_check_key(key, err)) < 0 ||
        (rc = cdb_ledger_request_hash(t->svc->jwt.secret, t->svc->jwt.secret_len, "data.transaction", request,
                                      t->hash, err)) < 0)
        return rc;
    t->key = key;
    snprintf(t->scope, sizeof t->scope, "%s", t->caller->user_id);
    return 0;
}

int cdb_data_transaction_idem(cdb_service *svc, const cdb_principal *caller, json_t *request,
                              cdb_idempotency *idem, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn;
    tx *t = calloc(1, sizeof *t);
    int rc;

    idem->status = 0;
    idem->body = NULL;
    idem->replayed = false;
    if (!t)
        return cdb_error_oom(err);
    t->started_ms = cdb_mono_ms();
    t->svc = svc;
    t->caller = caller;
    cdb_ledger_new_id(t->id);
    if ((rc = cdb_principal_require(caller, err)) < 0)
        goto out_free;
    if (idem->key && (rc = take_key(t, idem->key, request, err)) < 0)
        goto out_free;
    /* generation keys are named while parsing: they need the namespace */
    if ((rc = cdb_qcache_ensure_namespace(svc->qcache, svc->pool, err)) < 0 || (rc = cdb__tx_parse_request(t, request, err)) < 0)
        goto out_free;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out_free;
    }
    if ((rc = run_pipeline(t, pc, idem, err)) < 0 || idem->replayed)
        goto out_release;
    after_commit(t, conn);
    idem->body = take_answer(t);
    idem->status = 200;
    if (!idem->body)
        rc = cdb_error_oom(err);

out_release:
    cdb_txn_release(svc->pool, pc);
out_free:
    tx_free(t);
    return rc;
}

int cdb_data_transaction(cdb_service *svc, const cdb_principal *caller, json_t *request,
                         json_t **out, cdb_error *err)
{
    cdb_idempotency idem = { .key = NULL };
    int rc = cdb_data_transaction_idem(svc, caller, request, &idem, err);

    *out = NULL;
    if (rc == 0 && !(*out = json_loads(idem.body, 0, NULL)))
        rc = cdb_error_oom(err);
    cdb_idempotency_destroy(&idem);
    return rc;
}

/* ---- run on an event loop (tx_loop.h) ---- */

_Static_assert(CDB_DATA_PRELUDE_COUNT == 2, "the loop's prelude is BEGIN, role + settings");
_Static_assert(CDB_DATA_PRELUDE_COUNT + TX_MAX_OPS + 4 <= CDB_APG_MAX_STMTS, "a transaction fits one loop job");

static const char *const NO_PARAMS[1] = {NULL};

/*
 * What only a worker may run: documents or vectors (their own stores), and
 * a written table with encrypted columns (keys drawn and read through the
 * blocking pool). Unknown tables and bad shapes are left to the parser,
 * whose error sends the request to a worker too.
 */
static bool loop_may_run(const tx *t, json_t *request)
{
    json_t *ops = json_object_get(request, "operations"), *o;
    size_t i;
    if (!json_is_array(ops))
        return true;
    json_array_foreach(ops, i, o) {
        json_t *db = json_object_get(o, "database");
        const char *name = json_string_value(json_object_get(o, "table"));
        if (cdb__doc_database(db) || cdb__vec_database(db))
            return false;
        const cdb_table *table = name ? cdb_catalog_table(t->cat, t->caller->role, name) : NULL;
        if (table && cdb__colset_has_table(t->cs, table->name))
            return false;
    }
    return true;
}

/*
 * Row r as Redis took it (applied or refused for good), into the answer:
 * its operation's status, refusal and value. Shared by the worker's
 * apply_outbox and the loop's (tx_loop.c); a generation bump has none.
 */
void cdb__tx_row_report(const tx *t, outbox_row *row, cdb_outbox_rc rc, const char *why, json_t *value)
{
    if (!row->from)
        return;
    if (rc == CDB_OUTBOX_REFUSED) {
        row->from->status = "failed";
        row->from->refusal = strdup(why);
        cdb_log_warn("data.outbox_refused", "Redis refused %s of transaction %s: %s", row->op, t->id, why);
    } else {
        row->from->status = "success";
    }
    if (value && row->from->kind != OP_SET)
        json_object_set(row->from->data, row->from->kind == OP_DEL      ? "deleted"
                                         : row->from->kind == OP_EXPIRE ? "applied"
                                                                        : "value",
                        value);
}

int cdb__tx_loop_plan(cdb_service *svc, const cdb_principal *p, json_t *request, const char *key,
                      cdb__tx_loop **out)
{
    const char *db_role = cdb_principal_db_role(p);
    cdb__tx_loop *lt = NULL;
    tx *t = NULL;
    cdb_error err;

    *out = NULL;
    cdb_error_init(&err);
    /* never blocks: what is not in memory yet is loaded by the worker */
    if (!cdb_principal_known(p) || !db_role || !json_is_object(request) || !svc->catalog ||
        !cdb_qcache_has_namespace(svc->qcache) || !(t = calloc(1, sizeof *t)))
        goto refuse;
    t->started_ms = cdb_mono_ms();
    t->svc = svc;
    t->caller = p;
    cdb_ledger_new_id(t->id);
    /* the key last, after the cheaper refusals; a bad key is the worker's to answer, as any bad input */
    if (!(t->cat = cdb_catalog_cache_peek(svc->catalog)) || !(t->cs = cdb__colring_peek(svc)) ||
        !loop_may_run(t, request) || cdb__tx_parse_request(t, request, &err) < 0 ||
        (key && take_key(t, key, request, &err) < 0) || !(lt = calloc(1, sizeof *lt)))
        goto refuse;
    cdb_sql_init(&lt->outbox);
    lt->t = t;
    if (t->nrows && build_outbox_insert(t, &lt->outbox) < 0)
        goto refuse;
    lt->settings[0] = db_role;
    lt->settings[1] = p->user_id;
    lt->settings[2] = cdb_role_name(p->role);
    lt->ledger[0] = t->id;
    lt->ledger[1] = p->user_id;
    lt->claim[0] = t->scope;
    lt->claim[1] = t->key;
    lt->claim[2] = t->hash;
    *out = lt;
    cdb_error_destroy(&err);
    return 1;

refuse:
    if (lt)
        cdb__tx_loop_free(lt);     /* frees t too */
    else
        tx_free(t);
    cdb_error_destroy(&err);
    return 0;
}

bool cdb__tx_loop_keyed(const cdb__tx_loop *lt)
{
    return lt->t->key != NULL;
}

/*
 * The worker's pipeline (run_pipeline): BEGIN, [the key's claim], role +
 * settings, the operations, RESET ROLE, the outbox rows, and unkeyed the
 * ledger row and COMMIT (keyed: cdb__tx_loop_commit_statements). Texts that
 * vary per request are unnamed; the claim, the prelude and the ledger row
 * are prepared once per connection.
 */
int cdb__tx_loop_statements(cdb__tx_loop *lt, cdb_apg_stmt *stmts)
{
    tx *t = lt->t;
    int n = 0;
    stmts[n++] = (cdb_apg_stmt){"BEGIN", 0, NO_PARAMS, true};
    if (t->key)                    /* as the login role, before the caller's role is set */
        stmts[n++] = (cdb_apg_stmt){CDB_LEDGER_CLAIM_SQL, 3, lt->claim, false};
    stmts[n++] = (cdb_apg_stmt){cdb_txn_read_prelude_sql(), 3, lt->settings, false};
    for (int k = 0; k < t->npg; k++) {
        const tx_op *op = &t->ops[t->pg_ops[k]];
        stmts[n++] = (cdb_apg_stmt){op->sql, op->nparams, (const char *const *)op->params, true};
    }
    /* the service's own tables belong to the login role */
    stmts[n++] = (cdb_apg_stmt){"RESET ROLE", 0, NO_PARAMS, true};
    if (t->nrows)
        stmts[n++] = (cdb_apg_stmt){lt->outbox.text, lt->outbox.nparams, (const char *const *)lt->outbox.params,
                                    true};
    if (t->key)
        return n;
    stmts[n++] = (cdb_apg_stmt){LEDGER_SQL, 2, lt->ledger, false};
    stmts[n++] = (cdb_apg_stmt){"COMMIT", 0, NO_PARAMS, true};
    return n;
}

int cdb__tx_loop_commit_statements(cdb__tx_loop *lt, cdb_apg_stmt *stmts)
{
    if (!keyed_stored_answer(lt->t, lt->keyed_ledger))
        return -1;
    stmts[0] = (cdb_apg_stmt){LEDGER_KEYED_SQL, 6, lt->keyed_ledger, false};
    stmts[1] = (cdb_apg_stmt){"COMMIT", 0, NO_PARAMS, true};
    return 2;
}

int cdb__tx_loop_collect(cdb__tx_loop *lt, PGresult *const *res, int n, cdb_error *err)
{
    tx *t = lt->t;
    const int first_op = CDB_DATA_PRELUDE_COUNT + (t->key ? 1 : 0);
    int rc = 0;
    if (n < first_op + t->npg)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Malformed database result");
    for (int k = 0; k < t->npg && rc == 0; k++)
        rc = collect_result(t, &t->ops[t->pg_ops[k]], res[first_op + k], t->pg_ops[k], err);
    if (rc < 0 && !t->key)         /* keyed, nothing is committed yet: the claim's release rolls it back */
        cdb_log_error("data.tx_result_unreadable", "transaction %s committed but its result could not be read", t->id);
    return rc;
}

int cdb__tx_loop_unknown(cdb__tx_loop *lt, cdb_error *err)
{
    return cdb_ledger_fail_unknown(err, lt->t->id);
}

int cdb__tx_loop_finish(cdb__tx_loop *lt, cdb_idempotency *idem, cdb_error *err)
{
    tx *t = lt->t;
    cdb_pool_conn *pc = NULL;
    cdb_error e;
    cdb_error_init(&e);
    PGconn *conn = cdb_txn_acquire(t->svc->pool, &pc, &e);
    if (conn) {
        after_commit(t, conn);
    } else {
        /* committed, but the database is gone again: the flush job applies the rows */
        for (int r = 0; r < t->nrows; r++)
            if (t->rows[r].from)
                t->rows[r].from->status = "pending";
        cdb_log_warn("data.outbox_pending", "transaction %s: %d Redis operation(s) left for the retry job: %s",
                     t->id, t->nrows, e.message);
    }
    cdb_txn_release(t->svc->pool, pc);
    cdb_error_destroy(&e);
    return cdb__tx_loop_answer(lt, idem, err);
}

int cdb__tx_loop_pending_answer(cdb__tx_loop *lt, cdb_idempotency *idem, cdb_error *err)
{
    for (int i = 0; i < lt->t->nops; i++)
        if (lt->t->ops[i].kind >= OP_SET)
            lt->t->ops[i].status = "pending";
    return cdb__tx_loop_answer(lt, idem, err);
}

int cdb__tx_loop_answer(cdb__tx_loop *lt, cdb_idempotency *idem, cdb_error *err)
{
    idem->replayed = false;
    idem->status = 200;
    idem->body = take_answer(lt->t);
    return idem->body ? 0 : cdb_error_oom(err);
}

void cdb__tx_loop_free(cdb__tx_loop *lt)
{
    if (!lt)
        return;
    cdb_sql_destroy(&lt->outbox);
    free(lt->apply);
    tx_free(lt->t);
    free(lt);
}
