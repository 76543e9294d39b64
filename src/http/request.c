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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include "coredb/log.h"
#include "coredb/result.h"
#include "core/metrics.h"
#include "core/kvtable.h"
#include "core/timeutil.h"

#define MEDIA_JSON "application/json"
#define MEDIA_V1   "application/vnd.visiobook.v1+json"

/*
 * Handlers pass what they built straight in: a NULL body where one was
 * due means an allocation failed on the way (json_pack, json_dumps), which
 * answers 500 INTERNAL_ERROR like every other out-of-memory failure
 * (docs/architecture.md, "Out of memory") rather than an empty 200.
 */
static bool reply_missing(cdb_request *r, int status, const void *body)
{
    if (body || status == 204 || status == 304)
        return false;
    cdb_error e;
    cdb_error_init(&e);
    cdb_error_oom(&e);
    cdb_request_fail(r, &e);
    cdb_error_destroy(&e);
    return true;
}

/* Gives back the bytes of a body by reference not handed to the socket. */
static void drop_ref(cdb_request *r)
{
    if (r->response_ref.release)
        r->response_ref.release(r->response_ref.data, r->response_ref.len, r->response_ref.arg);
    memset(&r->response_ref, 0, sizeof r->response_ref);
}

void cdb_request_reply(cdb_request *r, int status, json_t *body)
{
    drop_ref(r);
    json_decref(r->response);
    r->response = NULL;
    if (reply_missing(r, status, body))
        return;
    r->status = status;
    r->response = body;
}

void cdb_request_reply_text(cdb_request *r, int status, char *text)
{
    drop_ref(r);
    free(r->response_text);
    r->response_text = NULL;
    if (reply_missing(r, status, text))
        return;
    r->status = status;
    r->response_text = text;
}

