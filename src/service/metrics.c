/*
 * metrics.c - the service's gauges, read when Prometheus scrapes (the
 * registry in core/metrics.c calls this collector): pool and Redis state
 * from their owners, and what only PostgreSQL knows (up, version, database
 * size, connections by state, active sessions, the outbox backlog) from
 * one pooled connection with a short deadline. Nothing here is kept on
 * the hot path. A scrape that cannot reach PostgreSQL says
 * coredb_postgres_up 0 and leaves the PostgreSQL families out; one that
 * finds every connection busy leaves them out too, and says up as the pool
 * sees it.
 */
#include "service/service_internal.h"
#include "security/service_state.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/metrics.h"
#include "core/timeutil.h"
#include "identity/identity_internal.h"  /* CDB__SESSION_LIVE: what a live session is, said once */
#include "store/pg.h"
#include "store/pg_async.h"
#include "store/pool.h"
#include "store/reserved.h"
#include "store/redis.h"
#include "store/replicas.h"

enum { SCRAPE_DEADLINE_MS = 2000 };

/* One round trip: the numbers, then pg_stat_activity by state (nulls: other roles' sessions). */
/* $1: SESSION_TIMEOUT in seconds */
static const char *const PG_STATS_SQL =
    "SELECT current_setting('server_version'), current_setting('server_version_num')::bigint,"
    " pg_database_size(current_database()),"
    " (SELECT count(*) FROM coredb.sessions s WHERE " CDB__SESSION_LIVE("s", "$1") "),"
    " (SELECT count(*) FROM coredb.redis_outbox)";
static const char *const PG_ACTIVITY_SQL =
    "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() GROUP BY 1 ORDER BY 1";

static void collect_pool(cdb__metrics_out *out, cdb_service *svc)
{
    cdb_pool_stats st;
    cdb_pool_get_stats(svc->pool, &st);
    cdb__metrics_family(out, "coredb_pool_connections", "gauge", "Pooled PostgreSQL connections by state.");
    cdb__metrics_sample(out, "coredb_pool_connections", "state=\"active\"", st.active);
    cdb__metrics_sample(out, "coredb_pool_connections", "state=\"idle\"", st.idle);
    cdb_apg_counts ac;
    cdb_apg_counts_get(&ac);
    cdb__metrics_family(out, "coredb_pool_loop_connections", "gauge",
                        "PostgreSQL connections the HTTP loops own (DB_LOOP_CONNECTIONS each), by state.");
    cdb__metrics_sample(out, "coredb_pool_loop_connections", "state=\"ready\"", ac.ready);
    cdb__metrics_sample(out, "coredb_pool_loop_connections", "state=\"connecting\"", ac.connecting);
    cdb__metrics_sample(out, "coredb_pool_loop_connections", "state=\"down\"", ac.down);
    cdb__metrics_family(out, "coredb_pool_loop_parked_total", "counter",
                        "Loop queries that waited for room on the loop's PostgreSQL connections (all full).");
    cdb__metrics_sample(out, "coredb_pool_loop_parked_total", NULL, (double)ac.parked);
    cdb__metrics_family(out, "coredb_pool_loop_park_expired_total", "counter",
                        "Of those, the ones that went to a worker: no job of their loop ended for 250 ms.");
    cdb__metrics_sample(out, "coredb_pool_loop_park_expired_total", NULL, (double)ac.park_expired);
    cdb__metrics_family(out, "coredb_pool_connections_max", "gauge",
                        "The blocking pool's size: DB_POOL_MAX minus the HTTP loops' share (DB_LOOP_CONNECTIONS).");
    cdb__metrics_sample(out, "coredb_pool_connections_max", NULL, st.max);
    cdb__metrics_family(out, "coredb_pool_waiting", "gauge", "Threads waiting for a pooled connection.");
    cdb__metrics_sample(out, "coredb_pool_waiting", NULL, st.waiting);
    cdb__metrics_family(out, "coredb_leases_active", "gauge",
                        "Connection leases holding a pooled connection of this instance.");
    cdb__metrics_sample(out, "coredb_leases_active", NULL, cdb_reserved_count());
    cdb__metrics_family(out, "coredb_pool_acquire_timeouts_total", "counter",
                        "Waits for a pooled connection that ended at the deadline (POOL_EXHAUSTED).");
    cdb__metrics_sample(out, "coredb_pool_acquire_timeouts_total", NULL, (double)st.acquire_timeouts_total);
    cdb__metrics_family(out, "coredb_pool_reconnects_total", "counter",
                        "Connections the pool opened to PostgreSQL (first ones and replacements).");
    cdb__metrics_sample(out, "coredb_pool_reconnects_total", NULL, (double)st.connects_total);
    cdb__metrics_family(out, "coredb_pool_connect_failures_total", "counter",
                        "Connection attempts to PostgreSQL that failed.");
    cdb__metrics_sample(out, "coredb_pool_connect_failures_total", NULL, (double)st.connect_failures_total);
}

