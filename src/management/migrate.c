/*
 * migrate.c - the migration engine behind `coredb migrate` and the
 * /api/v1/migrations routes (contract: include/coredb/migrate.h).
 *
 * Files are parsed once into a cdb_migration_set by migrate_files.c (pure
 * code: naming rule, sections, SHA-256). Running them happens on the caller's dedicated PGconn:
 *   1. take a session advisory lock, polled so the wait can time out;
 *   2. create/read coredb.schema_migrations under the lock, so two
 *      concurrent migrators see each other's work and apply a file once;
 *   3. refuse everything if an applied file changed on disk;
 *   4. run each file's statements one by one (so an error can name the
 *      statement), each file in its own transaction with its history row.
 * A dry run puts every pending file in ONE transaction and rolls it back;
 * its failure is a result, not an error. Messages here include the server's
 * error text: they go to administrators (CLI, admin routes), never to users.
 */
#include "coredb/migrate.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "coredb/log.h"
#include "coredb/result.h"
#include "store/pg.h"
#include "core/metrics.h"
#include "core/timeutil.h"
#include "management/migrate_internal.h"

/* FNV-1a 64 of "coredb.migrate": the migrators' session lock. The next
 * number guards the creation of the history table (transaction lock). */
#define LOCK_KEY     CDB__MIGRATE_LOCK_KEY
#define DDL_LOCK_KEY "6155020977930761512"
#define LOCK_POLL_MS 100

/* Column order of every history query below. */
enum { H_VERSION, H_DESCRIPTION, H_CHECKSUM, H_APPLIED_AT, H_DURATION, H_APPLIED_BY };
#define HISTORY_SQL                                                                   \
    "SELECT version, description, checksum,"                                          \
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"       \
    " duration_ms, applied_by FROM coredb.schema_migrations ORDER BY version COLLATE \"C\""

/* ---------- database helpers ---------- */

/* The server's message for a failed result, without the trailing newline. */
static void server_message(PGconn *conn, const PGresult *res, char *buf, size_t len)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    snprintf(buf, len, "%s", m ? m : PQerrorMessage(conn));
    size_t l = strlen(buf);
    while (l && isspace((unsigned char)buf[l - 1]))
        buf[--l] = '\0';
}

/* Error for an engine query (not a migration statement) that failed. */
static int db_fail(PGconn *conn, const PGresult *res, const char *what, cdb_error *err)
{
    if (cdb_pg_timed_out(conn))
        return cdb_error_set(err, CDB_ERR_DATABASE_TIMEOUT, "the database did not answer in time during %s", what);
    if (PQstatus(conn) != CONNECTION_OK)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "database connection lost during %s", what);
    char msg[200];
    server_message(conn, res, msg, sizeof msg);
    return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s failed: %s", what, msg);
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
}

static int exec_cmd(PGconn *conn, const char *sql, const char *what, cdb_error *err)
{
    PGresult *res = cdb_pg_query(conn, sql);
    int rc = result_ok(res) ? 0 : db_fail(conn, res, what, err);
    PQclear(res);
    return rc;
}

static void rollback_if_open(PGconn *conn)
{
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        PQclear(cdb_pg_query(conn, "ROLLBACK"));
}

static int conn_ready(PGconn *conn, cdb_error *err)
{
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "no database connection for migrations");
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "migration connection is inside a transaction");
    return 0;
}

static int history_exists(PGconn *conn, bool *exists, cdb_error *err)
{
    PGresult *res = cdb_pg_query(conn, "SELECT to_regclass('coredb.schema_migrations') IS NOT NULL");
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        rc = db_fail(conn, res, "reading migration history", err);
    else
        *exists = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return rc;
}

/* Runs inside a transaction. The transaction lock serializes concurrent
 * first starts, whose IF NOT EXISTS would otherwise race on the catalog's
 * unique indexes. A dry run runs it inside its own transaction, so even the
 * history table it needs is rolled back. */
