/*
 * doc_tx.c - libFuzzer harness: the document and vector operations of
 * POST /data/transaction (src/data/doc_tx.c, vec_tx.c, included to reach
 * their statics) through the real request parser (cdb__tx_parse_request,
 * src/data/tx_parse.c) with a service without a pool. The registry
 * look-ups (cdb__doc_collection, cdb__vec_collection) are replaced by
 * stubs that check a name as the real ones do before their query and
 * answer the fixture collection "coll_fuzz" (a vector one has the
 * dimensions the first byte picks, 1..8), so every statement is built.
 *
 * Oracles: each statement holds only fragment words, the fixture table,
 * the fragments' literals and $n parameters within the bound ones, and is
 * the same text for every input of its kind (nothing of the input is in
 * it); the bound values are the operation's: the id given (or the
 * document's own), the etag of if_match, the document or patch as JSON
 * equal to the one sent, the vector as a real[] literal of exactly the
 * dimensions' finite float32s equal to the numbers sent, the payload as
 * JSON; the cache generation names the collection; errors are the route's
 * 4xx codes (and DATABASE_UNAVAILABLE for a PostgreSQL table operation).
 */
#include <stdint.h>

#define cdb__doc_collection fuzz_doc_collection
#define cdb__vec_collection fuzz_vec_collection
#include "data/doc_tx.c"
#undef NEW_ETAG
#undef ROW_JSON
#define good_id vec_good_id
#define set_params vec_set_params
#include "data/vec_tx.c"
#undef good_id
#undef set_params
#include "fuzz_doc.h"

static int fuzz_dims = 3;

/* The real look-ups' name checks (doc_common.c, vec_common.c), then the fixture. */
static int stub_name(const json_t *name, cdb_error *err)
{
    const char *s = json_string_value(name);
    size_t n = s ? strlen(s) : 0;
    if (!s || n == 0 || n != json_string_length(name))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "collection",
                                    "collection must be a non-empty string");
    if (n > CDB_DOC_COLLECTION_NAME_MAX || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != n)
        return cdb_error_set_detail(err, CDB_ERR_UNKNOWN_TABLE, "collection", s, "Unknown collection");
    return 0;
}

int fuzz_doc_collection(cdb_service *svc, const json_t *name, char table[64], cdb_error *err)
{
    (void)svc;
    int rc = stub_name(name, err);
    if (rc == 0)
        snprintf(table, 64, "%s", FUZZ_DOC_TABLE);
    return rc;
}

int fuzz_vec_collection(cdb_service *svc, const json_t *name, cdb_vec_coll *c, cdb_error *err)
{
    (void)svc;
    int rc = stub_name(name, err);
    if (rc == 0) {
        snprintf(c->table, sizeof c->table, "%s", FUZZ_DOC_TABLE);
        c->dimensions = fuzz_dims;
        c->metric = CDB_VEC_COSINE;
    }
    return rc;
}

