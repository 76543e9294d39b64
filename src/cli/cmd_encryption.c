/*
 * cmd_encryption.c - `coredb encryption setup|rotate|audit|rewrap`, over
 * coredb/encryption.h as the operator (an admin): the same calls serve
 * POST /api/v1/admin/encryption/columns, .../columns/rotate and GET
 * .../audit. setup and rotate run the job to its end and print it, with
 * progress lines on stderr (rows done of rows to do, about once a second)
 * when stderr is a terminal or with --progress; rewrap rewraps the data keys with
 * DB_ENCRYPTION_KEY after a master-key change (DB_ENCRYPTION_KEY_PREVIOUS).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "coredb/encryption.h"

const char cli_help_encryption[] =
    "usage: coredb encryption setup TABLE COLUMN [--searchable] [--progress] [--json]\n"
    "       coredb encryption rotate TABLE COLUMN [--progress] [--json]\n"
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
    "  --progress  rows done of rows to do on stderr, about once a second\n"
    "              (the default when stderr is a terminal, without --json)\n"
    "\n"
    CLI_JSON_HELP;

/* What the progress lines name. */
typedef struct progress {
    const char *verb, *table, *column;
    double last;                   /* when the last line was printed (monotonic s) */
} progress;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* After every batch (cdb_encryption_on_progress): a line at the start, then about once a second, and at the end. */
static void progress_line(void *arg, long done, long total, int pass)
{
    progress *p = arg;
    double now = mono_s();
    if (done == 0) {
        if (pass == 0)
            fprintf(stderr, "%s %s.%s: %ld rows to re-encrypt in batches of %d\n", p->verb, p->table, p->column,
                    total, CDB_ENCRYPTION_BATCH);
        else
            fprintf(stderr, "%s %s.%s: last pass (values other instances wrote meanwhile): %ld rows\n", p->verb,
                    p->table, p->column, total);
    } else if (done >= total || now - p->last >= 1.0) {
        fprintf(stderr, "%s %s.%s: %ld/%ld rows (%ld%%)\n", p->verb, p->table, p->column, done, total,
                total > 0 ? done * 100 / total : 100);
    } else {
        return;
    }
    p->last = now;
    fflush(stderr);
}

int cmd_encryption(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json"), searchable = cli_flag(argc, argv, "--searchable");
    bool want_progress = cli_flag(argc, argv, "--progress");
    const char *pos[3] = {NULL, NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "--searchable") == 0 ||
            strcmp(argv[i], "--progress") == 0)
            continue;
        if (argv[i][0] == '-' || npos == 3)
            return cli_usage_error("encryption", cli_help_encryption, as_json);
        pos[npos++] = argv[i];
    }
    const char *verb = pos[0];
    bool setup = verb && strcmp(verb, "setup") == 0 && npos == 3;
    bool rotate = verb && strcmp(verb, "rotate") == 0 && npos == 3 && !searchable;
    bool audit = verb && strcmp(verb, "audit") == 0 && npos <= 2 && !searchable && !want_progress;
    bool rewrap = verb && strcmp(verb, "rewrap") == 0 && npos == 1 && !searchable && !want_progress;
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
        /* stdout stays the result; --json alone prints nothing else */
        progress pr = {setup ? "encrypting" : "rotating", pos[1], pos[2], 0};
        if (want_progress || (!as_json && isatty(STDERR_FILENO)))
            cdb_encryption_on_progress(op.svc, progress_line, &pr);
        if (setup)
            cdb_encryption_setup_column(op.svc, &op.principal, request, &op.result, &op.err);
        else
            cdb_encryption_rotate_key(op.svc, &op.principal, request, &op.result, &op.err);
        cdb_encryption_on_progress(op.svc, NULL, NULL);
    } else if (op.svc && audit) {
        cdb_encryption_audit(op.svc, &op.principal, pos[1], &op.result, &op.err);
    } else if (op.svc) {
        cdb_encryption_rewrap(op.svc, &op.principal, &op.result, &op.err);
    }
    rc = cli_operator_finish(&op);
    json_decref(request);
    return rc;
}
