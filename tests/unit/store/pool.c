/*
 * store/pool.c - the blocking pool's recovery from a server that was down.
 *
 * Without a server: an invalid option set is refused; an acquire while the
 * server is down, with nothing idle and the backoff not run out, fails at
 * once with DATABASE_UNAVAILABLE (nobody waits out a timeout).
 *
 * With a real PostgreSQL (COREDB_TEST_PG_CONNINFO set: tests/e2e starts
 * one and runs this binary against it in test_loop_query.py): acquires
 * that arrive while another thread's connect probes a server taken for
 * down wait for that probe instead of failing (the chaos run's 503s the
 * moment PostgreSQL returned), and all get a connection when it succeeds;
 * when it fails they fail at once, long before their deadline; a probe
 * that hangs is waited for until a second after its start (PROBE_WAIT_MS),
 * not the deadline, and not at all once older (PostgreSQL stopped: failing
 * fast is the point then); and a
 * loop's word that the server answers (cdb_pool_server_answers) ends the
 * backoff, so the next acquire connects.
 *
 * The probe is simulated through the pool's own fields (opening, the
 * backoff) and connect_result_locked, so the moment of its end is the
 * test's, not a race.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>

#include "store/pool.c"

enum { ACQUIRERS = 4 };

static const char *real_conninfo(void)
{
    const char *c = getenv("COREDB_TEST_PG_CONNINFO");
    return c && *c ? c : NULL;
}

static cdb_pool *pool_on(const char *conninfo)
{
    cdb_pool_options opt = {.conninfo = conninfo, .min_size = 0, .max_size = 8, .idle_timeout_ms = 60000,
                            .acquire_timeout_ms = 5000, .statement_timeout_ms = 5000,
                            .application_name = "coredb-pool-unit"};
    cdb_error err;
    cdb_error_init(&err);
    cdb_pool *p = cdb_pool_new(&opt, &err);
    cdb_error_destroy(&err);
    assert_non_null(p);
    return p;
}

/* The server taken for down with a 5 s backoff ahead; probing: a connect of another thread in flight. */
static void mark_down(cdb_pool *p, bool probing)
{
    pthread_mutex_lock(&p->mu);
    p->server_up = false;
    p->backoff_ms = BACKOFF_MAX_MS;
    p->next_connect_ms = cdb_mono_ms() + BACKOFF_MAX_MS;
    p->opening += probing;
    p->probe_started_ms = cdb_mono_ms();
    pthread_mutex_unlock(&p->mu);
}

/* The simulated probe of mark_down(p, true) ends with ok. */
static void probe_ends(cdb_pool *p, bool ok)
{
    pthread_mutex_lock(&p->mu);
    p->opening--;
    connect_result_locked(p, ok);
    pthread_mutex_unlock(&p->mu);
}

typedef struct acquirer {
    pthread_t thread;
    cdb_pool *pool;
    cdb_pool_conn *conn;
    cdb_err code;
    int64_t took_ms;
    atomic_int *done;
} acquirer;

static void *acquire_once(void *arg)
{
    acquirer *a = arg;
    cdb_error err;
    cdb_error_init(&err);
    int64_t t0 = cdb_mono_ms();
    a->conn = cdb_pool_acquire(a->pool, t0 + 5000, &err);
    a->took_ms = cdb_mono_ms() - t0;
    a->code = a->conn ? CDB_OK : err.code;
    cdb_error_destroy(&err);
    atomic_fetch_add(a->done, 1);
    return NULL;
}

