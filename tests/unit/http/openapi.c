/*
 * openapi.c - the OpenAPI document the binary serves (docs/openapi.json,
 * embedded by routes_openapi.c) against the router's route tables, both
 * ways, so that a route cannot exist undocumented nor a documented one
 * be missing:
 *   - every (method, pattern) of every table but the test routes has an
 *     operation in `paths` (patterns use {name} as OpenAPI does), whose
 *     x-coredb-auth names the route's auth mode and whose `security` fits
 *     it (public and anonymous: none; optional: none or bearer; user and
 *     admin: bearer), with 401 (and 403 for admin) documented;
 *   - every operation has such a route;
 *   - every error code of coredb/error.h is in the envelope's list of codes.
 * The route tables are listed below; every table declared in
 * http_internal.h must be in that list (checked too).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "http/http_internal.h"

static const struct {
    const char *name;
    const cdb_route *table;
} tables[] = {
    {"health", cdb_routes_health},         {"users", cdb_routes_users},
    {"auth", cdb_routes_auth},             {"data", cdb_routes_data},
    {"admin", cdb_routes_admin},           {"migrations", cdb_routes_migrations},
    {"openapi", cdb_routes_openapi},       {"metrics", cdb_routes_metrics},
    {"audit", cdb_routes_audit},           {"dbauth", cdb_routes_dbauth},
    {"access", cdb_routes_access},         {"monitor", cdb_routes_monitor},
    {"leases", cdb_routes_leases},
    {"encryption", cdb_routes_encryption},
    {"collections", cdb_routes_collections},
};
#define NTABLES (sizeof tables / sizeof tables[0])

static const struct {
    unsigned bit;
    const char *key;      /* OpenAPI's name of the method */
} methods[] = {
    {EVHTTP_REQ_GET, "get"},       {EVHTTP_REQ_POST, "post"},   {EVHTTP_REQ_PUT, "put"},
    {EVHTTP_REQ_DELETE, "delete"}, {EVHTTP_REQ_PATCH, "patch"}, {EVHTTP_REQ_HEAD, "head"},
    {EVHTTP_REQ_OPTIONS, "options"}, {EVHTTP_REQ_TRACE, "trace"},
};
#define NMETHODS (sizeof methods / sizeof methods[0])

static const char *auth_name(cdb_route_auth a)
{
    switch (a) {
    case CDB_AUTH_PUBLIC: return "public";
    case CDB_AUTH_ANON: return "anonymous";
    case CDB_AUTH_OPTIONAL: return "optional";
    case CDB_AUTH_USER: return "user";
    case CDB_AUTH_ADMIN: return "admin";
    }
    return "?";
}

