/*
 * store/l1cache.c - the first-level cache's answers held by reference: an
 * answer handed to the socket stays valid while the cache replaces it
 * (a newer generation), evicts it (room for others) or is freed, until the
 * last reference goes; a lookup at another generation holds nothing. Under
 * ASan (make san) a wrong count shows as a use after free or a leak.
 * Sessions and generations (tickets) are tests/e2e/test_loop_admission.py's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "store/l1cache.c"

static char *pattern(size_t len, char c)
{
    char *p = malloc(len);
    assert_non_null(p);
    memset(p, c, len);
    return p;
}

static void assert_all(const char *p, size_t len, char c)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != c)
            fail_msg("byte %zu is %d, not %c", i, p[i], c);
}

static void test_answer_replaced_while_referenced(void **state)
{
    cdb_l1 *l1 = cdb_l1_new(NULL, 1 << 20, 60000);   /* answers need no ticket */
    assert_non_null(l1);
    size_t n = 20000, len;
    char *a = pattern(n, 'a'), *b = pattern(n, 'b');
    cdb_kvref *r1 = NULL, *r2 = NULL, *r3 = NULL;
    cdb_l1_answer_store(l1, "entry", 1, a, n, 0);
    const char *v1 = cdb_l1_answer_ref(l1, "entry", 1, &len, 0, &r1);
    assert_non_null(v1);
    assert_int_equal(len, n);
    /* the same entry read twice: two references to one copy */
    const char *v2 = cdb_l1_answer_ref(l1, "entry", 1, &len, 0, &r2);
    assert_ptr_equal(v1, v2);
    /* a write bumps the generation: the new answer replaces the entry */
    cdb_l1_answer_store(l1, "entry", 2, b, n, 0);
    assert_null(cdb_l1_answer_ref(l1, "entry", 1, &len, 0, &r3));   /* the old generation: nothing held */
    assert_null(r3);
    const char *v3 = cdb_l1_answer_ref(l1, "entry", 2, &len, 0, &r3);
    assert_non_null(v3);
    assert_all(v3, n, 'b');
    memset(a, 'x', n);                          /* the cache copied the bytes */
    assert_all(v1, n, 'a');                     /* the replaced entry's bytes: still there */
    cdb_kvref_release(r1);
    assert_all(v2, n, 'a');
    cdb_kvref_release(r2);
    /* the cache freed while an answer is on its way */
    cdb_l1_free(l1);
    assert_all(v3, n, 'b');
    cdb_kvref_release(r3);
    free(a);
    free(b);
}

static void test_answer_evicted_while_referenced(void **state)
{
    /* 64 KiB: an answer may take a sixteenth (4 KiB), so 20 of them evict the first */
    cdb_l1 *l1 = cdb_l1_new(NULL, 64 * 1024, 60000);
    size_t n = 4000, len;
    char *a = pattern(n, 'a');
    cdb_kvref *ref = NULL, *other = NULL;
    cdb_l1_answer_store(l1, "first", 7, a, n, 0);
    const char *v = cdb_l1_answer_ref(l1, "first", 7, &len, 0, &ref);
    assert_non_null(v);
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        memset(a, 'c' + i % 20, n);
        cdb_l1_answer_store(l1, key, 7, a, n, 0);
    }
    assert_null(cdb_l1_answer_ref(l1, "first", 7, &len, 0, &other));   /* evicted */
    memset(a, 'a', n);
    assert_all(v, n, 'a');
    cdb_kvref_release(ref);
    /* expired: nothing held either */
    cdb_l1_answer_store(l1, "short", 7, a, 10, 0);
    assert_null(cdb_l1_answer_ref(l1, "short", 7, &len, 60000, &other));
    cdb_l1_free(l1);
    free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_replaced_while_referenced),
        cmocka_unit_test(test_answer_evicted_while_referenced),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
