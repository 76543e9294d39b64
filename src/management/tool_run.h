/*
 * tool_run.h - running the PostgreSQL client tools (pg_dump, pg_restore)
 * as child processes (tool_run.c), for backups and restores alike.
 */
#ifndef COREDB_MANAGEMENT_TOOL_RUN_H
#define COREDB_MANAGEMENT_TOOL_RUN_H

#include <stddef.h>

/* Called about every CDB__TOOL_TICK_MS while a tool runs (a restore keeps its maintenance key alive). */
typedef void (*cdb__tool_tick_fn)(void *arg);
#define CDB__TOOL_TICK_MS 5000

typedef struct cdb__tool_run {
    const char *conninfo;      /* where the tool connects: passed in its environment only */
    const char *sslmode;       /* NULL: as in conninfo; else PGSSLMODE */
    const char *app_name;      /* PGAPPNAME, e.g. "coredb-restore" */
    const char *out_path;      /* the tool's stdout, created 0600; NULL: /dev/null */
    int timeout_s;             /* killed (SIGKILL) after this long */
    cdb__tool_tick_fn tick;    /* may be NULL */
    void *tick_arg;
    char diag[512];            /* out: the last line the tool wrote on stderr */
} cdb__tool_run;

/*
 * Runs argv (argv[0] an absolute path) with posix_spawn, no shell, stdout
 * to out_path (or /dev/null) and stderr captured. The connection settings of conninfo
 * (password included) go into the child's environment as PGHOST, PGPORT,
 * PGUSER, PGPASSWORD, PGDATABASE ... never onto its command line. Returns
 * its exit status, -1 when it could not run, -2 on timeout.
 */
int cdb__tool_run_spawn(cdb__tool_run *run, char *const argv[]);

#endif