static void collect_redis(cdb__metrics_out *out, cdb_service *svc)
{
    if (!svc->redis)  /* no REDIS_URL: the in-process cache, nothing to report */
        return;
    cdb__metrics_family(out, "coredb_redis_up", "gauge", "1 when the last Redis command or connect succeeded.");
    cdb__metrics_sample(out, "coredb_redis_up", NULL, cdb_redis_up(svc->redis));
    cdb__metrics_family(out, "coredb_redis_reconnects_total", "counter",
                        "Times Redis came back after this process saw it down.");
    cdb__metrics_sample(out, "coredb_redis_reconnects_total", NULL, (double)cdb_redis_recoveries(svc->redis));
    cdb_redis_topology t;
    cdb_redis_topology_get(svc->redis, &t);
    cdb__metrics_family(out, "coredb_redis_master_changes_total", "counter",
                        "Times a new connection found the Redis master (from Redis Sentinel) at another address.");
    cdb__metrics_sample(out, "coredb_redis_master_changes_total", NULL, (double)t.master_changes);
}

static void collect_postgres(cdb__metrics_out *out, cdb_service *svc)
{
    cdb_error err;
    cdb_error_init(&err);
    PGresult *stats = NULL, *activity = NULL;
    int64_t deadline = cdb_mono_ms() + SCRAPE_DEADLINE_MS;
    cdb_pool_conn *pc = cdb_pool_acquire(svc->pool, deadline, &err);
    bool up = false;
    if (pc) {
        PGconn *conn = cdb_pool_conn_pg(pc);
        cdb_pg_set_deadline(conn, deadline);
        char timeout[16];
        snprintf(timeout, sizeof timeout, "%d", svc->cfg->session_timeout_s);
        const char *params[] = {timeout};
        up = cdb_pg_exec(conn, PG_STATS_SQL, 1, params, &stats, &err) == 0 && PQntuples(stats) == 1 &&
             cdb_pg_exec(conn, PG_ACTIVITY_SQL, 0, NULL, &activity, &err) == 0;
        cdb_pool_release(svc->pool, pc);
    }
    bool queried = up;
    if (!pc && err.code == CDB_ERR_POOL_EXHAUSTED) {
        /* every connection is busy: PostgreSQL is not down for that, the pool knows */
        cdb_pool_stats st;
        cdb_pool_get_stats(svc->pool, &st);
        up = st.server_up;
    }
    cdb__metrics_family(out, "coredb_postgres_up", "gauge",
                        "1 when the scrape's statistics query succeeded (or, every pooled connection busy, "
                        "while the pool reaches PostgreSQL).");
    cdb__metrics_sample(out, "coredb_postgres_up", NULL, up);
    if (queried) {
        char version[96], labels[128];
        cdb__metrics_escape(PQgetvalue(stats, 0, 0), version, sizeof version);
        snprintf(labels, sizeof labels, "server_version=\"%s\"", version);
        cdb__metrics_family(out, "coredb_postgres_info", "gauge", "Always 1; the label is PostgreSQL's version.");
        cdb__metrics_sample(out, "coredb_postgres_info", labels, 1);
        cdb__metrics_family(out, "coredb_postgres_server_version_num", "gauge", "server_version_num.");
        cdb__metrics_sample(out, "coredb_postgres_server_version_num", NULL, strtod(PQgetvalue(stats, 0, 1), NULL));
        cdb__metrics_family(out, "coredb_postgres_database_size_bytes", "gauge", "Size of the database.");
        cdb__metrics_sample(out, "coredb_postgres_database_size_bytes", NULL, strtod(PQgetvalue(stats, 0, 2), NULL));
        cdb__metrics_family(out, "coredb_postgres_connections", "gauge",
                            "Backends connected to the database by state (pg_stat_activity).");
        for (int i = 0; i < PQntuples(activity); i++) {
            char state[64];
            cdb__metrics_escape(PQgetvalue(activity, i, 0), state, sizeof state);
            snprintf(labels, sizeof labels, "state=\"%s\"", state);
            cdb__metrics_sample(out, "coredb_postgres_connections", labels, strtod(PQgetvalue(activity, i, 1), NULL));
        }
        cdb__metrics_family(out, "coredb_sessions_active", "gauge", "Live sessions: not ended, not expired, used within SESSION_TIMEOUT.");
        cdb__metrics_sample(out, "coredb_sessions_active", NULL, strtod(PQgetvalue(stats, 0, 3), NULL));
        cdb__metrics_family(out, "coredb_outbox_backlog", "gauge", "Redis outbox rows waiting to be applied.");
        cdb__metrics_sample(out, "coredb_outbox_backlog", NULL, strtod(PQgetvalue(stats, 0, 4), NULL));
    }
    PQclear(stats);
    PQclear(activity);
    cdb_error_destroy(&err);
}

