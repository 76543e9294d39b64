/*
 * tx_parse.c - validation of POST /data/transaction (tx_internal.h): each
 * operation checked against the catalog as the caller's role sees it and
 * turned into its statement (quoted identifiers, bound values), the Redis
 * operations into keys of the caller's namespace, and the outbox rows
 * planned. Nothing here touches a connection.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tx_internal.h"
#include "data/documents.h"
#include "data/vectors.h"

const char *const cdb__tx_op_names[] = {
    [OP_INSERT] = "insert", [OP_UPDATE] = "update", [OP_DELETE] = "delete", [OP_UPSERT] = "upsert",
    [OP_SET] = "set", [OP_DEL] = "del", [OP_EXPIRE] = "expire", [OP_INCR] = "incr",
};

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

/* What a written blind-index column is checked as when the catalog does not list it yet (below). */
static const cdb_column BLIND_INDEX_COLUMN = {
    .kind = CDB_COL_TEXT, .privs = CDB_PRIV_SELECT | CDB_PRIV_INSERT | CDB_PRIV_UPDATE,
};

/*
 * A column of the values a write sets: as op_column, except that the blind
 * index of an encrypted column of t (cs), which only coredb sets, is taken
 * when the request's catalog snapshot is older than the setup that added it
 * (the key snapshot is reloaded at once after the setup's commit; the catalog
 * by its listener, a moment later): PostgreSQL has it, and a write during
 * the setup must not fail for it. The caller names columns by `name`.
 */
static const cdb_column *value_column(const cdb_table *t, const cdb_colset *cs, const char *name, unsigned priv,
                                      int i, cdb_error *err)
{
    if (cs && !cdb_catalog_column(t, name) && cdb__crypt_is_blind_index(cs, t->name, name))
        return &BLIND_INDEX_COLUMN;
    return op_column(t, name, priv, i, err);
}

/* Moves the statement out of q into op (q is reset). */
static int take_sql(cdb_sql *q, tx_op *op, cdb_error *err)
{
    if (q->oom)
        return cdb_error_oom(err);
    op->sql = strdup(q->text);
    op->params = calloc((size_t)q->nparams + 1, sizeof *op->params);
    if (!op->sql || !op->params)
        return cdb_error_oom(err);
    for (op->nparams = 0; op->nparams < q->nparams; op->nparams++) {
        const char *p = q->params[op->nparams];
        if (p && !(op->params[op->nparams] = strdup(p)))
            return cdb_error_oom(err);
    }
    cdb_sql_reset(q);
    return 0;
}

/*
 * Appends data (column -> value) as ' ("a", "b") VALUES ($1, $2)' or, for
 * set_list, '"a" = $1, "b" = $2'; each column needs priv and each value must
 * fit its column.
 */
