/*
 * common.c - what the subcommands share (cli.h): flags, usage errors,
 * loading the configuration, opening the service, printing a result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/log.h"
#include "coredb/result.h"

bool cli_flag(int argc, char **argv, const char *flag)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return true;
    return false;
}

bool cli_wants_help(int argc, char **argv)
{
    return cli_flag(argc, argv, "--help") || cli_flag(argc, argv, "-h");
}

/* Prints the result form on stdout; false when it could not be built. */
static bool print_json_result(json_t *data, const cdb_error *err)
{
    json_t *out = cdb_result_object(err, data);
    if (!out)
        return false;
    json_dumpf(out, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(out);
    return true;
}

int cli_usage_error(const char *command, const char *usage, bool as_json)
{
    fputs(usage, stderr);
    if (as_json) {
        /* still one result object on stdout, so a script reading it sees why */
        cdb_error err;
        cdb_error_init(&err);
        cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "invalid arguments; see `coredb %s --help`",
                      command);
        print_json_result(NULL, &err);
        cdb_error_destroy(&err);
    }
    return CLI_EXIT_USAGE;
}

int cli_load_config(cdb_config *cfg, bool as_json)
{
    cdb_error err;
    cdb_error_init(&err);
    if (cdb_config_load(cfg, cdb_env_process, NULL, &err) < 0) {
        if (as_json)
            cli_print_result(NULL, &err, true);
        else
            fprintf(stderr, "coredb: invalid configuration: %s\n", err.message);
        cdb_error_destroy(&err);
        return CLI_EXIT_USAGE;
    }
    cdb_log_set_level(cfg->log_level);
    return CLI_EXIT_OK;
}

int cli_open_service(cdb_config *cfg, bool with_pool, cdb_service **svc, cdb_error *err)
{
    cdb_service_options opt = {.with_pool = with_pool};
    return cdb_service_open(svc, cfg, &opt, err);
}

int cli_print_result(json_t *data, const cdb_error *err, bool as_json)
{
    bool ok = !err || err->code == CDB_OK;
    int rc = ok ? CLI_EXIT_OK
                : err->code == CDB_ERR_CONFIG_INVALID ? CLI_EXIT_USAGE : CLI_EXIT_FAILED;
    if (as_json) {
        if (!print_json_result(data, err)) {
            fprintf(stderr, "coredb: out of memory printing the result\n");
            rc = CLI_EXIT_FAILED;
        }
    } else if (ok) {
        if (data) {
            json_dumpf(data, stdout, JSON_INDENT(2));
            fputc('\n', stdout);
        }
    } else {
        fprintf(stderr, "coredb: %s: %s\n", cdb_err_name(err->code), err->message);
        if (err->details) {
            char *d = json_dumps(err->details, JSON_COMPACT);
            if (d)
                fprintf(stderr, "  details: %s\n", d);
            free(d);
        }
    }
    json_decref(data);
    return rc;
}
