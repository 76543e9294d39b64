/*
 * cmd_admin_access.c - the verbs of `coredb admin` for row-level security,
 * schema grants and ownership (coredb/access.h), each argv turned into the
 * JSON body of its HTTP route:
 *   rls TABLE POLICY --using EXPR [--role R ...] [--command C] [--restrictive] [--force] [--replace]
 *   schema-permissions SCHEMA --role R [--permission P ...]
 *   ownership TYPE NAME --to ROLE
 */
#include <string.h>

#include "cli.h"
#include "coredb/access.h"

/* argv[*i] is opt and has a value after it: *value = that value, *i moves past it. */
static bool option(int argc, char **argv, int *i, const char *opt, const char **value)
{
    if (strcmp(argv[*i], opt) != 0 || *i + 1 >= argc || strcmp(argv[*i + 1], "--json") == 0)
        return false;
    *value = argv[++*i];
    return true;
}

json_t *cli_admin_rls_parse(int argc, char **argv)
{
    json_t *req = json_object(), *roles = json_array();
    const char *pos[2] = {NULL, NULL}, *v;
    int npos = 0;
    bool ok = req && roles;
    for (int i = 1; ok && i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (option(argc, argv, &i, "--using", &v))
            ok = json_object_set_new(req, "policy", json_string(v)) == 0;
        else if (option(argc, argv, &i, "--role", &v))
            ok = json_array_append_new(roles, json_string(v)) == 0;
        else if (option(argc, argv, &i, "--command", &v))
            ok = json_object_set_new(req, "command", json_string(v)) == 0;
        else if (strcmp(argv[i], "--restrictive") == 0 || strcmp(argv[i], "--force") == 0 ||
                 strcmp(argv[i], "--replace") == 0)
            ok = json_object_set_new(req, argv[i] + 2, json_true()) == 0;
        else if (argv[i][0] != '-' && npos < 2)
            pos[npos++] = argv[i];
        else
            ok = false;
    }
    ok = ok && npos == 2 && json_object_get(req, "policy") &&
         json_object_set_new(req, "table_name", json_string(pos[0])) == 0 &&
         json_object_set_new(req, "policy_name", json_string(pos[1])) == 0 &&
         (json_array_size(roles) == 0 || json_object_set(req, "roles", roles) == 0);
    json_decref(roles);
    if (!ok) {
        json_decref(req);
        return NULL;
    }
    return req;
}

int cli_admin_rls_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                      cdb_error *err)
{
    return cdb_access_enable_row_level_security(svc, operator, request, out, err);
}

/* The schema travels in the body as schema_name (the route has it in its path). */
json_t *cli_admin_schema_permissions_parse(int argc, char **argv)
{
    json_t *req = json_object(), *perms = json_array();
    const char *schema = NULL, *v;
    bool ok = req && perms;
    for (int i = 1; ok && i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (option(argc, argv, &i, "--role", &v))
            ok = !json_object_get(req, "role") && json_object_set_new(req, "role", json_string(v)) == 0;
        else if (option(argc, argv, &i, "--permission", &v))
            ok = json_array_append_new(perms, json_string(v)) == 0;
        else if (argv[i][0] != '-' && !schema)
            schema = argv[i];
        else
            ok = false;
    }
    ok = ok && schema && json_object_get(req, "role") &&
         json_object_set_new(req, "schema_name", json_string(schema)) == 0 &&
         json_object_set(req, "permissions", perms) == 0;
    json_decref(perms);
    if (!ok) {
        json_decref(req);
        return NULL;
    }
    return req;
}

int cli_admin_schema_permissions_run(cdb_service *svc, const cdb_principal *operator, json_t *request,
                                     json_t **out, cdb_error *err)
{
    json_t *body = json_copy(request);
    json_t *schema = body ? json_incref(json_object_get(body, "schema_name")) : NULL;
    int rc;
    if (!body || !schema) {
        rc = cdb_error_oom(err);
    } else {
        json_object_del(body, "schema_name");
        rc = cdb_access_set_schema_permissions(svc, operator, json_string_value(schema), body, out, err);
    }
    json_decref(schema);
    json_decref(body);
    return rc;
}

json_t *cli_admin_ownership_parse(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL}, *to = NULL, *v;
    int npos = 0;
    bool ok = true;
    for (int i = 1; ok && i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (option(argc, argv, &i, "--to", &v))
            to = v;
        else if (argv[i][0] != '-' && npos < 2)
            pos[npos++] = argv[i];
        else
            ok = false;
    }
    if (!ok || npos != 2 || !to)
        return NULL;
    return json_pack("{s:s, s:s, s:s}", "object_type", pos[0], "object_name", pos[1], "new_owner", to);
}

int cli_admin_ownership_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                            cdb_error *err)
{
    return cdb_access_transfer_ownership(svc, operator, request, out, err);
}
