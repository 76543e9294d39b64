/*
 * data/query_run.c - the cacheable part of a data-API read built from the
 * page and count results (page_body): the rows spliced in order, a total
 * that survives an empty page, a count result without its row read as 0;
 * and which failures are the caller's bad filter values (query_error). The
 * results are built with libpq's PQmakeEmptyPGresult / PQsetvalue, no
 * server. Includes the .c to reach its statics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "data/query_run.c"

/* A result of one text column holding rows (the page statement's shape). */
static PGresult *text_rows(const char *const *rows, int n)
{
    PGresAttDesc col = {.name = "row_to_json", .format = 0, .typid = 25, .typlen = -1, .atttypmod = -1};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(res);
    assert_true(PQsetResultAttrs(res, 1, &col));
    for (int i = 0; i < n; i++)
        assert_true(PQsetvalue(res, i, 0, (char *)rows[i], (int)strlen(rows[i])));
    return res;
}

static void test_page_body_splices_rows(void **state)
{
    (void)state;
    page_req req = {.page = 2, .limit = 2};
    const char *rows[] = {"{\"a\":3}", "{\"a\":4}"}, *total[] = {"5"};
    PGresult *page = text_rows(rows, 2), *count = text_rows(total, 1);
    size_t len = 0;
    char *body = cdb__query_page_body(page, count, req.page, req.limit, &len);
    const char *want = "\"data\":[{\"a\":3},{\"a\":4}],\"pagination\":{\"page\":2,\"limit\":2,\"total\":5,\"pages\":3}";
    assert_non_null(body);
    assert_string_equal(body, want);
    assert_int_equal(len, strlen(want));
    free(body);
    PQclear(page);
    PQclear(count);
}

/* A page past the end: no rows, the total still right. */
static void test_empty_page_keeps_its_total(void **state)
{
    (void)state;
    page_req req = {.page = 9, .limit = 20};
    const char *total[] = {"41"};
    PGresult *page = text_rows(NULL, 0), *count = text_rows(total, 1);
    size_t len = 0;
    char *body = cdb__query_page_body(page, count, req.page, req.limit, &len);
    assert_non_null(body);
    assert_string_equal(body, "\"data\":[],\"pagination\":{\"page\":9,\"limit\":20,\"total\":41,\"pages\":3}");
    free(body);
    PQclear(page);
    PQclear(count);
}

/* A count result without its row reads as 0, never past its end. */
static void test_no_count_row_reads_as_zero(void **state)
{
    (void)state;
    page_req req = {.page = 1, .limit = 20};
    PGresult *page = text_rows(NULL, 0), *count = text_rows(NULL, 0);
    size_t len = 0;
    char *body = cdb__query_page_body(page, count, req.page, req.limit, &len);
    assert_non_null(body);
    assert_string_equal(body, "\"data\":[],\"pagination\":{\"page\":1,\"limit\":20,\"total\":0,\"pages\":0}");
    free(body);
    PQclear(page);
    PQclear(count);
}

/* Bad filter values are the caller's (INVALID_FILTER) only when the page statement failed. */
static void test_filter_value_errors_map_to_invalid_filter(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_INTERNAL_ERROR, "sqlstate", "22P02", "bad");
    assert_int_equal(query_error(STMT_ROWS, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_INTERNAL_ERROR, "sqlstate", "22007", "bad");
    assert_int_equal(query_error(STMT_COUNT, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    cdb_error_set_detail(&err, CDB_ERR_INTERNAL_ERROR, "sqlstate", "22P02", "bad");
    assert_int_equal(query_error(0, &err), CDB_ERR_INTERNAL_ERROR); /* the prelude's own failure */
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_body_splices_rows),
        cmocka_unit_test(test_empty_page_keeps_its_total),
        cmocka_unit_test(test_no_count_row_reads_as_zero),
        cmocka_unit_test(test_filter_value_errors_map_to_invalid_filter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
