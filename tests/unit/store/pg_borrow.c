/*
 * store/pg_borrow.c - a job on a borrowed connection, run by an event loop.
 *
 * Without a server: start refuses what it cannot take (no connection, no
 * statements, too many).
 *
 * With a real PostgreSQL (COREDB_TEST_PG_CONNINFO set: tests/e2e starts one
 * and runs this binary against it in test_loop_lease.py), on a blocking
 * connection opened as the pool opens them: results in order with their
 * parameters, the connection handed back blocking, pipeline off and idle,
 * its prepared statements untouched by unnamed statements; statements
 * prepared in the segment (results in order, the prepares the server
 * accepted counted even when a later statement fails, a refused one not,
 * runnable by name afterwards, blocking too); an error
 * result (ERROR with its sqlstate, the connection clean, the next job
 * fine); the server's statement_timeout (TIMEOUT with 57014, clean); the
 * job's own deadline (TIMEOUT, the connection expired as pg.h's deadline
 * leaves it); pg_terminate_backend mid-job (LOST, broken); abort (ABORTED
 * once, broken); a connection inside a transaction refused untouched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "store/pg_borrow.c"
#include "core/timeutil.h"

typedef struct seen {
    int calls;
    cdb_pgb_outcome outcome;
    int n;
    char values[CDB_PGB_MAX_STMTS][64];
    char sqlstate[6];
    int prepared;
} seen;

static void on_job(cdb_pgb_outcome outcome, PGresult *const *res, int n, const char *sqlstate, int prepared,
                   void *arg)
{
    seen *s = arg;
    s->calls++;
    s->outcome = outcome;
    s->n = n;
    s->prepared = prepared;
    snprintf(s->sqlstate, sizeof s->sqlstate, "%s", sqlstate);
    for (int i = 0; i < n; i++)
        snprintf(s->values[i], sizeof s->values[i], "%s", PQntuples(res[i]) ? PQgetvalue(res[i], 0, 0) : "");
}

/* Runs base until cond holds or ms pass; true when it held. */
#define RUN_UNTIL(base, cond, ms)                                                                  \
    ({                                                                                             \
        int64_t _end = cdb_mono_ms() + (ms);                                                       \
        struct timeval _tick = {0, 5000};                                                          \
        while (!(cond) && cdb_mono_ms() < _end) {                                                  \
            event_base_loopexit((base), &_tick);                                                   \
            event_base_dispatch(base);                                                             \
        }                                                                                          \
        (bool)(cond);                                                                              \
    })

static const char *real_conninfo(void)
{
    const char *c = getenv("COREDB_TEST_PG_CONNINFO");
    return c && *c ? c : NULL;
}

static PGconn *connect_real(int statement_timeout_ms)
{
    cdb_pg_settings pg = {.conninfo = real_conninfo(), .statement_timeout_ms = statement_timeout_ms,
                          .application_name = "coredb-borrow-unit"};
    cdb_error err;
    cdb_error_init(&err);
    PGconn *conn = cdb_pg_connect(&pg, &err);
    cdb_error_destroy(&err);
    assert_non_null(conn);
    return conn;
}

/* What blocking code expects of a connection handed back. */
static void assert_clean(PGconn *conn)
{
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    assert_int_equal(PQisnonblocking(conn), 0);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    PGresult *res = cdb_pg_query(conn, "SELECT current_setting('role')");
    assert_non_null(res);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "none");   /* no SET LOCAL outlived the job */
    PQclear(res);
}

static void test_refuses_what_it_cannot_take(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    seen s = {0};
    const cdb_pgb_stmt st = {"SELECT 1", 0, NULL, NULL, false};
    assert_null(cdb_pgb_start(base, NULL, &st, 1, 1000, on_job, &s));
    PGconn *bad = PQconnectStart("host=127.0.0.1 port=1 dbname=x");
    assert_null(cdb_pgb_start(base, bad, &st, 1, 1000, on_job, &s));
    assert_null(cdb_pgb_start(base, bad, &st, 0, 1000, on_job, &s));
    assert_null(cdb_pgb_start(base, bad, &st, CDB_PGB_MAX_STMTS + 1, 1000, on_job, &s));
    PQfinish(bad);
    assert_int_equal(s.calls, 0);
    event_base_free(base);
}

