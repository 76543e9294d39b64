/*
 * store/pg_async.c - an event loop's own PostgreSQL connections.
 *
 * Without a server: the state table (the moves a connection may make), a
 * refused server (never ready, submit refused, a failure counted, backoff
 * growing), a silent server that accepts TCP but never answers (the
 * connect ends at connect_timeout_s), free with nothing connected.
 *
 * With a real PostgreSQL (COREDB_TEST_PG_CONNINFO set: tests/e2e starts
 * one and runs this binary against it in test_loop_query.py): results in
 * order, a statement prepared once per connection, an error result failing
 * only its job (the next job on the same connection succeeds), a job's
 * deadline (pg_sleep) answered DEADLINE once at its deadline while the job
 * behind it keeps its own (and succeeds on the same connection; the server
 * reported answering again once, when the late results came), a statement
 * the server's statement_timeout cancelled (TIMEOUT), a server
 * silent a whole deadline past the oldest job's (every job DEADLINE, then a
 * reconnect), pg_terminate_backend of the connections with jobs in
 * flight (the parked fail with them), free with jobs waiting (each fails
 * exactly once), and parking: jobs beyond the slots in flight wait in
 * order and are sent as slots free, wait longer than PARK_WAIT_MS while
 * jobs keep ending, fail after PARK_WAIT_MS when the slots stay held, and
 * beyond park_max are refused.
 * Exact jobs (transactions, cdb_apg_submit_exact): committed (OK), refused
 * by the server before COMMIT (REFUSED, nothing committed, the connection
 * rolled back and usable at once), a server FATAL (pg_terminate_backend)
 * before COMMIT (REFUSED), the deadline (DEADLINE), the connection claimed
 * while one runs (no job sent behind it), 128 unnamed statements of
 * distinct texts without growing the prepared set, and 129 refused; parked
 * behind misses and sent in their turn, refused when every connection is
 * held, UNSENT (nothing ran) when parked too long.
 * Claims (cdb_apg_claim_*): a row locked by the opening job stays locked
 * after it (another session's NOWAIT fails) and nothing else is sent on the
 * connection; a kept job, then one that COMMITs and ends the claim (the
 * handle stale after); a released claim rolls back; an error in a kept
 * job ends the claim by itself; a refused transaction is answered only
 * once its ROLLBACK ended (its row lock free at the answer); a connection
 * lost while claimed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/pg_async.c"

typedef struct seen {
    int calls, ok, failed, timeout, deadline, refused, unsent;
    char first[64];                /* first value of the last statement of the last OK job */
    int nres;
} seen;

static void on_job(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    seen *s = arg;
    s->calls++;
    if (outcome == CDB_APG_OK) {
        s->ok++;
        s->nres = n;
        snprintf(s->first, sizeof s->first, "%s", PQntuples(res[n - 1]) ? PQgetvalue(res[n - 1], 0, 0) : "");
    } else if (outcome == CDB_APG_TIMEOUT) {
        s->timeout++;
    } else if (outcome == CDB_APG_DEADLINE) {
        s->deadline++;
    } else if (outcome == CDB_APG_REFUSED) {
        s->refused++;
    } else if (outcome == CDB_APG_UNSENT) {
        s->unsent++;
    } else {
        s->failed++;
    }
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

static void count_answers(void *arg)
{
    ++*(int *)arg;
}

static bool all_ready(cdb_apg *apg)
{
    for (int i = 0; i < apg->nconns; i++)
        if (apg->conns[i].state != ST_READY)
            return false;
    return true;
}

static void test_state_table(void **state)
{
    (void)state;
    assert_true(ALLOWED[ST_DOWN][ST_CONNECTING]);
    assert_true(ALLOWED[ST_CONNECTING][ST_READY]);
    assert_true(ALLOWED[ST_CONNECTING][ST_DOWN]);
    assert_true(ALLOWED[ST_READY][ST_DOWN]);
    assert_false(ALLOWED[ST_DOWN][ST_READY]);      /* never ready without a connect */
    assert_false(ALLOWED[ST_READY][ST_CONNECTING]);
    assert_false(ALLOWED[ST_DOWN][ST_DOWN]);
    for (int s = 0; s < ST__COUNT; s++)
        assert_false(ALLOWED[ST_CLOSED][s]);      /* closed is the end */
}

static void test_refused(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = "host=127.0.0.1 port=1 dbname=x", .connect_timeout_s = 1};
    cdb_apg_counts before, after;
    cdb_apg_counts_get(&before);
    cdb_apg *apg = cdb_apg_new(base, &pg, 2, 8);
    assert_non_null(apg);
    seen s = {0};
    const char *const none[1] = {NULL};
    cdb_apg_stmt st = {.sql = "SELECT 1", .nparams = 0, .params = none};
    assert_true(RUN_UNTIL(base, apg->conns[0].backoff_ms >= 200 && apg->conns[1].backoff_ms >= 200, 3000));
    assert_false(cdb_apg_submit(apg, &st, 1, 0, on_job, &s));
    cdb_apg_counts_get(&after);
    assert_true(after.failures >= before.failures + 4);  /* two connections, two attempts each */
    assert_int_equal(s.calls, 0);
    cdb_apg_free(apg);
    event_base_free(base);
}

