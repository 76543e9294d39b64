/*
 * loop_admit.c - admission on the event loop that parsed the request, and
 * the answer of a data-API cache hit there, without a worker thread.
 *
 * The token's signature was checked on the loop already (request.c). The
 * rest of admission, and a CDB_RUN_CACHED route's cache lookup, first ask
 * the loop's first-level cache (store/l1cache.h: session liveness, table
 * generations and answers, kept exact across instances by pub/sub
 * invalidation), then Redis for what it does not know, on the loop's
 * asynchronous connection (store/redis_async.h) as one pipeline: the
 * session's copy (GET, and PTTL for the L1), the restore flag when its poll
 * is due (GET), the caller's quota (EVALSHA of the GCRA script) and the
 * table's generation with the cached answer (MGET, data/query_probe.h).
 * A repeat by a known session with no quota needs no round trip at all.
 * When every reply is in, the loop decides:
 *
 *   - session ended: 401 TOKEN_REVOKED, on the loop;
 *   - session alive and quota refused: 429, on the loop;
 *   - session alive, quota fine, a cache hit: 200, on the loop;
 *   - anything else goes to a worker as before, keeping what the loop
 *     learnt (session_checked, quota_checked) so nothing is asked twice;
 *     what the loop could not settle (no liveness copy, a failed reply, a
 *     restore running) the worker settles the blocking way.
 *
 * So the promises are the blocking path's: the same keys are read, and a
 * request whose replies are missing or odd is simply admitted the old way.
 * The loop never waits: with its connection down, or Redis not trusted yet
 * after an outage, every request takes the blocking path at once.
 */
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"
#include "data/query_probe.h"
#include "data/query_run.h"
#include "identity/liveness.h"
#include "service/service_internal.h"
#include "core/timeutil.h"

/* One request's pipeline on the loop. */
typedef struct loop_admission {
    cdb_request *r;
    int pending;                   /* replies still to come */
    int liveness;                  /* 1 alive, 0 ended, -1 unknown */
    cdb_inval_ticket session_ticket; /* taken before the session's copy was read (L1) */
    int rate;                      /* the caller's quota, 0 = none */
    bool quota_known;              /* rl holds Redis's answer */
    cdb_rl_result rl;
    bool probed;                   /* probe's keys were sent */
    cdb__query_probe probe;
    bool table_ticket_ok;
    cdb_inval_ticket table_ticket;
    bool generation_read;          /* the MGET read the table's generation (a miss is stored at it) */
    int64_t generation;
    /*
     * A cache hit's cached bytes (the answer is "{" bytes tail), held until
     * they are handed to the request: by a reference on the L1's entry, or
     * as the string taken out of Redis's reply. Never copied on their way
     * to the socket (request.c sends them by reference).
     */
    const char *answer;
    size_t answer_len;
    cdb_kvref *answer_ref;         /* the L1's entry */
    char *answer_reply;            /* Redis's reply string (malloc'd by hiredis; answer points into it) */
    bool key_in_arena;             /* probe.entry_key is the memo's, copied into the arena */
    bool maintenance;              /* a restore runs: known before, or found by its poll */
    char maintenance_key[256];
    char session_key[64];
    char quota_key[128];
    cdb_rl_command quota_cmd;
} loop_admission;

/* Gives the held answer's bytes back. */
static void answer_drop(loop_admission *a)
{
    cdb_kvref_release(a->answer_ref);
    free(a->answer_reply);
    a->answer_ref = NULL;
    a->answer_reply = NULL;
    a->answer = NULL;
}

static void release_kvref(const void *data, size_t len, void *arg)
{
    (void)data, (void)len;
    cdb_kvref_release(arg);
}

/*
 * Answers 200 with the held bytes, by reference: "{", the cached part, and
 * the tail with this request's execution time. The held bytes go to the
 * request (which gives them back once they are written).
 */
static void answer_hit(loop_admission *a)
{
    char tail[CDB_QUERY_TAIL_MAX];
    if (!cdb__data_query_probe_tail(&a->probe, tail, sizeof tail)) {
        answer_drop(a);
        cdb_request_failf(a->r, CDB_ERR_INTERNAL_ERROR, "Internal error");
        return;
    }
    if (a->answer_ref)
        cdb_request_reply_ref(a->r, 200, "{", a->answer, a->answer_len, release_kvref, a->answer_ref, tail);
    else
        cdb_request_reply_ref(a->r, 200, "{", a->answer, a->answer_len, cdb_body_release_free, a->answer_reply, tail);
    a->answer_ref = NULL;
    a->answer_reply = NULL;
    a->answer = NULL;
}

