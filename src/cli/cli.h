/*
 * cli.h - what the subcommands of the coredb command line share.
 * Exit codes: 0 success, 1 the operation failed, 2 usage or configuration.
 */
#ifndef COREDB_CLI_H
#define COREDB_CLI_H

#include <jansson.h>
#include <stdbool.h>

#include "coredb/config.h"
#include "coredb/error.h"
#include "coredb/service.h"

#define CLI_EXIT_OK     0
#define CLI_EXIT_FAILED 1
#define CLI_EXIT_USAGE  2

/*
 * What --json promises, for each command's --help: one result object on
 * stdout whatever happens, the exit code unchanged.
 */
#define CLI_JSON_HELP                                                                      \
    "  --json   print exactly one result object on stdout, on success and on failure:\n"   \
    "           {\"status\": \"success\"|\"error\", \"error\": null|{\"code\", \"message\",\n"   \
    "           \"details\"}, \"timestamp\": ISO-8601 UTC, ...data} (see docs/operations.md);\n" \
    "           the exit code is the same as without it\n"

/* True when flag (e.g. "--json") is one of argv[1..argc). */
bool cli_flag(int argc, char **argv, const char *flag);
/* True when --help or -h is given. */
bool cli_wants_help(int argc, char **argv);

/*
 * A command line that cannot be parsed: usage to stderr and, with --json,
 * a VALIDATION_FAILED result on stdout naming `coredb <command> --help`.
 * Returns 2.
 */
int cli_usage_error(const char *command, const char *usage, bool as_json);

/*
 * Loads the configuration from the environment. On error prints it (as a
 * CONFIG_INVALID result with as_json, else a line on stderr) and returns 2.
 */
int cli_load_config(cdb_config *cfg, bool as_json);

/* Opens the service for a command (with or without the pool). */
int cli_open_service(cdb_config *cfg, bool with_pool, cdb_service **svc, cdb_error *err);

/*
 * Prints the library's result form (coredb/result.h) {status, error,
 * timestamp, ...data}: as JSON on stdout with --json, else data
 * pretty-printed on stdout or the error on stderr. Returns the exit code
 * (2 for CONFIG_INVALID, 1 for any other error). Steals data.
 */
int cli_print_result(json_t *data, const cdb_error *err, bool as_json);

int cmd_serve(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_user(int argc, char **argv);
int cmd_user_list(int argc, char **argv);
int cmd_setup_sql(int argc, char **argv);

#endif
