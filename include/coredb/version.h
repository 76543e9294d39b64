/* version.h - the service's name and version, as /health and `coredb version` report them. */
#ifndef COREDB_VERSION_H
#define COREDB_VERSION_H

#define CDB_SERVICE_NAME "core-database-service"
#define CDB_VERSION      "1.0.0"

#endif
