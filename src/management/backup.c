/*
 * backup.c - cdb_backup_create, _list, _cleanup and _archive_path
 * (coredb/backup.h). Verification is backup_verify.c; the child processes
 * backup_proc.c; the files of BACKUP_DIR backup_files.c.
 *
 * Consistency. One connection holds a REPEATABLE READ transaction open for
 * the whole dump: it exports its snapshot, counts every table's rows in it,
 * and pg_dump runs with --snapshot, so the manifest's counts are exactly
 * the archive's.
 *
 * Serialization. A process mutex orders the creates (and cleanups) of one
 * process; a session advisory lock, taken before the transaction starts,
 * orders those of several instances sharing BACKUP_DIR.
 */
#include "management/backup_internal.h"

#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "coredb/audit.h"
#include "coredb/log.h"
#include "store/pg.h"

/* pg_advisory_lock key of backups ("cdbbkup") */
#define LOCK_SQL "SELECT pg_advisory_lock(27975093318018416)"
#define UNLOCK_SQL "SELECT pg_advisory_unlock(27975093318018416)"
#define DUMP_TIMEOUT_S 3600

static pthread_mutex_t backup_mutex = PTHREAD_MUTEX_INITIALIZER;

static const char MIGRATION_SQL[] =
    "SELECT CASE WHEN to_regclass('coredb.schema_migrations') IS NULL THEN NULL"
    " ELSE (SELECT max(version) FROM coredb.schema_migrations) END";

/* coredb-YYYYMMDDTHHMMSSmmmZ of now, one not used yet in BACKUP_DIR. */
static char *new_name(const cdb_service *svc, char iso[32])
{
    for (int attempt = 0; attempt < 100; attempt++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char stamp[24];
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
        int ms = (int)(ts.tv_nsec / 1000000);
        char *name = cdb_xasprintf("coredb-%s%03dZ", stamp, ms);
        char *path = name ? cdb__backup_path(svc, name, ".json") : NULL;
        char *dump = name ? cdb__backup_path(svc, name, ".dump") : NULL;
        bool taken = !path || !dump || access(path, F_OK) == 0 || access(dump, F_OK) == 0;
        free(path);
        free(dump);
        if (name && !taken) {
            strftime(iso, 32, "%Y-%m-%dT%H:%M:%S", &tm);
            snprintf(iso + strlen(iso), 32 - strlen(iso), ".%03dZ", ms);
            return name;
        }
        free(name);
        if (!name)
            return NULL;
        nanosleep(&(struct timespec){0, 2 * 1000 * 1000}, NULL);
    }
    return NULL;
}

