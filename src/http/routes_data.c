/*
 * routes_data.c - /api/v1/data (API.md "Data"): structured queries and
 * transactions (with Idempotency-Key) and their outcome, over cdb_data_query,
 * cdb_data_transaction_idem and cdb_data_transaction_status. Any
 * authenticated caller; what it may see is decided by PostgreSQL (its
 * database role and row-level security).
 */
#include "coredb/data.h"
#include "http_internal.h"
#include "coredb/leases.h"

/*
 * X-Connection-ID: the call runs on that lease's reserved connection
 * (coredb/leases.h). False with the answer set when refused.
 */
static bool lease_begin(cdb_request *r, const char **id)
{
    *id = cdb_request_field(r, "X-Connection-ID");
    if (!*id)
        return true;
    cdb_error err;
    cdb_error_init(&err);
    if (cdb_lease_use_begin(r->svc, &r->principal, *id, &err) < 0) {
        cdb_request_fail(r, &err);
        cdb_error_destroy(&err);
        return false;
    }
    return true;
}

static void lease_end(cdb_request *r, const char *id)
{
    if (id)
        cdb_lease_use_end(r->svc, id);
}

static void data_query(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    char *body = NULL;
    const char *lease = NULL;
    if (!lease_begin(r, &lease))
        return;
    if (cdb_data_query(r->svc, &r->principal, r->body, &body, &err) < 0)
        cdb_request_fail(r, &err);
    else
        cdb_request_reply_text(r, 200, body);
    lease_end(r, lease);
    cdb_error_destroy(&err);
}

static void data_transaction(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_idempotency idem = {.key = cdb_request_field(r, "Idempotency-Key")};
    const char *lease = NULL;
    if (!lease_begin(r, &lease))
        return;
    int rc = cdb_data_transaction_idem(r->svc, &r->principal, r->body, &idem, &err);
    lease_end(r, lease);
    cdb_request_finish_idem(r, rc, &idem, &err);
}

static void data_transaction_status(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_data_transaction_status(r->svc, &r->principal, r->params[0], &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void data_tables(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_data_tables(r->svc, &r->principal, &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

const cdb_route cdb_routes_data[] = {
    {EVHTTP_REQ_GET, "/api/v1/data/tables", data_tables, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_POST, "/api/v1/data/query", data_query, CDB_RUN_CACHED, CDB_AUTH_USER},
    {EVHTTP_REQ_POST, "/api/v1/data/transaction", data_transaction, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_GET, "/api/v1/data/transactions/{transaction_id}", data_transaction_status,
     CDB_RUN_WORKER, CDB_AUTH_USER},
    {0},
};
