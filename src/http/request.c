/*
 * request.c - the life of one HTTP request on its loop: identify it,
 * negotiate the media type, read the body, answer, log.
 *
 * Everything here runs on the loop thread except the handler of a
 * CDB_RUN_WORKER route (see server.c for the hand-off).
 */
#include "http_internal.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "coredb/log.h"
#include "coredb/timeutil.h"

#define MEDIA_JSON "application/json"
#define MEDIA_V1   "application/vnd.visiobook.v1+json"

void cdb_request_reply(cdb_request *r, int status, json_t *body)
{
    json_decref(r->response);
    r->status = status;
    r->response = body;
}

void cdb_request_reply_text(cdb_request *r, int status, char *text)
{
    free(r->response_text);
    r->status = status;
    r->response_text = text;
}

void cdb_request_finish(cdb_request *r, int rc, int status, json_t *body, cdb_error *err)
{
    if (rc < 0) {
        json_decref(body);
        cdb_request_fail(r, err);
    } else {
        cdb_request_reply(r, status, body);
    }
    cdb_error_destroy(err);
}

void cdb_request_finish_idem(cdb_request *r, int rc, cdb_idempotency *idem, cdb_error *err)
{
    if (rc < 0) {
        cdb_request_fail(r, err);
    } else {
        if (idem->replayed)
            cdb_request_header(r, "Idempotent-Replayed", "true");
        cdb_request_reply_text(r, idem->status, idem->body);
        idem->body = NULL;
    }
    cdb_idempotency_destroy(idem);
    cdb_error_destroy(err);
}

void cdb_request_fail(cdb_request *r, cdb_error *err)
{
    cdb_error_move(&r->err, err);
    if (r->err.code == CDB_OK)
        cdb_error_set(&r->err, CDB_ERR_INTERNAL_ERROR, "Internal error");
    r->status = cdb_err_http_status(r->err.code);
}

void cdb_request_failf(cdb_request *r, cdb_err code, const char *fmt, ...)
{
    cdb_error e;
    cdb_error_init(&e);
    va_list ap;
    va_start(ap, fmt);
    cdb_error_vset(&e, code, fmt, ap);
    va_end(ap);
    cdb_request_fail(r, &e);
}

void cdb_request_header(cdb_request *r, const char *name, const char *fmt, ...)
{
    if (r->nheaders == CDB_HTTP_MAX_HEADERS)
        return;
    r->headers[r->nheaders].name = name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->headers[r->nheaders].value, sizeof r->headers[0].value, fmt, ap);
    va_end(ap);
    r->nheaders++;
}

char *cdb_request_query_param(const cdb_request *r, const char *name)
{
    if (!r->query)
        return NULL;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    char *value = NULL;
    if (evhttp_parse_query_str(r->query, &q) == 0) {
        const char *v = evhttp_find_header(&q, name);
        if (v)
            value = strdup(v);
    }
    evhttp_clear_headers(&q);
    return value;
}

/* X-Request-ID is echoed when it is 1..128 printable ASCII characters. */
static void assign_request_id(cdb_request *r)
{
    const char *given = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "X-Request-ID");
    if (given) {
        size_t n = strlen(given);
        bool ok = n > 0 && n <= CDB_REQUEST_ID_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = given[i] > 0x20 && given[i] < 0x7f;
        if (ok) {
            memcpy(r->request_id, given, n + 1);
            return;
        }
    }
    unsigned char raw[12];
    randombytes_buf(raw, sizeof raw);
    memcpy(r->request_id, "req_", 4);
    sodium_bin2hex(r->request_id + 4, sizeof r->request_id - 4, raw, sizeof raw);
}

/*
 * Accept negotiation. Absent, any-type, application/any or application/json
 * → JSON; application/vnd.visiobook.v1+json → echoed; another
 * vnd.visiobook version or only unrelated types → 406.
 */
static bool negotiate(cdb_request *r)
{
    const char *accept = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Accept");
    r->media_type = MEDIA_JSON;
    if (!accept || !*accept)
        return true;
    bool json_ok = false, v1 = false;
    const char *p = accept;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',' && *end != ';')
            end++;
        size_t n = (size_t)(end - p);
        while (n && p[n - 1] == ' ')
            n--;
#define IS(lit) (n == sizeof(lit) - 1 && strncasecmp(p, lit, n) == 0)
        if (IS(MEDIA_V1))
            v1 = true;
        else if (IS("*/*") || IS("application/*") || IS(MEDIA_JSON))
            json_ok = true;
#undef IS
        p = end;
        while (*p && *p != ',')
            p++; /* skip parameters such as ;q=0.9 */
    }
    if (v1) {
        r->media_type = MEDIA_V1;
        return true;
    }
    if (json_ok)
        return true;
    cdb_request_failf(r, CDB_ERR_NOT_ACCEPTABLE,
                      "Acceptable media types: " MEDIA_JSON ", " MEDIA_V1);
    return false;
}

