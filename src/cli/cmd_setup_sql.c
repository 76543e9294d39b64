/*
 * cmd_setup_sql.c - `coredb setup-sql [--role NAME] [--database NAME]
 * [--password-from-stdin] [--no-event-trigger] [--json]`: prints the SQL a
 * DBA runs once as a superuser to prepare a database and a login role for
 * coredb (cdb_setup_sql). Reads no configuration and connects nowhere.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cli.h"
#include "coredb/migrate.h"

#define PASSWORD_LINE_MAX 1024

const char cli_help_setup_sql[] =
    "usage: coredb setup-sql [--role NAME] [--database NAME] [--password-from-stdin]\n"
    "                        [--no-event-trigger] [--administration] [--json]\n"
    "\n"
    "Prints the SQL a superuser runs once (psql -v ON_ERROR_STOP=1 -f FILE) to prepare\n"
    "a database and a login role (both default to coredb) that may run coredb and its\n"
    "migrations without SUPERUSER or CREATEROLE: the application roles coredb_admin,\n"
    "coredb_user and coredb_premium granted WITH ADMIN OPTION, the database owned by\n"
    "the role, the coredb schema, and the catalog event trigger (leave it out with\n"
    "--no-event-trigger: new tables then appear within 30 s). Connects nowhere.\n"
    "  --password-from-stdin   set the role's password from one line of stdin\n"
    "  --administration        also CREATEROLE and pg_signal_backend, which `coredb admin\n"
    "                          role|db-user` and /api/v1/admin/roles, /db-users need\n"
    "                          (a deliberate departure from NOCREATEROLE)\n"
    "See docs/production.md.\n"
    "\n"
    CLI_JSON_HELP
    "           (data: sql, the text)\n";

int cmd_setup_sql(int argc, char **argv)
{
    cdb_setup_sql_options opt = {0};
    bool as_json = false, from_stdin = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(argv[i], "--password-from-stdin") == 0)
            from_stdin = true;
        else if (strcmp(argv[i], "--no-event-trigger") == 0)
            opt.no_event_trigger = true;
        else if (strcmp(argv[i], "--administration") == 0)
            opt.administration = true;
        else if (strcmp(argv[i], "--role") == 0 && i + 1 < argc)
            opt.role = argv[++i];
        else if (strcmp(argv[i], "--database") == 0 && i + 1 < argc)
            opt.database = argv[++i];
        else
            return cli_usage_error("setup-sql", cli_help_setup_sql, cli_flag(argc, argv, "--json"));
    }

    cdb_error err;
    cdb_error_init(&err);
    char password[PASSWORD_LINE_MAX] = "";
    char *sql = NULL;
    json_t *data = NULL;
    if (from_stdin) {
        if (!fgets(password, sizeof password, stdin)) {
            cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "no password on stdin");
            goto out;
        }
        password[strcspn(password, "\r\n")] = '\0';
        opt.password = password;
    }
    if (cdb_setup_sql(&opt, &sql, &err) < 0)
        goto out;
    if (!as_json) {
        fputs(sql, stdout);
    } else if (!(data = json_pack("{s:s}", "sql", sql))) {
        cdb_error_oom(&err);
    }

out:;
    int rc = (as_json || err.code != CDB_OK) ? cli_print_result(data, &err, as_json) : CLI_EXIT_OK;
    if (err.code == CDB_ERR_VALIDATION_FAILED)
        rc = CLI_EXIT_USAGE;
    if (sql)
        sodium_memzero(sql, strlen(sql));
    free(sql);
    sodium_memzero(password, sizeof password);
    cdb_error_destroy(&err);
    return rc;
}