static void test_real_results_in_order_and_clean(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    PGconn *conn = connect_real(5000);
    /* a prepared statement of the connection's (store/pool.h names): the job never touches it */
    PGresult *prep = cdb_pg_prepare(conn, "cdb_s1", "SELECT 'prepared'::text", 0);
    assert_int_equal(PQresultStatus(prep), PGRES_COMMAND_OK);
    PQclear(prep);
    const char *p1[] = {"coredb_user_x", "a b"}, *p2[] = {"41"};
    const cdb_pgb_stmt stmts[] = {
        {"SELECT set_config('app.t', $2, true), $1::text", 2, p1, NULL, false},
        {"SELECT current_setting('app.t')", 0, NULL, NULL, false},
        {"SELECT ($1::int + 1)::text", 1, p2, NULL, false},
    };
    for (int round = 0; round < 3; round++) {
        seen s = {0};
        cdb_pgb *job = cdb_pgb_start(base, conn, stmts, 3, 3000, on_job, &s);
        assert_non_null(job);
        assert_int_equal(s.calls, 0);                  /* never inside start */
        assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
        assert_int_equal(s.calls, 1);
        assert_int_equal(s.outcome, CDB_PGB_OK);
        assert_int_equal(s.n, 3);
        assert_string_equal(s.values[0], "a b");
        assert_string_equal(s.values[1], "a b");       /* one implicit transaction up to the Sync */
        assert_string_equal(s.values[2], "42");
        assert_string_equal(s.sqlstate, "");
        assert_clean(conn);
        PGresult *res = PQexecPrepared(conn, "cdb_s1", 0, NULL, NULL, NULL, 0);
        assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
        assert_string_equal(PQgetvalue(res, 0, 0), "prepared");
        PQclear(res);
    }
    PQfinish(conn);
    event_base_free(base);
}