#define HISTORY_DDL                                                  \
    "SET LOCAL client_min_messages = warning;"                       \
    "SELECT pg_advisory_xact_lock(" DDL_LOCK_KEY ");"                \
    "CREATE SCHEMA IF NOT EXISTS coredb;"                            \
    "CREATE TABLE IF NOT EXISTS coredb.schema_migrations ("          \
    " version text PRIMARY KEY,"                                     \
    " description text NOT NULL,"                                    \
    " checksum text NOT NULL,"                                       \
    " applied_at timestamptz NOT NULL DEFAULT now(),"                \
    " duration_ms integer NOT NULL,"                                 \
    " applied_by text NOT NULL);"

int cdb_migrate_ensure_history(PGconn *conn, cdb_error *err)
{
    bool exists = false;
    int rc = conn_ready(conn, err);
    if (rc == 0)
        rc = history_exists(conn, &exists, err);
    if (rc != 0 || exists)
        return rc;
    rc = exec_cmd(conn, "BEGIN;" HISTORY_DDL "COMMIT", "creating the migration history table", err);
    if (rc != 0)
        rollback_if_open(conn);
    return rc;
}

/* *hist: the history rows (HISTORY_SQL columns), NULL when the table does not
 * exist yet, which reads as "nothing applied" without creating anything. */
static int history_read(PGconn *conn, PGresult **hist, cdb_error *err)
{
    bool exists = false;
    *hist = NULL;
    int rc = history_exists(conn, &exists, err);
    if (rc != 0 || !exists)
        return rc;
    PGresult *res = cdb_pg_query(conn, HISTORY_SQL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = db_fail(conn, res, "reading migration history", err);
        PQclear(res);
        return rc;
    }
    *hist = res;
    return 0;
}

static int hist_rows(const PGresult *hist)
{
    return hist ? PQntuples(hist) : 0;
}

static bool hist_has(const PGresult *hist, const char *version)
{
    for (int i = 0; i < hist_rows(hist); i++)
        if (strcmp(PQgetvalue(hist, i, H_VERSION), version) == 0)
            return true;
    return false;
}

static int verify_checksums(const cdb_migration_set *set, const PGresult *hist, cdb_error *err)
{
    for (int i = 0; i < hist_rows(hist); i++) {
        const cdb_migration *m = cdb__migration_find(set, PQgetvalue(hist, i, H_VERSION));
        if (m && strcmp(m->checksum, PQgetvalue(hist, i, H_CHECKSUM)) != 0) {
            cdb_error_set(err, CDB_ERR_MIGRATION_CHECKSUM_MISMATCH,
                          "migration %s was changed after it was applied (checksum mismatch)", m->filename);
            cdb_error_detail(err, "version", json_string(m->version));
            cdb_error_detail(err, "file", json_string(m->filename));
            return CDB_ERR_MIGRATION_CHECKSUM_MISMATCH;
        }
    }
    return 0;
}

static int lock_acquire(PGconn *conn, int timeout_ms, cdb_error *err)
{
    int64_t deadline = cdb_mono_ms() + (timeout_ms > 0 ? timeout_ms : 30000);
    for (;;) {
        PGresult *res = cdb_pg_query(conn, "SELECT pg_try_advisory_lock(" LOCK_KEY ")");
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
            int rc = db_fail(conn, res, "taking the migration lock", err);
            PQclear(res);
            return rc;
        }
        bool got = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (got)
            return 0;
        if (cdb_mono_ms() >= deadline)
            return cdb_error_set(err, CDB_ERR_MIGRATION_LOCKED,
                                 "another migration is running (lock not acquired within %d ms)",
                                 timeout_ms > 0 ? timeout_ms : 30000);
        nanosleep(&(struct timespec){ .tv_sec = 0, .tv_nsec = LOCK_POLL_MS * 1000000L }, NULL);
    }
}

static void lock_release(PGconn *conn)
{
    rollback_if_open(conn);
    PQclear(cdb_pg_query(conn, "SELECT pg_advisory_unlock(" LOCK_KEY ")"));
}

/* Appends item to arr; both NULL-safe so callers can pass json_pack results. */
static int push(json_t *arr, json_t *item, cdb_error *err)
{
    if (!item || json_array_append_new(arr, item) != 0)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration result");
    return 0;
}

/* ---------- running migrations ---------- */