/* The admission record lives in the request's arena: nothing to free but what it holds. */
static void admission_free(loop_admission *a)
{
    if (a->probed) {
        if (a->key_in_arena)
            a->probe.entry_key = NULL;
        cdb__data_query_probe_destroy(&a->probe);
    }
    answer_drop(a);
}

/* Every reply is in: answer on the loop or hand the request to a worker. */
static void decide(loop_admission *a)
{
    cdb_request *r = a->r;
    cdb__metric outcome = CDB_M_LOOP_ANSWERED;

    if (a->liveness == 0) {
        memset(&r->principal, 0, sizeof r->principal);   /* role ANON: nobody */
        cdb_request_header(r, "WWW-Authenticate", "Bearer");
        cdb_request_failf(r, CDB_ERR_TOKEN_REVOKED, "Session has ended");
        goto answer;
    }
    r->session_checked = a->liveness == 1;
    /* a restore began elsewhere: the worker answers 503 MAINTENANCE */
    if (a->maintenance)
        answer_drop(a);
    /*
     * A quota refusal charges nothing, so with the session unknown the
     * worker checks both again (a refused caller is told after its
     * session, as the blocking path orders them).
     */
    if (a->quota_known && (a->rl.allowed || r->session_checked) && !cdb__admit_quota_apply(r, &a->rl))
        goto answer;
    /*
     * X-Connection-ID: the lease first, as routes_data.c orders it (refused: 404 or 409 here), then a
     * hit, or the read on the lease's connection (loop_lease.c); it never takes the branches below.
     */
    bool lease = cdb_request_field(r, "X-Connection-ID") != NULL;
    if (lease && cdb__loop_lease_wanted(r) && !a->maintenance && r->session_checked &&
        (r->quota_checked || a->rate <= 0)) {
        cdb__loop_lease *l = NULL;
        int taken = cdb__loop_lease_take(r, &l);
        if (taken == 0)
            goto answer;
        if (taken > 0 && a->answer) {
            answer_hit(a);
            cdb__loop_lease_give_back(l);
            goto answer;
        }
        bool generation_read = a->generation_read;
        int64_t generation = a->generation;
        admission_free(a);
        if (taken > 0 && cdb__loop_lease_query(l, generation_read, generation)) {
            cdb__metrics_inc(CDB_M_LOOP_LEASE);
            return;
        }
        cdb__loop_lease_give_back(l);   /* checked in before the worker checks it out again */
        cdb__metrics_inc(CDB_M_LOOP_HANDED_OFF);
        cdb_server_hand_off(r);
        return;
    }
    if (a->answer && !lease && r->session_checked && (r->quota_checked || a->rate <= 0)) {
        answer_hit(a);
        goto answer;
    }
    /* a miss (or caching off): the loop's own PostgreSQL connections run it (loop_query.c) */
    if (!a->answer && !lease && !a->maintenance && r->session_checked && (r->quota_checked || a->rate <= 0) &&
        r->loop->apg) {
        bool generation_read = a->generation_read;
        int64_t generation = a->generation;
        admission_free(a);
        if (cdb__loop_query(r, generation_read, generation)) {
            cdb__metrics_inc(CDB_M_LOOP_QUERY);
            return;
        }
        /* an unkeyed transaction: the same connections run it (loop_tx.c) */
        if (cdb__loop_tx(r)) {
            cdb__metrics_inc(CDB_M_LOOP_TRANSACTION);
            return;
        }
        cdb__metrics_inc(CDB_M_LOOP_HANDED_OFF);
        cdb_server_hand_off(r);
        return;
    }
    outcome = CDB_M_LOOP_HANDED_OFF;
    cdb__metrics_inc(outcome);
    admission_free(a);
    cdb_server_hand_off(r);
    return;

answer:
    cdb__metrics_inc(outcome);
    admission_free(a);
    cdb_server_finish(r);
}

static void reply_done(loop_admission *a)
{
    if (--a->pending == 0)
        decide(a);
}

static void on_liveness(redisReply *reply, void *arg)
{
    loop_admission *a = arg;
    if (reply && reply->type == REDIS_REPLY_STRING)
        a->liveness = cdb__session_liveness_of(&a->r->principal, reply->str);
    reply_done(a);
}

