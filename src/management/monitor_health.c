/*
 * monitor_health.c - the detailed health of coredb/health.h for operators:
 * connection (pool, PostgreSQL, Redis, with latencies), query (a timed probe
 * and the longest-running statements) and resource (this process's memory
 * and file descriptors, free disk under COREDB_VAR_DIR and BACKUP_DIR, the
 * database's size), each judged healthy / degraded / unhealthy with the
 * reasons.
 *
 * It builds on health.c rather than repeating it: the reachability of
 * PostgreSQL and Redis is the very check /health runs
 * (cdb__health_check_postgresql / _redis, with their budgets), timed here;
 * what is added is what an operator needs beyond up/down.
 *
 * A backend that is down is a finding, not a failure: the calls fail only
 * for a caller who is not an admin or on out of memory, and every wait is
 * bounded (health.h), so they answer while PostgreSQL is stopped.
 */
#include "coredb/health.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/timeutil.h"
#include "management/health.h"
#include "management/monitor_internal.h"
#include "store/pg.h"

/* The verdict of one report: the worst level seen, and why. */
typedef struct verdict {
    cdb_health_status level;   /* UP = healthy, DEGRADED, DOWN = unhealthy */
    json_t *reasons;           /* array of strings, owned */
} verdict;

static const char *level_name(cdb_health_status s)
{
    return s == CDB_HEALTH_UP ? "healthy" : s == CDB_HEALTH_DEGRADED ? "degraded" : "unhealthy";
}

