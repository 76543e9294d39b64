/*
 * metrics_micro.c - the recording calls a cache-hit request makes (one
 * HTTP answer, one cache hit, one pool wait), timed in a loop on one
 * thread: the direct cost of metrics per request, free of the noise of a
 * shared machine that the req/s comparison of metrics_cost.sh suffers.
 * Built and run by bench/metrics_cost.sh.
 */
#include <stdio.h>
#include "core/metrics.h"
#include "core/timeutil.h"
int main(void)
{
    int route = cdb__metrics_route_index("/api/v1/data/query");
    enum { N = 10000000 };
    int64_t t0 = cdb_mono_us();
    for (int i = 0; i < N; i++) {
        cdb__metrics_http(route, "POST", 200, 1500 + (i & 1023));
        cdb__metrics_inc(CDB_M_CACHE_HITS);
        cdb__metrics_pool_wait(3);
    }
    int64_t t1 = cdb_mono_us();
    printf("%.1f ns per request's recordings (http + cache hit + pool wait)\n", (double)(t1 - t0) * 1000.0 / N);
    return 0;
}
