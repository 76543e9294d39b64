/*
 * data_tx.c - POST /data/transaction and the Redis outbox (data.h).
 *
 * A request is validated whole and turned into its statements before a
 * connection is taken, so a bad operation costs no database work. Then one
 * pipeline, one round trip, runs on one pooled connection:
 *   BEGIN; role + settings (data_common.c) ; op 1 ; ... ; op n ;
 *   RESET ROLE ; INSERT INTO coredb.redis_outbox ... ;
 *   INSERT INTO coredb.tx_ledger (transaction_id, user_id) ; COMMIT
 * The first failing statement aborts the rest and the transaction, and its
 * error names the operation. RESET ROLE is needed because the outbox and
 * the ledger belong to the service's login role, which the app roles have
 * no rights on.
 *
 * The ledger row (ledger.c) commits iff the transaction does, which is how
 * a lost answer is recovered: when the connection dies after COMMIT was
 * sent and before any server error for an earlier statement was read, the
 * outcome is unknown -> 503 TRANSACTION_OUTCOME_UNKNOWN with the
 * transaction_id (decided before anything runs), which
 * GET /data/transactions/{id} later resolves. This request then applies no
 * outbox row: if it committed, the rows did too and the flush job applies
 * them. A server error (constraint, statement timeout 57014, a FATAL
 * before COMMIT) is a known rollback and keeps its own code.
 *
 * With an Idempotency-Key, the key's claim runs right after BEGIN (as the
 * login role: it may refuse, 409/422, or find the answer to replay, and
 * never waits), the first round trip stops before COMMIT, and a second one
 * sends the ledger row with the key, the request hash and the answer built
 * from the results, with COMMIT (commit_keyed: the answer needs the
 * results, and one pipelined statement cannot read another's). Redis
 * results are only known after the commit, so the stored answer says
 * "pending" for them until the outbox bookkeeping transaction replaces it
 * with the final one; whichever is stored last is the one sent.
 *
 * The outbox rows are the request's Redis operations and one "incr" of the
 * cache generation key (qcache.h) per table written: that incr IS the cache
 * invalidation, so it survives a Redis outage like the caller's own ops.
 * Generation bumps come first, so a partial apply still invalidates.
 * Right after the commit the rows are applied in seq order and deleted. They
 * are locked (FOR UPDATE SKIP LOCKED) while being applied, as the background
 * flush does, so a row is never applied by both at once; what could not be
 * applied stays for cdb_data_outbox_flush and is reported "pending". Delivery
 * is at least once: a crash between applying a row and deleting it applies
 * it again. A Redis error reply that retrying cannot fix (WRONGTYPE, INCR of
 * a non-integer) consumes the row and is reported "failed", so one bad row
 * never blocks the queue.
 *
 * Without Redis the rows are applied to the in-process cache; EXPIRE there
 * is a read and a re-set with the new TTL (not atomic against a concurrent
 * writer of the same key, which only an in-process cache can have).
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data_internal.h"
#include "store/ledger.h"
#include "data/sqlbuild.h"
#include "coredb/data.h"
#include "coredb/log.h"
#include "store/pg.h"
#include "store/outbox.h"
#include "store/qcache.h"
#include "core/timeutil.h"

#define TX_MAX_OPS 100
#define TX_MAX_GEN CDB_OUTBOX_MAX_GEN /* tables one transaction may change, cascades included */
#define GEN_KEY_LEN CDB_OUTBOX_GEN_KEY_LEN

typedef enum op_kind { OP_INSERT, OP_UPDATE, OP_DELETE, OP_UPSERT, OP_SET, OP_DEL, OP_EXPIRE, OP_INCR } op_kind;

static const char *const op_names[] = {
    [OP_INSERT] = "insert", [OP_UPDATE] = "update", [OP_DELETE] = "delete", [OP_UPSERT] = "upsert",
    [OP_SET] = "set", [OP_DEL] = "del", [OP_EXPIRE] = "expire", [OP_INCR] = "incr",
};

/* One operation of the request, validated. Strings not owned point into the request. */
typedef struct tx_op {
    op_kind kind;
    const cdb_table *table;        /* PostgreSQL: the catalog's table */
    json_t *values;                /* PostgreSQL: the request's "data" (borrowed) */
    char *sql;                     /* PostgreSQL: the statement, owned */
    char **params;                 /* PostgreSQL: owned, nparams of them (NULL = SQL NULL) */
    int nparams;
    bool rows;                     /* PostgreSQL: RETURNING row JSON, else the count only */
    const char *key;               /* Redis: as the caller named it */
    char *full_key;                /* Redis: in the caller's namespace, owned */
    const char *value;             /* set */
    int ttl;                       /* set (0: none), expire */
    json_t *data;                  /* the result's data, owned */
    const char *status;            /* "success" | "pending" | "failed" */
    char *refusal;                 /* "failed": what Redis said, owned */
} tx_op;

/* One coredb.redis_outbox row of this transaction; seq = index + 1. */
typedef struct outbox_row {
    const char *op;
    const char *key;
    const char *value;
    int ttl;
    tx_op *from;                   /* NULL for a generation bump */
} outbox_row;

