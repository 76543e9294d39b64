/*
 * test_config.c - unit tests of the configuration loader (src/core/config.c).
 *
 * The loader reads through a lookup function, so every test fills a fake
 * environment (a static array of name/value pairs) instead of touching the
 * process environment.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "coredb/config.h"

#define JWT "0123456789abcdef0123456789abcdef-jwt"

static const char *env[64][2];
static int nenv;

static const char *fake_lookup(const char *name, void *ud)
{
    (void)ud;
    for (int i = 0; i < nenv; i++)
        if (!strcmp(env[i][0], name))
            return env[i][1];
    return NULL;
}

static void set(const char *name, const char *value)
{
    assert_true(nenv < 64);
    env[nenv][0] = name;
    env[nenv][1] = value;
    nenv++;
}

static int reset(void **state)
{
    (void)state;
    nenv = 0;
    return 0;
}

static int load(cdb_config *cfg, cdb_error *err)
{
    cdb_error_init(err);
    return cdb_config_load(cfg, fake_lookup, NULL, err);
}

static void assert_loads(cdb_config *cfg)
{
    cdb_error err;
    int rc = load(cfg, &err);
    if (rc != 0)
        fail_msg("unexpected error: %s", err.message);
    cdb_error_destroy(&err);
}

/* Loading fails with CONFIG_INVALID and a message starting with "prefix". */
static void assert_invalid(const char *prefix, const char *secret)
{
    cdb_config cfg;
    cdb_error err;
    int rc = load(&cfg, &err);
    if (rc != CDB_ERR_CONFIG_INVALID)
        fail_msg("expected an error starting with \"%s\", got %d (%s)", prefix, rc, err.message);
    assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
    if (strncmp(err.message, prefix, strlen(prefix)) != 0)
        fail_msg("message \"%s\" does not start with \"%s\"", err.message, prefix);
    if (secret)
        assert_null(strstr(err.message, secret));
    assert_null(cfg.host); /* left destroyed */
    cdb_error_destroy(&err);
}

