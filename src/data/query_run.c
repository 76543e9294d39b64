/*
 * query_run.c - what the table query (query.c) and the document query
 * (doc_query.c) share: pagination, the one pipelined round trip that reads
 * a page of rows and the total count under the caller's role, and the
 * answer's wrapping. Moved out of query.c so neither calls the other.
 *
 * The round trip is three prepared statements and one Sync: the caller's
 * role + settings (data_internal.h, the read prelude), the page, the count.
 * No BEGIN/COMMIT: up to the Sync the pipeline is one implicit transaction,
 * so the transaction-local role and settings cover the page and the count
 * and end with them, committed or failed (tests/e2e/test_data_read_shape.py).
 * Of the shapes measured (bench/sql_shapes.sh, bench/RESULTS.md "SQL shapes
 * of a data-API miss") this is the cheapest for PostgreSQL that keeps a
 * total on an empty page; one statement reading page and total together
 * (string_agg or json_agg of the rows) costs it more, not less.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data_internal.h"
#include "data/query_run.h"
#include "coredb/log.h"
#include "core/timeutil.h"
#include "store/reserved.h"

/* Statements of the pipeline after the read prelude: rows, count. */
enum { STMT_ROWS = CDB_DATA_READ_PRELUDE_COUNT, STMT_COUNT, NSTMTS };

typedef struct page_req {
    json_int_t page, limit;
} page_req;

static int invalid(cdb_error *err, const char *field, const char *msg)
{
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s", msg);
}

const char *cdb__query_unknown_member(const json_t *obj, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, k) != 0)
            a++;
        if (!*a)
            return k;
    }
    return NULL;
}

int cdb__query_pagination(const json_t *v, cdb_role role, json_int_t *page_out, json_int_t *limit_out,
                          cdb_error *err)
{
    static const char *const members[] = {"page", "limit", NULL};
    json_int_t max = role == CDB_ROLE_USER ? USER_MAX_LIMIT : PRIVILEGED_MAX_LIMIT;

    page_req r = {.page = 1, .limit = DEFAULT_LIMIT}, *req = &r;
    *page_out = 1;
    *limit_out = DEFAULT_LIMIT;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_object(v))
        return invalid(err, "pagination", "pagination must be an object {page, limit}");
    const char *bad = cdb__query_unknown_member(v, members);
    if (bad)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "pagination",
                                    "Unknown pagination field");
    json_t *page = json_object_get(v, "page"), *limit = json_object_get(v, "limit");
    if (limit) {
        if (!json_is_integer(limit) || json_integer_value(limit) < 1)
            return invalid(err, "pagination.limit", "limit must be an integer >= 1");
        if (json_integer_value(limit) > max) {
            cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "pagination.limit",
                                 "limit must be at most %" JSON_INTEGER_FORMAT " for this role", max);
            cdb_error_detail(err, "max", json_integer(max));
            return CDB_ERR_VALIDATION_FAILED;
        }
        req->limit = json_integer_value(limit);
    }
    if (page) {
        /* the offset (page - 1) * limit must fit a bigint */
        if (!json_is_integer(page) || json_integer_value(page) < 1 ||
            json_integer_value(page) > INT64_MAX / req->limit)
            return invalid(err, "pagination.page", "page must be an integer >= 1");
        req->page = json_integer_value(page);
    }
    *page_out = req->page;
    *limit_out = req->limit;
    return 0;
}


/* The error of a failed pipeline, with bad filter values made INVALID_FILTER. */
static int query_error(int failed, cdb_error *err)
{
    static const char *const value_states[] = {"22P02", "22007", "22008", "22003", "22025", "42883", NULL};
    const char *state = json_string_value(json_object_get(err->details, "sqlstate"));
    if (state && (failed == STMT_ROWS || failed == STMT_COUNT)) {
        for (const char *const *s = value_states; *s; s++)
            if (strcmp(state, *s) == 0)
                return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, NULL, NULL,
                                            "A filter value does not fit its column");
    }
    return err->code;
}

/*
 * The cacheable part of the answer, `"data":[...],"pagination":{...}`,
 * from the rows and the count.
 */