static void verdict_add(verdict *v, cdb_health_status level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void verdict_add(verdict *v, cdb_health_status level, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (level > v->level)
        v->level = level;
    json_array_append_new(v->reasons, json_string(buf));
}

/* Puts health, reason and reasons into o (taking the reasons); OOM when it cannot. */
static int verdict_finish(verdict *v, json_t *o, cdb_error *err)
{
    json_t *first = json_array_get(v->reasons, 0);
    int bad = json_object_set_new(o, "health", json_string(level_name(v->level))) |
              json_object_set_new(o, "reason", first ? json_copy(first) : json_null()) |
              json_object_set_new(o, "reasons", v->reasons);
    v->reasons = NULL;
    return bad ? cdb_error_oom(err) : 0;
}

static double ms_of_us(int64_t us)
{
    return (double)(us / 10) / 100.0;   /* milliseconds, two decimals */
}

/* The error code a health check put into checks[name].error, or "unknown". */
static const char *check_error(json_t *checks, const char *name)
{
    const char *e = json_string_value(json_object_get(json_object_get(checks, name), "error"));
    return e ? e : "unknown";
}

/* ---- connection ---- */

static json_t *postgresql_facts(cdb_service *svc, cdb_error *err)
{
    json_t *facts = NULL;
    cdb_pool_conn *conn = cdb__monitor_acquire(svc, CDB_HEALTH_DETAIL_ACQUIRE_MS, CDB_HEALTH_DETAIL_QUERY_MS, err);
    if (!conn)
        return NULL;
    if (cdb__monitor_json(cdb_pool_conn_pg(conn),
                          "SELECT json_build_object('server_version', current_setting('server_version'),"
                          " 'backends', (SELECT count(*) FROM pg_stat_activity"
                          "   WHERE backend_type = 'client backend'),"
                          " 'max_connections', current_setting('max_connections')::int)::text",
                          0, NULL, &facts, err) < 0)
        facts = NULL;
    cdb__monitor_release(svc, conn);
    return facts;
}

static int connection_report(cdb_service *svc, json_t **out, cdb_error *err)
{
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *checks = json_object(), *o = json_object(), *pg = json_object();
    int rc = -1;
    if (!v.reasons || !checks || !o || !pg) {
        rc = cdb_error_oom(err);
        goto out;
    }
    cdb_health_deps d = {.pool = svc->pool, .redis = svc->redis,
                         .acquire_timeout_ms = CDB_HEALTH_DETAIL_ACQUIRE_MS,
                         .migrations = svc->migrations};

    int64_t t0 = cdb_mono_us();
    bool pg_up = cdb__health_check_postgresql(&d, checks, NULL, false);
    double pg_ms = ms_of_us(cdb_mono_us() - t0);
    json_object_set_new(pg, "reachable", json_boolean(pg_up));
    json_object_set_new(pg, "latency_ms", json_real(pg_ms));
    if (!pg_up) {
        json_object_set_new(pg, "error", json_string(check_error(checks, "postgresql")));
        verdict_add(&v, CDB_HEALTH_DOWN, "postgresql: unreachable (%s)", check_error(checks, "postgresql"));
    } else {
        if (pg_ms > CDB_HEALTH_SLOW_MS)
            verdict_add(&v, CDB_HEALTH_DEGRADED, "postgresql: slow (%.0f ms > %d ms)", pg_ms, CDB_HEALTH_SLOW_MS);
        cdb_error ferr;
        cdb_error_init(&ferr);
        json_t *facts = postgresql_facts(svc, &ferr);
        if (facts) {
            json_object_update(pg, facts);
            json_int_t backends = json_integer_value(json_object_get(facts, "backends"));
            json_int_t max = json_integer_value(json_object_get(facts, "max_connections"));
            if (max > 0 && (double)backends >= CDB_HEALTH_BACKENDS_DEGRADED * (double)max)
                verdict_add(&v, CDB_HEALTH_DEGRADED, "postgresql: %lld of %lld connections in use",
                            (long long)backends, (long long)max);
        }
        json_decref(facts);
        cdb_error_destroy(&ferr);
    }

    cdb_pool_stats st = {0};
    if (svc->pool)
        cdb_pool_get_stats(svc->pool, &st);
    if (st.waiting > 0)
        verdict_add(&v, CDB_HEALTH_DEGRADED, "pool: %d waiting for a connection (%d of %d in use)",
                    st.waiting, st.active, st.max);
    json_t *pool = json_pack("{s:i,s:i,s:i,s:i,s:i,s:b,s:I,s:I,s:I,s:I}", "active", st.active, "idle",
                             st.idle, "waiting", st.waiting, "total", st.total, "max", st.max,
                             "server_up", svc->pool ? st.server_up : 0, "acquired_total",
                             (json_int_t)st.acquired_total, "acquire_timeouts_total",
                             (json_int_t)st.acquire_timeouts_total, "connects_total",
                             (json_int_t)st.connects_total, "connect_failures_total",
                             (json_int_t)st.connect_failures_total);

    json_t *redis = json_pack("{s:b}", "configured", svc->redis != NULL);
    if (svc->redis && redis) {
        t0 = cdb_mono_us();
        bool up = cdb__health_check_redis(svc->redis, true, checks);
        /* status, masterName, master, masterChanges, detail: what the public /health leaves out */
        json_object_update_missing(redis, json_object_get(checks, "redis"));
        json_object_set_new(redis, "reachable", json_boolean(up));
        json_object_set_new(redis, "latency_ms", json_real(ms_of_us(cdb_mono_us() - t0)));
        if (!up) {
            json_object_set_new(redis, "error", json_string(check_error(checks, "redis")));
            verdict_add(&v, CDB_HEALTH_DEGRADED, "redis: unreachable (%s)", check_error(checks, "redis"));
        }
    }
    /* each replica's state, lag, address and reason; out of rotation is degraded (reads on the primary) */
    if (svc->replicas && !cdb__health_check_replicas(svc->replicas, true, checks))
        verdict_add(&v, CDB_HEALTH_DEGRADED, "replicas: none in rotation, reads go to the primary");
    if (!pool || !redis || json_object_set_new(o, "postgresql", pg) < 0) {
        json_decref(pool);
        json_decref(redis);
        rc = cdb_error_oom(err);
        goto out;
    }
    pg = NULL;
    if (json_object_set_new(o, "pool", pool) < 0 || json_object_set_new(o, "redis", redis) < 0 ||
        (svc->replicas && json_object_set(o, "replicas", json_object_get(checks, "replicas")) < 0) ||
        (rc = verdict_finish(&v, o, err)) < 0) {
        rc = cdb_error_oom(err);
        goto out;
    }
    *out = o;
    o = NULL;
    rc = 0;
out:
    json_decref(v.reasons);
    json_decref(checks);
    json_decref(pg);
    json_decref(o);
    return rc;
}

/* ---- query ---- */

static const char LONGEST_SQL[] =
    "SELECT coalesce(json_agg(a ORDER BY a.duration_ms DESC), '[]')::text FROM ("
    " SELECT pid, usename AS user, application_name, state, wait_event_type, wait_event, backend_type,"
    "  floor(extract(epoch FROM clock_timestamp() - query_start) * 1000)::bigint AS duration_ms,"
    "  floor(extract(epoch FROM clock_timestamp() - xact_start) * 1000)::bigint AS transaction_ms,"
    "  " CDB__MONITOR_QUERY_TEXT("query") " AS query"
    " FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    "  AND state IS DISTINCT FROM 'idle' AND query_start IS NOT NULL"
    " ORDER BY query_start LIMIT 10) a";

static int query_report(cdb_service *svc, json_t **out, cdb_error *err)
{
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *o = json_object(), *probe = json_object(), *longest = NULL;
    cdb_error qerr;
    cdb_error_init(&qerr);
    int rc = -1;
    if (!v.reasons || !o || !probe) {
        rc = cdb_error_oom(err);
        goto out;
    }
    int64_t t0 = cdb_mono_us();
    cdb_pool_conn *conn = cdb__monitor_acquire(svc, CDB_HEALTH_DETAIL_ACQUIRE_MS, CDB_HEALTH_DETAIL_QUERY_MS,
                                               &qerr);
    bool ok = conn && cdb_pg_exec(cdb_pool_conn_pg(conn), "SELECT count(*) FROM pg_catalog.pg_class", 0,
                                  NULL, NULL, &qerr) == 0;
    double ms = ms_of_us(cdb_mono_us() - t0);
    json_object_set_new(probe, "ok", json_boolean(ok));
    json_object_set_new(probe, "latency_ms", json_real(ms));
    if (!ok) {
        json_object_set_new(probe, "error", json_string(cdb_err_name(qerr.code)));
        verdict_add(&v, CDB_HEALTH_DOWN, "probe: failed (%s)", cdb_err_name(qerr.code));
    } else if (ms > CDB_HEALTH_SLOW_MS) {
        verdict_add(&v, CDB_HEALTH_DEGRADED, "probe: slow (%.0f ms > %d ms)", ms, CDB_HEALTH_SLOW_MS);
    }
    if (ok && cdb__monitor_json(cdb_pool_conn_pg(conn), LONGEST_SQL, 0, NULL, &longest, &qerr) < 0)
        verdict_add(&v, CDB_HEALTH_DEGRADED, "longest_running: not readable (%s)", cdb_err_name(qerr.code));
    if (conn)
        cdb__monitor_release(svc, conn);
    size_t i;
    json_t *s;
    json_array_foreach(longest, i, s) {
        json_int_t d = json_integer_value(json_object_get(s, "duration_ms"));
        if (d > CDB_HEALTH_LONG_STATEMENT_MS) {
            verdict_add(&v, CDB_HEALTH_DEGRADED, "statement: pid %lld running for %lld s",
                        (long long)json_integer_value(json_object_get(s, "pid")), (long long)(d / 1000));
            break;   /* the list is longest first: one reason is enough */
        }
    }
    if (json_object_set_new(o, "probe", probe) < 0) {
        rc = cdb_error_oom(err);
        goto out;
    }
    probe = NULL;
    if (json_object_set_new(o, "longest_running", longest ? longest : json_null()) < 0) {
        longest = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    longest = NULL;
    if ((rc = verdict_finish(&v, o, err)) < 0)
        goto out;
    *out = o;
    o = NULL;
out:
    cdb_error_destroy(&qerr);
    json_decref(v.reasons);
    json_decref(probe);
    json_decref(longest);
    json_decref(o);
    return rc;
}

/* ---- resource ---- */

/* A "Name:   value kB" line of /proc/self/status, in bytes for kB values; -1 when absent. */
static long long proc_status_value(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long value = -1;
    size_t n = strlen(name);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            char unit[8] = "";
            if (sscanf(line + n + 1, "%lld %7s", &value, unit) >= 1 && strcmp(unit, "kB") == 0)
                value *= 1024;
            break;
        }
    }
    fclose(f);
    return value;
}

