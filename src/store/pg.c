/*
 * pg.c - the thin layer over libpq that every store module uses: opening a
 * connection with coredb's session settings (keepalives, timeouts, sslmode,
 * application_name), running one parameterised statement, and mapping a
 * PostgreSQL failure to a cdb_err.
 *
 * Server error text can quote row values and SQL, so it never reaches a
 * client message: clients get a fixed sentence per class of failure and the
 * SQLSTATE in details; the server's text goes to the debug log only.
 *
 * Deadlines (pg.h says what; here is how and why).
 *  - Waiting: libpq's socket is non-blocking underneath even in blocking
 *    mode, so a wait is poll() on PQsocket for the time left, PQconsumeInput,
 *    and PQgetResult only once PQisBusy says it will not block. Each
 *    connection carries its round-trip timeout and an optional cap as libpq
 *    instance data (PQregisterEventProc), so cdb_pg_exec keeps its signature
 *    and every caller of it got a deadline without changing.
 *  - Expiry: the server is not answering, so a cancel request, which needs a
 *    new connection to that same server and in PostgreSQL 15 has no timeout
 *    of its own (PQcancel blocks in connect and recv), would hang the worker
 *    just the same. We send none: the socket is shut down, which makes libpq
 *    see the connection as broken (the pool then closes it and checks the
 *    others) and ends the backend as soon as it runs again, and the server's
 *    own statement_timeout (the same T) bounds what it may still execute.
 *    The one thing this gives up is stopping, from here, a statement the
 *    server would run to the end after waking up: the same holds for any
 *    lost connection, and a transaction whose COMMIT was sent is reported
 *    as such (data/tx.c).
 *  - Sending: in blocking mode libpq can block in send() when the socket
 *    buffer is full. A live server drains it; for a black-holed peer
 *    tcp_user_timeout aborts the connection once sent data stays
 *    unacknowledged that long (Linux's persist timer honours it too, for a
 *    stopped peer that keeps advertising a zero window). Request bodies are
 *    at most 1 MiB, which the socket buffers (ours autotune up to 4 MB)
 *    normally take whole: a 900 kB transaction sent to a stopped server
 *    still got its 504 at the read deadline. Switching the connections to
 *    non-blocking mode would put sends under the same deadline, at the cost
 *    of a flush loop around every send; not needed at these sizes.
 *  - Connecting: PQconnectStartParams + PQconnectPoll under one deadline in
 *    milliseconds, instead of libpq's connect_timeout, which counts whole
 *    seconds and restarts for every address a host name resolves to. A
 *    stopped server accepts the TCP connection from its listen backlog and
 *    then never answers the startup packet: the deadline covers that too.
 */
#include "store/pg.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-events.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "coredb/log.h"
#include "core/timeutil.h"

/*
 * tcp_user_timeout: how long sent data may stay unacknowledged before the
 * kernel drops the connection. The statement deadline already bounds reads;
 * this bounds a send stuck on a black-holed peer the same way, but never
 * below 10 s, so a few lost segments on a short timeout do not kill
 * connections that TCP would recover. Without a statement timeout (CLI
 * migrations can run for hours, but the server still acknowledges data
 * while it works) it matches what the keepalives below detect: 60 s.
 */
enum {
    USER_TIMEOUT_MIN_MS = 10000,
    USER_TIMEOUT_DEFAULT_MS = 60000,
};

/* Per-connection deadline state, kept as libpq instance data of conn_event. */
typedef struct conn_deadline {
    int round_trip_ms;             /* 0: no client deadline */
    int64_t cap_ms;                /* cdb_pg_set_deadline; 0: none */
    bool timed_out;
} conn_deadline;

static int conn_event(PGEventId id, void *info, void *pass_through)
{
    (void)pass_through;
    if (id == PGEVT_CONNDESTROY) {
        PGEventConnDestroy *e = info;
        free(PQinstanceData(e->conn, conn_event));
    }
    return 1;
}

static conn_deadline *deadline_of(const PGconn *conn)
{
    return conn ? PQinstanceData(conn, conn_event) : NULL;
}

