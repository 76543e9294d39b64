/*
 * cmd_config.c - `coredb config [--json]`: the effective configuration with
 * every secret redacted and where each value came from, so an operator can
 * see what the service will use.
 *
 * In embedded mode the development secrets that `serve` would read from
 * <COREDB_VAR_DIR>/secrets.env are read from it too (never generated nor
 * written here), so they show as "[redacted]" from "var/secrets.env"
 * instead of null.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "store/devsecrets.h"

const char cli_help_config[] =
    "usage: coredb config [--json]\n"
    "\n"
    "Prints the effective configuration read from the environment: every variable with\n"
    "the value in force, secrets as \"[redacted]\", URL passwords hidden, and where each\n"
    "value came from: env, file (NAME_FILE), var/secrets.env (the embedded mode's\n"
    "development secrets, read but never created here) or default. Invalid\n"
    "configuration exits 2 naming the variable.\n"
    "\n"
    CLI_JSON_HELP
    "           (data: one key per variable, \"embedded\", \"sources\" (variable ->\n"
    "           source) and, in embedded mode, \"secrets_file\")\n";

/* A value as the table shows it: strings bare, unset as "-". */
static char *value_text(json_t *val)
{
    if (json_is_string(val))
        return strdup(json_string_value(val));
    return json_is_null(val) ? strdup("-") : json_dumps(val, JSON_ENCODE_ANY);
}

/* NAME  VALUE  SOURCE, one line per variable, in the table's order. */
static void print_table(json_t *data)
{
    json_t *sources = json_object_get(data, "sources"), *v;
    const char *key;
    int wname = 8, wval = 5;
    json_object_foreach(sources, key, v) {
        char *t = value_text(json_object_get(data, key));
        if ((int)strlen(key) > wname)
            wname = (int)strlen(key);
        if (t && (int)strlen(t) > wval)
            wval = (int)strlen(t);
        free(t);
    }
    printf("%-*s  %-*s  %s\n", wname, "VARIABLE", wval, "VALUE", "SOURCE");
    json_object_foreach(sources, key, v) {
        char *t = value_text(json_object_get(data, key));
        printf("%-*s  %-*s  %s\n", wname, key, wval, t ? t : "?", json_string_value(v));
        free(t);
    }
    printf("\nembedded: %s\n", json_is_true(json_object_get(data, "embedded")) ? "yes" : "no");
    const char *secrets = json_string_value(json_object_get(data, "secrets_file"));
    if (secrets)
        printf("secrets file: %s%s\n", secrets,
               access(secrets, F_OK) == 0 ? "" : " (not there yet: `coredb serve` generates it)");
}

int cmd_config(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--json") != 0)
            return cli_usage_error("config", cli_help_config, as_json);
    cdb_config cfg;
    int rc = cli_load_config(&cfg, as_json);
    if (rc != CLI_EXIT_OK)
        return rc;
    cdb_error err;
    cdb_error_init(&err);
    json_t *data = NULL;
    char *secrets_path = NULL;
    if (cfg.embedded) {
        if (cdb_devsecrets_peek(&cfg, cfg.var_dir, &err) < 0)
            goto out;
        if (!(secrets_path = cdb_devsecrets_path(cfg.var_dir))) {
            cdb_error_oom(&err);
            goto out;
        }
    }
    data = cdb_config_to_json(&cfg);
    if (!data || (secrets_path &&
                  json_object_set_new(data, "secrets_file", json_string(secrets_path)) < 0)) {
        json_decref(data);
        data = NULL;
        cdb_error_set(&err, CDB_ERR_INTERNAL_ERROR, "out of memory printing the configuration");
    }
out:
    if (!as_json && err.code == CDB_OK) {
        print_table(data);
        json_decref(data);
        rc = CLI_EXIT_OK;
    } else {
        rc = cli_print_result(data, &err, as_json);
    }
    free(secrets_path);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