char *cdb__query_page_body(const PGresult *rows, const PGresult *count, json_int_t page, json_int_t limit,
                           size_t *len_out)
{
    const page_req r = {.page = page, .limit = limit}, *req = &r;
    int n = PQntuples(rows);
    long long total = PQntuples(count) == 1 ? strtoll(PQgetvalue(count, 0, 0), NULL, 10) : 0;
    long long pages = (total + req->limit - 1) / req->limit;
    char tail[160];
    int tail_len = snprintf(tail, sizeof tail,
                            "],\"pagination\":{\"page\":%" JSON_INTEGER_FORMAT ",\"limit\":%"
                            JSON_INTEGER_FORMAT ",\"total\":%lld,\"pages\":%lld}",
                            req->page, req->limit, total, pages);
    size_t size = sizeof "\"data\":[" + (size_t)tail_len + (size_t)n;
    for (int i = 0; i < n; i++)
        size += (size_t)PQgetlength(rows, i, 0);
    char *buf = malloc(size), *p = buf;
    if (!buf)
        return NULL;
    p += sprintf(p, "\"data\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        size_t l = (size_t)PQgetlength(rows, i, 0);
        memcpy(p, PQgetvalue(rows, i, 0), l);
        p += l;
    }
    memcpy(p, tail, (size_t)tail_len + 1);
    *len_out = (size_t)(p - buf) + (size_t)tail_len;
    return buf;
}