/* Finishes a COPY a migration statement started: migrations cannot feed one. */
static void abort_copy(PGconn *conn, ExecStatusType st)
{
    if (st == PGRES_COPY_OUT) {
        char *buf;
        while (PQgetCopyData(conn, &buf, 0) > 0)
            PQfreemem(buf);
    } else {
        PQputCopyEnd(conn, "COPY FROM STDIN is not supported in migrations");
    }
    PGresult *r;
    while (cdb_pg_get_result(conn, &r, NULL) == 0 && r)
        PQclear(r);
}

/* Runs one section statement by statement; a failure names file and statement. */
static int run_section(PGconn *conn, const cdb_migration *m, const char *sql, cdb_error *err)
{
    char **stmts;
    size_t n;
    int rc = 0;
    if (cdb_migration_split(sql, &stmts, &n) != 0)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory splitting migration %s", m->filename);
    for (size_t i = 0; i < n && rc == 0; i++) {
        PGresult *res = cdb_pg_query(conn, stmts[i]);
        ExecStatusType st = PQresultStatus(res);
        if (result_ok(res)) {
            PQclear(res);
            continue;
        }
        char msg[200], first[81];
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            abort_copy(conn, st);
            snprintf(msg, sizeof msg, "COPY to or from the client is not supported in migrations");
        } else {
            server_message(conn, res, msg, sizeof msg);
        }
        PQclear(res);
        size_t fl = strcspn(stmts[i], "\r\n");
        snprintf(first, sizeof first, "%.*s", (int)(fl < 80 ? fl : 80), stmts[i]);
        rc = cdb_error_set(err, CDB_ERR_MIGRATION_FAILED, "migration %s failed at statement %zu (%s): %s",
                           m->filename, i + 1, first, msg);
        cdb_error_detail(err, "version", json_string(m->version));
        cdb_error_detail(err, "statement", json_integer((json_int_t)(i + 1)));
        cdb_error_detail(err, "file", json_string(m->filename));
    }
    cdb_migration_split_free(stmts, n);
    return rc;
}

static bool section_empty(const char *sql, bool *empty)
{
    char **stmts;
    size_t n;
    if (cdb_migration_split(sql, &stmts, &n) != 0)
        return false;
    cdb_migration_split_free(stmts, n);
    *empty = (n == 0);
    return true;
}

/* Runs m's up or down section and writes or deletes its history row, inside
 * whatever transaction the caller holds (none for no-transaction files). */
static int run_migration(PGconn *conn, const cdb_migration *m, bool up, const char *applied_by,
                         int *duration_ms, cdb_error *err)
{
    int64_t t0 = cdb_mono_ms();
    int rc = run_section(conn, m, up ? m->up_sql : m->down_sql, err);
    if (rc != 0)
        return rc;
    *duration_ms = (int)(cdb_mono_ms() - t0);
    char dur[16];
    snprintf(dur, sizeof dur, "%d", *duration_ms);
    const char *params[5] = { m->version, m->description, m->checksum, dur, applied_by };
    PGresult *res = up ? cdb_pg_query_params(conn,
                                             "INSERT INTO coredb.schema_migrations"
                                             " (version, description, checksum, duration_ms, applied_by)"
                                             " VALUES ($1, $2, $3, $4::integer, $5)",
                                             5, params)
                       : cdb_pg_query_params(conn, "DELETE FROM coredb.schema_migrations WHERE version = $1",
                                             1, params);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = db_fail(conn, res, "recording migration history", err);
    PQclear(res);
    return rc;
}

/*
 * Runs plan[0..n) (up or down) and fills result's "applied"/"rolled_back",
 * "dry_run", and for a dry run "would_succeed", "skipped" and "dry_run_error"
 * (the error the real run would meet, as the result form shows errors; not
 * "error", which the result form reserves for this call's own outcome).
 */
