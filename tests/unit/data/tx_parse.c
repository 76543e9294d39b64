/*
 * data/tx_parse.c - the validators of POST /data/transaction that need no
 * catalog: the request's shape, each operation's database, name and
 * fields (field_allowed is static), and the Redis operations with their
 * caller namespace. src/data/tx_parse.c is included, as h2o's t/00unit
 * does, to reach its statics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "data/tx_parse.c"

static const cdb_principal user = {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"};
static const cdb_principal admin = {.role = CDB_ROLE_ADMIN};

static void tx_clear(tx *t)
{
    for (int i = 0; i < t->nops; i++) {
        free(t->ops[i].full_key);
        free(t->ops[i].sql);
        json_decref(t->ops[i].data);
    }
    free(t);
}

/* Parses a request given as JSON text for caller; *out keeps the tx (tx_clear). */
static int parse(const char *json, const cdb_principal *caller, tx **out, cdb_error *err)
{
    json_t *r = json_loads(json, 0, NULL);
    assert_non_null(r);
    tx *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->caller = caller;
    cdb_error_init(err);
    int rc = cdb__tx_parse_request(t, r, err);
    json_decref(r);
    *out = t;
    return rc;
}

static void test_field_allowed_per_operation(void **state)
{
    (void)state;
    assert_true(field_allowed(OP_INSERT, "returning"));
    assert_false(field_allowed(OP_INSERT, "filters"));
    assert_true(field_allowed(OP_UPDATE, "filters"));
    assert_false(field_allowed(OP_DELETE, "data"));
    assert_true(field_allowed(OP_UPSERT, "conflict_columns"));
    assert_false(field_allowed(OP_UPDATE, "conflict_columns"));
    assert_true(field_allowed(OP_SET, "ttl"));
    assert_false(field_allowed(OP_DEL, "ttl"));
    assert_true(field_allowed(OP_EXPIRE, "ttl"));
    assert_false(field_allowed(OP_INCR, "value"));
}

static void test_request_shape(void **state)
{
    (void)state;
    static const struct { const char *json; const char *field; } cases[] = {
        {"[]", "body"},
        {"{\"ops\": []}", "ops"},
        {"{\"operations\": []}", "operations"},
        {"{\"operations\": {}}", "operations"},
        {"{\"operations\": [1]}", "operations"},
        {"{\"operations\": [{\"database\": \"mysql\", \"operation\": \"set\"}]}", "database"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"insert\"}]}", "operation"},
        {"{\"operations\": [{\"operation\": \"set\"}]}", "operation"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"del\", \"key\": \"k\", \"ttl\": 5}]}", "ttl"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"set\", \"key\": \"k\"}]}", "value"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"expire\", \"key\": \"k\"}]}", "ttl"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"expire\", \"key\": \"k\", \"ttl\": 0}]}", "ttl"},
        {"{\"operations\": [{\"database\": \"redis\", \"operation\": \"incr\", \"key\": \"\"}]}", "key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tx *t;
        cdb_error err;
        int rc = parse(cases[i].json, &user, &t, &err);
        if (rc != CDB_ERR_VALIDATION_FAILED)
            fail_msg("%s: got %s", cases[i].json, cdb_err_name(rc));
        const char *field = json_string_value(json_object_get(err.details, "field"));
        if (!field || strcmp(field, cases[i].field) != 0)
            fail_msg("%s: field %s, expected %s", cases[i].json, field ? field : "(none)", cases[i].field);
        cdb_error_destroy(&err);
        tx_clear(t);
    }
}

static void test_failing_operation_is_numbered_from_one(void **state)
{
    (void)state;
    tx *t;
    cdb_error err;
    assert_int_equal(parse("{\"operations\": [{\"database\": \"redis\", \"operation\": \"set\", \"key\": \"a\", \"value\": \"1\"},"
                           " {\"database\": \"redis\", \"operation\": \"set\", \"key\": \"b\"}]}", &user, &t, &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(json_integer_value(json_object_get(err.details, "operation")), 2);
    cdb_error_destroy(&err);
    tx_clear(t);
}

static void test_redis_keys_land_in_the_callers_namespace(void **state)
{
    (void)state;
    tx *t;
    cdb_error err;
    const char *req = "{\"operations\": [{\"database\": \"redis\", \"operation\": \"set\", \"key\": \"k\","
                      " \"value\": \"v\", \"ttl\": 60}, {\"database\": \"redis\", \"operation\": \"incr\", \"key\": \"n\"}]}";
    assert_int_equal(parse(req, &user, &t, &err), 0);
    assert_int_equal(t->nops, 2);
    assert_string_equal(t->ops[0].full_key, "app:user:0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f:k");
    assert_int_equal(t->ops[0].ttl, 60);
    assert_int_equal(t->nrows, 2);          /* Redis ops only: no generation bump */
    assert_string_equal(t->rows[1].op, "incr");
    cdb_error_destroy(&err);
    tx_clear(t);
    assert_int_equal(parse(req, &admin, &t, &err), 0);
    assert_string_equal(t->ops[0].full_key, "app:k");
    cdb_error_destroy(&err);
    tx_clear(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field_allowed_per_operation),
        cmocka_unit_test(test_request_shape),
        cmocka_unit_test(test_failing_operation_is_numbered_from_one),
        cmocka_unit_test(test_redis_keys_land_in_the_callers_namespace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
