/*
 * migrate_runs.c - migration runs in the background (coredb/migrate_runs.h).
 *
 * The lock is taken on the run's own connection by the HTTP worker before
 * it answers 202, and that connection is handed to a detached thread that
 * keeps it (session advisory locks stack, so the engine's own lock/unlock
 * per call nests inside ours) until the run is over. A second run therefore
 * fails at once with MIGRATION_LOCKED, wherever it comes from.
 *
 * State: one row of coredb.migration_runs per run, written on that
 * connection outside any migration's transaction, after each file.
 */
#include "coredb/migrate_runs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "coredb/migrate.h"
#include "coredb/role.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/migrate_internal.h"
#include "security/audit_internal.h"
#include "security/service_state.h"
#include "store/catalog.h"
#include "store/pg.h"
#include "store/qcache.h"

#define RUN_JSON_SQL                                                                          \
    "SELECT json_build_object('migration_id', id, 'status', status, 'kind', kind,"            \
    " 'dry_run', dry_run, 'target_version', target_version,"                                   \
    " 'progress', json_build_object('current_step', current_step, 'total_steps', total_steps," \
    "   'estimated_remaining', estimated_remaining_s),"                                        \
    " 'started_at', to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"  \
    " 'finished_at', to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')," \
    " 'result', result, 'migration_error', error)::text FROM coredb.migration_runs WHERE id = $1::uuid"

typedef struct run_ctx {
    struct run_ctx *next;         /* in the list of active runs */
    cdb_service *svc;
    PGconn *conn;                 /* holds the advisory lock */
    PGcancel *cancel;             /* for conn, made before the thread starts */
    bool stop;                    /* the service is closing (under active_mu) */
    char id[37];
    bool dry_run;
    char *target;                 /* NULL: latest */
    char **versions;              /* the pending files to apply, in order */
    cdb_principal caller;         /* who started it, for the audit log */
    cdb__audit_origin origin;     /* the request that started it */
    int *estimates;               /* seconds each */
    size_t n;
} run_ctx;

/* Runs in progress in this process, so closing a service can stop and wait for its own. */
static pthread_mutex_t active_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t active_cv = PTHREAD_COND_INITIALIZER;
static run_ctx *active;

static void active_add(run_ctx *c)
{
    pthread_mutex_lock(&active_mu);
    c->next = active;
    active = c;
    pthread_mutex_unlock(&active_mu);
}

static void active_remove(run_ctx *c)
{
    pthread_mutex_lock(&active_mu);
    for (run_ctx **p = &active; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_cond_broadcast(&active_cv);
    pthread_mutex_unlock(&active_mu);
}

static bool has_run_of(const cdb_service *svc)
{
    for (run_ctx *c = active; c; c = c->next)
        if (c->svc == svc)
            return true;
    return false;
}

void cdb__migration_runs_stop(cdb_service *svc)
{
    pthread_mutex_lock(&active_mu);
    /* cancel the statement in progress: the file's transaction rolls back and the run ends failed */
    for (run_ctx *c = active; c; c = c->next) {
        if (c->svc != svc)
            continue;
        char buf[256];
        c->stop = true;
        if (c->cancel)
            PQcancel(c->cancel, buf, sizeof buf);
    }
    while (has_run_of(svc))
        pthread_cond_wait(&active_cv, &active_mu);
    pthread_mutex_unlock(&active_mu);
}

static bool stopping(run_ctx *c)
{
    pthread_mutex_lock(&active_mu);
    bool stop = c->stop;
    pthread_mutex_unlock(&active_mu);
    return stop;
}

static void ctx_free(run_ctx *c)
{
    if (!c)
        return;
    if (c->cancel)
        PQfreeCancel(c->cancel);
    for (size_t i = 0; i < c->n; i++)
        free(c->versions[i]);
    free(c->versions);
    free(c->estimates);
    free(c->target);
    if (c->conn)
        PQfinish(c->conn);
    free(c);
}

static int require_admin(const cdb_principal *caller, cdb_error *err)
{
    if (cdb_principal_require(caller, err) < 0)
        return err->code;
    if (!cdb_principal_is_admin(caller))
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "Only an admin may run migrations");
    return 0;
}