/* The deadline of a round trip starting now; 0 = none. */
static int64_t round_trip_deadline(const PGconn *conn)
{
    const conn_deadline *d = deadline_of(conn);
    if (!d)
        return 0;
    int64_t at = d->round_trip_ms > 0 ? cdb_mono_ms() + d->round_trip_ms : 0;
    if (d->cap_ms > 0 && (at == 0 || d->cap_ms < at))
        at = d->cap_ms;
    return at;
}

/*
 * The deadline expired: mark the connection and close it for libpq without
 * freeing it (the holder still does, through the pool). shutdown() rather
 * than close(): the descriptor stays libpq's, and PQconsumeInput then reads
 * end-of-file and sets CONNECTION_BAD, so every later call fails at once.
 */
static void expire(PGconn *conn)
{
    conn_deadline *d = deadline_of(conn);
    if (d)
        d->timed_out = true;
    int fd = PQsocket(conn);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    PQconsumeInput(conn);
    cdb_log_warn("pg.deadline_expired", "PostgreSQL did not answer in time; connection closed");
}

/*
 * Waits until PQgetResult will not block or the deadline (0 = none)
 * passes. Returns 0, or -1 after expiring the connection. A failing socket
 * is left for PQgetResult to report: with the connection broken it returns
 * an error result without waiting.
 */
static int wait_ready(PGconn *conn, int64_t deadline)
{
    if (PQflush(conn) < 0)
        return 0;
    while (PQisBusy(conn)) {
        int timeout = -1;
        if (deadline > 0) {
            int64_t left = deadline - cdb_mono_ms();
            if (left <= 0) {
                expire(conn);
                return -1;
            }
            timeout = left > 60000 ? 60000 : (int)left;
        }
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        if (pfd.fd < 0)
            return 0;
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR)
            return 0;
        if (n > 0 && !PQconsumeInput(conn))
            return 0;
    }
    return 0;
}

static cdb_err timeout_error(cdb_error *err)
{
    cdb_err code = cdb_error_set(err, CDB_ERR_DATABASE_TIMEOUT, "%s", "Database did not answer in time");
    cdb_error_detail(err, "database", json_string("postgresql"));
    return code;
}

void cdb_pg_set_deadline(PGconn *conn, int64_t deadline_ms)
{
    conn_deadline *d = deadline_of(conn);
    if (d)
        d->cap_ms = deadline_ms;
}

void cdb_pg_expire(PGconn *conn)
{
    expire(conn);
}

bool cdb_pg_timed_out(PGconn *conn)
{
    const conn_deadline *d = deadline_of(conn);
    return d && d->timed_out;
}

int cdb_pg_get_result(PGconn *conn, PGresult **out, cdb_error *err)
{
    *out = NULL;
    if (wait_ready(conn, round_trip_deadline(conn)) < 0)
        return timeout_error(err);
    *out = PQgetResult(conn);
    return 0;
}

/*
 * Collects the results of what was just sent, as PQexec does: the last
 * result, or the first error; NULL when the deadline expired.
 */
static PGresult *collect(PGconn *conn, int64_t deadline)
{
    PGresult *last = NULL, *res;
    for (;;) {
        if (wait_ready(conn, deadline) < 0) {
            PQclear(last);
            return NULL;
        }
        if (!(res = PQgetResult(conn)))
            break;
        if (last && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(last);
            last = res;
        }
        ExecStatusType st = PQresultStatus(last);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH ||
            PQstatus(conn) == CONNECTION_BAD)
            break;
    }
    return last;
}

PGresult *cdb_pg_query(PGconn *conn, const char *sql)
{
    int64_t deadline = round_trip_deadline(conn);
    return PQsendQuery(conn, sql) == 1 ? collect(conn, deadline) : NULL;
}

PGresult *cdb_pg_query_params(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    int64_t deadline = round_trip_deadline(conn);
    return PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1
               ? collect(conn, deadline) : NULL;
}

PGresult *cdb_pg_prepare(PGconn *conn, const char *name, const char *sql, int nparams)
{
    int64_t deadline = round_trip_deadline(conn);
    return PQsendPrepare(conn, name, sql, nparams, NULL) == 1 ? collect(conn, deadline) : NULL;
}


/*
 * Copies libpq's message into buf, lines joined by "; ", cut after the word
 * "password" so no credential fragment can follow it. libpq does not put
 * passwords in its messages; this is a second fence. first_line_only keeps
 * just the first line (for the client message).
 */
