/*
 * config.c - the effective configuration, read once from the environment.
 *
 * One static table (vars[]) describes every variable: its name, kind, the
 * field of cdb_config it fills, its default (as text, parsed exactly like a
 * value from the environment so defaults obey the same rules), its range and
 * an optional check that validates or rewrites a string. Loading, validation
 * and cdb_config_to_json all walk that table, so a variable cannot be loaded
 * but missing from `coredb config`, or printed without its redaction.
 *
 * What the table cannot express lives in derive(): defaults computed from
 * other values (BACKUP_DIR, HTTP_THREADS), the POSTGRES_* fallback for
 * DATABASE_URL, and checks across variables (DB_POOL_MIN <= DB_POOL_MAX,
 * JWT_SECRET required outside the embedded mode).
 *
 * Secrets never reach an error message, and their buffers are wiped before
 * being freed.
 */
#include "coredb/config.h"
#include "core/config_internal.h"
#include "core/netaddr.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <sodium.h>

#ifndef CDB_SOURCE_DIR
#define CDB_SOURCE_DIR "."
#endif
#ifndef CDB_PG_BINDIR
#define CDB_PG_BINDIR "/usr/lib/postgresql/15/bin"
#endif

#define SECRET_FILE_MAX (64 * 1024)
#define HTTP_THREADS_MAX 1024

enum kind {
    K_INT,     /* int; unit says which suffixes it takes */
    K_BOOL,    /* bool */
    K_STR,     /* char *, printed as is */
    K_URL,     /* char *, printed through cdb_config_redact_url */
    K_SECRET,  /* char *, printed as "[redacted]" */
    K_LEVEL,   /* cdb_log_level */
};

enum unit { U_COUNT, U_SEC, U_MS };

#define F_FILE 1u /* may come from NAME_FILE */

struct var;
/* Validates *val and may replace it (freeing the old string); on failure
 * *val is left for the caller to free. */
typedef int (*check_fn)(const struct var *v, char **val, cdb_error *err);

struct var {
    const char *name;
    enum kind   kind;
    size_t      off;       /* field in cdb_config */
    const char *def;       /* textual default; NULL = unset or derived */
    long        min, max;  /* K_INT, in the field's unit */
    enum unit   unit;
    unsigned    flags;
    check_fn    check;     /* string kinds only */
};

static int check_path(const struct var *v, char **val, cdb_error *err);
static int check_sslmode(const struct var *v, char **val, cdb_error *err);
static int check_schema(const struct var *v, char **val, cdb_error *err);
static int check_database_url(const struct var *v, char **val, cdb_error *err);
static int check_read_urls(const struct var *v, char **val, cdb_error *err);
static int check_redis_url(const struct var *v, char **val, cdb_error *err);
static int check_sentinels(const struct var *v, char **val, cdb_error *err);
static int check_master_name(const struct var *v, char **val, cdb_error *err);
static int check_sentinels(const struct var *v, char **val, cdb_error *err)
{
    return cdb__config_check_sentinels(v->name, *val, err);
}