typedef struct tx {
    cdb_service *svc;
    const cdb_principal *caller;
    cdb_catalog *cat;              /* ref'd on the first PostgreSQL op */
    char id[37];
    tx_op ops[TX_MAX_OPS];
    int nops;
    int pg_ops[TX_MAX_OPS];        /* indexes into ops of the PostgreSQL ops, in order */
    int npg;
    outbox_row rows[TX_MAX_OPS + TX_MAX_GEN]; /* the Redis ops and one bump per table changed */
    int nrows;
    char gen_keys[TX_MAX_GEN][GEN_KEY_LEN];
    int ngen;
    int64_t started_ms;
    const char *key;               /* Idempotency-Key or NULL (borrowed from the caller) */
    char scope[37];                /* its scope: the caller's user id */
    char hash[CDB_LEDGER_HASH_LEN]; /* the request's keyed hash (ledger_internal.h) */
    char *stored;                  /* keyed: the answer committed with the ledger row, owned */
    char *final;                   /* keyed: the answer with Redis results, once stored too, owned */
} tx;


/* Fails operation i (0-based) with details.operation and details.field. */
static int op_fail(cdb_error *err, int i, cdb_err code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int op_fail(cdb_error *err, int i, cdb_err code, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdb_error_vset(err, code, fmt, ap);
    va_end(ap);
    cdb_error_detail(err, "operation", json_integer(i + 1));
    if (field)
        cdb_error_detail(err, "field", json_string(field));
    return code;
}

/* Adds details.operation to an error another module filled. */
static int op_tag(cdb_error *err, int i, int rc)
{
    cdb_error_detail(err, "operation", json_integer(i + 1));
    return rc;
}

static int oom(cdb_error *err)
{
    return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
}

/* ---- building PostgreSQL operations ---- */

/* Column name of t with privileges priv, or NULL after failing op i with UNKNOWN_COLUMN. */
static const cdb_column *op_column(const cdb_table *t, const char *name, unsigned priv, int i,
                                   cdb_error *err)
{
    const cdb_column *c = cdb_catalog_column(t, name);
    if (c && (c->privs & priv) == priv)
        return c;
    cdb_error_set_detail(err, CDB_ERR_UNKNOWN_COLUMN, "column", name,
                         "Unknown column for this operation: %.100s", name);
    op_tag(err, i, 0);
    return NULL;
}

/* Moves the statement out of q into op (q is reset). */
static int take_sql(cdb_sql *q, tx_op *op, cdb_error *err)
{
    if (q->oom)
        return oom(err);
    op->sql = strdup(q->text);
    op->params = calloc((size_t)q->nparams + 1, sizeof *op->params);
    if (!op->sql || !op->params)
        return oom(err);
    for (op->nparams = 0; op->nparams < q->nparams; op->nparams++) {
        const char *p = q->params[op->nparams];
        if (p && !(op->params[op->nparams] = strdup(p)))
            return oom(err);
    }
    cdb_sql_reset(q);
    return 0;
}

/*
 * Appends data (column -> value) as ' ("a", "b") VALUES ($1, $2)' or, for
 * set_list, '"a" = $1, "b" = $2'; each column needs priv and each value must
 * fit its column.
 */
static int append_values(cdb_sql *q, const cdb_table *t, json_t *data, unsigned priv, bool set_list,
                         int i, cdb_error *err)
{
    const char *name;
    json_t *v;
    bool first = true;

    if (!json_is_object(data) || json_object_size(data) == 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "data",
                       "data must be a non-empty object of column values");
    if (!set_list) {
        cdb_sql_append(q, " (");
        json_object_foreach(data, name, v) {
            const cdb_column *c = op_column(t, name, priv, i, err);
            if (!c)
                return CDB_ERR_UNKNOWN_COLUMN;
            cdb_sql_append(q, first ? "" : ", ");
            cdb_sql_ident(q, c->name);
            first = false;
        }
        cdb_sql_append(q, ") VALUES (");
        first = true;
    }
    json_object_foreach(data, name, v) {
        const cdb_column *c = op_column(t, name, priv, i, err);
        char *text = NULL;
        int rc;
        if (!c)
            return CDB_ERR_UNKNOWN_COLUMN;
        if ((rc = cdb_sql_value_text(v, c, name, &text, err)) < 0)
            return op_tag(err, i, rc);
        cdb_sql_append(q, first ? "" : ", ");
        if (set_list) {
            cdb_sql_ident(q, c->name);
            cdb_sql_append(q, " = ");
        }
        rc = cdb_sql_param(q, text);
        free(text);
        if (rc < 0)
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "data", "Too many values");
        first = false;
    }
    if (!set_list)
        cdb_sql_append(q, ")");
    return 0;
}

/* " ON CONFLICT (...) DO UPDATE SET c = EXCLUDED.c, ..." or " DO NOTHING". */
static int append_conflict(cdb_sql *q, const cdb_table *t, json_t *cols, json_t *data, int i,
                           cdb_error *err)
{
    size_t k;
    json_t *v;
    const char *name;
    bool first = true;

    if (!json_is_array(cols) || json_array_size(cols) == 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "conflict_columns",
                       "upsert needs conflict_columns, a non-empty array of column names");
    cdb_sql_append(q, " ON CONFLICT (");
    json_array_foreach(cols, k, v) {
        const cdb_column *c;
        if (!json_is_string(v))
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "conflict_columns",
                           "conflict_columns must hold column names");
        if (!(c = op_column(t, json_string_value(v), 0, i, err)))
            return CDB_ERR_UNKNOWN_COLUMN;
        cdb_sql_append(q, k ? ", " : "");
        cdb_sql_ident(q, c->name);
    }
    cdb_sql_append(q, ")");
    json_object_foreach(data, name, v) {
        bool conflict = false;
        json_t *cv;
        json_array_foreach(cols, k, cv)
            conflict = conflict || strcmp(json_string_value(cv), name) == 0;
        if (conflict)
            continue;
        const cdb_column *c = op_column(t, name, CDB_PRIV_UPDATE, i, err);
        if (!c)
            return CDB_ERR_UNKNOWN_COLUMN;
        cdb_sql_append(q, first ? " DO UPDATE SET " : ", ");
        cdb_sql_ident(q, c->name);
        cdb_sql_append(q, " = EXCLUDED.");
        cdb_sql_ident(q, c->name);
        first = false;
    }
    if (first)
        cdb_sql_append(q, " DO NOTHING");
    return 0;
}

