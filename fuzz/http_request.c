/*
 * http_request.c - libFuzzer harness: raw bytes as a client sends them,
 * through everything src/http does before a handler runs, without a socket.
 * conn.c and request.c are included to reach their statics, as
 * tests/unit/http/conn.c does: picohttpparser's tokenizer, copy_head,
 * check_framing (Host, Content-Length, Transfer-Encoding, version), the
 * chunked decoder, then cdb_request_new (X-Request-ID, User-Agent, the
 * target split into path and query), negotiate (Accept), the router with
 * the server's real route tables (percent-decoded {params}, 404/405/501),
 * check_token (Authorization: the Bearer scheme, then the signature and
 * claims with the service key below; fuzz/jwt_verify.c goes deeper),
 * check_body_type (Content-Type) - all of cdb_request_prepare - then
 * parse_body (JSON), a query parameter, Connection, and render, the
 * answer's bytes. Up to four pipelined requests per input.
 *
 * Oracles: no answer is a 5xx but 501 (nothing here may fail inside); the
 * answer's head is CRLF-terminated lines of printable characters (no
 * header injection through X-Request-ID or Allow); X-Request-ID is 1..128
 * bytes; a route that needs a token never goes on without a principal.
 */
#include <stdint.h>

#include "http/conn.c"
#include "http/request.c"
#include "security/service_state.h"

/* The token key of the service (fuzz/make-corpus.py signs seeds with it). */
static const unsigned char jwt_key[] = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
/* every peer a trusted proxy: the X-Forwarded-For walk (http/forwarded.c) runs on every request */
static cdb_config cfg = {.trusted_proxies = (char *)"0.0.0.0/0, ::/0"};
static struct cdb_service svc = {
    .cfg = &cfg,
    .jwt = {.secret = jwt_key, .secret_len = sizeof jwt_key - 1, .issuer = "coredb", .audience = "coredb-api",
            .leeway_s = 5},
};

static const cdb_route *const *route_tables(void)
{
    static const cdb_route *tables[] = {
        cdb_routes_health, cdb_routes_users, cdb_routes_auth, cdb_routes_data, cdb_routes_admin,
        cdb_routes_migrations, cdb_routes_audit, cdb_routes_dbauth, cdb_routes_access, cdb_routes_monitor,
        cdb_routes_metrics, cdb_routes_openapi, cdb_routes_leases, cdb_routes_encryption, NULL,
    };
    return tables;
}

static void die(const char *why, const char *bytes, size_t len)
{
    fprintf(stderr, "http oracle: %s in:\n%.*s\n", why, (int)len, bytes);
    abort();
}

/* The answer's head: "HTTP/1.1 NNN ...\r\n" then lines of printable bytes, then an empty line. */
static void check_answer(struct evbuffer *out)
{
    size_t len = evbuffer_get_length(out);
    const char *b = (const char *)evbuffer_pullup(out, (ev_ssize_t)len);
    const char *end = memmem(b, len, "\r\n\r\n", 4);
    if (!end)
        die("no end of head", b, len);
    size_t head = (size_t)(end - b) + 2;
    if (len < 12 || memcmp(b, "HTTP/1.1 ", 9) != 0 ||
        !((b[9] >= '1' && b[9] <= '4') || memcmp(b + 9, "501 ", 4) == 0))
        die("a status that is not 1xx-4xx (or 501, a method nobody serves)", b, len);
    for (size_t i = 0; i < head; i++) {
        unsigned char ch = (unsigned char)b[i];
        if (ch == '\r' ? b[i + 1] != '\n' : ch == '\n' ? b[i - 1] != '\r' : (ch < 0x20 && ch != '\t') || ch == 0x7f)
            die("a control character or a bare CR/LF in the head", b, len);
    }
    const char *id = memmem(b, head, "\r\nX-Request-ID: ", 16);
    if (!id)
        die("no X-Request-ID", b, len);
    size_t idlen = strcspn(id + 16, "\r");
    if (idlen < 1 || idlen > CDB_REQUEST_ID_MAX)
        die("X-Request-ID length", b, len);
}

