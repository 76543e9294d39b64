/*
 * management/sizing.c - unit tests of the sizing arithmetic
 * (src/management/sizing.c): usable connections, instances that fit, the
 * pool-too-big verdict. Reading the numbers from PostgreSQL and the log
 * line are covered end to end (tests/e2e/test_instances.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "management/sizing.c"

static void test_fits(void **state)
{
    (void)state;
    cdb_sizing s;
    /* PostgreSQL's defaults: 100 - 3 - 10 = 87 usable, four pools of 20 */
    cdb_sizing_eval(100, 3, 7, 20, &s);
    assert_int_equal(s.usable, 87);
    assert_int_equal(s.fit, 4);
    assert_int_equal(s.free_now, 80);
    assert_false(s.pool_too_big);
    /* exactly the usable count still fits once */
    cdb_sizing_eval(100, 3, 0, 87, &s);
    assert_int_equal(s.fit, 1);
    assert_false(s.pool_too_big);
}

static void test_too_big(void **state)
{
    (void)state;
    cdb_sizing s;
    cdb_sizing_eval(100, 3, 0, 88, &s);
    assert_int_equal(s.fit, 0);
    assert_true(s.pool_too_big);
    /* a server smaller than the reserve: nothing usable, never negative */
    cdb_sizing_eval(5, 3, 4, 1, &s);
    assert_int_equal(s.usable, 0);
    assert_int_equal(s.fit, 0);
    assert_int_equal(s.free_now, -4);
    assert_true(s.pool_too_big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits),
        cmocka_unit_test(test_too_big),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