static void test_silent_server(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d dbname=x sslmode=disable", ntohs(sa.sin_port));
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = conninfo, .connect_timeout_s = 1};
    int64_t t0 = cdb_mono_ms();
    cdb_apg *apg = cdb_apg_new(base, &pg, 1, 8);
    assert_int_equal(apg->conns[0].state, ST_CONNECTING);
    assert_true(RUN_UNTIL(base, apg->conns[0].state == ST_DOWN, 3000));
    int64_t took = cdb_mono_ms() - t0;
    assert_true(took >= 900 && took < 2500);
    cdb_apg_free(apg);
    event_base_free(base);
    close(fd);
}

/* ---- against a real server ----------------------------------------------- */

static const char *real_conninfo(void)
{
    const char *c = getenv("COREDB_TEST_PG_CONNINFO");
    return c && *c ? c : NULL;
}

static void test_real_pipeline(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = real_conninfo(), .statement_timeout_ms = 2000};
    cdb_apg *apg = cdb_apg_new(base, &pg, 2, 8);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    const char *p1[] = {"41"}, *p2[] = {"x"};
    cdb_apg_stmt ok[] = {{"SELECT set_config('app.t', 'v', true)", 0, NULL, false},
                         {"SELECT $1::int + 1", 1, p1, false},
                         {"SELECT current_setting('app.t')", 0, NULL, false}};
    cdb_apg_stmt bad[] = {{"SELECT $1::int + 1", 1, p2, false}};
    seen a = {0}, b = {0}, c = {0};
    assert_true(cdb_apg_submit(apg, ok, 3, 0, on_job, &a));
    assert_true(cdb_apg_submit(apg, bad, 1, 0, on_job, &b));   /* 'x' is no int: an error result */
    assert_true(RUN_UNTIL(base, a.calls && b.calls, 5000));
    assert_int_equal(a.ok, 1);
    assert_int_equal(a.nres, 3);
    assert_string_equal(a.first, "v");      /* one implicit transaction up to the Sync */
    assert_int_equal(b.failed, 1);
    /* the same shape again, on whichever connection: prepared once per connection */
    for (int i = 0; i < 16; i++)
        assert_true(cdb_apg_submit(apg, ok, 3, 0, on_job, &c));
    assert_true(RUN_UNTIL(base, c.calls == 16, 5000));
    assert_int_equal(c.ok, 16);
    int nprepared = 0;
    for (int k = 0; k < apg->nconns; k++)
        for (int i = 0; i < MAX_PREPARED; i++)
            nprepared += apg->conns[k].stmts[i].sql != NULL;
    assert_true(nprepared >= 3 && nprepared <= 2 * 3);
    /* full connections park, a full FIFO refuses: 2 connections x 8 in flight + 4 parked */
    seen d = {0};
    cdb_apg_stmt slow[] = {{"SELECT pg_sleep(0.3)::text", 0, NULL, false}};
    int taken = 0;
    apg->park_max = 4;
    while (taken < 40 && cdb_apg_submit(apg, slow, 1, 0, on_job, &d))
        taken++;
    assert_int_equal(taken, 20);
    assert_int_equal(apg->nparked, 4);
    /* no slot frees before 0.3 s: the parked wait out PARK_WAIT_MS and fail (a worker's then) */
    assert_true(RUN_UNTIL(base, d.calls == 20, 5000));
    assert_int_equal(d.ok, 16);
    assert_int_equal(d.unsent, 4);
    cdb_apg_free(apg);
    event_base_free(base);
}

