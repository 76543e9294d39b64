/*
 * core/kvtable.c - the bounded key/value table: values and deadlines, the
 * entry and byte bounds (oldest writes go first, expired ones before live
 * ones), replacing, deleting, clearing; values referenced past their
 * entry (replaced, evicted, deleted, the table freed) stay valid until the
 * last release (ASan, make san: no use after free, no leak).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "core/kvtable.c"

static void test_put_get_replace_del(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(8, 0);
    size_t len;
    int64_t exp;
    assert_non_null(t);
    assert_null(cdb_kvtable_get(t, "a", &len, NULL, 0));
    assert_int_equal(cdb_kvtable_put(t, "a", "one", 3, 0, 0), 0);
    const char *v = cdb_kvtable_get(t, "a", &len, &exp, 0);
    assert_non_null(v);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "one", 4);          /* NUL-terminated */
    assert_int_equal(exp, 0);
    assert_int_equal(cdb_kvtable_put(t, "a", "three", 5, 0, 0), 0);
    assert_int_equal(cdb_kvtable_count(t), 1);
    assert_int_equal(cdb_kvtable_bytes(t), 1 + 5);
    assert_string_equal(cdb_kvtable_get(t, "a", &len, NULL, 0), "three");
    /* binary values keep their length */
    assert_int_equal(cdb_kvtable_put(t, "b", "x\0y", 3, 0, 0), 0);
    v = cdb_kvtable_get(t, "b", &len, NULL, 0);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "x\0y", 3);
    assert_true(cdb_kvtable_del(t, "a", 0));
    assert_false(cdb_kvtable_del(t, "a", 0));
    assert_null(cdb_kvtable_get(t, "a", &len, NULL, 0));
    cdb_kvtable_clear(t);
    assert_int_equal(cdb_kvtable_count(t), 0);
    assert_int_equal(cdb_kvtable_bytes(t), 0);
    cdb_kvtable_free(t);
}

static void test_deadlines(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(8, 0);
    size_t len;
    assert_int_equal(cdb_kvtable_put(t, "k", "v", 1, 100, 0), 0);
    assert_non_null(cdb_kvtable_get(t, "k", &len, NULL, 99));
    assert_null(cdb_kvtable_get(t, "k", &len, NULL, 100));   /* dropped when read */
    assert_int_equal(cdb_kvtable_count(t), 0);
    assert_int_equal(cdb_kvtable_put(t, "k", "v", 1, 100, 0), 0);
    assert_true(cdb_kvtable_expire(t, "k", 500, 50));
    assert_non_null(cdb_kvtable_get(t, "k", &len, NULL, 400));
    assert_false(cdb_kvtable_del(t, "k", 600));               /* expired: not live */
    assert_false(cdb_kvtable_expire(t, "gone", 1, 0));
    cdb_kvtable_free(t);
}

static void test_entry_bound_evicts_oldest_and_expired_first(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(4, 0);
    size_t len;
    char key[16];
    /* "e0" expires at 10; the others never */
    assert_int_equal(cdb_kvtable_put(t, "e0", "v", 1, 10, 0), 0);
    for (int i = 1; i < 4; i++) {
        snprintf(key, sizeof key, "e%d", i);
        assert_int_equal(cdb_kvtable_put(t, key, "v", 1, 0, 0), 0);
    }
    assert_int_equal(cdb_kvtable_put(t, "e4", "v", 1, 0, 20), 0);
    assert_int_equal(cdb_kvtable_count(t), 4);
    assert_null(cdb_kvtable_get(t, "e0", &len, NULL, 20));
    assert_non_null(cdb_kvtable_get(t, "e1", &len, NULL, 20));
    /* nothing expired: the oldest write goes */
    assert_int_equal(cdb_kvtable_put(t, "e5", "v", 1, 0, 20), 0);
    assert_null(cdb_kvtable_get(t, "e1", &len, NULL, 20));
    assert_non_null(cdb_kvtable_get(t, "e5", &len, NULL, 20));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(cdb_kvtable_put(t, key, "v", 1, 0, 20), 0);
        assert_true(cdb_kvtable_count(t) <= 4);
    }
    cdb_kvtable_free(t);
}

static void test_byte_bound(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(1000, 100);
    char key[16], value[40];
    memset(value, 'x', sizeof value);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        assert_int_equal(cdb_kvtable_put(t, key, value, sizeof value, 0, 0), 0);
        assert_true(cdb_kvtable_bytes(t) <= 100);
    }
    /* two entries of 3 + 40 bytes fit, a third does not */
    assert_int_equal(cdb_kvtable_count(t), 2);
    size_t len;
    assert_non_null(cdb_kvtable_get(t, "k49", &len, NULL, 0));
    assert_non_null(cdb_kvtable_get(t, "k48", &len, NULL, 0));
    assert_null(cdb_kvtable_get(t, "k47", &len, NULL, 0));
    cdb_kvtable_free(t);
}

