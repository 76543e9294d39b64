/*
 * store/reserved.c - the registry of lease-reserved connections: who may
 * take one (owner, live, not busy), that a busy one is refused rather than
 * shared, that a release while a request runs hands the connection back at
 * that request's end (not before, not twice), and the per-thread binding
 * cdb_txn_acquire uses. The pool is faked: only the hand-back is observed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "store/pool.h"
#include "store/pg.h"

static int given_back;
static cdb_pool_conn *last_back;

static void fake_pool_release(cdb_pool *pool, cdb_pool_conn *pc)
{
    (void)pool;
    given_back++;
    last_back = pc;
}

/* the registry never looks inside a connection but to roll it back: none here */
#define cdb_pool_release fake_pool_release
#define cdb_pool_conn_pg(pc) ((PGconn *)NULL)
#include "store/reserved.c"

#define ID1 "11111111-1111-4111-8111-111111111111"
#define ID2 "22222222-2222-4222-8222-222222222222"
#define ALICE "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
#define BOB "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"

static cdb_pool_conn *const PC1 = (cdb_pool_conn *)0x1001;
static cdb_pool_conn *const PC2 = (cdb_pool_conn *)0x1002;

static int reset(void **state)
{
    (void)state;
    memset(slots, 0, sizeof slots);
    given_back = 0;
    last_back = NULL;
    cdb_reserved_bind(NULL);
    return 0;
}

static cdb_pool_conn *take(const char *id, const char *user, cdb_err want)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_pool_conn *pc = cdb_reserved_checkout(id, user, &err);
    assert_int_equal(err.code, want);
    assert_true((pc != NULL) == (want == CDB_OK));
    cdb_error_destroy(&err);
    return pc;
}

static void test_owner_takes_others_do_not(void **state)
{
    (void)state;
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC1), 0);
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC2), -1);   /* known id */
    take(ID1, BOB, CDB_ERR_NOT_FOUND);
    take(ID2, ALICE, CDB_ERR_NOT_FOUND);
    assert_ptr_equal(take(ID1, ALICE, CDB_OK), PC1);
    take(ID1, ALICE, CDB_ERR_CONFLICT);                   /* busy: refused, not shared */
    take(ID1, BOB, CDB_ERR_NOT_FOUND);                    /* still not bob's, busy or not */
    cdb_reserved_checkin(NULL, ID1);
    assert_ptr_equal(take(ID1, NULL, CDB_OK), PC1);       /* NULL: an admin's, any owner */
    cdb_reserved_checkin(NULL, ID1);
    assert_int_equal(given_back, 0);
    assert_int_equal(cdb_reserved_count(), 1);
}

static void test_expired_is_not_found(void **state)
{
    (void)state;
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() - 1, PC1), 0);
    take(ID1, ALICE, CDB_ERR_NOT_FOUND);
    cdb_reserved_extend(ID1, cdb_wall_s() + 60);
    assert_ptr_equal(take(ID1, ALICE, CDB_OK), PC1);
    cdb_reserved_checkin(NULL, ID1);
}

static void test_release_idle_gives_back_at_once(void **state)
{
    (void)state;
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC1), 0);
    assert_true(cdb_reserved_release(NULL, ID1));
    assert_int_equal(given_back, 1);
    assert_ptr_equal(last_back, PC1);
    assert_false(cdb_reserved_release(NULL, ID1));        /* once */
    take(ID1, ALICE, CDB_ERR_NOT_FOUND);
    assert_int_equal(cdb_reserved_count(), 0);
    assert_int_equal(given_back, 1);
}

static void test_release_while_busy_gives_back_at_checkin(void **state)
{
    (void)state;
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC1), 0);
    assert_ptr_equal(take(ID1, ALICE, CDB_OK), PC1);
    assert_true(cdb_reserved_release(NULL, ID1));
    assert_int_equal(given_back, 0);                      /* the request still runs on it */
    take(ID1, ALICE, CDB_ERR_NOT_FOUND);
    assert_int_equal(cdb_reserved_count(), 0);
    cdb_reserved_checkin(NULL, ID1);
    assert_int_equal(given_back, 1);
    assert_ptr_equal(last_back, PC1);
    cdb_reserved_checkin(NULL, ID1);                      /* a stray second checkin: nothing */
    assert_int_equal(given_back, 1);
    /* the slot is free again */
    assert_int_equal(cdb_reserved_put(ID1, BOB, cdb_wall_s() + 60, PC2), 0);
}

static void test_ids_lists_live_ones(void **state)
{
    (void)state;
    char ids[4][37];
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC1), 0);
    assert_int_equal(cdb_reserved_put(ID2, BOB, cdb_wall_s() + 60, PC2), 0);
    assert_int_equal(cdb_reserved_ids(ids, 4), 2);
    assert_true(strcmp(ids[0], ID1) == 0 || strcmp(ids[1], ID1) == 0);
    assert_true(cdb_reserved_release(NULL, ID2));
    assert_int_equal(cdb_reserved_ids(ids, 4), 1);
    assert_string_equal(ids[0], ID1);
}

static void test_full_registry_refuses(void **state)
{
    (void)state;
    char id[37];
    for (int i = 0; i < CDB_RESERVED_MAX; i++) {
        snprintf(id, sizeof id, "%036d", i);
        assert_int_equal(cdb_reserved_put(id, ALICE, cdb_wall_s() + 60, PC1), 0);
    }
    assert_int_equal(cdb_reserved_put(ID1, ALICE, cdb_wall_s() + 60, PC1), -1);
    assert_int_equal(cdb_reserved_count(), CDB_RESERVED_MAX);
}

static void test_binding_is_claimed_once(void **state)
{
    (void)state;
    assert_null(cdb_reserved_claim_bound());
    cdb_reserved_bind(PC1);
    assert_ptr_equal(cdb_reserved_claim_bound(), PC1);
    assert_null(cdb_reserved_claim_bound());              /* nested acquire: a pool connection */
    assert_false(cdb_reserved_unclaim_bound(PC2));
    assert_true(cdb_reserved_unclaim_bound(PC1));
    assert_false(cdb_reserved_unclaim_bound(PC1));
    assert_ptr_equal(cdb_reserved_claim_bound(), PC1);
    cdb_reserved_bind(NULL);
    assert_null(cdb_reserved_claim_bound());
    assert_false(cdb_reserved_unclaim_bound(PC1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_owner_takes_others_do_not, reset),
        cmocka_unit_test_setup(test_expired_is_not_found, reset),
        cmocka_unit_test_setup(test_release_idle_gives_back_at_once, reset),
        cmocka_unit_test_setup(test_release_while_busy_gives_back_at_checkin, reset),
        cmocka_unit_test_setup(test_ids_lists_live_ones, reset),
        cmocka_unit_test_setup(test_full_registry_refuses, reset),
        cmocka_unit_test_setup(test_binding_is_claimed_once, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
