/*
 * encryption.c - column encryption's administration (coredb/encryption.h):
 * registering a column, rotating its key, the online re-encryption job both
 * run, and the audit counted from the rows.
 *
 * Identifiers: table_name and column_name pass cdb__admin_name_check and a
 * catalog look-up with bound parameters; only the catalog's copy, quoted
 * with PQescapeIdentifier, reaches SQL.
 *
 * The job. Each batch is one short transaction: up to CDB_ENCRYPTION_BATCH
 * rows not yet on the target version are locked FOR UPDATE SKIP LOCKED (a
 * row an API writer holds is left for a later batch), rewritten, and the
 * job's rows_done advanced in the same transaction, so the stored progress
 * is always true. Which rows are left is read from the rows themselves, so
 * a job cut short (crash, SIGKILL, restart) simply runs again.
 */
#include "coredb/encryption.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "core/metrics.h"
#include "management/admin_sql.h"
#include "management/jobs.h"
#include "security/colcrypt.h"
#include "security/colring.h"
#include "security/service_state.h"
#include "store/pg.h"
#include "store/qcache.h"
#include "store/txn.h"

#define run(conn, err, ...) cdb__admin_run((conn), "encryption.statement_failed", (err), __VA_ARGS__)
#define MAX_VERSIONS 64

/* $1 schema, $2 table, $3 column: relname, attname, its type, whether text, the primary key, its
 * number of columns, its type. */
static const char COLUMN_SQL[] =
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),"
    " a.atttypid IN ('text'::regtype, 'varchar'::regtype),"
    " (SELECT string_agg(pa.attname, ',') FROM pg_index i"
    "   JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = ANY (i.indkey)"
    "   WHERE i.indrelid = c.oid AND i.indisprimary),"
    " (SELECT i.indnatts FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),"
    " (SELECT format_type(pa.atttypid, NULL) FROM pg_index i"
    "   JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = i.indkey[0]"
    "   WHERE i.indrelid = c.oid AND i.indisprimary)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped"
    " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')";

/*
 * $1 schema, $2 table, $3 column: the first object that depends on the
 * column, described, or no row. Each would see ciphertext once the column
 * is encrypted: a policy or view comparing values, a constraint or index on
 * them, a default that writes plaintext.
 */
static const char DEPENDENT_SQL[] =
    "SELECT CASE d.classid"
    "  WHEN 'pg_policy'::regclass THEN 'policy ' || (SELECT quote_ident(polname) FROM pg_policy WHERE oid = d.objid)"
    "  WHEN 'pg_rewrite'::regclass THEN 'view ' || (SELECT ev_class::regclass::text FROM pg_rewrite WHERE oid = d.objid)"
    "  WHEN 'pg_constraint'::regclass THEN 'constraint '"
    "    || (SELECT quote_ident(conname) FROM pg_constraint WHERE oid = d.objid)"
    "  WHEN 'pg_class'::regclass THEN 'index ' || d.objid::regclass::text"
    "  WHEN 'pg_trigger'::regclass THEN 'trigger ' || (SELECT quote_ident(tgname) FROM pg_trigger WHERE oid = d.objid)"
    "  WHEN 'pg_attrdef'::regclass THEN 'the default of '"
    "    || (SELECT quote_ident(a.attname) FROM pg_attrdef ad JOIN pg_attribute a"
    "        ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum WHERE ad.oid = d.objid)"
    "  ELSE d.classid::regclass::text END"
    " FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
    " WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(format('%I.%I', $1::text, $2::text))"
    "   AND a.attname = $3 AND d.deptype IN ('n', 'a') ORDER BY 1 LIMIT 1";

/* The column, quoted, with its keys. */
typedef struct enc_col {
    char *table, *column, *pk;     /* catalog names, malloc'd */
    char *qschema, *qtable, *qcolumn, *qpk, *qbidx; /* quoted (PQfreemem) */
    char *pktype;                  /* format_type of the primary key (catalog text), malloc'd */
    bool searchable;
    int current;
    cdb_colkey *keys[MAX_VERSIONS]; /* by version; [0] the blind-index key */
} enc_col;

static void enc_col_destroy(enc_col *c)
{
    free(c->table);
    free(c->column);
    free(c->pk);
    PQfreemem(c->qschema);
    PQfreemem(c->qtable);
    PQfreemem(c->qcolumn);
    PQfreemem(c->qpk);
    PQfreemem(c->qbidx);
    free(c->pktype);
    for (int i = 0; i < MAX_VERSIONS; i++)
        cdb__colkey_free(c->keys[i]);
    memset(c, 0, sizeof *c);
}

static int master_key(const cdb_service *svc, unsigned char m[CDB_COLKEY_BYTES], cdb_error *err)
{
    return cdb__colcrypt_master(svc->cfg->db_encryption_key, "DB_ENCRYPTION_KEY", m, err);
}