static PGconn *run_connect(cdb_service *svc, cdb_error *err)
{
    cdb_pg_settings s = {
        .conninfo = svc->conninfo,
        .sslmode = svc->cfg->embedded ? NULL : svc->cfg->db_sslmode,
        .application_name = "coredb-migration-run",
    };
    return cdb_pg_connect(&s, err);
}

/* Runs sql with params; 0 or an INTERNAL_ERROR naming what. */
static int exec_params(PGconn *conn, const char *sql, int n, const char *const *params, const char *what,
                       cdb_error *err)
{
    PGresult *res = cdb_pg_query_params(conn, sql, n, params);
    ExecStatusType st = PQresultStatus(res);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s failed: %s", what, PQerrorMessage(conn));
    PQclear(res);
    return rc;
}

static int read_run(PGconn *conn, const char *id, json_t **out, cdb_error *err)
{
    const char *p[1] = {id};
    PGresult *res = cdb_pg_query_params(conn, RUN_JSON_SQL, 1, p);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "reading the migration run failed");
    else if (PQntuples(res) != 1)
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No migration run with this id");
    else if (!(*out = json_loads(PQgetvalue(res, 0, 0), 0, NULL)))
        rc = cdb_error_oom(err);
    PQclear(res);
    return rc;
}

/* The reloaded catalog here, NOTIFY for the other instances, every table's cache generation bumped. */
static void refresh_everywhere(cdb_service *svc, PGconn *conn)
{
    cdb_error e;
    cdb_error_init(&e);
    PQclear(cdb_pg_query(conn, "NOTIFY coredb_catalog, 'migration'"));
    if (!svc->catalog)
        return;
    if (cdb_catalog_cache_refresh(svc->catalog, &e) < 0)
        cdb_log_warn("migrate.run", "catalog reload after migration failed: %s", e.message);
    cdb_error_destroy(&e);
    cdb_error_init(&e);
    cdb_catalog *cat = cdb_catalog_cache_get(svc->catalog, &e);
    cdb_error_destroy(&e);
    if (!cat)
        return;
    size_t n = cdb_catalog_table_count(cat, CDB_ROLE_ADMIN);
    for (size_t i = 0; i < n && svc->qcache; i++)
        cdb_qcache_bump(svc->qcache, cdb_catalog_table_at(cat, CDB_ROLE_ADMIN, i)->name);
    cdb_catalog_unref(cat);
}

static void record_progress(run_ctx *c, size_t step)
{
    int remaining = 0;
    for (size_t i = step; i < c->n; i++)
        remaining += c->estimates[i];
    char s[24], r[24];
    snprintf(s, sizeof s, "%zu", step);
    snprintf(r, sizeof r, "%d", remaining);
    const char *p[3] = {c->id, s, r};
    cdb_error e;
    cdb_error_init(&e);
    exec_params(c->conn,
                "UPDATE coredb.migration_runs SET current_step = $2::int, estimated_remaining_s = $3::int"
                " WHERE id = $1::uuid", 3, p, "recording progress", &e);
    cdb_error_destroy(&e);
}

/* {code, message, file?, version?, statement?}: what PostgreSQL said and where, no stack. */
static json_t *error_json(const cdb_error *e)
{
    json_t *o = json_pack("{s:s, s:s}", "code", cdb_err_name(e->code), "message", e->message);
    if (o && e->details)
        json_object_update(o, e->details);
    return o;
}

static void finish(run_ctx *c, int rc, json_t *result, const cdb_error *e)
{
    char *res = result ? json_dumps(result, JSON_COMPACT) : NULL;
    json_t *ej = rc < 0 ? error_json(e) : NULL;
    char *err = ej ? json_dumps(ej, JSON_COMPACT) : NULL;
    const char *p[4] = {c->id, rc < 0 ? "failed" : "completed", res, err};
    cdb_error x;
    cdb_error_init(&x);
    if (exec_params(c->conn,
                    "UPDATE coredb.migration_runs SET status = $2, result = $3::jsonb, error = $4::jsonb,"
                    " finished_at = now(), estimated_remaining_s = 0,"
                    " current_step = CASE WHEN $2 = 'completed' THEN total_steps ELSE current_step END"
                    " WHERE id = $1::uuid", 4, p, "recording the run's end", &x) < 0)
        cdb_log_error("migrate.run", "run %s: %s", c->id, x.message);
    cdb_error_destroy(&x);
    free(res);
    free(err);
    json_decref(ej);
}

