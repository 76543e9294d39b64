/*
 * management/migrate_files.c - unit tests of the migration engine's pure parts
 * (src/management/migrate.c): file names, sections, checksums, the
 * statement splitter, and loading/creating files in a temp directory.
 * Running migrations needs PostgreSQL and is covered end to end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "coredb/migrate.h"
#include "management/migrate_internal.h"

static int parse(const char *name, const char *text, cdb_migration *m, cdb_error *err)
{
    cdb_error_init(err);
    return cdb_migration_parse(name, text, strlen(text), m, err);
}

static void test_file_names(void **state)
{
    (void)state;
    const char *good[] = { "20240115_001_create_users.sql", "20261122_999_a.sql", "20240115_001_x1_2.sql" };
    const char *bad[] = { "2024011_001_x.sql", "20240115_01_x.sql", "20240115_001_.sql",
                          "20240115_001_Create.sql", "20240115_001_a-b.sql", "20240115_001_x.SQL",
                          "20240115-001_x.sql", "20240115_001x.sql", "a0240115_001_x.sql",
                          "20240115_001_x.sql.bak", "20240115_001_x y.sql", "" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_true(cdb_migration_name_valid(good[i]));
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(cdb_migration_name_valid(bad[i]));

    cdb_migration m;
    cdb_error err;
    assert_int_equal(parse("20240115_001_Bad.sql", "-- migrate:up\nSELECT 1;\n", &m, &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_non_null(strstr(err.message, "20240115_001_Bad.sql"));
    cdb_error_destroy(&err);
}

static void test_sections(void **state)
{
    (void)state;
    cdb_migration m;
    cdb_error err;
    assert_int_equal(parse("20240115_001_create_users.sql",
                           "-- a comment first\n\n  -- migrate:up  \r\nCREATE TABLE a (id int);\n"
                           "-- migrate:down\nDROP TABLE a;\n", &m, &err), 0);
    assert_string_equal(m.version, "20240115_001");
    assert_string_equal(m.description, "create users");
    assert_string_equal(m.filename, "20240115_001_create_users.sql");
    assert_string_equal(m.up_sql, "CREATE TABLE a (id int);");
    assert_string_equal(m.down_sql, "DROP TABLE a;");
    assert_false(m.no_transaction);
    cdb_migration_destroy(&m);

    /* no-transaction before up; no down section at all: empty down */
    assert_int_equal(parse("20240115_002_idx.sql",
                           "-- migrate:no-transaction\n-- migrate:up\nCREATE INDEX CONCURRENTLY i ON a (id);\n",
                           &m, &err), 0);
    assert_true(m.no_transaction);
    assert_string_equal(m.up_sql, "CREATE INDEX CONCURRENTLY i ON a (id);");
    assert_string_equal(m.down_sql, "");
    cdb_migration_destroy(&m);

    const char *broken[] = {
        "CREATE TABLE a (id int);\n",                          /* no up marker */
        "-- migrate:down\nDROP TABLE a;\n",                    /* down without up */
        "-- migrate:up\nSELECT 1;\n-- migrate:down\n-- migrate:up\n", /* second up */
        "SELECT 1;\n-- migrate:up\nSELECT 2;\n",               /* SQL before up */
        "-- migrate:up\n-- migrate:no-transaction\nSELECT 1;\n", /* flag too late */
        "-- migrate:upx\nSELECT 1;\n",                         /* not the marker */
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        assert_int_equal(parse("20240115_003_broken.sql", broken[i], &m, &err), CDB_ERR_VALIDATION_FAILED);
        assert_non_null(strstr(err.message, "20240115_003_broken.sql"));
        assert_null(m.up_sql);
        cdb_error_destroy(&err);
    }
}

static void test_checksum(void **state)
{
    (void)state;
    /* printf -- '-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n' | sha256sum */
    cdb_migration m;
    cdb_error err;
    assert_int_equal(parse("20240115_001_x.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n",
                           &m, &err), 0);
    assert_string_equal(m.checksum, "77feb01458ace166fd358f2d713a3d1e4b2634d8d67cf38782857f1c891c83b0");
    cdb_migration_destroy(&m);
    /* one more byte, another checksum */
    assert_int_equal(parse("20240115_001_x.sql", "-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 2;\n\n",
                           &m, &err), 0);
    assert_string_not_equal(m.checksum, "77feb01458ace166fd358f2d713a3d1e4b2634d8d67cf38782857f1c891c83b0");
    cdb_migration_destroy(&m);
}

/* Splits sql and compares with the expected statements. */
static void expect_split(const char *sql, const char **want, size_t nwant)
{
    char **st;
    size_t n;
    assert_int_equal(cdb_migration_split(sql, &st, &n), 0);
    if (n != nwant) {
        for (size_t i = 0; i < n; i++)
            print_message("got [%s]\n", st[i]);
    }
    assert_int_equal(n, nwant);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(st[i], want[i]);
    cdb_migration_split_free(st, n);
}

