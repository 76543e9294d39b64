/*
 * routes_openapi.c - GET /api/v1/openapi.json (API.md "Health and
 * metrics"): the OpenAPI 3.1 description of this API, docs/openapi.json,
 * embedded at build time (scripts/embed-file.py -> build/gen/openapi_doc.inc)
 * so a deployed binary needs no source tree. Public, answered on the loop:
 * the bytes are constant, so the answer is a copy and an ETag made from
 * their hash at build time (If-None-Match -> 304 without a body).
 * tests/unit/http/openapi.c checks the document against the route tables.
 */
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "openapi_doc.inc"

const char *cdb__openapi_document(size_t *len)
{
    *len = OPENAPI_DOC_LEN;
    return (const char *)openapi_doc;
}

/*
 * True when an If-None-Match list names etag, or is "*" (RFC 9110 13.1.2:
 * weak comparison, so W/"x" matches "x"). Elements are split on commas; an
 * ETag of ours never contains one.
 */
static bool etag_listed(const char *list, const char *etag)
{
    size_t elen = strlen(etag);
    const char *p = list;
    while (*p) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        size_t end = n;
        while (end > 0 && (p[end - 1] == ' ' || p[end - 1] == '\t'))
            end--;
        const char *item = p;
        if (end >= 2 && item[0] == 'W' && item[1] == '/')
            item += 2, end -= 2;
        if ((end == 1 && item[0] == '*') || (end == elen && memcmp(item, etag, elen) == 0))
            return true;
        p += n;
    }
    return false;
}

static void openapi_get(cdb_request *r)
{
    /* no-cache: a client may keep the document but asks again each time;
     * the ETag makes that an empty 304 until the binary changes. */
    cdb_request_header(r, "ETag", "%s", OPENAPI_DOC_ETAG);
    cdb_request_header(r, "Cache-Control", "%s", "no-cache");
    const char *inm = cdb_request_field(r, "If-None-Match");
    if (inm && etag_listed(inm, OPENAPI_DOC_ETAG)) {
        cdb_request_reply(r, 304, NULL);
        return;
    }
    /* reply_text takes ownership; NULL (out of memory) answers 500 there */
    char *text = malloc(OPENAPI_DOC_LEN + 1);
    if (text)
        memcpy(text, openapi_doc, OPENAPI_DOC_LEN + 1);
    cdb_request_reply_text(r, 200, text);
}

const cdb_route cdb_routes_openapi[] = {
    {EVHTTP_REQ_GET, "/api/v1/openapi.json", openapi_get, CDB_RUN_INLINE, CDB_AUTH_PUBLIC},
    {0},
};
