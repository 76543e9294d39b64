/*
 * store/redis_sentinel.c - the sentinel list parser and the reading of a
 * sentinel's answer: every shape a hostile or broken sentinel may send
 * (nil, error, wrong types, bad host characters, a bad port) is a reason,
 * never an address; and asking sentinels that do not listen fails with the
 * last one's reason, without a password in it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/redis_sentinel.c"

static cdb__sentinel_set *must_parse(const char *list)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb__sentinel_set *s = cdb__sentinel_set_new(list, "mymaster", "secretpw", &err);
    assert_non_null(s);
    cdb_error_destroy(&err);
    return s;
}

static void test_parse(void **state)
{
    (void)state;
    cdb__sentinel_set *s = must_parse("10.0.0.1:26379,[::1]:26380,sentinel-b.internal:1");
    assert_int_equal(s->n, 3);
    assert_string_equal(s->s[0].host, "10.0.0.1");
    assert_int_equal(s->s[0].port, 26379);
    assert_string_equal(s->s[1].host, "::1");
    assert_int_equal(s->s[1].port, 26380);
    assert_string_equal(s->s[2].host, "sentinel-b.internal");
    assert_string_equal(cdb__sentinel_list(s), "10.0.0.1:26379,[::1]:26380,sentinel-b.internal:1");
    assert_string_equal(cdb__sentinel_master_name(s), "mymaster");
    cdb__sentinel_set_free(s);

    static const char *bad[] = {"", "h", "h:", ":1", "h:0", "h:65536", "h:1x", "[::1]", "[::1:1",
                                "h:1,", ",h:1", "h h:1", "h;x:1",
                                "a:1,a:2,a:3,a:4,a:5,a:6,a:7,a:8,a:9,a:10,a:11,a:12,a:13,a:14,a:15,a:16,a:17"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cdb_error err;
        cdb_error_init(&err);
        assert_null(cdb__sentinel_set_new(bad[i], "m", NULL, &err));
        assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
        assert_non_null(strstr(err.message, "REDIS_SENTINELS"));
        cdb_error_destroy(&err);
    }
}

/* Builds a reply tree by hand, as hiredis would hand it over. */
static redisReply *str_reply(int type, const char *s)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = type;
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *array_reply(size_t n, redisReply **elems)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    for (size_t i = 0; i < n; i++)
        r->element[i] = elems[i];
    return r;
}

static int read_of(const cdb__sentinel_set *s, redisReply *rep, char *host, int *port, char *why)
{
    int rc = read_address(s, rep, host, port, why, 160);
    freeReplyObject(rep);
    return rc;
}

static void test_read_address(void **state)
{
    (void)state;
    cdb__sentinel_set *s = must_parse("h:1");
    char host[CDB_SENTINEL_HOST_MAX], why[160];
    int port = 0;

    redisReply *ok[] = {str_reply(REDIS_REPLY_STRING, "10.1.2.3"), str_reply(REDIS_REPLY_STRING, "6380")};
    assert_int_equal(read_of(s, array_reply(2, ok), host, &port, why), 0);
    assert_string_equal(host, "10.1.2.3");
    assert_int_equal(port, 6380);

    redisReply *nil = calloc(1, sizeof *nil);
    nil->type = REDIS_REPLY_NIL;
    assert_int_equal(read_of(s, nil, host, &port, why), -1);
    assert_string_equal(why, "does not know master \"mymaster\"");

    assert_int_equal(read_of(s, str_reply(REDIS_REPLY_ERROR, "ERR unknown command\r\n\x01"), host, &port, why), -1);
    assert_string_equal(why, "refused: ERR unknown command???");

    redisReply *evil[] = {str_reply(REDIS_REPLY_STRING, "evil host"), str_reply(REDIS_REPLY_STRING, "1")};
    assert_int_equal(read_of(s, array_reply(2, evil), host, &port, why), -1);
    assert_string_equal(why, "answered something that is not a host and port");
    redisReply *port0[] = {str_reply(REDIS_REPLY_STRING, "h"), str_reply(REDIS_REPLY_STRING, "0")};
    assert_int_equal(read_of(s, array_reply(2, port0), host, &port, why), -1);
    redisReply *big[] = {str_reply(REDIS_REPLY_STRING, "h"), str_reply(REDIS_REPLY_STRING, "99999")};
    assert_int_equal(read_of(s, array_reply(2, big), host, &port, why), -1);
    redisReply *one[] = {str_reply(REDIS_REPLY_STRING, "h")};
    assert_int_equal(read_of(s, array_reply(1, one), host, &port, why), -1);
    redisReply *typed[] = {str_reply(REDIS_REPLY_STATUS, "h"), str_reply(REDIS_REPLY_STRING, "1")};
    assert_int_equal(read_of(s, array_reply(2, typed), host, &port, why), -1);
    assert_int_equal(read_of(s, str_reply(REDIS_REPLY_STRING, "h:1"), host, &port, why), -1);
    cdb__sentinel_set_free(s);
}

/* A port nothing listens on: bound, then closed. */
static int dead_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_no_sentinel_answers(void **state)
{
    (void)state;
    char list[64], host[CDB_SENTINEL_HOST_MAX], why[240], last[16];
    int p1 = dead_port(), p2 = dead_port(), port = 0;
    snprintf(list, sizeof list, "127.0.0.1:%d,127.0.0.1:%d", p1, p2);
    snprintf(last, sizeof last, ":%d:", p2);
    cdb__sentinel_set *s = must_parse(list);
    assert_int_equal(cdb__sentinel_master(s, 200, host, &port, why, sizeof why), -1);
    assert_non_null(strstr(why, "2 sentinel(s) gave no master for \"mymaster\""));
    assert_non_null(strstr(why, last));
    assert_null(strstr(why, "secretpw"));
    cdb__sentinel_set_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_read_address),
        cmocka_unit_test(test_no_sentinel_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
