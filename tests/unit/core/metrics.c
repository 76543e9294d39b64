/*
 * metrics.c - unit tests of the metrics registry (src/core/metrics.c): the
 * shards sum across threads, the fixed label sets (unmatched route, status
 * classes, "other" method), the client-version bound, the quantiles of the
 * monitoring JSON and the ring of recent errors. Includes the .c file to
 * reach its statics; one registry per process, so the tests read deltas.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../../src/core/metrics.c"

enum { THREADS = 8, PER_THREAD = 20000 };

static void *bump(void *arg)
{
    int route = *(int *)arg;
    for (int i = 0; i < PER_THREAD; i++) {
        cdb__metrics_inc(CDB_M_CACHE_HITS);
        cdb__metrics_http(route, "GET", 200, 1000);
    }
    return NULL;
}

static uint64_t http_count(int route, int m, int st)
{
    uint64_t c = 0;
    for (int s = 0; s < NSHARDS; s++)
        c += LOAD(shards[s].http[route][m][st]);
    return c;
}

static void test_shards_sum_across_threads(void **state)
{
    int route = cdb__metrics_route_index("/unit/threads");
    uint64_t hits = sum_counter(CDB_M_CACHE_HITS);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, bump, &route), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(sum_counter(CDB_M_CACHE_HITS) - hits, (uint64_t)THREADS * PER_THREAD);
    assert_int_equal(http_count(route, method_index("GET"), status_index(200)), (uint64_t)THREADS * PER_THREAD);
}

static void test_route_index_is_stable_and_unmatched_is_zero(void **state)
{
    int a = cdb__metrics_route_index("/unit/a/{id}");
    assert_true(a > 0);
    assert_int_equal(cdb__metrics_route_index("/unit/a/{id}"), a);
    assert_int_equal(cdb__metrics_route_index(NULL), 0);
    assert_string_equal(route_names[0], "unmatched");
    /* out-of-range indexes land on "unmatched", never past the arrays */
    uint64_t before = http_count(0, method_index("GET"), status_index(404));
    cdb__metrics_http(-5, "GET", 404, 10);
    cdb__metrics_http(CDB_METRICS_MAX_ROUTES + 3, "GET", 404, 10);
    assert_int_equal(http_count(0, method_index("GET"), status_index(404)) - before, 2);
}

static void test_label_sets_are_fixed(void **state)
{
    assert_int_equal(method_index("BREW"), NMETHODS - 1);
    assert_int_equal(method_index(NULL), NMETHODS - 1);
    assert_int_equal(method_index("get"), NMETHODS - 1);  /* methods are case-sensitive */
    assert_int_equal(status_index(418), NSTATUS_CODES + 3);  /* 4xx */
    assert_int_equal(status_index(299), NSTATUS_CODES + 1);  /* 2xx */
    assert_int_equal(status_index(999), NSTATUS_CODES + 4);
    assert_int_equal(status_codes[status_index(429)], 429);
}

static void test_client_versions_bounded(void **state)
{
    char v[32];
    for (int i = 0; i < CDB_METRICS_MAX_CLIENT_VERSIONS + 20; i++) {
        snprintf(v, sizeof v, "unit-%d", i);
        cdb__metrics_client_version(v);
    }
    uint64_t other = LOAD(client_version_counts[CDB_METRICS_MAX_CLIENT_VERSIONS]);
    assert_true(other >= 20);
    cdb__metrics_client_version("someone@example.com");
    cdb__metrics_client_version("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.signature-here");
    cdb__metrics_client_version("");
    cdb__metrics_client_version("0123456789abcdef0123456789abcdef");  /* a UUID without dashes */
    assert_int_equal(LOAD(client_version_counts[CDB_METRICS_MAX_CLIENT_VERSIONS]), other + 4);
    for (int i = 0; i < CDB_METRICS_MAX_CLIENT_VERSIONS; i++) {
        const char *have = atomic_load(&client_versions[i]);
        assert_non_null(have);
        assert_null(strchr(have, '@'));
    }
}

/* The clients' name/version form is a label; '@', spaces and quotes are not. */
static void test_client_version_name_slash_version(void **state)
{
    assert_true(version_ok("coredb-py/1.0.0"));
    assert_true(version_ok("coredb-ts/1.0.0"));
    assert_false(version_ok("coredb-ts/1.0.0 linux"));
    assert_false(version_ok("me@example.com/1.0"));
    assert_false(version_ok("coredb-ts/1.0.0/extra/extra"));  /* 27 characters: too long */
}

static void test_latency_quantiles(void **state)
{
    int route = cdb__metrics_route_index("/unit/latency");
    /* 90 answers in (1, 2.5] ms and 10 in (250, 500] ms */
    for (int i = 0; i < 90; i++)
        cdb__metrics_http(route, "POST", 200, 2000);
    for (int i = 0; i < 10; i++)
        cdb__metrics_http(route, "POST", 200, 400000);
    json_t *j = cdb__metrics_latency_json();
    assert_non_null(j);
    json_t *r = json_object_get(j, "/unit/latency");
    assert_non_null(r);
    assert_int_equal(json_integer_value(json_object_get(r, "count")), 100);
    double p50 = json_real_value(json_object_get(r, "p50_ms"));
    double p90 = json_real_value(json_object_get(r, "p90_ms"));
    double p99 = json_real_value(json_object_get(r, "p99_ms"));
    assert_true(p50 > 1.0 && p50 <= 2.5);
    assert_true(p90 > 1.0 && p90 <= 2.5);
    assert_true(p99 > 250.0 && p99 <= 500.0);
    json_decref(j);
}

