/*
 * cmd_serve.c - `coredb serve`: configuration, embedded PostgreSQL and
 * secrets when nothing is configured, migrations on start, then the HTTP
 * server until SIGTERM/SIGINT.
 */
#include <stdio.h>

#include "cli.h"
#include "coredb/auth.h"
#include "coredb/http.h"
#include "coredb/jobs.h"
#include "coredb/log.h"
#include "coredb/service.h"

int cmd_serve(int argc, char **argv)
{
    cdb_config cfg;
    int rc = cli_load_config(&cfg, false);
    if (rc != CLI_EXIT_OK)
        return rc;

    cdb_error err;
    cdb_error_init(&err);
    cdb_service *svc = NULL;
    cdb_http_server *srv = NULL;
    cdb_jobs *jobs = NULL;
    rc = CLI_EXIT_FAILED;

    if (cli_open_service(&cfg, true, &svc, &err) < 0)
        goto out;
    if (cfg.migrate_on_start) {
        json_t *result = NULL;
        cdb_migrate_options mo = {.applied_by = "coredb serve"};
        if (cdb_service_migrate(svc, &mo, &result, &err) < 0)
            goto out;
        json_decref(result);
    }
    if (cfg.admin_email && cfg.admin_password) {
        bool created = false;
        if (cdb_users_ensure_admin(svc, cfg.admin_email, NULL, cfg.admin_password, &created, &err) < 0)
            goto out;
        if (created)
            cdb_log_info("serve.admin_created", "created the first admin %s%s", cfg.admin_email,
                         cfg.embedded ? "; its password is in the development secrets file" : "");
    }
    /* The catalog follows DDL and grants through NOTIFY from here on; load it
     * now so the first data request does not pay for it. */
    if (cdb_catalog_cache_refresh(svc->catalog, &err) < 0) {
        cdb_log_warn("serve.catalog", "catalog not loaded yet (%s); retried on first use",
                     err.message);
        cdb_error_destroy(&err);
    }
    if (cdb_catalog_cache_listen(svc->catalog, svc->conninfo, &err) < 0)
        goto out;
    /* Builds the dummy hash unknown emails are checked against, so the first
     * such login costs what every later one does. */
    cdb_password_burn(&svc->password, "", 0);
    srv = cdb_http_server_new(svc, &err);
    if (!srv)
        goto out;
    jobs = cdb_jobs_start(svc);
    rc = cdb_http_server_run(srv) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILED;
    cdb_log_info("serve.stopped", "coredb stopped");

out:
    if (err.code != CDB_OK) {
        cdb_log_error("serve.failed", "%s: %s", cdb_err_name(err.code), err.message);
        fprintf(stderr, "coredb: %s: %s\n", cdb_err_name(err.code), err.message);
        if (err.code == CDB_ERR_CONFIG_INVALID)
            rc = CLI_EXIT_USAGE;
    }
    cdb_jobs_stop(jobs);
    cdb_http_server_free(srv);
    cdb_service_close(svc);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
