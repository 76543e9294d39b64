/*
 * cmd_collections.c - `coredb collections list | create NAME --kind KIND
 * [--partition-key PATH] [--dimensions N] [--metric M] [--index exact|hnsw]
 * [--hnsw-m N] [--ef-construction N] [--ef-search N] | drop NAME`, over
 * the library's cdb_collections_* (coredb/collections.h), acting as the
 * operator (admin). The same calls serve /api/v1/admin/collections.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "coredb/collections.h"

const char cli_help_collections[] =
    "usage: coredb collections list [--json]\n"
    "       coredb collections create NAME --kind documents|vectors [--partition-key PATH]\n"
    "                                 [--dimensions N] [--metric cosine|l2|dot]\n"
    "                                 [--index exact|hnsw] [--hnsw-m N] [--ef-construction N]\n"
    "                                 [--ef-search N] [--json]\n"
    "       coredb collections drop NAME [--json]\n"
    "\n"
    "  list        the document and vector collections, with their table and row count\n"
    "  create      register a collection and create its table coredb.coll_NAME with\n"
    "              row-level security (users see and write only their own documents)\n"
    "    --kind KIND            documents (JSON documents) or vectors (fixed dimensions)\n"
    "    --partition-key PATH   documents: the JSON path of the partition key (a.b)\n"
    "    --dimensions N         vectors: 1 to 4096 (required)\n"
    "    --metric M             vectors: cosine (default), l2 or dot\n"
    "    --index I              vectors: exact (default: scan every visible point) or hnsw\n"
    "                           (approximate in-process HNSW index, for large collections)\n"
    "    --hnsw-m N             hnsw: graph links per point, 4 to 64 (default 16)\n"
    "    --ef-construction N    hnsw: build-time candidate list, 8 to 1000 (default 200)\n"
    "    --ef-search N          hnsw: search-time candidate list, 10 to 2000 (default 100)\n"
    "  drop        drop a collection and every document in it\n"
    "\n"
    CLI_JSON_HELP;

typedef struct coll_args {
    const char *action, *name, *kind, *partition_key, *dimensions, *metric;
    const char *index, *hnsw_m, *ef_construction, *ef_search;
    bool as_json;
} coll_args;

static int parse_args(int argc, char **argv, coll_args *a)
{
    *a = (coll_args){0};
    if (argc < 2)
        return -1;
    a->action = argv[1];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            a->as_json = true;
        else if (strcmp(argv[i], "--kind") == 0 && i + 1 < argc)
            a->kind = argv[++i];
        else if (strcmp(argv[i], "--partition-key") == 0 && i + 1 < argc)
            a->partition_key = argv[++i];
        else if (strcmp(argv[i], "--dimensions") == 0 && i + 1 < argc)
            a->dimensions = argv[++i];
        else if (strcmp(argv[i], "--metric") == 0 && i + 1 < argc)
            a->metric = argv[++i];
        else if (strcmp(argv[i], "--index") == 0 && i + 1 < argc)
            a->index = argv[++i];
        else if (strcmp(argv[i], "--hnsw-m") == 0 && i + 1 < argc)
            a->hnsw_m = argv[++i];
        else if (strcmp(argv[i], "--ef-construction") == 0 && i + 1 < argc)
            a->ef_construction = argv[++i];
        else if (strcmp(argv[i], "--ef-search") == 0 && i + 1 < argc)
            a->ef_search = argv[++i];
        else if (!a->name && argv[i][0] != '-')
            a->name = argv[i];
        else
            return -1;
    }
    bool create = strcmp(a->action, "create") == 0, drop = strcmp(a->action, "drop") == 0,
         list = strcmp(a->action, "list") == 0;
    if (!create && !drop && !list)
        return -1;
    if ((create || drop) != (a->name != NULL))
        return -1;
    if (create && !a->kind)
        return -1;
    if (!create && (a->kind || a->partition_key || a->dimensions || a->metric || a->index || a->hnsw_m ||
                    a->ef_construction || a->ef_search))
        return -1;
    return 0;
}

/* obj[key] = the integer text v (field names the request's field); false when v is not an integer. */
static bool set_int(json_t *obj, const char *key, const char *v, const char *flag, const char *field,
                    cdb_error *err)
{
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || !*v || *end) {
        cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field, "%s must be an integer", flag);
        return false;
    }
    json_object_set_new(obj, key, json_integer(n));
    return true;
}

/* The JSON body of POST /api/v1/admin/collections; NULL on out of memory or a bad number. */
static json_t *create_request(const coll_args *a, cdb_error *err)
{
    json_t *req = json_pack("{s:s, s:s}", "name", a->name, "kind", a->kind);
    if (!req) {
        cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "arguments must be UTF-8");
        return NULL;
    }
    if (a->partition_key)
        json_object_set_new(req, "partition_key", json_string(a->partition_key));
    if (a->metric)
        json_object_set_new(req, "metric", json_string(a->metric));
    if (a->dimensions) {
        char *end = NULL;
        errno = 0;
        long n = strtol(a->dimensions, &end, 10);
        if (errno || !*a->dimensions || *end) {
            cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", "dimensions",
                                 "--dimensions must be an integer");
            json_decref(req);
            return NULL;
        }
        json_object_set_new(req, "dimensions", json_integer(n));
    }
    if (a->index)
        json_object_set_new(req, "index", json_string(a->index));
    if (a->hnsw_m || a->ef_construction || a->ef_search) {
        /* the library says VALIDATION_FAILED (field "hnsw") when --index is not hnsw */
        json_t *h = json_object();
        json_object_set_new(req, "hnsw", h);
        if ((a->hnsw_m && !set_int(h, "m", a->hnsw_m, "--hnsw-m", "hnsw.m", err)) ||
            (a->ef_construction &&
             !set_int(h, "ef_construction", a->ef_construction, "--ef-construction", "hnsw.ef_construction", err)) ||
            (a->ef_search && !set_int(h, "ef_search", a->ef_search, "--ef-search", "hnsw.ef_search", err))) {
            json_decref(req);
            return NULL;
        }
    }
    return req;
}

static void run_action(cli_operator *op, const coll_args *a, json_t **result, cdb_error *err)
{
    if (strcmp(a->action, "create") == 0) {
        json_t *request = create_request(a, err);
        if (request)
            cdb_collections_create(op->svc, &op->principal, request, result, err);
        json_decref(request);
    } else if (strcmp(a->action, "drop") == 0) {
        cdb_collections_drop(op->svc, &op->principal, a->name, result, err);
    } else {
        cdb_collections_list(op->svc, &op->principal, result, err);
    }
}

int cmd_collections(int argc, char **argv)
{
    coll_args a;
    if (parse_args(argc, argv, &a) < 0)
        return cli_usage_error("collections", cli_help_collections, cli_flag(argc, argv, "--json"));
    cli_operator op;
    int rc = cli_operator_open(&op, a.as_json, true, "coredb collections");
    if (rc != CLI_EXIT_OK)
        return rc;
    if (op.svc)
        run_action(&op, &a, &op.result, &op.err);
    return cli_operator_finish(&op);
}