static void test_real_prepared_in_the_pipeline(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    PGconn *conn = connect_real(5000);
    const char *p[] = {"7"};
    /* two prepared in the segment, one unnamed: results in statement order */
    const cdb_pgb_stmt first[] = {
        {"SELECT ($1::int * 2)::text", 1, p, "cdb_s0", true},
        {"SELECT 'plain'", 0, NULL, NULL, false},
        {"SELECT ($1::int + 3)::text", 1, p, "cdb_s1", true},
    };
    seen s = {0};
    assert_non_null(cdb_pgb_start(base, conn, first, 3, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_OK);
    assert_int_equal(s.prepared, 2);
    assert_string_equal(s.values[0], "14");
    assert_string_equal(s.values[1], "plain");
    assert_string_equal(s.values[2], "10");
    assert_clean(conn);
    /* run by name afterwards, by this path and by blocking code */
    const cdb_pgb_stmt again[] = {{"SELECT ($1::int + 3)::text", 1, p, "cdb_s1", false}};
    memset(&s, 0, sizeof s);
    assert_non_null(cdb_pgb_start(base, conn, again, 1, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_OK);
    assert_int_equal(s.prepared, 0);
    assert_string_equal(s.values[0], "10");
    PGresult *res = PQexecPrepared(conn, "cdb_s0", 1, p, NULL, NULL, 0);
    assert_string_equal(PQgetvalue(res, 0, 0), "14");
    PQclear(res);
    /* a prepare the server accepts is counted even when a statement after it fails */
    const cdb_pgb_stmt failing[] = {{"SELECT 1/$1::int", 1, (const char *[]){"0"}, "cdb_s2", true}};
    memset(&s, 0, sizeof s);
    assert_non_null(cdb_pgb_start(base, conn, failing, 1, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_ERROR);
    assert_string_equal(s.sqlstate, "22012");
    assert_int_equal(s.prepared, 1);
    assert_clean(conn);
    /* a prepare the server refuses is not: nothing after it runs */
    const cdb_pgb_stmt refused[] = {{"SELECT nosuchcolumn", 0, NULL, "cdb_s3", true},
                                    {"SELECT 'never'", 0, NULL, NULL, false}};
    memset(&s, 0, sizeof s);
    assert_non_null(cdb_pgb_start(base, conn, refused, 2, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_ERROR);
    assert_string_equal(s.sqlstate, "42703");
    assert_int_equal(s.prepared, 0);
    assert_clean(conn);
    PQfinish(conn);
    event_base_free(base);
}

static void test_real_error_and_statement_timeout(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    PGconn *conn = connect_real(500);
    const cdb_pgb_stmt bad[] = {{"SELECT 1", 0, NULL, NULL, false}, {"SELECT 1/0", 0, NULL, NULL, false}, {"SELECT 2", 0, NULL, NULL, false}};
    seen s = {0};
    assert_non_null(cdb_pgb_start(base, conn, bad, 3, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_ERROR);
    assert_string_equal(s.sqlstate, "22012");
    assert_int_equal(s.n, 0);
    assert_clean(conn);
    /* the server's statement_timeout: TIMEOUT with 57014, and the connection clean */
    const cdb_pgb_stmt slow[] = {{"SELECT pg_sleep(3)", 0, NULL, NULL, false}};
    memset(&s, 0, sizeof s);
    int64_t t0 = cdb_mono_ms();
    assert_non_null(cdb_pgb_start(base, conn, slow, 1, 2500, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 4000));
    assert_int_equal(s.outcome, CDB_PGB_TIMEOUT);
    assert_string_equal(s.sqlstate, "57014");
    assert_true(cdb_mono_ms() - t0 < 2000);
    assert_clean(conn);
    assert_false(cdb_pg_timed_out(conn));
    /* and the next job runs */
    const cdb_pgb_stmt one[] = {{"SELECT 'next'", 0, NULL, NULL, false}};
    memset(&s, 0, sizeof s);
    assert_non_null(cdb_pgb_start(base, conn, one, 1, 3000, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.outcome, CDB_PGB_OK);
    assert_string_equal(s.values[0], "next");
    PQfinish(conn);
    event_base_free(base);
}

static void test_real_deadline_expires_the_connection(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    PGconn *conn = connect_real(10000);
    const cdb_pgb_stmt slow[] = {{"SELECT pg_sleep(3)", 0, NULL, NULL, false}};
    seen s = {0};
    int64_t t0 = cdb_mono_ms();
    assert_non_null(cdb_pgb_start(base, conn, slow, 1, 300, on_job, &s));
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    int64_t took = cdb_mono_ms() - t0;
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.outcome, CDB_PGB_TIMEOUT);
    assert_string_equal(s.sqlstate, "");
    assert_true(took >= 250 && took < 1500);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);     /* as a blocking deadline leaves it */
    assert_true(cdb_pg_timed_out(conn));
    /* nothing fires on the freed job later */
    RUN_UNTIL(base, false, 300);
    assert_int_equal(s.calls, 1);
    PQfinish(conn);
    event_base_free(base);
}

static void test_real_terminated_and_abort(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    PGconn *conn = connect_real(10000), *killer = connect_real(10000);
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(conn));
    const cdb_pgb_stmt slow[] = {{"SELECT pg_sleep(3)", 0, NULL, NULL, false}};
    seen s = {0};
    assert_non_null(cdb_pgb_start(base, conn, slow, 1, 5000, on_job, &s));
    RUN_UNTIL(base, false, 200);
    const char *params[] = {pid};
    PGresult *res = cdb_pg_query_params(killer, "SELECT pg_terminate_backend($1::int)", 1, params);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    assert_true(RUN_UNTIL(base, s.calls > 0, 3000));
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.outcome, CDB_PGB_LOST);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    assert_false(cdb_pg_timed_out(conn));
    PQfinish(conn);

    /* abort: the callback runs once, before abort returns; the connection is broken */
    conn = connect_real(10000);
    memset(&s, 0, sizeof s);
    cdb_pgb *job = cdb_pgb_start(base, conn, slow, 1, 5000, on_job, &s);
    assert_non_null(job);
    RUN_UNTIL(base, false, 100);
    cdb_pgb_abort(job);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.outcome, CDB_PGB_ABORTED);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    RUN_UNTIL(base, false, 200);
    assert_int_equal(s.calls, 1);
    PQfinish(conn);

    /* a connection inside a transaction is refused and left as it was */
    conn = connect_real(10000);
    PQclear(cdb_pg_query(conn, "BEGIN"));
    memset(&s, 0, sizeof s);
    assert_null(cdb_pgb_start(base, conn, slow, 1, 5000, on_job, &s));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_INTRANS);
    assert_int_equal(PQisnonblocking(conn), 0);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
    PQfinish(conn);
    PQfinish(killer);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refuses_what_it_cannot_take),
        cmocka_unit_test(test_real_results_in_order_and_clean),
        cmocka_unit_test(test_real_prepared_in_the_pipeline),
        cmocka_unit_test(test_real_error_and_statement_timeout),
        cmocka_unit_test(test_real_deadline_expires_the_connection),
        cmocka_unit_test(test_real_terminated_and_abort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
