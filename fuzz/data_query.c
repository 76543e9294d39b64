/*
 * data_query.c - libFuzzer harness: the body of POST /data/query through
 * every step before the database (src/data/query.c, included to reach its
 * statics): JSON parsing, validate_select (shape, select, order_by,
 * pagination), then build_sql against a fixed catalog fixture, which runs
 * the filter language (cdb_sql_where in src/data/sqlbuild.c) and the cache
 * key. Oracle (fuzz_sql.h): the rows and count statements contain only
 * fixture identifiers, fragment words and $n parameters; a failure is one
 * of the codes API.md lists for this route.
 */
#include <stdint.h>

#include "data/query.c"
#include "store/catalog.c"
#include "fuzz_sql.h"

static const char *const extra_idents[] = {CDB_CRYPT_PK_MEMBER, NULL};

static void check_code(int rc)
{
    if (rc != 0 && rc != CDB_ERR_VALIDATION_FAILED && rc != CDB_ERR_INVALID_FILTER &&
        rc != CDB_ERR_UNKNOWN_COLUMN) {
        fprintf(stderr, "unexpected error code %s\n", cdb_err_name((cdb_err)rc));
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const cdb_role roles[] = {CDB_ROLE_USER, CDB_ROLE_PREMIUM, CDB_ROLE_ADMIN};
    static const cdb_principal who = {.role = CDB_ROLE_USER, .user_id = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"};
    struct cdb_catalog cat = {.schema = (char *)FUZZ_SCHEMA};
    if (size < 1)
        return 0;
    cdb_role role = roles[data[0] % 3];
    bool hidden_pk = data[0] & 4;
    json_t *r = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
    if (!r)
        return 0;
    query_req req = {0};
    cdb_sql q;
    cdb_error err;
    char *count_sql = NULL;
    json_t *cols = json_array();
    cdb_sql_init(&q);
    cdb_error_init(&err);
    int rc = validate_select(r, role, &req, &err);
    if (rc == 0) {
        rc = build_sql(&cat, &fuzz_table, &req, &q, &count_sql, cols, hidden_pk ? "id" : NULL, &err);
        if (rc == 0) {
            fuzz_sql_check(q.text, q.nparams, extra_idents);
            fuzz_sql_check(count_sql, q.nparams - 2, extra_idents);
            char *key = cache_key(&who, &fuzz_table, &req, cols);
            if (!key)
                abort();
            free(key);
        }
    }
    check_code(rc);
    free(count_sql);
    cdb_sql_destroy(&q);
    cdb_error_destroy(&err);
    json_decref(req.order);
    json_decref(cols);
    json_decref(r);
    return 0;
}
