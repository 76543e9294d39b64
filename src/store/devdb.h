/*
 * devdb.h - the embedded PostgreSQL of the zero-configuration mode.
 *
 * With no database configured, `coredb serve` runs a private cluster from
 * the installed PostgreSQL binaries under <var_dir>/pgdata (initdb on first
 * start), listening only on a unix socket in <var_dir>/run. When coredb runs
 * as root, initdb and postgres run as the unprivileged `postgres` account
 * (PostgreSQL refuses root) and the data directory is owned by it.
 *
 * The development secrets are devsecrets.h.
 */
#ifndef COREDB_DEVDB_H
#define COREDB_DEVDB_H

#include "coredb/config.h"
#include "coredb/error.h"

typedef struct cdb_devdb cdb_devdb;

/*
 * Initializes (first time) and starts the cluster, waits until it accepts
 * connections and the database "coredb" exists. *conninfo receives a
 * malloc'd libpq URI to reach it (caller frees). Returns NULL + err
 * (DATABASE_UNAVAILABLE with a clear message) on failure.
 */
cdb_devdb *cdb_devdb_start(const char *var_dir, const char *pg_bindir,
                           char **conninfo, cdb_error *err);
/*
 * Leaves the cluster and frees the handle: stops it (fast shutdown) when no
 * other live coredb uses it, whichever process started it, else leaves it
 * running for them (see devdb.c). A start that finds the cluster running
 * with no live coredb using it (one was SIGKILLed) adopts it, so the last
 * coredb out stops it. NULL is a no-op.
 */
void cdb_devdb_stop(cdb_devdb *db);

#endif
