/*
 * loop_query.c - a data-API miss run on the event loop that admitted it,
 * on the loop's own PostgreSQL connections (store/pg_async.h), without a
 * worker thread: the hand-off to a worker and back cost more CPU than the
 * rest of a miss (bench/RESULTS.md, issue 8).
 *
 * loop_admit.c calls it once admission ended on the loop with the session
 * alive, the quota fine and no cache hit. The statements are the worker's
 * (data/query_probe.h: the same planner, read prelude and page body), sent
 * as one pipeline segment: role + settings, page, count, Sync. Then:
 *
 *   - every result in: 200 on the loop (`cached:false`), and when the
 *     table's generation was read by the loop's MGET before the query was
 *     sent, the answer is stored at that generation in Redis (SET ... EX
 *     CACHE_TTL on the loop's asynchronous connection, not waited for) and
 *     in the loop's first-level cache: the rule of store/qcache.h, where a
 *     generation read before the query tags its answer;
 *   - any failure (the connection lost, an error result of any kind, no
 *     connection ready, or none with room within pg_async.c's park wait):
 *     the request goes to a worker, which runs it the
 *     blocking way and reports errors exactly as before. A read is
 *     idempotent, so running it twice is harmless, and the loop never has
 *     to map PostgreSQL's errors;
 *   - identical misses run once: the loop leads the key's flight of
 *     store/qcache.h without waiting (cdb_qcache_probe_lead), and a miss
 *     that finds another flight running goes to a worker, which follows it
 *     (and is served its bytes); the leader ends the flight with its answer,
 *     or abandons it before any hand-off;
 *   - the job's deadline, or the server's statement_timeout: 504
 *     DATABASE_TIMEOUT on the loop (waiting again on a worker would double
 *     what the caller waits).
 *
 * A plan (statements and params) is kept in the loop's memo under the
 * caller's role and the body's exact bytes, so a repeated miss skips the
 * JSON parse and the planner; each use checks what the planner would
 * (data/query_probe.h: the catalog snapshot, the encrypted columns, the
 * caller) and makes the caller's settings and cache keys afresh.
 *
 * What the loop does not run goes to a worker at once: encrypted columns,
 * read replicas, X-Connection-ID (leases: loop_lease.c runs those on the
 * lease's own connection), a restore running (loop_admit.c
 * knows: it never calls here then), a body that does not plan without
 * blocking work.
 */
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "core/timeutil.h"
#include "data/query_probe.h"
#include "service/service_internal.h"

/* A plan memo's entry is verified on each use; this bounds its life for anything unforeseen. */
enum { PLAN_MEMO_TTL_MS = 10000 };

typedef struct loop_query {
    cdb_request *r;
    bool store;                    /* the generation was read before the query: store the answer */
    bool lead;                     /* this loop leads the key's flight (store/qcache.h): end it */
    int64_t generation;
    cdb__query_loop lp;
} loop_query;

void cdb__loop_end_flight(cdb_request *r, bool *lead, const char *cache_key, int64_t generation, const char *part,
                          size_t len)
{
    if (*lead)
        cdb_qcache_probe_finish(cdb_service_qcache(r->svc), cache_key, generation, part, len);
    *lead = false;
}

static void end_flight(loop_query *q, const char *part, size_t len)
{
    cdb__loop_end_flight(q->r, &q->lead, q->lp.cache_key, q->generation, part, len);
}

void cdb__loop_fail_timeout(cdb_request *r, bool by_server)
{
    cdb_error err;
    cdb_error_init(&err);
    /* the blocking path's words for each (store/pg.c cdb_pg_error_from_result) */
    cdb_error_set(&err, CDB_ERR_DATABASE_TIMEOUT, "%s",
                  by_server ? "Database statement timed out" : "Database did not answer in time");
    cdb_error_detail(&err, "database", json_string("postgresql"));
    cdb_request_fail(r, &err);
    cdb_error_destroy(&err);
}

static void query_free(loop_query *q)
{
    cdb__data_query_loop_destroy(&q->lp);
    free(q);
}

static void on_stored(redisReply *reply, void *arg)
{
    (void)arg;
    if (reply && reply->type == REDIS_REPLY_STATUS)
        cdb__metrics_inc(CDB_M_CACHE_STORES);
}

void cdb__loop_store_answer(cdb_request *r, const char *entry_key, int64_t generation, const char *part,
                            size_t len)
{
    cdb_qcache *qc = cdb_service_qcache(r->svc);
    size_t n;
    char ttl[24];
    char *entry = cdb_qcache_entry_encode(generation, part, len, &n);
    if (!entry)
        return;
    snprintf(ttl, sizeof ttl, "%d", cdb_qcache_ttl_s(qc));
    const char *argv[] = {"SET", entry_key, entry, "EX", ttl};
    const size_t argvlen[] = {3, strlen(entry_key), n, 2, strlen(ttl)};
    cdb_aredis_send(r->loop->aredis, on_stored, NULL, 5, argv, argvlen);
    free(entry);
    if (r->loop->l1)
        cdb_l1_answer_store(r->loop->l1, entry_key, generation, part, len, cdb_mono_ms());
}

