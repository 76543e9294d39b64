/*
 * role.h - the application roles of API.md. Each maps to a NOLOGIN database
 * role of the migrations (coredb_admin, coredb_user, coredb_premium) that
 * data requests run as. Pure names, no I/O (src/core/role.c): the catalog
 * (store/) and the principal (security/) both need them.
 */
#ifndef COREDB_ROLE_H
#define COREDB_ROLE_H

typedef enum cdb_role {
    CDB_ROLE_ANON = 0,
    CDB_ROLE_USER,
    CDB_ROLE_PREMIUM,
    CDB_ROLE_ADMIN,
} cdb_role;

const char *cdb_role_name(cdb_role role);      /* "anonymous" | "user" | "premium" | "admin" */
int cdb_role_parse(const char *name);          /* cdb_role, or -1 (anonymous is not parsed) */
/* The database role an application role runs as: "coredb_user", ... (ANON: NULL). */
const char *cdb_role_db_name(cdb_role role);

#endif
