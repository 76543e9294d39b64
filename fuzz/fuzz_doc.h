/*
 * fuzz_doc.h - what the document and vector harnesses share: a reader of
 * PostgreSQL text[] literals as array_in reads them, the JSON path oracle
 * (a path's bound literal gives back exactly its segments, none of them
 * SQL NULL), and the SQL oracle of the document store's statements
 * (src/data/doc_*.c, vec_*.c): their text is fixed fragments, the fixture
 * collection's table quoted, the fragments' own string literals ('id',
 * 'number', ...) and $n parameters; each $n is within the parameters and
 * what it is cast to fits what is bound (::text[] a checked path literal,
 * ::jsonb JSON, ::bigint an integer, ::real[] finite float32s).
 * Anything else aborts, so libFuzzer keeps the input as a crash.
 */
#ifndef COREDB_FUZZ_DOC_H
#define COREDB_FUZZ_DOC_H

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The fixture collection: what the registry stub answers for any valid name. */
#define FUZZ_DOC_TABLE "coll_fuzz"

/* Words the fixed fragments of the document and vector statements spell. */
static const char *const fuzz_doc_words[] = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "IS", "NOT", "NULL", "DISTINCT", "EXISTS", "AS", "ON", "IN",
    "ORDER", "BY", "ASC", "DESC", "LIMIT", "OFFSET", "COLLATE", "WITH", "INSERT", "INTO", "VALUES",
    "CONFLICT", "DO", "UPDATE", "SET", "EXCLUDED", "DELETE", "RETURNING", "ANY", "coredb", "count",
    "jsonb_array_elements", "jsonb_typeof", "json_build_object", "jsonb_build_object", "jsonb_merge_patch",
    "doc_sized", "doc_written", "coalesce", "gen_random_uuid", "md5", "random", "clock_timestamp", "now", "text",
    "jsonb", "bigint", "int", "real", "d", "e", "v", "r", "w", "cur", "id", "doc", "etag", "payload",
    "partition_key", "created_at", "updated_at", "vector", NULL,
};

/* The string literals the fixed fragments hold. */
static const char *const fuzz_doc_literals[] = {
    "id", "partition_key", "doc", "etag", "created_at", "updated_at", "payload", "number", "string", NULL,
};

static void fuzz_doc_die(const char *why, const char *sql, size_t at)
{
    fprintf(stderr, "doc SQL oracle: %s at byte %zu of:\n%s\n", why, at, sql);
    abort();
}

/*
 * Reads a PostgreSQL one-dimensional array literal as array_in does
 * (quoted elements with backslash escapes; unquoted ones trimmed, and the
 * unquoted word NULL in any case is SQL NULL) into a JSON array of strings
 * and nulls. NULL when it is not such a literal.
 */
static json_t *fuzz_pg_array_read(const char *s)
{
    json_t *out = json_array();
    char *buf = malloc(strlen(s) + 1);
    if (!out || !buf)
        abort();
    if (*s++ != '{')
        goto bad;
    if (*s == '}' && s[1] == '\0')
        goto done;
    for (;;) {
        size_t n = 0;
        while (*s == ' ')
            s++;
        if (*s == '"') {
            for (s++; *s != '"'; s++) {
                if (*s == '\0')
                    goto bad;
                if (*s == '\\' && *++s == '\0')
                    goto bad;
                buf[n++] = *s;
            }
            s++;
            buf[n] = '\0';
            json_array_append_new(out, json_string_nocheck(buf));
        } else {
            while (*s && !strchr(",{}\"\\", *s))
                buf[n++] = *s++;
            while (n && buf[n - 1] == ' ')
                n--;
            buf[n] = '\0';
            if (n == 0)
                goto bad;
            json_array_append_new(out, strcasecmp(buf, "NULL") == 0 ? json_null() : json_string_nocheck(buf));
        }
        while (*s == ' ')
            s++;
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '}' && s[1] == '\0')
            break;
        goto bad;
    }
done:
    free(buf);
    return out;