/* PTTL of the session's copy, after its GET: how long the L1 may keep "alive". */
static void on_session_ttl(redisReply *reply, void *arg)
{
    loop_admission *a = arg;
    if (a->liveness == 1 && reply && reply->type == REDIS_REPLY_INTEGER)
        cdb_l1_session_store(a->r->loop->l1, a->session_key, a->r->principal.session_id, a->r->principal.user_id,
                             &a->session_ticket, reply->integer, cdb_mono_ms());
    reply_done(a);
}

static void on_maintenance(redisReply *reply, void *arg)
{
    loop_admission *a = arg;
    if (reply && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_NIL)) {
        cdb_service_maintenance_polled(a->r->svc, reply->type == REDIS_REPLY_STRING ? reply->str : NULL);
        a->maintenance = reply->type == REDIS_REPLY_STRING;
    }
    reply_done(a);
}

static void on_quota(redisReply *reply, void *arg)
{
    loop_admission *a = arg;
    a->quota_known = cdb_ratelimit_gcra_reply(cdb_service_ratelimit(a->r->svc), reply, a->rate, &a->rl);
    reply_done(a);
}

static void on_probe(redisReply *reply, void *arg)
{
    loop_admission *a = arg;
    cdb_l1 *l1 = a->r->loop->l1;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        const redisReply *gen = reply->element[0];
        redisReply *entry = reply->element[1];
        const char *value;
        size_t len;
        int64_t generation, now = cdb_mono_ms();
        bool entry_ok = entry->type == REDIS_REPLY_STRING;
        bool hit = cdb_qcache_probe_hit(gen->type == REDIS_REPLY_STRING ? gen->str : NULL,
                                        entry_ok ? entry->str : NULL, entry_ok ? entry->len : 0, &generation,
                                        &value, &len);
        if (gen->type == REDIS_REPLY_STRING || gen->type == REDIS_REPLY_NIL) {
            a->generation_read = true;
            a->generation = generation;
            if (a->table_ticket_ok) {
                cdb_l1_generation_store(l1, a->probe.gen_key, a->probe.table, &a->table_ticket, generation, now);
                if (hit)
                    cdb_l1_answer_store(l1, a->probe.entry_key, generation, value, len, now);
            }
            /*
             * The reply's string is taken, not copied: hiredis 0.14 made it
             * with malloc, and its freeReplyObject (run after this callback)
             * frees str with free, a no-op once it is NULL. value points
             * into it (past the entry's generation).
             */
            if (hit) {
                answer_drop(a);
                a->answer_reply = entry->str;
                entry->str = NULL;
                a->answer = value;
                a->answer_len = len;
            }
        }
    }
    reply_done(a);
}

/*
 * The loop's memo of what a request body resolves to (the table and the two
 * Redis keys of data/query_probe.h), keyed by the caller's identity and the
 * body's exact bytes, so a repeat skips parsing the JSON, the catalog and
 * the cache key's hashing. Kept while the catalog snapshot it was resolved
 * against is current, and at most MEMO_TTL_MS (below the encrypted columns'
 * CDB_COLRING_TTL_MS, the other thing a resolution reads).
 */
enum { MEMO_TTL_MS = 1000 };

typedef struct memo_value {
    uint64_t catalog_version;
    char table[sizeof ((cdb__query_probe *)0)->table];
    char gen_key[sizeof ((cdb__query_probe *)0)->gen_key];
    char entry_key[];              /* NUL-terminated */
} memo_value;

bool cdb__loop_memo_key(const cdb_request *r, bool per_user, char *key, size_t len)
{
    if (r->raw_body_len > CDB_LOOP_MEMO_BODY_MAX || memchr(r->raw_body, '\0', r->raw_body_len))
        return false;
    /* "<role>:<user id>\n" or "P<role>\n": the two kinds never share a key */
    if (per_user)
        snprintf(key, len, "%d:%s\n%.*s", (int)r->principal.role, r->principal.user_id, (int)r->raw_body_len,
                 r->raw_body);
    else
        snprintf(key, len, "P%d\n%.*s", (int)r->principal.role, (int)r->raw_body_len, r->raw_body);
    return true;
}

