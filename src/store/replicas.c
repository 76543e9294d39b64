/*
 * replicas.c - the read replicas: their pools, their sampled state, the
 * choice of one for a read (replicas.h).
 *
 * State. Every replica is in one of four states and set_state() is the only
 * place that moves it, checking the move against the table `allowed` (as
 * PgBouncer's change_server_state does): an impossible move is a bug and
 * aborts. UNKNOWN is where a replica starts and never returns to.
 *
 * Sampling. A thread wakes every sample_ms and:
 *  1. reads the primary's pg_current_wal_lsn() (one pooled connection, a
 *     one-second deadline) and keeps it in a small ring with the time;
 *  2. asks each replica, on a connection of its own pool with the same
 *     deadline, pg_last_wal_replay_lsn() and pg_is_in_recovery().
 * Lag in bytes is the primary's last sampled LSN minus the replay LSN.
 * Lag in seconds is the age of the oldest primary sample the replica has
 * not replayed yet (accurate to one period). It is not
 * now() - pg_last_xact_replay_timestamp(): that grows without bound while
 * the primary is idle, so a replica that has replayed everything would be
 * called late; the replay timestamp is used only when the replica is
 * behind every sample in the ring. A replica that has replayed the
 * sampled primary LSN has lag 0.
 *
 * Choice. Round robin over the replicas in rotation (state UP) whose replay
 * LSN has reached the caller's last commit LSN: one atomic counter, no
 * per-request query. Least-busy would need the pools' counts under their
 * locks for a gain only when replicas differ in size.
 */
#include "store/replicas.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/log.h"
#include "core/config_internal.h"
#include "core/timeutil.h"
#include "store/pg.h"

enum { PROBE_BUDGET_MS = 1000, RING = 64 };

static const char REPLICA_SQL[] =
    "SELECT pg_last_wal_replay_lsn(), pg_is_in_recovery(),"
    " coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)";
static const char PRIMARY_SQL[] = "SELECT pg_current_wal_lsn()";

typedef struct replica {
    cdb_pool *pool;
    char label[128];
    cdb_replica_state state;       /* guarded by mu, moved by set_state only */
    const char *reason;
    uint64_t replay_lsn, lag_bytes;
    double lag_seconds;
    int64_t sampled_ms;            /* cdb_mono_ms() of the last answer; 0 = never */
} replica;

typedef struct lsn_sample {
    int64_t at_ms;
    uint64_t lsn;
} lsn_sample;

struct cdb_replicas {
    replica *r;
    int n;
    cdb_pool *primary;
    int max_lag_ms, sample_ms;

    pthread_mutex_t mu;            /* guards the replicas' sampled fields, the ring, stopping */
    pthread_cond_t wake;
    pthread_t thread;
    bool started, stopping;
    lsn_sample ring[RING];         /* primary LSN samples, ring[head - 1] the newest */
    int head, filled;

    atomic_uint_fast64_t rr;
    atomic_uint_fast64_t reads_primary, reads_replica, ryw_primary, replica_failures;
};

/* allowed[from][to]: the moves that make sense; anything else is a bug. */
static const bool allowed[4][4] = {
    /* to:          UNKNOWN UP     LAGGING DOWN */
    [CDB_REPLICA_UNKNOWN] = {false, true, true, true},
    [CDB_REPLICA_UP] = {false, false, true, true},
    [CDB_REPLICA_LAGGING] = {false, true, false, true},
    [CDB_REPLICA_DOWN] = {false, true, true, false},
};

const char *cdb_replica_state_name(cdb_replica_state s)
{
    static const char *const names[] = {"unknown", "up", "lagging", "down"};
    return (unsigned)s < 4 ? names[s] : "invalid";
}

