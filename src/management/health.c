/*
 * health.c - the checks behind /health and /health/ready.
 *
 * The PostgreSQL check borrows a pooled connection with a short deadline and
 * runs SELECT 1, so it measures what a request would see (pool wait
 * included). Redis is optional: a configured Redis that is down makes the
 * service DEGRADED, not DOWN (API.md).
 *
 * Its own deadline. A health check is asked by a load balancer or an
 * orchestrator that gives up after a few seconds and then draws its own
 * conclusion, so /health must answer DOWN in time rather than hang with
 * PostgreSQL: the check gets HEALTH_ACQUIRE_BUDGET_MS for the pool (a
 * connect or validation inside the acquire included) and then
 * HEALTH_QUERY_BUDGET_MS for its queries (cdb_pg_set_deadline; a
 * connection's own statement deadline still applies when shorter). SELECT 1
 * and the bookkeeping queries take milliseconds on a server that works, so
 * a server that cannot answer them within a second is reported DOWN, and
 * the whole answer comes within about 3 s plus the Redis command timeout
 * (1 s). /health/live touches neither and stays instant.
 */
#include "coredb/version.h"
#include "management/health.h"
#include "store/pg.h"
#include "core/timeutil.h"

#include <stdio.h>
#include <stdlib.h>

#define HEALTH_ACQUIRE_BUDGET_MS 2000
#define HEALTH_QUERY_BUDGET_MS 1000

static json_t *duration_ms_string(int64_t us)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lldms", (long long)((us + 500) / 1000));
    return json_string(buf);
}

/*
 * The Redis outbox backlog (data.h): operations of committed transactions
 * that Redis has not taken yet. Informational: a backlog never makes the
 * service DOWN, but a growing one says Redis is missing writes.
 */
static void check_outbox(PGconn *conn, json_t *checks)
{
    PGresult *res = NULL;
    cdb_error err;
    cdb_error_init(&err);
    if (cdb_pg_exec(conn,
                    "SELECT count(*), coalesce(floor(extract(epoch FROM now() - min(created_at))), 0)::bigint"
                    " FROM coredb.redis_outbox",
                    0, NULL, &res, &err) == 0) {
        json_object_set_new(checks, "outbox",
                            json_pack("{s:I,s:I}", "pending",
                                      (json_int_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10),
                                      "oldest_seconds",
                                      (json_int_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10)));
    }
    PQclear(res);
    cdb_error_destroy(&err);
}

/*
 * The document and vector stores (issue 15), one registry query for both:
 * PostgreSQL-backed, so each is up when PostgreSQL is and the registry
 * (migration 015) answers; the count of its collections says it is in use.
 * The document store's "role" is the one seed 003 gives it (cosmosdb);
 * "backend" says where both really live; "search" the vectors' default path.
 */