static bool memo_lookup(loop_admission *a, const char *key)
{
    size_t len;
    int64_t now = cdb_mono_ms();
    const memo_value *v = (const memo_value *)cdb_kvtable_get(a->r->loop->memo, key, &len, NULL, now);
    if (!v || v->catalog_version != cdb_service_catalog_version(a->r->svc) ||
        !(a->probe.entry_key = cdb_arena_strdup(a->r->arena, v->entry_key)))
        return false;
    a->key_in_arena = true;
    memcpy(a->probe.table, v->table, sizeof a->probe.table);
    memcpy(a->probe.gen_key, v->gen_key, sizeof a->probe.gen_key);
    a->probe.start_us = a->r->start_us;
    return true;
}

static void memo_store(loop_admission *a, const char *key, uint64_t catalog_version)
{
    size_t elen = strlen(a->probe.entry_key) + 1;
    memo_value *v = malloc(sizeof *v + elen);
    if (!v)
        return;
    v->catalog_version = catalog_version;
    memcpy(v->table, a->probe.table, sizeof v->table);
    memcpy(v->gen_key, a->probe.gen_key, sizeof v->gen_key);
    memcpy(v->entry_key, a->probe.entry_key, elen);
    int64_t now = cdb_mono_ms();
    cdb_kvtable_put(a->r->loop->memo, key, (const char *)v, sizeof *v + elen, now + MEMO_TTL_MS, now);
    free(v);
}

/* Queues one command of a's pipeline; false when it could not be queued. */
static bool pipeline(loop_admission *a, cdb_aredis_cb cb, int argc, const char **argv)
{
    if (!cdb_aredis_send(a->r->loop->aredis, cb, a, argc, argv, NULL))
        return false;
    a->pending++;
    return true;
}

/*
 * The body is parsed here (the cache key is built from it); a body that
 * does not parse is left for the worker, which reports it after admission.
 * The first-level cache answers when it knows the table's generation and
 * holds the answer at it; otherwise Redis is asked for both.
 */
static void probe_cache(loop_admission *a)
{
    cdb_request *r = a->r;
    cdb_l1 *l1 = r->loop->l1;
    /* a leased connection's request proves the lease before a hit is answered (decide, loop_lease.c);
       without the loops running PostgreSQL it is the worker's alone */
    if (r->route->mode != CDB_RUN_CACHED || r->raw_body_len == 0 ||
        (cdb_request_field(r, "X-Connection-ID") && !cdb__loop_lease_wanted(r)))
        return;
    /* caching off: nothing to look up (a miss is planned once, by loop_query.c) */
    if (!cdb_qcache_enabled(cdb_service_qcache(r->svc)))
        return;
    char key[CDB_LOOP_MEMO_KEY_MAX];
    bool memo = r->loop->memo && cdb__loop_memo_key(r, true, key, sizeof key);
    if (!memo || !memo_lookup(a, key)) {
        /* read before resolving: a swap meanwhile only makes the memo miss */
        uint64_t catalog_version = cdb_service_catalog_version(r->svc);
        if (!r->body && !(r->body = json_loadb(r->raw_body, r->raw_body_len, JSON_REJECT_DUPLICATES, NULL)))
            return;
        if (!cdb__data_query_probe(r->svc, &r->principal, r->body, &a->probe))
            return;
        if (memo)
            memo_store(a, key, catalog_version);
    }
    a->probed = true;
    int64_t generation, now = cdb_mono_ms();
    size_t len;
    const char *value;
    cdb_kvref *ref;
    if (l1 && cdb_l1_generation(l1, a->probe.gen_key, a->probe.table, &generation, now) &&
        (value = cdb_l1_answer_ref(l1, a->probe.entry_key, generation, &len, now, &ref))) {
        cdb__metrics_inc(CDB_M_L1_ANSWER_HITS);
        a->answer = value;
        a->answer_len = len;
        a->answer_ref = ref;       /* the entry may be replaced or evicted before the bytes are written */
        return;
    }
    /* the ticket comes before the read: an invalidation after it voids what is read */
    a->table_ticket_ok = l1 && cdb_inval_ticket_table(cdb_service_inval(r->svc), a->probe.table,
                                                      &a->table_ticket);
    const char *argv[] = {"MGET", a->probe.gen_key, a->probe.entry_key};
    pipeline(a, on_probe, 3, argv);
}

