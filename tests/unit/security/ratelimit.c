/*
 * security/ratelimit.c - the GCRA arithmetic of cdb_gcra_step on synthetic
 * clocks, and the in-process limiter and window counters (no Redis). The
 * Redis path needs a server and is covered by the end-to-end suite.
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

#include "security/ratelimit.h"

#define MS 1000
#define SEC 1000000

static void sleep_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static void assert_near(double got, double want, double tolerance)
{
    if (got < want - tolerance || got > want + tolerance)
        fail_msg("got %f, want %f +- %f", got, want, tolerance);
}

static void test_burst_then_refused(void **state)
{
    int64_t now = 5 * SEC, tat = 0;
    cdb_rl_result r;

    (void)state;
    for (int i = 0; i < 10; i++) {
        cdb_gcra_step(now, &tat, 10, 10, &r);
        assert_true(r.allowed);
        assert_int_equal(r.limit, 10);
        assert_int_equal(r.remaining, 9 - i);
        assert_near(r.reset_after_s, 0.1 * (i + 1), 1e-9);
        assert_near(r.retry_after_s, 0, 0);
    }
    int64_t full_tat = tat;
    cdb_gcra_step(now, &tat, 10, 10, &r);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_near(r.retry_after_s, 0.1, 1e-9);
    assert_near(r.reset_after_s, 1.0, 1e-9);
    assert_true(tat == full_tat);               /* a refusal costs nothing */

    /* 99 ms later: still 1 ms short. */
    cdb_gcra_step(now + 99 * MS, &tat, 10, 10, &r);
    assert_false(r.allowed);
    assert_near(r.retry_after_s, 0.001, 1e-9);
    /* 100 ms later: exactly one token back. */
    cdb_gcra_step(now + 100 * MS, &tat, 10, 10, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    cdb_gcra_step(now + 100 * MS, &tat, 10, 10, &r);
    assert_false(r.allowed);
}

static void test_sustained_at_rate(void **state)
{
    int64_t now = 0, tat = 0;
    cdb_rl_result r;

    (void)state;
    /* burst 1 is the strictest: one request every T exactly, for 10 s. */
    for (int i = 0; i < 500; i++, now += 20 * MS) {
        cdb_gcra_step(now, &tat, 50, 1, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 0);
    }
    /* With a burst, at-rate traffic keeps the bucket nearly full. */
    tat = 0;
    for (int i = 0; i < 500; i++, now += 20 * MS) {
        cdb_gcra_step(now, &tat, 50, 5, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 4);
    }
    /* Twice the rate is admitted half the time once the burst is spent. */
    int allowed = 0;
    tat = 0;
    for (int i = 0; i < 1000; i++, now += 10 * MS) {
        cdb_gcra_step(now, &tat, 50, 5, &r);
        allowed += r.allowed;
    }
    assert_in_range(allowed, 500, 506);
}

static void test_long_pause_refills(void **state)
{
    int64_t now = SEC, tat = 0;
    cdb_rl_result r;

    (void)state;
    for (int i = 0; i < 20; i++)
        cdb_gcra_step(now, &tat, 10, 20, &r);
    cdb_gcra_step(now, &tat, 10, 20, &r);
    assert_false(r.allowed);
    assert_near(r.reset_after_s, 2.0, 1e-9);

    /* An hour later the bucket is full, not "more than full". */
    now += 3600LL * SEC;
    for (int i = 0; i < 20; i++) {
        cdb_gcra_step(now, &tat, 10, 20, &r);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 19 - i);
    }
    cdb_gcra_step(now, &tat, 10, 20, &r);
    assert_false(r.allowed);

    /* Half the refill time gives back half the bucket. */
    now += 1 * SEC;
    for (int i = 0; i < 10; i++) {
        cdb_gcra_step(now, &tat, 10, 20, &r);
        assert_true(r.allowed);
    }
    cdb_gcra_step(now, &tat, 10, 20, &r);
    assert_false(r.allowed);
}

