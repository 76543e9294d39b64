/*
 * store/replicas.c - what a read replica may do and where a read goes,
 * without servers: LSN text both ways, the state table (an impossible move
 * aborts), lag in seconds from the primary's LSN ring (0 once the sampled
 * LSN is replayed, the age of the oldest unreplayed sample otherwise), and
 * the choice (round robin over replicas in rotation that have replayed the
 * caller's LSN; the primary otherwise, saying why).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static int aborted;
static void fake_abort(void)
{
    aborted++;
}
#define abort() fake_abort()
#include "store/replicas.c"
#undef abort

static void test_lsn_text(void **state)
{
    (void)state;
    char buf[20];
    assert_int_equal(cdb_lsn_parse("16/B374D848"), 0x16B374D848ULL);
    assert_int_equal(cdb_lsn_parse("0/0"), 0);
    assert_int_equal(cdb_lsn_parse("FFFFFFFF/FFFFFFFF"), UINT64_MAX);
    assert_int_equal(cdb_lsn_parse("16/B374D848x"), 0);
    assert_int_equal(cdb_lsn_parse("nonsense"), 0);
    assert_int_equal(cdb_lsn_parse(NULL), 0);
    cdb_lsn_format(0x16B374D848ULL, buf);
    assert_string_equal(buf, "16/B374D848");
    assert_int_equal(cdb_lsn_parse(buf), 0x16B374D848ULL);
}

static void test_state_moves(void **state)
{
    (void)state;
    replica rep = {.state = CDB_REPLICA_UNKNOWN};
    snprintf(rep.label, sizeof rep.label, "127.0.0.1:1");
    aborted = 0;
    set_state(&rep, CDB_REPLICA_UP, NULL);
    assert_int_equal(rep.state, CDB_REPLICA_UP);
    assert_null(rep.reason);
    set_state(&rep, CDB_REPLICA_LAGGING, "late");
    assert_string_equal(rep.reason, "late");
    set_state(&rep, CDB_REPLICA_DOWN, "unreachable");
    set_state(&rep, CDB_REPLICA_DOWN, "not a standby");   /* same state: the reason only */
    assert_string_equal(rep.reason, "not a standby");
    set_state(&rep, CDB_REPLICA_UP, NULL);
    assert_int_equal(aborted, 0);
    set_state(&rep, CDB_REPLICA_UNKNOWN, "back to start"); /* never returns to UNKNOWN */
    assert_int_equal(aborted, 1);
}

static void ring_push(cdb_replicas *rs, int64_t at, uint64_t lsn)
{
    rs->ring[rs->head] = (lsn_sample){.at_ms = at, .lsn = lsn};
    rs->head = (rs->head + 1) % RING;
    if (rs->filled < RING)
        rs->filled++;
}

static void test_ring_lag(void **state)
{
    (void)state;
    cdb_replicas rs;
    memset(&rs, 0, sizeof rs);
    assert_true(ring_lag(&rs, 100, 5000) == 0);          /* nothing sampled: nothing known to be late */
    ring_push(&rs, 1000, 100);
    ring_push(&rs, 2000, 200);
    ring_push(&rs, 3000, 300);
    assert_true(ring_lag(&rs, 300, 3500) == 0);          /* replayed the newest sample */
    assert_true(ring_lag(&rs, 250, 3500) == 0.5);        /* behind 300, sampled at 3000 */
    assert_true(ring_lag(&rs, 150, 3500) == 1.5);        /* behind 200 and 300: the oldest counts */
    assert_true(ring_lag(&rs, 50, 3500) == -1);          /* behind the whole ring */
    for (int i = 0; i < RING + 5; i++)                   /* the ring wraps */
        ring_push(&rs, 10000 + i, 1000 + (uint64_t)i);
    assert_int_equal(rs.filled, RING);
    assert_true(ring_lag(&rs, 1000 + RING + 4, 20000) == 0);
    assert_true(ring_lag(&rs, 1000 + RING + 3, 10000 + RING + 4) == 0);
}

