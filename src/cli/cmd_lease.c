/*
 * cmd_lease.c - `coredb lease list [--service-name S] | release ID`, over
 * coredb/leases.h as the operator (an admin): the same calls serve GET
 * /api/v1/connections and POST /api/v1/connections/release. A release
 * from here drops the lease's role and ends its sessions at once; the
 * serving instance that holds its pooled connection gives that back on its
 * reaper's next tick (within a second).
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coredb/leases.h"

const char cli_help_lease[] =
    "usage: coredb lease list [--service-name S] [--json]\n"
    "       coredb lease release ID [--json]\n"
    "\n"
    "  list      the live connection leases (id, service, user, mode, created,\n"
    "            expires, state) and this process's pool statistics\n"
    "  release   end lease ID now: its login is made NOLOGIN, its sessions are\n"
    "            ended, its role is dropped (docs/http.md, \"Connection leases\")\n"
    "\n"
    CLI_JSON_HELP;

int cmd_lease(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    const char *verb = NULL, *id = NULL, *service = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (strcmp(argv[i], "--service-name") == 0 && i + 1 < argc) {
            service = argv[++i];
            continue;
        }
        if (argv[i][0] == '-')
            return cli_usage_error("lease", cli_help_lease, as_json);
        if (!verb)
            verb = argv[i];
        else if (!id)
            id = argv[i];
        else
            return cli_usage_error("lease", cli_help_lease, as_json);
    }
    bool list = verb && strcmp(verb, "list") == 0 && !id;
    bool release = verb && strcmp(verb, "release") == 0 && id && !service;
    if (!list && !release)
        return cli_usage_error("lease", cli_help_lease, as_json);

    json_t *request = NULL;
    cli_operator op;
    int rc = cli_operator_open(&op, as_json, true, NULL);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc && list)
        cdb_lease_list(op.svc, &op.principal, service, &op.result, &op.err);
    else if (op.svc && !(request = json_pack("{s:s}", "connection_id", id)))
        cdb_error_oom(&op.err);
    else if (op.svc)
        cdb_lease_release(op.svc, &op.principal, request, &op.result, &op.err);
    rc = cli_operator_finish(&op);
    json_decref(request);
    return rc;
}