static void test_split_basic(void **state)
{
    (void)state;
    const char *w1[] = { "SELECT 1", "SELECT 2" };
    expect_split("SELECT 1;\n  SELECT 2 ;\n", w1, 2);
    expect_split("SELECT 1;;\n;SELECT 2", w1, 2); /* empty statements dropped, no final ';' */
    expect_split("", NULL, 0);
    expect_split("  \n ; ;\n-- only a comment; here\n/* and; this */\n", NULL, 0);
}

static void test_split_quotes(void **state)
{
    (void)state;
    const char *w1[] = { "SELECT 'a;b', 'it''s;'", "SELECT \"we;ird\"\"col\" FROM t" };
    expect_split("SELECT 'a;b', 'it''s;';SELECT \"we;ird\"\"col\" FROM t;", w1, 2);
    const char *w2[] = { "SELECT E'x\\';y'", "SELECT 2" };
    expect_split("SELECT E'x\\';y'; SELECT 2;", w2, 2);
    /* a backslash is an ordinary character in a standard string */
    const char *w3[] = { "SELECT 'a\\'", "SELECT 'b'" };
    expect_split("SELECT 'a\\'; SELECT 'b';", w3, 2);
}

static void test_split_dollar(void **state)
{
    (void)state;
    const char *w1[] = { "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$", "SELECT 3" };
    expect_split("DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\nSELECT 3;", w1, 2);
    const char *fn = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
                     "BEGIN\n  RAISE NOTICE '$$;';\n  RETURN 1; -- done;\nEND\n$body$";
    char sql[512];
    snprintf(sql, sizeof sql, "%s;\nSELECT f();\n", fn);
    const char *w2[] = { fn, "SELECT f()" };
    expect_split(sql, w2, 2);
    /* $1 and a$b are not dollar quotes */
    const char *w3[] = { "PREPARE p AS SELECT $1", "SELECT a$b$c FROM t" };
    expect_split("PREPARE p AS SELECT $1; SELECT a$b$c FROM t;", w3, 2);
}

static void test_split_comments(void **state)
{
    (void)state;
    /* leading comments are dropped, inner ones kept; ';' in comments ignored */
    const char *w1[] = { "SELECT 1 -- one; two\n  + 1", "SELECT /* a; /* nested; */ b; */ 2" };
    expect_split("-- header; comment\nSELECT 1 -- one; two\n  + 1;\n/* lead; */ SELECT /* a; /* nested; */ b; */ 2;",
                 w1, 2);
    /* '--' inside a string is not a comment */
    const char *w2[] = { "SELECT '--;'", "SELECT 2" };
    expect_split("SELECT '--;'; SELECT 2", w2, 2);
}

static void test_load_and_new(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_migrate.XXXXXX";
    assert_non_null(mkdtemp(dir));
    cdb_error err;
    cdb_error_init(&err);
    char *p1 = NULL, *p2 = NULL, *p3 = NULL;
    assert_int_equal(cdb_migrate_new_file(dir, "Add Users-Table!", &p1, &err), 0);
    assert_int_equal(cdb_migrate_new_file(dir, "second", &p2, &err), 0);
    assert_non_null(strstr(p1, "_001_add_users_table.sql"));
    assert_non_null(strstr(p2, "_002_second.sql"));
    assert_int_equal(cdb_migrate_new_file(dir, "--!!", &p3, &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_null(p3);
    cdb_error_destroy(&err);

    cdb_migration_set set;
    assert_int_equal(cdb_migrations_load(dir, &set, &err), 0);
    assert_int_equal(set.count, 2);
    assert_string_equal(set.items[0].description, "add users table");
    assert_string_equal(set.items[1].description, "second");
    /* the template's up section only shows, commented, what a new table
     * needs before the data API may use it (README "Your own tables") */
    assert_non_null(strstr(set.items[0].up_sql, "-- CREATE POLICY coredb_own_user_id ON users_table AS RESTRICTIVE"));
    assert_non_null(strstr(set.items[0].up_sql, "-- GRANT SELECT, INSERT, UPDATE, DELETE ON users_table TO"));
    for (const char *line = set.items[0].up_sql; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "")
        assert_true(*line == '\n' || strncmp(line, "--", 2) == 0);
    cdb_migrations_free(&set);

    /* two files with one version */
    char dup[512];
    snprintf(dup, sizeof dup, "%s/%.12s_other.sql", dir, strrchr(p1, '/') + 1);
    FILE *f = fopen(dup, "w");
    assert_non_null(f);
    fputs("-- migrate:up\nSELECT 1;\n", f);
    fclose(f);
    assert_int_equal(cdb_migrations_load(dir, &set, &err), CDB_ERR_VALIDATION_FAILED);
    assert_non_null(strstr(err.message, "share version"));
    assert_int_equal(set.count, 0);
    cdb_error_destroy(&err);

    unlink(dup);
    unlink(p1);
    unlink(p2);
    rmdir(dir);
    free(p1);
    free(p2);
}

int main(void)
{
    /* the library's one sodium_init() is in cdb_service_open, which these tests do not call */
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_names),
        cmocka_unit_test(test_sections),
        cmocka_unit_test(test_checksum),
        cmocka_unit_test(test_split_basic),
        cmocka_unit_test(test_split_quotes),
        cmocka_unit_test(test_split_dollar),
        cmocka_unit_test(test_split_comments),
        cmocka_unit_test(test_load_and_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
