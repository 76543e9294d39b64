/*
 * cmd_user_list.c - `coredb user list [--limit N] [--cursor C] [--email E]
 * [--json]`: one page of cdb_users_list, the listing GET /users gives an
 * admin. Whoever runs the CLI can reach the database, so it acts as an
 * admin, as `user create` does. Pending migrations are applied first when
 * MIGRATE_ON_START, so the command works on a fresh installation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/users.h"
#include "coredb/service.h"

typedef struct list_args {
    const char *limit, *cursor, *email;
    bool as_json;
} list_args;

static int parse_args(int argc, char **argv, list_args *a)
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

int cmd_user_list(int argc, char **argv)
{
    list_args a;
    if (parse_args(argc, argv, &a) < 0 || (a.limit && parse_limit(a.limit) < 0))
        return cli_usage_error("user list", cli_help_user, cli_flag(argc, argv, "--json"));
    cdb_config cfg;
    int rc = cli_load_config(&cfg, a.as_json);
    if (rc != CLI_EXIT_OK)
        return rc;

    cdb_error err;
    cdb_error_init(&err);
    cdb_service *svc = NULL;
    json_t *result = NULL;
    cdb_principal operator = {.role = CDB_ROLE_ADMIN};
    cdb_users_list_options opt = {.limit = parse_limit(a.limit), .cursor = a.cursor, .email = a.email};

    if (cli_open_service(&cfg, true, &svc, &err) < 0)
        goto out;
    if (cdb_service_migrate_on_start(svc, "coredb user", &err) < 0)
        goto out;
    cdb_users_list(svc, &operator, &opt, &result, &err);

out:
    rc = cli_print_result(result, &err, a.as_json);
    cdb_service_close(svc);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