static int waiting_now(cdb_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->waiting;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* ACQUIRERS threads in cdb_pool_acquire, each asserted to be waiting there (on the probe) */
static void start_waiting_acquirers(cdb_pool *p, acquirer *a, atomic_int *done)
{
    for (int i = 0; i < ACQUIRERS; i++) {
        a[i] = (acquirer){.pool = p, .done = done};
        assert_int_equal(pthread_create(&a[i].thread, NULL, acquire_once, &a[i]), 0);
    }
    for (int i = 0; i < 100 && waiting_now(p) < ACQUIRERS; i++)
        usleep(10000);
    assert_int_equal(waiting_now(p), ACQUIRERS);
}

static void test_bad_options(void **state)
{
    (void)state;
    cdb_pool_options opt = {.conninfo = "host=127.0.0.1", .min_size = 3, .max_size = 2};
    cdb_error err;
    cdb_error_init(&err);
    assert_null(cdb_pool_new(&opt, &err));
    assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
    cdb_error_destroy(&err);
}

static void test_down_fails_at_once(void **state)
{
    (void)state;
    /* nothing listens on port 1: no connect can succeed, none is tried during the backoff */
    cdb_pool *p = pool_on("host=127.0.0.1 port=1 connect_timeout=2");
    mark_down(p, false);
    cdb_error err;
    cdb_error_init(&err);
    int64_t t0 = cdb_mono_ms();
    assert_null(cdb_pool_acquire(p, t0 + 3000, &err));
    assert_int_equal(err.code, CDB_ERR_DATABASE_UNAVAILABLE);
    assert_true(cdb_mono_ms() - t0 < 500);
    cdb_error_destroy(&err);
    cdb_pool_free(p);
}

static void test_waiters_follow_the_probe(void **state)
{
    (void)state;
    if (!real_conninfo())
        skip();
    cdb_pool *p = pool_on(real_conninfo());
    acquirer a[ACQUIRERS];
    atomic_int done = 0;

    /* the probe succeeds: everyone waited for it, then connected */
    mark_down(p, true);
    start_waiting_acquirers(p, a, &done);
    assert_int_equal(atomic_load(&done), 0);       /* none refused while the probe runs */
    probe_ends(p, true);
    for (int i = 0; i < ACQUIRERS; i++) {
        pthread_join(a[i].thread, NULL);
        assert_int_equal(a[i].code, CDB_OK);
        assert_int_equal(PQstatus(cdb_pool_conn_pg(a[i].conn)), CONNECTION_OK);
        cdb_pool_release(p, a[i].conn);
    }

    /* the probe fails: everyone answered DATABASE_UNAVAILABLE at once, not at the deadline */
    pthread_mutex_lock(&p->mu);
    while (p->idle.head) {                         /* a restarted server: nothing idle survives */
        cdb_pool_conn *c = p->idle.head;
        list_remove(&p->idle, c);
        conn_close(c);
    }
    pthread_mutex_unlock(&p->mu);
    atomic_store(&done, 0);
    mark_down(p, true);
    start_waiting_acquirers(p, a, &done);
    probe_ends(p, false);
    for (int i = 0; i < ACQUIRERS; i++) {
        pthread_join(a[i].thread, NULL);
        assert_int_equal(a[i].code, CDB_ERR_DATABASE_UNAVAILABLE);
        assert_true(a[i].took_ms < 2000);
    }

    /* a probe that hangs (a stopped server holds a connect for its whole timeout): waited for
       until PROBE_WAIT_MS after its start, not the deadline; once it is older, not at all */
    mark_down(p, true);
    cdb_error hung;
    cdb_error_init(&hung);
    int64_t t0 = cdb_mono_ms();
    assert_null(cdb_pool_acquire(p, t0 + 5000, &hung));
    int64_t took = cdb_mono_ms() - t0;
    assert_int_equal(hung.code, CDB_ERR_DATABASE_UNAVAILABLE);
    assert_true(took >= PROBE_WAIT_MS - 50 && took < PROBE_WAIT_MS + 1000);
    cdb_error_destroy(&hung);
    cdb_error_init(&hung);
    t0 = cdb_mono_ms();
    assert_null(cdb_pool_acquire(p, t0 + 5000, &hung));
    assert_int_equal(hung.code, CDB_ERR_DATABASE_UNAVAILABLE);
    assert_true(cdb_mono_ms() - t0 < 200);
    cdb_error_destroy(&hung);
    pthread_mutex_lock(&p->mu);
    p->opening--;                                  /* the simulated probe, never ended */
    pthread_mutex_unlock(&p->mu);

    /* a loop connected meanwhile: the backoff ends, the next acquire connects */
    cdb_error err;
    cdb_error_init(&err);
    assert_null(cdb_pool_acquire(p, cdb_mono_ms() + 3000, &err));   /* still in its backoff */
    assert_int_equal(err.code, CDB_ERR_DATABASE_UNAVAILABLE);
    cdb_error_destroy(&err);
    cdb_error_init(&err);
    cdb_pool_server_answers(p);
    cdb_pool_conn *c = cdb_pool_acquire(p, cdb_mono_ms() + 3000, &err);
    assert_non_null(c);
    cdb_pool_release(p, c);
    cdb_error_destroy(&err);
    cdb_pool_stats st;
    cdb_pool_get_stats(p, &st);
    assert_true(st.server_up);
    cdb_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_down_fails_at_once),
        cmocka_unit_test(test_waiters_follow_the_probe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
