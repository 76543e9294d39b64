/*
 * restore_internal.h - running the PostgreSQL client tools for a restore
 * (restore_run.c), used by restore.c.
 */
#ifndef COREDB_MANAGEMENT_RESTORE_INTERNAL_H
#define COREDB_MANAGEMENT_RESTORE_INTERNAL_H

#include <stddef.h>

/* Called about every CDB__RESTORE_TICK_MS while a tool runs (keeps the maintenance key alive). */
typedef void (*cdb__restore_tick_fn)(void *arg);
#define CDB__RESTORE_TICK_MS 5000

typedef struct cdb__tool_run {
    const char *conninfo;      /* where the tool connects: passed in its environment only */
    const char *sslmode;       /* NULL: as in conninfo; else PGSSLMODE */
    int timeout_s;             /* killed (SIGKILL) after this long */
    cdb__restore_tick_fn tick; /* may be NULL */
    void *tick_arg;
    char diag[512];            /* out: the last line the tool wrote on stderr */
} cdb__tool_run;

/*
 * Runs argv (argv[0] an absolute path) with posix_spawn, no shell, stdout
 * to /dev/null and stderr captured. The connection settings of conninfo
 * (password included) go into the child's environment as PGHOST, PGPORT,
 * PGUSER, PGPASSWORD, PGDATABASE ... never onto its command line. Returns
 * its exit status, -1 when it could not run, -2 on timeout.
 */
int cdb__restore_run_tool(cdb__tool_run *run, char *const argv[]);

#endif
