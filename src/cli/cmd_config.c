/*
 * cmd_config.c - `coredb config [--json]`: the effective configuration with
 * every secret redacted, so an operator can see what the service will use.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: coredb config [--json]\n"
    "\n"
    "Prints the effective configuration read from the environment: every variable with\n"
    "the value in force, secrets as \"[redacted]\", URL passwords hidden. Invalid\n"
    "configuration exits 2 naming the variable.\n"
    "\n"
    CLI_JSON_HELP
    "           (data: one key per variable, plus \"embedded\")\n";

int cmd_config(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    if (cli_wants_help(argc, argv)) {
        fputs(help, stdout);
        return CLI_EXIT_OK;
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--json") != 0)
            return cli_usage_error("config", help, as_json);
    cdb_config cfg;
    int rc = cli_load_config(&cfg, as_json);
    if (rc != CLI_EXIT_OK)
        return rc;
    json_t *data = cdb_config_to_json(&cfg);
    cdb_error err;
    cdb_error_init(&err);
    if (!data)
        cdb_error_set(&err, CDB_ERR_INTERNAL_ERROR, "out of memory printing the configuration");
    rc = cli_print_result(data, &err, as_json);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