static void test_rate_one_burst_one(void **state)
{
    int64_t now = 0, tat = 0;
    cdb_rl_result r;

    (void)state;
    cdb_gcra_step(now, &tat, 1, 1, &r);
    assert_true(r.allowed);
    assert_int_equal(r.limit, 1);
    assert_int_equal(r.remaining, 0);
    assert_near(r.reset_after_s, 1.0, 1e-9);
    cdb_gcra_step(now + 500 * MS, &tat, 1, 1, &r);
    assert_false(r.allowed);
    assert_near(r.retry_after_s, 0.5, 1e-9);
    assert_near(r.reset_after_s, 0.5, 1e-9);
    cdb_gcra_step(now + SEC, &tat, 1, 1, &r);
    assert_true(r.allowed);
    cdb_gcra_step(now + SEC, &tat, 1, 1, &r);
    assert_false(r.allowed);
    assert_near(r.retry_after_s, 1.0, 1e-9);
}

static void test_edge_arguments(void **state)
{
    int64_t tat = 0;
    cdb_rl_result r;

    (void)state;
    /* rate 0 = no quota. */
    for (int i = 0; i < 100; i++) {
        cdb_gcra_step(0, &tat, 0, 1, &r);
        assert_true(r.allowed);
        assert_int_equal(r.limit, 0);
    }
    assert_true(tat == 0);
    /* burst < 1 behaves as 1. */
    cdb_gcra_step(0, &tat, 10, 0, &r);
    assert_true(r.allowed);
    cdb_gcra_step(0, &tat, 10, 0, &r);
    assert_false(r.allowed);
    /* A rate above 1e6/s still limits (T is at least 1 us). */
    tat = 0;
    cdb_gcra_step(0, &tat, 2000000, 3, &r);
    cdb_gcra_step(0, &tat, 2000000, 3, &r);
    cdb_gcra_step(0, &tat, 2000000, 3, &r);
    assert_true(r.allowed);
    cdb_gcra_step(0, &tat, 2000000, 3, &r);
    assert_false(r.allowed);
}

/* ---- the in-process limiter ---------------------------------------------- */

static int setup(void **state)
{
    *state = cdb_ratelimit_new(NULL);
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    cdb_ratelimit_free(*state);
    return 0;
}

static void test_fallback_check(void **state)
{
    cdb_ratelimit *rl = *state;
    cdb_rl_result r;

    for (int i = 0; i < 10; i++) {
        cdb_ratelimit_check(rl, "rl:a", 10, 10, &r);
        assert_true(r.allowed);
        assert_int_equal(r.limit, 10);
        assert_int_equal(r.remaining, 9 - i);
    }
    cdb_ratelimit_check(rl, "rl:a", 10, 10, &r);
    assert_false(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_near(r.retry_after_s, 0.1, 0.02);

    /* Keys are independent. */
    cdb_ratelimit_check(rl, "rl:b", 10, 10, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 9);

    sleep_ms(110);
    cdb_ratelimit_check(rl, "rl:a", 10, 10, &r);
    assert_true(r.allowed);
    cdb_ratelimit_check(rl, "rl:a", 10, 10, &r);
    assert_false(r.allowed);

    /* rate 0 never refuses. */
    for (int i = 0; i < 50; i++) {
        cdb_ratelimit_check(rl, "rl:off", 0, 1, &r);
        assert_true(r.allowed);
    }
}

static void test_fallback_table_bound(void **state)
{
    cdb_ratelimit *rl = *state;
    cdb_rl_result r;
    char key[32];

    cdb_ratelimit_check(rl, "rl:first", 1, 1, &r);
    assert_true(r.allowed);
    /* More distinct live keys than the table holds: it evicts, never fails. */
    for (int i = 0; i < 100100; i++) {
        snprintf(key, sizeof key, "rl:k%d", i);
        cdb_ratelimit_check(rl, key, 1, 2, &r);
        assert_true(r.allowed);
    }
    cdb_ratelimit_check(rl, "rl:k100099", 1, 2, &r);
    assert_true(r.allowed);
    cdb_ratelimit_check(rl, "rl:k100099", 1, 2, &r);
    assert_false(r.allowed);
}

typedef struct hammer_arg {
    cdb_ratelimit *rl;
    int allowed;
    int64_t max_hit;
} hammer_arg;

static void *hammer(void *p)
{
    hammer_arg *a = p;
    cdb_rl_result r;
    for (int i = 0; i < 500; i++) {
        int64_t n;
        cdb_ratelimit_check(a->rl, "rl:shared", 1, 1000, &r);
        a->allowed += r.allowed;
        n = cdb_ratelimit_window_hit(a->rl, "win:shared", 60);
        if (n > a->max_hit)
            a->max_hit = n;
    }
    return NULL;
}

static void test_fallback_threads(void **state)
{
    hammer_arg args[4];
    pthread_t th[4];
    int allowed = 0;
    int64_t max_hit = 0;

    for (int i = 0; i < 4; i++) {
        args[i] = (hammer_arg){ .rl = *state };
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        allowed += args[i].allowed;
        if (args[i].max_hit > max_hit)
            max_hit = args[i].max_hit;
    }
    /* 2000 tries at 1/s with burst 1000, well within a second: exactly 1000. */
    assert_int_equal(allowed, 1000);
    assert_int_equal(max_hit, 2000);             /* no hit lost or counted twice */
    assert_int_equal(cdb_ratelimit_window_count(*state, "win:shared", 60, NULL), 2000);
}

static void test_window_counters(void **state)
{
    cdb_ratelimit *rl = *state;
    double reset = -1;

    assert_int_equal(cdb_ratelimit_window_count(rl, "win:a", 1, &reset), 0);
    assert_near(reset, 0, 0);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:a", 1), 1);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:a", 1), 2);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:a", 1), 3);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:b", 1), 1);
    assert_int_equal(cdb_ratelimit_window_count(rl, "win:a", 1, &reset), 3);
    assert_near(reset, 1.0, 0.05);
    assert_int_equal(cdb_ratelimit_window_count(rl, "win:a", 1, NULL), 3);

    cdb_ratelimit_window_clear(rl, "win:b");
    assert_int_equal(cdb_ratelimit_window_count(rl, "win:b", 1, NULL), 0);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:b", 1), 1);
    cdb_ratelimit_window_clear(rl, "win:never");

    /* The window is fixed by its first hit: a later hit does not extend it. */
    sleep_ms(1100);
    assert_int_equal(cdb_ratelimit_window_count(rl, "win:a", 1, &reset), 0);
    assert_near(reset, 0, 0);
    assert_int_equal(cdb_ratelimit_window_hit(rl, "win:a", 1), 1);
    assert_int_equal(cdb_ratelimit_window_count(rl, "win:b", 1, NULL), 0);
}