/* The quoted names of c (after table, column and pk are set). */
static int quote_names(PGconn *conn, const char *schema, enc_col *c, cdb_error *err)
{
    char bidx[CDB_ADMIN_IDENT_MAX + 1];
    snprintf(bidx, sizeof bidx, "%.58s_bidx", c->column);
    if (!(c->qschema = cdb__admin_quote(conn, schema)) || !(c->qtable = cdb__admin_quote(conn, c->table)) ||
        !(c->qcolumn = cdb__admin_quote(conn, c->column)) || !(c->qpk = cdb__admin_quote(conn, c->pk)) ||
        !(c->qbidx = cdb__admin_quote(conn, bidx)))
        return cdb_error_oom(err);
    /* the primary key's type, for the batch update's join (catalog text, safe to splice) */
    PGresult *res = NULL;
    const char *p[] = {schema, c->table, c->pk};
    int rc = cdb_pg_exec(conn, "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
                               " JOIN pg_class r ON r.oid = a.attrelid JOIN pg_namespace n ON n.oid = r.relnamespace"
                               " WHERE n.nspname = $1 AND r.relname = $2 AND a.attname = $3", 3, p, &res, err);
    if (rc == 0 && PQntuples(res) == 1 && !(c->pktype = strdup(PQgetvalue(res, 0, 0))))
        rc = cdb_error_oom(err);
    PQclear(res);
    return rc;
}

/* table_name and column_name of request, checked. */
static int parse_names(const json_t *request, const char **table, const char **column, cdb_error *err)
{
    int rc;
    if (!json_is_object(request))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    if ((rc = cdb__admin_name_check("table_name", json_object_get(request, "table_name"), table, err)) < 0 ||
        (rc = cdb__admin_name_check("column_name", json_object_get(request, "column_name"), column, err)) < 0)
        return rc;
    return 0;
}

/* request's wait (default true): false answers at once, the serving instances run the job. */
static int parse_wait(const json_t *request, bool *wait, cdb_error *err)
{
    json_t *w = json_object_get(request, "wait");
    if (w && !json_is_boolean(w))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "wait", "wait must be a boolean");
    *wait = !w || json_is_true(w);
    return 0;
}

/* Loads the registered column (coredb.encryption_columns) and unwraps its keys. */
static int load_column(PGconn *conn, const cdb_service *svc, const char *table, const char *column,
                       bool lock, enc_col *c, cdb_error *err)
{
    unsigned char m[CDB_COLKEY_BYTES];
    PGresult *res = NULL;
    const char *params[] = {table, column};
    char sql[256];
    int rc;

    snprintf(sql, sizeof sql,
             "SELECT pk_column, searchable, current_version FROM coredb.encryption_columns"
             " WHERE table_name = $1 AND column_name = $2%s", lock ? " FOR UPDATE" : "");
    if ((rc = master_key(svc, m, err)) < 0 || (rc = cdb_pg_exec(conn, sql, 2, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "column", column, "%s.%s is not an encrypted column",
                                  table, column);
        goto out;
    }
    c->table = strdup(table);
    c->column = strdup(column);
    c->pk = strdup(PQgetvalue(res, 0, 0));
    c->searchable = PQgetvalue(res, 0, 1)[0] == 't';
    c->current = atoi(PQgetvalue(res, 0, 2));
    if (!c->table || !c->column || !c->pk) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = quote_names(conn, svc->cfg->postgres_schema, c, err)) < 0)
        goto out;
    PQclear(res);
    res = NULL;
    if ((rc = cdb_pg_exec(conn,
                          "SELECT version, wrapped FROM coredb.encryption_keys WHERE table_name = $1"
                          " AND column_name = $2",
                          2, params, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res); i++) {
        int v = atoi(PQgetvalue(res, i, 0));
        if (v < 0 || v >= MAX_VERSIONS)
            continue;
        if (!(c->keys[v] = cdb__colkey_unwrap(m, PQgetvalue(res, i, 1), v, table, column, err))) {
            rc = err ? err->code : CDB_ERR_CONFIG_INVALID;
            goto out;
        }
    }
    if (!c->keys[c->current])
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "The current key of %s.%s is missing", table, column);
out:
    sodium_memzero(m, sizeof m);
    PQclear(res);
    return rc;
}

