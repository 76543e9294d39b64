/*
 * cmd_user.c - `coredb user create --email E --username U [--role R]
 * [--display-name N] [--json]`, the password read from stdin (one line),
 * and `coredb user list [--limit N] [--cursor C] [--email E] [--json]`,
 * one page of cdb_users_list as GET /users gives an admin.
 *
 * Whoever runs the CLI can already reach the database, so it acts as an
 * admin: any role may be given, which is how a first admin is made by hand.
 * Pending migrations are applied first (cdb_service_migrate_on_start, as
 * `serve` does), so the command works on a fresh installation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cli.h"
#include "coredb/users.h"
#include "coredb/service.h"

#define PASSWORD_LINE_MAX 2048

const char cli_help_user[] =
    "usage: coredb user create --email E --username U [--role admin|user|premium]\n"
    "                          [--display-name N] [--json]\n"
    "usage: coredb user list [--limit N] [--cursor C] [--email E] [--json]\n"
    "\n"
    "  create       creates a user as an admin would (any role may be given); the\n"
    "               password is read from stdin, one line. Pending migrations are\n"
    "               applied first when MIGRATE_ON_START. Data: the user object.\n"
    "  list         lists users oldest first, one page at a time, as GET /users does\n"
    "               for an admin. Data: users, the page, and next_cursor (null on the\n"
    "               last page).\n"
    "    --limit N    page size, 1 to 100 (default 20)\n"
    "    --cursor C   the next_cursor of the previous page\n"
    "    --email E    exact email, case-insensitive; 'prefix*' for emails starting with prefix\n"
    "\n"
    CLI_JSON_HELP;

typedef struct user_args {
    const char *email, *username, *role, *display_name;
    bool as_json;
} user_args;

static int parse_args(int argc, char **argv, user_args *a)
{
    *a = (user_args){0};
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return -1;
    for (int i = 2; i < argc; i++) {
        const char **slot = NULL;
        if (strcmp(argv[i], "--json") == 0) {
            a->as_json = true;
            continue;
        }
        if (strcmp(argv[i], "--email") == 0)
            slot = &a->email;
        else if (strcmp(argv[i], "--username") == 0)
            slot = &a->username;
        else if (strcmp(argv[i], "--role") == 0)
            slot = &a->role;
        else if (strcmp(argv[i], "--display-name") == 0)
            slot = &a->display_name;
        if (!slot || i + 1 >= argc)
            return -1;
        *slot = argv[++i];
    }
    return a->email && a->username ? 0 : -1;
}

static int cmd_user_list(int argc, char **argv);

/* The user of a and password, as the operator (a role given is recorded with the actor "cli"). */
static void create_user(cli_operator *op, const user_args *a, const char *password, json_t **result,
                        cdb_error *err)
{
    json_t *body = json_pack("{s:s, s:s, s:s}", "email", a->email, "username", a->username, "password",
                             password);
    if (!body) {
        cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "arguments and password must be UTF-8");
        return;
    }
    if (a->role)
        json_object_set_new(body, "role", json_string(a->role));
    if (a->display_name)
        json_object_set_new(body, "display_name", json_string(a->display_name));
    cdb_users_create(op->svc, &op->principal, body, result, err);
    json_decref(body);
}

int cmd_user(int argc, char **argv)
{
    user_args a;
    if (argc >= 2 && strcmp(argv[1], "list") == 0)
        return cmd_user_list(argc - 1, argv + 1);
    if (parse_args(argc, argv, &a) < 0)
        return cli_usage_error("user create", cli_help_user, cli_flag(argc, argv, "--json"));
    char password[PASSWORD_LINE_MAX];
    if (cli_read_password(password, sizeof password) < 0) {
        /* a usage error (exit 2), reported like any other failure */
        cdb_error err;
        cdb_error_init(&err);
        cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "no password on stdin");
        cli_print_result(NULL, &err, a.as_json);
        cdb_error_destroy(&err);
        return CLI_EXIT_USAGE;
    }
    cli_operator op;
    int rc = cli_operator_open(&op, a.as_json, true, "coredb user");
    if (rc == CLI_EXIT_OK) {
        if (op.svc)
            create_user(&op, &a, password, &op.result, &op.err);
        rc = cli_operator_finish(&op);
    }
    sodium_memzero(password, sizeof password);
    return rc;
}

/* ---- coredb user list: one page of cdb_users_list, as GET /users gives an admin ---- */

typedef struct list_args {
    const char *limit, *cursor, *email;
    bool as_json;
} list_args;

static int parse_list_args(int argc, char **argv, list_args *a)
{
    *a = (list_args){0};
    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;
        if (strcmp(argv[i], "--json") == 0) {
            a->as_json = true;
            continue;
        }
        if (strcmp(argv[i], "--limit") == 0)
            slot = &a->limit;
        else if (strcmp(argv[i], "--cursor") == 0)
            slot = &a->cursor;
        else if (strcmp(argv[i], "--email") == 0)
            slot = &a->email;
        if (!slot || i + 1 >= argc)
            return -1;
        *slot = argv[++i];
    }
    return 0;
}

/* 1..999 as digits (the library checks the range), else -1: a usage error. */
static int parse_limit(const char *text)
{
    if (!text)
        return 0;
    size_t n = strlen(text);
    if (n == 0 || n > 3 || strspn(text, "0123456789") != n || atoi(text) == 0)
        return -1;
    return atoi(text);
}

static int cmd_user_list(int argc, char **argv)
{
    list_args a;
    if (parse_list_args(argc, argv, &a) < 0 || (a.limit && parse_limit(a.limit) < 0))
        return cli_usage_error("user list", cli_help_user, cli_flag(argc, argv, "--json"));
    cdb_users_list_options opt = {.limit = parse_limit(a.limit), .cursor = a.cursor, .email = a.email};
    cli_operator op;
    int rc = cli_operator_open(&op, a.as_json, true, "coredb user");
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        cdb_users_list(op.svc, &op.principal, &opt, &op.result, &op.err);
    return cli_operator_finish(&op);
}
