/*
 * metrics.c - the process's Prometheus registry and its text exposition
 * (format 0.0.4). metrics.h says what is kept here and what collectors
 * read at scrape time.
 *
 * Hot path: a thread takes a shard on its first recording (round robin
 * over NSHARDS) and keeps it; each add is a relaxed atomic on that shard's
 * cache lines, uncontended unless more threads record than there are
 * shards (then two threads share a shard and the atomics keep it right).
 * The arrays have fixed label sets (route index x method x status), so a
 * request on a random path never creates a series: it is "unmatched".
 *
 * A scrape sums the shards without stopping the writers: each number is
 * read atomically, so a scrape may be a few requests behind, never torn.
 */
#include "core/metrics.h"
#include "coredb/metrics.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "coredb/version.h"

#ifndef CDB_COMMIT
#define CDB_COMMIT "unknown"
#endif

enum { NSHARDS = 16 };

/* Buckets of the duration histograms, 0.5 ms to 10 s (plus +Inf). */
static const double bucket_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                  0.1,    0.25,  0.5,    1,     2.5,  5,    10};
static const char *const bucket_le[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                        "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",    "10"};
#define NBUCKETS ((int)(sizeof bucket_s / sizeof bucket_s[0]))
/* the same bounds in µs, what the hot path compares */
static const int64_t bucket_us[] = {500,    1000,   2500,    5000,    10000,   25000,   50000,
                                    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
_Static_assert(sizeof bucket_us / sizeof bucket_us[0] == sizeof bucket_s / sizeof bucket_s[0],
               "one bound per bucket");

static const char *const method_names[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "other"};
#define NMETHODS ((int)(sizeof method_names / sizeof method_names[0]))

/* The statuses coredb answers; anything else counts as its class ("2xx"...). */
static const int status_codes[] = {200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 406, 408, 409,
                                   413, 415, 422, 429, 431, 500, 501, 503, 504};
#define NSTATUS_CODES ((int)(sizeof status_codes / sizeof status_codes[0]))
#define NSTATUS (NSTATUS_CODES + 5)  /* + 1xx..5xx classes for the rest */

#define NCODES 64                    /* -cdb_err; 0 = a code past the table */

typedef struct hist {
    _Atomic uint64_t bucket[NBUCKETS + 1];  /* not cumulative; last = over 10 s */
    _Atomic uint64_t sum_us;
} hist;

typedef struct shard {
    _Atomic uint64_t counters[CDB_M__COUNT];
    _Atomic uint64_t http[CDB_METRICS_MAX_ROUTES][NMETHODS][NSTATUS];
    hist duration[CDB_METRICS_MAX_ROUTES];
    _Atomic uint64_t errors[CDB_METRICS_MAX_ROUTES][NCODES];
    hist pool_wait;
} __attribute__((aligned(64))) shard;

static shard shards[NSHARDS];
static atomic_uint next_shard;
static _Thread_local shard *my_shard;

/* Families of the plain counters: name, help, label text, in enum order. */
static const struct {
    const char *family;
    const char *help;
    const char *labels;
} counter_defs[CDB_M__COUNT] = {
    [CDB_M_CACHE_HITS] = {"coredb_cache_hits_total", "Query cache lookups answered from the cache.", ""},
    [CDB_M_CACHE_MISSES] = {"coredb_cache_misses_total", "Query cache lookups that went to PostgreSQL.", ""},
    [CDB_M_CACHE_STORES] = {"coredb_cache_stores_total", "Answers stored in the query cache.", ""},
    [CDB_M_CACHE_INVALIDATIONS] = {"coredb_cache_invalidations_total",
                                   "Table generations bumped after writes (cached reads invalidated).", ""},
    [CDB_M_REDIS_COMMAND_ERRORS] = {"coredb_redis_command_errors_total",
                                    "Redis commands that failed (connection or server error).", ""},
    [CDB_M_LOGIN_SUCCESS] = {"coredb_session_logins_total", "Login attempts by outcome.", "outcome=\"success\""},
    [CDB_M_LOGIN_FAILURE] = {"coredb_session_logins_total", NULL, "outcome=\"failure\""},
    [CDB_M_LOGIN_LOCKED] = {"coredb_session_logins_total", NULL, "outcome=\"locked\""},
    [CDB_M_LOGIN_ERROR] = {"coredb_session_logins_total", NULL, "outcome=\"error\""},
    [CDB_M_SESSION_REFRESHES] = {"coredb_session_refreshes_total", "Refresh tokens rotated.", ""},
    [CDB_M_SESSION_REUSE_DETECTIONS] = {"coredb_session_reuse_detections_total",
                                        "Refresh tokens presented again after rotation (the session is revoked).", ""},
    [CDB_M_SESSION_REVOCATIONS] = {"coredb_session_revocations_total",
                                   "Sessions ended by logout, deletion, revocation or reuse detection.", ""},
    [CDB_M_RATELIMIT_ANON] = {"coredb_ratelimit_refusals_total", "Requests refused by a quota, by the caller's role.",
                              "role=\"anonymous\""},
    [CDB_M_RATELIMIT_USER] = {"coredb_ratelimit_refusals_total", NULL, "role=\"user\""},
    [CDB_M_RATELIMIT_PREMIUM] = {"coredb_ratelimit_refusals_total", NULL, "role=\"premium\""},
    [CDB_M_RATELIMIT_ADMIN] = {"coredb_ratelimit_refusals_total", NULL, "role=\"admin\""},
    [CDB_M_OUTBOX_APPLIED] = {"coredb_outbox_applied_total", "Redis outbox operations applied.", ""},
    [CDB_M_OUTBOX_RETRIES] = {"coredb_outbox_retries_total",
                              "Redis outbox operations left for a later flush after a failure.", ""},
    [CDB_M_LEASE_ACQUIRES] = {"coredb_lease_acquires_total", "Connection leases acquired.", ""},
    [CDB_M_LEASE_RELEASES] = {"coredb_lease_releases_total", "Connection leases released by their holder or an admin.",
                              ""},
    [CDB_M_LEASE_EXPIRIES] = {"coredb_lease_expiries_total",
                              "Connection leases ended by the reaper (expired, or their instance gone).", ""},
    [CDB_M_ENCRYPTION_FAILURES] = {"coredb_encryption_failures_total",
                                   "Encrypted column values that did not decrypt (altered, or moved to another row).",
                                   ""},
    [CDB_M_ENCRYPTION_ROWS] = {"coredb_encryption_rows_total",
                               "Rows encrypted or re-encrypted by column encryption setup and rotation jobs.", ""},
    [CDB_M_LOG_DROPPED] = {"coredb_log_lines_dropped_total",
                           "Log lines dropped because their destination (stderr) did not take them in time.", ""},
    [CDB_M_LOOP_ANSWERED] = {"coredb_http_loop_admissions_total",
                             "Requests whose admission (session, quota, cache lookup) ran on an event loop with "
                             "asynchronous Redis, by what followed: answered there, run on a worker, or admitted "
                             "on a worker because the loop's Redis connection was not ready.",
                             "outcome=\"answered\""},
    [CDB_M_LOOP_HANDED_OFF] = {"coredb_http_loop_admissions_total", NULL, "outcome=\"worker\""},
    [CDB_M_LOOP_FALLBACK] = {"coredb_http_loop_admissions_total", NULL, "outcome=\"fallback\""},
    [CDB_M_L1_ANSWER_HITS] = {"coredb_cache_l1_hits_total",
                              "Lookups answered by an event loop's first-level cache without Redis, by kind.",
                              "kind=\"answer\""},
    [CDB_M_L1_SESSION_HITS] = {"coredb_cache_l1_hits_total", NULL, "kind=\"session\""},
    [CDB_M_CATALOG_RELOAD_NOTIFIED] = {"coredb_catalog_reloads_total",
                                       "Catalog (tables, columns, grants) loads, by reason: notified (NOTIFY "
                                       "coredb_catalog, at most one per 100 ms), periodic, connected, requested.",
                                       "reason=\"notified\""},
    [CDB_M_CATALOG_RELOAD_PERIODIC] = {"coredb_catalog_reloads_total", NULL, "reason=\"periodic\""},
    [CDB_M_CATALOG_RELOAD_CONNECTED] = {"coredb_catalog_reloads_total", NULL, "reason=\"connected\""},
    [CDB_M_CATALOG_RELOAD_REQUESTED] = {"coredb_catalog_reloads_total", NULL, "reason=\"requested\""},
    [CDB_M_LOOP_QUERY] = {"coredb_http_loop_admissions_total", NULL, "outcome=\"query\""},
    [CDB_M_LOOP_TRANSACTION] = {"coredb_http_loop_admissions_total", NULL, "outcome=\"transaction\""},
    [CDB_M_LOOP_QUERY_ANSWERED] = {"coredb_http_loop_queries_total",
                                   "Data-API misses an event loop ran on its own PostgreSQL connections, by "
                                   "outcome: answered there, handed to a worker after a failure, or 504 at the "
                                   "deadline.",
                                   "outcome=\"answered\""},
    [CDB_M_LOOP_QUERY_HANDED_OFF] = {"coredb_http_loop_queries_total", NULL, "outcome=\"handed_off\""},
    [CDB_M_LOOP_QUERY_TIMEOUT] = {"coredb_http_loop_queries_total", NULL, "outcome=\"timeout\""},
    [CDB_M_LOOP_PLAN_MEMO_HITS] = {"coredb_http_loop_plan_memo_hits_total",
                                   "Plans (statements, params) of data-API misses an event loop took from its "
                                   "memo of request bodies, without parsing or planning.",
                                   ""},
    [CDB_M_LOOP_LEASE] = {"coredb_http_loop_admissions_total", NULL, "outcome=\"lease\""},
    [CDB_M_LOOP_LEASE_ANSWERED] = {"coredb_http_loop_lease_queries_total",
                                   "Data-API reads with X-Connection-ID an event loop ran on the lease's own "
                                   "connection, by outcome: answered there, handed to a worker after a failure, "
                                   "504 at the deadline, or the lease refused there (404, 409).",
                                   "outcome=\"answered\""},
    [CDB_M_LOOP_LEASE_HANDED_OFF] = {"coredb_http_loop_lease_queries_total", NULL, "outcome=\"handed_off\""},
    [CDB_M_LOOP_LEASE_TIMEOUT] = {"coredb_http_loop_lease_queries_total", NULL, "outcome=\"timeout\""},
    [CDB_M_LOOP_LEASE_REFUSED] = {"coredb_http_loop_lease_queries_total", NULL, "outcome=\"refused\""},
    [CDB_M_LOOP_TX_COMMITTED] = {"coredb_http_loop_transactions_total",
                                 "Data-API transactions an event loop sent on its own PostgreSQL connections, by "
                                 "outcome: committed there, refused by the server (a worker ran it again and "
                                 "reported the error), or 503 TRANSACTION_OUTCOME_UNKNOWN.",
                                 "outcome=\"committed\""},
    [CDB_M_LOOP_TX_REFUSED] = {"coredb_http_loop_transactions_total", NULL, "outcome=\"refused\""},
    [CDB_M_LOOP_TX_UNKNOWN] = {"coredb_http_loop_transactions_total", NULL, "outcome=\"unknown\""},
    [CDB_M_LOOP_TX_FINISH_LOOP] = {"coredb_http_loop_transaction_finishes_total",
                                   "Transactions committed on an event loop's connection, by where their Redis "
                                   "outbox was applied and their answer built: on the loop, or on a worker (the "
                                   "fallback: replicas, Redis Sentinel, no Redis, the loop's Redis or "
                                   "connections not free).",
                                   "where=\"loop\""},
    [CDB_M_LOOP_TX_FINISH_WORKER] = {"coredb_http_loop_transaction_finishes_total", NULL, "where=\"worker\""},
    [CDB_M_INVAL_RECEIVED] = {"coredb_cache_invalidation_messages_received_total",
                              "First-level cache invalidations received through Redis pub/sub.", ""},
    [CDB_M_INVAL_SUBSCRIPTION_LOSSES] = {"coredb_cache_invalidation_subscription_losses_total",
                                         "Invalidation subscriptions lost (the first-level cache was flushed).", ""},
    [CDB_M_INVAL_PUBLISH_FAILURES] = {"coredb_cache_invalidation_publish_failures_total",
                                      "Invalidations that could not be published to the other instances.", ""},
    [CDB_M_INVAL_ACK_TIMEOUTS] = {"coredb_cache_invalidation_ack_timeouts_total",
                                  "Invalidations published whose every acknowledgement did not come in time.", ""},
};

/* ---- state behind a mutex (rare events, registration) ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *route_names[CDB_METRICS_MAX_ROUTES] = {"unmatched"};
static int nroutes = 1;

static atomic_int inflight;

static _Atomic(char *) client_versions[CDB_METRICS_MAX_CLIENT_VERSIONS];
static _Atomic uint64_t client_version_counts[CDB_METRICS_MAX_CLIENT_VERSIONS + 1];  /* last: other */

enum { MAX_OPS = 32, OP_NAME_MAX = 48 };
static const char *const op_families[CDB_MOP__COUNT] = {"coredb_job", "coredb_backup", "coredb_migration"};
static const char *const op_what[CDB_MOP__COUNT] = {"background job runs", "backups", "migration runs"};
typedef struct op_stat {
    cdb__metrics_op_kind kind;
    char name[OP_NAME_MAX];
    uint64_t runs, failures, sum_us;
    int64_t last_success_s;        /* 0: never */
} op_stat;
static op_stat ops[MAX_OPS];
static int nops;

typedef struct recent_error {
    int64_t at_ms;
    char request_id[64];
    char method[8];
    int route;
    int status;
    cdb_err code;
} recent_error;
static recent_error recent[CDB_METRICS_RECENT_ERRORS];
static int recent_next, recent_count;

enum { MAX_COLLECTORS = 8 };
static struct {
    cdb__metrics_collector_fn fn;
    void *arg;
} collectors[MAX_COLLECTORS];


static inline shard *my(void)
{
    if (__builtin_expect(my_shard == NULL, 0))
        my_shard = &shards[atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % NSHARDS];
    return my_shard;
}

/* (unused helpers are the recording side's, compiled out with CDB_NO_METRICS) */
#define ADD(x, n) atomic_fetch_add_explicit(&(x), (n), memory_order_relaxed)
#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

__attribute__((unused)) static int method_index(const char *m)
{
    for (int i = 0; m && i < NMETHODS - 1; i++)
        if (strcmp(m, method_names[i]) == 0)
            return i;
    return NMETHODS - 1;
}

__attribute__((unused)) static int status_index(int status)
{
    for (int i = 0; i < NSTATUS_CODES; i++)
        if (status_codes[i] == status)
            return i;
    int cls = status / 100;
    return NSTATUS_CODES + (cls >= 1 && cls <= 5 ? cls - 1 : 4);
}

__attribute__((unused)) static void hist_observe(hist *h, int64_t us)
{
    if (us < 0)
        us = 0;
    int b = 0;
    while (b < NBUCKETS && us > bucket_us[b])
        b++;
    ADD(h->bucket[b], 1);
    ADD(h->sum_us, (uint64_t)us);
}

__attribute__((unused)) static int clamp_route(int route)
{
    return route >= 0 && route < CDB_METRICS_MAX_ROUTES ? route : 0;
}

#ifndef CDB_NO_METRICS
void cdb__metrics_inc(cdb__metric m)
{
    ADD(my()->counters[m], 1);
}

void cdb__metrics_add(cdb__metric m, uint64_t n)
{
    ADD(my()->counters[m], n);
}

void cdb__metrics_http(int route, const char *method, int status, int64_t elapsed_us)
{
    shard *s = my();
    route = clamp_route(route);
    ADD(s->http[route][method_index(method)][status_index(status)], 1);
    hist_observe(&s->duration[route], elapsed_us);
}

void cdb__metrics_http_error(int route, const char *method, int status, cdb_err code, const char *request_id)
{
    route = clamp_route(route);
    int c = code < 0 && -code < NCODES ? -code : 0;
    ADD(my()->errors[route][c], 1);
    /* The ring is a sample of the last errors for a human; the counts above
     * are exact. When another thread holds the lock this one is left out
     * rather than wait: an error flood must not serialize the loops. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (pthread_mutex_trylock(&lock) != 0)
        return;
    recent_error *e = &recent[recent_next];
    e->at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(e->request_id, sizeof e->request_id, "%s", request_id ? request_id : "");
    snprintf(e->method, sizeof e->method, "%s", method_names[method_index(method)]);
    e->route = route;
    e->status = status;
    e->code = code;
    recent_next = (recent_next + 1) % CDB_METRICS_RECENT_ERRORS;
    if (recent_count < CDB_METRICS_RECENT_ERRORS)
        recent_count++;
    pthread_mutex_unlock(&lock);
}

/*
 * A version label must not carry an id, an email or a token: only short
 * values of [0-9A-Za-z._+/-] are kept (no '@'; under 24 characters, too
 * few for a token or a UUID, even without its dashes); the rest is "other".
 * '/' is for the name/version form the clients send (coredb-py/1.0.0).
 */
static bool version_ok(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++) {
        char c = v[n];
        if (n >= 24 || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         c == '.' || c == '_' || c == '+' || c == '-' || c == '/'))
            return false;
    }
    return n > 0;
}

