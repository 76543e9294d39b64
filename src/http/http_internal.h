/*
 * http_internal.h - what the files of src/http share: the request object a
 * route handler fills, the route table, and the response helpers.
 *
 * Threading: a cdb_request is created and answered on its loop thread. A
 * route marked CDB_RUN_WORKER runs its handler on a worker thread; the
 * handler may block and must touch only the request's own fields (never
 * r->ev), then the loop sends what it filled in.
 */
#ifndef COREDB_HTTP_INTERNAL_H
#define COREDB_HTTP_INTERNAL_H

#include <event2/event.h>
#include <event2/http.h>
#include <sys/socket.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdbool.h>
#include <stdint.h>

#include "coredb/sessions.h"
#include "coredb/users.h"
#include "coredb/config.h"
#include "coredb/error.h"
#include "coredb/service.h"
#include "security/ratelimit.h"
#include "store/redis_async.h"
#include "store/l1cache.h"
#include "store/pg_async.h"
#include "core/kvtable.h"
#include "core/arena.h"

#define CDB_HTTP_BODY_LIMIT     (1024 * 1024)     /* API.md: bodies over 1 MiB -> 413 */
#define CDB_HTTP_HEAD_LIMIT     (64 * 1024)       /* request line + header fields */
#define CDB_HTTP_MAX_FIELDS     64                /* header fields of one request */
#define CDB_HTTP_MAX_PARAMS     4
#define CDB_HTTP_MAX_HEADERS    8
#define CDB_REQUEST_ID_MAX      128
#define CDB_VERIFIED_TOKENS     8192              /* tokens a loop remembers as verified */
#define CDB_VERIFIED_TOKEN_MAX  2048              /* a longer one is verified every time */
#define CDB_LOOP_MEMO_ENTRIES   4096              /* request bodies a loop remembers resolving */
#define CDB_LOOP_MEMO_BODY_MAX  4096              /* a longer body is resolved every time */
#define CDB_LOOP_MEMO_KEY_MAX   (CDB_LOOP_MEMO_BODY_MAX + 128)
#define CDB_LOOP_TABLE_MIN_BYTES (64 * 1024)      /* each of those two, at least (else CACHE_L1_MB / 8) */
#define CDB_LOOP_SPARE_ARENAS   64                /* request arenas' first blocks a loop keeps for reuse */
#define CDB_HTTP_REF_MIN        1024              /* a body from this size on goes to the socket by reference */

/*
 * Methods are bits so a route can take several. libevent's EVHTTP_REQ_*
 * values are used as the bits (the parser is ours, see conn.c); a method we
 * do not serve at all (TRACE, FOO, get) is 0.
 */
#define CDB_HTTP_METHODS_SERVED (EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | \
                                 EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD)

typedef struct cdb_http_server cdb_http_server;
typedef struct cdb_loop cdb_loop;
typedef struct cdb_conn cdb_conn;
typedef struct cdb_request cdb_request;

/* One header field of a request; both strings point into the head's bytes. */
typedef struct cdb_http_field {
    const char *name;
    const char *value;             /* NUL-terminated, surrounding spaces removed */
} cdb_http_field;

/* The methods coredb serves: one table for parsing (conn.c) and for Allow (router.c). */
typedef struct cdb_http_method {
    unsigned bit;                  /* EVHTTP_REQ_* */
    const char *name;
} cdb_http_method;
#define CDB_HTTP_NMETHODS 6
extern const cdb_http_method cdb_http_methods[CDB_HTTP_NMETHODS];

/*
 * A request head that conn.c parsed and checked (framing, Host, method
 * token). The bytes are one copy; the strings below point into it. The
 * fields array is sized to the head, in the same arena: an idle keep-alive
 * connection holds none (a fixed array of 64 was 1 KiB of every
 * connection, 10 MiB of 10,000 idle ones).
 */
typedef struct cdb_http_head {
    char *bytes;                   /* in the arena of the request it becomes (conn.c) */
    const char *method;            /* the token as sent */
    unsigned method_bit;           /* EVHTTP_REQ_* or 0 for a method we do not serve */
    const char *target;            /* request-target as sent */
    int minor_version;             /* HTTP/1.<minor> */
    cdb_http_field *fields;        /* nfields of them, in the request's arena */
    int nfields;
} cdb_http_head;

typedef void (*cdb_route_fn)(cdb_request *r);

