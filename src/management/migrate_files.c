/*
 * migrate_files.c - the migration files (migrate.h): the naming rule,
 * parsing a file into its up and down sections with its SHA-256, the
 * statement splitter, loading a directory into a cdb_migration_set, and
 * `coredb migrate new`. Pure code and the filesystem, no database: the
 * runner is migrate.c.
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

#include "core/timeutil.h"
#include "management/migrate_internal.h"

/* FNV-1a 64 of "coredb.migrate": the migrators' session lock. The next
 * number guards the creation of the history table (transaction lock). */

#define MARK_UP      "-- migrate:up"
#define MARK_DOWN    "-- migrate:down"
#define MARK_NOTX    "-- migrate:no-transaction"

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
    if (!out->version || !out->description || !out->filename || !out->up_sql || !out->down_sql) {
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

const cdb_migration *cdb__migration_find(const cdb_migration_set *set, const char *version)
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

/* ---------- new file ---------- */

/*
 * What `migrate new` writes: empty up and down sections, and commented the
 * statements a new table needs before the data API may use it, which are
 * those `coredb table expose` runs (management/tables.c; README "Your own
 * tables"). Without them a new table answers 404 UNKNOWN_TABLE even to an
 * admin. %1$s: the example table's name.
 */
#define TEMPLATE                                                                                  \
    "-- Describe here what this migration changes and why.\n"                                    \
    "--\n"                                                                                        \
    "-- A new table is invisible to the data API (404 UNKNOWN_TABLE, even for an\n"              \
    "-- admin) until the application roles are granted it and row-level security\n"              \
    "-- says whose rows are whose. Either run, once `coredb migrate up` created it,\n"            \
    "--     coredb table expose %1$s      (or POST /api/v1/admin/tables/%1$s/expose)\n"               \
    "-- or uncomment the statements below: they are what `table expose` does for\n"              \
    "-- a table whose uuid column user_id names each row's owner.\n"                             \
    "\n"                                                                                          \
    MARK_UP "\n"                                                                                  \
    "-- CREATE TABLE %1$s (\n"                                                                      \
    "--     id bigserial PRIMARY KEY,\n"                                                          \
    "--     user_id uuid NOT NULL DEFAULT coredb.current_user_id(),  -- the caller, when omitted\n" \
    "--     body text NOT NULL,\n"                                                                \
    "--     created_at timestamptz NOT NULL DEFAULT now()\n"                                      \
    "-- );\n"                                                                                     \
    "--\n"                                                                                        \
    "-- -- the three application roles the data API runs as (read-only: GRANT SELECT only)\n"   \
    "-- GRANT SELECT, INSERT, UPDATE, DELETE ON %1$s TO coredb_admin, coredb_user, coredb_premium;\n" \
    "-- GRANT USAGE, SELECT ON SEQUENCE %1$s_id_seq TO coredb_admin, coredb_user, coredb_premium;\n" \
    "-- ALTER TABLE %1$s ENABLE ROW LEVEL SECURITY;\n"                                              \
    "-- -- admin: every row\n"                                                                    \
    "-- CREATE POLICY coredb_admin ON %1$s TO coredb_admin USING (true) WITH CHECK (true);\n"       \
    "-- -- user and premium: their own rows only; restrictive, so a refused write\n"             \
    "-- -- answers 403 \"user_id must be your own\"\n"                                             \
    "-- CREATE POLICY coredb_rows ON %1$s TO coredb_user, coredb_premium USING (true) WITH CHECK (true);\n" \
    "-- CREATE POLICY coredb_own_user_id ON %1$s AS RESTRICTIVE TO coredb_user, coredb_premium\n"   \
    "--     USING (user_id = coredb.current_user_id())\n"                                         \
    "--     WITH CHECK (user_id = coredb.current_user_id());\n"                                   \
    "\n"                                                                                          \
    MARK_DOWN "\n"                                                                                \
    "-- DROP TABLE IF EXISTS %1$s;\n"

int cdb_migrate_new_file(const char *dir, const char *name, char **path_out, cdb_error *err)
{
    char *text = NULL;
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
        rc = cdb_error_oom(err);
        goto out_free;
    }
    /* the example table: "add_notes" / "create_notes" -> notes */
    const char *table = strncmp(slug, "add_", 4) == 0 && slug[4] ? slug + 4
                        : strncmp(slug, "create_", 7) == 0 && slug[7] ? slug + 7
                        : "my_table";
    int tlen = asprintf(&text, TEMPLATE, table);
    if (tlen < 0) {
        text = NULL;
        rc = cdb_error_oom(err);
        goto out_free;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)tlen) != (ssize_t)tlen) {
        rc = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "cannot write %s: %s", path, strerror(errno));
        goto out_free;
    }
out_free:
    free(text);
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
