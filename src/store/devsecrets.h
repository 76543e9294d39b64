/*
 * devsecrets.h - development secrets of the zero-configuration mode (JWT
 * secret, master key, first admin password), generated once into
 * <var_dir>/secrets.env with mode 0600. Only an embedded start uses them.
 */
#ifndef COREDB_STORE_DEVSECRETS_H
#define COREDB_STORE_DEVSECRETS_H

#include "coredb/config.h"
#include "coredb/error.h"

/*
 * Fills cfg->jwt_secret, cfg->db_encryption_key and, when no admin is
 * configured, cfg->admin_email/admin_password from <var_dir>/secrets.env,
 * generating and saving (mode 0600) any that are missing. Only fills fields
 * that are NULL. Logs the file's path, never the secrets.
 */
int cdb_devsecrets_load(cdb_config *cfg, const char *var_dir, cdb_error *err);

/*
 * What cdb_devsecrets_load would fill, read from the file as it is: never
 * creates, writes or changes the mode of anything (`coredb config`). A
 * missing file fills nothing. Filled fields are marked
 * CDB_CONFIG_SECRETS_FILE (cdb_config_set_source); load marks them too.
 */
int cdb_devsecrets_peek(cdb_config *cfg, const char *var_dir, cdb_error *err);

/* <var_dir made absolute>/secrets.env, malloc'd (caller frees), or NULL on OOM. */
char *cdb_devsecrets_path(const char *var_dir);

#endif
