/*
 * conn.c - one HTTP/1.1 connection on its loop: reading a request head and
 * its body within deadlines, refusing what could smuggle a request, and
 * writing the answer.
 *
 * Why not evhttp (libevent 2.1): its timeout restarts on every byte, so a
 * client trickling one byte a second is never cut; it takes the first of
 * two Content-Length fields, accepts "+44" and "0044", treats
 * "gzip, chunked" as chunked, answers malformed requests and unknown
 * methods with its own HTML, and has no hook between the head and the body
 * to change any of that (docs/http.md, "Departures"). The head is tokenized
 * by picohttpparser (Debian's libh2o); the framing rules of RFC 9112 that
 * matter for smuggling are checked here. Routing, negotiation and the
 * envelope stay in router.c and request.c.
 *
 * States. set_state() owns every move and its deadline; a move the table
 * does not allow is a bug and aborts.
 *   IDLE     waiting for the first byte of a request; HTTP_IDLE_TIMEOUT
 *   HEAD     a head is arriving; HTTP_HEADER_TIMEOUT from its first byte,
 *            absolute, however slowly the rest trickles in
 *   BODY     the head is accepted; HTTP_BODY_TIMEOUT for the whole body
 *   BUSY     the request is being handled; nothing more is parsed (bytes
 *            of a pipelined request wait in the input buffer, which stops
 *            growing at INPUT_MAX); no deadline of ours
 *   WRITING  the answer is written at once (push_output); what the socket
 *            does not take goes when it is writable; flushed: IDLE again,
 *            LINGER or closed; HTTP_IDLE_TIMEOUT for a client that does
 *            not read
 *   LINGER   we answered before the request was read whole (413, bad
 *            framing): our side is shut for writing and the client's bytes
 *            are discarded for LINGER_MS, so it reads our answer instead of
 *            a connection reset
 * A client that goes away while its connection is BUSY takes its socket
 * with it at once; the connection itself lives until its request is
 * answered (cdb_conn_send), because the request points to it.
 */
#include "http_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "coredb/log.h"
#include "picohttpparser.h"

enum {
    LINGER_MS = 1000,
    READ_MAX = 16384,              /* bytes one read asks for */
    /* what one connection buffers: a head, a body, a little more; reading pauses there */
    INPUT_MAX = CDB_HTTP_HEAD_LIMIT + CDB_HTTP_BODY_LIMIT + 16384,
};

typedef enum conn_state { CONN_IDLE, CONN_HEAD, CONN_BODY, CONN_BUSY, CONN_WRITING, CONN_LINGER } conn_state;

static const char *const state_names[] = {"idle", "head", "body", "busy", "writing", "linger"};

struct cdb_conn {
    cdb_loop *loop;
    evutil_socket_t fd;            /* -1 once the client is gone (BUSY only) */
    struct evbuffer *in;           /* bytes read and not yet taken by a request */
    struct evbuffer *out;          /* the answer (or "100 Continue") being written */
    struct event *rd;              /* readable: added while the connection reads */
    struct event *wr;              /* writable: added only for what push_output could not write */
    struct event *deadline;        /* the current state's deadline */
    conn_state state;
    struct sockaddr_storage addr;
    bool counted;                  /* holds a place in the per-address count */
    bool close_after;              /* close once the answer is flushed */
    bool linger;                   /* ... and linger first (see the top) */
    char peer[64];

    /* the request being read (HEAD, BODY) */
    cdb_arena *arena;              /* its arena from the head on (head bytes, body), then the request's */
    size_t head_seen;              /* input length at the last incomplete parse */
    cdb_http_head head;
    bool chunked;
    size_t content_length;
    struct phr_chunked_decoder chunk;
    char *body;                    /* chunked: decoded so far, then raw bytes being decoded */
    size_t body_len, body_cap;

    cdb_request *request;          /* BUSY: the request being handled */
    cdb_conn *prev, *next;         /* loop->conns */
};

static int push_output(cdb_conn *c);

/* ---- life ---- */

/* Forgets the head; its bytes belong to the arena (the conn's, or the request's by now). */
static void head_clear(cdb_http_head *h)
{
    memset(h, 0, sizeof *h);
}