static int execute_plan(PGconn *conn, const cdb_migration **plan, size_t n, bool up,
                        const cdb_migrate_options *opt, json_t *result, cdb_error *err)
{
    const char *by = opt && opt->applied_by ? opt->applied_by : "coredb";
    bool dry = opt && opt->dry_run;
    json_t *done = json_array(), *skipped = dry ? json_array() : NULL;
    cdb_error dry_err;
    int rc = 0;
    cdb_error_init(&dry_err);
    if (!done || (dry && !skipped) ||
        json_object_set_new(result, up ? "applied" : "rolled_back", json_incref(done)) != 0 ||
        json_object_set_new(result, "dry_run", json_boolean(dry)) != 0 ||
        (dry && json_object_set_new(result, "skipped", json_incref(skipped)) != 0)) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration result");
        goto out_free;
    }
    if (dry && (rc = exec_cmd(conn, "BEGIN;" HISTORY_DDL, "starting the dry run", err)) != 0)
        goto out_free;

    for (size_t i = 0; i < n; i++) {
        const cdb_migration *m = plan[i];
        int ms = 0;
        if (opt && opt->on_file)
            opt->on_file(opt->on_file_arg, i + 1, n, m, up);
        if (dry) {
            if (m->no_transaction) {
                rc = push(skipped, json_pack("{s:s, s:s}", "version", m->version, "reason",
                                             "no-transaction migrations are not run in a dry run"), err);
                if (rc != 0)
                    goto out_free;
                continue;
            }
            if (run_migration(conn, m, up, by, &ms, &dry_err) != 0)
                break;
        } else {
            bool tx = !m->no_transaction;
            if (tx && (rc = exec_cmd(conn, "BEGIN; SET LOCAL client_min_messages = warning",
                                     "starting a migration transaction", err)) != 0)
                goto out_free;
            if ((rc = run_migration(conn, m, up, by, &ms, err)) != 0)
                goto out_free;
            if (tx) {
                PGresult *res = cdb_pg_query(conn, "COMMIT");
                if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                    char msg[200];
                    server_message(conn, res, msg, sizeof msg);
                    rc = cdb_error_set(err, CDB_ERR_MIGRATION_FAILED, "migration %s failed at commit: %s",
                                       m->filename, msg);
                    cdb_error_detail(err, "version", json_string(m->version));
                }
                PQclear(res);
                if (rc != 0)
                    goto out_free;
            }
            cdb_log_fields(CDB_LOG_INFO, up ? "migration_applied" : "migration_rolled_back",
                           json_pack("{s:s, s:s, s:i}", "version", m->version, "file", m->filename,
                                     "duration_ms", ms));
        }
        rc = push(done, json_pack("{s:s, s:s, s:i}", "version", m->version, "description",
                                  m->description, "duration_ms", ms), err);
        if (rc != 0)
            goto out_free;
    }
    if (dry) {
        rollback_if_open(conn);
        bool ok = dry_err.code == CDB_OK;
        if (json_object_set_new(result, "would_succeed", json_boolean(ok)) != 0 ||
            (!ok && json_object_set_new(result, "dry_run_error", cdb_result_error_object(&dry_err)) != 0))
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration result");
    }
out_free:
    rollback_if_open(conn); /* a failed file, or any failure during a dry run */
    cdb_error_destroy(&dry_err);
    json_decref(done);
    json_decref(skipped);
    return rc;
}

/* After a dry run on a fresh database the history table does not exist. */
static int set_current_version(PGconn *conn, json_t *result, cdb_error *err)
{
    bool exists = false;
    int rc = history_exists(conn, &exists, err);
    if (rc != 0)
        return rc;
    if (!exists)
        return json_object_set_new(result, "current_version", json_null()) == 0
                   ? 0
                   : cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration result");
    PGresult *res = cdb_pg_query(conn, "SELECT max(version COLLATE \"C\") FROM coredb.schema_migrations");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        rc = db_fail(conn, res, "reading migration history", err);
    else if (json_object_set_new(result, "current_version",
                                 PQgetisnull(res, 0, 0) ? json_null() : json_string(PQgetvalue(res, 0, 0))) != 0)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration result");
    PQclear(res);
    return rc;
}

/* Lock, history table, fresh history and checksum check: what up and down
 * share. On success the caller holds the lock and owns *hist. */
static int begin_run(PGconn *conn, const cdb_migration_set *set, const cdb_migrate_options *opt,
                     PGresult **hist, cdb_error *err)
{
    *hist = NULL;
    int rc = conn_ready(conn, err);
    if (rc == 0)
        rc = lock_acquire(conn, opt ? opt->lock_timeout_ms : 0, err);
    if (rc != 0)
        return rc;
    bool dry = opt && opt->dry_run;
    if ((!dry && (rc = cdb_migrate_ensure_history(conn, err)) != 0) || (rc = history_read(conn, hist, err)) != 0 ||
        (rc = verify_checksums(set, *hist, err)) != 0)
        goto out_unlock;
    return 0;
out_unlock:
    PQclear(*hist);
    *hist = NULL;
    lock_release(conn);
    return rc;
}

