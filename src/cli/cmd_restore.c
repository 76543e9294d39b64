/*
 * cmd_restore.c - `coredb restore NAME --yes [--json]`: restores the archive
 * BACKUP_DIR/NAME over the library's cdb_backup_restore (coredb/restore.h),
 * acting as the operator (admin). The same call serves POST
 * /api/v1/admin/backups/{name}/restore. --yes is the command line's
 * {confirm: true}: without it nothing is touched. (The merge with the
 * backup commands folds this under `coredb backup restore NAME --yes`.)
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coredb/restore.h"

const char cli_help_restore[] =
    "usage: coredb restore NAME --yes [--json]\n"
    "\n"
    "  Replaces the database with the backup archive BACKUP_DIR/NAME (pg_dump custom\n"
    "  format). The archive is first proven by a test restore into a scratch database;\n"
    "  then the data API of every instance answers 503 MAINTENANCE, other sessions to\n"
    "  the database are ended, the archive is restored in one transaction (a failure\n"
    "  leaves the database as it was) and every cached read is invalidated.\n"
    "    --yes   required: confirms that the current contents are replaced\n"
    "\n"
    CLI_JSON_HELP;

int cmd_restore(int argc, char **argv)
{
    const char *name = NULL;
    bool yes = false, as_json = false, bad = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--yes") == 0)
            yes = true;
        else if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (!name && argv[i][0] != '-')
            name = argv[i];
        else
            bad = true;
    }
    if (bad || !name)
        return cli_usage_error("restore", cli_help_restore, as_json);
    cli_operator op;
    int rc = cli_operator_open(&op, as_json, true, NULL);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        cdb_backup_restore(op.svc, &op.principal, name, yes, &op.result, &op.err);
    return cli_operator_finish(&op);
}