static char *write_temp(const char *content)
{
    char *path = strdup("/tmp/test_config_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

/* HOST: loopback by default for the embedded (trust-auth) cluster, every
 * address with a configured database, and an explicit value always wins. */
static void test_host_default(void **state)
{
    (void)state;
    cdb_config cfg;
    set("HOST", "0.0.0.0");
    assert_loads(&cfg);
    assert_true(cfg.embedded);
    assert_string_equal(cfg.host, "0.0.0.0");
    cdb_config_destroy(&cfg);

    nenv = 0;
    set("DATABASE_URL", "postgresql://app@db/main");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_false(cfg.embedded);
    assert_string_equal(cfg.host, "0.0.0.0");
    cdb_config_destroy(&cfg);

    set("HOST", "127.0.0.2");
    assert_loads(&cfg);
    assert_string_equal(cfg.host, "127.0.0.2");
    cdb_config_destroy(&cfg);
}

static void test_defaults(void **state)
{
    (void)state;
    cdb_config cfg;
    assert_loads(&cfg);
    assert_string_equal(cfg.host, "127.0.0.1"); /* embedded: loopback */
    assert_int_equal(cfg.port, 8095);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(cfg.http_threads, cores < 1 ? 1 : cores);
    assert_int_equal(cfg.http_idle_timeout_s, 60);
    assert_int_equal(cfg.shutdown_grace_ms, 10000);
    assert_null(cfg.database_url);
    assert_null(cfg.database_read_urls);
    assert_true(cfg.embedded);
    assert_string_equal(cfg.postgres_schema, "public");
    assert_int_equal(cfg.db_pool_min, 5);
    assert_int_equal(cfg.db_pool_max, 20);
    assert_int_equal(cfg.db_pool_idle_timeout_ms, 30000);
    assert_int_equal(cfg.db_pool_acquire_timeout_ms, 5000);
    assert_int_equal(cfg.db_statement_timeout_ms, 30000);
    assert_string_equal(cfg.db_sslmode, "prefer");
    assert_int_equal(cfg.db_connect_retries, 5);
    assert_null(cfg.redis_url);
    assert_int_equal(cfg.redis_pool_size, 10);
    assert_null(cfg.jwt_secret);
    assert_null(cfg.db_encryption_key);
    assert_null(cfg.admin_email);
    assert_null(cfg.admin_password);
    assert_int_equal(cfg.access_token_ttl_s, 900);
    assert_int_equal(cfg.refresh_token_ttl_s, 2592000);
    assert_int_equal(cfg.session_timeout_s, 1800);
    assert_int_equal(cfg.session_max_lifetime_s, 2592000);
    assert_int_equal(cfg.session_max_per_user, 5);
    assert_int_equal(cfg.password_min_length, 10);
    assert_int_equal(cfg.login_max_failures, 10);
    assert_int_equal(cfg.lease_ttl_s, 300);
    assert_int_equal(cfg.lease_max_per_user, 4);
    assert_int_equal(cfg.cache_ttl_s, 300);
    assert_int_equal(cfg.rate_limit_anon, 20);
    assert_int_equal(cfg.rate_limit_user, 50);
    assert_int_equal(cfg.rate_limit_premium, 200);
    assert_int_equal(cfg.rate_limit_admin, 0);
    assert_int_equal(cfg.backup_retention_count, 7);
    assert_int_equal(cfg.backup_retention_days, 30);
    assert_int_equal(cfg.backup_interval_s, 0);
    assert_int_equal(cfg.prometheus_port, 9090);
    assert_string_equal(cfg.prometheus_host, "127.0.0.1");
    assert_true(cfg.migrate_on_start);
    assert_int_equal(cfg.log_level, CDB_LOG_INFO);
    assert_false(cfg.debug);
    assert_int_equal(cfg.jwt_clock_skew_s, 5);

    char *cwd = realpath(".", NULL), *expect;
    assert_non_null(cwd);
    assert_true(asprintf(&expect, "%s/var", cwd) > 0);
    assert_string_equal(cfg.var_dir, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/var/backups", cwd) > 0);
    assert_string_equal(cfg.backup_dir, expect);
    free(expect);
    free(cwd);
    assert_true(cfg.migrations_dir[0] == '/');
    size_t n = strlen(cfg.migrations_dir);
    assert_true(n > 11 && !strcmp(cfg.migrations_dir + n - 11, "/migrations"));
    assert_true(cfg.pg_bindir && cfg.pg_bindir[0] == '/');
    cdb_config_destroy(&cfg);
}

static void test_overrides(void **state)
{
    (void)state;
    cdb_config cfg;
    set("PORT", "9000");
    set("HOST", "127.0.0.1");
    set("HTTP_THREADS", "3");
    set("DB_SSLMODE", "verify-full");
    set("COREDB_VAR_DIR", "/srv/coredb");
    set("BACKUP_DIR", "bk");
    set("PROMETHEUS_PORT", "0");
    set("RATE_LIMIT_ADMIN", "1000");
    set("COREDB_ADMIN_EMAIL", "root@example.com");
    set("COREDB_ADMIN_PASSWORD", "correct horse battery");
    set("POSTGRES_SCHEMA", "app_1");
    set("JWT_CLOCK_SKEW", "0");
    assert_loads(&cfg);
    assert_int_equal(cfg.jwt_clock_skew_s, 0);
    assert_int_equal(cfg.port, 9000);
    assert_string_equal(cfg.host, "127.0.0.1");
    assert_int_equal(cfg.http_threads, 3);
    assert_string_equal(cfg.db_sslmode, "verify-full");
    assert_string_equal(cfg.var_dir, "/srv/coredb");
    assert_true(cfg.backup_dir[0] == '/');
    assert_non_null(strstr(cfg.backup_dir, "/bk"));
    assert_int_equal(cfg.prometheus_port, 0);
    assert_int_equal(cfg.rate_limit_admin, 1000);
    assert_string_equal(cfg.admin_email, "root@example.com");
    assert_string_equal(cfg.admin_password, "correct horse battery");
    assert_string_equal(cfg.postgres_schema, "app_1");
    cdb_config_destroy(&cfg);

    /* the top of JWT_CLOCK_SKEW's range, also written as a duration */
    nenv = 0;
    set("JWT_CLOCK_SKEW", "1m");
    assert_loads(&cfg);
    assert_int_equal(cfg.jwt_clock_skew_s, 60);
    cdb_config_destroy(&cfg);
}

static void test_invalid_values(void **state)
{
    (void)state;
    static const char *const cases[][3] = {
        /* variable, value, expected message prefix */
        {"PORT", "abc", "PORT:"},
        {"PORT", "0", "PORT:"},
        {"PORT", "65536", "PORT:"},
        {"PORT", "-1", "PORT:"},
        {"PORT", "80s", "PORT:"},
        {"PORT", "99999999999999999999999", "PORT:"},
        {"PROMETHEUS_PORT", "65536", "PROMETHEUS_PORT:"},
        {"PROMETHEUS_PORT", "-1", "PROMETHEUS_PORT:"},
        {"HTTP_THREADS", "0", "HTTP_THREADS:"},
        {"DB_POOL_MAX", "0", "DB_POOL_MAX:"},
        {"DB_POOL_MIN", "-3", "DB_POOL_MIN:"},
        {"DB_POOL_MIN", "five", "DB_POOL_MIN:"},
        {"DB_POOL_IDLE_TIMEOUT", "5x", "DB_POOL_IDLE_TIMEOUT:"},
        {"DB_STATEMENT_TIMEOUT", "-5s", "DB_STATEMENT_TIMEOUT:"},
        {"ACCESS_TOKEN_TTL", "10ms", "ACCESS_TOKEN_TTL:"},
        {"REFRESH_TOKEN_TTL", "", NULL}, /* empty = unset: valid */
        {"SESSION_TIMEOUT", "1.5h", "SESSION_TIMEOUT:"},
        {"CACHE_TTL", "-1", "CACHE_TTL:"},
        {"JWT_CLOCK_SKEW", "61", "JWT_CLOCK_SKEW: must be between 0 and 60 seconds"},
        {"JWT_CLOCK_SKEW", "-1", "JWT_CLOCK_SKEW:"},
        {"JWT_CLOCK_SKEW", "2m", "JWT_CLOCK_SKEW:"},
        {"JWT_CLOCK_SKEW", "5ms", "JWT_CLOCK_SKEW:"},
        {"LOG_LEVEL", "loud", "LOG_LEVEL:"},
        {"DB_SSLMODE", "maybe", "DB_SSLMODE:"},
        {"DEBUG", "maybe", "DEBUG:"},
        {"MIGRATE_ON_START", "2", "MIGRATE_ON_START:"},
        {"REDIS_URL", "http://localhost:6379", "REDIS_URL:"},
        {"REDIS_URL", "redis://", "REDIS_URL:"},
        {"REDIS_URL", "redis://h:99999", "REDIS_URL:"},
        {"REDIS_URL", "redis://h:6379/x", "REDIS_URL:"},
        {"REDIS_URL", "redis://secretpw@h", "REDIS_URL:"},
        {"REDIS_URL", "rediss://h:6380", "REDIS_URL: TLS to Redis is not supported"},
        {"REDIS_SENTINELS", "h1:26379,[::1]:26380,s-2.example_x:1", NULL},
        {"REDIS_SENTINELS", "h1", "REDIS_SENTINELS: sentinel 1 must be host:port"},
        {"REDIS_SENTINELS", "h1:26379,h2", "REDIS_SENTINELS: sentinel 2 must be host:port"},
        {"REDIS_SENTINELS", "h1:26379,", "REDIS_SENTINELS: sentinel 2 must be host:port"},
        {"REDIS_SENTINELS", "[::1]", "REDIS_SENTINELS: sentinel 1 must be host:port"},
        {"REDIS_SENTINELS", "h1:0", "REDIS_SENTINELS:"},
        {"REDIS_SENTINELS", "h;x:1", "REDIS_SENTINELS:"},
        {"REDIS_SENTINELS", ":secretpw@h1:26379", "REDIS_SENTINELS:"},
        {"REDIS_SENTINELS", "redis://h1:26379", "REDIS_SENTINELS:"},
        {"REDIS_MASTER_NAME", "bad name", "REDIS_MASTER_NAME:"},
        {"REDIS_MASTER_NAME", "", NULL}, /* empty = unset: the default */
        {"REDIS_SENTINEL_PASSWORD", "secretpw", "REDIS_SENTINEL_PASSWORD: set without REDIS_SENTINELS"},
        {"DATABASE_URL", "mysql://u:pw@h/db", "DATABASE_URL:"},
        {"DB_ENCRYPTION_KEY", "tooshort", "DB_ENCRYPTION_KEY:"},
        {"DB_ENCRYPTION_KEY", "zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
         "DB_ENCRYPTION_KEY:"},
        {"POSTGRES_PORT", "x", "POSTGRES_PORT:"},
        {"POSTGRES_PORT", "70000", "POSTGRES_PORT:"},
        {"DATABASE_READ_URLS", "postgresql://h/db,garbage", "DATABASE_READ_URLS:"},
        {"POSTGRES_SCHEMA", "bad;drop", "POSTGRES_SCHEMA:"},
        {"COREDB_ADMIN_EMAIL", "nobody", "COREDB_ADMIN_EMAIL:"},
        {"HOST", "\xff\xfe", "HOST:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nenv = 0;
        set(cases[i][0], cases[i][1]);
        set("JWT_SECRET", JWT);
        set("COREDB_ADMIN_PASSWORD", "admin-password-1");
        if (strcmp(cases[i][0], "COREDB_ADMIN_EMAIL"))
            set("COREDB_ADMIN_EMAIL", "a@b.c");
        if (!cases[i][2]) {
            cdb_config cfg;
            assert_loads(&cfg);
            cdb_config_destroy(&cfg);
            continue;
        }
        assert_invalid(cases[i][2], "secretpw");
    }
}

static void test_pool_min_above_max(void **state)
{
    (void)state;
    cdb_config cfg;
    cdb_error err;
    set("DB_POOL_MIN", "30");
    assert_int_equal(load(&cfg, &err), CDB_ERR_CONFIG_INVALID);
    assert_string_equal(err.message, "DB_POOL_MIN: must be <= DB_POOL_MAX (20)");
    cdb_error_destroy(&err);

    nenv = 0;
    set("DB_POOL_MIN", "8");
    set("DB_POOL_MAX", "8");
    assert_loads(&cfg);
    assert_int_equal(cfg.db_pool_min, 8);
    assert_int_equal(cfg.db_pool_max, 8);
    cdb_config_destroy(&cfg);
}

/* What libpq itself reads from url for keyword (NULL when unset). */
static char *libpq_value(const char *url, const char *keyword)
{
    char *errmsg = NULL, *out = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &errmsg);
    if (!opts)
        fail_msg("libpq rejects %s: %s", url, errmsg ? errmsg : "?");
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, keyword) && o->val)
            out = strdup(o->val);
    PQconninfoFree(opts);
    return out;
}

static void assert_libpq(const char *url, const char *keyword, const char *expect)
{
    char *v = libpq_value(url, keyword);
    assert_non_null(v);
    assert_string_equal(v, expect);
    free(v);
}

static void check_normalized(const char *in, const char *expect)
{
    cdb_error err;
    cdb_error_init(&err);
    char *out = cdb_config_normalize_database_url(in, &err);
    if (!out)
        fail_msg("%s: %s", in, err.message);
    assert_string_equal(out, expect);
    free(out);
}

static void check_rejected(const char *in)
{
    cdb_error err;
    cdb_error_init(&err);
    char *out = cdb_config_normalize_database_url(in, &err);
    if (out)
        fail_msg("%s accepted as %s", in, out);
    assert_int_equal(err.code, CDB_ERR_CONFIG_INVALID);
    assert_null(strstr(err.message, "s3cr3t"));
    cdb_error_destroy(&err);
}

static void test_url_normalization(void **state)
{
    (void)state;
    check_normalized("postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db");
    assert_libpq("postgresql://u@[::1]:5432/db", "host", "::1");
    check_normalized("postgres://u:p@h/db?sslmode=require", "postgresql://u:p@h/db?sslmode=require");
    check_normalized("postgresql+asyncpg://u:p%40x@db.example:6543/app",
                     "postgresql://u:p%40x@db.example:6543/app");
    check_normalized("postgresql+psycopg2://h", "postgresql://h");
    check_normalized("postgresql://u@[::1]:5432/db", "postgresql://u@[::1]:5432/db");
    check_normalized("postgresql://h1:5432,h2:5433/db", "postgresql://h1:5432,h2:5433/db");
    check_normalized("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql");

    check_rejected(NULL);
    check_rejected("");
    check_rejected("garbage");
    check_rejected("mysql://u:s3cr3t@h/db");
    check_rejected("postgresqlx://h/db");
    check_rejected("postgresql+://h/db");
    check_rejected("postgres+asyncpg://h/db");
    check_rejected("postgresql://");
    check_rejected("postgresql:///db");
    check_rejected("postgresql://u:s3cr3t@/db");
    check_rejected("postgresql://u:s3cr3t@h:abc/db");
    check_rejected("postgresql://u:s3cr3t@h:0/db");
    check_rejected("postgresql://u:s3 cr3t@h/db");
    check_rejected("postgresql://u:s3cr3t%zz@h/db");
    check_rejected("postgresql://h/db?novalue");
    check_rejected("postgresql://h/db#frag");

    /* Through the loader: normalized, and errors name the variable. */
    cdb_config cfg;
    set("DATABASE_URL", "postgresql+asyncpg://app:pw@db:5432/main");
    set("DATABASE_READ_URLS", "postgres://r1/main,postgresql+asyncpg://u:pw@r2,r3:5433/main");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_false(cfg.embedded);
    assert_string_equal(cfg.database_url, "postgresql://app:pw@db:5432/main");
    assert_string_equal(cfg.database_read_urls, "postgresql://r1/main,postgresql://u:pw@r2,r3:5433/main");
    cdb_config_destroy(&cfg);

    nenv = 0;
    set("DATABASE_URL", "mongodb://u:s3cr3t@h/db");
    set("JWT_SECRET", JWT);
    assert_invalid("DATABASE_URL:", "s3cr3t");
}

static void test_postgres_assembly(void **state)
{
    (void)state;
    cdb_config cfg;
    set("POSTGRES_USER", "app user");
    set("POSTGRES_PASSWORD", "p@ss:w/rd%?#&");
    set("POSTGRES_HOST", "db.example");
    set("POSTGRES_PORT", "6543");
    set("POSTGRES_DB", "my db");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_false(cfg.embedded);
    assert_string_equal(cfg.database_url,
                        "postgresql://app%20user:p%40ss%3Aw%2Frd%25%3F%23%26@db.example:6543/my%20db");
    assert_libpq(cfg.database_url, "user", "app user");
    assert_libpq(cfg.database_url, "password", "p@ss:w/rd%?#&");
    assert_libpq(cfg.database_url, "host", "db.example");
    assert_libpq(cfg.database_url, "port", "6543");
    assert_libpq(cfg.database_url, "dbname", "my db");
    cdb_config_destroy(&cfg);

    /* One of them is enough; the rest default. */
    nenv = 0;
    set("POSTGRES_DB", "app");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_string_equal(cfg.database_url, "postgresql://localhost:5432/app");
    cdb_config_destroy(&cfg);

    /* A socket directory goes into the query. */
    nenv = 0;
    set("POSTGRES_USER", "me");
    set("POSTGRES_HOST", "/var/run/postgresql");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_string_equal(cfg.database_url, "postgresql://me@/?host=%2Fvar%2Frun%2Fpostgresql&port=5432");
    assert_libpq(cfg.database_url, "host", "/var/run/postgresql");
    assert_libpq(cfg.database_url, "user", "me");
    cdb_config_destroy(&cfg);

    /* An IPv6 host goes in between brackets; anything else with ':' is refused
     * (it would reach the URL unencoded: found by fuzz/config_env.c). */
    nenv = 0;
    set("POSTGRES_HOST", "::1");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_string_equal(cfg.database_url, "postgresql://[::1]:5432/");
    cdb_config_destroy(&cfg);
    nenv = 0;
    set("POSTGRES_HOST", "u:pw@evil/db?host=x");
    set("JWT_SECRET", JWT);
    assert_invalid("POSTGRES_HOST:", NULL);
    /* the environment is text */
    nenv = 0;
    set("LOG_LEVEL", "info\xff");
    set("JWT_SECRET", JWT);
    assert_invalid("LOG_LEVEL: not valid UTF-8", NULL);

    /* DATABASE_URL wins over POSTGRES_*. */
    nenv = 0;
    set("DATABASE_URL", "postgres://x/y");
    set("POSTGRES_DB", "ignored");
    set("JWT_SECRET", JWT);
    assert_loads(&cfg);
    assert_string_equal(cfg.database_url, "postgresql://x/y");
    cdb_config_destroy(&cfg);
}

static void test_file_secrets(void **state)
{
    (void)state;
    cdb_config cfg;
    char *jwt = write_temp(JWT "\n");
    char *pw = write_temp("file-pass\n\n");
    char *url = write_temp("postgres://u:filepw@h/db\n");
    set("JWT_SECRET_FILE", jwt);
    set("COREDB_ADMIN_PASSWORD_FILE", pw);
    set("COREDB_ADMIN_EMAIL", "a@example.com");
    set("DATABASE_URL_FILE", url);
    assert_loads(&cfg);
    assert_string_equal(cfg.jwt_secret, JWT);
    assert_string_equal(cfg.admin_password, "file-pass\n"); /* only one newline stripped */
    assert_string_equal(cfg.database_url, "postgresql://u:filepw@h/db");
    cdb_config_destroy(&cfg);

    /* POSTGRES_PASSWORD_FILE feeds the assembled URL. */
    nenv = 0;
    char *pgpw = write_temp("p w\n");
    set("POSTGRES_PASSWORD_FILE", pgpw);
    set("POSTGRES_USER", "u");
    set("JWT_SECRET_FILE", jwt);
    assert_loads(&cfg);
    assert_string_equal(cfg.database_url, "postgresql://u:p%20w@localhost:5432/");
    cdb_config_destroy(&cfg);

    nenv = 0;
    set("JWT_SECRET_FILE", "/nonexistent/coredb/jwt");
    assert_invalid("JWT_SECRET_FILE:", NULL);

    nenv = 0;
    char *key = write_temp("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n");
    set("DB_ENCRYPTION_KEY_FILE", key);
    set("REDIS_URL_FILE", "/nonexistent/redis");
    assert_invalid("REDIS_URL_FILE:", NULL);

    unlink(jwt);
    unlink(pw);
    unlink(url);
    unlink(pgpw);
    unlink(key);
    free(jwt);
    free(pw);
    free(url);
    free(pgpw);
    free(key);
}

static void test_name_and_file_both_set(void **state)
{
    (void)state;
    set("JWT_SECRET", JWT);
    set("JWT_SECRET_FILE", "/etc/hostname");
    assert_invalid("JWT_SECRET:", JWT);

    nenv = 0;
    set("POSTGRES_PASSWORD", "pw");
    set("POSTGRES_PASSWORD_FILE", "/etc/hostname");
    assert_invalid("POSTGRES_PASSWORD:", NULL);
}

static void test_jwt_secret(void **state)
{
    (void)state;
    cdb_config cfg;
    /* Not embedded: required, and at least 32 bytes. */
    set("DATABASE_URL", "postgresql://h/db");
    assert_invalid("JWT_SECRET:", NULL);
    set("JWT_SECRET", "short-secret-0123456789");
    assert_invalid("JWT_SECRET:", "short-secret");

    /* Embedded: may be absent, but a given one is still checked. */
    nenv = 0;
    assert_loads(&cfg);
    assert_null(cfg.jwt_secret);
    cdb_config_destroy(&cfg);
    set("JWT_SECRET", "short");
    assert_invalid("JWT_SECRET:", NULL);

    nenv = 0;
    set("JWT_SECRET", "0123456789abcdef0123456789abcdef");
    assert_loads(&cfg);
    assert_string_equal(cfg.jwt_secret, "0123456789abcdef0123456789abcdef");
    cdb_config_destroy(&cfg);
}

static void test_encryption_key_forms(void **state)
{
    (void)state;
    static const char *const good[] = {
        "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", /* standard, padded */
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",  /* unpadded */
        "-_7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v7-_v4",  /* url-safe */
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cdb_config cfg;
        nenv = 0;
        set("DB_ENCRYPTION_KEY", good[i]);
        assert_loads(&cfg);
        assert_string_equal(cfg.db_encryption_key, good[i]);
        cdb_config_destroy(&cfg);
    }
    nenv = 0;
    set("DB_ENCRYPTION_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ=="); /* 34 bytes */
    assert_invalid("DB_ENCRYPTION_KEY:", "AAECAwQF");
}

static void test_to_json_redacts(void **state)
{
    (void)state;
    cdb_config cfg;
    set("DATABASE_URL", "postgres://app:dbSecretPw@db:5432/main?sslmode=require");
    set("DATABASE_READ_URLS", "postgres://ro:readSecretPw@r1/main,postgres://r2/main?password=qpSecret");
    set("REDIS_URL", "redis://:redisSecretPw@cache:6379/2");
    set("JWT_SECRET", "jwtSecretValue-0123456789abcdefghij");
    set("DB_ENCRYPTION_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    set("COREDB_ADMIN_EMAIL", "admin@example.com");
    set("COREDB_ADMIN_PASSWORD", "adminSecretPw");
    set("DEBUG", "yes");
    assert_loads(&cfg);
    json_t *j = cdb_config_to_json(&cfg);
    assert_non_null(j);
    char *dump = json_dumps(j, 0);
    assert_non_null(dump);
    static const char *const secrets[] = {"dbSecretPw", "readSecretPw", "qpSecret", "redisSecretPw",
                                          "jwtSecretValue", "AAECAwQF", "adminSecretPw"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (strstr(dump, secrets[i]))
            fail_msg("%s leaked into %s", secrets[i], dump);

    assert_string_equal(json_string_value(json_object_get(j, "DATABASE_URL")),
                        "postgresql://app:[redacted]@db:5432/main?sslmode=require");
    assert_string_equal(json_string_value(json_object_get(j, "DATABASE_READ_URLS")),
                        "postgresql://ro:[redacted]@r1/main,postgresql://r2/main?password=[redacted]");
    assert_string_equal(json_string_value(json_object_get(j, "REDIS_URL")),
                        "redis://:[redacted]@cache:6379/2");
    assert_string_equal(json_string_value(json_object_get(j, "JWT_SECRET")), "[redacted]");
    assert_string_equal(json_string_value(json_object_get(j, "DB_ENCRYPTION_KEY")), "[redacted]");
    assert_string_equal(json_string_value(json_object_get(j, "COREDB_ADMIN_PASSWORD")), "[redacted]");
    assert_string_equal(json_string_value(json_object_get(j, "COREDB_ADMIN_EMAIL")), "admin@example.com");
    assert_int_equal(json_integer_value(json_object_get(j, "PORT")), 8095);
    assert_int_equal(json_integer_value(json_object_get(j, "JWT_CLOCK_SKEW")), 5);
    assert_true(json_is_true(json_object_get(j, "DEBUG")));
    assert_true(json_is_true(json_object_get(j, "MIGRATE_ON_START")));
    assert_string_equal(json_string_value(json_object_get(j, "LOG_LEVEL")), "debug");
    assert_true(json_is_false(json_object_get(j, "embedded")));
    /* where each value came from */
    json_t *src = json_object_get(j, "sources");
    assert_string_equal(json_string_value(json_object_get(src, "JWT_SECRET")), "env");
    assert_string_equal(json_string_value(json_object_get(src, "PORT")), "default");
    assert_int_equal(json_object_size(src), json_object_size(j) - 2);
    assert_int_equal(cdb_config_source_of(&cfg, "DATABASE_URL"), CDB_CONFIG_ENV);
    cdb_config_set_source(&cfg, "JWT_SECRET", CDB_CONFIG_SECRETS_FILE);
    assert_string_equal(cdb_config_source_name(cdb_config_source_of(&cfg, "JWT_SECRET")),
                        "var/secrets.env");
    free(dump);
    json_decref(j);
    cdb_config_destroy(&cfg);

    /* Unset secrets and URLs are null. */
    nenv = 0;
    assert_loads(&cfg);
    j = cdb_config_to_json(&cfg);
    assert_non_null(j);
    assert_true(json_is_null(json_object_get(j, "JWT_SECRET")));
    assert_true(json_is_null(json_object_get(j, "DATABASE_URL")));
    assert_true(json_is_null(json_object_get(j, "REDIS_URL")));
    assert_true(json_is_true(json_object_get(j, "embedded")));
    assert_int_equal(json_integer_value(json_object_get(j, "DB_POOL_MAX")), 20);
    json_decref(j);
    cdb_config_destroy(&cfg);
}

static void test_redact_url(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"postgresql://u:pw@h:5/db", "postgresql://u:[redacted]@h:5/db"},
        {"postgresql://u@h:5/db", "postgresql://u@h:5/db"},
        {"postgresql://h/db?sslmode=require", "postgresql://h/db?sslmode=require"},
        {"redis://:pw@h:6379", "redis://:[redacted]@h:6379"},
        {"redis://user:p:w@h", "redis://user:[redacted]@h"},
        {"postgresql:///db?host=/tmp&password=x", "postgresql:///db?host=/tmp&password=[redacted]"},
        {"not a url", "not a url"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *r = cdb_config_redact_url(cases[i][0]);
        assert_non_null(r);
        assert_string_equal(r, cases[i][1]);
        free(r);
    }
}

static void test_durations(void **state)
{
    (void)state;
    cdb_config cfg;
    set("ACCESS_TOKEN_TTL", "15m");
    set("REFRESH_TOKEN_TTL", "30d");
    set("SESSION_TIMEOUT", "2h");
    set("SESSION_MAX_LIFETIME", "3600");
    set("LEASE_TTL", "30s");
    set("DB_POOL_ACQUIRE_TIMEOUT", "5s");
    set("DB_STATEMENT_TIMEOUT", "250ms");
    set("DB_POOL_IDLE_TIMEOUT", "2m");
    set("SHUTDOWN_GRACE_MS", "1500");
    set("BACKUP_INTERVAL", "1d");
    set("HTTP_IDLE_TIMEOUT", "+90");
    assert_loads(&cfg);
    assert_int_equal(cfg.access_token_ttl_s, 900);
    assert_int_equal(cfg.refresh_token_ttl_s, 2592000);
    assert_int_equal(cfg.session_timeout_s, 7200);
    assert_int_equal(cfg.session_max_lifetime_s, 3600);
    assert_int_equal(cfg.lease_ttl_s, 30);
    assert_int_equal(cfg.db_pool_acquire_timeout_ms, 5000);
    assert_int_equal(cfg.db_statement_timeout_ms, 250);
    assert_int_equal(cfg.db_pool_idle_timeout_ms, 120000);
    assert_int_equal(cfg.shutdown_grace_ms, 1500);
    assert_int_equal(cfg.backup_interval_s, 86400);
    assert_int_equal(cfg.http_idle_timeout_s, 90);
    cdb_config_destroy(&cfg);

    nenv = 0;
    set("DB_STATEMENT_TIMEOUT", "30d"); /* beyond INT_MAX ms */
    assert_invalid("DB_STATEMENT_TIMEOUT:", NULL);

    /* SHUTDOWN_DRAIN_MS: off by default, a duration up to 10 min */
    nenv = 0;
    assert_loads(&cfg);
    assert_int_equal(cfg.shutdown_drain_ms, 0);
    cdb_config_destroy(&cfg);
    set("SHUTDOWN_DRAIN_MS", "3s");
    assert_loads(&cfg);
    assert_int_equal(cfg.shutdown_drain_ms, 3000);
    cdb_config_destroy(&cfg);
    nenv = 0;
    set("SHUTDOWN_DRAIN_MS", "11m");
    assert_invalid("SHUTDOWN_DRAIN_MS:", NULL);
    nenv = 0;
    set("SHUTDOWN_DRAIN_MS", "-1");
    assert_invalid("SHUTDOWN_DRAIN_MS:", NULL);
    nenv = 0;
    set("SHUTDOWN_DRAIN_MS", "soon");
    assert_invalid("SHUTDOWN_DRAIN_MS:", NULL);

    /* TRUSTED_PROXIES: addresses and ranges; anything else is refused at start */
    nenv = 0;
    set("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1");
    assert_loads(&cfg);
    assert_string_equal(cfg.trusted_proxies, "10.0.0.0/8, 127.0.0.1,::1");
    cdb_config_destroy(&cfg);
    nenv = 0;
    set("TRUSTED_PROXIES", "balancer.internal");
    assert_invalid("TRUSTED_PROXIES:", NULL);
    nenv = 0;
    set("TRUSTED_PROXIES", "10.0.0.0/40");
    assert_invalid("TRUSTED_PROXIES:", NULL);
}

static void test_booleans_and_log_level(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "TRUE", "1", "yes", "Yes", "on", "ON"};
    static const char *const no[] = {"false", "False", "0", "no", "NO", "off", "Off"};
    cdb_config cfg;
    for (size_t i = 0; i < 7; i++) {
        nenv = 0;
        set("MIGRATE_ON_START", no[i]);
        set("DEBUG", yes[i]);
        assert_loads(&cfg);
        assert_false(cfg.migrate_on_start);
        assert_true(cfg.debug);
        assert_int_equal(cfg.log_level, CDB_LOG_DEBUG);
        cdb_config_destroy(&cfg);
    }
    nenv = 0;
    set("DEBUG", "true");
    set("LOG_LEVEL", "WARNING");
    assert_loads(&cfg);
    assert_int_equal(cfg.log_level, CDB_LOG_WARN);
    cdb_config_destroy(&cfg);
}

static void test_redis_url_forms(void **state)
{
    (void)state;
    static const char *const good[] = {"redis://localhost", "redis://h:6379", "redis://:pw@h:6379/0",
                                       "redis://user:pw@h/15", "redis://[::1]:6379", "redis://h:6379/"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cdb_config cfg;
        nenv = 0;
        set("REDIS_URL", good[i]);
        assert_loads(&cfg);
        assert_string_equal(cfg.redis_url, good[i]);
        cdb_config_destroy(&cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, reset),
        cmocka_unit_test_setup(test_host_default, reset),
        cmocka_unit_test_setup(test_overrides, reset),
        cmocka_unit_test_setup(test_invalid_values, reset),
        cmocka_unit_test_setup(test_pool_min_above_max, reset),
        cmocka_unit_test_setup(test_url_normalization, reset),
        cmocka_unit_test_setup(test_postgres_assembly, reset),
        cmocka_unit_test_setup(test_file_secrets, reset),
        cmocka_unit_test_setup(test_name_and_file_both_set, reset),
        cmocka_unit_test_setup(test_jwt_secret, reset),
        cmocka_unit_test_setup(test_encryption_key_forms, reset),
        cmocka_unit_test_setup(test_to_json_redacts, reset),
        cmocka_unit_test_setup(test_redact_url, reset),
        cmocka_unit_test_setup(test_durations, reset),
        cmocka_unit_test_setup(test_booleans_and_log_level, reset),
        cmocka_unit_test_setup(test_redis_url_forms, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
