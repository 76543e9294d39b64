/*
 * leases_end.c - the end of a connection lease (coredb/leases.h): release
 * by its holder or an admin, and the reaper that ends expired leases and
 * those whose instance is gone.
 *
 * Ending is two transactions with the sessions killed between them:
 * claim the row (state 'releasing', so one ender wins) and make the role
 * NOLOGIN, commit (no new session can start from here), end every session
 * of the role, then REASSIGN/DROP OWNED, DROP ROLE and mark the row
 * released with its audit entry, commit. A crash in between leaves a
 * 'releasing' row the reaper finishes 30 s later.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/dbauth_internal.h"
#include "management/jobs.h"
#include "management/leases_internal.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/reserved.h"
#include "store/txn.h"

/* $1 id, $2 caller's user id or NULL (admin / reaper), $3 service_name or NULL. */
static const char CLAIM_SQL[] =
    "UPDATE coredb.leases SET state = 'releasing', released_at = now()"
    " WHERE id::text = $1 AND ($2::text IS NULL OR user_id::text = $2)"
    " AND ($3::text IS NULL OR service_name = $3)"
    " AND ((state = 'active' AND ($4 = 'reap' OR expires_at > now()))"
    "      OR ($4 = 'reap' AND state = 'releasing'))"
    " RETURNING role_name, (extract(epoch FROM now() - created_at) * 1000)::bigint";

static const char KILL_SQL[] =
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = $1";

/*
 * Ends lease id on conn. reason: "release" (the holder or an admin: only a
 * live lease) or "reap" (also an expired or half-released one). NOT_FOUND
 * when there is nothing to end. *duration_ms: the lease's age.
 */
/*
 * Ends the role's sessions on each server of DATABASE_READ_URLS, on a
 * connection of its own. A replica that cannot be reached is logged and
 * skipped: the role is NOLOGIN there too (by replication), its lease row
 * stops binding it to a user, and DROP ROLE takes its rights.
 */
static void kill_on_replicas(const cdb_config *cfg, const char *role)
{
    if (!cfg || !cfg->database_read_urls || !*cfg->database_read_urls)
        return;
    char *list = strdup(cfg->database_read_urls), *save = NULL;
    for (char *url = list ? strtok_r(list, ",", &save) : NULL; url; url = strtok_r(NULL, ",", &save)) {
        cdb_error err;
        cdb_error_init(&err);
        cdb_pg_settings s = {.conninfo = url, .sslmode = cfg->db_sslmode, .connect_timeout_s = 5,
                             .statement_timeout_ms = 10000};
        PGconn *conn = cdb_pg_connect(&s, &err);
        const char *kp[] = {role};
        if (!conn || cdb_pg_exec(conn, KILL_SQL, 1, kp, NULL, &err) < 0)
            cdb_log_warn("lease.replica_sessions", "could not end the sessions of %s on a read replica: %s", role,
                         err.message);
        if (conn)
            PQfinish(conn);
        cdb_error_destroy(&err);
    }
    free(list);
}