/*
 * " RETURNING (SELECT row_to_json(x.*) FROM (SELECT t."a", ...) x)::text" over
 * the columns asked for (returning: absent/true = every readable column,
 * false = none, or an array of names); op->rows tells whether any.
 */
static int append_returning(cdb_sql *q, const cdb_table *t, json_t *returning, tx_op *op, int i,
                            cdb_error *err)
{
    bool first = true;

    if (returning && !json_is_boolean(returning) && !json_is_array(returning))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "returning",
                       "returning must be a boolean or an array of column names");
    if (json_is_array(returning)) {
        size_t k;
        json_t *v;
        json_array_foreach(returning, k, v) {
            const cdb_column *c;
            if (!json_is_string(v))
                return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "returning",
                               "returning must hold column names");
            if (!(c = op_column(t, json_string_value(v), CDB_PRIV_SELECT, i, err)))
                return CDB_ERR_UNKNOWN_COLUMN;
            cdb_sql_append(q, first ? " RETURNING (SELECT row_to_json(x.*) FROM (SELECT t." : ", t.");
            cdb_sql_ident(q, c->name);
            first = false;
        }
    } else if (!json_is_false(returning)) {
        for (size_t k = 0; k < t->ncolumns; k++) {
            if (!(t->columns[k].privs & CDB_PRIV_SELECT))
                continue;
            cdb_sql_append(q, first ? " RETURNING (SELECT row_to_json(x.*) FROM (SELECT t." : ", t.");
            cdb_sql_ident(q, t->columns[k].name);
            first = false;
        }
    }
    if (!first)
        cdb_sql_append(q, ") x)::text");
    op->rows = !first;
    return 0;
}

static int parse_pg_op(tx *t, int i, json_t *o, op_kind kind, cdb_sql *q, cdb_error *err)
{
    static const unsigned need[] = {
        [OP_INSERT] = CDB_PRIV_INSERT, [OP_UPDATE] = CDB_PRIV_UPDATE,
        [OP_DELETE] = CDB_PRIV_DELETE, [OP_UPSERT] = CDB_PRIV_INSERT | CDB_PRIV_UPDATE,
    };
    tx_op *op = &t->ops[i];
    json_t *name = json_object_get(o, "table"), *data = json_object_get(o, "data");
    json_t *filters = json_object_get(o, "filters");
    int rc;

    op->values = data;
    if (!json_is_string(name) || json_string_length(name) == 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "table", "table must be a non-empty string");
    if (!t->svc->catalog)
        return cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
    if (!t->cat && !(t->cat = cdb_catalog_cache_get(t->svc->catalog, err)))
        return err->code ? err->code : cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
    op->table = cdb_catalog_table(t->cat, t->caller->role, json_string_value(name));
    if (!op->table) {
        cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "table", json_string_value(name),
                             "Unknown table: %.100s", json_string_value(name));
        return op_tag(err, i, CDB_ERR_UNKNOWN_TABLE);
    }
    if ((op->table->privs & need[kind]) != need[kind]) {
        cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "table", op->table->name,
                             "%s on %.100s is not allowed for this role", op_names[kind], op->table->name);
        return op_tag(err, i, CDB_ERR_FORBIDDEN);
    }
    if ((kind == OP_UPDATE || kind == OP_DELETE) &&
        (!json_is_object(filters) || json_object_size(filters) == 0))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "filters",
                       "%s needs non-empty filters: whole-table writes are refused", op_names[kind]);

    const char *schema = cdb_catalog_schema(t->cat);
    if (kind == OP_INSERT || kind == OP_UPSERT) {
        cdb_sql_append(q, "INSERT INTO ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t");
        if ((rc = append_values(q, op->table, data, CDB_PRIV_INSERT, false, i, err)) < 0)
            return rc;
        if (kind == OP_UPSERT &&
            (rc = append_conflict(q, op->table, json_object_get(o, "conflict_columns"), data, i, err)) < 0)
            return rc;
    } else if (kind == OP_UPDATE) {
        cdb_sql_append(q, "UPDATE ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t SET ");
        if ((rc = append_values(q, op->table, data, CDB_PRIV_UPDATE, true, i, err)) < 0)
            return rc;
    } else {
        cdb_sql_append(q, "DELETE FROM ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t");
    }
    if ((kind == OP_UPDATE || kind == OP_DELETE) && (rc = cdb_sql_where(q, op->table, filters, err)) < 0)
        return op_tag(err, i, rc);
    if ((rc = append_returning(q, op->table, json_object_get(o, "returning"), op, i, err)) < 0)
        return rc;
    return take_sql(q, op, err);
}

/* ---- Redis operations ---- */

