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

/* Loads the configuration from the environment; prints and returns 2 on error. */
int cli_load_config(cdb_config *cfg);

/* Opens the service for a command (with or without the pool). */
int cli_open_service(cdb_config *cfg, bool with_pool, cdb_service **svc, cdb_error *err);

/*
 * Prints the library's result form {status, error, timestamp, ...data}:
 * as JSON with --json, else a short human summary (data pretty-printed).
 * Returns the exit code. Steals data.
 */
int cli_print_result(json_t *data, const cdb_error *err, bool as_json);

int cmd_serve(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_user(int argc, char **argv);

#endif
