/*
 * http/request.c - an answer's body on its way to the socket: render()
 * sends a body given by reference (a cache hit's bytes) and a large
 * serialized text without copying them, calls each release exactly once
 * (when libevent drops the bytes, or when the request is freed without
 * sending them: HEAD, an error set after, a 204), and copies small bodies.
 * The request lives in its arena. ASan (make san) checks every release.
 * Request ids: "req_" and 24 hex digits, distinct across many draws and
 * between threads (each draws its own key), a valid X-Request-ID echoed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <cmocka.h>

#include "http/request.c"

static int releases;
static const void *released_data;

static void count_release(const void *data, size_t len, void *arg)
{
    (void)len, (void)arg;
    releases++;
    released_data = data;
}

static cdb_loop test_loop;

/* render() into a buffer of the test's (a connection's output in the server) */
static struct evbuffer *render_new(cdb_request *r)
{
    struct evbuffer *out = evbuffer_new();
    assert_non_null(out);
    assert_true(render(r, false, out));
    return out;
}

static cdb_request *request(unsigned method)
{
    cdb_arena *a = cdb_arena_new(test_loop.arenas);
    assert_non_null(a);
    cdb_request *r = cdb_arena_calloc(a, sizeof *r);
    r->arena = a;
    r->loop = &test_loop;
    r->method = method;
    r->head.minor_version = 1;
    r->media_type = MEDIA_JSON;
    strcpy(r->request_id, "req_test");
    cdb_error_init(&r->err);
    releases = 0;
    released_data = NULL;
    return r;
}

/* The rendered answer's body (after the blank line), malloc'd, and its length. */
static char *body_of(struct evbuffer *out, size_t *len)
{
    size_t n = evbuffer_get_length(out);
    char *all = malloc(n + 1);
    evbuffer_copyout(out, all, n);
    all[n] = '\0';
    char *sep = strstr(all, "\r\n\r\n");
    assert_non_null(sep);
    *len = n - (size_t)(sep + 4 - all);
    char *body = malloc(*len + 1);
    memcpy(body, sep + 4, *len);
    body[*len] = '\0';
    assert_non_null(strstr(all, "Content-Length: "));
    char want[64];
    snprintf(want, sizeof want, "Content-Length: %zu\r\n", *len);
    assert_non_null(strstr(all, want));
    free(all);
    return body;
}

static void test_body_by_reference_released_once_written(void **state)
{
    size_t n = 9000, len;
    char *data = malloc(n);
    memset(data, 'r', n);
    cdb_request *r = request(EVHTTP_REQ_POST);
    cdb_request_reply_ref(r, 200, "{", data, n, count_release, NULL, ",\"cached\":true}");
    struct evbuffer *out = render_new(r);
    assert_non_null(out);
    cdb_request_free(r);
    assert_int_equal(releases, 0);             /* libevent holds the bytes now, not a copy */
    char *body = body_of(out, &len);
    assert_int_equal(len, 1 + n + 15);
    assert_int_equal(body[0], '{');
    assert_memory_equal(body + 1 + n, ",\"cached\":true}", 15);
    /* the evbuffer's chain points at data itself: change it, the answer changes */
    struct evbuffer_ptr p;
    evbuffer_ptr_set(out, &p, evbuffer_get_length(out) - 15 - n, EVBUFFER_PTR_SET);
    struct evbuffer_iovec v;
    assert_int_equal(evbuffer_peek(out, 1, &p, &v, 1), 1);
    assert_ptr_equal(v.iov_base, data);
    evbuffer_free(out);                        /* as when the bytes are written */
    assert_int_equal(releases, 1);
    assert_ptr_equal(released_data, data);
    free(body);
    free(data);
}