/* {<part>,"execution_time_ms":..,"cached":..} */
size_t cdb__query_wrap_tail(char *tail, size_t size, int64_t start_us, bool cached)
{
    /* hundredths of a millisecond, rounded, in integers: %.2f of a double cost a cache hit 1,900 instructions */
    int64_t elapsed_us = cdb_mono_us() - start_us;
    long long hundredths = (long long)((elapsed_us > 0 ? elapsed_us : 0) + 5) / 10;
    int n = snprintf(tail, size, ",\"execution_time_ms\":%lld.%02lld,\"cached\":%s}", hundredths / 100,
                     hundredths % 100, cached ? "true" : "false");
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

char *cdb__query_wrap(const char *part, size_t len, int64_t start_us, bool cached)
{
    char tail[CDB_QUERY_TAIL_MAX];
    /* the part is copied, not formatted: it is most of the answer (a page of rows) */
    size_t tail_len = cdb__query_wrap_tail(tail, sizeof tail, start_us, cached);
    char *out = tail_len ? malloc(1 + len + tail_len + 1) : NULL;
    if (!out)
        return NULL;
    out[0] = '{';
    memcpy(out + 1, part, len);
    memcpy(out + 1 + len, tail, tail_len + 1);
    return out;
}

/* Runs the pipeline on a connection of pool; *part gets the cacheable body. */
static int run_on(cdb_pool *pool, const cdb_principal *p, const cdb_sql *q, const char *count_sql,
                  int count_nparams, const page_req *req, char **part, size_t *len, cdb_error *err)
{
    PGresult *res[NSTMTS] = {0};
    cdb_pool_conn *pc = NULL;
    int failed = -1, rc;

    const char *rows_stmt = NULL, *count_stmt = NULL;
    PGconn *conn = cdb_txn_acquire(pool, &pc, err);
    if (!conn)
        return err->code;
    /* Each query shape is parsed and planned once per connection. */
    if ((rc = cdb_pool_conn_prepare(pc, q->text, q->nparams, &rows_stmt, err)) < 0 ||
        (rc = cdb_pool_conn_prepare(pc, count_sql, count_nparams, &count_stmt, err)) < 0) {
        rc = query_error(STMT_ROWS, err); /* a type problem of a filter shows at PREPARE */
        goto out_release;
    }
    if ((rc = cdb_data_start_read_pipeline(pc, p, err)) < 0)
        goto out_release;
    const char *const *params = (const char *const *)q->params;
    if (!cdb_txn_send(conn, rows_stmt, q->text, q->nparams, params) ||
        !cdb_txn_send(conn, count_stmt, count_sql, count_nparams, params) || !PQpipelineSync(conn)) {
        rc = cdb_data_pg_error(conn, NULL, NULL, err);
        goto out_release;
    }
    if ((rc = cdb_data_pipeline_read(conn, res, NSTMTS, &failed, NULL, err)) < 0) {
        rc = query_error(failed, err);
        goto out_release;
    }
    if (!(*part = cdb__query_page_body(res[STMT_ROWS], res[STMT_COUNT], req->page, req->limit, len)))
        rc = cdb_error_oom(err);

out_release:
    for (int i = 0; i < NSTMTS; i++)
        PQclear(res[i]);
    cdb_txn_release(pool, pc);
    return rc;
}

/*
 * Whether a read that failed on a replica is worth asking the primary: yes
 * unless the caller's own input is at fault (a filter value, a query the
 * primary would refuse the same way). A replica that
 * lost its connection, timed out, was cancelled by recovery (40001) or has
 * not replayed a new table yet (42P01, 42703) is the replica's problem.
 */
static bool replica_retryable(const cdb_error *err)
{
    return err->code != CDB_ERR_INVALID_FILTER && err->code != CDB_ERR_VALIDATION_FAILED &&
           err->code != CDB_ERR_FORBIDDEN;
}

/*
 * Where a read runs (docs/replicas.md): a connection bound by
 * X-Connection-ID stays where it is; otherwise a replica in rotation that
 * has replayed the caller's last commit (store/commit_lsn.h: one Redis
 * round trip, skipped when no replica is in rotation), else the primary.
 * A replica that fails the read hands it to the primary once: a replica
 * never causes an error. *cacheable says whether the answer may be cached:
 * not when it came from a replica that had not replayed lsn_seen (the last
 * commit anyone had recorded when the caller read the table's cache
 * generation: qcache.h) nor this process's last commit. A write whose bump
 * the caller saw may be missing from such a replica, and its answer stored
 * under that generation would be served stale until the next write or
 * CACHE_TTL, long after the replica caught up.
 */
int cdb__query_run(cdb_service *svc, const cdb_principal *p, const cdb_sql *q, const char *count_sql,
                   int count_nparams, json_int_t page, json_int_t limit, char **part, size_t *len,
                   uint64_t lsn_seen, bool *cacheable, cdb_error *err)
{
    const page_req req = {.page = page, .limit = limit};
    int replica = -1, rc;
    bool ryw = false, fresh = false;

    *cacheable = true;
    if (svc->replicas && !cdb_reserved_has_bound() && cdb_replicas_any_up(svc->replicas)) {
        uint64_t last_lsn = 0, min_lsn = cdb_commit_lsn_get(svc->commit_lsn, p->user_id, &last_lsn);
        replica = cdb_replicas_pick(svc->replicas, min_lsn, lsn_seen > last_lsn ? lsn_seen : last_lsn, &ryw,
                                    &fresh);
    }
    if (replica >= 0) {
        rc = run_on(cdb_replicas_pool(svc->replicas, replica), p, q, count_sql, count_nparams, &req, part, len,
                    err);
        if (rc == 0 || !replica_retryable(err)) {
            cdb_replicas_count_read(svc->replicas, replica, false, false);
            *cacheable = fresh;
            return rc;
        }
        cdb_log_warn("replica.read_failed", "a read failed on a replica (%s); the primary answers it",
                     cdb_err_name(err->code));
        if (err->code == CDB_ERR_DATABASE_UNAVAILABLE || err->code == CDB_ERR_DATABASE_TIMEOUT ||
            err->code == CDB_ERR_POOL_EXHAUSTED)
            cdb_replicas_report_failure(svc->replicas, replica);
        cdb_error_destroy(err);
        cdb_error_init(err);
    }
    rc = run_on(svc->pool, p, q, count_sql, count_nparams, &req, part, len, err);
    cdb_replicas_count_read(svc->replicas, -1, ryw, replica >= 0);
    return rc;
}

char *cdb__query_cache_key(const cdb_principal *p, json_t *canon)
{
    char *text = canon ? json_dumps(canon, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(canon);
    char *key = text ? cdb__query_cache_key_of(p, text) : NULL;
    free(text);
    return key;
}

char *cdb__query_cache_key_of(const cdb_principal *p, const char *canon_text)
{
    char *key;
    /* admins see every row: one key for all of them; others per user */
    if (asprintf(&key, "%s:%s\n%s", p->role == CDB_ROLE_ADMIN ? "admin" : cdb_role_name(p->role),
                 p->role == CDB_ROLE_ADMIN ? "" : p->user_id, canon_text) < 0)
        return NULL;
    return key;
}