void cdb_request_reply_ref(cdb_request *r, int status, const char *prefix, const char *data, size_t len,
                           cdb_body_release release, void *arg, const char *suffix)
{
    drop_ref(r);
    free(r->response_text);
    r->response_text = NULL;
    json_decref(r->response);
    r->response = NULL;
    r->response_ref.data = data;
    r->response_ref.len = len;
    r->response_ref.release = release;
    r->response_ref.arg = arg;
    r->response_ref.prefix = cdb_arena_strdup(r->arena, prefix ? prefix : "");
    r->response_ref.suffix = cdb_arena_strdup(r->arena, suffix ? suffix : "");
    if (!r->response_ref.prefix || !r->response_ref.suffix) {
        drop_ref(r);
        reply_missing(r, status, NULL);
        return;
    }
    r->status = status;
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

void cdb_request_finish_result(cdb_request *r, int rc, int status, json_t *data, cdb_error *err)
{
    json_t *body = NULL;
    if (rc == 0 && !(body = cdb_result_object(NULL, data)))
        rc = cdb_error_oom(err);
    json_decref(data);
    cdb_request_finish(r, rc, status, body, err);
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

/*
 * 12 unpredictable bytes for a request id: a ChaCha20 keystream block per
 * id under a key each thread draws once, the id's number as the nonce. As
 * unguessable as randombytes_buf, without its getrandom(2) per call: that
 * was one system call of every request (strace of a miss run, issue 8).
 */
static void request_id_bytes(unsigned char out[12])
{
    static _Thread_local unsigned char key[crypto_stream_chacha20_KEYBYTES];
    static _Thread_local uint64_t next;   /* 0: no key drawn on this thread yet */
    unsigned char nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    if (next == 0) {
        randombytes_buf(key, sizeof key);
        next = 1;
    }
    _Static_assert(sizeof next <= sizeof nonce, "the id's number is the nonce");
    memcpy(nonce, &next, sizeof next);
    next++;
    crypto_stream_chacha20(out, 12, nonce, key);
}

/* X-Request-ID is echoed when it is 1..128 printable ASCII characters. */
static void assign_request_id(cdb_request *r)
{
    const char *given = cdb_request_field(r, "X-Request-ID");
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
    request_id_bytes(raw);
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
    const char *accept = cdb_request_field(r, "Accept");
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

/* Checks the media type of the body (conn.c has checked its size). */
static bool check_body_type(cdb_request *r)
{
    if (r->raw_body_len == 0)
        return true;
    const char *ctype = cdb_request_field(r, "Content-Type");
    size_t base_len = ctype ? strcspn(ctype, ";") : 0;
    while (base_len && ctype[base_len - 1] == ' ')
        base_len--;
    if (!ctype || !((base_len == strlen(MEDIA_JSON) && strncasecmp(ctype, MEDIA_JSON, base_len) == 0) ||
                    (base_len == strlen(MEDIA_V1) && strncasecmp(ctype, MEDIA_V1, base_len) == 0))) {
        cdb_request_failf(r, CDB_ERR_UNSUPPORTED_MEDIA_TYPE, "Request body must be application/json");
        return false;
    }
    return true;
}

/* Parses the copied body (after authentication, see cdb_request_admit). */
static bool parse_body(cdb_request *r)
{
    if (r->raw_body_len == 0 || r->body)   /* the loop may have parsed it (loop_admit.c) */
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
    const char *h = cdb_request_field(r, "Authorization");
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
    r->bearer = cdb_arena_strdup(r->arena, tok);
    if (!r->bearer) {
        cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
        return false;
    }
    return true;
}

/*
 * A token the loop verified before is taken as it was, until the moment
 * verification would refuse it: its exp plus JWT_CLOCK_SKEW (its nbf and iat
 * only grow truer with time). The table is keyed by the whole token,
 * signature included, and lives on the loop's thread; the secret does not
 * change while the process runs. It spares the base64, the claims' JSON and
 * the HMAC that otherwise cost a cache hit more than anything else (bench/
 * RESULTS.md, the engine's profile). Refused tokens are never kept.
 */
static bool verified_before(cdb_request *r)
{
    size_t len;
    const char *p = r->loop->verified ? cdb_kvtable_get(r->loop->verified, r->bearer, &len, NULL,
                                                        cdb_wall_s() * 1000) : NULL;
    if (!p || len != sizeof r->principal)
        return false;
    memcpy(&r->principal, p, sizeof r->principal);
    return true;
}

static void remember_verified(cdb_request *r)
{
    if (!r->loop->verified || strlen(r->bearer) > CDB_VERIFIED_TOKEN_MAX)
        return;
    /* exp is ours (signed by this secret), but keep the arithmetic in range whatever it says */
    int64_t until_s = r->principal.token_exp < INT64_MAX / 2000 ? r->principal.token_exp + r->loop->cfg->jwt_clock_skew_s
                                                                : INT64_MAX / 2000;
    int64_t until_ms = until_s * 1000;
    cdb_kvtable_put(r->loop->verified, r->bearer, (const char *)&r->principal, sizeof r->principal, until_ms,
                    cdb_wall_s() * 1000);
}

/*
 * The signature check is pure CPU (an HMAC) and runs here on the loop, so a
 * flood of forged tokens never reaches a worker; liveness of the session
 * needs Redis or PostgreSQL and waits for cdb_request_admit.
 */
static bool check_token(cdb_request *r)
{
    cdb_route_auth mode = r->route->auth;
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
    if (verified_before(r))
        return true;
    cdb_error e;
    cdb_error_init(&e);
    if (cdb_session_verify_token(r->svc, r->bearer, &r->principal, &e) < 0) {
        cdb_request_header(r, "WWW-Authenticate", "Bearer");
        cdb_request_fail(r, &e);
        return false;
    }
    remember_verified(r);
    return true;
}

const char *cdb_request_field(const cdb_request *r, const char *name)
{
    for (int i = 0; i < r->head.nfields; i++)
        if (strcasecmp(r->head.fields[i].name, name) == 0)
            return r->head.fields[i].value;
    return NULL;
}

/* True when the comma-separated list has the token `want` (case-insensitive). */
static bool has_token(const char *list, const char *want)
{
    size_t n = strlen(want);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',' && *end != ' ' && *end != '\t')
            end++;
        if ((size_t)(end - p) == n && strncasecmp(p, want, n) == 0)
            return true;
        p = end;
    }
    return false;
}

bool cdb_request_wants_close(const cdb_request *r)
{
    const char *conn = cdb_request_field(r, "Connection");
    if (!r->head.bytes)
        return true;
    if (r->head.minor_version == 0)
        return !conn || !has_token(conn, "keep-alive");
    return conn && has_token(conn, "close");
}

/* Path and query from an origin-form ("/a?b") or absolute-form ("http://h/a?b") target. */
static bool split_target(cdb_request *r)
{
    const char *t = r->head.target ? r->head.target : "/";
    if (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0) {
        t = strstr(t, "//") + 2;
        t += strcspn(t, "/?");
    }
    size_t path_len = strcspn(t, "?");
    r->path = path_len ? cdb_arena_strndup(r->arena, t, path_len) : cdb_arena_strdup(r->arena, "/");
    r->query = t[path_len] == '?' ? cdb_arena_strdup(r->arena, t + path_len + 1) : NULL;
    return r->path && (t[path_len] != '?' || r->query);
}

cdb_request *cdb_request_new(cdb_conn *conn, cdb_arena *arena, cdb_http_head *head, char *body, size_t body_len)
{
    cdb_loop *loop = cdb_conn_loop(conn);
    if (!arena && !(arena = cdb_arena_new(loop->arenas)))
        return NULL;
    cdb_request *r = cdb_arena_calloc(arena, sizeof *r);
    if (!r) {
        cdb_arena_free(arena);
        return NULL;
    }
    r->arena = arena;
    r->conn = conn;
    r->loop = loop;
    r->server = r->loop->server;
    r->svc = r->loop->svc;
    r->start_us = cdb_mono_us();
    r->media_type = MEDIA_JSON;
    r->raw_body = body;
    r->raw_body_len = body_len;
    if (head) {
        r->head = *head;
        memset(head, 0, sizeof *head);
    }
    r->method = r->head.method_bit;
    cdb_error_init(&r->err);
    assign_request_id(r);
    snprintf(r->client_addr, sizeof r->client_addr, "%s", cdb_conn_peer(conn));
    cdb__forwarded_client(r);
    const char *ua = cdb_request_field(r, "User-Agent");
    if (ua)
        r->user_agent = cdb_arena_strndup(r->arena, ua, 256);
    if (!split_target(r)) {
        cdb_request_free(r);
        return NULL;
    }
    return r;
}

bool cdb_request_prepare(cdb_request *r, const cdb_route *const *tables)
{
    return negotiate(r) && cdb_router_match(r, tables) && check_token(r) && check_body_type(r);
}

bool cdb_request_admit(cdb_request *r)
{
    return cdb_admit_caller(r) && parse_body(r);
}

void cdb_request_free(cdb_request *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->nparams; i++)
        free(r->params[i]);
    json_decref(r->body);
    json_decref(r->response);
    free(r->response_text);
    drop_ref(r);
    cdb_error_destroy(&r->err);
    cdb_arena_free(r->arena);      /* r, its head, body, path, token: all in it */
}

