/*
 * main.c - the coredb command line: a thin front end that parses arguments,
 * calls the library and renders its result.
 *
 * Every command is a row of cli_commands[]; `coredb help`, the man page
 * (`coredb help --man`) and the bash completion are printed from that table
 * and the commands' own usage texts (help.c). --help / -h anywhere after a
 * command prints its usage and exits 0 before anything is loaded, started or
 * connected; --verbose anywhere turns the one-shot commands' logs on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/http.h"
#include "coredb/log.h"
#include "coredb/result.h"
#include "coredb/service.h"

static int cmd_version(int argc, char **argv)
{
    if (argc > 1)
        return cli_usage_error("version", cli_help_version, false);
    printf("coredb %s\n", CDB_VERSION);
    return CLI_EXIT_OK;
}

static const cli_command commands[] = {
    {"serve", "run the HTTP service (embedded PostgreSQL when no DATABASE_URL)", NULL, NULL,
     cli_help_serve, cmd_serve},
    {"config", "print the effective configuration, secrets redacted, with sources", NULL,
     "--json", cli_help_config, cmd_config},
    {"migrate", "migration status, apply, roll back, new file", "status up down new",
     "--json --target --dry-run --steps", cli_help_migrate, cmd_migrate},
    {"user", "create a user (password from stdin), or list users a page at a time", "create list",
     "--email --username --role --display-name --limit --cursor --json", cli_help_user, cmd_user},
    {"table", "make a table usable through the data API (grants, RLS, own rows), or undo it",
     "expose unexpose list", "--owner-column --read-only-for --json", cli_help_table, cmd_table},
    {"backup", "back up the database: create, list, verify (test restore), cleanup",
     "create list verify cleanup restore", "--yes --json", cli_help_backup, cmd_backup},
    {"restore", "replace the database with a backup archive of BACKUP_DIR (safe, all or nothing)",
     NULL, "--yes --json", cli_help_restore, cmd_restore},
    {"setup-sql", "print the SQL a superuser runs once to prepare a production role", NULL,
     "--role --database --password-from-stdin --no-event-trigger --administration --json", cli_help_setup_sql,
     cmd_setup_sql},
    {"admin", "administration: database roles and users, RLS, grants, ownership, audit log",
     "audit role db-user rls schema-permissions ownership",
     "--json --actor --action --since --until --limit --cursor --permission --description --role "
     "--connection-limit --using --command --restrictive --force --replace --to",
     cli_help_admin, cmd_admin},
    {"monitor", "database monitoring: table statistics, performance, errors (JSON with --json)",
     "tables performance errors all", "--json", cli_help_monitor, cmd_monitor},
    {"health", "detailed health: connection, query, resource (healthy/degraded/unhealthy)",
     "connection query resource", "--json", cli_help_health, cmd_health},
    {"lease", "connection leases: list the live ones, release one (as an admin)", "list release",
     "--service-name --json", cli_help_lease, cmd_lease},
    {"encryption", "column encryption: encrypt a column, rotate its key, audit, rewrap (as an admin)",
     "setup rotate audit rewrap", "--searchable --json", cli_help_encryption, cmd_encryption},
    {"collections", "document and vector collections: list, create, drop (as an admin)", "list create drop",
     "--kind --partition-key --dimensions --metric --json", cli_help_collections, cmd_collections},
    {"completion", "print a shell completion script (bash)", "bash", NULL, cli_help_completion,
     cmd_completion},
    {"help", "describe a command, or print the man page (--man)", NULL, "--man", cli_help_help,
     cmd_help},
    {"version", "print the version", NULL, NULL, cli_help_version, cmd_version},
};

/* Removes --verbose from argv (any position); returns the new argc. */
static int take_verbose(int argc, char **argv)
{
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--verbose") == 0)
            cli_verbose = true;
        else
            argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    cli_commands = commands;
    cli_command_count = sizeof commands / sizeof commands[0];
    argc = take_verbose(argc, argv);
    if (argc < 2) {
        cli_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        return cmd_help(argc - 1, argv + 1);
    if (strcmp(name, "--version") == 0)
        name = "version";
    const cli_command *cmd = cli_command_find(name);
    if (!cmd) {
        fprintf(stderr, "coredb: unknown command '%s'\n", name);
        cli_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (cmd->run != cmd_help && cli_wants_help(argc - 1, argv + 1)) {
        fputs(cmd->help, stdout);
        return CLI_EXIT_OK;
    }
    if (cmd->run == cmd_serve && cdb_http_block_stop_signals() < 0) {
        /* Before any thread exists, so every thread inherits the mask and a
         * stop signal (a second one included) reaches the server's sigwait
         * instead of killing the process past its cleanup. One-shot
         * commands keep the default: Ctrl-C ends them at once (an embedded
         * cluster one of them started is adopted by the next coredb). */
        fprintf(stderr, "coredb: cannot block the stop signals\n");
        return CLI_EXIT_FAILED;
    }
    return cmd->run(argc - 1, argv + 1);
}
