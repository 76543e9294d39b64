/*
 * restore.c - restoring a backup archive into the live database
 * (coredb/restore.h), so that a failed restore leaves the database exactly
 * as it was.
 *
 * The swap, and why this one. Two designs cannot half-apply:
 *   (a) restore into a new database, then ALTER DATABASE ... RENAME the live
 *       one away and the new one in;
 *   (b) prove the archive restores cleanly into a scratch database, then
 *       restore it into the live database with pg_restore
 *       --single-transaction --clean --if-exists --exit-on-error.
 * (a) needs no session at all on either database while it renames, which
 * means draining every instance's pool, its catalog listener and the
 * sessions of other applications, and it changes the database's OID, its
 * database-level settings and grants (ALTER DATABASE ... SET, GRANT CONNECT)
 * unless they are copied by hand; a crash between the two renames leaves
 * no database under the configured name. (b) keeps the database itself:
 * the whole restore (drops, creates, COPYs, constraints) is one PostgreSQL
 * transaction, so an error, a killed pg_restore, a lost connection or a
 * crashed server rolls it back entirely and the previous contents stay;
 * the scratch run beforehand catches a corrupt or truncated archive
 * without touching the live data at all. Its costs: while it runs it holds
 * ACCESS EXCLUSIVE locks on what it replaces (the data API is in
 * maintenance anyway), it needs the disk space of a second copy for the
 * scratch run, and objects created after the dump that the archive does
 * not contain are kept (--clean drops only what the archive holds). We
 * take (b).
 *
 * Ending other sessions (pg_terminate_backend, except our own) before the
 * live run frees the locks they may hold; pools reconnect by themselves
 * (a dead connection fails its liveness check before being handed out).
 *
 * The verify step is verify_archive(): one call site, so the merge can put
 * the backup engineer's cdb_backup_verify there.
 */
#include "coredb/backup.h"
#include "coredb/restore.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "core/fsutil.h"
#include "core/timeutil.h"
#include "management/tool_run.h"
#include "security/audit_internal.h"
#include "security/maintenance.h"
#include "security/service_state.h"
#include "store/outbox.h"
#include "store/pg.h"

#define LIST_TIMEOUT_S 300
#define END_SESSIONS_WAIT_MS 3000
#define RESTORE_TIMEOUT_S (6 * 3600)
/* One restore per deployment: a session advisory lock on this key ("cdbrestr"). */
#define RESTORE_LOCK_KEY "7233374928633656434"

typedef struct restore_ctx {
    cdb_service *svc;
    const char *name;
    char *path;                   /* BACKUP_DIR/name, or the decrypted copy of it */
    char *decrypted;              /* the decrypted copy (removed at the end), or NULL */
    PGconn *conn;                 /* our own session: locks, scratch database, termination */
    char scratch[64];             /* the scratch database, "" when none exists */
    int sessions_ended;
    int tables_invalidated;
} restore_ctx;

static void keep_maintenance(void *arg)
{
    cdb_service *svc = arg;
    cdb__maintenance_refresh(&svc->maintenance, svc->redis, svc->qcache);
}

static cdb__tool_run tool_run(cdb_service *svc, int timeout_s, bool tick)
{
    return (cdb__tool_run){
        .conninfo = svc->conninfo,
        .sslmode = svc->cfg->embedded ? NULL : svc->cfg->db_sslmode,
        .app_name = "coredb-restore",
        .timeout_s = timeout_s,
        .tick = tick ? keep_maintenance : NULL,
        .tick_arg = svc,
    };
}

/* A plain file name of BACKUP_DIR: no separator, no "..", not hidden, printable. */
static int check_name(restore_ctx *c, cdb_error *err)
{
    const char *n = c->name;
    size_t len = n ? strlen(n) : 0;
    bool ok = len > 0 && len <= 200 && n[0] != '.' && !strstr(n, "..");
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)n[i] > 0x20 && n[i] != '/' && n[i] != '\\' && n[i] != 0x7f;
    if (!ok)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "name",
                                    "A backup name is a plain file name of BACKUP_DIR");
    /* the file itself, or a backup's name as `coredb backup create` gives it (NAME.dump) */
    static const char *const suffixes[] = {"", ".dump"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        free(c->path);
        if (!(c->path = cdb_xasprintf("%s/%s%s", c->svc->cfg->backup_dir, n, suffixes[i])))
            return cdb_error_oom(err);
        struct stat st;
        if (stat(c->path, &st) == 0 && S_ISREG(st.st_mode))
            return 0;
    }
    return cdb_error_set(err, CDB_ERR_NOT_FOUND, "No backup named '%s'", n);
}

