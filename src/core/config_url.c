/*
 * config_url.c - the URLs of the configuration: checking and normalizing a
 * PostgreSQL URL (postgresql+asyncpg:// and friends become libpq's
 * postgresql://), splitting a list of them, checking REDIS_URL, and hiding
 * passwords when a URL is printed. Split from config.c, which owns the
 * variable table and loading.
 */
#include "coredb/config.h"
#include "core/config_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- syntax helpers ---- */

static bool port_ok(const char *p, size_t n)
{
    long v = 0;
    if (n == 0 || n > 5)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return false;
        v = v * 10 + (p[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* host[:port] or [ipv6][:port]; the host may not be empty. */
bool cdb__config_hostport_ok(const char *h, size_t n)
{
    size_t hl;
    if (n > 0 && h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (!rb || rb == h + 1)
            return false;
        hl = (size_t)(rb - h) + 1;
    } else {
        const char *c = memchr(h, ':', n);
        hl = c ? (size_t)(c - h) : n;
    }
    if (hl == 0)
        return false;
    if (hl == n)
        return true;
    return h[hl] == ':' && port_ok(h + hl + 1, n - hl - 1);
}

/* No blanks or control characters, and every '%' starts a valid escape. */
bool cdb__config_url_chars_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c == 0x7f)
            return false;
        if (c == '%' && !(isxdigit((unsigned char)s[1]) && isxdigit((unsigned char)s[2])))
            return false;
    }
    return true;
}

static bool starts_with_scheme(const char *s)
{
    if (!isalpha((unsigned char)*s))
        return false;
    while (isalnum((unsigned char)*s) || *s == '+' || *s == '.' || *s == '-')
        s++;
    return strncmp(s, "://", 3) == 0;
}

/*
 * End of the URL starting at s inside a comma-separated list. libpq allows
 * "h1,h2" host lists, so a comma inside the authority belongs to the URL
 * unless a scheme follows it; any comma after the authority ends the URL
 * (a comma in a path or query must be written %2C).
 */
const char *cdb__config_url_end(const char *s)
{
    const char *sep = strstr(s, "://");
    const char *after_auth = sep ? sep + 3 + strcspn(sep + 3, "/?#") : s;
    for (const char *c = strchr(s, ','); c; c = strchr(c + 1, ','))
        if (c > after_auth || starts_with_scheme(c + 1))
            return c;
    return s + strlen(s);
}

/* RFC 3986 unreserved characters stay, everything else becomes %XX. */
char *cdb__config_pct_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}

/* ---- REDIS_URL ---- */

int cdb__config_check_redis_url(const char *name, const char *u, cdb_error *err)
{
    const char *rest = u + 8;
    if (!strncasecmp(u, "rediss://", 9))
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: TLS to Redis is not supported", name);
    if (strncasecmp(u, "redis://", 8) || !cdb__config_url_chars_ok(rest))
        goto fail_syntax;
    size_t alen = strcspn(rest, "/?#");
    if (rest[alen] == '?' || rest[alen] == '#')
        goto fail_syntax;
    const char *at = memrchr(rest, '@', alen);
    if (at && !memchr(rest, ':', (size_t)(at - rest)))
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "%s: credentials must be written user:password@ or :password@", name);
    const char *host = at ? at + 1 : rest;
    if (!cdb__config_hostport_ok(host, (size_t)(rest + alen - host)))
        goto fail_syntax;
    if (rest[alen] == '/') {
        const char *db = rest + alen + 1;
        size_t n = strlen(db);
        if (n > 5 || strspn(db, "0123456789") != n)
            goto fail_syntax;
    }
    return 0;
fail_syntax:
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: must be redis://[[user]:password@]host[:port][/db]", name);
}

/* ---- PostgreSQL URLs ---- */