/* Open file descriptors of this process, the one opendir uses excluded; -1 when unknown. */
static long count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    long n = 0;
    if (!dir)
        return -1;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.')
            n++;
    closedir(dir);
    return n - 1;
}

static json_t *process_json(verdict *v)
{
    struct rlimit rl;
    long long limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                          ? (long long)rl.rlim_cur : -1;
    long fds = count_fds();
    if (fds < 0 && errno == EMFILE && limit > 0)
        fds = (long)limit;   /* not even one more descriptor to count them with: all in use */
    double ratio = fds >= 0 && limit > 0 ? (double)fds / (double)limit : 0.0;
    if (limit > 0 && ratio >= CDB_HEALTH_FDS_UNHEALTHY)
        verdict_add(v, CDB_HEALTH_DOWN, "fds: %ld of %lld open", fds, limit);
    else if (limit > 0 && ratio >= CDB_HEALTH_FDS_DEGRADED)
        verdict_add(v, CDB_HEALTH_DEGRADED, "fds: %ld of %lld open", fds, limit);
    /* in this order: the peak, read after the current size, is never below it */
    long long rss = proc_status_value("VmRSS");
    long long peak = proc_status_value("VmHWM");
    return json_pack("{s:i,s:I,s:I,s:I,s:I,s:o,s:f}", "pid", (int)getpid(), "rss_bytes",
                     (json_int_t)rss, "rss_peak_bytes", (json_int_t)peak, "threads",
                     (json_int_t)proc_status_value("Threads"), "fds_open", (json_int_t)fds,
                     "fds_limit", limit > 0 ? json_integer(limit) : json_null(), "fds_ratio",
                     (double)(long long)(ratio * 10000) / 10000.0);
}