/* Lets the client's socket go: closed, with its events and buffers; c->fd is -1 after. */
static void close_socket(cdb_conn *c)
{
    if (c->rd)
        event_free(c->rd);
    if (c->wr)
        event_free(c->wr);
    if (c->in)
        evbuffer_free(c->in);
    if (c->out)
        evbuffer_free(c->out); /* references to cache entries are released here */
    if (c->fd >= 0)
        evutil_closesocket(c->fd);
    c->rd = c->wr = NULL;
    c->in = c->out = NULL;
    c->fd = -1;
}

static void conn_free(cdb_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->loop->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub_explicit(&c->loop->open_conns, 1, memory_order_relaxed);
    if (c->deadline)
        event_free(c->deadline);
    close_socket(c);
    if (c->counted)
        cdb_client_limit_release(c->loop->limit, (const struct sockaddr *)&c->addr);
    head_clear(&c->head);
    cdb_arena_free(c->arena);
    free(c->body);
    free(c);
}

/* The one place a connection changes state, and with it its deadline. */
static void set_state(cdb_conn *c, conn_state next)
{
    static const unsigned allowed[] = {
        [CONN_IDLE] = 1u << CONN_HEAD,
        [CONN_HEAD] = 1u << CONN_BODY | 1u << CONN_BUSY | 1u << CONN_WRITING,
        [CONN_BODY] = 1u << CONN_BUSY | 1u << CONN_WRITING,
        [CONN_BUSY] = 1u << CONN_WRITING,
        [CONN_WRITING] = 1u << CONN_IDLE | 1u << CONN_LINGER,
        [CONN_LINGER] = 0,
    };
    if (!(allowed[c->state] & (1u << next))) {
        cdb_log_error("http.conn_state", "impossible move %s -> %s", state_names[c->state],
                      state_names[next]);
        abort();
    }
    c->state = next;
    const cdb_config *cfg = c->loop->cfg;
    long ms = -1;
    switch (next) {
    case CONN_IDLE:
    case CONN_WRITING: ms = cfg->http_idle_timeout_s * 1000L; break;
    case CONN_HEAD: ms = cfg->http_header_timeout_s * 1000L; break;
    case CONN_BODY: ms = cfg->http_body_timeout_s * 1000L; break;
    case CONN_LINGER: ms = LINGER_MS; break;
    case CONN_BUSY: break;
    }
    if (ms < 0) {
        evtimer_del(c->deadline);
    } else {
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(c->deadline, &tv);
    }
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    cdb_conn *c = arg;
    if (c->state == CONN_HEAD || c->state == CONN_BODY || c->state == CONN_WRITING)
        cdb_log_info("http.timeout", "closing a connection from %s: %s deadline passed", c->peer,
                     state_names[c->state]);
    conn_free(c);
}

/* ---- answering before a request exists ---- */

/*
 * Answers an error for a request that could not be read (status from code,
 * the envelope, X-Request-ID), then closes the connection, lingering so the
 * client sees the answer. The head, when one was parsed, goes with it so
 * the answer echoes the client's X-Request-ID.
 */
static void refuse(cdb_conn *c, cdb_err code, const char *message)
{
    cdb_request *r = cdb_request_new(c, c->arena, c->head.bytes ? &c->head : NULL, NULL, 0);
    c->arena = NULL;
    head_clear(&c->head);
    if (!r) {
        conn_free(c);
        return;
    }
    c->linger = true;
    c->request = r;
    cdb_request_failf(r, code, "%s", message);
    cdb_request_send(r, true);
    cdb_request_free(r);
}

/* ---- the head ---- */

static bool is_token_char(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static unsigned method_bit(const char *m)
{
    for (size_t i = 0; i < CDB_HTTP_NMETHODS; i++)
        if (strcmp(m, cdb_http_methods[i].name) == 0) /* methods are case-sensitive (RFC 9110 §9.1) */
            return cdb_http_methods[i].bit;
    return 0;
}

/* 1*DIGIT without sign, spaces or leading zeros, below 10^18 (RFC 9110 §8.6). */
static bool parse_content_length(const char *v, size_t *out)
{
    size_t n = strlen(v);
    if (n == 0 || n > 18 || (n > 1 && v[0] == '0'))
        return false;
    size_t value = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        value = value * 10 + (size_t)(v[i] - '0');
    }
    *out = value;
    return true;
}