/* Stores a new key of version v for c, wrapped. */
static int store_key(PGconn *conn, const cdb_service *svc, enc_col *c, int v, cdb_error *err)
{
    unsigned char m[CDB_COLKEY_BYTES];
    char ver[16], *w = NULL;
    int rc;
    snprintf(ver, sizeof ver, "%d", v);
    if ((rc = master_key(svc, m, err)) < 0)
        goto out;
    if (!(c->keys[v] = cdb__colkey_new(v)) || !(w = cdb__colkey_wrap(m, c->keys[v], c->table, c->column))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    const char *params[] = {c->table, c->column, ver, w};
    rc = cdb_pg_exec(conn, "INSERT INTO coredb.encryption_keys (table_name, column_name, version, wrapped)"
                           " VALUES ($1, $2, $3::int, $4)", 4, params, NULL, err);
out:
    sodium_memzero(m, sizeof m);
    free(w);
    return rc;
}

/* A new job row; *id (>= 16 bytes) its id. */
static int start_job(PGconn *conn, const enc_col *c, const char *kind, char *id, size_t idlen, cdb_error *err)
{
    PGresult *res = NULL;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", c->current);
    const char *params[] = {kind, c->table, c->column, ver};
    int rc = cdb_pg_exec(conn, "INSERT INTO coredb.encryption_jobs (kind, table_name, column_name, target_version)"
                               " VALUES ($1, $2, $3, $4::int) RETURNING id::text", 4, params, &res, err);
    if (rc == 0)
        snprintf(id, idlen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/*
 * One batch: rewrites up to CDB_ENCRYPTION_BATCH rows not on the current
 * version whose keys come after last (its text; "" = from the first key),
 * in key order; last becomes the batch's last key (so the next batch reads
 * only keys of its own: a job reads the table about once per sweep, not once
 * per batch). *fetched = the rows read (0: the sweep is at the end), *done =
 * the rows rewritten. A value that does not decrypt is left as it is (and
 * counted by the audit as not on the current version); the job goes on.
 */
static int run_batch(PGconn *conn, enc_col *c, const char *job_id, char **last, long *fetched, long *done,
                     cdb_error *err)
{
    PGresult *res = NULL;
    json_t *batch = NULL;
    char prefix[32], sql[1024], n[24];
    int rc;

    *done = 0;
    *fetched = 0;
    if (!c->pktype) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "The primary key of %s is gone", c->table);
        goto out;
    }
    /* the batch's key range first (the next CDB_ENCRYPTION_BATCH keys, read from the primary key's
       index whatever their state), then its rows in that range still to do: a range the planner
       cannot turn into a scan of the whole table */
    snprintf(sql, sizeof sql,
             /* the last by ORDER BY, not max(): uuid has no max */
             "SELECT count(*) OVER (), k::text FROM (SELECT %s AS k FROM %s.%s%s%s%s%s ORDER BY %s LIMIT %d) s"
             " ORDER BY k DESC LIMIT 1",
             c->qpk, c->qschema, c->qtable, **last ? " WHERE " : "", **last ? c->qpk : "", **last ? " > $1::" : "",
             **last ? c->pktype : "", c->qpk, CDB_ENCRYPTION_BATCH);
    const char *lp[] = {*last};
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = cdb_pg_exec(conn, sql, **last ? 1 : 0, lp, &res, err)) < 0)
        goto out;
    if (PQntuples(res) == 0 || (*fetched = atol(PQgetvalue(res, 0, 0))) == 0)
        goto progress;
    char *end = strdup(PQgetvalue(res, 0, 1));
    PQclear(res);
    res = NULL;
    if (!end) {
        rc = cdb_error_oom(err);
        goto out;
    }
    snprintf(prefix, sizeof prefix, CDB_COLVAL_PREFIX "%d:%%", c->current);
    snprintf(sql, sizeof sql,
             /* t.: ORDER BY a bare name would sort by the output column of that name, the key's text */
             "SELECT t.%s::text, t.%s FROM %s.%s AS t WHERE %s IS NOT NULL AND %s NOT LIKE $1%s%s%s%s AND %s <= $2::%s"
             " ORDER BY t.%s FOR UPDATE SKIP LOCKED",
             c->qpk, c->qcolumn, c->qschema, c->qtable, c->qcolumn, c->qcolumn, **last ? " AND " : "",
             **last ? c->qpk : "", **last ? " > $3::" : "", **last ? c->pktype : "", c->qpk, c->pktype, c->qpk);
    const char *sel[] = {prefix, end, *last};
    rc = cdb_pg_exec(conn, sql, **last ? 3 : 2, sel, &res, err);
    free(*last);
    *last = end;
    if (rc < 0)
        goto out;
    /* the whole batch in one statement: its rows as JSON records, joined on the primary key */
    char upd[1024];
    snprintf(upd, sizeof upd,
             "UPDATE %s.%s AS t SET %s = v.c%s%s%s FROM json_to_recordset($1::json) AS v(pk text, c text, b text)"
             /* the batch's range too: joined through the primary key's index, not a scan of the table */
             " WHERE t.%s = v.pk::%s AND t.%s BETWEEN $2::%s AND $3::%s",
             c->qschema, c->qtable, c->qcolumn, c->searchable ? ", " : "", c->searchable ? c->qbidx : "",
             c->searchable ? " = v.b" : "", c->qpk, c->pktype, c->qpk, c->pktype, c->pktype);
    if (!(batch = json_array())) {
        rc = cdb_error_oom(err);
        goto out;
    }
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        const char *pk = PQgetvalue(res, i, 0), *val = PQgetvalue(res, i, 1);
        char *plain = NULL, *enc = NULL, bidx[33] = "";
        size_t len = strlen(val);
        int v = 0;
        cdb_error derr;
        cdb_error_init(&derr);
        if (cdb__colval_is_encrypted(val, &v)) {
            plain = v < MAX_VERSIONS && c->keys[v]
                        ? cdb__colval_decrypt(c->keys[v], c->table, c->column, pk, val, &len, &derr)
                        : NULL;
            if (!plain) {
                cdb__metrics_inc(CDB_M_ENCRYPTION_FAILURES);
                cdb_log_warn("encryption.undecryptable", "a value of %s.%s (row %s) does not decrypt; left as it is",
                             c->table, c->column, pk);
                cdb_error_destroy(&derr);
                continue;
            }
        }
        enc = cdb__colval_encrypt(c->keys[c->current], c->table, c->column, pk, plain ? plain : val, len);
        if (c->searchable && c->keys[0])
            cdb__colval_blind(c->keys[0], plain ? plain : val, len, bidx);
        if (plain) {
            sodium_memzero(plain, len);
            free(plain);
        }
        if (!enc) {
            rc = cdb_error_oom(err);
            break;
        }
        json_t *rec = json_pack("{s:s, s:s, s:s}", "pk", pk, "c", enc, "b", bidx);
        free(enc);
        if (!rec || json_array_append_new(batch, rec) < 0) {
            rc = cdb_error_oom(err);
            break;
        }
        (*done)++;
    }
    if (rc < 0)
        goto out;
    if (*done > 0) {
        char *text = json_dumps(batch, JSON_COMPACT);
        const char *up[] = {text, PQgetvalue(res, 0, 0), *last};
        rc = text ? cdb_pg_exec(conn, upd, 3, up, NULL, err) : cdb_error_oom(err);
        free(text);
        if (rc < 0)
            goto out;
    }