/* A head parsed but not turned into a request: its arena goes with it. */
static void drop_head(cdb_conn *c)
{
    head_clear(&c->head);
    cdb_arena_free(c->arena);
    c->arena = NULL;
}

/* One request at data; returns the bytes it used, 0 when nothing more can be parsed. */
static size_t one_request(cdb_conn *c, const uint8_t *data, size_t size)
{
    size_t len = size > CDB_HTTP_HEAD_LIMIT ? CDB_HTTP_HEAD_LIMIT : size;
    const char *buf = (const char *)data, *m = NULL, *p = NULL;
    size_t ml = 0, pl = 0, nf = CDB_HTTP_MAX_FIELDS;
    int minor = 0;
    struct phr_header f[CDB_HTTP_MAX_FIELDS];
    int n = phr_parse_request(buf, len, &m, &ml, &p, &pl, &minor, f, &nf, 0);
    if (n < 0)
        return 0;      /* -2 incomplete (waits, or 431 at the limit), -1 malformed: refused by conn.c */
    for (size_t i = 0; i < nf; i++)
        if (!f[i].name)
            return 0;  /* folded: refused */
    if (!copy_head(c, buf, (size_t)n, m, ml, p, pl, minor, f, nf))
        abort();
    size_t used = (size_t)n;
    if (check_framing(c) || c->content_length > CDB_HTTP_BODY_LIMIT) {
        drop_head(c);
        return 0;
    }
    char *body = NULL;
    size_t body_len = 0;
    if (c->chunked) {
        size_t avail = size - used;
        body = cdb_arena_alloc(c->arena, avail + 1);   /* the request's arena, as conn.c reads it */
        if (!body)
            abort();
        memcpy(body, data + used, avail);
        memset(&c->chunk, 0, sizeof c->chunk);
        c->chunk.consume_trailer = 1;
        size_t decoded = avail;
        ssize_t rest = phr_decode_chunked(&c->chunk, body, &decoded);
        if (rest < 0 || decoded > CDB_HTTP_BODY_LIMIT) {   /* malformed, or waits for more */
            drop_head(c);
            return 0;
        }
        body_len = decoded;
        used = size - (size_t)rest;
    } else if (c->content_length) {
        if (size - used < c->content_length) {
            drop_head(c);
            return 0;
        }
        body = cdb_arena_alloc(c->arena, c->content_length);
        if (!body)
            abort();
        memcpy(body, data + used, c->content_length);
        body_len = c->content_length;
        used += c->content_length;
    }
    cdb_request *r = cdb_request_new(c, c->arena, &c->head, body, body_len);
    c->arena = NULL;               /* the request's now, freed with it */
    head_clear(&c->head);
    if (!r)
        abort();
    /* what the loop runs before admission, then the body parse of cdb_request_admit */
    bool ok = cdb_request_prepare(r, route_tables()) && parse_body(r);
    if (ok && r->route->auth >= CDB_AUTH_USER && r->principal.role == CDB_ROLE_ANON)
        die("a route that needs a token admitted no one", r->head.bytes, 0);
    char *limit = cdb_request_query_param(r, "limit");
    free(limit);
    bool closing = cdb_request_wants_close(r);
    if (ok)
        cdb_request_reply(r, 200, json_pack("{s:b}", "handled", 1));  /* the handler's place */
    struct evbuffer *out = evbuffer_new();
    if (!out || !render(r, closing, out))
        abort();
    check_answer(out);
    evbuffer_free(out);
    cdb_request_free(r);
    return closing ? 0 : used;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    if (sodium_init() < 0)
        abort();
    cdb_log_set_level(CDB_LOG_ERROR);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cdb_loop loop = {.svc = &svc};
    static cdb_conn c;
    memset(&c, 0, sizeof c);
    c.loop = &loop;
    snprintf(c.peer, sizeof c.peer, "127.0.0.1");
    for (int i = 0; i < 4 && size > 0; i++) {
        size_t used = one_request(&c, data, size);
        if (!used)
            break;
        data += used;
        size -= used;
    }
    return 0;
}
