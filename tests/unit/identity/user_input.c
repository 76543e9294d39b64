/*
 * identity/user_input.c - the validation rules of the users API
 * (src/identity/user_input.c): every rule accepts its boundary and refuses just
 * past it, naming the field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "identity/user_input.h"

static cdb_config cfg = {.password_min_length = 10};

/* Parses a create body given as JSON text; returns the result code. */
static int parse(const char *json, bool create, cdb_user_input *in, cdb_error *err)
{
    json_t *body = json_loads(json, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    assert_non_null(body);
    cdb_error_init(err);
    int rc = cdb_user_input_parse(&cfg, body, create, in, err);
    json_decref(body); /* *in points into body: tests read only codes and email after this */
    return rc;
}

static void expect_field(const char *json, bool create, const char *field)
{
    cdb_user_input in;
    cdb_error err;
    int rc = parse(json, create, &in, &err);
    if (rc != CDB_ERR_VALIDATION_FAILED)
        fail_msg("%s: expected VALIDATION_FAILED, got %d", json, rc);
    json_t *f = json_object_get(err.details, "field");
    if (!json_is_string(f) || strcmp(json_string_value(f), field) != 0)
        fail_msg("%s: expected field %s, got %s", json, field, f ? json_string_value(f) : "none");
    cdb_error_destroy(&err);
}

static void expect_ok(const char *json, bool create)
{
    cdb_user_input in;
    cdb_error err;
    int rc = parse(json, create, &in, &err);
    if (rc != 0)
        fail_msg("%s: expected success, got %s (%s)", json, cdb_err_name(err.code), err.message);
    cdb_error_destroy(&err);
}

static void test_valid_create_lowercases_email(void **state)
{
    (void)state;
    cdb_user_input in;
    cdb_error err;
    json_t *body = json_pack("{s:s,s:s,s:s}", "email", "Ada.Lovelace+x@Example.COM",
                             "username", "ada_l.1-x", "password", "correct horse");
    cdb_error_init(&err);
    assert_int_equal(cdb_user_input_parse(&cfg, body, true, &in, &err), 0);
    assert_string_equal(in.email, "ada.lovelace+x@example.com");
    assert_string_equal(in.username, "ada_l.1-x");
    json_decref(body);
}

static void test_required_fields(void **state)
{
    (void)state;
    expect_field("{\"username\":\"abc\",\"password\":\"0123456789\"}", true, "email");
    expect_field("{\"email\":\"a@b.io\",\"password\":\"0123456789\"}", true, "username");
    expect_field("{\"email\":\"a@b.io\",\"username\":\"abc\"}", true, "password");
    expect_ok("{}", false); /* an update may change nothing */
    expect_field("[]", true, "body");
    expect_field("\"x\"", false, "body");
}

static void test_email_rules(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "plain", "@example.com", "a@", "a@b", "a@b.", "a@.b.com", "a b@example.com",
        "dots..in@example.com", ".lead@example.com", "trail.@example.com", "a@example..com",
        "a@-example.com", "a@example-.com", "a(c)@example.com", "<a>@example.com", "a@b@c.com",
    };
    char json[512];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(json, sizeof json, "{\"email\":\"%s\"}", bad[i]);
        expect_field(json, false, "email");
    }
    expect_ok("{\"email\":\"o'brien-x_y@sub.example.co.uk\"}", false);
    /* 255 characters is the limit: 64 + "@" + 63 "." 63 "." n ".com" */
    char email[400], big_json[500];
    for (int extra = 0; extra <= 1; extra++) {
        snprintf(email, sizeof email, "%.64s@%.63s.%.63s.%.*s.com",
                 "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll",
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 58 + extra,
                 "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
        assert_int_equal(strlen(email), 255 + extra);
        snprintf(big_json, sizeof big_json, "{\"email\":\"%s\"}", email);
        if (extra)
            expect_field(big_json, false, "email");
        else
            expect_ok(big_json, false);
    }
}

static void test_username_rules(void **state)
{
    (void)state;
    expect_ok("{\"username\":\"abc\"}", false);
    expect_field("{\"username\":\"ab\"}", false, "username");
    expect_ok("{\"username\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", false);  /* 50 */
    expect_field("{\"username\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}", false, "username");
    expect_field("{\"username\":\"Upper\"}", false, "username");
    expect_field("{\"username\":\"sp ace\"}", false, "username");
    expect_field("{\"username\":\"x'; DROP TABLE users;--\"}", false, "username");
}

static void test_password_rules(void **state)
{
    (void)state;
    expect_ok("{\"password\":\"0123456789\"}", false);
    expect_field("{\"password\":\"012345678\"}", false, "password");
    /* characters, not bytes: ten é are ten characters */
    expect_ok("{\"password\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"}", false);
    expect_field("{\"email\":\"Long.Enough@Example.com\",\"password\":\"long.enough@example.com\"}", false,
                 "password");
    expect_field("{\"password\":\"abcdefghij\\u0000k\"}", false, "password");

    cdb_error err;
    cdb_error_init(&err);
    char big[1026];
    memset(big, 'p', sizeof big);
    big[1024] = '\0'; /* 1024 bytes: the limit */
    assert_int_equal(cdb_user_check_password(&cfg, big, 1024, NULL, &err), 0);
    big[1024] = 'p', big[1025] = '\0';
    assert_int_equal(cdb_user_check_password(&cfg, big, 1025, NULL, &err), CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(cdb_user_check_password(&cfg, "same@mail.io", 12, "SAME@mail.io", &err),
                     CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
}

static void test_optional_fields(void **state)
{
    (void)state;
    expect_ok("{\"display_name\":null,\"profile_picture_url\":null}", false);
    expect_ok("{\"profile_picture_url\":\"https://cdn.example.com/a.png\"}", false);
    expect_field("{\"profile_picture_url\":\"ftp://example.com/a.png\"}", false, "profile_picture_url");
    expect_field("{\"profile_picture_url\":\"https://\"}", false, "profile_picture_url");
    expect_field("{\"profile_picture_url\":\"javascript:alert(1)\"}", false, "profile_picture_url");
    expect_field("{\"display_name\":\"tab\\there\"}", false, "display_name");
    expect_ok("{\"display_name\":\"Ada Lovelace \\u00e9\"}", false);
    expect_ok("{\"role\":\"premium\"}", false);
    expect_field("{\"role\":\"root\"}", false, "role");
}

static void test_types_and_unknown_fields(void **state)
{
    (void)state;
    expect_field("{\"email\":42}", false, "email");
    expect_field("{\"username\":[\"abc\"]}", false, "username");
    expect_field("{\"password\":null}", false, "password");
    expect_field("{\"display_name\":{\"a\":1}}", false, "display_name");
    expect_field("{\"is_admin\":true}", false, "is_admin");
    expect_field("{\"password_hash\":\"$argon2id$...\"}", false, "password_hash");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_create_lowercases_email),
        cmocka_unit_test(test_required_fields),
        cmocka_unit_test(test_email_rules),
        cmocka_unit_test(test_username_rules),
        cmocka_unit_test(test_password_rules),
        cmocka_unit_test(test_optional_fields),
        cmocka_unit_test(test_types_and_unknown_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
