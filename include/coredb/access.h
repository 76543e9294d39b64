/*
 * access.h - who may see and change what in the application's database
 * (seed 000's DatabaseAccess; docs/http.md "Row-level security, schema
 * grants, ownership"): a row-level security policy on a table, the exact
 * privileges of a role on a schema and its tables, and handing an object
 * to another owner.
 *
 * Common to all three:
 *   - Admin only: UNAUTHORIZED for an anonymous caller, FORBIDDEN otherwise.
 *   - A name from a request is never spliced into SQL: it is checked (a
 *     strict pattern, or an exact catalog match through bound parameters)
 *     and only the catalog's own copy, quoted, reaches a statement.
 *   - coredb's own objects are refused with FORBIDDEN: the schema coredb
 *     and everything in it, the tables its migrations create in public
 *     (users, projects, content_analysis, media_assets) and the sequences
 *     they own, system schemas, the database coredb runs on; and so are the
 *     roles it depends on (admin_sql.h, cdb__admin_role_check).
 *   - One transaction: the change and its audit entry (audit.h) commit
 *     together or not at all; a refusal or failure is audited after the
 *     rollback. Running services see the change at once (the catalog cache
 *     is refreshed and the query cache of the table cleared after commit).
 *
 * Blocking: call from worker threads. request is borrowed; *out is owned
 * by the caller (NULL on failure).
 */
#ifndef COREDB_ACCESS_H
#define COREDB_ACCESS_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/* Longest policy expression accepted, in bytes. */
#define CDB_ACCESS_EXPR_MAX 4096

/*
 * POST /api/v1/admin/rls. request: {"table_name": "t" | "schema.t",
 * "policy_name", "policy": "<one SQL boolean expression>", "roles"?: [...]
 * (default PUBLIC), "command"?: "ALL"|"SELECT"|"INSERT"|"UPDATE"|"DELETE"
 * (default ALL), "restrictive"?: bool, "force"?: bool, "replace"?: bool}.
 * Enables row-level security on the table (FORCE too when force is true)
 * and creates the policy: USING (policy), or WITH CHECK (policy) for
 * INSERT. The expression must lex as one expression (no ';', no comment,
 * no '$', parentheses balanced outside literals and quoted identifiers)
 * and parse as a boolean condition over the table (a prepared SELECT);
 * what PostgreSQL stored is checked to be exactly one clause. A policy of
 * the same name is CONFLICT unless replace is true. roles may name the
 * application roles (coredb_user, coredb_premium, coredb_admin) or any
 * existing role that is not one of coredb's own (admin_sql.h). Policy
 * names starting with "coredb" belong to `coredb table expose`: FORBIDDEN.
 * *out: {"table", "schema", "policy", "command", "permissive", "roles",
 * "expression" (as PostgreSQL stored it), "row_security": true,
 * "force_row_security", "replaced"}.
 */
int cdb_access_enable_row_level_security(cdb_service *svc, const cdb_principal *caller,
                                         const json_t *request, json_t **out, cdb_error *err);

/*
 * PUT /api/v1/admin/schemas/{schema}/permissions. request: {"role",
 * "permissions": [...]} from USAGE CREATE (the schema) and SELECT INSERT
 * UPDATE DELETE TRUNCATE REFERENCES TRIGGER (its tables). Exact, as PUT
 * says: afterwards the role holds these and no other privilege on the
 * schema, on each of its tables and views
 * (coredb's own tables excepted: never touched), and in the default
 * privileges of tables coredb's login creates there later (ALTER DEFAULT
 * PRIVILEGES); an empty list revokes everything. *out: {"schema", "role",
 * "schema_privileges", "table_privileges", "tables": [names],
 * "default_privileges"}.
 */
int cdb_access_set_schema_permissions(cdb_service *svc, const cdb_principal *caller,
                                      const char *schema, const json_t *request, json_t **out,
                                      cdb_error *err);

/*
 * POST /api/v1/admin/ownership. request: {"object_type": "table"|"view"|
 * "sequence"|"function"|"schema"|"database", "object_name", "new_owner"}.
 * Relations are "name" (POSTGRES_SCHEMA) or "schema.name", exact catalog
 * names; a function is its signature, "schema.fn(integer, text)", resolved
 * by PostgreSQL's regprocedure input; schema and database plain names.
 * new_owner must exist and not be one of coredb's roles. When coredb's
 * login is not a superuser, PostgreSQL 15 wants it to be a member of
 * new_owner for ALTER ... OWNER TO: it is granted the membership for the
 * statement and the grant is revoked in the same transaction (this needs
 * CREATEROLE or ADMIN OPTION on new_owner; without it FORBIDDEN).
 * *out: {"object_type", "object_name" (as the catalog names it),
 * "previous_owner", "new_owner"}.
 */
int cdb_access_transfer_ownership(cdb_service *svc, const cdb_principal *caller,
                                  const json_t *request, json_t **out, cdb_error *err);

#endif