static void test_real_deadline_and_free(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = real_conninfo(), .statement_timeout_ms = 5000};
    cdb_apg *apg = cdb_apg_new(base, &pg, 1, 8);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    int answers = 0;                        /* the server seen answering again (cdb_apg_on_server_answers) */
    cdb_apg_on_server_answers(apg, count_answers, &answers);
    cdb_apg_stmt slow[] = {{"SELECT pg_sleep(2)::text", 0, NULL, false}};
    seen t = {0}, n = {0};
    int64_t t0 = cdb_mono_ms();
    assert_true(cdb_apg_submit(apg, slow, 1, 200, on_job, &t));
    assert_true(cdb_apg_submit(apg, slow, 1, 0, on_job, &n));
    assert_true(RUN_UNTIL(base, t.calls, 1500));
    assert_int_equal(t.deadline, 1);
    assert_true(cdb_mono_ms() - t0 < 1500);        /* at its deadline, not after the sleep */
    assert_int_equal(n.calls, 0);                   /* the job behind it keeps its own deadline */
    assert_int_equal(answers, 0);
    assert_true(RUN_UNTIL(base, n.calls, 6000));    /* both sleeps: about 4 s */
    assert_int_equal(n.ok, 1);
    assert_int_equal(answers, 1);   /* once, when the timed-out job's results came: not per job after */
    assert_string_equal(n.first, "");
    RUN_UNTIL(base, false, 300);            /* nothing more arrives: exactly once */
    assert_int_equal(t.calls, 1);
    assert_int_equal(n.calls, 1);
    assert_true(all_ready(apg));            /* the same connection, never closed */

    /* the server's statement_timeout (57014): TIMEOUT, not DEADLINE (the answer's words differ) */
    cdb_apg_stmt cancelled[] = {{"SELECT set_config('statement_timeout', '100', true)", 0, NULL, false},
                                {"SELECT pg_sleep(2)::text", 0, NULL, false}};
    seen k = {0};
    assert_true(cdb_apg_submit(apg, cancelled, 2, 0, on_job, &k));
    assert_true(RUN_UNTIL(base, k.calls, 1500));
    assert_int_equal(k.timeout, 1);
    assert_int_equal(answers, 1);           /* no deadline passed: nothing to report */

    /* silent a whole deadline past the oldest job's: every job DEADLINE, then a reconnect */
    cdb_apg_stmt long_sleep[] = {{"SELECT pg_sleep(3)::text", 0, NULL, false}};
    seen a = {0}, b = {0};
    apg->default_timeout_ms = 300;          /* "a whole deadline" for this check */
    assert_true(cdb_apg_submit(apg, long_sleep, 1, 200, on_job, &a));
    assert_true(cdb_apg_submit(apg, long_sleep, 1, 700, on_job, &b));
    assert_true(RUN_UNTIL(base, a.calls && b.calls, 2000));
    assert_int_equal(a.deadline, 1);
    assert_int_equal(b.deadline, 1);
    RUN_UNTIL(base, false, 300);
    assert_int_equal(a.calls + b.calls, 2);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));   /* reconnected after the backoff */
    assert_int_equal(answers, 2);                          /* the reconnect */
    apg->default_timeout_ms = 5000;
    /* free with jobs parked: each fails once */
    seen p = {0};
    for (int i = 0; i < 3; i++)
        assert_true(cdb_apg_submit(apg, slow, 1, 0, on_job, &p));
    cdb_apg_free(apg);
    assert_int_equal(p.calls, 3);
    assert_int_equal(p.failed, 3);
    event_base_free(base);
}

static void test_real_terminated(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = real_conninfo(), .application_name = "coredb-apg-unit"};
    cdb_apg *apg = cdb_apg_new(base, &pg, 2, 2);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    cdb_apg_stmt slow[] = {{"SELECT pg_sleep(1)::text", 0, NULL, false}};
    seen s = {0};
    for (int i = 0; i < 6; i++)                 /* 4 in flight, 2 parked */
        assert_true(cdb_apg_submit(apg, slow, 1, 0, on_job, &s));
    assert_int_equal(apg->nparked, 2);
    PGconn *killer = PQconnectdb(real_conninfo());
    assert_int_equal(PQstatus(killer), CONNECTION_OK);
    PQclear(PQexec(killer, "SELECT pg_sleep(0.1)"));
    PGresult *r = PQexec(killer, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE application_name = 'coredb-apg-unit'");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    PQfinish(killer);
    assert_true(RUN_UNTIL(base, s.calls == 6, 3000));
    assert_int_equal(s.failed, 4);             /* in flight: lost with the connection */
    assert_int_equal(s.unsent, 2);             /* no connection ready: the parked end too, never sent */
    assert_int_equal(apg->nparked, 0);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    seen again = {0};
    cdb_apg_stmt one[] = {{"SELECT 'back'", 0, NULL, false}};
    assert_true(cdb_apg_submit(apg, one, 1, 0, on_job, &again));
    assert_true(RUN_UNTIL(base, again.calls == 1, 3000));
    assert_string_equal(again.first, "back");
    cdb_apg_free(apg);
    event_base_free(base);
}

static int prepared_count(cdb_apg *apg)
{
    int n = 0;
    for (int k = 0; k < apg->nconns; k++)
        for (int i = 0; i < MAX_PREPARED; i++)
            n += apg->conns[k].stmts[i].sql != NULL;
    return n;
}

static char *scalar_text(PGconn *conn, const char *sql)
{
    static char buf[64];
    PGresult *r = PQexec(conn, sql);
    snprintf(buf, sizeof buf, "%s", PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "error");
    PQclear(r);
    return buf;
}

/* A real server's cdb_apg (nconns x max_inflight, ready) and an admin connection that ran ddl. */
typedef struct real_world {
    cdb_pg_settings pg;            /* the cdb_apg holds it by reference */
    struct event_base *base;
    cdb_apg *apg;
    PGconn *admin;
} real_world;

static void real_open(real_world *w, int nconns, int max_inflight, const char *app, const char *ddl)
{
    if (!real_conninfo())
        skip();
    w->pg = (cdb_pg_settings){.conninfo = real_conninfo(), .statement_timeout_ms = 5000, .application_name = app};
    w->base = event_base_new();
    w->apg = cdb_apg_new(w->base, &w->pg, nconns, max_inflight);
    assert_true(RUN_UNTIL(w->base, all_ready(w->apg), 5000));
    w->admin = PQconnectdb(real_conninfo());
    assert_int_equal(PQstatus(w->admin), CONNECTION_OK);
    PQclear(PQexec(w->admin, ddl));
}

