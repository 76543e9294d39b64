/*
 * dbauth_internal.h - what the parts of coredb/dbauth.h share: dbauth.c
 * (roles, and these helpers), dbauth_users.c (logins) and dbauth_revoke.c
 * (taking access away).
 */
#ifndef COREDB_MANAGEMENT_DBAUTH_INTERNAL_H
#define COREDB_MANAGEMENT_DBAUTH_INTERNAL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "coredb/dbauth.h"
#include "management/admin_sql.h"

/*
 * One statement of quoted identifiers and literals (admin_sql.h), where
 * `what` names it for a person ("CREATE ROLE"). Permission denied (42501)
 * becomes DATABASE_PRIVILEGE_MISSING naming the fix (`coredb setup-sql
 * --administration`), a duplicate role (42710) CONFLICT.
 * cdb__dbauth_privilege_error does that mapping for a failed rc of any call.
 */
int cdb__dbauth_privilege_error(int rc, const char *what, cdb_error *err);
int cdb__dbauth_run(PGconn *conn, const char *what, cdb_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * The body is an object (or NULL when allow_null) with no member outside
 * the NULL-terminated `fields`: VALIDATION_FAILED naming the field otherwise.
 */
int cdb__dbauth_body(const json_t *request, bool allow_null, const char *const *fields, cdb_error *err);

/*
 * A password member `field` of request under the policy
 * (PASSWORD_MIN_LENGTH): *pw points into request.
 */
int cdb__dbauth_password(const json_t *request, const char *field, int min_chars, const char **pw,
                         cdb_error *err);

/*
 * The SCRAM-SHA-256 verifier of password for user, computed here
 * (PQencryptPasswordConn) and quoted as a literal: *literal (PQfreemem).
 * The password itself never reaches the server.
 */
int cdb__dbauth_verifier(PGconn *conn, const char *user, const char *password, char **literal,
                         cdb_error *err);

/* CONFLICT naming field when a role `name` exists already. */
int cdb__dbauth_absent(PGconn *conn, const char *field, const char *name, cdb_error *err);

/*
 * The username of a route's path: valid UTF-8 (*holder, json_decref) and
 * the strict name pattern; *out points into *holder.
 */
int cdb__dbauth_path_name(const char *username, json_t **holder, const char **out, cdb_error *err);

/*
 * request's "roles": absent (*roles NULL) or a list of at most 64 names
 * (cdb__admin_name_check each); with optional (revoke) an empty list is
 * refused, since absent means "everything". *roles is borrowed.
 */
int cdb__dbauth_role_list(const json_t *request, bool optional, json_t **roles, cdb_error *err);


#endif