/* Sentinel's own rule for a master name: no blanks, nothing to quote. */
static int check_master_name(const struct var *v, char **val, cdb_error *err)
{
    size_t n = strlen(*val);
    if (n >= 1 && n <= 64 && strspn(*val, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == n)
        return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: must be 1 to 64 letters, digits, '.', '-' or '_'", v->name);
}

static int check_jwt_secret(const struct var *v, char **val, cdb_error *err);
static int check_key(const struct var *v, char **val, cdb_error *err);
static int check_email(const struct var *v, char **val, cdb_error *err);
static int check_proxies(const struct var *v, char **val, cdb_error *err);

#define OFF(f) offsetof(cdb_config, f)
#define INT(n, f, d, lo, hi)  {n, K_INT, OFF(f), d, lo, hi, U_COUNT, 0, NULL}
#define SECS(n, f, d, lo, hi) {n, K_INT, OFF(f), d, lo, hi, U_SEC, 0, NULL}
#define MSEC(n, f, d, lo, hi) {n, K_INT, OFF(f), d, lo, hi, U_MS, 0, NULL}
#define BOOL(n, f, d)         {n, K_BOOL, OFF(f), d, 0, 0, U_COUNT, 0, NULL}
#define STR(n, f, d, chk)     {n, K_STR, OFF(f), d, 0, 0, U_COUNT, 0, chk}
#define URL(n, f, fl, chk)    {n, K_URL, OFF(f), NULL, 0, 0, U_COUNT, fl, chk}
#define SECRET(n, f, chk)     {n, K_SECRET, OFF(f), NULL, 0, 0, U_COUNT, F_FILE, chk}

/* The order here is the order of `coredb config`. Rules that involve more
 * than one variable live in derive(), after the whole table is loaded. */
static const struct var vars[] = {
    STR("HOST", host, NULL, NULL), /* derived: loopback when embedded */
    INT("PORT", port, "8095", 1, 65535),
    INT("HTTP_THREADS", http_threads, NULL, 1, HTTP_THREADS_MAX),
    SECS("HTTP_IDLE_TIMEOUT", http_idle_timeout_s, "60", 1, 86400),
    SECS("HTTP_HEADER_TIMEOUT", http_header_timeout_s, "10", 1, 3600),
    SECS("HTTP_BODY_TIMEOUT", http_body_timeout_s, "30", 1, 3600),
    INT("HTTP_MAX_CONNECTIONS_PER_IP", http_max_connections_per_ip, "256", 0, 1000000),
    INT("DOC_MAX_BYTES", doc_max_bytes, "2097152", 1024, 67108864),
    STR("TRUSTED_PROXIES", trusted_proxies, NULL, check_proxies),
    MSEC("SHUTDOWN_GRACE_MS", shutdown_grace_ms, "10000", 0, 3600000),
    MSEC("SHUTDOWN_DRAIN_MS", shutdown_drain_ms, "0", 0, 600000),

    URL("DATABASE_URL", database_url, F_FILE, check_database_url),
    URL("DATABASE_READ_URLS", database_read_urls, 0, check_read_urls),
    STR("POSTGRES_SCHEMA", postgres_schema, "public", check_schema),
    INT("DB_POOL_MIN", db_pool_min, "5", 0, 10000),
    INT("DB_POOL_MAX", db_pool_max, "20", 1, 10000),
    INT("DB_LOOP_CONNECTIONS", db_loop_connections, "2", 0, 64),
    MSEC("DB_POOL_IDLE_TIMEOUT", db_pool_idle_timeout_ms, "30000", 1, INT_MAX),
    MSEC("DB_POOL_ACQUIRE_TIMEOUT", db_pool_acquire_timeout_ms, "5000", 1, INT_MAX),
    MSEC("DB_STATEMENT_TIMEOUT", db_statement_timeout_ms, "30000", 0, INT_MAX),
    INT("DB_READ_POOL_MAX", db_read_pool_max, "0", 0, 10000),
    SECS("DB_REPLICA_MAX_LAG", db_replica_max_lag_s, "5", 1, 86400),
    MSEC("DB_REPLICA_SAMPLE_MS", db_replica_sample_ms, "1000", 50, 600000),
    STR("DB_SSLMODE", db_sslmode, "prefer", check_sslmode),
    INT("DB_CONNECT_RETRIES", db_connect_retries, "5", 0, 1000),

    URL("REDIS_URL", redis_url, F_FILE, check_redis_url),
    INT("REDIS_POOL_SIZE", redis_pool_size, "10", 1, 1000),
    STR("REDIS_SENTINELS", redis_sentinels, NULL, check_sentinels),
    STR("REDIS_MASTER_NAME", redis_master_name, "mymaster", check_master_name),
    SECRET("REDIS_SENTINEL_PASSWORD", redis_sentinel_password, NULL),

    SECRET("JWT_SECRET", jwt_secret, check_jwt_secret),
    SECRET("DB_ENCRYPTION_KEY", db_encryption_key, check_key),
    SECRET("DB_ENCRYPTION_KEY_PREVIOUS", db_encryption_key_previous, check_key),
    STR("COREDB_ADMIN_EMAIL", admin_email, NULL, check_email),
    SECRET("COREDB_ADMIN_PASSWORD", admin_password, NULL),

    SECS("ACCESS_TOKEN_TTL", access_token_ttl_s, "900", 1, INT_MAX),
    SECS("REFRESH_TOKEN_TTL", refresh_token_ttl_s, "2592000", 1, INT_MAX),
    SECS("SESSION_TIMEOUT", session_timeout_s, "1800", 1, INT_MAX),
    SECS("SESSION_MAX_LIFETIME", session_max_lifetime_s, "2592000", 1, INT_MAX),
    INT("SESSION_MAX_PER_USER", session_max_per_user, "5", 1, 100000),
    INT("PASSWORD_MIN_LENGTH", password_min_length, "10", 1, 1024),
    INT("LOGIN_MAX_FAILURES", login_max_failures, "10", 1, 100000),
    INT("LOGIN_MAX_FAILURES_PER_ADDRESS", login_max_failures_per_address, "50", 1, 1000000),
    SECS("LOGIN_FAILURE_WINDOW", login_failure_window_s, "900", 1, 86400),
    INT("PASSWORD_HASH_OPSLIMIT", password_hash_opslimit, "2", 1, 100),
    INT("PASSWORD_HASH_MEMLIMIT_KIB", password_hash_memlimit_kib, "65536", 8, 4194304),
    INT("AUTH_THREADS", auth_threads, NULL, 1, 1024),
    STR("JWT_ISSUER", jwt_issuer, "coredb", NULL),
    STR("JWT_AUDIENCE", jwt_audience, "coredb-api", NULL),
    /* Clocks of coredb instances agree to well under a second with NTP; a
     * minute caps how long a token may outlive ACCESS_TOKEN_TTL. */
    SECS("JWT_CLOCK_SKEW", jwt_clock_skew_s, "5", 0, 60),

    SECS("LEASE_TTL", lease_ttl_s, "300", 1, INT_MAX),
    SECS("LEASE_MAX_TTL", lease_max_ttl_s, "3600", 1, INT_MAX),
    INT("LEASE_MAX_PER_USER", lease_max_per_user, "4", 0, 100000),
    SECS("CACHE_TTL", cache_ttl_s, "300", 0, INT_MAX),
    INT("CACHE_L1_MB", cache_l1_mb, "32", 0, 65536),
    INT("RATE_LIMIT_ANON", rate_limit_anon, "20", 0, 1000000),
    INT("RATE_LIMIT_USER", rate_limit_user, "50", 0, 1000000),
    INT("RATE_LIMIT_PREMIUM", rate_limit_premium, "200", 0, 1000000),
    INT("RATE_LIMIT_ADMIN", rate_limit_admin, "0", 0, 1000000),

    STR("BACKUP_DIR", backup_dir, NULL, check_path),
    INT("BACKUP_RETENTION_COUNT", backup_retention_count, "7", 1, 100000),
    INT("BACKUP_RETENTION_DAYS", backup_retention_days, "30", 1, 100000),
    SECS("BACKUP_INTERVAL", backup_interval_s, "0", 0, INT_MAX),
    BOOL("BACKUP_ENCRYPT", backup_encrypt, "false"),
    INT("PROMETHEUS_PORT", prometheus_port, "9090", 0, 65535),
    STR("PROMETHEUS_HOST", prometheus_host, "127.0.0.1", NULL),
    BOOL("MIGRATE_ON_START", migrate_on_start, "true"),
    STR("MIGRATIONS_DIR", migrations_dir, CDB_SOURCE_DIR "/migrations", check_path),
    STR("COREDB_VAR_DIR", var_dir, "./var", check_path),
    STR("PG_BINDIR", pg_bindir, CDB_PG_BINDIR, check_path),

    {"LOG_LEVEL", K_LEVEL, OFF(log_level), "info", 0, 0, U_COUNT, 0, NULL},
    BOOL("DEBUG", debug, "false"),
};
#define NVARS (sizeof vars / sizeof vars[0])
_Static_assert(NVARS <= CDB_CONFIG_MAX_VARS, "raise CDB_CONFIG_MAX_VARS in coredb/config.h");

/* POSTGRES_* have no field: they are folded into DATABASE_URL when it is
 * absent. This descriptor only lends POSTGRES_PORT its range (its offset is
 * never used). */
static const struct var postgres_port = INT("POSTGRES_PORT", port, "5432", 1, 65535);

/* ---- small helpers ---- */

static void free_secret(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}

/* An empty variable counts as unset, as `FOO=` in a compose file means. */
static const char *nonempty(const char *s)
{
    return (s && *s) ? s : NULL;
}

/* Reads NAME_FILE's content: one trailing newline stripped, no NUL inside. */
static int read_secret_file(const char *fname, const char *path, char **out, cdb_error *err)
{
    int rc = 0;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: cannot read %s: %s", fname, path,
                             strerror(errno));
    if (!(buf = malloc(SECRET_FILE_MAX + 1))) {
        rc = cdb_error_oom(err);
        goto out_close;
    }
    size_t n = fread(buf, 1, SECRET_FILE_MAX + 1, f);
    if (ferror(f)) {
        rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: cannot read %s", fname, path);
        goto out_close;
    }
    if (n > SECRET_FILE_MAX) {
        rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: %s is larger than %d bytes", fname,
                           path, SECRET_FILE_MAX);
        goto out_close;
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    if (n == 0 || memchr(buf, '\0', n)) {
        rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: %s is empty or contains a NUL byte",
                           fname, path);
        goto out_close;
    }
    *out = buf;
    buf = NULL;
