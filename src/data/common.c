/*
 * common.c - the pieces the query and transaction paths of the data API
 * share (data_internal.h): the transaction prelude that puts a request under
 * its caller's database role and row-level security, pipelined result
 * reading, PostgreSQL error mapping, and caller Redis namespaces.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/documents.h"
#include "data/data_internal.h"
#include "store/catalog.h"
#include "store/txn.h"
#include "coredb/log.h"
#include "store/pg.h"

int cdb_data_start_pipeline(cdb_pool_conn *pc, const cdb_principal *p, cdb_error *err)
{
    return cdb_data_start_pipeline_after(pc, p, NULL, 0, NULL, err);
}

int cdb_data_start_pipeline_after(cdb_pool_conn *pc, const cdb_principal *p, const char *first,
                                  int nparams, const char *const *params, cdb_error *err)
{
    const char *db_role = cdb_principal_db_role(p);

    if (!db_role)
        return cdb_principal_require(NULL, err);
    return cdb_txn_pipeline_begin_as(pc, db_role, p->user_id, cdb_role_name(p->role), first,
                                     nparams, params, err);
}

int cdb_data_start_read_pipeline(cdb_pool_conn *pc, const cdb_principal *p, cdb_error *err)
{
    const char *db_role = cdb_principal_db_role(p);

    if (!db_role)
        return cdb_principal_require(NULL, err);
    return cdb_txn_pipeline_read_as(pc, db_role, p->user_id, cdb_role_name(p->role), err);
}

/*
 * The next result within the connection's deadline (pg.h), counted afresh
 * for each: a long pipeline whose statements each answer in time is not cut
 * short, and a silent server is given up one deadline after it went quiet.
 * NULL and *lost once the deadline expired.
 */
static PGresult *next_result(PGconn *conn, bool *lost)
{
    PGresult *res = NULL;
    if (cdb_pg_get_result(conn, &res, NULL) < 0)
        *lost = true;
    return res;
}

int cdb_data_pipeline_read(PGconn *conn, PGresult **out, int n, int *failed,
                           const char *context_field, cdb_error *err)
{
    PGresult *bad = NULL;
    int bad_index = -1, rc = 0;
    bool lost = false;

    for (int i = 0; i < n; i++) {
        if (out)
            out[i] = NULL;
    }
    for (int i = 0; i < n && !lost; i++) {
        PGresult *res = next_result(conn, &lost);
        if (!res) {
            lost = true;
            break;
        }
        /* each statement's results end with a NULL */
        for (PGresult *extra; (extra = next_result(conn, &lost));)
            PQclear(extra);
        if (lost) {
            PQclear(res);
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR && !bad) {
            bad = res;
            bad_index = i;
            lost = PQstatus(conn) == CONNECTION_BAD;
            continue;
        }
        if (out && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK))
            out[i] = res;
        else
            PQclear(res);
    }
    if (!lost) {
        bool sync_lost = false;
        PGresult *sync = next_result(conn, &sync_lost);
        if (!sync || PQresultStatus(sync) != PGRES_PIPELINE_SYNC) {
            /* Every statement answered, COMMIT included: what they did stands
             * though the sync was lost; the pool drops the dead connection. */
            lost = bad != NULL;
            if (!bad)
                cdb_log_warn("data.sync_lost", "connection lost after the last result of a pipeline");
        }
        PQclear(sync);
    }
    if (bad || lost) {
        /* out of pipeline mode, so cdb_data_pg_error may look a constraint up */
        if (!lost)
            PQexitPipelineMode(conn);
        rc = cdb_data_pg_error(conn, bad, context_field, err);
        for (int i = 0; out && i < n; i++) {
            PQclear(out[i]);
            out[i] = NULL;
        }
    }
    PQclear(bad);
    if (failed)
        *failed = rc < 0 ? bad_index : -1;
    return rc;
}

/* The columns of "Key (a, b)=(...)" in a violation's detail, as a JSON array. */
static json_t *key_detail_columns(const PGresult *res)
{
    const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    if (!d || strncmp(d, "Key (", 5) != 0)
        return NULL;
    d += 5;
    size_t n = strcspn(d, ")");
    if (n == 0 || strncmp(d + n, ")=(", 3) != 0 ||
        strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789_, ") != n)
        return NULL;
    json_t *cols = json_array();
    for (const char *s = d, *end = d + n; cols && s < end;) {
        size_t m = strcspn(s, ",");
        if (s + m > end)
            m = (size_t)(end - s);
        json_array_append_new(cols, json_stringn(s, m));
        s += m;
        s += strspn(s, ", ");
    }
    return cols;
}

/*
 * The columns of the constraint (or unique index) named in res, from the
 * catalog. PostgreSQL leaves them out of the message under row-level
 * security, so this needs a query: only on a plain connection, after rolling
 * back the failed transaction.
 */
static json_t *constraint_columns(PGconn *conn, const PGresult *res)
{
    static const char sql[] =
        "SELECT coalesce("
        " (SELECT json_agg(a.attname ORDER BY k.ord) FROM pg_constraint c"
        "   JOIN pg_class t ON t.oid = c.conrelid"
        "   JOIN pg_namespace n ON n.oid = t.relnamespace"
        "   CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)"
        "   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
        "  WHERE c.conname = $1 AND n.nspname = $2 AND t.relname = $3),"
        " (SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_class i"
        "   JOIN pg_namespace n ON n.oid = i.relnamespace"
        "   JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.oid"
        "    AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0"
        "   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        "  WHERE i.relname = $1 AND n.nspname = $2 AND i.relkind = 'i'))::text";
    const char *params[3] = {PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME),
                             PQresultErrorField(res, PG_DIAG_SCHEMA_NAME),
                             PQresultErrorField(res, PG_DIAG_TABLE_NAME)};
    json_t *cols = NULL;

    if (!conn || !params[0] || !params[1] || !params[2] ||
        PQpipelineStatus(conn) != PQ_PIPELINE_OFF || PQstatus(conn) != CONNECTION_OK)
        return NULL;
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INERROR)
        PQclear(cdb_pg_query(conn, "ROLLBACK"));
    else if (ts != PQTRANS_IDLE)
        return NULL;
    PGresult *r = cdb_pg_query_params(conn, sql, 3, params);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        cols = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
    PQclear(r);
    if (cols && (!json_is_array(cols) || json_array_size(cols) == 0)) {
        json_decref(cols);
        cols = NULL;
    }
    return cols;
}

