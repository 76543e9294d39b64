/*
 * tables.h - making an application's own tables usable through the data
 * API (README "Your own tables"): the grants, row-level security and
 * policies the data API needs, applied to a table of POSTGRES_SCHEMA in one
 * transaction, and undone the same way.
 *
 * What "exposed" means, for table T with owner column C (a uuid):
 *   - coredb_admin: SELECT, INSERT, UPDATE, DELETE; coredb_user and
 *     coredb_premium the same, or SELECT only for a role in read_only_for;
 *     USAGE on the sequences T owns (serial columns) for all three;
 *   - row-level security enabled, with three policies:
 *       coredb_admin   TO coredb_admin, every row;
 *       coredb_rows    TO coredb_user, coredb_premium, permissive, every row;
 *       coredb_own_<C> TO coredb_user, coredb_premium, RESTRICTIVE:
 *                      C = coredb.current_user_id() for reading and writing.
 *     The own-rows rule is restrictive on purpose: PostgreSQL names a
 *     restrictive policy in the error of a refused write, so the data API
 *     can answer "C must be your own" instead of an anonymous refusal;
 *   - C DEFAULT coredb.current_user_id() (unless C has a default already),
 *     so a user's insert without C owns the row.
 * These are the same statements `coredb migrate new` shows commented.
 *
 * Refused: a name that is not a table of POSTGRES_SCHEMA (UNKNOWN_TABLE;
 * the name is only ever a bound parameter, and the catalog's own copy is
 * quoted into SQL), a table with row-level-security policies not made here
 * (CONFLICT: coredb's own tables, or a table a migration already secures),
 * an owner column that does not exist or is not uuid (VALIDATION_FAILED,
 * details.field "owner_column"). Admin only (FORBIDDEN; UNAUTHORIZED for
 * an anonymous caller).
 *
 * Running services see the change at once: the catalog is refreshed after
 * the commit here, and other instances on the NOTIFY of migration 006's
 * event trigger (or within 30 s without one).
 *
 * Blocking: call from worker threads. *out is owned by the caller.
 */
#ifndef COREDB_TABLES_H
#define COREDB_TABLES_H

#include <jansson.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/*
 * Exposes table `name`. request may be NULL or
 * {"owner_column": "user_id" (default), "read_only_for": ["user"|"premium", ...]}.
 * Idempotent: exposing again replaces the grants and policies with the
 * ones asked for. *out: {"table", "schema", "exposed": true, "owner_column",
 * "owner_default": "set"|"kept", "read_only_for": [...], "grants":
 * {"admin": [...], "user": [...], "premium": [...]}, "policies": [...]}.
 */
int cdb_tables_expose(cdb_service *svc, const cdb_principal *caller, const char *name,
                      json_t *request, json_t **out, cdb_error *err);

/*
 * Undoes cdb_tables_expose: drops its policies, disables row-level
 * security, revokes every privilege of the three application roles on the
 * table and its sequences, and drops the owner column's
 * coredb.current_user_id() default. Idempotent. *out: {"table", "schema",
 * "exposed": false}.
 */
int cdb_tables_unexpose(cdb_service *svc, const cdb_principal *caller, const char *name,
                        json_t **out, cdb_error *err);

/*
 * Every table of POSTGRES_SCHEMA, exposed or not (admin):
 * {"schema", "tables": [{"name", "exposed" (an application role holds a
 * privilege), "managed" (exposed by cdb_tables_expose), "row_security",
 * "owner_column"|null, "policies": [...], "privileges": {"admin": [...],
 * "user": [...], "premium": [...]}, "columns": [{"name", "type"}]}]}.
 */
int cdb_tables_list(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

#endif
