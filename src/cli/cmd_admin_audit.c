/*
 * cmd_admin_audit.c - `coredb admin audit`: the audit log, newest first,
 * with the filters of GET /api/v1/admin/audit, and `coredb admin audit
 * verify`, the hash chain recomputed (GET /api/v1/admin/audit/verify).
 * The request is the route's query as a JSON object ({"verify": true} for
 * verify); the library checks the values.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/audit.h"

/* The filters a --flag VALUE may set, and the query parameter each becomes. */
static const char *const FILTERS[][2] = {
    {"--actor", "actor"}, {"--action", "action"}, {"--since", "since"},
    {"--until", "until"}, {"--limit", "limit"},   {"--cursor", "cursor"},
};
enum { NFILTERS = sizeof FILTERS / sizeof FILTERS[0] };

/* How many arguments follow the verb, --json aside. */
static int args(int argc, char **argv)
{
    int n = 0;
    for (int i = 1; i < argc; i++)
        n += strcmp(argv[i], "--json") != 0;
    return n;
}

json_t *cli_admin_audit_parse(int argc, char **argv)
{
    json_t *q = json_object();
    for (int i = 1; q && i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (strcmp(argv[i], "verify") == 0 && args(argc, argv) == 1) {
            json_object_set_new(q, "verify", json_true());
            continue;
        }
        int f = 0;
        while (f < NFILTERS && strcmp(argv[i], FILTERS[f][0]) != 0)
            f++;
        if (f == NFILTERS || i + 1 >= argc || json_object_get(q, FILTERS[f][1])) {
            json_decref(q);
            return NULL;
        }
        json_object_set_new(q, FILTERS[f][1], json_string(argv[++i]));
    }
    return q;
}

static const char *member(const json_t *request, const char *name)
{
    return json_string_value(json_object_get(request, name));
}

int cli_admin_audit_run(cdb_service *svc, const cdb_principal *operator, json_t *request, json_t **out,
                        cdb_error *err)
{
    if (json_is_true(json_object_get(request, "verify")))
        return cdb_audit_verify(svc, operator, out, err);
    cdb_audit_query q = {.actor = member(request, "actor"), .action = member(request, "action"),
                         .since = member(request, "since"), .until = member(request, "until"),
                         .cursor = member(request, "cursor")};
    const char *limit = member(request, "limit");
    if (limit) {
        size_t n = strlen(limit);
        if (n == 0 || n > 4 || strspn(limit, "0123456789") != n || (q.limit = atoi(limit)) < 1)
            return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "limit",
                                        "limit must be an integer from 1 to 500");
    }
    return cdb_audit_list(svc, operator, &q, out, err);
}