/* Checks size and media type of the body and copies it for later parsing. */
static bool take_body(cdb_request *r)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->ev);
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return true;
    if (len > CDB_HTTP_BODY_LIMIT) {
        cdb_request_header(r, "Connection", "close");
        cdb_request_failf(r, CDB_ERR_PAYLOAD_TOO_LARGE, "Request body exceeds %d bytes",
                          CDB_HTTP_BODY_LIMIT);
        return false;
    }
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Content-Type");
    size_t base_len = ctype ? strcspn(ctype, ";") : 0;
    while (base_len && ctype[base_len - 1] == ' ')
        base_len--;
    if (!ctype || !((base_len == strlen(MEDIA_JSON) && strncasecmp(ctype, MEDIA_JSON, base_len) == 0) ||
                    (base_len == strlen(MEDIA_V1) && strncasecmp(ctype, MEDIA_V1, base_len) == 0))) {
        cdb_request_failf(r, CDB_ERR_UNSUPPORTED_MEDIA_TYPE, "Request body must be application/json");
        return false;
    }
    r->raw_body = malloc(len);
    if (!r->raw_body) {
        cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
        return false;
    }
    evbuffer_copyout(in, r->raw_body, len);
    r->raw_body_len = len;
    return true;
}

/* Parses the copied body (after authentication, see cdb_request_admit). */
static bool parse_body(cdb_request *r)
{
    if (!r->raw_body)
        return true;
    json_error_t jerr;
    r->body = json_loadb(r->raw_body, r->raw_body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r->body) {
        cdb_error e;
        cdb_error_init(&e);
        cdb_error_set(&e, CDB_ERR_INVALID_JSON, "Request body is not valid JSON");
        cdb_error_detail(&e, "line", json_integer(jerr.line));
        cdb_error_detail(&e, "column", json_integer(jerr.column));
        cdb_request_fail(r, &e);
        return false;
    }
    return true;
}

/* "Bearer <token>" (case-insensitive scheme); anything else is no token. */
static bool take_bearer(cdb_request *r)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(r->ev), "Authorization");
    if (!h)
        return true;
    if (strncasecmp(h, "Bearer ", 7) != 0) {
        cdb_request_header(r, "WWW-Authenticate", "Bearer");
        cdb_request_failf(r, CDB_ERR_UNAUTHORIZED, "Authorization must be a Bearer token");
        return false;
    }
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    r->bearer = strdup(tok);
    if (!r->bearer) {
        cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
        return false;
    }
    return true;
}

/*
 * The signature check is pure CPU (an HMAC) and runs here on the loop, so a
 * flood of forged tokens never reaches a worker; liveness of the session
 * needs Redis or PostgreSQL and waits for cdb_request_admit.
 */
static bool check_token(cdb_request *r)
{
    cdb_auth_mode mode = r->route->auth;
    if (mode == CDB_AUTH_PUBLIC || mode == CDB_AUTH_ANON)
        return true;
    if (!take_bearer(r))
        return false;
    if (!r->bearer) {
        if (mode == CDB_AUTH_OPTIONAL)
            return true;
        cdb_request_header(r, "WWW-Authenticate", "Bearer");
        cdb_request_failf(r, CDB_ERR_UNAUTHORIZED, "Authentication required");
        return false;
    }
    cdb_error e;
    cdb_error_init(&e);
    if (cdb_auth_verify_token(r->svc, r->bearer, &r->principal, &e) < 0) {
        cdb_request_header(r, "WWW-Authenticate", "Bearer");
        cdb_request_fail(r, &e);
        return false;
    }
    return true;
}

cdb_request *cdb_request_new(struct evhttp_request *ev, cdb_http_server *srv, cdb_loop *loop,
                             cdb_service *svc)
{
    cdb_request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ev = ev;
    r->server = srv;
    r->loop = loop;
    r->svc = svc;
    r->start_us = cdb_mono_us();
    r->method = evhttp_request_get_command(ev);
    r->media_type = MEDIA_JSON;
    cdb_error_init(&r->err);
    assign_request_id(r);

    char *peer = NULL;
    ev_uint16_t peer_port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(ev), &peer, &peer_port);
    snprintf(r->client_addr, sizeof r->client_addr, "%s", peer ? peer : "unknown");
    const char *ua = evhttp_find_header(evhttp_request_get_input_headers(ev), "User-Agent");
    if (ua)
        r->user_agent = strndup(ua, 256);
    /* copied here: handlers run on workers and must not touch ev */
    const char *ik = evhttp_find_header(evhttp_request_get_input_headers(ev), "Idempotency-Key");
    if (ik && !(r->idempotency_key = strdup(ik))) {
        cdb_request_free(r);
        return NULL;
    }

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ev);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    r->path = strdup(path && *path ? path : "/");
    r->query = query ? strdup(query) : NULL;
    if (!r->path || (query && !r->query)) {
        cdb_request_free(r);
        return NULL;
    }
    return r;
}

