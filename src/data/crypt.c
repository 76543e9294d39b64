/*
 * crypt.c - the data API over encrypted columns (crypt.h).
 */
#include "data/crypt.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/metrics.h"
#include "store/pg.h"
#include "store/txn.h"

#define PK_TEXT_MAX 128

/*
 * The text of a primary key value as PostgreSQL's ::text writes it, into
 * buf: what a value is bound to, so that the binding a write computes from
 * the caller's JSON is the one a read computes from the row. False when v
 * is not a value of the key's type.
 */
static bool pk_canon(const cdb_enccol *c, const json_t *v, char buf[PK_TEXT_MAX])
{
    const char *s = json_string_value(v);
    switch (c->pk_kind) {
    case CDB_PK_INT: {
        long long n;
        char *end;
        if (json_is_integer(v)) {
            n = json_integer_value(v);
        } else if (s && *s) {
            errno = 0;
            n = strtoll(s, &end, 10);
            while (*end == ' ')
                end++;
            if (errno || *end)
                return false;
        } else {
            return false;
        }
        snprintf(buf, PK_TEXT_MAX, "%lld", n);
        return true;
    }
    case CDB_PK_UUID: {
        /* uuid_in's forms: braces, hyphens between groups, either case */
        char hex[33];
        size_t n = 0, len = s ? strlen(s) : 0;
        if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
            s++;
            len -= 2;
        }
        for (size_t i = 0; i < len; i++) {
            if (s[i] == '-' && i > 0 && i + 1 < len && s[i - 1] != '-')
                continue;
            if (!isxdigit((unsigned char)s[i]) || n == 32)
                return false;
            hex[n++] = (char)tolower((unsigned char)s[i]);
        }
        if (n != 32)
            return false;
        hex[32] = '\0';
        snprintf(buf, PK_TEXT_MAX, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
        return true;
    }
    case CDB_PK_TEXT:
        if (json_is_integer(v)) {
            snprintf(buf, PK_TEXT_MAX, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            return true;
        }
        if (!s || json_string_length(v) >= PK_TEXT_MAX)
            return false;
        snprintf(buf, PK_TEXT_MAX, "%s", s);
        return true;
    case CDB_PK_OTHER:
        break;
    }
    return false;
}

static void bidx_name(const cdb_enccol *c, char *buf, size_t len)
{
    snprintf(buf, len, "%.58s_bidx", c->column);
}

bool cdb__crypt_is_blind_index(const cdb_colset *cs, const char *table, const char *name)
{
    for (size_t i = 0; cs && i < cs->n; i++) {
        char bidx[64];
        if (!cs->cols[i].searchable || strcmp(cs->cols[i].table, table) != 0)
            continue;
        bidx_name(&cs->cols[i], bidx, sizeof bidx);
        if (strcmp(bidx, name) == 0)
            return true;
    }
    return false;
}

/* The blind index of a JSON string value, into out; false for another type. */
static bool blind_of(const cdb_enccol *c, const json_t *v, char out[33])
{
    if (!json_is_string(v) || !c->keys[0])
        return false;
    cdb__colval_blind(c->keys[0], json_string_value(v), json_string_length(v), out);
    return true;
}

/* One filter on an encrypted column rewritten to its blind index: *out the new condition. */
static int blind_filter(const cdb_enccol *c, const json_t *cond, json_t **out, cdb_error *err)
{
    char h[33];
    *out = NULL;
    if (!c->searchable)
        goto refuse;
    if (json_is_string(cond)) {
        blind_of(c, cond, h);
        *out = json_string(h);
    } else if (json_is_object(cond) && json_object_size(cond) == 1) {
        json_t *eq = json_object_get(cond, "eq"), *in = json_object_get(cond, "in");
        if (eq && blind_of(c, eq, h)) {
            *out = json_pack("{s:s}", "eq", h);
        } else if (json_is_array(in)) {
            json_t *arr = json_array();
            size_t i;
            json_t *v;
            json_array_foreach(in, i, v) {
                if (!arr || !blind_of(c, v, h)) {
                    json_decref(arr);
                    goto refuse;
                }
                json_array_append_new(arr, json_string(h));
            }
            *out = json_pack("{s:o}", "in", arr);
        } else {
            goto refuse;
        }
    } else {
        goto refuse;
    }
    return *out ? 0 : cdb_error_oom(err);
refuse:
    return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, "column", c->column,
                                c->searchable
                                    ? "Column %s is encrypted: only equality filters (a string, eq, in) work, "
                                      "through its blind index"
                                    : "Column %s is encrypted without a blind index: it cannot be filtered on "
                                      "(set it up with searchable: true for equality filters)",
                                c->column);
}

