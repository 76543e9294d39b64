/*
 * core/jobs.c - the background thread: jobs run at their interval on the
 * monotonic clock (a 1 s job used to run every 2 s when the wall-clock
 * wait woke a hair early), the first run after its delay, a failing job
 * keeps its schedule, and cdb_jobs_free stops a sleeping thread at once.
 * Counts over windows with wide margins: a loaded machine delays a thread,
 * it does not make it skip half its runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "core/jobs.c"

typedef struct counter {
    atomic_int runs;
    atomic_llong first_ms;         /* monotonic ms of the first run */
    int fail;                      /* answer an error each time */
} counter;

static int count_run(void *arg, cdb_error *err)
{
    counter *c = arg;
    long long zero = 0;
    atomic_compare_exchange_strong(&c->first_ms, &zero, (long long)cdb_mono_ms());
    atomic_fetch_add(&c->runs, 1);
    return c->fail ? cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "failing on purpose") : 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_interval_is_kept(void **state)
{
    (void)state;
    counter fast = {0}, failing = {.fail = 1}, slow = {0};
    cdb_jobs *jobs = cdb_jobs_new();
    assert_non_null(jobs);
    assert_int_equal(cdb_jobs_add_ms(jobs, "fast", 200, 0, count_run, &fast), 0);
    assert_int_equal(cdb_jobs_add_ms(jobs, "failing", 200, 0, count_run, &failing), 0);
    assert_int_equal(cdb_jobs_add(jobs, "slow", 1, count_run, &slow), 0);   /* first run after 5 s */
    int64_t started = cdb_mono_ms();
    assert_int_equal(cdb_jobs_start(jobs), 0);
    sleep_ms(3000);
    int runs = atomic_load(&fast.runs), failed = atomic_load(&failing.runs);
    /* 15 expected in 3 s at 200 ms; skipping every other tick would give about 8 */
    assert_true(runs >= 11 && runs <= 17);
    assert_true(failed >= 11 && failed <= 17);
    /* the first run was at once, not after CDB_JOBS_FIRST_MS */
    assert_true(atomic_load(&fast.first_ms) - started < 1000);
    assert_int_equal(atomic_load(&slow.runs), 0);
    int64_t before_free = cdb_mono_ms();
    cdb_jobs_free(jobs);           /* wakes the sleeping thread: no wait for a tick */
    assert_true(cdb_mono_ms() - before_free < 1000);
}

static void test_add_refuses_bad_intervals_and_a_full_table(void **state)
{
    (void)state;
    counter c = {0};
    cdb_jobs *jobs = cdb_jobs_new();
    assert_non_null(jobs);
    assert_int_equal(cdb_jobs_add(jobs, "zero", 0, count_run, &c), -1);
    assert_int_equal(cdb_jobs_add_ms(jobs, "zero", 0, 0, count_run, &c), -1);
    assert_int_equal(cdb_jobs_add_ms(jobs, "negative first", 100, -1, count_run, &c), -1);
    for (int i = 0; i < CDB_JOBS_MAX; i++)
        assert_int_equal(cdb_jobs_add(jobs, "filler", 3600, count_run, &c), 0);
    assert_int_equal(cdb_jobs_add(jobs, "one too many", 3600, count_run, &c), -1);
    cdb_jobs_free(jobs);           /* never started */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interval_is_kept),
        cmocka_unit_test(test_add_refuses_bad_intervals_and_a_full_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
