/*
 * pg.c - the thin layer over libpq that every store module uses: opening a
 * connection with coredb's session settings (keepalives, timeouts, sslmode,
 * application_name), running one parameterised statement, and mapping a
 * PostgreSQL failure to a cdb_err.
 *
 * Server error text can quote row values and SQL, so it never reaches a
 * client message: clients get a fixed sentence per class of failure and the
 * SQLSTATE in details; the server's text goes to the debug log only.
 */
#include "coredb/pg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coredb/log.h"


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
 * Returns "-c statement_timeout=N" merged with any options the conninfo
 * already carries (e.g. a search_path), so neither overrides the other.
 * *out is NULL when there is nothing to set; caller frees it. Fails with
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

    if (statement_timeout_ms > 0) {
        if (asprintf(out, "%s%s-c statement_timeout=%d", existing ? existing : "",
                     existing ? " " : "", statement_timeout_ms) < 0)
            *out = NULL;
    } else if (existing) {
        *out = strdup(existing);
    }
    if ((statement_timeout_ms > 0 || existing) && !*out)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s", "Out of memory");
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

PGconn *cdb_pg_connect(const cdb_pg_settings *s, cdb_error *err)
{
    char timeout[16], detail[512], first[256];
    PGconn *conn = NULL;
    char *options = NULL;

    if (merged_options(s->conninfo, s->statement_timeout_ms, &options, err) < 0) {
        cdb_log_warn("pg.connect_failed", "%s", err ? err->message : "invalid connection string");
        goto fail;
    }
    snprintf(timeout, sizeof timeout, "%d", s->connect_timeout_s > 0 ? s->connect_timeout_s : 5);

    /*
     * With expand_dbname the conninfo is expanded in place of "dbname"; a
     * keyword after it wins, one before it is a default the conninfo may
     * override. Keepalives are defaults; the settings coredb was configured
     * with come after. libpq skips NULL or empty values.
     */
    const char *keys[] = {
        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
        "dbname", "connect_timeout", "application_name", "sslmode", "options", NULL,
    };
    const char *vals[] = {
        "1", "30", "10", "3",
        s->conninfo ? s->conninfo : "", timeout,
        s->application_name ? s->application_name : "coredb",
        s->sslmode ? s->sslmode : "", options ? options : "", NULL,
    };
    conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s", "Out of memory");
        goto fail;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        sanitize_pq_message(PQerrorMessage(conn), false, detail, sizeof detail);
        sanitize_pq_message(PQerrorMessage(conn), true, first, sizeof first);
        cdb_log_warn("pg.connect_failed", "%s", detail);
        cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "%s", "Unable to connect to PostgreSQL");
        if (err && *first)
            snprintf(err->message, sizeof err->message, "Unable to connect to PostgreSQL: %.200s", first);
        cdb_error_detail(err, "database", json_string("postgresql"));
        goto fail;
    }
    PQsetNoticeProcessor(conn, log_notice, NULL);
    free(options);
    return conn;

fail:
    PQfinish(conn);
    free(options);
    return NULL;
}

int cdb_pg_exec(PGconn *conn, const char *sql, int nparams,
                const char *const *params, PGresult **out, cdb_error *err)
{
    if (out)
        *out = NULL;
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
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
    if (strcmp(state, "57014") == 0) {
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
    } else {
        code = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s", "Internal database error");
    }
    if (*state)
        cdb_error_detail(err, "sqlstate", json_string(state));
    return code;
}

bool cdb_pg_conn_ok(PGconn *conn)
{
    return conn && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE;
}