static void test_unsent_reference_released_with_the_request(void **state)
{
    size_t n = 5000;
    char *data = calloc(1, n);
    /* HEAD: the length is said, no body sent */
    cdb_request *r = request(EVHTTP_REQ_HEAD);
    cdb_request_reply_ref(r, 200, "{", data, n, count_release, NULL, "}");
    struct evbuffer *out = render_new(r);
    char want[64];
    snprintf(want, sizeof want, "Content-Length: %zu\r\n\r\n", n + 2);
    size_t total = evbuffer_get_length(out);
    char *all = calloc(1, total + 1);
    evbuffer_copyout(out, all, total);
    assert_non_null(strstr(all, want));
    assert_int_equal(total, (size_t)(strstr(all, "\r\n\r\n") + 4 - all));
    free(all);
    evbuffer_free(out);
    assert_int_equal(releases, 0);
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    /* an error after the reference: the envelope is sent, the bytes given back */
    r = request(EVHTTP_REQ_POST);
    cdb_request_reply_ref(r, 200, "{", data, n, count_release, NULL, "}");
    cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
    out = render_new(r);
    assert_int_equal(releases, 0);
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    evbuffer_free(out);
    /* another answer replaces it: given back at once */
    r = request(EVHTTP_REQ_POST);
    cdb_request_reply_ref(r, 200, "{", data, n, count_release, NULL, "}");
    cdb_request_reply_text(r, 200, strdup("{}"));
    assert_int_equal(releases, 1);
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    /* a client gone (never rendered) */
    r = request(EVHTTP_REQ_POST);
    cdb_request_reply_ref(r, 200, "{", data, n, count_release, NULL, "}");
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    free(data);
}

static void test_small_bodies_copied_large_texts_referenced(void **state)
{
    size_t len;
    char small[] = "\"small\"";
    cdb_request *r = request(EVHTTP_REQ_GET);
    cdb_request_reply_ref(r, 200, "[", small, strlen(small), count_release, NULL, "]");
    struct evbuffer *out = render_new(r);
    assert_int_equal(releases, 1);             /* copied: released at once */
    char *body = body_of(out, &len);
    assert_string_equal(body, "[\"small\"]");
    free(body);
    evbuffer_free(out);
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    /* a large serialized text goes by reference, freed by libevent (ASan: once) */
    size_t n = 50000;
    char *text = malloc(n + 1);
    memset(text, 'x', n);
    text[0] = '"', text[n - 1] = '"', text[n] = '\0';
    r = request(EVHTTP_REQ_GET);
    cdb_request_reply_text(r, 200, text);
    out = render_new(r);
    cdb_request_free(r);
    body = body_of(out, &len);
    assert_int_equal(len, n);
    struct evbuffer_ptr p;
    evbuffer_ptr_set(out, &p, evbuffer_get_length(out) - n, EVBUFFER_PTR_SET);
    struct evbuffer_iovec v;
    evbuffer_peek(out, 1, &p, &v, 1);
    assert_ptr_equal(v.iov_base, text);        /* not copied */
    free(body);
    evbuffer_free(out);
    /* 204: no body, the reference given back */
    r = request(EVHTTP_REQ_DELETE);
    char *data = calloc(1, 4000);
    cdb_request_reply_ref(r, 204, "", data, 4000, count_release, NULL, "");
    out = render_new(r);
    assert_int_equal(releases, 0);
    cdb_request_free(r);
    assert_int_equal(releases, 1);
    evbuffer_free(out);
    free(data);
}

static int setup(void **state)
{
    test_loop.arenas = cdb_arena_pool_new(4);
    return test_loop.arenas ? 0 : -1;
}

static int teardown(void **state)
{
    cdb_arena_pool_free(test_loop.arenas);
    return 0;
}

static int compare_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void *draw_ids(void *arg)
{
    char (*ids)[CDB_REQUEST_ID_MAX + 1] = arg;
    for (int i = 0; i < 2000; i++) {
        cdb_request *r = request(EVHTTP_REQ_GET);
        assign_request_id(r);
        strcpy(ids[i], r->request_id);
        cdb_request_free(r);
    }
    return NULL;
}

static void test_request_ids(void **state)
{
    (void)state;
    static char ids[4000][CDB_REQUEST_ID_MAX + 1];
    pthread_t other;
    draw_ids(ids);
    assert_int_equal(pthread_create(&other, NULL, draw_ids, ids[2000]), 0);
    pthread_join(other, NULL);
    for (int i = 0; i < 4000; i++) {
        assert_int_equal(strlen(ids[i]), 4 + 24);
        assert_memory_equal(ids[i], "req_", 4);
        assert_int_equal(strspn(ids[i] + 4, "0123456789abcdef"), 24);
    }
    qsort(ids, 4000, sizeof ids[0], compare_ids);
    for (int i = 1; i < 4000; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_by_reference_released_once_written),
        cmocka_unit_test(test_unsent_reference_released_with_the_request),
        cmocka_unit_test(test_small_bodies_copied_large_texts_referenced),
        cmocka_unit_test(test_request_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