int cdb__crypt_read_plan(const cdb_colset *cs, const char *table, const json_t *filters, const json_t *order,
                         json_t **filters_out, cdb_error *err)
{
    size_t i;
    json_t *o;
    const char *k;
    json_t *v;

    *filters_out = NULL;
    json_array_foreach(order, i, o) {
        const char *col = json_string_value(json_object_get(o, "column"));
        if (col && cdb__colset_find(cs, table, col))
            return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, "column", col,
                                        "Column %s is encrypted: its ciphertext has no useful order, so "
                                        "order_by cannot use it", col);
    }
    if (!json_is_object(filters))
        return 0;
    json_object_foreach((json_t *)filters, k, v) {
        const cdb_enccol *c = cdb__colset_find(cs, table, k);
        if (!c)
            continue;
        json_t *cond = NULL;
        char name[64];
        int rc = blind_filter(c, v, &cond, err);
        if (rc < 0) {
            json_decref(*filters_out);
            *filters_out = NULL;
            return rc;
        }
        if (!*filters_out && !(*filters_out = json_deep_copy(filters))) {
            json_decref(cond);
            return cdb_error_oom(err);
        }
        bidx_name(c, name, sizeof name);
        json_object_del(*filters_out, k);
        json_object_set_new(*filters_out, name, cond);
    }
    return 0;
}

void cdb__crypt_row(const cdb_colset *cs, const char *table, json_t *row, const json_t *plain_data)
{
    char pk[PK_TEXT_MAX] = "";
    bool have_pk = false;
    json_t *failed = NULL;

    for (size_t i = 0; i < cs->n; i++) {
        const cdb_enccol *c = &cs->cols[i];
        if (strcmp(c->table, table) != 0)
            continue;
        char name[64];
        bidx_name(c, name, sizeof name);
        json_object_del(row, name);
        if (!have_pk) {
            json_t *p = json_object_get(row, CDB_CRYPT_PK_MEMBER);
            have_pk = pk_canon(c, p ? p : json_object_get(row, c->pk), pk);
        }
        json_t *v = json_object_get(row, c->column);
        int version = 0;
        if (!json_is_string(v) || !cdb__colval_is_encrypted(json_string_value(v), &version))
            continue;              /* NULL, or plaintext not yet reached by the setup job */
        json_t *plain = plain_data ? json_object_get(plain_data, c->column) : NULL;
        if (json_is_string(plain)) {
            /* the value this very write stored */
            json_object_set(row, c->column, plain);
            continue;
        }
        char *text = NULL;
        size_t len = 0;
        cdb_error derr;
        cdb_error_init(&derr);
        if (have_pk && version < CDB_COLRING_VERSIONS && c->keys[version])
            text = cdb__colval_decrypt(c->keys[version], c->table, c->column, pk, json_string_value(v), &len,
                                       &derr);
        cdb_error_destroy(&derr);
        json_t *s = text ? json_stringn(text, len) : NULL;
        if (text) {
            sodium_memzero(text, len);
            free(text);
        }
        if (s) {
            json_object_set_new(row, c->column, s);
        } else {
            /* logged without the value: the place only */
            cdb_log_warn("encryption.decrypt_failed", "DECRYPTION_FAILED: a value of %s.%s (row %s) does not decrypt", c->table,
                         c->column, have_pk ? pk : "?");
            cdb__metrics_inc(CDB_M_ENCRYPTION_FAILURES);
            json_object_set_new(row, c->column, json_null());
            if (!failed)
                failed = json_array();
            json_array_append_new(failed, json_string(c->column));
        }
    }
    json_object_del(row, CDB_CRYPT_PK_MEMBER);
    if (failed)
        json_object_set_new(row, CDB_CRYPT_FAILED_MEMBER, failed);
}