static void sanitize_pq_message(const char *msg, bool first_line_only, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (const char *p = msg ? msg : ""; *p && o + 1 < len; p++) {
        if (*p == '\n') {
            if (first_line_only || p[1] == '\0')
                break;
            if (o + 3 >= len)
                break;
            memcpy(buf + o, "; ", 2);
            o += 2;
            continue;
        }
        if (strncasecmp(p, "password", 8) == 0) {
            /* Keep libpq's well-known, secret-free phrase; drop anything else. */
            const char *keep = strncmp(p + 8, " authentication failed", 22) == 0
                                   ? "password authentication failed" : "password [withheld]";
            snprintf(buf + o, len - o, "%s", keep);
            return;
        }
        buf[o++] = *p == '\r' ? ' ' : *p;
    }
    buf[o] = '\0';
    while (o > 0 && isspace((unsigned char)buf[o - 1]))
        buf[--o] = '\0';
}

/*
 * Returns "-c TimeZone=UTC" and "-c statement_timeout=N" merged with any
 * options the conninfo already carries (e.g. a search_path), so neither
 * overrides the other; caller frees *out. Fails with
 * VALIDATION_FAILED when the conninfo does not parse: libpq's parse errors
 * quote pieces of the string, which may hold the password, so they are
 * never shown.
 */
static int merged_options(const char *conninfo, int statement_timeout_ms, char **out, cdb_error *err)
{
    const char *existing = NULL;
    PQconninfoOption *parsed = NULL;
    int rc = 0;

    *out = NULL;
    if (conninfo && *conninfo) {
        char *perr = NULL;
        parsed = PQconninfoParse(conninfo, &perr);
        PQfreemem(perr);
        if (!parsed) {
            rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "%s",
                           "Unable to connect to PostgreSQL: invalid connection string");
            goto out_free_parsed;
        }
    }
    for (PQconninfoOption *o = parsed; o && o->keyword; o++)
        if (strcmp(o->keyword, "options") == 0 && o->val && *o->val)
            existing = o->val;

    /* TimeZone=UTC: timestamps PostgreSQL renders (data API rows through
     * row_to_json) are UTC whatever the server's zone, like every other
     * timestamp coredb prints (docs/http.md, "Timestamps"). */
    char timeout_opt[48] = "";
    if (statement_timeout_ms > 0)
        snprintf(timeout_opt, sizeof timeout_opt, " -c statement_timeout=%d", statement_timeout_ms);
    if (asprintf(out, "%s%s-c TimeZone=UTC%s", existing ? existing : "", existing ? " " : "",
                 timeout_opt) < 0) {
        *out = NULL;
        rc = cdb_error_oom(err);
    }
out_free_parsed:
    PQconninfoFree(parsed);
    return rc;
}

/* libpq prints notices raw on stderr, which would break the JSON log lines. */
static void log_notice(void *arg, const char *message)
{
    (void)arg;
    char line[512];
    sanitize_pq_message(message, false, line, sizeof line);
    cdb_log_debug("pg.notice", "%s", line);
}

/*
 * Drives PQconnectPoll until the connection is made, fails, or deadline
 * passes. Returns true when it is made; *timed_out says why not.
 */
static bool connect_poll(PGconn *conn, int64_t deadline, bool *timed_out)
{
    PostgresPollingStatusType st = PGRES_POLLING_WRITING; /* what libpq's docs start from */
    *timed_out = false;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED || PQstatus(conn) == CONNECTION_BAD)
            return false;
        int64_t left = deadline - cdb_mono_ms();
        if (left <= 0) {
            *timed_out = true;
            return false;
        }
        struct pollfd pfd = {.fd = PQsocket(conn),
                             .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        int n = pfd.fd < 0 ? 1 : poll(&pfd, 1, (int)(left > 60000 ? 60000 : left));
        if (n < 0 && errno != EINTR)
            return false;
        if (n > 0)
            st = PQconnectPoll(conn);
    }
    return true;
}

/* The client deadline of each round trip (pg.h, cdb_pg_settings.round_trip_timeout_ms). */
static int round_trip_ms_of(const cdb_pg_settings *s)
{
    return s->round_trip_timeout_ms > 0 ? s->round_trip_timeout_ms
           : s->statement_timeout_ms > 0 ? s->statement_timeout_ms + CDB_PG_DEADLINE_MARGIN_MS
           : 0;
}