static void check_collections(PGconn *conn, bool pg_up, json_t *checks)
{
    PGresult *res = NULL;
    cdb_error err;
    cdb_error_init(&err);
    bool up = pg_up && cdb_pg_exec(conn, "SELECT count(*) FILTER (WHERE kind = 'documents'),"
                                         " count(*) FILTER (WHERE kind = 'vectors') FROM coredb.collections",
                                   0, NULL, &res, &err) == 0;
    json_t *doc = json_pack("{s:s, s:s, s:s}", "status", up ? "UP" : "DOWN", "backend", "postgresql", "role",
                            "cosmosdb");
    json_t *vec = json_pack("{s:s, s:s, s:s}", "status", up ? "UP" : "DOWN", "backend", "postgresql", "search",
                            "exact");
    if (doc && up)
        json_object_set_new(doc, "collections", json_integer(strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
    if (vec && up)
        json_object_set_new(vec, "collections", json_integer(strtoll(PQgetvalue(res, 0, 1), NULL, 10)));
    json_object_set_new(checks, "documents", doc);
    json_object_set_new(checks, "vectors", vec);
    PQclear(res);
    cdb_error_destroy(&err);
}

/*
 * Runs SELECT 1 on a pooled connection; *pending gets the pending count when
 * asked, and checks gets the outbox backlog when outbox is set. Shared with
 * the detailed health of monitor_health.c (health.h).
 */
bool cdb__health_check_postgresql(const cdb_health_deps *d, json_t *checks, int *pending, bool outbox)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *pg = json_object();
    int64_t start = cdb_mono_us();
    int64_t budget = d->acquire_timeout_ms < HEALTH_ACQUIRE_BUDGET_MS
                         ? d->acquire_timeout_ms : HEALTH_ACQUIRE_BUDGET_MS;
    bool up = false;
    cdb_pool_conn *conn = NULL;
    if (d->pool)
        conn = cdb_pool_acquire(d->pool, cdb_mono_ms() + budget, &err);
    else
        cdb_error_set(&err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
    if (conn) {
        PGconn *pgc = cdb_pool_conn_pg(conn);
        cdb_pg_set_deadline(pgc, cdb_mono_ms() + HEALTH_QUERY_BUDGET_MS); /* cleared by the release */
        up = cdb_pg_exec(pgc, "SELECT 1", 0, NULL, NULL, &err) == 0;
        if (up && pending) {
            *pending = cdb_migrate_pending_count(pgc, d->migrations, &err);
            if (*pending < 0)
                up = false;
        }
        if (up && outbox)
            check_outbox(pgc, checks);
        if (outbox)
            check_collections(pgc, up, checks);
        cdb_pool_release(d->pool, conn);
    }
    int64_t elapsed = cdb_mono_us() - start;

    cdb_pool_stats st = {0};
    if (d->pool)
        cdb_pool_get_stats(d->pool, &st);
    json_object_set_new(pg, "status", json_string(up ? "UP" : "DOWN"));
    json_object_set_new(pg, "responseTime", duration_ms_string(elapsed));
    json_t *conns = json_object();
    json_object_set_new(conns, "active", json_integer(st.active));
    json_object_set_new(conns, "idle", json_integer(st.idle));
    json_object_set_new(conns, "waiting", json_integer(st.waiting));
    json_object_set_new(conns, "total", json_integer(st.total));
    json_object_set_new(conns, "max", json_integer(st.max));
    json_object_set_new(pg, "connections", conns);
    if (!up)
        json_object_set_new(pg, "error", json_string(cdb_err_name(err.code)));
    json_object_set_new(checks, "postgresql", pg);
    if (outbox && !conn)
        check_collections(NULL, false, checks);
    cdb_error_destroy(&err);
    return up;
}

bool cdb__health_check_redis(cdb_redis *redis, bool detailed, json_t *checks)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *rd = json_object();
    int64_t rtt_us = 0;
    char memory[32] = "";
    bool up = cdb_redis_ping(redis, &rtt_us, memory, sizeof memory, &err) == 0;
    json_object_set_new(rd, "status", json_string(up ? "UP" : "DOWN"));
    if (up) {
        json_object_set_new(rd, "responseTime", duration_ms_string(rtt_us));
        json_object_set_new(rd, "memory", json_string(memory));
    } else {
        json_object_set_new(rd, "error", json_string(cdb_err_name(err.code)));
    }
    cdb_redis_topology t;
    cdb_redis_topology_get(redis, &t);
    if (t.sentinel) {
        json_object_set_new(rd, "masterName", json_string(t.master_name));
        json_object_set_new(rd, "masterChanges", json_integer((json_int_t)t.master_changes));
    }
    /* where the connections go (the address only, the URL's password never) and why
     * not: for admins, not on the public /health */
    if (detailed && t.sentinel)
        json_object_set_new(rd, "master", t.master[0] ? json_string(t.master) : json_null());
    if (detailed && !up && t.problem[0])
        json_object_set_new(rd, "detail", json_string(t.problem));
    json_object_set_new(checks, "redis", rd);
    cdb_error_destroy(&err);
    return up;
}

bool cdb__health_check_replicas(cdb_replicas *rs, bool detailed, json_t *checks)
{
    json_t *list = json_array(), *obj = json_object();
    int n = cdb_replicas_count(rs), in_rotation = 0;
    for (int i = 0; i < n; i++) {
        cdb_replica_info in;
        char lsn[20] = "";
        cdb_replicas_info(rs, i, &in);
        if (in.replay_lsn)
            cdb_lsn_format(in.replay_lsn, lsn);
        in_rotation += in.state == CDB_REPLICA_UP;
        json_t *r = json_pack("{s:i, s:s, s:f, s:I, s:o}", "replica", i, "state",
                              cdb_replica_state_name(in.state), "lag_seconds", in.lag_seconds, "lag_bytes",
                              (json_int_t)in.lag_bytes, "replay_lsn", in.replay_lsn ? json_string(lsn) : json_null());
        /* where it is and why it is out: for admins, not on the public /health */
        if (r && detailed)
            json_object_set_new(r, "target", json_string(in.label));
        if (r && detailed && in.reason)
            json_object_set_new(r, "reason", json_string(in.reason));
        json_array_append_new(list, r);
    }
    json_object_set_new(obj, "status", json_string(in_rotation ? "UP" : "DOWN"));
    json_object_set_new(obj, "in_rotation", json_integer(in_rotation));
    json_object_set_new(obj, "replicas", list);
    json_object_set_new(checks, "replicas", obj);
    return in_rotation > 0;
}

static json_t *report_skeleton(const char *status, json_t *checks)
{
    char ts[32];
    cdb_iso_now(ts, sizeof ts);
    json_t *r = json_object();
    json_object_set_new(r, "status", json_string(status));
    json_object_set_new(r, "timestamp", json_string(ts));
    json_object_set_new(r, "service", json_string(CDB_SERVICE_NAME));
    json_object_set_new(r, "version", json_string(CDB_VERSION));
    json_object_set_new(r, "checks", checks);
    return r;
}

const char *cdb_health_status_name(cdb_health_status s)
{
    return s == CDB_HEALTH_UP ? "UP" : s == CDB_HEALTH_DEGRADED ? "DEGRADED" : "DOWN";
}

cdb_health_status cdb_health_check(const cdb_health_deps *d, json_t **out)
{
    json_t *checks = json_object();
    bool pg_up = cdb__health_check_postgresql(d, checks, NULL, true);
    bool redis_up = d->redis ? cdb__health_check_redis(d->redis, false, checks) : true;
    /* no replica in rotation: reads go to the primary, nothing fails (docs/replicas.md) */
    bool replicas_up = d->replicas ? cdb__health_check_replicas(d->replicas, false, checks) : true;
    cdb_health_status s = !pg_up ? CDB_HEALTH_DOWN : redis_up && replicas_up ? CDB_HEALTH_UP : CDB_HEALTH_DEGRADED;
    *out = report_skeleton(cdb_health_status_name(s), checks);
    return s;
}

cdb_health_status cdb_health_check_ready(const cdb_health_deps *d, json_t **out)
{
    json_t *checks = json_object();
    int pending = -1;
    bool pg_up = cdb__health_check_postgresql(d, checks, &pending, false);
    json_t *mig = json_object();
    json_object_set_new(mig, "pending", pending >= 0 ? json_integer(pending) : json_null());
    json_object_set_new(checks, "migrations", mig);
    cdb_health_status s = pg_up && pending == 0 ? CDB_HEALTH_UP : CDB_HEALTH_DOWN;
    *out = report_skeleton(cdb_health_status_name(s), checks);
    return s;
}