out_close:
    if (buf) {
        sodium_memzero(buf, SECRET_FILE_MAX + 1);
        free(buf);
    }
    fclose(f);
    return rc;
}

/* *out = malloc'd value of name (or of name_FILE's content) or NULL; *src
 * (when not NULL) says which of the two it was. */
static int read_env(const char *name, bool allow_file, cdb_env_lookup lookup, void *ud,
                    char **out, cdb_config_source *src, cdb_error *err)
{
    char fname[96];
    const char *plain = nonempty(lookup(name, ud));
    const char *path = NULL;

    *out = NULL;
    if (allow_file) {
        snprintf(fname, sizeof fname, "%s_FILE", name);
        path = nonempty(lookup(fname, ud));
    }
    if (plain && path)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: set either %s or %s, not both",
                             name, name, fname);
    if (src)
        *src = path ? CDB_CONFIG_FILE : plain ? CDB_CONFIG_ENV : CDB_CONFIG_DEFAULT;
    if (path)
        return read_secret_file(fname, path, out, err);
    /* the environment is text: `coredb config` prints every value as JSON */
    json_t *probe = plain ? json_string(plain) : NULL;
    if (plain && !probe)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: not valid UTF-8", name);
    json_decref(probe);
    if (plain && !(*out = strdup(plain)))
        return cdb_error_oom(err);
    return 0;
}

