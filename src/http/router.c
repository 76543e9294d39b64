/*
 * router.c - maps a method and a path to a route.
 *
 * Routes are few (tens), so a linear scan over segment patterns is simpler
 * than a trie and costs well under a microsecond. A path that matches some
 * pattern with another method is a 405 with Allow, not a 404; a method no
 * route serves (TRACE, FOO) on an unknown path is a 501.
 */
#include "http_internal.h"

#include <stdlib.h>
#include <string.h>

/* In the order Allow lists them. */
const cdb_http_method cdb_http_methods[CDB_HTTP_NMETHODS] = {
    {EVHTTP_REQ_GET, "GET"},   {EVHTTP_REQ_POST, "POST"},     {EVHTTP_REQ_PUT, "PUT"},
    {EVHTTP_REQ_PATCH, "PATCH"}, {EVHTTP_REQ_DELETE, "DELETE"}, {EVHTTP_REQ_HEAD, "HEAD"},
};

/*
 * Matches one pattern; on success stores the decoded {..} segments in
 * params (caller frees) and returns their count, else -1.
 */
static int match_pattern(const char *pattern, const char *path, char **params)
{
    int n = 0;
    const char *p = pattern, *s = path;
    /* most routes part from the path before their first parameter: rejected here, cheaply
       (the segment walk below was 15 % of a cache hit's instructions, one route after another) */
    for (const char *a = pattern, *b = path; *a && *a != '{'; a++, b++)
        if (*a != *b)
            return -1;
    while (*p && *s) {
        if (*p != '/' || *s != '/')
            goto mismatch;
        p++, s++;
        const char *pend = strchr(p, '/'), *send = strchr(s, '/');
        size_t plen = pend ? (size_t)(pend - p) : strlen(p);
        size_t slen = send ? (size_t)(send - s) : strlen(s);
        if (plen >= 2 && p[0] == '{' && p[plen - 1] == '}') {
            if (slen == 0 || n == CDB_HTTP_MAX_PARAMS)
                goto mismatch;
            char *raw = strndup(s, slen);
            char *decoded = raw ? evhttp_uridecode(raw, 0, NULL) : NULL;
            free(raw);
            if (!decoded)
                goto mismatch;
            params[n++] = decoded;
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            goto mismatch;
        }
        p += plen, s += slen;
    }
    if (*p == '\0' && *s == '\0')
        return n;

mismatch:
    for (int i = 0; i < n; i++)
        free(params[i]);
    return -1;
}

bool cdb_router_match(cdb_request *r, const cdb_route *const *tables)
{
    unsigned allowed = 0;
    for (const cdb_route *const *t = tables; *t; t++) {
        for (const cdb_route *route = *t; route->pattern; route++) {
            char *params[CDB_HTTP_MAX_PARAMS];
            int n = match_pattern(route->pattern, r->path, params);
            if (n < 0)
                continue;
            if (route->methods & r->method) {
                r->route = route;
                memcpy(r->params, params, (size_t)n * sizeof *params);
                r->nparams = n;
                return true;
            }
            for (int i = 0; i < n; i++)
                free(params[i]);
            allowed |= route->methods;
        }
    }
    if (!allowed && !(r->method & CDB_HTTP_METHODS_SERVED)) {
        cdb_request_failf(r, CDB_ERR_NOT_IMPLEMENTED, "Method not implemented");
        return false;
    }
    if (!allowed) {
        cdb_request_failf(r, CDB_ERR_NOT_FOUND, "Not found");
        return false;
    }
    char allow[64] = "";
    for (size_t i = 0; i < CDB_HTTP_NMETHODS; i++) {
        if (allowed & cdb_http_methods[i].bit) {
            if (allow[0])
                strcat(allow, ", ");
            strcat(allow, cdb_http_methods[i].name);
        }
    }
    cdb_request_header(r, "Allow", "%s", allow);
    cdb_request_failf(r, CDB_ERR_METHOD_NOT_ALLOWED, "Method not allowed; allowed: %s", allow);
    return false;
}