static void *run_thread(void *arg)
{
    run_ctx *c = arg;
    cdb_error e;
    cdb_error_init(&e);
    json_t *result = NULL;
    int rc = 0;
    bool changed = false;
    cdb_migrate_options opt = {.target_version = c->target, .applied_by = "coredb http", .lock_timeout_ms = 1};
    int64_t started_us = cdb_mono_us();
    if (c->dry_run) {
        opt.dry_run = true;
        rc = cdb_migrate_up(c->conn, c->svc->migrations, &opt, &result, &e);
    } else {
        json_t *applied = json_array();
        rc = applied ? 0 : cdb_error_oom(&e);
        for (size_t i = 0; i < c->n && rc == 0; i++) {
            if (stopping(c)) {
                rc = cdb_error_set(&e, CDB_ERR_DATABASE_UNAVAILABLE, "the instance running the migration stopped");
                break;
            }
            record_progress(c, i);
            json_t *one = NULL;
            opt.target_version = c->versions[i];
            rc = cdb_migrate_up(c->conn, c->svc->migrations, &opt, &one, &e);
            if (rc == 0) {
                changed = true;
                json_array_extend(applied, json_object_get(one, "applied"));
            }
            json_decref(one);
        }
        result = applied ? json_pack("{s:o, s:b}", "applied", applied, "dry_run", 0) : NULL;
    }
    if (changed)
        refresh_everywhere(c->svc, c->conn);
    if (!c->dry_run)  /* one run, however many files it applied one by one */
        cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    finish(c, rc, result, &e);
    cdb_log_info("migrate.run", "run %s %s", c->id, rc < 0 ? "failed" : "completed");
    cdb__audit_origin_restore(&c->origin);
    cdb__migrate_audit(c->svc, &c->caller, true,
                       json_pack("{s:s, s:s?, s:b}", "run_id", c->id, "target_version", c->target, "dry_run", c->dry_run),
                       result, rc);
    cdb_audit_origin_clear();
    json_decref(result);
    cdb_error_destroy(&e);
    PQfinish(c->conn);   /* releases the lock */
    c->conn = NULL;
    active_remove(c);    /* after this the service may be closed */
    ctx_free(c);
    return NULL;
}

static bool version_shaped(const char *v)
{
    if (strlen(v) != 12 || v[8] != '_')
        return false;
    for (int i = 0; i < 12; i++)
        if (i != 8 && (v[i] < '0' || v[i] > '9'))
            return false;
    return true;
}

static int parse_request(const json_t *req, const char **target, bool *dry, cdb_error *err)
{
    *target = NULL;
    *dry = false;
    if (!req)
        return 0;
    if (!json_is_object(req))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)req, k, v) {
        if (strcmp(k, "target_version") == 0 && (json_is_null(v) || json_is_string(v))) {
            *target = json_string_value(v);
            if (*target && !version_shaped(*target)) {
                cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "target_version must look like YYYYMMDD_NNN");
                cdb_error_detail(err, "field", json_string("target_version"));
                return err->code;
            }
        } else if (strcmp(k, "dry_run") == 0 && json_is_boolean(v)) {
            *dry = json_is_true(v);
        } else {
            cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "Unknown field or wrong type: %s", k);
            cdb_error_detail(err, "field", json_string(k));
            return err->code;
        }
    }
    return 0;
}

static int take_lock(PGconn *conn, cdb_error *err)
{
    PGresult *res = cdb_pg_query(conn, "SELECT pg_try_advisory_lock(" CDB__MIGRATE_LOCK_KEY ")");
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "taking the migration lock failed");
    else if (PQgetvalue(res, 0, 0)[0] != 't')
        rc = cdb_error_set(err, CDB_ERR_MIGRATION_LOCKED, "Another migration is running");
    PQclear(res);
    return rc;
}

