/*
 * backup_job.c - the scheduled backup (management/jobs.h): every
 * BACKUP_INTERVAL, create + verify + cleanup.
 *
 * Several instances share one database and BACKUP_DIR, and each has the
 * job. One run per interval across all of them: a run first takes a
 * session advisory lock without waiting (another instance busy with it:
 * skip), then looks at the newest backup and skips when it is younger than
 * three quarters of the interval (another instance already made this
 * interval's backup; the quarter absorbs the job thread's tick).
 */
#include "management/jobs.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "management/backup_internal.h"

/* pg_try_advisory_lock key of the schedule ("cdbbsch") */
#define TRY_LOCK_SQL "SELECT pg_try_advisory_lock(27975093318280040)"

/* Milliseconds since the newest backup was made, or -1 when there is none. */
static long long newest_age_ms(cdb_service *svc)
{
    json_t *list = NULL;
    cdb_error ignore;
    cdb_error_init(&ignore);
    long long age = -1;
    if (cdb__backup_manifests(svc, &list, &ignore) == 0 && json_array_size(list) > 0) {
        const char *s = json_string_value(json_object_get(json_array_get(list, 0), "created_at"));
        struct tm tm = {0};
        char *rest = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
        if (rest) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            long long ms = (long long)timegm(&tm) * 1000 + (rest[0] == '.' ? atoi(rest + 1) : 0);
            age = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 - ms;
        }
    }
    json_decref(list);
    cdb_error_destroy(&ignore);
    return age;
}

static int run_scheduled(void *arg, cdb_error *err)
{
    cdb_service *svc = arg;
    json_t *made = NULL, *checked = NULL, *cleaned = NULL;
    int rc = 0;
    /* recorded in the audit log with the actor "schedule" */
    cdb_principal schedule = {.role = CDB_ROLE_ADMIN};
    cdb_audit_origin_set(NULL, NULL, "schedule");
    PGconn *conn = PQconnectdb(svc->conninfo);
    PGresult *res = PQstatus(conn) == CONNECTION_OK ? PQexec(conn, TRY_LOCK_SQL) : NULL;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "scheduled backup: cannot reach PostgreSQL");
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        goto out;   /* another instance is running it */
    long long age = newest_age_ms(svc);
    if (age >= 0 && age < (long long)svc->cfg->backup_interval_s * 750)
        goto out;   /* this interval's backup exists */
    if ((rc = cdb_backup_create(svc, &schedule, &made, err)) < 0)
        goto out;
    const char *name = json_string_value(json_object_get(made, "name"));
    if ((rc = cdb_backup_verify(svc, &schedule, name, &checked, err)) < 0)
        goto out;
    if ((rc = cdb_backup_cleanup(svc, &schedule, &cleaned, err)) < 0)
        goto out;
    cdb_log_info("backup.scheduled", "%s created and verified; %zu removed by retention", name,
                 json_array_size(json_object_get(cleaned, "removed")));

out:
    PQclear(res);
    PQfinish(conn);   /* ends the session: the advisory lock goes with it */
    json_decref(made);
    json_decref(checked);
    json_decref(cleaned);
    cdb_audit_origin_clear();
    return rc;
}

int cdb_management_register_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    if (svc->cfg->backup_interval_s <= 0)
        return 0;
    return cdb_jobs_add(jobs, "scheduled_backup", svc->cfg->backup_interval_s, run_scheduled, svc);
}