/* The dump itself, with the lock held and the snapshot's transaction open. */
static int dump(cdb_service *svc, PGconn *conn, json_t **out, cdb_error *err)
{
    int64_t started = cdb_mono_ms();
    PGresult *res = NULL;
    char *name = NULL, *tmp = NULL, *plain = NULL, *final = NULL, *mtmp = NULL, *mfinal = NULL, *snapshot = NULL;
    json_t *tables = json_object(), *manifest = NULL;
    char iso[32];
    int rc;

    if (!tables) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT pg_export_snapshot(), current_setting('server_version')", 0, NULL,
                             &res, err)) < 0)
        goto out;
    snapshot = cdb_xasprintf("--snapshot=%s", PQgetvalue(res, 0, 0));
    char *server_version = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    res = NULL;
    manifest = json_object();
    if (!snapshot || !server_version || !manifest ||
        json_object_set_new(manifest, "server_version", json_string(server_version)) < 0) {
        free(server_version);
        rc = cdb_error_oom(err);
        goto out;
    }
    free(server_version);
    if ((rc = cdb_pg_exec(conn, MIGRATION_SQL, 0, NULL, &res, err)) < 0)
        goto out;
    json_object_set_new(manifest, "migration_version",
                        PQgetisnull(res, 0, 0) ? json_null() : json_string(PQgetvalue(res, 0, 0)));
    if ((rc = cdb__backup_count_rows(conn, tables, err)) < 0)
        goto out;

    if (!(name = new_name(svc, iso)) || !(tmp = cdb_xasprintf("%s/.%s.dump.tmp", svc->cfg->backup_dir, name)) ||
        !(final = cdb__backup_path(svc, name, ".dump")) ||
        !(mtmp = cdb_xasprintf("%s/.%s.json.tmp", svc->cfg->backup_dir, name)) ||
        !(mfinal = cdb__backup_path(svc, name, ".json"))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    bool encrypt = svc->cfg->backup_encrypt;
    if (encrypt && !(plain = cdb_xasprintf("%s/.%s.plain.tmp", svc->cfg->backup_dir, name))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *args[] = {"--format=custom", "--no-password", snapshot, "-f", encrypt ? plain : tmp, NULL};
    if ((rc = cdb__backup_run(svc, "pg_dump", args, NULL, DUMP_TIMEOUT_S, err)) < 0)
        goto out;
    cdb_pg_exec(conn, "COMMIT", 0, NULL, NULL, NULL);
    /* the checksum is of the file as stored: the encrypted one when encrypting */
    if (encrypt && (rc = cdb__backup_encrypt(svc, plain, tmp, err)) < 0)
        goto out;

    char hex[65];
    long long size = 0;
    if (cdb__backup_sha256(tmp, hex, &size) < 0) {
        rc = cdb__backup_storage_error(err, "reading the new archive", tmp, errno);
        goto out;
    }
    json_object_set_new(manifest, "name", json_string(name));
    json_object_set_new(manifest, "file", json_sprintf("%s.dump", name));
    json_object_set_new(manifest, "size_bytes", json_integer(size));
    json_object_set_new(manifest, "sha256", json_string(hex));
    json_object_set_new(manifest, "created_at", json_string(iso));
    json_object_set_new(manifest, "duration_ms", json_integer(cdb_mono_ms() - started));
    json_object_set_new(manifest, "format", json_string(CDB_BACKUP_FORMAT));
    json_object_set_new(manifest, "encrypted", json_boolean(encrypt));
    json_object_set(manifest, "tables", tables);
    if (json_object_size(manifest) != 11) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* archive first, manifest last: a listed backup always has its whole file */
    if (json_dump_file(manifest, mtmp, JSON_INDENT(2) | JSON_SORT_KEYS) < 0 || chmod(mtmp, 0600) < 0 ||
        rename(tmp, final) < 0 || rename(mtmp, mfinal) < 0) {
        rc = cdb__backup_storage_error(err, "writing the manifest", mfinal, errno);
        unlink(final);
        goto out;
    }
    cdb_log_info("backup.created", "%s: %lld bytes in %lld ms", name, size, (long long)(cdb_mono_ms() - started));
    *out = manifest;
    manifest = NULL;

out:
    if (plain)
        unlink(plain);
    free(plain);
    if (rc < 0) {
        cdb_pg_exec(conn, "ROLLBACK", 0, NULL, NULL, NULL);
        if (tmp)
            unlink(tmp);
        if (mtmp)
            unlink(mtmp);
    }
    PQclear(res);
    json_decref(tables);
    json_decref(manifest);
    free(snapshot);
    free(name);
    free(tmp);
    free(final);
    free(mtmp);
    free(mfinal);
    return rc;
}

static int create_backup(cdb_service *svc, json_t **out, cdb_error *err)
{
    *out = NULL;
    int64_t started_us = cdb_mono_us();
    int rc = cdb__backup_dir(svc, err);
    if (rc < 0)
        goto out;
    pthread_mutex_lock(&backup_mutex);
    PGconn *conn = PQconnectdb(svc->conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "backup: cannot connect to PostgreSQL");
    } else if ((rc = cdb_pg_exec(conn, "SET lock_timeout = '30min'", 0, NULL, NULL, err)) == 0 &&
               (rc = cdb_pg_exec(conn, LOCK_SQL, 0, NULL, NULL, err)) == 0) {
        rc = dump(svc, conn, out, err);
        cdb_pg_exec(conn, UNLOCK_SQL, 0, NULL, NULL, NULL);
    }
    PQfinish(conn);
    pthread_mutex_unlock(&backup_mutex);
out:
    cdb__metrics_op(CDB_MOP_BACKUP, NULL, rc == 0, cdb_mono_us() - started_us);
    return rc;
}

