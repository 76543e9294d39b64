/*
 * cmd_admin.c - `coredb admin VERB ...`: the operator's administration
 * commands (database roles and users, row-level security, schema grants,
 * ownership, the audit log), acting as the operator through the same
 * library calls as the /api/v1/admin routes.
 *
 * Each verb lives in its own cmd_admin_*.c as a row of admin_verbs[]: a
 * parse function that turns the arguments into the JSON body the matching
 * HTTP route takes (NULL: a usage error, reported before anything is
 * loaded or connected), and a run function that calls the library with it.
 * This file owns what they share: configuration, the service, the audit
 * origin ("cli") and printing the result.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

const char cli_help_admin[] =
    "usage: coredb admin VERB ... [--json]\n"
    "\n"
    "Administration as the operator (the admin role); every action is written to\n"
    "the audit log with the actor \"cli\".\n"
    "\n"
    "  coredb admin audit [--actor A] [--action X] [--since T] [--until T] [--limit N] [--cursor C]\n"
    "      the audit log, newest first (--action db_user. matches a prefix; T is ISO-8601;\n"
    "      --cursor takes the next_cursor of the previous page)\n"
    "  coredb admin audit verify\n"
    "      recompute the hash chain: valid, rows_checked, the first broken row, the head hash\n"
    "  coredb admin role create NAME --permission P [--permission P ...] [--description D]\n"
    "      a NOLOGIN role; P is a privilege (SELECT INSERT UPDATE DELETE TRUNCATE REFERENCES\n"
    "      TRIGGER) on every table of POSTGRES_SCHEMA, or \"PRIVILEGE ON table\" for one table\n"
    "  coredb admin db-user create NAME [--role R ...] [--connection-limit N]\n"
    "      a LOGIN role, member of each R (connection limit 5 unless given); the password\n"
    "      is read from stdin, one line\n"
    "  coredb admin db-user password NAME\n"
    "      a new password, read from stdin, one line\n"
    "  coredb admin db-user revoke NAME [--role R ...]\n"
    "      revokes those memberships; without --role: every membership and privilege,\n"
    "      LOGIN, and its open sessions\n"
    "  coredb admin rls TABLE POLICY --using EXPR [--role R ...] [--command ALL|SELECT|INSERT|UPDATE|DELETE]\n"
    "      [--restrictive] [--force] [--replace]\n"
    "      enable row-level security on TABLE (name or schema.name) and create\n"
    "      policy POLICY: USING (EXPR) for the roles (default PUBLIC)\n"
    "  coredb admin schema-permissions SCHEMA --role R [--permission P ...]\n"
    "      set exactly R's privileges on SCHEMA (USAGE, CREATE) and its tables\n"
    "      (SELECT INSERT UPDATE DELETE TRUNCATE REFERENCES TRIGGER), future tables too;\n"
    "      no --permission revokes them all\n"
    "  coredb admin ownership TYPE NAME --to ROLE\n"
    "      give a table, view, sequence, function (NAME is its signature,\n"
    "      'f(integer)'), schema or database to ROLE\n"
    "\n"
    CLI_JSON_HELP;

static const cli_admin_verb admin_verbs[] = {
    {"audit", cli_admin_audit_parse, cli_admin_audit_run},
    {"role", cli_admin_role_parse, cli_admin_role_run},
    {"db-user", cli_admin_db_user_parse, cli_admin_db_user_run},
    {"rls", cli_admin_rls_parse, cli_admin_rls_run},
    {"schema-permissions", cli_admin_schema_permissions_parse, cli_admin_schema_permissions_run},
    {"ownership", cli_admin_ownership_parse, cli_admin_ownership_run},
    {NULL, NULL, NULL},
};

static const cli_admin_verb *find_verb(const char *name)
{
    for (const cli_admin_verb *v = admin_verbs; v->name; v++)
        if (strcmp(v->name, name) == 0)
            return v;
    return NULL;
}

int cmd_admin(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    const cli_admin_verb *verb = argc >= 2 ? find_verb(argv[1]) : NULL;
    json_t *request = verb ? verb->parse(argc - 1, argv + 1) : NULL;
    if (!request)
        return cli_usage_error("admin", cli_help_admin, as_json);

    cli_operator op;
    int rc = cli_operator_open(&op, as_json, true, "coredb admin");
    if (rc == CLI_EXIT_OK) {
        if (op.svc)
            verb->run(op.svc, &op.principal, request, &op.result, &op.err);
        rc = cli_operator_finish(&op);
    }
    json_decref(request);
    return rc;
}