static void test_reference_outlives_replace_and_delete(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(8, 0);
    cdb_kvref *r1 = NULL, *r2 = NULL, *r3 = NULL;
    size_t len;
    assert_int_equal(cdb_kvtable_put(t, "k", "first value", 11, 0, 0), 0);
    const char *v1 = cdb_kvtable_get_ref(t, "k", &len, 0, &r1);
    assert_int_equal(len, 11);
    const char *v2 = cdb_kvtable_get_ref(t, "k", &len, 0, &r2);   /* two readers of one value */
    assert_ptr_equal(v1, v2);
    /* replaced: the readers keep the old bytes, the table has the new ones */
    assert_int_equal(cdb_kvtable_put(t, "k", "second", 6, 0, 0), 0);
    assert_string_equal(cdb_kvtable_get(t, "k", &len, NULL, 0), "second");
    assert_memory_equal(v1, "first value", 12);
    const char *b = cdb_kvref_bytes(r1, &len);
    assert_ptr_equal(b, v1);
    assert_int_equal(len, 11);
    cdb_kvref_release(r1);
    assert_memory_equal(v2, "first value", 12);   /* the other reader still holds it */
    cdb_kvref_release(r2);
    /* deleted, then the table freed, while referenced */
    const char *v3 = cdb_kvtable_get_ref(t, "k", &len, 0, &r3);
    assert_true(cdb_kvtable_del(t, "k", 0));
    assert_string_equal(v3, "second");
    cdb_kvtable_free(t);
    assert_string_equal(v3, "second");
    cdb_kvref_release(r3);
    cdb_kvref_release(NULL);
    /* no reference of a missing or expired key */
    t = cdb_kvtable_new(8, 0);
    cdb_kvtable_put(t, "e", "x", 1, 10, 0);
    r1 = NULL;
    assert_null(cdb_kvtable_get_ref(t, "missing", &len, 0, &r1));
    assert_null(cdb_kvtable_get_ref(t, "e", &len, 10, &r1));
    assert_null(r1);
    cdb_kvtable_free(t);
}

static void test_reference_outlives_eviction(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(2, 64);
    cdb_kvref *ref = NULL;
    size_t len;
    char big[40];
    memset(big, 'a', sizeof big);
    assert_int_equal(cdb_kvtable_put(t, "old", big, sizeof big, 0, 0), 0);
    const char *v = cdb_kvtable_get_ref(t, "old", &len, 0, &ref);
    /* room for the next write needs the oldest gone: by bytes, then by count */
    memset(big, 'b', sizeof big);
    assert_int_equal(cdb_kvtable_put(t, "new", big, sizeof big, 0, 0), 0);
    assert_null(cdb_kvtable_get(t, "old", &len, NULL, 0));
    assert_int_equal(cdb_kvtable_bytes(t), 3 + sizeof big);   /* the referenced bytes are not counted */
    for (size_t i = 0; i < sizeof big; i++)
        assert_int_equal(v[i], 'a');
    cdb_kvref_release(ref);
    cdb_kvtable_free(t);
}

static void test_put_ref_two_parts(void **state)
{
    cdb_kvtable *t = cdb_kvtable_new(8, 0);
    cdb_kvref *ref = NULL;
    size_t len;
    uint64_t head = 42;
    assert_int_equal(cdb_kvtable_put_ref(t, "k", &head, sizeof head, "tail", 4, 0, 0, &ref), 0);
    const char *v = cdb_kvtable_get(t, "k", &len, NULL, 0);
    assert_int_equal(len, sizeof head + 4);
    assert_int_equal((uintptr_t)v % 8, 0);      /* callers cast a struct over the value */
    assert_int_equal(*(const uint64_t *)v, 42);
    assert_memory_equal(v + sizeof head, "tail", 5);
    assert_ptr_equal(cdb_kvref_bytes(ref, &len), v);
    cdb_kvtable_clear(t);
    assert_memory_equal(v + sizeof head, "tail", 5);
    cdb_kvref_release(ref);
    assert_int_equal(cdb_kvtable_put_ref(t, "n", NULL, 0, NULL, 0, 0, 0, NULL), 0);
    assert_string_equal(cdb_kvtable_get(t, "n", &len, NULL, 0), "");
    cdb_kvtable_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_replace_del),
        cmocka_unit_test(test_reference_outlives_replace_and_delete),
        cmocka_unit_test(test_reference_outlives_eviction),
        cmocka_unit_test(test_put_ref_two_parts),
        cmocka_unit_test(test_deadlines),
        cmocka_unit_test(test_entry_bound_evicts_oldest_and_expired_first),
        cmocka_unit_test(test_byte_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
