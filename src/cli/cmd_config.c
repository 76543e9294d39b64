/*
 * cmd_config.c - `coredb config`: the effective configuration with every
 * secret redacted, so an operator can see what the service will use.
 */
#include <string.h>

#include "cli.h"

int cmd_config(int argc, char **argv)
{
    bool as_json = argc > 1 && argv[1] && strcmp(argv[1], "--json") == 0;
    cdb_config cfg;
    int rc = cli_load_config(&cfg);
    if (rc != CLI_EXIT_OK)
        return rc;
    rc = cli_print_result(cdb_config_to_json(&cfg), NULL, as_json);
    cdb_config_destroy(&cfg);
    return rc;
}