/* The error object of the library's result form (core/result.c), so the CLI
 * and HTTP show one error alike, plus what only HTTP has: the request id. */
static json_t *error_envelope(cdb_request *r)
{
    char ts[32];
    cdb_iso_now(ts, sizeof ts);
    json_t *e = cdb_result_error_object(&r->err);
    if (!e)
        return NULL;
    json_object_set_new(e, "timestamp", json_string(ts));
    json_object_set_new(e, "request_id", json_string(r->request_id));
    return json_pack("{s:o}", "error", e);
}

static void access_log(cdb_request *r, int64_t elapsed_us, bool client_gone)
{
    /* 501 is the client's unknown method, not a fault of ours */
    cdb_log_level level = r->status >= 500 && r->status != 501 ? CDB_LOG_WARN : CDB_LOG_INFO;
    if (!cdb_log_enabled(level))
        return;
    json_t *f = json_object();
    if (r->head.method)
        json_object_set_new(f, "method", json_stringn(r->head.method, strnlen(r->head.method, 16)));
    json_object_set_new(f, "path", json_string(r->path ? r->path : "-"));
    json_object_set_new(f, "route", json_string(r->route ? r->route->pattern : "-"));
    json_object_set_new(f, "status", json_integer(r->status));
    json_object_set_new(f, "duration_ms", json_real((double)elapsed_us / 1000.0)); /* µs: 3 decimals */
    json_object_set_new(f, "request_id", json_string(r->request_id));
    if (r->err.code != CDB_OK)
        json_object_set_new(f, "error", json_string(cdb_err_name(r->err.code)));
    if (client_gone)
        json_object_set_new(f, "client_gone", json_true());
    cdb_log_fields(level, "http.request", f);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return status < 300 ? "OK" : "Error";
}