static int end_lease(const cdb_config *cfg, PGconn *conn, const cdb_principal *who, const char *id, const char *user_id,
                     const char *service_name, const char *reason, long long *duration_ms, cdb_error *err)
{
    PGresult *res = NULL, *killed = NULL;
    char role[128];
    int rc;
    const char *params[] = {id, user_id, service_name, reason};

    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = cdb_pg_exec(conn, CLAIM_SQL, 4, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1 || strlen(PQgetvalue(res, 0, 0)) >= sizeof role) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
        goto out;
    }
    snprintf(role, sizeof role, "%s", PQgetvalue(res, 0, 0));
    *duration_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    /* role is ours (prefix + hex, checked by the table): quoted without escaping */
    bool exists = true;
    {
        PGresult *r2 = NULL;
        const char *p2[] = {role};
        if ((rc = cdb_pg_exec(conn, "SELECT 1 FROM pg_roles WHERE rolname = $1", 1, p2, &r2, err)) < 0)
            goto out;
        exists = PQntuples(r2) == 1;
        PQclear(r2);
    }
    if (exists && (rc = cdb__dbauth_run(conn, "change roles (ALTER ROLE)", err, "ALTER ROLE \"%s\" NOLOGIN", role)) < 0)
        goto out;
    if ((rc = cdb_txn_commit(conn, err)) < 0)
        goto out;

    const char *kp[] = {role};
    if ((rc = cdb__dbauth_privilege_error(cdb_pg_exec(conn, KILL_SQL, 1, kp, &killed, err),
                                          "end other sessions (pg_terminate_backend)", err)) < 0)
        goto out;
    kill_on_replicas(cfg, role);

    if ((rc = cdb_txn_begin(conn, err)) < 0)
        goto out;
    if (exists && ((rc = cdb__dbauth_run(conn, "reassign objects (REASSIGN OWNED)", err,
                                         "REASSIGN OWNED BY \"%s\" TO CURRENT_USER", role)) < 0 ||
                   (rc = cdb__dbauth_run(conn, "drop objects (DROP OWNED)", err, "DROP OWNED BY \"%s\"", role)) < 0 ||
                   (rc = cdb__dbauth_run(conn, "drop roles (DROP ROLE)", err, "DROP ROLE \"%s\"", role)) < 0))
        goto out;
    const char *up[] = {id, strcmp(reason, "reap") == 0 ? "expired" : "released"};
    if ((rc = cdb_pg_exec(conn, "UPDATE coredb.leases SET state = $2, released_at = now() WHERE id::text = $1", 2,
                          up, NULL, err)) < 0)
        goto out;
    json_t *audit = json_pack("{s:s, s:s, s:s, s:I}", "reason", strcmp(reason, "reap") == 0 ? "expired" : "released",
                              "role_name", role, "sessions_ended", killed ? PQgetvalue(killed, 0, 0) : "0",
                              "duration_ms", (json_int_t)*duration_ms);
    if (!audit) {
        rc = cdb_error_oom(err);
        goto out;
    }
    rc = cdb_audit_record_in(conn, who, "lease.release", id, audit, err);
    json_decref(audit);
    if (rc < 0 || (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb_log_info("lease.ended", "lease %s (%s) %s, role dropped, %s sessions ended", id, role,
                 strcmp(reason, "reap") == 0 ? "expired" : "released", killed ? PQgetvalue(killed, 0, 0) : "0");
out:
    if (rc < 0 && PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(cdb_pg_query(conn, "ROLLBACK"));
    PQclear(res);
    PQclear(killed);
    return rc;
}

int cdb_lease_release(cdb_service *svc, const cdb_principal *caller, const json_t *request, json_t **out,
                      cdb_error *err)
{
    static const char *const fields[] = {"connection_id", "service_name", NULL};
    cdb_pool_conn *own = NULL, *pc = NULL;
    cdb_error ignored;
    char id[37];
    const char *service_name = NULL;
    json_t *idv = json_is_object(request) ? json_object_get(request, "connection_id") : NULL;
    const char *target = json_is_string(idv) && json_string_length(idv) < 64 ? json_string_value(idv) : NULL;
    long long duration_ms = 0;
    bool admin = cdb_principal_is_admin(caller);
    int rc;

    *out = NULL;
    cdb_error_init(&ignored);
    if ((rc = cdb_principal_require(caller, err)) < 0 || (rc = cdb__dbauth_body(request, false, fields, err)) < 0)
        goto out;
    if (!json_is_string(idv)) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "connection_id",
                                  idv ? "connection_id must be a string" : "connection_id is required");
        goto out;
    }
    json_t *sv = json_object_get(request, "service_name");
    if ((sv || !admin) && (!json_is_string(sv) || json_string_length(sv) == 0 ||
                           json_string_length(sv) > CDB_LEASE_SERVICE_NAME_MAX)) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "service_name",
                                  sv ? "service_name must be a string of 1 to %d characters" : "service_name is required",
                                  CDB_LEASE_SERVICE_NAME_MAX);
        goto out;
    }
    service_name = sv ? json_string_value(sv) : NULL;
    if (!cdb_uuid_norm(json_string_value(idv), id)) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such connection lease");
        goto out;
    }
    /* the lease's own connection when it is here and idle: a full pool cannot block its release */
    if (!(own = cdb_reserved_checkout(id, admin ? NULL : caller->user_id, &ignored)) &&
        !(pc = cdb_pool_acquire(svc->pool, 0, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = end_lease(svc->cfg, cdb_pool_conn_pg(own ? own : pc), caller, id, admin ? NULL : caller->user_id, service_name,
                        "release", &duration_ms, err)) < 0)
        goto out;
    cdb__metrics_inc(CDB_M_LEASE_RELEASES);
    if (!(*out = json_pack("{s:s, s:s, s:I}", "status", "released", "connection_id", id, "duration_ms",
                           (json_int_t)duration_ms)))
        rc = cdb_error_oom(err);
out:
    if (own) {
        if (rc == 0)
            cdb_reserved_release(svc->pool, id);   /* in use by us: our checkin gives it back */
        cdb_reserved_checkin(svc->pool, id);
    } else if (rc == 0) {
        cdb_reserved_release(svc->pool, id);
    }
    cdb_txn_release(svc->pool, pc);
    cdb__admin_audit_failure(svc, caller, "lease.release", target, request, rc, err);
    cdb_error_destroy(&ignored);
    return rc;
}

/* ---- the reaper ---- */