/* The one place a replica changes state; mu held. Same state: only the reason changes. */
static void set_state(replica *rep, cdb_replica_state to, const char *reason)
{
    cdb_replica_state from = rep->state;
    rep->reason = to == CDB_REPLICA_UP ? NULL : reason;
    if (from == to)
        return;
    if ((unsigned)from > 3 || (unsigned)to > 3 || !allowed[from][to]) {
        cdb_log_error("replica.bad_transition", "replica %s: %s -> %s", rep->label, cdb_replica_state_name(from),
                      cdb_replica_state_name(to));
        abort();
    }
    rep->state = to;
    if (to == CDB_REPLICA_UP)
        cdb_log_info("replica.up", "replica %s in rotation (was %s)", rep->label, cdb_replica_state_name(from));
    else
        cdb_log_warn("replica.out", "replica %s out of rotation: %s (%s)", rep->label, cdb_replica_state_name(to),
                     reason ? reason : "");
}

uint64_t cdb_lsn_parse(const char *text)
{
    unsigned int hi, lo;
    char extra;
    if (!text || sscanf(text, "%X/%X%c", &hi, &lo, &extra) != 2)
        return 0;
    return ((uint64_t)hi << 32) | lo;
}

void cdb_lsn_format(uint64_t lsn, char buf[20])
{
    snprintf(buf, 20, "%X/%X", (unsigned)(lsn >> 32), (unsigned)(lsn & 0xffffffffu));
}

/* host:port of a URL, for labels and logs: never the URL, which may hold a password. */
static void url_label(const char *url, char *buf, size_t len, int index)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    const char *host = NULL, *port = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    if (host && *host)
        snprintf(buf, len, "%s:%s", host, port && *port ? port : "5432");
    else
        snprintf(buf, len, "replica%d", index);
    PQconninfoFree(opts);
}

/* One query on a pooled connection within PROBE_BUDGET_MS; NULL when it did not answer. */
static PGresult *probe(cdb_pool *pool, const char *sql, bool *answered)
{
    cdb_error err;
    cdb_error_init(&err);
    int64_t deadline = cdb_mono_ms() + PROBE_BUDGET_MS;
    PGresult *res = NULL;
    *answered = false;
    cdb_pool_conn *pc = cdb_pool_acquire(pool, deadline, &err);
    if (pc) {
        PGconn *conn = cdb_pool_conn_pg(pc);
        cdb_pg_set_deadline(conn, deadline);
        if (cdb_pg_exec(conn, sql, 0, NULL, &res, &err) == 0 && PQntuples(res) == 1)
            *answered = true;
        cdb_pool_release(pool, pc);
    }
    if (!*answered) {
        PQclear(res);
        res = NULL;
    }
    cdb_error_destroy(&err);
    return res;
}

/* Seconds since the oldest ring sample the replica has not replayed; -1 when the ring has none it passed. */
static double ring_lag(const cdb_replicas *rs, uint64_t replay, int64_t now)
{
    int64_t oldest_unreplayed = -1;
    bool passed_one = false;
    for (int k = 0; k < rs->filled; k++) {
        const lsn_sample *s = &rs->ring[(rs->head - 1 - k + RING) % RING];   /* newest first */
        if (s->lsn > replay)
            oldest_unreplayed = s->at_ms;
        else {
            passed_one = true;
            break;
        }
    }
    if (oldest_unreplayed < 0)
        return 0;
    if (!passed_one)
        return -1;
    return (double)(now - oldest_unreplayed) / 1000.0;
}

static void sample_replica(cdb_replicas *rs, replica *rep)
{
    bool answered;
    PGresult *res = probe(rep->pool, REPLICA_SQL, &answered);
    int64_t now = cdb_mono_ms();

    pthread_mutex_lock(&rs->mu);
    if (!answered) {
        set_state(rep, CDB_REPLICA_DOWN, "unreachable");
    } else if (strcmp(PQgetvalue(res, 0, 1), "t") != 0 || PQgetisnull(res, 0, 0)) {
        /* a promoted or misconfigured server: reading it could miss the primary's writes */
        rep->sampled_ms = now;
        set_state(rep, CDB_REPLICA_DOWN, "not a standby");
    } else {
        uint64_t replay = cdb_lsn_parse(PQgetvalue(res, 0, 0));
        uint64_t primary = rs->filled ? rs->ring[(rs->head - 1 + RING) % RING].lsn : 0;
        double lag = ring_lag(rs, replay, now);
        if (lag < 0)   /* behind the whole ring: the replay timestamp is all we have */
            lag = strtod(PQgetvalue(res, 0, 2), NULL);
        rep->replay_lsn = replay;
        rep->lag_bytes = primary > replay ? primary - replay : 0;
        rep->lag_seconds = rep->lag_bytes ? lag : 0;
        rep->sampled_ms = now;
        if (!rs->filled)
            set_state(rep, CDB_REPLICA_LAGGING, "primary not sampled");
        else if (rep->lag_seconds * 1000.0 > rs->max_lag_ms)
            set_state(rep, CDB_REPLICA_LAGGING, "behind DB_REPLICA_MAX_LAG");
        else
            set_state(rep, CDB_REPLICA_UP, NULL);
    }
    pthread_mutex_unlock(&rs->mu);
    PQclear(res);
}