progress:
    snprintf(n, sizeof n, "%ld", *done);
    const char *jp[] = {job_id, n};
    if ((rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_jobs SET rows_done = rows_done + $2::bigint,"
                                " updated_at = now() WHERE id = $1::bigint", 2, jp, NULL, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb__metrics_add(CDB_M_ENCRYPTION_ROWS, (uint64_t)*done);
out:
    if (rc < 0)
        PQclear(PQexec(conn, "ROLLBACK"));
    PQclear(res);
    json_decref(batch);
    return rc;
}

void cdb_encryption_on_progress(cdb_service *svc, cdb_encryption_progress_fn fn, void *arg)
{
    svc->encryption_progress = fn;
    svc->encryption_progress_arg = arg;
}

/* The rows a pass has to do (only counted when someone watches the progress). */
static int rows_to_do(PGconn *conn, const enc_col *c, long *total, cdb_error *err)
{
    PGresult *res = NULL;
    char prefix[32], sql[512];
    snprintf(prefix, sizeof prefix, CDB_COLVAL_PREFIX "%d:%%", c->current);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s.%s WHERE %s IS NOT NULL AND %s NOT LIKE $1", c->qschema,
             c->qtable, c->qcolumn, c->qcolumn);
    const char *p[] = {prefix};
    int rc = cdb_pg_exec(conn, sql, 1, p, &res, err);
    if (rc == 0)
        *total = atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/* Runs a job to its end: batches until none is left, then marks it done and retires unused keys. */
static int run_job(cdb_service *svc, PGconn *conn, enc_col *c, const char *job_id, cdb_error *err)
{
    long done = 0, fetched = 0;
    int rc;
    /* two passes, each after every instance's key snapshot has expired
       (colring.h): the first so that no reader meets a row under a key its
       snapshot does not hold yet (a rotation's new version: "decryption
       failed" under load), the second for values written meanwhile with the
       previous state */
    for (int pass = 0; pass < 2; pass++) {
        long total = 0, so_far = 0, swept;
        usleep((CDB_COLRING_TTL_MS + 500) * 1000);
        if (svc->encryption_progress) {
            if ((rc = rows_to_do(conn, c, &total, err)) < 0)
                return rc;
            svc->encryption_progress(svc->encryption_progress_arg, 0, total, pass);
        }
        /* one sweep in key order; the last pass sweeps until one rewrites nothing. A row an
           API writer held (SKIP LOCKED) is passed over by its sweep and taken by the next
           (every writer has the new key by the last pass) */
        do {
            char *last = strdup("");
            swept = 0;
            if (!last)
                return cdb_error_oom(err);
            do {
                if ((rc = run_batch(conn, c, job_id, &last, &fetched, &done, err)) < 0)
                    break;
                swept += done;
                so_far += done;
                if (svc->encryption_progress && done > 0)
                    svc->encryption_progress(svc->encryption_progress_arg, so_far,
                                             total > so_far ? total : so_far, pass);
            } while (fetched > 0);
            free(last);
            if (rc < 0)
                return rc;
        } while (pass == 1 && swept > 0);
    }
    const char *p[] = {job_id};
    rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_jobs SET state = 'done', finished_at = now(), updated_at = now()"
                           " WHERE id = $1::bigint", 1, p, NULL, err);
    /* an older version is retired once no row uses it (still kept: retired keys still decrypt) */
    for (int v = 1; v < c->current && rc == 0; v++) {
        char like[32], ver[16], sql[512];
        PGresult *res = NULL;
        if (!c->keys[v])
            continue;
        snprintf(like, sizeof like, CDB_COLVAL_PREFIX "%d:%%", v);
        snprintf(ver, sizeof ver, "%d", v);
        snprintf(sql, sizeof sql, "SELECT EXISTS (SELECT 1 FROM %s.%s WHERE %s LIKE $1)", c->qschema, c->qtable,
                 c->qcolumn);
        const char *lp[] = {like}, *kp[] = {c->table, c->column, ver};
        if ((rc = cdb_pg_exec(conn, sql, 1, lp, &res, err)) == 0 && PQgetvalue(res, 0, 0)[0] == 'f')
            rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_keys SET retired_at = now() WHERE table_name = $1"
                                   " AND column_name = $2 AND version = $3::int AND retired_at IS NULL",
                             3, kp, NULL, err);
        PQclear(res);
    }
    return rc;
}

static int job_json(PGconn *conn, const char *id, json_t **out, cdb_error *err)
{
    PGresult *res = NULL;
    const char *p[] = {id};
    int rc = cdb_pg_exec(conn,
                         "SELECT json_build_object('id', id, 'kind', kind, 'table_name', table_name,"
                         " 'column_name', column_name, 'target_version', target_version, 'state', state,"
                         " 'rows_done', rows_done, 'started_at', " CDB_SQL_TS("started_at") ","
                         " 'finished_at', " CDB_SQL_TS("finished_at") ")::text"
                         " FROM coredb.encryption_jobs WHERE id = $1::bigint",
                         1, p, &res, err);
    if (rc == 0 && PQntuples(res) != 1)
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such encryption job");
    if (rc == 0)
        rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), out, err);
    PQclear(res);
    return rc;
}

/*
 * A job's end (or a wait:false setup's start): the table's cached answers go.
 * The bump makes them unreachable on every instance; the purge deletes their
 * bytes from Redis, since pages cached before the setup or while the job ran
 * hold rows that were still plaintext then.
 */