void cdb__metrics_client_version(const char *value)
{
    int slot = CDB_METRICS_MAX_CLIENT_VERSIONS;  /* other */
    if (value && version_ok(value)) {
        for (int i = 0; i < CDB_METRICS_MAX_CLIENT_VERSIONS; i++) {
            char *have = atomic_load_explicit(&client_versions[i], memory_order_acquire);
            if (!have) {
                /* claim the free slot; another thread may claim it first with its own value */
                char *mine = strdup(value);
                if (!mine)
                    break;
                char *expected = NULL;
                if (atomic_compare_exchange_strong(&client_versions[i], &expected, mine)) {
                    slot = i;
                    break;
                }
                free(mine);
                have = expected;
            }
            if (strcmp(have, value) == 0) {
                slot = i;
                break;
            }
        }
    }
    ADD(client_version_counts[slot], 1);
}

void cdb__metrics_pool_wait(int64_t waited_us)
{
    hist_observe(&my()->pool_wait, waited_us);
}

void cdb__metrics_op(cdb__metrics_op_kind kind, const char *name, bool ok, int64_t elapsed_us)
{
    if (kind < 0 || kind >= CDB_MOP__COUNT)
        return;
    if (kind != CDB_MOP_JOB || !name)
        name = "";
    pthread_mutex_lock(&lock);
    op_stat *o = NULL;
    for (int i = 0; i < nops && !o; i++)
        if (ops[i].kind == kind && strcmp(ops[i].name, name) == 0)
            o = &ops[i];
    if (!o && nops < MAX_OPS) {
        o = &ops[nops++];
        o->kind = kind;
        snprintf(o->name, sizeof o->name, "%s", name);
    }
    if (o) {
        o->runs++;
        o->failures += !ok;
        o->sum_us += elapsed_us > 0 ? (uint64_t)elapsed_us : 0;
        if (ok)
            o->last_success_s = (int64_t)time(NULL);
    }
    pthread_mutex_unlock(&lock);
}
#endif