bool cdb_request_prepare(cdb_request *r, const cdb_route *const *tables)
{
    return negotiate(r) && cdb_router_match(r, tables) && check_token(r) && take_body(r);
}

bool cdb_request_admit(cdb_request *r)
{
    return cdb_admit_caller(r) && parse_body(r);
}

void cdb_request_free(cdb_request *r)
{
    if (!r)
        return;
    free(r->path);
    free(r->query);
    for (int i = 0; i < r->nparams; i++)
        free(r->params[i]);
    free(r->raw_body);
    free(r->bearer);
    free(r->user_agent);
    free(r->idempotency_key);
    json_decref(r->body);
    json_decref(r->response);
    free(r->response_text);
    cdb_error_destroy(&r->err);
    free(r);
}

static json_t *error_envelope(cdb_request *r)
{
    char ts[32];
    cdb_iso_now(ts, sizeof ts);
    json_t *e = json_object();
    json_object_set_new(e, "code", json_string(cdb_err_name(r->err.code)));
    json_object_set_new(e, "message", json_string(r->err.message));
    json_object_set_new(e, "details", r->err.details ? json_incref(r->err.details) : json_object());
    json_object_set_new(e, "timestamp", json_string(ts));
    json_object_set_new(e, "request_id", json_string(r->request_id));
    return json_pack("{s:o}", "error", e);
}

static void access_log(cdb_request *r, int64_t elapsed_us)
{
    cdb_log_level level = r->status >= 500 ? CDB_LOG_WARN : CDB_LOG_INFO;
    if (!cdb_log_enabled(level))
        return;
    json_t *f = json_object();
    static const struct { enum evhttp_cmd_type m; const char *n; } names[] = {
        {EVHTTP_REQ_GET, "GET"}, {EVHTTP_REQ_POST, "POST"}, {EVHTTP_REQ_PUT, "PUT"},
        {EVHTTP_REQ_DELETE, "DELETE"}, {EVHTTP_REQ_PATCH, "PATCH"}, {EVHTTP_REQ_HEAD, "HEAD"},
        {EVHTTP_REQ_OPTIONS, "OPTIONS"}, {EVHTTP_REQ_TRACE, "TRACE"}, {EVHTTP_REQ_CONNECT, "CONNECT"},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (names[i].m == r->method)
            json_object_set_new(f, "method", json_string(names[i].n));
    json_object_set_new(f, "path", json_string(r->path));
    json_object_set_new(f, "route", json_string(r->route ? r->route->pattern : "-"));
    json_object_set_new(f, "status", json_integer(r->status));
    json_object_set_new(f, "duration_ms", json_real((double)elapsed_us / 1000.0));
    json_object_set_new(f, "request_id", json_string(r->request_id));
    if (r->err.code != CDB_OK)
        json_object_set_new(f, "error", json_string(cdb_err_name(r->err.code)));
    if (!r->ev)
        json_object_set_new(f, "client_gone", json_true());
    cdb_log_fields(level, "http.request", f);
}

void cdb_request_send(cdb_request *r, bool closing)
{
    if (r->status == 0)
        cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
    if (r->ev) {
        struct evkeyvalq *out = evhttp_request_get_output_headers(r->ev);
        evhttp_add_header(out, "X-Request-ID", r->request_id);
        for (int i = 0; i < r->nheaders; i++)
            evhttp_add_header(out, r->headers[i].name, r->headers[i].value);
        if (closing)
            evhttp_add_header(out, "Connection", "close");
        bool failed = r->err.code != CDB_OK;
        json_t *body = failed ? error_envelope(r) : json_incref(r->response);
        char *text = NULL;
        if (body)
            text = json_dumps(body, JSON_COMPACT);
        else if (!failed && r->response_text)
            text = r->response_text, r->response_text = NULL;
        json_decref(body);
        struct evbuffer *buf = NULL;
        if (text && r->status != 204 && r->method != EVHTTP_REQ_HEAD && (buf = evbuffer_new())) {
            evhttp_add_header(out, "Content-Type", r->media_type);
            evbuffer_add(buf, text, strlen(text));
        }
        free(text);
        evhttp_connection_set_closecb(evhttp_request_get_connection(r->ev), NULL, NULL);
        evhttp_send_reply(r->ev, r->status, NULL, buf);
        if (buf)
            evbuffer_free(buf);
    }
    access_log(r, cdb_mono_us() - r->start_us);
}
