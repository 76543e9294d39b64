/*
 * access.c - what the access operations share (access_internal.h):
 * request shape, relations found by exact catalog name, coredb's own
 * objects, and the after-effects of a commit or a failure.
 */
#include "management/access_internal.h"

#include <stdlib.h>
#include <string.h>

#include "coredb/audit.h"
#include "coredb/log.h"
#include "security/service_state.h"
#include "store/pg.h"

/* $1 schema, $2 name: the relation, its kind and owner, whether it is coredb's own. */
static const char REL_SQL[] =
    "SELECT c.oid::text, c.relkind::text, n.nspname, c.relname, pg_get_userbyid(c.relowner),"
    " " CDB__ACCESS_PROTECTED_REL("c", "n")
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = $1 AND c.relname = $2";

void cdb__access_rel_destroy(cdb__access_rel *rel)
{
    free(rel->schema);
    free(rel->name);
    free(rel->owner);
    PQfreemem(rel->qschema);
    PQfreemem(rel->qname);
    *rel = (cdb__access_rel){0};
}

/*
 * Splits "schema.name" at the first dot ("name": default_schema). Each
 * part 1..63 bytes; the text has no NUL (jansson strings may carry one).
 */
static int split_name(const char *field, const json_t *value, const char *default_schema,
                      char schema[CDB_ADMIN_IDENT_MAX + 1], char name[CDB_ADMIN_IDENT_MAX + 1],
                      cdb_error *err)
{
    const char *s = json_is_string(value) ? json_string_value(value) : NULL;
    const char *dot = s ? strchr(s, '.') : NULL;
    const char *rest = dot ? dot + 1 : s;
    size_t ns = dot ? (size_t)(dot - s) : strlen(default_schema);
    size_t nn = rest ? strlen(rest) : 0;
    if (!s || strlen(s) != json_string_length(value) || ns == 0 || ns > CDB_ADMIN_IDENT_MAX || nn == 0 ||
        nn > CDB_ADMIN_IDENT_MAX)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be a name or schema.name (each part 1 to %d bytes, no NUL)",
                                    field, CDB_ADMIN_IDENT_MAX);
    memcpy(schema, dot ? s : default_schema, ns);
    schema[ns] = '\0';
    memcpy(name, rest, nn + 1);
    return 0;
}

int cdb__access_rel_find(PGconn *conn, const char *field, const json_t *value,
                         const char *default_schema, const char *kinds, const char *kind_word,
                         cdb__access_rel *rel, cdb_error *err)
{
    char schema[CDB_ADMIN_IDENT_MAX + 1], name[CDB_ADMIN_IDENT_MAX + 1];
    PGresult *res = NULL;
    int rc = split_name(field, value, default_schema, schema, name, err);
    if (rc < 0)
        goto out;
    const char *params[] = {schema, name};
    if ((rc = cdb_pg_exec(conn, REL_SQL, 2, params, &res, err)) < 0)
        goto out;
    /* coredb's own first: refused whatever kind the request took it for */
    if (PQntuples(res) == 1 && PQgetvalue(res, 0, 5)[0] == 't') {
        rc = cdb_error_set_detail(err, CDB_ERR_FORBIDDEN, "field", field,
                                  "%s: %s.%s belongs to coredb itself (or the system) and cannot be "
                                  "changed through the administration API",
                                  field, schema, name);
        goto out;
    }
    if (PQntuples(res) != 1 || !strchr(kinds, PQgetvalue(res, 0, 1)[0])) {
        rc = cdb_error_set_detail(err, CDB_ERR_NOT_FOUND, "field", field, "%s: no %s named %s.%s", field,
                                  kind_word, schema, name);
        goto out;
    }
    snprintf(rel->oid, sizeof rel->oid, "%s", PQgetvalue(res, 0, 0));
    rel->kind = PQgetvalue(res, 0, 1)[0];
    rel->schema = strdup(PQgetvalue(res, 0, 2));
    rel->name = strdup(PQgetvalue(res, 0, 3));
    rel->owner = strdup(PQgetvalue(res, 0, 4));
    rel->qschema = cdb__admin_quote(conn, PQgetvalue(res, 0, 2));
    rel->qname = cdb__admin_quote(conn, PQgetvalue(res, 0, 3));
    if (!rel->schema || !rel->name || !rel->owner || !rel->qschema || !rel->qname)
        rc = cdb_error_oom(err);

out:
    PQclear(res);
    return rc;
}

int cdb__access_fields(const json_t *request, const char *const *allowed, cdb_error *err)
{
    if (!json_is_object(request))
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "The body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)request, key, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, key) != 0)
            a++;
        if (!*a)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key, "Unknown field %s",
                                        strlen(key) > 64 ? "(too long to show)" : key);
    }
    return 0;
}

int cdb__access_bool(const json_t *request, const char *key, bool def, bool *out, cdb_error *err)
{
    json_t *v = json_object_get(request, key);
    if (v && !json_is_boolean(v))
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", key, "%s must be a boolean",
                                    key);
    *out = v ? json_is_true(v) : def;
    return 0;
}

