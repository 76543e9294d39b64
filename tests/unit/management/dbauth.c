/*
 * management/dbauth.c - unit tests of what dbauth.c decides without a
 * database: which words are privileges, the shape of a role request, the
 * body checks. Everything that touches PostgreSQL is tested end to end in
 * tests/e2e/test_admin_dbauth.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "management/dbauth.c"

static void test_privilege_words(void **state)
{
    (void)state;
    assert_string_equal(privilege_of("select", 6), "SELECT");
    assert_string_equal(privilege_of("References", 10), "REFERENCES");
    assert_string_equal(privilege_of("TRIGGER x", 7), "TRIGGER");
    assert_null(privilege_of("ALL", 3));
    assert_null(privilege_of("SELECT;", 7));
    assert_null(privilege_of("", 0));
    assert_null(privilege_of("SELECTSELECTSELECT", 18));
    assert_null(privilege_of("CREATE", 6));
}

/* Shown prefixes of names in messages never end inside a UTF-8 sequence. */
static void test_shown_prefix(void **state)
{
    (void)state;
    assert_int_equal(shown("abc", 3, 40), 3);
    assert_int_equal(shown("abcdef", 6, 4), 4);
    /* "a" then e-acute (2 bytes) repeated: bytes 2, 5 and 8 continue a sequence */
    const char *s = "a\xc3\xa9" "a\xc3\xa9" "a\xc3\xa9";
    assert_int_equal(shown(s, 9, 5), 4);
    assert_int_equal(shown(s, 9, 4), 4);
    assert_int_equal(shown(s, 9, 3), 3);
    assert_int_equal(shown(s, 9, 2), 1);
}

static json_t *body(const char *text)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    return v;
}

static void test_role_request(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    role_req r = {0};
    json_t *b = body("{\"role_name\": \"reporting\", \"permissions\": [\"SELECT\"], \"description\": \"d\"}");
    assert_int_equal(parse_role_request(b, &r, &err), 0);
    assert_string_equal(r.name, "reporting");
    assert_string_equal(r.description, "d");
    json_decref(b);

    static const char *const bad[] = {
        "[]", "{\"role_name\": \"Reporting\", \"permissions\": []}",
        "{\"role_name\": \"r\", \"permissions\": \"SELECT\"}",
        "{\"role_name\": \"r\"}",
        "{\"role_name\": \"r\", \"permissions\": [], \"description\": 1}",
        "{\"role_name\": \"r\", \"permissions\": [], \"superuser\": true}",
        "{\"role_name\": \"pg_r\", \"permissions\": []}",
        "{\"role_name\": \"r; DROP\", \"permissions\": []}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        role_req x = {0};
        b = body(bad[i]);
        assert_int_equal(parse_role_request(b, &x, &err), CDB_ERR_VALIDATION_FAILED);
        json_decref(b);
    }
    cdb_error_destroy(&err);
}

static void test_body_fields(void **state)
{
    (void)state;
    static const char *const fields[] = {"roles", NULL};
    cdb_error err;
    cdb_error_init(&err);
    assert_int_equal(cdb__dbauth_body(NULL, true, fields, &err), 0);
    assert_int_equal(cdb__dbauth_body(NULL, false, fields, &err), CDB_ERR_VALIDATION_FAILED);
    json_t *b = body("{\"roles\": []}");
    assert_int_equal(cdb__dbauth_body(b, false, fields, &err), 0);
    json_decref(b);
    b = body("{\"roles\": [], \"x'; DROP\": 1}");
    assert_int_equal(cdb__dbauth_body(b, false, fields, &err), CDB_ERR_VALIDATION_FAILED);
    /* a hostile key is not echoed back */
    assert_null(strstr(err.message, "DROP"));
    json_decref(b);
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_privilege_words),
        cmocka_unit_test(test_shown_prefix),
        cmocka_unit_test(test_role_request),
        cmocka_unit_test(test_body_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
