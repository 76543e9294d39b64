/*
 * cmd_migrate.c - `coredb migrate status | up [--target V] [--dry-run] |
 * down [--steps N] | new NAME`, over the library's migration engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "coredb/audit.h"
#include "coredb/service.h"

const char cli_help_migrate[] =
    "usage: coredb migrate status [--json]\n"
    "       coredb migrate up [--target VERSION] [--dry-run] [--json]\n"
    "       coredb migrate down [--steps N] [--json]\n"
    "       coredb migrate new NAME [--json]\n"
    "\n"
    "  status      current version, pending files, last migration, history\n"
    "  up          apply pending migrations, up to --target; --dry-run rolls back\n"
    "  down        roll back the last N applied migrations (default 1)\n"
    "  new         create migrations/<today>_<NNN>_<name>.sql from a template\n"
    "\n"
    CLI_JSON_HELP;

typedef struct migrate_args {
    const char *action;
    const char *target;
    const char *name;
    int steps;
    bool dry_run;
    bool as_json;
} migrate_args;

static int parse_args(int argc, char **argv, migrate_args *a)
{
    *a = (migrate_args){.steps = 1};
    if (argc < 2)
        return -1;
    a->action = argv[1];
    if (strcmp(a->action, "status") != 0 && strcmp(a->action, "up") != 0 &&
        strcmp(a->action, "down") != 0 && strcmp(a->action, "new") != 0) {
        fprintf(stderr, "coredb: unknown migrate action '%s'\n", a->action);
        return -1;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            a->as_json = true;
        } else if (strcmp(argv[i], "--dry-run") == 0) {
            a->dry_run = true;
        } else if (strcmp(argv[i], "--target") == 0 && i + 1 < argc) {
            a->target = argv[++i];
        } else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > 1000)
                return -1;
            a->steps = (int)n;
        } else if (!a->name && argv[i][0] != '-' && strcmp(a->action, "new") == 0) {
            a->name = argv[i];
        } else {
            return -1;
        }
    }
    if (strcmp(a->action, "new") == 0 && !a->name)
        return -1;
    return 0;
}

/* One line on stderr per file when a person watches (stderr is a terminal): stdout stays the result. */
static void progress_line(void *arg, size_t index, size_t total, const cdb_migration *m, bool up)
{
    (void)arg;
    fprintf(stderr, "[%zu/%zu] %s %s (%s)\n", index, total, up ? "applying" : "rolling back",
            m->version, m->description);
    fflush(stderr);
}

int cmd_migrate(int argc, char **argv)
{
    migrate_args a;
    if (parse_args(argc, argv, &a) < 0)
        return cli_usage_error("migrate", cli_help_migrate, cli_flag(argc, argv, "--json"));
    cdb_config cfg;
    int rc = cli_load_config(&cfg, a.as_json);
    if (rc != CLI_EXIT_OK)
        return rc;

    cdb_error err;
    cdb_error_init(&err);
    cdb_service *svc = NULL;
    json_t *result = NULL;

    if (strcmp(a.action, "new") == 0) {
        char *path = NULL;
        if (!a.name)
            cdb_error_set(&err, CDB_ERR_VALIDATION_FAILED, "migrate new needs a NAME");
        else if (cdb_migrate_new_file(cfg.migrations_dir, a.name, &path, &err) == 0)
            result = json_pack("{s:s}", "created", path);
        free(path);
        goto out;
    }
    cdb_migration_command command;
    if (strcmp(a.action, "status") == 0) {
        command = CDB_MIGRATION_STATUS;
    } else if (strcmp(a.action, "up") == 0) {
        command = CDB_MIGRATION_UP;
    } else if (strcmp(a.action, "down") == 0) {
        command = CDB_MIGRATION_DOWN;
    } else {
        cdb_error_set(&err, CDB_ERR_CONFIG_INVALID, "unknown migrate action '%s'", a.action);
        goto out;
    }
    if (cli_open_service(&cfg, false, &svc, &err) < 0)
        goto out;
    cdb_migrate_options mo = {.target_version = a.target, .dry_run = a.dry_run,
                              .applied_by = "coredb migrate"};
    if (command != CDB_MIGRATION_STATUS && isatty(STDERR_FILENO))
        mo.on_file = progress_line;
    cdb_audit_origin_set(NULL, NULL, "cli");   /* up and down are recorded with the actor "cli" */
    cdb_service_migration(svc, command, &mo, a.steps, &result, &err);
    cdb_audit_origin_clear();

out:
    rc = cli_print_result(result, &err, a.as_json);
    cdb_service_close(svc);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