static void clear_table_cache(cdb_service *svc, const char *table)
{
    long deleted = 0;
    cdb_error e;
    cdb_error_init(&e);
    cdb__colring_invalidate(svc->colring);
    cdb__admin_announce(svc, table);
    if (cdb_qcache_purge(svc->qcache, table, &deleted, &e) < 0)
        cdb_log_warn("encryption.cache_purge_failed", "%s: cached answers of %s stay until CACHE_TTL", e.message,
                     table);
    else if (deleted > 0)
        cdb_log_info("encryption.cache_purged", "%ld cached answers of %s deleted", deleted, table);
    cdb_error_destroy(&e);
}

/* After setup or rotation's first transaction: the job to its end, the answer. */
static int finish(cdb_service *svc, PGconn *conn, enc_col *c, const char *job_id, bool wait, json_t **out,
                  cdb_error *err)
{
    json_t *job = NULL;
    const char *p[] = {job_id};
    int rc;
    if (wait) {
        /* the resumer (resume_jobs) leaves a job alone while its runner holds this */
        rc = cdb_pg_exec(conn, "SELECT pg_advisory_lock(7011, $1::int)", 1, p, NULL, err);
        if (rc == 0)
            rc = run_job(svc, conn, c, job_id, err);
        PQclear(cdb_pg_query(conn, "SELECT pg_advisory_unlock_all()"));
    } else {
        /* left to the serving instances' resumer, at its next tick */
        rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_jobs SET updated_at = now() - interval '1 hour'"
                               " WHERE id = $1::bigint", 1, p, NULL, err);
    }
    if (rc == 0)
        rc = job_json(conn, job_id, &job, err);
    if (rc == 0 && !(*out = json_pack("{s:s, s:s, s:i, s:b, s:o}", "table_name", c->table, "column_name",
                                      c->column, "key_version", c->current, "searchable", c->searchable, "job",
                                      job)))
        rc = cdb_error_oom(err);
    clear_table_cache(svc, c->table);
    return rc;
}

/* Inside setup's transaction: the column checked, widened, registered, keyed. */
static int setup_in_tx(PGconn *conn, cdb_service *svc, const char *table, const char *column, bool searchable,
                       enc_col *c, cdb_error *err)
{
    PGresult *res = NULL;
    const char *params[] = {svc->cfg->postgres_schema, table, column};
    int rc = cdb_pg_exec(conn, COLUMN_SQL, 3, params, &res, err);
    if (rc < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "table", table, "Unknown table");
        goto out;
    }
    if (PQgetisnull(res, 0, 1)) {
        rc = cdb_error_set_detail(err, CDB_ERR_UNKNOWN_COLUMN, "column", column, "Unknown column %s of %s",
                                  column, table);
        goto out;
    }
    if (PQgetvalue(res, 0, 3)[0] != 't') {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "column_name",
                                  "Only text and varchar columns can be encrypted; %s is %s", column,
                                  PQgetvalue(res, 0, 2));
        goto out;
    }
    if (PQgetisnull(res, 0, 4) || strcmp(PQgetvalue(res, 0, 5), "1") != 0 ||
        strcmp(PQgetvalue(res, 0, 4), column) == 0) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "table_name",
                                  "An encrypted column needs a one-column primary key other than itself "
                                  "(it binds each value to its row)");
        goto out;
    }
    /* the types whose text coredb can write as PostgreSQL does (data/crypt.c, pk_canon) */
    static const char *const key_types[] = {"smallint", "integer", "bigint", "uuid", "text", "character varying"};
    bool key_type_ok = false;
    for (size_t i = 0; i < sizeof key_types / sizeof *key_types; i++)
        key_type_ok |= strcmp(PQgetvalue(res, 0, 6), key_types[i]) == 0;
    if (!key_type_ok) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "table_name",
                                  "The primary key of %s is %s: an encrypted column's table needs a primary key "
                                  "of type smallint, integer, bigint, uuid, text or varchar",
                                  table, PQgetvalue(res, 0, 6));
        goto out;
    }
    c->table = strdup(PQgetvalue(res, 0, 0));
    c->column = strdup(PQgetvalue(res, 0, 1));
    c->pk = strdup(PQgetvalue(res, 0, 4));
    c->searchable = searchable;
    c->current = 1;
    if (!c->table || !c->column || !c->pk) {
        rc = cdb_error_oom(err);
        goto out;
    }
    bool widen = strcmp(PQgetvalue(res, 0, 2), "text") != 0;
    PQclear(res);
    res = NULL;
    if ((rc = cdb_pg_exec(conn, DEPENDENT_SQL, 3, params, &res, err)) < 0)
        goto out;
    if (PQntuples(res) == 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "column_name",
                                  "Column %s of %s is used by %s, which would see ciphertext once it is "
                                  "encrypted: drop or change it first", column, table, PQgetvalue(res, 0, 0));
        goto out;
    }
    PQclear(res);
    res = NULL;
    const char *reg[] = {c->table, c->column, c->pk, searchable ? "t" : "f"};
    if ((rc = quote_names(conn, svc->cfg->postgres_schema, c, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "INSERT INTO coredb.encryption_columns (table_name, column_name, pk_column,"
                                " searchable, current_version) VALUES ($1, $2, $3, $4::boolean, 1)"
                                " ON CONFLICT DO NOTHING RETURNING 1", 4, reg, &res, err)) < 0)
        goto out;
    if (PQntuples(res) != 1) {
        rc = cdb_error_set_detail(err, CDB_ERR_CONFLICT, "column", column, "%s.%s is already encrypted", table,
                                  column);
        goto out;
    }
    /* varchar(n) could not hold the longer ciphertext (text is left alone: no ACCESS EXCLUSIVE lock) */
    if ((widen && (rc = run(conn, err, "ALTER TABLE %s.%s ALTER COLUMN %s TYPE text", c->qschema, c->qtable,
                            c->qcolumn)) < 0) ||
        (rc = store_key(conn, svc, c, 1, err)) < 0)
        goto out;
    if (searchable) {
        char ixname[CDB_ADMIN_IDENT_MAX + 1];
        snprintf(ixname, sizeof ixname, "%.28s_%.28s_bidx", c->table, c->column);
        char *qix = cdb__admin_quote(conn, ixname);
        if (!qix ||
            (rc = run(conn, err, "ALTER TABLE %s.%s ADD COLUMN IF NOT EXISTS %s text", c->qschema, c->qtable,
                      c->qbidx)) < 0 ||
            (rc = run(conn, err, "CREATE INDEX IF NOT EXISTS %s ON %s.%s (%s)", qix, c->qschema, c->qtable,
                      c->qbidx)) < 0 ||
            (rc = store_key(conn, svc, c, 0, err)) < 0)
            rc = rc < 0 ? rc : cdb_error_oom(err);
        PQfreemem(qix);
        if (rc < 0)
            goto out;
    }
