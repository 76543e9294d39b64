/*
 * store/qcache.c - judging a cached answer against its table's generation
 * (what the event loops' lookups and the blocking one share): an entry is
 * served only at the generation it was stored under.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "store/qcache.c"

static void test_probe_hit_only_at_the_entrys_generation(void **state)
{
    const char *v;
    size_t len;
    int64_t g;
    const char entry[] = "7\n\"data\":[1]";
    assert_true(cdb_qcache_probe_hit("7", entry, sizeof entry - 1, &g, &v, &len));
    assert_int_equal(len, strlen("\"data\":[1]"));
    assert_memory_equal(v, "\"data\":[1]", len);
    assert_int_equal(g, 7);
    /* another generation, an unset one (0), a missing entry */
    assert_false(cdb_qcache_probe_hit("8", entry, sizeof entry - 1, &g, &v, &len));
    assert_false(cdb_qcache_probe_hit(NULL, entry, sizeof entry - 1, &g, &v, &len));
    assert_false(cdb_qcache_probe_hit("7", NULL, 0, &g, &v, &len));
    const char at0[] = "0\nx";
    assert_true(cdb_qcache_probe_hit(NULL, at0, sizeof at0 - 1, &g, &v, &len));
    assert_true(len == 1 && v[0] == 'x');
}

static void test_malformed_entries_and_generations_are_misses(void **state)
{
    const char *v;
    size_t len;
    int64_t g;
    static const char *const bad[] = {"", "7", "x\n1", "7x\n1", "\n1", "99999999999999999999\n1", NULL};
    for (const char *const *b = bad; *b; b++)
        assert_false(cdb_qcache_probe_hit("7", *b, strlen(*b), &g, &v, &len));
    /* a generation that is not a number counts as unset */
    const char at0[] = "0\ny";
    assert_true(cdb_qcache_probe_hit("garbage", at0, sizeof at0 - 1, &g, &v, &len));
    assert_int_equal(parse_generation("12"), 12);
    assert_int_equal(parse_generation(NULL), 0);
    assert_int_equal(entry_payload("3\nab", 4, 3), 2);
    assert_int_equal(entry_payload("3\nab", 4, 4), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe_hit_only_at_the_entrys_generation),
        cmocka_unit_test(test_malformed_entries_and_generations_are_misses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
