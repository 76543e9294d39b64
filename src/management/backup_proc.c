/*
 * backup_proc.c - cdb__backup_run (backup_internal.h): a PostgreSQL tool
 * run for a backup or its verification, through the one child-process
 * runner (tool_run.h: posix_spawn with an argv, never a shell; the
 * connection and its password only in the child's environment; a bounded
 * wait), with its outcome turned into a cdb_error.
 */
#include "management/backup_internal.h"

#include <stdlib.h>

#include "core/fsutil.h"
#include "management/tool_run.h"

#define MAX_ARGS 32

int cdb__backup_run(const cdb_service *svc, const char *prog, const char *const *args,
                    const char *out_path, int timeout_s, cdb_error *err)
{
    char *path = cdb_xasprintf("%s/%s", svc->cfg->pg_bindir, prog);
    if (!path)
        return cdb_error_oom(err);
    const char *argv[MAX_ARGS + 2];
    size_t n = 0;
    argv[n++] = path;
    for (; args[n - 1] && n <= MAX_ARGS; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    cdb__tool_run run = {
        .conninfo = svc->conninfo,
        .app_name = "coredb-backup",
        .out_path = out_path,
        .timeout_s = timeout_s,
    };
    int status = cdb__tool_run_spawn(&run, (char *const *)argv);
    int rc = 0;
    if (status == -1)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "cannot run %s (check PG_BINDIR)", path);
    else if (status == -2)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s did not finish within %d s", prog, timeout_s);
    else if (status != 0)
        rc = cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "%s failed (status %d): %s", prog, status, run.diag);
    free(path);
    return rc;
}
