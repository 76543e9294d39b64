/*
 * routes_auth.c - /api/v1/auth (API.md "Authentication and sessions"):
 * login, refresh, logout, revoke and sessions, over the library's cdb_session_*.
 * Login runs on the hashing queue (CDB_RUN_SLOW): argon2id must not stall
 * other traffic.
 */
#include "http_internal.h"

#include <string.h>

/* A required string field of the body, or a VALIDATION_FAILED answer. */
static const char *body_string(cdb_request *r, const char *field)
{
    json_t *v = json_is_object(r->body) ? json_object_get(r->body, field) : NULL;
    if (json_is_string(v) && json_string_length(v) > 0 &&
        strlen(json_string_value(v)) == json_string_length(v))
        return json_string_value(v);
    cdb_error e;
    cdb_error_init(&e);
    cdb_error_set(&e, CDB_ERR_VALIDATION_FAILED, "%s is required and must be a string", field);
    cdb_error_detail(&e, "field", json_string(field));
    cdb_request_fail(r, &e);
    return NULL;
}

static void auth_login(cdb_request *r)
{
    const char *email = body_string(r, "email");
    const char *password = email ? body_string(r, "password") : NULL;
    if (!password)
        return;
    cdb_client_info client = {.address = r->client_addr, .user_agent = r->user_agent};
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_session_login(r->svc, email, password, &client, &out, &err);
    if (rc < 0 && err.code == CDB_ERR_RATE_LIMITED) {
        json_t *ra = err.details ? json_object_get(err.details, "retry_after") : NULL;
        cdb_request_header(r, "Retry-After", "%lld", json_is_integer(ra) ? (long long)json_integer_value(ra) : 60);
    }
    cdb_request_finish(r, rc, 200, out, &err);
}

static void auth_refresh(cdb_request *r)
{
    const char *token = body_string(r, "refresh_token");
    if (!token)
        return;
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_session_refresh(r->svc, token, &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void auth_logout(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_session_logout(r->svc, &r->principal, &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void auth_revoke(cdb_request *r)
{
    const char *user_id = body_string(r, "user_id");
    if (!user_id)
        return;
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_session_revoke_user(r->svc, &r->principal, user_id, &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void auth_sessions(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    json_t *out = NULL;
    int rc = cdb_session_list(r->svc, &r->principal, &out, &err);
    cdb_request_finish(r, rc, 200, out, &err);
}

static void auth_session_delete(cdb_request *r)
{
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb_session_delete(r->svc, &r->principal, r->params[0], &err);
    cdb_request_finish(r, rc, 204, NULL, &err);
}

const cdb_route cdb_routes_auth[] = {
    {EVHTTP_REQ_POST, "/api/v1/auth/login", auth_login, CDB_RUN_SLOW, CDB_AUTH_ANON},
    {EVHTTP_REQ_POST, "/api/v1/auth/refresh", auth_refresh, CDB_RUN_WORKER, CDB_AUTH_ANON},
    {EVHTTP_REQ_POST, "/api/v1/auth/logout", auth_logout, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_POST, "/api/v1/auth/revoke", auth_revoke, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_GET, "/api/v1/auth/sessions", auth_sessions, CDB_RUN_WORKER, CDB_AUTH_USER},
    {EVHTTP_REQ_DELETE, "/api/v1/auth/sessions/{session_id}", auth_session_delete, CDB_RUN_WORKER,
     CDB_AUTH_USER},
    {0},
};
