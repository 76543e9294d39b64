/*
 * routes_users.c - /users and /api/v1/users (API.md "Users"): thin
 * adapters from HTTP to the library's cdb_users_* calls, which hold every
 * rule (validation, self-or-admin, roles).
 */
#include <stdlib.h>
#include <string.h>

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

/* limit as given: absent -> 0 (the default), anything but 1..3 digits -> -1
 * (refused by the library, which names the parameter). */
static int parse_limit(const char *text)
{
    if (!text)
        return 0;
    size_t n = strlen(text);
    if (n == 0 || n > 3 || strspn(text, "0123456789") != n)
        return -1;
    int v = atoi(text);
    return v == 0 ? -1 : v;
}

static void users_list(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *page = NULL;
    char *limit = cdb_request_query_param(r, "limit");
    char *cursor = cdb_request_query_param(r, "cursor");
    char *email = cdb_request_query_param(r, "email");
    cdb_users_list_options opt = {.limit = parse_limit(limit), .cursor = cursor, .email = email};
    int rc = cdb_users_list(r->svc, &r->principal, &opt, &page, &err);
    free(limit);
    free(cursor);
    free(email);
    cdb_request_finish(r, rc, 200, page, &err);
}

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
    {EVHTTP_REQ_GET, prefix, users_list, CDB_RUN_WORKER, CDB_AUTH_USER},                           \
    {EVHTTP_REQ_GET, prefix "/", users_list, CDB_RUN_WORKER, CDB_AUTH_USER},                       \
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
