/*
 * store/cache.c - the in-process backend of cache.h: values, TTLs, INCR,
 * eviction and thread safety. The Redis backend needs a running server and
 * is covered by the end-to-end suite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <cmocka.h>

#include "store/cache.h"

static int setup(void **state)
{
    *state = cdb_cache_new(NULL, 0);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    cdb_cache_free(*state);
    return 0;
}

/* Asserts key holds exactly want[0..want_len). */
static void assert_value(cdb_cache *c, const char *key, const char *want, size_t want_len)
{
    cdb_error err;
    char *v = NULL;
    size_t len = 0;

    cdb_error_init(&err);
    assert_int_equal(cdb_cache_get(c, key, &v, &len, &err), 1);
    assert_int_equal(len, want_len);
    assert_memory_equal(v, want, want_len);
    assert_int_equal(v[len], '\0');
    free(v);
}

static void assert_miss(cdb_cache *c, const char *key)
{
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(cdb_cache_get(c, key, &v, &len, NULL), 0);
    assert_null(v);
}

static void test_set_get_overwrite(void **state)
{
    cdb_cache *c = *state;

    assert_false(cdb_cache_is_redis(c));
    assert_miss(c, "k");
    assert_int_equal(cdb_cache_set(c, "k", "one", 3, 0, NULL), 0);
    assert_value(c, "k", "one", 3);
    assert_int_equal(cdb_cache_set(c, "k", "longer value", 12, 60, NULL), 0);
    assert_value(c, "k", "longer value", 12);
    assert_int_equal(cdb_cache_set(c, "k", "", 0, 0, NULL), 0);
    assert_value(c, "k", "", 0);
    assert_miss(c, "other");
}

static void test_get_many(void **state)
{
    cdb_cache *c = *state;
    cdb_error err;
    cdb_error_init(&err);
    assert_int_equal(cdb_cache_set(c, "a", "1", 1, 0, &err), 0);
    assert_int_equal(cdb_cache_set(c, "c", "33", 2, 0, &err), 0);
    const char *keys[3] = {"a", "b", "c"};
    char *values[3];
    size_t lens[3];
    assert_int_equal(cdb_cache_get_many(c, 3, keys, values, lens, &err), 0);
    assert_string_equal(values[0], "1");
    assert_int_equal(lens[0], 1);
    assert_null(values[1]);             /* a miss */
    assert_memory_equal(values[2], "33", 2);
    assert_int_equal(lens[2], 2);
    free(values[0]);
    free(values[2]);
    /* more keys than one call takes is refused, with every value NULL */
    const char *many[CDB_CACHE_GET_MANY_MAX + 1] = {0};
    char *vals[CDB_CACHE_GET_MANY_MAX + 1];
    size_t ls[CDB_CACHE_GET_MANY_MAX + 1];
    assert_true(cdb_cache_get_many(c, CDB_CACHE_GET_MANY_MAX + 1, many, vals, ls, &err) < 0);
    assert_null(vals[0]);
    cdb_error_destroy(&err);
}

static void test_binary_values(void **state)
{
    cdb_cache *c = *state;
    const char bin[] = { 'a', '\0', 'b', '\0', '\0', (char)0xff, 'c' };

    assert_int_equal(cdb_cache_set(c, "bin", bin, sizeof bin, 0, NULL), 0);
    assert_value(c, "bin", bin, sizeof bin);
}

static void test_del(void **state)
{
    cdb_cache *c = *state;

    assert_int_equal(cdb_cache_set(c, "gone", "x", 1, 0, NULL), 0);
    assert_int_equal(cdb_cache_del(c, "gone", NULL, NULL), 0);
    assert_miss(c, "gone");
    assert_int_equal(cdb_cache_del(c, "never-there", NULL, NULL), 0);
}

/* DEL and EXPIRE say whether the key existed, as Redis's replies do. */
static void test_del_and_expire_counts(void **state)
{
    cdb_cache *c = *state;
    int deleted = -1;
    bool applied = true;

    assert_int_equal(cdb_cache_expire(c, "absent", 10, &applied, NULL), 0);
    assert_false(applied);
    assert_int_equal(cdb_cache_set(c, "k", "v", 1, 0, NULL), 0);
    assert_int_equal(cdb_cache_expire(c, "k", 10, &applied, NULL), 0);
    assert_true(applied);
    assert_value(c, "k", "v", 1);
    assert_int_equal(cdb_cache_del(c, "k", &deleted, NULL), 0);
    assert_int_equal(deleted, 1);
    assert_int_equal(cdb_cache_del(c, "k", &deleted, NULL), 0);
    assert_int_equal(deleted, 0);
    /* a TTL of 0 deletes, as EXPIRE k 0 does */
    assert_int_equal(cdb_cache_set(c, "z", "v", 1, 0, NULL), 0);
    assert_int_equal(cdb_cache_expire(c, "z", 0, &applied, NULL), 0);
    assert_true(applied);
    assert_miss(c, "z");
}