static int parse_redis_op(tx *t, int i, json_t *o, op_kind kind, cdb_error *err)
{
    tx_op *op = &t->ops[i];
    json_t *key = json_object_get(o, "key"), *value = json_object_get(o, "value");
    json_t *ttl = json_object_get(o, "ttl");
    int rc;

    if ((rc = cdb_data_redis_key(t->caller, key, &op->full_key, err)) < 0)
        return op_tag(err, i, rc);
    op->key = json_string_value(key);
    if (kind == OP_SET) {
        if (!json_is_string(value) || strlen(json_string_value(value)) != json_string_length(value))
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "value",
                           "set needs value, a string without NUL characters");
        op->value = json_string_value(value);
    }
    if (ttl || kind == OP_EXPIRE) {
        if (!json_is_integer(ttl) || json_integer_value(ttl) < 1 || json_integer_value(ttl) > INT_MAX)
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "ttl",
                           "ttl must be a positive integer of seconds");
        op->ttl = (int)json_integer_value(ttl);
    }
    switch (kind) {
    case OP_SET:
        op->data = json_pack("{s:s, s:s}", "key", op->key, "value", op->value);
        break;
    case OP_DEL:
        op->data = json_pack("{s:s, s:n}", "key", op->key, "deleted");
        break;
    case OP_INCR:
        op->data = json_pack("{s:s, s:n}", "key", op->key, "value");
        break;
    default:
        op->data = json_pack("{s:s, s:n}", "key", op->key, "applied");
        break;
    }
    return op->data ? 0 : oom(err);
}

/* ---- validation of the whole request ---- */

/* The fields each kind of operation accepts, besides database and operation. */
static bool field_allowed(op_kind kind, const char *f)
{
    switch (kind) {
    case OP_INSERT: return !strcmp(f, "table") || !strcmp(f, "data") || !strcmp(f, "returning");
    case OP_UPDATE: return !strcmp(f, "table") || !strcmp(f, "data") || !strcmp(f, "filters") ||
                           !strcmp(f, "returning");
    case OP_DELETE: return !strcmp(f, "table") || !strcmp(f, "filters") || !strcmp(f, "returning");
    case OP_UPSERT: return !strcmp(f, "table") || !strcmp(f, "data") || !strcmp(f, "conflict_columns") ||
                           !strcmp(f, "returning");
    case OP_SET:    return !strcmp(f, "key") || !strcmp(f, "value") || !strcmp(f, "ttl");
    case OP_EXPIRE: return !strcmp(f, "key") || !strcmp(f, "ttl");
    default:        return !strcmp(f, "key");
    }
}

static int parse_op(tx *t, int i, json_t *o, cdb_sql *q, cdb_error *err)
{
    json_t *db = json_object_get(o, "database"), *opname = json_object_get(o, "operation");
    bool redis;
    int kind = -1;
    const char *f;
    json_t *v;

    if (!json_is_object(o))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "operations", "Each operation must be an object");
    if (db && !(json_is_string(db) && (!strcmp(json_string_value(db), "postgresql") ||
                                       !strcmp(json_string_value(db), "redis"))))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "database",
                       "database must be \"postgresql\" or \"redis\"");
    redis = db && !strcmp(json_string_value(db), "redis");
    for (int k = redis ? OP_SET : OP_INSERT; json_is_string(opname) && k <= (redis ? OP_INCR : OP_UPSERT); k++)
        if (!strcmp(json_string_value(opname), op_names[k]))
            kind = k;
    if (kind < 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "operation",
                       redis ? "operation must be one of set, del, expire, incr"
                             : "operation must be one of insert, update, delete, upsert");
    json_object_foreach(o, f, v) {
        if (strcmp(f, "database") && strcmp(f, "operation") && !field_allowed(kind, f))
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, f, "%.64s is not a field of %s",
                           f, op_names[kind]);
    }
    t->ops[i].kind = kind;
    t->ops[i].status = "success";
    if (redis)
        return parse_redis_op(t, i, o, kind, err);
    t->pg_ops[t->npg++] = i;
    return parse_pg_op(t, i, o, kind, q, err);
}

/* Plans a generation bump of table, once. */
static int plan_bump(tx *t, const char *table, cdb_error *err)
{
    char key[GEN_KEY_LEN];
    cdb_qcache_generation_key(t->svc->qcache, table, key, sizeof key);
    for (int j = 0; j < t->ngen; j++)
        if (strcmp(t->gen_keys[j], key) == 0)
            return 0;
    if (t->ngen == TX_MAX_GEN)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "operations",
                                    "The transaction would change more than %d tables", TX_MAX_GEN);
    memcpy(t->gen_keys[t->ngen], key, sizeof key);
    t->rows[t->nrows++] = (outbox_row){.op = "incr", .key = t->gen_keys[t->ngen++]};
    return 0;
}

/*
 * The outbox rows: one generation bump per table the transaction can change
 * (those it writes and those their foreign keys cascade into), then the
 * Redis ops in order.
 */
static int plan_outbox(tx *t, cdb_error *err)
{
    const char *cascades[TX_MAX_GEN];
    for (int k = 0; k < t->npg; k++) {
        const char *name = t->ops[t->pg_ops[k]].table->name;
        size_t n = cdb_catalog_cascades(t->cat, name, cascades, TX_MAX_GEN);
        int rc = plan_bump(t, name, err);
        for (size_t c = 0; c < n && rc == 0; c++)
            rc = plan_bump(t, cascades[c], err);
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        if (op->kind >= OP_SET)
            t->rows[t->nrows++] = (outbox_row){.op = op_names[op->kind], .key = op->full_key,
                                               .value = op->value, .ttl = op->ttl, .from = op};
    }
    return 0;
}