static cdb_replicas *two(uint64_t lsn0, cdb_replica_state s0, uint64_t lsn1, cdb_replica_state s1)
{
    static replica r[2];
    static cdb_replicas rs;
    memset(&rs, 0, sizeof rs);
    memset(r, 0, sizeof r);
    pthread_mutex_init(&rs.mu, NULL);
    rs.r = r;
    rs.n = 2;
    r[0] = (replica){.state = s0, .replay_lsn = lsn0};
    r[1] = (replica){.state = s1, .replay_lsn = lsn1};
    return &rs;
}

static void test_pick(void **state)
{
    (void)state;
    bool behind, current;
    cdb_replicas *rs = two(500, CDB_REPLICA_UP, 400, CDB_REPLICA_UP);
    int first = cdb_replicas_pick(rs, 0, 0, &behind, &current);
    int second = cdb_replicas_pick(rs, 0, 0, &behind, &current);
    assert_true(first >= 0 && second >= 0 && first != second);  /* round robin */
    assert_false(behind);
    for (int i = 0; i < 4; i++) {                                /* only replica 0 has replayed 450 */
        assert_int_equal(cdb_replicas_pick(rs, 450, 500, &behind, &current), 0);
        assert_true(current);                                    /* it has replayed 500 too */
        assert_int_equal(cdb_replicas_pick(rs, 450, 501, &behind, &current), 0);
        assert_false(current);                                   /* not 501: not to be cached */
    }
    assert_int_equal(cdb_replicas_pick(rs, 600, 0, &behind, &current), -1);
    assert_true(behind);                                         /* the primary, for read-your-writes */
    assert_int_equal(cdb_replicas_pick(rs, UINT64_MAX, 0, &behind, NULL), -1);

    rs = two(500, CDB_REPLICA_DOWN, 900, CDB_REPLICA_LAGGING);  /* none in rotation */
    assert_false(cdb_replicas_any_up(rs));
    assert_int_equal(cdb_replicas_pick(rs, 0, 0, &behind, &current), -1);
    assert_false(behind);                                        /* not a read-your-writes case */

    rs = two(500, CDB_REPLICA_UP, 900, CDB_REPLICA_UNKNOWN);
    assert_true(cdb_replicas_any_up(rs));
    cdb_replicas_report_failure(rs, 0);                          /* a read lost its connection */
    assert_int_equal(rs->r[0].state, CDB_REPLICA_DOWN);
    assert_int_equal(cdb_replicas_pick(rs, 0, 0, NULL, NULL), -1);
    assert_int_equal(cdb_replicas_pick(NULL, 0, 0, &behind, NULL), -1);
}

static void test_counts(void **state)
{
    (void)state;
    cdb_replicas *rs = two(1, CDB_REPLICA_UP, 1, CDB_REPLICA_UP);
    cdb_replicas_counts c;
    cdb_replicas_count_read(rs, 1, false, false);
    cdb_replicas_count_read(rs, -1, true, false);
    cdb_replicas_count_read(rs, -1, false, true);
    cdb_replicas_get_counts(rs, &c);
    assert_int_equal(c.reads_replica, 1);
    assert_int_equal(c.reads_primary, 2);
    assert_int_equal(c.ryw_primary, 1);
    assert_int_equal(c.replica_failures, 1);
}

static void test_label_hides_password(void **state)
{
    (void)state;
    char label[128];
    url_label("postgresql://u:secretpw@db.example:6432/app", label, sizeof label, 0);
    assert_string_equal(label, "db.example:6432");
    url_label("postgresql://u:secretpw@10.0.0.1/app", label, sizeof label, 3);
    assert_string_equal(label, "10.0.0.1:5432");
    url_label("::not a url::", label, sizeof label, 2);
    assert_string_equal(label, "replica2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsn_text),
        cmocka_unit_test(test_state_moves),
        cmocka_unit_test(test_ring_lag),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_label_hides_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