static int append_values(cdb_sql *q, const cdb_table *t, const cdb_colset *cs, json_t *data, unsigned priv,
                         bool set_list, bool override_identity, int i, cdb_error *err)
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
            const cdb_column *c = value_column(t, cs, name, priv, i, err);
            if (!c)
                return CDB_ERR_UNKNOWN_COLUMN;
            cdb_sql_append(q, first ? "" : ", ");
            cdb_sql_ident(q, name);
            first = false;
        }
        /* a key coredb drew from a GENERATED ALWAYS identity (data/crypt.h) */
        cdb_sql_append(q, override_identity ? ") OVERRIDING SYSTEM VALUE VALUES (" : ") VALUES (");
        first = true;
    }
    json_object_foreach(data, name, v) {
        const cdb_column *c = value_column(t, cs, name, priv, i, err);
        char *text = NULL;
        int rc;
        if (!c)
            return CDB_ERR_UNKNOWN_COLUMN;
        if ((rc = cdb_sql_value_text(v, c, name, &text, err)) < 0)
            return op_tag(err, i, rc);
        cdb_sql_append(q, first ? "" : ", ");
        if (set_list) {
            cdb_sql_ident(q, name);
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
static int append_conflict(cdb_sql *q, const cdb_table *t, const cdb_colset *cs, json_t *cols, json_t *data,
                           int i, cdb_error *err)
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
        if (!value_column(t, cs, name, CDB_PRIV_UPDATE, i, err))
            return CDB_ERR_UNKNOWN_COLUMN;
        cdb_sql_append(q, first ? " DO UPDATE SET " : ", ");
        cdb_sql_ident(q, name);
        cdb_sql_append(q, " = EXCLUDED.");
        cdb_sql_ident(q, name);
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
static int append_returning(cdb_sql *q, const cdb_table *t, json_t *returning, const char *hidden_pk, tx_op *op,
                            int i, cdb_error *err)
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
    if (!first && hidden_pk) {
        /* what the returned row's encrypted values are bound to (data/crypt.h removes it) */
        cdb_sql_append(q, ", t.");
        cdb_sql_ident(q, hidden_pk);
        cdb_sql_append(q, "::text AS \"" CDB_CRYPT_PK_MEMBER "\"");
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
                             "%s on %.100s is not allowed for this role", cdb__tx_op_names[kind], op->table->name);
        return op_tag(err, i, CDB_ERR_FORBIDDEN);
    }
    if ((kind == OP_UPDATE || kind == OP_DELETE) &&
        (!json_is_object(filters) || json_object_size(filters) == 0))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "filters",
                       "%s needs non-empty filters: whole-table writes are refused", cdb__tx_op_names[kind]);

    bool override_identity = false;
    if (kind != OP_DELETE && json_is_object(data)) {
        /* encrypted before the statement exists: PostgreSQL only ever sees ciphertext */
        static const cdb_crypt_write_kind crypt_kind[] = {
            [OP_INSERT] = CDB_CRYPT_INSERT, [OP_UPSERT] = CDB_CRYPT_UPSERT, [OP_UPDATE] = CDB_CRYPT_UPDATE,
        };
        if (!t->cs && !(t->cs = cdb__colring_get(t->svc, err)))
            return op_tag(err, i, err->code);
        if ((rc = cdb__crypt_write_values(t->cs, t->svc->pool, op->table->name, crypt_kind[kind], data, filters,
                                          &op->enc_values, &override_identity, err)) < 0)
            return op_tag(err, i, rc);
        if ((rc = cdb__crypt_write_check(t->cs, op->table->name, data, kind == OP_UPSERT, kind == OP_UPDATE,
                                         json_object_get(o, "conflict_columns"), op->enc_values != NULL, err)) < 0)
            return op_tag(err, i, rc);
        if (op->enc_values)
            data = op->enc_values;
    }
    if (kind == OP_UPDATE || kind == OP_DELETE) {
        if (!t->cs && !(t->cs = cdb__colring_get(t->svc, err)))
            return op_tag(err, i, err->code);
        if (cdb__colset_has_table(t->cs, op->table->name)) {
            if ((rc = cdb__crypt_read_plan(t->cs, op->table->name, filters, NULL, &op->enc_filters, err)) < 0)
                return op_tag(err, i, rc);
            if (op->enc_filters)
                filters = op->enc_filters;
        }
    }
    const char *schema = cdb_catalog_schema(t->cat);
    if (kind == OP_INSERT || kind == OP_UPSERT) {
        cdb_sql_append(q, "INSERT INTO ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t");
        if ((rc = append_values(q, op->table, t->cs, data, CDB_PRIV_INSERT, false, override_identity, i, err)) < 0)
            return rc;
        if (kind == OP_UPSERT &&
            (rc = append_conflict(q, op->table, t->cs, json_object_get(o, "conflict_columns"), data, i, err)) < 0)
            return rc;
    } else if (kind == OP_UPDATE) {
        cdb_sql_append(q, "UPDATE ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t SET ");
        if ((rc = append_values(q, op->table, t->cs, data, CDB_PRIV_UPDATE, true, false, i, err)) < 0)
            return rc;
    } else {
        cdb_sql_append(q, "DELETE FROM ");
        cdb_sql_table(q, schema, op->table->name);
        cdb_sql_append(q, " AS t");
    }
    if ((kind == OP_UPDATE || kind == OP_DELETE) && (rc = cdb_sql_where(q, op->table, filters, err)) < 0)
        return op_tag(err, i, rc);
    if ((rc = append_returning(q, op->table, json_object_get(o, "returning"),
                               cdb__colset_pk_of(t->cs, op->table->name), op, i, err)) < 0)
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
    return op->data ? 0 : cdb_error_oom(err);
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
    if (cdb__doc_database(db)) {
        t->ops[i].status = "success";
        t->pg_ops[t->npg++] = i;
        return cdb__doc_tx_op(t, i, o, err);
    }
    if (cdb__vec_database(db)) {
        t->ops[i].status = "success";
        t->pg_ops[t->npg++] = i;
        return cdb__vec_tx_op(t, i, o, err);
    }
    if (db && !(json_is_string(db) && (!strcmp(json_string_value(db), "postgresql") ||
                                       !strcmp(json_string_value(db), "redis"))))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "database",
                       "database must be \"postgresql\", \"redis\", \"documents\" or \"vectors\"");
    redis = db && !strcmp(json_string_value(db), "redis");
    for (int k = redis ? OP_SET : OP_INSERT; json_is_string(opname) && k <= (redis ? OP_INCR : OP_UPSERT); k++)
        if (!strcmp(json_string_value(opname), cdb__tx_op_names[k]))
            kind = k;
    if (kind < 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "operation",
                       redis ? "operation must be one of set, del, expire, incr"
                             : "operation must be one of insert, update, delete, upsert");
    json_object_foreach(o, f, v) {
        if (strcmp(f, "database") && strcmp(f, "operation") && !field_allowed(kind, f))
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, f, "%.64s is not a field of %s",
                           f, cdb__tx_op_names[kind]);
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
        const tx_op *op = &t->ops[t->pg_ops[k]];
        const char *name = op->doc ? op->gen : op->table->name;
        size_t n = op->doc ? 0 : cdb_catalog_cascades(t->cat, name, cascades, TX_MAX_GEN);
        int rc = plan_bump(t, name, err);
        for (size_t c = 0; c < n && rc == 0; c++)
            rc = plan_bump(t, cascades[c], err);
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        if (op->kind >= OP_SET)
            t->rows[t->nrows++] = (outbox_row){.op = cdb__tx_op_names[op->kind], .key = op->full_key,
                                               .value = op->value, .ttl = op->ttl, .from = op};
    }
    return 0;
}

int cdb__tx_parse_request(tx *t, json_t *request, cdb_error *err)
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