/* ---- scalar parsers ---- */

static int parse_int(const struct var *v, const char *s, int *out, cdb_error *err)
{
    static const char *const what[] = {"an integer", "a duration in seconds (or 30s, 5m, 2h, 30d)",
                                       "a duration in ms (or 500ms, 30s, 5m, 2h, 1d)"};
    static const char *const unit_name[] = {"", " seconds", " ms"};
    const char *p = s;
    bool neg = false;
    long long n = 0, mult = 1;

    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (!isdigit((unsigned char)*p))
        goto fail_syntax;
    for (; isdigit((unsigned char)*p); p++)
        if ((n = n * 10 + (*p - '0')) > 10000000000LL)
            n = 10000000000LL; /* beyond every max; keeps n * mult from overflowing */
    if (*p && v->unit == U_COUNT)
        goto fail_syntax;
    if (v->unit == U_SEC) {
        if (!*p || !strcmp(p, "s")) mult = 1;
        else if (!strcmp(p, "m")) mult = 60;
        else if (!strcmp(p, "h")) mult = 3600;
        else if (!strcmp(p, "d")) mult = 86400;
        else goto fail_syntax;
    } else if (v->unit == U_MS) {
        if (!*p || !strcmp(p, "ms")) mult = 1;
        else if (!strcmp(p, "s")) mult = 1000;
        else if (!strcmp(p, "m")) mult = 60000;
        else if (!strcmp(p, "h")) mult = 3600000;
        else if (!strcmp(p, "d")) mult = 86400000;
        else goto fail_syntax;
    }
    n *= mult;
    if (neg)
        n = -n;
    if (n < v->min || n > v->max)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: must be between %ld and %ld%s (got %.40s)",
                             v->name, v->min, v->max, unit_name[v->unit], s);
    *out = (int)n;
    return 0;
