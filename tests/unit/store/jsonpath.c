/*
 * store/jsonpath.c - the text[] literal a JSON path is bound as: one
 * element per dot-separated segment, and a segment spelled NULL in any
 * case quoted, since PostgreSQL reads an unquoted NULL element as SQL NULL
 * (found by fuzz/doc_query.c; tests/e2e/test_doc_vec_fuzz_findings.py
 * shows the effect on filters, projection, order and the partition key).
 * The rest of the path rules are in tests/unit/data/doc_common.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "store/jsonpath.h"

static void literal_is(const char *path, const char *lit)
{
    cdb_error err;
    char *out = NULL;
    json_t *j = json_string(path);
    cdb_error_init(&err);
    assert_int_equal(cdb_jsonpath_parse("f", j, &out, &err), 0);
    assert_string_equal(out, lit);
    free(out);
    json_decref(j);
    cdb_error_destroy(&err);
}

static void test_null_segments_are_quoted(void **state)
{
    (void)state;
    literal_is("null", "{\"null\"}");
    literal_is("NULL", "{\"NULL\"}");
    literal_is("a.nUlL.b", "{a,\"nUlL\",b}");
    literal_is("null.null", "{\"null\",\"null\"}");
    /* only the whole segment: these are no NULL element */
    literal_is("nulls.xnull.nul", "{nulls,xnull,nul}");
}

static void test_longest_path_fits(void **state)
{
    (void)state;
    /* 16 segments "null" (79 bytes): every one quoted, nothing cut */
    char path[128] = "", lit[256] = "{";
    for (int i = 0; i < 16; i++) {
        strcat(path, i ? ".null" : "null");
        strcat(lit, i ? ",\"null\"" : "\"null\"");
    }
    strcat(lit, "}");
    literal_is(path, lit);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_segments_are_quoted),
        cmocka_unit_test(test_longest_path_fits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