int cdb__crypt_read_page(const cdb_colset *cs, const char *table, const char *part, size_t len, char **out,
                         size_t *out_len, cdb_error *err)
{
    char *wrapped = malloc(len + 3), *text = NULL;
    json_t *doc = NULL, *rows, *row;
    size_t i;
    int rc = 0;

    if (!wrapped)
        return cdb_error_oom(err);
    wrapped[0] = '{';
    memcpy(wrapped + 1, part, len);
    wrapped[len + 1] = '}';
    wrapped[len + 2] = '\0';
    if (!(doc = json_loadb(wrapped, len + 2, 0, NULL)) || !json_is_array(rows = json_object_get(doc, "data"))) {
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Malformed database result");
        goto out;
    }
    json_array_foreach(rows, i, row)
        cdb__crypt_row(cs, table, row, NULL);
    if (!(text = json_dumps(doc, JSON_COMPACT))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    /* strip the braces again: the part is spliced into the answer */
    *out_len = strlen(text) - 2;
    memmove(text, text + 1, *out_len);
    text[*out_len] = '\0';
    *out = text;
out:
    json_decref(doc);
    free(wrapped);
    return rc;
}

/* The update's primary key value from filters that name it alone. */
static const json_t *pk_of_filters(const json_t *filters, const char *pk)
{
    if (!json_is_object(filters) || json_object_size(filters) != 1)
        return NULL;
    const json_t *v = json_object_get(filters, pk);
    if (json_is_object(v) && json_object_size(v) == 1)
        v = json_object_get(v, "eq");
    return json_is_string(v) || json_is_integer(v) ? v : NULL;
}

/* A random (version 4) uuid, for a uuid key whose default coredb stands in for. */
static void random_uuid(char buf[PK_TEXT_MAX])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(buf, PK_TEXT_MAX, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* The next value of the key's sequence, drawn on a pooled connection (as the service: see docs/http.md). */
static int next_in_sequence(cdb_pool *pool, const cdb_enccol *c, char buf[PK_TEXT_MAX], cdb_error *err)
{
    cdb_pool_conn *pc = NULL;
    PGresult *res = NULL;
    const char *params[] = {c->pk_sequence};
    PGconn *conn = pool ? cdb_txn_acquire(pool, &pc, err) : NULL;
    int rc = -1;

    if (!conn) {
        rc = pool ? -1 : cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "No pool to draw a key from");
        goto out;
    }
    if ((rc = cdb_pg_exec(conn, "SELECT nextval($1::regclass)", 1, params, &res, err)) < 0)
        goto out;
    snprintf(buf, PK_TEXT_MAX, "%s", PQgetvalue(res, 0, 0));
out:
    PQclear(res);
    if (conn)
        cdb_txn_release(pool, pc);
    return rc;
}

/*
 * The key the write's values are bound to, into pk: given (canonical), or
 * drawn for an insert without one (*drawn). What cannot be bound is refused.
 */
static int write_key(const cdb_enccol *c, cdb_pool *pool, cdb_crypt_write_kind kind, const json_t *data,
                     const json_t *filters, char pk[PK_TEXT_MAX], bool *drawn, cdb_error *err)
{
    *drawn = false;
    if (c->pk_kind == CDB_PK_OTHER)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", c->pk,
                                    "The primary key %s of %s no longer has a type encrypted values can be bound to",
                                    c->pk, c->table);
    if (kind == CDB_CRYPT_UPDATE) {
        const json_t *v = pk_of_filters(filters, c->pk);
        if (v && pk_canon(c, v, pk))
            return 0;
        return cdb_error_set_detail(err, CDB_ERR_INVALID_FILTER, "field", c->pk,
                                    "Column %s is encrypted and bound to its row: an update that sets it must "
                                    "filter on the primary key %s alone",
                                    c->column, c->pk);
    }
    const json_t *v = json_object_get(data, c->pk);
    if (v && !json_is_null(v)) {
        if (pk_canon(c, v, pk))
            return 0;
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", c->pk,
                                    "The value of the primary key %s is not a valid key of its type", c->pk);
    }
    if (kind == CDB_CRYPT_INSERT && c->pk_sequence) {
        *drawn = true;
        return next_in_sequence(pool, c, pk, err);
    }
    if (kind == CDB_CRYPT_INSERT && c->pk_kind == CDB_PK_UUID && c->pk_has_default) {
        *drawn = true;
        random_uuid(pk);
        return 0;
    }
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", c->pk,
                                "Column %s is encrypted and bound to its row: a write that sets it must give the "
                                "primary key %s",
                                c->column, c->pk);
}

