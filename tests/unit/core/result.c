/*
 * test_result.c - the library's result form (src/core/result.c): key order
 * and values of success and error results, the error object the HTTP
 * envelope wraps (exact bytes, so a change to it shows here before a client
 * sees it), data merged by copy and never able to overwrite status, error or
 * timestamp, and a message cut inside a UTF-8 sequence.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "coredb/result.h"

/* The keys of o in order, comma-separated, into buf. */
static const char *keys_of(json_t *o, char *buf, size_t len)
{
    const char *key;
    json_t *v;
    buf[0] = '\0';
    json_object_foreach(o, key, v) {
        if (buf[0])
            strncat(buf, ",", len - strlen(buf) - 1);
        strncat(buf, key, len - strlen(buf) - 1);
    }
    return buf;
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

/* "YYYY-MM-DDTHH:MM:SSZ", UTC, within a few seconds of now. */
static void assert_timestamp_now(json_t *ts)
{
    const char *s = json_string_value(ts);
    struct tm tm;
    assert_non_null(s);
    assert_int_equal(strlen(s), 20);
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    assert_non_null(end);
    assert_int_equal(*end, '\0');
    time_t t = timegm(&tm), now = time(NULL);
    assert_true(t <= now && now - t <= 5);
}

static void test_success_without_data(void **state)
{
    char keys[256];
    json_t *r = cdb_result_object(NULL, NULL);
    assert_non_null(r);
    assert_string_equal(keys_of(r, keys, sizeof keys), "status,error,timestamp");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_true(json_is_null(json_object_get(r, "error")));
    assert_timestamp_now(json_object_get(r, "timestamp"));
    json_decref(r);

    /* an initialized, untouched error is a success too */
    cdb_error err;
    cdb_error_init(&err);
    r = cdb_result_object(&err, NULL);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_true(json_is_null(json_object_get(r, "error")));
    json_decref(r);
}

static void test_success_merges_data_by_copy(void **state)
{
    char keys[256];
    json_t *inner = json_pack("{s:i}", "n", 1);
    json_t *data = json_pack("{s:s, s:O, s:b}", "current_version", "20240101_001", "last", inner,
                             "dry_run", 0);
    json_t *r = cdb_result_object(NULL, data);
    assert_non_null(r);
    assert_string_equal(keys_of(r, keys, sizeof keys),
                        "status,error,timestamp,current_version,last,dry_run");
    assert_string_equal(json_string_value(json_object_get(r, "current_version")), "20240101_001");
    assert_true(json_is_false(json_object_get(r, "dry_run")));
    assert_ptr_equal(json_object_get(r, "last"), inner);
    /* data is borrowed: still the caller's, unchanged, after the result is gone */
    json_decref(r);
    assert_int_equal(json_object_size(data), 3);
    assert_int_equal(data->refcount, 1);
    assert_int_equal(inner->refcount, 2);
    json_decref(data);
    json_decref(inner);
}

static void test_error_result(void **state)
{
    char keys[256];
    cdb_error err;
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_CONFLICT, "field", "email", "Email already registered");
    json_t *data = json_pack("{s:s}", "partial", "yes");
    json_t *r = cdb_result_object(&err, data);
    assert_non_null(r);
    assert_string_equal(keys_of(r, keys, sizeof keys), "status,error,timestamp,partial");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    json_t *e = json_object_get(r, "error");
    assert_string_equal(keys_of(e, keys, sizeof keys), "code,message,details");
    char *s = dump(e);
    assert_string_equal(s, "{\"code\":\"CONFLICT\",\"message\":\"Email already registered\","
                           "\"details\":{\"field\":\"email\"}}");
    free(s);
    assert_timestamp_now(json_object_get(r, "timestamp"));
    json_decref(r);
    json_decref(data);
    /* the error still owns its details */
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "email");
    cdb_error_destroy(&err);
}

/*
 * The exact bytes of the error object, as the HTTP envelope (request.c)
 * sends them before adding timestamp and request_id: details is {} when
 * there are none, never absent or null.
 */
static void test_error_object_bytes(void **state)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_error_set(&err, CDB_ERR_DATABASE_UNAVAILABLE, "Unable to connect to PostgreSQL");
    json_t *e = cdb_result_error_object(&err);
    char *s = dump(e);
    assert_string_equal(s, "{\"code\":\"DATABASE_UNAVAILABLE\",\"message\":"
                           "\"Unable to connect to PostgreSQL\",\"details\":{}}");
    free(s);
    json_decref(e);

    /* the same error object sits inside the CLI's result */
    json_t *r = cdb_result_object(&err, NULL);
    e = cdb_result_error_object(&err);
    assert_true(json_equal(json_object_get(r, "error"), e));
    json_decref(e);
    json_decref(r);

    cdb_error_detail(&err, "retry_after", json_integer(30));
    e = cdb_result_error_object(&err);
    s = dump(e);
    assert_string_equal(s, "{\"code\":\"DATABASE_UNAVAILABLE\",\"message\":"
                           "\"Unable to connect to PostgreSQL\",\"details\":{\"retry_after\":30}}");
    free(s);
    json_decref(e);
    cdb_error_destroy(&err);
}

/* A data key named like the form's own never changes what a reader sees. */
static void test_reserved_keys_win(void **state)
{
    char keys[256];
    json_t *data = json_pack("{s:s, s:s, s:s, s:i}", "status", "fake", "error", "oops",
                             "timestamp", "yesterday", "kept", 7);
    json_t *r = cdb_result_object(NULL, data);
    assert_string_equal(keys_of(r, keys, sizeof keys), "status,error,timestamp,kept");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_true(json_is_null(json_object_get(r, "error")));
    assert_timestamp_now(json_object_get(r, "timestamp"));
    assert_int_equal(json_integer_value(json_object_get(r, "kept")), 7);
    json_decref(r);

    cdb_error err;
    cdb_error_init(&err);
    cdb_error_set(&err, CDB_ERR_NOT_FOUND, "User not found");
    r = cdb_result_object(&err, data);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "code")),
                        "NOT_FOUND");
    json_decref(r);
    cdb_error_destroy(&err);
    json_decref(data);
}

static void test_non_object_data_kept_whole(void **state)
{
    json_t *data = json_pack("[i, i]", 1, 2);
    json_t *r = cdb_result_object(NULL, data);
    assert_true(json_equal(json_object_get(r, "data"), data));
    json_decref(r);
    json_decref(data);
}

/* cdb_error_set truncates to 255 bytes, possibly inside a UTF-8 sequence. */
static void test_message_cut_inside_utf8(void **state)
{
    cdb_error err;
    char long_name[400];
    cdb_error_init(&err);
    memset(long_name, 'a', 254);
    strcpy(long_name + 254, "\xc3\xa9\xc3\xa9"); /* "éé": the first é straddles byte 255 */
    cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "%s", long_name);
    assert_int_equal(strlen(err.message), 255);
    json_t *e = cdb_result_error_object(&err);
    assert_non_null(e);
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    assert_int_equal(strlen(msg), 254);
    assert_memory_equal(msg, long_name, 254);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "VALIDATION_FAILED");
    json_decref(e);
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_success_without_data),
        cmocka_unit_test(test_success_merges_data_by_copy),
        cmocka_unit_test(test_error_result),
        cmocka_unit_test(test_error_object_bytes),
        cmocka_unit_test(test_reserved_keys_win),
        cmocka_unit_test(test_non_object_data_kept_whole),
        cmocka_unit_test(test_message_cut_inside_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
