/*
 * main.c - the coredb command line: a thin front end that parses arguments,
 * calls the library and renders its result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/log.h"
#include "coredb/result.h"
#include "coredb/service.h"

static void usage(FILE *to)
{
    fputs("usage: coredb <command> [options]\n"
          "\n"
          "commands:\n"
          "  serve                      run the HTTP service (embedded PostgreSQL when no DATABASE_URL)\n"
          "  config [--json]            print the effective configuration, secrets redacted\n"
          "  migrate status [--json]    applied and pending migrations\n"
          "  migrate up [--target V] [--dry-run] [--json]\n"
          "  migrate down [--steps N] [--json]\n"
          "  migrate new NAME [--json]  create migrations/<date>_<n>_NAME.sql\n"
          "  user create --email E --username U [--role admin|user|premium] [--json]\n"
          "                             create a user; the password is read from stdin\n"
          "  user list [--limit N] [--cursor C] [--email E] [--json]\n"
          "                             list users, a page at a time\n"
          "  setup-sql [--role NAME] [--database NAME] [--password-from-stdin] [--json]\n"
          "                             SQL a superuser runs once to prepare a production role\n"
          "  version                    print the version\n"
          "\n"
          "--json prints exactly one result object on stdout, on success and on failure:\n"
          "  {\"status\": \"success\"|\"error\", \"error\": null|{code, message, details},\n"
          "   \"timestamp\": ISO-8601 UTC, ...data}; the exit code is the same as without it.\n"
          "`coredb <command> --help` describes one command.\n"
          "Configuration comes from the environment; see docs/configuration.md.\n",
          to);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0)
        return cmd_config(argc - 1, argv + 1);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(argc - 1, argv + 1);
    if (strcmp(cmd, "user") == 0)
        return cmd_user(argc - 1, argv + 1);
    if (strcmp(cmd, "setup-sql") == 0)
        return cmd_setup_sql(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("coredb %s\n", CDB_VERSION);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    fprintf(stderr, "coredb: unknown command '%s'\n", cmd);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