static void real_close(real_world *w, const char *ddl)
{
    PQclear(PQexec(w->admin, ddl));
    PQfinish(w->admin);
    cdb_apg_free(w->apg);
    event_base_free(w->base);
}

static void test_real_exact(void **state)
{
    (void)state;
    real_world w;
    real_open(&w, 1, 8, "coredb-apg-exact",
              "DROP TABLE IF EXISTS apg_exact; CREATE TABLE apg_exact (id int PRIMARY KEY)");
    struct event_base *base = w.base;
    cdb_apg *apg = w.apg;
    PGconn *admin = w.admin;
    const char *const none[1] = {NULL};
    const char *one[] = {"1"}, *two[] = {"2"};
    cdb_apg_stmt commit_ok[] = {{"BEGIN", 0, none, true},
                                {"INSERT INTO apg_exact VALUES ($1::int)", 1, one, true},
                                {"SELECT count(*)::text FROM apg_exact", 0, none, false},
                                {"COMMIT", 0, none, true}};
    seen a = {0}, b = {0}, c = {0}, d = {0}, e = {0};
    bool maybe;
    int prepared0 = prepared_count(apg);
    assert_true(cdb_apg_submit_exact(apg, commit_ok, 4, 0, on_job, &a, &maybe));
    /* claimed: nothing is sent behind a transaction; a job waits parked, an exact one is refused */
    cdb_apg_stmt select1[] = {{"SELECT 'after'", 0, none, false}};
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &d));
    assert_int_equal(apg->nparked, 1);
    assert_int_equal(apg->conns[0].inflight, 1);
    assert_false(cdb_apg_submit_exact(apg, commit_ok, 4, 0, on_job, &e, &maybe));
    assert_false(maybe);
    assert_true(RUN_UNTIL(base, a.calls, 5000));
    assert_int_equal(a.ok, 1);
    assert_int_equal(a.nres, 4);
    assert_true(RUN_UNTIL(base, d.calls, 5000));   /* sent once the transaction ended */
    assert_int_equal(d.ok, 1);
    assert_string_equal(d.first, "after");
    assert_int_equal(e.calls, 0);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_exact"), "1");
    /* a duplicate key before COMMIT: refused, nothing committed, the block rolled back */
    cdb_apg_stmt dup[] = {{"BEGIN", 0, none, true},
                          {"INSERT INTO apg_exact VALUES ($1::int)", 1, two, true},
                          {"INSERT INTO apg_exact VALUES ($1::int)", 1, one, true},
                          {"COMMIT", 0, none, true}};
    assert_true(cdb_apg_submit_exact(apg, dup, 4, 0, on_job, &b, &maybe));
    assert_true(RUN_UNTIL(base, b.calls, 5000));
    assert_int_equal(b.refused, 1);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_exact"), "1");
    /* usable at once: the ROLLBACK went first */
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &c));
    assert_true(RUN_UNTIL(base, c.calls, 5000));
    assert_int_equal(c.ok, 1);
    assert_string_equal(c.first, "after");
    /* 128 distinct unnamed texts: the prepared set does not grow */
    static char texts[CDB_APG_MAX_STMTS + 1][48];
    cdb_apg_stmt many[CDB_APG_MAX_STMTS + 1];
    for (int i = 0; i <= CDB_APG_MAX_STMTS; i++) {
        snprintf(texts[i], sizeof texts[i], "SELECT %d::text", i);
        many[i] = (cdb_apg_stmt){texts[i], 0, none, true};
    }
    many[0].sql = "BEGIN";
    many[CDB_APG_MAX_STMTS - 1].sql = "COMMIT";
    int prepared1 = prepared_count(apg);
    seen m = {0};
    assert_false(cdb_apg_submit_exact(apg, many, CDB_APG_MAX_STMTS + 1, 0, on_job, &m, &maybe));
    assert_true(cdb_apg_submit_exact(apg, many, CDB_APG_MAX_STMTS, 0, on_job, &m, &maybe));
    assert_true(RUN_UNTIL(base, m.calls, 5000));
    assert_int_equal(m.ok, 1);
    assert_int_equal(m.nres, CDB_APG_MAX_STMTS);
    assert_int_equal(prepared_count(apg), prepared1);
    assert_true(prepared1 <= prepared0 + 2);   /* only the named SELECT count and 'after' */
    /* a server FATAL before COMMIT (terminated while sleeping): refused, never "maybe committed" */
    cdb_apg_stmt sleepy[] = {{"BEGIN", 0, none, true},
                             {"INSERT INTO apg_exact VALUES ($1::int)", 1, two, true},
                             {"SELECT pg_sleep(2)::text", 0, none, true},
                             {"COMMIT", 0, none, true}};
    seen t = {0};
    assert_true(cdb_apg_submit_exact(apg, sleepy, 4, 0, on_job, &t, &maybe));
    RUN_UNTIL(base, false, 300);
    PQclear(PQexec(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'coredb-apg-exact'"));
    assert_true(RUN_UNTIL(base, t.calls, 5000));
    assert_int_equal(t.refused, 1);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_exact"), "1");
    /* the deadline: DEADLINE (the caller cannot know), and the claim ends with the segment */
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    seen late = {0}, after = {0};
    assert_true(cdb_apg_submit_exact(apg, sleepy, 4, 300, on_job, &late, &maybe));
    assert_true(RUN_UNTIL(base, late.calls, 2000));
    assert_int_equal(late.deadline, 1);
    /* still claimed: a job parks, and waits out PARK_WAIT_MS (a worker's then) */
    seen parked = {0};
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &parked));
    assert_int_equal(apg->nparked, 1);
    assert_true(RUN_UNTIL(base, parked.calls, 2000));
    assert_int_equal(parked.unsent, 1);
    assert_true(RUN_UNTIL(base, apg->conns[0].held == NULL, 5000));
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_exact"), "2");  /* it did commit */
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &after));
    assert_true(RUN_UNTIL(base, after.calls, 3000));
    assert_int_equal(after.ok, 1);
    RUN_UNTIL(base, false, 200);
    assert_int_equal(late.calls, 1);                /* exactly once */
    /* each result in time: a segment longer than the deadline is not cut short (the server
       sends a result before the Sync when it fills its 8 KiB output buffer, hence 20 KB each) */
    cdb_apg_stmt steps[] = {{"BEGIN", 0, none, true},
                            {"SELECT pg_sleep(0.25)::text || repeat('x', 20000)", 0, none, true},
                            {"SELECT pg_sleep(0.25)::text || repeat('y', 20000)", 0, none, true},
                            {"SELECT pg_sleep(0.25)::text || repeat('z', 20000)", 0, none, true},
                            {"COMMIT", 0, none, true}};
    seen longer = {0};
    assert_true(cdb_apg_submit_exact(apg, steps, 5, 500, on_job, &longer, &maybe));
    assert_true(RUN_UNTIL(base, longer.calls, 3000));
    assert_int_equal(longer.ok, 1);
    real_close(&w, "DROP TABLE apg_exact");
}