/*
 * Copies a tokenized head into c->head, NUL-terminating the method, the
 * target, every name and every value in place (each is followed by a
 * separator byte that is overwritten). Returns false on out of memory.
 */
static bool copy_head(cdb_conn *c, const char *buf, size_t len, const char *m, size_t ml, const char *p,
                      size_t pl, int minor, const struct phr_header *f, size_t nf)
{
    cdb_http_head *h = &c->head;
    /* the request's arena starts here: a spare block of the loop's, no malloc */
    if (!c->arena && !(c->arena = cdb_arena_new(c->loop ? c->loop->arenas : NULL)))
        return false;
    h->bytes = cdb_arena_alloc(c->arena, len + 1);
    h->fields = nf ? cdb_arena_alloc(c->arena, nf * sizeof *h->fields) : NULL;
    if (!h->bytes || (nf && !h->fields))
        return false;
    memcpy(h->bytes, buf, len);
    h->bytes[len] = '\0';
#define AT(ptr, n) (h->bytes[(ptr) - buf + (n)] = '\0', h->bytes + ((ptr) - buf))
    h->method = AT(m, ml);
    h->target = AT(p, pl);
    for (size_t i = 0; i < nf; i++) {
        size_t vl = f[i].value_len;
        while (vl && (f[i].value[vl - 1] == ' ' || f[i].value[vl - 1] == '\t'))
            vl--;
        h->fields[i].name = AT(f[i].name, f[i].name_len);
        h->fields[i].value = AT(f[i].value, vl);
    }
#undef AT
    h->nfields = (int)nf;
    h->minor_version = minor;
    h->method_bit = method_bit(h->method);
    return true;
}

/*
 * RFC 9112's framing rules where a lenient reading smuggles a request:
 * exactly one Host in HTTP/1.1; at most one Content-Length, canonical;
 * Transfer-Encoding only "chunked", never with Content-Length, never in
 * HTTP/1.0. Returns the refusal message or NULL.
 */
static const char *check_framing(cdb_conn *c)
{
    cdb_http_head *h = &c->head;
    int hosts = 0, lengths = 0, encodings = 0;
    if (h->minor_version > 1)
        return "Unsupported HTTP version";
    for (const char *t = h->method; *t; t++)
        if (!is_token_char((unsigned char)*t))
            return "Malformed method";
    for (int i = 0; i < h->nfields; i++) {
        const char *name = h->fields[i].name, *value = h->fields[i].value;
        if (strcasecmp(name, "Host") == 0) {
            hosts++;
        } else if (strcasecmp(name, "Content-Length") == 0) {
            lengths++;
            if (!parse_content_length(value, &c->content_length))
                return "Content-Length must be a plain decimal number";
        } else if (strcasecmp(name, "Transfer-Encoding") == 0) {
            encodings++;
            if (strcasecmp(value, "chunked") != 0)
                return "Transfer-Encoding other than chunked is not accepted";
        }
    }
    if (h->minor_version == 1 && hosts != 1)
        return hosts ? "More than one Host header" : "Host header required";
    if (hosts > 1)
        return "More than one Host header";
    if (lengths > 1)
        return "More than one Content-Length header";
    if (encodings > 1)
        return "More than one Transfer-Encoding header";
    if (encodings && lengths)
        return "Content-Length and Transfer-Encoding together are not accepted";
    if (encodings && h->minor_version == 0)
        return "Transfer-Encoding is not accepted in HTTP/1.0";
    c->chunked = encodings == 1;
    if (!lengths)
        c->content_length = 0;
    return NULL;
}

static const char *head_field(const cdb_http_head *h, const char *name)
{
    for (int i = 0; i < h->nfields; i++)
        if (strcasecmp(h->fields[i].name, name) == 0)
            return h->fields[i].value;
    return NULL;
}

static void dispatch(cdb_conn *c, char *body, size_t body_len)
{
    cdb_request *r = cdb_request_new(c, c->arena, &c->head, body, body_len);
    c->arena = NULL;
    head_clear(&c->head);
    if (!r) {
        conn_free(c);
        return;
    }
    c->request = r;
    set_state(c, CONN_BUSY);
    cdb_server_dispatch(r);
}

static void read_body(cdb_conn *c);

