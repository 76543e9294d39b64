/*
 * data/doc_common.c - the document store's checks without a database:
 * JSON path syntax and its bound text[] form, the WHERE of path filters
 * (exact SQL text and parameters: paths and values only ever bound), and
 * the document size and depth limits (the size limit is above the HTTP body
 * limit, so only the library can reach it: tested here).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "data/documents.h"
#include "store/jsonpath.h"

static void path_ok(const char *in, const char *lit)
{
    cdb_error err;
    cdb_error_init(&err);
    char *out = NULL;
    json_t *j = json_string(in);
    assert_int_equal(cdb_jsonpath_parse("f", j, &out, &err), 0);
    assert_string_equal(out, lit);
    free(out);
    json_decref(j);
    cdb_error_destroy(&err);
}

static void path_bad(json_t *j)
{
    cdb_error err;
    cdb_error_init(&err);
    char *out = NULL;
    assert_int_equal(cdb_jsonpath_parse("f", j, &out, &err), CDB_ERR_VALIDATION_FAILED);
    assert_null(out);
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "f");
    json_decref(j);
    cdb_error_destroy(&err);
}

static void test_paths(void **state)
{
    (void)state;
    path_ok("a", "{a}");
    path_ok("address.city", "{address,city}");
    path_ok("A-b_9.x", "{A-b_9,x}");
    path_bad(json_string(""));
    path_bad(json_string("a..b"));
    path_bad(json_string(".a"));
    path_bad(json_string("a."));
    path_bad(json_string("a,b"));
    path_bad(json_string("a}"));
    path_bad(json_string("a\"b"));
    path_bad(json_string("a b"));
    path_bad(json_stringn("a\0b", 3));
    path_bad(json_integer(3));
    path_bad(json_null());
    char deep[64] = "";
    for (int i = 0; i < 17; i++)
        strcat(deep, i ? ".x" : "x");
    path_bad(json_string(deep));
    char long_seg[70];
    memset(long_seg, 'a', 65);
    long_seg[65] = '\0';
    path_bad(json_string(long_seg));
}

static void where_is(const char *filters, const char *sql, int nparams, const char *const *params)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_sql q;
    cdb_sql_init(&q);
    json_t *f = json_loads(filters, 0, NULL);
    assert_non_null(f);
    assert_int_equal(cdb__doc_where(&q, f, &err), 0);
    assert_string_equal(q.text, sql);
    assert_int_equal(q.nparams, nparams);
    for (int i = 0; i < nparams; i++)
        assert_string_equal(q.params[i], params[i]);
    json_decref(f);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
}

static void test_where(void **state)
{
    (void)state;
    /* eq on a scalar: containment first (the GIN index), then exact equality */
    where_is("{\"a.b\": \"x'); DROP TABLE t; --\"}",
             " WHERE doc @> $1::jsonb AND (doc #> $2::text[]) = $3::jsonb", 3,
             (const char *[]){"{\"a\":{\"b\":\"x'); DROP TABLE t; --\"}}", "{a,b}", "\"x'); DROP TABLE t; --\""});
    /* an array index in the path: equality only */
    where_is("{\"tags.0\": \"a\"}", " WHERE (doc #> $1::text[]) = $2::jsonb", 2,
             (const char *[]){"{tags,0}", "\"a\""});
    where_is("{\"o\": {\"eq\": {\"k\": 1}}}", " WHERE (doc #> $1::text[]) = $2::jsonb", 2,
             (const char *[]){"{o}", "{\"k\":1}"});
    where_is("{\"n\": {\"gt\": 3}}",
             " WHERE (jsonb_typeof(doc #> $1::text[]) = 'number' AND (doc #> $2::text[]) > $3::jsonb)", 3,
             (const char *[]){"{n}", "{n}", "3"});
    where_is("{\"t\": {\"in\": [1, \"a\"]}}",
             " WHERE EXISTS (SELECT 1 FROM jsonb_array_elements($1::jsonb) e(v) WHERE e.v = (doc #> $2::text[]))", 2,
             (const char *[]){"[1,\"a\"]", "{t}"});
    where_is("{\"t\": {\"exists\": false}}", " WHERE (doc #> $1::text[]) IS NULL", 1, (const char *[]){"{t}"});
    where_is("{\"t\": {\"contains\": \"b\"}}", " WHERE (doc #> $1::text[]) @> $2::jsonb", 2,
             (const char *[]){"{t}", "\"b\""});
    where_is("{\"t\": {\"neq\": null}}", " WHERE (doc #> $1::text[]) IS DISTINCT FROM $2::jsonb", 2,
             (const char *[]){"{t}", "null"});
}

