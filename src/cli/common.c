/*
 * common.c - what the subcommands share (cli.h): loading the configuration,
 * opening the service, printing a result.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "coredb/log.h"
#include "core/timeutil.h"

int cli_load_config(cdb_config *cfg)
{
    cdb_error err;
    cdb_error_init(&err);
    if (cdb_config_load(cfg, cdb_env_process, NULL, &err) < 0) {
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
    if (as_json) {
        char ts[32];
        cdb_iso_now(ts, sizeof ts);
        json_t *out = json_object();
        json_object_set_new(out, "status", json_string(ok ? "success" : "error"));
        json_object_set_new(out, "timestamp", json_string(ts));
        if (ok) {
            json_object_set_new(out, "error", json_null());
        } else {
            json_t *e = json_pack("{s:s,s:s}", "code", cdb_err_name(err->code), "message", err->message);
            if (err->details)
                json_object_set(e, "details", err->details);
            json_object_set_new(out, "error", e);
        }
        if (json_is_object(data))
            json_object_update(out, data);
        json_dumpf(out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
        json_decref(out);
    } else if (ok) {
        if (data) {
            json_dumpf(data, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
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
    return ok ? CLI_EXIT_OK : (err->code == CDB_ERR_CONFIG_INVALID ? CLI_EXIT_USAGE : CLI_EXIT_FAILED);
}