static const cdb_principal users[] = {
    {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_PREMIUM, .user_id = "1c8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
    {.role = CDB_ROLE_ADMIN},
    {.role = CDB_ROLE_USER, .user_id = "2d8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"},
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

static void die(const char *why, const tx_op *op)
{
    fprintf(stderr, "doc_tx oracle: %s\nSQL: %s\n", why, op->sql ? op->sql : "(none)");
    for (int p = 0; p < op->nparams; p++)
        fprintf(stderr, "$%d = %s\n", p + 1, op->params[p] ? op->params[p] : "NULL");
    abort();
}

/* params[k] is JSON equal to want. */
static void json_param(const tx_op *op, int k, const json_t *want)
{
    json_t *got = k < op->nparams && op->params[k] ? json_loads(op->params[k], JSON_DECODE_ANY, NULL) : NULL;
    if (!got || !json_equal(got, (json_t *)want))
        die("a bound JSON value is not the one sent", op);
    json_decref(got);
}

static void text_param(const tx_op *op, int k, const json_t *want)
{
    const char *got = k < op->nparams ? op->params[k] : NULL;
    if (!want ? got != NULL : !got || strcmp(got, json_string_value(want)) != 0)
        die("a bound text is not the one sent", op);
}

/* The same statement text for every input of a kind: nothing of the input is in it. */
static void same_text(int slot, const tx_op *op)
{
    static char *seen[16];
    if (!seen[slot]) {
        seen[slot] = strdup(op->sql);
        return;
    }
    if (strcmp(seen[slot], op->sql) != 0)
        die("the statement differs from the first of its kind", op);
}

static void check_doc_op(const tx_op *op, json_t *o)
{
    const char *name = json_string_value(json_object_get(o, "operation"));
    json_t *id = json_object_get(o, "id"), *if_match = json_object_get(o, "if_match");
    int kind = -1;
    for (int k = 0; NAMES[k]; k++)
        if (!strcmp(name, NAMES[k]))
            kind = k;
    if (kind < 0 || !op->sql)
        die("an accepted document operation without a kind or statement", op);
    fuzz_doc_sql_check(op->sql, op->nparams, op->params);
    same_text(kind, op);
    if (kind == D_INSERT || kind == D_UPSERT) {
        json_t *doc = json_object_get(o, "document"), *own = json_object_get(doc, "id");
        /* the document's own id counts when it is one: 1..255 bytes, no NUL */
        bool own_ok = json_is_string(own) && json_string_length(own) >= 1 && json_string_length(own) <= 255 &&
                      strlen(json_string_value(own)) == json_string_length(own);
        text_param(op, 0, id ? id : own_ok ? own : NULL);
        json_param(op, 1, doc);
    } else {
        text_param(op, 0, id);
        text_param(op, 1, if_match);
        if (kind != D_DELETE)
            json_param(op, 2, json_object_get(o, kind == D_PATCH ? "patch" : "document"));
    }
    char gen[128];
    snprintf(gen, sizeof gen, "documents:%s", json_string_value(json_object_get(o, "collection")));
    if (strcmp(gen, op->gen) != 0)
        die("the cache generation is not the collection's", op);
}

static void check_vec_op(const tx_op *op, json_t *o)
{
    bool upsert = !strcmp(json_string_value(json_object_get(o, "operation")), "upsert");
    if (!op->sql)
        die("an accepted vector operation without a statement", op);
    fuzz_doc_sql_check(op->sql, op->nparams, op->params);
    same_text(upsert ? 8 : 9, op);
    text_param(op, 0, json_object_get(o, "id"));
    if (upsert) {
        json_t *v = json_object_get(o, "vector"), *payload = json_object_get(o, "payload");
        float want[8];
        if (json_array_size(v) != (size_t)fuzz_dims)
            die("a vector of the wrong dimension accepted", op);
        for (int d = 0; d < fuzz_dims; d++) {
            json_t *x = json_array_get(v, (size_t)d);
            if (!json_is_number(x))
                die("a vector with a non-number accepted", op);
            want[d] = (float)json_number_value(x);
        }
        fuzz_doc_real_array_check(op->params[1], fuzz_dims, want);
        if (payload && !json_is_null(payload)) {
            json_param(op, 2, payload);
        } else if (strcmp(op->params[2], "{}") != 0) {
            die("no payload bound as something else than {}", op);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* no pool, no catalog, no Redis: the parse stops before any I/O; a query cache as the service
     * always has one (its generation keys are planned for each collection written), and the
     * configuration's document limit */
    static struct cdb_service svc;
    static cdb_config cfg = {.doc_max_bytes = CDB_DOC_MAX_BYTES};
    svc.cfg = &cfg;
    if (!svc.qcache && !(svc.qcache = cdb_qcache_new(NULL, 0)))
        abort();
    if (size < 1)
        return 0;
    const cdb_principal *caller = &users[data[0] & 3];
    fuzz_dims = 1 + ((data[0] >> 2) & 7);
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
    json_t *ops = json_object_get(r, "operations");
    for (int i = 0; i < t->nops; i++) {
        tx_op *op = &t->ops[i];
        json_t *o = json_array_get(ops, (size_t)i), *db = json_object_get(o, "database");
        /* an operation before the failing one, or all of them on success, was accepted */
        bool accepted = rc == 0 || i + 1 < t->nops;
        if (accepted && cdb__doc_database(db))
            check_doc_op(op, o);
        else if (accepted && cdb__vec_database(db))
            check_vec_op(op, o);
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
    json_decref(r);
    return 0;
}