fail_syntax:
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: must be %s (got \"%.40s\")", v->name,
                         what[v->unit], s);
}

static int parse_bool(const struct var *v, const char *s, bool *out, cdb_error *err)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i]) || !strcasecmp(s, no[i])) {
            *out = !strcasecmp(s, yes[i]);
            return 0;
        }
    }
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: must be true/false, 1/0, yes/no or on/off (got \"%.40s\")", v->name, s);
}

/* ---- string checks ---- */

/* Relative paths are resolved now: the embedded PostgreSQL and the backup
 * tools run with other working directories. */
static int check_path(const struct var *v, char **val, cdb_error *err)
{
    const char *rel = *val;
    char *cwd, *abs;
    if (rel[0] == '/')
        return 0;
    if (!(cwd = realpath(".", NULL)))
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: cannot resolve the current directory: %s",
                             v->name, strerror(errno));
    while (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    int n = (!strcmp(rel, ".") || !*rel) ? asprintf(&abs, "%s", cwd) : asprintf(&abs, "%s/%s", cwd, rel);
    free(cwd);
    if (n < 0)
        return cdb_error_oom(err);
    free(*val);
    *val = abs;
    return 0;
}

static int check_sslmode(const struct var *v, char **val, cdb_error *err)
{
    static const char *const modes[] = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(*val, modes[i]))
            return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: must be disable, allow, prefer, require, verify-ca or verify-full (got \"%.40s\")",
                         v->name, *val);
}

/* The schema ends up in SQL (search_path), so only plain identifiers. */
static int check_schema(const struct var *v, char **val, cdb_error *err)
{
    const char *s = *val;
    bool ok = strlen(s) <= 63 && (isalpha((unsigned char)*s) || *s == '_');
    for (; ok && *s; s++)
        ok = isalnum((unsigned char)*s) || *s == '_';
    return ok ? 0 : cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                  "%s: must be an identifier of letters, digits and _ (at most 63)", v->name);
}

/* The public normalizer knows no variable name; prefix it. */
static int normalize_as(const char *name, const char *url, char **out, cdb_error *err)
{
    cdb_error inner;
    cdb_error_init(&inner);
    *out = cdb_config_normalize_database_url(url, &inner);
    if (!*out)
        cdb_error_set(err, inner.code, "%s: %s", name, inner.message);
    cdb_error_destroy(&inner);
    return *out ? 0 : (err ? err->code : CDB_ERR_CONFIG_INVALID);
}

static int check_database_url(const struct var *v, char **val, cdb_error *err)
{
    char *norm;
    int rc = normalize_as(v->name, *val, &norm, err);
    if (rc < 0)
        return rc;
    free_secret(*val);
    *val = norm;
    return 0;
}

static int check_read_urls(const struct var *v, char **val, cdb_error *err)
{
    int rc = 0, i = 1;
    char *norm = NULL, *item = NULL, *list = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&list, &len);
    if (!f)
        return cdb_error_oom(err);
    for (const char *p = *val;; i++) {
        const char *end = cdb__config_url_end(p);
        if (!(item = strndup(p, (size_t)(end - p)))) {
            rc = cdb_error_oom(err);
            goto out_close;
        }
        cdb_error inner;
        cdb_error_init(&inner);
        if (!(norm = cdb_config_normalize_database_url(item, &inner))) {
            rc = cdb_error_set(err, inner.code, "%s: URL %d: %s", v->name, i, inner.message);
            cdb_error_destroy(&inner);
            goto out_close;
        }
        fprintf(f, "%s%s", i > 1 ? "," : "", norm);
        free_secret(norm);
        free_secret(item);
        norm = item = NULL;
        if (!*end)
            break;
        p = end + 1;
    }