static void parse_head(cdb_conn *c)
{
    struct evbuffer *in = c->in;
    size_t len = evbuffer_get_length(in);
    if (len > CDB_HTTP_HEAD_LIMIT)
        len = CDB_HTTP_HEAD_LIMIT;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    const char *m = NULL, *p = NULL;
    size_t ml = 0, pl = 0, nf = CDB_HTTP_MAX_FIELDS;
    int minor = 0;
    struct phr_header f[CDB_HTTP_MAX_FIELDS];
    int n = buf ? phr_parse_request(buf, len, &m, &ml, &p, &pl, &minor, f, &nf, c->head_seen) : -1;
    if (n == -2) {
        c->head_seen = len;
        if (len == CDB_HTTP_HEAD_LIMIT)
            refuse(c, CDB_ERR_VALIDATION_FAILED, "Request head exceeds 64 KiB or 64 header fields");
        return;
    }
    c->head_seen = 0;
    if (n < 0) {
        refuse(c, CDB_ERR_VALIDATION_FAILED, "Malformed HTTP request");
        return;
    }
    for (size_t i = 0; i < nf; i++) {
        if (!f[i].name) { /* obsolete line folding (RFC 9112 §5.2) */
            refuse(c, CDB_ERR_VALIDATION_FAILED, "Folded header lines are not accepted");
            return;
        }
    }
    if (!copy_head(c, buf, (size_t)n, m, ml, p, pl, minor, f, nf)) {
        conn_free(c);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    const char *why = check_framing(c);
    if (why) {
        refuse(c, CDB_ERR_VALIDATION_FAILED, why);
        return;
    }
    if (c->content_length > CDB_HTTP_BODY_LIMIT) {
        refuse(c, CDB_ERR_PAYLOAD_TOO_LARGE, "Request body exceeds 1048576 bytes");
        return;
    }
    if (!c->chunked && c->content_length == 0) {
        dispatch(c, NULL, 0);
        return;
    }
    const char *expect = head_field(&c->head, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && c->head.minor_version == 1)
        if (evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0)
            push_output(c); /* a client gone meanwhile is seen by the read side */
    memset(&c->chunk, 0, sizeof c->chunk);
    c->chunk.consume_trailer = 1;
    c->body_len = 0;
    set_state(c, CONN_BODY);
    read_body(c);
}

/* ---- the body ---- */

static bool body_reserve(cdb_conn *c, size_t more)
{
    if (c->body_len + more <= c->body_cap)
        return true;
    size_t cap = c->body_cap ? c->body_cap : 4096;
    while (cap < c->body_len + more)
        cap *= 2;
    char *grown = realloc(c->body, cap);
    if (!grown)
        return false;
    c->body = grown;
    c->body_cap = cap;
    return true;
}

/* Hands the finished chunked body to the request, copied into its arena (chunked bodies are rare). */
static void body_done(cdb_conn *c)
{
    size_t len = c->body_len;
    char *body = cdb_arena_alloc(c->arena, len ? len : 1);
    if (!body) {
        conn_free(c);
        return;
    }
    if (len)
        memcpy(body, c->body, len);
    free(c->body);
    c->body = NULL;
    c->body_len = c->body_cap = 0;
    dispatch(c, body, len);
}

static void read_body(cdb_conn *c)
{
    struct evbuffer *in = c->in;
    size_t avail = evbuffer_get_length(in);
    if (!c->chunked) {
        if (avail < c->content_length)
            return;
        /* read straight into the request's arena: no copy after this one */
        char *body = cdb_arena_alloc(c->arena, c->content_length);
        if (!body) {
            conn_free(c);
            return;
        }
        evbuffer_remove(in, body, c->content_length);
        dispatch(c, body, c->content_length);
        return;
    }
    if (avail == 0)
        return;
    if (!body_reserve(c, avail)) {
        conn_free(c);
        return;
    }
    evbuffer_remove(in, c->body + c->body_len, avail);
    size_t decoded = avail;
    ssize_t rest = phr_decode_chunked(&c->chunk, c->body + c->body_len, &decoded);
    c->body_len += decoded;
    if (rest == -1) {
        refuse(c, CDB_ERR_VALIDATION_FAILED, "Malformed chunked body");
    } else if (c->body_len > CDB_HTTP_BODY_LIMIT) {
        refuse(c, CDB_ERR_PAYLOAD_TOO_LARGE, "Request body exceeds 1048576 bytes");
    } else if (rest >= 0) {
        /* what follows the body is the next request: back to the input */
        if (rest > 0)
            evbuffer_prepend(in, c->body + c->body_len, (size_t)rest);
        body_done(c);
    }
}

/* ---- the socket ---- */

typedef enum read_outcome { READ_SOME, READ_NONE, READ_EOF, READ_ERROR } read_outcome;

/*
 * One readv into the input, up to READ_MAX, pausing the reading when the
 * input reaches INPUT_MAX (answer_written resumes it). Not evbuffer_read
 * (nor a bufferevent, which calls it): that asks the socket how much it
 * holds first (ioctl FIONREAD), a system call per read, and reads at most
 * 4 KiB at a time.
 */
static read_outcome read_socket(cdb_conn *c)
{
    size_t have = evbuffer_get_length(c->in);
    size_t room = have < INPUT_MAX ? INPUT_MAX - have : 0;
    if (room == 0) {
        event_del(c->rd);
        return READ_NONE;
    }
    struct evbuffer_iovec v[2];
    int nv = evbuffer_reserve_space(c->in, (ev_ssize_t)(room < READ_MAX ? room : READ_MAX), v, 2);
    if (nv <= 0)
        return READ_ERROR;         /* out of memory: the connection goes */
    struct iovec iov[2];
    for (int i = 0; i < nv; i++)
        iov[i] = (struct iovec){v[i].iov_base, v[i].iov_len};
    ssize_t n = readv(c->fd, iov, nv);
    if (n == 0)
        return READ_EOF;
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? READ_NONE : READ_ERROR;
    /* the space reserved and not filled is left out (libevent: commit only what was read) */
    size_t left = (size_t)n;
    int used = 0;
    for (; used < nv && left > 0; used++) {
        if (v[used].iov_len > left)
            v[used].iov_len = left;
        left -= v[used].iov_len;
    }
    if (evbuffer_commit_space(c->in, v, used) != 0)
        return READ_ERROR;
    if (evbuffer_get_length(c->in) >= INPUT_MAX)
        event_del(c->rd);
    return READ_SOME;
}

/*
 * The client closed its side (eof_only) or the socket failed. A request
 * being handled is still answered to a half-closed client, which may read
 * it, and the connection closes after; a client gone for good takes its
 * socket at once, and the connection lives until its request is answered.
 */
static void client_lost(cdb_conn *c, bool eof_only)
{
    if (c->state == CONN_BUSY || (c->state == CONN_WRITING && eof_only)) {
        if (eof_only) {
            c->close_after = true;
            event_del(c->rd);
            return;
        }
        if (c->state == CONN_BUSY) {
            close_socket(c);
            return;
        }
    }
    conn_free(c);
}

/* What the input holds, taken as the state says. */
static void take_input(cdb_conn *c)
{
    switch (c->state) {
    case CONN_IDLE:
        if (evbuffer_get_length(c->in) == 0)
            return;
        set_state(c, CONN_HEAD);
        parse_head(c);
        return;
    case CONN_HEAD:
        parse_head(c);
        return;
    case CONN_BODY:
        read_body(c);
        return;
    case CONN_LINGER:
        evbuffer_drain(c->in, evbuffer_get_length(c->in));
        return;
    case CONN_BUSY:
    case CONN_WRITING:
        return; /* a pipelined request waits for the answer to this one */
    }
}

/* The socket is readable; what == 0: activated by answer_written for a request already read. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    cdb_conn *c = arg;
    (void)fd;
    if (what & EV_READ) {
        switch (read_socket(c)) {
        case READ_SOME: break;
        case READ_NONE: return;
        case READ_EOF: client_lost(c, true); return;
        case READ_ERROR: client_lost(c, false); return;
        }
    }
    take_input(c);
}

/* The answer is out: next request, linger or close. */
static void answer_written(cdb_conn *c)
{
    event_del(c->wr);              /* the next answer is written inline again */
    if (!c->close_after) {
        set_state(c, CONN_IDLE);
        event_add(c->rd, NULL);    /* reading paused at INPUT_MAX resumes */
        /* a pipelined request may be waiting: read it after this callback, not nested in the answer */
        if (evbuffer_get_length(c->in) > 0)
            event_active(c->rd, 0, 0);
        return;
    }
    if (!c->linger) {
        conn_free(c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    event_add(c->rd, NULL);
    set_state(c, CONN_LINGER);
}

/*
 * Writes what the output holds now, on the caller's turn of the loop: 1 all
 * written; 0 the socket is full, the rest goes when it is writable
 * (on_writable); -1 the client is gone. Watching the socket for every
 * answer would cost an epoll_ctl to watch it, a turn of the loop to learn
 * it is writable, and an epoll_ctl to stop; a socket almost always takes an
 * answer whole.
 */
static int push_output(cdb_conn *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n > 0)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        event_add(c->wr, NULL);
        return 0;
    }
    return 1;
}

/* The rest of an answer (or of "100 Continue") the socket did not take at once. */
static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    cdb_conn *c = arg;
    (void)fd;
    (void)what;
    int pushed = push_output(c);
    if (pushed < 0) {
        client_lost(c, false);
    } else if (pushed > 0) {
        event_del(c->wr);
        if (c->state == CONN_WRITING)
            answer_written(c); /* else "100 Continue" went out while the body is read */
    }
}

