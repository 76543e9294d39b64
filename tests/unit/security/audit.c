/*
 * security/audit.c - what the audit log keeps of a call without a database:
 * secrets removed from params at any depth, the actor chosen from the
 * principal and the origin, and the checks of the list's filters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../../src/security/audit.c"

#define ME "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"

static void test_secret_names(void **state)
{
    (void)state;
    const char *secret[] = {"password", "new_password", "Password", "PASSWORD_CONFIRM", "secret",
                            "client_secret", "token", "refresh_token", "access_token", "key",
                            "api_key", "encryption_key", "Idempotency-Key"};
    const char *plain[] = {"role", "owner_column", "table", "email", "username", "name", "schema",
                           "read_only_for", "file", "confirm"};
    for (size_t i = 0; i < sizeof secret / sizeof secret[0]; i++)
        assert_true(secret_name(secret[i]));
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        assert_false(secret_name(plain[i]));
}

static void test_redact_at_any_depth(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *in = json_loads("{\"role\": \"admin\", \"password\": \"hunter2\","
                            " \"nested\": {\"a\": 1, \"api_key\": \"k1\", \"deeper\": [{\"token\": \"t\","
                            " \"keep\": true}, \"plain\", {\"Secret\": {\"x\": 1}}]},"
                            " \"list\": [[{\"new_password\": \"p\"}]], \"n\": null}", 0, &jerr);
    assert_non_null(in);
    json_t *out = redact(in);
    assert_non_null(out);
    json_t *want = json_loads("{\"role\": \"admin\", \"nested\": {\"a\": 1, \"deeper\": [{\"keep\": true},"
                              " \"plain\", {}]}, \"list\": [[{}]], \"n\": null}", 0, &jerr);
    assert_non_null(want);
    assert_true(json_equal(out, want));
    char *text = json_dumps(out, JSON_COMPACT);
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "k1"));
    free(text);
    /* the input is left as it was */
    assert_string_equal(json_string_value(json_object_get(in, "password")), "hunter2");
    json_decref(in);
    json_decref(out);
    json_decref(want);

    json_t *scalar = json_string("x");
    json_t *copy = redact(scalar);
    assert_true(json_equal(scalar, copy));
    json_decref(scalar);
    json_decref(copy);
}

static void test_actor(void **state)
{
    (void)state;
    cdb_principal admin = {.role = CDB_ROLE_ADMIN, .user_id = ME}, op = {.role = CDB_ROLE_ADMIN};
    cdb_audit_origin_clear();
    assert_string_equal(actor_of(&admin), ME);
    assert_string_equal(actor_of(&op), "admin");
    assert_string_equal(actor_of(NULL), "anonymous");
    cdb_audit_origin_set("r1", "127.0.0.1", "cli");
    assert_string_equal(actor_of(&op), "cli");
    assert_string_equal(actor_of(&admin), ME);
    assert_string_equal(origin.request_id, "r1");
    cdb_audit_origin_set("r1", "127.0.0.1", "http");
    assert_string_equal(actor_of(&op), "admin");
    cdb_audit_origin_clear();
    assert_string_equal(origin.request_id, "");
    assert_string_equal(origin.via, "");
}

static void test_query_checks(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    const char *good[] = {"2026-01-15", "2026-01-15T10:30:00Z", "2026-01-15T10:30Z",
                          "2026-01-15T10:30:00.123456+02:00", "2024-02-29 23:59:59-0530", "2026-12-31T00:00:00+00"};
    const char *bad[] = {"", "not-a-date", "2026-13-01", "2026-02-30", "2025-02-29", "2026-01-15T24:00:00Z",
                         "2026-01-15T10:30:00ZZ", "2026-01-15T10:30:00.Z", "'; DROP TABLE x; --",
                         "2026-01-15T10:30:00+99:00", "now", "infinity", "2026-01-15T10"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(iso_timestamp(good[i]));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(iso_timestamp(bad[i]));

    struct { cdb_audit_query q; const char *field; } cases[] = {
        {{.limit = 501}, "limit"}, {{.limit = -1}, "limit"}, {{.since = "yesterday"}, "since"},
        {{.until = "2026-02-30"}, "until"}, {{.cursor = "abc"}, "cursor"}, {{.cursor = ""}, "cursor"},
        {{.cursor = "1234567890123456789"}, "cursor"}, {{.cursor = "-5"}, "cursor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(check_query(&cases[i].q, &err), CDB_ERR_VALIDATION_FAILED);
        assert_string_equal(json_string_value(json_object_get(err.details, "field")), cases[i].field);
    }
    cdb_audit_query ok = {.limit = 500, .cursor = "42", .since = "2026-01-01", .actor = "cli"};
    assert_int_equal(check_query(&ok, &err), 0);
    cdb_error_destroy(&err);
}

static void test_list_statement(void **state)
{
    (void)state;
    char sql[2048], limit[16];
    const char *params[8];
    cdb_audit_query q = {.actor = "x' OR 1=1 --", .action = "db_user.", .cursor = "7", .limit = 3};
    int n = build_list(&q, sql, sizeof sql, params, limit, sizeof limit);
    assert_int_equal(n, 4);
    /* values are bound, never spliced */
    assert_null(strstr(sql, "OR 1=1"));
    assert_non_null(strstr(sql, "starts_with(action, $2)"));
    assert_non_null(strstr(sql, "id < $3::bigint"));
    assert_non_null(strstr(sql, "LIMIT $4::int"));
    assert_string_equal(params[3], "4");
    cdb_audit_query exact = {.action = "table.expose"};
    n = build_list(&exact, sql, sizeof sql, params, limit, sizeof limit);
    assert_int_equal(n, 2);
    assert_non_null(strstr(sql, "action = $1"));
    assert_string_equal(params[1], "51");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_names),
        cmocka_unit_test(test_redact_at_any_depth),
        cmocka_unit_test(test_actor),
        cmocka_unit_test(test_query_checks),
        cmocka_unit_test(test_list_statement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
