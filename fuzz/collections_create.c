/*
 * collections_create.c - libFuzzer harness: the body of POST
 * /api/v1/admin/collections through its validation (parse_request of
 * src/management/collections.c, included to reach its statics: name,
 * kind, partition_key through store/jsonpath.c, dimensions, metric, and
 * unknown members), and check_name, the gate of DELETE
 * /admin/collections/{name}, on the body's "name" member.
 *
 * Oracles: a body is accepted exactly when a rule written here
 * independently of collections.c says so; an accepted name matches
 * ^[a-z_][a-z0-9_]{0,57}$ (the registry's CHECK) without a pg_ prefix and
 * its table coll_<name> fits an identifier (63 bytes) untruncated; an
 * accepted partition key's text[] literal (which create_table splices
 * into a generated column through PQescapeLiteral) reads back in
 * PostgreSQL as exactly the path's segments (fuzz_doc.h); a vector
 * collection has the dimensions sent in decimal and the metric sent (or
 * cosine), a document collection neither; a refusal is VALIDATION_FAILED.
 */
#include <stdint.h>

#include "management/collections.c"
#include "fuzz_doc.h"

static void die(const char *why, const json_t *r)
{
    char *text = json_dumps(r, JSON_ENCODE_ANY | JSON_COMPACT);
    fprintf(stderr, "collections_create oracle: %s\nbody: %s\n", why, text ? text : "?");
    free(text);
    abort();
}

static bool name_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || n != json_string_length(v) || n < 1 || n > 58 || strncmp(s, "pg_", 3) == 0)
        return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static bool path_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = s ? strlen(s) : 0, seg = 0;
    int depth = 1;
    if (!s || n != json_string_length(v) || n < 1 || n > 256)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (seg == 0 || ++depth > 16)
                return false;
            seg = 0;
        } else if (isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-') {
            if (++seg > 64)
                return false;
        } else {
            return false;
        }
    }
    return seg > 0;
}

/* The body rule of API.md / docs/http.md "Collections", written apart from collections.c. */
static bool body_ok(const json_t *r)
{
    const char *k;
    json_t *v;
    if (!json_is_object(r))
        return false;
    json_object_foreach((json_t *)r, k, v) {
        if (strcmp(k, "name") && strcmp(k, "kind") && strcmp(k, "partition_key") && strcmp(k, "dimensions") &&
            strcmp(k, "metric"))
            return false;
    }
    const char *kind = json_string_value(json_object_get(r, "kind"));
    json_t *pk = json_object_get(r, "partition_key"), *dims = json_object_get(r, "dimensions"),
           *metric = json_object_get(r, "metric");
    if (!name_ok(json_object_get(r, "name")) || !kind)
        return false;
    if (!strcmp(kind, "documents"))
        return (!pk || json_is_null(pk) || path_ok(pk)) && !dims && !metric;
    if (strcmp(kind, "vectors"))
        return false;
    const char *m = json_string_value(metric);
    return (!pk || json_is_null(pk)) && json_is_integer(dims) && json_integer_value(dims) >= 1 &&
           json_integer_value(dims) <= 4096 &&
           (!metric || (m && (!strcmp(m, "cosine") || !strcmp(m, "l2") || !strcmp(m, "dot"))));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *r = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (!r)
        return 0;
    coll_req c = {0};
    cdb_error err;
    cdb_error_init(&err);
    int rc = parse_request(r, &c, &err);
    bool ok = body_ok(r);
    if ((rc == 0) != ok)
        die(rc == 0 ? "an invalid body accepted" : "a valid body refused", r);
    if (rc != 0 && rc != CDB_ERR_VALIDATION_FAILED)
        die("a refusal that is not VALIDATION_FAILED", r);
    if (rc == 0) {
        char table[CDB_ADMIN_IDENT_MAX + 1];
        if (!name_ok(json_object_get(r, "name")) || strcmp(c.name, json_string_value(json_object_get(r, "name"))))
            die("the accepted name is not the valid name sent", r);
        if ((size_t)snprintf(table, sizeof table, TABLE_PREFIX "%s", c.name) >= sizeof table)
            die("the table name of an accepted name is cut", r);
        json_t *pk = json_object_get(r, "partition_key");
        if (pk && !json_is_null(pk)) {
            if (!c.partition || !c.partition_path || strcmp(c.partition_path, json_string_value(pk)))
                die("an accepted partition key is not kept", r);
            fuzz_doc_path_check(c.partition_path, c.partition);
        } else if (c.partition || c.partition_path) {
            die("a partition key without one sent", r);
        }
        if (!strcmp(c.kind, "vectors")) {
            char want[16];
            const char *m = json_string_value(json_object_get(r, "metric"));
            snprintf(want, sizeof want, "%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(r, "dimensions")));
            if (strcmp(c.dims, want) || !c.metric || strcmp(c.metric, m ? m : "cosine"))
                die("a vector collection's dimensions or metric are not the ones sent", r);
        } else if (strcmp(c.kind, "documents") || c.dims[0] || c.metric) {
            die("a document collection with dimensions or a metric", r);
        }
    } else {
        const char *field = json_string_value(json_object_get(err.details, "field"));
        if (json_is_object(r) && !field)
            die("a refusal of an object body names no field", r);
    }
    free(c.partition); /* as cdb_collections_create does, refused or not */
    cdb_error_destroy(&err);

    /* DELETE's gate: check_name on the same value */
    const char *checked = NULL;
    cdb_error_init(&err);
    rc = check_name(json_object_get(r, "name"), &checked, &err);
    if ((rc == 0) != name_ok(json_object_get(r, "name")))
        die(rc == 0 ? "check_name took an invalid name" : "check_name refused a valid name", r);
    cdb_error_destroy(&err);
    json_decref(r);
    return 0;
}