/* The pending files up to target, in order, with their estimates, from the engine's status. */
static int plan(run_ctx *c, cdb_error *err)
{
    json_t *st = NULL;
    int rc = cdb_migrate_status(c->conn, c->svc->migrations, &st, err);
    if (rc < 0)
        return rc;
    json_t *pend = json_object_get(st, "pending_migrations");
    size_t n = json_array_size(pend);
    c->versions = calloc(n ? n : 1, sizeof *c->versions);
    c->estimates = calloc(n ? n : 1, sizeof *c->estimates);
    if (!c->versions || !c->estimates)
        rc = cdb_error_oom(err);
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *m = json_array_get(pend, i);
        const char *v = json_string_value(json_object_get(m, "version"));
        if (!v || (c->target && strcmp(v, c->target) > 0))
            break;
        if (!(c->versions[c->n] = strdup(v))) {
            rc = cdb_error_oom(err);
            break;
        }
        const char *est = json_string_value(json_object_get(m, "estimated_duration"));
        c->estimates[c->n++] = est && atoi(est) > 0 ? atoi(est) : 1;
    }
    json_decref(st);
    return rc;
}

/*
 * A run still "running" whose lock nobody holds lost its instance (killed
 * before it could record the end): run_start takes the lock before the row
 * exists and the thread records the end before releasing it. Marks such
 * runs failed; their file in progress was rolled back with the connection.
 */
static void mark_orphans_failed(PGconn *conn)
{
    PQclear(cdb_pg_query(conn,
        "UPDATE coredb.migration_runs SET status = 'failed', finished_at = now(), estimated_remaining_s = 0,"
        " error = json_build_object('code', 'MIGRATION_FAILED', 'message',"
        "   'the instance running this migration stopped before it ended')"
        " WHERE status = 'running'"));
}

static void reap_orphans(PGconn *conn)
{
    PGresult *res = cdb_pg_query(conn, "SELECT pg_try_advisory_lock(" CDB__MIGRATE_LOCK_KEY ")");
    bool got = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!got)
        return;
    mark_orphans_failed(conn);
    PQclear(cdb_pg_query(conn, "SELECT pg_advisory_unlock(" CDB__MIGRATE_LOCK_KEY ")"));
}

int cdb_migration_run_start(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                            json_t **out, cdb_error *err)
{
    const char *target;
    bool dry;
    *out = NULL;
    if (require_admin(caller, err) < 0)
        return err->code;
    if (parse_request(request, &target, &dry, err) < 0 ||
        (target && !cdb__migration_find(svc->migrations, target) &&
         cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "No migration file has version %s", target) < 0)) {
        cdb__migrate_audit(svc, caller, true, NULL, NULL, err->code);
        return err->code;
    }
    run_ctx *c = calloc(1, sizeof *c);
    if (!c || (target && !(c->target = strdup(target)))) {
        free(c);
        return cdb_error_oom(err);
    }
    c->svc = svc;
    c->dry_run = dry;
    c->caller = *caller;
    cdb__audit_origin_save(&c->origin);
    int rc = (c->conn = run_connect(svc, err)) ? 0 : err->code;
    if (rc == 0)
        rc = cdb_migrate_ensure_history(c->conn, err);
    if (rc == 0)
        rc = take_lock(c->conn, err);
    if (rc == 0) {
        mark_orphans_failed(c->conn);
        rc = plan(c, err);
    }
    if (rc == 0) {
        int remaining = 0;
        for (size_t i = 0; i < c->n; i++)
            remaining += c->estimates[i];
        char total[24], rem[24];
        snprintf(total, sizeof total, "%zu", c->n);
        snprintf(rem, sizeof rem, "%d", remaining);
        const char *p[5] = {dry ? "t" : "f", target, total, rem, caller->user_id};
        PGresult *res = cdb_pg_query_params(c->conn,
            "INSERT INTO coredb.migration_runs (dry_run, target_version, total_steps, estimated_remaining_s,"
            " started_by) VALUES ($1::boolean, $2, $3::int, $4::int, $5) RETURNING id::text", 5, p);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "recording the migration run failed: %s",
                               PQerrorMessage(c->conn));
        else
            snprintf(c->id, sizeof c->id, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    if (rc == 0)
        rc = read_run(c->conn, c->id, out, err);
    pthread_t t;
    pthread_attr_t attr;
    if (rc == 0) {
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        c->cancel = PQgetCancel(c->conn);
        active_add(c);
        if (pthread_create(&t, &attr, run_thread, c) != 0) {
            active_remove(c);
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "could not start the migration thread");
        }
        pthread_attr_destroy(&attr);
    }
    if (rc < 0) {
        cdb__migrate_audit(svc, caller, true, json_pack("{s:s?, s:b}", "target_version", target, "dry_run", dry),
                           NULL, rc);
        if (c->id[0]) {
            const char *p[1] = {c->id};
            PQclear(cdb_pg_query_params(c->conn, "DELETE FROM coredb.migration_runs WHERE id = $1::uuid", 1, p));
        }
        json_decref(*out);
        *out = NULL;
        ctx_free(c);
    }
    return rc;
}

