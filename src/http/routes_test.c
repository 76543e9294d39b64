/*
 * routes_test.c - routes that exist only for the end-to-end suite, mounted
 * when COREDB_TEST_ROUTES=1 (never by default). They let a test hold a
 * pooled connection for a chosen time, which is how pool exhaustion,
 * statement timeouts and graceful shutdown are proven against a real
 * PostgreSQL before the data API exists.
 *
 *   POST /test/sleep {"seconds": 0.5}  -> SELECT pg_sleep($1) on a pooled connection
 *   POST /test/echo  {...}             -> the body back (body parsing, limits)
 */
#include "core/timeutil.h"
#include "http_internal.h"
#include "service/service_internal.h"


static void test_sleep(cdb_request *r)
{
    json_t *secs = r->body ? json_object_get(r->body, "seconds") : NULL;
    if (!json_is_number(secs) || json_number_value(secs) < 0 || json_number_value(secs) > 60) {
        cdb_error e;
        cdb_error_init(&e);
        cdb_error_set(&e, CDB_ERR_VALIDATION_FAILED, "seconds must be a number in 0..60");
        cdb_error_detail(&e, "field", json_string("seconds"));
        cdb_request_fail(r, &e);
        return;
    }
    cdb_error err;
    cdb_error_init(&err);
    int64_t start = cdb_mono_ms();
    if (cdb_service_test_sleep(r->svc, json_number_value(secs), &err) < 0) {
        cdb_request_fail(r, &err);
        return;
    }
    cdb_request_reply(r, 200, json_pack("{s:s,s:I}", "status", "slept", "elapsed_ms",
                                        (json_int_t)(cdb_mono_ms() - start)));
}

static void test_echo(cdb_request *r)
{
    cdb_request_reply(r, 200, json_pack("{s:O*}", "body", r->body));
}

const cdb_route cdb_routes_test[] = {
    {EVHTTP_REQ_POST, "/test/sleep", test_sleep, CDB_RUN_WORKER, CDB_AUTH_PUBLIC},
    {EVHTTP_REQ_POST, "/test/echo", test_echo, CDB_RUN_INLINE, CDB_AUTH_PUBLIC},
    {0},
};
