/*
 * cmd_backup.c - `coredb backup create | list | verify NAME | cleanup`, over
 * the library's cdb_backup_* (coredb/backup.h), as the operator. The same
 * calls serve /api/v1/admin/backups. A dump or a test restore can take a
 * while: on a terminal a progress line says what is running.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "coredb/backup.h"

const char cli_help_backup[] =
    "usage: coredb backup create [--json]\n"
    "       coredb backup list [--json]\n"
    "       coredb backup verify NAME [--json]\n"
    "       coredb backup cleanup [--json]\n"
    "       coredb backup restore NAME --yes [--json]   (the same as coredb restore)\n"
    "\n"
    "  create    pg_dump (custom format, PG_BINDIR) into BACKUP_DIR as NAME.dump, with\n"
    "            its manifest NAME.json: SHA-256, size, server and migration version,\n"
    "            per-table row counts taken in the dump's snapshot\n"
    "  list      the backups, newest first, with their manifests\n"
    "  verify    checksum, table of contents (pg_restore --list) and a test restore\n"
    "            into a scratch database (dropped afterwards) compared with the\n"
    "            manifest's row counts; exit 1 naming the failed check\n"
    "  cleanup   keep the BACKUP_RETENTION_COUNT newest and those younger than\n"
    "            BACKUP_RETENTION_DAYS, never the newest valid one; remove the rest\n"
    "\n"
    CLI_JSON_HELP;

/* One backup action as the operator, with a progress line when a person watches stderr. */
static void run_action(cli_operator *op, const char *action, const char *name, json_t **result,
                       cdb_error *err)
{
    bool is_verify = strcmp(action, "verify") == 0;
    bool progress = isatty(STDERR_FILENO) && (is_verify || strcmp(action, "create") == 0);
    if (progress)
        fprintf(stderr, "coredb backup %s%s%s: running (pg_%s)...", action, name ? " " : "", name ? name : "",
                is_verify ? "restore" : "dump");
    if (strcmp(action, "create") == 0)
        cdb_backup_create(op->svc, &op->principal, result, err);
    else if (strcmp(action, "list") == 0)
        cdb_backup_list(op->svc, result, err);
    else if (is_verify)
        cdb_backup_verify(op->svc, &op->principal, name, result, err);
    else
        cdb_backup_cleanup(op->svc, &op->principal, result, err);
    if (progress)
        fputs(" done\n", stderr);
}

int cmd_backup(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    const char *action = argc >= 2 ? argv[1] : "";
    if (strcmp(action, "restore") == 0)
        return cmd_restore(argc - 1, argv + 1);
    const char *name = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (name || argv[i][0] == '-')
            return cli_usage_error("backup", cli_help_backup, as_json);
        name = argv[i];
    }
    bool is_verify = strcmp(action, "verify") == 0;
    bool known = is_verify || strcmp(action, "create") == 0 || strcmp(action, "list") == 0 ||
                 strcmp(action, "cleanup") == 0;
    if (!known || is_verify != (name != NULL))
        return cli_usage_error("backup", cli_help_backup, as_json);

    cli_operator op;
    int rc = cli_operator_open(&op, as_json, false, NULL);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        run_action(&op, action, name, &op.result, &op.err);
    return cli_operator_finish(&op);
}