/* Whether another session can lock row id of apg_claim at once (NOWAIT): false while a claim holds it. */
static bool lockable(PGconn *admin, const char *id)
{
    const char *p[] = {id};
    PQclear(PQexec(admin, "BEGIN"));
    PGresult *r = PQexecParams(admin, "SELECT id FROM apg_claim WHERE id = $1::int FOR UPDATE NOWAIT", 1, NULL, p,
                               NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    PQclear(PQexec(admin, "ROLLBACK"));
    return ok;
}

/* A refused job's answer, and whether its row was lockable by another session when the answer came. */
typedef struct refused_probe {
    seen s;
    PGconn *admin;
    apg_conn *conn;
    bool free_at_answer;
    bool rollback_pending;         /* a job (the ROLLBACK) still in flight on conn at the answer */
} refused_probe;

static void on_refused_probe(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    refused_probe *p = arg;
    p->rollback_pending = p->conn->head != NULL;
    p->free_at_answer = lockable(p->admin, "2");
    on_job(outcome, res, n, &p->s);
}

static void test_real_claim(void **state)
{
    (void)state;
    real_world w;
    real_open(&w, 1, 8, NULL, "DROP TABLE IF EXISTS apg_claim; CREATE TABLE apg_claim (id int PRIMARY KEY, n int);"
                             "INSERT INTO apg_claim VALUES (1, 0), (2, 0)");
    struct event_base *base = w.base;
    cdb_apg *apg = w.apg;
    PGconn *admin = w.admin;
    const char *const none[1] = {NULL};
    const char *one[] = {"1"};
    cdb_apg_stmt lock[] = {{"BEGIN", 0, none, true},
                           {"SELECT id::text FROM apg_claim WHERE id = $1::int FOR UPDATE SKIP LOCKED", 1, one, false}};
    cdb_apg_stmt bump[] = {{"UPDATE apg_claim SET n = n + 1 WHERE id = $1::int", 1, one, false}};
    cdb_apg_stmt finish[] = {{"DELETE FROM apg_claim WHERE id = $1::int", 1, one, false}, {"COMMIT", 0, none, true}};
    cdb_apg_stmt select1[] = {{"SELECT 'after'", 0, none, false}};
    cdb_apg_claim claim, stale;
    seen a = {0}, b = {0}, c = {0}, d = {0}, e = {0};
    bool maybe;

    /* opened: the row stays locked after the job ended, and the connection takes nothing else */
    assert_true(cdb_apg_claim_open(apg, lock, 2, 0, on_job, &a, &claim));
    assert_true(RUN_UNTIL(base, a.calls, 5000));
    assert_int_equal(a.ok, 1);
    assert_string_equal(a.first, "1");
    assert_false(lockable(admin, "1"));
    assert_true(lockable(admin, "2"));
    seen parked = {0};
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &parked));   /* parked, not sent */
    assert_int_equal(apg->nparked, 1);
    assert_int_equal(apg->conns[0].inflight, 0);
    assert_false(cdb_apg_claim_open(apg, lock, 2, 0, on_job, &e, &stale));
    /* a job that keeps it, then one that ends it with COMMIT */
    assert_true(cdb_apg_claim_submit(apg, &claim, bump, 1, 0, true, on_job, &b, &maybe));
    assert_true(RUN_UNTIL(base, b.calls, 5000));
    assert_int_equal(b.ok, 1);
    assert_false(lockable(admin, "1"));
    assert_int_equal(parked.calls, 0);           /* never sent on the claimed connection */
    stale = claim;
    assert_true(cdb_apg_claim_submit(apg, &claim, finish, 2, 0, false, on_job, &c, &maybe));
    assert_true(RUN_UNTIL(base, c.calls, 5000));
    assert_int_equal(c.ok, 1);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_claim WHERE id = 1"), "0");
    /* ended: the handle is stale, the connection free */
    assert_false(cdb_apg_claim_submit(apg, &stale, bump, 1, 0, true, on_job, &e, &maybe));
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &d));
    assert_true(RUN_UNTIL(base, d.calls, 5000));
    assert_int_equal(d.ok, 1);
    assert_int_equal(e.calls, 0);
    assert_true(RUN_UNTIL(base, parked.calls, 2000));  /* run after the claim, or expired during it */
    assert_int_equal(parked.calls, 1);

    /* given up: ROLLBACK, nothing of it committed, the row free again */
    const char *two[] = {"2"};
    cdb_apg_stmt lock2[] = {{"BEGIN", 0, none, true},
                            {"UPDATE apg_claim SET n = 7 WHERE id = $1::int RETURNING id::text", 1, two, false}};
    seen f = {0}, g = {0};
    assert_true(cdb_apg_claim_open(apg, lock2, 2, 0, on_job, &f, &claim));
    assert_true(RUN_UNTIL(base, f.calls, 5000));
    assert_int_equal(f.ok, 1);
    assert_false(lockable(admin, "2"));
    cdb_apg_claim_release(apg, &claim);
    cdb_apg_claim_release(apg, &claim);          /* twice: a no-op */
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &g));
    assert_true(RUN_UNTIL(base, g.calls, 5000));
    assert_int_equal(g.ok, 1);
    assert_true(lockable(admin, "2"));
    assert_string_equal(scalar_text(admin, "SELECT n FROM apg_claim WHERE id = 2"), "0");

    /* an error in a kept job: REFUSED, the claim ends by itself (rolled back), the connection usable */
    const char *bad[] = {"x"};
    cdb_apg_stmt broken[] = {{"UPDATE apg_claim SET n = $1::int WHERE id = 2", 1, bad, false}};
    seen h = {0}, k = {0}, m = {0};
    assert_true(cdb_apg_claim_open(apg, lock2, 2, 0, on_job, &h, &claim));
    assert_true(RUN_UNTIL(base, h.calls, 5000));
    assert_true(cdb_apg_claim_submit(apg, &claim, broken, 1, 0, true, on_job, &k, &maybe));
    assert_true(RUN_UNTIL(base, k.calls, 5000));
    assert_int_equal(k.refused, 1);
    assert_false(cdb_apg_claim_submit(apg, &claim, bump, 1, 0, true, on_job, &e, &maybe));
    /* ... and it is answered only once the ROLLBACK ended: its row lock is gone by then (a caller
       running it again elsewhere at once must not meet it) */
    refused_probe probe = {.admin = admin, .conn = &apg->conns[0]};
    cdb_apg_stmt lock_then_fail[] = {{"BEGIN", 0, none, true},
                                     {"UPDATE apg_claim SET n = 7 WHERE id = $1::int RETURNING id::text", 1, two, false},
                                     {"UPDATE apg_claim SET n = $1::int WHERE id = 2", 1, bad, false},
                                     {"COMMIT", 0, none, true}};
    assert_true(cdb_apg_submit_exact(apg, lock_then_fail, 4, 0, on_refused_probe, &probe, &maybe));
    assert_true(RUN_UNTIL(base, probe.s.calls, 5000));
    assert_int_equal(probe.s.refused, 1);
    assert_false(probe.rollback_pending);
    assert_true(probe.free_at_answer);
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &m));
    assert_true(RUN_UNTIL(base, m.calls, 5000));
    assert_int_equal(m.ok, 1);
    assert_string_equal(scalar_text(admin, "SELECT n FROM apg_claim WHERE id = 2"), "0");
    assert_true(lockable(admin, "2"));

    /* the connection lost while claimed: the handle is stale, the reconnect serves others */
    seen n = {0}, q = {0};
    assert_true(cdb_apg_claim_open(apg, lock2, 2, 0, on_job, &n, &claim));
    assert_true(RUN_UNTIL(base, n.calls, 5000));
    PQclear(PQexec(admin, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = 'apg_claim'::regclass "
                          "AND pid <> pg_backend_pid()"));
    assert_true(RUN_UNTIL(base, apg->conns[0].state != ST_READY, 3000));
    assert_false(cdb_apg_claim_submit(apg, &claim, bump, 1, 0, true, on_job, &e, &maybe));
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    assert_true(cdb_apg_submit(apg, select1, 1, 0, on_job, &q));
    assert_true(RUN_UNTIL(base, q.calls, 5000));
    assert_int_equal(q.ok, 1);
    assert_int_equal(e.calls, 0);
    assert_string_equal(scalar_text(admin, "SELECT n FROM apg_claim WHERE id = 2"), "0");

    real_close(&w, "DROP TABLE apg_claim");
}

