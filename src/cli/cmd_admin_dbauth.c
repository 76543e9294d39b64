/*
 * cmd_admin_dbauth.c - the verbs `coredb admin role` and `coredb admin
 * db-user` (coredb/dbauth.h):
 *   role create NAME --permission P [--permission P ...] [--description D]
 *   db-user create NAME [--role R ...] [--connection-limit N]   password on stdin
 *   db-user password NAME                                       password on stdin
 *   db-user revoke NAME [--role R ...]
 * Passwords are read from stdin (one line, echo off on a terminal), never
 * from argv, where every user of the machine could read them.
 *
 * parse builds the body of the matching route. The db-user request also
 * carries "username" (the route's path segment); run takes it out again
 * and tells the three calls apart by their bodies' own members: "password"
 * for create, "new_password" for password, neither for revoke.
 */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/dbauth.h"

#define PASSWORD_LINE_MAX 2048

/* Options of a verb: --name VALUE pairs; --json/--verbose skipped; positional words counted. */
typedef struct opts {
    const char *words[3];          /* sub-verb, NAME */
    int nwords;
    json_t *repeated;              /* values of the repeated option */
    const char *description, *limit;
    bool bad;
} opts;

static void parse_opts(int argc, char **argv, const char *repeated, bool allow_description, bool allow_limit,
                       opts *o)
{
    for (int i = 1; i < argc && !o->bad; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0 || strcmp(a, "--verbose") == 0)
            continue;
        bool has_value = i + 1 < argc;
        if (repeated && strcmp(a, repeated) == 0 && has_value) {
            json_t *s = json_string(argv[++i]);
            o->bad = !s || json_array_append_new(o->repeated, s) < 0;
        } else if (allow_description && strcmp(a, "--description") == 0 && has_value && !o->description) {
            o->description = argv[++i];
        } else if (allow_limit && strcmp(a, "--connection-limit") == 0 && has_value && !o->limit) {
            o->limit = argv[++i];
        } else if (a[0] == '-' || o->nwords >= 2) {
            o->bad = true;
        } else {
            o->words[o->nwords++] = a;
        }
    }
    o->bad = o->bad || o->nwords != 2;
}

/* The password line from stdin into body[field]; false when there is none (or it is not UTF-8). */
static bool add_password(json_t *body, const char *field)
{
    char line[PASSWORD_LINE_MAX];
    bool ok = cli_read_password(line, sizeof line) == 0 &&
              json_object_set_new(body, field, json_string(line)) == 0;
    sodium_memzero(line, sizeof line);
    return ok;
}

json_t *cli_admin_role_parse(int argc, char **argv)
{
    opts o = {.repeated = json_array()};
    json_t *body = NULL;
    if (!o.repeated)
        return NULL;
    parse_opts(argc, argv, "--permission", true, false, &o);
    if (!o.bad && strcmp(o.words[0], "create") == 0 && json_array_size(o.repeated) > 0)
        body = json_pack("{s:s, s:O, s:s?}", "role_name", o.words[1], "permissions", o.repeated,
                         "description", o.description);
    json_decref(o.repeated);
    return body;
}

int cli_admin_role_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                       cdb_error *err)
{
    return cdb_dbauth_create_role(svc, operator, request, out, err);
}

json_t *cli_admin_db_user_parse(int argc, char **argv)
{
    opts o = {.repeated = json_array()};
    json_t *body = NULL;
    if (!o.repeated)
        return NULL;
    parse_opts(argc, argv, "--role", true, true, &o);
    const char *verb = o.bad ? "" : o.words[0];
    if (o.description)
        o.bad = true;
    char *end = NULL;
    long limit = o.limit ? strtol(o.limit, &end, 10) : 5;
    if (o.bad || (o.limit && (!*o.limit || *end)))
        goto out;
    if (strcmp(verb, "create") == 0) {
        /* the range is the library's to check, with its message */
        body = json_pack("{s:s, s:O, s:I}", "username", o.words[1], "roles", o.repeated, "connection_limit",
                         (json_int_t)limit);
        if (body && !add_password(body, "password")) {
            json_decref(body);
            body = NULL;
        }
    } else if (strcmp(verb, "password") == 0 && json_array_size(o.repeated) == 0 && !o.limit) {
        body = json_pack("{s:s}", "username", o.words[1]);
        if (body && !add_password(body, "new_password")) {
            json_decref(body);
            body = NULL;
        }
    } else if (strcmp(verb, "revoke") == 0 && !o.limit) {
        body = json_array_size(o.repeated) > 0
                   ? json_pack("{s:s, s:O}", "username", o.words[1], "roles", o.repeated)
                   : json_pack("{s:s}", "username", o.words[1]);
    }
out:
    json_decref(o.repeated);
    return body;
}

int cli_admin_db_user_run(cdb_service *svc, const cdb_principal *operator, json_t *request,
                          json_t **out, cdb_error *err)
{
    if (json_object_get(request, "password"))
        return cdb_dbauth_create_user(svc, operator, request, out, err);
    /* the path segment of the other two routes */
    char *user = strdup(json_string_value(json_object_get(request, "username")));
    if (!user)
        return cdb_error_oom(err);
    json_object_del(request, "username");
    int rc = json_object_get(request, "new_password")
                 ? cdb_dbauth_update_user_password(svc, operator, user, request, out, err)
                 : cdb_dbauth_revoke_user_access(svc, operator, user, request, out, err);
    free(user);
    return rc;
}