/* Replicas as the sampler last saw them, and where routed reads went (docs/replicas.md). */
static void collect_replicas(cdb__metrics_out *out, cdb_service *svc)
{
    int n = cdb_replicas_count(svc->replicas);
    if (!svc->replicas)
        return;
    cdb_replica_info in[n > 0 ? n : 1];
    char labels[64];
    for (int i = 0; i < n; i++)
        cdb_replicas_info(svc->replicas, i, &in[i]);
    /* labels are indexes: a URL may hold a password; /health maps an index to host:port */
    cdb__metrics_family(out, "coredb_replica_up", "gauge", "1 when the read replica is in rotation.");
    for (int i = 0; i < n; i++) {
        snprintf(labels, sizeof labels, "replica=\"%d\"", i);
        cdb__metrics_sample(out, "coredb_replica_up", labels, in[i].state == CDB_REPLICA_UP);
    }
    cdb__metrics_family(out, "coredb_replica_lag_seconds", "gauge", "Replay lag of the read replica, last sample.");
    for (int i = 0; i < n; i++) {
        snprintf(labels, sizeof labels, "replica=\"%d\"", i);
        cdb__metrics_sample(out, "coredb_replica_lag_seconds", labels, in[i].lag_seconds);
    }
    cdb__metrics_family(out, "coredb_replica_lag_bytes", "gauge", "WAL bytes the read replica has not replayed, last sample.");
    for (int i = 0; i < n; i++) {
        snprintf(labels, sizeof labels, "replica=\"%d\"", i);
        cdb__metrics_sample(out, "coredb_replica_lag_bytes", labels, (double)in[i].lag_bytes);
    }
    cdb_replicas_counts c;
    cdb_replicas_get_counts(svc->replicas, &c);
    cdb__metrics_family(out, "coredb_db_reads_total", "counter", "Routed reads (cache-miss queries) by the server that answered.");
    cdb__metrics_sample(out, "coredb_db_reads_total", "target=\"primary\"", (double)c.reads_primary);
    cdb__metrics_sample(out, "coredb_db_reads_total", "target=\"replica\"", (double)c.reads_replica);
    cdb__metrics_family(out, "coredb_read_your_writes_primary_total", "counter",
                        "Reads sent to the primary because every replica in rotation was behind the caller's last commit.");
    cdb__metrics_sample(out, "coredb_read_your_writes_primary_total", NULL, (double)c.ryw_primary);
    cdb__metrics_family(out, "coredb_replica_read_failures_total", "counter",
                        "Reads a replica failed and the primary answered instead.");
    cdb__metrics_sample(out, "coredb_replica_read_failures_total", NULL, (double)c.replica_failures);
}

static void collect(cdb__metrics_out *out, void *arg)
{
    cdb_service *svc = arg;
    collect_pool(out, svc);
    collect_replicas(out, svc);
    collect_redis(out, svc);
    collect_postgres(out, svc);
}

int cdb__service_metrics_start(cdb_service *svc)
{
    return svc->pool ? cdb__metrics_add_collector(collect, svc) : 0;
}

void cdb__service_metrics_stop(cdb_service *svc)
{
    cdb__metrics_remove_collector(collect, svc);
}