out_close:
    free_secret(item);
    bool bad = ferror(f) != 0;
    if ((fclose(f) != 0 || bad) && rc == 0)
        rc = cdb_error_oom(err);
    if (rc < 0) {
        free_secret(list);
        return rc;
    }
    free_secret(*val);
    *val = list;
    return 0;
}

static int check_redis_url(const struct var *v, char **val, cdb_error *err)
{
    return cdb__config_check_redis_url(v->name, *val, err);
}

static int check_jwt_secret(const struct var *v, char **val, cdb_error *err)
{
    if (strlen(*val) >= 32)
        return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: must be at least 32 bytes", v->name);
}

/* 32 bytes as 64 hex digits or as base64 (standard or url-safe, padded or not). */
static int check_key(const struct var *v, char **val, cdb_error *err)
{
    static const int variants[] = {sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
                                   sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
    unsigned char bin[64];
    const char *s = *val, *end = NULL;
    size_t n = strlen(s), len = 0;
    bool ok = n == 64 && sodium_hex2bin(bin, sizeof bin, s, n, NULL, &len, &end) == 0 &&
              end == s + n && len == 32;
    for (size_t i = 0; !ok && i < sizeof variants / sizeof variants[0]; i++)
        ok = sodium_base642bin(bin, sizeof bin, s, n, NULL, &len, &end, variants[i]) == 0 &&
             end == s + n && len == 32;
    sodium_memzero(bin, sizeof bin);
    return ok ? 0 : cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                                  "%s: must be 32 bytes encoded as base64 or as 64 hex digits", v->name);
}

static int check_email(const struct var *v, char **val, cdb_error *err)
{
    const char *at = strchr(*val, '@');
    if (at && at != *val && at[1] && !strchr(*val, ' '))
        return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: not an email address", v->name);
}

static int check_proxies(const struct var *v, char **val, cdb_error *err)
{
    cdb_netmask list[CDB_NETMASK_MAX];
    if (cdb_netmask_parse_list(*val, list, CDB_NETMASK_MAX) >= 0)
        return 0;
    return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                         "%s: not a comma-separated list of IP addresses or CIDR ranges (at most %d)",
                         v->name, CDB_NETMASK_MAX);
}

/* ---- loading ---- */

static int load_var(cdb_config *cfg, const struct var *v, cdb_env_lookup lookup, void *ud, cdb_error *err)
{
    void *field = (char *)cfg + v->off;
    char *val;
    cdb_config_source src;
    int rc = read_env(v->name, v->flags & F_FILE, lookup, ud, &val, &src, err);
    if (rc < 0)
        return rc;
    cfg->sources[v - vars] = (unsigned char)src;
    if (!val && v->def && !(val = strdup(v->def)))
        return cdb_error_oom(err);
    if (!val)
        return 0;
    switch (v->kind) {
    case K_INT:
        rc = parse_int(v, val, field, err);
        break;
    case K_BOOL:
        rc = parse_bool(v, val, field, err);
        break;
    case K_LEVEL: {
        int level = cdb_log_level_parse(val);
        if (level < 0)
            rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                               "%s: must be debug, info, warn or error (got \"%.40s\")", v->name, val);
        else
            *(cdb_log_level *)field = (cdb_log_level)level;
        break;
    }
    case K_STR:
    case K_URL:
    case K_SECRET: {
        /* Non-secret strings are printed by `coredb config`, which needs UTF-8. */
        json_t *probe = v->kind == K_SECRET ? NULL : json_string(val);
        if (v->kind != K_SECRET && !probe) {
            rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "%s: not valid UTF-8", v->name);
            break;
        }
        json_decref(probe);
        if (v->check && (rc = v->check(v, &val, err)) < 0)
            break;
        *(char **)field = val;
        val = NULL;
        break;
    }
    }
    free_secret(val);
    return rc;
}

