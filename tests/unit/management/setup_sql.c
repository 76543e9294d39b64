/*
 * management/setup_sql.c - unit tests of cdb_setup_sql (src/management/
 * setup_sql.c): the names it accepts, the password literal, the optional
 * event trigger. Running the SQL needs PostgreSQL: tests/e2e/
 * test_defaults_prod.py runs it as a superuser and starts coredb on it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coredb/migrate.h"

static char *gen(cdb_setup_sql_options opt, cdb_error *err)
{
    char *sql = NULL;
    cdb_error_init(err);
    int rc = cdb_setup_sql(&opt, &sql, err);
    assert_true(rc == 0 ? sql != NULL : sql == NULL);
    return sql;
}

static void test_defaults_and_grants(void **state)
{
    (void)state;
    cdb_error err;
    char *sql = gen((cdb_setup_sql_options){0}, &err);
    assert_non_null(strstr(sql, "CREATE ROLE \"coredb\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;"));
    assert_non_null(strstr(sql, "GRANT coredb_admin, coredb_user, coredb_premium TO \"coredb\" WITH ADMIN OPTION;"));
    assert_non_null(strstr(sql, "CREATE DATABASE \"coredb\" OWNER \"coredb\""));
    assert_non_null(strstr(sql, "\\connect coredb\n"));
    assert_non_null(strstr(sql, "CREATE EVENT TRIGGER coredb_catalog_change"));
    assert_non_null(strstr(sql, "ALTER FUNCTION coredb.notify_catalog_change() OWNER TO \"coredb\";"));
    assert_null(strstr(sql, "PASSWORD '"));
    free(sql);

    sql = gen((cdb_setup_sql_options){.role = "app_1", .database = "_db", .no_event_trigger = true}, &err);
    assert_null(strstr(sql, "CREATE EVENT TRIGGER"));
    assert_non_null(strstr(sql, "CREATE DATABASE \"_db\" OWNER \"app_1\""));
    free(sql);
}

static void test_password_literal(void **state)
{
    (void)state;
    cdb_error err;
    char *sql = gen((cdb_setup_sql_options){.password = "it's \"x\"\\"}, &err);
    assert_non_null(strstr(sql, "ALTER ROLE \"coredb\" PASSWORD 'it''s \"x\"\\';\n"));
    free(sql);
    const char *bad[] = {"", "two\nlines", "cr\r"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(gen((cdb_setup_sql_options){.password = bad[i]}, &err));
        assert_int_equal(err.code, CDB_ERR_VALIDATION_FAILED);
        cdb_error_destroy(&err);
    }
}

/* --administration: CREATEROLE and pg_signal_backend, only when asked for. */
static void test_administration(void **state)
{
    (void)state;
    cdb_error err;
    char *sql = gen((cdb_setup_sql_options){0}, &err);
    assert_null(strstr(sql, "\" CREATEROLE;"));
    assert_null(strstr(sql, "pg_signal_backend"));
    free(sql);
    sql = gen((cdb_setup_sql_options){.role = "app", .administration = true}, &err);
    assert_non_null(strstr(sql, "ALTER ROLE \"app\" CREATEROLE;\n"));
    assert_non_null(strstr(sql, "GRANT pg_signal_backend TO \"app\";\n"));
    /* after the login role exists, before the database */
    assert_true(strstr(sql, "\" CREATEROLE;\n") < strstr(sql, "CREATE DATABASE"));
    assert_true(strstr(sql, "CREATE ROLE \"app\" LOGIN") < strstr(sql, "\" CREATEROLE;\n"));
    free(sql);
}

static void test_names_refused(void **state)
{
    (void)state;
    const char *bad[] = {"", "Upper", "1abc", "pg_role", "a-b", "a\"b", "a b", "x';--",
                         "a234567890123456789012345678901234567890123456789012345678901234"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cdb_error err;
        assert_null(gen((cdb_setup_sql_options){.role = bad[i]}, &err));
        assert_int_equal(err.code, CDB_ERR_VALIDATION_FAILED);
        assert_string_equal(json_string_value(json_object_get(err.details, "field")), "role");
        cdb_error_destroy(&err);
        assert_null(gen((cdb_setup_sql_options){.database = bad[i]}, &err));
        assert_string_equal(json_string_value(json_object_get(err.details, "field")), "database");
        cdb_error_destroy(&err);
    }
    cdb_error err;
    char *sql = gen((cdb_setup_sql_options){.role = "a23456789012345678901234567890123456789012345678901234567890123"},
                    &err); /* 63: the longest identifier PostgreSQL keeps */
    assert_non_null(sql);
    free(sql);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_grants),
        cmocka_unit_test(test_password_literal),
        cmocka_unit_test(test_names_refused),
        cmocka_unit_test(test_administration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