static void where_fails(const char *filters, cdb_err code)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_sql q;
    cdb_sql_init(&q);
    json_t *f = json_loads(filters, JSON_DECODE_ANY, NULL);
    assert_int_equal(cdb__doc_where(&q, f, &err), code);
    json_decref(f);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
}

static void test_where_refusals(void **state)
{
    (void)state;
    where_fails("{\"a b\": 1}", CDB_ERR_VALIDATION_FAILED);
    where_fails("{\"a\": {\"gt\": true}}", CDB_ERR_INVALID_FILTER);
    where_fails("{\"a\": {\"in\": []}}", CDB_ERR_INVALID_FILTER);
    where_fails("{\"a\": {\"exists\": 1}}", CDB_ERR_INVALID_FILTER);
    where_fails("{\"a\": {\"regex\": \".*\"}}", CDB_ERR_INVALID_FILTER);
    where_fails("{\"a\": {}}", CDB_ERR_INVALID_FILTER);
    where_fails("[1]", CDB_ERR_INVALID_FILTER);
}

static void test_document_limits(void **state)
{
    (void)state;
    cdb_error err;
    cdb_error_init(&err);
    json_t *ok = json_pack("{s:{s:[i]}}", "a", "b", 1);
    assert_int_equal(cdb__doc_check("document", ok, CDB_DOC_MAX_BYTES, &err), 0);
    json_decref(ok);

    json_t *deep = json_object(), *cur = deep;
    for (int i = 0; i < CDB_DOC_MAX_DEPTH; i++) {
        json_t *next = json_array();
        json_object_set_new(cur, "d", next);
        cur = json_object();
        json_array_append_new(next, cur);
        if (i * 2 > CDB_DOC_MAX_DEPTH + 2)
            break;
    }
    assert_int_equal(cdb__doc_check("document", deep, CDB_DOC_MAX_BYTES, &err), CDB_ERR_VALIDATION_FAILED);
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "document");
    json_decref(deep);

    char *big = malloc(CDB_DOC_MAX_BYTES + 1);
    memset(big, 'x', CDB_DOC_MAX_BYTES);
    big[CDB_DOC_MAX_BYTES] = '\0';
    json_t *large = json_pack("{s:s}", "v", big);
    assert_int_equal(cdb__doc_check("patch", large, CDB_DOC_MAX_BYTES, &err), CDB_ERR_VALIDATION_FAILED);
    assert_string_equal(json_string_value(json_object_get(err.details, "field")), "patch");
    json_decref(large);
    big[CDB_DOC_MAX_BYTES - 100] = '\0';
    json_t *fits = json_pack("{s:s}", "v", big);
    assert_int_equal(cdb__doc_check("document", fits, CDB_DOC_MAX_BYTES, &err), 0);
    json_decref(fits);
    free(big);
    /* a smaller configured limit (DOC_MAX_BYTES) */
    json_t *small = json_pack("{s:s}", "v", "0123456789");
    assert_int_equal(cdb__doc_check("document", small, 17, &err), CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(cdb__doc_check("document", small, 18, &err), 0); /* {"v":"0123456789"} */
    json_decref(small);

    json_t *arr = json_array();
    assert_int_equal(cdb__doc_check("document", arr, CDB_DOC_MAX_BYTES, &err), CDB_ERR_VALIDATION_FAILED);
    json_decref(arr);
    cdb_error_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_where),
        cmocka_unit_test(test_where_refusals),
        cmocka_unit_test(test_document_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