/* DATABASE_URL from POSTGRES_*; leaves it NULL (embedded) when none is set. */
static int assemble_database_url(cdb_config *cfg, cdb_env_lookup lookup, void *ud, cdb_error *err)
{
    const char *user = nonempty(lookup("POSTGRES_USER", ud));
    const char *host = nonempty(lookup("POSTGRES_HOST", ud));
    const char *port_s = nonempty(lookup("POSTGRES_PORT", ud));
    const char *db = nonempty(lookup("POSTGRES_DB", ud));
    char *pw = NULL, *euser = NULL, *epw = NULL, *ehost = NULL, *edb = NULL, *url = NULL;
    int port = 5432, rc = read_env("POSTGRES_PASSWORD", true, lookup, ud, &pw, NULL, err);

    if (rc < 0 || (!user && !pw && !host && !port_s && !db))
        return rc;
    if (port_s && (rc = parse_int(&postgres_port, port_s, &port, err)) < 0)
        goto out;
    if (!host)
        host = "localhost";
    bool socket = host[0] == '/', ipv6 = strchr(host, ':') != NULL;
    char literal[CDB_IP_TEXT_MAX];
    /* an IPv6 host goes into the URL as is, between brackets: it must be one */
    if (ipv6 && !socket && !cdb_ip_canonical(host, strlen(host), literal)) {
        rc = cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                           "POSTGRES_HOST: a host with ':' must be an IPv6 address");
        goto out;
    }
    if ((user && !(euser = cdb__config_pct_encode(user))) || (pw && !(epw = cdb__config_pct_encode(pw))) ||
        !(ehost = ipv6 ? strdup(host) : cdb__config_pct_encode(host)) || !(edb = cdb__config_pct_encode(db ? db : ""))) {
        rc = cdb_error_oom(err);
        goto out;
    }
    int n = socket ? asprintf(&url, "postgresql://%s%s%s%s/%s?host=%s&port=%d", euser ? euser : "",
                              epw ? ":" : "", epw ? epw : "", (user || pw) ? "@" : "", edb, ehost, port)
                   : asprintf(&url, "postgresql://%s%s%s%s%s%s%s:%d/%s", euser ? euser : "",
                              epw ? ":" : "", epw ? epw : "", (user || pw) ? "@" : "", ipv6 ? "[" : "",
                              ehost, ipv6 ? "]" : "", port, edb);
    if (n < 0) {
        url = NULL;
        rc = cdb_error_oom(err);
        goto out;
    }
    rc = normalize_as("POSTGRES_HOST", url, &cfg->database_url, err);
    if (rc == 0)
        cdb_config_set_source(cfg, "DATABASE_URL", CDB_CONFIG_ENV);
out:
    free_secret(pw);
    free_secret(epw);
    free_secret(url);
    free(euser);
    free(ehost);
    free(edb);
    return rc;
}

/* Defaults computed from other values, and rules across variables. */
static int derive(cdb_config *cfg, cdb_env_lookup lookup, void *ud, cdb_error *err)
{
    int rc;
    if (!cfg->database_url && (rc = assemble_database_url(cfg, lookup, ud, err)) < 0)
        return rc;
    cfg->embedded = cfg->database_url == NULL;
    /* The embedded cluster trusts local connections and its admin is
     * generated: a development start stays on loopback unless HOST says
     * otherwise. */
    if (!cfg->host && !(cfg->host = strdup(cfg->embedded ? "127.0.0.1" : "0.0.0.0")))
        return cdb_error_oom(err);

    if (cfg->http_threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->http_threads = cores < 1 ? 1 : cores > HTTP_THREADS_MAX ? HTTP_THREADS_MAX : (int)cores;
    }
    if (cfg->auth_threads == 0) {
        /* argon2id is CPU-bound: leave at least half the cores to other traffic */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->auth_threads = cores < 2 ? 1 : (int)(cores / 2);
    }
    if (!cfg->backup_dir && asprintf(&cfg->backup_dir, "%s/backups", cfg->var_dir) < 0) {
        cfg->backup_dir = NULL;
        return cdb_error_oom(err);
    }
    if (cfg->db_pool_min > cfg->db_pool_max)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID, "DB_POOL_MIN: must be <= DB_POOL_MAX (%d)",
                             cfg->db_pool_max);
    if (!cfg->embedded && !cfg->jwt_secret)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "JWT_SECRET: required (at least 32 bytes) when a database is configured");
    if (cfg->admin_email && !cfg->admin_password)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "COREDB_ADMIN_PASSWORD: required when COREDB_ADMIN_EMAIL is set");
    if (cfg->admin_password && !cfg->admin_email)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "COREDB_ADMIN_EMAIL: required when COREDB_ADMIN_PASSWORD is set");
    if (cfg->redis_sentinel_password && !cfg->redis_sentinels)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "REDIS_SENTINEL_PASSWORD: set without REDIS_SENTINELS");
    if (cfg->debug && !nonempty(lookup("LOG_LEVEL", ud)))
        cfg->log_level = CDB_LOG_DEBUG;
    return 0;
}