bad:
    free(buf);
    json_decref(out);
    return NULL;
}

/*
 * The JSON path oracle: lit, the literal cdb_jsonpath_parse made of path,
 * read by PostgreSQL is path's dot-separated segments, each a non-NULL
 * string of [A-Za-z0-9_-]{1,64}, at most 16.
 */
static void fuzz_doc_path_check(const char *path, const char *lit)
{
    json_t *segs = fuzz_pg_array_read(lit);
    size_t i = 0;
    const char *p = path;
    if (!segs) {
        fprintf(stderr, "path oracle: %s bound as %s, not a text[] literal\n", path, lit);
        abort();
    }
    for (;; i++) {
        size_t n = strcspn(p, ".");
        json_t *seg = json_array_get(segs, i);
        if (n == 0 || n > 64 || strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != n ||
            !json_is_string(seg) || json_string_length(seg) != n || memcmp(json_string_value(seg), p, n) != 0) {
            fprintf(stderr, "path oracle: %s bound as %s, which PostgreSQL reads as segment %zu = %s\n", path,
                    lit, i, json_is_null(seg) ? "NULL" : json_is_string(seg) ? json_string_value(seg) : "(none)");
            abort();
        }
        p += n;
        if (*p == '\0')
            break;
        p++;
    }
    if (i + 1 != json_array_size(segs) || i + 1 > 16) {
        fprintf(stderr, "path oracle: %s bound as %s: %zu segments\n", path, lit, json_array_size(segs));
        abort();
    }
    json_decref(segs);
}

/* A real[] literal of exactly dims finite float32s, each equal to want[i] when want is given. */
static void fuzz_doc_real_array_check(const char *lit, int dims, const float *want)
{
    json_t *els = fuzz_pg_array_read(lit);
    if (!els || json_array_size(els) != (size_t)dims) {
        fprintf(stderr, "vector oracle: %s is not a real[] of %d elements\n", lit, dims);
        abort();
    }
    for (int i = 0; i < dims; i++) {
        const char *t = json_string_value(json_array_get(els, (size_t)i));
        char *end;
        errno = 0;
        float f = t ? strtof(t, &end) : 0;
        /* as PostgreSQL's float4in: ERANGE is an error only for an overflow or an underflow to 0 */
        bool range = errno == ERANGE && (f == 0 || !isfinite(f));
        if (!t || end == t || *end || range || !isfinite(f) || (want && f != want[i])) {
            fprintf(stderr, "vector oracle: element %d of %s is not the finite float32 given\n", i, lit);
            abort();
        }
    }
    json_decref(els);
}