static int migrate_up(PGconn *conn, const cdb_migration_set *set,
                      const cdb_migrate_options *opt, json_t **out, cdb_error *err)
{
    const char *target = opt ? opt->target_version : NULL;
    const cdb_migration **plan = NULL;
    PGresult *hist = NULL;
    json_t *result = NULL;
    size_t n = 0;
    *out = NULL;
    if (target && !cdb__migration_find(set, target))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "unknown target version %s", target);
    /* what the role lacks, said before anything runs */
    int rc = conn_ready(conn, err);
    if (rc == 0)
        rc = cdb_migrate_preflight(conn, set, target, err);
    if (rc == 0)
        rc = begin_run(conn, set, opt, &hist, err);
    if (rc != 0)
        return rc;
    if (!(result = json_object()) || (set->count && !(plan = calloc(set->count, sizeof *plan)))) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory planning migrations");
        goto out_unlock;
    }
    for (size_t i = 0; i < set->count; i++) {
        const cdb_migration *m = &set->items[i];
        if (target && strcmp(m->version, target) > 0)
            break;
        if (!hist_has(hist, m->version))
            plan[n++] = m;
    }
    if ((rc = execute_plan(conn, plan, n, true, opt, result, err)) == 0)
        rc = set_current_version(conn, result, err);
out_unlock:
    free(plan);
    PQclear(hist);
    lock_release(conn);
    if (rc == 0)
        *out = result;
    else
        json_decref(result);
    return rc;
}

static int migrate_down(PGconn *conn, const cdb_migration_set *set, int steps,
                        const cdb_migrate_options *opt, json_t **out, cdb_error *err)
{
    const cdb_migration **plan = NULL;
    PGresult *hist = NULL;
    json_t *result = NULL;
    size_t n = 0;
    *out = NULL;
    if (steps < 1)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "steps must be at least 1");
    int rc = begin_run(conn, set, opt, &hist, err);
    if (rc != 0)
        return rc;
    int rows = hist_rows(hist);
    if (!(result = json_object()) || (rows && !(plan = calloc((size_t)rows, sizeof *plan)))) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory planning migrations");
        goto out_unlock;
    }
    /* Check every file first so a later irreversible one does not leave the
     * rollback half done. */
    for (int i = rows - 1; i >= 0 && n < (size_t)steps; i--) {
        const char *v = PQgetvalue(hist, i, H_VERSION);
        const cdb_migration *m = cdb__migration_find(set, v);
        bool empty = false;
        if (!m) {
            rc = cdb_error_set(err, CDB_ERR_MIGRATION_FAILED,
                               "migration %s cannot be rolled back: its file is not on disk", v);
        } else if (!section_empty(m->down_sql, &empty)) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory planning migrations");
        } else if (empty) {
            rc = cdb_error_set(err, CDB_ERR_MIGRATION_FAILED,
                               "migration %s is irreversible (empty down section)", m->filename);
        }
        if (rc != 0) {
            cdb_error_detail(err, "version", json_string(v));
            goto out_unlock;
        }
        plan[n++] = m;
    }
    if ((rc = execute_plan(conn, plan, n, false, opt, result, err)) == 0)
        rc = set_current_version(conn, result, err);
out_unlock:
    free(plan);
    PQclear(hist);
    lock_release(conn);
    if (rc == 0)
        *out = result;
    else
        json_decref(result);
    return rc;
}

/* ---------- status ---------- */

/* A rough guide for operators: ~20 statements a second, at least 1 s;
 * no-transaction files usually build indexes concurrently, so unknown. */
static json_t *estimate(const cdb_migration *m)
{
    char **stmts;
    size_t n;
    if (m->no_transaction || cdb_migration_split(m->up_sql, &stmts, &n) != 0)
        return json_string("unknown");
    cdb_migration_split_free(stmts, n);
    char buf[32];
    snprintf(buf, sizeof buf, "%zus", 1 + n / 20);
    return json_string(buf);
}

