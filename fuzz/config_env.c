/*
 * config_env.c - libFuzzer harness: configuration from the environment
 * (cdb_config_load, src/core/config.c and config_url.c): every variable's
 * parser (integers, booleans, paths, sslmode, schema, secrets, keys,
 * e-mail), DATABASE_URL and DATABASE_READ_URLS normalization, REDIS_URL,
 * the DATABASE_URL assembled from POSTGRES_* parts, the rules across
 * variables, then cdb_config_to_json (what `coredb config` prints) and
 * cdb_config_redact_url on every value.
 *
 * The input is "NAME=VALUE" lines; NAME_FILE variables are not answered
 * (no file is read). Oracles: the printed configuration never holds the
 * value of a secret (JWT_SECRET, COREDB_ADMIN_PASSWORD, DB_ENCRYPTION_KEY*)
 * nor a URL's password; a loaded configuration can always be printed; a
 * failure is CONFIG_INVALID.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "coredb/config.h"

#define MAX_VARS 64

typedef struct env {
    char *names[MAX_VARS], *values[MAX_VARS];
    int n;
} env;

static const char *lookup(const char *name, void *ud)
{
    const env *e = ud;
    size_t n = strlen(name);
    if (n > 5 && strcmp(name + n - 5, "_FILE") == 0)
        return NULL;
    for (int i = e->n - 1; i >= 0; i--)
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    return NULL;
}

/* True when s occurs in some value other than the one of `self`, or in a name. */
/*
 * The configuration printed from an empty environment: its keys and default
 * values are in every dump, so a secret equal to one of them (a fuzzer's
 * "RATE_LIMIT_USER") is not a leak.
 */
static const char *baseline_dump(void)
{
    static char *dump;
    if (!dump) {
        env none = {.n = 0};
        cdb_config cfg;
        cdb_error err;
        cdb_error_init(&err);
        json_t *j = cdb_config_load(&cfg, lookup, &none, &err) == 0 ? cdb_config_to_json(&cfg) : NULL;
        if (!j || !(dump = json_dumps(j, JSON_COMPACT)))
            abort();
        json_decref(j);
        cdb_config_destroy(&cfg);
        cdb_error_destroy(&err);
    }
    return dump;
}

static bool occurs_elsewhere(const env *e, int self, const char *s)
{
    for (int i = 0; i < e->n; i++)
        if ((i != self && strstr(e->values[i], s)) || strstr(e->names[i], s))
            return true;
    return strstr("[redacted]postgresql://redis://rediss://embedded sources default env file", s) != NULL ||
           strstr(baseline_dump(), s) != NULL;
}

/* The password of "scheme://user:PASSWORD@..." (malloc'd) or NULL. */
static char *url_password(const char *url)
{
    const char *p = strstr(url, "://");
    if (!p)
        return NULL;
    p += 3;
    size_t auth = strcspn(p, "@/?#");
    if (p[auth] != '@')
        return NULL;
    const char *colon = memchr(p, ':', auth);
    if (!colon || (size_t)(p + auth - colon - 1) < 8)
        return NULL;
    return strndup(colon + 1, (size_t)(p + auth - colon - 1));
}

/* True when pw occurs in value more than once (then its text is also host, path or query). */
static bool repeated(const char *value, const char *pw)
{
    const char *first = strstr(value, pw);
    return first && strstr(first + 1, pw);
}

static void die(const char *why, const char *what, const char *text)
{
    fprintf(stderr, "config oracle: %s (%s) in:\n%s\n", why, what, text);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const secrets[] = {"JWT_SECRET", "COREDB_ADMIN_PASSWORD", "DB_ENCRYPTION_KEY",
                                          "DB_ENCRYPTION_KEY_PREVIOUS", NULL};
    if (size > 8192)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';
    env e = {.n = 0};
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && e.n < MAX_VARS;
         line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        e.names[e.n] = line;
        e.values[e.n++] = eq + 1;
    }
    cdb_config cfg;
    cdb_error err;
    cdb_error_init(&err);
    int rc = cdb_config_load(&cfg, lookup, &e, &err);
    if (rc == 0) {
        json_t *j = cdb_config_to_json(&cfg);
        char *dump = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (!dump)
            die("a loaded configuration cannot be printed", "cdb_config_to_json", text);
        for (int i = 0; i < e.n; i++) {
            for (const char *const *s = secrets; *s; s++)
                if (strcmp(e.names[i], *s) == 0 && lookup(*s, &e) == e.values[i] && strlen(e.values[i]) >= 12 &&
                    !occurs_elsewhere(&e, i, e.values[i]) && strstr(dump, e.values[i]))
                    die("a secret is printed", *s, dump);
            bool is_url = !strcmp(e.names[i], "DATABASE_URL") || !strcmp(e.names[i], "DATABASE_READ_URLS") ||
                          !strcmp(e.names[i], "REDIS_URL");
            char *pw = is_url ? url_password(e.values[i]) : NULL;
            if (pw && lookup(e.names[i], &e) == e.values[i] && !occurs_elsewhere(&e, i, pw) &&
                !repeated(e.values[i], pw) && strstr(dump, pw))
                die("a URL password is printed", e.names[i], dump);
            free(pw);
        }
        free(dump);
        json_decref(j);
        cdb_config_destroy(&cfg);
    } else if (rc != CDB_ERR_CONFIG_INVALID) {
        die("unexpected code", cdb_err_name((cdb_err)rc), text);
    }
    cdb_error_destroy(&err);
    for (int i = 0; i < e.n; i++) {
        cdb_error_init(&err);
        char *norm = cdb_config_normalize_database_url(e.values[i], &err);
        char *red = cdb_config_redact_url(norm ? norm : e.values[i]);
        char *pw = url_password(norm ? norm : e.values[i]);
        if (red && pw && !strstr(pw, "[redacted]") && strstr(red, pw) && !occurs_elsewhere(&e, -1, pw) &&
            !repeated(norm ? norm : e.values[i], pw)) {
            const char *host = strchr(red, '@');
            if (!host || !strstr(host, pw))   /* the same text in the host or path is not the password */
                die("cdb_config_redact_url leaves the password", pw, red);
        }
        free(pw), free(red), free(norm);
        cdb_error_destroy(&err);
    }
    free(text);
    return 0;
}