out:
    PQclear(res);
    return rc;
}

int cdb_encryption_setup_column(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                                json_t **out, cdb_error *err)
{
    enc_col c = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    const char *table = NULL, *column = NULL;
    char job_id[24] = "";
    unsigned char m[CDB_COLKEY_BYTES];
    int rc;

    *out = NULL;
    json_t *s = json_is_object(request) ? json_object_get(request, "searchable") : NULL;
    bool wait = true;
    if ((rc = cdb__admin_require(caller, "encrypt columns", err)) < 0 ||
        (rc = parse_names(request, &table, &column, err)) < 0)
        goto out;
    if ((rc = parse_wait(request, &wait, err)) < 0)
        goto out;
    if (s && !json_is_boolean(s)) {
        rc = cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "searchable", "searchable must be a boolean");
        goto out;
    }
    if ((rc = master_key(svc, m, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = setup_in_tx(conn, svc, table, column, json_is_true(s), &c, err)) < 0 ||
        (rc = start_job(conn, &c, "setup", job_id, sizeof job_id, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "encryption.setup", c.table, request, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    /* the catalog first (the blind-index column, the widened type), then the keys: a request that
       learns the column is encrypted finds the catalog that goes with it (data/tx_parse.c copes
       with one that began just before) */
    cdb__admin_announce(svc, c.table);
    cdb__colring_invalidate(svc->colring); /* this instance's writers encrypt from now on */
    cdb_log_info("encryption.setup", "column %s.%s registered for encryption (job %s)", c.table, c.column, job_id);
    rc = finish(svc, conn, &c, job_id, wait, out, err);
out:
    sodium_memzero(m, sizeof m);
    cdb_txn_release(svc->pool, pc);
    enc_col_destroy(&c);
    return cdb__admin_audit_failure(svc, caller, "encryption.setup", table, request, rc, err);
}

int cdb_encryption_rotate_key(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                              json_t **out, cdb_error *err)
{
    enc_col c = {0};
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    const char *table = NULL, *column = NULL;
    char job_id[24] = "";
    int rc;

    bool wait = true;
    *out = NULL;
    if ((rc = cdb__admin_require(caller, "rotate encryption keys", err)) < 0 ||
        (rc = parse_names(request, &table, &column, err)) < 0 || (rc = parse_wait(request, &wait, err)) < 0)
        goto out;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 || (rc = load_column(conn, svc, table, column, true, &c, err)) < 0)
        goto out;
    if (c.current + 1 >= MAX_VERSIONS) {
        rc = cdb_error_set(err, CDB_ERR_CONFLICT, "%s.%s has reached its last key version", table, column);
        goto out;
    }
    c.current++;
    char ver[16];
    snprintf(ver, sizeof ver, "%d", c.current);
    const char *p[] = {c.table, c.column, ver};
    if ((rc = store_key(conn, svc, &c, c.current, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_columns SET current_version = $3::int,"
                                " last_rotated_at = now() WHERE table_name = $1 AND column_name = $2",
                          3, p, NULL, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_jobs SET state = 'failed', updated_at = now()"
                                " WHERE table_name = $1 AND column_name = $2 AND state = 'running'",
                          2, p, NULL, err)) < 0 ||
        (rc = start_job(conn, &c, "rotate", job_id, sizeof job_id, err)) < 0 ||
        (rc = cdb_audit_record_in(conn, caller, "encryption.rotate", c.table, request, err)) < 0 ||
        (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb__colring_invalidate(svc->colring);
    cdb_log_info("encryption.rotate", "column %s.%s now on key version %d (job %s)", c.table, c.column, c.current,
                 job_id);
    rc = finish(svc, conn, &c, job_id, wait, out, err);
out:
    cdb_txn_release(svc->pool, pc);
    enc_col_destroy(&c);
    return cdb__admin_audit_failure(svc, caller, "encryption.rotate", table, request, rc, err);
}

/* The audit of one column (registered row i of res). */
static int audit_column(PGconn *conn, const cdb_service *svc, const char *table, const char *column,
                        json_t *columns, cdb_error *err)
{
    enc_col c = {0};
    PGresult *res = NULL;
    char sql[1024];
    int rc;
    const char *p[] = {table, column};

    c.table = strdup(table);
    c.column = strdup(column);
    c.pk = strdup("");
    if (!c.table || !c.column || !c.pk) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if ((rc = quote_names(conn, svc->cfg->postgres_schema, &c, err)) < 0)
        goto out;
    /* counted from the rows: anything not in the value form is plaintext */
    snprintf(sql, sizeof sql,
             "SELECT json_build_object('table_name', $1::text, 'column_name', $2::text,"
             " 'key_version', e.current_version, 'last_rotated_at', " CDB_SQL_TS("e.last_rotated_at") ","
             " 'searchable', e.searchable,"
             " 'rows_by_key_version', coalesce((SELECT json_object_agg(v, n) FROM ("
             "   SELECT substring(%s from '^cdb1:([0-9]+):') v, count(*) n FROM %s.%s"
             "   WHERE %s ~ '^cdb1:[0-9]+:' GROUP BY 1) x), '{}'),"
             " 'plaintext_rows', (SELECT count(*) FROM %s.%s WHERE %s IS NOT NULL AND %s !~ '^cdb1:[0-9]+:'),"
             " 'job', (SELECT json_build_object('id', j.id, 'kind', j.kind, 'state', j.state, 'rows_done', j.rows_done)"
             "   FROM coredb.encryption_jobs j WHERE j.table_name = $1 AND j.column_name = $2 ORDER BY j.id DESC LIMIT 1))::text"
             " FROM coredb.encryption_columns e WHERE e.table_name = $1 AND e.column_name = $2",
             c.qcolumn, c.qschema, c.qtable, c.qcolumn, c.qschema, c.qtable, c.qcolumn, c.qcolumn);
    json_t *one = NULL;
    if ((rc = cdb_pg_exec(conn, sql, 2, p, &res, err)) < 0)
        goto out;
    if (PQntuples(res) == 1) {
        if ((rc = cdb_pg_json_parse(PQgetvalue(res, 0, 0), &one, err)) < 0)
            goto out;
        json_array_append_new(columns, one);
    }
out:
    PQclear(res);
    enc_col_destroy(&c);
    return rc;
}

int cdb_encryption_audit(cdb_service *svc, const cdb_principal *caller, const char *table_name,
                         json_t **out, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    json_t *columns = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "audit column encryption", err)) < 0)
        goto out;
    if (!(columns = json_array())) {
        rc = cdb_error_oom(err);
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    const char *p[] = {table_name};
    if ((rc = cdb_pg_exec(conn, "SELECT table_name, column_name FROM coredb.encryption_columns"
                                " WHERE $1::text IS NULL OR table_name = $1 ORDER BY 1, 2",
                          1, p, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++)
        rc = audit_column(conn, svc, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), columns, err);
    if (rc == 0 && !(*out = json_pack("{s:O}", "columns", columns)))
        rc = cdb_error_oom(err);
out:
    json_decref(columns);
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb_encryption_job(cdb_service *svc, const cdb_principal *caller, const char *id, json_t **out,
                       cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb__admin_require(caller, "read encryption jobs", err)) < 0)
        goto out;
    if (!id || !*id || strlen(id) > 18 || strspn(id, "0123456789") != strlen(id)) {
        rc = cdb_error_set(err, CDB_ERR_NOT_FOUND, "No such encryption job");
        goto out;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    rc = job_json(conn, id, out, err);
out:
    cdb_txn_release(svc->pool, pc);
    return rc;
}

/* ---- master key changes, the start check, resuming jobs ---- */

int cdb_encryption_rewrap(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    unsigned char cur[CDB_COLKEY_BYTES], prev[CDB_COLKEY_BYTES];
    bool have_prev = false;
    cdb_pool_conn *pc = NULL;
    PGconn *conn = NULL;
    PGresult *res = NULL;
    long rewrapped = 0;
    int rc, nkeys = 0;

    *out = NULL;
    sodium_memzero(prev, sizeof prev);
    if ((rc = cdb__admin_require(caller, "rewrap encryption keys", err)) < 0 || (rc = master_key(svc, cur, err)) < 0)
        goto out;
    if (svc->cfg->db_encryption_key_previous) {
        if ((rc = cdb__colcrypt_master(svc->cfg->db_encryption_key_previous, "DB_ENCRYPTION_KEY_PREVIOUS", prev,
                                       err)) < 0)
            goto out;
        have_prev = true;
    }
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out;
    }
    if ((rc = cdb_txn_begin(conn, err)) < 0 ||
        (rc = cdb_pg_exec(conn, "SELECT table_name, column_name, version::text, wrapped FROM coredb.encryption_keys"
                                " ORDER BY 1, 2, 3 FOR UPDATE", 0, NULL, &res, err)) < 0)
        goto out;
    nkeys = PQntuples(res);
    for (int i = 0; i < nkeys && rc == 0; i++) {
        const char *table = PQgetvalue(res, i, 0), *column = PQgetvalue(res, i, 1), *ver = PQgetvalue(res, i, 2);
        int v = atoi(ver);
        cdb_error ignored;
        cdb_error_init(&ignored);
        cdb_colkey *k = cdb__colkey_unwrap(cur, PQgetvalue(res, i, 3), v, table, column, &ignored);
        cdb_error_destroy(&ignored);
        if (k) {                   /* already under the current key */
            cdb__colkey_free(k);
            continue;
        }
        if (!have_prev || !(k = cdb__colkey_unwrap(prev, PQgetvalue(res, i, 3), v, table, column, err))) {
            rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                               "DB_ENCRYPTION_KEY does not unwrap the data key %d of %s.%s%s: wrong master key? "
                               "(after a change, give the former one as DB_ENCRYPTION_KEY_PREVIOUS)",
                               v, table, column, have_prev ? ", nor does DB_ENCRYPTION_KEY_PREVIOUS" : "");
            break;
        }
        char *w = cdb__colkey_wrap(cur, k, table, column);
        cdb__colkey_free(k);
        const char *p[] = {table, column, ver, w};
        rc = w ? cdb_pg_exec(conn, "UPDATE coredb.encryption_keys SET wrapped = $4 WHERE table_name = $1"
                                   " AND column_name = $2 AND version = $3::int", 4, p, NULL, err)
               : cdb_error_oom(err);
        free(w);
        if (rc == 0)
            rewrapped++;
    }
    json_t *params = NULL;
    if (rc == 0 && rewrapped > 0 &&
        (!(params = json_pack("{s:I}", "rewrapped", (json_int_t)rewrapped)) ||
         (rc = cdb_audit_record_in(conn, caller, "encryption.rewrap", "encryption_keys", params, err)) < 0)) {
        rc = rc < 0 ? rc : cdb_error_oom(err);
    }
    json_decref(params);
    if (rc < 0 || (rc = cdb_txn_commit(conn, err)) < 0)
        goto out;
    cdb__colring_invalidate(svc->colring);
    if (rewrapped)
        cdb_log_info("encryption.rewrap", "%ld data keys rewrapped with the new DB_ENCRYPTION_KEY", rewrapped);
    if (!(*out = json_pack("{s:I, s:i}", "rewrapped", (json_int_t)rewrapped, "keys", nkeys)))
        rc = cdb_error_oom(err);
out:
    sodium_memzero(cur, sizeof cur);
    sodium_memzero(prev, sizeof prev);
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    if (rc < 0 && rc != CDB_ERR_CONFIG_INVALID)
        return cdb__admin_audit_failure(svc, caller, "encryption.rewrap", "encryption_keys", NULL, rc, err);
    return rc;
}

int cdb_encryption_check_start(cdb_service *svc, cdb_error *err)
{
    const cdb_principal service = {.role = CDB_ROLE_ADMIN};
    json_t *out = NULL;
    cdb_colset *cs = NULL;
    int rc = 0;

    if (svc->cfg->db_encryption_key_previous) {
        if ((rc = cdb_encryption_rewrap(svc, &service, &out, err)) < 0)
            return rc;
        json_decref(out);
    }
    /* every live data key must unwrap: a wrong key stops here, before a row is read or written */
    if (!(cs = cdb__colring_get(svc, err)))
        return err->code;
    cdb__colring_put(svc, cs);
    return 0;
}

/* Background: jobs left running by a crash or restart (untouched for a while) are taken up again. */
static int resume_jobs(void *arg, cdb_error *err)
{
    cdb_service *svc = arg;
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    PGconn *conn = cdb_txn_acquire(svc->pool, &pc, err);
    int rc = 0;

    if (!conn)
        return err->code;
    if ((rc = cdb_pg_exec(conn, "SELECT id::text, table_name, column_name, target_version FROM coredb.encryption_jobs"
                                " WHERE state = 'running' AND updated_at < now() - interval '3 seconds' ORDER BY id",
                          0, NULL, &res, err)) < 0)
        goto out;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        enc_col c = {0};
        const char *id = PQgetvalue(res, i, 0);
        /* one runner per job across instances: a session lock, released below */
        PGresult *lk = NULL;
        const char *p[] = {id};
        if ((rc = cdb_pg_exec(conn, "SELECT pg_try_advisory_lock(7011, $1::int)", 1, p, &lk, err)) < 0)
            break;
        bool mine = PQgetvalue(lk, 0, 0)[0] == 't';
        PQclear(lk);
        if (!mine)
            continue;
        rc = load_column(conn, svc, PQgetvalue(res, i, 1), PQgetvalue(res, i, 2), false, &c, err);
        if (rc == 0 && c.current != atoi(PQgetvalue(res, i, 3)))
            /* a later rotation took over */
            rc = cdb_pg_exec(conn, "UPDATE coredb.encryption_jobs SET state = 'failed', updated_at = now()"
                                   " WHERE id = $1::bigint", 1, p, NULL, err);
        else if (rc == 0) {
            cdb_log_info("encryption.resume", "resuming encryption job %s on %s.%s", id, c.table, c.column);
            rc = run_job(svc, conn, &c, id, err);
            /* as finish() does after a job it waited for: nothing cached meanwhile stays */
            if (rc == 0)
                clear_table_cache(svc, c.table);
        }
        enc_col_destroy(&c);
        PQclear(cdb_pg_query(conn, "SELECT pg_advisory_unlock_all()"));
        /* one job that fails (tried again next tick) does not hold up the jobs after it */
        if (rc < 0 && i + 1 < PQntuples(res)) {
            cdb_log_warn("encryption.resume_failed", "encryption job %s: %s", id, err ? err->message : "failed");
            cdb_error_destroy(err);
            cdb_error_init(err);
            rc = 0;
        }
    }
out:
    PQclear(res);
    cdb_txn_release(svc->pool, pc);
    return rc;
}

int cdb_encryption_register_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    return cdb_jobs_add(jobs, "encryption_resume", 2, resume_jobs, svc);
}