static void test_errors_json_and_ring(void **state)
{
    int route = cdb__metrics_route_index("/unit/errors/{id}");
    for (int i = 0; i < CDB_METRICS_RECENT_ERRORS + 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "req-%d", i);
        cdb__metrics_http_error(route, "DELETE", 404, CDB_ERR_NOT_FOUND, id);
    }
    json_t *j = cdb__metrics_errors_json();
    assert_non_null(j);
    json_t *recent_list = json_object_get(j, "recent");
    assert_int_equal(json_array_size(recent_list), CDB_METRICS_RECENT_ERRORS);
    json_t *newest = json_array_get(recent_list, 0);
    assert_string_equal(json_string_value(json_object_get(newest, "request_id")), "req-54");
    assert_string_equal(json_string_value(json_object_get(newest, "route")), "/unit/errors/{id}");
    assert_string_equal(json_string_value(json_object_get(newest, "code")), "NOT_FOUND");
    assert_string_equal(json_string_value(json_object_get(newest, "method")), "DELETE");
    assert_int_equal(json_integer_value(json_object_get(newest, "status")), 404);
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(j, "by_code"), i, e)
        if (strcmp(json_string_value(json_object_get(e, "route")), "/unit/errors/{id}") == 0) {
            assert_string_equal(json_string_value(json_object_get(e, "code")), "NOT_FOUND");
            assert_int_equal(json_integer_value(json_object_get(e, "count")), CDB_METRICS_RECENT_ERRORS + 5);
            found = true;
        }
    assert_true(found);
    json_decref(j);
}

static void collector(cdb__metrics_out *out, void *arg)
{
    cdb__metrics_family(out, "unit_gauge", "gauge", "A test gauge.");
    cdb__metrics_sample(out, "unit_gauge", "k=\"v\"", *(int *)arg);
}

static void test_render_has_families_and_collectors(void **state)
{
    static int forty_two = 42;
    cdb__metrics_op(CDB_MOP_JOB, "unit_job", true, 1500000);
    cdb__metrics_op(CDB_MOP_JOB, "unit_job", false, 500000);
    assert_int_equal(cdb__metrics_add_collector(collector, &forty_two), 0);
    assert_int_equal(cdb__metrics_add_collector(collector, &forty_two), 0);  /* once */
    char *text = cdb__metrics_render();
    assert_non_null(text);
    assert_non_null(strstr(text, "# TYPE coredb_http_requests_total counter\n"));
    assert_non_null(strstr(text, "coredb_http_requests_total{method=\"GET\",route=\"/unit/threads\",status=\"200\"}"));
    assert_non_null(strstr(text, "coredb_http_request_duration_seconds_bucket{route=\"/unit/latency\",le=\"+Inf\"} 100\n"));
    assert_non_null(strstr(text, "coredb_job_runs_total{job_name=\"unit_job\"} 2\n"));
    assert_non_null(strstr(text, "coredb_job_failures_total{job_name=\"unit_job\"} 1\n"));
    assert_non_null(strstr(text, "coredb_job_duration_seconds_sum{job_name=\"unit_job\"} 2.000000\n"));
    assert_non_null(strstr(text, "coredb_backup_runs_total 0\n"));
    assert_non_null(strstr(text, "coredb_build_info{version=\"" CDB_VERSION "\""));
    assert_non_null(strstr(text, "process_resident_memory_bytes "));
    char *g = strstr(text, "unit_gauge{k=\"v\"} 42\n");
    assert_non_null(g);
    assert_null(strstr(g + 1, "unit_gauge{k=\"v\"} 42\n"));
    free(text);
    cdb__metrics_remove_collector(collector, &forty_two);
    text = cdb_metrics_render();  /* the public name: the same text */
    assert_non_null(text);
    assert_non_null(strstr(text, "# TYPE coredb_http_requests_total counter\n"));
    assert_null(strstr(text, "unit_gauge"));
    free(text);
}

static void test_escape(void **state)
{
    char buf[32];
    cdb__metrics_escape("a\"b\\c\nd", buf, sizeof buf);
    assert_string_equal(buf, "a\\\"b\\\\c\\nd");
    char tiny[4];
    cdb__metrics_escape("\"\"\"\"", tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shards_sum_across_threads),
        cmocka_unit_test(test_route_index_is_stable_and_unmatched_is_zero),
        cmocka_unit_test(test_label_sets_are_fixed),
        cmocka_unit_test(test_client_versions_bounded),
        cmocka_unit_test(test_client_version_name_slash_version),
        cmocka_unit_test(test_latency_quantiles),
        cmocka_unit_test(test_errors_json_and_ring),
        cmocka_unit_test(test_render_has_families_and_collectors),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
