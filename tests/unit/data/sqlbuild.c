/*
 * data/sqlbuild.c - the statement builder of the data API (sqlbuild.h),
 * without a database: a table built by hand, and for each filter the exact
 * SQL text and parameters produced, or the error refusing it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "data/sqlbuild.h"

static cdb_column columns[] = {
    {.name = "id", .type_name = "uuid", .kind = CDB_COL_TEXT, .privs = CDB_PRIV_SELECT},
    {.name = "title", .type_name = "character varying(255)", .kind = CDB_COL_TEXT,
     .privs = CDB_PRIV_SELECT},
    {.name = "size", .type_name = "bigint", .kind = CDB_COL_NUMBER, .privs = CDB_PRIV_SELECT},
    {.name = "score", .type_name = "numeric(5,4)", .kind = CDB_COL_NUMBER, .privs = CDB_PRIV_SELECT},
    {.name = "active", .type_name = "boolean", .kind = CDB_COL_BOOL, .privs = CDB_PRIV_SELECT},
    {.name = "settings", .type_name = "jsonb", .kind = CDB_COL_JSON, .privs = CDB_PRIV_SELECT},
    {.name = "created_at", .type_name = "timestamp(3) with time zone", .kind = CDB_COL_TIME,
     .privs = CDB_PRIV_SELECT},
    {.name = "we\"ird", .type_name = "text", .kind = CDB_COL_TEXT, .privs = CDB_PRIV_SELECT},
    {.name = "code", .type_name = "character(3)", .kind = CDB_COL_TEXT, .privs = CDB_PRIV_SELECT},
    {.name = "secret", .type_name = "text", .kind = CDB_COL_TEXT, .privs = CDB_PRIV_UPDATE},
};

static const cdb_table table = {
    .name = "pro\"jects",
    .privs = CDB_PRIV_SELECT,
    .columns = columns,
    .ncolumns = sizeof columns / sizeof columns[0],
};

/* Builds the WHERE clause of filters (JSON text); returns the code. */
static int where(const char *filters, cdb_sql *q, cdb_error *err)
{
    json_error_t jerr;
    json_t *f = json_loads(filters, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    assert_non_null(f);
    cdb_sql_init(q);
    cdb_error_init(err);
    int rc = cdb_sql_where(q, &table, f, err);
    json_decref(f);
    return rc;
}

/* filters give exactly sql with the nparams params listed (NULL = SQL NULL). */
static void expect_sql(const char *filters, const char *sql, int nparams, ...)
{
    cdb_sql q;
    cdb_error err;
    va_list ap;

    int rc = where(filters, &q, &err);
    if (rc != 0)
        fail_msg("%s: %s", filters, err.message);
    assert_false(q.oom);
    assert_string_equal(q.text, sql);
    assert_int_equal(q.len, strlen(sql));
    assert_int_equal(q.nparams, nparams);
    va_start(ap, nparams);
    for (int i = 0; i < nparams; i++) {
        const char *want = va_arg(ap, const char *);
        if (want)
            assert_string_equal(q.params[i], want);
        else
            assert_null(q.params[i]);
    }
    va_end(ap);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
}

/* filters are refused with code; details.column (when column) names it. */
static void expect_error(const char *filters, cdb_err code, const char *column)
{
    cdb_sql q;
    cdb_error err;
    int rc = where(filters, &q, &err);
    if (rc != (int)code)
        fail_msg("%s: got %d (%s), want %s", filters, rc, err.message, cdb_err_name(code));
    assert_int_equal(err.code, code);
    if (column)
        assert_string_equal(json_string_value(json_object_get(err.details, "column")), column);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
}

static void test_builder_basics(void **state)
{
    cdb_sql q;
    (void)state;
    cdb_sql_init(&q);
    cdb_sql_append(&q, "SELECT ");
    cdb_sql_ident(&q, "a\"b\"\"c");
    cdb_sql_append(&q, " FROM ");
    cdb_sql_table(&q, "public", "my\"table");
    cdb_sql_append(&q, " WHERE x = ");
    assert_int_equal(cdb_sql_param(&q, "v"), 0);
    cdb_sql_append(&q, " AND y = ");
    assert_int_equal(cdb_sql_param(&q, NULL), 0);
    assert_string_equal(q.text, "SELECT \"a\"\"b\"\"\"\"c\" FROM \"public\".\"my\"\"table\" WHERE x = $1 AND y = $2");
    assert_string_equal(q.params[0], "v");
    assert_null(q.params[1]);
    cdb_sql_reset(&q);
    assert_int_equal(q.nparams, 0);
    assert_int_equal(q.len, 0);
    cdb_sql_ident(&q, "");
    assert_string_equal(q.text, "\"\"");
    cdb_sql_destroy(&q);
}

static void test_param_limit(void **state)
{
    cdb_sql q;
    (void)state;
    cdb_sql_init(&q);
    for (int i = 0; i < CDB_SQL_MAX_PARAMS; i++)
        assert_int_equal(cdb_sql_param(&q, "x"), 0);
    assert_int_equal(cdb_sql_param(&q, "x"), -1);
    assert_int_equal(q.nparams, CDB_SQL_MAX_PARAMS);
    assert_false(q.oom);
    char last[16], beyond[16];
    snprintf(last, sizeof last, "$%d", CDB_SQL_MAX_PARAMS);
    snprintf(beyond, sizeof beyond, "$%d", CDB_SQL_MAX_PARAMS + 1);
    assert_non_null(strstr(q.text, last));
    assert_null(strstr(q.text, beyond));
    cdb_sql_destroy(&q);
}

static void test_operators(void **state)
{
    (void)state;
    expect_sql("null", "", 0);
    expect_sql("{}", "", 0);
    expect_sql("{\"title\": \"a\"}", " WHERE \"title\" = $1::character varying", 1, "a");
    expect_sql("{\"title\": {\"eq\": \"a\"}}", " WHERE \"title\" = $1::character varying", 1, "a");
    expect_sql("{\"title\": {\"neq\": \"a\"}}", " WHERE \"title\" <> $1::character varying", 1, "a");
    expect_sql("{\"size\": {\"gt\": 5}}", " WHERE \"size\" > $1::bigint", 1, "5");
    expect_sql("{\"size\": {\"gte\": -5}}", " WHERE \"size\" >= $1::bigint", 1, "-5");
    expect_sql("{\"score\": {\"lt\": 0.1}}", " WHERE \"score\" < $1::numeric", 1, "0.1");
    expect_sql("{\"score\": {\"lte\": \"1.5\"}}", " WHERE \"score\" <= $1::numeric", 1, "1.5");
    expect_sql("{\"created_at\": {\"gte\": \"2024-01-01\"}}",
               " WHERE \"created_at\" >= $1::timestamp with time zone", 1, "2024-01-01");
    expect_sql("{\"title\": {\"like\": \"%a_\"}}", " WHERE \"title\"::text LIKE $1::text", 1, "%a_");
    expect_sql("{\"id\": {\"ilike\": \"AB%\"}}", " WHERE \"id\"::text ILIKE $1::text", 1, "AB%");
    expect_sql("{\"size\": {\"in\": [1, 2, 3]}}",
               " WHERE \"size\" IN ($1::bigint, $2::bigint, $3::bigint)", 3, "1", "2", "3");
    expect_sql("{\"active\": true}", " WHERE \"active\" = $1::boolean", 1, "true");
    expect_sql("{\"active\": {\"is_null\": true}}", " WHERE \"active\" IS NULL", 0);
    expect_sql("{\"active\": {\"is_null\": false}}", " WHERE \"active\" IS NOT NULL", 0);
    expect_sql("{\"code\": \"abc\"}", " WHERE \"code\" = $1::bpchar", 1, "abc");
}

static void test_null_handling(void **state)
{
    (void)state;
    expect_sql("{\"title\": null}", " WHERE \"title\" IS NULL", 0);
    expect_sql("{\"title\": {\"eq\": null}}", " WHERE \"title\" IS NULL", 0);
    expect_sql("{\"title\": {\"neq\": null}}", " WHERE \"title\" IS NOT NULL", 0);
    expect_error("{\"size\": {\"gt\": null}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"size\": {\"in\": [1, null]}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"active\": {\"is_null\": 1}}", CDB_ERR_INVALID_FILTER, "active");
    expect_error("{\"active\": {\"is_null\": \"true\"}}", CDB_ERR_INVALID_FILTER, "active");
}

static void test_combinations(void **state)
{
    (void)state;
    expect_sql("{\"size\": {\"gte\": 1, \"lt\": 10}, \"title\": \"x\"}",
               " WHERE \"size\" >= $1::bigint AND \"size\" < $2::bigint AND \"title\" = $3::character varying",
               3, "1", "10", "x");
    expect_sql("{\"we\\\"ird\": \"v\"}", " WHERE \"we\"\"ird\" = $1::text", 1, "v");
}

static void test_json_columns(void **state)
{
    (void)state;
    expect_sql("{\"settings\": {\"eq\": {\"a\": [1, \"b\"]}}}",
               " WHERE \"settings\"::jsonb = $1::jsonb", 1, "{\"a\":[1,\"b\"]}");
    expect_sql("{\"settings\": {\"neq\": [1]}}", " WHERE \"settings\"::jsonb <> $1::jsonb", 1, "[1]");
    expect_sql("{\"settings\": [1, 2]}", " WHERE \"settings\"::jsonb = $1::jsonb", 1, "[1,2]");
    expect_sql("{\"settings\": 3}", " WHERE \"settings\"::jsonb = $1::jsonb", 1, "3");
    expect_error("{\"settings\": {\"gt\": 1}}", CDB_ERR_INVALID_FILTER, "settings");
    expect_error("{\"settings\": {\"in\": [1]}}", CDB_ERR_INVALID_FILTER, "settings");
    expect_error("{\"settings\": {\"like\": \"%\"}}", CDB_ERR_INVALID_FILTER, "settings");
}

static void test_refused(void **state)
{
    (void)state;
    expect_error("[1]", CDB_ERR_INVALID_FILTER, NULL);
    expect_error("\"title = 1; DROP TABLE x\"", CDB_ERR_INVALID_FILTER, NULL);
    expect_error("{\"nope\": 1}", CDB_ERR_UNKNOWN_COLUMN, "nope");
    expect_error("{\"title; DROP TABLE users--\": 1}", CDB_ERR_UNKNOWN_COLUMN,
                 "title; DROP TABLE users--");
    expect_error("{\"secret\": \"x\"}", CDB_ERR_UNKNOWN_COLUMN, "secret");
    expect_error("{\"title\": {\"between\": [1, 2]}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {\"=\": \"x\"}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"size\": {\"like\": \"1%\"}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"title\": {\"like\": 5}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"size\": {\"in\": []}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"size\": {\"in\": 1}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"size\": {\"in\": [[1]]}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"size\": {\"in\": [{\"a\": 1}]}}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"title\": [\"a\", \"b\"]}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {\"eq\": [\"a\"]}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {\"eq\": {\"a\": 1}}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {\"eq\": {\"eq\": 1}}}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"size\": true}", CDB_ERR_INVALID_FILTER, "size");
    expect_error("{\"created_at\": 5}", CDB_ERR_INVALID_FILTER, "created_at");
    expect_error("{\"title\": \"a\\u0000b\"}", CDB_ERR_INVALID_FILTER, "title");
    expect_error("{\"title\": {\"like\": \"a\\u0000\"}}", CDB_ERR_INVALID_FILTER, "title");
}

static void test_many_in_values(void **state)
{
    cdb_sql q;
    cdb_error err;
    (void)state;

    json_t *vals = json_array();
    for (int i = 0; i < CDB_SQL_MAX_IN; i++)
        json_array_append_new(vals, json_integer(i));
    json_t *f = json_pack("{s:{s:O}}", "size", "in", vals);
    cdb_sql_init(&q);
    cdb_error_init(&err);
    assert_int_equal(cdb_sql_where(&q, &table, f, &err), 0);
    assert_int_equal(q.nparams, CDB_SQL_MAX_IN);
    assert_string_equal(q.params[999], "999");
    assert_non_null(strstr(q.text, "$1000::bigint)"));
    cdb_sql_destroy(&q);

    /* one more value than an "in" takes */
    json_array_append_new(vals, json_integer(1000));
    cdb_sql_init(&q);
    assert_int_equal(cdb_sql_where(&q, &table, f, &err), CDB_ERR_INVALID_FILTER);
    cdb_sql_destroy(&q);

    /* a full "in" still leaves room for the other filters of the statement */
    json_array_remove(vals, 1000);
    json_object_set_new(f, "title", json_string("x"));
    cdb_sql_init(&q);
    assert_int_equal(cdb_sql_where(&q, &table, f, &err), 0);
    assert_int_equal(q.nparams, CDB_SQL_MAX_IN + 1);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
    json_decref(f);
    json_decref(vals);
}

static void test_value_text(void **state)
{
    cdb_error err;
    char *out;
    (void)state;
    cdb_error_init(&err);

    json_t *v = json_real(1.25);
    assert_int_equal(cdb_sql_value_text(v, &columns[3], "score", &out, &err), 0);
    assert_string_equal(out, "1.25");
    free(out);
    json_decref(v);

    v = json_null();
    out = (char *)"sentinel";
    assert_int_equal(cdb_sql_value_text(v, &columns[1], "title", &out, &err), 0);
    assert_null(out);
    json_decref(v);

    v = json_pack("{s:i}", "a", 1);
    assert_int_equal(cdb_sql_value_text(v, &columns[2], "size", &out, &err),
                     CDB_ERR_VALIDATION_FAILED);
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "size");
    assert_int_equal(cdb_sql_value_text(v, &columns[5], "settings", &out, &err), 0);
    assert_string_equal(out, "{\"a\":1}");
    free(out);
    json_decref(v);

    v = json_stringn("a\0b", 3);
    assert_int_equal(cdb_sql_value_text(v, &columns[1], "title", &out, &err),
                     CDB_ERR_VALIDATION_FAILED);
    json_decref(v);

    v = json_false();
    assert_int_equal(cdb_sql_value_text(v, &columns[4], "active", &out, &err), 0);
    assert_string_equal(out, "false");
    free(out);
    json_decref(v);
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builder_basics),
        cmocka_unit_test(test_param_limit),
        cmocka_unit_test(test_operators),
        cmocka_unit_test(test_null_handling),
        cmocka_unit_test(test_combinations),
        cmocka_unit_test(test_json_columns),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_many_in_values),
        cmocka_unit_test(test_value_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
