/*
 * cmd_health.c - `coredb health [connection | query | resource]`, over the
 * library's detailed health (coredb/health.h) as the operator; without a
 * part, all three. The same calls serve GET /api/v1/admin/health[/PART].
 * Exit 0 when healthy or degraded, 1 when unhealthy (with or without
 * --json), so a script or a cron job can act on it.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coredb/health.h"

const char cli_help_health[] =
    "usage: coredb health [connection|query|resource] [--json]\n"
    "\n"
    "  connection   PostgreSQL reachable through the pool (latency, server version,\n"
    "               backends of max_connections), the pool's counters, Redis\n"
    "  query        a timed probe query and the longest-running statements of this\n"
    "               database (text cut to 200 characters)\n"
    "  resource     this process's memory and file descriptors, free disk under\n"
    "               COREDB_VAR_DIR and BACKUP_DIR, the database's size\n"
    "  (none)       the three, with the worst verdict\n"
    "\n"
    "  Each says health: healthy | degraded | unhealthy, with the reasons; the\n"
    "  thresholds are in docs/operations.md, \"Monitoring\". Exit 1 when unhealthy.\n"
    "\n"
    CLI_JSON_HELP;

/* The verdict line, then the report without it. */
static void print_report(const char *title, json_t *r)
{
    const char *reason = json_string_value(json_object_get(r, "reason"));
    const char *health = json_string_value(json_object_get(r, "health"));
    printf("%s%s: %s%s%s\n", title, title[0] ? " health" : "health", health ? health : "?",
           reason ? " - " : "", reason ? reason : "");
    json_t *rest = json_deep_copy(r);
    json_object_del(rest, "health");
    json_object_del(rest, "reason");
    json_object_del(rest, "reasons");
    if (!title[0]) {
        /* the overall verdict: its reasons; the parts follow on their own */
        size_t i;
        json_t *why;
        json_array_foreach(json_object_get(r, "reasons"), i, why)
            printf("  - %s\n", json_string_value(why));
        json_decref(rest);
        return;
    }
    cli_print_human(stdout, rest);
    json_decref(rest);
}

static const cli_report reports[] = {
    {"", cdb_health_detailed},       {"connection", cdb_health_connection},
    {"query", cdb_health_query},     {"resource", cdb_health_resource},
    {NULL, NULL},
};

int cmd_health(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    cdb_error err;
    cdb_error_init(&err);
    json_t *result = NULL;
    const cli_report *row;
    int rc = cli_report_call(argc, argv, "health", cli_help_health, reports, &row, &result, &err);
    if (rc != CLI_EXIT_OK)
        goto out;
    const char *verdict = json_string_value(json_object_get(result, "health"));
    bool unhealthy = verdict && strcmp(verdict, "unhealthy") == 0;
    if (as_json || err.code != CDB_OK) {
        rc = cli_print_result(result, &err, as_json);
    } else {
        print_report(row->word, result);
        if (!row->word[0]) {
            static const char *const parts[] = {"connection", "query", "resource"};
            for (size_t i = 0; i < 3; i++) {
                putchar('\n');
                print_report(parts[i], json_object_get(result, parts[i]));
            }
        }
        fflush(stdout);
        json_decref(result);
    }
    if (rc == CLI_EXIT_OK && unhealthy)
        rc = CLI_EXIT_FAILED;
out:
    cdb_error_destroy(&err);
    return rc;
}
