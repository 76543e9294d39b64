/*
 * test_http_conn.c - the request-head rules of src/http/conn.c without a
 * socket: the file is included (as h2o's t/00unit does) to reach its static
 * framing checks, and each case feeds one raw head through picohttpparser,
 * copy_head and check_framing. The end-to-end side (answers, closing,
 * deadlines) is tests/e2e/test_http_hostile.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http/conn.c"

/* The refusal of check_framing for raw (a complete head), "unparsed" or "folded"; c keeps the head. */
static const char *frame(cdb_conn *c, const char *raw)
{
    const char *m = NULL, *p = NULL;
    size_t ml = 0, pl = 0, nf = CDB_HTTP_MAX_FIELDS;
    int minor = 0;
    struct phr_header f[CDB_HTTP_MAX_FIELDS];
    head_clear(&c->head);
    c->chunked = false;
    c->content_length = 0;
    int n = phr_parse_request(raw, strlen(raw), &m, &ml, &p, &pl, &minor, f, &nf, 0);
    if (n < 0)
        return "unparsed";
    for (size_t i = 0; i < nf; i++)
        if (!f[i].name)
            return "folded";
    assert_true(copy_head(c, raw, (size_t)n, m, ml, p, pl, minor, f, nf));
    return check_framing(c);
}

static void test_content_length_must_be_canonical(void **state)
{
    size_t v = 0;
    assert_true(parse_content_length("0", &v) && v == 0);
    assert_true(parse_content_length("44", &v) && v == 44);
    assert_true(parse_content_length("999999999999999999", &v) && v == 999999999999999999ull);
    const char *bad[] = {"", "+44", "0044", "00", "-1", "0x7", "1 7", "7,7", "4e2", "1000000000000000000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(parse_content_length(bad[i], &v));
}

static void test_framing_accepts_plain_requests(void **state)
{
    cdb_conn c = {0};
    assert_null(frame(&c, "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Trim:  v  \r\n\r\n"));
    assert_string_equal(c.head.method, "GET");
    assert_int_equal(c.head.method_bit, EVHTTP_REQ_GET);
    assert_string_equal(c.head.target, "/a?b=1");
    assert_string_equal(head_field(&c.head, "x-trim"), "v");
    assert_false(c.chunked);

    assert_null(frame(&c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"));
    assert_int_equal(c.content_length, 12);
    assert_null(frame(&c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"));
    assert_true(c.chunked);
    assert_null(frame(&c, "GET / HTTP/1.0\r\n\r\n")); /* HTTP/1.0 needs no Host */
    assert_null(frame(&c, "FOO / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_int_equal(c.head.method_bit, 0); /* served by nobody: the router answers 405/501 */
    assert_null(frame(&c, "get / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_int_equal(c.head.method_bit, 0); /* methods are case-sensitive */
    head_clear(&c.head);
    cdb_arena_free(c.arena);           /* the head bytes lived in it */
}

static void test_framing_refuses_smuggling_shapes(void **state)
{
    static const char *const refused[] = {
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    cdb_conn c = {0};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        const char *why = frame(&c, refused[i]);
        if (!why)
            fail_msg("accepted: %s", refused[i]);
    }
    assert_string_equal(frame(&c, "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"), "folded");
    assert_string_equal(frame(&c, "GET / HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n"), "unparsed");
    head_clear(&c.head);
    cdb_arena_free(c.arena);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length_must_be_canonical),
        cmocka_unit_test(test_framing_accepts_plain_requests),
        cmocka_unit_test(test_framing_refuses_smuggling_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
