/*
 * jsonpath.c - checking and splitting the document store's JSON paths
 * (jsonpath.h). Segments are restricted to [A-Za-z0-9_-] so the text[]
 * literal needs no quoting but for NULL; the literal is still only ever bound.
 */
#include "store/jsonpath.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SEGMENT_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

int cdb_jsonpath_parse(const char *field, const json_t *path, char **out, cdb_error *err)
{
    const char *s = json_is_string(path) ? json_string_value(path) : NULL;
    size_t n = s ? strlen(s) : 0;
    int depth = 0;
    char *lit = NULL;

    *out = NULL;
    if (!s || n != json_string_length(path) || n == 0 || n > CDB_PATH_LEN_MAX)
        goto bad;
    for (const char *p = s;; p++) {
        size_t seg = strspn(p, SEGMENT_CHARS);
        if (seg == 0 || seg > CDB_PATH_SEGMENT_MAX || ++depth > CDB_PATH_DEPTH_MAX)
            goto bad;
        p += seg;
        if (*p == '\0')
            break;
        if (*p != '.')
            goto bad;
    }
    /* "{" + segments with ',' for '.' + "}"; a segment spelled NULL (any case) is
     * quoted, else PostgreSQL reads it as an SQL NULL element, not the key "null" */
    if (!(lit = malloc(n + 3 + 2 * (size_t)depth)))
        return cdb_error_oom(err);
    size_t len = 0;
    lit[len++] = '{';
    for (const char *p = s;; p++) {
        size_t seg = strcspn(p, ".");
        bool quote = seg == 4 && strncasecmp(p, "null", 4) == 0;
        if (quote)
            lit[len++] = '"';
        memcpy(lit + len, p, seg);
        len += seg;
        if (quote)
            lit[len++] = '"';
        p += seg;
        if (*p == '\0')
            break;
        lit[len++] = ',';
    }
    lit[len++] = '}';
    lit[len] = '\0';
    *out = lit;
    return 0;
bad:
    return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                "%s must be a path of 1 to %d dot-separated names of A-Z, a-z, 0-9, '_' "
                                "and '-' (at most %d characters each, %d in all)",
                                field, CDB_PATH_DEPTH_MAX, CDB_PATH_SEGMENT_MAX, CDB_PATH_LEN_MAX);
}