static int parse_request(tx *t, json_t *request, cdb_error *err)
{
    json_t *ops = json_object_get(request, "operations"), *v;
    const char *f;
    cdb_sql q;
    int rc = 0;

    if (!json_is_object(request))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "body", "The body must be a JSON object");
    json_object_foreach(request, f, v) {
        if (strcmp(f, "operations"))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", f,
                                        "Unknown field: %.64s", f);
    }
    if (!json_is_array(ops) || json_array_size(ops) < 1 || json_array_size(ops) > TX_MAX_OPS)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "operations",
                                    "operations must be an array of 1 to %d operations", TX_MAX_OPS);
    cdb_sql_init(&q);
    for (size_t i = 0; i < json_array_size(ops) && rc == 0; i++) {
        t->nops = (int)i + 1;      /* so the cleanup frees a partly built op */
        rc = parse_op(t, (int)i, json_array_get(ops, i), &q, err);
        cdb_sql_reset(&q);
    }
    cdb_sql_destroy(&q);
    if (rc == 0)
        rc = plan_outbox(t, err);
    return rc;
}

/* ---- running the transaction ---- */

/* One multi-row INSERT of the outbox rows: 6 parameters a row. */
_Static_assert(6 * (TX_MAX_OPS + TX_MAX_GEN) <= CDB_SQL_MAX_PARAMS, "outbox insert fits one statement");
static int build_outbox_insert(tx *t, cdb_sql *q)
{
    char seq[16], ttl[16];
    int bad = 0;

    cdb_sql_append(q, "INSERT INTO coredb.redis_outbox (transaction_id, seq, op, key, value, ttl) VALUES ");
    for (int r = 0; r < t->nrows && !bad; r++) {
        const outbox_row *row = &t->rows[r];
        snprintf(seq, sizeof seq, "%d", r + 1);
        snprintf(ttl, sizeof ttl, "%d", row->ttl);
        cdb_sql_append(q, r ? ", (" : "(");
        bad |= cdb_sql_param(q, t->id) < 0;
        cdb_sql_append(q, "::uuid, ");
        bad |= cdb_sql_param(q, seq) < 0;
        cdb_sql_append(q, "::int, ");
        bad |= cdb_sql_param(q, row->op) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->key) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->value) < 0;
        cdb_sql_append(q, ", ");
        bad |= cdb_sql_param(q, row->ttl ? ttl : NULL) < 0;
        cdb_sql_append(q, "::int)");
    }
    return bad || q->oom ? -1 : 0;
}

/* The JSON rows of a RETURNING result, or the count of a command without one. */
static int collect_result(tx_op *op, PGresult *res, int i, cdb_error *err)
{
    json_t *rows = NULL;
    long count = op->rows ? PQntuples(res) : strtol(PQcmdTuples(res), NULL, 10);

    if (op->rows) {
        if (!(rows = json_array()))
            return oom(err);
        for (int r = 0; r < PQntuples(res); r++) {
            json_t *row = json_loads(PQgetvalue(res, r, 0), JSON_DECODE_ANY, NULL);
            if (!row || json_array_append_new(rows, row) < 0) {
                json_decref(rows);
                return op_fail(err, i, CDB_ERR_INTERNAL_ERROR, NULL, "Malformed database result");
            }
        }
        op->data = json_pack("{s:o, s:I}", "rows", rows, "count", (json_int_t)count);
    } else {
        op->data = json_pack("{s:I}", "count", (json_int_t)count);
    }
    return op->data ? 0 : oom(err);
}

/*
 * PostgreSQL names no column when a value does not fit its type (SQLSTATE
 * class 22): after the rollback, cast each value of the failed operation
 * alone to its column's type, and name the first that PostgreSQL refuses.
 * Only on this error path, so its extra round trips cost nothing normally.
 */
/*
 * An explicit cast to character(n) / character varying(n) truncates instead
 * of failing, so the length limit is checked here: n from format_type's
 * "(n)", counted in characters (UTF-8 code points) as PostgreSQL does.
 */
static bool too_long_for(const cdb_column *c, const char *text)
{
    const char *paren = strchr(c->type_name, '(');
    if (strncmp(c->type_name, "character", 9) != 0 || !paren)
        return false;
    long limit = strtol(paren + 1, NULL, 10);
    long chars = 0;
    for (const char *p = text; *p; p++)
        chars += ((unsigned char)*p & 0xC0) != 0x80;
    return limit > 0 && chars > limit;
}

static void name_bad_value(PGconn *conn, const tx_op *op, cdb_error *err)
{
    const char *state = json_string_value(json_object_get(err->details, "sqlstate"));
    if (!state || strncmp(state, "22", 2) != 0 || !json_is_object(op->values))
        return;
    PQclear(cdb_pg_query(conn, "ROLLBACK"));
    const char *name;
    json_t *v;
    json_object_foreach(op->values, name, v) {
        const cdb_column *c = cdb_catalog_column(op->table, name);
        char *text = NULL;
        cdb_error ignored;
        cdb_error_init(&ignored);
        if (!c || cdb_sql_value_text(v, c, name, &text, &ignored) < 0 || !text) {
            cdb_error_destroy(&ignored);
            free(text);
            continue;
        }
        bool refused = too_long_for(c, text);
        /* type_name comes from the catalog (format_type), never from the request */
        size_t len = strlen(c->type_name) + 16;
        char *sql = refused ? NULL : malloc(len);
        if (sql) {
            snprintf(sql, len, "SELECT $1::%s", c->type_name);
            const char *params[1] = {text};
            PGresult *res = cdb_pg_query_params(conn, sql, 1, params);
            refused = res && PQresultStatus(res) == PGRES_FATAL_ERROR;
            PQclear(res);
        }
        free(sql);
        free(text);
        if (refused) {
            cdb_error_detail(err, "field", json_string(name));
            return;
        }
    }
}

