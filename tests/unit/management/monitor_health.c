/*
 * management/monitor_health.c - unit tests of the detailed health's parts
 * that need no server (src/management/monitor_health.c, included for its
 * statics): the verdict (worst level wins, reasons kept in order), the
 * process and disk readings against /proc and statvfs, and the descriptor
 * thresholds provoked by lowering this process's own limit. The reports
 * over PostgreSQL and Redis are covered end to end (tests/e2e/test_monitor.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "management/monitor_health.c"

static void test_verdict(void **state)
{
    (void)state;
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *o = json_object();
    assert_int_equal(verdict_finish(&v, o, NULL), 0);
    assert_string_equal(json_string_value(json_object_get(o, "health")), "healthy");
    assert_true(json_is_null(json_object_get(o, "reason")));
    assert_int_equal(json_array_size(json_object_get(o, "reasons")), 0);
    json_decref(o);

    v = (verdict){CDB_HEALTH_UP, json_array()};
    o = json_object();
    verdict_add(&v, CDB_HEALTH_DEGRADED, "redis: unreachable (%s)", "CACHE_UNAVAILABLE");
    verdict_add(&v, CDB_HEALTH_DOWN, "postgresql: unreachable");
    verdict_add(&v, CDB_HEALTH_DEGRADED, "later");
    assert_int_equal(v.level, CDB_HEALTH_DOWN);   /* a lesser finding never lowers it */
    assert_int_equal(verdict_finish(&v, o, NULL), 0);
    assert_null(v.reasons);                         /* taken by the report */
    assert_string_equal(json_string_value(json_object_get(o, "health")), "unhealthy");
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "redis: unreachable (CACHE_UNAVAILABLE)");
    assert_int_equal(json_array_size(json_object_get(o, "reasons")), 3);
    json_decref(o);
    assert_string_equal(level_name(CDB_HEALTH_DEGRADED), "degraded");
}

static void test_process(void **state)
{
    (void)state;
    assert_true(proc_status_value("VmRSS") > 0);
    assert_true(proc_status_value("Threads") >= 1);
    assert_int_equal(proc_status_value("NoSuchField"), -1);

    long before = count_fds();
    int fd = dup(0);
    assert_true(fd >= 0);
    assert_int_equal(count_fds(), before + 1);
    close(fd);

    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *p = process_json(&v);
    assert_int_equal(json_integer_value(json_object_get(p, "fds_open")), before);
    assert_int_equal(json_integer_value(json_object_get(p, "pid")), getpid());
    assert_int_equal(v.level, CDB_HEALTH_UP);
    json_decref(p);

    /* a limit just above what is open: degraded, then unhealthy. With only a
     * handful open (CI runs this with little more than stdio) no whole limit
     * falls between the two thresholds, so hold enough spare descriptors. */
    enum { SPARE = 40 };
    int spare[SPARE];
    for (int i = 0; i < SPARE; i++)
        assert_true((spare[i] = dup(0)) >= 0);
    before = count_fds();
    struct rlimit was, rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &was), 0);
    rl = was;
    rl.rlim_cur = (rlim_t)(before / ((CDB_HEALTH_FDS_DEGRADED + CDB_HEALTH_FDS_UNHEALTHY) / 2));
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    p = process_json(&v);
    assert_int_equal(v.level, CDB_HEALTH_DEGRADED);
    assert_true(strncmp(json_string_value(json_array_get(v.reasons, 0)), "fds: ", 5) == 0);
    json_decref(p);
    /* every descriptor taken: even the one to count them with is refused */
    rl.rlim_cur = (rlim_t)before;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    p = process_json(&v);
    assert_int_equal(v.level, CDB_HEALTH_DOWN);
    assert_int_equal(json_integer_value(json_object_get(p, "fds_open")), before);
    json_decref(p);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &was), 0);
    for (int i = 0; i < SPARE; i++)
        close(spare[i]);
    json_decref(v.reasons);
}

static void test_disks(void **state)
{
    (void)state;
    verdict v = {CDB_HEALTH_UP, json_array()};
    json_t *d = disk_json(&v, "var_dir", "/tmp");
    struct statvfs sv;
    assert_int_equal(statvfs("/tmp", &sv), 0);
    assert_true(json_is_true(json_object_get(d, "exists")));
    assert_int_equal(json_integer_value(json_object_get(d, "total_bytes")),
                     (json_int_t)((unsigned long long)sv.f_blocks * sv.f_frsize));
    assert_true(json_integer_value(json_object_get(d, "free_bytes")) > 0);
    double r = json_real_value(json_object_get(d, "free_ratio"));
    assert_true(r > 0 && r <= 1);
    json_decref(d);

    d = disk_json(&v, "backup_dir", "/no/such/dir/here");
    assert_true(json_is_false(json_object_get(d, "exists")));
    assert_true(json_is_null(json_object_get(d, "free_bytes")));
    assert_string_equal(json_string_value(json_object_get(d, "path")), "/no/such/dir/here");
    json_decref(d);
    d = disk_json(&v, "backup_dir", NULL);
    assert_true(json_is_null(json_object_get(d, "path")) || !json_object_get(d, "path"));
    json_decref(d);
    /* the verdict follows /tmp's real free space (a shared disk may be nearly
     * full); a missing directory is no finding */
    cdb_health_status expect = r < CDB_HEALTH_DISK_FREE_UNHEALTHY ? CDB_HEALTH_DOWN
                               : r < CDB_HEALTH_DISK_FREE_DEGRADED ? CDB_HEALTH_DEGRADED
                                                                   : CDB_HEALTH_UP;
    assert_int_equal(v.level, expect);
    assert_int_equal(json_array_size(v.reasons), expect == CDB_HEALTH_UP ? 0 : 1);
    if (expect != CDB_HEALTH_UP)
        assert_true(strncmp(json_string_value(json_array_get(v.reasons, 0)), "disk: var_dir has ", 18) == 0);
    json_decref(v.reasons);
}

static void test_query_text_expression(void **state)
{
    (void)state;
    const char *e = CDB__MONITOR_QUERY_TEXT("query");
    assert_non_null(strstr(e, "left(regexp_replace(query, '\\s+', ' ', 'g'), 200)"));
    assert_non_null(strstr(e, "<redacted: mentions a password>"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdict),
        cmocka_unit_test(test_process),
        cmocka_unit_test(test_disks),
        cmocka_unit_test(test_query_text_expression),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
