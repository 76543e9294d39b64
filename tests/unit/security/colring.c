/*
 * security/colring.c - the snapshot's age rule: cdb__colring_peek (the event
 * loops) gives the snapshot only while it is younger than CDB_COLRING_TTL_MS,
 * the age at which a worker's cdb__colring_get reloads it, so a loop never
 * decides from a snapshot a worker would refuse; invalidated = none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "../../../src/security/colring.c"

#define TTL_US (CDB_COLRING_TTL_MS * 1000LL)

/* A ring holding an empty snapshot loaded at loaded_us (the ring's own reference). */
static cdb_colring *ring_with_snapshot(int64_t loaded_us)
{
    cdb_colring *r = cdb__colring_new();
    assert_non_null(r);
    r->current = calloc(1, sizeof *r->current);
    assert_non_null(r->current);
    r->current->refs = 1;
    r->loaded_us = loaded_us;
    return r;
}

static void test_current_honours_the_age(void **state)
{
    (void)state;
    int64_t t0 = 1000000000LL;
    cdb_colring *r = ring_with_snapshot(t0);
    cdb_colset *s = current(r, t0 + TTL_US - 1, TTL_US);
    assert_ptr_equal(s, r->current);
    assert_int_equal(r->current->refs, 2);
    s->refs--;
    assert_null(current(r, t0 + TTL_US, TTL_US));
    assert_null(current(r, t0 + 10 * TTL_US, TTL_US));
    assert_int_equal(r->current->refs, 1);
    cdb__colring_free(r);
}

static void test_peek_refuses_a_snapshot_a_worker_would_reload(void **state)
{
    (void)state;
    cdb_service svc;
    memset(&svc, 0, sizeof svc);
    int64_t now = cdb_mono_us();
    /* the refresh job ran a second ago: the loops use it */
    svc.colring = ring_with_snapshot(now - TTL_US / 2);
    cdb_colset *s = cdb__colring_peek(&svc);
    assert_non_null(s);
    cdb__colring_put(&svc, s);
    /* the job has been held up past the TTL (a long job on its thread): a worker decides */
    svc.colring->loaded_us = now - TTL_US - 500000;
    assert_null(cdb__colring_peek(&svc));
    /* this instance's own setup or rotation: reloaded before anyone uses it again */
    svc.colring->loaded_us = now;
    cdb__colring_invalidate(svc.colring);
    assert_null(cdb__colring_peek(&svc));
    assert_int_equal(svc.colring->current->refs, 1);
    cdb__colring_free(svc.colring);
}

static void test_peek_before_the_first_load(void **state)
{
    (void)state;
    cdb_service svc;
    memset(&svc, 0, sizeof svc);
    svc.colring = cdb__colring_new();
    assert_null(cdb__colring_peek(&svc));
    cdb__colring_free(svc.colring);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_current_honours_the_age),
        cmocka_unit_test(test_peek_refuses_a_snapshot_a_worker_would_reload),
        cmocka_unit_test(test_peek_before_the_first_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