static json_t *disk_json(verdict *v, const char *name, const char *path)
{
    struct statvfs sv;
    if (!path || statvfs(path, &sv) < 0 || sv.f_blocks == 0)
        return json_pack("{s:s,s:s?,s:b,s:n,s:n,s:n}", "name", name, "path", path, "exists", 0,
                         "free_bytes", "total_bytes", "free_ratio");
    unsigned long long unit = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    unsigned long long total = (unsigned long long)sv.f_blocks * unit;
    unsigned long long avail = (unsigned long long)sv.f_bavail * unit;
    double ratio = (double)avail / (double)total;
    if (ratio < CDB_HEALTH_DISK_FREE_UNHEALTHY)
        verdict_add(v, CDB_HEALTH_DOWN, "disk: %s has %.1f%% free", name, ratio * 100);
    else if (ratio < CDB_HEALTH_DISK_FREE_DEGRADED)
        verdict_add(v, CDB_HEALTH_DEGRADED, "disk: %s has %.1f%% free", name, ratio * 100);
    return json_pack("{s:s,s:s,s:b,s:I,s:I,s:f}", "name", name, "path", path, "exists", 1,
                     "free_bytes", (json_int_t)avail, "total_bytes", (json_int_t)total, "free_ratio",
                     (double)(long long)(ratio * 10000) / 10000.0);
}

