/*
 * cmd_table.c - `coredb table expose NAME [--owner-column C]
 * [--read-only-for user,premium] | unexpose NAME | list`, over the
 * library's cdb_tables_* (coredb/tables.h), acting as the operator (admin).
 * The same calls serve POST /api/v1/admin/tables/{name}/expose|unexpose.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/tables.h"

const char cli_help_table[] =
    "usage: coredb table expose NAME [--owner-column COLUMN] [--read-only-for ROLES] [--json]\n"
    "       coredb table unexpose NAME [--json]\n"
    "       coredb table list [--json]\n"
    "\n"
    "  expose      make a table of POSTGRES_SCHEMA usable through the data API, in one\n"
    "              transaction: grants to coredb_admin, coredb_user and coredb_premium,\n"
    "              row-level security, and the policies coredb_admin (every row),\n"
    "              coredb_rows and coredb_own_COLUMN (user and premium: rows whose\n"
    "              COLUMN is their own user id); COLUMN (uuid, default user_id) gets\n"
    "              DEFAULT coredb.current_user_id(). Running again replaces them.\n"
    "    --owner-column COLUMN   the uuid column naming each row's owner (user_id)\n"
    "    --read-only-for ROLES   user, premium or user,premium: SELECT only\n"
    "  unexpose    undo expose: policies dropped, row-level security off, grants revoked\n"
    "  list        every table of the schema, exposed or not, with its grants and policies\n"
    "\n"
    CLI_JSON_HELP;

typedef struct table_args {
    const char *action;
    const char *name;
    const char *owner_column;
    const char *read_only_for;
    bool as_json;
} table_args;

static int parse_args(int argc, char **argv, table_args *a)
{
    *a = (table_args){0};
    if (argc < 2)
        return -1;
    a->action = argv[1];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            a->as_json = true;
        else if (strcmp(argv[i], "--owner-column") == 0 && i + 1 < argc)
            a->owner_column = argv[++i];
        else if (strcmp(argv[i], "--read-only-for") == 0 && i + 1 < argc)
            a->read_only_for = argv[++i];
        else if (!a->name && argv[i][0] != '-')
            a->name = argv[i];
        else
            return -1;
    }
    bool named = strcmp(a->action, "expose") == 0 || strcmp(a->action, "unexpose") == 0;
    if (named && !a->name)
        return -1;
    if (strcmp(a->action, "list") == 0 && a->name)
        return -1;
    if (!named && strcmp(a->action, "list") != 0)
        return -1;
    if (strcmp(a->action, "expose") != 0 && (a->owner_column || a->read_only_for))
        return -1;
    return 0;
}

/* {"owner_column"?, "read_only_for"?: [...]} from the options; NULL on out of memory. */
static json_t *expose_request(const table_args *a)
{
    json_t *req = json_object();
    if (!req)
        return NULL;
    if (a->owner_column && json_object_set_new(req, "owner_column", json_string(a->owner_column)) < 0)
        goto fail_free_request;
    if (a->read_only_for) {
        json_t *roles = json_array();
        char *copy = strdup(a->read_only_for);
        if (!roles || !copy || json_object_set_new(req, "read_only_for", roles) < 0) {
            free(copy);
            goto fail_free_request;
        }
        char *save = NULL;
        for (char *r = strtok_r(copy, ",", &save); r; r = strtok_r(NULL, ",", &save))
            if (r[0] && json_array_append_new(roles, json_string(r)) < 0) {
                free(copy);
                goto fail_free_request;
            }
        free(copy);
    }
    return req;

fail_free_request:
    json_decref(req);
    return NULL;
}

/* The action of a, as the operator. */
static void run_action(cli_operator *op, const table_args *a, json_t **result, cdb_error *err)
{
    if (strcmp(a->action, "expose") == 0) {
        json_t *request = expose_request(a);
        if (!request)
            cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "arguments must be UTF-8");
        else
            cdb_tables_expose(op->svc, &op->principal, a->name, request, result, err);
        json_decref(request);
    } else if (strcmp(a->action, "unexpose") == 0) {
        cdb_tables_unexpose(op->svc, &op->principal, a->name, result, err);
    } else {
        cdb_tables_list(op->svc, &op->principal, result, err);
    }
}

int cmd_table(int argc, char **argv)
{
    table_args a;
    if (parse_args(argc, argv, &a) < 0)
        return cli_usage_error("table", cli_help_table, cli_flag(argc, argv, "--json"));
    cli_operator op;
    int rc = cli_operator_open(&op, a.as_json, true, "coredb table");
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        run_action(&op, &a, &op.result, &op.err);
    return cli_operator_finish(&op);
}
