/*
 * cmd_encryption.c - `coredb encryption setup|rotate|audit|rewrap`, over
 * coredb/encryption.h as the operator (an admin): the same calls serve
 * POST /api/v1/admin/encryption/columns, .../columns/rotate and GET
 * .../audit. setup and rotate run the job to its end and print it (with a
 * progress line on stderr); rewrap rewraps the data keys with
 * DB_ENCRYPTION_KEY after a master-key change (DB_ENCRYPTION_KEY_PREVIOUS).
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coredb/encryption.h"

const char cli_help_encryption[] =
    "usage: coredb encryption setup TABLE COLUMN [--searchable] [--json]\n"
    "       coredb encryption rotate TABLE COLUMN [--json]\n"
    "       coredb encryption audit [TABLE] [--json]\n"
    "       coredb encryption rewrap [--json]\n"
    "\n"
    "  setup     encrypt COLUMN of TABLE (text/varchar, one-column primary key)\n"
    "            and its existing rows, in batches; --searchable adds a blind\n"
    "            index for equality filters (it reveals which rows are equal)\n"
    "  rotate    a new key version for the column; the rows are re-encrypted\n"
    "  audit     rows per key version and plaintext rows, counted from the rows\n"
    "  rewrap    rewrap every data key with DB_ENCRYPTION_KEY, unwrapping with\n"
    "            DB_ENCRYPTION_KEY_PREVIOUS (no row is touched)\n"
    "\n"
    CLI_JSON_HELP;

int cmd_encryption(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json"), searchable = cli_flag(argc, argv, "--searchable");
    const char *pos[3] = {NULL, NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "--searchable") == 0)
            continue;
        if (argv[i][0] == '-' || npos == 3)
            return cli_usage_error("encryption", cli_help_encryption, as_json);
        pos[npos++] = argv[i];
    }
    const char *verb = pos[0];
    bool setup = verb && strcmp(verb, "setup") == 0 && npos == 3;
    bool rotate = verb && strcmp(verb, "rotate") == 0 && npos == 3 && !searchable;
    bool audit = verb && strcmp(verb, "audit") == 0 && npos <= 2 && !searchable;
    bool rewrap = verb && strcmp(verb, "rewrap") == 0 && npos == 1 && !searchable;
    if (!setup && !rotate && !audit && !rewrap)
        return cli_usage_error("encryption", cli_help_encryption, as_json);

    json_t *request = NULL;
    cli_operator op;
    int rc = cli_operator_open(&op, as_json, true, NULL);
    if (rc != CLI_EXIT_OK)
        return rc;
    if ((setup || rotate) &&
        !(request = json_pack("{s:s, s:s, s:b}", "table_name", pos[1], "column_name", pos[2], "searchable",
                              searchable))) {
        cdb_error_oom(&op.err);
    } else if (op.svc && (setup || rotate)) {
        if (rotate)
            json_object_del(request, "searchable");
        if (!as_json)
            fprintf(stderr, "%s %s.%s: re-encrypting rows in batches of %d...\n", setup ? "encrypting" : "rotating",
                    pos[1], pos[2], CDB_ENCRYPTION_BATCH);
        if (setup)
            cdb_encryption_setup_column(op.svc, &op.principal, request, &op.result, &op.err);
        else
            cdb_encryption_rotate_key(op.svc, &op.principal, request, &op.result, &op.err);
    } else if (op.svc && audit) {
        cdb_encryption_audit(op.svc, &op.principal, pos[1], &op.result, &op.err);
    } else if (op.svc) {
        cdb_encryption_rewrap(op.svc, &op.principal, &op.result, &op.err);
    }
    rc = cli_operator_finish(&op);
    json_decref(request);
    return rc;
}