PGconn *cdb_pg_connect_start(const cdb_pg_settings *s, cdb_error *err)
{
    char timeout[16], user_timeout[16];
    char *options = NULL;
    PGconn *conn = NULL;

    if (merged_options(s->conninfo, s->statement_timeout_ms, &options, err) < 0) {
        cdb_log_warn("pg.connect_failed", "%s", err ? err->message : "invalid connection string");
        return NULL;
    }
    int connect_ms = (s->connect_timeout_s > 0 ? s->connect_timeout_s : 5) * 1000;
    int round_trip_ms = round_trip_ms_of(s);
    int user_ms = round_trip_ms == 0 ? USER_TIMEOUT_DEFAULT_MS
                  : round_trip_ms < USER_TIMEOUT_MIN_MS ? USER_TIMEOUT_MIN_MS : round_trip_ms;
    /* Unused by PQconnectPoll (the caller keeps the time); kept for what libpq reports. */
    snprintf(timeout, sizeof timeout, "%d", connect_ms / 1000);
    snprintf(user_timeout, sizeof user_timeout, "%d", user_ms);

    /*
     * With expand_dbname the conninfo is expanded in place of "dbname"; a
     * keyword after it wins, one before it is a default the conninfo may
     * override. Keepalives and tcp_user_timeout are defaults; the settings
     * coredb was configured with come after. libpq skips NULL or empty values.
     */
    const char *keys[] = {
        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
        "tcp_user_timeout",
        "dbname", "connect_timeout", "application_name", "sslmode", "options", NULL,
    };
    const char *vals[] = {
        "1", "30", "10", "3", user_timeout,
        s->conninfo ? s->conninfo : "", timeout,
        s->application_name ? s->application_name : "coredb",
        s->sslmode ? s->sslmode : "", options ? options : "", NULL,
    };
    if (!(conn = PQconnectStartParams(keys, vals, 1)))
        cdb_error_oom(err);
    free(options);
    return conn;
}

int cdb_pg_connect_done(PGconn *conn, const cdb_pg_settings *s, cdb_error *err)
{
    conn_deadline *dl = calloc(1, sizeof *dl);
    if (!dl || !PQregisterEventProc(conn, conn_event, "coredb-deadline", NULL) ||
        !PQsetInstanceData(conn, conn_event, dl)) {
        free(dl);
        return cdb_error_oom(err);
    }
    dl->round_trip_ms = round_trip_ms_of(s); /* the connection owns dl now: conn_event frees it */
    PQsetNoticeProcessor(conn, log_notice, NULL);
    return 0;
}

void cdb_pg_connect_failure(PGconn *conn, char *buf, size_t len)
{
    sanitize_pq_message(conn ? PQerrorMessage(conn) : "out of memory", false, buf, len);
}

PGconn *cdb_pg_connect_until(const cdb_pg_settings *s, int64_t deadline_ms, cdb_error *err)
{
    char detail[512], first[256];
    bool timed_out = false;

    int connect_ms = (s->connect_timeout_s > 0 ? s->connect_timeout_s : 5) * 1000;
    int64_t started = cdb_mono_ms(), deadline = started + connect_ms;
    if (deadline_ms > 0 && deadline_ms < deadline)
        deadline = deadline_ms;
    PGconn *conn = cdb_pg_connect_start(s, err);
    if (!conn)
        goto fail;
    if (!connect_poll(conn, deadline, &timed_out)) {
        if (timed_out) {
            snprintf(detail, sizeof detail, "no answer within %lld ms",
                     (long long)(cdb_mono_ms() - started));
            snprintf(first, sizeof first, "timeout expired");
        } else {
            sanitize_pq_message(PQerrorMessage(conn), false, detail, sizeof detail);
            sanitize_pq_message(PQerrorMessage(conn), true, first, sizeof first);
        }
        cdb_log_warn("pg.connect_failed", "%s", detail);
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "%s", "Unable to connect to PostgreSQL");
        if (err && *first)
            snprintf(err->message, sizeof err->message, "Unable to connect to PostgreSQL: %.200s", first);
        cdb_error_detail(err, "database", json_string("postgresql"));
        if (timed_out)
            cdb_error_detail(err, "reason", json_string("timeout"));
        goto fail;
    }
    if (cdb_pg_connect_done(conn, s, err) < 0)
        goto fail;
    return conn;

