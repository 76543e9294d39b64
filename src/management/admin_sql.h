/*
 * admin_sql.h - what the administration operations share (tables.c,
 * dbauth.c, access.c): running DDL built from quoted identifiers, checking
 * names a request gives, and refusing to touch the roles coredb itself
 * depends on.
 *
 * The rule every operation follows: a name from a request is first checked
 * (cdb__admin_name_check), then looked up in the catalog with bound
 * parameters, and only the catalog's own copy, quoted with
 * PQescapeIdentifier, is ever spliced into a statement.
 */
#ifndef COREDB_MANAGEMENT_ADMIN_SQL_H
#define COREDB_MANAGEMENT_ADMIN_SQL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdbool.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* NAMEDATALEN - 1 */
#define CDB_ADMIN_IDENT_MAX 63

/*
 * Runs one statement built from fmt, whose identifiers are already quoted
 * (never a value from a request). On failure the error is mapped as
 * cdb_pg_exec maps it and a warning names `event`.
 */
int cdb__admin_run(PGconn *conn, const char *event, cdb_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int cdb__admin_runv(PGconn *conn, const char *event, cdb_error *err, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

/* details.sqlstate of a failed call's error, "" without one. */
const char *cdb__admin_sqlstate(const cdb_error *err);

/*
 * For a failed rc (< 0) whose cause is PostgreSQL's permission denied
 * (42501) on what coredb's own login did: DATABASE_PRIVILEGE_MISSING, naming
 * the statement (`what`, for a person: "CREATE ROLE") and the fix (the SQL of
 * `coredb setup-sql --administration`). Any other rc is returned as it is.
 */
int cdb__admin_privilege_error(int rc, const char *what, cdb_error *err);

/*
 * Ends an operation: when rc < 0 its refusal or failure is written to the
 * audit log on a connection of its own (the operation's transaction was
 * rolled back). Never fails the caller; returns rc.
 */
int cdb__admin_audit_failure(cdb_service *svc, const cdb_principal *caller, const char *action,
                             const char *target, const json_t *request, int rc, const cdb_error *err);

/*
 * After a commit that changed what the data API may see: this instance's
 * catalog reloaded now (the others follow the NOTIFY), and the query
 * cache's entries of `table` (NULL: none) dropped everywhere.
 */
void cdb__admin_announce(cdb_service *svc, const char *table);

/* PQescapeIdentifier of ident (PQfreemem), NULL on out of memory. */
char *cdb__admin_quote(PGconn *conn, const char *ident);

/* 0 for an admin; UNAUTHORIZED for no caller, FORBIDDEN naming `what` for anyone else. */
int cdb__admin_require(const cdb_principal *caller, const char *what, cdb_error *err);

/*
 * A name as a request may give one (role, user, policy, schema):
 * a JSON string of 1..63 bytes of [a-z0-9_], not starting with a digit,
 * and not pg_* (reserved). VALIDATION_FAILED naming `field` otherwise.
 * *out points into value.
 */
int cdb__admin_name_check(const char *field, const json_t *value, const char **out, cdb_error *err);

/*
 * FORBIDDEN when role is one coredb depends on and so may not be altered,
 * dropped, granted or given objects through the administration routes:
 * the application roles (coredb_admin, coredb_user, coredb_premium),
 * coredb's own login (current_user) and every role it is a member of,
 * any role whose name starts with "coredb" (lease roles among them),
 * superusers, roles with CREATEROLE (in PostgreSQL 15 nearly a superuser:
 * a member could SET ROLE to it), REPLICATION or BYPASSRLS, and pg_* roles.
 * With must_exist, NOT_FOUND (details: field) for a role that does not
 * exist. Runs on conn (inside the caller's transaction).
 */
int cdb__admin_role_check(PGconn *conn, const char *field, const char *role, bool must_exist,
                          cdb_error *err);

#endif
