/*
 * embed.c - coredb used as a C library, without the CLI: open the service
 * from the environment (DATABASE_URL, REDIS_URL, JWT_SECRET, ... exactly as
 * `coredb serve` reads them), start it (migrations, first admin, catalog,
 * background jobs), create a user, read it back through the data API, close.
 *
 * Built by `make` as build/examples/embed with only include/ on the include
 * path, so it proves the public headers are enough; run by
 * tests/e2e/test_embed.py. Prints one line per step and exits 0, or prints
 * the error and exits 1 (2 for a configuration error).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <coredb/coredb.h>

static int fail(const char *step, const cdb_error *err)
{
    fprintf(stderr, "embed: %s: %s: %s\n", step, cdb_err_name(err->code), err->message);
    return err->code == CDB_ERR_CONFIG_INVALID ? 2 : 1;
}

int main(void)
{
    cdb_config cfg;
    cdb_error err;
    cdb_service *svc = NULL;
    json_t *body = NULL, *user = NULL, *query = NULL;
    char *rows = NULL;
    int rc = 0;

    cdb_error_init(&err);
    if (cdb_config_load(&cfg, cdb_env_process, NULL, &err) < 0) {
        rc = fail("config", &err);
        cdb_error_destroy(&err);
        return rc;
    }
    cdb_log_set_level(cfg.log_level);

    cdb_service_options opt = {.with_pool = true};
    if (cdb_service_open(&svc, &cfg, &opt, &err) < 0) {
        rc = fail("open", &err);
        goto out;
    }
    if (cdb_service_start(svc, &err) < 0) {
        rc = fail("start", &err);
        goto out;
    }
    printf("started %s %s\n", CDB_SERVICE_NAME, CDB_VERSION);

    /* An embedder acts as an operator: the admin role, no user id. */
    cdb_principal admin = {.role = CDB_ROLE_ADMIN};
    char email[96], username[64];
    snprintf(email, sizeof email, "embed-%ld-%ld@example.com", (long)getpid(), (long)time(NULL));
    snprintf(username, sizeof username, "embed_%ld_%ld", (long)getpid(), (long)time(NULL));
    body = json_pack("{s:s, s:s, s:s}", "email", email, "username", username,
                     "password", "an embedded example password");
    if (!body) {
        cdb_error_set(&err, CDB_ERR_INTERNAL_ERROR, "out of memory");
        rc = fail("create user", &err);
        goto out;
    }
    if (cdb_users_create(svc, &admin, body, &user, &err) < 0) {
        rc = fail("create user", &err);
        goto out;
    }
    const char *user_id = json_string_value(json_object_get(user, "user_id"));
    printf("created user %s (%s)\n", user_id, email);

    query = json_pack("{s:s, s:[s,s,s], s:{s:s}}", "table", "users",
                      "select", "user_id", "email", "role", "filters", "user_id", user_id);
    if (!query) {
        cdb_error_set(&err, CDB_ERR_INTERNAL_ERROR, "out of memory");
        rc = fail("query", &err);
        goto out;
    }
    if (cdb_data_query(svc, &admin, query, &rows, &err) < 0) {
        rc = fail("query", &err);
        goto out;
    }
    printf("query: %s\n", rows);

    json_t *health = NULL;
    cdb_health_status hs = cdb_service_health(svc, &health);
    printf("health: %s\n", cdb_health_status_name(hs));
    json_decref(health);

out:
    free(rows);
    json_decref(query);
    json_decref(user);
    json_decref(body);
    cdb_service_close(svc);
    if (rc == 0)
        printf("closed\n");
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
