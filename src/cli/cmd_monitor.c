/*
 * cmd_monitor.c - `coredb monitor tables | performance | errors | all`,
 * over the library's cdb_monitor_* (coredb/monitor.h) as the operator. The
 * same calls serve GET /api/v1/admin/metrics/... --json prints the result
 * form; without it a person gets the numbers that matter as tables.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "coredb/monitor.h"

const char cli_help_monitor[] =
    "usage: coredb monitor tables|performance|errors|all [--json]\n"
    "\n"
    "  tables        per table of POSTGRES_SCHEMA and of coredb's own schema (marked\n"
    "                coredb_own): rows estimate, live/dead rows, size, index size,\n"
    "                sequential and index scans, inserts/updates/deletes, last\n"
    "                (auto)vacuum and (auto)analyze\n"
    "  performance   the database's transactions, cache hit ratio, tuples, temp files,\n"
    "                deadlocks; the pool; the slowest statements from pg_stat_statements\n"
    "                (\"unavailable\" with the reason when the extension is missing)\n"
    "  errors        rollbacks, deadlocks and recovery conflicts; pool timeouts and\n"
    "                connect failures\n"
    "  all           the three in one object\n"
    "\n"
    "  The numbers are PostgreSQL's cumulative statistics at the time of the call\n"
    "  (flushed by each session at most once a second). See docs/operations.md,\n"
    "  \"Monitoring\".\n"
    "\n"
    CLI_JSON_HELP;

/* A copy of each row of rows with only the keys named (NULL-terminated). */
static json_t *columns(json_t *rows, const char *const *keys)
{
    json_t *out = json_array(), *row;
    size_t i;
    json_array_foreach(rows, i, row) {
        json_t *r = json_object();
        for (const char *const *k = keys; *k; k++) {
            json_t *v = json_object_get(row, *k);
            json_object_set(r, *k, v ? v : json_null());
        }
        json_array_append_new(out, r);
    }
    return out;
}

static void section(const char *title, json_t *data)
{
    printf("%s%s\n", title[0] ? "\n" : "", title);
    cli_print_human(stdout, data);
}

static void print_tables(json_t *t)
{
    static const char *const keys[] = {"schema", "name", "rows_estimate", "live_rows", "dead_rows",
                                       "total_bytes", "index_bytes", "seq_scan", "idx_scan",
                                       "n_tup_ins", "n_tup_upd", "n_tup_del", "last_autovacuum",
                                       "last_autoanalyze", NULL};
    json_t *view = json_pack("{s:O,s:O,s:o}", "schema", json_object_get(t, "schema"), "count",
                             json_object_get(t, "count"), "tables",
                             columns(json_object_get(t, "tables"), keys));
    section("", view);
    json_decref(view);
}

static void print_statements(json_t *st)
{
    const char *status = json_string_value(json_object_get(st, "status"));
    const char *reason = json_string_value(json_object_get(st, "reason"));
    if (!status || strcmp(status, "available") != 0) {
        printf("\nstatements: unavailable (%s)\n", reason ? reason : "?");
        return;
    }
    static const char *const keys[] = {"calls", "total_ms", "mean_ms", "max_ms", "rows", "query", NULL};
    json_t *view = json_pack("{s:o}", "by_total_time", columns(json_object_get(st, "by_total_time"), keys));
    section("statements (pg_stat_statements):", view);
    json_decref(view);
}

static void print_performance(json_t *p)
{
    section("database:", json_object_get(p, "database"));
    section("pool:", json_object_get(p, "pool"));
    print_statements(json_object_get(p, "statements"));
    json_t *lat = json_object_get(json_object_get(p, "coredb"), "latency");
    if (json_object_size(lat) > 0)
        section("coredb request latency (this process):", lat);
    else
        printf("\ncoredb request latency: none (this process served no requests)\n");
}

static void print_errors(json_t *e)
{
    section("postgresql:", json_object_get(e, "postgresql"));
    section("pool:", json_object_get(e, "pool"));
    json_t *c = json_object_get(e, "coredb");
    if (json_is_object(c))
        section("coredb error answers (this process):", c);
    else
        printf("\ncoredb error answers: not available\n");
}

/* `coredb monitor all`: the three reports, each under its heading. */
static void print_all(json_t *all)
{
    printf("== tables ==\n");
    print_tables(json_object_get(all, "tables"));
    printf("\n== performance ==\n");
    print_performance(json_object_get(all, "performance"));
    printf("\n== errors ==\n");
    print_errors(json_object_get(all, "errors"));
}

static const cli_report reports[] = {
    {"tables", cdb_monitor_tables},  {"performance", cdb_monitor_performance},
    {"errors", cdb_monitor_errors},  {"all", cdb_monitor_all},
    {NULL, NULL},
};
/* The human form of each row of reports[], in the same order. */
static void (*const printers[])(json_t *) = {print_tables, print_performance, print_errors, print_all};

int cmd_monitor(int argc, char **argv)
{
    bool as_json = cli_flag(argc, argv, "--json");
    cdb_error err;
    cdb_error_init(&err);
    json_t *result = NULL;
    const cli_report *row;
    int rc = cli_report_call(argc, argv, "monitor", cli_help_monitor, reports, &row, &result, &err);
    if (rc != CLI_EXIT_OK)
        goto out;
    if (as_json || err.code != CDB_OK) {
        rc = cli_print_result(result, &err, as_json);
    } else {
        printers[row - reports](result);
        fflush(stdout);
        json_decref(result);
    }
out:
    cdb_error_destroy(&err);
    return rc;
}
