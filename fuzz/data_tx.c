/*
 * data_tx.c - libFuzzer harness: the body of POST /data/transaction before
 * the database (src/data/tx_parse.c, included to reach its statics).
 *
 * Two passes over one input. First the whole request through
 * cdb__tx_parse_request with a service that has no catalog: the shape,
 * every operation's database/operation/fields, and the Redis operations
 * in full (key namespace, value, ttl, the outbox plan); a PostgreSQL
 * operation stops at DATABASE_UNAVAILABLE there. Then every PostgreSQL
 * operation of the input through the statement builders parse_pg_op uses
 * (append_values, append_conflict, cdb_sql_where, append_returning)
 * against the catalog fixture of fuzz_sql.h.
 *
 * Oracles: the SQL holds only fixture identifiers, fragment words and $n
 * parameters; every Redis key is inside the caller's namespace; a failure
 * is a 4xx code of the route (or DATABASE_UNAVAILABLE, the missing catalog).
 */
#include <stdint.h>

#include "data/tx_parse.c"
#include "fuzz_sql.h"

static const cdb_principal users[] = {
    {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_PREMIUM, .user_id = "1c8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_ADMIN},
};

static void check_code(int rc)
{
    switch (rc) {
    case 0: case CDB_ERR_VALIDATION_FAILED: case CDB_ERR_INVALID_FILTER: case CDB_ERR_UNKNOWN_COLUMN:
    case CDB_ERR_UNKNOWN_TABLE: case CDB_ERR_FORBIDDEN: case CDB_ERR_DATABASE_UNAVAILABLE:
        return;
    }
    fprintf(stderr, "unexpected error code %s\n", cdb_err_name((cdb_err)rc));
    abort();
}

/* The builders of parse_pg_op for one operation object, then the oracle. */
static void build_pg(json_t *o)
{
    json_t *opname = json_object_get(o, "operation");
    int kind = -1;
    for (int k = OP_INSERT; json_is_string(opname) && k <= OP_UPSERT; k++)
        if (!strcmp(json_string_value(opname), cdb__tx_op_names[k]))
            kind = k;
    if (kind < 0)
        return;
    json_t *data = json_object_get(o, "data"), *filters = json_object_get(o, "filters");
    tx_op op = {.kind = kind};
    cdb_sql q;
    cdb_error err;
    int rc = 0;
    cdb_sql_init(&q);
    cdb_error_init(&err);
    if (kind == OP_INSERT || kind == OP_UPSERT) {
        cdb_sql_append(&q, "INSERT INTO ");
        cdb_sql_table(&q, FUZZ_SCHEMA, fuzz_table.name);
        cdb_sql_append(&q, " AS t");
        rc = append_values(&q, &fuzz_table, NULL, data, CDB_PRIV_INSERT, false, false, 0, &err);
        if (rc == 0 && kind == OP_UPSERT)
            rc = append_conflict(&q, &fuzz_table, NULL, json_object_get(o, "conflict_columns"), data, 0, &err);
    } else if (kind == OP_UPDATE) {
        cdb_sql_append(&q, "UPDATE ");
        cdb_sql_table(&q, FUZZ_SCHEMA, fuzz_table.name);
        cdb_sql_append(&q, " AS t SET ");
        rc = append_values(&q, &fuzz_table, NULL, data, CDB_PRIV_UPDATE, true, false, 0, &err);
    } else {
        cdb_sql_append(&q, "DELETE FROM ");
        cdb_sql_table(&q, FUZZ_SCHEMA, fuzz_table.name);
        cdb_sql_append(&q, " AS t");
    }
    if (rc == 0 && (kind == OP_UPDATE || kind == OP_DELETE))
        rc = cdb_sql_where(&q, &fuzz_table, filters, &err);
    if (rc == 0)
        rc = append_returning(&q, &fuzz_table, json_object_get(o, "returning"), NULL, &op, 0, &err);
    if (rc == 0 && !q.oom)
        fuzz_sql_check(q.text, q.nparams, NULL);
    check_code(rc);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cdb_service svc;   /* no catalog, no Redis: the parse stops before any I/O */
    if (size < 1)
        return 0;
    const cdb_principal *caller = &users[data[0] % 3];
    json_t *r = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (!r)
        return 0;
    tx *t = calloc(1, sizeof *t);
    if (!t)
        abort();
    t->svc = &svc;
    t->caller = caller;
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb__tx_parse_request(t, r, &err);
    check_code(rc);
    char prefix[64];
    if (!cdb_data_redis_prefix(caller, prefix, sizeof prefix))
        abort();
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        if (op->full_key && strncmp(op->full_key, prefix, strlen(prefix)) != 0) {
            fprintf(stderr, "Redis key %s outside the namespace %s\n", op->full_key, prefix);
            abort();
        }
        free(op->full_key);
        free(op->sql);
        for (int p = 0; p < op->nparams; p++)
            free(op->params[p]);
        free(op->params);
        json_decref(op->data);
        json_decref(op->enc_values);
        json_decref(op->enc_filters);
    }
    free(t);
    cdb_error_destroy(&err);

    json_t *ops = json_object_get(r, "operations"), *o;
    size_t i;
    json_array_foreach(ops, i, o) {
        if (i >= TX_MAX_OPS)
            break;
        json_t *db = json_object_get(o, "database");
        if (json_is_object(o) && (!db || (json_is_string(db) && !strcmp(json_string_value(db), "postgresql"))))
            build_pg(o);
    }
    json_decref(r);
    return 0;
}
