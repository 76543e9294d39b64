/*
 * fuzz_sql.h - what the SQL-building harnesses share: a catalog fixture
 * (one table with hostile names and every column kind) and the oracle
 * that the statement builder keeps its promise (src/data/sqlbuild.h):
 * the only text in the SQL is fixed fragments, identifiers of the fixture
 * quoted with "" doubling, and $n parameters. Anything else - a quote
 * literal, a comment, a semicolon, an identifier the fixture does not
 * have, a word no fragment spells, a $n past the parameters - aborts, so
 * libFuzzer keeps the input as a crash.
 */
#ifndef COREDB_FUZZ_SQL_H
#define COREDB_FUZZ_SQL_H

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/catalog.h"

#define FUZZ_SCHEMA "app\"data"

/* Names chosen to be hostile: a quote, a keyword, SQL in a name, unicode. */
static cdb_column fuzz_columns[] = {
    {.name = "id", .type_name = "uuid", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT, .has_default = true},
    {.name = "title", .type_name = "character varying(255)", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE, .not_null = true},
    {.name = "size", .type_name = "bigint", .kind = CDB_COL_NUMBER,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "score", .type_name = "numeric(5,4)", .kind = CDB_COL_NUMBER,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "active", .type_name = "boolean", .kind = CDB_COL_BOOL,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "settings", .type_name = "jsonb", .kind = CDB_COL_JSON,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "created_at", .type_name = "timestamp(3) with time zone", .kind = CDB_COL_TIME,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT},
    {.name = "we\"ird", .type_name = "text", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "select", .type_name = "character(3)", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "x'; DROP TABLE t; --", .type_name = "text", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE},
    {.name = "flags", .type_name = "bit(3)", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_UPDATE},
    {.name = "d\xc3\xa9j\xc3\xa0", .type_name = "date", .kind = CDB_COL_TIME,
     .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT},
    {.name = "secret", .type_name = "text", .kind = CDB_COL_TEXT, .privs = CDB_PRIV_UPDATE},
};

static const cdb_table fuzz_table = {
    .name = "pro\"jects",
    .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE | CDB_PRIV_DELETE,
    .columns = fuzz_columns,
    .ncolumns = sizeof fuzz_columns / sizeof fuzz_columns[0],
};

/* Words the fixed fragments of src/data and the fixture's type names spell. */
static const char *const fuzz_sql_words[] = {
    "SELECT", "row_to_json", "t", "x", "text", "FROM", "AS", "WHERE", "AND", "IS", "NULL", "NOT",
    "IN", "LIKE", "ILIKE", "ORDER", "BY", "ASC", "DESC", "LIMIT", "OFFSET", "bigint", "count",
    "INSERT", "INTO", "VALUES", "ON", "CONFLICT", "DO", "UPDATE", "SET", "EXCLUDED", "NOTHING",
    "DELETE", "RETURNING", "jsonb", "bpchar", "int", "uuid", "character", "varying", "numeric",
    "boolean", "timestamp", "with", "time", "zone", "bit", "date", NULL,
};

static void fuzz_sql_die(const char *why, const char *sql, size_t at)
{
    fprintf(stderr, "SQL oracle: %s at byte %zu of:\n%s\n", why, at, sql);
    abort();
}

static bool fuzz_sql_ident_ok(const char *name, const char *const *extra)
{
    if (strcmp(name, FUZZ_SCHEMA) == 0 || strcmp(name, fuzz_table.name) == 0)
        return true;
    for (size_t i = 0; i < fuzz_table.ncolumns; i++)
        if (strcmp(name, fuzz_table.columns[i].name) == 0)
            return true;
    for (; extra && *extra; extra++)
        if (strcmp(name, *extra) == 0)
            return true;
    return false;
}

/*
 * Aborts unless sql is made only of fragment words, fixture identifiers
 * (or one of extra), numbers, punctuation and $1..$nparams.
 */
static void fuzz_sql_check(const char *sql, int nparams, const char *const *extra)
{
    size_t i = 0, n = strlen(sql);
    char word[256];
    while (i < n) {
        unsigned char ch = (unsigned char)sql[i];
        if (ch == ' ') {
            i++;
        } else if (ch == '"') {
            size_t at = i, w = 0;
            for (i++;; i++) {
                if (i >= n)
                    fuzz_sql_die("unterminated identifier", sql, at);
                if (sql[i] == '"') {
                    if (sql[i + 1] != '"')
                        break;
                    i++;
                }
                if (w + 1 >= sizeof word)
                    fuzz_sql_die("identifier too long", sql, at);
                word[w++] = sql[i];
            }
            word[w] = '\0';
            i++;
            if (!fuzz_sql_ident_ok(word, extra))
                fuzz_sql_die("identifier not in the catalog fixture", sql, at);
        } else if (ch == '$') {
            size_t at = i;
            long v = 0;
            if (!isdigit((unsigned char)sql[++i]))
                fuzz_sql_die("$ without a number", sql, at);
            while (isdigit((unsigned char)sql[i]) && v < 100000)
                v = v * 10 + (sql[i++] - '0');
            if (v < 1 || v > nparams)
                fuzz_sql_die("parameter number out of range", sql, at);
        } else if (isalpha(ch) || ch == '_') {
            size_t at = i, w = 0;
            while (i < n && (isalnum((unsigned char)sql[i]) || sql[i] == '_') && w + 1 < sizeof word)
                word[w++] = sql[i++];
            word[w] = '\0';
            bool known = false;
            for (const char *const *k = fuzz_sql_words; *k && !known; k++)
                known = strcmp(*k, word) == 0;
            if (!known)
                fuzz_sql_die("a word no fragment spells (a value outside a parameter?)", sql, at);
        } else if (isdigit(ch)) {
            while (isdigit((unsigned char)sql[i]))
                i++;
        } else if (ch == '-' && sql[i + 1] == '-') {
            fuzz_sql_die("comment", sql, i);
        } else if (ch == '/' && sql[i + 1] == '*') {
            fuzz_sql_die("comment", sql, i);
        } else if (strchr("(),.:=<>*", ch)) {
            i++;
        } else {
            fuzz_sql_die("a character no fragment has (quote literal, ';', ...)", sql, i);
        }
    }
}

/* The input as a NUL-terminated string (malloc'd; abort on OOM: not a finding). */
static char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
