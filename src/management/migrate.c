/*
 * migrate.c - the migration engine behind `coredb migrate` and the
 * /api/v1/migrations routes (contract: include/coredb/migrate.h).
 *
 * Files are parsed once into a cdb_migration_set (pure code: naming rule,
 * sections, SHA-256). Running them happens on the caller's dedicated PGconn:
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
#include "store/pg.h"
#include "core/timeutil.h"
#include "management/migrate_internal.h"

/* FNV-1a 64 of "coredb.migrate": the migrators' session lock. The next
 * number guards the creation of the history table (transaction lock). */
#define LOCK_KEY     "6155020977930761511"
#define DDL_LOCK_KEY "6155020977930761512"
#define LOCK_POLL_MS 100
#define MARK_UP      "-- migrate:up"
#define MARK_DOWN    "-- migrate:down"
#define MARK_NOTX    "-- migrate:no-transaction"

/* Column order of every history query below. */
enum { H_VERSION, H_DESCRIPTION, H_CHECKSUM, H_APPLIED_AT, H_DURATION, H_APPLIED_BY };
#define HISTORY_SQL                                                                   \
    "SELECT version, description, checksum,"                                          \
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"       \
    " duration_ms, applied_by FROM coredb.schema_migrations ORDER BY version COLLATE \"C\""

/* ---------- file names, sections, checksums (pure) ---------- */

bool cdb_migration_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len < 18 || strcmp(name + len - 4, ".sql") != 0)
        return false; /* 8 + _ + 3 + _ + at least one char + .sql */
    for (size_t i = 0; i < 12; i++) {
        bool sep = (i == 8);
        if (sep ? name[i] != '_' : !isdigit((unsigned char)name[i]))
            return false;
    }
    if (name[12] != '_')
        return false;
    for (size_t i = 13; i < len - 4; i++)
        if (!(islower((unsigned char)name[i]) || isdigit((unsigned char)name[i]) || name[i] == '_'))
            return false;
    return true;
}

/* The line [s, e) with surrounding blanks removed equals mark. */
static bool line_is(const char *s, const char *e, const char *mark)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    size_t n = strlen(mark);
    return (size_t)(e - s) == n && memcmp(s, mark, n) == 0;
}

/* malloc'd copy of [s, e) without surrounding blanks; NULL when out of memory. */
static char *trimmed_dup(const char *s, const char *e)
{
    while (s < e && isspace((unsigned char)*s))
        s++;
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    return strndup(s, (size_t)(e - s));
}

void cdb_migration_destroy(cdb_migration *m)
{
    if (!m)
        return;
    free(m->version);
    free(m->description);
    free(m->filename);
    free(m->up_sql);
    free(m->down_sql);
    memset(m, 0, sizeof *m);
}

int cdb_migration_parse(const char *filename, const char *text, size_t len,
                        cdb_migration *out, cdb_error *err)
{
    memset(out, 0, sizeof *out);
    if (!cdb_migration_name_valid(filename))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED,
                             "migration file name %s does not match YYYYMMDD_NNN_name.sql "
                             "(name: lowercase letters, digits, underscores)", filename);
    if (memchr(text, '\0', len))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "migration %s contains a NUL byte", filename);

    /* Sections are found line by line: state 0 = header, 1 = up, 2 = down. */
    const char *end = text + len, *up_s = NULL, *up_e = NULL, *down_s = NULL;
    const char *problem = NULL;
    int state = 0;
    for (const char *ls = text; ls < end && !problem;) {
        const char *le = memchr(ls, '\n', (size_t)(end - ls));
        const char *next = le ? le + 1 : end;
        if (!le)
            le = end;
        if (line_is(ls, le, MARK_UP)) {
            if (state != 0)
                problem = "has a second or misplaced \"" MARK_UP "\" line";
            state = 1;
            up_s = next;
        } else if (line_is(ls, le, MARK_DOWN)) {
            if (state != 1)
                problem = state == 0 ? "has \"" MARK_DOWN "\" before \"" MARK_UP "\""
                                     : "has a second \"" MARK_DOWN "\" line";
            state = 2;
            up_e = ls;
            down_s = next;
        } else if (line_is(ls, le, MARK_NOTX)) {
            if (state != 0)
                problem = "has \"" MARK_NOTX "\" after \"" MARK_UP "\" (it must come before)";
            out->no_transaction = true;
        } else if (state == 0) {
            const char *p = ls;
            while (p < le && isspace((unsigned char)*p))
                p++;
            if (p < le && !(le - p >= 2 && p[0] == '-' && p[1] == '-'))
                problem = "has SQL before \"" MARK_UP "\"";
        }
        ls = next;
    }
    if (!problem && state == 0)
        problem = "has no \"" MARK_UP "\" section";
    if (problem) {
        cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "migration %s %s", filename, problem);
        cdb_error_detail(err, "file", json_string(filename));
        return CDB_ERR_VALIDATION_FAILED;
    }
    if (!up_e)
        up_e = end;

    out->version = strndup(filename, 12);
    out->description = strndup(filename + 13, strlen(filename) - 13 - 4);
    out->filename = strdup(filename);
    out->up_sql = trimmed_dup(up_s, up_e);
    out->down_sql = down_s ? trimmed_dup(down_s, end) : strdup("");
    if (!out->version || !out->description || !out->filename || !out->up_sql || !out->down_sql ||
        sodium_init() < 0) {
        cdb_migration_destroy(out);
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory parsing migration %s", filename);
    }
    for (char *p = out->description; *p; p++)
        if (*p == '_')
            *p = ' ';
    unsigned char hash[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(hash, (const unsigned char *)text, len);
    sodium_bin2hex(out->checksum, sizeof out->checksum, hash, sizeof hash);
    return 0;
}

