/*
 * store/commit_lsn.c - the in-process half of read-your-writes (no Redis
 * here): a caller's LSN only grows, a caller who never wrote needs none,
 * and a caller displaced from its slot by another is never forgotten: it
 * waits for the floor, at least its own LSN.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "store/commit_lsn.c"

static void test_record_and_get(void **state)
{
    (void)state;
    cdb_commit_lsn *c = cdb_commit_lsn_new(NULL, 60);
    assert_non_null(c);
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 0);
    cdb_commit_lsn_record(c, "alice", 500);
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 500);
    cdb_commit_lsn_record(c, "alice", 300);          /* an older answer never lowers it */
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 500);
    cdb_commit_lsn_record(c, "alice", 900);
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 900);
    assert_int_equal(cdb_commit_lsn_get(c, "bob", NULL), 0);
    uint64_t last = 0;
    assert_int_equal(cdb_commit_lsn_get(c, "bob", &last), 0);
    assert_int_equal(last, 900);                     /* anyone's last commit */
    cdb_commit_lsn_record(c, "", 5);                 /* nobody: ignored */
    cdb_commit_lsn_record(NULL, "alice", 5);
    assert_int_equal(cdb_commit_lsn_get(c, "", NULL), UINT64_MAX);   /* an unknown caller: the primary */
    cdb_commit_lsn_free(c);
}

static void test_displaced_caller_waits_for_the_floor(void **state)
{
    (void)state;
    cdb_commit_lsn *c = cdb_commit_lsn_new(NULL, 60);
    char a[32], b[32];
    snprintf(a, sizeof a, "user-0");
    int i = 1;
    for (;; i++) {                                   /* a second id in the same slot */
        snprintf(b, sizeof b, "user-%d", i);
        if (slot_of(c, a) == slot_of(c, b))
            break;
    }
    cdb_commit_lsn_record(c, a, 700);
    cdb_commit_lsn_record(c, b, 100);                /* displaces a */
    assert_int_equal(cdb_commit_lsn_get(c, b, NULL), 100);
    assert_true(cdb_commit_lsn_get(c, a, NULL) >= 700);    /* never below its own write */
    assert_int_equal(cdb_commit_lsn_get(c, "someone-else", NULL), 700);  /* careful, not stale */
    cdb_commit_lsn_free(c);
}

static void test_prefetch_from_the_session_check(void **state)
{
    (void)state;
    cdb_commit_lsn *c = cdb_commit_lsn_new(NULL, 60);
    char hex[] = "00000000000003E8";
    redisReply mine = {.type = REDIS_REPLY_STRING, .str = hex, .len = 16};
    cdb_commit_lsn_record(c, "alice", 10);             /* this process saw 10 */
    c->redis = (cdb_redis *)0x1;      /* never called: the prefetched value answers */
    cdb_commit_lsn_prefetched("alice", &mine);
    assert_true(prefetch.set);
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 1000);   /* the higher of Redis and local */
    assert_false(prefetch.set);                                     /* used once */
    redisReply nil = {.type = REDIS_REPLY_NIL};
    cdb_commit_lsn_prefetched("alice", &nil);
    assert_int_equal(cdb_commit_lsn_get(c, "alice", NULL), 10);     /* never wrote elsewhere: local */
    char errtext[] = "ERR";
    redisReply bad = {.type = REDIS_REPLY_ERROR, .str = errtext, .len = 3};
    cdb_commit_lsn_prefetched("alice", &bad);
    assert_false(prefetch.set);                                     /* not a value: ask again */
    cdb_commit_lsn_prefetched("alice", &mine);
    cdb_commit_lsn_prefetch_clear();                                /* the next request's check */
    assert_false(prefetch.set);
    c->redis = NULL;
    cdb_commit_lsn_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_and_get),
        cmocka_unit_test(test_displaced_caller_waits_for_the_floor),
        cmocka_unit_test(test_prefetch_from_the_session_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