typedef enum cdb_run_mode {
    CDB_RUN_INLINE,   /* cheap, never blocks: runs on the loop (public routes only) */
    CDB_RUN_WORKER,   /* may block: runs on a worker thread */
    CDB_RUN_SLOW,     /* password hashing: runs on the AUTH_THREADS queue, so a
                         login storm cannot occupy the workers everyone else needs */
    CDB_RUN_CACHED,   /* a worker route whose answer the data API's query cache
                         may give on the loop (loop_admit.c) */
} cdb_run_mode;

/* Who may call a route, and whether it counts against a quota. */
typedef enum cdb_route_auth {
    CDB_AUTH_PUBLIC,  /* health, docs: no token looked at, no quota */
    CDB_AUTH_ANON,    /* login, refresh: no token needed; quota by client address */
    CDB_AUTH_OPTIONAL,/* registration: a valid token makes the caller known */
    CDB_AUTH_USER,    /* a valid token of a live session is required */
    CDB_AUTH_ADMIN,   /* ... and the admin role */
} cdb_route_auth;

typedef struct cdb_route {
    unsigned methods;        /* EVHTTP_REQ_* mask */
    const char *pattern;     /* "/api/v1/users/{id}": {..} matches one segment */
    cdb_route_fn handler;
    cdb_run_mode mode;
    cdb_route_auth auth;
} cdb_route;

/* Called once when bytes handed to the socket by reference are written or dropped (libevent's signature). */
typedef void (*cdb_body_release)(const void *data, size_t len, void *arg);
/* The release of bytes malloc'd as a whole, arg being that block (free(arg)). */
void cdb_body_release_free(const void *data, size_t len, void *arg);

struct cdb_request {
    cdb_arena *arena;              /* everything below marked "arena" lives in it, the request too */
    cdb_http_server *server;
    cdb_loop *loop;
    cdb_service *svc;
    cdb_conn *conn;                /* loop thread only; the answer goes there */
    cdb_http_head head;            /* empty when the head could not be parsed; bytes: arena */
    unsigned method;               /* head.method_bit */
    char *path;                    /* decoded path, arena */
    char *query;                   /* raw query string or NULL, arena */
    char *params[CDB_HTTP_MAX_PARAMS]; /* decoded {..} segments, owned */
    int nparams;
    char *raw_body;                /* the body (arena), parsed after authentication */
    size_t raw_body_len;
    json_t *body;                  /* parsed JSON body or NULL */
    const cdb_route *route;
    char *bearer;                  /* token from Authorization (arena) or NULL */
    char client_addr[64];          /* peer address */
    char *user_agent;              /* arena or NULL */
    cdb_principal principal;       /* who is calling (CDB_ROLE_ANON until authenticated) */
    bool session_checked;          /* the loop found the session alive (loop_admit.c) */
    bool quota_checked;            /* the caller's quota was charged and its headers set */
    cdb_route_fn resume;           /* cdb_server_resume_on_worker: what the worker runs instead */
    void *resume_arg;              /* its state (loop_tx.c), owned by resume */
    char request_id[CDB_REQUEST_ID_MAX + 1];
    const char *media_type;        /* response Content-Type */
    int64_t start_us;

    /* outcome, filled by the handler */
    int status;                    /* 0 until answered */
    json_t *response;              /* body (owned) or NULL for none */
    char *response_text;           /* or an already serialized JSON body (owned) */
    struct {                       /* or a body in three pieces (cdb_request_reply_ref) */
        const char *prefix, *suffix; /* arena copies */
        const char *data;          /* the middle, by reference until release */
        size_t len;
        cdb_body_release release;  /* NULL once the bytes are handed to the socket */
        void *arg;
    } response_ref;
    cdb_error err;                 /* err.code != OK: the error envelope */
    struct { const char *name; char value[64]; } headers[CDB_HTTP_MAX_HEADERS];
    int nheaders;

    cdb_request *next;             /* on the loop's completion list */
};

/*
 * Request lifecycle (request.c), all on the loop thread. arena (NULL: a new
 * one from the loop's spares) is taken, also on failure; head (may be NULL
 * when the head was refused) and body live in it and move into the request.
 */
cdb_request *cdb_request_new(cdb_conn *conn, cdb_arena *arena, cdb_http_head *head, char *body, size_t body_len);
/*
 * On the loop: negotiates, routes, checks the token's signature (cheap, so
 * forged tokens never cost a worker), checks body size and type and copies
 * it. False when an error answer is set.
 */
