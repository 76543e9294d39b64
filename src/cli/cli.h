/*
 * cli.h - what the subcommands of the coredb command line share.
 * Exit codes: 0 success, 1 the operation failed, 2 usage or configuration.
 */
#ifndef COREDB_CLI_H
#define COREDB_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "coredb/config.h"
#include "coredb/error.h"
#include "coredb/principal.h"
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
    "           the exit code is the same as without it\n"   \
    "  --verbose  log lines on stderr (one-shot commands are quiet by default)\n"

/*
 * One command of `coredb`: what `coredb help`, `coredb help --man` and
 * `coredb completion bash` print all come from the table cli_commands[]
 * (main.c), so the usage, the man page and the completion cannot drift.
 */
typedef struct cli_command {
    const char *name;
    const char *summary;      /* one line for `coredb help` */
    const char *subcommands;  /* space-separated words completed after name; NULL if none */
    const char *options;      /* space-separated options completed; NULL if none */
    const char *help;         /* the whole usage text, "usage: coredb NAME ..." first */
    int (*run)(int argc, char **argv);
} cli_command;

/* The table, set by main() (kept in common.c so help.c needs no edge to main.c). */
extern const cli_command *cli_commands;
extern size_t cli_command_count;

/* The command named name, or NULL. */
const cli_command *cli_command_find(const char *name);

/* True when --verbose was given: one-shot commands then log on stderr. */
extern bool cli_verbose;

/* `coredb help [COMMAND | --man]` and `coredb completion bash`. */
int cmd_help(int argc, char **argv);
int cmd_completion(int argc, char **argv);
/* The general usage (the command list) on to. */
void cli_usage(FILE *to);

/* Help texts, one per command (each in its cmd_*.c, help and completion in help.c). */
extern const char cli_help_serve[], cli_help_config[], cli_help_migrate[], cli_help_user[],
    cli_help_table[], cli_help_restore[], cli_help_setup_sql[], cli_help_help[],
    cli_help_completion[], cli_help_version[], cli_help_backup[], cli_help_admin[];
extern const char cli_help_monitor[], cli_help_health[];
extern const char cli_help_lease[];
extern const char cli_help_encryption[];
extern const char cli_help_collections[];

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

/*
 * One-shot commands print only their result: logging is off unless
 * --verbose or the configured level is debug (LOG_LEVEL=debug, DEBUG=true).
 */
void cli_quiet_logs(const cdb_config *cfg);

/* Opens the service for a command (with or without the pool). */
int cli_open_service(cdb_config *cfg, bool with_pool, cdb_service **svc, cdb_error *err);

/*
 * What a command acting as the operator holds between cli_operator_open
 * and cli_operator_close: the configuration, the service, and the
 * operator's principal (the admin role). Meanwhile the audit log's origin
 * is "cli", so what the command does is recorded with that actor.
 */
typedef struct cli_operator {
    cdb_config cfg;
    cdb_service *svc;              /* NULL when it could not be opened (err says why) */
    cdb_principal principal;       /* {.role = CDB_ROLE_ADMIN} */
    cdb_error err;                 /* why the service did not open, or what the command's call said */
    json_t *result;                /* the command's result, printed by cli_operator_finish */
    bool as_json;
} cli_operator;

/*
 * Loads the configuration: on error it is printed and the exit code (2)
 * returned, with nothing to close. Then opens the service (with_pool) and,
 * when applied_by is given, applies pending migrations (MIGRATE_ON_START)
 * recorded as applied_by. Failing that, op->svc is NULL and op->err says
 * why (returns 0). The command then calls the library with &op->result and
 * &op->err when op->svc is set, and ends with cli_operator_finish.
 */
int cli_operator_open(cli_operator *op, bool as_json, bool with_pool, const char *applied_by);
/* Prints op->result or op->err in the result form, closes, returns the exit code. */
int cli_operator_finish(cli_operator *op);
/* Closes without printing (op->err and op->result are freed). */
void cli_operator_close(cli_operator *op);

/* One report of a `coredb NAME [WORD] [--json]` command: WORD ("" for none) and its library call. */
typedef int (*cli_report_fn)(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);
typedef struct cli_report {
    const char *word;
    cli_report_fn fn;
} cli_report;

/*
 * Runs such a command up to its result: parses [WORD] [--json], finds
 * WORD's row in reports (terminated by {NULL}), calls it as the operator.
 * Returns the exit code when it ends there (a usage error, printed with
 * help; a configuration error); else CLI_EXIT_OK with *row, *result (the
 * caller's) and err filled, for the caller to print.
 */
int cli_report_call(int argc, char **argv, const char *name, const char *help, const cli_report *reports,
                    const cli_report **row, json_t **result, cdb_error *err);

/*
 * Prints the library's result form (coredb/result.h) {status, error,
 * timestamp, ...data}: as JSON on stdout with --json, else data as
 * human-readable text (cli_print_human) on stdout or the error on stderr. Returns the exit code
 * (2 for CONFIG_INVALID, 1 for any other error). Steals data.
 */
int cli_print_result(json_t *data, const cdb_error *err, bool as_json);

/*
 * A password: one line from stdin without its newline, echo off (and a
 * prompt on stderr) when stdin is a terminal. -1 when there is none.
 */
int cli_read_password(char *buf, size_t len);

/*
 * data as text for a person: an object's scalars as aligned "key  value"
 * lines, an array of objects as a table whose columns are the first
 * element's scalar keys. Borrows data.
 */
void cli_print_human(FILE *to, json_t *data);

int cmd_serve(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_user(int argc, char **argv);
int cmd_table(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_setup_sql(int argc, char **argv);
int cmd_admin(int argc, char **argv);
int cmd_monitor(int argc, char **argv);
int cmd_health(int argc, char **argv);
int cmd_lease(int argc, char **argv);
int cmd_encryption(int argc, char **argv);
int cmd_collections(int argc, char **argv);

/*
 * One verb of `coredb admin` (cmd_admin.c's table; each verb in its own
 * cmd_admin_*.c). parse gets argv from the verb on (argv[0] is the verb,
 * --json may appear anywhere and is to be ignored) and returns the request
 * as the JSON body of the matching HTTP route, or NULL for a usage error.
 * run calls the library as the operator; < 0 with err set on failure.
 */
typedef struct cli_admin_verb {
    const char *name;
    json_t *(*parse)(int argc, char **argv);
    int (*run)(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
               cdb_error *err);
} cli_admin_verb;

/* The verbs (each in its cmd_admin_*.c). */
json_t *cli_admin_audit_parse(int argc, char **argv);
int cli_admin_audit_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                        cdb_error *err);
json_t *cli_admin_role_parse(int argc, char **argv);
int cli_admin_role_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                       cdb_error *err);
json_t *cli_admin_db_user_parse(int argc, char **argv);
int cli_admin_db_user_run(cdb_service *svc, const cdb_principal *operator, json_t *request,
                          json_t **out, cdb_error *err);
json_t *cli_admin_rls_parse(int argc, char **argv);
int cli_admin_rls_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                      cdb_error *err);
json_t *cli_admin_schema_permissions_parse(int argc, char **argv);
int cli_admin_schema_permissions_run(cdb_service *svc, const cdb_principal *operator, json_t *request,
                                     json_t **out, cdb_error *err);
json_t *cli_admin_ownership_parse(int argc, char **argv);
int cli_admin_ownership_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                            cdb_error *err);

#endif
