/*
 * data/query_run.c - the page statement of a data-API read (page_sql) and
 * the cacheable part built from its one row (page_body): the same bytes as
 * the rows spliced one by one, a total that survives an empty page, and a
 * result of the wrong shape read as an empty page, not past its end. The
 * results are built with libpq's PQmakeEmptyPGresult / PQsetvalue, no
 * server. Includes the .c to reach its statics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "data/query_run.c"

/* A one-row result (total, rows) as the page statement gives; rows NULL = SQL NULL. */
static PGresult *page_result(const char *total, const char *rows)
{
    PGresAttDesc cols[2] = {{.name = "count", .format = 0, .typid = 20, .typlen = 8, .atttypmod = -1},
                            {.name = "string_agg", .format = 0, .typid = 25, .typlen = -1, .atttypmod = -1}};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(res);
    assert_true(PQsetResultAttrs(res, 2, cols));
    assert_true(PQsetvalue(res, 0, 0, (char *)total, (int)strlen(total)));
    assert_true(PQsetvalue(res, 0, 1, (char *)rows, rows ? (int)strlen(rows) : -1));
    return res;
}

static void test_page_sql_wraps_count_and_rows(void **state)
{
    (void)state;
    char *sql = page_sql("SELECT row_to_json(t)::text FROM (SELECT \"a\" FROM \"s\".\"t\" WHERE \"a\" = $1 "
                         "LIMIT $2::bigint OFFSET $3::bigint) t",
                         "SELECT count(*) FROM \"s\".\"t\" WHERE \"a\" = $1");
    assert_non_null(sql);
    assert_string_equal(sql, "SELECT (SELECT count(*) FROM \"s\".\"t\" WHERE \"a\" = $1), (SELECT string_agg(r.j, "
                             "',') FROM (SELECT row_to_json(t)::text FROM (SELECT \"a\" FROM \"s\".\"t\" WHERE "
                             "\"a\" = $1 LIMIT $2::bigint OFFSET $3::bigint) t) r(j))");
    free(sql);
}

static void test_page_body_splices_rows(void **state)
{
    (void)state;
    page_req req = {.page = 2, .limit = 2};
    PGresult *res = page_result("5", "{\"a\":3},{\"a\":4}");
    size_t len = 0;
    char *body = page_body(res, &req, &len);
    const char *want = "\"data\":[{\"a\":3},{\"a\":4}],\"pagination\":{\"page\":2,\"limit\":2,\"total\":5,\"pages\":3}";
    assert_non_null(body);
    assert_string_equal(body, want);
    assert_int_equal(len, strlen(want));
    free(body);
    PQclear(res);
}

/* A page past the end: no rows (string_agg gives NULL), the total still right. */
static void test_empty_page_keeps_its_total(void **state)
{
    (void)state;
    page_req req = {.page = 9, .limit = 20};
    PGresult *res = page_result("41", NULL);
    size_t len = 0;
    char *body = page_body(res, &req, &len);
    assert_non_null(body);
    assert_string_equal(body, "\"data\":[],\"pagination\":{\"page\":9,\"limit\":20,\"total\":41,\"pages\":3}");
    free(body);
    PQclear(res);
}

/* No row at all (cannot happen for an aggregate, but never read past it). */
static void test_no_row_reads_as_empty(void **state)
{
    (void)state;
    page_req req = {.page = 1, .limit = 20};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    size_t len = 0;
    char *body = page_body(res, &req, &len);
    assert_non_null(body);
    assert_string_equal(body, "\"data\":[],\"pagination\":{\"page\":1,\"limit\":20,\"total\":0,\"pages\":0}");
    free(body);
    PQclear(res);
}

/* Bad filter values are the caller's (INVALID_FILTER) only when the page statement failed. */
static void test_filter_value_errors_map_to_invalid_filter(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_INTERNAL_ERROR, "sqlstate", "22P02", "bad");
    assert_int_equal(query_error(STMT_PAGE, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_INTERNAL_ERROR, "sqlstate", "22P02", "bad");
    assert_int_equal(query_error(0, &err), CDB_ERR_INTERNAL_ERROR); /* the prelude's own failure */
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_sql_wraps_count_and_rows),
        cmocka_unit_test(test_page_body_splices_rows),
        cmocka_unit_test(test_empty_page_keeps_its_total),
        cmocka_unit_test(test_no_row_reads_as_empty),
        cmocka_unit_test(test_filter_value_errors_map_to_invalid_filter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
