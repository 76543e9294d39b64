/*
 * routes_audit.c - the audit log (coredb/audit.h, docs/http.md "Audit log"):
 *   GET /api/v1/admin/audit?actor=&action=&since=&until=&limit=&cursor=
 *       newest first: {entries, next_cursor}
 *   GET /api/v1/admin/audit/verify
 *       the hash chain recomputed: {valid, rows_checked, first_broken, head}
 * Admin only; success bodies are the library's result form, as for the
 * other /api/v1/admin routes.
 */
#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "http_internal.h"

/*
 * limit as the query string gives it: decimal digits only. A number beyond
 * the maximum is passed on as one past it, so the library's own check
 * answers it (one message for every bad limit).
 */
static int parse_limit(const char *text, int *limit, cdb_error *err)
{
    size_t n = text ? strlen(text) : 0;
    if (!text)
        return 0;
    if (n == 0 || strspn(text, "0123456789") != n || (*limit = n > 4 ? 100000 : atoi(text)) < 1) {
        *limit = 0;
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "limit",
                                    "limit must be an integer from 1 to 500");
    }
    if (*limit > 500)
        *limit = 501;
    return 0;
}

static void audit_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    char *actor = cdb_request_query_param(r, "actor"), *action = cdb_request_query_param(r, "action"),
         *since = cdb_request_query_param(r, "since"), *until = cdb_request_query_param(r, "until"),
         *limit = cdb_request_query_param(r, "limit"), *cursor = cdb_request_query_param(r, "cursor");
    cdb_audit_query q = {.actor = actor, .action = action, .since = since, .until = until, .cursor = cursor};
    int rc = parse_limit(limit, &q.limit, &err);
    if (rc == 0)
        rc = cdb_audit_list(r->svc, &r->principal, &q, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
    free(actor);
    free(action);
    free(since);
    free(until);
    free(limit);
    free(cursor);
}

static void audit_verify(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_audit_verify(r->svc, &r->principal, &out, &err);
    cdb_request_finish_result(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_audit[] = {
    {EVHTTP_REQ_GET, "/api/v1/admin/audit", audit_list, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {EVHTTP_REQ_GET, "/api/v1/admin/audit/verify", audit_verify, CDB_RUN_WORKER, CDB_AUTH_ADMIN},
    {0},
};