static char *response_text(tx *t);

/* The ledger row of an unkeyed transaction: its id and owner, nothing to replay. */
static const char LEDGER_SQL[] =
    "INSERT INTO coredb.tx_ledger (transaction_id, user_id) VALUES ($1::uuid, $2::uuid)";
/* ... of a keyed one: with the key, the request hash and the answer. */
static const char LEDGER_KEYED_SQL[] =
    "INSERT INTO coredb.tx_ledger (transaction_id, user_id, scope, idempotency_key, request_hash,"
    " status_code, response) VALUES ($1::uuid, $2::uuid, $3, $4, $5::bytea, 200, $6)";

/*
 * After a failed read of the pipeline whose statement commit_at is its
 * COMMIT: TRANSACTION_OUTCOME_UNKNOWN when the COMMIT may have run (the
 * connection died and no server error for an earlier statement was read).
 * The outbox is then left alone: the flush job applies its rows iff the
 * transaction committed, since they commit with it.
 */
static int check_outcome(tx *t, PGconn *conn, int rc, int failed, int commit_at, cdb_error *err)
{
    if (commit_at >= 0 && cdb_ledger_outcome_unknown(conn, failed >= 0 && failed < commit_at, err))
        return cdb_ledger_fail_unknown(err, t->id);
    return rc;
}

/*
 * Keyed: the answer depends on the operations' results, and PostgreSQL
 * cannot hand one pipelined statement's results to the next, so the first
 * round trip stops before COMMIT; the answer is built here (Redis
 * operations "pending": they are only applied after the commit) and a
 * second round trip sends the ledger row holding it together with COMMIT.
 * One extra round trip, for keyed requests only.
 */
static int commit_keyed(tx *t, PGconn *conn, cdb_error *err)
{
    PGresult *res[2] = { NULL, NULL };
    int failed = -1, rc;

    for (int i = 0; i < t->nops; i++)
        if (t->ops[i].kind >= OP_SET)
            t->ops[i].status = "pending";
    if (!(t->stored = response_text(t)))
        return oom(err);
    const char *params[6] = {t->id, t->caller->user_id, t->scope, t->key, t->hash, t->stored};
    bool sent = PQsendQueryParams(conn, LEDGER_KEYED_SQL, 6, NULL, params, NULL, NULL, 0) == 1;
    bool commit_tried = sent;
    sent = sent && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1;
    if (!sent || PQpipelineSync(conn) != 1) {
        rc = cdb_pg_error_from_result(conn, NULL, err);
        return commit_tried ? check_outcome(t, conn, rc, -1, 1, err) : rc;
    }
    rc = cdb_data_pipeline_read(conn, res, 2, &failed, NULL, err);
    PQclear(res[0]);
    PQclear(res[1]);
    if (rc < 0 && (rc = check_outcome(t, conn, rc, failed, 1, err)) == CDB_ERR_CONFLICT)
        /* the unique index behind the claim's lock: the same key, concurrently */
        rc = cdb_error_set_detail(err, CDB_ERR_IDEMPOTENCY_KEY_IN_PROGRESS, "field", "Idempotency-Key",
                                  "A request with this Idempotency-Key is still running; retry later");
    return rc;
}

/*
 * The pipeline: BEGIN, [the key's claim], the caller's role, the PostgreSQL
 * ops, RESET ROLE, the outbox rows, and (unkeyed) the ledger row and COMMIT
 * in the same round trip, or (keyed) commit_keyed's round trip. A claim
 * that finds the request already committed fills idem with the stored
 * answer and returns 0 without running anything. On success the
 * connection is out of pipeline mode again.
 */