bool cdb_request_prepare(cdb_request *r, const cdb_route *const *tables);
/*
 * Before the handler (on the thread that runs it): session liveness, role,
 * quota, then JSON parsing of the body, in that order (API.md: authentication
 * is checked before the body is validated). False when an error answer is set.
 */
bool cdb_request_admit(cdb_request *r);
/*
 * Sends the answer on the request's connection (unless the client is gone),
 * closing it after the answer when `closing`, and writes the access log line.
 */
void cdb_request_send(cdb_request *r, bool closing);
void cdb_request_free(cdb_request *r);
/* The first header field named `name` (case-insensitive) or NULL; any thread. */
const char *cdb_request_field(const cdb_request *r, const char *name);
/* True when the client asked to close the connection after this request. */
bool cdb_request_wants_close(const cdb_request *r);

/* Answers with a JSON body (reference stolen). */
void cdb_request_reply(cdb_request *r, int status, json_t *body);
/* Answers with an already serialized JSON body (ownership taken). */
void cdb_request_reply_text(cdb_request *r, int status, char *text);
/*
 * Answers with a body sent without a copy of its middle: prefix, the len
 * bytes at data, suffix (prefix and suffix are copied). release(data, len,
 * arg) is called exactly once, on the loop thread, when the bytes have been
 * written or dropped (client gone, another answer set, out of memory).
 */
void cdb_request_reply_ref(cdb_request *r, int status, const char *prefix, const char *data, size_t len,
                           cdb_body_release release, void *arg, const char *suffix);
