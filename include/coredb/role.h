/*
 * role.h - the application roles of API.md. Each maps to a NOLOGIN database
 * role of the migrations (coredb_admin, coredb_user, coredb_premium) that
 * data requests run as.
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

#endif
