/*
 * dbauth.h - PostgreSQL roles and logins administered through coredb
 * (seed 000's DatabaseAuth: create_role, create_user,
 * update_user_password, revoke_user_access; docs/http.md "Database roles
 * and users").
 *
 * Every call is one transaction on a pooled connection: it fully happens,
 * with its audit entry (cdb_audit_record_in), or not at all; a refused or
 * failed call is audited after the rollback (cdb_audit_record). Names from
 * a request are checked against a strict pattern (a-z, 0-9, '_', 1..63
 * bytes, not pg_*), then against the catalog with bound parameters; what
 * reaches SQL is quoted (PQescapeIdentifier / PQescapeLiteral). Passwords
 * reach PostgreSQL only as a SCRAM-SHA-256 verifier computed here
 * (PQencryptPasswordConn), and are never logged, audited or returned.
 *
 * Refused with FORBIDDEN: a caller that is not an admin (UNAUTHORIZED
 * without one), and any of the roles coredb itself depends on as the
 * subject or as a role to grant (the application roles, coredb's login and
 * what it is a member of, coredb* roles, superusers, pg_*). The login
 * needs CREATEROLE (and pg_signal_backend to end a revoked user's
 * sessions): `coredb setup-sql --administration`; without them an
 * operation answers DATABASE_PRIVILEGE_MISSING naming that fix.
 *
 * Blocking: call from worker threads. *out is owned by the caller.
 */
#ifndef COREDB_DBAUTH_H
#define COREDB_DBAUTH_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* The privileges a permission may name. */
#define CDB_DBAUTH_PRIVILEGES "SELECT INSERT UPDATE DELETE TRUNCATE REFERENCES TRIGGER"

/*
 * request {"role_name", "permissions": ["SELECT", "INSERT ON orders", ...],
 * "description"?}: a NOLOGIN role holding each permission, a privilege of
 * CDB_DBAUTH_PRIVILEGES on every table of POSTGRES_SCHEMA or, as
 * "<PRIVILEGE> ON <table>", on one table of it (plus USAGE on the schema);
 * description becomes the role's comment. TRUNCATE and TRIGGER are
 * FORBIDDEN on a table with row-level security (they would get around it),
 * also within "every table". CONFLICT for an existing role,
 * VALIDATION_FAILED naming an unknown privilege or table (details.field
 * "permissions", details.privilege / details.table). *out: {"role":
 * {"name", "login": false, "permissions": [...], "description"}}.
 */
int cdb_dbauth_create_role(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err);

/*
 * request {"username", "password", "roles": [...], "connection_limit"?: 5}:
 * a LOGIN role, member of each role (which must exist: NOT_FOUND), with
 * that connection limit (-1 = none, up to 10000). The password follows
 * PASSWORD_MIN_LENGTH. CONFLICT for an existing role. *out: {"db_user":
 * {"username", "login": true, "roles": [...], "connection_limit"}}.
 */
int cdb_dbauth_create_user(cdb_service *svc, const cdb_principal *caller, const json_t *request,
                           json_t **out, cdb_error *err);

/*
 * request {"new_password"}: the login's new password (same policy).
 * NOT_FOUND for no such role. *out: {"db_user": {"username",
 * "password_changed": true}}.
 */
int cdb_dbauth_update_user_password(cdb_service *svc, const cdb_principal *caller,
                                    const char *username, const json_t *request, json_t **out,
                                    cdb_error *err);

/*
 * request NULL, {} or {"roles": [...]}: with roles, revokes those
 * memberships (VALIDATION_FAILED for one it does not hold). Without:
 * every membership, every privilege granted to it in this database
 * (tables and their columns, sequences, functions and procedures,
 * schemas, the database, default privileges), LOGIN, and ends its open
 * sessions (pg_terminate_backend). *out: {"db_user": {"username",
 * "revoked": {"roles": [...], "privileges": N}, "login", "sessions_ended",
 * "remaining_privileges": [...] (grants made by other roles, which coredb's
 * login cannot revoke; normally empty), "owned_objects": N (relations,
 * schemas and routines it owns, which keep their owner's rights: not
 * reassigned here)}}; login and owned_objects only when revoking everything.
 */
int cdb_dbauth_revoke_user_access(cdb_service *svc, const cdb_principal *caller,
                                  const char *username, const json_t *request, json_t **out,
                                  cdb_error *err);

#endif