int cdb_migration_run_get(cdb_service *svc, const cdb_principal *caller, const char *id,
                          json_t **out, cdb_error *err)
{
    char norm[37];
    *out = NULL;
    if (require_admin(caller, err) < 0)
        return err->code;
    if (!id || !cdb_uuid_norm(id, norm))
        return cdb_error_set(err, CDB_ERR_NOT_FOUND, "No migration run with this id");
    PGconn *conn = run_connect(svc, err);
    if (!conn)
        return err->code;
    int rc = cdb_migrate_ensure_history(conn, err);
    if (rc == 0)
        rc = read_run(conn, norm, out, err);
    const char *st = rc == 0 ? json_string_value(json_object_get(*out, "status")) : NULL;
    if (st && strcmp(st, "running") == 0) {
        reap_orphans(conn);
        json_decref(*out);
        *out = NULL;
        rc = read_run(conn, norm, out, err);
    }
    PQfinish(conn);
    return rc;
}

int cdb_migration_rollback(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err)
{
    *out = NULL;
    if (require_admin(caller, err) < 0)
        return err->code;
    json_t *steps = json_is_object(request) ? json_object_get(request, "steps") : NULL;
    if (!json_is_object(request) || json_object_size(request) != 1 || !json_is_integer(steps)
        || json_integer_value(steps) < 1 || json_integer_value(steps) > 100) {
        cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be {\"steps\": 1..100}");
        cdb_error_detail(err, "field", json_string("steps"));
        cdb__migrate_audit(svc, caller, false, NULL, NULL, err->code);
        return err->code;
    }
    PGconn *conn = run_connect(svc, err);
    if (!conn) {
        cdb__migrate_audit(svc, caller, false, NULL, NULL, err->code);
        return err->code;
    }
    cdb_migrate_options opt = {.applied_by = "coredb http", .lock_timeout_ms = 1};
    int64_t started_us = cdb_mono_us();
    int rc = cdb_migrate_down(conn, svc->migrations, (int)json_integer_value(steps), &opt, out, err);
    cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    if (rc == 0)
        refresh_everywhere(svc, conn);
    cdb__migrate_audit(svc, caller, false, json_pack("{s:I}", "steps", json_integer_value(steps)), *out, rc);
    PQfinish(conn);
    return rc;
}

void cdb__migrate_audit(cdb_service *svc, const cdb_principal *who, bool up, json_t *params,
                        const json_t *result, int rc)
{
    json_t *versions = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(result, up ? "applied" : "rolled_back"), i, m)
        json_array_append(versions, json_object_get(m, "version"));
    if (params && versions)
        json_object_set_new(params, "versions", versions);
    else
        json_decref(versions);
    cdb_error outcome = {.code = (cdb_err)rc};
    cdb_audit_record(svc, who, up ? "migration.up" : "migration.down", NULL, params, &outcome);
    json_decref(params);
}