static int run_pipeline(tx *t, cdb_pool_conn *pc, cdb_idempotency *idem, cdb_error *err)
{
    PGconn *conn = cdb_pool_conn_pg(pc);
    PGresult *res[CDB_DATA_PRELUDE_COUNT + 1 + TX_MAX_OPS + 4] = { 0 };
    const int claim_at = 1;                              /* right after BEGIN */
    const int first_op = CDB_DATA_PRELUDE_COUNT + (t->key ? 1 : 0);
    const int first_after_ops = first_op + t->npg;
    int n = first_op, failed = -1, commit_at = -1, rc;
    const char *claim[3] = {t->scope, t->key, t->hash};
    const char *ledger[2] = {t->id, t->caller->user_id};
    cdb_sql q;
    bool sent = true;

    cdb_sql_init(&q);
    if (t->nrows && build_outbox_insert(t, &q) < 0) {
        rc = oom(err);
        goto out_clear;
    }
    rc = t->key ? cdb_data_start_pipeline_after(pc, t->caller, CDB_LEDGER_CLAIM_SQL, 3, claim, err)
                : cdb_data_start_pipeline(pc, t->caller, err);
    if (rc < 0)
        goto out_clear;
    for (int k = 0; k < t->npg; k++, n++) {
        tx_op *op = &t->ops[t->pg_ops[k]];
        sent = sent && PQsendQueryParams(conn, op->sql, op->nparams, NULL,
                                         (const char *const *)op->params, NULL, NULL, 0);
    }
    /* the service's own tables belong to the login role */
    sent = sent && PQsendQueryParams(conn, "RESET ROLE", 0, NULL, NULL, NULL, NULL, 0);
    n++;
    if (t->nrows) {
        sent = sent && PQsendQueryParams(conn, q.text, q.nparams, NULL,
                                         (const char *const *)q.params, NULL, NULL, 0);
        n++;
    }
    if (!t->key) {
        sent = sent && PQsendQueryParams(conn, LEDGER_SQL, 2, NULL, ledger, NULL, NULL, 0);
        n++;
        if (sent)
            commit_at = n;         /* from here the COMMIT may reach the server */
        sent = sent && PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
        n++;
    }
    if (!sent || PQpipelineSync(conn) != 1) {
        rc = check_outcome(t, conn, cdb_pg_error_from_result(conn, NULL, err), -1, commit_at, err);
        goto out_clear;
    }
    rc = cdb_data_pipeline_read(conn, res, n, &failed, "data", err);
    if (rc < 0) {
        if ((rc = check_outcome(t, conn, rc, failed, commit_at, err)) == CDB_ERR_TRANSACTION_OUTCOME_UNKNOWN)
            goto out_clear;
        if (t->key && failed == claim_at && cdb_ledger_claim_error(err)) {
            rc = cdb_ledger_claim_refused(conn, t->scope, t->key, idem, err);
        } else if (failed >= first_op && failed < first_after_ops) {
            int i = t->pg_ops[failed - first_op];
            const char *state = json_string_value(json_object_get(err->details, "sqlstate"));
            if (state && strcmp(state, "42P10") == 0) { /* no unique index matches */
                rc = op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "conflict_columns",
                             "conflict_columns must match a unique constraint of the table");
            } else {
                op_tag(err, i, rc);
                if (PQstatus(conn) == CONNECTION_OK && !PQpipelineStatus(conn))
                    name_bad_value(conn, &t->ops[i], err);
            }
        }
        goto out_clear;
    }
    for (int k = 0; k < t->npg && rc == 0; k++)
        rc = collect_result(&t->ops[t->pg_ops[k]], res[first_op + k], t->pg_ops[k], err);
    if (rc < 0) {
        /* Unkeyed, it has committed: only a result we cannot read remains.
         * Keyed, nothing is committed yet and the release rolls it back. */
        if (!t->key)
            cdb_log_error("data.tx_result_unreadable", "transaction %s committed but its result could not be read", t->id);
        goto out_clear;
    }
    if (t->key && (rc = commit_keyed(t, conn, err)) < 0)
        goto out_clear;
    if (PQexitPipelineMode(conn) != 1)
        cdb_log_warn("data.pipeline_exit_failed", "connection left in pipeline mode");

out_clear:
    for (int k = 0; k < n; k++)
        PQclear(res[k]);
    cdb_sql_destroy(&q);
    return rc;
}

/*
 * Applies this transaction's outbox rows right after its commit (see the top
 * of the file); results of rows left behind say "pending". Keyed, the
 * answer with the Redis results replaces the stored one in the same
 * bookkeeping transaction, and t->final is set once that has committed: the
 * answer sent is always the one a retry would replay.
 */
static void apply_outbox(tx *t, PGconn *conn)
{
    char *final = NULL;
    PGresult *res = NULL;
    bool locked[TX_MAX_OPS + 1] = { false };
    char done[TX_MAX_OPS * 5 + 3] = "{}", seq[16], why[256] = "";
    int stop = t->nrows, failed_seq = 0;
    cdb_error e;
    const char *params[3] = { t->id, done, why };

    cdb_error_init(&e);
    for (int r = 0; r < t->nrows; r++)
        if (t->rows[r].from)
            t->rows[r].from->status = "pending";
    if (cdb_pg_exec(conn, "BEGIN", 0, NULL, NULL, &e) < 0 ||
        cdb_pg_exec(conn, "SELECT seq FROM coredb.redis_outbox WHERE transaction_id = $1 "
                          "ORDER BY seq FOR UPDATE SKIP LOCKED", 1, params, &res, &e) < 0)
        goto out_log;
    for (int k = 0; k < PQntuples(res); k++) {
        int s = atoi(PQgetvalue(res, k, 0));
        if (s >= 1 && s <= t->nrows)
            locked[s] = true;
    }
    for (int r = 0; r < t->nrows; r++) {
        outbox_row *row = &t->rows[r];
        json_t *value = NULL;
        if (!locked[r + 1]) {      /* the flush has it: it keeps the order from here */
            stop = r;
            break;
        }
        cdb_outbox_rc ar = cdb_outbox_apply(t->svc->redis, t->svc->cache, row->op, row->key, row->value, row->ttl,
                                row->from ? &value : NULL, why, sizeof why);
        if (ar == CDB_OUTBOX_DOWN) {
            stop = r;
            failed_seq = r + 1;
            break;
        }
        cdb_outbox_array_add(done, sizeof done, r + 1);
        if (!row->from)
            continue;
        if (ar == CDB_OUTBOX_REFUSED) {
            row->from->status = "failed";
            row->from->refusal = strdup(why);
            cdb_log_warn("data.outbox_refused", "Redis refused %s of transaction %s: %s", row->op, t->id, why);
        } else {
            row->from->status = "success";
        }
        if (value && row->from->kind != OP_SET)
            json_object_set(row->from->data, row->from->kind == OP_DEL ? "deleted"
                                             : row->from->kind == OP_EXPIRE ? "applied" : "value", value);
        json_decref(value);
    }
    if (strcmp(done, "{}") != 0 &&
        cdb_pg_exec(conn, "DELETE FROM coredb.redis_outbox WHERE transaction_id = $1 AND seq = ANY($2::int[])",
                    2, params, NULL, &e) < 0)
        goto out_log;
    if (failed_seq) {
        snprintf(seq, sizeof seq, "%d", failed_seq);
        params[1] = seq;
        if (cdb_pg_exec(conn, "UPDATE coredb.redis_outbox SET attempts = attempts + 1, last_error = $3 "
                              "WHERE transaction_id = $1 AND seq = $2::int", 3, params, NULL, &e) < 0)
            goto out_log;
    }
    if (t->key) {
        if (!(final = response_text(t)))
            goto out_log;
        const char *answer[2] = {t->id, final};
        if (cdb_pg_exec(conn, "UPDATE coredb.tx_ledger SET response = $2 WHERE transaction_id = $1::uuid",
                        2, answer, NULL, &e) < 0)
            goto out_log;
    }
    if (cdb_pg_exec(conn, "COMMIT", 0, NULL, NULL, &e) < 0)
        goto out_log;
    t->final = final;
    final = NULL;
    if (failed_seq)
        cdb_log_warn("data.outbox_pending", "transaction %s: %d Redis operation(s) left for the retry job: %s",
                     t->id, t->nrows - stop, why);
    goto out;

out_log:
    /* Rows applied here but not deleted are applied again by the flush: at least once. */
    cdb_log_warn("data.outbox_bookkeeping_failed", "transaction %s: outbox update failed: %s", t->id, e.message);
out:
    free(final);
    PQclear(res);
    cdb_error_destroy(&e);
}

