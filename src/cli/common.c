/*
 * common.c - what the subcommands share (cli.h): flags, usage errors,
 * loading the configuration, opening the service, printing a result.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "cli.h"
#include "coredb/audit.h"
#include "coredb/log.h"
#include "coredb/result.h"

const cli_command *cli_commands;
size_t cli_command_count;
bool cli_verbose;

const cli_command *cli_command_find(const char *name)
{
    for (size_t i = 0; i < cli_command_count; i++)
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    return NULL;
}

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
    cli_quiet_logs(cfg);
    return CLI_EXIT_OK;
}

void cli_quiet_logs(const cdb_config *cfg)
{
    bool show = cli_verbose || cfg->log_level == CDB_LOG_DEBUG;
    cdb_log_set_level(show ? cfg->log_level : CDB_LOG_OFF);
}

/* A scalar as text: strings bare, null as "-", others as JSON. NULL for containers. */
static char *scalar_text(json_t *v)
{
    if (json_is_string(v))
        return strdup(json_string_value(v));
    if (json_is_null(v))
        return strdup("-");
    if (json_is_object(v) || json_is_array(v))
        return NULL;
    return json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
}

static bool is_table(json_t *v)
{
    return json_is_array(v) && json_array_size(v) > 0 && json_is_object(json_array_get(v, 0));
}

/* An array of objects: one column per scalar key of the first element. */
static void print_table(FILE *to, json_t *rows, const char *indent)
{
    json_t *first = json_array_get(rows, 0), *v;
    const char *key;
    size_t ncols = 0, i;
    int width[32];
    const char *cols[32];
    json_object_foreach(first, key, v) {
        if (ncols < 32 && !json_is_object(v) && !json_is_array(v)) {
            cols[ncols] = key;
            width[ncols++] = (int)strlen(key);
        }
    }
    json_array_foreach(rows, i, v) {
        for (size_t c = 0; c < ncols; c++) {
            char *t = scalar_text(json_object_get(v, cols[c]));
            if (t && (int)strlen(t) > width[c])
                width[c] = (int)strlen(t);
            free(t);
        }
    }
    fputs(indent, to);
    for (size_t c = 0; c < ncols; c++)
        if (c + 1 < ncols)
            fprintf(to, "%-*s  ", width[c], cols[c]);
        else
            fprintf(to, "%s\n", cols[c]);
    if (ncols == 0)
        fputc('\n', to);
    json_array_foreach(rows, i, v) {
        fputs(indent, to);
        for (size_t c = 0; c < ncols; c++) {
            char *t = scalar_text(json_object_get(v, cols[c]));
            const char *s = t ? t : "-";
            if (c + 1 < ncols)
                fprintf(to, "%-*s  ", width[c], s);
            else
                fprintf(to, "%s\n", s);
            free(t);
        }
    }
}

void cli_print_human(FILE *to, json_t *data)
{
    const char *key;
    json_t *v;
    int width = 0;
    if (!json_is_object(data)) {
        if (is_table(data))
            print_table(to, data, "");
        else
            json_dumpf(data, to, JSON_INDENT(2) | JSON_ENCODE_ANY);
        return;
    }
    json_object_foreach(data, key, v)
        if ((int)strlen(key) > width)
            width = (int)strlen(key);
    /* scalars first, aligned; then nested values under their name */
    json_object_foreach(data, key, v) {
        char *t = scalar_text(v);
        if (t)
            fprintf(to, "%-*s  %s\n", width, key, t);
        free(t);
    }
    json_object_foreach(data, key, v) {
        if (is_table(v)) {
            fprintf(to, "\n%s:\n", key);
            print_table(to, v, "  ");
        } else if (json_is_array(v) && json_array_size(v) == 0) {
            fprintf(to, "%-*s  (none)\n", width, key);
        } else if (json_is_object(v)) {
            /* a small record (last_migration): its scalars as k=v on one line */
            const char *k;
            json_t *f;
            fprintf(to, "%-*s ", width, key);
            json_object_foreach(v, k, f) {
                char *t = scalar_text(f);
                fprintf(to, " %s=%s", k, t ? t : "...");
                free(t);
            }
            fputc('\n', to);
        } else if (json_is_array(v)) {
            char *d = json_dumps(v, JSON_COMPACT);
            fprintf(to, "%-*s  %s\n", width, key, d ? d : "?");
            free(d);
        }
    }
}

int cli_open_service(cdb_config *cfg, bool with_pool, cdb_service **svc, cdb_error *err)
{
    cdb_service_options opt = {.with_pool = with_pool};
    return cdb_service_open(svc, cfg, &opt, err);
}

int cli_operator_open(cli_operator *op, bool as_json, bool with_pool, const char *applied_by)
{
    *op = (cli_operator){.principal = {.role = CDB_ROLE_ADMIN}, .as_json = as_json};
    int rc = cli_load_config(&op->cfg, as_json);
    if (rc != CLI_EXIT_OK)
        return rc;
    cdb_error_init(&op->err);
    cdb_audit_origin_set(NULL, NULL, "cli");
    if (cli_open_service(&op->cfg, with_pool, &op->svc, &op->err) < 0 ||
        (applied_by && cdb_service_migrate_on_start(op->svc, applied_by, &op->err) < 0)) {
        cdb_service_close(op->svc);
        op->svc = NULL;
    }
    return CLI_EXIT_OK;
}

int cli_operator_finish(cli_operator *op)
{
    int rc = cli_print_result(op->result, &op->err, op->as_json);   /* takes the result */
    op->result = NULL;
    cli_operator_close(op);
    return rc;
}

void cli_operator_close(cli_operator *op)
{
    cdb_service_close(op->svc);
    op->svc = NULL;
    cdb_audit_origin_clear();
    cdb_config_destroy(&op->cfg);
    json_decref(op->result);
    op->result = NULL;
    cdb_error_destroy(&op->err);
}

int cli_report_call(int argc, char **argv, const char *name, const char *help, const cli_report *reports,
                    const cli_report **row, json_t **result, cdb_error *err)
{
    bool as_json = cli_flag(argc, argv, "--json");
    const char *word = "";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (word[0] || argv[i][0] == '-')
            return cli_usage_error(name, help, as_json);
        word = argv[i];
    }
    *row = NULL;
    for (const cli_report *r = reports; r->word && !*row; r++)
        if (strcmp(r->word, word) == 0)
            *row = r;
    if (!*row)
        return cli_usage_error(name, help, as_json);
    cli_operator op;
    int rc = cli_operator_open(&op, as_json, true, NULL);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        (*row)->fn(op.svc, &op.principal, result, &op.err);
    cdb_error_move(err, &op.err);
    cli_operator_close(&op);
    return CLI_EXIT_OK;
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
        if (data)
            cli_print_human(stdout, data);
        fflush(stdout);
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

/* One line from stdin without its newline; echo is off when it is a terminal. */
int cli_read_password(char *buf, size_t len)
{
    struct termios saved, quiet;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        fputs("Password: ", stderr);
        quiet = saved;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    char *line = fgets(buf, (int)len, stdin);
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
        fputc('\n', stderr);
    }
    if (!line)
        return -1;
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}
