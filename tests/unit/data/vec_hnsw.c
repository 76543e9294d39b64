/*
 * data/vec_hnsw.c - the hnswlib shim (src/data/vec_hnsw.cc) and the index's
 * pure pieces (src/data/vec_index.c): exact-match search on a small graph,
 * update in place, deleted points skipped, every hnswlib exception (full
 * graph, unknown label, shrinking below the count) an error return, the
 * binary real[] parser and normalization.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../../src/data/vec_index.c"

#define D 8

static void gen(float *x, int i)
{
    for (int d = 0; d < D; d++)
        x[d] = (float)((i * 7 + d * 3) % 11) - 5.0f + (float)i * 0.01f;
}

static void test_search_update_delete(void **state)
{
    (void)state;
    float x[D], q[D], dist[5];
    size_t lab[5];
    cdb_vec_hnsw *h = cdb__vec_hnsw_new(D, CDB_VEC_HNSW_L2, 100, 8, 50, 50);
    assert_non_null(h);
    assert_int_equal(cdb__vec_hnsw_search(h, x, 3, lab, dist), 0); /* empty */
    for (int i = 0; i < 100; i++) {
        gen(x, i);
        assert_int_equal(cdb__vec_hnsw_add(h, (size_t)i, x), 0);
    }
    assert_int_equal(cdb__vec_hnsw_count(h), 100);
    for (int i = 0; i < 100; i += 9) {
        gen(q, i);
        assert_int_equal(cdb__vec_hnsw_search(h, q, 3, lab, dist), 3);
        assert_int_equal(lab[0], i);
        assert_true(dist[0] == 0.0f && dist[1] >= dist[0] && dist[2] >= dist[1]);
    }
    /* full: hnswlib's runtime_error is -1, then room makes it work */
    gen(x, 100);
    assert_int_equal(cdb__vec_hnsw_add(h, 100, x), -1);
    assert_int_equal(cdb__vec_hnsw_resize(h, 50), -1); /* below the count */
    assert_int_equal(cdb__vec_hnsw_resize(h, 200), 0);
    assert_int_equal(cdb__vec_hnsw_capacity(h), 200);
    assert_int_equal(cdb__vec_hnsw_add(h, 100, x), 0);
    /* update in place: label 5 moves onto point 50's place... nearly */
    gen(q, 50);
    q[0] += 0.001f;
    assert_int_equal(cdb__vec_hnsw_add(h, 5, q), 0);
    assert_int_equal(cdb__vec_hnsw_count(h), 101);
    const float *v = cdb__vec_hnsw_vector(h, 5);
    assert_non_null(v);
    assert_memory_equal(v, q, sizeof q);
    gen(q, 50);
    assert_int_equal(cdb__vec_hnsw_search(h, q, 2, lab, dist), 2);
    assert_true((lab[0] == 50 && lab[1] == 5));
    /* deleted: skipped; deleting twice or an unknown label is -1, not an exception */
    assert_int_equal(cdb__vec_hnsw_mark_deleted(h, 50), 0);
    assert_int_equal(cdb__vec_hnsw_mark_deleted(h, 50), -1);
    assert_int_equal(cdb__vec_hnsw_mark_deleted(h, 12345), -1);
    assert_null(cdb__vec_hnsw_vector(h, 12345));
    assert_int_equal(cdb__vec_hnsw_search(h, q, 2, lab, dist), 2);
    assert_int_equal(lab[0], 5);
    /* re-adding a deleted label brings it back */
    assert_int_equal(cdb__vec_hnsw_add(h, 50, q), 0);
    assert_int_equal(cdb__vec_hnsw_search(h, q, 1, lab, dist), 1);
    assert_int_equal(lab[0], 50);
    cdb__vec_hnsw_free(h);
    cdb__vec_hnsw_free(NULL);
}

static void test_inner_product_of_normalized_is_cosine(void **state)
{
    (void)state;
    float a[D] = {3, 4}, b[D] = {0, 0, 5}, c[D] = {-1, -1}, z[D] = {0}, q[D] = {6, 8}, n[D], dist[3];
    size_t lab[3];
    cdb_vec_hnsw *h = cdb__vec_hnsw_new(D, CDB_VEC_HNSW_IP, 4, 4, 8, 10);
    assert_non_null(h);
    normalize(a, n, D);
    assert_true(fabsf(n[0] - 0.6f) < 1e-6f && fabsf(n[1] - 0.8f) < 1e-6f);
    assert_int_equal(cdb__vec_hnsw_add(h, 1, n), 0);
    normalize(b, n, D);
    assert_int_equal(cdb__vec_hnsw_add(h, 2, n), 0);
    normalize(c, n, D);
    assert_int_equal(cdb__vec_hnsw_add(h, 3, n), 0);
    normalize(z, n, D); /* a zero vector stays zero */
    for (int d = 0; d < D; d++)
        assert_true(n[d] == 0.0f);
    normalize(q, n, D);
    assert_int_equal(cdb__vec_hnsw_search(h, n, 3, lab, dist), 3);
    assert_int_equal(lab[0], 1);
    assert_int_equal(lab[1], 2);
    assert_int_equal(lab[2], 3);
    assert_true(fabsf(dist[0]) < 1e-6f);          /* 1 - cos = 0 */
    assert_true(fabsf(dist[1] - 1.0f) < 1e-6f);   /* orthogonal */
    cdb__vec_hnsw_free(h);
}

/* PostgreSQL's binary real[]: ndim, flags, oid, (len, lbound), then (4, float) each, big-endian. */
static int binary_array(char *b, const float *x, int n, int ndim)
{
    uint32_t w[5] = {htonl((uint32_t)ndim), 0, htonl(700), htonl((uint32_t)n), htonl(1)};
    memcpy(b, w, sizeof w);
    char *p = b + 20;
    for (int i = 0; i < n; i++, p += 8) {
        uint32_t len = htonl(4), v;
        memcpy(&v, &x[i], 4);
        v = htonl(v);
        memcpy(p, &len, 4);
        memcpy(p + 4, &v, 4);
    }
    return 20 + 8 * n;
}

static void test_parse_binary(void **state)
{
    (void)state;
    float x[3] = {1.5f, -2.25f, 1e30f}, y[3];
    char b[64];
    int len = binary_array(b, x, 3, 1);
    assert_true(parse_binary(b, len, y, 3));
    assert_memory_equal(x, y, sizeof x);
    assert_false(parse_binary(b, len, y, 4));     /* other dimensions */
    assert_false(parse_binary(b, len - 1, y, 3)); /* truncated */
    len = binary_array(b, x, 3, 2);
    assert_false(parse_binary(b, len, y, 3));     /* two-dimensional */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_update_delete),
        cmocka_unit_test(test_inner_product_of_normalized_is_cosine),
        cmocka_unit_test(test_parse_binary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
