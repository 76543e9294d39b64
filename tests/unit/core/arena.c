/*
 * core/arena.c - the per-request bump allocator: alignment of every piece,
 * growth past a block (small pieces chain a standard block, a large one
 * gets its own), reset, and the pool of spare first blocks (reuse, bound).
 * Leaks show under ASan (make san).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "core/arena.c"

static void test_alignment(void **state)
{
    cdb_arena *a = cdb_arena_new(NULL);
    assert_non_null(a);
    size_t sizes[] = {1, 3, 0, 17, 8, 33, 100, 5};
    char *prev = NULL;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        char *p = cdb_arena_alloc(a, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % CDB_ARENA_ALIGN, 0);
        assert_true(p != prev);                /* size 0 still gives a piece of its own */
        memset(p, 0xab, sizes[i]);
        prev = p;
    }
    long double *ld = cdb_arena_alloc(a, sizeof *ld);
    *ld = 1.5L;                                /* UBSan: no misaligned store */
    assert_true(*ld == 1.5L);
    assert_int_equal(cdb_arena_blocks(a), 1);
    cdb_arena_free(a);
}

static void test_growth_past_a_block(void **state)
{
    cdb_arena *a = cdb_arena_new(NULL);
    /* small pieces fill the first block, then chain standard blocks */
    char *first = cdb_arena_alloc(a, 100);
    strcpy(first, "first piece");
    size_t n = 0;
    while (cdb_arena_blocks(a) == 1) {
        char *p = cdb_arena_alloc(a, 1000);
        assert_non_null(p);
        memset(p, (int)n, 1000);
        n++;
    }
    assert_true(n >= 6 && n <= 8);             /* about 8 KiB per block */
    assert_string_equal(first, "first piece"); /* earlier pieces do not move */
    /* a piece larger than a block gets one of its own */
    char *big = cdb_arena_alloc(a, 1024 * 1024);
    assert_non_null(big);
    memset(big, 1, 1024 * 1024);
    assert_int_equal(cdb_arena_blocks(a), 3);
    assert_true(cdb_arena_used(a) >= 100 + n * 1000 + 1024 * 1024);
    /* strings */
    assert_string_equal(cdb_arena_strdup(a, "abc"), "abc");
    assert_string_equal(cdb_arena_strndup(a, "abcdef", 3), "abc");
    assert_string_equal(cdb_arena_strndup(a, "ab", 10), "ab");
    char *z = cdb_arena_calloc(a, 64);
    for (int i = 0; i < 64; i++)
        assert_int_equal(z[i], 0);
    /* a size that cannot be rounded up fails instead of wrapping */
    assert_null(cdb_arena_alloc(a, SIZE_MAX - 3));
    cdb_arena_free(a);
}

static void test_reset_keeps_the_first_block(void **state)
{
    cdb_arena *a = cdb_arena_new(NULL);
    char *p1 = cdb_arena_alloc(a, 64);
    for (int i = 0; i < 20; i++)
        assert_non_null(cdb_arena_alloc(a, 1000));
    assert_true(cdb_arena_blocks(a) > 1);
    cdb_arena_reset(a);
    assert_int_equal(cdb_arena_blocks(a), 1);
    assert_int_equal(cdb_arena_used(a), 0);
    char *p2 = cdb_arena_alloc(a, 64);
    assert_ptr_equal(p1, p2);                  /* the same bytes again, no malloc */
    cdb_arena_free(a);
}

static void test_pool_reuses_and_bounds(void **state)
{
    cdb_arena_pool *pool = cdb_arena_pool_new(2);
    assert_non_null(pool);
    cdb_arena *a = cdb_arena_new(pool), *b = cdb_arena_new(pool), *c = cdb_arena_new(pool);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_int_equal(cdb_arena_pool_spare(pool), 0);
    cdb_arena_alloc(a, 20000);                 /* an extra block: freed, not kept */
    cdb_arena_free(a);
    cdb_arena_free(b);
    cdb_arena_free(c);                         /* the pool is full: freed */
    assert_int_equal(cdb_arena_pool_spare(pool), 2);
    /* the next arena takes the last block given back (b's) */
    cdb_arena *d = cdb_arena_new(pool);
    assert_ptr_equal(d, b);
    assert_int_equal(cdb_arena_pool_spare(pool), 1);
    assert_int_equal(cdb_arena_used(d), 0);
    assert_int_equal(cdb_arena_blocks(d), 1);
    cdb_arena_free(d);
    cdb_arena_pool_free(pool);                 /* frees the spares */
    /* a pool that keeps nothing */
    cdb_arena_pool *none = cdb_arena_pool_new(0);
    cdb_arena_free(cdb_arena_new(none));
    assert_int_equal(cdb_arena_pool_spare(none), 0);
    cdb_arena_pool_free(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_growth_past_a_block),
        cmocka_unit_test(test_reset_keeps_the_first_block),
        cmocka_unit_test(test_pool_reuses_and_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