static json_t *database_json(cdb_service *svc, verdict *v)
{
    cdb_error qerr;
    cdb_error_init(&qerr);
    json_t *size = NULL;
    cdb_pool_conn *conn = cdb__monitor_acquire(svc, CDB_HEALTH_DETAIL_ACQUIRE_MS, CDB_HEALTH_DETAIL_QUERY_MS,
                                               &qerr);
    if (conn) {
        if (cdb__monitor_json(cdb_pool_conn_pg(conn), "SELECT pg_database_size(current_database())::text",
                              0, NULL, &size, &qerr) < 0)
            size = NULL;
        cdb__monitor_release(svc, conn);
    }
    json_t *o;
    if (json_is_integer(size)) {
        o = json_pack("{s:O}", "size_bytes", size);
    } else {
        verdict_add(v, CDB_HEALTH_DEGRADED, "database: size not readable (%s)", cdb_err_name(qerr.code));
        o = json_pack("{s:n,s:s}", "size_bytes", "error", cdb_err_name(qerr.code));
    }
    json_decref(size);
    cdb_error_destroy(&qerr);
    return o;
}

static int resource_report(cdb_service *svc, json_t **out, cdb_error *err)
{
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *o = NULL;
    int rc = -1;
    if (!v.reasons) {
        rc = cdb_error_oom(err);
        goto out;
    }
    json_t *process = process_json(&v);
    json_t *disks = json_pack("[o,o]", disk_json(&v, "var_dir", svc->cfg->var_dir),
                              disk_json(&v, "backup_dir", svc->cfg->backup_dir));
    json_t *database = database_json(svc, &v);
    o = json_pack("{s:o?,s:o?,s:o?}", "process", process, "disks", disks, "database", database);
    if (!o || !process || !disks || !database) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = verdict_finish(&v, o, err)) < 0)
        goto out;
    *out = o;
    o = NULL;
out:
    json_decref(v.reasons);
    json_decref(o);
    return rc;
}

/* ---- entry points ---- */

typedef int (*report_fn)(cdb_service *svc, json_t **out, cdb_error *err);

static int checked(cdb_service *svc, const cdb_principal *caller, report_fn fn, json_t **out,
                   cdb_error *err)
{
    *out = NULL;
    int rc = cdb__monitor_require_admin(caller, err);
    return rc < 0 ? rc : fn(svc, out, err);
}

int cdb_health_connection(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return checked(svc, caller, connection_report, out, err);
}

int cdb_health_query(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return checked(svc, caller, query_report, out, err);
}

int cdb_health_resource(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return checked(svc, caller, resource_report, out, err);
}

static int detailed_report(cdb_service *svc, json_t **out, cdb_error *err)
{
    static const struct { const char *name; report_fn fn; } parts[] = {
        {"connection", connection_report}, {"query", query_report}, {"resource", resource_report}};
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *o = json_object();
    int rc = 0;
    if (!v.reasons || !o) {
        rc = cdb_error_oom(err);
        goto out;
    }
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        json_t *part = NULL;
        if ((rc = parts[i].fn(svc, &part, err)) < 0)
            goto out;
        const char *h = json_string_value(json_object_get(part, "health"));
        cdb_health_status level = h && strcmp(h, "unhealthy") == 0 ? CDB_HEALTH_DOWN
                                  : h && strcmp(h, "degraded") == 0 ? CDB_HEALTH_DEGRADED
                                                                    : CDB_HEALTH_UP;
        size_t j;
        json_t *r;
        json_array_foreach(json_object_get(part, "reasons"), j, r)
            verdict_add(&v, level, "%s: %s", parts[i].name, json_string_value(r));
        if (level > v.level)
            v.level = level;
        if (json_object_set_new(o, parts[i].name, part) < 0) {
            rc = cdb_error_oom(err);
            goto out;
        }
    }
    if ((rc = verdict_finish(&v, o, err)) < 0)
        goto out;
    *out = o;
    o = NULL;
out:
    json_decref(v.reasons);
    json_decref(o);
    return rc;
}

int cdb_health_detailed(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    return checked(svc, caller, detailed_report, out, err);
}
