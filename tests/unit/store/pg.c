/*
 * store/pg.c - the client-side deadlines of pg.c (pg.h) against peers that
 * behave as a stopped PostgreSQL does at the TCP level: a listening socket
 * nobody accepts from (the kernel completes the handshake from the backlog
 * and acknowledges the startup packet; no answer ever comes), and a peer
 * that completes the startup exchange and then never answers a query. The
 * end-to-end suite stops a real server (tests/e2e/test_deadlines.py); these
 * pin the timing of each deadline and that an expired connection is closed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/pg.h"
#include "core/timeutil.h"

/* A listening socket on 127.0.0.1; *port gets its port. */
static int listen_loopback(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void conninfo_for(int port, char *buf, size_t len)
{
    snprintf(buf, len, "host=127.0.0.1 port=%d dbname=t user=t sslmode=disable gssencmode=disable", port);
}

static const char *reason_of(const cdb_error *err)
{
    return json_string_value(json_object_get(err->details, "reason"));
}

static void test_connect_to_silent_server_ends_at_deadline(void **state)
{
    (void)state;
    char conninfo[160];
    int port, fd = listen_loopback(&port);
    conninfo_for(port, conninfo, sizeof conninfo);
    cdb_pg_settings s = {.conninfo = conninfo, .connect_timeout_s = 5};
    cdb_error err;
    cdb_error_init(&err);

    int64_t t0 = cdb_mono_ms();
    PGconn *conn = cdb_pg_connect_until(&s, t0 + 300, &err);
    int64_t took = cdb_mono_ms() - t0;
    assert_null(conn);
    assert_int_equal(err.code, CDB_ERR_DATABASE_UNAVAILABLE);
    assert_string_equal(reason_of(&err), "timeout");
    assert_in_range(took, 280, 1500);
    cdb_error_destroy(&err);
    close(fd);
}

static void test_connect_timeout_covers_the_startup(void **state)
{
    (void)state;
    char conninfo[160];
    int port, fd = listen_loopback(&port);
    conninfo_for(port, conninfo, sizeof conninfo);
    cdb_pg_settings s = {.conninfo = conninfo, .connect_timeout_s = 1};
    cdb_error err;
    cdb_error_init(&err);

    int64_t t0 = cdb_mono_ms();
    PGconn *conn = cdb_pg_connect(&s, &err);
    int64_t took = cdb_mono_ms() - t0;
    assert_null(conn);
    assert_string_equal(reason_of(&err), "timeout");
    assert_in_range(took, 980, 2500); /* libpq's own connect_timeout could take up to 2 s */
    cdb_error_destroy(&err);
    close(fd);
}

/* ---- a peer that lets the client in, then never answers ---- */

typedef struct mute_server {
    int listen_fd;
    int port;
    pthread_t thread;
    int64_t eof_ms;                /* when the client's close was seen; 0: never */
} mute_server;

static bool read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static void *mute_main(void *arg)
{
    mute_server *m = arg;
    int fd = accept(m->listen_fd, NULL, NULL);
    uint32_t len;
    char buf[4096];
    /* startup packet: int32 length (itself included), then the rest */
    if (fd < 0 || !read_full(fd, &len, 4) || ntohl(len) < 8 || ntohl(len) - 4 > sizeof buf ||
        !read_full(fd, buf, ntohl(len) - 4))
        goto out_close;
    static const char hello[] = {'R', 0, 0, 0, 8, 0, 0, 0, 0,  /* AuthenticationOk */
                                 'Z', 0, 0, 0, 5, 'I'};         /* ReadyForQuery, idle */
    if (write(fd, hello, sizeof hello) != (ssize_t)sizeof hello)
        goto out_close;
    while (read(fd, buf, sizeof buf) > 0)
        ; /* take the query, never answer */
    m->eof_ms = cdb_mono_ms();
out_close:
    if (fd >= 0)
        close(fd);
    return NULL;
}

static PGconn *connect_mute(mute_server *m, int statement_timeout_ms)
{
    char conninfo[160];
    m->listen_fd = listen_loopback(&m->port);
    m->eof_ms = 0;
    assert_int_equal(pthread_create(&m->thread, NULL, mute_main, m), 0);
    conninfo_for(m->port, conninfo, sizeof conninfo);
    cdb_pg_settings s = {.conninfo = conninfo, .statement_timeout_ms = statement_timeout_ms};
    cdb_error err;
    cdb_error_init(&err);
    PGconn *conn = cdb_pg_connect(&s, &err);
    assert_non_null(conn);
    cdb_error_destroy(&err);
    assert_true(cdb_pg_conn_ok(conn));
    return conn;
}

static void finish_mute(mute_server *m, PGconn *conn)
{
    PQfinish(conn);
    pthread_join(m->thread, NULL);
    close(m->listen_fd);
}

static void test_round_trip_ends_at_statement_timeout_plus_margin(void **state)
{
    (void)state;
    mute_server m;
    PGconn *conn = connect_mute(&m, 200);
    cdb_error err;
    cdb_error_init(&err);

    int64_t t0 = cdb_mono_ms();
    int rc = cdb_pg_exec(conn, "SELECT 1", 0, NULL, NULL, &err);
    int64_t took = cdb_mono_ms() - t0;
    assert_int_equal(rc, CDB_ERR_DATABASE_TIMEOUT);
    assert_int_equal(err.code, CDB_ERR_DATABASE_TIMEOUT);
    assert_string_equal(json_string_value(json_object_get(err.details, "database")), "postgresql");
    assert_in_range(took, 200 + CDB_PG_DEADLINE_MARGIN_MS - 20, 200 + CDB_PG_DEADLINE_MARGIN_MS + 1000);
    /* closed for good: the pool sees it broken, later calls fail at once */
    assert_true(cdb_pg_timed_out(conn));
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    assert_false(cdb_pg_conn_ok(conn));
    t0 = cdb_mono_ms();
    assert_null(cdb_pg_query(conn, "SELECT 1"));
    assert_true(cdb_mono_ms() - t0 < 100);
    /* and the server saw the socket close without waiting for PQfinish */
    for (int i = 0; i < 100 && !m.eof_ms; i++)
        usleep(10000);
    assert_true(m.eof_ms > 0);
    cdb_error_destroy(&err);
    finish_mute(&m, conn);
}

static void test_pipeline_result_wait_has_the_deadline(void **state)
{
    (void)state;
    mute_server m;
    PGconn *conn = connect_mute(&m, 100);
    cdb_error err;
    cdb_error_init(&err);
    PGresult *res = (PGresult *)1;

    assert_true(PQenterPipelineMode(conn));
    assert_true(PQsendQueryParams(conn, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0));
    assert_true(PQpipelineSync(conn));
    int64_t t0 = cdb_mono_ms();
    assert_int_equal(cdb_pg_get_result(conn, &res, &err), CDB_ERR_DATABASE_TIMEOUT);
    int64_t took = cdb_mono_ms() - t0;
    assert_null(res);
    assert_in_range(took, 100 + CDB_PG_DEADLINE_MARGIN_MS - 20, 100 + CDB_PG_DEADLINE_MARGIN_MS + 1000);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    cdb_error_destroy(&err);
    finish_mute(&m, conn);
}

static void test_caller_cap_shortens_the_deadline(void **state)
{
    (void)state;
    mute_server m;
    PGconn *conn = connect_mute(&m, 30000);
    cdb_error err;
    cdb_error_init(&err);

    int64_t t0 = cdb_mono_ms();
    cdb_pg_set_deadline(conn, t0 + 300);
    PGresult *res = cdb_pg_query_params(conn, "SELECT 1", 0, NULL);
    int64_t took = cdb_mono_ms() - t0;
    assert_null(res);
    assert_true(cdb_pg_timed_out(conn));
    assert_in_range(took, 280, 1500);
    /* a NULL result of an expired deadline maps to DATABASE_TIMEOUT, not "unavailable" */
    assert_int_equal(cdb_pg_error_from_result(conn, NULL, &err), CDB_ERR_DATABASE_TIMEOUT);
    cdb_error_destroy(&err);
    finish_mute(&m, conn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_to_silent_server_ends_at_deadline),
        cmocka_unit_test(test_connect_timeout_covers_the_startup),
        cmocka_unit_test(test_round_trip_ends_at_statement_timeout_plus_margin),
        cmocka_unit_test(test_pipeline_result_wait_has_the_deadline),
        cmocka_unit_test(test_caller_cap_shortens_the_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