/* ---- the interface ---- */

void cdb_conn_accept(cdb_loop *loop, evutil_socket_t fd, const struct sockaddr *sa, int salen, bool read_now)
{
    cdb_conn *c = calloc(1, sizeof *c);
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->loop = loop;
    c->fd = fd;                    /* conn_free closes it from here on */
    atomic_fetch_add_explicit(&loop->open_conns, 1, memory_order_relaxed);
    c->next = loop->conns;
    if (c->next)
        c->next->prev = c;
    loop->conns = c;
    memcpy(&c->addr, sa, (size_t)salen < sizeof c->addr ? (size_t)salen : sizeof c->addr);
    const void *ip = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                                               : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if ((sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
        !evutil_inet_ntop(sa->sa_family, ip, c->peer, sizeof c->peer))
        snprintf(c->peer, sizeof c->peer, "unknown");
    int one = 1; /* answers go out in one write; never wait for an ACK to send them */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->rd = event_new(loop->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    c->wr = event_new(loop->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    c->deadline = evtimer_new(loop->base, on_deadline, c);
    if (!c->in || !c->out || !c->rd || !c->wr || !c->deadline || event_add(c->rd, NULL) != 0) {
        conn_free(c);
        return;
    }
    c->state = CONN_IDLE;
    set_state(c, CONN_HEAD); /* a new client's first byte is due within the header timeout */
    c->counted = cdb_client_limit_take(loop->limit, sa);
    if (!c->counted) {
        cdb_log_warn("http.client_limit", "refusing a connection from %s: %d open already", c->peer,
                     loop->cfg->http_max_connections_per_ip);
        refuse(c, CDB_ERR_RATE_LIMITED, "Too many connections from this address");
    } else if (read_now) {
        on_readable(fd, EV_READ, c);
    }
}

struct evbuffer *cdb_conn_output(cdb_conn *c)
{
    return c->fd >= 0 ? c->out : NULL;
}

void cdb_conn_send(cdb_conn *c, bool written, bool closing)
{
    c->request = NULL;
    if (c->fd < 0 || !written) {
        conn_free(c);              /* a half-written answer goes with the buffer */
        return;
    }
    c->close_after = c->close_after || closing;
    if (c->close_after)
        event_del(c->rd);
    set_state(c, CONN_WRITING);
    int pushed = push_output(c);
    if (pushed < 0)
        conn_free(c);
    else if (pushed > 0)
        answer_written(c);
}

bool cdb_conn_gone(const cdb_conn *c)
{
    return c->fd < 0;
}

cdb_loop *cdb_conn_loop(const cdb_conn *c)
{
    return c->loop;
}

const char *cdb_conn_peer(const cdb_conn *c)
{
    return c->peer;
}

void cdb_conn_close_idle(cdb_loop *loop)
{
    cdb_conn *c = loop->conns;
    while (c) {
        cdb_conn *next = c->next;
        if (c->state == CONN_IDLE)
            conn_free(c);
        c = next;
    }
}

void cdb_conn_free_all(cdb_loop *loop)
{
    while (loop->conns)
        conn_free(loop->conns);
}
