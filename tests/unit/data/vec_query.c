/*
 * data/vec_query.c - the vector search's pieces without a database: the
 * float32 kernels against a naive double reference for every length
 * around the 8-lane blocks, each metric's score, the real[] text parser,
 * the text[] literal of ids (quotes, backslashes), and the merge of
 * PostgreSQL's candidates (id, etag) with a cached snapshot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../../src/data/vec_query.c"

static void test_kernels_match_naive(void **state)
{
    (void)state;
    float a[37], b[37];
    for (int i = 0; i < 37; i++) {
        a[i] = (float)(i % 7) - 2.5f;
        b[i] = 0.25f * (float)(i % 5) + 1.0f;
    }
    for (int n = 0; n <= 37; n++) {
        double d = 0, l = 0;
        for (int i = 0; i < n; i++) {
            d += (double)a[i] * b[i];
            l += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        }
        assert_float_equal(dot(a, b, n), d, 1e-3);
        assert_float_equal(l2sq(a, b, n), l, 1e-3);
    }
}

static void test_scores(void **state)
{
    (void)state;
    float x[2] = {3, 4}, q[2] = {3, 0}, z[2] = {0, 0};
    assert_float_equal(score_of(CDB_VEC_DOT, x, q, 2, 3, -1), 9, 1e-6);
    assert_float_equal(score_of(CDB_VEC_L2, x, q, 2, 3, -1), -4, 1e-6);
    assert_float_equal(score_of(CDB_VEC_COSINE, x, q, 2, 3, -1), 0.6, 1e-6);
    assert_float_equal(score_of(CDB_VEC_COSINE, x, q, 2, 3, 5), 0.6, 1e-6);  /* |x| given */
    assert_float_equal(score_of(CDB_VEC_COSINE, z, q, 2, 3, -1), 0, 0);   /* a stored zero vector */
    assert_float_equal(score_of(CDB_VEC_L2, q, q, 2, 3, -1), 0, 0);
    /* found by fuzz/vec_search.c: float32 sums overflow near FLT_MAX; the score is redone in double, clamped */
    float big[2] = {3e38f, 3e38f}, nbig[2] = {-3e38f, -3e38f}, one[2] = {1, 1};
    float bn = sqrtf(dot(big, big, 2)); /* inf, as the snapshot keeps it */
    assert_float_equal(score_of(CDB_VEC_COSINE, big, big, 2, bn, bn), 1, 1e-6);
    assert_float_equal(score_of(CDB_VEC_COSINE, nbig, one, 2, sqrtf(2), -1), -1, 1e-6);
    assert_float_equal(score_of(CDB_VEC_DOT, big, one, 2, 0, -1), FLT_MAX, 0);
    assert_float_equal(score_of(CDB_VEC_L2, big, nbig, 2, 0, -1), -FLT_MAX, 0);
}

static void test_parse_array(void **state)
{
    (void)state;
    float x[3];
    assert_true(parse_array("{1,-2.5,3e-05}", x, 3));
    assert_float_equal(x[1], -2.5, 0);
    assert_float_equal(x[2], 3e-05, 1e-12);
    assert_false(parse_array("{1,2}", x, 3));
    assert_false(parse_array("{1,2,3,4}", x, 3));
    assert_false(parse_array("1,2,3", x, 3));
    assert_false(parse_array("{1,x,3}", x, 3));
    /* found by fuzz/vec_search.c: real[] written by SQL may hold these; no score can carry them */
    assert_false(parse_array("{1,NaN,3}", x, 3));
    assert_false(parse_array("{Infinity,2,3}", x, 3));
    assert_false(parse_array("{1,2,-Infinity}", x, 3));
    assert_false(parse_array("{1,2,1e39}", x, 3));
}

static void test_array_item_escapes(void **state)
{
    (void)state;
    size_t len = 1, cap = 4;
    char *buf = malloc(cap);
    assert_non_null(buf);
    strcpy(buf, "{");
    assert_true(array_item(&buf, &len, &cap, "a\"b"));
    assert_true(array_item(&buf, &len, &cap, "c\\d,e"));
    assert_string_equal(buf, "{\"a\\\"b\",\"c\\\\d,e\"");
    free(buf);
}

/* A result of (id, etag, payload) rows, as the candidates' statement answers. */
static PGresult *candidates(const char *const *ids, const char *const *etags, int n)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att[3] = {{.name = "id", .format = 0, .typid = 25, .typlen = -1},
                           {.name = "etag", .format = 0, .typid = 25, .typlen = -1},
                           {.name = "payload", .format = 0, .typid = 25, .typlen = -1}};
    assert_int_equal(PQsetResultAttrs(r, 3, att), 1);
    for (int i = 0; i < n; i++) {
        assert_int_equal(PQsetvalue(r, i, 0, (char *)ids[i], (int)strlen(ids[i])), 1);
        assert_int_equal(PQsetvalue(r, i, 1, (char *)etags[i], (int)strlen(etags[i])), 1);
        assert_int_equal(PQsetvalue(r, i, 2, "{}", 2), 1);
    }
    return r;
}

static void test_map_rows_uses_only_current_etags(void **state)
{
    (void)state;
    cdb_vec_snap *s = cdb__vec_snap_new(3, 1);
    assert_non_null(s);
    float v[3] = {10, 20, 30};
    assert_true(snap_set(s, 0, "a", "e1", &v[0]));
    assert_true(snap_set(s, 1, "c", "e3", &v[1]));
    assert_true(snap_set(s, 2, "d", "e4", &v[2]));
    PGresult *r = candidates((const char *const[]){"a", "b", "c", "d"}, (const char *const[]){"e1", "e2", "X", "e4"},
                             4);
    const float *vecs[4];
    assert_int_equal(map_rows(s, r, vecs, false), 2);     /* b: not cached; c: changed since */
    assert_float_equal(vecs[0][0], 10, 0);
    assert_null(vecs[1]);
    assert_null(vecs[2]);
    assert_float_equal(vecs[3][0], 30, 0);
    assert_int_equal(map_rows(s, r, vecs, true), 1);    /* c: the copy's (newer) vector */
    assert_float_equal(vecs[2][0], 20, 0);
    assert_int_equal(map_rows(NULL, r, vecs, false), 4);
    PQclear(r);
    cdb__vec_snap_unref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_match_naive),
        cmocka_unit_test(test_scores),
        cmocka_unit_test(test_parse_array),
        cmocka_unit_test(test_array_item_escapes),
        cmocka_unit_test(test_map_rows_uses_only_current_etags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