/*
 * Leases to end: expired ones, live ones whose user is gone, deactivated or
 * no longer has the role the lease was granted under (a lease must not
 * outlive the rights it was cut from: the users API ends sessions on those
 * changes, the reaper ends leases within its tick), live ones whose
 * reserved connection's backend is gone (its instance crashed or lost it),
 * and releases that stopped half-way more than 30 s ago. A backend whose start time is hidden
 * (another login's, without pg_read_all_stats) counts as alive: a lease is
 * never ended on a guess.
 */
static const char DUE_SQL[] =
    "SELECT l.id::text FROM coredb.leases l"
    " WHERE (l.state = 'active' AND (l.expires_at <= now() OR NOT EXISTS ("
    "   SELECT 1 FROM public.users u WHERE u.user_id = l.user_id AND u.is_active AND u.role = l.app_role)"
    "  OR NOT EXISTS ("
    "   SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid"
    "    AND (a.backend_start = l.backend_start OR a.backend_start IS NULL))))"
    "  OR (l.state = 'releasing' AND l.released_at < now() - interval '30 seconds')"
    " ORDER BY l.expires_at LIMIT 100";

static const char LIVE_SQL[] =
    "SELECT id::text FROM coredb.leases WHERE id::text = ANY($1::text[]) AND state = 'active' AND expires_at > now()";

/* Gives back this process's reserved connections whose lease ended (here or elsewhere). */
static int sweep_local(cdb_service *svc, PGconn *conn, cdb_error *err)
{
    static char ids[CDB_RESERVED_MAX][37];   /* job thread only */
    PGresult *res = NULL;
    int n = cdb_reserved_ids(ids, CDB_RESERVED_MAX), rc = 0;
    if (n == 0)
        return 0;
    size_t cap = (size_t)n * 38 + 3;
    char *arr = malloc(cap);
    if (!arr)
        return cdb_error_oom(err);
    size_t len = 0;
    arr[len++] = '{';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(arr + len, cap - len, "%s%s", i ? "," : "", ids[i]);
    snprintf(arr + len, cap - len, "}");
    const char *params[] = {arr};
    if ((rc = cdb_pg_exec(conn, LIVE_SQL, 1, params, &res, err)) < 0)
        goto out;
    for (int i = 0; i < n; i++) {
        bool live = false;
        for (int j = 0; j < PQntuples(res) && !live; j++)
            live = strcmp(PQgetvalue(res, j, 0), ids[i]) == 0;
        if (!live && cdb_reserved_release(svc->pool, ids[i]))
            cdb_log_info("lease.connection_returned", "lease %s ended: its pooled connection is back in the pool",
                         ids[i]);
    }
out:
    PQclear(res);
    free(arr);
    return rc;
}

int cdb_lease_reap(cdb_service *svc, int *ended, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGresult *due = NULL;
    int rc = 0;

    *ended = 0;
    if (!svc->pool)
        return 0;
    /* a short wait: a full pool only delays the reaper to its next tick */
    if (!(pc = cdb_pool_acquire(svc->pool, cdb_mono_ms() + 500, err))) {
        rc = err->code == CDB_ERR_POOL_EXHAUSTED ? 0 : err->code;
        if (rc == 0)
            cdb_error_destroy(err);
        goto out;
    }
    PGconn *conn = cdb_pool_conn_pg(pc);
    if ((rc = cdb_pg_exec(conn, DUE_SQL, 0, NULL, &due, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(due); i++) {
        cdb_error one;
        cdb_error_init(&one);
        long long ms = 0;
        if (end_lease(svc->cfg, conn, &cdb__lease_reaper, PQgetvalue(due, i, 0), NULL, NULL, "reap", &ms, &one) == 0) {
            (*ended)++;
            cdb__metrics_inc(CDB_M_LEASE_EXPIRIES);
        } else if (one.code != CDB_ERR_NOT_FOUND) {
            cdb_log_warn("lease.reap_failed", "lease %s: %s", PQgetvalue(due, i, 0), one.message);
        }
        cdb_error_destroy(&one);
    }
    rc = sweep_local(svc, conn, err);
out:
    PQclear(due);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

static int reap_leases(void *arg, cdb_error *err)
{
    int ended = 0;
    /* the audit entries of what the reaper ends name it as their actor */
    cdb_audit_origin_set(NULL, NULL, "reaper");
    int rc = cdb_lease_reap(arg, &ended, err);
    cdb_audit_origin_clear();
    if (rc == 0 && ended > 0)
        cdb_log_info("jobs.leases_reaped", "ended %d expired or orphaned connection leases", ended);
    return rc;
}

int cdb_lease_register_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    return cdb_jobs_add(jobs, "reap_leases", 1, reap_leases, svc);
}
