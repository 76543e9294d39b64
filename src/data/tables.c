/*
 * tables.c - GET /api/v1/data/tables: what the caller may read and write,
 * from the catalog snapshot of its database role (store/catalog.h), so the
 * answer is exactly what /data/query and /data/transaction will accept.
 * No round trip: the snapshot is already in memory.
 */
#include <stdbool.h>

#include "data/data_internal.h"
#include "store/catalog.h"

static json_t *column_json(const cdb_column *c)
{
    return json_pack("{s:s, s:s, s:b, s:b, s:b, s:b}", "name", c->name, "type", c->type_name,
                     "read", (c->privs & CDB_PRIV_SELECT) != 0, "insert", (c->privs & CDB_PRIV_INSERT) != 0,
                     "update", (c->privs & CDB_PRIV_UPDATE) != 0,
                     /* an insert must name it: NOT NULL and nothing fills it in */
                     "required", c->not_null && !c->has_default);
}

static json_t *table_json(const cdb_table *t)
{
    json_t *cols = json_array();
    for (size_t i = 0; cols && i < t->ncolumns; i++) {
        if (json_array_append_new(cols, column_json(&t->columns[i])) < 0) {
            json_decref(cols);
            return NULL;
        }
    }
    if (!cols)
        return NULL;
    return json_pack("{s:s, s:b, s:b, s:b, s:b, s:o}", "name", t->name,
                     "read", (t->privs & CDB_PRIV_SELECT) != 0, "insert", (t->privs & CDB_PRIV_INSERT) != 0,
                     "update", (t->privs & CDB_PRIV_UPDATE) != 0, "delete", (t->privs & CDB_PRIV_DELETE) != 0,
                     "columns", cols);
}

int cdb_data_tables(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err)
{
    cdb_catalog *cat = NULL;
    json_t *list = NULL;
    int rc;

    *out = NULL;
    if ((rc = cdb_principal_require(caller, err)) < 0)
        goto out;
    if (!svc->catalog) {
        rc = cdb_error_set(err, CDB_ERR_DATABASE_UNAVAILABLE, "Database unavailable");
        goto out;
    }
    if (!(cat = cdb_catalog_cache_get(svc->catalog, err))) {
        rc = err->code;
        goto out;
    }
    if (!(list = json_array()))
        goto fail_oom;
    size_t n = cdb_catalog_table_count(cat, caller->role);
    for (size_t i = 0; i < n; i++)
        if (json_array_append_new(list, table_json(cdb_catalog_table_at(cat, caller->role, i))) < 0)
            goto fail_oom;
    if (!(*out = json_pack("{s:s, s:s, s:o}", "schema", cdb_catalog_schema(cat), "role",
                           cdb_role_name(caller->role), "tables", list)))
        rc = cdb_error_oom(err);
    list = NULL;
    goto out;

fail_oom:
    rc = cdb_error_oom(err);
out:
    json_decref(list);
    if (cat)
        cdb_catalog_unref(cat);
    return rc;
}