/* ---------- statement splitter ---------- */

static bool ident_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '$' || (unsigned char)c >= 0x80;
}

/* p is at an opening quote q; returns the position after the closing one (or
 * the end). Doubled quotes need no special case: they close and reopen. */
static const char *skip_quoted(const char *p, char q, bool backslash_escapes)
{
    for (p++; *p; p++) {
        if (backslash_escapes && *p == '\\' && p[1])
            p++;
        else if (*p == q)
            return p + 1;
    }
    return p;
}

/* p is at '/' '*'; block comments nest in PostgreSQL. */
static const char *skip_block_comment(const char *p)
{
    int depth = 0;
    while (*p) {
        if (p[0] == '/' && p[1] == '*') {
            depth++;
            p += 2;
        } else if (p[0] == '*' && p[1] == '/') {
            p += 2;
            if (--depth == 0)
                return p;
        } else {
            p++;
        }
    }
    return p;
}

/* p is at '$': if a dollar quote opens here, returns the position after its
 * closing tag (or the end); otherwise p + 1 ($1 parameters, identifiers). */
static const char *skip_dollar(const char *start, const char *p)
{
    if (p > start && ident_char(p[-1]))
        return p + 1;
    const char *q = p + 1;
    if (isdigit((unsigned char)*q))
        return p + 1;
    while (*q && *q != '$' && ident_char(*q))
        q++;
    if (*q != '$')
        return p + 1;
    size_t taglen = (size_t)(q - p) + 1; /* "$tag$" */
    for (const char *c = q + 1; *c; c++)
        if (*c == '$' && strncmp(c, p, taglen) == 0)
            return c + taglen;
    return p + strlen(p);
}

static int push_stmt(char ***stmts, size_t *n, size_t *cap, const char *s, const char *e)
{
    while (e > s && isspace((unsigned char)e[-1]))
        e--;
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        char **grown = realloc(*stmts, ncap * sizeof *grown);
        if (!grown)
            return CDB_ERR_INTERNAL_ERROR;
        *stmts = grown;
        *cap = ncap;
    }
    char *copy = strndup(s, (size_t)(e - s));
    if (!copy)
        return CDB_ERR_INTERNAL_ERROR;
    (*stmts)[(*n)++] = copy;
    return 0;
}

int cdb_migration_split(const char *sql, char ***stmts, size_t *n)
{
    size_t cap = 0;
    const char *p = sql, *stmt = NULL; /* stmt: first token of the current statement */
    int rc = 0;
    *stmts = NULL;
    *n = 0;
    while (*p && rc == 0) {
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (p[0] == '/' && p[1] == '*') {
            p = skip_block_comment(p);
            continue;
        }
        if (*p == ';') {
            if (stmt)
                rc = push_stmt(stmts, n, &cap, stmt, p);
            stmt = NULL;
            p++;
            continue;
        }
        if (isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        if (!stmt)
            stmt = p;
        if (*p == '\'') {
            /* E'...' strings take backslash escapes; a lone E before the quote. */
            bool esc = p > sql && (p[-1] == 'E' || p[-1] == 'e') && (p - 1 == sql || !ident_char(p[-2]));
            p = skip_quoted(p, '\'', esc);
        } else if (*p == '"') {
            p = skip_quoted(p, '"', false);
        } else if (*p == '$') {
            p = skip_dollar(sql, p);
        } else {
            p++;
        }
    }
    if (rc == 0 && stmt)
        rc = push_stmt(stmts, n, &cap, stmt, p);
    if (rc != 0) {
        cdb_migration_split_free(*stmts, *n);
        *stmts = NULL;
        *n = 0;
    }
    return rc;
}

void cdb_migration_split_free(char **stmts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(stmts[i]);
    free(stmts);
}

/* ---------- loading a directory ---------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_whole(const char *path, char **buf, size_t *len, cdb_error *err)
{
    int rc = 0;
    *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot read migration %s: %s", path, strerror(errno));
        goto out_close;
    }
    *buf = malloc((size_t)st.st_size + 1);
    if (!*buf) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory reading %s", path);
        goto out_close;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, *buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (got != (size_t)st.st_size) {
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot read migration %s completely", path);
        free(*buf);
        *buf = NULL;
        goto out_close;
    }
    (*buf)[got] = '\0';
    *len = got;
out_close:
    if (fd >= 0)
        close(fd);
    return rc;
}

void cdb_migrations_free(cdb_migration_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->count; i++)
        cdb_migration_destroy(&set->items[i]);
    free(set->items);
    set->items = NULL;
    set->count = 0;
}

int cdb_migrations_load(const char *dir, cdb_migration_set *out, cdb_error *err)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    out->items = NULL;
    out->count = 0;

    DIR *d = opendir(dir);
    if (!d)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot open migrations directory %s: %s",
                             dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (de->d_name[0] == '.' || l < 4 || strcmp(de->d_name + l - 4, ".sql") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **grown = realloc(names, cap * sizeof *grown);
            if (!grown) {
                rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory listing %s", dir);
                goto out_free;
            }
            names = grown;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory listing %s", dir);
            goto out_free;
        }
        n++;
    }
    /* The version is a fixed-width prefix, so name order is version order. */
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    if (n && !(out->items = calloc(n, sizeof *out->items))) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory loading migrations");
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        char path[4096], *text;
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if ((rc = read_whole(path, &text, &len, err)) != 0)
            goto out_free;
        rc = cdb_migration_parse(names[i], text, len, &out->items[out->count], err);
        free(text);
        if (rc != 0)
            goto out_free;
        out->count++;
        if (out->count > 1 && strcmp(out->items[out->count - 2].version, out->items[out->count - 1].version) == 0) {
            rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "migrations %s and %s share version %s",
                               out->items[out->count - 2].filename, names[i], out->items[out->count - 1].version);
            goto out_free;
        }
    }
