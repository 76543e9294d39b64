/*
 * routes_users.c - /users and /api/v1/users (API.md "Users"): thin
 * adapters from HTTP to the library's cdb_users_* calls, which hold every
 * rule (validation, self-or-admin, roles).
 */
#include "http_internal.h"

static void users_create(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    cdb_idempotency idem = {.key = cdb_request_field(r, "Idempotency-Key")};
    int rc = cdb_users_create_idem(r->svc, &r->principal, r->body, &idem, &err);
    cdb_request_finish_idem(r, rc, &idem, &err);
}

static void users_get(cdb_request *r, const char *by)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *user = NULL;
    int rc = cdb_users_get(r->svc, &r->principal, by, r->params[0], &user, &err);
    cdb_request_finish(r, rc, 200, user, &err);
}

static void users_get_by_id(cdb_request *r) { users_get(r, "id"); }
static void users_get_by_email(cdb_request *r) { users_get(r, "email"); }
static void users_get_by_username(cdb_request *r) { users_get(r, "username"); }

static void users_update(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *user = NULL;
    int rc = cdb_users_update(r->svc, &r->principal, r->params[0], r->body, &user, &err);
    cdb_request_finish(r, rc, 200, user, &err);
}

static void users_delete(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb_users_delete(r->svc, &r->principal, r->params[0], &err);
    cdb_request_finish(r, rc, 204, NULL, &err);
}

#define USER_ROUTES(prefix)                                                                        \
    {EVHTTP_REQ_POST, prefix "/", users_create, CDB_RUN_SLOW, CDB_AUTH_OPTIONAL},                  \
    {EVHTTP_REQ_POST, prefix, users_create, CDB_RUN_SLOW, CDB_AUTH_OPTIONAL},                      \
    {EVHTTP_REQ_GET, prefix "/email/{email}", users_get_by_email, CDB_RUN_WORKER, CDB_AUTH_USER},  \
    {EVHTTP_REQ_GET, prefix "/username/{username}", users_get_by_username, CDB_RUN_WORKER,         \
     CDB_AUTH_USER},                                                                               \
    {EVHTTP_REQ_GET, prefix "/{user_id}", users_get_by_id, CDB_RUN_WORKER, CDB_AUTH_USER},         \
    {EVHTTP_REQ_PUT, prefix "/{user_id}", users_update, CDB_RUN_SLOW, CDB_AUTH_USER},              \
    {EVHTTP_REQ_DELETE, prefix "/{user_id}", users_delete, CDB_RUN_WORKER, CDB_AUTH_USER}

const cdb_route cdb_routes_users[] = {
    USER_ROUTES("/users"),
    USER_ROUTES("/api/v1/users"),
    {0},
};
