/*
 * cmd_admin_access.h - the `coredb admin` verbs rls, schema-permissions and
 * ownership (cmd_admin_access.c), rows of admin_verbs[] in cmd_admin.c.
 */
#ifndef COREDB_CLI_CMD_ADMIN_ACCESS_H
#define COREDB_CLI_CMD_ADMIN_ACCESS_H

#include "cli.h"

json_t *cli_admin_rls_parse(int argc, char **argv);
int cli_admin_rls_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                      cdb_error *err);
json_t *cli_admin_schema_permissions_parse(int argc, char **argv);
int cli_admin_schema_permissions_run(cdb_service *svc, const cdb_principal *operator, json_t *request,
                                     json_t **out, cdb_error *err);
json_t *cli_admin_ownership_parse(int argc, char **argv);
int cli_admin_ownership_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                            cdb_error *err);

#endif