static json_t *history_entry(const PGresult *h, int i)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:s}",
                     "version", PQgetvalue(h, i, H_VERSION),
                     "description", PQgetvalue(h, i, H_DESCRIPTION),
                     "checksum", PQgetvalue(h, i, H_CHECKSUM),
                     "applied_at", PQgetvalue(h, i, H_APPLIED_AT),
                     "duration_ms", atoi(PQgetvalue(h, i, H_DURATION)),
                     "applied_by", PQgetvalue(h, i, H_APPLIED_BY));
}

int cdb_migrate_status(PGconn *conn, const cdb_migration_set *set, json_t **out, cdb_error *err)
{
    PGresult *hist = NULL;
    json_t *pending = json_array(), *applied = json_array(), *missing = json_array();
    *out = NULL;
    int rc = conn_ready(conn, err);
    if (rc == 0)
        rc = history_read(conn, &hist, err);
    if (rc == 0)
        rc = verify_checksums(set, hist, err);
    if (rc == 0 && (!pending || !applied || !missing))
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration status");
    if (rc != 0)
        goto out_free;

    for (size_t i = 0; i < set->count && rc == 0; i++)
        if (!hist_has(hist, set->items[i].version))
            rc = push(pending, json_pack("{s:s, s:s, s:o}", "version", set->items[i].version,
                                         "description", set->items[i].description,
                                         "estimated_duration", estimate(&set->items[i])), err);
    int rows = hist_rows(hist);
    for (int i = 0; i < rows && rc == 0; i++) {
        rc = push(applied, history_entry(hist, i), err);
        if (rc == 0 && !cdb__migration_find(set, PQgetvalue(hist, i, H_VERSION)))
            rc = push(missing, json_string(PQgetvalue(hist, i, H_VERSION)), err);
    }
    if (rc != 0)
        goto out_free;
    /* current and last: the highest applied version, the one `down` undoes.
     * json_pack's "o" steals its values even when it fails. */
    int top = rows - 1;
    *out = json_pack("{s:o, s:O, s:o, s:O, s:O}",
                     "current_version", rows ? json_string(PQgetvalue(hist, top, H_VERSION)) : json_null(),
                     "pending_migrations", pending,
                     "last_migration",
                     rows ? json_pack("{s:s, s:s, s:i}", "version", PQgetvalue(hist, top, H_VERSION),
                                      "applied_at", PQgetvalue(hist, top, H_APPLIED_AT),
                                      "duration_ms", atoi(PQgetvalue(hist, top, H_DURATION)))
                          : json_null(),
                     "applied", applied, "missing_on_disk", missing);
    if (!*out)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory building the migration status");
out_free:
    json_decref(pending);
    json_decref(applied);
    json_decref(missing);
    PQclear(hist);
    return rc;
}

int cdb_migrate_pending_count(PGconn *conn, const cdb_migration_set *set, cdb_error *err)
{
    PGresult *hist = NULL;
    int rc = conn_ready(conn, err);
    if (rc == 0)
        rc = history_read(conn, &hist, err);
    if (rc != 0)
        return rc;
    int pending = 0;
    for (size_t i = 0; i < set->count; i++)
        if (!hist_has(hist, set->items[i].version))
            pending++;
    PQclear(hist);
    return pending;
}


/* The runs as the metrics count them (runs, failures, duration, last success). */
int cdb_migrate_up(PGconn *conn, const cdb_migration_set *set,
                   const cdb_migrate_options *opt, json_t **out, cdb_error *err)
{
    int64_t started_us = cdb_mono_us();
    int rc = migrate_up(conn, set, opt, out, err);
    cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    return rc;
}

int cdb_migrate_down(PGconn *conn, const cdb_migration_set *set, int steps,
                     const cdb_migrate_options *opt, json_t **out, cdb_error *err)
{
    int64_t started_us = cdb_mono_us();
    int rc = migrate_down(conn, set, steps, opt, out, err);
    cdb__metrics_op(CDB_MOP_MIGRATION, NULL, rc == 0, cdb_mono_us() - started_us);
    return rc;
}