/* Checks param v against the cast that follows its $n in the SQL text. */
static void fuzz_doc_param_check(const char *sql, size_t at, const char *cast, const char *v)
{
    if (strncmp(cast, "::text[]", 8) == 0) {
        if (!v)
            fuzz_doc_die("a NULL path", sql, at);
        /* the path's segments are the literal's: rebuild the dotted path and check the round trip */
        json_t *segs = fuzz_pg_array_read(v);
        if (!segs)
            fuzz_doc_die("a text[] parameter that is no array literal", sql, at);
        char path[1024] = "";
        size_t i;
        json_t *s;
        json_array_foreach(segs, i, s) {
            if (!json_is_string(s) || strlen(path) + json_string_length(s) + 2 > sizeof path)
                fuzz_doc_die("a path parameter with a NULL or oversized segment", sql, at);
            if (i)
                strcat(path, ".");
            strcat(path, json_string_value(s));
        }
        json_decref(segs);
        fuzz_doc_path_check(path, v);
    } else if (strncmp(cast, "::jsonb", 7) == 0) {
        json_t *j = v ? json_loads(v, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
        if (!j)
            fuzz_doc_die("a jsonb parameter that is not JSON", sql, at);
        json_decref(j);
    } else if (strncmp(cast, "::bigint", 8) == 0 || strncmp(cast, "::int", 5) == 0) {
        if (!v || !*v || strspn(v + (*v == '-'), "0123456789") != strlen(v + (*v == '-')))
            fuzz_doc_die("an integer parameter that is not an integer", sql, at);
    } else if (strncmp(cast, "::text", 6) == 0 || strncmp(cast, "::real[]", 8) == 0) {
        /* any text (ids, etags, select keys); real[] is checked by the harness against its vector */
    } else {
        fuzz_doc_die("a parameter without a cast", sql, at);
    }
}

/*
 * Aborts unless sql is made only of fragment words, the fixture table and
 * "C" quoted, the fragments' literals, numbers, punctuation and
 * $1..$nparams, each fitting its cast.
 */
static void fuzz_doc_sql_check(const char *sql, int nparams, char *const *params)
{
    size_t i = 0, n = strlen(sql);
    char word[256];
    while (i < n) {
        unsigned char ch = (unsigned char)sql[i];
        if (ch == ' ') {
            i++;
        } else if (ch == '"' || ch == '\'') {
            size_t at = i, w = 0;
            for (i++; i < n && sql[i] != (char)ch; i++) {
                if (w + 1 >= sizeof word)
                    fuzz_doc_die("quoted text too long", sql, at);
                word[w++] = sql[i];
            }
            if (i >= n)
                fuzz_doc_die("unterminated quote", sql, at);
            word[w] = '\0';
            i++;
            bool known = false;
            if (ch == '"') {
                known = strcmp(word, FUZZ_DOC_TABLE) == 0 || strcmp(word, "C") == 0;
            } else {
                for (const char *const *k = fuzz_doc_literals; *k && !known; k++)
                    known = strcmp(*k, word) == 0;
            }
            if (!known)
                fuzz_doc_die(ch == '"' ? "identifier not the fixture's" : "a string literal no fragment has", sql,
                             at);
        } else if (ch == '$') {
            size_t at = i;
            long v = 0;
            if (!isdigit((unsigned char)sql[++i]))
                fuzz_doc_die("$ without a number", sql, at);
            while (isdigit((unsigned char)sql[i]) && v < 100000)
                v = v * 10 + (sql[i++] - '0');
            if (v < 1 || v > nparams)
                fuzz_doc_die("parameter number out of range", sql, at);
            if (params)
                fuzz_doc_param_check(sql, at, sql + i, params[v - 1]);
        } else if (isalpha(ch) || ch == '_') {
            size_t at = i, w = 0;
            while (i < n && (isalnum((unsigned char)sql[i]) || sql[i] == '_') && w + 1 < sizeof word)
                word[w++] = sql[i++];
            word[w] = '\0';
            bool known = false;
            for (const char *const *k = fuzz_doc_words; *k && !known; k++)
                known = strcmp(*k, word) == 0;
            if (!known)
                fuzz_doc_die("a word no fragment spells (a value outside a parameter?)", sql, at);
        } else if (isdigit(ch)) {
            while (isdigit((unsigned char)sql[i]))
                i++;
        } else if (ch == '-' && sql[i + 1] == '-') {
            fuzz_doc_die("comment", sql, i);
        } else if (ch == '/' && sql[i + 1] == '*') {
            fuzz_doc_die("comment", sql, i);
        } else if (strchr("(),.:=<>*@#[]|", ch)) {
            i++;
        } else {
            fuzz_doc_die("a character no fragment has (';', ...)", sql, i);
        }
    }
}

/* Depth of v as cdb__doc_check counts it (a scalar 0, a container 1 + its deepest member). */
static int fuzz_json_depth(const json_t *v)
{
    int d = 0;
    size_t i;
    const char *k;
    json_t *c;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, c) {
            int x = fuzz_json_depth(c);
            d = x > d ? x : d;
        }
        return d + 1;
    }
    if (json_is_array(v)) {
        json_array_foreach(v, i, c) {
            int x = fuzz_json_depth(c);
            d = x > d ? x : d;
        }
        return d + 1;
    }
    return 0;
}

#endif