static json_t *build_response(const tx *t, int64_t started_ms)
{
    json_t *results = json_array();
    json_t *out = json_pack("{s:s, s:s, s:o, s:I}", "transaction_id", t->id, "status", "committed",
                            "results", results, "execution_time_ms",
                            (json_int_t)(cdb_mono_ms() - started_ms));
    for (int i = 0; out && results && i < t->nops; i++) {
        const tx_op *op = &t->ops[i];
        json_t *r = json_pack("{s:i, s:s, s:O}", "operation", i + 1, "status", op->status, "data", op->data);
        if (r && op->refusal)
            json_object_set_new(r, "error", json_pack("{s:s, s:s}", "code", "VALIDATION_FAILED",
                                                      "message", op->refusal));
        if (!r || json_array_append_new(results, r) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* The answer, serialized as it is sent (and stored, keyed); malloc'd, NULL when out of memory. */
static char *response_text(tx *t)
{
    json_t *body = build_response(t, t->started_ms);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

static void tx_free(tx *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        for (int k = 0; op->params && k < op->nparams; k++)
            free(op->params[k]);
        free(op->params);
        free(op->sql);
        free(op->full_key);
        free(op->refusal);
        json_decref(op->data);
    }
    if (t->cat)
        cdb_catalog_unref(t->cat);
    free(t->stored);
    free(t->final);
    free(t);
}

int cdb_data_transaction_idem(cdb_service *svc, const cdb_principal *caller, json_t *request,
                              cdb_idempotency *idem, cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGconn *conn;
    tx *t = calloc(1, sizeof *t);
    int rc;

    idem->status = 0;
    idem->body = NULL;
    idem->replayed = false;
    if (!t)
        return oom(err);
    t->started_ms = cdb_mono_ms();
    t->svc = svc;
    t->caller = caller;
    cdb_ledger_new_id(t->id);
    if (!caller || caller->role == CDB_ROLE_ANON) {
        rc = cdb_error_set(err, CDB_ERR_FORBIDDEN, "The data API needs an authenticated caller");
        goto out_free;
    }
    if (idem->key) {
        if ((rc = cdb_ledger_check_key(idem->key, err)) < 0 ||
            (rc = cdb_ledger_request_hash(svc->jwt.secret, svc->jwt.secret_len, "data.transaction", request, t->hash, err)) < 0)
            goto out_free;
        t->key = idem->key;
        snprintf(t->scope, sizeof t->scope, "%s", caller->user_id);
    }
    /* generation keys are named while parsing: they need the namespace */
    if ((rc = cdb_qcache_ensure_namespace(svc->qcache, svc->pool, err)) < 0 || (rc = parse_request(t, request, err)) < 0)
        goto out_free;
    if (!(conn = cdb_txn_acquire(svc->pool, &pc, err))) {
        rc = err->code ? err->code : CDB_ERR_DATABASE_UNAVAILABLE;
        goto out_free;
    }
    if ((rc = run_pipeline(t, pc, idem, err)) < 0 || idem->replayed)
        goto out_release;
    if (t->nrows)
        apply_outbox(t, conn);
    /* keyed: the stored answer, or the one that replaced it after the outbox ran */
    if (!t->key) {
        idem->body = response_text(t);
    } else if (t->final) {
        idem->body = t->final;
        t->final = NULL;
    } else {
        idem->body = t->stored;
        t->stored = NULL;
    }
    idem->status = 200;
    if (!idem->body)
        rc = oom(err);

out_release:
    cdb_txn_release(svc->pool, pc);
out_free:
    tx_free(t);
    return rc;
}

int cdb_data_transaction(cdb_service *svc, const cdb_principal *caller, json_t *request,
                         json_t **out, cdb_error *err)
{
    cdb_idempotency idem = { .key = NULL };
    int rc = cdb_data_transaction_idem(svc, caller, request, &idem, err);

    *out = NULL;
    if (rc == 0 && !(*out = json_loads(idem.body, 0, NULL)))
        rc = oom(err);
    cdb_idempotency_destroy(&idem);
    return rc;
}