static void test_incr(void **state)
{
    cdb_cache *c = *state;
    cdb_error err;
    int64_t n = 0;

    cdb_error_init(&err);
    assert_int_equal(cdb_cache_incr(c, "n", &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(cdb_cache_incr(c, "n", &n, &err), 0);
    assert_int_equal(n, 2);
    assert_value(c, "n", "2", 1);

    assert_int_equal(cdb_cache_set(c, "neg", "-5", 2, 0, NULL), 0);
    assert_int_equal(cdb_cache_incr(c, "neg", &n, &err), 0);
    assert_int_equal(n, -4);

    assert_int_equal(cdb_cache_set(c, "word", "12a", 3, 0, NULL), 0);
    n = 99;
    assert_int_equal(cdb_cache_incr(c, "word", &n, &err), CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(err.code, CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(n, 99);
    assert_value(c, "word", "12a", 3);

    assert_int_equal(cdb_cache_set(c, "max", "9223372036854775807", 19, 0, NULL), 0);
    assert_int_equal(cdb_cache_incr(c, "max", &n, NULL), CDB_ERR_VALIDATION_FAILED);
    assert_int_equal(cdb_cache_set(c, "empty", "", 0, 0, NULL), 0);
    assert_int_equal(cdb_cache_incr(c, "empty", &n, NULL), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
}

/*
 * One sleep past a 1 s TTL checks both lazy expiry on read and that a full
 * table evicts an expired entry before a live older one.
 */
static void test_ttl_expiry_and_expired_first_eviction(void **state)
{
    cdb_cache *c = cdb_cache_new(NULL, 4);
    struct timespec nap = { .tv_sec = 1, .tv_nsec = 100 * 1000 * 1000 };
    int64_t n = 0;

    (void)state;
    assert_non_null(c);
    assert_int_equal(cdb_cache_set(c, "old-live", "a", 1, 0, NULL), 0);
    assert_int_equal(cdb_cache_set(c, "short", "b", 1, 1, NULL), 0);
    assert_int_equal(cdb_cache_set(c, "counter", "7", 1, 1, NULL), 0);
    assert_value(c, "short", "b", 1);
    nanosleep(&nap, NULL);

    /* Full at 4 entries; the fifth write must drop expired ones, not "old-live". */
    assert_int_equal(cdb_cache_set(c, "x1", "1", 1, 60, NULL), 0);
    assert_int_equal(cdb_cache_set(c, "x2", "2", 1, 60, NULL), 0);
    assert_value(c, "old-live", "a", 1);
    assert_value(c, "x1", "1", 1);
    assert_value(c, "x2", "2", 1);
    assert_miss(c, "short");
    /* An expired counter counts from zero again, like a missing one. */
    assert_int_equal(cdb_cache_incr(c, "counter", &n, NULL), 0);
    assert_int_equal(n, 1);
    cdb_cache_free(c);
}

static void test_eviction_keeps_table_bounded(void **state)
{
    cdb_cache *c = cdb_cache_new(NULL, 8);
    char key[32];
    int hits = 0;

    (void)state;
    assert_non_null(c);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        assert_int_equal(cdb_cache_set(c, key, key, strlen(key), 0, NULL), 0);
    }
    for (int i = 0; i < 1000; i++) {
        char *v = NULL;
        size_t len;
        snprintf(key, sizeof key, "key-%d", i);
        int rc = cdb_cache_get(c, key, &v, &len, NULL);
        assert_true(rc == 0 || rc == 1);
        hits += rc;
        free(v);
    }
    assert_int_equal(hits, 8);
    /* The oldest writes go first, so the latest ones survive. */
    assert_value(c, "key-999", "key-999", 7);
    assert_value(c, "key-992", "key-992", 7);
    assert_miss(c, "key-991");
    cdb_cache_free(c);
}

#define THREADS 4
#define INCRS 2000

static void *incr_worker(void *arg)
{
    int64_t n;
    for (int i = 0; i < INCRS; i++)
        if (cdb_cache_incr(arg, "shared", &n, NULL) != 0)
            return arg;
    return NULL;
}

static void test_concurrent_incr(void **state)
{
    cdb_cache *c = *state;
    pthread_t t[THREADS];
    int64_t n = 0;

    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, incr_worker, c), 0);
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        assert_null(ret);
    }
    assert_int_equal(cdb_cache_incr(c, "shared", &n, NULL), 0);
    assert_int_equal(n, THREADS * INCRS + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_get_overwrite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del_and_expire_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_incr, setup, teardown),
        cmocka_unit_test(test_ttl_expiry_and_expired_first_eviction),
        cmocka_unit_test(test_eviction_keeps_table_bounded),
        cmocka_unit_test_setup_teardown(test_concurrent_incr, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