/* The Date header, formatted once a second per loop (loop thread only). */
static const char *date_header(cdb_loop *loop)
{
    time_t now = time(NULL);
    if (now != loop->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(loop->date, sizeof loop->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        loop->date_at = now;
    }
    return loop->date;
}

/*
 * An answer's head, formatted on the stack and added to the connection's
 * output in one piece: every add to that buffer runs its callbacks. The
 * largest head (8 fields of 64 bytes, a 128-byte request id) takes about
 * 1.2 KiB.
 */
typedef struct head_buf {
    char bytes[4096];
    size_t n;
    bool over;                     /* did not fit: the answer fails (never seen) */
} head_buf;

/*
 * Appends the strings up to a NULL. Copies, not vsnprintf: formatting the
 * head was a fifth of a cache hit's instructions (bench/hit_cost.sh).
 */
static void head_add(head_buf *h, ...) __attribute__((sentinel));
static void head_add(head_buf *h, ...)
{
    va_list ap;
    va_start(ap, h);
    for (const char *s; (s = va_arg(ap, const char *)) && !h->over;) {
        size_t k = strlen(s);
        if (k >= sizeof h->bytes - h->n) {
            h->over = true;
        } else {
            memcpy(h->bytes + h->n, s, k);
            h->n += k;
        }
    }
    va_end(ap);
}

/* n in decimal, into buf (at least 21 bytes); returns buf. */
static const char *decimal(char *buf, size_t n)
{
    char *p = buf + 20;
    *p = '\0';
    do {
        *--p = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    return p;
}

void cdb_body_release_free(const void *data, size_t len, void *arg)
{
    (void)data, (void)len;
    free(arg);
}

/*
 * Adds a body's bytes: a small one copied (cheaper than the chain a
 * reference costs), a large one by reference, with release called when
 * libevent has written or dropped them; release is called (or taken by
 * libevent) in every case. False on out of memory.
 */
static bool add_body(struct evbuffer *out, const char *data, size_t len, cdb_body_release release, void *arg)
{
    if (len < CDB_HTTP_REF_MIN) {
        int rc = len ? evbuffer_add(out, data, len) : 0;
        release(data, len, arg);
        return rc == 0;
    }
    if (evbuffer_add_reference(out, data, len, release, arg) == 0)
        return true;
    release(data, len, arg);       /* libevent calls it only once the reference is added */
    return false;
}

/*
 * The whole answer (status line, headers, body) appended to out (the
 * connection's output buffer: no buffer of its own to allocate, fill and
 * move); false on out of memory, when out may hold part of it.
 * The body's bytes are not copied on their way to the socket from this
 * size on (CDB_HTTP_REF_MIN): a serialized text is handed over with free as
 * its release, a body by reference (a cache hit's bytes in the loop's
 * first-level cache or taken from Redis's reply) with its own release.
 */
static bool render(cdb_request *r, bool closing, struct evbuffer *out)
{
    bool failed = r->err.code != CDB_OK;
    json_t *body = failed ? error_envelope(r) : json_incref(r->response);
    char *text = NULL;
    bool by_ref = false;
    if (body)
        text = json_dumps(body, JSON_COMPACT);
    else if (!failed && r->response_text)
        text = r->response_text, r->response_text = NULL;
    else if (!failed && r->response_ref.release)
        by_ref = true;
    json_decref(body);
    /* never a body (RFC 9110 15.3.5, 15.4.5); a HEAD answer says the body's length */
    bool no_body = r->status == 204 || r->status == 304;
    if (no_body) {
        free(text);
        text = NULL;
        by_ref = false;
    }
    size_t pre = by_ref ? strlen(r->response_ref.prefix) : 0, post = by_ref ? strlen(r->response_ref.suffix) : 0;
    size_t len = text ? strlen(text) : by_ref ? pre + r->response_ref.len + post : 0;
    bool has_body = text || by_ref;
    head_buf h = {.n = 0};
    char status[21], length[21];
    head_add(&h, "HTTP/1.1 ", decimal(status, (size_t)r->status), " ", reason_phrase(r->status), "\r\nDate: ",
             date_header(r->loop), "\r\nX-Request-ID: ", r->request_id, "\r\n", NULL);
    for (int i = 0; i < r->nheaders; i++)
        head_add(&h, r->headers[i].name, ": ", r->headers[i].value, "\r\n", NULL);
    if (has_body)
        head_add(&h, "Content-Type: ", r->media_type, "\r\n", NULL);
    if (!no_body)
        head_add(&h, "Content-Length: ", decimal(length, len), "\r\n", NULL);
    if (closing)
        head_add(&h, "Connection: close\r\n", NULL);
    else if (r->head.minor_version == 0)
        head_add(&h, "Connection: keep-alive\r\n", NULL);
    head_add(&h, "\r\n", by_ref && r->method != EVHTTP_REQ_HEAD ? r->response_ref.prefix : "", NULL);
    if (h.over || evbuffer_add(out, h.bytes, h.n) != 0) {
        free(text);
        return false;              /* the reference is released with the request */
    }
    bool ok = true;
    if (text && r->method != EVHTTP_REQ_HEAD)
        ok = add_body(out, text, len, cdb_body_release_free, text);
    else
        free(text);
    if (by_ref && r->method != EVHTTP_REQ_HEAD) {
        cdb_body_release release = r->response_ref.release;
        r->response_ref.release = NULL;        /* libevent's from here (or released by add_body) */
        /* the prefix went with the head */
        ok = add_body(out, r->response_ref.data, r->response_ref.len, release, r->response_ref.arg) &&
             evbuffer_add(out, r->response_ref.suffix, post) == 0;
    }
    return ok;                     /* what out references is released with it */
}

/*
 * Counts the answer (core/metrics.c: lock-free per-thread counters). The
 * route label is the matched route's template, "unmatched" otherwise, so
 * a path never becomes a label.
 */
static void record_metrics(cdb_request *r, int64_t elapsed_us)
{
    int route = cdb_server_route_metric(r->server, r->route);
    const char *method = r->method ? r->head.method : NULL;  /* served methods only; others "other" */
    cdb__metrics_http(route, method, r->status, elapsed_us);
    if (r->status >= 400)
        cdb__metrics_http_error(route, method, r->status, r->err.code, r->request_id);
    const char *version = cdb_request_field(r, "X-Client-Version");
    if (version)
        cdb__metrics_client_version(version);
}

void cdb_request_send(cdb_request *r, bool closing)
{
    if (r->status == 0)
        cdb_request_failf(r, CDB_ERR_INTERNAL_ERROR, "Internal error");
    bool gone = true;
    if (r->conn) {
        gone = cdb_conn_gone(r->conn);
        closing = closing || cdb_request_wants_close(r);
        struct evbuffer *out = gone ? NULL : cdb_conn_output(r->conn);
        cdb_conn_send(r->conn, out && render(r, closing, out), closing);
        r->conn = NULL;
    }
    int64_t elapsed_us = cdb_mono_us() - r->start_us;
    access_log(r, elapsed_us, gone);
    record_metrics(r, elapsed_us);
}