char *cdb_config_normalize_database_url(const char *url, cdb_error *err)
{
    const char *sep = url ? strstr(url, "://") : NULL;
    const char *rest, *scheme_end;
    char *out;
    bool has_host_param = false;

    if (!sep) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "not a URL (expected postgresql://...)");
        return NULL;
    }
    /* "postgresql+asyncpg" and friends name a Python driver; libpq wants none. */
    scheme_end = memchr(url, '+', (size_t)(sep - url));
    if (!scheme_end)
        scheme_end = sep;
    bool driver_ok = scheme_end == sep || (scheme_end + 1 < sep &&
                     strspn(scheme_end + 1, "abcdefghijklmnopqrstuvwxyz0123456789_") == (size_t)(sep - scheme_end - 1));
    size_t slen = (size_t)(scheme_end - url);
    bool scheme_ok = (slen == 10 && !strncasecmp(url, "postgresql", 10)) ||
                     (slen == 8 && !strncasecmp(url, "postgres", 8) && scheme_end == sep);
    if (!scheme_ok || !driver_ok) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                      "unsupported scheme (use postgresql://, postgres:// or postgresql+<driver>://)");
        return NULL;
    }
    rest = sep + 3;
    if (!cdb__config_url_chars_ok(rest) || strchr(rest, '#')) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "contains blanks, control characters, a fragment or a bad %%-escape");
        return NULL;
    }
    size_t alen = strcspn(rest, "/?");
    const char *at = memrchr(rest, '@', alen);
    const char *hosts = at ? at + 1 : rest, *hosts_end = rest + alen;
    for (const char *h = hosts; h < hosts_end;) {
        const char *c = memchr(h, ',', (size_t)(hosts_end - h));
        if (!c)
            c = hosts_end;
        if (!cdb__config_hostport_ok(h, (size_t)(c - h))) {
            cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "bad host or port");
            return NULL;
        }
        h = c + 1;
    }
    const char *q = strchr(rest, '?');
    for (const char *p = q ? q + 1 : NULL; p && *p;) {
        size_t plen = strcspn(p, "&");
        const char *eq = memchr(p, '=', plen);
        if (!eq || eq == p) {
            cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "query parameters must be key=value");
            return NULL;
        }
        if (eq - p == 4 && !strncmp(p, "host", 4) && (size_t)(eq - p) + 1 < plen)
            has_host_param = true;
        p += plen + (p[plen] == '&');
    }
    if (hosts == hosts_end && !has_host_param) {
        cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "no host (give one, or ?host=/socket/directory)");
        return NULL;
    }
    if (asprintf(&out, "postgresql://%s", rest) < 0) {
        cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "out of memory");
        return NULL;
    }
    return out;
}

/* Writes one URL with its userinfo password and any password= parameter hidden. */
static void redact_one(FILE *f, const char *s, size_t n)
{
    const char *end = s + n, *sep = memmem(s, n, "://", 3);
    if (!sep) {
        fwrite(s, 1, n, f);
        return;
    }
    const char *auth = sep + 3, *p = s;
    size_t alen = 0;
    while (auth + alen < end && !strchr("/?#", auth[alen]))
        alen++;
    const char *at = memrchr(auth, '@', alen);
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon) {
        fwrite(s, 1, (size_t)(colon + 1 - s), f);
        fputs(REDACTED, f);
        p = at;
    }
    const char *q = memchr(auth + alen, '?', (size_t)(end - (auth + alen)));
    if (!q) {
        fwrite(p, 1, (size_t)(end - p), f);
        return;
    }
    fwrite(p, 1, (size_t)(q + 1 - p), f);
    for (p = q + 1; p < end;) {
        size_t plen = 0;
        while (p + plen < end && p[plen] != '&')
            plen++;
        if (plen >= 9 && !strncmp(p, "password=", 9))
            fputs("password=" REDACTED, f);
        else
            fwrite(p, 1, plen, f);
        p += plen;
        if (p < end)
            fputc(*p++, f);
    }
}

char *cdb_config_redact_url(const char *url)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f;
    if (!url || !(f = open_memstream(&out, &len)))
        return NULL;
    for (const char *p = url;;) {
        const char *end = cdb__config_url_end(p);
        redact_one(f, p, (size_t)(end - p));
        if (!*end)
            break;
        fputc(',', f);
        p = end + 1;
    }
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- REDIS_SENTINELS ---- */

int cdb__config_check_sentinels(const char *name, const char *list, cdb_error *err)
{
    int i = 1;
    /* A URL or credentials here would be logged and shown by `coredb config`
     * as is: the sentinels' password has its own secret variable. */
    if (!cdb__config_url_chars_ok(list) || strpbrk(list, "@/?#%"))
        goto fail_syntax;
    for (const char *p = list;; i++) {
        size_t n = strcspn(p, ",");
        const char *colon = n > 0 ? memrchr(p, ':', n) : NULL;
        if (i > 16)
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: at most 16 sentinels", name);
        /* a host name or address: nothing that could be read as more than one */
        size_t hl = colon ? (size_t)(colon - p) : 0;
        bool chars_ok = p[0] == '[' ? strspn(p, "[]:.0123456789abcdefABCDEF") >= hl
                                    : strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                "0123456789.-_") == hl;
        if (!colon || colon == p + n - 1 || !chars_ok || !cdb__config_hostport_ok(p, n) ||
            (p[0] == '[' && colon < (const char *)memchr(p, ']', n)))
            return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                 "%s: sentinel %d must be host:port", name, i);
        if (!p[n])
            return 0;
        p += n + 1;
    }
fail_syntax:
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: must be a comma-separated host:port list, without credentials "
                         "(REDIS_SENTINEL_PASSWORD holds the sentinels' password)", name);
}
