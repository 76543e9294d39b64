/*
 * cmd_serve.c - `coredb serve`: configuration, the service opened and
 * started (cdb_service_start: migrations, first admin, catalog, jobs), then
 * the HTTP server until SIGTERM/SIGINT.
 */
#include <stdio.h>

#include "cli.h"
#include "coredb/http.h"
#include "coredb/log.h"
#include "coredb/service.h"

int cmd_serve(int argc, char **argv)
{
    if (argc > 1)
        return cli_usage_error("serve", cli_help_serve, false);
    cdb_config cfg;
    int rc = cli_load_config(&cfg, false);
    if (rc != CLI_EXIT_OK)
        return rc;
    cdb_log_set_level(cfg.log_level); /* serve logs; one-shot commands are quiet */

    cdb_error err;
    cdb_error_init(&err);
    cdb_service *svc = NULL;
    cdb_http_server *srv = NULL;
    rc = CLI_EXIT_FAILED;

    /* the HTTP loops own part of the pool (DB_LOOP_CONNECTIONS) */
    if (cdb_service_open(&svc, &cfg, &(cdb_service_options){.with_pool = true, .http_loops = true}, &err) < 0)
        goto out;
    if (cdb_service_start(svc, &err) < 0)
        goto out;
    srv = cdb_http_server_new(svc, &err);
    if (!srv)
        goto out;
    rc = cdb_http_server_run(srv) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILED;
    cdb_log_info("serve.stopped", "coredb stopped");

out:
    if (err.code != CDB_OK) {
        cdb_log_error("serve.failed", "%s: %s", cdb_err_name(err.code), err.message);
        fprintf(stderr, "coredb: %s: %s\n", cdb_err_name(err.code), err.message);
        if (err.code == CDB_ERR_CONFIG_INVALID)
            rc = CLI_EXIT_USAGE;
    }
    cdb_http_server_free(srv);
    cdb_service_close(svc);
    cdb_error_destroy(&err);
    cdb_config_destroy(&cfg);
    return rc;
}