out_free:
    closedir(d);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc != 0)
        cdb_migrations_free(out);
    return rc;
}

static const cdb_migration *set_find(const cdb_migration_set *set, const char *version)
{
    size_t lo = 0, hi = set->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(set->items[mid].version, version);
        if (c == 0)
            return &set->items[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

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
        const cdb_migration *m = set_find(set, PQgetvalue(hist, i, H_VERSION));
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
 * "dry_run", and for a dry run "would_succeed", "skipped" and "error".
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
            (!ok && json_object_set_new(result, "error", json_string(dry_err.message)) != 0))
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

int cdb_migrate_up(PGconn *conn, const cdb_migration_set *set,
                   const cdb_migrate_options *opt, json_t **out, cdb_error *err)
{
    const char *target = opt ? opt->target_version : NULL;
    const cdb_migration **plan = NULL;
    PGresult *hist = NULL;
    json_t *result = NULL;
    size_t n = 0;
    *out = NULL;
    if (target && !set_find(set, target))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "unknown target version %s", target);
    int rc = begin_run(conn, set, opt, &hist, err);
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

int cdb_migrate_down(PGconn *conn, const cdb_migration_set *set, int steps,
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
        const cdb_migration *m = set_find(set, v);
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
        if (rc == 0 && !set_find(set, PQgetvalue(hist, i, H_VERSION)))
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

/* ---------- new file ---------- */

int cdb_migrate_new_file(const char *dir, const char *name, char **path_out, cdb_error *err)
{
    char slug[101], date[9];
    size_t sl = 0;
    int rc = 0, next = 1, fd = -1;
    *path_out = NULL;
    /* Anything but [a-z0-9] becomes one '_', none at either end. */
    for (const char *p = name ? name : ""; *p && sl < sizeof slug - 1; p++) {
        char c = (char)tolower((unsigned char)*p);
        if (islower((unsigned char)c) || isdigit((unsigned char)c))
            slug[sl++] = c;
        else if (sl && slug[sl - 1] != '_')
            slug[sl++] = '_';
    }
    while (sl && slug[sl - 1] == '_')
        sl--;
    slug[sl] = '\0';
    if (!sl)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "migration name must contain letters or digits");

    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%Y%m%d", &tm);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot create %s: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot open %s: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)))
        if (cdb_migration_name_valid(de->d_name) && strncmp(de->d_name, date, 8) == 0) {
            int nnn = atoi(de->d_name + 9);
            if (nnn >= next)
                next = nnn + 1;
        }
    closedir(d);
    if (next > 999)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "no migration numbers left for %s", date);

    char *path = NULL;
    if (asprintf(&path, "%s/%s_%03d_%s.sql", dir, date, next, slug) < 0) {
        path = NULL;
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
        goto out_free;
    }
    static const char template[] = MARK_UP "\n\n" MARK_DOWN "\n";
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, template, sizeof template - 1) != (ssize_t)(sizeof template - 1)) {
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot write %s: %s", path, strerror(errno));
        goto out_free;
    }
out_free:
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot write %s: %s", path, strerror(errno));
    if (rc == 0) {
        *path_out = path;
    } else {
        if (fd >= 0)
            unlink(path);
        free(path);
    }
    return rc;
}