int cdb__metrics_route_index(const char *pattern)
{
    if (!pattern)
        return 0;
    int found = 0;
    pthread_mutex_lock(&lock);
    for (int i = 1; i < nroutes && !found; i++)
        if (strcmp(route_names[i], pattern) == 0)
            found = i;
    if (!found && nroutes < CDB_METRICS_MAX_ROUTES) {
        found = nroutes;
        route_names[nroutes++] = pattern;
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void cdb__metrics_inflight_add(int delta)
{
    atomic_fetch_add_explicit(&inflight, delta, memory_order_relaxed);
}

int cdb__metrics_add_collector(cdb__metrics_collector_fn fn, void *arg)
{
    int rc = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_COLLECTORS; i++)
        if (collectors[i].fn == fn && collectors[i].arg == arg) {
            rc = 0;
            goto out;
        }
    for (int i = 0; i < MAX_COLLECTORS; i++)
        if (!collectors[i].fn) {
            collectors[i].fn = fn;
            collectors[i].arg = arg;
            rc = 0;
            goto out;
        }
out:
    pthread_mutex_unlock(&lock);
    return rc;
}

void cdb__metrics_remove_collector(cdb__metrics_collector_fn fn, void *arg)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_COLLECTORS; i++)
        if (collectors[i].fn == fn && collectors[i].arg == arg)
            collectors[i].fn = NULL, collectors[i].arg = NULL;
    pthread_mutex_unlock(&lock);
}

