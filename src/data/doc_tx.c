/*
 * doc_tx.c - the document operations of POST /data/transaction
 * (coredb/documents.h): insert, upsert, replace, patch and delete of one
 * document, each one statement run in the transaction's pipeline with the
 * PostgreSQL and Redis operations around it, as the caller's role (RLS).
 *
 * Conditional writes are one statement too: a CTE reads whether the id is
 * visible, another writes where the etag matches, and coredb.doc_written
 * (migration 015) returns the written row or raises CD404 / CD412, which
 * data/common.c maps to NOT_FOUND / PRECONDITION_FAILED, rolling back the
 * whole transaction like any failed operation.
 */
#include "data/tx_internal.h"
#include "data/documents.h"

#define NEW_ETAG "md5(random()::text || clock_timestamp()::text)"
#define ROW_JSON                                                                                          \
    "json_build_object('id', r.id, 'partition_key', r.partition_key, 'doc', r.doc, 'etag', r.etag,"      \
    " 'created_at', r.created_at, 'updated_at', r.updated_at)::text"

enum { D_INSERT, D_UPSERT, D_REPLACE, D_PATCH, D_DELETE };
static const char *const NAMES[] = {"insert", "upsert", "replace", "patch", "delete", NULL};

static bool allowed(int kind, const char *f)
{
    if (!strcmp(f, "database") || !strcmp(f, "operation") || !strcmp(f, "collection") || !strcmp(f, "id"))
        return true;
    switch (kind) {
    case D_INSERT:
    case D_UPSERT: return !strcmp(f, "document");
    case D_REPLACE: return !strcmp(f, "document") || !strcmp(f, "if_match");
    case D_PATCH: return !strcmp(f, "patch") || !strcmp(f, "if_match");
    default: return !strcmp(f, "if_match");
    }
}

int cdb__doc_tx_op(tx *t, int i, json_t *o, cdb_error *err)
{
    tx_op *op = &t->ops[i];
    json_t *opname = json_object_get(o, "operation"), *id = json_object_get(o, "id");
    json_t *body = NULL, *if_match = json_object_get(o, "if_match");
    char table[64], *text = NULL;
    const char *f;
    json_t *v;
    int kind = -1, rc;

    for (int k = 0; NAMES[k] && json_is_string(opname); k++)
        if (!strcmp(json_string_value(opname), NAMES[k]))
            kind = k;
    if (kind < 0)
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "operation",
                       "operation must be one of insert, upsert, replace, patch, delete for documents");
    json_object_foreach(o, f, v) {
        if (!allowed(kind, f))
            return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, f, "%.64s is not a field of a document %s", f,
                           NAMES[kind]);
    }
    op->doc = true;
    op->rows = true;
    op->kind = kind == D_INSERT ? OP_INSERT : kind == D_UPSERT ? OP_UPSERT : kind == D_DELETE ? OP_DELETE
                                                                                           : OP_UPDATE;
    if (kind != D_DELETE) {
        const char *field = kind == D_PATCH ? "patch" : "document";
        body = json_object_get(o, field);
        if ((rc = cdb__doc_check(field, body, (size_t)t->svc->cfg->doc_max_bytes, err)) < 0)
            return op_tag(err, i, rc);
    }
    /* insert/upsert: the id given, else the document's own "id" member, else a new one */
    if ((kind == D_INSERT || kind == D_UPSERT) && !id && cdb__doc_id_valid(json_object_get(body, "id")))
        id = json_object_get(body, "id");
    if (id ? !cdb__doc_id_valid(id) : (kind != D_INSERT && kind != D_UPSERT))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "id", "id must be a string of 1 to %d bytes",
                       CDB_DOC_ID_MAX);
    if (if_match && !(json_is_string(if_match) && json_string_length(if_match) > 0 &&
                      strlen(json_string_value(if_match)) == json_string_length(if_match)))
        return op_fail(err, i, CDB_ERR_VALIDATION_FAILED, "if_match", "if_match must be an etag string");
    if ((rc = cdb__doc_collection(t->svc, json_object_get(o, "collection"), table, err)) < 0)
        return op_tag(err, i, rc);
    snprintf(op->gen, sizeof op->gen, CDB_DOC_GEN_PREFIX "%s", json_string_value(json_object_get(o, "collection")));
    if (body && !(text = json_dumps(body, JSON_COMPACT)))
        return cdb_error_oom(err);

    /* the table name comes from the registry (its CHECK keeps it to [a-z0-9_]) and is quoted */
    const char *sid = id ? json_string_value(id) : NULL, *etag = json_string_value(if_match);
    char max_bytes[16];
    snprintf(max_bytes, sizeof max_bytes, "%d", t->svc->cfg->doc_max_bytes);
    int n;
    switch (kind) {
    case D_INSERT:
    case D_UPSERT:
        n = asprintf(&op->sql,
                      "INSERT INTO coredb.\"%s\" AS r (id, doc) VALUES (coalesce($1::text, gen_random_uuid()::text),"
                      " $2::jsonb)%s RETURNING " ROW_JSON,
                      table,
                      kind == D_UPSERT ? " ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, etag = " NEW_ETAG
                                         ", updated_at = now()"
                                       : "");
        rc = n < 0 ? -1 : cdb__doc_op_params(op, (const char *const[]){sid, text}, 2, err);
        break;
    case D_REPLACE:
    case D_PATCH:
        n = asprintf(&op->sql,
                      "WITH cur AS (SELECT 1 FROM coredb.\"%s\" WHERE id = $1::text),"
                      " w AS (UPDATE coredb.\"%s\" AS r SET doc = %s, etag = " NEW_ETAG ", updated_at = now()"
                      " WHERE r.id = $1::text AND ($2::text IS NULL OR r.etag = $2::text) RETURNING r.*)"
                      " SELECT coredb.doc_written((SELECT count(*) FROM cur), (SELECT " ROW_JSON " FROM w r))",
                      table, table, kind == D_PATCH ? "coredb.doc_sized(coredb.jsonb_merge_patch(r.doc, $3::jsonb), $4::int)"
                                      : "$3::jsonb");
        rc = n < 0 ? -1 : cdb__doc_op_params(op, (const char *const[]){sid, etag, text, max_bytes}, kind == D_PATCH ? 4 : 3, err);
        break;
    default:
        n = asprintf(&op->sql,
                      "WITH cur AS (SELECT 1 FROM coredb.\"%s\" WHERE id = $1::text),"
                      " w AS (DELETE FROM coredb.\"%s\" AS r"
                      " WHERE r.id = $1::text AND ($2::text IS NULL OR r.etag = $2::text) RETURNING r.*)"
                      " SELECT coredb.doc_written((SELECT count(*) FROM cur), (SELECT " ROW_JSON " FROM w r))",
                      table, table);
        rc = n < 0 ? -1 : cdb__doc_op_params(op, (const char *const[]){sid, etag}, 2, err);
        break;
    }
    if (n < 0) {
        op->sql = NULL;            /* asprintf leaves it undefined */
        rc = cdb_error_oom(err);
    }
    free(text);
    return rc;
}