fail:
    PQfinish(conn);
    return NULL;
}

PGconn *cdb_pg_connect(const cdb_pg_settings *s, cdb_error *err)
{
    return cdb_pg_connect_until(s, 0, err);
}

int cdb_pg_exec(PGconn *conn, const char *sql, int nparams,
                const char *const *params, PGresult **out, cdb_error *err)
{
    if (out)
        *out = NULL;
    PGresult *res = cdb_pg_query_params(conn, sql, nparams, params);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        int rc = cdb_pg_error_from_result(conn, res, err);
        PQclear(res);
        return rc;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return 0;
}

/* The key columns of a unique violation ("Key (email)=(...)"), when plain identifiers. */
static json_t *unique_key_columns(const PGresult *res)
{
    const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    if (!d || strncmp(d, "Key (", 5) != 0)
        return NULL;
    d += 5;
    size_t n = strcspn(d, ")");
    if (n == 0 || strncmp(d + n, ")=(", 3) != 0 || strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789_, ") != n)
        return NULL;
    return json_stringn(d, n);
}

cdb_err cdb_pg_error_from_result(PGconn *conn, const PGresult *res, cdb_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *field;
    cdb_err code;

    if (cdb_log_enabled(CDB_LOG_DEBUG)) {
        const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        cdb_log_fields(CDB_LOG_DEBUG, "pg.error",
                       json_pack("{s:s?, s:s}", "sqlstate", state,
                                 "message", msg ? msg : (conn ? PQerrorMessage(conn) : "")));
    }

    if (!state)
        state = "";
    if (cdb_pg_timed_out(conn)) {
        code = timeout_error(err);
    } else if (strcmp(state, "57014") == 0) {
        code = cdb_error_set(err, CDB_ERR_DATABASE_TIMEOUT, "%s", "Database statement timed out");
        cdb_error_detail(err, "database", json_string("postgresql"));
    } else if (!res || !conn || PQstatus(conn) == CONNECTION_BAD || strncmp(state, "08", 2) == 0 ||
               strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
               strcmp(state, "57P03") == 0) {
        code = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "%s", "Database unavailable");
        cdb_error_detail(err, "database", json_string("postgresql"));
    } else if (strcmp(state, "23505") == 0) {
        code = cdb_error_set(err, CDB_ERR_CONFLICT, "%s", "A record with the same unique value already exists");
        if ((field = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME)))
            cdb_error_detail(err, "constraint", json_string(field));
        json_t *cols = unique_key_columns(res);
        if (cols)
            cdb_error_detail(err, "field", cols);
    } else if (strcmp(state, "23502") == 0) {
        code = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "%s", "A required value is missing");
        if ((field = PQresultErrorField(res, PG_DIAG_COLUMN_NAME)))
            cdb_error_detail(err, "field", json_string(field));
    } else if (strcmp(state, "23514") == 0) {
        code = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "%s", "A value violates a check constraint");
        if ((field = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME)))
            cdb_error_detail(err, "constraint", json_string(field));
    } else if (strcmp(state, "23503") == 0) {
        code = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "%s",
                         "A referenced record does not exist or is still referenced");
        if ((field = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME)))
            cdb_error_detail(err, "constraint", json_string(field));
    } else if (strncmp(state, "22", 2) == 0) {
        code = cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "%s", "Invalid value");
    } else if (strcmp(state, "42501") == 0) {
        code = cdb_error_set(err, CDB_ERR_FORBIDDEN, "%s", "Permission denied");
    } else if (strcmp(state, "42P01") == 0) {
        /* a table or collection dropped after the request looked it up */
        code = cdb_error_set(err, CDB_ERR_UNKNOWN_TABLE, "%s", "The table or collection no longer exists");
    } else {
        code = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s", "Internal database error");
    }
    if (*state)
        cdb_error_detail(err, "sqlstate", json_string(state));
    return code;
}

bool cdb_pg_conn_ok(PGconn *conn)
{
    return conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE &&
           !cdb_pg_timed_out(conn);
}

int cdb_pg_json_parse(const char *text, json_t **out, cdb_error *err)
{
    *out = json_loads(text, JSON_DECODE_ANY, NULL);
    return *out ? 0 : cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Malformed database result");
}