int cdb_backup_list(cdb_service *svc, json_t **out, cdb_error *err)
{
    json_t *list = NULL;
    *out = NULL;
    int rc = cdb__backup_manifests(svc, &list, err);
    if (rc == 0 && !(*out = json_pack("{s:o}", "backups", list)))
        rc = cdb_error_oom(err);
    return rc;
}

/* created_at as seconds since the epoch; 0 (very old) when unreadable. */
static time_t created_of(json_t *manifest)
{
    const char *s = json_string_value(json_object_get(manifest, "created_at"));
    struct tm tm = {0};
    if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
        return 0;
    return timegm(&tm);
}

static int cleanup(cdb_service *svc, json_t **out, cdb_error *err)
{
    json_t *list = NULL, *removed = json_array(), *kept = json_array();
    *out = NULL;
    pthread_mutex_lock(&backup_mutex);
    int rc = removed && kept ? cdb__backup_manifests(svc, &list, err) : cdb_error_oom(err);
    if (rc < 0)
        goto out;
    time_t cutoff = time(NULL) - (time_t)svc->cfg->backup_retention_days * 86400;
    size_t keep_count = (size_t)svc->cfg->backup_retention_count;
    bool have_valid = false;   /* the newest intact backup is kept, whatever its age */
    size_t i;
    json_t *m;
    json_array_foreach(list, i, m) {
        const char *name = json_string_value(json_object_get(m, "name"));
        bool keep = i < keep_count || created_of(m) >= cutoff;
        if (!keep && !have_valid && cdb__backup_intact(svc, m))
            keep = true;
        if (!have_valid && keep && cdb__backup_intact(svc, m))
            have_valid = true;
        if (keep) {
            json_array_append_new(kept, json_string(name));
            continue;
        }
        char *dump = cdb__backup_path(svc, name, ".dump");
        char *man = cdb__backup_path(svc, name, ".json");
        if (!dump || !man || (unlink(dump) < 0 && errno != ENOENT) || unlink(man) < 0) {
            free(dump);
            free(man);
            rc = cdb__backup_storage_error(err, "removing a backup", name, errno);
            goto out;
        }
        free(dump);
        free(man);
        cdb_log_info("backup.removed", "%s (retention)", name);
        json_array_append_new(removed, json_string(name));
    }
    if (!(*out = json_pack("{s:O, s:O}", "removed", removed, "kept", kept)))
        rc = cdb_error_oom(err);

out:
    pthread_mutex_unlock(&backup_mutex);
    json_decref(list);
    json_decref(removed);
    json_decref(kept);
    return rc;
}

int cdb_backup_archive_path(cdb_service *svc, const char *name, char **path, json_t **manifest,
                            cdb_error *err)
{
    json_t *m = NULL;
    *path = NULL;
    if (manifest)
        *manifest = NULL;
    int rc = cdb__backup_manifest(svc, name, &m, err);
    if (rc < 0)
        return rc;
    if (!(*path = cdb__backup_path(svc, name, ".dump"))) {
        json_decref(m);
        return cdb_error_oom(err);
    }
    if (access(*path, R_OK) != 0) {
        free(*path);
        *path = NULL;
        json_decref(m);
        return cdb_error_set(err, CDB_ERR_BACKUP_INVALID, "The archive of %s is missing", name);
    }
    if (manifest)
        *manifest = m;
    else
        json_decref(m);
    return 0;
}

int cdb_backup_create(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    int rc = create_backup(svc, out, err);
    cdb_error outcome = {.code = (cdb_err)rc};
    cdb_audit_record(svc, caller, "backup.create", rc == 0 ? json_string_value(json_object_get(*out, "name")) : NULL,
                     NULL, &outcome);
    return rc;
}

int cdb_backup_cleanup(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    int rc = cleanup(svc, out, err);
    cdb_error outcome = {.code = (cdb_err)rc};
    json_t *params = rc == 0 ? json_pack("{s:O}", "removed", json_object_get(*out, "removed")) : NULL;
    cdb_audit_record(svc, caller, "backup.cleanup", NULL, params, &outcome);
    json_decref(params);
    return rc;
}