/*
 * An archive stored encrypted (BACKUP_ENCRYPT, magic "CDBENC1") is
 * decrypted to a 0600 file beside it first; everything after works on the
 * plain copy, which is removed when the restore ends.
 */
static int plain_archive(restore_ctx *c, cdb_error *err)
{
    char magic[7] = {0};
    FILE *f = fopen(c->path, "rb");
    size_t n = f ? fread(magic, 1, sizeof magic, f) : 0;
    if (f)
        fclose(f);
    if (n != sizeof magic || memcmp(magic, "CDBENC1", sizeof magic) != 0)
        return 0;
    if (!(c->decrypted = cdb_xasprintf("%s/.restore-%d.dump", c->svc->cfg->backup_dir, (int)getpid())))
        return cdb_error_oom(err);
    if (cdb_backup_decrypt_to_path(c->svc, c->path, c->decrypted, err) < 0) {
        free(c->decrypted);
        c->decrypted = NULL;
        return err->code;
    }
    free(c->path);
    c->path = strdup(c->decrypted);
    return c->path ? 0 : cdb_error_oom(err);
}

static int invalid(cdb_error *err, const char *check, const char *what, const cdb__tool_run *run, int rc)
{
    cdb_log_warn("backup.restore_invalid", "%s failed (exit %d): %s", what, rc, run->diag);
    cdb_error_set(err, CDB_ERR_BACKUP_INVALID, "The archive failed the %s check", check);
    cdb_error_detail(err, "check", json_string(check));
    return err->code;
}

/* The archive's table of contents must be readable: pg_restore --list. */
static int verify_archive(restore_ctx *c, cdb_error *err)
{
    char *prog = cdb_xasprintf("%s/pg_restore", c->svc->cfg->pg_bindir);
    if (!prog)
        return cdb_error_oom(err);
    char *argv[] = {prog, "--list", c->path, NULL};
    cdb__tool_run run = tool_run(c->svc, LIST_TIMEOUT_S, false);
    int rc = cdb__tool_run_spawn(&run, argv);
    free(prog);
    return rc == 0 ? 0 : invalid(err, "toc", "pg_restore --list", &run, rc);
}

static int exec_sql(PGconn *conn, const char *sql, cdb_error *err)
{
    return cdb_pg_exec(conn, sql, 0, NULL, NULL, err);
}

static void drop_scratch(restore_ctx *c)
{
    if (!c->scratch[0])
        return;
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", c->scratch);
    cdb_error err;
    cdb_error_init(&err);
    if (exec_sql(c->conn, sql, &err) < 0)
        cdb_log_warn("backup.restore_scratch", "could not drop the scratch database %s: %s",
                     c->scratch, err.message);
    cdb_error_destroy(&err);
    c->scratch[0] = '\0';
}

/* The real proof: the whole archive restores into a new, empty database. */
static int test_restore(restore_ctx *c, cdb_error *err)
{
    snprintf(c->scratch, sizeof c->scratch, "coredb_restore_%d_%lld", (int)getpid(),
             (long long)cdb_mono_ms());
    char sql[160];
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\" TEMPLATE template0", c->scratch);
    if (exec_sql(c->conn, sql, err) < 0) {
        c->scratch[0] = '\0';
        return err->code;
    }
    char *prog = cdb_xasprintf("%s/pg_restore", c->svc->cfg->pg_bindir);
    if (!prog)
        return cdb_error_oom(err);
    char *argv[] = {prog, "--exit-on-error", "--no-password", "-d", c->scratch, c->path, NULL};
    cdb__tool_run run = tool_run(c->svc, RESTORE_TIMEOUT_S, false);
    int rc = cdb__tool_run_spawn(&run, argv);
    free(prog);
    drop_scratch(c);
    return rc == 0 ? 0 : invalid(err, "test_restore", "test restore", &run, rc);
}