/* The answer at q's generation, into Redis (not waited for) and the loop's L1. */
static void store(loop_query *q, const char *part, size_t len)
{
    cdb__loop_store_answer(q->r, q->lp.entry_key, q->generation, part, len);
}

static void on_results(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    loop_query *q = arg;
    cdb_request *r = q->r;
    char *part = NULL, *body = NULL;
    size_t len = 0;

    if (cdb_apg_timed_out(outcome)) {
        cdb__loop_fail_timeout(r, outcome == CDB_APG_TIMEOUT);
        cdb__metrics_inc(CDB_M_LOOP_QUERY_TIMEOUT);
        end_flight(q, NULL, 0);
        goto finish;
    }
    /* [prelude, rows, count] */
    if (outcome == CDB_APG_OK && n == 3)
        body = cdb__data_query_loop_answer(&q->lp, res[1], res[2], r->start_us, &part, &len);
    if (!body) {
        cdb__metrics_inc(CDB_M_LOOP_QUERY_HANDED_OFF);
        end_flight(q, NULL, 0);    /* before the hand-off: the worker must not wait for this flight */
        free(part);
        query_free(q);
        cdb_server_hand_off(r);
        return;
    }
    if (q->store && q->lp.entry_key && r->loop->aredis)
        store(q, part, len);
    end_flight(q, part, len);
    free(part);
    cdb_request_reply_text(r, 200, body);
    cdb__metrics_inc(CDB_M_LOOP_QUERY_ANSWERED);
finish:
    query_free(q);
    cdb_server_finish(r);
}

/*
 * The plan of r: from the loop's memo when a caller with r's role sent the
 * same bytes before (data/query_probe.h's pack: the catalog snapshot and
 * the per-moment checks are verified on each use), else planned from the
 * parsed body and remembered. A repeated miss thus skips parsing the JSON,
 * validating it against the catalog and building the SQL.
 */
static bool plan(cdb_request *r, cdb__query_loop *lp)
{
    char key[CDB_LOOP_MEMO_KEY_MAX];
    size_t len;
    int64_t now = cdb_mono_ms();
    bool memo = r->loop->memo && cdb__loop_memo_key(r, false, key, sizeof key);
    const char *packed = memo ? cdb_kvtable_get(r->loop->memo, key, &len, NULL, now) : NULL;
    if (packed && cdb__data_query_loop_unpack(r->svc, &r->principal, r->arena, packed, len, lp)) {
        cdb__metrics_inc(CDB_M_LOOP_PLAN_MEMO_HITS);
        return true;
    }
    /* read before planning: a swap meanwhile only makes the memo miss */
    uint64_t catalog_version = cdb_service_catalog_version(r->svc);
    if ((!r->body && !(r->body = json_loadb(r->raw_body, r->raw_body_len, JSON_REJECT_DUPLICATES, NULL))) ||
        !cdb__data_query_loop_plan(r->svc, &r->principal, r->body, lp))
        return false;
    char *bytes = memo ? cdb__data_query_loop_pack(lp, catalog_version, &len) : NULL;
    if (bytes)
        cdb_kvtable_put(r->loop->memo, key, bytes, len, now + PLAN_MEMO_TTL_MS, now);
    free(bytes);
    return true;
}

bool cdb__loop_query(cdb_request *r, bool generation_read, int64_t generation)
{
    cdb_loop *loop = r->loop;
    if (!loop->apg || r->route->mode != CDB_RUN_CACHED || r->raw_body_len == 0 ||
        cdb_request_field(r, "X-Connection-ID"))
        return false;
    loop_query *q = malloc(sizeof *q);
    if (!q)
        return false;
    q->r = r;
    q->store = generation_read;
    q->generation = generation;
    q->lead = false;
    if (!plan(r, &q->lp)) {
        free(q);                   /* lp holds nothing after a failed plan */
        return false;
    }
    /* identical misses run once (store/qcache.h single flight): another running it, a worker follows */
    if (q->store && q->lp.cache_key) {
        if (!cdb_qcache_probe_lead(cdb_service_qcache(r->svc), q->lp.cache_key, generation)) {
            query_free(q);
            return false;
        }
        q->lead = true;
    }
    const cdb__query_loop *lp = &q->lp;
    const cdb_apg_stmt stmts[] = {
        {lp->prelude_sql, 3, lp->settings, false},
        {lp->rows.text, lp->rows.nparams, (const char *const *)lp->rows.params, false},
        {lp->count_sql, lp->count_nparams, (const char *const *)lp->rows.params, false},
    };
    if (!cdb_apg_submit(loop->apg, stmts, 3, 0, on_results, q)) {
        end_flight(q, NULL, 0);
        query_free(q);
        return false;
    }
    return true;
}
