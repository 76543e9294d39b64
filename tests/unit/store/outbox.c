/*
 * store/outbox.c - judging a Redis reply on the loop's apply
 * (cdb_outbox_apply_async's judge) as cache.c judges the blocking one:
 * DONE with the result cdb_outbox_apply reports (incr: the value, del: the
 * count, expire: applied), REFUSED for an error retrying cannot fix
 * (WRONGTYPE, not an integer), DOWN for a transient error (LOADING, BUSY,
 * READONLY, ...), no reply, or a reply of the wrong type; and which rows
 * publish an invalidation (invalidation_of). Sending and the acknowledgement
 * wait need a server: tests/e2e/test_loop_tx.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "store/outbox.c"

static async_apply *apply_of(const char *op, bool want)
{
    static async_apply x;
    memset(&x, 0, sizeof x);
    x.op = op;
    x.key = "app:user:u:k";
    x.want = want;
    return &x;
}

static redisReply reply(int type, long long integer, const char *str)
{
    redisReply r = {.type = type, .integer = integer, .str = (char *)str, .len = str ? strlen(str) : 0};
    return r;
}

static void test_done_with_results(void **state)
{
    (void)state;
    redisReply ok = reply(REDIS_REPLY_STATUS, 0, "OK"), one = reply(REDIS_REPLY_INTEGER, 1, NULL),
               seven = reply(REDIS_REPLY_INTEGER, 7, NULL), zero = reply(REDIS_REPLY_INTEGER, 0, NULL);
    async_apply *x = apply_of("set", true);
    assert_int_equal(judge(x, &ok), CDB_OUTBOX_DONE);
    assert_null(x->result);                       /* set reports no value */
    x = apply_of("incr", true);
    assert_int_equal(judge(x, &seven), CDB_OUTBOX_DONE);
    assert_int_equal(json_integer_value(x->result), 7);
    json_decref(x->result);
    x = apply_of("del", true);
    assert_int_equal(judge(x, &zero), CDB_OUTBOX_DONE);
    assert_true(json_is_integer(x->result) && json_integer_value(x->result) == 0);
    json_decref(x->result);
    x = apply_of("expire", true);
    assert_int_equal(judge(x, &one), CDB_OUTBOX_DONE);
    assert_true(json_is_true(x->result));
    json_decref(x->result);
    x = apply_of("expire", true);
    assert_int_equal(judge(x, &zero), CDB_OUTBOX_DONE);
    assert_true(json_is_false(x->result));
    json_decref(x->result);
    /* a generation bump: no result wanted */
    x = apply_of("incr", false);
    assert_int_equal(judge(x, &seven), CDB_OUTBOX_DONE);
    assert_null(x->result);
}

static void test_refused_and_down(void **state)
{
    (void)state;
    redisReply wrongtype = reply(REDIS_REPLY_ERROR, 0, "WRONGTYPE Operation against a key holding the wrong kind"),
               notint = reply(REDIS_REPLY_ERROR, 0, "ERR value is not an integer or out of range"),
               loading = reply(REDIS_REPLY_ERROR, 0, "LOADING Redis is loading the dataset in memory"),
               readonly = reply(REDIS_REPLY_ERROR, 0, "READONLY You can't write against a read only replica."),
               status = reply(REDIS_REPLY_STATUS, 0, "OK"), integer = reply(REDIS_REPLY_INTEGER, 1, NULL);
    async_apply *x = apply_of("incr", true);
    assert_int_equal(judge(x, &notint), CDB_OUTBOX_REFUSED);
    assert_string_equal(x->why, "ERR value is not an integer or out of range");
    assert_null(x->result);
    x = apply_of("set", true);
    assert_int_equal(judge(x, &wrongtype), CDB_OUTBOX_REFUSED);
    x = apply_of("set", true);
    assert_int_equal(judge(x, &loading), CDB_OUTBOX_DOWN);
    x = apply_of("del", true);
    assert_int_equal(judge(x, &readonly), CDB_OUTBOX_DOWN);
    x = apply_of("del", true);
    assert_int_equal(judge(x, NULL), CDB_OUTBOX_DOWN);
    assert_string_equal(x->why, "Redis unavailable");
    /* the wrong kind of reply: not applied as far as anyone can tell */
    x = apply_of("incr", true);
    assert_int_equal(judge(x, &status), CDB_OUTBOX_DOWN);
    assert_string_equal(x->why, "Redis incr failed");
    x = apply_of("set", true);
    assert_int_equal(judge(x, &integer), CDB_OUTBOX_DOWN);
    /* the same split as the blocking cache's */
    assert_false(cdb_cache_reply_transient(notint.str));
    assert_true(cdb_cache_reply_transient(loading.str));
    assert_false(cdb_cache_reply_transient(NULL));
}

static void test_invalidation_of(void **state)
{
    (void)state;
    const char *name = NULL;
    assert_int_equal(invalidation_of("incr", "coredb:ns1:gen:projects", &name), 't');
    assert_string_equal(name, "projects");
    assert_int_equal(invalidation_of("set", "coredb:session:abc", &name), 's');
    assert_string_equal(name, "abc");
    /* an application's keys live under "app:" and never look like either */
    assert_int_equal(invalidation_of("incr", "app:user:u:coredb:x:gen:projects", &name), 0);
    assert_int_equal(invalidation_of("set", "app:user:u:coredb:session:abc", &name), 0);
    assert_int_equal(invalidation_of("del", "coredb:ns1:gen:projects", &name), 0);
    assert_int_equal(invalidation_of("incr", "coredb:session:abc", &name), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_done_with_results),
        cmocka_unit_test(test_refused_and_down),
        cmocka_unit_test(test_invalidation_of),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