static int end_sessions(restore_ctx *c, cdb_error *err)
{
    PGresult *res = NULL;
    if (cdb_pg_exec(c->conn,
                    /* materialized: our own session is never a candidate */
                    "WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid())"
                    " SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)),"
                    " coalesce(array_agg(pid)::text, '{}') FROM victims",
                    0, NULL, &res, err) < 0)
        return err->code;
    c->sessions_ended = atoi(PQgetvalue(res, 0, 0));
    char *pids = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (!pids)
        return cdb_error_oom(err);
    /* pg_terminate_backend only signals: wait (bounded) until those are gone,
     * so their clients' sockets are closed before anything else happens
     * (pools reconnect meanwhile: new sessions are not waited for) */
    const char *params[1] = {pids};
    int rc = 0;
    for (int i = 0; c->sessions_ended && i < END_SESSIONS_WAIT_MS / 20; i++) {
        res = NULL;
        if ((rc = cdb_pg_exec(c->conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                              1, params, &res, err)) < 0)
            break;
        bool gone = atoi(PQgetvalue(res, 0, 0)) == 0;
        PQclear(res);
        if (gone)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    free(pids);
    return rc;
}

/* The swap: the live database in one transaction (see the top of the file). */
static int restore_live(restore_ctx *c, cdb_error *err)
{
    char *prog = cdb_xasprintf("%s/pg_restore", c->svc->cfg->pg_bindir);
    if (!prog)
        return cdb_error_oom(err);
    /* the name of the database our own session is on; host, user, password come from the environment */
    char *argv[] = {prog, "--single-transaction", "--clean", "--if-exists", "--exit-on-error",
                    "--no-password", "-d", PQdb(c->conn), c->path, NULL};
    cdb__tool_run run = tool_run(c->svc, RESTORE_TIMEOUT_S, true);
    int rc = cdb__tool_run_spawn(&run, argv);
    free(prog);
    if (rc == 0)
        return 0;
    cdb_log_error("backup.restore_failed", "restore into the live database failed (exit %d), "
                  "rolled back: %s", rc, run.diag);
    /* most often the live database holds something the archive cannot replace
     * (an object made since, depending on a table it drops): a conflict with its state */
    cdb_error_set(err, CDB_ERR_CONFLICT,
                  "The restore into the live database failed and was rolled back; the database is "
                  "unchanged (see the server log)");
    cdb_error_detail(err, "check", json_string("restore"));
    return err->code;
}

/*
 * Every table of POSTGRES_SCHEMA gets a new cache generation (and the
 * tables its foreign keys cascade into), through cdb_outbox_note_write, so
 * a bump Redis does not take waits in the outbox like any write's.
 */
static void invalidate_caches(restore_ctx *c)
{
    cdb_service *svc = c->svc;
    cdb_error err;
    cdb_error_init(&err);
    if (svc->catalog && cdb_catalog_cache_refresh(svc->catalog, &err) < 0)
        cdb_log_warn("backup.restore_catalog", "catalog refresh failed: %s", err.message);
    cdb_error_destroy(&err);
    const char *schema[1] = {svc->cfg->postgres_schema};
    PGresult *res = NULL;
    if (cdb_pg_exec(c->conn,
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
                    1, schema, &res, &err) < 0) {
        cdb_log_error("backup.restore_invalidate", "could not list the tables: %s", err.message);
        cdb_error_destroy(&err);
        return;
    }
    if (svc->pool && svc->qcache)
        for (int i = 0; i < PQntuples(res); i++) {
            cdb_outbox_note_write(svc->pool, svc->qcache, svc->catalog, PQgetvalue(res, i, 0));
            c->tables_invalidated++;
        }
    PQclear(res);
}

/* Maintenance on, sessions ended, the live restore, caches invalidated, maintenance off. */
static int swap(restore_ctx *c, cdb_error *err)
{
    cdb_service *svc = c->svc;
    if (svc->pool && svc->qcache) { /* the Redis key of the flag needs the deployment id */
        cdb_error nerr;
        cdb_error_init(&nerr);
        cdb_qcache_ensure_namespace(svc->qcache, svc->pool, &nerr);
        cdb_error_destroy(&nerr);
    }
    cdb__maintenance_begin(&svc->maintenance, svc->redis, svc->qcache);
    cdb_log_info("backup.maintenance_begin", "restoring %s: the data API is in maintenance", c->name);
    int rc = end_sessions(c, err);
    /* the audit log outlives the restore (security/audit_internal.h) */
    if (rc == 0 && (rc = cdb__audit_carry_begin(c->conn, err)) == 0) {
        rc = restore_live(c, err);
        cdb__audit_carry_end(c->conn);
    }
    /* a rolled back restore changed nothing, but a bump costs little and is never wrong */
    invalidate_caches(c);
    cdb__maintenance_end(&svc->maintenance, svc->redis, svc->qcache);
    cdb_log_info("backup.maintenance_end", "restore of %s %s", c->name, rc == 0 ? "done" : "failed");
    return rc;
}

static int take_lock(restore_ctx *c, cdb_error *err)
{
    const char *key[1] = {RESTORE_LOCK_KEY};
    PGresult *res = NULL;
    if (cdb_pg_exec(c->conn, "SELECT pg_try_advisory_lock($1::bigint)", 1, key, &res, err) < 0)
        return err->code;
    bool got = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return got ? 0 : cdb_error_set(err, CDB_ERR_CONFLICT, "Another restore is running");
}

static int restore_checked(cdb_service *svc, const cdb_principal *caller, const char *name, bool confirm,
                           json_t **out, cdb_error *err)
{
    if (cdb_principal_require(caller, err) < 0)
        return err->code;
    if (!cdb_principal_is_admin(caller))
        return cdb_error_set(err, CDB_ERR_FORBIDDEN, "Only an admin may restore a backup");
    if (!confirm)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "confirm",
                                    "A restore replaces the database: send {\"confirm\": true}");
    restore_ctx c = {.svc = svc, .name = name};
    int64_t start = cdb_mono_ms();
    int rc = check_name(&c, err);
    if (rc == 0)
        rc = plain_archive(&c, err);
    if (rc == 0 && (rc = verify_archive(&c, err)) == 0) {
        cdb_pg_settings s = {
            .conninfo = svc->conninfo,
            .sslmode = svc->cfg->embedded ? NULL : svc->cfg->db_sslmode,
            .application_name = "coredb-restore",
        };
        if (!(c.conn = cdb_pg_connect(&s, err)))
            rc = err->code;
    }
    if (rc == 0 && (rc = take_lock(&c, err)) == 0 && (rc = test_restore(&c, err)) == 0)
        rc = swap(&c, err);
    drop_scratch(&c);
    if (rc == 0) {
        *out = json_pack("{s:s,s:b,s:I,s:i,s:i}", "name", name, "restored", 1, "duration_ms",
                         (json_int_t)(cdb_mono_ms() - start), "sessions_ended", c.sessions_ended,
                         "tables_invalidated", c.tables_invalidated);
        if (!*out)
            rc = cdb_error_oom(err);
        else
            cdb_log_info("backup.restored", "restored %s", name);
    }
    if (c.conn)
        PQfinish(c.conn); /* ends the advisory lock with the session */
    if (c.decrypted)
        unlink(c.decrypted);
    free(c.decrypted);
    free(c.path);
    return rc;
}

int cdb_backup_restore(cdb_service *svc, const cdb_principal *caller, const char *name, bool confirm,
                       json_t **out, cdb_error *err)
{
    *out = NULL;
    cdb_error local;
    cdb_error_init(&local);
    if (!err) /* the steps read err->code */
        err = &local;
    int rc = restore_checked(svc, caller, name, confirm, out, err);
    /* a non-admin's attempt is refused before anything happens (and over
       HTTP recorded as admin.refused); an admin's is recorded either way,
       in the database as it is after the restore */
    if (cdb_principal_is_admin(caller)) {
        json_t *params = json_pack("{s:b}", "confirm", confirm);
        cdb_audit_record(svc, caller, "backup.restore", name, params, err);
        json_decref(params);
    }
    cdb_error_destroy(&local);
    return rc;
}
