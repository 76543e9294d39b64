/*
 * data/query.c - the request validators of POST /data/query that need no
 * catalog and no database (validate_select, parse_order, parse_pagination).
 * They are static in src/data/query.c, so this file includes it, as h2o's
 * t/00unit does: the test sees the file's statics, and the linker takes
 * nothing of query.o from the library.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "data/query.c"

/* Runs validate_select on JSON text as role; returns the code, req filled. */
static int validate(const char *json, cdb_role role, query_req *req, cdb_error *err)
{
    json_t *r = json_loads(json, 0, NULL);
    assert_non_null(r);
    memset(req, 0, sizeof *req);
    cdb_error_init(err);
    int rc = validate_select(r, role, req, err);
    json_decref(r);             /* req points into r: only codes and numbers are read after */
    return rc;
}

static const char *field_of(const cdb_error *err)
{
    return json_string_value(json_object_get(err->details, "field"));
}

static void test_minimal_request_gets_defaults(void **state)
{
    (void)state;
    query_req req;
    cdb_error err;
    assert_int_equal(validate("{\"table\": \"projects\"}", CDB_ROLE_USER, &req, &err), 0);
    assert_int_equal(req.page, 1);
    assert_int_equal(req.limit, DEFAULT_LIMIT);
    assert_null(req.select);
    assert_null(req.filters);
    json_decref(req.order);
    cdb_error_destroy(&err);
}

static void test_unknown_and_bad_fields_are_named(void **state)
{
    (void)state;
    static const struct { const char *json; cdb_err code; const char *field; } cases[] = {
        {"{\"table\": \"p\", \"colour\": 1}", CDB_ERR_VALIDATION_FAILED, "colour"},
        {"{}", CDB_ERR_VALIDATION_FAILED, "table"},
        {"{\"table\": \"\"}", CDB_ERR_VALIDATION_FAILED, "table"},
        {"{\"table\": \"p\", \"query_type\": \"delete\"}", CDB_ERR_VALIDATION_FAILED, "query_type"},
        {"{\"table\": \"p\", \"select\": []}", CDB_ERR_VALIDATION_FAILED, "select"},
        {"{\"table\": \"p\", \"select\": [\"id\", 3]}", CDB_ERR_VALIDATION_FAILED, "select"},
        {"{\"table\": \"p\", \"filters\": [1]}", CDB_ERR_INVALID_FILTER, NULL},
        {"{\"table\": \"p\", \"order_by\": \"id\"}", CDB_ERR_VALIDATION_FAILED, "order_by"},
        {"{\"table\": \"p\", \"order_by\": [{\"column\": \"id\", \"direction\": \"up\"}]}",
         CDB_ERR_VALIDATION_FAILED, "order_by"},
        {"{\"table\": \"p\", \"order_by\": [{\"column\": \"id\", \"nulls\": \"first\"}]}",
         CDB_ERR_VALIDATION_FAILED, "order_by"},
        {"{\"table\": \"p\", \"pagination\": {\"page\": 0}}", CDB_ERR_VALIDATION_FAILED, "pagination.page"},
        {"{\"table\": \"p\", \"pagination\": {\"limit\": 0}}", CDB_ERR_VALIDATION_FAILED, "pagination.limit"},
        {"{\"table\": \"p\", \"pagination\": {\"size\": 5}}", CDB_ERR_VALIDATION_FAILED, "pagination"},
        {"{\"table\": \"p\", \"pagination\": 3}", CDB_ERR_VALIDATION_FAILED, "pagination"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        query_req req;
        cdb_error err;
        int rc = validate(cases[i].json, CDB_ROLE_ADMIN, &req, &err);
        if (rc != (int)cases[i].code)
            fail_msg("%s: got %s", cases[i].json, cdb_err_name(rc));
        if (cases[i].field)
            assert_string_equal(field_of(&err), cases[i].field);
        json_decref(req.order);
        cdb_error_destroy(&err);
    }
}

static void test_order_by_is_normalized(void **state)
{
    (void)state;
    query_req req;
    cdb_error err;
    assert_int_equal(validate("{\"table\": \"p\", \"order_by\": {\"column\": \"created_at\", \"direction\": \"DESC\"}}",
                              CDB_ROLE_USER, &req, &err), 0);
    assert_int_equal(json_array_size(req.order), 1);
    json_t *o = json_array_get(req.order, 0);
    assert_string_equal(json_string_value(json_object_get(o, "column")), "created_at");
    assert_string_equal(json_string_value(json_object_get(o, "direction")), "desc");
    json_decref(req.order);
    cdb_error_destroy(&err);
}

static void test_limit_depends_on_role(void **state)
{
    (void)state;
    query_req req;
    cdb_error err;
    assert_int_equal(validate("{\"table\": \"p\", \"pagination\": {\"limit\": 100}}", CDB_ROLE_USER, &req, &err), 0);
    assert_int_equal(req.limit, 100);
    cdb_error_destroy(&err);
    assert_int_equal(validate("{\"table\": \"p\", \"pagination\": {\"limit\": 101}}", CDB_ROLE_USER, &req, &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(json_integer_value(json_object_get(err.details, "max")), USER_MAX_LIMIT);
    cdb_error_destroy(&err);
    assert_int_equal(validate("{\"table\": \"p\", \"pagination\": {\"limit\": 1000}}", CDB_ROLE_PREMIUM, &req, &err), 0);
    cdb_error_destroy(&err);
    assert_int_equal(validate("{\"table\": \"p\", \"pagination\": {\"limit\": 1001}}", CDB_ROLE_ADMIN, &req, &err),
                     CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
}

static void test_page_offset_fits_a_bigint(void **state)
{
    (void)state;
    query_req req;
    cdb_error err;
    char json[160];
    snprintf(json, sizeof json, "{\"table\": \"p\", \"pagination\": {\"page\": %lld, \"limit\": 10}}",
             (long long)(INT64_MAX / 10));
    assert_int_equal(validate(json, CDB_ROLE_ADMIN, &req, &err), 0);
    cdb_error_destroy(&err);
    snprintf(json, sizeof json, "{\"table\": \"p\", \"pagination\": {\"page\": %lld, \"limit\": 10}}",
             (long long)(INT64_MAX / 10) + 1);
    assert_int_equal(validate(json, CDB_ROLE_ADMIN, &req, &err), CDB_ERR_VALIDATION_FAILED);
    assert_string_equal(field_of(&err), "pagination.page");
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_request_gets_defaults),
        cmocka_unit_test(test_unknown_and_bad_fields_are_named),
        cmocka_unit_test(test_order_by_is_normalized),
        cmocka_unit_test(test_limit_depends_on_role),
        cmocka_unit_test(test_page_offset_fits_a_bigint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