/* The order the parked jobs of test_real_park ended in. */
typedef struct order {
    int next;
    int seen[8];
    int ok;
} order;
typedef struct ticket {
    order *o;
    int id;
} ticket;

static void on_ordered(cdb_apg_outcome outcome, PGresult *const *res, int n, void *arg)
{
    ticket *t = arg;
    (void)res;
    (void)n;
    t->o->seen[t->o->next++] = t->id;
    t->o->ok += outcome == CDB_APG_OK;
}

static void test_real_park(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    struct event_base *base = event_base_new();
    cdb_pg_settings pg = {.conninfo = real_conninfo(), .statement_timeout_ms = 5000};
    cdb_apg *apg = cdb_apg_new(base, &pg, 1, 2);
    assert_int_equal(apg->park_max, PARK_PER_CONN);
    assert_true(RUN_UNTIL(base, all_ready(apg), 5000));
    cdb_apg_counts before, after;
    cdb_apg_counts_get(&before);

    /* parked jobs are sent in order as slots free, and succeed; a transaction (an exact job) among
       them too: the connection is full of misses, not held, so it parks and goes in its turn */
    cdb_apg_stmt nap[] = {{"SELECT pg_sleep(0.05)::text", 0, NULL, false}};
    cdb_apg_stmt quick[] = {{"SELECT 'p'", 0, NULL, false}};
    const char *const none[1] = {NULL};
    cdb_apg_stmt block[] = {{"BEGIN", 0, none, true}, {"SELECT 'p'", 0, none, true}, {"COMMIT", 0, none, true}};
    bool maybe = true;
    order o = {0};
    ticket t[5];
    for (int i = 0; i < 5; i++) {
        t[i] = (ticket){&o, i};
        if (i == 3)
            assert_true(cdb_apg_submit_exact(apg, block, 3, 0, on_ordered, &t[i], &maybe));
        else
            assert_true(cdb_apg_submit(apg, i < 2 ? nap : quick, 1, 0, on_ordered, &t[i]));
    }
    assert_false(maybe);
    assert_int_equal(apg->conns[0].inflight, 2);
    assert_int_equal(apg->nparked, 3);
    assert_true(RUN_UNTIL(base, o.next == 5, 3000));
    assert_int_equal(o.ok, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(o.seen[i], i);
    assert_int_equal(apg->nparked, 0);

    /* a moving queue: parked longer than PARK_WAIT_MS, but a job ended within every 250 ms */
    apg->max_inflight = 1;
    cdb_apg_stmt step[] = {{"SELECT pg_sleep(0.12)::text", 0, NULL, false}};
    seen m = {0};
    for (int i = 0; i < 5; i++)
        assert_true(cdb_apg_submit(apg, step, 1, 0, on_job, &m));
    assert_int_equal(apg->nparked, 4);          /* the last waits about 0.5 s */
    assert_true(RUN_UNTIL(base, m.calls == 5, 3000));
    assert_int_equal(m.ok, 5);
    apg->max_inflight = 2;

    /* held up past PARK_WAIT_MS: the parked job fails (its caller's worker runs it), the FIFO is bounded */
    cdb_apg_stmt hold[] = {{"SELECT pg_sleep(0.8)::text", 0, NULL, false}};
    seen h = {0}, p = {0}, extra = {0};
    assert_true(cdb_apg_submit(apg, hold, 1, 0, on_job, &h));
    assert_true(cdb_apg_submit(apg, hold, 1, 0, on_job, &h));
    int64_t t0 = cdb_mono_ms();
    for (int i = 0; i < apg->park_max; i++)
        assert_true(cdb_apg_submit(apg, quick, 1, 0, on_job, &p));
    assert_false(cdb_apg_submit(apg, quick, 1, 0, on_job, &extra));
    assert_true(RUN_UNTIL(base, p.calls == apg->park_max, 3000));
    int64_t waited = cdb_mono_ms() - t0;
    assert_int_equal(p.unsent, apg->park_max);
    assert_true(waited >= PARK_WAIT_MS - 20 && waited < 750);
    assert_int_equal(h.calls, 0);               /* the held ones keep their own deadline */
    assert_true(RUN_UNTIL(base, h.calls == 2, 3000));
    assert_int_equal(h.ok, 2);
    assert_int_equal(extra.calls, 0);
    cdb_apg_counts_get(&after);
    assert_int_equal(after.parked - before.parked, 3 + 4 + (uint64_t)apg->park_max);
    assert_int_equal(after.park_expired - before.park_expired, (uint64_t)apg->park_max);
    cdb_apg_free(apg);
    event_base_free(base);
}

/*
 * Exact jobs (and claims) behind misses (test_real_park: parked in order
 * with them): with every connection held they are refused, nothing parked;
 * one parked and never sent ends UNSENT and nothing of it ran; a parked
 * claim's handle is filled in when it is sent.
 */
static void test_real_exact_parks(void **state)
{
    (void)state;
    real_world w;
    real_open(&w, 1, 2, NULL,
              "DROP TABLE IF EXISTS apg_parked; CREATE TABLE apg_parked (id int PRIMARY KEY);"
              "INSERT INTO apg_parked VALUES (1)");
    struct event_base *base = w.base;
    cdb_apg *apg = w.apg;
    PGconn *admin = w.admin;
    const char *const none[1] = {NULL};
    const char *one[] = {"1"}, *two[] = {"2"};
    cdb_apg_stmt nap[] = {{"SELECT pg_sleep(0.1)::text", 0, NULL, false}};
    cdb_apg_stmt quick[] = {{"SELECT 'p'", 0, NULL, false}};
    cdb_apg_stmt insert1[] = {{"BEGIN", 0, none, true},
                              {"INSERT INTO apg_parked VALUES ($1::int)", 1, one, true},
                              {"COMMIT", 0, none, true}};
    bool maybe = true;

    /* every connection held by a transaction: another is refused (a worker runs it), a miss parks
       (and is sent once it ends, within PARK_WAIT_MS) */
    cdb_apg_stmt long_tx[] = {{"BEGIN", 0, none, true}, {"SELECT pg_sleep(0.15)::text", 0, none, true},
                              {"COMMIT", 0, none, true}};
    seen a = {0}, b = {0}, m = {0};
    assert_true(cdb_apg_submit_exact(apg, long_tx, 3, 0, on_job, &a, &maybe));
    assert_false(cdb_apg_submit_exact(apg, insert1, 3, 0, on_job, &b, &maybe));
    assert_false(maybe);
    assert_int_equal(apg->nparked, 0);
    assert_true(cdb_apg_submit(apg, quick, 1, 0, on_job, &m));
    assert_int_equal(apg->nparked, 1);
    assert_true(RUN_UNTIL(base, a.calls && m.calls, 3000));
    assert_int_equal(a.ok, 1);
    assert_int_equal(m.ok, 1);
    assert_int_equal(b.calls, 0);

    /* parked while no job ends for PARK_WAIT_MS: UNSENT, and nothing of it ran */
    cdb_apg_stmt hold[] = {{"SELECT pg_sleep(0.6)::text", 0, NULL, false}};
    cdb_apg_stmt insert2[] = {{"BEGIN", 0, none, true},
                              {"INSERT INTO apg_parked VALUES ($1::int)", 1, two, true},
                              {"COMMIT", 0, none, true}};
    seen h = {0}, u = {0};
    assert_true(cdb_apg_submit(apg, hold, 1, 0, on_job, &h));
    assert_true(cdb_apg_submit(apg, hold, 1, 0, on_job, &h));
    assert_true(cdb_apg_submit_exact(apg, insert2, 3, 0, on_job, &u, &maybe));
    assert_int_equal(apg->nparked, 1);
    assert_true(RUN_UNTIL(base, u.calls, 2000));
    assert_int_equal(u.unsent, 1);
    assert_true(RUN_UNTIL(base, h.calls == 2, 3000));
    assert_int_equal(h.ok, 2);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_parked WHERE id = 2"), "0");

    /* a parked claim: its handle is filled in when it is sent, and works */
    cdb_apg_stmt lock[] = {{"BEGIN", 0, none, true},
                           {"SELECT id::text FROM apg_parked WHERE id = $1::int FOR UPDATE", 1, one, false}};
    cdb_apg_stmt finish[] = {{"DELETE FROM apg_parked WHERE id = $1::int", 1, one, false},
                             {"COMMIT", 0, none, true}};
    cdb_apg_claim claim;
    seen n = {0}, c = {0}, f = {0};
    assert_true(cdb_apg_submit(apg, nap, 1, 0, on_job, &n));
    assert_true(cdb_apg_submit(apg, nap, 1, 0, on_job, &n));
    assert_true(cdb_apg_claim_open(apg, lock, 2, 0, on_job, &c, &claim));
    assert_int_equal(apg->nparked, 1);
    assert_null(claim.conn);                  /* not sent yet */
    assert_true(RUN_UNTIL(base, c.calls, 3000));
    assert_int_equal(c.ok, 1);
    assert_string_equal(c.first, "1");
    assert_ptr_equal(claim.conn, &apg->conns[0]);
    assert_true(cdb_apg_claim_submit(apg, &claim, finish, 2, 0, false, on_job, &f, &maybe));
    assert_true(RUN_UNTIL(base, f.calls, 3000));
    assert_int_equal(f.ok, 1);
    assert_string_equal(scalar_text(admin, "SELECT count(*) FROM apg_parked"), "0");
    assert_int_equal(n.ok, 2);
    real_close(&w, "DROP TABLE apg_parked");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_table),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_silent_server),
        cmocka_unit_test(test_real_pipeline),
        cmocka_unit_test(test_real_deadline_and_free),
        cmocka_unit_test(test_real_terminated),
        cmocka_unit_test(test_real_exact),
        cmocka_unit_test(test_real_claim),
        cmocka_unit_test(test_real_park),
        cmocka_unit_test(test_real_exact_parks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