/* The session: from the first-level cache, else its copy in Redis (with PTTL for the L1). */
static bool check_session(loop_admission *a)
{
    cdb_request *r = a->r;
    cdb_l1 *l1 = r->loop->l1;
    cdb__session_liveness_key(&r->principal, a->session_key, sizeof a->session_key);
    if (l1 && cdb_l1_session_alive(l1, a->session_key, r->principal.session_id, r->principal.user_id,
                                   cdb_mono_ms())) {
        cdb__metrics_inc(CDB_M_L1_SESSION_HITS);
        a->liveness = 1;
        return true;
    }
    /* the ticket comes before the read: a revocation after it voids what is read */
    bool ticket = l1 && cdb_inval_ticket_session(cdb_service_inval(r->svc), r->principal.session_id,
                                                 &a->session_ticket);
    const char *get[] = {"GET", a->session_key}, *pttl[] = {"PTTL", a->session_key};
    if (!pipeline(a, on_liveness, 2, get))
        return false;
    if (ticket)
        pipeline(a, on_session_ttl, 2, pttl);
    return true;
}

/* What the loop can take on: an authenticated caller of a worker route, with Redis. */
static bool eligible(cdb_request *r)
{
    const cdb_route *route = r->route;
    if ((route->mode != CDB_RUN_WORKER && route->mode != CDB_RUN_CACHED) || route->auth < CDB_AUTH_USER ||
        !r->bearer || !r->loop->aredis)
        return false;
    /* a refused admin call is audited: the worker does that */
    return route->auth != CDB_AUTH_ADMIN || r->principal.role == CDB_ROLE_ADMIN;
}

/*
 * Whether what Redis says may be trusted now: its loop connection ready,
 * and no recovery pending. Redis came back and the outbox is not applied
 * yet: its copies are not trusted. The blocking pool notices a recovery on
 * its next command, so until it is up again the loop does not trust what
 * its own connection reads either (every revocation or write made while
 * Redis was away failed on that pool and left it down).
 */
static bool redis_trusted(cdb_request *r)
{
    return cdb_redis_up(cdb_service_redis(r->svc)) && !cdb_qcache_resync_pending(cdb_service_qcache(r->svc)) &&
           cdb_aredis_ready(r->loop->aredis);
}

bool cdb__loop_admit(cdb_request *r)
{
    if (!eligible(r))
        return false;
    loop_admission *a = NULL;
    if (!redis_trusted(r) || !(a = cdb_arena_calloc(r->arena, sizeof *a)))
        goto fallback;
    a->r = r;
    a->liveness = -1;
    a->pending = 1;                /* held until every command is queued */
    /*
     * A restore running (503 MAINTENANCE) is the worker's business; a due poll of its flag rides along.
     * A due poll is sent even while the flag is on: poll_due has claimed it, so the worker will not
     * poll for CDB_MAINTENANCE_POLL_MS, and dropping it here kept a flag another instance had
     * cleared on for as long as data requests kept coming.
     */
    int64_t since;
    bool poll = cdb_service_maintenance_poll_due(r->svc, &since, a->maintenance_key, sizeof a->maintenance_key);
    if (since && !poll)
        return false;              /* a stays in the arena, holding nothing */
    /* on until the poll's reply says otherwise: a failed reply answers nothing from the cache */
    a->maintenance = since != 0;
    if (!check_session(a))
        goto fallback;
    if (poll) {
        const char *get[] = {"GET", a->maintenance_key};
        pipeline(a, on_maintenance, 2, get);
    }
    if ((a->rate = cdb__admit_quota_rate(r)) > 0) {
        cdb__admit_quota_key(r, a->quota_key, sizeof a->quota_key);
        /* not sent (the script not loaded yet): the worker charges the quota */
        if (cdb_ratelimit_gcra_command(cdb_service_ratelimit(r->svc), a->quota_key, a->rate, a->rate,
                                       &a->quota_cmd))
            pipeline(a, on_quota, a->quota_cmd.argc, a->quota_cmd.argv);
    }
    probe_cache(a);
    /* replies come on later turns of the loop; with none asked, this decides now */
    reply_done(a);
    return true;

fallback:
    if (a && a->pending > 1) {
        /* a command is out: its reply decides (the worker admits it the blocking way) */
        reply_done(a);
        return true;
    }
    if (a)
        admission_free(a);
    cdb__metrics_inc(CDB_M_LOOP_FALLBACK);
    return false;
}