/* The encrypted columns of table that data sets (to a string; another type refused), first one into *first. */
static int written_columns(const cdb_colset *cs, const char *table, const json_t *data, const cdb_enccol **first,
                           cdb_error *err)
{
    *first = NULL;
    for (size_t i = 0; i < cs->n; i++) {
        const cdb_enccol *c = &cs->cols[i];
        char name[64];
        json_t *v;
        if (strcmp(c->table, table) != 0)
            continue;
        bidx_name(c, name, sizeof name);
        if (json_object_get(data, name))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", name,
                                        "%s is the blind index of %s: coredb sets it", name, c->column);
        if (!(v = json_object_get(data, c->column)) || json_is_null(v))
            continue;
        if (!json_is_string(v))
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", c->column,
                                        "Column %s is encrypted: its value must be a string", c->column);
        if (!*first)
            *first = c;
    }
    return 0;
}

int cdb__crypt_write_values(const cdb_colset *cs, cdb_pool *pool, const char *table, cdb_crypt_write_kind kind,
                            const json_t *data, const json_t *filters, json_t **data_out, bool *override_identity,
                            cdb_error *err)
{
    const cdb_enccol *first;
    char pk[PK_TEXT_MAX];
    bool drawn;
    json_t *out = NULL;
    int rc;

    *data_out = NULL;
    *override_identity = false;
    if (!json_is_object(data))
        return 0;
    if ((rc = written_columns(cs, table, data, &first, err)) < 0 || !first)
        return rc;
    if ((rc = write_key(first, pool, kind, data, filters, pk, &drawn, err)) < 0)
        return rc;
    if (!(out = json_deep_copy(data)))
        return cdb_error_oom(err);
    /* an insert stores the very key its values are bound to */
    if (kind != CDB_CRYPT_UPDATE &&
        json_object_set_new(out, first->pk, first->pk_kind == CDB_PK_INT ? json_integer(strtoll(pk, NULL, 10))
                                                                         : json_string(pk)) < 0)
        goto oom;
    for (size_t i = 0; i < cs->n; i++) {
        const cdb_enccol *c = &cs->cols[i];
        char name[64], h[33];
        json_t *v;
        if (strcmp(c->table, table) != 0 || !(v = json_object_get(data, c->column)) || json_is_null(v))
            continue;
        char *enc = cdb__colval_encrypt(c->keys[c->current], c->table, c->column, pk, json_string_value(v),
                                        json_string_length(v));
        if (!enc)
            goto oom;
        json_object_set_new(out, c->column, json_string(enc));
        free(enc);
        bidx_name(c, name, sizeof name);
        if (c->searchable && blind_of(c, v, h))
            json_object_set_new(out, name, json_string(h));
    }
    *override_identity = drawn && first->pk_identity_always;
    *data_out = out;
    return 0;
oom:
    json_decref(out);
    return cdb_error_oom(err);
}

int cdb__crypt_write_check(const cdb_colset *cs, const char *table, const json_t *data, bool upsert,
                           bool update, const json_t *conflict_columns, bool sets_encrypted, cdb_error *err)
{
    const char *pk = cdb__colset_pk_of(cs, table);
    if (!pk)
        return 0;
    if (upsert && sets_encrypted) {
        const json_t *c = json_is_array(conflict_columns) ? json_array_get(conflict_columns, 0) : conflict_columns;
        if ((json_is_array(conflict_columns) && json_array_size(conflict_columns) != 1) || !json_is_string(c) ||
            strcmp(json_string_value(c), pk) != 0)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "conflict_columns",
                                        "Table %s has encrypted columns bound to the primary key: an upsert that "
                                        "sets one must conflict on %s alone", table, pk);
    }
    if (update && json_is_object(data) && json_object_get(data, pk))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", pk,
                                    "Table %s has encrypted columns bound to the primary key: %s cannot be "
                                    "changed", table, pk);
    return 0;
}