/* The loops' asynchronous form: what is sent, and how an answer is read. */
static void test_async_command_and_reply(void **state)
{
    cdb_ratelimit *rl = cdb_ratelimit_new(NULL);
    cdb_rl_command cmd;
    cdb_rl_result out;
    /* without Redis (or without a limit) there is nothing to send */
    assert_false(cdb_ratelimit_gcra_command(rl, "k", 5, 5, &cmd));
    assert_false(cdb_ratelimit_gcra_command(rl, "k", 0, 5, &cmd));
    /* no answer, an error answer (NOSCRIPT ran nothing), a malformed one */
    assert_false(cdb_ratelimit_gcra_reply(rl, NULL, 5, &out));
    redisReply err = {.type = REDIS_REPLY_ERROR, .str = "NOSCRIPT No matching script", .len = 27};
    assert_false(cdb_ratelimit_gcra_reply(rl, &err, 5, &out));
    redisReply one = {.type = REDIS_REPLY_INTEGER, .integer = 1};
    assert_false(cdb_ratelimit_gcra_reply(rl, &one, 5, &out));
    /* [allowed, remaining, retry_after_us, reset_after_us] */
    redisReply v[4] = {{.type = REDIS_REPLY_INTEGER, .integer = 0}, {.type = REDIS_REPLY_INTEGER, .integer = 0},
                       {.type = REDIS_REPLY_INTEGER, .integer = 1500000},
                       {.type = REDIS_REPLY_INTEGER, .integer = 2000000}};
    redisReply *elems[4] = {&v[0], &v[1], &v[2], &v[3]};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 4, .element = elems};
    assert_true(cdb_ratelimit_gcra_reply(rl, &arr, 5, &out));
    assert_false(out.allowed);
    assert_int_equal(out.limit, 5);
    assert_true(out.retry_after_s > 1.49 && out.retry_after_s < 1.51);
    assert_true(out.reset_after_s > 1.99 && out.reset_after_s < 2.01);
    arr.elements = 3;
    assert_false(cdb_ratelimit_gcra_reply(rl, &arr, 5, &out));
    cdb_ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refused),
        cmocka_unit_test(test_sustained_at_rate),
        cmocka_unit_test(test_long_pause_refills),
        cmocka_unit_test(test_rate_one_burst_one),
        cmocka_unit_test(test_edge_arguments),
        cmocka_unit_test(test_async_command_and_reply),
        cmocka_unit_test_setup_teardown(test_fallback_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fallback_table_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fallback_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_counters, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