/* Answers with the error envelope built from err (which is moved). */
void cdb_request_fail(cdb_request *r, cdb_error *err);
/* Shorthand: code + message. */
void cdb_request_failf(cdb_request *r, cdb_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Adds a response header (name must be a string literal). */
void cdb_request_header(cdb_request *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A query-string parameter (malloc'd, decoded) or NULL. */
char *cdb_request_query_param(const cdb_request *r, const char *name);

/* Caps open connections per client address (client_limit.c); thread-safe. */
typedef struct cdb_client_limit cdb_client_limit;
/* max_per_address 0: no cap (take always succeeds). NULL on out of memory. */
cdb_client_limit *cdb_client_limit_new(int max_per_address);
void cdb_client_limit_free(cdb_client_limit *limit);
/* Counts one more connection of sa's address; false (nothing counted) when at the cap. */
bool cdb_client_limit_take(cdb_client_limit *limit, const struct sockaddr *sa);
/* Uncounts a connection that cdb_client_limit_take counted. */
void cdb_client_limit_release(cdb_client_limit *limit, const struct sockaddr *sa);

/* One event-loop thread: its listener, its connections, its completions. */
struct cdb_loop {
    cdb_http_server *server;
    const cdb_config *cfg;
    cdb_service *svc;
    cdb_client_limit *limit;       /* shared by every loop */
    const cdb_route *const *tables; /* what this loop's listener serves (NULL-terminated) */
    struct event_base *base;
    struct evconnlistener *listener;
    struct event *accept_pause;    /* re-enables the listener after running out of descriptors */
    atomic_int *loops_on_socket;   /* loops still accepting on its listening socket (server.c's stop) */
    atomic_int open_conns;         /* its open client connections (conn.c), for /metrics (server.c) */
    struct event *done_ev;         /* activated by workers */
    pthread_mutex_t done_lock;
    cdb_request *done_head;        /* answered by a worker, not yet sent */
    cdb_conn *conns;               /* every open connection of this loop */
    cdb_aredis *aredis;            /* this loop's asynchronous Redis (loop_admit.c), NULL without Redis */
    cdb_l1 *l1;                    /* this loop's first-level cache (loop_admit.c), NULL when off */
    cdb_apg *apg;                  /* this loop's PostgreSQL connections (loop_query.c), NULL when off */
    struct cdb__loop_lease *leases; /* reads running on lease connections (loop_lease.c) */
    cdb_kvtable *verified;         /* tokens this loop verified, until they expire (request.c) */
    cdb_kvtable *memo;             /* request bodies resolved: to cache keys (loop_admit.c), plans (loop_query.c) */
    cdb_arena_pool *arenas;        /* spare first blocks of request arenas (conn.c, request.c) */
    time_t date_at;                /* second of the cached Date header */
    char date[40];
    pthread_t thread;
};

/*
 * Connections (conn.c), loop thread only. A connection reads one request at
 * a time: it parses and checks the head, reads the body within deadlines,
 * then hands the request to cdb_server_dispatch and reads nothing more
 * until the answer is sent.
 */
/* Takes an accepted socket; answers 429 and closes when its address is over the cap. read_now:
 * the client has had time to send its request (taken from the backlog at the stop), so it is read
 * at once and counts as in flight before the grace period looks (server.c). */
void cdb_conn_accept(cdb_loop *loop, evutil_socket_t fd, const struct sockaddr *sa, int salen, bool read_now);
/* Where an answer is written: the connection's output buffer, NULL once the client has gone. */
struct evbuffer *cdb_conn_output(cdb_conn *conn);
/* The answer is in the output buffer (written false: it failed, close); conn may be one whose client has gone.
 * It is written at once and conn may be freed before this returns: the caller forgets it. */
void cdb_conn_send(cdb_conn *conn, bool written, bool closing);
/* True when the client went away while its request was handled. */
bool cdb_conn_gone(const cdb_conn *conn);
/* The loop that owns the connection. */
cdb_loop *cdb_conn_loop(const cdb_conn *conn);
/* The client's address as text. */
const char *cdb_conn_peer(const cdb_conn *conn);
/* Closes every connection of the loop that waits for a request (shutdown). */
void cdb_conn_close_idle(cdb_loop *loop);
/* Frees every connection of the loop (the loop has stopped). */
void cdb_conn_free_all(cdb_loop *loop);

/* server.c: runs a complete request (inline on the loop, or on a worker). */
void cdb_server_dispatch(cdb_request *r);

/* Route tables (one per routes_*.c file), each terminated by {0}. */
extern const cdb_route cdb_routes_health[];
extern const cdb_route cdb_routes_test[];
extern const cdb_route cdb_routes_users[];
extern const cdb_route cdb_routes_auth[];
extern const cdb_route cdb_routes_data[];
extern const cdb_route cdb_routes_admin[];
extern const cdb_route cdb_routes_migrations[];
extern const cdb_route cdb_routes_audit[];
extern const cdb_route cdb_routes_dbauth[];
extern const cdb_route cdb_routes_access[];
extern const cdb_route cdb_routes_monitor[];
extern const cdb_route cdb_routes_leases[];
extern const cdb_route cdb_routes_encryption[];
extern const cdb_route cdb_routes_collections[];
extern const cdb_route cdb_routes_metrics[];        /* GET /metrics (admin) on the main port */
extern const cdb_route cdb_routes_metrics_public[]; /* GET /metrics on PROMETHEUS_PORT */
/* The metrics registry's index of a route's template (0 for none); any thread. */
int cdb_server_route_metric(const cdb_http_server *srv, const cdb_route *route);
/* server.c: true once a stop signal came (SHUTDOWN_DRAIN_MS: /health/ready says 503) */
bool cdb_server_draining(const cdb_http_server *srv);
/* forwarded.c: from a TRUSTED_PROXIES peer, client_addr is the client X-Forwarded-For names */
void cdb__forwarded_client(cdb_request *r);
extern const cdb_route cdb_routes_openapi[];
/* routes_openapi.c: the embedded docs/openapi.json (NUL-terminated) and its length. */
const char *cdb__openapi_document(size_t *len);

/*
 * admit.c: session liveness, role and quota of the caller (worker thread),
 * skipping what the loop already did (session_checked, quota_checked).
 */
bool cdb_admit_caller(cdb_request *r);
/* The caller's quota (requests per second, 0 = none) and its key (len >= 128). */
int cdb__admit_quota_rate(const cdb_request *r);
void cdb__admit_quota_key(const cdb_request *r, char *key, size_t len);
/* A quota check's result: the X-RateLimit-* headers; false with 429 answered when refused. */
bool cdb__admit_quota_apply(cdb_request *r, const cdb_rl_result *rl);

/*
 * loop_admit.c: admission on the loop with one pipelined asynchronous
 * Redis round trip, and a cache hit of a CDB_RUN_CACHED route answered there.
 * True when it took the request: it will answer it or hand it to a worker
 * (cdb_server_hand_off). False: take the blocking path now.
 */
bool cdb__loop_admit(cdb_request *r);
/*
 * loop_admit.c: the key of r in its loop's memo (loop->memo) of what request
 * bodies resolve to: the caller's role, with per_user their user id, and
 * the body's exact bytes; false when the body is too long to keep (or holds
 * a NUL). key: CDB_LOOP_MEMO_KEY_MAX bytes.
 */
bool cdb__loop_memo_key(const cdb_request *r, bool per_user, char *key, size_t len);
/*
 * loop_query.c: runs an admitted data-API miss on the loop's own
 * PostgreSQL connections; generation_read: the loop's MGET read the
 * table's generation (generation) before this call, so the answer may be
 * stored at it. True: the request is answered later (on the loop, or by a
 * worker after a failure). False: hand it to a worker now.
 */
bool cdb__loop_query(cdb_request *r, bool generation_read, int64_t generation);
/* loop_query.c: ends the query-cache flight a loop read leads (*lead): part (stored) for its followers, or NULL
 * (they query). */
void cdb__loop_end_flight(cdb_request *r, bool *lead, const char *cache_key, int64_t generation, const char *part,
                          size_t len);
/* loop_query.c: answers 504 DATABASE_TIMEOUT as the blocking path words it: by_server, the statement_timeout;
 * else our deadline. */
void cdb__loop_fail_timeout(cdb_request *r, bool by_server);
/* loop_query.c: an answer read at generation, into Redis (not waited for) and the loop's L1. */
void cdb__loop_store_answer(cdb_request *r, const char *entry_key, int64_t generation, const char *part,
                            size_t len);
/*
 * loop_lease.c: a data read with X-Connection-ID run on the loop, on the
 * lease's connection. _wanted: r is one (and the loops run PostgreSQL).
 * _take checks the lease out: 1 with *out, 0 refused (r's answer set),
 * -1 out of memory (hand r to a worker). Then either _give_back (a hit was
 * answered, or before a hand-off) or _query: true when r is answered later
 * (on the loop, or by a worker), false: _give_back and hand it off now.
 * _abort_all ends every job of a loop being torn down.
 */
typedef struct cdb__loop_lease cdb__loop_lease;
bool cdb__loop_lease_wanted(const cdb_request *r);
int cdb__loop_lease_take(cdb_request *r, cdb__loop_lease **out);
bool cdb__loop_lease_query(cdb__loop_lease *l, bool generation_read, int64_t generation);
void cdb__loop_lease_give_back(cdb__loop_lease *l);
void cdb__loop_lease_abort_all(cdb_loop *loop);
/*
 * loop_tx.c: runs an admitted POST /data/transaction (unkeyed, no lease) on
 * the loop's own PostgreSQL connections, and its outbox after the commit on
 * the loop too (or on a worker where the loop cannot: loop_tx.c). True:
 * answered later. False: hand it to a worker now.
 */
bool cdb__loop_tx(cdb_request *r);
/* server.c: runs a prepared request's admission and handler on its worker queue. */
void cdb_server_hand_off(cdb_request *r);
/*
 * server.c: runs fn(r) on a worker WITHOUT admission (the loop admitted r and
 * began its work: a restore that starts meanwhile must not refuse what
 * already committed), then answers r on its loop. False when no worker
 * queue takes it (shutting down): the caller answers.
 */
bool cdb_server_resume_on_worker(cdb_request *r, cdb_route_fn fn);
/* server.c: sends the request's answer and frees it (loop thread). */
void cdb_server_finish(cdb_request *r);

/* Fails the request with err when rc < 0, else answers status with body. */
void cdb_request_finish(cdb_request *r, int rc, int status, json_t *body, cdb_error *err);
/*
 * The same with the library's result form (coredb/result.h): status with
 * {status: "success", error: null, timestamp, ...data} (data is taken), as
 * the administration routes answer.
 */
void cdb_request_finish_result(cdb_request *r, int rc, int status, json_t *data, cdb_error *err);
/*
 * The same for a call that answers through a cdb_idempotency (its body is
 * taken): a replayed answer gets the header Idempotent-Replayed: true.
 */
void cdb_request_finish_idem(cdb_request *r, int rc, cdb_idempotency *idem, cdb_error *err);

/*
 * Matches r->method and r->path against the NULL-terminated list of route
 * tables; fills r->route and r->params, or answers 404 / 405 (with Allow)
 * and returns false.
 */
bool cdb_router_match(cdb_request *r, const cdb_route *const *tables);

#endif