const char *cdb_env_process(const char *name, void *ud)
{
    (void)ud;
    return getenv(name);
}

int cdb_config_load(cdb_config *cfg, cdb_env_lookup lookup, void *ud, cdb_error *err)
{
    int rc = 0;
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NVARS && rc == 0; i++)
        rc = load_var(cfg, &vars[i], lookup, ud, err);
    if (rc == 0)
        rc = derive(cfg, lookup, ud, err);
    if (rc < 0)
        cdb_config_destroy(cfg);
    return rc;
}

void cdb_config_destroy(cdb_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        if (v->kind == K_STR || v->kind == K_URL || v->kind == K_SECRET)
            free_secret(*(char **)((char *)cfg + v->off));
    }
    memset(cfg, 0, sizeof *cfg);
}

static const struct var *find_var(const char *name)
{
    for (size_t i = 0; i < NVARS; i++)
        if (strcmp(vars[i].name, name) == 0)
            return &vars[i];
    return NULL;
}

cdb_config_source cdb_config_source_of(const cdb_config *cfg, const char *name)
{
    const struct var *v = find_var(name);
    return v ? (cdb_config_source)cfg->sources[v - vars] : CDB_CONFIG_DEFAULT;
}

void cdb_config_set_source(cdb_config *cfg, const char *name, cdb_config_source src)
{
    const struct var *v = find_var(name);
    if (v)
        cfg->sources[v - vars] = (unsigned char)src;
}

const char *cdb_config_source_name(cdb_config_source src)
{
    switch (src) {
    case CDB_CONFIG_ENV:          return "env";
    case CDB_CONFIG_FILE:         return "file";
    case CDB_CONFIG_SECRETS_FILE: return "var/secrets.env";
    case CDB_CONFIG_DEFAULT:      break;
    }
    return "default";
}

json_t *cdb_config_to_json(const cdb_config *cfg)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (size_t i = 0; i < NVARS; i++) {
        const struct var *v = &vars[i];
        const void *field = (const char *)cfg + v->off;
        const char *s = NULL;
        json_t *j = NULL;
        if (v->kind == K_STR || v->kind == K_URL || v->kind == K_SECRET)
            s = *(char *const *)field;
        switch (v->kind) {
        case K_INT:    j = json_integer(*(const int *)field); break;
        case K_BOOL:   j = json_boolean(*(const bool *)field); break;
        case K_LEVEL:  j = json_string(cdb_log_level_name(*(const cdb_log_level *)field)); break;
        case K_STR:    j = s ? json_string(s) : json_null(); break;
        case K_SECRET: j = s ? json_string(REDACTED) : json_null(); break;
        case K_URL:
            if (s) {
                char *r = cdb_config_redact_url(s);
                j = r ? json_string(r) : NULL;
                free(r);
            } else {
                j = json_null();
            }
            break;
        }
        if (!j || json_object_set_new(o, v->name, j) < 0)
            goto fail_free_object;
    }
    if (json_object_set_new(o, "embedded", json_boolean(cfg->embedded)) < 0)
        goto fail_free_object;
    json_t *sources = json_object();
    if (!sources || json_object_set_new(o, "sources", sources) < 0)
        goto fail_free_object;
    for (size_t i = 0; i < NVARS; i++) {
        const char *name = cdb_config_source_name((cdb_config_source)cfg->sources[i]);
        if (json_object_set_new(sources, vars[i].name, json_string(name)) < 0)
            goto fail_free_object;
    }
    return o;
fail_free_object:
    json_decref(o);
    return NULL;
}