static void sample_all(cdb_replicas *rs)
{
    bool answered;
    PGresult *res = probe(rs->primary, PRIMARY_SQL, &answered);
    if (answered) {
        uint64_t lsn = cdb_lsn_parse(PQgetvalue(res, 0, 0));
        pthread_mutex_lock(&rs->mu);
        rs->ring[rs->head] = (lsn_sample){.at_ms = cdb_mono_ms(), .lsn = lsn};
        rs->head = (rs->head + 1) % RING;
        if (rs->filled < RING)
            rs->filled++;
        pthread_mutex_unlock(&rs->mu);
    }
    PQclear(res);
    for (int i = 0; i < rs->n; i++)
        sample_replica(rs, &rs->r[i]);
}

static void *sampler(void *arg)
{
    cdb_replicas *rs = arg;
    pthread_mutex_lock(&rs->mu);
    while (!rs->stopping) {
        pthread_mutex_unlock(&rs->mu);
        sample_all(rs);
        pthread_mutex_lock(&rs->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += rs->sample_ms / 1000;
        ts.tv_nsec += (long)(rs->sample_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!rs->stopping)
            pthread_cond_timedwait(&rs->wake, &rs->mu, &ts);
    }
    pthread_mutex_unlock(&rs->mu);
    return NULL;
}

cdb_replicas *cdb_replicas_new(const cdb_replicas_options *opt, cdb_error *err)
{
    cdb_replicas *rs = NULL;
    char *list = NULL;
    int n = 1;

    if (!opt || !opt->urls || !*opt->urls || !opt->primary || opt->sample_ms <= 0 || opt->max_lag_s <= 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Invalid replica options");
        return NULL;
    }
    for (const char *p = opt->urls; *(p = cdb__config_url_end(p)); p++)
        n++;
    if (!(rs = calloc(1, sizeof *rs)) || !(rs->r = calloc((size_t)n, sizeof *rs->r)) ||
        !(list = strdup(opt->urls)))
        goto oom;
    pthread_mutex_init(&rs->mu, NULL);
    pthread_cond_init(&rs->wake, NULL);
    rs->primary = opt->primary;
    rs->max_lag_ms = opt->max_lag_s * 1000;
    rs->sample_ms = opt->sample_ms;
    char *p = list;
    for (int i = 0; i < n; i++) {
        char *end = (char *)cdb__config_url_end(p);
        bool last = !*end;
        *end = '\0';
        cdb_pool_options po = opt->pool;
        po.conninfo = p;
        url_label(p, rs->r[i].label, sizeof rs->r[i].label, i);
        rs->r[i].state = CDB_REPLICA_UNKNOWN;
        rs->r[i].reason = "not sampled yet";
        if (!(rs->r[i].pool = cdb_pool_new(&po, err)))
            goto fail;
        rs->n++;
        if (last)
            break;
        p = end + 1;
    }
    if (pthread_create(&rs->thread, NULL, sampler, rs) != 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Could not start the replica sampler");
        goto fail;
    }
    rs->started = true;
    free(list);
    return rs;

oom:
    cdb_error_oom(err);
fail:
    free(list);
    cdb_replicas_free(rs);
    return NULL;
}

void cdb_replicas_free(cdb_replicas *rs)
{
    if (!rs)
        return;
    if (rs->started) {
        pthread_mutex_lock(&rs->mu);
        rs->stopping = true;
        pthread_cond_signal(&rs->wake);
        pthread_mutex_unlock(&rs->mu);
        pthread_join(rs->thread, NULL);
    }
    for (int i = 0; rs->r && i < rs->n; i++)
        cdb_pool_free(rs->r[i].pool);
    if (rs->r) {
        pthread_mutex_destroy(&rs->mu);
        pthread_cond_destroy(&rs->wake);
    }
    free(rs->r);
    free(rs);
}

int cdb_replicas_count(const cdb_replicas *rs)
{
    return rs ? rs->n : 0;
}

cdb_pool *cdb_replicas_pool(cdb_replicas *rs, int i)
{
    return rs && i >= 0 && i < rs->n ? rs->r[i].pool : NULL;
}

int cdb_replicas_pick(cdb_replicas *rs, uint64_t min_lsn, uint64_t fresh_lsn, bool *behind, bool *fresh)
{
    int pick = -1;
    bool late = false, current = false;
    if (!rs || rs->n == 0)
        goto out;
    uint64_t start = atomic_fetch_add(&rs->rr, 1);
    pthread_mutex_lock(&rs->mu);
    for (int k = 0; k < rs->n; k++) {
        replica *rep = &rs->r[(start + (uint64_t)k) % (uint64_t)rs->n];
        if (rep->state != CDB_REPLICA_UP)
            continue;
        if (rep->replay_lsn < min_lsn) {
            late = true;
            continue;
        }
        pick = (int)(rep - rs->r);
        current = rep->replay_lsn >= fresh_lsn;
        break;
    }
    pthread_mutex_unlock(&rs->mu);
out:
    if (behind)
        *behind = pick < 0 && late;
    if (fresh)
        *fresh = current;
    return pick;
}

bool cdb_replicas_any_up(cdb_replicas *rs)
{
    bool up = false;
    if (!rs)
        return false;
    pthread_mutex_lock(&rs->mu);
    for (int i = 0; i < rs->n && !up; i++)
        up = rs->r[i].state == CDB_REPLICA_UP;
    pthread_mutex_unlock(&rs->mu);
    return up;
}

void cdb_replicas_report_failure(cdb_replicas *rs, int i)
{
    if (!rs || i < 0 || i >= rs->n)
        return;
    pthread_mutex_lock(&rs->mu);
    if (rs->r[i].state == CDB_REPLICA_UP)
        set_state(&rs->r[i], CDB_REPLICA_DOWN, "a read lost its connection");
    pthread_mutex_unlock(&rs->mu);
}

void cdb_replicas_count_read(cdb_replicas *rs, int replica_index, bool ryw, bool failed_over)
{
    if (!rs)
        return;
    if (failed_over)
        atomic_fetch_add(&rs->replica_failures, 1);
    atomic_fetch_add(replica_index >= 0 ? &rs->reads_replica : &rs->reads_primary, 1);
    if (ryw)
        atomic_fetch_add(&rs->ryw_primary, 1);
}

void cdb_replicas_info(cdb_replicas *rs, int i, cdb_replica_info *out)
{
    memset(out, 0, sizeof *out);
    out->sampled_ms_ago = -1;
    if (!rs || i < 0 || i >= rs->n)
        return;
    pthread_mutex_lock(&rs->mu);
    const replica *rep = &rs->r[i];
    out->state = rep->state;
    snprintf(out->label, sizeof out->label, "%s", rep->label);
    out->reason = rep->reason;
    out->replay_lsn = rep->replay_lsn;
    out->lag_bytes = rep->lag_bytes;
    out->lag_seconds = rep->lag_seconds;
    out->sampled_ms_ago = rep->sampled_ms ? cdb_mono_ms() - rep->sampled_ms : -1;
    pthread_mutex_unlock(&rs->mu);
}

void cdb_replicas_get_counts(cdb_replicas *rs, cdb_replicas_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!rs)
        return;
    out->reads_primary = atomic_load(&rs->reads_primary);
    out->reads_replica = atomic_load(&rs->reads_replica);
    out->ryw_primary = atomic_load(&rs->ryw_primary);
    out->replica_failures = atomic_load(&rs->replica_failures);
}