/* ---- text output ---- */

struct cdb__metrics_out {
    char *buf;
    size_t len, cap;
    bool oom;
};

static void outf(cdb__metrics_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(cdb__metrics_out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->oom = true;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
}

void cdb__metrics_family(cdb__metrics_out *out, const char *name, const char *type, const char *help)
{
    outf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cdb__metrics_sample(cdb__metrics_out *out, const char *name, const char *labels, double value)
{
    if (labels && *labels)
        outf(out, "%s{%s} %.17g\n", name, labels, value);
    else
        outf(out, "%s %.17g\n", name, value);
}

void cdb__metrics_escape(const char *value, char *buf, size_t len)
{
    size_t j = 0;
    for (const char *p = value ? value : ""; *p && j + 2 < len; p++) {
        if (*p == '\\' || *p == '"' || *p == '\n') {
            buf[j++] = '\\';
            buf[j++] = *p == '\n' ? 'n' : *p;
        } else {
            buf[j++] = *p;
        }
    }
    if (len)
        buf[j] = '\0';
}

/* ---- summing the shards ---- */

static uint64_t sum_counter(cdb__metric m)
{
    uint64_t n = 0;
    for (int s = 0; s < NSHARDS; s++)
        n += LOAD(shards[s].counters[m]);
    return n;
}

/* A histogram summed over the shards. */
typedef struct hist_sum {
    uint64_t bucket[NBUCKETS + 1];
    uint64_t count, sum_us;
} hist_sum;

/* of: the histogram in shards[0]; the same one of every shard is at the same offset */
static void sum_hist(hist *of, hist_sum *h)
{
    size_t off = (size_t)((char *)of - (char *)&shards[0]);
    memset(h, 0, sizeof *h);
    for (int s = 0; s < NSHARDS; s++) {
        hist *x = (hist *)((char *)&shards[s] + off);
        for (int b = 0; b <= NBUCKETS; b++)
            h->bucket[b] += LOAD(x->bucket[b]);
        h->sum_us += LOAD(x->sum_us);
    }
    for (int b = 0; b <= NBUCKETS; b++)
        h->count += h->bucket[b];
}

static void write_hist(cdb__metrics_out *o, const char *name, const char *labels, const hist_sum *h)
{
    const char *sep = labels && *labels ? "," : "";
    uint64_t cum = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        cum += h->bucket[b];
        outf(o, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels ? labels : "", sep, bucket_le[b],
             (unsigned long long)cum);
    }
    outf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels ? labels : "", sep, (unsigned long long)h->count);
    if (labels && *labels) {
        outf(o, "%s_sum{%s} %.6f\n", name, labels, (double)h->sum_us / 1e6);
        outf(o, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        outf(o, "%s_sum %.6f\n", name, (double)h->sum_us / 1e6);
        outf(o, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

static int snapshot_routes(const char **names)
{
    pthread_mutex_lock(&lock);
    int n = nroutes;
    memcpy(names, route_names, sizeof route_names);
    pthread_mutex_unlock(&lock);
    return n;
}

static void render_http(cdb__metrics_out *o)
{
    const char *names[CDB_METRICS_MAX_ROUTES];
    int n = snapshot_routes(names);
    char route[160], labels[256];

    cdb__metrics_family(o, "coredb_http_requests_total", "counter",
                        "HTTP requests answered, by method, route template and status.");
    for (int r = 0; r < n; r++) {
        cdb__metrics_escape(names[r], route, sizeof route);
        for (int m = 0; m < NMETHODS; m++)
            for (int st = 0; st < NSTATUS; st++) {
                uint64_t c = 0;
                for (int s = 0; s < NSHARDS; s++)
                    c += LOAD(shards[s].http[r][m][st]);
                if (!c)
                    continue;
                char status[8];
                if (st < NSTATUS_CODES)
                    snprintf(status, sizeof status, "%d", status_codes[st]);
                else
                    snprintf(status, sizeof status, "%dxx", st - NSTATUS_CODES + 1);
                outf(o, "coredb_http_requests_total{method=\"%s\",route=\"%s\",status=\"%s\"} %llu\n",
                     method_names[m], route, status, (unsigned long long)c);
            }
    }

    cdb__metrics_family(o, "coredb_http_request_duration_seconds", "histogram",
                        "Time from reading a request to queueing its answer, by route template.");
    for (int r = 0; r < n; r++) {
        hist_sum h;
        sum_hist(&shards[0].duration[r], &h);
        if (!h.count)
            continue;
        cdb__metrics_escape(names[r], route, sizeof route);
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
        write_hist(o, "coredb_http_request_duration_seconds", labels, &h);
    }

    cdb__metrics_family(o, "coredb_http_requests_in_flight", "gauge", "HTTP requests being handled.");
    cdb__metrics_sample(o, "coredb_http_requests_in_flight", NULL,
                        atomic_load_explicit(&inflight, memory_order_relaxed));

    cdb__metrics_family(o, "coredb_client_requests_total", "counter",
                        "Requests by X-Client-Version (at most 100 values; the rest and invalid ones are \"other\").");
    for (int i = 0; i <= CDB_METRICS_MAX_CLIENT_VERSIONS; i++) {
        uint64_t c = LOAD(client_version_counts[i]);
        if (!c)
            continue;
        const char *v = i < CDB_METRICS_MAX_CLIENT_VERSIONS ? atomic_load(&client_versions[i]) : "other";
        outf(o, "coredb_client_requests_total{client_version=\"%s\"} %llu\n", v ? v : "other",
             (unsigned long long)c);
    }
}

static void render_counters(cdb__metrics_out *o)
{
    for (int m = 0; m < CDB_M__COUNT; m++) {
        if (counter_defs[m].help)
            cdb__metrics_family(o, counter_defs[m].family, "counter", counter_defs[m].help);
        cdb__metrics_sample(o, counter_defs[m].family, counter_defs[m].labels, (double)sum_counter(m));
    }
    hist_sum h;
    sum_hist(&shards[0].pool_wait, &h);
    cdb__metrics_family(o, "coredb_pool_acquire_wait_seconds", "histogram",
                        "Time threads waited for a pooled PostgreSQL connection.");
    write_hist(o, "coredb_pool_acquire_wait_seconds", NULL, &h);
}

static void render_ops(cdb__metrics_out *o)
{
    op_stat copy[MAX_OPS];
    pthread_mutex_lock(&lock);
    int n = nops;
    memcpy(copy, ops, sizeof copy);
    pthread_mutex_unlock(&lock);
    char name[96], labels[128];
    static const struct {
        const char *suffix, *type, *help;
    } parts[] = {
        {"runs_total", "counter", "Finished"},
        {"failures_total", "counter", "Failed"},
        {"duration_seconds", "summary", "Time taken by"},
        {"last_success_timestamp_seconds", "gauge", "Unix time of the last successful of the"},
    };
    for (int k = 0; k < CDB_MOP__COUNT; k++) {
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
            char help[128];
            snprintf(name, sizeof name, "%s_%s", op_families[k], parts[p].suffix);
            snprintf(help, sizeof help, "%s %s.", parts[p].help, op_what[k]);
            cdb__metrics_family(o, name, parts[p].type, help);
            bool any = false;
            for (int i = 0; i < n; i++) {
                if (copy[i].kind != (cdb__metrics_op_kind)k)
                    continue;
                any = true;
                char esc[OP_NAME_MAX * 2];
                cdb__metrics_escape(copy[i].name, esc, sizeof esc);
                if (k == CDB_MOP_JOB)
                    snprintf(labels, sizeof labels, "job_name=\"%s\"", esc);
                else
                    labels[0] = '\0';
                const char *sep = *labels ? "{" : "", *end = *labels ? "}" : "";
                switch (p) {
                case 0: outf(o, "%s%s%s%s %llu\n", name, sep, labels, end, (unsigned long long)copy[i].runs); break;
                case 1: outf(o, "%s%s%s%s %llu\n", name, sep, labels, end, (unsigned long long)copy[i].failures); break;
                case 2:
                    outf(o, "%s_sum%s%s%s %.6f\n", name, sep, labels, end, (double)copy[i].sum_us / 1e6);
                    outf(o, "%s_count%s%s%s %llu\n", name, sep, labels, end, (unsigned long long)copy[i].runs);
                    break;
                default:
                    outf(o, "%s%s%s%s %lld\n", name, sep, labels, end, (long long)copy[i].last_success_s);
                }
            }
            /* backups and migrations have one unlabelled series: show it from the start */
            if (!any && k != CDB_MOP_JOB) {
                if (p == 2)
                    outf(o, "%s_sum 0\n%s_count 0\n", name, name);
                else
                    outf(o, "%s 0\n", name);
            }
        }
    }
}

/* CPU, memory, descriptors and start time from /proc/self (Linux). */
static void render_process(cdb__metrics_out *o)
{
    char commit[96];
    cdb__metrics_escape(CDB_COMMIT, commit, sizeof commit);  /* the Makefile's git rev-parse --short HEAD */
    cdb__metrics_family(o, "coredb_build_info", "gauge", "Always 1; the labels name the build.");
    outf(o, "coredb_build_info{version=\"%s\",commit=\"%s\"} 1\n", CDB_VERSION, commit);

    long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/stat", "r");
    unsigned long long utime = 0, stime = 0, start = 0;
    bool have_stat = false;
    if (f) {
        char line[1024];
        if (fgets(line, sizeof line, f)) {
            /* fields after the command name, which may hold spaces: start at the last ')' */
            char *p = strrchr(line, ')');
            if (p && sscanf(p + 2,
                            "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu",
                            &utime, &stime, &start) == 3)
                have_stat = true;
        }
        fclose(f);
    }
    if (have_stat && ticks > 0) {
        cdb__metrics_family(o, "process_cpu_seconds_total", "counter", "User and system CPU time spent.");
        cdb__metrics_sample(o, "process_cpu_seconds_total", NULL, (double)(utime + stime) / (double)ticks);
        unsigned long long btime = 0;
        FILE *s = fopen("/proc/stat", "r");
        if (s) {
            char line[256];
            while (fgets(line, sizeof line, s))
                if (sscanf(line, "btime %llu", &btime) == 1)
                    break;
            fclose(s);
        }
        if (btime) {
            cdb__metrics_family(o, "process_start_time_seconds", "gauge", "Start time of the process (Unix time).");
            cdb__metrics_sample(o, "process_start_time_seconds", NULL, (double)btime + (double)start / (double)ticks);
        }
    }
    f = fopen("/proc/self/statm", "r");
    unsigned long long vsz = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%llu %llu", &vsz, &rss) == 2 && page > 0) {
            cdb__metrics_family(o, "process_resident_memory_bytes", "gauge", "Resident memory size.");
            cdb__metrics_sample(o, "process_resident_memory_bytes", NULL, (double)rss * (double)page);
            cdb__metrics_family(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size.");
            cdb__metrics_sample(o, "process_virtual_memory_bytes", NULL, (double)vsz * (double)page);
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            n += e->d_name[0] != '.';
        closedir(d);
        cdb__metrics_family(o, "process_open_fds", "gauge", "Open file descriptors.");
        cdb__metrics_sample(o, "process_open_fds", NULL, n - 1);  /* not the one opendir holds */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        cdb__metrics_family(o, "process_max_fds", "gauge", "Limit of open file descriptors.");
        cdb__metrics_sample(o, "process_max_fds", NULL, (double)rl.rlim_cur);
    }
}

char *cdb__metrics_render(void)
{
    cdb__metrics_out o = {.cap = 16384};
    o.buf = malloc(o.cap);
    if (!o.buf)
        return NULL;
    o.buf[0] = '\0';
    render_http(&o);
    render_counters(&o);
    render_ops(&o);
    render_process(&o);
    /* collectors run outside the lock (they may query PostgreSQL): copy the list */
    struct { cdb__metrics_collector_fn fn; void *arg; } list[MAX_COLLECTORS];
    pthread_mutex_lock(&lock);
    memcpy(list, collectors, sizeof list);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < MAX_COLLECTORS; i++)
        if (list[i].fn)
            list[i].fn(&o, list[i].arg);
    if (o.oom) {
        free(o.buf);
        return NULL;
    }
    return o.buf;
}

char *cdb_metrics_render(void)
{
    return cdb__metrics_render();
}

/* ---- JSON for the monitoring routes ---- */

/* The q-quantile (0..1) in ms, interpolated linearly inside its bucket. */
/* An estimate interpolated within a bucket: microseconds are all it can claim. */
static double to_ms(double seconds)
{
    return round(seconds * 1e6) / 1000.0;
}

static double quantile_ms(const hist_sum *h, double q)
{
    if (!h->count)
        return 0;
    double target = q * (double)h->count;
    uint64_t cum = 0;
    for (int b = 0; b <= NBUCKETS; b++) {
        uint64_t prev = cum;
        cum += h->bucket[b];
        if ((double)cum >= target && h->bucket[b]) {
            if (b == NBUCKETS)  /* over the last bound: all we can say is "at least" */
                return to_ms(bucket_s[NBUCKETS - 1]);
            double lo = b ? bucket_s[b - 1] : 0, hi = bucket_s[b];
            double frac = ((target - (double)prev) / (double)h->bucket[b]);
            return to_ms(lo + (hi - lo) * frac);
        }
    }
    return to_ms(bucket_s[NBUCKETS - 1]);
}

json_t *cdb__metrics_latency_json(void)
{
    const char *names[CDB_METRICS_MAX_ROUTES];
    int n = snapshot_routes(names);
    json_t *out = json_object();
    for (int r = 0; out && r < n; r++) {
        hist_sum h;
        sum_hist(&shards[0].duration[r], &h);
        if (!h.count)
            continue;
        json_t *e = json_pack("{s:I,s:f,s:f,s:f}", "count", (json_int_t)h.count, "p50_ms", quantile_ms(&h, 0.5),
                              "p90_ms", quantile_ms(&h, 0.9), "p99_ms", quantile_ms(&h, 0.99));
        if (!e || json_object_set_new(out, names[r], e) != 0) {
            json_decref(out);
            out = NULL;
        }
    }
    return out;
}

static const char *code_name(int c)
{
    return c ? cdb_err_name((cdb_err)-c) : "OTHER";
}

json_t *cdb__metrics_errors_json(void)
{
    const char *names[CDB_METRICS_MAX_ROUTES];
    int n = snapshot_routes(names);
    json_t *by_code = json_array(), *list = json_array();
    json_t *out = json_pack("{s:o,s:o}", "by_code", by_code, "recent", list);
    if (!out)
        return NULL;
    bool oom = false;
    for (int r = 0; r < n && !oom; r++)
        for (int c = 0; c < NCODES && !oom; c++) {
            uint64_t count = 0;
            for (int s = 0; s < NSHARDS; s++)
                count += LOAD(shards[s].errors[r][c]);
            if (count)
                oom = json_array_append_new(by_code, json_pack("{s:s,s:s,s:I}", "code", code_name(c), "route",
                                                               names[r], "count", (json_int_t)count)) != 0;
        }
    recent_error copy[CDB_METRICS_RECENT_ERRORS];
    pthread_mutex_lock(&lock);
    int count = recent_count, next = recent_next;
    memcpy(copy, recent, sizeof copy);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < count && !oom; i++) {
        const recent_error *e = &copy[(next - 1 - i + CDB_METRICS_RECENT_ERRORS) % CDB_METRICS_RECENT_ERRORS];
        char at[40];
        time_t secs = (time_t)(e->at_ms / 1000);
        struct tm tm;
        gmtime_r(&secs, &tm);
        size_t k = strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(at + k, sizeof at - k, ".%03dZ", (int)(e->at_ms % 1000));
        int c = e->code < 0 && -e->code < NCODES ? -e->code : 0;
        oom = json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:s,s:i,s:s}", "at", at, "request_id",
                                                    e->request_id, "method", e->method, "route",
                                                    e->route < n ? names[e->route] : "unmatched", "status",
                                                    e->status, "code", code_name(c))) != 0;
    }
    if (oom) {
        json_decref(out);
        return NULL;
    }
    return out;
}
