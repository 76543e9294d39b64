/*
 * migration_file.c - libFuzzer harness: a migration file as read from
 * MIGRATIONS_DIR (src/management/migrate_files.c): cdb_migration_name_valid
 * on a file name, cdb_migration_parse (the "-- migrate:up/down" and
 * "-- migrate:no-transaction" lines, header rules, NUL bytes, checksum),
 * and cdb_migration_split (statements, with quotes, E'' escapes,
 * $tag$ bodies, nested block comments and line comments) on both sections.
 *
 * The input is "file name \n file text". Oracles: every statement is
 * non-empty and trimmed, and splitting a statement again gives back
 * exactly that one statement (the splitter agrees with itself about where
 * statements end, so no ';' inside a quote or body cuts a statement that
 * the runner then sends in two halves).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/migrate.h"
#include "management/migrate_internal.h"

static void die(const char *why, const char *stmt, const char *sql)
{
    fprintf(stderr, "split oracle: %s\nstatement: [%s]\nof: [%s]\n", why, stmt, sql);
    abort();
}

static void check_split(const char *sql)
{
    char **stmts = NULL;
    size_t n = 0;
    if (cdb_migration_split(sql, &stmts, &n) != 0)
        abort();   /* only out of memory fails */
    for (size_t i = 0; i < n; i++) {
        const char *s = stmts[i];
        size_t len = strlen(s);
        if (len == 0 || isspace((unsigned char)s[0]) || isspace((unsigned char)s[len - 1]))
            die("empty or untrimmed", s, sql);
        char **again = NULL;
        size_t m = 0;
        if (cdb_migration_split(s, &again, &m) != 0)
            abort();
        if (m != 1 || strcmp(again[0], s) != 0)
            die("splitting the statement again does not give it back", s, sql);
        cdb_migration_split_free(again, m);
    }
    cdb_migration_split_free(stmts, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl)
        return 0;
    char *name = strndup((const char *)data, (size_t)(nl - data));
    size_t len = size - (size_t)(nl - data) - 1;
    char *text = malloc(len + 1);
    if (!name || !text)
        abort();
    memcpy(text, nl + 1, len);
    text[len] = '\0';
    (void)cdb_migration_name_valid(name);
    cdb_migration m;
    cdb_error err;
    cdb_error_init(&err);
    /* the name as given, then a valid one so the text is parsed whatever the name */
    const char *names[] = {name, "20240115_001_fuzz.sql"};
    for (int k = 0; k < 2; k++) {
        int rc = cdb_migration_parse(names[k], text, len, &m, &err);
        if (rc == 0) {
            if (!m.up_sql || !m.down_sql || strlen(m.checksum) != 64)
                abort();
            check_split(m.up_sql);
            check_split(m.down_sql);
            cdb_migration_destroy(&m);
        } else if (rc != CDB_ERR_VALIDATION_FAILED) {
            abort();
        }
        cdb_error_destroy(&err);
        cdb_error_init(&err);
    }
    if (!memchr(text, '\0', len))
        check_split(text);
    cdb_error_destroy(&err);
    free(name);
    free(text);
    return 0;
}