static json_t *load_document(void)
{
    size_t len = 0;
    const char *text = cdb__openapi_document(&len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    json_error_t jerr;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        fail_msg("docs/openapi.json: %s (line %d)", jerr.text, jerr.line);
    return doc;
}

static int failures;
#define PROBLEM(...) (print_error(__VA_ARGS__), print_error("\n"), failures++)

/* Is there a bearerAuth requirement in security; is there an empty one (no auth)? */
static void security_kinds(json_t *security, bool *bearer, bool *none, int *n)
{
    *bearer = *none = false;
    *n = json_is_array(security) ? (int)json_array_size(security) : -1;
    size_t i;
    json_t *req;
    json_array_foreach(security, i, req) {
        if (json_is_object(req) && json_object_size(req) == 0)
            *none = true;
        else if (json_is_object(req) && json_object_get(req, "bearerAuth"))
            *bearer = true;
    }
}

static void check_operation(const char *pattern, const char *method, json_t *opn, const cdb_route *route)
{
    const char *want = auth_name(route->auth);
    const char *got = json_string_value(json_object_get(opn, "x-coredb-auth"));
    if (!got || strcmp(got, want) != 0)
        PROBLEM("%s %s: x-coredb-auth is %s, the route's auth mode is %s", method, pattern,
                got ? got : "(absent)", want);
    bool bearer, none;
    int n;
    security_kinds(json_object_get(opn, "security"), &bearer, &none, &n);
    bool fits;
    switch (route->auth) {
    case CDB_AUTH_PUBLIC:
    case CDB_AUTH_ANON: fits = n == 0; break;
    case CDB_AUTH_OPTIONAL: fits = n == 2 && bearer && none; break;
    default: fits = n == 1 && bearer; break;
    }
    if (!fits)
        PROBLEM("%s %s: security does not fit auth mode %s", method, pattern, want);
    json_t *responses = json_object_get(opn, "responses");
    if (!json_is_object(responses) || json_object_size(responses) == 0)
        PROBLEM("%s %s: no responses", method, pattern);
    if (route->auth >= CDB_AUTH_USER && !json_object_get(responses, "401"))
        PROBLEM("%s %s: a route that needs a token must document 401", method, pattern);
    if (route->auth == CDB_AUTH_ADMIN && !json_object_get(responses, "403"))
        PROBLEM("%s %s: an admin route must document 403", method, pattern);
}

/* Every route of every table has its operation. */
static void test_every_route_is_documented(void **state)
{
    json_t *doc = load_document();
    json_t *paths = json_object_get(doc, "paths");
    assert_true(json_is_object(paths));
    failures = 0;
    int checked = 0;
    for (size_t t = 0; t < NTABLES; t++) {
        for (const cdb_route *r = tables[t].table; r->pattern; r++) {
            if (r->methods == 0)
                PROBLEM("routes_%s %s: no method", tables[t].name, r->pattern);
            unsigned seen = 0;
            for (size_t m = 0; m < NMETHODS; m++) {
                if (!(r->methods & methods[m].bit))
                    continue;
                seen |= methods[m].bit;
                json_t *opn = json_object_get(json_object_get(paths, r->pattern), methods[m].key);
                checked++;
                if (!json_is_object(opn))
                    PROBLEM("routes_%s: %s %s is not in docs/openapi.json", tables[t].name,
                            methods[m].key, r->pattern);
                else
                    check_operation(r->pattern, methods[m].key, opn, r);
            }
            if (seen != r->methods)
                PROBLEM("routes_%s %s: a method bit this test does not know", tables[t].name, r->pattern);
        }
    }
    json_decref(doc);
    assert_true(checked >= 40);       /* the tables were really walked */
    assert_int_equal(failures, 0);
}

static const cdb_route *find_route(const char *pattern, unsigned bit)
{
    for (size_t t = 0; t < NTABLES; t++)
        for (const cdb_route *r = tables[t].table; r->pattern; r++)
            if ((r->methods & bit) && strcmp(r->pattern, pattern) == 0)
                return r;
    return NULL;
}

/* Every operation of the document has its route. */
static void test_every_operation_is_routed(void **state)
{
    json_t *doc = load_document();
    json_t *paths = json_object_get(doc, "paths");
    failures = 0;
    int operations = 0;
    const char *pattern;
    json_t *item;
    json_object_foreach(paths, pattern, item) {
        const char *key;
        json_t *opn;
        json_object_foreach(item, key, opn) {
            size_t m = 0;
            while (m < NMETHODS && strcmp(methods[m].key, key) != 0)
                m++;
            if (m == NMETHODS)
                continue;            /* parameters, summary, ...: not an operation */
            operations++;
            if (!find_route(pattern, methods[m].bit))
                PROBLEM("docs/openapi.json: %s %s has no route (a test route? a typo?)", key, pattern);
        }
    }
    json_decref(doc);
    assert_true(operations >= 40);
    assert_int_equal(failures, 0);
}

/*
 * Tables the API port does not serve: the test routes (COREDB_TEST_ROUTES=1
 * only) and /metrics without a token on the PROMETHEUS_PORT listener (the
 * document describes the main port's admin /metrics and mentions it).
 */
static const char *const not_described[] = {"test", "metrics_public"};

/* Every table http_internal.h declares is in the list above (but those). */
static void test_every_table_is_checked(void **state)
{
    FILE *f = fopen(CDB_SOURCE_DIR "/src/http/http_internal.h", "r");
    assert_non_null(f);
    char line[512];
    int declared = 0, skipped = 0;
    failures = 0;
    while (fgets(line, sizeof line, f)) {
        char name[64];
        if (sscanf(line, "extern const cdb_route cdb_routes_%63[a-z0-9_][];", name) != 1)
            continue;
        declared++;
        bool skip = false;
        for (size_t i = 0; i < sizeof not_described / sizeof not_described[0]; i++)
            skip = skip || strcmp(name, not_described[i]) == 0;
        if (skip) {
            skipped++;
            continue;
        }
        size_t t = 0;
        while (t < NTABLES && strcmp(tables[t].name, name) != 0)
            t++;
        if (t == NTABLES)
            PROBLEM("cdb_routes_%s is not checked: add it to tables[] in tests/unit/http/openapi.c", name);
    }
    fclose(f);
    assert_true(skipped >= 1);               /* cdb_routes_test at least */
    assert_int_equal(declared, (int)NTABLES + skipped);
    assert_int_equal(failures, 0);
}

/* Test routes are not described (they exist only with COREDB_TEST_ROUTES=1). */
static void test_test_routes_are_not_described(void **state)
{
    json_t *doc = load_document();
    json_t *paths = json_object_get(doc, "paths");
    for (const cdb_route *r = cdb_routes_test; r->pattern; r++)
        assert_null(json_object_get(paths, r->pattern));
    /* and the security scheme the operations name exists */
    json_t *bearer = json_object_get(json_object_get(json_object_get(doc, "components"), "securitySchemes"),
                                     "bearerAuth");
    assert_string_equal(json_string_value(json_object_get(bearer, "scheme")), "bearer");
    assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    json_decref(doc);
}

/* The envelope's code lists every code of CDB_ERROR_TABLE (a new code is documented with it). */
static void test_every_error_code_is_listed(void **state)
{
    json_t *doc = load_document();
    json_t *code = json_object_get(json_object_get(json_object_get(json_object_get(json_object_get(
        json_object_get(json_object_get(doc, "components"), "schemas"), "ErrorEnvelope"), "properties"),
        "error"), "properties"), "code");
    const char *list = json_string_value(json_object_get(code, "description"));
    assert_non_null(list);
    static const char *const names[] = {
#define NAME_(name, value, status) #name,
        CDB_ERROR_TABLE(NAME_)
#undef NAME_
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i]);
        const char *at = list;
        /* a whole item of the list: preceded by ' ' and followed by ',' or its end */
        while ((at = strstr(at, names[i])) && !(at[-1] == ' ' && (at[n] == ',' || at[n] == '\0')))
            at += n;
        if (!at)
            PROBLEM("error code %s is not in ErrorEnvelope's list of codes", names[i]);
    }
    assert_int_equal(failures, 0);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_route_is_documented),
        cmocka_unit_test(test_every_operation_is_routed),
        cmocka_unit_test(test_every_table_is_checked),
        cmocka_unit_test(test_test_routes_are_not_described),
        cmocka_unit_test(test_every_error_code_is_listed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