cdb_err cdb_data_pg_error(PGconn *conn, const PGresult *res, const char *context_field,
                          cdb_error *err)
{
    cdb_err code = cdb_pg_error_from_result(conn, res, err);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *column = res ? PQresultErrorField(res, PG_DIAG_COLUMN_NAME) : NULL;

    if (!state || !err)
        return code;
    /* raised by coredb.doc_written (migration 015) for a document write */
    if (strcmp(state, "CD404") == 0)
        return cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", "id", "Document not found");
    if (strcmp(state, "CD413") == 0)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "patch",
                                    "The patched document would be larger than DOC_MAX_BYTES allows");
    if (strcmp(state, "CD412") == 0)
        return cdb_error_set_detail(err, CDB_ERR_PRECONDITION_FAILED, "field", "if_match",
                                    "The document's etag differs from if_match: it changed since it was read");
    if (strcmp(state, "42501") == 0) {
        /* A restrictive policy is named in the message (permissive ones are
         * not): `coredb table expose` makes the own-rows rule one, named
         * coredb_own_<owner column>, so the refusal can say which rule. */
        const char *own = msg ? strstr(msg, "policy \"coredb_own_") : NULL;
        if (own) {
            own += strlen("policy \"coredb_own_");
            const char *end = strchr(own, '"');
            int len = end ? (int)(end - own) : 0;
            cdb_error_set(err, CDB_ERR_FORBIDDEN, "%.*s must be your own: the row is not allowed by "
                          "the access policy", len, own);
            cdb_error_detail(err, "field", json_stringn(own, (size_t)len));
            cdb_error_detail(err, "policy", json_sprintf("coredb_own_%.*s", len, own));
        } else if (msg && strstr(msg, "row-level security")) {
            cdb_error_set(err, CDB_ERR_FORBIDDEN, "The row is not allowed by the access policy");
        }
    } else if (strcmp(state, "23505") == 0) {
        json_t *cols = key_detail_columns(res);
        if (!cols)
            cols = constraint_columns(conn, res);
        if (cols) {
            cdb_error_detail(err, "field", json_incref(json_array_get(cols, 0)));
            cdb_error_detail(err, "fields", cols);
        }
    } else if (strcmp(state, "23503") == 0 || strcmp(state, "23514") == 0) {
        json_t *cols = column ? NULL : key_detail_columns(res);
        if (!column && !cols)
            cols = constraint_columns(conn, res);
        if (column)
            cdb_error_detail(err, "field", json_string(column));
        else if (cols)
            cdb_error_detail(err, "field", json_incref(json_array_get(cols, 0)));
        json_decref(cols);
    } else if (strncmp(state, "22", 2) == 0 && context_field) {
        cdb_error_detail(err, "field", json_string(context_field));
    }
    return code;
}

const char *cdb_data_redis_prefix(const cdb_principal *p, char *buf, size_t len)
{
    int n;
    if (!p)
        return NULL;
    switch (p->role) {
    case CDB_ROLE_ADMIN:
        n = snprintf(buf, len, "app:");
        break;
    case CDB_ROLE_USER:
    case CDB_ROLE_PREMIUM:
        if (!p->user_id[0])
            return NULL;
        n = snprintf(buf, len, "app:user:%s:", p->user_id);
        break;
    default:
        return NULL;
    }
    return n > 0 && (size_t)n < len ? buf : NULL;
}

int cdb_data_redis_key(const cdb_principal *p, const json_t *key, char **out, cdb_error *err)
{
    char prefix[64];
    *out = NULL;
    if (!cdb_data_redis_prefix(p, prefix, sizeof prefix))
        return cdb_principal_require(NULL, err);
    if (!json_is_string(key))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "key",
                                    "key must be a string");
    size_t n = json_string_length(key);
    const char *s = json_string_value(key);
    if (n == 0 || n > CDB_DATA_REDIS_KEY_MAX || memchr(s, '\0', n))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "key",
                                    "key must be 1 to %d bytes without NUL", CDB_DATA_REDIS_KEY_MAX);
    size_t plen = strlen(prefix);
    char *k = malloc(plen + n + 1);
    if (!k)
        return cdb_error_oom(err);
    memcpy(k, prefix, plen);
    memcpy(k + plen, s, n + 1);
    *out = k;
    return 0;
}
